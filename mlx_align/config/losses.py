"""The DPO-family loss settings, shared by ``dpo`` and ``online-dpo``
(``stages.DPOConfig``, ``online.OnlineDPOConfig``)."""

from __future__ import annotations

from dataclasses import dataclass

from mlx_align.config.settings import in_range, positive, setting


@dataclass
class DPOLossSettings:
    """The DPO-family loss, as TRL 1.16's ``DPOConfig`` names it (DPO, online DPO)."""

    loss: tuple = setting(
        ("sigmoid",),
        "TRL's loss_type: sigmoid (DPO), hinge, ipo, exo_pair, nca_pair, robust, "
        "bco_pair, sppo_hard, aot, aot_unpaired, apo_zero, apo_down, discopop, sft, "
        "sigmoid_norm. Repeat it to sum several, weighted by --loss-weights (MPO).",
        choices="mlx_align.losses.dpo:DPO_LOSSES",
        multiple=True,
    )
    loss_weights: str = setting(
        "", "Comma-separated weights, one per --loss (default: all 1)."
    )
    label_smoothing: float = setting(
        0.0,
        "ε: assumed fraction of flipped labels (robust, aot, aot_unpaired) or the "
        "target's rejected share (exo_pair, which needs ε > 0; the paper uses 1e-3).",
        check=in_range(0, 0.5, open_high=True),
    )
    discopop_tau: float = setting(
        0.05, "τ: temperature of the discopop loss's modulation.", check=positive
    )
    f_divergence_type: str = setting(
        "reverse_kl",
        "The divergence to the reference (f-DPO): reverse_kl (DPO's), forward_kl, "
        "js_divergence or alpha_divergence; only with the losses built on "
        "s_c − s_r (sigmoid, sigmoid_norm, hinge, ipo, exo_pair, robust, discopop, sft).",
        choices="mlx_align.losses.dpo:F_DIVERGENCES",
    )
    f_alpha_divergence_coef: float = setting(
        0.5, "α of --f-divergence-type alpha_divergence.", check=positive
    )
    use_weighting: bool = setting(
        False,
        "WPO: scale each pair's loss by the policy's own per-token probability of "
        "its chosen and rejected completions (against two draws agreeing).",
    )
    ld_alpha: float = setting(
        1.0,
        "LD-DPO's α: of each pair, the tokens past the shorter completion's length "
        "count α times in both log-probs (1: plain sums; TRL's None).",
        check=in_range(0, 1),
    )
