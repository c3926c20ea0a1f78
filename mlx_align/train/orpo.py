"""ORPO: SFT on the chosen completion plus an odds-ratio term; no reference model.

Hong et al. 2024, "ORPO: Monolithic Preference Optimization without
Reference Model", eq. 6. The loss is ``losses.orpo_loss`` on per-token mean
log-probs; chosen and rejected run in one forward as in DPO, packed
without padding (each prompt once) for llama-family models.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from .. import losses
from ..config import ORPOConfig
from ..data.preference import PairBatches
from ..logprobs import pair_logps
from ..model.adapters import quantize_base
from ..model.load import load_model
from .adapted import prepare_trainable, write_result
from .preference import (
    load_pairs,
    masked_pair_means,
    pad_pairs,
    pair_layout,
    train_on_pairs,
)


def orpo_batch_loss(model: nn.Module, inputs: tuple, index: mx.array, *, beta: float):
    """A pair batch (any ``pair_logps`` layout), pair index (B,) -> (loss, n_tokens, metrics)."""
    summed, lengths = pair_logps(model, inputs)  # (2B,) each, chosen first
    mean_logps = summed / mx.maximum(lengths, 1)
    chosen_mean, rejected_mean = mx.split(mean_logps, 2)
    pair_losses, metrics = losses.orpo_loss(
        chosen_mean, rejected_mean, -chosen_mean, beta
    )
    valid = (index >= 0).astype(mx.float32)
    loss, metrics = masked_pair_means(pair_losses, metrics, valid)
    return loss, lengths.sum(), metrics


def orpo_batches(batches: PairBatches, layout: str) -> Callable:
    """Pair indices (rows, widths) -> ``(inputs, index)`` in ``layout`` (``preference.pair_layout``)."""
    return lambda indices, rows=None, widths=(): (
        pad_pairs(batches, indices, layout, rows, widths),
        batches.index(indices, rows),
    )


def run_orpo(config: ORPOConfig) -> Path:
    """Train with ORPO; adapters in ``out`` (or ``out/model`` with ``--full``)."""
    model, tokenizer, model_config = load_model(config.model)
    train_set, valid_set = load_pairs(config, tokenizer)
    if config.quantize:
        quantize_base(model, config.quantize)
    adapters = prepare_trainable(model, config, config.seed)
    layout = pair_layout(config, model)
    make_train = orpo_batches(train_set, layout)
    make_valid = valid_set and orpo_batches(valid_set, layout)
    loss_fn = partial(orpo_batch_loss, beta=config.beta)
    train_on_pairs(
        config, model, adapters, loss_fn, train_set, make_train, valid_set, make_valid
    )
    return write_result(
        model, adapters, Path(config.out), config.model, tokenizer, model_config
    )
