"""GRPO's clipped policy-gradient loss and its k3 KL, pure functions of per-token log-probs.

Public through ``mlx_align.losses.preference`` with the other losses; same conventions
(``(losses, metrics)``, TRL's names and formulas).
"""

from collections.abc import Callable

import mlx.core as mx

from mlx_align.losses.masked import masked_mean

Metrics = dict[str, mx.array]


def k3_kl(logps: mx.array, ref_logps: mx.array) -> mx.array:
    """Per-token k3 estimator of KL(π ‖ π_ref): exp(d) − d − 1, d = ref − logp.

    Schulman 2020, "Approximating KL Divergence"; DeepSeekMath (Shao et al.
    2024) eq. 4. Unbiased for samples from π, always ≥ 0, 0 iff logp == ref.
    Shapes (B, T) -> (B, T).
    """
    log_ratio = ref_logps - logps  # (B, T)
    return mx.exp(log_ratio) - log_ratio - 1.0


def _sequence_mean(per_token: mx.array, mask: mx.array, _: int) -> mx.array:
    per_sequence = (per_token * mask).sum(-1) / mx.maximum(mask.sum(-1), 1.0)  # (B,)
    return per_sequence.mean()


def _token_mean(per_token: mx.array, mask: mx.array, _: int) -> mx.array:
    return masked_mean(per_token, mask)


def _fixed_length_mean(
    per_token: mx.array, mask: mx.array, max_tokens: int
) -> mx.array:
    return (per_token * mask).sum() / (per_token.shape[0] * max_tokens)


# Reduction of the (B, T) per-token loss to a scalar, by TRL `loss_type`.
# dapo equals bnpo in one process: TRL's dapo normaliser is the number of
# active tokens in the whole (multi-process) batch; here there is one batch.
GRPO_AGGREGATIONS: dict[str, Callable[[mx.array, mx.array, int], mx.array]] = {
    "grpo": _sequence_mean,  # per-sequence mean, then batch mean (Shao 2024)
    "bnpo": _token_mean,  # sum over tokens / active tokens
    "dr_grpo": _fixed_length_mean,  # sum / (B × max tokens) (Liu 2025)
    "dapo": _token_mean,  # token-level mean (Yu 2025)
}


def grpo_loss(
    logps: mx.array,
    old_logps: mx.array,
    ref_logps: mx.array | None,
    advantages: mx.array,
    mask: mx.array,
    *,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    beta: float = 0.0,
    aggregation: str = "grpo",
    max_completion_tokens: int | None = None,
) -> tuple[mx.array, Metrics]:
    """GRPO clipped surrogate loss, per token, aggregated to a scalar.

    DeepSeekMath (Shao et al. 2024) eq. 3, as TRL ``GRPOTrainer``:
        ratio = exp(logp − old_logp)
        loss_t = −min(ratio·A, clip(ratio, 1 − ε, 1 + ε_high)·A) + β·k3_t
    ε_high (DAPO's clip-higher, Yu et al. 2025) defaults to ε. With μ = 1
    iteration per batch, pass ``old_logps=logps``: they are detached here, so
    the ratio is 1 and the clip never acts, leaving the plain policy gradient
    −A·∇logp. ``aggregation`` picks the reduction from ``GRPO_AGGREGATIONS``;
    ``dr_grpo`` divides by B × ``max_completion_tokens`` (default T).

    Args:
        logps, old_logps: per-token log-probs of the completions, (B, T).
        ref_logps: reference per-token log-probs, (B, T); None iff beta == 0.
        advantages: one advantage per completion, (B,).
        mask: 1 for completion tokens, 0 for padding, (B, T).

    Returns:
        scalar loss; metrics ``clip_ratio`` (share of active tokens where the
        clip binds and the gradient is zero; TRL's ``clip_ratio/region_mean``),
        ``clip_ratio/low_mean``, ``clip_ratio/high_mean`` and, when β > 0,
        ``kl`` (masked mean of k3).
    """
    if aggregation not in GRPO_AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {sorted(GRPO_AGGREGATIONS)}")
    if beta != 0.0 and ref_logps is None:
        raise ValueError("grpo_loss needs ref_logps when beta > 0")
    epsilon_high = epsilon if epsilon_high is None else epsilon_high
    mask = mask.astype(logps.dtype)  # (B, T)
    advantages = advantages[:, None]  # (B, 1)
    ratio = mx.exp(logps - mx.stop_gradient(old_logps))  # (B, T)
    clipped_ratio = mx.clip(ratio, 1.0 - epsilon, 1.0 + epsilon_high)  # (B, T)
    per_token_loss = -mx.minimum(ratio * advantages, clipped_ratio * advantages)
    metrics = _clip_metrics(
        mx.stop_gradient(ratio), advantages, mask, epsilon, epsilon_high
    )
    if beta != 0.0:
        kl = k3_kl(logps, mx.stop_gradient(ref_logps))  # (B, T)
        per_token_loss = per_token_loss + beta * kl
        metrics["kl"] = masked_mean(mx.stop_gradient(kl), mask)
    max_tokens = max_completion_tokens or logps.shape[1]
    loss = GRPO_AGGREGATIONS[aggregation](per_token_loss, mask, max_tokens)
    return loss, metrics


def _clip_metrics(
    ratio: mx.array,
    advantages: mx.array,
    mask: mx.array,
    epsilon: float,
    epsilon_high: float,
) -> Metrics:
    """Shares of active tokens where the clip binds (gradient zero), as TRL."""
    low_clipped = (ratio < 1.0 - epsilon) & (advantages < 0)  # (B, T)
    high_clipped = (ratio > 1.0 + epsilon_high) & (advantages > 0)  # (B, T)
    region_clipped = low_clipped | high_clipped  # (B, T)
    return {
        "clip_ratio": masked_mean(region_clipped.astype(mask.dtype), mask),
        "clip_ratio/low_mean": masked_mean(low_clipped.astype(mask.dtype), mask),
        "clip_ratio/high_mean": masked_mean(high_clipped.astype(mask.dtype), mask),
    }
