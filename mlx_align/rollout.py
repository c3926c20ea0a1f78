"""Group sampling for GRPO: G completions of one prompt in one batch, prompt prefilled once.

The prompt runs through the model once (batch 1); its KV cache is then
repeated G times along the batch axis and the G completions are decoded
together, each stopping at an EOS token or the token limit.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import make_prompt_cache


@dataclass
class Group:
    """One prompt's G sampled completions (token ids, EOS included when it was reached)."""

    prompt: list[int]
    completions: list[list[int]]


def sample_next(logits: mx.array, temperature: float, top_p: float) -> mx.array:
    """(G, V) logits -> (G,) token ids; temperature 0 is greedy."""
    if temperature <= 0:
        return mx.argmax(logits, axis=-1)
    logits = logits / temperature
    if top_p < 1.0:
        probs = mx.softmax(logits, axis=-1)
        order = mx.argsort(-probs, axis=-1)  # (G, V) most likely first
        sorted_probs = mx.take_along_axis(probs, order, axis=-1)
        outside = (
            mx.cumsum(sorted_probs, axis=-1) - sorted_probs
        ) >= top_p  # keeps the first token
        sorted_logits = mx.where(
            outside, -mx.inf, mx.take_along_axis(logits, order, axis=-1)
        )
        picked = mx.random.categorical(sorted_logits)  # (G,) positions in sorted order
        return mx.take_along_axis(order, picked[:, None], axis=-1).squeeze(-1)
    return mx.random.categorical(logits)


def sample_group(
    model: nn.Module,
    prompt: list[int],
    group_size: int,
    max_tokens: int,
    eos_ids: set[int],
    temperature: float = 1.0,
    top_p: float = 1.0,
) -> Group:
    """Sample ``group_size`` completions of ``prompt`` together, sharing the prompt's KV cache."""
    cache = make_prompt_cache(model)
    logits = model(mx.array(prompt)[None], cache=cache)[:, -1, :]  # (1, V)
    for layer in cache:  # one prefill, G copies of its keys and values
        layer.keys = mx.repeat(layer.keys, group_size, axis=0)
        layer.values = mx.repeat(layer.values, group_size, axis=0)
    logits = mx.repeat(logits, group_size, axis=0)  # (G, V)
    eos = mx.array(sorted(eos_ids))
    done = mx.zeros((group_size,), dtype=mx.bool_)
    columns = []
    for _ in range(max_tokens):
        token = sample_next(logits, temperature, top_p)  # (G,)
        token = mx.where(
            done, eos[0], token
        )  # finished rows repeat EOS (trimmed below)
        columns.append(token)
        done = done | (token[:, None] == eos[None]).any(axis=-1)
        mx.eval(token, done)
        if done.all().item():
            break
        logits = model(token[:, None], cache=cache)[:, -1, :]
    generated = (
        mx.stack(columns, axis=1).tolist()
        if columns
        else [[] for _ in range(group_size)]
    )
    return Group(prompt, [trim_at_eos(row, eos_ids) for row in generated])


def trim_at_eos(tokens: list[int], eos_ids: set[int]) -> list[int]:
    for i, token in enumerate(tokens):
        if token in eos_ids:
            return tokens[: i + 1]
    return tokens
