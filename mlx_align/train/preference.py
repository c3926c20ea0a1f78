"""What the preference stages share: pair loading, per-pair means, the reference policy.

``reference_and_adapters`` is the one place that decides how a stage gets
its reference: log-probs precomputed (and cached) from the model before its
adapters exist, or a reference model run every step (``--no-precompute``):
the policy's own base arrays behind the adapters, or ``--ref-model``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from tqdm import tqdm

from ..data.batching import BatchPlan
from ..data.jsonl import load_split
from ..data.preference import PairBatches, encode_pairs
from ..data.tokenize import Encoded, pad_id_of
from ..logprobs import (
    enable_packing,
    pair_logps,
    supports_packing,
    supports_shared_prompts,
)
from ..model.adapters import quantize_base
from ..model.load import load_model
from ..reference import (
    cache_key,
    cache_path,
    load_cached,
    save_cached,
    score_items,
    shared_reference,
)
from .adapted import prepare_trainable, weights_file, write_weights
from .loop import TrainJob, train

ScoredBatch = tuple[mx.array, mx.array, mx.array]  # tokens (2B, T), mask, index (B,)


def pair_mean(values: mx.array, valid: mx.array, n_valid: mx.array) -> mx.array:
    return (values * valid).sum() / mx.maximum(n_valid, 1)


def masked_pair_means(pair_losses: mx.array, metrics: dict, valid: mx.array):
    """Means over real pairs (filler rows excluded) -> (loss, metrics + ``n_examples``).

    ``valid.sum()`` is computed once and shared: mx.compile (0.32) fails with
    ``_Map_base::at`` when an output equals a subexpression it merged away.
    """
    n_valid = valid.sum()
    metrics = {
        name: pair_mean(value, valid, n_valid) for name, value in metrics.items()
    }
    return pair_mean(pair_losses, valid, n_valid), {**metrics, "n_examples": n_valid}


def reference_rows(ref_logps: mx.array | None, index: mx.array) -> mx.array:
    """The batch's cached reference log-probs, (2B,): first columns, then second (0 on filler)."""
    if ref_logps is None:
        return mx.zeros((2 * index.shape[0],))
    rows = ref_logps[mx.maximum(index, 0)] * (index >= 0)[:, None]  # (B, 2)
    return mx.concatenate([rows[:, 0], rows[:, 1]])


def with_reference(ref_logps: mx.array | None) -> Callable:
    """Append each item's cached reference log-probs (2B,) to its ``(tokens, mask, index)`` batch."""

    def attach(batch: ScoredBatch):
        tokens, mask, index = batch
        return tokens, mask, reference_rows(ref_logps, index)

    return attach


def pair_layout(config, *models: nn.Module | None) -> str:
    """How pair batches reach ``models``: ``packed`` (no padding, with
    ``--padding-free``), ``shared`` (the prompt once, padded) or ``full`` rows;
    the first two only when every model is llama-family."""
    models = tuple(m for m in models if m is not None)
    if getattr(config, "padding_free", False) and all(map(supports_packing, models)):
        for model in models:
            enable_packing(model)  # before any compiled trace sees the model
        return "packed"
    return "shared" if all(map(supports_shared_prompts, models)) else "full"


def pad_pairs(
    batches: PairBatches,
    indices: list[int],
    layout: str,
    rows: int | None = None,
    widths: tuple = (),
) -> tuple:
    """The model inputs of pairs ``indices`` in ``layout`` (see ``pair_layout``),
    ``rows`` pairs (default: the batch size), padded to ``widths``
    (``padded_widths`` of a batch of the same layout; default: their own)."""
    if layout == "packed":
        return batches.pad_packed(indices, rows)
    # a batch that fell back to full rows hands its pieces one width, (T,)
    shared = layout == "shared" and len(widths) != 1
    inputs = batches.pad_shared(indices, rows, widths) if shared else None
    return inputs or batches.pad(indices, rows, widths[:1])[:2]


def padded_tokens(inputs: tuple) -> int:
    """Token positions a pair batch runs through the model, padding included (any layout)."""
    return inputs[0].size + (inputs[2].size if len(inputs) == 4 else 0)


def padded_widths(inputs: tuple) -> tuple:
    """The widths that fix a padded pair batch's shape: (Lp, C) shared, (T,) full rows;
    () for packed rows, which are packed anew."""
    if len(inputs) == 4:
        return inputs[0].shape[1], inputs[2].shape[1]
    return (inputs[0].shape[1],) if len(inputs) == 2 else ()


# The auto token budget: batches past this multiple of the median are split.
AUTO_BUDGET_OVER_MEDIAN = 1.25


def token_budget(config, make: Callable, plan: BatchPlan) -> int:
    """``--max-batch-tokens``, or with -1 (auto) 1.25x the median padded size of
    the train batches ``make(indices)`` the run visits; 0: no limit."""
    if config.max_batch_tokens >= 0:
        return config.max_batch_tokens
    sizes = [
        padded_tokens(make(indices)[0])
        for indices in visited_batches(plan, config, "train")
    ]
    return int(AUTO_BUDGET_OVER_MEDIAN * float(np.median(sizes)))


def fit_to_budget(
    make: Callable, indices: list[int], rows: int, budget: int
) -> tuple | list[tuple[tuple, float]]:
    """``make(indices, rows)``, or when its padded tokens exceed ``budget``, its pieces.

    A batch over budget is halved (recursively; a single pair always runs),
    and weighted by its share of the pairs: the stage's loss is a mean over
    pairs, so the weighted sum of the pieces' gradients is the whole
    batch's. The pieces keep the whole batch's widths, so pieces of batches
    of one shape share one compiled trace (their own widths would make new
    ones: each a trace of the whole step). Returns a batch, or a list of
    ``(batch, weight)`` for ``loop.train``.
    """
    whole = make(indices, rows)
    widths = padded_widths(whole[0])

    def pieces(part: list[int], part_rows: int, batch: tuple) -> list[tuple]:
        """(batch, pairs in it) for each piece of ``part``."""
        if not budget or len(part) < 2 or padded_tokens(batch[0]) <= budget:
            return [(batch, len(part))]
        half = (part_rows + 1) // 2
        return [
            piece
            for side in (part[:half], part[half:])
            for piece in pieces(side, half, make(side, half, widths))
        ]

    fitted = pieces(indices, rows, whole)
    if len(fitted) == 1:
        return whole
    return [(batch, n / len(indices)) for batch, n in fitted]


def load_batches(config, tokenizer, encode: Callable, make_batches: Callable) -> list:
    """Train (required) and valid batches of a preference stage.

    ``encode(tokenizer, records, max_length, report=...)`` turns a split's
    records into items; ``make_batches(items, batch_size, max_length, pad_id,
    seed)`` groups them (``PairBatches``, ``KTOBatches``).
    """
    pad_id = pad_id_of(tokenizer)
    out = []
    for split in ("train", "valid"):
        records = load_split(config.data, split, required=split == "train")
        items = records and encode(
            tokenizer, records, config.max_length, report=tqdm.write
        )
        out.append(
            items
            and make_batches(
                items, config.batch_size, config.max_length, pad_id, config.seed
            )
        )
    return out


def load_pairs(config, tokenizer) -> list[PairBatches | None]:
    return load_batches(config, tokenizer, encode_pairs, PairBatches)


@dataclass
class ScoredSplit:
    """Two rows per item (chosen/rejected, or matched/KL) and how to batch them for scoring."""

    rows: list[tuple[Encoded, Encoded]]
    pad: Callable[[list[int], str], tuple]  # (item indices, layout) -> (inputs, index)
    needed: list[list[int]]  # the batches this run visits
    score: Callable | None = None  # (model, inputs) -> (2B,) by column; None: full rows


def visited_batches(plan: BatchPlan, config, split: str) -> list[list[int]]:
    """The batches of ``plan`` a run reads: train steps x accumulation, or the eval batches."""
    if split == "valid":
        return (
            plan.batches
            if config.eval_batches < 0
            else plan.batches[: config.eval_batches]
        )
    seen: set[tuple[int, ...]] = set()
    for k in range(config.steps * config.grad_accumulation):
        seen.add(tuple(plan.batch(k)))
        if len(seen) == len(plan):  # every batch: no need to replay later epochs
            break
    return [list(b) for b in sorted(seen)]


def pair_split(batches: PairBatches | None, config, split: str) -> ScoredSplit | None:
    if batches is None:
        return None
    rows = [(p.chosen, p.rejected) for p in batches.pairs]

    def pad(indices: list[int], layout: str) -> tuple:
        return pad_pairs(batches, indices, layout), batches.index(indices)

    return ScoredSplit(
        rows,
        pad,
        visited_batches(batches.plan, config, split),
        lambda m, x: pair_logps(m, x)[0],
    )


def reference_logps(config, model: nn.Module, split: ScoredSplit) -> mx.array:
    """(N, 2) reference log-probs from ``model`` of every item the run visits, cached.

    The cache key covers the model files and every item's tokens; items no
    run has visited yet are NaN in the cache and scored when first needed.
    """
    rows = (
        [*a.tokens, -1, a.completion_start, -1, *b.tokens, -1, b.completion_start]
        for a, b in split.rows
    )
    key = cache_key(
        config.ref_model or config.model,
        rows,
        {"quantize": config.quantize, "batch": config.batch_size},
    )
    logps = load_cached(key)
    if logps is None:
        logps = np.full((len(split.rows), 2), np.nan, dtype=np.float32)
    todo = [b for b in split.needed if np.isnan(logps[b]).any()]
    if todo:
        layout = pair_layout(config, model)
        padded = (split.pad(indices, layout) for indices in todo)
        score_items(model, padded, logps, total=len(todo), score=split.score)
        path = save_cached(key, logps)
        tqdm.write(
            f"reference log-probs: {sum(map(len, todo))} items scored, cached in {path}"
        )
    else:
        tqdm.write(f"reference log-probs: reusing {cache_path(key)}")
    return mx.array(np.nan_to_num(logps))


def reference_and_adapters(config, model: nn.Module, splits: list[ScoredSplit | None]):
    """Quantize, get the reference, attach adapters.

    Returns ``(adapters, cached, reference)``: the adapter config (None for
    full training), per split the (N, 2) cached log-probs (None with
    ``--no-precompute``), and the reference model to run each step (None
    when cached).
    """
    ref_model = load_model(config.ref_model)[0] if config.ref_model else None
    if config.quantize:  # the reference scores with the same quantized base
        for m in filter(None, (model, ref_model)):
            quantize_base(m, config.quantize)
    cached: list[mx.array | None] = [None] * len(splits)
    if config.precompute:  # no adapters yet: the model is the reference
        scorer = ref_model or model
        cached = [split and reference_logps(config, scorer, split) for split in splits]
        ref_model = None
    adapters = prepare_trainable(model, config, config.seed)
    reference = None
    if not config.precompute:
        shared = shared_reference(model, config.model) if adapters else None
        reference = ref_model or shared or load_model(config.model)[0]
    return adapters, cached, reference


def train_on_pairs(
    config,
    model: nn.Module,
    adapters: dict | None,
    loss_fn: Callable,
    train_set: PairBatches,
    make_train: Callable[..., tuple],
    valid_set: PairBatches | None,
    make_valid: Callable[[list[int]], tuple] | None,
    frozen: list[nn.Module] | None = None,
) -> None:
    """The training loop over pair batches (DPO, ORPO): micro-batch k is
    ``make_train(plan.batch(k), rows)``, split into pieces when it exceeds the
    token budget (``fit_to_budget``); eval over the valid batches a run visits."""
    budget = token_budget(config, make_train, train_set.plan)
    job = TrainJob(
        model=model,
        loss_fn=loss_fn,
        train_batch=lambda k: fit_to_budget(
            make_train, train_set.plan.batch(k), train_set.batch_size, budget
        ),
        out=Path(config.out),
        write_weights=partial(write_weights, model, adapters),
        weights_file=weights_file(adapters),
        eval_batches=valid_set
        and (lambda: map(make_valid, visited_batches(valid_set.plan, config, "valid"))),
        config=dataclasses.asdict(config),
        frozen=frozen or [],
    )
    train(job, config)
