"""GRPO with verifiable rewards: sample groups, score them, clipped policy-gradient steps.

Shao et al. 2024 (DeepSeekMath), with TRL's options: token aggregation
(``grpo`` / ``bnpo`` / ``dr_grpo`` / ``dapo``), advantage scaling (``group`` /
``batch`` / ``none``), asymmetric clipping (``epsilon_high``) and μ
optimisation passes per rollout batch (``iterations``). With μ = 1 the ratio
is exactly 1 (old log-probs are the current ones, detached); with μ > 1 the
old log-probs are computed once at rollout time and the clip acts. The KL to
the reference (adapters off, a model object sharing the base arrays) is
computed only when ``beta > 0``, once per rollout batch. The batches come
from ``rollouts.py``.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from tqdm import tqdm

from mlx_align.batches.types import GRPOBatch
from mlx_align.config.online import GRPOConfig
from mlx_align.core import distributed
from mlx_align.losses.preference import grpo_loss
from mlx_align.sampling.fused_sampler import FusedSampler, should_fuse
from mlx_align.stages.grpo_rollouts import Rollouts, read_prompt_splits
from mlx_align.train.reference import live_reference
from mlx_align.train.stage import Job, Stage, StageRun, run_stage


def grpo_batch_loss(
    model: nn.Module, batch: GRPOBatch, *, config: GRPOConfig, stat_names
):
    """Sampled completions -> (loss, n_tokens, metrics); see ``losses.grpo_loss``."""
    per_token, mask = batch.inputs.token_logps(model)  # (N, C)
    old = mx.stop_gradient(per_token) if batch.old_logps is None else batch.old_logps
    loss, metrics = grpo_loss(
        per_token,
        old,
        batch.ref_logps if config.beta > 0 else None,
        batch.advantages,
        mask,
        epsilon=config.epsilon,
        epsilon_high=config.epsilon_high or None,
        beta=config.beta,
        aggregation=config.loss,
        max_completion_tokens=config.max_completion_tokens,
    )
    rollout = {name: batch.stats[i] for i, name in enumerate(stat_names)}
    return loss, mask.sum(), {**metrics, **rollout}


def run_grpo(config: GRPOConfig) -> Path:
    """Train with GRPO; adapters in ``out`` (or ``out/model`` with ``--full``), samples in ``out/samples.jsonl``."""
    return run_stage(GRPO, config)


def grpo_data(run: StageRun) -> Rollouts:
    return Rollouts(run.config, run.model, run.tokenizer, run.records)


def grpo_reference(run: StageRun) -> nn.Module | None:
    """With β > 0, a reference run once per rollout."""
    return live_reference(run.config, run.model) if run.config.beta > 0 else None


def grpo_job(run: StageRun) -> Job:
    config, rollouts = run.config, run.data
    if should_fuse(run.model, config.fuse_rollout):
        rollouts.sampler = FusedSampler(run.model)
    rollouts.reference = run.reference
    if distributed.is_main():  # another rank may not remove what rank 0 wrote
        (Path(config.out) / "samples.jsonl").unlink(missing_ok=True)
    tqdm.write(
        f"GRPO: {len(run.records)} prompts, {config.batch_size} x {config.group_size} completions per micro-batch"
    )
    loss_fn = partial(grpo_batch_loss, config=config, stat_names=rollouts.stat_names)
    return Job(
        loss_fn,
        rollouts.micro_batch,
        checkpoint_multiple=config.iterations,  # resume at a rollout boundary
    )


GRPO = Stage(
    grpo_job,
    read=lambda config: read_prompt_splits(config, "train")[0],
    data=grpo_data,
    reference=grpo_reference,
)
