"""What a stage hands the training loop (``TrainJob``), and how the loop
evaluates it: the loss over held-out batches and the stage's own figures,
each logged as ``val_*``."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from tqdm import tqdm

from mlx_align.core import distributed
from mlx_align.train.best import BestTracker, track

Batch = Any  # a stage's named batch: a NamedTuple of arrays (batches.py, layouts.py)
LossFn = Callable[..., tuple[mx.array, mx.array, dict[str, mx.array]]]


@dataclass
class TrainJob:
    """What a stage hands the loop: model, loss, data, and how to write its weights."""

    model: nn.Module
    loss_fn: LossFn
    # Micro-batch k of the run (deterministic in k), or its pieces as
    # (batch, weight) with weights summing to 1 (a batch split to fit memory).
    train_batch: Callable[[int], Batch | list[tuple[Batch, float]]]
    out: Path
    write_weights: Callable[
        [Path], None
    ]  # trainable weights (+ metadata) into a directory
    weights_file: str  # the file write_weights writes the trainable arrays to
    eval_batches: Callable[[], Iterable[Batch]] | None = None
    # Held-out figures the stage measures itself at each evaluation, named as
    # logged (online DPO's val_win_rate).
    held_out: Callable[[], dict[str, float]] | None = None
    config: dict = field(default_factory=dict)
    # Models the loss reads but never trains (a reference run each step): their
    # arrays must be declared as inputs of the compiled step.
    frozen: list[nn.Module] = field(default_factory=list)
    # Checkpoints only after steps that are multiples of this: GRPO's μ steps
    # share one rollout batch, whose old log-probs a checkpoint does not hold.
    checkpoint_multiple: int = 1

    @property
    def evaluates(self) -> bool:
        return self.eval_batches is not None or self.held_out is not None


def evaluate(job: TrainJob) -> dict[str, float]:
    """The loss over the eval batches, and the stage's own held-out figures."""
    job.model.eval()
    results = evaluate_loss(job) if job.eval_batches else {}
    results |= job.held_out() if job.held_out else {}
    job.model.train()
    return results


def evaluate_loss(job: TrainJob) -> dict[str, float]:
    """Mean loss and metrics over the eval batches (every rank's share), each
    batch weighted by what its loss averages over (``count_of``)."""
    totals: dict[str, mx.array] = {}
    n_total = mx.array(0.0)
    batches = tqdm(
        job.eval_batches(),
        desc="eval",
        leave=False,
        dynamic_ncols=True,
        **quiet_unless_main(),
    )
    for batch in batches:
        loss, n_tokens, metrics = job.loss_fn(job.model, batch)
        weight = count_of(batch, n_tokens)
        for name, value in {"loss": loss, **metrics}.items():
            totals[name] = totals.get(name, 0.0) + value * weight
        n_total = n_total + weight
        mx.eval(totals, n_total)
    names = list(totals)
    sums = distributed.sum_floats([totals[k].item() for k in names] + [n_total.item()])
    *values, n_total = sums
    return {f"val_{k}": v / max(n_total, 1) for k, v in zip(names, values, strict=True)}


def evaluate_and_track(
    job: TrainJob, tracker: BestTracker | None, log, step: int, writes: bool = True
) -> tuple[dict[str, float], bool]:
    """Evaluate after ``step`` and log it; with ``--save-best`` keep the best
    weights. Returns (the logged line, whether to stop early)."""
    results = evaluate(job)
    line = log.write(step, results)
    if tracker is None:
        return line, False
    return line, track(tracker, step, results, job.out, job.write_weights, writes)


def quiet_unless_main() -> dict:
    """tqdm's settings: no bar on ranks other than 0 (rank 0 keeps tqdm's own
    defaults, so ``TQDM_DISABLE`` still works)."""
    return {} if distributed.is_main() else {"disable": True}


def count_of(batch: Batch, n_tokens: mx.array) -> mx.array:
    """What the loss of ``batch`` is a mean over: its examples where it counts
    them (per-example losses), else its tokens. Evaluation averages and the
    ranks' shares of a step weigh by it."""
    return getattr(batch, "n_examples", n_tokens)
