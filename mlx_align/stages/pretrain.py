"""Pretraining: next-token training of the whole model on ``text`` records.

It is SFT with every weight trained and every token a target, so it runs
through the same stage code with the ``text`` encoder.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from mlx_align.config.stages import PretrainConfig, SFTConfig
from mlx_align.data.sft import encode_pretrain_record
from mlx_align.stages.sft import run_sft


def run_pretrain(config: PretrainConfig) -> Path:
    """Train all weights; the model is written to ``out/model`` as an mlx-lm directory."""
    sft = SFTConfig(**dataclasses.asdict(config), full=True)
    return run_sft(sft, encoder=encode_pretrain_record)
