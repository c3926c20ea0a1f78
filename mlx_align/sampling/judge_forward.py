"""The LLM judge's forward: each row's output at its answer position, the rows
right-padded past a cached prefix, CHUNK tokens at a time, on one or more streams.

``answer_hidden`` (mlx-lm's llama family, plain KV caches) runs the top block
at the answer position alone; ``answer_logits`` (any other model) reads the
whole model's logits there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.base import create_attention_mask
from mlx_lm.models.cache import KVCache

from mlx_align.model.caches import all_plain_kv
from mlx_align.model.shared_prompts import supports_shared_prompts

# Judge-text tokens per forward: 32 and 64 alike, 128 ~15% slower on the CPU.
CHUNK = 32


@dataclass
class Share:
    """Some of a call's rows, run on one stream: suffix tokens (right-padded),
    each row's answer index, its caches, and the answer vectors picked so far."""

    tokens: mx.array
    last: mx.array
    cache: list
    stream: mx.Stream
    answer: mx.array | None = None


def run_chunks(shares: list[Share], forward: Callable) -> None:
    """Every share's tokens CHUNK at a time through ``forward(share, tokens)``,
    each on its stream, all shares' chunks evaluated together; picks each
    row's output at its answer index into ``share.answer``."""
    for start in range(0, max(s.tokens.shape[1] for s in shares), CHUNK):
        pending = []
        for share in shares:
            if start >= share.tokens.shape[1]:
                continue
            with mx.stream(share.stream):
                out = forward(share, share.tokens[:, start : start + CHUNK])
                share.answer = pick_answer(out, share.last, start, share.answer)
            pending += [share.answer, [c.state for c in share.cache]]
        mx.eval(pending)


def answer_logits(model: nn.Module, shares: list[Share]) -> mx.array:
    """Each row's logits at its answer position: whole-model forwards, CHUNK tokens each."""
    run_chunks(shares, lambda share, tokens: model(tokens, cache=share.cache))
    return mx.concatenate([s.answer for s in shares])


# ``answer_hidden`` re-writes the top block as llama's (pre-norm attention,
# pre-norm MLP, both residual): it serves the mlx-lm classes whose block is
# exactly that. A name list, unlike the probed fast paths, because a block
# with the same parts in another order (olmo, gemma) would pass any check of
# its parts and compute something else.
LLAMA_BLOCK_MODELS = {"llama", "mistral", "qwen2", "qwen3"}


def splits_top_layer(model: nn.Module, cache: list) -> bool:
    """Whether `answer_hidden` serves: a llama-block model (``LLAMA_BLOCK_MODELS``)
    whose attention takes shared prompts, with plain KV caches."""
    if getattr(model, "model_type", None) not in LLAMA_BLOCK_MODELS:
        return False
    if not supports_shared_prompts(model) or len(model.model.layers) < 2:
        return False
    return all_plain_kv(cache)


def answer_hidden(backbone: nn.Module, shares: list[Share]) -> mx.array:
    """Each row's final hidden state at its answer position, the top block run there alone.

    Every block below the top runs on every token, CHUNK at a time through
    the cache, as the backbone's own forward does. The top block's output
    matters only at the answer, so on the other tokens it forms just its
    keys and values (its attention there sees one key, and its output,
    never evaluated, costs nothing); its attention over all keys, MLP and
    norm then run for the answer position alone. That skips a 1/layers
    share of the attention's exponentials and of the MLP: on the CPU the
    judge's bulk.
    """
    *body, top = backbone.layers

    def below_top(share: Share, tokens: mx.array) -> mx.array:
        h = backbone.embed_tokens(tokens)
        mask = create_attention_mask(h, share.cache[0])
        for block, c in zip(body, share.cache, strict=False):
            h = block(h, mask, c)
        top.self_attn(top.input_layernorm(h), None, _KeysOnly(share.cache[-1]))
        return h

    run_chunks(shares, below_top)
    hidden = []
    for share in shares:
        with mx.stream(share.stream):
            stored = share.cache[-1]
            where = stored.offset - share.tokens.shape[1] + share.last  # absolute
            seen = mx.arange(stored.offset)[None] <= where[:, None]
            x = share.answer[:, None]
            h = x + top.self_attn(
                top.input_layernorm(x), seen[:, None, None], _Stored(stored, where)
            )
            h = h + top.mlp(top.post_attention_layernorm(h))
            hidden.append(backbone.norm(h)[:, 0])
    return mx.concatenate(hidden)


class _KeysOnly:
    """A block's cache that stores its keys and values and hands its attention one key.

    The attention's output is then wrong and is not used: only the keys and
    values are wanted."""

    def __init__(self, cache: KVCache):
        self.cache, self.offset = cache, cache.offset

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        self.cache.update_and_fetch(keys, values)
        return keys[..., :1, :], values[..., :1, :]


class _Stored:
    """The top block's cache for the answer queries: every stored key and value,
    at per-row positions ``where`` (the answer's key is stored already)."""

    def __init__(self, cache: KVCache, where: mx.array):
        self.cache, self.offset = cache, where

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        end = self.cache.offset
        return self.cache.keys[..., :end, :], self.cache.values[..., :end, :]


def pick_answer(
    out: mx.array, last: mx.array, start: int, answer: mx.array | None
) -> mx.array:
    """Each row's vector at position ``last`` if it lies in this chunk (at ``start``), else the earlier pick."""
    here = mx.clip(last - start, 0, out.shape[1] - 1)
    picked = mx.take_along_axis(out, here[:, None, None], axis=1)[:, 0]
    if answer is None:
        return picked
    inside = ((last >= start) & (last < start + out.shape[1]))[:, None]
    return mx.where(inside, picked, answer)
