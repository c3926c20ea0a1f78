"""Padding-free batches: prompts with their completions packed end to end in a few rows.

A *tree* is one prompt and the completions scored after it (DPO: chosen and
rejected; GRPO: a group). Trees are laid end to end in rows of at most
``row_capacity`` tokens (first fit, longest first), each prompt once, each
completion right after its prompt's other completions::

    row: [ prompt_0 | chosen_0 | rejected_0 | prompt_1 | chosen_1 | ... | pad ]

A completion token sees its own prompt and the tokens of its own completion
before it, nothing else (``logprobs.PackedCache.make_mask``), and carries the
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
import numpy as np

from .data.batching import bucket_for, bucket_lengths

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
