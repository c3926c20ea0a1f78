"""Sizes of memory: the machine's, and ``--memory-limit``'s text."""

from __future__ import annotations

import os
import re

UNITS = {"": 1, "b": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}
UNITS |= {f"{u}ib": 1024.0 ** (i + 1) for i, u in enumerate("kmgt")}
UNITS |= {f"{u}b": UNITS[u] for u in "kmgt"}


def machine_memory() -> int:
    """Bytes of memory the backend may use: Metal's working set, else physical RAM."""
    import mlx.core as mx

    info = mx.device_info()
    for key in ("max_recommended_working_set_size", "memory_size"):
        if key in info:
            return int(info[key])
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def is_size(text: str) -> bool:
    """Whether ``parse_size`` reads ``text`` (without asking MLX for ``auto``)."""
    return str(text).strip().lower() == "auto" or parse_size(text) is not None


def parse_size(text: str) -> int | None:
    """``16GB``, ``16G``, ``15.5GiB``, ``1.5e10`` -> bytes; ``auto`` -> the
    machine's memory; ``none`` / ``0`` -> 0 (no limit); None when unreadable."""
    text = str(text).strip().lower()
    if text == "auto":
        return machine_memory()
    if text in ("none", "0", "off"):
        return 0
    match = re.fullmatch(r"([0-9.]+(?:e[0-9]+)?)\s*([a-z]*)", text)
    if not match or match[2] not in UNITS:
        return None
    try:
        return int(float(match[1]) * UNITS[match[2]])
    except ValueError:
        return None
