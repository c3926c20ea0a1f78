"""Padding-free batches: prompts with their completions packed end to end in a few rows.

A *tree* is one prompt and the completions scored after it (DPO: chosen and
rejected; GRPO: a group). Trees are laid end to end in rows of at most
``row_capacity`` tokens (first fit, longest first), each prompt once, each
completion right after its prompt's other completions::

    row: [ prompt_0 | chosen_0 | rejected_0 | prompt_1 | chosen_1 | ... | pad ]

A completion token sees its own prompt and the tokens of its own completion
before it, nothing else (``PackedCache.make_mask``), and carries the
position it would have in the unpacked ``prompt + completion`` row (RoPE), so
every log-prob equals scoring that row alone. No compute is spent on padding
except the tail of a row, and logits are formed only where a completion token
is predicted. Row width and target count are rounded up on the bucket ladder,
so a run sees a handful of compiled shapes.

The price is attention over whole rows: a row x row score matrix per head
(masked, not skipped) instead of short per-sequence ones. On MLX's CPU
backend, where each ``exp`` costs ~60 adds, that outweighs the padding saved
for small models (bench/README.md); hence ``--padding-free`` is opt-in.
"""

from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from mlx_align.batches.planning import bucket_for, bucket_lengths
from mlx_align.model.logprobs import (
    TokenStat,
    generation_logps,
    head_logps,
    head_logps_and_stat,
    vocab_size,
)
from mlx_align.model.probes import differs, probe_tokens, probed
from mlx_align.model.shared_prompts import supports_shared_prompts

ROW_CAPACITY = 512  # tokens per packed row: attention is quadratic in it


@dataclass(frozen=True)
class Tree:
    """A prompt (>= 1 token) and its completions; ``slots[k]`` is completion k's output index."""

    prompt: list[int]
    completions: list[list[int]]
    slots: list[int]

    def __len__(self) -> int:
        return len(self.prompt) + sum(map(len, self.completions))


LADDER = bucket_lengths(1 << 20)


def ladder_bucket(n: int) -> int:
    """``n`` rounded up on the bucket ladder (32, 48, ..., 128, 160, 192, 240, ...)."""
    return bucket_for(n, LADDER)


def pack_rows(trees: list[Tree], capacity: int) -> list[list[int]]:
    """Tree indices per row: first fit, longest tree first; a longer tree gets its own row."""
    rows: list[list[int]] = []
    free: list[int] = []
    for t in sorted(range(len(trees)), key=lambda t: -len(trees[t])):
        size = len(trees[t])
        row = next((r for r, room in enumerate(free) if room >= size), None)
        if row is None:
            rows.append([])
            free.append(max(capacity, size))
            row = len(rows) - 1
        rows[row].append(t)
        free[row] -= size
    return rows


def pack_trees(
    trees: list[Tree], n_slots: int, pad_id: int, row_capacity: int = ROW_CAPACITY
) -> tuple[mx.array, ...]:
    """``(tokens, positions, tree_ids, branches, sources, targets, membership)``.

    - ``tokens``, ``positions`` (R, W): ids and their unpacked positions;
    - ``tree_ids``, ``branches`` (R, W): the tree of each token (-1 on pad)
      and 0 for its prompt, k + 1 for its completion k (-1 on pad);
    - ``sources`` (T,): flat index into (R*W) of the position whose logits
      predict ``targets[t]`` (T,), the completion tokens;
    - ``membership`` (n_slots, T): 1 where target t belongs to slot s, so
      ``membership @ logps`` sums each completion and ``membership.sum(-1)``
      counts its tokens. Slots no tree names stay empty (filler).
    """
    rows = pack_rows(trees, row_capacity)
    width = ladder_bucket(max(sum(len(trees[t]) for t in row) for row in rows))
    shape = (len(rows), width)
    tokens = np.full(shape, pad_id, dtype=np.int32)
    positions = np.zeros(shape, dtype=np.int32)
    tree_ids = np.full(shape, -1, dtype=np.int32)
    branches = np.full(shape, -1, dtype=np.int32)
    sources, targets, owners = [], [], []
    for r, row in enumerate(rows):
        at = 0
        for t in row:
            tree, n_prompt = trees[t], len(trees[t].prompt)
            span = slice(at, at + n_prompt)
            tokens[r, span], positions[r, span] = tree.prompt, np.arange(n_prompt)
            tree_ids[r, span], branches[r, span] = t, 0
            last_prompt = r * width + at + n_prompt - 1
            at += n_prompt
            for k, (completion, slot) in enumerate(
                zip(tree.completions, tree.slots, strict=True)
            ):
                n = len(completion)
                span = slice(at, at + n)
                tokens[r, span] = completion
                positions[r, span] = np.arange(n_prompt, n_prompt + n)
                tree_ids[r, span], branches[r, span] = t, k + 1
                start = r * width + at
                sources += [last_prompt, *range(start, start + n - 1)][:n]
                targets += completion
                owners += [slot] * n
                at += n
    n_targets = ladder_bucket(max(len(targets), 1))
    fill = n_targets - len(targets)
    membership = np.zeros((n_slots, n_targets), dtype=np.float32)
    membership[owners, np.arange(len(owners))] = 1.0
    arrays = (
        tokens,
        positions,
        tree_ids,
        branches,
        np.array(sources + [0] * fill, dtype=np.int32),
        np.array(targets + [pad_id] * fill, dtype=np.int32),
        membership,
    )
    return tuple(mx.array(a) for a in arrays)


# ---------------------------------------------------------------- the packed forward


class PositionalRoPE(nn.Module):
    """A layer's RoPE that also takes one position per token: ``offset`` of shape (B, L).

    ``mx.fast.rope`` takes a scalar or per-row offset; a (B, H, L, D) input is
    viewed as B*L one-token rows so each token gets its own. Any other offset
    goes to the wrapped RoPE unchanged (generation, the KV cache).
    """

    def __init__(self, rope: nn.Module):
        super().__init__()
        self.rope = rope

    def __call__(self, x: mx.array, offset=0) -> mx.array:
        if not isinstance(offset, mx.array) or offset.ndim < 2:
            return self.rope(x, offset=offset)
        b, h, n, d = x.shape
        rows = x.transpose(0, 2, 1, 3).reshape(b * n, h, 1, d)
        rows = self.rope(rows, offset=offset.reshape(-1))
        return rows.reshape(b, n, h, d).transpose(0, 2, 1, 3)


PACKABLE_ROPES = {"RoPE", "Llama3RoPE", "YarnRoPE", "PositionalRoPE"}


def supports_packing(model: nn.Module) -> bool:
    """Whether packed rows score as ``model`` does: every layer's attention takes a
    plain RoPE (``mx.fast.rope``, llama 3 and yarn too) that ``PositionalRoPE``
    can wrap, and a packed probe (two trees, two completions each) gives the
    model's own log-probs (``model/probes.py``)."""
    return probed(model, "packing", _check, "padded rows")


def _check(model: nn.Module) -> str | None:
    if not supports_shared_prompts(model):
        return "it takes no shared prompts (said above)"
    layers = model.model.layers
    ropes = [type(getattr(layer.self_attn, "rope", None)).__name__ for layer in layers]
    if not set(ropes) <= PACKABLE_ROPES:
        return f"a layer's RoPE is {sorted(set(ropes) - PACKABLE_ROPES)[0]}"
    enable_packing(model)
    tokens = probe_tokens(vocab_size(model), rows=3, length=12)
    trees = [
        Tree(tokens[0][:8], [tokens[1][:6], tokens[2][:2]], [0, 2]),
        Tree(tokens[2][:2], [tokens[0][1:4], tokens[1][3:10]], [1, 3]),
    ]
    summed, _ = packed_completion_logps(model, pack_trees(trees, 4, 0))
    rows = [t.prompt + c for t in trees for c in t.completions]
    spans = [len(c) for t in trees for c in t.completions]
    expected = [
        e[-n:].sum() for e, n in zip(generation_logps(model, rows), spans, strict=True)
    ]
    return differs(summed[mx.array([0, 2, 1, 3])], mx.stack(expected), model)


def enable_packing(model: nn.Module) -> None:
    """Give each attention of ``model`` (this instance only) a ``PositionalRoPE``; idempotent."""
    for layer in model.model.layers:
        if not isinstance(layer.self_attn.rope, PositionalRoPE):
            layer.self_attn.rope = PositionalRoPE(layer.self_attn.rope)


class PackedCache:
    """Stands in for a KV cache over packed rows: per-token positions and a tree mask."""

    def __init__(self, positions: mx.array, tree_ids: mx.array, branches: mx.array):
        self.offset = positions  # (R, W): read by the layer's (Positional)RoPE
        self.tree_ids, self.branches = tree_ids, branches

    def make_mask(
        self, n: int, return_array: bool = False, window_size=None
    ) -> mx.array:
        """(R, 1, W, W): earlier tokens of the same tree, in its prompt or the query's own branch."""
        causal = mx.tril(mx.ones((n, n), dtype=mx.bool_))[None]
        if window_size is not None:  # keys fewer than window_size positions back
            distance = self.offset[:, :, None] - self.offset[:, None, :]  # (R, W, W)
            causal = causal & (distance < window_size)
        same_tree = self.tree_ids[:, :, None] == self.tree_ids[:, None, :]
        key_branch, query_branch = self.branches[:, None, :], self.branches[:, :, None]
        visible = (key_branch == 0) | (key_branch == query_branch)
        return (causal & same_tree & visible)[:, None]

    def update_and_fetch(self, keys: mx.array, values: mx.array):
        return keys, values


def packed_completion_logps(
    model: nn.Module, packed: tuple
) -> tuple[mx.array, mx.array]:
    """Summed log-probs and token counts per slot, (S,) each, of a ``packing.pack_trees`` batch.

    One forward over the packed rows; logits only at the T positions that
    predict a completion token. Equal to scoring each prompt + completion
    row on its own (tested).
    """
    logps, membership, _ = packed_target_logps(model, packed)
    return membership @ logps, membership.sum(axis=-1)


def packed_target_logps(
    model: nn.Module, packed: tuple, stat: TokenStat | None = None
) -> tuple[mx.array, mx.array, mx.array | None]:
    """Log-probs of the T completion targets, (T,), which slot holds each, the
    (S, T) ``membership`` (a slot's targets in order along T), and with
    ``stat`` that statistic of each target's distribution (T,) (else None)."""
    tokens, positions, tree_ids, branches, sources, targets, membership = packed
    enable_packing(model)
    caches = [PackedCache(positions, tree_ids, branches) for _ in model.model.layers]
    hidden = model.model(tokens, cache=caches)  # (R, W, D)
    hidden = hidden.reshape(-1, hidden.shape[-1])[sources]  # (T, D)
    if stat:
        logps, stats = head_logps_and_stat(model, hidden, targets, stat)
        return logps, membership, stats
    return head_logps(model, hidden, targets), membership, None
