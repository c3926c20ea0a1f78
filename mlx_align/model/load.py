"""Loading and saving whole models through mlx-lm (local directory or hub id)."""

from __future__ import annotations

from pathlib import Path

import mlx.nn as nn
import mlx_lm
from mlx_lm.utils import save as mlx_lm_save

from mlx_align.core.errors import UserError
from mlx_align.model.logprobs import probe_scoring


def load_model(
    path_or_hub_id: str, flag: str = "--model"
) -> tuple[nn.Module, object, dict]:
    """``(model, tokenizer, config)`` via ``mlx_lm.load``, which also resolves hub ids;
    ``flag`` names the setting in the error when neither finds it."""
    try:
        model, tokenizer, config = mlx_lm.load(path_or_hub_id, return_config=True)
    except Exception as e:  # mlx-lm raises hub, file and config errors of many types
        if Path(path_or_hub_id).exists():
            raise
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"{flag} {path_or_hub_id}",
            f"not a local model directory, and loading it from the hub failed: {reason}",
        ) from None
    probe_scoring(model)  # now, not inside the first compiled step
    return model, tokenizer, config


def save_full_model(
    out: Path, source: str, model: nn.Module, tokenizer, config: dict
) -> Path:
    """A standalone mlx-lm model directory (weights, config, tokenizer)."""
    mlx_lm_save(out, source, model, tokenizer, config, donate_model=False)
    return out


def same_model(a: str, b: str) -> bool:
    """Two --model values naming one model: equal, or local paths to one directory."""
    if a == b:
        return True
    first, second = Path(a).expanduser(), Path(b).expanduser()
    return first.exists() and second.exists() and first.resolve() == second.resolve()
