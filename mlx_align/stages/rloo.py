"""RLOO: REINFORCE with a leave-one-out baseline, as TRL's ``RLOOTrainer``.

Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style
Optimization for Learning from Human Feedback in LLMs". Each prompt's G
completions are sampled and scored as in GRPO (``grpo_rollouts.py``); the
KL to the reference enters the reward, β·Σ_t (log π_old − log π_ref) per
completion (TRL's first-order estimate, which may be negative); each
completion's advantage is its reward minus the mean of its group's other
G − 1 (``losses.advantages.leave_one_out_advantages``); the loss clips the
ratio of whole sequences (``losses.grpo.rloo_loss``). Metrics carry TRL's
RLOO names: ``reward`` and ``reward_std`` are of the KL-penalised reward,
``kl`` is the per-token mean of log π_old − log π_ref.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from mlx_align.batches.types import GRPOBatch
from mlx_align.config.online import RLOOConfig
from mlx_align.losses.advantages import batch_moments, leave_one_out_advantages
from mlx_align.losses.grpo import rloo_loss
from mlx_align.stages.grpo import group_job, grpo_reference, read_train_prompts
from mlx_align.stages.grpo_rollouts import Rollouts, trained_tokens
from mlx_align.train.stage import Job, Stage, StageRun, run_stage


class RLOORollouts(Rollouts):
    """GRPO's rollouts with RLOO's advantages: the KL in the reward, leave-one-out."""

    @property
    def stat_names(self) -> list[str]:
        return [*super().stat_names, "kl"]

    @property
    def needs_old_logps(self) -> bool:
        """The KL penalty reads the policy's log-probs at sampling time."""
        return self.config.iterations > 1 or self.config.beta > 0

    @property
    def token_mean(self) -> bool:
        return False  # a mean over completions

    def advantages(
        self, rewards: mx.array, per_function, inputs, old_logps, ref_logps
    ) -> tuple[mx.array, dict[str, mx.array]]:
        del per_function  # RLOO sums the functions first, as TRL's
        config, metrics = self.config, {}
        if config.beta > 0:  # per-token log-probs are 0 off the completions
            per_token_kl = old_logps - ref_logps  # (N, C)
            rewards = rewards - config.beta * per_token_kl.sum(axis=-1)
            metrics["kl"] = per_token_kl.sum() / mx.maximum(trained_tokens(inputs), 1)
            mean, std = batch_moments(rewards)
            metrics |= {"reward": mean, "reward_std": std}
        advantages, adv_metrics = leave_one_out_advantages(
            rewards, config.group_size, config.normalize_advantages
        )
        return advantages, {**metrics, **adv_metrics}


def rloo_batch_loss(
    model: nn.Module, batch: GRPOBatch, *, config: RLOOConfig, stat_names
):
    """Sampled completions -> (loss, n_tokens, metrics); see ``losses.grpo.rloo_loss``."""
    per_token, mask = batch.inputs.token_logps(model)  # (N, C)
    old = mx.stop_gradient(per_token) if batch.old_logps is None else batch.old_logps
    loss, metrics = rloo_loss(
        per_token,
        old,
        batch.advantages,
        mask,
        epsilon=config.epsilon,
        epsilon_high=config.epsilon_high or None,
    )
    rollout = {name: batch.stats[i] for i, name in enumerate(stat_names)}
    n_tokens = mask.sum(axis=-1).sum()  # not mask.sum(): see grpo_batch_loss
    return loss, n_tokens, {**metrics, **rollout}


def run_rloo(config: RLOOConfig) -> Path:
    """Train with RLOO; adapters in ``out``, samples in ``out/samples.jsonl``."""
    return run_stage(RLOO, config)


def rloo_data(run: StageRun) -> RLOORollouts:
    return RLOORollouts(run.config, run.model, run.tokenizer, run.records)


def rloo_job(run: StageRun) -> Job:
    return group_job(run, "RLOO", partial(rloo_batch_loss, config=run.config))


RLOO = Stage(
    rloo_job, read=read_train_prompts, data=rloo_data, reference=grpo_reference
)
