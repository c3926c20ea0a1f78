"""Reward modelling (Bradley-Terry) and scoring with the trained reward model.

Chosen and rejected rows run in one forward, as in DPO; the reward of a row
is the scalar head read at its last completion token
(``model/reward_head.py``). The loss is ``losses.bt_loss`` with the pair's
optional ``margin`` column (Llama 2, eq. 2) plus TRL's
``center_rewards_coefficient`` term c · (r_w + r_l)² (Eisenstein et al.
2023), which pins the reward's free offset near 0.

``score`` is the Python call GRPO and reranking use; ``run_score`` is the
``mlx-align score`` command: one JSON line per scored response.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import mlx.core as mx
import numpy as np
from tqdm import tqdm

from .. import distributed, losses
from ..batches import PairBatch
from ..config import RewardConfig
from ..data.batching import bucket_lengths, local_batches, pad_examples
from ..data.errors import DataError
from ..data.formats import converter
from ..data.jsonl import Record, read_jsonl, split_path
from ..data.preference import PairBatches, encode_completion, encode_pairs
from ..data.splits import load_batched_splits
from ..data.tokenize import (
    Encoded,
    encode_chat,
    encode_prompt_completion,
    pad_id_of,
)
from ..model.adapters import quantize_base
from ..model.load import load_model
from ..model.reward_head import (
    CHECKPOINT_WEIGHTS,
    RewardModel,
    hidden_size_of,
    load_reward_model,
    save_checkpoint_weights,
    save_reward_model,
)
from .adapted import prepare_trainable
from .loop import TrainJob, train
from .pairs import masked_means


def bt_batch_loss(model: RewardModel, batch: PairBatch, *, center_coefficient=0.0):
    """Chosen rows then rejected rows (full rows), optional ``margins`` -> (loss, n_tokens, metrics)."""
    rewards = model(*batch.inputs)  # (2B,)
    chosen, rejected = mx.split(rewards, 2)  # (B,), (B,)
    pair_losses, metrics = losses.bt_loss(chosen, rejected, batch.margins)
    if center_coefficient:
        pair_losses = pair_losses + center_coefficient * (chosen + rejected) ** 2
    metrics = {
        **metrics,
        "chosen_reward": mx.stop_gradient(chosen),
        "rejected_reward": mx.stop_gradient(rejected),
    }
    loss, metrics = masked_means(pair_losses, metrics, batch.valid)
    return loss, batch.inputs.loss_mask.sum(), metrics


def run_reward(config: RewardConfig) -> Path:
    """Train a Bradley-Terry reward model; adapters (or ``out/model``) + head in ``out``."""
    lm, tokenizer, model_config = load_model(config.model)
    train_set, valid_set = load_batched_splits(
        config, tokenizer, encode_pairs, PairBatches
    )
    if config.quantize:
        quantize_base(lm, config.quantize)
    adapters = prepare_trainable(lm, config, config.seed)  # on the inner mlx-lm model
    model = RewardModel(lm, hidden_size_of(lm))  # the head is trainable either way
    make_train = train_set.maker("full", margins=True)
    make_valid = valid_set and valid_set.maker("full", margins=True)
    job = TrainJob(
        model=model,
        loss_fn=partial(
            bt_batch_loss, center_coefficient=config.center_rewards_coefficient
        ),
        train_batch=lambda k: make_train(train_set.plan.local_batch(k)),
        out=Path(config.out),
        write_weights=partial(save_checkpoint_weights, model),
        weights_file=CHECKPOINT_WEIGHTS,
        eval_batches=valid_set
        and (lambda: local_batches(make_valid, valid_set.plan, config, "valid")),
        config=dataclasses.asdict(config),
    )
    train(job, config)
    if not distributed.is_main():
        return Path(config.out)
    return save_reward_model(
        model,
        adapters,
        Path(config.out),
        config.model,
        tokenizer,
        model_config,
        config.quantize,
    )


def score_examples(
    model: RewardModel, examples: Sequence[Encoded], pad_id: int, batch_size: int = 8
) -> list[float]:
    """Rewards of already-encoded examples, in their order (batched by length, no grad)."""
    if not examples:
        return []
    buckets = bucket_lengths(max(len(e.tokens) for e in examples))
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].tokens))
    rewards = np.zeros(len(examples), dtype=np.float32)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        rows = [examples[i] for i in chunk]
        tokens, mask = pad_examples(rows, len(rows), buckets, pad_id)
        rewards[chunk] = np.array(model(tokens, mask))
    return rewards.tolist()


def encode_scored(tokenizer, line: int, prompt, completion) -> Encoded:
    """A prompt and a model's completion as in training; a sampled completion
    may be empty (the model stopped at once), which training data may not."""
    if isinstance(completion, str) and not completion:
        if isinstance(prompt, str):
            return encode_prompt_completion(tokenizer, prompt, completion)
        reply = [{"role": "assistant", "content": ""}]
        return encode_chat(tokenizer, prompt, reply)
    record = Record("<score>", line, {"prompt": prompt, "completion": completion})
    return encode_completion(tokenizer, record, "completion")


def score(
    model: RewardModel,
    tokenizer,
    prompts: Sequence[str | list[dict]],
    completions: Sequence[str | list[dict]],
    batch_size: int = 8,
) -> list[float]:
    """One reward per (prompt, completion): strings, or chat message lists, as in training."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    examples = [
        encode_scored(tokenizer, i + 1, p, c)
        for i, (p, c) in enumerate(zip(prompts, completions, strict=True))
    ]
    return score_examples(model, examples, pad_id_of(tokenizer), batch_size)


def score_file(data: str | Path) -> Path:
    """A ``.jsonl`` file itself; a directory's ``test.jsonl``, else its ``valid.jsonl``."""
    if Path(data).suffix == ".jsonl":
        return Path(data)
    for split in ("test", "valid"):
        path = split_path(data, split)
        if path is not None and path.exists():
            return path
    raise DataError(str(data), 0, "no test.jsonl or valid.jsonl to score")


def responses_of(record: Record) -> list[str]:
    """The response fields a record holds: ``completion``, or ``chosen`` + ``rejected``."""
    if "completion" in record.fields:
        return ["completion"]
    if "chosen" in record.fields and "rejected" in record.fields:
        return ["chosen", "rejected"]
    raise DataError(
        record.path, record.line, "expected 'completion', or 'chosen' + 'rejected'"
    )


def run_score(
    reward_model: str | Path,
    data: str | Path,
    out: str | Path | None = None,
    batch_size: int = 8,
) -> list[dict]:
    """Score every response in ``data``; JSON lines to ``out`` (or stdout).

    Each line is ``{"line", "field", "prompt", "response", "reward"}``; for
    paired data the share of pairs ranked right is reported on stderr.
    """
    records = read_jsonl(score_file(data), convert=converter())  # implicit prompts too
    targets = [(r, key) for r in records for key in responses_of(r)]
    model, tokenizer = load_reward_model(reward_model)
    examples = [encode_completion(tokenizer, r, key) for r, key in targets]
    rewards = score_examples(model, examples, pad_id_of(tokenizer), batch_size)
    rows = [
        {
            "line": r.line,
            "field": key,
            "prompt": r.fields["prompt"],
            "response": r.fields[key],
            "reward": reward,
        }
        for (r, key), reward in zip(targets, rewards, strict=True)
    ]
    text = "".join(json.dumps(row) + "\n" for row in rows)
    if out is None:
        sys.stdout.write(text)
    else:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
    report_pair_accuracy(rows)
    return rows


def report_pair_accuracy(rows: list[dict]) -> None:
    """On stderr: the share of pairs whose chosen response scored above the rejected one."""
    by_line = {}
    for row in rows:
        by_line.setdefault(row["line"], {})[row["field"]] = row["reward"]
    pairs = [v for v in by_line.values() if "chosen" in v]
    if pairs:
        right = sum(v["chosen"] > v["rejected"] for v in pairs)
        tqdm.write(
            f"{right} of {len(pairs)} pairs ranked chosen > rejected "
            f"(accuracy {right / len(pairs):.3f})",
            file=sys.stderr,
        )
