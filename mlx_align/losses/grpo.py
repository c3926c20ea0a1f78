"""GRPO's policy losses and their k3 KL, pure functions of per-token log-probs.

Every ``loss_type`` of TRL 1.16's ``GRPOTrainer._compute_loss``: the
clipped surrogate (``grpo``, ``bnpo``, ``dr_grpo``, ``dapo``, ``luspo``,
which differ in how the per-token losses are reduced), CISPO's clipped
importance weight, SAPO's soft gate and VESPO's gamma weight; token- or
sequence-level importance ratios (GSPO); DAPO's clip-higher and the
two-sided clip ``delta``. Public through ``mlx_align.losses.preference``
with the other losses; same conventions (``(loss, metrics)``, TRL's names).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

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


def _sequence_sum_mean(per_token: mx.array, mask: mx.array, _: int) -> mx.array:
    return (per_token * mask).sum(-1).mean()


# The reduction of the (B, T) per-token loss to a scalar, by TRL ``loss_type``.
# dapo, cispo and vespo divide by the active tokens of the whole batch: here
# those of the micro-batch, and the loop weighs ranks by their tokens
# (``TOKEN_MEAN_LOSSES``), so several ranks take the global token mean.
GRPO_AGGREGATIONS: dict[str, Callable[[mx.array, mx.array, int], mx.array]] = {
    "grpo": _sequence_mean,  # per-sequence mean, then batch mean (Shao 2024)
    "bnpo": _token_mean,  # sum over tokens / the micro-batch's active tokens
    "dr_grpo": _fixed_length_mean,  # sum / (B × max tokens) (Liu 2025)
    "dapo": _token_mean,  # token-level mean over the batch (Yu 2025)
    "cispo": _token_mean,  # as dapo (MiniMax 2025)
    "sapo": _sequence_mean,  # as grpo (Gao 2025)
    "luspo": _sequence_sum_mean,  # per-sequence sum, then batch mean (LUSPO)
    "vespo": _token_mean,  # as dapo (VESPO)
}
TOKEN_MEAN_LOSSES = frozenset({"dapo", "cispo", "vespo"})
IMPORTANCE_SAMPLING_LEVELS = ("token", "sequence")


@dataclass(frozen=True)
class PolicyLossSettings:
    """What a GRPO loss type reads besides the log-probs; TRL's names and defaults."""

    loss_type: str = "dapo"
    epsilon: float = 0.2  # ε_low
    epsilon_high: float | None = None  # ε_high (None: ε); cispo's ε_max
    delta: float | None = None  # two-sided clip: ratio ≤ δ (Wang 2025)
    importance_sampling_level: str = "token"  # sequence: GSPO (Zheng 2025)
    beta: float = 0.0  # weight of the k3 KL
    sapo_temperature_pos: float = 1.0
    sapo_temperature_neg: float = 1.05
    vespo_k_pos: float = 2.0
    vespo_lambda_pos: float = 3.0
    vespo_k_neg: float = 3.0
    vespo_lambda_neg: float = 2.0
    max_completion_tokens: int | None = None  # dr_grpo's constant (default T)
    top_entropy_quantile: float = 1.0  # train only the top q of tokens by entropy
    entropy_coef: float = 0.0  # an entropy bonus: loss − c · mean entropy

    @property
    def clip_high(self) -> float:
        return self.epsilon if self.epsilon_high is None else self.epsilon_high


def log_importance_weights(log_ratio: mx.array, mask: mx.array, level: str) -> mx.array:
    """log π/π_old per token (B, T), or GSPO's per-sequence mean (B, 1)."""
    if level == "token":
        return log_ratio
    if level == "sequence":
        mean = (log_ratio * mask).sum(-1) / mx.maximum(mask.sum(-1), 1.0)
        return mean[:, None]
    raise ValueError(f"importance_sampling_level must be one of {IMPORTANCE_SAMPLING_LEVELS}")  # fmt: skip


def high_entropy_mask(
    entropy: mx.array, mask: mx.array, top_quantile: float
) -> mx.array:
    """1 on the active tokens whose entropy is at least the (1 − q) quantile of
    all active tokens' (linear interpolation, as ``torch.quantile``), (B, T).

    Wang et al. 2025, "Beyond the 80/20 Rule: High-Entropy Minority Tokens
    Drive Effective Reinforcement Learning for LLM Reasoning", as TRL's
    ``top_entropy_quantile``; q = 0 keeps the highest-entropy token (and
    its ties). The quantile is over this micro-batch (TRL's: every rank's).
    """
    active = mask > 0
    ordered = mx.sort(mx.where(active, entropy, mx.inf).reshape(-1))
    last = mx.maximum(active.sum() - 1, 0).astype(mx.float32)
    position = last * (1.0 - top_quantile)
    low = mx.floor(position)
    high = mx.minimum(low + 1, last)
    below, above = ordered[low.astype(mx.int32)], ordered[high.astype(mx.int32)]
    threshold = below + (position - low) * (above - below)
    return ((entropy >= threshold) & active).astype(mask.dtype)


def _masked_share(flags: mx.array, mask: mx.array) -> mx.array:
    """Mean of per-token flags over active tokens, or of per-sequence ones (B, 1)."""
    flags = flags.astype(mask.dtype)
    if flags.shape[-1] == 1:
        return flags.mean()
    return masked_mean(flags, mask)


def _clipped(coef, advantages, logps, log_ratio, mask, s: PolicyLossSettings):
    """−min(w·A, clip(w, 1 − ε, 1 + ε_high)·A), w capped at δ when set
    (PPO's surrogate; Shao et al. 2024 eq. 3)."""
    clipped = mx.clip(coef, 1.0 - s.epsilon, 1.0 + s.clip_high)
    if s.delta is not None:
        coef = mx.minimum(coef, s.delta)
    per_token = -mx.minimum(coef * advantages, clipped * advantages)
    weights = mx.stop_gradient(coef)
    low = (weights < 1.0 - s.epsilon) & (advantages < 0)
    high = (weights > 1.0 + s.clip_high) & (advantages > 0)
    metrics = {
        "clip_ratio/region_mean": _masked_share(low | high, mask),
        "clip_ratio/low_mean": _masked_share(low, mask),
        "clip_ratio/high_mean": _masked_share(high, mask),
    }
    return per_token, metrics


def _cispo(coef, advantages, logps, log_ratio, mask, s: PolicyLossSettings):
    """−sg(min(w, ε_max))·A·log π: the importance weight clipped, not the
    update (MiniMax 2025, "MiniMax-M1", eq. 4; ε_max is ``epsilon_high``)."""
    clamped = mx.stop_gradient(mx.minimum(coef, s.clip_high))
    high = (mx.stop_gradient(coef) > s.clip_high) & (advantages > 0)
    return -clamped * advantages * logps, {"cispo_clip_ratio": _masked_share(high, mask)}  # fmt: skip


def _sapo(coef, advantages, logps, log_ratio, mask, s: PolicyLossSettings):
    """−σ(τ(w − 1))·4/τ·A: a soft gate in place of the clip, τ by the
    advantage's sign (Gao et al. 2025, "Soft Adaptive Policy Optimization")."""
    temperature = mx.where(advantages > 0, s.sapo_temperature_pos, s.sapo_temperature_neg)  # fmt: skip
    gate = mx.sigmoid(temperature * (coef - 1.0)) * 4.0 / temperature
    return -gate * advantages, {}


def vespo_weights(
    advantages: mx.array, log_ratio: mx.array, mask: mx.array, s: PolicyLossSettings
) -> mx.array:
    """φ(w) = e^λ·w^k·e^(−λw) of the sequence ratio w = Π π/π_old, k and λ by the
    advantage's sign (φ(1) = 1), no gradient: (B, 1). As TRL's
    ``get_gamma_weights`` (clamps included)."""
    lower = math.log(1e-8)
    clamped = mx.clip(log_ratio, -20.0, 20.0)
    log_w = mx.clip((clamped * mask).sum(-1, keepdims=True), lower, 20.0)  # (B, 1)
    non_negative = advantages >= 0
    k = mx.where(non_negative, s.vespo_k_pos, s.vespo_k_neg)
    lam = mx.maximum(mx.where(non_negative, s.vespo_lambda_pos, s.vespo_lambda_neg), 1e-4)  # fmt: skip
    phi = mx.exp(lam + k * log_w - lam * mx.exp(log_w))
    phi = mx.where(mx.isfinite(phi), phi, 0.0)
    return mx.stop_gradient(phi)


def _vespo(coef, advantages, logps, log_ratio, mask, s: PolicyLossSettings):
    """−φ(w)·A·log π (VESPO: a smooth gamma weight on the sequence ratio)."""
    phi = vespo_weights(advantages, log_ratio, mask, s)
    return -phi * advantages * logps, {"vespo/phi_seq_mean": phi.mean()}


# The per-token policy objective of each loss type.
POLICY_OBJECTIVES: dict[str, Callable] = {
    "grpo": _clipped,
    "bnpo": _clipped,
    "dr_grpo": _clipped,
    "dapo": _clipped,
    "cispo": _cispo,
    "sapo": _sapo,
    "luspo": _clipped,
    "vespo": _vespo,
}


def grpo_loss(
    logps: mx.array,
    old_logps: mx.array,
    ref_logps: mx.array | None,
    advantages: mx.array,
    mask: mx.array,
    settings: PolicyLossSettings | None = None,
    *,
    entropy: mx.array | None = None,
    **overrides,
) -> tuple[mx.array, Metrics]:
    """The GRPO policy loss of ``settings.loss_type``, per token, reduced to a scalar.

    As TRL ``GRPOTrainer``: w = exp(log π − log π_old) per token, or per
    sequence (the mean log-ratio, GSPO); the loss type's per-token objective
    (``POLICY_OBJECTIVES``) on w and A; then + β·k3 per token; then the loss
    type's reduction (``GRPO_AGGREGATIONS``). With μ = 1 iteration per batch
    pass ``old_logps=logps``: they are detached here, so w = 1 and the clip
    never acts, leaving the plain policy gradient −A·∇log π.

    Args:
        logps, old_logps: per-token log-probs of the completions, (B, T).
        ref_logps: reference per-token log-probs, (B, T); None iff β == 0.
        advantages: one advantage per completion, (B,).
        mask: 1 for completion tokens, 0 for padding, (B, T).
        settings: the loss type and its settings (``overrides`` replace fields,
            e.g. ``epsilon=0.1``).
        entropy: each position's next-token entropy, (B, T): needed with
            ``top_entropy_quantile`` < 1, where only the tokens
            ``high_entropy_mask`` keeps train the policy term (the KL and the
            reduction keep ``mask``, as TRL's), and with ``entropy_coef``,
            whose bonus −c·H (H its mean over the trained tokens) trains it:
            then it must carry its gradient.

    Returns:
        scalar loss; the loss type's metrics (clip ratios under TRL's names:
        ``clip_ratio/region_mean``, …), ``entropy`` (its
        masked mean) when given and, when β > 0, ``kl`` (masked mean of k3).
    """
    settings = replace(settings or PolicyLossSettings(), **overrides)
    if settings.loss_type not in GRPO_AGGREGATIONS:
        raise ValueError(f"loss_type must be one of {sorted(GRPO_AGGREGATIONS)}")
    if settings.beta != 0.0 and ref_logps is None:
        raise ValueError("grpo_loss needs ref_logps when beta > 0")
    mask = mask.astype(logps.dtype)  # (B, T)
    advantages = advantages[:, None]  # (B, 1)
    log_ratio = logps - mx.stop_gradient(old_logps)  # (B, T)
    level = settings.importance_sampling_level
    coef = mx.exp(log_importance_weights(log_ratio, mask, level))  # (B, T) or (B, 1)
    objective = POLICY_OBJECTIVES[settings.loss_type]
    per_token, metrics = objective(coef, advantages, logps, log_ratio, mask, settings)
    trained = mask  # the tokens the policy term (and an entropy bonus) acts on
    if settings.top_entropy_quantile < 1.0 or settings.entropy_coef:
        if entropy is None:
            raise ValueError("top_entropy_quantile < 1 or entropy_coef needs the tokens' entropy")  # fmt: skip
    if settings.top_entropy_quantile < 1.0:
        trained = high_entropy_mask(entropy, mask, settings.top_entropy_quantile)
        per_token = per_token * trained
    entropy_mean = None
    if entropy is not None:  # one node for the metric and the bonus: MLX 0.32's
        # compile breaks (_Map_base::at) on a metric equal to a loss node.
        entropy_mean = masked_mean(entropy, mask)
        metrics["entropy"] = mx.stop_gradient(entropy_mean)
    if settings.beta != 0.0:
        kl = k3_kl(logps, mx.stop_gradient(ref_logps))  # (B, T)
        per_token = per_token + settings.beta * kl
        metrics["kl"] = masked_mean(mx.stop_gradient(kl), mask)
    max_tokens = settings.max_completion_tokens or logps.shape[1]
    loss = GRPO_AGGREGATIONS[settings.loss_type](per_token, mask, max_tokens)
    if settings.entropy_coef:  # TRL: L − c·H, H a mean over the trained tokens
        metrics["policy_loss"] = mx.stop_gradient(loss)
        bonus = entropy_mean if trained is mask else masked_mean(entropy, trained)
        loss = loss - settings.entropy_coef * bonus
    return loss, metrics


def rloo_loss(
    logps: mx.array,
    old_logps: mx.array,
    advantages: mx.array,
    mask: mx.array,
    *,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
) -> tuple[mx.array, Metrics]:
    """RLOO's loss: PPO's clip on whole sequences, w = exp(Σ_t log π − Σ_t log π_old),
    −min(w·A, clip(w, 1 − ε, 1 + ε_high)·A), the mean over completions. As TRL
    ``RLOOTrainer._compute_loss`` (Ahmadian et al. 2024 with TRL's clip); the
    KL is in the reward, not here. Shapes as ``grpo_loss``; the clip metrics
    are shares of completions.
    """
    settings = PolicyLossSettings(epsilon=epsilon, epsilon_high=epsilon_high)
    mask = mask.astype(logps.dtype)
    log_ratio = ((logps - mx.stop_gradient(old_logps)) * mask).sum(-1, keepdims=True)
    per_sequence, metrics = _clipped(
        mx.exp(log_ratio), advantages[:, None], logps, log_ratio, mask, settings
    )
    return per_sequence.mean(), metrics
