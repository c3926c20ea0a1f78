"""KTO with one model in memory: unpaired desirable / undesirable examples.

Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic
Optimization"; the loss is ``losses.kto_loss``. Each batch carries B matched
rows and B mismatched rows (prompt_i + another example's completion, see
``batches/kto.py``) in ONE forward; the mean policy − reference log-ratio of
the mismatched rows is the reference point z₀ (detached, clamped at 0), as in
the paper and TRL's ``KTOTrainer``.

The reference is handled as in DPO (``stages/dpo.py``): log-probs of both row
kinds are computed before the adapters are attached and cached, or the
reference runs every step with ``--no-precompute``; ``--ref-model`` loads a
separate one.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from tqdm import tqdm

from mlx_align.batches.kto import KTOBatches, encode_kto
from mlx_align.batches.planning import visited_batches
from mlx_align.batches.types import KTOBatch
from mlx_align.config.stages import KTOConfig
from mlx_align.core import distributed
from mlx_align.core.errors import UserError
from mlx_align.data.splits import load_batched_splits
from mlx_align.losses import preference as losses
from mlx_align.train.reference import Reference, ScoredSplit, prepare_reference
from mlx_align.train.stage import Job, Stage, StageRun, run_stage

# kto_loss's per-example sums -> the count that turns each into TRL's mean
METRIC_COUNTS = {
    "rewards/chosen": ("rewards/chosen_sum", "count/chosen"),
    "rewards/rejected": ("rewards/rejected_sum", "count/rejected"),
    "logps/chosen": ("logps/chosen_sum", "count/chosen"),
    "logps/rejected": ("logps/rejected_sum", "count/rejected"),
}


def kto_means(sums: dict, valid: mx.array, denominator: mx.array) -> dict:
    """TRL's logged means: each ``*_sum`` over its label's real examples, and ``kl``.

    Every count is computed once and reused: mx.compile (0.32) fails with
    ``_Map_base::at`` when an output equals a subexpression it merged away.
    """
    counts = {
        name: mx.maximum((sums[name] * valid).sum(), 1)
        for name in ("count/chosen", "count/rejected")
    }
    means = {
        name: (sums[total] * valid).sum() / counts[count]
        for name, (total, count) in METRIC_COUNTS.items()
    }
    means["kl"] = (sums["kl"] * valid).sum() / denominator  # z₀ after the clamp
    return means


def kto_batch_loss(
    model: nn.Module,
    batch: KTOBatch,
    *,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    reference: nn.Module | None = None,
):
    """Matched rows then KL rows; the reference log-probs are ``batch.reference``
    (cached) unless ``reference`` runs now.

    Returns the mean loss over real examples, the matched (trained) token
    count, and TRL's metrics.
    """
    summed, lengths = batch.inputs.logps(model)  # (2B,) each
    if reference is not None:
        ref_logps = mx.stop_gradient(batch.inputs.logps(reference)[0])
    else:
        ref_logps = batch.reference
    policy, policy_kl = mx.split(summed, 2)  # (B,) each
    ref, ref_kl = mx.split(ref_logps, 2)
    valid = batch.valid
    n_valid = valid.sum()
    denominator = mx.maximum(n_valid, 1)
    kl_ratios = mx.stop_gradient(policy_kl - ref_kl)  # (B,) no gradient, as in TRL
    # z₀ before the clamp: over the whole global batch, every rank's KL rows
    every_rank = distributed.size() > 1
    n_global = (
        mx.maximum(distributed.all_sum(n_valid), 1) if every_rank else denominator
    )
    kl = distributed.all_sum((kl_ratios * valid).sum()) / n_global
    example_losses, sums = losses.kto_loss(
        policy, ref, batch.labels, kl, beta, desirable_weight, undesirable_weight
    )  # (B,)
    loss = (example_losses * valid).sum() / denominator
    matched_tokens = mx.split(lengths, 2)[0].sum()
    return loss, matched_tokens, kto_means(sums, valid, denominator)


def kto_split(batches: KTOBatches | None, config, split: str) -> ScoredSplit | None:
    """Each example's matched row and its KL row, scored by the same batches."""
    if batches is None:
        return None
    rows = list(zip(batches.matched, batches.mismatched, strict=True))
    return ScoredSplit(
        rows,
        lambda indices, layout: batches.pad(indices),  # full rows in any layout
        batches.plan,
        visited_batches(batches.plan, config, split),
    )


def report_balance(config: KTOConfig, batches: KTOBatches) -> None:
    """KTO paper §4 / TRL: λ_D·n_D / (λ_U·n_U) should lie in [1, 4/3]."""
    n_desirable = sum(e.label for e in batches.examples)
    n_undesirable = len(batches.examples) - n_desirable
    tqdm.write(f"KTO examples: {n_desirable} desirable, {n_undesirable} undesirable")
    ratio = (config.desirable_weight * n_desirable) / max(
        config.undesirable_weight * n_undesirable, 1e-9
    )
    if not 1.0 <= ratio <= 4 / 3:
        tqdm.write(
            f"note: desirable_weight·n_D / (undesirable_weight·n_U) = {ratio:.2f}; "
            "the KTO paper recommends [1, 4/3]"
        )


def run_kto(config: KTOConfig) -> Path:
    """Train a KTO policy; adapters in ``out`` (or ``out/model`` with ``--full``)."""
    return run_stage(KTO, config)


def kto_read(config: KTOConfig) -> None:
    if config.batch_size < 2:  # TRL refuses it too
        raise UserError(
            "--batch-size",
            "KTO needs at least 2: with one example the KL row is the example itself",
        )


def kto_data(run: StageRun) -> tuple[KTOBatches, KTOBatches | None]:
    splits = load_batched_splits(run.config, run.tokenizer, encode_kto, KTOBatches)
    report_balance(run.config, splits[0])
    return splits


def kto_reference(run: StageRun) -> Reference:
    train_set, valid_set = run.data
    splits = [kto_split(train_set, run.config, "train"), kto_split(valid_set, run.config, "valid")]  # fmt: skip
    return prepare_reference(run.config, run.model, splits)


def kto_job(run: StageRun) -> Job:
    config, reference, (train_set, valid_set) = run.config, run.reference, run.data
    loss_fn = partial(
        kto_batch_loss,
        beta=config.beta,
        desirable_weight=config.desirable_weight,
        undesirable_weight=config.undesirable_weight,
        reference=reference.model,
    )
    ref_train, ref_valid = reference.cached
    make_train = train_set.maker(ref_train)
    make_valid = valid_set and valid_set.maker(ref_valid)
    return Job(
        loss_fn,
        train_batch=lambda k: make_train(train_set.plan.local_batch(k)),
        valid=valid_set and (valid_set.plan, make_valid),
        frozen=[reference.model],
    )


KTO = Stage(kto_job, read=kto_read, data=kto_data, reference=kto_reference)
