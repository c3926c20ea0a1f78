"""LoRA / DoRA adapters in mlx-lm's format, so ``mlx_lm.load(..., adapter_path=...)`` reads them."""

from __future__ import annotations

import functools
import inspect
import json
import re
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.models.switch_layers import QuantizedSwitchLinear, SwitchLinear
from mlx_lm.tuner.utils import linear_to_lora_layers

from mlx_align.core.errors import UserError

ADAPTER_WEIGHTS = "adapters.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


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


def attach_adapters(model: nn.Module, config: dict) -> dict:
    """Freeze the base and add trainable adapters (``lora_b`` starts at 0: policy == base).

    Returns ``config``, with the LoRA keys written out when this model's
    default differs from mlx-lm's (``default_lora_keys``), so that
    ``mlx_lm.load(..., adapter_path=...)`` wraps the same layers.
    """
    parameters = dict(config["lora_parameters"])
    if "keys" not in parameters and (keys := default_lora_keys(model)) is not None:
        parameters["keys"] = keys
    dora = config["fine_tune_type"] == "dora"
    if dora and (experts := _expert_layers(model, parameters.get("keys"))):
        raise UserError(
            "--dora",
            f"mlx-lm has no DoRA for mixture-of-experts layers ({experts[0]} is a "
            f"{experts[1]}): train with LoRA, or set --lora-keys to non-expert layers",
        )
    model.freeze()
    linear_to_lora_layers(model, config["num_layers"], parameters, use_dora=dora)
    return {**config, "lora_parameters": parameters}


LORA_TYPES = (
    nn.Linear,
    nn.QuantizedLinear,
    SwitchLinear,
    QuantizedSwitchLinear,
    nn.Embedding,
    nn.QuantizedEmbedding,
)


def _adaptable(model: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(key within its block, layer, owner's class) of every layer mlx-lm's LoRA
    would wrap by default, in each block of ``model.layers``."""
    found = []
    for block in model.layers:
        modules = dict(block.named_modules())
        for key, module in modules.items():
            if hasattr(module, "to_lora") or isinstance(module, LORA_TYPES):
                owner = modules[key.rpartition(".")[0]] if "." in key else block
                found.append((key, module, type(owner)))
    return found


@functools.cache
def _reads_weight(owner: type, name: str) -> bool:
    """Whether ``owner``'s code reads ``self.<name>.weight`` instead of calling the layer."""
    try:
        source = inspect.getsource(owner)
    except (OSError, TypeError):
        return False
    return re.search(rf"self\.{name}\.weight\b", source) is not None


def default_lora_keys(model: nn.Module) -> list[str] | None:
    """mlx-lm's default LoRA keys less the layers whose ``.weight`` the model reads
    itself (gemma3n's AltUp coefficients: a LoRA layer has no ``.weight``);
    None when nothing is left out, so mlx-lm's own default stands."""
    found = _adaptable(model)
    kept = {
        k for k, _, owner in found if not _reads_weight(owner, k.rpartition(".")[2])
    }
    return sorted(kept) if kept != {k for k, _, _ in found} else None


def _expert_layers(model: nn.Module, keys: list[str] | None) -> tuple[str, str] | None:
    """The first (key, class) among the layers to adapt that is a mixture of experts."""
    for key, module, _ in _adaptable(model):
        if (keys is None or key in keys) and isinstance(
            module, (SwitchLinear, QuantizedSwitchLinear)
        ):
            return key, type(module).__name__
    return None


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
