"""The one place that turns logits into log-probs."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn


def token_logps(logits: mx.array, targets: mx.array) -> mx.array:
    """log p(target) per position: (B, T, V), (B, T) -> (B, T), in float32."""
    logits = logits.astype(mx.float32)
    picked = mx.take_along_axis(logits, targets[..., None], axis=-1).squeeze(-1)
    return picked - mx.logsumexp(logits, axis=-1)


def sequence_logps(
    model: nn.Module, tokens: mx.array, loss_mask: mx.array
) -> tuple[mx.array, mx.array, mx.array]:
    """Per-token and summed log-probs of the masked (completion) tokens of a padded batch.

    Args:
        tokens: (B, T) int ids, right-padded. Right padding needs no attention
            mask: a causal model's logits at real positions never see the pad.
        loss_mask: (B, T), 1 where ``tokens[:, t]`` is a scored target.

    Returns:
        ``(per_token, summed, mask)``: per-token log-probs (B, T-1) with zeros
        off the mask, their sum per row (B,), and the shifted mask (B, T-1).
    """
    logits = model(tokens[:, :-1])  # (B, T-1, V)
    mask = loss_mask[:, 1:]  # (B, T-1)
    per_token = token_logps(logits, tokens[:, 1:]) * mask  # (B, T-1)
    return per_token, per_token.sum(axis=-1), mask
