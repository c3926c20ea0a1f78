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
from mlx_align.data.prompts import check_prompt_records
from mlx_align.data.source import load_split
from mlx_align.losses.preference import grpo_loss
from mlx_align.model.adapters import quantize_base
from mlx_align.model.load import load_model
from mlx_align.rewards.registry import reward_columns
from mlx_align.sampling.fused_sampler import FusedSampler, should_fuse
from mlx_align.stages.grpo_rollouts import Rollouts
from mlx_align.train.adapted import prepare_trainable, stage_job, train_and_write
from mlx_align.train.reference import shared_reference


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
    records = load_split(config.source, "train", required=True)
    check_prompt_records(records, needs=reward_columns(config.reward))
    model, tokenizer, model_config = load_model(config.model)
    if config.quantize:
        quantize_base(model, config.quantize)
    rollouts = Rollouts(config, model, tokenizer, records)
    adapters = prepare_trainable(model, config, config.seed)
    if should_fuse(model, config.fuse_rollout):
        rollouts.sampler = FusedSampler(model)
    if config.beta > 0:
        rollouts.reference = (
            shared_reference(model, config.model)
            if adapters
            else load_model(config.model)[0]
        )
    if distributed.is_main():  # another rank may not remove what rank 0 wrote
        (Path(config.out) / "samples.jsonl").unlink(missing_ok=True)
    tqdm.write(
        f"GRPO: {len(records)} prompts, {config.batch_size} x {config.group_size} completions per micro-batch"
    )
    loss_fn = partial(grpo_batch_loss, config=config, stat_names=rollouts.stat_names)
    job = stage_job(
        config,
        model,
        adapters,
        loss_fn,
        rollouts.micro_batch,
        checkpoint_multiple=config.iterations,  # resume at a rollout boundary
    )
    return train_and_write(job, config, adapters, tokenizer, model_config)
