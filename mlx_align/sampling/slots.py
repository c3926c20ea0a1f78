"""The compiled decoder's fixed-size key/value buffers ("slots"), and sampling one token.

Every layer keeps one (rows, kv_heads, L, head_dim) buffer of keys and one
of values. Each row's history is left-padded so that all rows end at the
same column; one ``mx.compile``d step writes the fed tokens' keys at that
shared ``column`` (an array, so every step replays the same trace), rotates
row r to its own position, attends to row r's columns only, and samples
the next tokens.

A row's columns are ``pad[r]`` up to the column written last, less a
*hole* ``[hole_start[r], hole_start[r] + hole_len[r])``: a continued row
(``feed_histories``) whose new tokens were fewer than the longest row's
leaves the rest of that chunk unused, and neither attends to it nor counts
it in its positions. A row's position is its own token count: ``column -
pad[r] - hole_len[r]`` for a column after its hole.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import mlx.core as mx
import mlx.nn as nn

from mlx_align.batches.planning import bucket_for, bucket_lengths

# Rows that are all done are noticed within this many steps; the extra
# columns are EOS and trimmed.
CHECK_EVERY = 8
# Histories share a few buffer lengths (the batching ladder), so compiled
# shapes stay few; a longer one gets a buffer of its own length.
PROMPT_BUCKETS = bucket_lengths(4096)


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


def pick_tokens(
    logits: mx.array, done: mx.array, eos: mx.array, temperature: float, top_p: float
) -> tuple[mx.array, mx.array]:
    """(G, V) logits, (G,) done -> next tokens (G,) and done (G,); finished rows repeat EOS."""
    token = mx.where(done, eos[0], sample_next(logits, temperature, top_p))
    return token, done | (token[:, None] == eos[None]).any(axis=-1)


@dataclass
class RowHistory:
    """One sampled row's keys and values in every layer, (1, kv_heads, n,
    head_dim) each: its prompt and every token it sampled but the last (which
    was never fed). ``rollout.continue_rows`` feeds more tokens after it."""

    keys: list[mx.array]
    values: list[mx.array]

    @property
    def length(self) -> int:
        return self.keys[0].shape[2]


class Slots(NamedTuple):
    """Every layer's buffers, and where each row's columns are."""

    keys: list[mx.array]
    values: list[mx.array]
    pad: mx.array  # (rows,) int32: each row's first column
    column: mx.array  # () int32: the column the next fed token is written at
    hole_start: mx.array  # (rows,) int32
    hole_len: mx.array  # (rows,) int32


class SlotCache:
    """One layer's buffers as mlx-lm's attention reads a cache: write the fed
    tokens at ``column``, mask each row to its own columns."""

    def __init__(self, keys: mx.array, values: mx.array, slots: Slots):
        self.keys, self.values = keys, values  # (rows, kv_heads, L, head_dim)
        self.slots = slots
        self.offset = slots.column - slots.pad - slots.hole_len  # (rows,) RoPE

    def make_mask(
        self, n: int, return_array: bool = False, window_size=None
    ) -> mx.array:
        """(rows, 1, n, L): query q of row r sees its columns up to column + q."""
        s = self.slots
        columns = mx.arange(self.keys.shape[2])[None, None, :]
        queries = (s.column + mx.arange(n))[None, :, None]
        start, hole, hole_end = (x[:, None, None] for x in (s.pad, s.hole_start, s.hole_start + s.hole_len))  # fmt: skip
        visible = (columns >= start) & (columns <= queries)
        visible = visible & ((columns < hole) | (columns >= hole_end))
        return visible[:, None]

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        start = self.slots.column.reshape(1)
        self.keys = mx.slice_update(self.keys, keys, start, axes=(2,))
        self.values = mx.slice_update(self.values, values, start, axes=(2,))
        return self.keys, self.values


def buffer_length(end: int, max_tokens: int) -> int:
    """Columns for histories ending at ``end`` and ``max_tokens`` more."""
    bucket = bucket_for(end, PROMPT_BUCKETS) if end <= PROMPT_BUCKETS[-1] else end
    return bucket + max_tokens


def left_padded(rows: list[list[mx.array]], lengths: list[int], end: int, length: int) -> list[mx.array]:  # fmt: skip
    """Per layer, the rows' (1, kv, n, hd) arrays ending at column ``end`` of one
    (rows, kv, length, hd) buffer."""
    return [
        mx.concatenate(
            [
                mx.pad(x, [(0, 0), (0, 0), (end - n, length - end), (0, 0)])
                for x, n in zip(layer, lengths, strict=True)
            ]
        )  # fmt: skip
        for layer in zip(*rows, strict=True)
    ]


def slots_of(keys, values, lengths: list[int], end: int) -> Slots:
    pad = mx.array([end - n for n in lengths], dtype=mx.int32)
    column = mx.array(end, dtype=mx.int32)
    zeros = mx.zeros((len(lengths),), dtype=mx.int32)
    return Slots(keys, values, pad, column, zeros + end, zeros)


def slots_from_caches(caches: list, group_size: int, max_tokens: int) -> Slots:
    """The prompts' batch-1 mlx-lm caches as slots, each repeated for its
    ``group_size`` rows; the first decode column is where the longest ends."""
    lengths = [cache[0].offset for cache in caches]
    end = max(lengths)
    length = buffer_length(end, max_tokens)
    # mlx-lm's buffers run past ``offset`` in steps of 256 columns: cut them there.
    per_prompt = [
        (
            [c.keys[..., : c.offset, :] for c in cache],
            [c.values[..., : c.offset, :] for c in cache],
        )  # fmt: skip
        for cache in caches
    ]
    keys = left_padded([k for k, _ in per_prompt], lengths, end, length)
    values = left_padded([v for _, v in per_prompt], lengths, end, length)
    keys = [mx.repeat(k, group_size, axis=0) for k in keys]
    values = [mx.repeat(v, group_size, axis=0) for v in values]
    return slots_of(keys, values, [n for n in lengths for _ in range(group_size)], end)


def slot_logits(model: nn.Module, tokens: mx.array, slots: Slots) -> tuple[mx.array, Slots]:  # fmt: skip
    """Feed (rows, n) tokens at ``slots.column``: their (rows, n, V) logits, and the
    slots with their keys and values written (the column where it was)."""
    caches = [SlotCache(k, v, slots) for k, v in zip(slots.keys, slots.values, strict=True)]  # fmt: skip
    logits = model(tokens, cache=caches)
    return logits, slots._replace(keys=[c.keys for c in caches], values=[c.values for c in caches])  # fmt: skip


def feed_histories(
    model: nn.Module,
    histories: list[RowHistory],
    feeds: list[list[int]],
    max_tokens: int,
) -> tuple[mx.array, Slots]:
    """The rows' histories as slots, then each row's ``feeds`` in one chunk (rows
    with fewer feed tokens leave a hole): the (rows, V) logits after each row's
    last fed token, and the slots at the first decode column."""
    lengths = [h.length for h in histories]
    end, width = max(lengths), max(map(len, feeds))
    length = buffer_length(end + width, max_tokens)
    keys = left_padded([h.keys for h in histories], lengths, end, length)
    values = left_padded([h.values for h in histories], lengths, end, length)
    slots = slots_of(keys, values, lengths, end)
    chunk = mx.array([f + [f[-1]] * (width - len(f)) for f in feeds])  # (rows, width)
    logits, slots = slot_logits(model, chunk, slots)
    fed = mx.array([len(f) for f in feeds], dtype=mx.int32)
    last = mx.take_along_axis(logits, (fed - 1)[:, None, None], axis=1)[:, 0]
    slots = slots._replace(column=slots.column + width, hole_start=end + fed, hole_len=width - fed)  # fmt: skip
    return last, slots


# Compiled steps of the latest model only: each holds its model, so the id
# in its key is never reused while the entry lives.
_compiled_steps: dict[tuple, Callable] = {}


def compiled_step(model: nn.Module, temperature: float, top_p: float) -> Callable:
    """Feed (rows,) tokens at ``column``, sample the next ones and advance the buffers.

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

        def step(token, done, eos, keys, values, *where):
            logits, slots = slot_logits(model, token[:, None], Slots(keys, values, *where))  # fmt: skip
            token, done = pick_tokens(logits[:, -1, :], done, eos, temperature, top_p)
            return token, done, slots.keys, slots.values

        state = [model.state, mx.random.state]
        _compiled_steps[key] = mx.compile(step, inputs=state, outputs=[mx.random.state])
    return _compiled_steps[key]


def decode_slots(model, slots, token, done, eos, max_tokens, temperature, top_p):
    """``max_tokens`` columns of sampled tokens (the first is ``token``) from the
    compiled step; returns them and the slots as the last step left them."""
    step = compiled_step(model, temperature, top_p)
    columns = [token]
    for i in range(1, max_tokens):
        if i % CHECK_EVERY == 0 and done.all().item():
            break
        token, done, keys, values = step(token, done, eos, *slots)
        slots = slots._replace(keys=keys, values=values, column=slots.column + 1)
        columns.append(token)
    return columns, slots


def histories_of(slots: Slots, start: int, rows: list[list[int]]) -> list[RowHistory]:
    """Each decoded row's history: its columns, less its hole, up to the last
    token it fed (decoding began at column ``start``; its last token never was)."""
    pads, holes, spans = slots.pad.tolist(), slots.hole_start.tolist(), slots.hole_len.tolist()  # fmt: skip
    histories = []
    for r, row in enumerate(rows):
        end = start + max(len(row) - 1, 0)
        parts = [(pads[r], holes[r]), (holes[r] + spans[r], end)]
        keys = [mx.concatenate([k[r : r + 1, :, a:b] for a, b in parts], axis=2) for k in slots.keys]  # fmt: skip
        values = [mx.concatenate([v[r : r + 1, :, a:b] for a, b in parts], axis=2) for v in slots.values]  # fmt: skip
        histories.append(RowHistory(keys, values))
    mx.eval([(h.keys, h.values) for h in histories])
    return histories
