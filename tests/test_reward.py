"""Reward model: the head reads the last completion token, BT loss by hand, it learns, it reloads."""

import dataclasses
import json
import math
import random
import shutil

import mlx.core as mx
import mlx_lm
import pytest
from conftest import write_jsonl

from mlx_align.apps.score import run_score
from mlx_align.batches.layouts import FullRows
from mlx_align.batches.planning import pad_examples
from mlx_align.batches.preference import PairBatches, encode_completion, encode_pairs
from mlx_align.batches.types import PairBatch
from mlx_align.config.stages import RewardConfig
from mlx_align.data.jsonl import Record
from mlx_align.data.splits import load_batched_splits
from mlx_align.model.reward_head import (
    CHECKPOINT_WEIGHTS,
    RewardModel,
    hidden_size_of,
    load_reward_model,
)
from mlx_align.sampling.reward_model import score
from mlx_align.stages.reward import bt_batch_loss, run_reward

ANSWERS = ["Blue.", "Green.", "Red.", "White.", "Black.", "Yellow.", "Grey.", "Gold."]
FILLER = ["well", "you", "know", "um", "basically", "actually", "so", "like", "I"]
TRAIN_THINGS = (
    "sky grass sun snow coal blood milk sea leaf rose lemon night cloud apple cherry "
    "plum lime ash ink sand gold salt soot moss pearl rust slate straw tar wine bone brick"
).split()
HELD_OUT_THINGS = (
    "car door hat shoe cup bird fish frog kite boat lamp rug fox owl bee egg".split()
)


def shorter_is_better(things: list[str], seed: int) -> list[dict]:
    """Two pairs per prompt: chosen = a one-word answer, rejected = it plus 2-5 filler words."""
    rng, rows = random.Random(seed), []
    for thing in things:
        for _ in range(2):
            answer = rng.choice(ANSWERS)
            filler = " ".join(rng.choices(FILLER, k=rng.randint(2, 5)))
            rows.append(
                {
                    "prompt": f"Question: What colour is the {thing}?\nAnswer:",
                    "chosen": f" {answer}",
                    "rejected": f" {answer} {filler}.",
                }
            )
    return rows


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory):
    """64 train pairs, 32 held-out pairs whose prompts never occur in training."""
    root = tmp_path_factory.mktemp("pairs")
    write_jsonl(root / "train.jsonl", shorter_is_better(TRAIN_THINGS, seed=0))
    write_jsonl(root / "valid.jsonl", shorter_is_better(HELD_OUT_THINGS, seed=1))
    return root


def reward_config(model, data, out, **overrides) -> RewardConfig:
    settings = dict(
        model=str(model),
        data=str(data),
        out=str(out),
        steps=16,
        batch_size=8,
        learning_rate=3e-3,
        warmup_steps=2,
        eval_every=0,
        eval_batches=-1,
        log_every=4,
        save_every=0,
        compile=False,
    )
    return RewardConfig(**{**settings, **overrides})


def fresh_reward_model(tiny_model):
    lm, tokenizer = mlx_lm.load(str(tiny_model))
    return RewardModel(lm, hidden_size_of(lm)), tokenizer


def held_out_accuracy(model, tokenizer, rows) -> float:
    prompts = [r["prompt"] for r in rows]
    chosen = score(model, tokenizer, prompts, [r["chosen"] for r in rows])
    rejected = score(model, tokenizer, prompts, [r["rejected"] for r in rows])
    return sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(rows)


def read_rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def read_metrics(run_dir) -> list[dict]:
    return read_rows(run_dir / "metrics.jsonl")


def test_reward_is_read_at_the_last_completion_token(tiny_model):
    """A pad after the completion changes nothing; the last completion token does."""
    model, tokenizer = fresh_reward_model(tiny_model)
    model.head.weight = mx.random.normal(model.head.weight.shape, key=mx.random.key(0))
    record = Record("t", 1, {"prompt": "Question: What is 2 + 3?\nAnswer:", "c": " 5."})
    example = encode_completion(tokenizer, record, "c")
    n = len(example.tokens)
    tokens, mask = pad_examples([example], 1, [n + 4], tokenizer.eos_token_id)
    reward = model(tokens, mask).item()

    unpadded = model.lm.model(tokens[:, :n])  # (1, n, H)
    by_hand = model.head(unpadded[:, -1]).item()
    assert reward == pytest.approx(by_hand, abs=1e-5)
    pad_changed = tokens.at[0, n + 1].add(7)
    assert model(pad_changed, mask).item() == pytest.approx(reward, abs=1e-6)
    last_changed = tokens.at[0, n - 1].add(7)
    assert abs(model(last_changed, mask).item() - reward) > 1e-4


def test_bt_batch_loss_by_hand():
    """Rewards r_w = (1, 0.5, 9), r_l = (0, 1, -9); the third pair is filler (index -1).

    No margin:  (−log σ(1) − log σ(−0.5)) / 2 = (0.313262 + 0.974077) / 2 = 0.643669.
    Margin (0.5, 0): (−log σ(0.5) − log σ(−0.5)) / 2 = (0.474077 + 0.974077) / 2 = 0.724077.
    Centering c = 0.1 adds 0.1 · ((1 + 0)² + (0.5 + 1)²) / 2 = 0.1 · 1.625 = 0.1625.
    """
    rewards = mx.array([1.0, 0.5, 9.0, 0.0, 1.0, -9.0])

    def model(tokens, loss_mask):
        return rewards

    inputs = FullRows(mx.zeros((6, 4)), mx.ones((6, 4)))
    batch = PairBatch(inputs, index=mx.array([0, 1, -1]))
    loss, n_tokens, metrics = bt_batch_loss(model, batch)
    assert loss.item() == pytest.approx(0.643669, abs=1e-5)
    assert n_tokens.item() == 24
    assert metrics["accuracy"].item() == pytest.approx(0.5)
    assert metrics["margin"].item() == pytest.approx((1.0 - 0.5) / 2)
    assert batch.n_examples.item() == 2
    batch = batch._replace(margins=mx.array([0.5, 0.0, 0.0]))
    loss, _, _ = bt_batch_loss(model, batch)
    assert loss.item() == pytest.approx(0.724077, abs=1e-5)
    loss, _, _ = bt_batch_loss(model, batch, center_coefficient=0.1)
    assert loss.item() == pytest.approx(0.724077 + 0.1625, abs=1e-5)


def test_margin_column_reaches_the_loss(tiny_model, tmp_path):
    """A fresh (zero) head gives r_w = r_l = 0, so each pair costs −log σ(−m) = log(1 + e^m)."""
    rows = shorter_is_better(TRAIN_THINGS[:3], seed=0)  # 6 pairs: one batch of 8
    margins = [0.0, 1.0, 2.0, 0.5, 0.0, 3.0]
    write_jsonl(
        tmp_path / "train.jsonl",
        [{**r, "margin": m} for r, m in zip(rows, margins, strict=True)],
    )
    model, tokenizer = fresh_reward_model(tiny_model)
    config = reward_config(tiny_model, tmp_path, tmp_path / "run")
    train_set, _ = load_batched_splits(config, tokenizer, encode_pairs, PairBatches)
    batch = train_set.maker("full", margins=True)(train_set.plan.batch(0))
    expected = [margins[i] if i >= 0 else 0.0 for i in batch.index.tolist()]
    assert batch.margins.tolist() == pytest.approx(expected)
    loss, _, metrics = bt_batch_loss(model, batch)
    by_hand = sum(math.log1p(math.exp(m)) for m in margins) / len(margins)
    assert loss.item() == pytest.approx(by_hand, abs=1e-5)
    assert batch.n_examples.item() == 6


@pytest.fixture(scope="module")
def lora_run(tiny_model, pairs_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("reward")
    return run_reward(reward_config(tiny_model, pairs_dir, out))


def test_reward_model_learns_shorter_is_better_on_held_out_prompts(lora_run, pairs_dir):
    lines = read_metrics(lora_run)
    train_lines = [m for m in lines if "loss" in m]
    assert train_lines[-1]["loss"] < 0.5 * math.log(2)  # started at log 2 (zero head)
    final = [m for m in lines if "val_accuracy" in m][-1]
    assert final["val_accuracy"] >= 0.95

    model, tokenizer = load_reward_model(lora_run)
    held_out = read_rows(pairs_dir / "valid.jsonl")
    assert held_out_accuracy(model, tokenizer, held_out) >= 0.95
    # The reloaded model is the one that was evaluated: same mean rewards.
    chosen = score(
        model,
        tokenizer,
        [r["prompt"] for r in held_out],
        [r["chosen"] for r in held_out],
    )
    assert sum(chosen) / len(chosen) == pytest.approx(
        final["val_chosen_reward"], abs=1e-4
    )


def test_saved_adapters_are_plain_mlx_lm_adapters(lora_run, tiny_model):
    for name in (
        "adapters.safetensors",
        "adapter_config.json",
        "reward_head.safetensors",
        "reward_config.json",
    ):
        assert (lora_run / name).exists(), name
    assert list(mx.load(str(lora_run / "reward_head.safetensors"))) == ["weight"]
    ours, tokenizer = load_reward_model(lora_run)
    theirs, _ = mlx_lm.load(str(tiny_model), adapter_path=str(lora_run))
    tokens = mx.array([tokenizer.encode("Question: What colour is the fox?")])
    assert mx.array_equal(ours.lm.model(tokens), theirs.model(tokens)).item()
    base, _ = mlx_lm.load(str(tiny_model))
    assert not mx.array_equal(base.model(tokens), theirs.model(tokens)).item()


def test_run_score_writes_one_line_per_response(lora_run, pairs_dir, tmp_path):
    held_out = read_rows(pairs_dir / "valid.jsonl")
    data = write_jsonl(
        tmp_path / "mixed.jsonl",
        held_out[:3] + [{"prompt": held_out[0]["prompt"], "completion": " Blue."}],
    )
    rows = run_score(lora_run, data, out=tmp_path / "scores.jsonl", batch_size=4)
    assert read_rows(tmp_path / "scores.jsonl") == rows
    assert [(r["line"], r["field"]) for r in rows] == [
        (1, "chosen"),
        (1, "rejected"),
        (2, "chosen"),
        (2, "rejected"),
        (3, "chosen"),
        (3, "rejected"),
        (4, "completion"),
    ]
    model, tokenizer = load_reward_model(lora_run)
    expected = score(
        model, tokenizer, [r["prompt"] for r in rows], [r["response"] for r in rows]
    )
    assert [r["reward"] for r in rows] == pytest.approx(expected, abs=1e-5)
    # A data directory is scored through its valid.jsonl (no test.jsonl there).
    assert len(run_score(lora_run, pairs_dir, out=tmp_path / "dir.jsonl")) == 64


def result_weights(run_dir) -> dict:
    """Head + adapters, read into memory now (mx.load is lazy: a rerun would overwrite them)."""
    weights = {
        **mx.load(str(run_dir / "reward_head.safetensors")),
        **mx.load(str(run_dir / "adapters.safetensors")),
    }
    mx.eval(weights)
    return weights


def test_resume_restores_the_head_and_adapters(tiny_model, pairs_dir, tmp_path):
    """Train 6 steps with a checkpoint at 3; drop step 6 and resume: the same weights."""
    config = reward_config(
        tiny_model, pairs_dir, tmp_path / "run", steps=6, save_every=3
    )
    first = result_weights(run_reward(config))
    checkpoints = sorted((tmp_path / "run" / "checkpoints").iterdir())
    saved = mx.load(str(checkpoints[0] / CHECKPOINT_WEIGHTS))
    assert "head.weight" in saved and any("lora_b" in k for k in saved)
    shutil.rmtree(checkpoints[-1])  # as if interrupted after step 3
    resumed = result_weights(run_reward(dataclasses.replace(config, resume=True)))
    assert first.keys() == resumed.keys()
    for name, value in first.items():
        assert mx.allclose(value, resumed[name], atol=1e-6).item(), name


def test_full_reward_model_saves_and_reloads(tiny_model, pairs_dir, tmp_path):
    out = run_reward(
        reward_config(tiny_model, pairs_dir, tmp_path / "full", full=True, steps=3)
    )
    assert (out / "model" / "config.json").exists()
    assert not (out / "adapters.safetensors").exists()
    model, tokenizer = load_reward_model(out)
    final = [m for m in read_metrics(out) if "val_chosen_reward" in m][-1]
    held_out = read_rows(pairs_dir / "valid.jsonl")
    chosen = score(
        model,
        tokenizer,
        [r["prompt"] for r in held_out],
        [r["chosen"] for r in held_out],
    )
    assert sum(chosen) / len(chosen) == pytest.approx(
        final["val_chosen_reward"], abs=1e-4
    )
