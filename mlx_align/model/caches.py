"""mlx-lm's prompt caches handled by what they hold, whatever the family.

A model's ``make_prompt_cache`` may hold ``KVCache`` (keys and values),
``RotatingKVCache`` (a sliding window), ``QuantizedKVCache`` (packed keys),
``ArraysCache`` (the convolution or SSM state of a linear-attention or Mamba
layer), ``ChunkedKVCache`` or a ``CacheList`` of several. Every one of them
exposes its arrays, batch axis first, through ``state``; the Python values
beside them (offsets, window sizes) hold for every row alike. So one
function repeats a prompt's state for a group of rows, for any of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import mlx.core as mx
from mlx.utils import tree_map
from mlx_lm.models.cache import CacheList, KVCache


def repeat_rows(cache: Sequence, times: int) -> None:
    """Repeat every row of each layer's cache ``times`` times along the batch axis, in place.

    A batch-1 prompt cache becomes the cache of ``times`` rows that continue
    the same prompt (GRPO's group, best-of-K's candidates).
    """
    for layer in cache:
        if isinstance(layer, CacheList):
            repeat_rows(layer.caches, times)
            continue
        layer.state = tree_map(
            lambda x: mx.repeat(x, times, axis=0) if isinstance(x, mx.array) else x,
            layer.state,
        )


def all_plain_kv(cache: Sequence) -> bool:
    """Whether every layer keeps plain keys and values that grow with the sequence
    (``KVCache``): no window, no recurrent state, no quantized keys."""
    return all(type(layer) is KVCache for layer in cache)


def cache_kinds(cache: Sequence) -> str:
    """The distinct cache types of ``cache``, e.g. ``ArraysCache + KVCache``."""
    names = set()
    for layer in cache:
        inner = layer.caches if isinstance(layer, CacheList) else [layer]
        names.update(type(c).__name__ for c in inner)
    return " + ".join(sorted(names))
