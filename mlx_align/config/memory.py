"""``--memory-limit``: the setting every training stage plans its peak memory under."""

from __future__ import annotations

from dataclasses import dataclass

from mlx_align.config.settings import Rule, setting
from mlx_align.core.sizes import is_size


@dataclass
class MemorySettings:
    memory_limit: str = setting(
        "auto",
        "Plan the run's peak memory before loading (`mlx-align plan`) and fit it "
        "under this size (16GB, 1.5e10; auto: the machine's memory; none: no plan): "
        "a token budget, checkpointing, then accumulation, same update; else exit 2.",
        check=Rule(is_size, "a size (16GB, 1.5e10), auto or none"),
    )
