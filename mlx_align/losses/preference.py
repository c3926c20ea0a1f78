"""Post-training losses as pure functions of log-probs or rewards.

Every loss takes per-sequence arrays of shape (B,) (GRPO: per-token (B, T)) and
returns ``(losses, metrics)``: the losses unreduced so the caller chooses the
reduction, and the metrics TRL logs, under TRL's names, as per-example (B,)
arrays the caller averages. Metrics never carry gradient.

Formulas follow TRL (``ORPOTrainer``, ``KTOTrainer``,
``RewardTrainer``, ``GRPOTrainer``); each docstring names the paper and any
deliberate deviation.

The DPO family lives in ``dpo.py``; GRPO's token-level loss lives in
``grpo.py`` and is exported here too.
"""

import mlx.core as mx

from mlx_align.losses.grpo import GRPO_AGGREGATIONS, grpo_loss, k3_kl

Metrics = dict[str, mx.array]


def log_sigmoid(x: mx.array) -> mx.array:
    """log σ(x) = −softplus(−x), stable for large |x|."""
    return -mx.logaddexp(0.0, -x)


def reward_metrics(
    beta: float,
    chosen: mx.array,
    rejected: mx.array,
    chosen_logps: mx.array,
    rejected_logps: mx.array,
) -> Metrics:
    """TRL's pair metrics, without gradient: ``rewards/chosen`` = β·``chosen``
    (a stage's implicit reward), ``rewards/rejected``, their margin and
    accuracy (strict >), and ``logps/chosen`` / ``logps/rejected``; (B,) each."""
    chosen_rewards = beta * mx.stop_gradient(chosen)
    rejected_rewards = beta * mx.stop_gradient(rejected)
    return {
        "rewards/chosen": chosen_rewards,
        "rewards/rejected": rejected_rewards,
        "rewards/accuracies": (chosen_rewards > rejected_rewards).astype(mx.float32),
        "rewards/margins": chosen_rewards - rejected_rewards,
        "logps/chosen": mx.stop_gradient(chosen_logps),
        "logps/rejected": mx.stop_gradient(rejected_logps),
    }


def bt_loss(
    chosen_rewards: mx.array,
    rejected_rewards: mx.array,
    margin: mx.array | None = None,
) -> tuple[mx.array, Metrics]:
    """Bradley-Terry reward-model loss: −log σ(r_w − r_l − m).

    Ouyang et al. 2022 (InstructGPT), eq. 1; the optional margin m is from
    Touvron et al. 2023 (Llama 2), eq. 2. As TRL ``RewardTrainer``.

    Args:
        chosen_rewards: scalar rewards r_w of the preferred completions, (B,).
        rejected_rewards: rewards r_l of the rejected completions, (B,).
        margin: optional per-pair margin m, (B,).

    Returns:
        losses (B,); metrics ``accuracy`` (r_w > r_l, strict) and ``margin``
        (r_w − r_l, without m).
    """
    reward_gap = chosen_rewards - rejected_rewards  # (B,)
    shifted_gap = reward_gap if margin is None else reward_gap - margin  # (B,)
    losses = -log_sigmoid(shifted_gap)  # (B,)
    reward_gap = mx.stop_gradient(reward_gap)
    metrics = {
        "accuracy": (reward_gap > 0).astype(mx.float32),
        "margin": reward_gap,
    }
    return losses, metrics


def _log_odds(mean_logps: mx.array) -> mx.array:
    """log(p / (1 − p)) from log p < 0; log(1 − eˣ) as log(−expm1(x)) stays
    finite as x → 0⁻, where TRL's log1p(−exp(x)) rounds to log(0)."""
    return mean_logps - mx.log(-mx.expm1(mean_logps))


def orpo_loss(
    chosen_mean_logps: mx.array,
    rejected_mean_logps: mx.array,
    chosen_nll: mx.array,
    beta: float,
) -> tuple[mx.array, Metrics]:
    """ORPO loss: NLL(y_c) − β·log σ(log odds(y_c) − log odds(y_r)).

    Hong et al. 2024, "ORPO: Monolithic Preference Optimization without
    Reference Model" (L_SFT + λ·L_OR), with odds(y) = p / (1 − p) on the
    per-token mean log-prob p, as TRL ``ORPOTrainer.odds_ratio_loss`` (β is λ in the
    paper). Deviation: log(1 − p) is computed as log(−expm1(log p)).

    Args:
        chosen_mean_logps, rejected_mean_logps: per-token mean completion
            log-probs, (B,), all < 0.
        chosen_nll: per-token mean NLL of the chosen completion, (B,).
        beta: λ, weight of the odds-ratio term.

    Returns:
        losses (B,); metrics ``rewards/*`` (β·mean log-prob), ``logps/*``,
        ``nll_loss``, ``log_odds_ratio`` (log σ of the log-odds, TRL's name)
        and ``log_odds_chosen`` (the log-odds itself).
    """
    log_odds = _log_odds(chosen_mean_logps) - _log_odds(rejected_mean_logps)  # (B,)
    log_odds_ratio = log_sigmoid(log_odds)  # (B,)
    losses = chosen_nll - beta * log_odds_ratio  # (B,)
    means = (chosen_mean_logps, rejected_mean_logps)
    metrics = {
        **reward_metrics(beta, *means, *means),
        "nll_loss": mx.stop_gradient(chosen_nll),
        "log_odds_ratio": mx.stop_gradient(log_odds_ratio),
        "log_odds_chosen": mx.stop_gradient(log_odds),
    }
    return losses, metrics


def kto_loss(
    policy_logps: mx.array,
    ref_logps: mx.array,
    labels: mx.array,
    kl: mx.array | float,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[mx.array, Metrics]:
    """KTO loss on unpaired examples.

    Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic
    Optimization", as TRL ``KTOTrainer.kto_loss``. With r = log π −
    log π_ref and z₀ the reference point ``kl``:
        desirable:   λ_D · (1 − σ(β(r − z₀)))
        undesirable: λ_U · (1 − σ(β(z₀ − r)))
    z₀ is a batch-level KL estimate; it is detached and clamped at 0 here.

    Args:
        policy_logps, ref_logps: summed completion log-probs, (B,).
        labels: True for desirable completions, (B,).
        kl: z₀, a scalar.
        beta, desirable_weight, undesirable_weight: β, λ_D, λ_U.

    Returns:
        losses (B,); metrics as TRL's sums: ``rewards/chosen_sum`` (β·r where
        desirable, else 0), ``rewards/rejected_sum``, ``logps/chosen_sum``,
        ``logps/rejected_sum``, ``count/chosen``, ``count/rejected`` (0/1) and
        ``kl``. Sum a ``*_sum`` over the batch and divide by the matching count
        to get TRL's ``rewards/chosen`` etc.
    """
    reference_point = mx.maximum(mx.stop_gradient(mx.array(kl)), 0.0)  # ()
    logratios = policy_logps - ref_logps  # (B,)
    desirable = labels.astype(mx.bool_)  # (B,)
    chosen_losses = 1.0 - mx.sigmoid(beta * (logratios - reference_point))  # (B,)
    rejected_losses = 1.0 - mx.sigmoid(beta * (reference_point - logratios))  # (B,)
    losses = mx.where(
        desirable,
        desirable_weight * chosen_losses,
        undesirable_weight * rejected_losses,
    )  # (B,)
    rewards = beta * mx.stop_gradient(logratios)  # (B,)
    logps = mx.stop_gradient(policy_logps)  # (B,)
    metrics = {
        "rewards/chosen_sum": mx.where(desirable, rewards, 0.0),
        "rewards/rejected_sum": mx.where(desirable, 0.0, rewards),
        "logps/chosen_sum": mx.where(desirable, logps, 0.0),
        "logps/rejected_sum": mx.where(desirable, 0.0, logps),
        "count/chosen": desirable.astype(mx.float32),
        "count/rejected": (~desirable).astype(mx.float32),
        "kl": mx.broadcast_to(reference_point, logratios.shape),
    }
    return losses, metrics


__all__ = [
    "GRPO_AGGREGATIONS",
    "Metrics",
    "bt_loss",
    "grpo_loss",
    "k3_kl",
    "kto_loss",
    "log_sigmoid",
    "orpo_loss",
]
