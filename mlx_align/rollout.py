"""Group sampling for GRPO: G completions of one prompt in one batch, prompt prefilled once.

The prompt runs through the model once (batch 1); its keys and values are
then repeated G times along the batch axis and the G completions are decoded
together, each stopping at an EOS token or the token limit. Finished rows
repeat EOS until every row is done; completions are trimmed after their EOS.

Two decoders, same tokens (tested; same seed, same samples too):

* compiled (``supports_compiled_decode``: mlx-lm llama-family models): each
  layer's keys and values live in a fixed buffer (G, kv_heads,
  bucket(prompt) + max_tokens, head_dim). One ``mx.compile``d step writes
  the fed token's keys at ``offset`` (an array, as is the RoPE offset, so
  every step replays the same trace), attends to positions <= offset and
  samples the next token. Python syncs only every ``CHECK_EVERY`` steps, to
  stop once all rows are done.
* eager (any mlx-lm model): mlx-lm's growing KV cache; the graph is rebuilt
  in Python and evaluated every token.

On the CPU backend the compiled step saves the Python graph building and
some kernel launches, ~15-25% of a step for the ``small`` preset at G = 4;
most of a step is the kernels themselves, chiefly BLAS matmuls of only G
rows (OpenBLAS packs the whole weight each call: 4 rows cost about half of
what 32 do).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import make_prompt_cache
from mlx_lm.models.rope_utils import Llama3RoPE, SuScaledRoPE, YarnRoPE

from .data.batching import bucket_for, bucket_lengths
from .logprobs import supports_shared_prompts

# Rows that are all done are noticed within this many steps; the extra
# columns are EOS and trimmed.
CHECK_EVERY = 8
# Prompts share a few KV buffer lengths (the batching ladder), so compiled
# shapes stay few; a longer prompt gets a buffer of its own length.
PROMPT_BUCKETS = bucket_lengths(4096)
# RoPE variants that take the position offset as an array (DynamicNTK does not).
ARRAY_OFFSET_ROPES = (nn.RoPE, Llama3RoPE, SuScaledRoPE, YarnRoPE)


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


def _pick_tokens(
    logits: mx.array, done: mx.array, eos: mx.array, temperature: float, top_p: float
) -> tuple[mx.array, mx.array]:
    """(G, V) logits, (G,) done -> next tokens (G,) and done (G,); finished rows repeat EOS."""
    token = mx.where(done, eos[0], sample_next(logits, temperature, top_p))
    return token, done | (token[:, None] == eos[None]).any(axis=-1)


def supports_compiled_decode(model: nn.Module) -> bool:
    """Llama-family models with full attention and a RoPE that takes an array offset."""
    if not supports_shared_prompts(model):
        return False
    return all(
        not getattr(layer, "use_sliding", False)
        and isinstance(getattr(layer.self_attn, "rope", None), ARRAY_OFFSET_ROPES)
        for layer in model.model.layers
    )


def sample_group(
    model: nn.Module,
    prompt: list[int],
    group_size: int,
    max_tokens: int,
    eos_ids: set[int],
    temperature: float = 1.0,
    top_p: float = 1.0,
    compiled: bool | None = None,
) -> Group:
    """Sample ``group_size`` completions of ``prompt`` together, sharing the prompt's KV cache.

    ``compiled``: use the compiled fixed-shape decoder (None: whenever
    ``supports_compiled_decode``); False keeps the eager loop.
    """
    if max_tokens <= 0:
        return Group(prompt, [[] for _ in range(group_size)])
    if compiled is None:
        compiled = supports_compiled_decode(model)
    cache = make_prompt_cache(model)
    logits = model(mx.array(prompt)[None], cache=cache)[:, -1, :]  # (1, V)
    eos = mx.array(sorted(eos_ids))
    done = mx.zeros((group_size,), dtype=mx.bool_)
    first, done = _pick_tokens(
        mx.repeat(logits, group_size, axis=0), done, eos, temperature, top_p
    )
    decode = _decode_compiled if compiled else _decode_eager
    columns = decode(model, cache, first, done, eos, max_tokens, temperature, top_p)
    generated = mx.stack(columns, axis=1).tolist()  # (G, steps)
    return Group(prompt, [trim_at_eos(row, eos_ids) for row in generated])


def _decode_eager(model, cache, token, done, eos, max_tokens, temperature, top_p):
    """Token by token on mlx-lm's cache, evaluated each step; returns the (G,) columns."""
    for layer in cache:  # one prefill, G copies of its keys and values
        layer.keys = mx.repeat(layer.keys, token.shape[0], axis=0)
        layer.values = mx.repeat(layer.values, token.shape[0], axis=0)
    columns = [token]
    for _ in range(max_tokens - 1):
        mx.eval(token, done)
        if done.all().item():
            break
        logits = model(token[:, None], cache=cache)[:, -1, :]  # (G, V)
        token, done = _pick_tokens(logits, done, eos, temperature, top_p)
        columns.append(token)
    return columns


class _SlotCache:
    """One layer's fixed-size KV buffer: a step writes at ``offset`` and attends to <= offset."""

    def __init__(self, keys: mx.array, values: mx.array, offset: mx.array):
        self.keys, self.values = keys, values  # (G, kv_heads, L, head_dim)
        self.offset = offset  # () int32, the position of the token being fed

    def make_mask(
        self, n: int, return_array: bool = False, window_size=None
    ) -> mx.array:
        return mx.arange(self.keys.shape[2]) <= self.offset  # (L,), one query per row

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        start = self.offset.reshape(1)
        self.keys = mx.slice_update(self.keys, keys, start, axes=(2,))
        self.values = mx.slice_update(self.values, values, start, axes=(2,))
        return self.keys, self.values


def _decode_compiled(model, cache, token, done, eos, max_tokens, temperature, top_p):
    """The eager loop's tokens from one compiled fixed-shape step; returns the (G,) columns."""
    group_size, prompt_len = token.shape[0], cache[0].offset
    bucket = (
        bucket_for(prompt_len, PROMPT_BUCKETS)
        if prompt_len <= PROMPT_BUCKETS[-1]
        else prompt_len
    )
    length = (
        bucket + max_tokens
    )  # the last token fed sits at prompt_len + max_tokens - 2
    pad = [(0, 0), (0, 0), (0, length - prompt_len), (0, 0)]

    def buffer(prefix: mx.array) -> mx.array:  # (1, kv, P, hd) -> (G, kv, L, hd)
        return mx.repeat(mx.pad(prefix, pad), group_size, axis=0)

    keys = [buffer(layer.state[0]) for layer in cache]
    values = [buffer(layer.state[1]) for layer in cache]
    step = _compiled_step(model, temperature, top_p)
    offset, columns = mx.array(prompt_len, dtype=mx.int32), [token]
    for i in range(1, max_tokens):
        if i % CHECK_EVERY == 0 and done.all().item():
            break
        token, done, offset, keys, values = step(token, done, offset, eos, keys, values)
        columns.append(token)
    return columns


# Compiled steps of the latest model only: each holds its model, so the id
# in its key is never reused while the entry lives.
_compiled_steps: dict[tuple, Callable] = {}


def _compiled_step(model: nn.Module, temperature: float, top_p: float) -> Callable:
    """Feed (G,) tokens at ``offset``, sample the next ones and advance the KV buffers.

    The model's arrays and the random state are inputs, read afresh each
    call: an optimizer update is seen, and attaching adapters changes their
    number, which retraces. Python values are traced in: ``model.training``
    (dropout), temperature and top-p are in the key; a LoRA ``scale`` must
    not change.
    """
    key = (id(model), model.training, temperature, top_p)
    if key not in _compiled_steps:
        if any(k[0] != id(model) for k in _compiled_steps):
            _compiled_steps.clear()

        def step(token, done, offset, eos, keys, values):
            caches = [
                _SlotCache(k, v, offset) for k, v in zip(keys, values, strict=True)
            ]
            logits = model(token[:, None], cache=caches)[:, -1, :]  # (G, V)
            token, done = _pick_tokens(logits, done, eos, temperature, top_p)
            keys, values = [c.keys for c in caches], [c.values for c in caches]
            return token, done, offset + 1, keys, values

        state = [model.state, mx.random.state]
        _compiled_steps[key] = mx.compile(step, inputs=state, outputs=[mx.random.state])
    return _compiled_steps[key]


def trim_at_eos(tokens: list[int], eos_ids: set[int]) -> list[int]:
    for i, token in enumerate(tokens):
        if token in eos_ids:
            return tokens[: i + 1]
    return tokens
