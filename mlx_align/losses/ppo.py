"""PPO with a learned critic, as pure functions of per-token arrays.

The RLHF recipe of Ouyang et al. 2022 (InstructGPT, §3.5; after Ziegler et
al. 2019 and Stiennon et al. 2020) with the formulas of TRL's
``PPOTrainer``:

1. ``kl_shaped_rewards``: every completion token earns −β·k1, k1 = log π −
   log π_ref (the non-score reward), and the last token also earns the
   reward model's (or reward function's) score.
2. ``gae``: generalised advantage estimation, Schulman et al. 2015 ("High-
   Dimensional Continuous Control Using Generalized Advantage Estimation"),
   eq. 16, over the completion tokens with the critic's values.
3. ``masked_whiten``: advantages whitened over the batch's real tokens.
4. ``ppo_policy_loss``: the clipped surrogate of Schulman et al. 2017
   ("Proximal Policy Optimization Algorithms", eq. 7), per token.
5. ``clipped_value_loss``: the critic's squared error with the value clip of
   OpenAI baselines' PPO2, as TRL (``vf_coef`` weighs it in the total).

Arrays are (B, T): B completions, T token positions, ``mask`` 1.0 on
completion tokens (any prefix, such as a prompt, and padding are 0). The
completion tokens of a row are contiguous. Metrics carry no gradient and use
TRL's names.
"""

from __future__ import annotations

import mlx.core as mx

from mlx_align.losses.masked import masked_mean

Metrics = dict[str, mx.array]


def masked_var(values: mx.array, mask: mx.array, unbiased: bool = True) -> mx.array:
    """Variance of ``values`` where ``mask`` is 1; Bessel-corrected as TRL's ``masked_var``."""
    centred = values - masked_mean(values, mask)
    variance = masked_mean(centred**2, mask)
    if unbiased:
        count = mask.sum()
        variance = variance * count / mx.maximum(count - 1.0, 1.0)
    return variance


def masked_whiten(
    values: mx.array, mask: mx.array, shift_mean: bool = True, eps: float = 1e-8
) -> mx.array:
    """(values − mean) / sqrt(var + eps) over the masked entries, as TRL's ``masked_whiten``.

    ``shift_mean`` False adds the mean back (scale only; TRL's
    ``whiten_rewards``). Entries off the mask are transformed too; callers
    zero them. Shapes (B, T) -> (B, T).
    """
    mean = masked_mean(values, mask)
    whitened = (values - mean) * mx.rsqrt(masked_var(values, mask) + eps)
    return whitened if shift_mean else whitened + mean


def last_token_index(mask: mx.array) -> mx.array:
    """(B, T) mask -> (B,) position of each row's last masked token (0 for an empty row)."""
    positions = mx.arange(mask.shape[1], dtype=mx.float32)
    return (mask * positions).max(axis=1).astype(mx.int32)


def kl_shaped_rewards(
    logps: mx.array,
    ref_logps: mx.array,
    scores: mx.array,
    mask: mx.array,
    kl_coef: float,
    kl_estimator: str = "k1",
) -> tuple[mx.array, mx.array]:
    """Per-token rewards r_t = −β·KL_t, plus the score at the last token.

    InstructGPT eq. 2 spread over tokens (Ziegler et al. 2019, §2.2; TRL
    ``PPOTrainer``, step "4. compute rewards"): an estimate of KL(π ‖ π_ref)
    at each sampled token is the per-token penalty, and the sequence's score
    arrives at its last real token. With log r = log π_ref − log π (TRL's
    ``logr``; Schulman 2020, "Approximating KL divergence"): k1 = −log r,
    k3 = (r − 1) − log r. Deviation from TRL: TRL adds the
    score one position after the last token (its ``sequence_lengths_p1``,
    a padding slot when the completion is short) and trains the value there
    too; here the episode ends at the last real token.

    Args:
        logps, ref_logps: per-token log-probs of the sampled tokens under the
            policy at rollout time and under the reference, (B, T).
        scores: one score per completion, (B,).
        mask: 1.0 on completion tokens, (B, T).
        kl_coef: β.
        kl_estimator: "k1" or "k3".

    Returns:
        rewards (B, T), 0 off the mask; the per-token KL estimate (B, T), 0 off the mask.
    """
    log_r = (ref_logps - logps) * mask  # (B, T); 0 off the mask, so no junk overflows
    kl = -log_r if kl_estimator == "k1" else mx.expm1(log_r) - log_r
    at_last = mx.arange(mask.shape[1])[None] == last_token_index(mask)[:, None]
    rewards = -kl_coef * kl + at_last * scores[:, None]  # (B, T)
    return rewards * mask, kl


def gae(
    rewards: mx.array, values: mx.array, mask: mx.array, gamma: float, lam: float
) -> tuple[mx.array, mx.array]:
    """Generalised advantage estimates and returns (Schulman et al. 2015, eq. 16).

    δ_t = r_t + γ·V_{t+1} − V_t, with V = 0 after the last completion token
    (the episode ends there); A_t = Σ_l (γλ)^l·δ_{t+l}; returns R_t = A_t +
    V_t, the critic's targets. As TRL ``PPOTrainer``'s reversed loop, written
    as one (T, T) matrix product: A = δ @ D, D[s, t] = (γλ)^(s − t) for s ≥ t.

    Args:
        rewards: per-token rewards, (B, T), 0 off the mask.
        values: the critic's values at rollout time, (B, T).
        mask: 1.0 on completion tokens, (B, T).
        gamma, lam: γ (discount) and λ (GAE's bias-variance trade-off).

    Returns:
        advantages (B, T) and returns (B, T), both 0 off the mask.

    The steps are the masked tokens in order: a mask with holes (the tool
    turns of a multi-turn completion) is read as the model's own tokens alone,
    t + 1 the next one after the hole. Each row's masked tokens are moved to
    its front, the estimates made there, and moved back.
    """
    width = mask.shape[1]
    positions = mx.arange(width, dtype=mx.float32)[None]
    order = mx.argsort(
        (1.0 - mask) * width + positions, axis=1
    )  # masked first, in order
    back = mx.argsort(order, axis=1)
    front = [mx.take_along_axis(x, order, axis=1) for x in (rewards, values, mask)]
    advantages, returns = _gae_front(*front, gamma, lam)
    return tuple(mx.take_along_axis(x, back, axis=1) for x in (advantages, returns))


def _gae_front(rewards, values, mask, gamma: float, lam: float):
    """``gae`` for masks that are each row's first tokens."""
    values = values * mask
    following = mx.pad(values[:, 1:], [(0, 0), (0, 1)])  # V_{t+1}, 0 past the end
    deltas = rewards * mask + gamma * following - values  # (B, T)
    steps = mx.arange(mask.shape[1], dtype=mx.float32)
    lags = steps[:, None] - steps[None, :]  # (T, T): s − t
    decay = mx.where(lags >= 0, mx.power(gamma * lam, mx.maximum(lags, 0.0)), 0.0)
    advantages = (deltas @ decay) * mask  # (B, T)
    return advantages, (advantages + values) * mask


def ppo_policy_loss(
    logps: mx.array,
    old_logps: mx.array,
    advantages: mx.array,
    mask: mx.array,
    cliprange: float,
) -> tuple[mx.array, Metrics]:
    """The clipped surrogate, per token: max(−A·ρ, −A·clip(ρ, 1 − ε, 1 + ε)), token mean.

    Schulman et al. 2017, eq. 7, as TRL ``PPOTrainer`` (ρ = exp(log π −
    log π_old) per token, the loss a masked mean over the batch's tokens).

    Returns:
        scalar loss; metrics ``policy/clipfrac_avg`` (share of tokens where
        the clipped term is the larger, so the gradient is zero),
        ``policy/approxkl_avg`` (½·mean (log π − log π_old)², the KL between
        consecutive policies; TRL's estimator, averaged over real tokens
        only) and ``val/ratio`` (mean ρ over real tokens).
    """
    log_ratio = logps - mx.stop_gradient(old_logps)  # (B, T)
    ratio = mx.exp(log_ratio)
    unclipped = -advantages * ratio  # (B, T)
    clipped = -advantages * mx.clip(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(mx.maximum(unclipped, clipped), mask)
    log_ratio, ratio = mx.stop_gradient(log_ratio), mx.stop_gradient(ratio)
    metrics = {
        "policy/clipfrac_avg": masked_mean(
            mx.stop_gradient(clipped > unclipped).astype(mask.dtype), mask
        ),
        "policy/approxkl_avg": 0.5 * masked_mean(log_ratio**2, mask),
        "val/ratio": masked_mean(ratio, mask),
        "loss/policy_avg": mx.stop_gradient(loss),
    }
    return loss, metrics


def clipped_value_loss(
    values: mx.array,
    old_values: mx.array,
    returns: mx.array,
    mask: mx.array,
    cliprange_value: float,
) -> tuple[mx.array, Metrics]:
    """½·mean max((V − R)², (clip(V, V_old ± ε_v) − R)²) over the masked tokens.

    The value clip of OpenAI baselines' PPO2, as TRL ``PPOTrainer``: a new
    value may not earn a lower loss by moving more than ``cliprange_value``
    from the value at rollout time. At exactly V_old ± ε_v the two terms are
    equal; beyond it the clipped term is constant in V, so where it is the
    larger the gradient is 0.

    Returns:
        scalar loss; metrics ``loss/value_avg`` (the loss), ``val/clipfrac_avg``
        (share of tokens where the clipped term is strictly larger),
        ``val/vpred`` (mean predicted value) and ``val/error`` (mean (V − R)²).
    """
    old_values = mx.stop_gradient(old_values)
    clipped_values = mx.clip(
        values, old_values - cliprange_value, old_values + cliprange_value
    )
    unclipped_loss = (values - returns) ** 2  # (B, T)
    clipped_loss = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(mx.maximum(unclipped_loss, clipped_loss), mask)
    metrics = {
        "loss/value_avg": mx.stop_gradient(loss),
        "val/clipfrac_avg": masked_mean(
            mx.stop_gradient(clipped_loss > unclipped_loss).astype(mask.dtype), mask
        ),
        "val/vpred": masked_mean(mx.stop_gradient(values), mask),
        "val/error": masked_mean(mx.stop_gradient(unclipped_loss), mask),
    }
    return loss, metrics
