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
from collections.abc import Callable, Iterable
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx_lm
import numpy as np
from mlx.utils import tree_flatten
from tqdm import tqdm

from .logprobs import sequence_logps

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
    batches: Iterable[tuple[tuple, mx.array]],
    logps: np.ndarray,
    total: int | None = None,
    score: Callable[[nn.Module, tuple], mx.array] | None = None,
) -> None:
    """Fill ``logps`` (n_items, columns) with summed completion log-probs, in place.

    Each batch is ``(inputs, index (B,))``, index -1 on filler; ``score(model,
    inputs)`` gives (columns*B,) log-probs grouped by column (all first
    columns, then all second). The default scores full rows:
    ``inputs = (tokens, loss_mask)``.
    """
    score = score or (lambda m, inputs: sequence_logps(m, *inputs)[1])
    columns = logps.shape[1]
    for inputs, index in tqdm(
        batches, total=total, desc="reference log-probs", leave=False
    ):
        summed = score(model, inputs).reshape(columns, -1).T  # (B, columns)
        summed, index = np.array(summed), np.array(index)
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
    tmp = path.with_name(path.stem + ".tmp.npy")
    np.save(tmp, logps)
    os.replace(tmp, path)
    return path


def shared_reference(policy: nn.Module, model_path: str) -> nn.Module:
    """A second model object on the policy's base arrays (LoRA layers' ``.linear``), no copy.

    Loaded lazily, its own weights are replaced before they are ever read.
    """
    reference, _ = mlx_lm.load(model_path, lazy=True)
    if any(isinstance(m, nn.QuantizedLinear) for _, m in policy.named_modules()):
        from .model.adapters import quantize_base

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
    return reference
