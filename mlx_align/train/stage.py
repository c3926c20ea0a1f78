"""Every training stage's setup, written once: the same named phases in one order.

    read       the records, checked before any model loads (bad data fails first)
    model      ``--model`` loaded; its base quantized with ``--quantize``
    data       the records encoded and batched with the model's tokenizer
    reference  the reference: log-probs precomputed while the policy still is
               its base, or a model run each step, or none
    trainable  LoRA/DoRA adapters attached, or every weight left trainable;
               what the loop trains (the model, or a head on it)
    train      the loop (``loop.train``) on the stage's loss and batches
    write      the result, on rank 0: adapters, or a full mlx-lm model

A stage is a ``Stage``: the phases it fills in (each a function of the
``StageRun`` so far) and the ``job`` it hands the loop. ``run_stage`` runs
them; a stage module says only what differs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import mlx.nn as nn

from mlx_align.batches.planning import BatchPlan, local_batches
from mlx_align.core import distributed
from mlx_align.model.adapters import quantize_base
from mlx_align.model.load import load_model
from mlx_align.train.adapted import (
    prepare_trainable,
    weights_file,
    write_result,
    write_weights,
)
from mlx_align.train.evaluation import TrainJob
from mlx_align.train.loop import train


@dataclass
class StageRun:
    """What the phases have made so far; each phase reads it and adds its part."""

    config: Any
    records: Any = None
    model: nn.Module | None = None
    tokenizer: Any = None
    model_config: dict = field(default_factory=dict)
    data: Any = None
    reference: Any = None
    adapters: dict | None = None
    trained: Trained | None = None


@dataclass
class Trained:
    """The module the loop trains and how a checkpoint writes its weights."""

    module: nn.Module
    write_weights: Callable[[Path], None]
    weights_file: str


@dataclass
class Job:
    """What a stage hands the loop: its loss, its batches, what it never trains."""

    loss_fn: Callable
    train_batch: Callable[[int], Any]
    valid: tuple[BatchPlan, Callable[[list[int]], Any]] | None = None
    held_out: Callable[[], dict[str, float]] | None = None  # TrainJob.held_out
    frozen: Sequence[nn.Module | None] = ()
    checkpoint_multiple: int = 1


def nothing(_: Any) -> None:
    return None


def the_model(run: StageRun) -> Trained:
    """The policy itself: its adapters, or every weight, in each checkpoint."""
    return Trained(
        run.model,
        partial(write_weights, run.model, run.adapters),
        weights_file(run.adapters),
    )


def adapters_or_model(run: StageRun) -> Path:
    """Adapters in ``out``, or with ``--full`` a standalone mlx-lm model in ``out/model``."""
    config = run.config
    return write_result(
        run.model,
        run.adapters,
        Path(config.out),
        config.model,
        run.tokenizer,
        run.model_config,
    )


@dataclass(frozen=True)
class Stage:
    """The phases a stage fills in; ``run_stage`` runs them in the module's order."""

    job: Callable[[StageRun], Job]
    read: Callable[[Any], Any] = nothing
    data: Callable[[StageRun], Any] = nothing
    reference: Callable[[StageRun], Any] = nothing
    trained: Callable[[StageRun], Trained] = the_model
    write: Callable[[StageRun], Path] = adapters_or_model


def run_stage(stage: Stage, config: Any) -> Path:
    """Run ``stage``'s phases on ``config``; the path of its result."""
    run = StageRun(config)
    run.records = stage.read(config)
    run.model, run.tokenizer, run.model_config = load_model(config.model)
    if getattr(config, "quantize", 0):
        quantize_base(run.model, config.quantize)
    run.data = stage.data(run)
    run.reference = stage.reference(run)
    run.adapters = prepare_trainable(run.model, config, config.seed)
    run.trained = stage.trained(run)
    train(job_for(run, stage.job(run)), config)
    if not distributed.is_main():
        return Path(config.out)
    return stage.write(run)


def job_for(run: StageRun, job: Job) -> TrainJob:
    """The loop's job: ``job`` on the module ``run`` trains, checkpointed its way."""
    config, eval_batches = run.config, None
    if job.valid:
        plan, make = job.valid
        eval_batches = lambda: local_batches(make, plan, config, "valid")  # noqa: E731
    return TrainJob(
        model=run.trained.module,
        loss_fn=job.loss_fn,
        train_batch=job.train_batch,
        out=Path(config.out),
        write_weights=run.trained.write_weights,
        weights_file=run.trained.weights_file,
        eval_batches=eval_batches,
        held_out=job.held_out,
        config=dataclasses.asdict(config),
        frozen=[m for m in job.frozen if m is not None],
        checkpoint_multiple=job.checkpoint_multiple,
    )
