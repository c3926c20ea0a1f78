"""What the pair stages (DPO, ORPO) share: their wiring to the loop.

A pair stage hands ``pair_job`` its loss and one ``make(indices, rows,
widths) -> PairBatch`` per split (``PairBatches.maker``); batches over the
token budget run in weighted pieces (``batches/budget.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import mlx.nn as nn

from mlx_align.batches.budget import fit_to_budget, token_budget
from mlx_align.batches.layouts import choose_layout, width_of
from mlx_align.batches.preference import PairBatches, encode_pairs
from mlx_align.batches.types import PairBatch
from mlx_align.core.events import emit
from mlx_align.data.splits import load_batched_splits
from mlx_align.train.stage import Job, StageRun


def planned_batch(make: Callable, batches: PairBatches, budget: int, k: int):
    """Micro-batch k: this rank's share of global batch k, in pieces over the
    budget; emits ``batch``."""
    indices = batches.plan.local_batch(k)
    fitted = fit_to_budget(make, indices, batches.batch_size, budget)
    pieces = [b for b, _ in fitted] if isinstance(fitted, list) else [fitted]
    pairs = [batches.pairs[i] for i in indices]
    emit(
        "batch",
        pairs=len(pairs),
        tokens=sum(p.chosen.n_completion + p.rejected.n_completion for p in pairs),
        widths=[width_of(piece.inputs) for piece in pieces],
    )
    return fitted


def pair_splits(run: StageRun) -> tuple[PairBatches, PairBatches | None]:
    """The data phase of every pair stage: train and valid pairs, encoded and batched."""
    return load_batched_splits(run.config, run.tokenizer, encode_pairs, PairBatches)


def pair_job(
    config,
    loss_fn: Callable[[nn.Module, PairBatch], tuple],
    splits: tuple[PairBatches, PairBatches | None],
    makers: tuple[Callable, Callable | None],
    frozen: tuple[nn.Module | None, ...] = (),
) -> Job:
    """The loop's job on pair batches: train micro-batch k is ``planned_batch(k)``;
    eval over the valid batches a run visits."""
    (train_set, valid_set), (make_train, make_valid) = splits, makers
    budget = token_budget(config, make_train, train_set.plan)
    return Job(
        loss_fn,
        train_batch=partial(planned_batch, make_train, train_set, budget),
        valid=valid_set and (valid_set.plan, make_valid),
        frozen=frozen,
    )


def reference_free_job(run: StageRun, loss_fn: Callable) -> Job:
    """A pair stage without a reference (ORPO, CPO): ``loss_fn`` on the
    policy's own batches, packed or with shared prompts where the model allows."""
    layout = choose_layout(run.config.padding_free, run.model)
    makers = [s and s.maker(layout) for s in run.data]
    return pair_job(run.config, loss_fn, run.data, makers)
