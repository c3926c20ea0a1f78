"""CPO / SimPO / AlphaPO: a preference loss on the policy's own log-probs, no reference.

Xu et al. 2024 (CPO), Meng et al. 2024 (SimPO), Gupta et al. 2025 (AlphaPO),
as TRL's experimental ``CPOTrainer``: ``losses.cpo.cpo_loss`` on the pair,
plus ``--cpo-alpha`` × the chosen completions' NLL (a token mean over the
micro-batch's real pairs, as TRL's cross-entropy). Chosen and rejected run
in one forward, packed without padding where the model allows it, as ORPO.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from mlx_align.batches.types import PairBatch
from mlx_align.config.stages import CPOConfig
from mlx_align.losses.cpo import MEAN_LOGPS_LOSSES, cpo_loss
from mlx_align.losses.masked import masked_means
from mlx_align.train.pairs import pair_splits, reference_free_job
from mlx_align.train.stage import Job, Stage, StageRun, run_stage


def cpo_batch_loss(model: nn.Module, batch: PairBatch, *, config: CPOConfig):
    """A pair batch (any layout) -> (loss, n_tokens, metrics)."""
    summed, lengths = batch.inputs.logps(model)  # (2B,) each, chosen first
    means = config.loss in MEAN_LOGPS_LOSSES
    logps = summed / mx.maximum(lengths, 1) if means else summed
    chosen, rejected = mx.split(logps, 2)
    pair_losses, metrics = cpo_loss(
        chosen,
        rejected,
        config.beta,
        config.loss,
        label_smoothing=config.label_smoothing,
        simpo_gamma=config.simpo_gamma,
        alpha=config.alpha,
    )
    loss, metrics = masked_means(pair_losses, metrics, batch.valid)
    nll_weight = 0.0 if config.loss == "alphapo" else config.cpo_alpha
    if nll_weight:  # TRL logs nll_loss 0 without the term; it is left out here
        chosen_summed, chosen_lengths = mx.split(summed, 2)[0], mx.split(lengths, 2)[0]
        valid = batch.valid
        tokens = mx.maximum((chosen_lengths * valid).sum(), 1)
        nll = -(chosen_summed * valid).sum() / tokens
        loss = loss + nll_weight * nll
        metrics["nll_loss"] = mx.stop_gradient(nll)
    return loss, lengths.sum(), metrics


def run_cpo(config: CPOConfig) -> Path:
    """Train with CPO/SimPO/AlphaPO; adapters in ``out`` (or ``out/model`` with ``--full``)."""
    return run_stage(CPO, config)


def cpo_job(run: StageRun) -> Job:
    """No reference: the pair's margin is the policy's own."""
    return reference_free_job(run, partial(cpo_batch_loss, config=run.config))


CPO = Stage(cpo_job, data=pair_splits)
