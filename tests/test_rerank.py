"""Best-of-K reranking: the score is β·(Σ log π − Σ log π_ref), checked by hand;
on a DPO-trained tiny model the best of K beats one sample; bad input is one line."""

import json
import statistics

import mlx.core as mx
import mlx_lm
import numpy as np
import pytest
from conftest import write_jsonl
from mlx.utils import tree_unflatten

from mlx_align.apps.rerank import load_models, rerank, run_rerank
from mlx_align.cli import main
from mlx_align.config.stages import DPOConfig, SFTConfig
from mlx_align.model.adapters import attach_adapters, save_adapters
from mlx_align.model.load import load_model
from mlx_align.model.reward_head import (
    RewardModel,
    hidden_size_of,
    load_reward_model,
    save_reward_model,
)
from mlx_align.sampling.reward_model import score
from mlx_align.stages.dpo import run_dpo
from mlx_align.stages.sft import run_sft

LORA = {
    "fine_tune_type": "lora",
    "num_layers": -1,
    "lora_parameters": {"rank": 4, "scale": 2.0, "dropout": 0.0},
}
PROMPTS = [
    "Question: What is 2 + 3?\nAnswer:",
    "Question: What does a cow say?\nAnswer:",
]
WORDS = "apple river stone cloud tiger piano lemon forest candle rocket violin garden".split()


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MLX_ALIGN_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def random_adapters(tiny_model, tmp_path_factory):
    """LoRA adapters with random ``lora_b``: a policy clearly unlike its base."""
    model, _ = mlx_lm.load(str(tiny_model))
    attach_adapters(model, LORA)
    mx.random.seed(3)
    model.update(random_lora_b(model))
    out = tmp_path_factory.mktemp("adapters")
    save_adapters(model, LORA, out)
    return out


def random_lora_b(model):
    """``{"model": {"layers": [...]}}`` with a random ``lora_b`` in every LoRA layer."""
    return tree_unflatten(
        [
            (f"{name}.lora_b", 0.3 * mx.random.normal(layer.lora_b.shape))
            for name, layer in model.named_modules()
            if hasattr(layer, "lora_b")
        ]
    )


def completion_logp(model, prompt: list[int], completion: list[int]) -> float:
    """Σ log p(completion | prompt) from one plain forward and a log-softmax."""
    tokens = mx.array(prompt + completion)[None]
    logits = np.array(model(tokens)[0].astype(mx.float32), dtype=np.float64)
    logps = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
    n = len(prompt)
    return sum(logps[n - 1 + i, t] for i, t in enumerate(completion))


def test_score_is_beta_times_the_summed_log_ratio(tiny_model, random_adapters):
    policy, tokenizer, scorers = load_models(str(tiny_model), str(random_adapters))
    ranked = rerank(
        policy, tokenizer, PROMPTS, scorers.reference, beta=0.5, k=4, max_tokens=10
    )
    plain_policy, _ = mlx_lm.load(str(tiny_model), adapter_path=str(random_adapters))
    plain_reference, _ = mlx_lm.load(str(tiny_model))
    for prompt, r in zip(PROMPTS, ranked, strict=True):
        ids = list(tokenizer.encode(prompt))
        assert sorted(c.sample for c in r.candidates) == [0, 1, 2, 3]
        assert [c.score for c in r.candidates] == sorted(
            (c.score for c in r.candidates), reverse=True
        )
        assert any(c.tokens for c in r.candidates)
        for c in r.candidates:
            logp = completion_logp(plain_policy, ids, c.tokens)
            ref_logp = completion_logp(plain_reference, ids, c.tokens)
            assert c.logp == pytest.approx(logp, abs=1e-3, rel=1e-4)
            assert c.ref_logp == pytest.approx(ref_logp, abs=1e-3, rel=1e-4)
            assert c.score == pytest.approx(0.5 * (logp - ref_logp), abs=1e-3)
            assert c.completion == tokenizer.decode(
                [t for t in c.tokens if t not in tokenizer.eos_token_ids]
            )
        assert any(abs(c.score) > 0.01 for c in r.candidates)  # the adapters matter


def toy_prompt(word: str, i: int) -> str:
    return f"Question: What about the {word} {i}?\nAnswer:"


@pytest.fixture(scope="module")
def dpo_policy(tiny_model, tmp_path_factory):
    """(SFT model, DPO adapters on it): SFT answers " Blue." or " Moo." half and
    half; a short DPO run on pairs that prefer " Blue." leaves the policy still
    saying " Moo." often."""
    root = tmp_path_factory.mktemp("rerank-dpo")
    prompts = [toy_prompt(w, i) for i in range(4) for w in WORDS[:8]]
    sft = [{"prompt": p, "completion": c} for p in prompts for c in (" Blue.", " Moo.")]
    pairs = [{"prompt": p, "chosen": " Blue.", "rejected": " Moo."} for p in prompts]
    write_jsonl(root / "sft" / "train.jsonl", sft)
    write_jsonl(root / "pairs" / "train.jsonl", pairs)
    common = dict(batch_size=8, warmup_steps=2, eval_every=0, save_every=0)
    common |= dict(compile=False, max_length=64, lora_rank=8, lora_alpha=16)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLX_ALIGN_CACHE", str(root / "cache"))
        sft_model = run_sft(
            SFTConfig(
                model=str(tiny_model),
                data=str(root / "sft"),
                out=str(root / "sft-run"),
                steps=60,
                learning_rate=3e-3,
                full=True,
                **common,
            )
        )
        run_dpo(
            DPOConfig(
                model=str(sft_model),
                data=str(root / "pairs"),
                out=str(root / "dpo"),
                steps=6,
                learning_rate=1e-3,
                beta=0.5,
                **common,
            )
        )
    return sft_model, root / "dpo"


def test_best_of_k_beats_one_sample_after_dpo(dpo_policy):
    sft_model, adapters = dpo_policy
    policy, tokenizer, scorers = load_models(str(sft_model), str(adapters))
    prompts = [toy_prompt(w, i) for w in WORDS[8:] for i in range(2)]  # held out
    ranked = rerank(
        policy, tokenizer, prompts, scorers.reference, beta=0.5, k=8, max_tokens=8
    )
    plain_policy, _ = mlx_lm.load(str(sft_model), adapter_path=str(adapters))
    plain_reference, _ = mlx_lm.load(str(sft_model))
    for prompt, r in zip(prompts, ranked, strict=True):
        ids = list(tokenizer.encode(prompt))
        rewards = [  # by hand, in the ranked order
            0.5
            * (
                completion_logp(plain_policy, ids, c.tokens)
                - completion_logp(plain_reference, ids, c.tokens)
            )
            for c in r.candidates
        ]
        assert rewards[0] >= statistics.median(rewards) - 1e-4
        assert rewards[0] == pytest.approx(max(rewards), abs=1e-4)

    def preferred(text: str) -> bool:  # the preference, read off the text
        return "Blue" in text and "Moo" not in text

    best = sum(preferred(r.best.completion) for r in ranked) / len(ranked)
    draws = [preferred(c.completion) for r in ranked for c in r.candidates]
    first = [
        preferred(min(r.candidates, key=lambda c: c.sample).completion) for r in ranked
    ]
    assert best >= sum(draws) / len(draws)  # one sample, in expectation
    assert best >= sum(first) / len(first)  # one sample, the first draw
    assert best >= 0.9, [r.best.completion for r in ranked]


def run_cli(argv, capsys) -> tuple[int, list[str]]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    lines = [
        line
        for line in err.splitlines()
        if line.strip() and not line.startswith("mlx-align: BLAS")
    ]
    return exit_info.value.code, lines


def test_cli_writes_ranked_lines_and_prints_the_best(
    tiny_model, random_adapters, tmp_path, capsys
):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": p} for p in PROMPTS])
    argv = [
        "rerank",
        "--model",
        str(tiny_model),
        "--adapter-path",
        str(random_adapters),
    ]
    argv += ["--data", str(prompts), "--k", "3", "--max-tokens", "6"]
    main([*argv, "--out", str(tmp_path / "ranked.jsonl")])
    out = capsys.readouterr().out
    assert out.count("best of 3 (") == 2 and "What is 2 + 3?" in out
    rows = [json.loads(x) for x in (tmp_path / "ranked.jsonl").read_text().splitlines()]
    assert [r["line"] for r in rows] == [1, 2] and rows[0]["prompt"] == PROMPTS[0]
    assert all(len(r["ranked"]) == 3 for r in rows)
    scores = [c["score"] for c in rows[0]["ranked"]]
    assert scores == sorted(scores, reverse=True)
    # The same run from Python, same seed: the same ranking.
    again = run_rerank(
        str(tiny_model), prompts, str(random_adapters), k=3, max_tokens=6
    )
    assert [c.score for c in again[0].candidates] == pytest.approx(scores)


def test_reward_model_ranks_instead(tiny_model, tmp_path):
    """--reward-model: the scores are train.reward.score's of the completions' text."""
    lm, tokenizer, config = load_model(str(tiny_model))
    rm = RewardModel(lm, hidden_size_of(lm))
    rm.head.weight = mx.random.normal(rm.head.weight.shape, key=mx.random.key(1))
    save_reward_model(rm, None, tmp_path / "rm", str(tiny_model), tokenizer, config)
    policy, tokenizer, scorers = load_models(
        str(tiny_model), reward_model=str(tmp_path / "rm")
    )
    ranked = rerank(
        policy,
        tokenizer,
        PROMPTS,
        k=4,
        max_tokens=6,
        reward_model=(scorers.reward_model, scorers.reward_tokenizer),
    )
    loaded, rm_tokenizer = load_reward_model(tmp_path / "rm")
    for prompt, r in zip(PROMPTS, ranked, strict=True):
        texts = [c.completion for c in r.candidates]
        expected = score(loaded, rm_tokenizer, [prompt] * len(texts), texts)
        assert [c.score for c in r.candidates] == pytest.approx(expected, abs=1e-5)
        assert expected == sorted(expected, reverse=True)
        assert r.candidates[0].logp is None


@pytest.fixture
def misfit_adapters(random_adapters, tmp_path):
    """The adapters of a model twice as wide: every lora_a has the wrong shape."""
    out = tmp_path / "misfit"
    out.mkdir()
    weights = mx.load(str(random_adapters / "adapters.safetensors"))
    wide = {
        k: mx.concatenate([v, v], axis=0) if k.endswith("lora_a") else v
        for k, v in weights.items()
    }
    mx.save_safetensors(str(out / "adapters.safetensors"), wide)
    (out / "adapter_config.json").write_text(
        (random_adapters / "adapter_config.json").read_text()
    )
    return out


@pytest.mark.parametrize("case", ["empty_file", "k_zero", "misfit_adapter", "no_ref"])
def test_bad_input_is_one_line_and_exit_2(
    case, tiny_model, random_adapters, misfit_adapters, tmp_path, capsys
):
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": PROMPTS[0]}])
    adapters = misfit_adapters if case == "misfit_adapter" else random_adapters
    if case == "empty_file":
        prompts.write_text("")
    argv = ["rerank", "--model", str(tiny_model), "--data", str(prompts)]
    if case != "no_ref":
        argv += ["--adapter-path", str(adapters)]
    argv += ["--k", "0" if case == "k_zero" else "2", "--max-tokens", "4"]
    code, lines = run_cli(argv, capsys)
    expected = {
        "empty_file": f"error: {prompts}: empty file",
        "k_zero": "error: --k: must be at least 1, got 0",
        "misfit_adapter": f"error: --adapter-path {misfit_adapters}: does not fit the model",
        "no_ref": "error: --ref-model: the implicit reward needs a reference",
    }[case]
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith(expected), lines
