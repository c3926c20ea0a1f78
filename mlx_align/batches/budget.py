"""The token budget: a batch of more padded tokens than it is run in weighted pieces.

A *maker* is ``make(indices, rows=None, widths=()) -> batch`` whose batch has
``inputs`` (a layout: ``padded_tokens``, ``widths``): the pair stages'
``PairBatches.maker``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from mlx_align.batches.planning import BatchPlan, local_batches

# The auto token budget: batches past this multiple of the median are split.
AUTO_BUDGET_OVER_MEDIAN = 1.25


def token_budget(settings, make: Callable, plan: BatchPlan) -> int:
    """``--max-batch-tokens``, or with -1 (auto) 1.25x the median padded size of
    the train batches ``make(indices)`` the run visits; 0: no limit."""
    if settings.max_batch_tokens >= 0:
        return settings.max_batch_tokens
    sizes = [
        batch.inputs.padded_tokens
        for batch in local_batches(make, plan, settings, "train")
    ]
    return int(AUTO_BUDGET_OVER_MEDIAN * float(np.median(sizes)))


def fit_to_budget(
    make: Callable, indices: list[int], rows: int, budget: int
) -> tuple | list[tuple[tuple, float]]:
    """``make(indices, rows)``, or when its padded tokens exceed ``budget``, its pieces.

    A batch over budget is halved (recursively; a single pair always runs),
    and weighted by its share of the pairs: the stage's loss is a mean over
    pairs, so the weighted sum of the pieces' gradients is the whole
    batch's. The pieces keep the whole batch's widths, so pieces of batches
    of one shape share one compiled trace (their own widths would make new
    ones: each a trace of the whole step). Returns a batch, or a list of
    ``(batch, weight)`` for ``loop.train``.
    """
    whole = make(indices, rows)
    widths = whole.inputs.widths

    def pieces(part: list[int], part_rows: int, batch) -> list[tuple]:
        """(batch, pairs in it) for each piece of ``part``."""
        if not budget or len(part) < 2 or batch.inputs.padded_tokens <= budget:
            return [(batch, len(part))]
        half = (part_rows + 1) // 2
        return [
            piece
            for side in (part[:half], part[half:])
            for piece in pieces(side, half, make(side, half, widths))
        ]

    fitted = pieces(indices, rows, whole)
    if len(fitted) == 1:
        return whole
    return [(batch, n / len(indices)) for batch, n in fitted]
