"""The trainable phase of every stage (``stage.py``): adapters on, and weights out."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from tqdm import tqdm

from mlx_align.config.stages import AdapterSettings
from mlx_align.core.events import emit
from mlx_align.model.adapters import (
    ADAPTER_WEIGHTS,
    attach_adapters,
    count_parameters,
    load_adapters,
    save_adapters,
)
from mlx_align.model.load import save_full_model

FULL_WEIGHTS = "model.safetensors"


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


def prepare_trainable(
    model: nn.Module, settings: AdapterSettings, seed: int
) -> dict | None:
    """Attach LoRA/DoRA (returns its adapter config), or load ``--adapter-path``'s
    to keep training them, or leave every weight trainable (None)."""
    mx.random.seed(seed)  # before LoRA init draws lora_a
    adapters = None if settings.full else adapter_config(settings)
    if adapters and settings.adapter_path:
        model.freeze()  # the base; the loaded adapters' arrays stay trainable
        adapters = load_adapters(model, settings.adapter_path)
        tqdm.write(f"continuing the adapters in {settings.adapter_path}")
    elif adapters:
        adapters = attach_adapters(model, adapters)
    trainable, total = count_parameters(model)
    tqdm.write(
        f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.2f}%)"
    )
    emit("trainable", parameters=trainable)
    return adapters


def weights_file(adapters: dict | None) -> str:
    return ADAPTER_WEIGHTS if adapters else FULL_WEIGHTS


def write_weights(model: nn.Module, adapters: dict | None, directory: Path) -> None:
    """Trainable weights for a checkpoint: mlx-lm adapters, or every weight."""
    if adapters:
        save_adapters(model, adapters, directory)
        return
    directory.mkdir(parents=True, exist_ok=True)
    weights = dict(tree_flatten(model.trainable_parameters()))
    mx.save_safetensors(str(directory / FULL_WEIGHTS), weights)


def write_result(
    model: nn.Module,
    adapters: dict | None,
    out: Path,
    source: str,
    tokenizer,
    config: dict,
) -> Path:
    """The stage's result: adapters in ``out``, or a full mlx-lm model in ``out/model``."""
    if adapters:
        save_adapters(model, adapters, out)
        return out
    return save_full_model(out / "model", source, model, tokenizer, config)
