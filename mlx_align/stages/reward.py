"""Reward modelling (Bradley-Terry) and scoring with the trained reward model.

Chosen and rejected rows run in one forward, as in DPO; the reward of a row
is the scalar head read at its last completion token
(``model/reward_head.py``). The loss is ``losses.bt_loss`` with the pair's
optional ``margin`` column (Llama 2, eq. 2) plus TRL's
``center_rewards_coefficient`` term c · (r_w + r_l)² (Eisenstein et al.
2023), which pins the reward's free offset near 0.

Scoring with the trained model: ``sampling/reward_model.py`` (``score``)
and ``apps/score.py`` (``mlx-align score``).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import mlx.core as mx

from mlx_align.batches.types import PairBatch
from mlx_align.config.stages import RewardConfig
from mlx_align.losses import preference as losses
from mlx_align.losses.masked import masked_means
from mlx_align.model.reward_head import (
    CHECKPOINT_WEIGHTS,
    RewardModel,
    hidden_size_of,
    save_checkpoint_weights,
    save_reward_model,
)
from mlx_align.train.pairs import pair_splits
from mlx_align.train.stage import Job, Stage, StageRun, Trained, run_stage


def bt_batch_loss(model: RewardModel, batch: PairBatch, *, center_coefficient=0.0):
    """Chosen rows then rejected rows (full rows), optional ``margins`` -> (loss, n_tokens, metrics)."""
    rewards = model(*batch.inputs)  # (2B,)
    chosen, rejected = mx.split(rewards, 2)  # (B,), (B,)
    pair_losses, metrics = losses.bt_loss(chosen, rejected, batch.margins)
    if center_coefficient:
        pair_losses = pair_losses + center_coefficient * (chosen + rejected) ** 2
    metrics = {
        **metrics,
        "chosen_reward": mx.stop_gradient(chosen),
        "rejected_reward": mx.stop_gradient(rejected),
    }
    loss, metrics = masked_means(pair_losses, metrics, batch.valid)
    return loss, batch.inputs.loss_mask.sum(), metrics


def run_reward(config: RewardConfig) -> Path:
    """Train a Bradley-Terry reward model; adapters (or ``out/model``) + head in ``out``."""
    return run_stage(REWARD, config)


def reward_model(run: StageRun) -> Trained:
    """A scalar head on the (adapted) model; the head is trainable either way."""
    model = RewardModel(run.model, hidden_size_of(run.model))
    return Trained(model, partial(save_checkpoint_weights, model), CHECKPOINT_WEIGHTS)


def reward_job(run: StageRun) -> Job:
    train_set, valid_set = run.data
    make_train = train_set.maker("full", margins=True)
    make_valid = valid_set and valid_set.maker("full", margins=True)
    return Job(
        partial(
            bt_batch_loss, center_coefficient=run.config.center_rewards_coefficient
        ),
        train_batch=lambda k: make_train(train_set.plan.local_batch(k)),
        valid=valid_set and (valid_set.plan, make_valid),
    )


def write_reward_model(run: StageRun) -> Path:
    config = run.config
    return save_reward_model(
        run.trained.module,
        run.adapters,
        Path(config.out),
        config.model,
        run.tokenizer,
        run.model_config,
        config.quantize,
    )


REWARD = Stage(
    reward_job,
    data=pair_splits,
    trained=reward_model,
    write=write_reward_model,
)
