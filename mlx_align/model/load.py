"""Loading and saving whole models through mlx-lm (local directory or hub id)."""

from __future__ import annotations

from pathlib import Path

import mlx.nn as nn
import mlx_lm
from mlx_lm.utils import save as mlx_lm_save


def load_model(path_or_hub_id: str) -> tuple[nn.Module, object, dict]:
    """``(model, tokenizer, config)`` via ``mlx_lm.load``, which also resolves hub ids."""
    model, tokenizer, config = mlx_lm.load(path_or_hub_id, return_config=True)
    return model, tokenizer, config


def save_full_model(
    out: Path, source: str, model: nn.Module, tokenizer, config: dict
) -> Path:
    """A standalone mlx-lm model directory (weights, config, tokenizer)."""
    mlx_lm_save(out, source, model, tokenizer, config, donate_model=False)
    return out
