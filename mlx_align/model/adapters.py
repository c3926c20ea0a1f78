"""LoRA / DoRA adapters in mlx-lm's format, so ``mlx_lm.load(..., adapter_path=...)`` reads them."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.tuner.utils import linear_to_lora_layers

from ..config import AdapterSettings

ADAPTER_WEIGHTS = "adapters.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def adapter_config(settings: AdapterSettings) -> dict:
    """The ``adapter_config.json`` mlx-lm needs: fine_tune_type, num_layers, lora_parameters."""
    keys = [k.strip() for k in settings.lora_keys.split(",") if k.strip()] or None
    parameters = {
        "rank": settings.lora_rank,
        # mlx-lm scales the update by ``scale``; PEFT/TRL users think in alpha / rank.
        "scale": settings.lora_alpha / settings.lora_rank,
        "dropout": settings.lora_dropout,
    }
    if keys:
        parameters["keys"] = keys
    return {
        "fine_tune_type": "dora" if settings.dora else "lora",
        "num_layers": settings.lora_layers,
        "lora_parameters": parameters,
    }


def quantize_base(model: nn.Module, bits: int, group_size: int = 64) -> None:
    """Quantize the linear layers and embeddings in memory (QLoRA's frozen base)."""
    if bits not in (4, 8):
        raise ValueError(f"--quantize takes 4 or 8, got {bits}")
    # Layers whose input width is not a multiple of the group size stay in full precision.
    nn.quantize(
        model,
        group_size=group_size,
        bits=bits,
        class_predicate=lambda _, m: (
            hasattr(m, "to_quantized") and m.weight.shape[-1] % group_size == 0
        ),
    )


def attach_adapters(model: nn.Module, config: dict) -> None:
    """Freeze the base and add trainable adapters (``lora_b`` starts at 0: policy == base)."""
    model.freeze()
    linear_to_lora_layers(
        model,
        config["num_layers"],
        config["lora_parameters"],
        use_dora=config["fine_tune_type"] == "dora",
    )


def save_adapters(model: nn.Module, config: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    weights = dict(tree_flatten(model.trainable_parameters()))
    mx.save_safetensors(str(out / ADAPTER_WEIGHTS), weights)
    (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; a quantized weight counts as its packed size."""
    trainable = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
    total = sum(v.size for _, v in tree_flatten(model.parameters()))
    return trainable, total


def load_adapters(model: nn.Module, adapter_path: str) -> dict:
    """Attach the LoRA / DoRA adapters saved in ``adapter_path`` and load them; their config.

    mlx-lm's loader does the work and checks every tensor against the model;
    whatever does not fit (a missing file, a name or a shape the model lacks)
    comes back as one ``UserError`` line naming the directory.
    """
    from mlx_lm.tuner.utils import load_adapters as mlx_lm_load_adapters

    from ..errors import UserError

    setting = f"--adapter-path {adapter_path}"
    config_file = Path(adapter_path) / ADAPTER_CONFIG
    if not config_file.exists() or not (Path(adapter_path) / ADAPTER_WEIGHTS).exists():
        raise UserError(setting, f"needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}")
    config = json.loads(config_file.read_text())
    if config.get("fine_tune_type", "lora") not in ("lora", "dora"):
        raise UserError(setting, "holds no LoRA or DoRA adapters (a full fine-tune?)")
    try:
        mlx_lm_load_adapters(model, adapter_path)
    except (ValueError, KeyError, TypeError) as e:
        lines = [line.strip() for line in str(e).strip().splitlines() if line.strip()]
        detail = lines[1] if len(lines) > 1 else (lines[0] if lines else repr(e))
        if len(lines) > 2:  # mlx-lm lists every tensor that does not fit
            detail += f" (and {len(lines) - 2} more)"
        raise UserError(setting, f"does not fit the model: {detail}") from None
    model.eval()
    return config
