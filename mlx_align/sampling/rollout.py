"""Group sampling for GRPO: G completions of each prompt, every prompt prefilled once.

Each prompt runs through the model once (batch 1); its keys and values are
then repeated G times along the batch axis and the completions are decoded
together, each row stopping at an EOS token or the token limit. Finished
rows repeat EOS until every row is done; completions are trimmed after
their EOS.

Two decoders, same tokens (tested; same seed, same samples too for one
prompt):

* compiled (``supports_compiled_decode``: models with plain KV caches, probed): all
  prompts' rows decode in one batch of B * G rows. Each layer's keys and
  values live in a fixed buffer (B * G, kv_heads, bucket(longest prompt) +
  max_tokens, head_dim) with every prompt left-padded to end at the same
  column. One ``mx.compile``d step writes the fed tokens' keys at that shared
  ``column`` (an array, so every step replays the same trace), rotates row r
  to its own position ``column - pad[r]``, attends to columns pad[r] ..
  column and samples the next tokens. Python syncs only every
  ``CHECK_EVERY`` steps, to stop once all rows are done.
* eager (any mlx-lm model): mlx-lm's growing KV cache, one prompt at a time;
  the graph is rebuilt in Python and evaluated every token.

On the CPU backend most of a step is the kernels, chiefly BLAS matmuls of
only a few rows (OpenBLAS packs the whole weight each call: 4 rows cost
about half of what 32 do), so one step of B * G rows costs well under B
steps of G rows: for the ``small`` preset with LoRA, 32 rows take about 2x
the time of 8, and a micro-batch of 4 prompts (G = 8, 32 new tokens)
samples ~1.4-1.8x faster batched than prompt by prompt; the prefill of each
prompt is not shared. The compiled step also saves the Python graph
building, ~15-25% of a step at G = 4.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import make_prompt_cache

from mlx_align.batches.planning import bucket_for, bucket_lengths
from mlx_align.model.caches import all_plain_kv, cache_kinds, repeat_rows
from mlx_align.model.logprobs import vocab_size
from mlx_align.model.probes import differs, probe_tokens, probed

# Rows that are all done are noticed within this many steps; the extra
# columns are EOS and trimmed.
CHECK_EVERY = 8
# Prompts share a few KV buffer lengths (the batching ladder), so compiled
# shapes stay few; a longer prompt gets a buffer of its own length.
PROMPT_BUCKETS = bucket_lengths(4096)


@dataclass
class Group:
    """One prompt's G sampled completions (token ids, EOS included when it was reached)."""

    prompt: list[int]
    completions: list[list[int]]
    # Multi-turn completions: 1 on the model's own tokens, 0 on tool turns and
    # template glue (``sampling/conversations.py``); None: all the model's.
    masks: list[list[int]] | None = None
    # Each completion's keys and values, to continue it (``keep_history``).
    histories: list[RowHistory] | None = None


@dataclass
class RowHistory:
    """One sampled row's keys and values in every layer, (1, kv_heads, n,
    head_dim) each: its prompt and every token it sampled but the last (which
    was never fed). ``continue_rows`` feeds more tokens after it."""

    keys: list[mx.array]
    values: list[mx.array]


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
    """Whether the compiled decoder's fixed buffers decode as mlx-lm does: every
    layer keeps plain keys and values (``KVCache``: no window, no recurrent
    state), its RoPE takes one offset per row, and one step of two
    left-padded prompts gives mlx-lm's own logits (``model/probes.py``)."""
    return probed(
        model, "compiled decoding", _check_compiled_decode, "decoding eagerly"
    )


def _check_compiled_decode(model: nn.Module) -> str | None:
    cache = make_prompt_cache(model)
    if not all_plain_kv(cache):
        return f"its layers cache {cache_kinds(cache)}, not plain keys and values"
    prompts = probe_tokens(vocab_size(model), rows=2, length=5)
    prompts, fed = [prompts[0][:4], prompts[1][:2]], mx.array([7, 11])
    caches = [make_prompt_cache(model) for _ in prompts]  # batch 1 each, as decoded
    for prompt, cache in zip(prompts, caches, strict=True):
        model(mx.array(prompt)[None], cache=cache)
    keys, values, pad, column = _slot_buffers(caches, 1, max_tokens=2)
    logits, *_ = _slot_logits(model, fed, column, pad, keys, values)
    expected = [  # mlx-lm's own next step on each prompt's cache
        model(token.reshape(1, 1), cache=cache)[0, -1]
        for token, cache in zip(fed, caches, strict=True)
    ]
    return differs(logits, mx.stack(expected), model)


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
    """Sample ``group_size`` completions of ``prompt`` together, sharing the prompt's KV cache."""
    groups = sample_groups(
        model, [prompt], group_size, max_tokens, eos_ids, temperature, top_p, compiled
    )
    return groups[0]


def sample_groups(
    model: nn.Module,
    prompts: list[list[int]],
    group_size: int,
    max_tokens: int,
    eos_ids: set[int],
    temperature: float = 1.0,
    top_p: float = 1.0,
    compiled: bool | None = None,
    keep_history: bool = False,
) -> list[Group]:
    """Sample ``group_size`` completions of each prompt; one Group per prompt, in order.

    ``compiled``: use the compiled fixed-shape decoder, all prompts' rows in
    one batch (None: whenever ``supports_compiled_decode``); False keeps the
    eager loop, one prompt at a time (mlx-lm's cache holds one prompt length).
    ``keep_history``: each Group also keeps its rows' keys and values, so
    ``continue_rows`` goes on from them (the compiled decoder only; None else).
    """
    if max_tokens <= 0 or not prompts:
        return [Group(p, [[] for _ in range(group_size)]) for p in prompts]
    if compiled is None:
        compiled = supports_compiled_decode(model)
    eos = mx.array(sorted(eos_ids))
    completions, histories = [], []  # one prompt's G rows contiguous
    for batch in [prompts] if compiled else [[p] for p in prompts]:
        caches, first, done = _prefill(
            model, batch, group_size, eos, temperature, top_p
        )
        rows, kept = _decode_rows(
            model, caches, (first, done, eos), max_tokens, eos_ids,
            (temperature, top_p), compiled, keep_history,
        )  # fmt: skip
        completions += rows
        histories += kept or []
    return [
        Group(
            p,
            completions[i * group_size : (i + 1) * group_size],
            histories=histories[i * group_size : (i + 1) * group_size] or None,
        )
        for i, p in enumerate(prompts)
    ]


def continue_rows(
    model: nn.Module,
    histories: list[RowHistory],
    feeds: list[list[int]],
    max_tokens: int,
    eos_ids: set[int],
    temperature: float = 1.0,
    top_p: float = 1.0,
) -> tuple[list[list[int]], list[RowHistory]]:
    """Each row's ``feeds`` fed after its history (its last sampled token first,
    then e.g. a tool turn), then sampled on as ``sample_groups`` samples: the
    new completions and histories. Nothing before the feeds is encoded again."""
    eos = mx.array(sorted(eos_ids))
    caches, logits = [], []
    for history, feed in zip(histories, feeds, strict=True):
        cache = make_prompt_cache(model)
        for layer, keys, values in zip(cache, history.keys, history.values, strict=True):  # fmt: skip
            layer.update_and_fetch(keys, values)
        logits.append(model(mx.array(feed)[None], cache=cache)[:, -1, :])
        caches.append(cache)
    logits = mx.concatenate(logits)
    first, done = _pick_tokens(logits, mx.zeros((len(feeds),), dtype=mx.bool_), eos, temperature, top_p)  # fmt: skip
    rows, kept = _decode_rows(
        model, caches, (first, done, eos), max_tokens, eos_ids,
        (temperature, top_p), True, True,
    )  # fmt: skip
    return rows, kept


def _decode_rows(model, caches, start, max_tokens, eos_ids, sampling, compiled, keep):
    """Decode from the prefilled ``caches``; each row's completion (trimmed after
    its stop token) and, with ``keep`` on the compiled decoder, its history."""
    first, done, eos = start
    if not compiled:
        columns = _decode_eager(model, caches, first, done, eos, max_tokens, *sampling)
        rows = mx.stack(columns, axis=1).tolist()
        return [trim_at_eos(row, eos_ids) for row in rows], None
    columns, (keys, values, pad, column) = _decode_compiled(
        model, caches, first, done, eos, max_tokens, *sampling
    )
    rows = [trim_at_eos(row, eos_ids) for row in mx.stack(columns, axis=1).tolist()]
    if not keep:
        return rows, None
    start_column, pads = column.item(), pad.tolist()
    histories = []
    for r, (row, p) in enumerate(zip(rows, pads, strict=True)):
        end = start_column + max(len(row) - 1, 0)  # the last token was never fed
        histories.append(RowHistory([k[r : r + 1, :, p:end] for k in keys], [v[r : r + 1, :, p:end] for v in values]))  # fmt: skip
    mx.eval([(h.keys, h.values) for h in histories])
    return rows, histories


def _prefill(model, prompts, group_size, eos, temperature, top_p):
    """Each prompt once through mlx-lm's cache (batch 1); the first token of its G rows.

    Returns the per-prompt caches and the (B * G,) first tokens and done flags.
    """
    caches, logits = [], []
    for prompt in prompts:
        caches.append(make_prompt_cache(model))
        logits.append(model(mx.array(prompt)[None], cache=caches[-1])[:, -1, :])
    logits = mx.repeat(mx.concatenate(logits), group_size, axis=0)  # (B * G, V)
    done = mx.zeros((logits.shape[0],), dtype=mx.bool_)
    return caches, *_pick_tokens(logits, done, eos, temperature, top_p)


def _decode_eager(model, caches, token, done, eos, max_tokens, temperature, top_p):
    """Token by token on mlx-lm's cache of one prompt, evaluated each step; returns the (G,) columns."""
    (cache,) = caches
    repeat_rows(cache, token.shape[0])  # one prefill, G copies of its state
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
    """One layer's fixed-size KV buffer of left-padded rows; every row writes at ``column``.

    Row r's prompt fills the columns from pad[r] up to the first decode
    column, so the token fed sits at RoPE position ``offset[r] = column -
    pad[r]`` and attends to columns pad[r] .. column.
    """

    def __init__(self, keys: mx.array, values: mx.array, column: mx.array, pad):
        self.keys, self.values = keys, values  # (rows, kv_heads, L, head_dim)
        self.column, self.pad = column, pad  # () and (rows,) int32
        self.offset = column - pad  # (rows,) read by the attention's RoPE

    def make_mask(
        self, n: int, return_array: bool = False, window_size=None
    ) -> mx.array:
        columns = mx.arange(self.keys.shape[2])
        visible = (columns >= self.pad[:, None]) & (columns <= self.column)
        return visible[:, None, None, :]  # (rows, 1, 1, L), one query per row

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        start = self.column.reshape(1)
        self.keys = mx.slice_update(self.keys, keys, start, axes=(2,))
        self.values = mx.slice_update(self.values, values, start, axes=(2,))
        return self.keys, self.values


def _decode_compiled(model, caches, token, done, eos, max_tokens, temperature, top_p):
    """The eager loop's tokens from one compiled fixed-shape step; returns the
    (B * G,) columns, and the buffers with the pads and the first decode column."""
    keys, values, pad, column = _slot_buffers(
        caches, token.shape[0] // len(caches), max_tokens
    )
    step = _compiled_step(model, temperature, top_p)
    columns, start = [token], column
    for i in range(1, max_tokens):
        if i % CHECK_EVERY == 0 and done.all().item():
            break
        token, done, column, keys, values = step(
            token, done, column, pad, eos, keys, values
        )
        columns.append(token)
    return columns, (keys, values, pad, start)


def _slot_buffers(caches: list, group_size: int, max_tokens: int):
    """Each layer's (B * G, kv_heads, L, head_dim) key and value buffers from the
    prompts' batch-1 mlx-lm caches, every prompt left-padded to end at the
    same column; the (B * G,) pads and the first decode column."""
    lengths = [cache[0].offset for cache in caches]
    start = max(lengths)  # every prompt ends here; the first fed token goes here
    bucket = bucket_for(start, PROMPT_BUCKETS) if start <= PROMPT_BUCKETS[-1] else start
    length = bucket + max_tokens  # the last token fed sits at start + max_tokens - 2

    def buffer(prefix: mx.array) -> mx.array:  # (1, kv, P, hd) -> (G, kv, L, hd)
        widths = [(0, 0), (0, 0), (start - prefix.shape[2], length - start), (0, 0)]
        return mx.repeat(mx.pad(prefix, widths), group_size, axis=0)

    # mlx-lm's buffers run past ``offset`` in steps of 256 columns: cut them there.
    layers = list(zip(*caches, strict=True))  # per layer, each prompt's mlx-lm cache
    keys = [
        mx.concatenate([buffer(c.keys[..., : c.offset, :]) for c in layer])
        for layer in layers
    ]
    values = [
        mx.concatenate([buffer(c.values[..., : c.offset, :]) for c in layer])
        for layer in layers
    ]
    pad = mx.repeat(mx.array([start - n for n in lengths], dtype=mx.int32), group_size)
    return keys, values, pad, mx.array(start, dtype=mx.int32)


def _slot_logits(model, token, column, pad, keys, values):
    """Feed (rows,) tokens at ``column``: their (rows, V) logits and the updated buffers."""
    caches = [_SlotCache(k, v, column, pad) for k, v in zip(keys, values, strict=True)]
    logits = model(token[:, None], cache=caches)[:, -1, :]  # (rows, V)
    return logits, [c.keys for c in caches], [c.values for c in caches]


# Compiled steps of the latest model only: each holds its model, so the id
# in its key is never reused while the entry lives.
_compiled_steps: dict[tuple, Callable] = {}


def _compiled_step(model: nn.Module, temperature: float, top_p: float) -> Callable:
    """Feed (rows,) tokens at ``column``, sample the next ones and advance the KV buffers.

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

        def step(token, done, column, pad, eos, keys, values):
            logits, keys, values = _slot_logits(model, token, column, pad, keys, values)
            token, done = _pick_tokens(logits, done, eos, temperature, top_p)
            return token, done, column + 1, keys, values

        state = [model.state, mx.random.state]
        _compiled_steps[key] = mx.compile(step, inputs=state, outputs=[mx.random.state])
    return _compiled_steps[key]


def trim_at_eos(tokens: list[int], eos_ids: set[int]) -> list[int]:
    for i, token in enumerate(tokens):
        if token in eos_ids:
            return tokens[: i + 1]
    return tokens
