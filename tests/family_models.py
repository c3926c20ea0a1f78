"""Tiny random-weight models of many mlx-lm architecture families, for family tests.

Each ``tests/families/<name>.json`` is an mlx-lm ``config.json``-style dict sized
for tests (hidden 64, a few layers, a few experts); ``build_family`` turns one into
a model directory with :func:`mlx_align.model.random_init.init_random_model`, using
the tokenizer of ``tokenizer_dir`` (its vocabulary size and EOS ids win).
"""

from __future__ import annotations

import json
from pathlib import Path

from mlx_align.model.random_init import init_random_model

FAMILIES_DIR = Path(__file__).parent / "families"
FAMILIES: list[str] = [
    "deepseek_v3",
    "falcon_h1",
    "gemma3n",
    "gemma4_text",
    "gemma4_text_moe",
    "glm4_moe",
    "gpt_oss",
    "granitemoehybrid",
    "lfm2",
    "mamba2",
    "nemotron_h",
    "olmo3",
    "qwen3_5",
    "qwen3_moe",
    "qwen3_next",
    "smollm3",
]


def family_config(name: str) -> dict:
    """The config dict of family ``name`` (a fresh copy each call)."""
    return json.loads((FAMILIES_DIR / f"{name}.json").read_text())


def build_family(name: str, out_dir: Path, tokenizer_dir: Path) -> Path:
    """Save family ``name`` with random weights under ``out_dir``; returns the dir."""
    return init_random_model(Path(out_dir), family_config(name), tokenizer_dir)
