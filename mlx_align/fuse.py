"""Fuse LoRA / DoRA adapters into the base weights: a standalone mlx-lm model directory."""

from __future__ import annotations

from pathlib import Path

import mlx_lm
from mlx.utils import tree_unflatten
from mlx_lm.utils import dequantize_model

from .model.load import save_full_model


def fuse_adapters(
    model_path: str, adapter_path: str, save_path: str, dequantize: bool = False
) -> Path:
    """Load base + adapters with mlx-lm, fold each adapter into its linear layer, save."""
    model, tokenizer, config = mlx_lm.load(
        model_path, adapter_path=adapter_path, return_config=True
    )
    fused = [
        (name, module.fuse(dequantize=dequantize))
        for name, module in model.named_modules()
        if hasattr(module, "fuse")
    ]
    if fused:
        model.update_modules(tree_unflatten(fused))
    if dequantize:
        model = dequantize_model(model)
        config.pop("quantization", None)
        config.pop("quantization_config", None)
    return save_full_model(Path(save_path), model_path, model, tokenizer, config)
