"""The reference policy: log-probs computed once and cached, or a model sharing the base.

For LoRA preference training the reference is the policy's own base weights
with the adapters off. Before the adapters are attached the model *is* that
reference, so its log-probs are computed then, in batches, once, and cached
on disk under a key of the model files and the tokenised data: a later run
on the same model and data skips the pass.

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


def compute_logps(
    model: nn.Module,
    batches: Iterable[tuple[mx.array, mx.array, mx.array]],
    n_items: int,
    columns: int,
    total: int | None = None,
) -> mx.array:
    """Summed completion log-probs for every item: (n_items, columns).

    Each batch is ``(tokens (columns*B, T), mask, index (B,))`` with rows
    grouped by column (chosen rows, then rejected rows); index -1 is filler.
    """
    out = mx.zeros((n_items, columns))
    for tokens, mask, index in tqdm(
        batches, total=total, desc="reference log-probs", leave=False
    ):
        _, summed, _ = sequence_logps(model, tokens, mask)
        summed = mx.stop_gradient(summed).reshape(columns, -1).T  # (B, columns)
        keep = (index >= 0).tolist()
        rows = mx.array([i for i, k in zip(index.tolist(), keep, strict=True) if k])
        out[rows] = summed[mx.array([j for j, k in enumerate(keep) if k])]
        mx.eval(out)
    return out


def cached_logps(
    key: str, compute: Callable[[], mx.array], report: Callable[[str], None] = print
) -> mx.array:
    """Load ``key`` from the cache, or compute it and write it (atomically)."""
    path = cache_root() / f"{key}.safetensors"
    if path.exists():
        report(f"reference log-probs: reusing {path}")
        return mx.load(str(path))["logps"]
    logps = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.safetensors")
    mx.save_safetensors(str(tmp), {"logps": logps})
    os.replace(tmp, path)
    report(f"reference log-probs: cached in {path}")
    return logps


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
