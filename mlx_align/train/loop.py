"""The one training loop every stage uses; the stage passes in its loss.

A loss function has the signature ``loss_fn(model, *batch) -> (loss, n_tokens,
metrics)``: ``loss`` a scalar mean, ``n_tokens`` the number of trained tokens
(it weights evaluation averages and gives tokens/s), ``metrics`` a dict of
scalars. The step is ``mx.compile``d with the model, optimizer and random
state declared as its state, as mlx-lm's trainer does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_map
from tqdm import tqdm

from ..config import TrainSettings
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .grad_checkpoint import checkpoint_layers
from .metrics import MetricsLog

Batch = tuple[mx.array, ...]
LossFn = Callable[..., tuple[mx.array, mx.array, dict[str, mx.array]]]


@dataclass
class TrainJob:
    """What a stage hands the loop: model, loss, data, and how to write its weights."""

    model: nn.Module
    loss_fn: LossFn
    train_batch: Callable[[int], Batch]  # micro-batch k of the run (deterministic in k)
    out: Path
    write_weights: Callable[
        [Path], None
    ]  # trainable weights (+ metadata) into a directory
    weights_file: str  # the file write_weights writes the trainable arrays to
    eval_batches: Callable[[], Iterable[Batch]] | None = None
    config: dict = field(default_factory=dict)
    on_step: Callable[[int], None] | None = None  # called after each optimizer step
    # Models the loss reads but never trains (a reference run each step): their
    # arrays must be declared as inputs of the compiled step.
    frozen: list[nn.Module] = field(default_factory=list)


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
    """One micro-batch: forward, backward, accumulate; update on the last micro-batch."""
    model, accumulation = job.model, settings.grad_accumulation
    value_and_grad = nn.value_and_grad(model, job.loss_fn)

    def step(batch: Batch, grad_sum, update: bool):
        (loss, n_tokens, metrics), grad = value_and_grad(model, *batch)
        if grad_sum is not None:
            grad = tree_map(mx.add, grad, grad_sum)
        if not update:
            return loss, n_tokens, metrics, grad
        if accumulation > 1:
            grad = tree_map(lambda g: g / accumulation, grad)
        if settings.max_grad_norm > 0:
            grad, norm = optim.clip_grad_norm(grad, settings.max_grad_norm)
            metrics = {**metrics, "grad_norm": norm}
        optimizer.update(model, grad)
        return loss, n_tokens, metrics, None

    if not settings.compile:
        return step
    state = [model.state, optimizer.state, mx.random.state]
    inputs = state + [frozen.state for frozen in job.frozen]
    return partial(mx.compile, inputs=inputs, outputs=state)(step)


def evaluate(job: TrainJob) -> dict[str, float]:
    """Mean loss and metrics over the eval batches, weighted by tokens (or ``n_examples``)."""
    job.model.eval()
    totals: dict[str, mx.array] = {}
    n_total = mx.array(0.0)
    for batch in tqdm(job.eval_batches(), desc="eval", leave=False, dynamic_ncols=True):
        loss, n_tokens, metrics = job.loss_fn(job.model, *batch)
        weight = metrics.pop("n_examples", n_tokens)  # per-pair metrics weigh by pairs
        for name, value in {"loss": loss, **metrics}.items():
            totals[name] = totals.get(name, 0.0) + value * weight
        n_total = n_total + weight
        mx.eval(totals, n_total)
    job.model.train()
    return {f"val_{k}": (v / mx.maximum(n_total, 1)).item() for k, v in totals.items()}


def train(job: TrainJob, settings: TrainSettings) -> dict[str, float]:
    """Run ``settings.steps`` optimizer steps; returns the last logged metrics.

    Ctrl-C writes a checkpoint of the last finished step before exiting, so
    ``--resume`` loses nothing.
    """
    model, out = job.model, job.out
    out.mkdir(parents=True, exist_ok=True)
    mx.random.seed(settings.seed)
    optimizer = build_optimizer(settings)
    optimizer.init(model.trainable_parameters())
    start = 0
    if settings.resume and (latest := latest_checkpoint(out)) is not None:
        start = load_checkpoint(latest, model, optimizer, job.weights_file)
        tqdm.write(f"resuming from {latest} (step {start})")
    if settings.grad_checkpoint:
        checkpoint_layers(model.layers)
    model.train()
    step = make_step(job, optimizer, settings)
    log = MetricsLog(out / "metrics.jsonl", resume_from=start)
    save = partial(
        save_checkpoint,
        out,
        model=model,
        optimizer=optimizer,
        write_weights=job.write_weights,
        config=job.config,
    )
    finished, last = start, {}
    bar = tqdm(total=settings.steps, initial=start, desc="train", dynamic_ncols=True)
    try:
        for it in range(start + 1, settings.steps + 1):
            last = run_optimizer_step(job, step, optimizer, settings, it, log) or last
            finished = it
            bar.update(1)
            bar.set_postfix_str(log.postfix(), refresh=False)
            if (
                job.eval_batches
                and settings.eval_every
                and it % settings.eval_every == 0
            ):
                log.write(it, evaluate(job))
            if settings.save_every and it % settings.save_every == 0:
                save(step=it)
            if job.on_step:
                job.on_step(it)
    except KeyboardInterrupt:
        if finished > start:
            path = save(step=finished)
            tqdm.write(
                f"interrupted: checkpoint of step {finished} written to {path}; rerun with --resume"
            )
        raise
    finally:
        bar.close()
    if job.eval_batches and (
        not settings.eval_every or settings.steps % settings.eval_every
    ):
        last = {**last, **log.write(settings.steps, evaluate(job))}
    return last


def step_seed(seed: int, step: int) -> int:
    """The RNG seed of one step: a resumed run draws the same dropout masks."""
    return (seed * 1_000_003 + step) % 2**32


def run_optimizer_step(
    job, step, optimizer, settings: TrainSettings, it: int, log: MetricsLog
):
    """The micro-batches of optimizer step ``it``; logs every ``log_every`` steps."""
    tic = time.perf_counter()
    mx.random.seed(step_seed(settings.seed, it))
    grad, losses, n_tokens, metrics = None, [], 0.0, {}
    for micro in range(settings.grad_accumulation):
        batch = job.train_batch((it - 1) * settings.grad_accumulation + micro)
        last_micro = micro == settings.grad_accumulation - 1
        loss, n, metrics, grad = step(batch, grad, last_micro)
        mx.eval(loss, n, metrics, grad, job.model.parameters(), optimizer.state)
        losses.append(loss.item())
        n_tokens += n.item()
    log.add(
        seconds=time.perf_counter() - tic,
        n_tokens=n_tokens,
        loss=sum(losses) / len(losses),
        metrics={k: v.item() for k, v in metrics.items() if k != "n_examples"},
    )
    if it % settings.log_every == 0 or it == settings.steps:
        return log.write(it, log.flush(learning_rate=optimizer.learning_rate.item()))
    return None
