"""Length-bucketed batches padded to a few fixed lengths.

Every distinct batch shape is a separate compiled training step (and, on the
CPU backend, a g++ build), so rows are padded to the next length on a short
ladder (steps of 16, then ~1.25x): at most about a fifth of a batch is
padding, and a run sees a handful of shapes. A batch short of rows is filled with empty
rows (mask 0) so the batch dimension never changes either.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import mlx.core as mx
import numpy as np

from mlx_align.core import distributed
from mlx_align.data.tokenize import Encoded


def bucket_lengths(max_length: int) -> list[int]:
    """32, 48, 64, 80, 96, 112, 128, 160, 192, 240, ... below ``max_length``, then it.

    Steps of 16 up to 128, then about a quarter of the length (in 16s): at
    most ~20% of a batch is padding, and compiled shapes stay few (a new
    shape costs well under a second on Metal, a few on the CPU's g++ JIT).
    """
    ladder, n = [], 32
    while n < max_length:
        ladder.append(n)
        n += max(16, n // 4 // 16 * 16)
    return [*ladder, max_length]


def piece_bucket_lengths(max_length: int) -> list[int]:
    """The ladder for the short pieces of a shared-prompt batch (prompts, completions):
    steps of 8 up to 64 (a 17-token completion pads to 24, not 32), then ``bucket_lengths``."""
    fine = [n for n in range(8, 65, 8) if n < max_length]
    return fine + [n for n in bucket_lengths(max_length) if n > max(fine, default=0)]


def bucket_for(length: int, buckets: Sequence[int]) -> int:
    for n in buckets:
        if length <= n:
            return n
    raise ValueError(
        f"sequence of {length} tokens is longer than the largest bucket {buckets[-1]}"
    )


def pad_examples(
    examples: Sequence[Encoded],
    rows: int,
    buckets: Sequence[int],
    pad_id: int,
    width: int | None = None,
) -> tuple[mx.array, mx.array]:
    """``tokens`` (rows, T) int32 and ``loss_mask`` (rows, T) float32; T is the
    bucket of the longest example, or ``width``.

    ``loss_mask[b, t]`` is 1 where token t is a trained target: inside the
    completion and never position 0 (no token predicts it).
    """
    longest = max((len(e.tokens) for e in examples), default=1)  # none: a filler batch
    width = width or bucket_for(longest, buckets)
    tokens = np.full((rows, width), pad_id, dtype=np.int32)
    mask = np.zeros((rows, width), dtype=np.float32)
    for row, example in enumerate(examples):
        n = len(example.tokens)
        tokens[row, :n] = example.tokens
        mask[row, max(example.completion_start, 1) : n] = 1.0
    return mx.array(tokens), mx.array(mask)


@dataclass
class BatchPlan:
    """Global batches of example indices, sorted by length, visited in a seeded order.

    The order of epoch e is a permutation drawn from ``(seed, e)`` alone, so
    batch k of a run can be found without replaying batches 0..k-1: this is
    what makes a resumed run see the same data as an uninterrupted one.

    A global batch holds ``per_rank`` examples for every rank
    (``distributed.py``); ``local`` is this rank's slice of one.
    """

    batches: list[list[int]]
    seed: int
    per_rank: int = 0  # 0: the whole batch is this rank's

    @classmethod
    def by_length(
        cls, lengths: Sequence[int], per_rank: int, seed: int, fill_last: bool = False
    ) -> BatchPlan:
        """``fill_last``: top a short last batch up with the shortest examples, so
        every rank's share is full (for stages that have no filler rows)."""
        batch_size = per_rank * distributed.size()
        order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        if fill_last and len(batches[-1]) < batch_size:
            short = batches[-1]
            batches[-1] = (
                short + [i for i in order if i not in short][: batch_size - len(short)]
            )
        return cls(batches, seed, per_rank)

    def local_batch(self, k: int) -> list[int]:
        """This rank's examples of global batch k."""
        return self.local(self.batch(k))

    def local(self, indices: Sequence[int]) -> list[int]:
        """This rank's examples of the global batch ``indices``."""
        if not self.per_rank or distributed.size() == 1:
            return list(indices)
        return distributed.share(indices, self.per_rank)

    def __len__(self) -> int:
        return len(self.batches)

    def batch(self, k: int) -> list[int]:
        epoch, position = divmod(k, len(self.batches))
        return self.batches[self._order(epoch)[position]]

    def _order(self, epoch: int) -> np.ndarray:
        if (
            getattr(self, "_epoch", None) != epoch
        ):  # one permutation per epoch, not per batch
            self._epoch = epoch
            self._permutation = np.random.default_rng([self.seed, epoch]).permutation(
                len(self.batches)
            )
        return self._permutation

    def iterate(self, start: int = 0) -> Iterator[list[int]]:
        k = start
        while True:
            yield self.batch(k)
            k += 1


def visited_batches(plan: BatchPlan, settings, split: str) -> list[list[int]]:
    """The batches of ``plan`` a run reads: on ``train``, every batch its
    ``steps`` x ``grad_accumulation`` micro-batches draw; on ``valid``, the
    first ``eval_batches`` (all when negative)."""
    if split == "valid":
        limit = settings.eval_batches
        return plan.batches if limit < 0 else plan.batches[:limit]
    seen: set[tuple[int, ...]] = set()
    for k in range(settings.steps * settings.grad_accumulation):
        seen.add(tuple(plan.batch(k)))
        if len(seen) == len(plan):  # every batch: no need to replay later epochs
            break
    return [list(b) for b in sorted(seen)]


def local_batches(make: Callable, plan: BatchPlan, settings, split: str) -> Iterator:
    """``make`` of this rank's share of each batch a run visits (``visited_batches``)."""
    return (make(plan.local(b)) for b in visited_batches(plan, settings, split))
