"""Scoring G completions of a prompt with the prompt run through the model once.

The prompt's keys and values (kept with their gradient) stand in for a KV
cache that its completions attend to. That re-creates the attention's cache
from outside, so it serves only models whose every layer is attention over
keys and values, with the mask it is handed: ``supports_shared_prompts``
tries it once per model (``model/probes.py``). Sliding windows are honoured;
recurrent state (linear attention, SSMs, convolutions) is not a KV cache,
and such models score full rows.
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from mlx_align.model.logprobs import (
    TokenStat,
    generation_logps,
    head_logps,
    head_logps_and_stat,
    splits_head,
    vocab_size,
)
from mlx_align.model.probes import differs, probe_tokens, probed


def _window(query: mx.array, key: mx.array, window_size: int | None) -> mx.array:
    """Keys within ``window_size`` positions of each query (all when None)."""
    distance = query[:, None] - key[None, :]
    if window_size is None:
        return distance >= 0
    return (distance >= 0) & (distance < window_size)


class _PromptCache:
    """Stands in for a KV cache while the prompts run: keeps each layer's keys/values
    (with their gradient) and masks left padding."""

    def __init__(self, key_is_real: mx.array):
        self.offset, self.key_is_real = 0, key_is_real  # (P, Lp) bool

    def make_mask(
        self, n: int, return_array: bool = False, window_size=None
    ) -> mx.array:
        positions = mx.arange(n)
        causal = _window(positions, positions, window_size)  # (Lp, Lp)
        allowed = causal[None] & self.key_is_real[:, None, :]  # (P, Lp, Lp)
        return (allowed | mx.eye(n, dtype=mx.bool_)[None])[
            :, None
        ]  # a pad query sees itself

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        self.keys, self.values = keys, values
        return keys, values


class _PrefixCache:
    """The completions' view: each prompt's keys/values repeated G times, then their own."""

    def __init__(self, prompt: _PromptCache, group_size: int):
        self.offset = prompt.keys.shape[2]
        self.keys = mx.repeat(prompt.keys, group_size, axis=0)
        self.values = mx.repeat(prompt.values, group_size, axis=0)
        self.prompt_is_real = mx.repeat(
            prompt.key_is_real, group_size, axis=0
        )  # (N, Lp)

    def make_mask(
        self, n: int, return_array: bool = False, window_size=None
    ) -> mx.array:
        rows, width = self.prompt_is_real.shape[0], self.offset
        queries = mx.arange(width, width + n)
        seen = _window(queries, mx.arange(width + n), window_size)  # (n, Lp + n)
        prompt = self.prompt_is_real[:, None, :] & seen[None, :, :width]  # (N, n, Lp)
        own = mx.broadcast_to(seen[None, :, width:], (rows, n, n))
        return mx.concatenate([prompt, own], axis=-1)[:, None]  # (N, 1, n, Lp + n)

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        return mx.concatenate([self.keys, keys], axis=2), mx.concatenate(
            [self.values, values], axis=2
        )


def grouped_completion_logps(
    model: nn.Module,
    prompts: mx.array,
    prompt_mask: mx.array,
    completions: mx.array,
    completion_mask: mx.array,
    stat: TokenStat | None = None,
) -> mx.array | tuple[mx.array, mx.array]:
    """Per-token log-probs of G completions per prompt, each prompt run through the model ONCE.

    The prompt's keys and values (kept with their gradient) are repeated for
    its G completions, which attend to them like a KV cache; logits are
    formed only at completion positions. Equal to scoring every
    prompt + completion row in full (tested), at a fraction of the compute
    and memory when prompts are long.

    Args:
        prompts: (P, Lp) ids, LEFT-padded so every prompt ends at Lp - 1.
        prompt_mask: (P, Lp), 1 on real prompt tokens.
        completions: (P*G, C) ids, right-padded; rows of one prompt contiguous.
        completion_mask: (P*G, C), 1 on real completion tokens.

    Returns:
        (P*G, C) log-probs, 0 off the mask; with ``stat`` (e.g. the entropy),
        also that statistic of each position's next-token distribution (no
        gradient), 0 off the mask.
    """
    group_size = completions.shape[0] // prompts.shape[0]
    backbone = model.model
    prompt_caches = [
        _PromptCache(prompt_mask.astype(mx.bool_)) for _ in backbone.layers
    ]
    prompt_hidden = backbone(prompts, cache=prompt_caches)  # (P, Lp, D)
    hidden = mx.repeat(prompt_hidden[:, -1:], group_size, axis=0)  # predicts token 0
    if completions.shape[1] > 1:
        prefix = [_PrefixCache(c, group_size) for c in prompt_caches]
        rest = backbone(completions[:, :-1], cache=prefix)  # (N, C-1, D)
        hidden = mx.concatenate([hidden, rest], axis=1)
    if stat:
        logps, stats = head_logps_and_stat(model, hidden, completions, stat)
        return logps * completion_mask, stats * completion_mask
    return head_logps(model, hidden, completions) * completion_mask  # (N, C)


def supports_shared_prompts(model: nn.Module) -> bool:
    """Whether ``grouped_completion_logps`` computes ``model``'s log-probs: tried on
    two prompts of unequal length (left padding), two completions each."""
    return probed(model, "shared-prompt scoring", _check, "scoring full rows")


def _check(model: nn.Module) -> str | None:
    if not splits_head(model):
        return "its logits are not its output layer on its backbone's hidden states (a logit soft-cap, a scale, or no .model)"
    tokens = probe_tokens(vocab_size(model), rows=3, length=12)
    prompts = [tokens[0][:9], tokens[1][:4]]  # unequal: left padding
    completions = [tokens[2][:7], tokens[0][2:5], tokens[1][:6], tokens[2][3:5]]
    width = max(map(len, prompts))
    prompt_ids = mx.array([[0] * (width - len(p)) + p for p in prompts])
    prompt_mask = mx.array([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    span = max(map(len, completions))
    completion_ids = mx.array([c + [0] * (span - len(c)) for c in completions])
    completion_mask = mx.array(
        [[1] * len(c) + [0] * (span - len(c)) for c in completions]
    )
    got = grouped_completion_logps(
        model, prompt_ids, prompt_mask, completion_ids, completion_mask
    )
    rows = [prompts[i // 2] + c for i, c in enumerate(completions)]
    expected = generation_logps(model, rows)
    return differs(
        mx.concatenate([got[i, : len(c)] for i, c in enumerate(completions)]),
        mx.concatenate(
            [e[-len(c) :] for e, c in zip(expected, completions, strict=True)]
        ),
        model,
    )
