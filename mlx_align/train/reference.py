"""The reference policy: log-probs computed once and cached, or a model sharing the base.

For LoRA preference training the reference is the policy's own base weights
with the adapters off. Before the adapters are attached the model *is* that
reference, so its log-probs are computed then, in batches, once, and cached
on disk under a key of the model files and the tokenised data: a later run
on the same model and data skips the pass. Only the items a run will visit
are scored; a longer run later scores the rest and extends the cache.

When the reference must run during training (``--no-precompute``),
``shared_reference`` builds a second model object whose base arrays are the
policy's own (no copy). Setting a LoRA ``scale`` to 0 instead would not
work under ``mx.compile``: the Python float is frozen into the trace.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import mlx.core as mx
import mlx.nn as nn
import mlx_lm
import numpy as np
from mlx.utils import tree_flatten
from tqdm import tqdm

from mlx_align.batches.layouts import choose_layout, pair_logps
from mlx_align.batches.planning import BatchPlan
from mlx_align.core import distributed
from mlx_align.core.events import emit
from mlx_align.data.tokenize import Encoded
from mlx_align.model.adapters import quantize_base
from mlx_align.model.load import load_model
from mlx_align.model.probes import share_probes

ADAPTER_LEAVES = ("lora_a", "lora_b", "m")


def cache_root() -> Path:
    default = (
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mlx-align"
    )
    return Path(os.environ.get("MLX_ALIGN_CACHE", default)) / "reference"


def model_fingerprint(model_path: str) -> dict:
    """What identifies a model's weights without reading them: config + file sizes/times."""
    path = Path(model_path)
    if not path.exists():
        return {"hub_id": model_path}
    files = sorted(path.glob("*.safetensors"))
    return {
        "path": str(path.resolve()),
        "config": (path / "config.json").read_text()
        if (path / "config.json").exists()
        else "",
        "files": [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files],
    }


def cache_key(model_path: str, token_rows: Iterable[list[int]], extra: dict) -> str:
    digest = hashlib.sha256(
        json.dumps([model_fingerprint(model_path), extra], sort_keys=True).encode()
    )
    for row in token_rows:
        digest.update(json.dumps(row).encode())
    return digest.hexdigest()[:32]


def score_items(
    model: nn.Module,
    batches: Iterable,
    logps: np.ndarray,
    total: int | None = None,
    ld_alpha: float = 1.0,
) -> None:
    """Fill ``logps`` (n_items, 2) with summed completion log-probs, in place
    (LD-DPO-weighted with ``ld_alpha`` < 1, ``layouts.pair_logps``).

    Each batch has ``inputs`` (a layout, 2B completions in slot order: first
    columns, then second) and ``index`` (B,), -1 on filler.
    """
    for batch in tqdm(batches, total=total, desc="reference log-probs", leave=False):
        summed = pair_logps(batch.inputs, model, ld_alpha)[0].reshape(2, -1).T  # (B, 2)
        summed, index = np.array(summed), np.array(batch.index)
        keep = index >= 0
        logps[index[keep]] = summed[keep]


def cache_path(key: str) -> Path:
    return cache_root() / f"{key}.npy"


def load_cached(key: str) -> np.ndarray | None:
    path = cache_path(key)
    return np.load(path) if path.exists() else None


def save_cached(key: str, logps: np.ndarray) -> Path:
    """Write atomically: a run interrupted mid-write leaves the old cache intact."""
    path = cache_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")  # runs side by side
    np.save(tmp, logps)
    os.replace(tmp, path)
    return path


def shared_reference(policy: nn.Module, model_path: str) -> nn.Module:
    """A second model object on the policy's base arrays (LoRA layers' ``.linear``), no copy.

    Loaded lazily, its own weights are replaced before they are ever read.
    """
    reference, _ = mlx_lm.load(model_path, lazy=True)
    if any(isinstance(m, nn.QuantizedLinear) for _, m in policy.named_modules()):
        bits = next(
            m.bits
            for _, m in policy.named_modules()
            if isinstance(m, nn.QuantizedLinear)
        )
        quantize_base(reference, bits)
    base = [
        (name.replace(".linear.", "."), value)
        for name, value in tree_flatten(policy.parameters())
        if name.rsplit(".", 1)[-1] not in ADAPTER_LEAVES
    ]
    reference.load_weights(base, strict=True)
    reference.freeze()
    reference.eval()
    share_probes(policy, reference)
    return reference


@dataclass
class ScoredSplit:
    """A split whose items get cached reference log-probs: two rows per item
    (chosen/rejected, or matched/KL) and how to batch them."""

    rows: list[tuple[Encoded, Encoded]]
    batch: Callable[
        [list[int], str], Any
    ]  # (this rank's item indices, layout) -> batch
    plan: BatchPlan  # whose ``local`` gives this rank's items of a global batch
    needed: list[list[int]]  # the global batches this run visits
    ld_alpha: float = 1.0  # LD-DPO's weight past a pair's shared length (pairs)


def precomputed_logps(settings, model: nn.Module, split: ScoredSplit) -> mx.array:
    """(N, 2) reference log-probs from ``model`` of every item the run visits, cached.

    The cache key covers the model files and every item's tokens; items no
    run has visited yet are NaN in the cache and scored when first needed.
    With several ranks, rank 0's cache is everyone's; each rank scores its
    share of every batch still missing, and the shares are summed.
    """
    rows = (
        [*a.tokens, -1, a.completion_start, -1, *b.tokens, -1, b.completion_start]
        for a, b in split.rows
    )
    key = cache_key(
        settings.ref_model or settings.model,
        rows,
        {"quantize": settings.quantize, "batch": settings.batch_size}
        | ({"ld_alpha": split.ld_alpha} if split.ld_alpha != 1.0 else {}),
    )
    tic = time.perf_counter()
    logps = load_cached(key) if distributed.is_main() else None
    if logps is None:
        logps = np.full((len(split.rows), 2), np.nan, dtype=np.float32)
    logps = np.array(distributed.broadcast(mx.array(logps)))
    todo = [b for b in split.needed if np.isnan(logps[b]).any()]
    if todo:
        layout = choose_layout(getattr(settings, "padding_free", False), model)
        batches = (split.batch(split.plan.local(b), layout) for b in todo)
        scored = np.full_like(logps, np.nan)
        score_items(model, batches, scored, total=len(todo), ld_alpha=split.ld_alpha)
        rows = [i for b in todo for i in b]  # each scored by exactly one rank
        logps[rows] = np.array(distributed.all_sum(mx.array(np.nan_to_num(scored))))[
            rows
        ]
        path = save_cached(key, logps) if distributed.is_main() else cache_path(key)
        tqdm.write(
            f"reference log-probs: {sum(map(len, todo))} items scored, cached in {path}"
        )
    else:
        tqdm.write(f"reference log-probs: reusing {cache_path(key)}")
    emit("reference", seconds=time.perf_counter() - tic, items=sum(map(len, todo)))
    return mx.array(np.nan_to_num(logps))


class Reference(NamedTuple):
    """How a preference stage gets its reference: cached log-probs per split, or a model run each step."""

    cached: list[mx.array | None]  # per split, (N, 2) log-probs; None: not precomputed
    model: nn.Module | None  # run every step (``--no-precompute``); None: cached


def prepare_reference(settings, model: nn.Module, splits: list) -> Reference:
    """The preference stages' reference, before the policy's adapters exist.

    Then the policy (its base quantized already) is the reference: it
    scores the splits with ``--precompute`` (or ``--ref-model`` does).
    Without precomputing, the reference run each step is ``--ref-model``
    (quantized alike), else ``live_reference``.
    """
    ref_model = (
        load_model(settings.ref_model, "--ref-model")[0] if settings.ref_model else None
    )
    if settings.quantize and ref_model is not None:  # scores on an equal base
        quantize_base(ref_model, settings.quantize)
    if settings.precompute:
        scorer = ref_model or model
        return Reference(
            [s and precomputed_logps(settings, scorer, s) for s in splits], None
        )
    return Reference([None] * len(splits), ref_model or live_reference(settings, model))


def live_reference(settings, policy: nn.Module) -> nn.Module:
    """A reference run every step: a second object on the policy's base arrays
    (no copy) when adapters will train, else (``--full``) a second copy."""
    if settings.full:
        return load_model(settings.model)[0]
    return shared_reference(policy, settings.model)
