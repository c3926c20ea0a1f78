"""Means over the real entries of padded arrays: the one masked mean every loss uses."""

from __future__ import annotations

import mlx.core as mx


def masked_mean(values: mx.array, mask: mx.array) -> mx.array:
    """Mean of ``values`` where ``mask`` is 1 (0 when the mask is empty): a scalar."""
    return (values * mask).sum() / mx.maximum(mask.sum(), 1.0)


def masked_means(
    losses: mx.array, metrics: dict, valid: mx.array
) -> tuple[mx.array, dict]:
    """``masked_mean`` over real examples (``valid`` 1.0; filler rows 0.0) of
    per-example losses and metrics, the count formed once for all of them."""
    n_valid = mx.maximum(valid.sum(), 1)
    means = {name: (value * valid).sum() / n_valid for name, value in metrics.items()}
    return (losses * valid).sum() / n_valid, means
