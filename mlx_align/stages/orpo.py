"""ORPO: SFT on the chosen completion plus an odds-ratio term; no reference model.

Hong et al. 2024, "ORPO: Monolithic Preference Optimization without
Reference Model", eq. 6. The loss is ``losses.orpo_loss`` on per-token mean
log-probs; chosen and rejected run in one forward as in DPO, packed
without padding (each prompt once) where the model allows it.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from mlx_align.batches.types import PairBatch
from mlx_align.config.stages import ORPOConfig
from mlx_align.losses import preference as losses
from mlx_align.losses.masked import masked_means
from mlx_align.train.pairs import pair_splits, reference_free_job
from mlx_align.train.stage import Job, Stage, StageRun, run_stage


def orpo_batch_loss(model: nn.Module, batch: PairBatch, *, beta: float):
    """A pair batch (any layout) -> (loss, n_tokens, metrics)."""
    summed, lengths = batch.inputs.logps(model)  # (2B,) each, chosen first
    mean_logps = summed / mx.maximum(lengths, 1)
    chosen_mean, rejected_mean = mx.split(mean_logps, 2)
    pair_losses, metrics = losses.orpo_loss(
        chosen_mean, rejected_mean, -chosen_mean, beta
    )
    loss, metrics = masked_means(pair_losses, metrics, batch.valid)
    return loss, lengths.sum(), metrics


def run_orpo(config: ORPOConfig) -> Path:
    """Train with ORPO; adapters in ``out`` (or ``out/model`` with ``--full``)."""
    return run_stage(ORPO, config)


def orpo_job(run: StageRun) -> Job:
    """No reference: the odds ratio is the policy's own."""
    return reference_free_job(run, partial(orpo_batch_loss, beta=run.config.beta))


ORPO = Stage(orpo_job, data=pair_splits)
