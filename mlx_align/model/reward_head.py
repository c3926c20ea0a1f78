"""A reward model: an mlx-lm backbone plus a scalar head read at the last completion token.

As HF's ``AutoModelForSequenceClassification`` with one label (what TRL's
``RewardTrainer`` trains): final-norm hidden states (B, T, H) -> a bias-free
linear head -> one reward per row, taken at the row's last trained token
(for plain-text data the appended EOS), so padding never moves a reward.

The LoRA adapters live on the inner mlx-lm model, so the saved
``adapters.safetensors`` + ``adapter_config.json`` are plain mlx-lm adapters
(``mlx_lm.load(base, adapter_path=R)`` reads them); the head goes beside
them in ``reward_head.safetensors``.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

from mlx_align.core.errors import DataError
from mlx_align.model.adapters import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    attach_adapters,
    quantize_base,
    save_adapters,
)
from mlx_align.model.load import load_model, save_full_model

HEAD_WEIGHTS = "reward_head.safetensors"
REWARD_CONFIG = "reward_config.json"
CHECKPOINT_WEIGHTS = (
    "reward_weights.safetensors"  # every trainable array, head included
)


def last_completion_index(loss_mask: mx.array) -> mx.array:
    """(B, T) loss mask -> (B,) position of each row's last trained token (0 if none)."""
    positions = mx.arange(loss_mask.shape[1], dtype=mx.float32)
    return (loss_mask * positions).max(axis=1).astype(mx.int32)


class ScalarHeadModel(nn.Module):
    """The backbone of ``lm`` (embeddings, blocks, final norm; ``backbone_name``) +
    ``head`` (H -> 1, starts at 0): the reward model reads the head at the last
    completion token, the critic (``value_head.ValueModel``) at every one."""

    def __init__(self, lm: nn.Module, hidden_size: int):
        super().__init__()
        self.backbone_name = backbone_name(lm)
        self.lm = lm
        self.head = nn.Linear(hidden_size, 1, bias=False)
        self.head.weight = mx.zeros_like(self.head.weight)

    @property
    def layers(self):  # the loop's --grad-checkpoint reaches the blocks through this
        return self.lm.layers

    def hidden(self, tokens: mx.array) -> mx.array:
        """(B, T) ids -> (B, T, H) final-norm hidden states."""
        return getattr(self.lm, self.backbone_name)(tokens)


def backbone_name(lm: nn.Module) -> str:
    """The attribute of ``lm`` holding its backbone: ``model`` (most mlx-lm
    classes) or ``backbone`` (mamba, nemotron-h).

    A backbone that applies the tied output layer itself (gemma3n returns
    logits from ``lm.model``) has that layer's ``as_linear`` turned into the
    identity on this instance, so it returns hidden states (after gemma3n's
    logit soft-cap, a tanh that leaves normed values nearly unchanged).
    """
    for name in ("model", "backbone"):
        if isinstance(inner := getattr(lm, name, None), nn.Module):
            break
    else:
        raise ValueError(
            f"{type(lm).__module__} has no backbone returning hidden states"
        )
    width = inner(mx.zeros((1, 1), dtype=mx.int32)).shape[-1]
    for _, module in inner.named_modules():
        tied = isinstance(module, (nn.Embedding, nn.QuantizedEmbedding))
        if tied and module.weight.shape[0] == width and "lm_head" not in lm:
            module.as_linear = lambda x: x
    return name


class RewardModel(ScalarHeadModel):
    """A reward per sequence, read at its last completion token.

    The zero head makes every reward 0 at step 0 (BT loss log 2), as
    ``lora_b = 0`` makes a LoRA policy equal its base.
    """

    def __call__(self, tokens: mx.array, loss_mask: mx.array) -> mx.array:
        """(B, T) ids and loss mask -> (B,) float32 rewards at the last completion token."""
        hidden = self.hidden(tokens)  # (B, T, H), after the final norm
        index = last_completion_index(loss_mask)  # (B,)
        last = mx.take_along_axis(hidden, index[:, None, None], axis=1)  # (B, 1, H)
        return self.head(last.squeeze(1)).squeeze(-1).astype(mx.float32)


def hidden_size_of(lm: nn.Module) -> int:
    """Width of the backbone's output, read off one token (robust to config layouts)."""
    backbone = getattr(lm, backbone_name(lm))
    return backbone(mx.zeros((1, 1), dtype=mx.int32)).shape[-1]


def save_checkpoint_weights(model: RewardModel, directory: Path) -> None:
    """The loop's ``write_weights``: every trainable array of the wrapper in one file."""
    directory.mkdir(parents=True, exist_ok=True)
    weights = dict(tree_flatten(model.trainable_parameters()))
    mx.save_safetensors(str(directory / CHECKPOINT_WEIGHTS), weights)


def save_head_model(
    model: ScalarHeadModel,
    adapters: dict | None,
    out: Path,
    names: tuple[str, str],
    base_model: str,
    tokenizer,
    model_config: dict,
    quantize: int = 0,
) -> Path:
    """``out/``: mlx-lm adapters (or a full model in ``out/model``), the head and
    a config naming the base, as ``names`` = (head file, config file)."""
    head_file, config_file = names
    out.mkdir(parents=True, exist_ok=True)
    if adapters:
        save_adapters(model.lm, adapters, out)  # the inner model: mlx-lm's names
    else:
        save_full_model(out / "model", base_model, model.lm, tokenizer, model_config)
    mx.save_safetensors(
        str(out / head_file), dict(tree_flatten(model.head.parameters()))
    )
    config = {
        "base_model": base_model,
        "fine_tune_type": adapters["fine_tune_type"] if adapters else "full",
        "quantize": quantize,
        "hidden_size": model.head.weight.shape[1],
    }
    (out / config_file).write_text(json.dumps(config, indent=2))
    return out


def load_head_model(
    path: str | Path,
    cls: type[ScalarHeadModel],
    names: tuple[str, str],
    base_model: str | None = None,
    backbone: nn.Module | None = None,
) -> tuple[ScalarHeadModel, object]:
    """``(model of type cls in eval mode, tokenizer)`` from a ``save_head_model`` directory.

    ``base_model`` overrides the recorded base (e.g. a relative path saved
    from another working directory). Adapters are attached as mlx-lm's
    ``load(adapter_path=...)`` does, after quantizing the base if the run did;
    onto ``backbone`` instead (a model sharing the base's arrays), when given
    (the tokenizer is then None).
    """
    head_file, config_file = names
    path = Path(path)
    if not (path / config_file).exists():
        raise DataError(str(path), 0, f"not a {cls.__name__}: no {config_file}")
    config = json.loads((path / config_file).read_text())
    if config["fine_tune_type"] == "full":
        lm, tokenizer, _ = load_model(str(path / "model"))
    else:
        if backbone is not None:
            lm, tokenizer = backbone, None
        else:
            lm, tokenizer, _ = load_model(base_model or config["base_model"])
            if config.get("quantize"):
                quantize_base(lm, config["quantize"])
        attach_adapters(lm, json.loads((path / ADAPTER_CONFIG).read_text()))
        lm.load_weights(str(path / ADAPTER_WEIGHTS), strict=False)
    model = cls(lm, config["hidden_size"])
    model.head.load_weights(str(path / head_file))
    model.eval()
    mx.eval(model.parameters())
    return model, tokenizer


REWARD_FILES = (HEAD_WEIGHTS, REWARD_CONFIG)


def save_reward_model(
    model: RewardModel, adapters: dict | None, out: Path, *args, **kwargs
) -> Path:
    """``save_head_model`` with the reward model's file names (``reward_head.safetensors``)."""
    return save_head_model(model, adapters, out, REWARD_FILES, *args, **kwargs)


def load_reward_model(
    path: str | Path, base_model: str | None = None
) -> tuple[RewardModel, object]:
    """``(reward model in eval mode, tokenizer)`` from a ``save_reward_model`` directory."""
    return load_head_model(path, RewardModel, REWARD_FILES, base_model)
