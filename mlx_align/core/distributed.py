"""Data parallelism over ``mx.distributed``: which rank this process is, and the collectives a run needs.

Under ``mlx.launch`` (ring over TCP, MPI, or JACCL over Thunderbolt) every
rank runs the same command. Each global batch of ``--batch-size`` x ranks
examples is planned alike on every rank (same seed), and each rank trains on
its own slice (``share``). Gradients are summed across ranks, each weighted
by its share of the examples (or tokens) the loss averages over, so two
ranks of batch b train exactly like one process of batch 2b. Only rank 0
writes files. A single process is a world of one: every function here is
then the identity, and nothing about a run changes.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import mlx.core as mx
from mlx.utils import tree_map

from mlx_align.core.errors import UserError

# Set in every rank by ``mlx.launch`` (ring, JACCL) or by MPI.
LAUNCHED_BY = ("MLX_RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK")


@functools.cache
def world() -> mx.distributed.Group:
    """The group of all ranks (of size 1 when not launched by ``mlx.launch``).

    A launched rank that cannot join its group stops with one line: left to
    itself, MLX would hand it a group of one, and every rank would train alone
    and write the same files.
    """
    if not any(name in os.environ for name in LAUNCHED_BY):
        return mx.distributed.init()
    try:
        return mx.distributed.init(strict=True)
    except RuntimeError as error:
        raise UserError(
            "mlx.launch", f"this rank could not join the others: {error}"
        ) from None


def size() -> int:
    return world().size()


def rank() -> int:
    return world().rank()


def is_main() -> bool:
    """Rank 0: the one that writes logs, metrics, checkpoints and results."""
    return rank() == 0


def all_sum(x: mx.array) -> mx.array:
    """``x`` summed over ranks; ``x`` itself in a world of one."""
    return x if size() == 1 else mx.distributed.all_sum(x, group=world())


def sum_floats(values: Sequence[float]) -> list[float]:
    """Python floats summed over ranks in one collective."""
    if size() == 1:
        return list(values)
    return all_sum(mx.array(values, dtype=mx.float32)).tolist()


def broadcast(tree: Any) -> Any:
    """Rank 0's arrays on every rank (the others' values are ignored)."""
    if size() == 1:
        return tree
    keep = is_main()
    return tree_map(lambda a: all_sum(a if keep else mx.zeros_like(a)), tree)


def share(indices: Sequence[int], per_rank: int) -> list[int]:
    """This rank's slice of a global batch: ``per_rank`` consecutive examples.

    Global batches are sorted by length, so neighbouring slices pad alike; a
    short last batch leaves the last ranks fewer (or no) examples, which
    their batches fill with filler rows.
    """
    start = rank() * per_rank
    return list(indices[start : start + per_rank])


def describe() -> str:
    """The line a run starts with: how many ranks, and which this is."""
    n = size()
    return "1 rank" if n == 1 else f"{n} ranks (this is rank {rank()})"
