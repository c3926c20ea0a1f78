"""Scoring completions with a trained reward model (``mlx-align reward``).

``score`` is the Python call online DPO's and PPO's judges and reranking
use; the examples are encoded as in training and batched by length, no
gradient.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mlx_align.batches.planning import bucket_lengths, pad_examples
from mlx_align.batches.preference import encode_completion
from mlx_align.data.jsonl import Record
from mlx_align.data.tokenize import (
    Encoded,
    encode_chat,
    encode_prompt_completion,
    pad_id_of,
)
from mlx_align.model.reward_head import RewardModel


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
