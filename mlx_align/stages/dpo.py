"""The DPO family (TRL 1.16's fifteen ``loss_type``s, several at once with
weights, f-DPO, and RPO's ``--sft-weight``) with one model in memory.

Reference log-probs are computed before the adapters are attached (the
model then *is* the reference), cached on disk, and looked up per batch; the
policy runs chosen and rejected rows in one forward. ``--ref-model`` loads a
separate reference for that pass; ``--no-precompute`` runs the reference
every step instead (a model object sharing the base arrays, or the loaded
``--ref-model``).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from mlx_align.batches.layouts import (
    choose_layout,
    ld_sums,
    pair_logps,
    pair_token_logps,
)
from mlx_align.batches.planning import visited_batches
from mlx_align.batches.preference import PairBatches
from mlx_align.batches.types import PairBatch
from mlx_align.config.checks import split_weights
from mlx_align.config.losses import DPOLossSettings
from mlx_align.config.stages import DPOConfig
from mlx_align.losses.dpo import (
    LOSS_SETTINGS,
    DPOPair,
    dpo_metrics,
    weighted_dpo_losses,
    wpo_weights,
)
from mlx_align.losses.masked import masked_means
from mlx_align.model.logprobs import log_sum_sq_stat
from mlx_align.train.pairs import pair_job, pair_splits
from mlx_align.train.reference import Reference, ScoredSplit, prepare_reference
from mlx_align.train.stage import Job, Stage, StageRun, run_stage


def dpo_objective(config: DPOLossSettings) -> Callable:
    """The configured DPO-family loss as ``f(pc, pr, rc, rr, lc, lr, valid) ->
    (losses (B,), metrics)``: Σ_k w_k · ``losses.dpo.DPO_LOSSES[--loss k]``, each
    loss given the settings its signature names, so a new DPO variant is one
    function and one registry line."""
    weights = [float(w) for w in split_weights(config.loss_weights)]
    terms = list(zip(config.loss, weights or [1.0] * len(config.loss), strict=True))
    settings = {name: getattr(config, name) for name in LOSS_SETTINGS}
    divergence = dict(
        divergence=config.f_divergence_type, alpha=config.f_alpha_divergence_coef
    )

    def objective(*arrays: mx.array) -> tuple[mx.array, dict]:
        pair = DPOPair(*arrays, **divergence)
        losses = weighted_dpo_losses(pair, config.beta, terms, **settings)
        return losses, dpo_metrics(pair, config.beta)

    return objective


def dpo_loss(
    model: nn.Module,
    batch: PairBatch,
    *,
    objective: Callable,
    sft_weight: float = 0.0,
    reference: nn.Module | None = None,
    ld_alpha: float = 1.0,
    use_weighting: bool = False,
):
    """One pair batch -> (loss, n_tokens, metrics); the reference log-probs are
    ``batch.reference`` (cached) unless ``reference`` runs now. With
    ``use_weighting`` each pair's loss is scaled by its WPO weights."""
    weights = None
    if use_weighting:  # the alignment term from the same forward's logits
        per_token, mask, sum_sq = pair_token_logps(batch.inputs, model, log_sum_sq_stat)
        summed, lengths = ld_sums(per_token, mask, ld_alpha), mask.sum(axis=-1)
        weights = wpo_weights(per_token, sum_sq, mask)  # (2B,)
    else:
        summed, lengths = pair_logps(batch.inputs, model, ld_alpha)  # (2B,)
    if reference is not None:
        ref_logps = mx.stop_gradient(pair_logps(batch.inputs, reference, ld_alpha)[0])
    else:
        ref_logps = batch.reference
    pc, pr = mx.split(summed, 2)
    rc, rr = mx.split(ref_logps, 2)
    lc, lr = mx.split(lengths, 2)
    pair_losses, metrics = objective(pc, pr, rc, rr, lc, lr, batch.valid)  # (B,)
    if weights is not None:
        chosen_weights, rejected_weights = mx.split(weights, 2)
        pair_losses = pair_losses * chosen_weights * rejected_weights
    if sft_weight:  # RPO: + α · mean NLL of the chosen completion
        nll = -pc / mx.maximum(lc, 1)
        pair_losses = pair_losses + sft_weight * nll
        metrics = {**metrics, "nll_loss": nll}
    loss, metrics = masked_means(pair_losses, metrics, batch.valid)
    return loss, lengths.sum(), metrics


def run_dpo(config: DPOConfig) -> Path:
    """Train a DPO-family policy; adapters in ``out`` (or ``out/model`` with ``--full``)."""
    return run_stage(DPO, config)


def dpo_reference(run: StageRun) -> Reference:
    """Log-probs of the visited pairs, precomputed before the adapters exist, or a model."""
    splits = [
        pair_split(s, run.config, name)
        for s, name in zip(run.data, SPLITS, strict=True)
    ]
    return prepare_reference(run.config, run.model, splits)


def dpo_job(run: StageRun) -> Job:
    config, reference = run.config, run.reference
    loss_fn = partial(
        dpo_loss,
        objective=dpo_objective(config),
        sft_weight=config.sft_weight,
        reference=reference.model,
        ld_alpha=config.ld_alpha,
        use_weighting=config.use_weighting,
    )
    layout = choose_layout(config.padding_free, run.model, reference.model)
    makers = [
        s and s.maker(layout, cached)
        for s, cached in zip(run.data, reference.cached, strict=True)
    ]
    return pair_job(config, loss_fn, run.data, makers, frozen=(reference.model,))


DPO = Stage(dpo_job, data=pair_splits, reference=dpo_reference)


SPLITS = ("train", "valid")


def pair_split(batches: PairBatches | None, config, split: str) -> ScoredSplit | None:
    """A split's pairs, for their reference log-probs."""
    if batches is None:
        return None
    rows = [(p.chosen, p.rejected) for p in batches.pairs]
    return ScoredSplit(
        rows,
        lambda indices, layout: batches.maker(layout)(indices),
        batches.plan,
        visited_batches(batches.plan, config, split),
        ld_alpha=config.ld_alpha,
    )
