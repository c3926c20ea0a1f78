"""The one training loop every stage uses; the stage passes in its loss.

A loss function has the signature ``loss_fn(model, batch) -> (loss, n_tokens,
metrics)``: ``batch`` the stage's named batch (``batches/types.py``), ``loss`` a
scalar mean, ``n_tokens`` the number of trained tokens (it gives tokens/s,
and weighs evaluation averages unless the batch counts its ``n_examples``),
``metrics`` a dict of scalars. A micro-batch's gradients and the optimizer update are each
``mx.compile``d with the model, optimizer and random state declared as their
state, as mlx-lm's trainer does with its one step function.
"""

from __future__ import annotations

import math
import time
from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_map
from tqdm import tqdm

from mlx_align.config.stages import TrainSettings
from mlx_align.core import distributed, events
from mlx_align.core.errors import RunError
from mlx_align.core.events import emit
from mlx_align.train.best import resumed_tracker
from mlx_align.train.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from mlx_align.train.evaluation import (
    Batch,
    TrainJob,
    count_of,
    evaluate_and_track,
    quiet_unless_main,
)
from mlx_align.train.grad_checkpoint import checkpoint_layers
from mlx_align.train.metrics import MetricsLog
from mlx_align.train.report import open_reporters, samples_to


def build_optimizer(settings: TrainSettings) -> optim.Optimizer:
    """AdamW with PyTorch's bias correction, linear warmup, then cosine decay."""
    peak, warmup = settings.learning_rate, min(settings.warmup_steps, settings.steps)
    # The last update (step index steps - 1) lands exactly on the floor.
    decay_steps = max(settings.steps - warmup - 1, 1)
    decay = optim.cosine_decay(peak, decay_steps, peak * settings.min_lr_ratio)
    schedule = decay
    if warmup > 0:
        ramp = (
            optim.linear_schedule(peak / warmup, peak, warmup - 1)
            if warmup > 1
            else (lambda _: peak)
        )
        schedule = optim.join_schedules([ramp, decay], [warmup])
    return optim.AdamW(
        schedule, weight_decay=settings.weight_decay, bias_correction=True
    )


def make_step(job: TrainJob, optimizer: optim.Optimizer, settings: TrainSettings):
    """``(gradients, update)``: one micro-batch's loss and gradient, scaled by
    ``weight`` (its share of the optimizer step, an array; None for 1), and
    the optimizer step on their sum.

    Both are compiled on their own, so every micro-batch of one shape (the
    first, a middle one, the last) replays one trace of ``gradients``.
    """
    model = job.model
    value_and_grad = nn.value_and_grad(model, job.loss_fn)

    def gradients(batch: Batch, weight: mx.array | None):
        (loss, n_tokens, metrics), grad = value_and_grad(model, batch)
        if weight is not None:
            grad = tree_map(lambda g: g * weight, grad)
        return loss, n_tokens, metrics, grad

    def update(grad) -> dict[str, mx.array]:
        if distributed.size() > 1:  # each rank's part, weighted by its share
            grad = tree_map(distributed.all_sum, grad)
        clip = settings.max_grad_norm if settings.max_grad_norm > 0 else math.inf
        grad, norm = optim.clip_grad_norm(grad, clip)
        optimizer.update(model, grad)
        return {"grad_norm": norm}

    if not settings.compile:
        return gradients, update
    frozen = [m.state for m in job.frozen]
    state = [model.state, optimizer.state, mx.random.state]
    # value_and_grad leaves its traced parameters in the model: model.state is
    # an output too, so the compiled call puts the real arrays back.
    traced = [model.state, mx.random.state]
    return (
        mx.compile(gradients, inputs=[*traced, *frozen], outputs=traced),
        mx.compile(update, inputs=state, outputs=state),
    )


def start_run(job: TrainJob, settings: TrainSettings) -> tuple[optim.Optimizer, int]:
    """The optimizer, and the step to start after: the latest checkpoint's with
    ``--resume`` (its weights and optimizer state loaded), else 0."""
    model, out = job.model, job.out
    if distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
    mx.random.seed(settings.seed)
    optimizer = build_optimizer(settings)
    optimizer.init(model.trainable_parameters())
    start = 0
    latest = (
        latest_checkpoint(out) if settings.resume and distributed.is_main() else None
    )
    if latest is not None:
        start = load_checkpoint(latest, model, optimizer, job.weights_file)
        tqdm.write(f"resuming from {latest} (step {start})")
    if settings.resume and distributed.size() > 1:  # rank 0's checkpoint for all
        start = int(distributed.sum_floats([start])[0])
        if start:
            model.update(distributed.broadcast(model.trainable_parameters()))
            optimizer.state.update(distributed.broadcast(optimizer.state))
    if settings.grad_checkpoint:
        checkpoint_layers(model.layers)
    model.train()
    return optimizer, start


def train(job: TrainJob, settings: TrainSettings) -> dict[str, float]:
    """Run ``settings.steps`` optimizer steps; returns the last logged metrics.

    Ctrl-C writes a checkpoint of the last finished step before exiting, so
    ``--resume`` loses nothing.
    """
    optimizer, start = start_run(job, settings)
    step = make_step(job, optimizer, settings)
    main = distributed.is_main()
    reporters = (
        open_reporters(
            settings.report_to, job.out, job.config, settings.project_name, start > 0
        )
        if main
        else []
    )
    log = MetricsLog(job.out / "metrics.jsonl", start, main, reporters)
    tracker = resumed_tracker(job.out, settings, start)

    def save(step: int) -> Path:
        extra = {"best": tracker.state()} if tracker else None
        return save_checkpoint(
            job.out,
            step,
            model=job.model,
            optimizer=optimizer,
            write_weights=job.write_weights,
            config=job.config,
            writes=main,
            extra=extra,
        )

    evaluated = partial(evaluate_and_track, job, tracker, log, writes=main)
    finished, last, stopped = start, {}, False
    bar = tqdm(
        total=settings.steps,
        initial=start,
        desc="train",
        dynamic_ncols=True,
        **quiet_unless_main(),
    )
    try:
        with events.listening(samples_to(reporters, start)):
            for it in range(start + 1, settings.steps + 1):
                last = (
                    run_optimizer_step(job, step, optimizer, settings, it, log) or last
                )
                finished = it
                bar.update(1)
                bar.set_postfix_str(log.postfix(), refresh=False)
                if after_step(job, settings, it, evaluated, save):
                    stopped = True  # early stopping
                    break
    except KeyboardInterrupt:
        interrupted(job, start, finished, save)
        raise
    finally:
        bar.close()
    try:
        if (
            job.evaluates
            and not stopped
            and (not settings.eval_every or settings.steps % settings.eval_every)
        ):
            last = {**last, **evaluated(settings.steps)[0]}
    finally:
        log.close()
    return last


def after_step(job: TrainJob, settings: TrainSettings, it: int, evaluated, save) -> bool:  # fmt: skip
    """Evaluate and checkpoint when step ``it`` is due; then tell listeners.
    Returns whether the run stops early (``--early-stopping-patience``)."""
    stop = False
    if job.evaluates and settings.eval_every and it % settings.eval_every == 0:
        stop = evaluated(it)[1]
    due = settings.save_every and it % settings.save_every == 0
    if due and it % job.checkpoint_multiple == 0:
        save(step=it)
    emit("step", step=it)
    return stop


def interrupted(job: TrainJob, start: int, finished: int, save) -> None:
    """On Ctrl-C: a checkpoint of the last finished step, where one may fall."""
    if finished <= start:
        return
    if finished % job.checkpoint_multiple == 0:
        path = save(step=finished)
        tqdm.write(
            f"interrupted: checkpoint of step {finished} written to {path}; rerun with --resume"
        )
        return
    tqdm.write(
        f"interrupted after step {finished}, inside a rollout batch's "
        f"{job.checkpoint_multiple} steps: --resume restarts from the last checkpoint"
    )


def step_seed(seed: int, step: int) -> int:
    """The RNG seed of one step: a resumed run draws the same dropout masks."""
    return (seed * 1_000_003 + step) % 2**32


def run_optimizer_step(
    job, step, optimizer, settings: TrainSettings, it: int, log: MetricsLog
):
    """The micro-batches of optimizer step ``it``; logs every ``log_every`` steps.

    Loss and metrics are the micro-batches' means weighted by their share of
    the step. With several ranks, each rank's part of a micro-batch is
    weighted by its share of the micro-batch's examples (or tokens), and the
    gradients, loss and metrics are summed over ranks: the step is the one
    a single process would take on the whole global batch.
    """
    tic = time.perf_counter()
    mx.random.seed(step_seed(settings.seed, it))
    accumulation = settings.grad_accumulation
    drawn = [job.train_batch((it - 1) * accumulation + m) for m in range(accumulation)]
    micro_batches = [d if isinstance(d, list) else [(d, 1.0)] for d in drawn]
    single = len(micro_batches) == 1 and len(micro_batches[0]) == 1
    gradients, update = step
    grad, totals = None, {"loss": 0.0, "tokens": 0.0}
    for pieces in micro_batches:
        pieces = [(batch, weight / accumulation) for batch, weight in pieces]
        micro_grad, micro_totals, count = micro_batch(gradients, pieces, single)
        totals["tokens"] += micro_totals.pop("tokens")
        share = rank_share(count)
        if share != 1.0:
            micro_grad = tree_map(lambda g, s=share: g * s, micro_grad)
        grad = add_trees(grad, micro_grad)
        for name, value in micro_totals.items():
            totals[name] = totals.get(name, 0.0) + share * value
    update_metrics = update(grad)
    mx.eval(update_metrics, job.model.parameters(), optimizer.state)
    names = list(totals)
    totals = dict(
        zip(names, distributed.sum_floats(list(totals.values())), strict=True)
    )
    totals.update({k: v.item() for k, v in update_metrics.items()})
    n_tokens, loss = totals.pop("tokens"), totals.pop("loss")
    check_finite(it, loss, totals["grad_norm"])
    log.add(
        seconds=time.perf_counter() - tic, n_tokens=n_tokens, loss=loss, metrics=totals
    )
    if it % settings.log_every == 0 or it == settings.steps:
        return log.write(it, log.flush(learning_rate=optimizer.learning_rate.item()))
    return None


def micro_batch(gradients, pieces, single: bool):
    """One micro-batch's pieces ``(batch, weight)``: their weighted gradient sum,
    the weighted loss and metrics (plus ``tokens``), and what the loss averages over."""
    grad, totals, count = None, {"tokens": 0.0}, 0.0
    for batch, weight in pieces:
        loss, n, metrics, piece_grad = gradients(
            batch, None if single else mx.array(weight)
        )
        grad = add_trees(grad, piece_grad)
        mx.eval(loss, n, metrics, grad)  # frees this piece's activations
        count += count_of(batch, n).item()
        for name, value in {"loss": loss, **metrics}.items():
            totals[name] = totals.get(name, 0.0) + weight * value.item()
        totals["tokens"] += n.item()
    return grad, totals, count


def check_finite(it: int, loss: float, grad_norm: float) -> None:
    """Stop before step ``it`` is written when its loss or gradient is not finite."""
    if not (math.isfinite(loss) and math.isfinite(grad_norm)):
        raise RunError(
            it,
            f"the loss is {loss} and the gradient norm {grad_norm}: the run stops "
            "before writing this step; the last checkpoint is intact (--resume, "
            "perhaps with a lower --learning-rate)",
        )


def add_trees(total, tree):
    return tree if total is None else tree_map(mx.add, total, tree)


def rank_share(count: float) -> float:
    """This rank's share of a micro-batch whose part here counts ``count``
    (examples or tokens); 1.0 in a world of one."""
    if distributed.size() == 1:
        return 1.0
    (total,) = distributed.sum_floats([count])
    return count / total if total else 0.0
