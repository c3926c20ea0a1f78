"""What each stage's loss reads: one small named batch type per stage family.

Every field is named; the completions are a layout (``layouts.py``). A
batch short of examples is filled with empty rows, and one convention marks
them everywhere: ``index`` is -1 on a filler example. Batches whose metrics
are per-example means say how many real examples they hold
(``n_examples``), and evaluation weighs them by it; other batches (SFT's
``FullRows``) are weighed by their tokens.

Like the layouts, these are NamedTuples: MLX trees that ``mx.compile`` passes
through with their type. A field left ``None`` is a constant of the trace.
"""

from __future__ import annotations

from typing import NamedTuple

import mlx.core as mx

from mlx_align.batches.layouts import FullRows, Layout, SharedPrompt


def filler_mask(index: mx.array) -> mx.array:
    """1.0 on real examples, 0.0 on filler ones (index -1): (B,) float32."""
    return (index >= 0).astype(mx.float32)


def _valid(batch) -> mx.array:
    return filler_mask(batch.index)


def _n_examples(batch) -> mx.array:
    return filler_mask(batch.index).sum()


def columns_by_index(table: mx.array, index: mx.array) -> mx.array:
    """Rows ``index`` of a per-example (N, K) table, 0 on filler, as (K*B,): column 0 of every example, then column 1."""
    rows = table[mx.maximum(index, 0)] * (index >= 0)[:, None]  # (B, K)
    return rows.T.reshape(-1)


class PairBatch(NamedTuple):
    """B preference pairs (DPO, ORPO, reward model): 2B completions, chosen first."""

    inputs: Layout
    index: mx.array  # (B,) pair ids, -1 on filler pairs
    reference: mx.array | None = None  # (2B,) cached reference log-probs (DPO)
    margins: mx.array | None = None  # (B,) the pairs' ``margin`` column (reward)

    valid = property(_valid)  # (B,) 1.0 on real examples
    n_examples = property(_n_examples)


class KTOBatch(NamedTuple):
    """B unpaired examples: B matched rows, then B mismatched (KL) rows."""

    inputs: FullRows  # (2B, T)
    labels: mx.array  # (B,) bool, True: desirable
    index: mx.array  # (B,) example ids, -1 on filler examples
    reference: mx.array | None = None  # (2B,) cached reference log-probs

    valid = property(_valid)  # (B,) 1.0 on real examples
    n_examples = property(_n_examples)


class GRPOBatch(NamedTuple):
    """P prompts x G sampled completions and what the rollout measured of them."""

    inputs: FullRows | SharedPrompt  # a group's completions in consecutive rows
    old_logps: mx.array | None  # (N, C) at rollout time (μ > 1), else None
    ref_logps: mx.array | None  # (N, C) of the reference (β > 0), else None
    advantages: mx.array  # (N,)
    stats: mx.array  # rollout statistics, in the order of ``Rollouts.stat_names``
    tokens: mx.array | None = None  # () trained tokens, for a loss over all of them

    @property
    def n_examples(self) -> mx.array:
        """What the loss averages over: the completions (every rank holds as
        many, so ranks weigh alike), or ``tokens`` where the loss is a token
        mean over the whole batch (dapo, cispo, vespo: ranks weigh by tokens)."""
        if self.tokens is not None:
            return self.tokens
        return mx.array(float(self.advantages.shape[0]))


class OnlineDPOBatch(NamedTuple):
    """B prompts' sampled pairs, ordered by the judge: 2B completions, chosen first."""

    inputs: FullRows | SharedPrompt
    index: mx.array  # (B,) prompt ids, -1 where the judge saw a tie (not trained)
    reference: mx.array  # (2B,) the reference's log-probs, at sampling time
    stats: mx.array  # the judge's and sampler's statistics (``OnlinePairs.stat_names``)

    valid = property(_valid)
    n_examples = property(_n_examples)
