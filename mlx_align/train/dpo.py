"""DPO (and IPO / hinge / robust, and RPO's ``--sft-weight``) with one model in memory.

Reference log-probs are computed before the adapters are attached (the
model then *is* the reference), cached on disk, and looked up per batch; the
policy runs chosen and rejected rows in one forward. ``--ref-model`` loads a
separate reference for that pass; ``--no-precompute`` runs the reference
every step instead (a model object sharing the base arrays, or the loaded
``--ref-model``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from .. import losses
from ..config import DPOConfig
from ..data.preference import PairBatches
from ..logprobs import pair_logps
from ..model.load import load_model
from .adapted import write_result
from .preference import (
    load_pairs,
    masked_pair_means,
    pad_pairs,
    pair_layout,
    pair_split,
    reference_and_adapters,
    reference_rows,
    train_on_pairs,
)


def dpo_objective(config: DPOConfig) -> Callable:
    """``losses.DPO_LOSSES[config.loss]`` as ``f(pc, pr, rc, rr, chosen_lengths, rejected_lengths)``.

    A loss receives, by name, those of ``beta``, ``label_smoothing``,
    ``chosen_lengths`` and ``rejected_lengths`` that its signature lists, so a
    new DPO variant is one function and one registry line.
    """
    loss_fn = losses.DPO_LOSSES[config.loss]
    accepted = inspect.signature(loss_fn).parameters
    settings = {"beta": config.beta, "label_smoothing": config.label_smoothing}
    fixed = {k: v for k, v in settings.items() if k in accepted}
    wants_lengths = "chosen_lengths" in accepted

    def objective(pc, pr, rc, rr, lc, lr):
        lengths = (
            {"chosen_lengths": lc, "rejected_lengths": lr} if wants_lengths else {}
        )
        return loss_fn(pc, pr, rc, rr, **fixed, **lengths)

    return objective


def dpo_loss(
    model: nn.Module,
    inputs: tuple,
    ref_logps: mx.array,
    *,
    objective: Callable,
    sft_weight: float = 0.0,
    reference: nn.Module | None = None,
):
    """One pair batch -> (loss, n_tokens, metrics); ``ref_logps`` (2B,) unless ``reference`` runs now."""
    summed, lengths = pair_logps(model, inputs)  # (2B,), (2B,)
    if reference is not None:
        ref_logps = mx.stop_gradient(pair_logps(reference, inputs)[0])
    pc, pr = mx.split(summed, 2)
    rc, rr = mx.split(ref_logps, 2)
    lc, lr = mx.split(lengths, 2)
    pair_losses, metrics = objective(pc, pr, rc, rr, lc, lr)  # (B,)
    if sft_weight:  # RPO: + α · mean NLL of the chosen completion
        nll = -pc / mx.maximum(lc, 1)
        pair_losses = pair_losses + sft_weight * nll
        metrics = {**metrics, "nll_loss": nll}
    valid = (lc > 0).astype(mx.float32)  # filler pairs have no tokens
    loss, metrics = masked_pair_means(pair_losses, metrics, valid)
    return loss, lengths.sum(), metrics


def dpo_batches(
    batches: PairBatches, ref_logps: mx.array | None, layout: str
) -> Callable:
    """Pair indices (rows, widths) -> ``(inputs, ref_logps)`` in ``layout`` (``preference.pair_layout``)."""

    def make(indices: list[int], rows: int | None = None, widths: tuple = ()) -> tuple:
        inputs = pad_pairs(batches, indices, layout, rows, widths)
        return inputs, reference_rows(ref_logps, batches.index(indices, rows))

    return make


def run_dpo(config: DPOConfig) -> Path:
    """Train a DPO-family policy; adapters in ``out`` (or ``out/model`` with ``--full``)."""
    model, tokenizer, model_config = load_model(config.model)
    train_set, valid_set = load_pairs(config, tokenizer)
    adapters, (ref_train, ref_valid), reference = reference_and_adapters(
        config,
        model,
        [
            pair_split(train_set, config, "train"),
            pair_split(valid_set, config, "valid"),
        ],
    )
    loss_fn = partial(
        dpo_loss,
        objective=dpo_objective(config),
        sft_weight=config.sft_weight,
        reference=reference,
    )
    layout = pair_layout(config, model, reference)
    make_train = dpo_batches(train_set, ref_train, layout)
    make_valid = valid_set and dpo_batches(valid_set, ref_valid, layout)
    frozen = [reference] if reference is not None else []
    train_on_pairs(
        config,
        model,
        adapters,
        loss_fn,
        train_set,
        make_train,
        valid_set,
        make_valid,
        frozen,
    )
    return write_result(
        model, adapters, Path(config.out), config.model, tokenizer, model_config
    )
