"""The DPO family: every ``loss_type`` of TRL 1.16's ``DPOTrainer``, one function each.

A loss reads one ``DPOPair`` (the four summed log-probs of B pairs, their
completion lengths and which pairs are real) and ``beta``, plus any of
``LOSS_SETTINGS`` its signature names, and returns the per-pair losses
(B,). The metrics are the same for every loss (``dpo_metrics``, TRL's
names), and ``weighted_dpo_losses`` sums several losses with weights (TRL's
list-valued ``loss_type`` with ``loss_weights``: MPO).

Notation: r_c = log π(y_c) − log π_ref(y_c), r_r likewise (the log-ratios);
s_c, s_r the scores f′(π/π_ref) of the f-divergence (``DPOPair.divergence``;
the reverse KL, DPO's own, gives s = r); Δs = s_c − s_r. Formulas and
their order of operations follow ``DPOTrainer._compute_loss`` of TRL 1.16.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import mlx.core as mx

from mlx_align.losses.preference import Metrics, log_sigmoid, reward_metrics

# The settings a loss may take besides ``pair`` and ``beta``, by keyword.
LOSS_SETTINGS = ("label_smoothing", "discopop_tau")

F_DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")


def f_divergence_scores(logratios: mx.array, divergence: str, alpha: float) -> mx.array:
    """f′(t) at t = π/π_ref, from log t: the score f-DPO puts in place of log t.

    Wang et al. 2023, "Beyond Reverse KL: Generalizing Direct Preference
    Optimization with Diverse Divergence Constraints", table 1: reverse KL
    f′(t) = log t + 1 (the constant cancels in s_c − s_r), forward KL
    1 − 1/t, Jensen-Shannon log(2t/(t + 1)), α-divergence (t^(α−1) − 1)/(α − 1)
    (α = 1: the reverse KL). As TRL, the α exponent is clamped at 80.
    """
    if divergence == "reverse_kl" or (
        divergence == "alpha_divergence" and abs(alpha - 1.0) < 1e-6
    ):
        return logratios
    if divergence == "forward_kl":
        return 1.0 - mx.exp(-logratios)
    if divergence == "js_divergence":
        return math.log(2.0) + log_sigmoid(logratios)
    if divergence == "alpha_divergence":
        exponent = mx.minimum((alpha - 1.0) * logratios, 80.0)
        return (mx.exp(exponent) - 1.0) / (alpha - 1.0)
    raise ValueError(f"unknown f-divergence {divergence!r}: one of {F_DIVERGENCES}")


class DPOPair(NamedTuple):
    """B preference pairs as every DPO-family loss reads them."""

    policy_chosen: mx.array  # (B,) summed completion log-probs, policy
    policy_rejected: mx.array  # (B,)
    ref_chosen: mx.array  # (B,) the same under the frozen reference
    ref_rejected: mx.array  # (B,)
    chosen_lengths: mx.array  # (B,) completion tokens (0 on a filler pair)
    rejected_lengths: mx.array  # (B,)
    valid: mx.array  # (B,) 1.0 on real pairs, 0.0 on filler ones
    divergence: str = "reverse_kl"  # f_divergence_type
    alpha: float = 0.5  # f_alpha_divergence_coef

    @classmethod
    def of(
        cls,
        policy_chosen: mx.array,
        policy_rejected: mx.array,
        ref_chosen: mx.array,
        ref_rejected: mx.array,
        chosen_lengths: mx.array | None = None,
        rejected_lengths: mx.array | None = None,
        valid: mx.array | None = None,
        **divergence,
    ) -> DPOPair:
        """Lengths 1 and every pair real unless given."""
        ones = mx.ones(policy_chosen.shape)
        return cls(
            policy_chosen,
            policy_rejected,
            ref_chosen,
            ref_rejected,
            ones if chosen_lengths is None else chosen_lengths,
            ones if rejected_lengths is None else rejected_lengths,
            ones if valid is None else valid,
            **divergence,
        )

    @property
    def chosen_logratios(self) -> mx.array:  # r_c, (B,)
        return self.policy_chosen - self.ref_chosen

    @property
    def rejected_logratios(self) -> mx.array:  # r_r, (B,)
        return self.policy_rejected - self.ref_rejected

    def scores(self) -> tuple[mx.array, mx.array]:
        """(s_c, s_r), (B,) each."""
        return (
            f_divergence_scores(self.chosen_logratios, self.divergence, self.alpha),
            f_divergence_scores(self.rejected_logratios, self.divergence, self.alpha),
        )

    def delta_score(self) -> mx.array:
        """Δs = s_c − s_r, (B,): DPO's h under the reverse KL."""
        chosen, rejected = self.scores()
        return chosen - rejected

    def mean_delta_score(self) -> mx.array:
        """s_c / |y_c| − s_r / |y_r|, (B,): per-token scores (IPO, sigmoid_norm)."""
        chosen, rejected = self.scores()
        return chosen / mx.maximum(self.chosen_lengths, 1) - rejected / mx.maximum(
            self.rejected_lengths, 1
        )


def dpo_metrics(pair: DPOPair, beta: float) -> Metrics:
    """TRL's DPO metrics, the same for every loss: β·r as ``rewards/*``, their
    margin and accuracy (strict >), the policy's summed log-probs as ``logps/*``."""
    return reward_metrics(
        beta,
        pair.chosen_logratios,
        pair.rejected_logratios,
        pair.policy_chosen,
        pair.policy_rejected,
    )


def smoothed_sigmoid(logits: mx.array, label_smoothing: float) -> mx.array:
    """−(1 − ε)·log σ(x) − ε·log σ(−x): the conservative (cDPO) form."""
    return -(1.0 - label_smoothing) * log_sigmoid(logits) - (
        label_smoothing * log_sigmoid(-logits)
    )


def dpo_sigmoid_loss(pair: DPOPair, beta: float) -> mx.array:
    """DPO: −log σ(β·Δs). Rafailov et al. 2023, "Direct Preference
    Optimization", eq. 7. ln 2 when policy == reference."""
    return -log_sigmoid(beta * pair.delta_score())


def dpo_hinge_loss(pair: DPOPair, beta: float) -> mx.array:
    """relu(1 − β·Δs): SLiC-HF, Zhao et al. 2023 (the calibration loss with
    δ = 1, on log-ratios to the reference). Zero, with zero gradient, once
    β·Δs ≥ 1; 1 when policy == reference."""
    return mx.maximum(1.0 - beta * pair.delta_score(), 0.0)


def dpo_ipo_loss(pair: DPOPair, beta: float) -> mx.array:
    """IPO: (h̄ − 1/(2β))², h̄ from per-token mean scores. Azar et al. 2023, "A
    General Theoretical Paradigm to Understand Learning from Human
    Preferences", eq. 17 (β is τ). As TRL, each score is divided by its
    completion's length; 1/(4β²) when policy == reference, 0 at h̄ = 1/(2β)."""
    return (pair.mean_delta_score() - 1.0 / (2.0 * beta)) ** 2


def dpo_exo_pair_loss(pair: DPOPair, beta: float, label_smoothing: float) -> mx.array:
    """EXO: KL(p_θ ‖ p_label) over {chosen, rejected}, with p_θ = softmax of
    β·(s_c, s_r) and p_label = (1 − ε, ε). Ji et al. 2024, "Towards Efficient
    Exact Optimization of Language Model Alignment", eq. 16 (K = 2). Needs
    ε > 0 (the paper suggests 1e-3). At policy == reference:
    ½(log ½ − log(1 − ε)) + ½(log ½ − log ε)."""
    logits = beta * pair.delta_score()
    chosen_share, rejected_share = mx.sigmoid(logits), mx.sigmoid(-logits)
    return chosen_share * (log_sigmoid(logits) - math.log1p(-label_smoothing)) + (
        rejected_share * (log_sigmoid(-logits) - math.log(label_smoothing))
    )


def dpo_nca_pair_loss(pair: DPOPair, beta: float) -> mx.array:
    """NCA: −log σ(β r_c) − ½ log σ(−β r_c) − ½ log σ(−β r_r). Chen et al.
    2024, "Noise Contrastive Alignment of Language Models with Explicit
    Rewards", the pairwise NCA loss. 2 ln 2 when policy == reference."""
    chosen, rejected = beta * pair.chosen_logratios, beta * pair.rejected_logratios
    return (
        -log_sigmoid(chosen) - 0.5 * log_sigmoid(-chosen) - 0.5 * log_sigmoid(-rejected)
    )


def dpo_robust_loss(pair: DPOPair, beta: float, label_smoothing: float) -> mx.array:
    """Robust DPO: [−(1−ε)·log σ(βΔs) + ε·log σ(−βΔs)] / (1 − 2ε).

    Chowdhury et al. 2024, "Provably Robust DPO": an unbiased estimate of the
    DPO loss when a fraction ε of labels is flipped (note the + sign on the
    ε term, unlike cDPO). ε = 0 is DPO; needs ε < 0.5; ln 2 when policy ==
    reference.
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    logits = beta * pair.delta_score()
    clean = -(1.0 - label_smoothing) * log_sigmoid(logits)
    flipped = label_smoothing * log_sigmoid(-logits)
    return (clean + flipped) / (1.0 - 2.0 * label_smoothing)


def dpo_bco_pair_loss(pair: DPOPair, beta: float) -> mx.array:
    """BCO on pairs: −log σ(β r_c) − log σ(−β r_r), each completion classified
    on its own. Jung et al. 2024, "Binary Classifier Optimization for Large
    Language Model Alignment", as TRL 1.16 (no running reward mean: TRL
    dropped the δ shift). 2 ln 2 when policy == reference."""
    chosen, rejected = beta * pair.chosen_logratios, beta * pair.rejected_logratios
    return -log_sigmoid(chosen) - log_sigmoid(-rejected)


def dpo_sppo_hard_loss(pair: DPOPair, beta: float) -> mx.array:
    """SPPO with hard labels: (r_c − 1/(2β))² + (r_r + 1/(2β))². Wu et al.
    2024, "Self-Play Preference Optimization for Language Model Alignment",
    eq. 4.7 with P = 1 for the winner and 0 for the loser. 1/(2β²) when
    policy == reference."""
    half = 0.5 / beta
    return (pair.chosen_logratios - half) ** 2 + (pair.rejected_logratios + half) ** 2


def _sorted_on_real(values: mx.array, valid: mx.array) -> mx.array:
    """The real pairs' ``values`` in ascending order, first; filler pairs after."""
    order = mx.argsort(mx.where(valid > 0, mx.stop_gradient(values), mx.inf))
    return values[mx.stop_gradient(order)]


def _on_real_slots(sorted_losses: mx.array, valid: mx.array) -> mx.array:
    """Losses of sorted positions 0..n−1 put back on the n real pairs' slots
    (in any order: they are summed), so the stage's masked mean holds."""
    slots = mx.argsort(1.0 - valid)  # real pairs' positions first
    return sorted_losses[mx.stop_gradient(mx.argsort(slots))]


def _aot(chosen: mx.array, rejected: mx.array, pair: DPOPair, beta, eps) -> mx.array:
    valid = pair.valid
    delta = _sorted_on_real(chosen, valid) - _sorted_on_real(rejected, valid)
    return _on_real_slots(smoothed_sigmoid(beta * delta, eps), valid)


def dpo_aot_loss(pair: DPOPair, beta: float, label_smoothing: float) -> mx.array:
    """AOT (paired): the sorted policy log-ratios log π(y_c) − log π(y_r) over
    the batch against the sorted reference ones, −log σ(β·Δ) smoothed by ε.
    Melnyk et al. 2024, "Distributional Preference Alignment of LLMs via
    Optimal Transport". It couples the pairs of one micro-batch (TRL: of one
    device's batch). ln 2 when policy == reference."""
    chosen = pair.policy_chosen - pair.policy_rejected
    rejected = pair.ref_chosen - pair.ref_rejected
    return _aot(chosen, rejected, pair, beta, label_smoothing)


def dpo_aot_unpaired_loss(
    pair: DPOPair, beta: float, label_smoothing: float
) -> mx.array:
    """AOT (unpaired): the sorted r_c over the batch against the sorted r_r,
    −log σ(β·Δ) smoothed by ε. Melnyk et al. 2024, as ``dpo_aot_loss``."""
    return _aot(pair.chosen_logratios, pair.rejected_logratios, pair, beta, label_smoothing)  # fmt: skip


def dpo_apo_zero_loss(pair: DPOPair, beta: float) -> mx.array:
    """APO-zero: (1 − σ(β r_c)) + σ(β r_r), raising the chosen and lowering the
    rejected likelihood. D'Oosterlinck et al. 2024, "Anchored Preference
    Optimization and Contrastive Revisions", eq. 7. 1 when policy == reference."""
    return (1.0 - mx.sigmoid(beta * pair.chosen_logratios)) + mx.sigmoid(
        beta * pair.rejected_logratios
    )


def dpo_apo_down_loss(pair: DPOPair, beta: float) -> mx.array:
    """APO-down: σ(β r_c) + (1 − σ(β(r_c − r_r))), lowering both likelihoods,
    the rejected more: for chosen answers worse than the model's own.
    D'Oosterlinck et al. 2024, eq. 8. 1 when policy == reference."""
    chosen, rejected = pair.chosen_logratios, pair.rejected_logratios
    return mx.sigmoid(beta * chosen) + (1.0 - mx.sigmoid(beta * (chosen - rejected)))


def dpo_discopop_loss(pair: DPOPair, beta: float, discopop_tau: float) -> mx.array:
    """DiscoPOP (log-ratio modulated): with x = β·Δs and m = σ(x/τ),
    (1 − m)·(−log σ(x)) + m·e^(−x). Chris Lu et al. 2024, "Discovering
    Preference Optimization Algorithms with and for Large Language Models",
    eq. 5. At policy == reference m = ½: ½ ln 2 + ½, and the slope in x is
    (1 − ln 2)/(4τ) − ¾: upward for τ < 0.102 (TRL's default 0.05 included),
    so descent from the reference first lowers the margin."""
    logits = beta * pair.delta_score()
    modulation = mx.sigmoid(logits / discopop_tau)
    return -log_sigmoid(logits) * (1.0 - modulation) + mx.exp(-logits) * modulation


def dpo_sft_loss(pair: DPOPair, beta: float) -> mx.array:
    """The NLL of the chosen completions alone: −Σ log π(y_c) / Σ |y_c| over the
    micro-batch's real pairs (a token mean, as TRL), the same for every
    pair. With ``sigmoid`` at weight 1 it is RPO (Pang et al. 2024,
    "Iterative Reasoning Preference Optimization"); in a weighted list, MPO.
    ``beta`` is unused."""
    del beta
    tokens = mx.maximum((pair.chosen_lengths * pair.valid).sum(), 1)
    nll = -(pair.policy_chosen * pair.valid).sum() / tokens
    return mx.broadcast_to(nll, pair.policy_chosen.shape)


def dpo_sigmoid_norm_loss(pair: DPOPair, beta: float) -> mx.array:
    """DPO on per-token mean scores: −log σ(β·(s_c/|y_c| − s_r/|y_r|)), TRL's
    length-normalised DPO (as SimPO normalises, with the reference kept).
    ln 2 when policy == reference."""
    return -log_sigmoid(beta * pair.mean_delta_score())


def wpo_weights(per_token: mx.array, log_sum_sq: mx.array, mask: mx.array) -> mx.array:
    """exp(mean_t (log π(y_t) − log Σ_v π(v)²)) per completion, no gradient, (n,).

    Zhou et al. 2024, "WPO: Enhancing RLHF with Weighted Preference
    Optimization", eq. 2, as TRL's ``use_weighting``: how likely the policy
    itself is to produce the completion, per token, against the chance that
    two of its draws agree; a pair's loss is scaled by its chosen's weight
    times its rejected's. Args (n, T), 0 off ``mask``.
    """
    lengths = mx.maximum(mask.sum(axis=-1), 1)
    aligned = ((per_token - log_sum_sq) * mask).sum(axis=-1) / lengths
    return mx.exp(mx.stop_gradient(aligned))


DPO_LOSSES: dict[str, Callable[..., mx.array]] = {
    "sigmoid": dpo_sigmoid_loss,
    "hinge": dpo_hinge_loss,
    "ipo": dpo_ipo_loss,
    "exo_pair": dpo_exo_pair_loss,
    "nca_pair": dpo_nca_pair_loss,
    "robust": dpo_robust_loss,
    "bco_pair": dpo_bco_pair_loss,
    "sppo_hard": dpo_sppo_hard_loss,
    "aot": dpo_aot_loss,
    "aot_unpaired": dpo_aot_unpaired_loss,
    "apo_zero": dpo_apo_zero_loss,
    "apo_down": dpo_apo_down_loss,
    "discopop": dpo_discopop_loss,
    "sft": dpo_sft_loss,
    "sigmoid_norm": dpo_sigmoid_norm_loss,
}

# The losses built on the f-divergence's scores s (TRL's list): the β·log Z(x)
# term of the f-DPO reparameterisation cancels only in s_c − s_r.
F_DIVERGENCE_LOSSES = frozenset(
    {"sigmoid", "sigmoid_norm", "hinge", "ipo", "exo_pair", "robust", "discopop", "sft"}
)


def dpo_loss_settings(name: str) -> tuple[str, ...]:
    """The ``LOSS_SETTINGS`` that ``DPO_LOSSES[name]`` takes, read off its
    signature: its registry line is all a new loss adds."""
    parameters = inspect.signature(DPO_LOSSES[name]).parameters
    return tuple(s for s in LOSS_SETTINGS if s in parameters)


def weighted_dpo_losses(
    pair: DPOPair,
    beta: float,
    losses: Sequence[tuple[str, float]],
    **settings: float,
) -> mx.array:
    """Σ_k w_k · loss_k(pair), (B,): TRL's ``loss_type`` list with
    ``loss_weights``. Each loss gets the ``settings`` its signature names."""
    total = None
    for name, weight in losses:
        taken = {s: settings[s] for s in dpo_loss_settings(name)}
        term = DPO_LOSSES[name](pair, beta, **taken)
        term = term if weight == 1.0 else weight * term
        total = term if total is None else total + term
    return total
