"""CPO, SimPO and AlphaPO: preference losses without a reference model.

As TRL's experimental ``CPOTrainer`` (1.16): the pair's logit is the policy's
own log-probs, chosen minus rejected (summed for ``sigmoid`` and ``hinge``,
per-token means for ``ipo``, ``simpo`` and ``alphapo``), optionally reshaped
by AlphaPO's reward; the stage adds ``cpo_alpha`` × the chosen NLL (the
behaviour-cloning term of CPO).
"""

from __future__ import annotations

import mlx.core as mx

from mlx_align.losses.dpo import smoothed_sigmoid
from mlx_align.losses.preference import Metrics, reward_metrics

# TRL's CPO ``loss_type``s; ``alphapo`` is ``simpo`` without the NLL term.
CPO_LOSSES = ("sigmoid", "hinge", "ipo", "simpo", "alphapo")

# The losses on per-token mean log-probs (TRL's ``average_log_prob``).
MEAN_LOGPS_LOSSES = frozenset({"ipo", "simpo", "alphapo"})


def alphapo_rewards(logps: mx.array, alpha: float) -> mx.array:
    """r = (1 − p^(−α)) / α with p = e^logps (α = 0: r = logps). Gupta et al.
    2025, "AlphaPO: Reward Shape Matters for LLM Alignment", eq. 5."""
    if alpha == 0.0:
        return logps
    return (1.0 - mx.exp(-alpha * logps)) / alpha


def cpo_loss(
    chosen_logps: mx.array,
    rejected_logps: mx.array,
    beta: float,
    loss_type: str,
    label_smoothing: float = 0.0,
    simpo_gamma: float = 0.5,
    alpha: float = 0.0,
) -> tuple[mx.array, Metrics]:
    """The reference-free pair loss on x = r(y_c) − r(y_r), r the AlphaPO reward.

    - ``sigmoid``: −(1 − ε)·log σ(βx) − ε·log σ(−βx): CPO, Xu et al. 2024,
      "Contrastive Preference Optimization", eq. 3 (conservative ε).
    - ``hinge``: relu(1 − βx) (SLiC on the policy alone).
    - ``ipo``: (x − 1/(2β))² on mean log-probs (IPO without a reference).
    - ``simpo``/``alphapo``: the sigmoid form on x − γ/β: SimPO, Meng et al.
      2024, "SimPO: Simple Preference Optimization with a Reference-Free
      Reward", eq. 6 (γ = ``simpo_gamma``).

    Args:
        chosen_logps, rejected_logps: the policy's completion log-probs, (B,):
            per-token means for ``MEAN_LOGPS_LOSSES``, sums otherwise.
        beta: β; label_smoothing: ε; simpo_gamma: γ; alpha: AlphaPO's α.

    Returns:
        losses (B,); metrics ``rewards/*`` (β·r), ``logps/*`` (the inputs).
    """
    chosen = alphapo_rewards(chosen_logps, alpha)  # (B,)
    rejected = alphapo_rewards(rejected_logps, alpha)  # (B,)
    logits = chosen - rejected  # (B,)
    if loss_type in ("simpo", "alphapo"):
        losses = smoothed_sigmoid(beta * (logits - simpo_gamma / beta), label_smoothing)
    elif loss_type == "sigmoid":
        losses = smoothed_sigmoid(beta * logits, label_smoothing)
    elif loss_type == "hinge":
        losses = mx.maximum(1.0 - beta * logits, 0.0)
    elif loss_type == "ipo":
        losses = (logits - 1.0 / (2.0 * beta)) ** 2
    else:
        raise ValueError(f"unknown CPO loss {loss_type!r}: one of {CPO_LOSSES}")
    metrics = reward_metrics(beta, chosen, rejected, chosen_logps, rejected_logps)
    return losses, metrics
