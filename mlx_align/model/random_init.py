"""Random-weight models of any mlx-lm architecture, from a ``config.json`` dict.

``init_random_model`` builds the model with mlx-lm's own classes
(``mlx_lm.utils._get_classes``), so the saved directory loads back with
``mlx_lm.load`` exactly as a converted checkpoint of that family would. The
tokenizer comes from another model directory (for instance one made by
:func:`mlx_align.model.tiny.init_model`), and the config's vocabulary size is
set to match it. Used to run the same tests over many architecture families.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten
from mlx_lm.utils import _get_classes, save_config, save_model

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)

# Per-layer vocabulary sizes some families keep beside ``vocab_size`` (Gemma 3n /
# Gemma 4 per-layer input embeddings); they must not exceed the real vocabulary.
_VOCAB_KEYS = ("vocab_size", "vocab_size_per_layer_input")


def tokenizer_vocab_size(tokenizer_dir: str | Path) -> int:
    """Size of ``tokenizer.json``'s vocabulary, added tokens included."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(tokenizer_dir) / "tokenizer.json"))
    return tokenizer.get_vocab_size(with_added_tokens=True)


def _set_vocab(config: dict[str, Any], vocab_size: int) -> None:
    config["vocab_size"] = vocab_size
    for section in (config, config.get("text_config")):
        if isinstance(section, dict):
            for key in _VOCAB_KEYS:
                if key in section:
                    section[key] = vocab_size


def _fix_zero_matrices(model: nn.Module) -> int:
    """Give all-zero weight matrices a uniform fan-in init; returns how many.

    Some mlx-lm classes start a weight matrix at zero because a checkpoint always
    overwrites it: the MoE router ``gate.weight`` of DeepSeek-V3, GLM-4-MoE and
    Nemotron-H. Left at zero, every token scores every expert the same, so the
    routing never depends on the input. A zero weight matrix is never a useful
    random init, whatever the family, so each gets ``nn.Linear``'s default
    (uniform in +-1/sqrt(fan_in)). Only ``*.weight`` arrays of two or more
    dimensions are touched: zero biases (gpt-oss's per-expert biases are 2-D),
    attention sinks, score-correction biases and scales are legitimate starting
    values and stay as mlx-lm made them.
    """
    fixed = []
    for name, value in tree_flatten(model.parameters()):
        if (
            name.endswith("weight")
            and value.ndim >= 2
            and mx.issubdtype(value.dtype, mx.floating)
            and not mx.any(value).item()
        ):
            scale = 1.0 / math.sqrt(value.shape[-1])
            init = mx.random.uniform(-scale, scale, value.shape)
            fixed.append((name, init.astype(value.dtype)))
    if fixed:
        model.update(tree_unflatten(fixed))
    return len(fixed)


def init_random_model(
    out: str | Path,
    config: dict[str, Any],
    tokenizer_dir: str | Path,
    seed: int = 0,
    vocab_size: int | None = None,
) -> Path:
    """Save an mlx-lm model directory with random weights for ``config``.

    ``config`` is a ``config.json``-style dict (it is copied, not modified). Its
    vocabulary size becomes ``vocab_size``, or the size of ``tokenizer_dir``'s
    tokenizer; ``eos_token_id`` is taken from ``tokenizer_dir/config.json`` when
    that exists. The weights are mlx-lm's default initialisation after
    ``mx.random.seed(seed)``, except that all-zero matrices are re-initialised
    (see :func:`_fix_zero_matrices`).
    """
    out, tokenizer_dir = Path(out), Path(tokenizer_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).exists():
            shutil.copy2(tokenizer_dir / name, out / name)
    config = copy.deepcopy(config)
    if vocab_size is None:
        vocab_size = tokenizer_vocab_size(tokenizer_dir)
    _set_vocab(config, vocab_size)
    source_config = tokenizer_dir / "config.json"
    if source_config.exists():
        eos = json.loads(source_config.read_text()).get("eos_token_id")
        if eos is not None:
            config["eos_token_id"] = eos

    model_class, args_class = _get_classes(config)
    mx.random.seed(seed)
    model = model_class(args_class.from_dict(config))
    _fix_zero_matrices(model)
    mx.eval(model.parameters())
    save_model(out, model)
    save_config(config, config_path=out / "config.json")
    return out
