"""Fuse LoRA / DoRA adapters into the base weights: a standalone mlx-lm model directory.

Fusing into a quantized base re-quantizes W + ΔW, and a small ΔW can vanish
in the rounding (mlx-lm #1172): the fused model is then as far from what was
trained as the base is. So the fused model is measured against base +
adapters on random probe sequences before it is written: the adapters'
effect is the mean |logit change| they make, the loss the mean |logit
change| between base + adapters and the fused model, and the share kept is
1 − loss / effect. Below ``MIN_KEPT`` the fuse refuses (``--dequantize``
keeps the adapters exactly).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import mlx.core as mx
import mlx.nn as nn
import mlx_lm
from mlx.utils import tree_unflatten
from mlx_lm.utils import dequantize_model

from mlx_align.core.errors import UserError
from mlx_align.model.load import save_full_model

MIN_KEPT = 0.5  # refuse a fused model that keeps less of the adapters' effect
PROBES, PROBE_LENGTH = 4, 32  # random token sequences the logits are compared on


class Kept(NamedTuple):
    """How much of the adapters' effect on the logits a fused model keeps."""

    effect: float  # mean |logits(base + adapters) − logits(base)|
    loss: float  # mean |logits(fused) − logits(base + adapters)|

    @property
    def share(self) -> float:
        if self.effect == 0.0:
            return 1.0 if self.loss == 0.0 else 0.0
        return max(0.0, 1.0 - self.loss / self.effect)

    def describe(self) -> str:
        return (
            f"adapters' effect kept: {self.share:.1%} (mean |Δlogit| of the "
            f"adapters {self.effect:.4f}; fused vs base + adapters {self.loss:.4f})"
        )


def base_layer(adapted: nn.Module) -> nn.Module:
    """The layer an adapter wraps: ``.linear`` (LoRA, DoRA) or ``.embedding``."""
    return getattr(adapted, "linear", None) or adapted.embedding


def probe_logits(model: nn.Module, probes: mx.array) -> mx.array:
    logits = model(probes).astype(mx.float32)
    mx.eval(logits)
    return logits


def fuse_adapters(
    model_path: str, adapter_path: str, save_path: str, dequantize: bool = False
) -> Path:
    """Load base + adapters with mlx-lm, fold each adapter into its layer, check
    what survived (``Kept``), save.

    Raises:
        UserError: when the base is quantized, ``dequantize`` is off, and the
            fused model keeps less than ``MIN_KEPT`` of the adapters' effect.
    """
    model, tokenizer, config = mlx_lm.load(
        model_path, adapter_path=adapter_path, return_config=True
    )
    adapted = [(n, m) for n, m in model.named_modules() if hasattr(m, "fuse")]
    vocab = config.get("vocab_size") or len(tokenizer.vocab)
    probes = mx.random.randint(0, vocab, (PROBES, PROBE_LENGTH), key=mx.random.key(0))
    trained = probe_logits(model, probes)
    model.update_modules(tree_unflatten([(n, base_layer(m)) for n, m in adapted]))
    base = probe_logits(model, probes)
    if adapted:
        fused = [(n, m.fuse(dequantize=dequantize)) for n, m in adapted]
        model.update_modules(tree_unflatten(fused))
    if dequantize:
        model = dequantize_model(model)
        config.pop("quantization", None)
        config.pop("quantization_config", None)
    after = probe_logits(model, probes)
    kept = Kept(
        mx.abs(trained - base).mean().item(), mx.abs(after - trained).mean().item()
    )
    print(kept.describe())
    quantized = any(isinstance(m, nn.QuantizedLinear) for _, m in model.named_modules())
    if quantized and kept.share < MIN_KEPT:
        raise UserError(
            "--model",
            f"the base is quantized and fusing re-quantizes W + ΔW: the fused "
            f"model keeps {kept.share:.0%} of the adapters' effect (mean |Δlogit| "
            f"{kept.effect:.4f}, fused model off by {kept.loss:.4f}); use "
            "--dequantize, or serve the base with --adapter-path",
        )
    return save_full_model(Path(save_path), model_path, model, tokenizer, config)
