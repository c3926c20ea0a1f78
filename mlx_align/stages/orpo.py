"""ORPO: SFT on the chosen completion plus an odds-ratio term; no reference model.

Hong et al. 2024, "ORPO: Monolithic Preference Optimization without
Reference Model", eq. 6. The loss is ``losses.orpo_loss`` on per-token mean
log-probs; chosen and rejected run in one forward as in DPO, packed
without padding (each prompt once) for llama-family models.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from mlx_align.batches.layouts import choose_layout
from mlx_align.batches.preference import PairBatches, encode_pairs
from mlx_align.batches.types import PairBatch
from mlx_align.config.stages import ORPOConfig
from mlx_align.data.splits import load_batched_splits
from mlx_align.losses import preference as losses
from mlx_align.model.adapters import quantize_base
from mlx_align.model.load import load_model
from mlx_align.train.adapted import prepare_trainable
from mlx_align.train.pairs import masked_means, train_on_pairs


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
    model, tokenizer, model_config = load_model(config.model)
    splits = load_batched_splits(config, tokenizer, encode_pairs, PairBatches)
    if config.quantize:
        quantize_base(model, config.quantize)
    adapters = prepare_trainable(model, config, config.seed)
    layout = choose_layout(config.padding_free, model)
    makers = [s and s.maker(layout) for s in splits]
    loss_fn = partial(orpo_batch_loss, beta=config.beta)
    return train_on_pairs(
        config, model, adapters, loss_fn, splits, makers, tokenizer, model_config
    )
