"""GRPO with verifiable rewards: sample groups, score them, clipped policy-gradient steps.

Shao et al. 2024 (DeepSeekMath), with TRL 1.16's options: its eight loss
types (``dapo``, ``grpo``, ``bnpo``, ``dr_grpo``, ``cispo``, ``sapo``, ``luspo``,
``vespo``; ``losses/grpo.py``), token- or sequence-level ratios (GSPO), the
two-sided clip ``delta``, advantage scaling (``group`` /
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
from mlx_align.losses.grpo import PolicyLossSettings, grpo_loss
from mlx_align.sampling.fused_sampler import FusedSampler, should_fuse
from mlx_align.stages.grpo_rollouts import Rollouts, read_prompt_splits
from mlx_align.train.reference import live_reference
from mlx_align.train.stage import Job, Stage, StageRun, run_stage


def policy_loss_settings(config: GRPOConfig) -> PolicyLossSettings:
    """The loss type and its settings, as ``losses.grpo`` reads them (0: TRL's None)."""
    return PolicyLossSettings(
        loss_type=config.loss,
        epsilon=config.epsilon,
        epsilon_high=config.epsilon_high or None,
        delta=config.delta or None,
        importance_sampling_level=config.importance_sampling_level,
        beta=config.beta,
        sapo_temperature_pos=config.sapo_temperature_pos,
        sapo_temperature_neg=config.sapo_temperature_neg,
        vespo_k_pos=config.vespo_k_pos,
        vespo_lambda_pos=config.vespo_lambda_pos,
        vespo_k_neg=config.vespo_k_neg,
        vespo_lambda_neg=config.vespo_lambda_neg,
        max_completion_tokens=config.max_completion_tokens,
        top_entropy_quantile=config.top_entropy_quantile,
        entropy_coef=config.entropy_coef,
    )


def grpo_batch_loss(
    model: nn.Module, batch: GRPOBatch, *, settings: PolicyLossSettings, stat_names
):
    """Sampled completions -> (loss, n_tokens, metrics); see ``losses.grpo.grpo_loss``."""
    entropy = None
    if settings.top_entropy_quantile < 1.0 or settings.entropy_coef:
        differentiable = bool(settings.entropy_coef)  # the bonus trains it
        per_token, mask, entropy = batch.inputs.token_logps_and_entropy(
            model, differentiable
        )
    else:
        per_token, mask = batch.inputs.token_logps(model)  # (N, C)
    old = mx.stop_gradient(per_token) if batch.old_logps is None else batch.old_logps
    ref = batch.ref_logps if settings.beta > 0 else None
    loss, metrics = grpo_loss(
        per_token, old, ref, batch.advantages, mask, settings, entropy=entropy
    )
    rollout = {name: batch.stats[i] for i, name in enumerate(stat_names)}
    # Not ``mask.sum()``: under mx.compile (MLX 0.32), an auxiliary output that is
    # the very node a token-mean loss divides by breaks the trace (_Map_base::at).
    n_tokens = mask.sum(axis=-1).sum()
    return loss, n_tokens, {**metrics, **rollout}


def run_grpo(config: GRPOConfig) -> Path:
    """Train with GRPO; adapters in ``out`` (or ``out/model`` with ``--full``), samples in ``out/samples.jsonl``."""
    return run_stage(GRPO, config)


def grpo_data(run: StageRun) -> Rollouts:
    return Rollouts(run.config, run.model, run.tokenizer, run.records)


def grpo_reference(run: StageRun) -> nn.Module | None:
    """With β > 0, a reference run once per rollout."""
    return live_reference(run.config, run.model) if run.config.beta > 0 else None


def group_job(run: StageRun, name: str, loss_fn) -> Job:
    """The loop's job for a group-sampling stage (GRPO, RLOO): ``loss_fn(model,
    batch, stat_names=...)`` on the rollouts ``run.data``, sampled by the fused
    twin where it pays, the reference (β > 0) scored once per rollout."""
    config, rollouts = run.config, run.data
    if should_fuse(run.model, config.fuse_rollout):
        rollouts.sampler = FusedSampler(run.model)
    rollouts.reference = run.reference
    tqdm.write(
        f"{name}: {len(run.records)} prompts, {config.batch_size} x {config.group_size} completions per micro-batch"
    )
    return Job(
        partial(loss_fn, stat_names=rollouts.stat_names),
        rollouts.micro_batch,
        checkpoint_multiple=config.iterations,  # resume at a rollout boundary
    )


def grpo_job(run: StageRun) -> Job:
    settings = policy_loss_settings(run.config)
    return group_job(run, "GRPO", partial(grpo_batch_loss, settings=settings))


def read_train_prompts(config) -> list:
    return read_prompt_splits(config, "train")[0]


GRPO = Stage(
    grpo_job,
    read=read_train_prompts,
    data=grpo_data,
    reference=grpo_reference,
)
