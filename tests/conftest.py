"""Shared fixtures: a tiny llama + BPE tokenizer built on the fly, no network."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault(
    "MLX_ALIGN_NO_OPENBLAS", "1"
)  # in-process CLI calls must not re-exec pytest

FACTS = [
    ("Question: What colour is the sky?\nAnswer:", " Blue."),
    ("Question: What is 2 + 3?\nAnswer:", " 2 + 3 = 5.\n#### 5"),
    ("Question: What does a cow say?\nAnswer:", " Moo."),
    ("Question: What is the capital of France?\nAnswer:", " Paris."),
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    texts = [p + c for p, c in FACTS] * 5 + [
        "The cat sat on the mat. Numbers: 0 1 2 3 4 5 6 7 8 9 + - * = ####",
        "Green grass, red apples, and a small dog that says woof.",
    ]
    write_jsonl(root / "train.jsonl", [{"text": t} for t in texts])
    write_jsonl(root / "valid.jsonl", [{"text": t} for t in texts[:4]])
    return root


@pytest.fixture(scope="session")
def tiny_model(corpus_dir, tmp_path_factory) -> Path:
    """An mlx-lm model directory: the `tiny` preset (hidden 64, 2 layers, GQA 4/2 heads)."""
    from mlx_align.model.tiny import PRESETS, init_model

    out = tmp_path_factory.mktemp("models") / "tiny"
    texts = [
        json.loads(line)["text"]
        for line in (corpus_dir / "train.jsonl").read_text().splitlines()
    ]
    return init_model(out, PRESETS["tiny"], texts * 10, seed=0)


@pytest.fixture(scope="session")
def sft_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sft")
    rows = [{"prompt": p, "completion": c} for p, c in FACTS]
    write_jsonl(root / "train.jsonl", rows)
    write_jsonl(root / "valid.jsonl", rows)
    return root


@pytest.fixture(scope="session")
def box_model(tmp_path_factory) -> Path:
    """A tiny chatml-tools model that calls reveal() about half the time (tool_helpers)."""
    from tool_helpers import build_box_model

    return build_box_model(tmp_path_factory.mktemp("box_model"))


@pytest.fixture(scope="session")
def box_data(tmp_path_factory) -> Path:
    from tool_helpers import write_box_data

    return write_box_data(tmp_path_factory.mktemp("box_data"))
