"""ORPO: SFT on the chosen completion plus an odds-ratio term; no reference model.

Hong et al. 2024, "ORPO: Monolithic Preference Optimization without
Reference Model", eq. 6. The loss is ``losses.orpo_loss`` on per-token mean
log-probs; chosen and rejected run in one forward as in DPO.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn

from .. import losses
from ..config import ORPOConfig
from ..logprobs import sequence_logps
from ..model.adapters import quantize_base
from ..model.load import load_model
from .adapted import prepare_trainable, weights_file, write_result, write_weights
from .loop import TrainJob, train
from .preference import load_pairs, masked_pair_means


def orpo_batch_loss(
    model: nn.Module,
    tokens: mx.array,
    loss_mask: mx.array,
    index: mx.array,
    *,
    beta: float,
):
    """Chosen rows then rejected rows, (2B, T) -> (loss, n_tokens, metrics)."""
    _, summed, mask = sequence_logps(model, tokens, loss_mask)  # (2B,), (2B, T-1)
    lengths = mask.sum(axis=-1)  # (2B,)
    mean_logps = summed / mx.maximum(lengths, 1)
    chosen_mean, rejected_mean = mx.split(mean_logps, 2)
    pair_losses, metrics = losses.orpo_loss(
        chosen_mean, rejected_mean, -chosen_mean, beta
    )
    valid = (index >= 0).astype(mx.float32)
    loss, metrics = masked_pair_means(pair_losses, metrics, valid)
    return loss, mask.sum(), metrics


def run_orpo(config: ORPOConfig) -> Path:
    """Train with ORPO; adapters in ``out`` (or ``out/model`` with ``--full``)."""
    model, tokenizer, model_config = load_model(config.model)
    train_set, valid_set = load_pairs(config, tokenizer)
    if config.quantize:
        quantize_base(model, config.quantize)
    adapters = prepare_trainable(model, config, config.seed)
    job = TrainJob(
        model=model,
        loss_fn=partial(orpo_batch_loss, beta=config.beta),
        train_batch=train_set.train_batch,
        out=Path(config.out),
        write_weights=partial(write_weights, model, adapters),
        weights_file=weights_file(adapters),
        eval_batches=valid_set and (lambda: valid_set.in_order(config.eval_batches)),
        config=dataclasses.asdict(config),
    )
    train(job, config)
    return write_result(
        model, adapters, Path(config.out), config.model, tokenizer, model_config
    )
