"""A model's memory footprint from its config alone: no weight is read.

``lazy_model`` builds the model through mlx-lm's own loader with
``lazy=True``: MLX reads a safetensors file only when an array is evaluated,
so every parameter's shape and dtype is exact (quantized layers, tied
embeddings and ``sanitize`` included) while nothing is in memory. A hub id
fetches only its ``*.json`` files; its weights are then mlx-lm's init cast
to the config's dtype.

``Footprint`` is what the planner (``train/memory_plan.py``) needs of a
model: the frozen and trainable bytes once adapters are attached (on the
lazy model, so their count is exactly what the run trains), and the widths
that set the activations of one token in one block.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from mlx_lm.models.switch_layers import QuantizedSwitchLinear, SwitchLinear

from mlx_align.model.adapters import attach_adapters, quantize_base

HUB_DTYPES = {"bfloat16": mx.bfloat16, "float16": mx.float16, "float32": mx.float32}
LINEAR_TYPES = (nn.Linear, nn.QuantizedLinear, SwitchLinear, QuantizedSwitchLinear)


def lazy_model(path_or_hub_id: str) -> tuple[nn.Module, dict]:
    """(the model with unevaluated weights, its config) for a local directory or hub id."""
    from mlx_lm.utils import _download, load_model

    path = Path(path_or_hub_id)
    local = (path / "config.json").exists()
    if not local:
        path = _download(path_or_hub_id, allow_patterns=["*.json"])
    model, config = load_model(path, lazy=True, strict=local)
    if not local:  # no weights read: mlx-lm's init in the checkpoint's dtype
        dtype = config.get("torch_dtype") or config.get("dtype") or "bfloat16"
        model.set_dtype(HUB_DTYPES.get(str(dtype), mx.bfloat16))
    return model, config


def nbytes(arrays) -> int:
    return sum(v.nbytes for _, v in tree_flatten(arrays))


@dataclass(frozen=True)
class Footprint:
    """Bytes and widths of one model as a stage will train it."""

    frozen_bytes: int  # weights no step updates (the base, under adapters)
    trainable_bytes: int  # what the optimizer updates
    layers: int
    hidden: int
    vocab: int
    query_heads: int  # attention heads of a block (0: no attention)
    token_width: float  # a block's linear inputs + outputs per token, averaged
    dtype_bytes: int  # the activations' element size (the weights' float dtype)

    @property
    def weight_bytes(self) -> int:
        return self.frozen_bytes + self.trainable_bytes


def footprint(model: nn.Module, adapters: dict | None, quantize: int = 0) -> Footprint:
    """``model`` (lazy) with ``--quantize`` and its adapters attached as the run
    attaches them (``adapters`` is ``adapted.adapter_config``'s; None: every
    weight trains)."""
    if quantize:
        quantize_base(model, quantize)
    if adapters:
        attach_adapters(model, adapters)
    trainable = nbytes(model.trainable_parameters())
    total = nbytes(model.parameters())
    blocks = list(model.layers)
    widths = [block_width(block) for block in blocks]
    floats = [v.dtype for _, v in tree_flatten(model.parameters()) if v.dtype in HUB_DTYPES.values()]  # fmt: skip
    args = getattr(model, "args", None)
    return Footprint(
        frozen_bytes=total - trainable,  # 0 when every weight trains
        trainable_bytes=trainable,
        layers=len(blocks),
        hidden=_arg(args, "hidden_size", 0),
        vocab=_vocab(model),
        query_heads=max((attention_heads(b) for b in blocks), default=0),
        token_width=sum(widths) / max(len(widths), 1),
        dtype_bytes=min(d.size for d in floats) if floats else 4,
    )


def block_width(block: nn.Module) -> int:
    """Σ (input + output features) over a block's linear layers: the widths of
    the tensors one token leaves behind for the backward pass. A mixture of
    experts counts the experts a token visits, not all of them."""
    width = 0
    for _, module in block.named_modules():
        if isinstance(module, LINEAR_TYPES):
            out, inp = module.weight.shape[-2], _input_features(module)
            visits = _experts_per_token(block) if module.weight.ndim == 3 else 1
            width += visits * (inp + out)
    return width


def _input_features(module: nn.Module) -> int:
    bits = getattr(module, "bits", None)
    columns = module.weight.shape[-1]
    return columns * 32 // bits if bits else columns


def _experts_per_token(block: nn.Module) -> int:
    return _first_int(block, ("num_experts_per_tok", "top_k", "n_activated_experts"), 1)


def attention_heads(block: nn.Module) -> int:
    return _first_int(block, ("n_heads", "num_heads", "num_attention_heads"), 0)


def _first_int(block: nn.Module, names: tuple[str, ...], default: int) -> int:
    """The first of ``names`` that a module of ``block`` holds as an int."""
    for _, module in block.named_modules():
        for name in names:
            if isinstance(value := getattr(module, name, None), int):
                return value
    return default


def _arg(args, name: str, default):
    value = getattr(args, name, None)
    if value is None and hasattr(args, "text_config"):
        value = getattr(args, "text_config", {}).get(name)
    return default if value is None else value


def _vocab(model: nn.Module) -> int:
    embed = model.model.embed_tokens if hasattr(model, "model") else None
    weight = getattr(embed, "weight", None)
    return weight.shape[0] if weight is not None else _arg(model.args, "vocab_size", 0)


def kv_width(model: nn.Module) -> int:
    """Elements of keys and values one token adds to the sampling caches, every block summed."""
    width = 0
    for block in model.layers:
        for name, module in block.named_modules():
            if name.rpartition(".")[2] in ("k_proj", "v_proj") and hasattr(
                module, "weight"
            ):
                width += module.weight.shape[0]
    return width or 2 * _arg(model.args, "hidden_size", 0) * len(model.layers)
