"""DPO (and IPO / hinge / robust, and RPO's ``--sft-weight``) with one model in memory.

Reference log-probs are computed before the adapters are attached (the
model then *is* the reference), cached on disk, and looked up per batch; the
policy runs chosen and rejected rows in one forward. ``--ref-model`` loads a
separate reference for that pass; ``--no-precompute`` runs the reference
every step instead (a model object sharing the base arrays, or the loaded
``--ref-model``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from tqdm import tqdm

from .. import losses
from ..config import DPOConfig
from ..data.jsonl import load_split
from ..data.preference import PairBatches, encode_pairs
from ..logprobs import sequence_logps
from ..model.adapters import quantize_base
from ..model.load import load_model
from ..reference import cache_key, cached_logps, compute_logps, shared_reference
from .adapted import prepare_trainable, weights_file, write_result, write_weights
from .loop import TrainJob, train


def dpo_objective(config: DPOConfig) -> Callable:
    """The chosen loss as ``f(pc, pr, rc, rr, chosen_lengths, rejected_lengths)``."""
    beta = config.beta
    return {
        "sigmoid": lambda pc, pr, rc, rr, lc, lr: losses.dpo_sigmoid_loss(
            pc, pr, rc, rr, beta
        ),
        "hinge": lambda pc, pr, rc, rr, lc, lr: losses.dpo_hinge_loss(
            pc, pr, rc, rr, beta
        ),
        "ipo": lambda pc, pr, rc, rr, lc, lr: losses.dpo_ipo_loss(
            pc, pr, rc, rr, beta, lc, lr
        ),
        "robust": lambda pc, pr, rc, rr, lc, lr: losses.dpo_robust_loss(
            pc, pr, rc, rr, beta, config.label_smoothing
        ),
    }[config.loss]


def pair_mean(values: mx.array, valid: mx.array, n_valid: mx.array) -> mx.array:
    return (values * valid).sum() / mx.maximum(n_valid, 1)


def masked_pair_means(pair_losses, metrics, valid):
    """Means over real pairs (filler rows excluded) -> (loss, metrics + ``n_examples``).

    ``valid.sum()`` is computed once and shared: mx.compile (0.32) fails with
    ``_Map_base::at`` when an output equals a subexpression it merged away.
    """
    n_valid = valid.sum()
    metrics = {
        name: pair_mean(value, valid, n_valid) for name, value in metrics.items()
    }
    return pair_mean(pair_losses, valid, n_valid), {**metrics, "n_examples": n_valid}


def dpo_loss(
    model: nn.Module,
    tokens: mx.array,
    loss_mask: mx.array,
    ref_logps: mx.array,
    *,
    objective: Callable,
    sft_weight: float = 0.0,
    reference: nn.Module | None = None,
):
    """Chosen rows then rejected rows, (2B, T); ``ref_logps`` (2B,) unless ``reference`` runs now."""
    _, summed, mask = sequence_logps(model, tokens, loss_mask)  # (2B,), (2B, T-1)
    if reference is not None:
        ref_logps = mx.stop_gradient(sequence_logps(reference, tokens, loss_mask)[1])
    lengths = mask.sum(axis=-1)  # (2B,)
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
    return loss, mask.sum(), metrics


def with_reference(batches: PairBatches, ref_logps: mx.array | None):
    """Append each pair's cached reference log-probs (chosen, rejected) to its batch."""

    def attach(batch):
        tokens, mask, index = batch
        if ref_logps is None:
            return tokens, mask, mx.zeros((tokens.shape[0],))
        rows = ref_logps[mx.maximum(index, 0)] * (index >= 0)[:, None]  # (B, 2)
        return tokens, mask, mx.concatenate([rows[:, 0], rows[:, 1]])

    return attach


def load_pairs(config, tokenizer, encoder=None):
    """Train (required) and valid pair batches for a preference stage."""
    kwargs = {"encoder": encoder} if encoder else {}
    pad_id = (
        tokenizer.pad_token_id
        if tokenizer.pad_token_id is not None
        else tokenizer.eos_token_id
    )
    out = []
    for split in ("train", "valid"):
        records = load_split(config.data, split, required=split == "train")
        pairs = records and encode_pairs(
            tokenizer, records, config.max_length, report=tqdm.write, **kwargs
        )
        out.append(
            pairs
            and PairBatches(
                pairs, config.batch_size, config.max_length, pad_id, config.seed
            )
        )
    return out


def reference_logps(
    config: DPOConfig, model: nn.Module, batches: PairBatches
) -> mx.array:
    """(N, 2) cached reference log-probs of every pair, from ``model`` (the reference)."""
    rows = (
        [
            *p.chosen.tokens,
            -1,
            p.chosen.completion_start,
            -1,
            *p.rejected.tokens,
            -1,
            p.rejected.completion_start,
        ]
        for p in batches.pairs
    )
    key = cache_key(
        config.ref_model or config.model,
        rows,
        {"quantize": config.quantize, "batch": config.batch_size},
    )
    compute = partial(
        compute_logps,
        model,
        batches.in_order(),
        len(batches.pairs),
        2,
        len(batches.plan),
    )
    return cached_logps(key, compute, report=tqdm.write)


def run_dpo(config: DPOConfig) -> Path:
    """Train a DPO-family policy; adapters in ``out`` (or ``out/model`` with ``--full``)."""
    model, tokenizer, model_config = load_model(config.model)
    train_set, valid_set = load_pairs(config, tokenizer)
    ref_model = load_model(config.ref_model)[0] if config.ref_model else None
    if config.quantize:  # the reference scores with the same quantized base
        for m in filter(None, (model, ref_model)):
            quantize_base(m, config.quantize)
    ref_train = ref_valid = None
    if config.precompute:  # the model has no adapters yet: it is the reference
        scorer = ref_model or model
        ref_train = reference_logps(config, scorer, train_set)
        ref_valid = valid_set and reference_logps(config, scorer, valid_set)
        ref_model = None  # not needed during training
    adapters = prepare_trainable(model, config, config.seed)
    reference = None
    if not config.precompute:
        reference = ref_model or (
            shared_reference(model, config.model)
            if adapters
            else load_model(config.model)[0]
        )
    loss_fn = partial(
        dpo_loss,
        objective=dpo_objective(config),
        sft_weight=config.sft_weight,
        reference=reference,
    )
    attach_train, attach_valid = (
        with_reference(train_set, ref_train),
        with_reference(valid_set, ref_valid),
    )
    job = TrainJob(
        model=model,
        loss_fn=loss_fn,
        train_batch=lambda k: attach_train(train_set.train_batch(k)),
        out=Path(config.out),
        write_weights=partial(write_weights, model, adapters),
        weights_file=weights_file(adapters),
        eval_batches=valid_set
        and (lambda: map(attach_valid, valid_set.in_order(config.eval_batches))),
        config=dataclasses.asdict(config),
    )
    train(job, config)
    return write_result(
        model, adapters, Path(config.out), config.model, tokenizer, model_config
    )
