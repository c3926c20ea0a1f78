"""What every fine-tuning stage does around the loop: adapters on, weights out."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from tqdm import tqdm

from ..config import AdapterSettings
from ..events import emit
from ..model.adapters import (
    ADAPTER_WEIGHTS,
    adapter_config,
    attach_adapters,
    count_parameters,
    save_adapters,
)
from ..model.load import save_full_model

FULL_WEIGHTS = "model.safetensors"


def prepare_trainable(
    model: nn.Module, settings: AdapterSettings, seed: int
) -> dict | None:
    """Attach LoRA/DoRA (returns its adapter config) or leave every weight trainable (None)."""
    mx.random.seed(seed)  # before LoRA init draws lora_a
    adapters = None if settings.full else adapter_config(settings)
    if adapters:
        attach_adapters(model, adapters)
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
