"""The DPO family (``losses/dpo.py``): TRL 1.16's fifteen loss types, f-DPO and
weighted sums. For each loss: its value at policy == reference, a worked
example (the arithmetic in the docstring), and the gradient's sign on the
chosen and the rejected log-probs (negative: descent raises that
likelihood). Agreement with TRL itself: ``tests/trl_parity/preference_losses.py``."""

import math

import mlx.core as mx
import numpy as np
import pytest

from mlx_align.config.build import build_config
from mlx_align.config.stages import CPOConfig, DPOConfig
from mlx_align.core.errors import UserError
from mlx_align.losses.dpo import (
    DPO_LOSSES,
    DPOPair,
    dpo_loss_settings,
    dpo_metrics,
    f_divergence_scores,
    weighted_dpo_losses,
)

LN2 = math.log(2.0)
REF_CHOSEN, REF_REJECTED = -2.0, -3.0


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def assert_close(actual: mx.array, expected, tol: float = 1e-5):
    np.testing.assert_allclose(np.array(actual), expected, rtol=0, atol=tol)


def pair_with(chosen_ratios, rejected_ratios, **fields) -> DPOPair:
    """Pairs whose log-ratios r_c, r_r are given: reference log-probs −2 and −3."""
    r_c, r_r = mx.array(chosen_ratios), mx.array(rejected_ratios)
    ref_c, ref_r = mx.full(r_c.shape, REF_CHOSEN), mx.full(r_c.shape, REF_REJECTED)
    return DPOPair.of(ref_c + r_c, ref_r + r_r, ref_c, ref_r, **fields)


def loss_of(name: str, pair: DPOPair, beta: float, **settings) -> mx.array:
    return DPO_LOSSES[name](pair, beta, **settings)


def gradients(name: str, beta: float, r_c=0.0, r_r=0.0, **settings):
    """d loss / d log π(y_c), d loss / d log π(y_r) for one pair."""
    ref_c, ref_r = mx.array([REF_CHOSEN]), mx.array([REF_REJECTED])

    def total(pc, pr):
        return loss_of(name, DPOPair.of(pc, pr, ref_c, ref_r), beta, **settings).sum()

    grad_c, grad_r = mx.grad(total, argnums=(0, 1))(ref_c + r_c, ref_r + r_r)
    return grad_c.item(), grad_r.item()


# TRL 1.16's names, in its order (dpo_trainer.py's error message).
TRL_LOSS_TYPES = [
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair",
    "sppo_hard", "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop",
    "sft", "sigmoid_norm",
]  # fmt: skip

# Each loss at policy == reference (r_c = r_r = 0), worked out in its test below.
AT_REFERENCE = {
    ("sigmoid", 0.1, ()): LN2,
    ("hinge", 0.1, ()): 1.0,
    ("ipo", 0.5, ()): 1.0,  # (0 − 1/(2·0.5))²
    ("exo_pair", 1.0, (("label_smoothing", 0.1),)): 0.5108256,
    ("nca_pair", 0.1, ()): 2 * LN2,
    ("robust", 0.1, (("label_smoothing", 0.2),)): LN2,
    ("bco_pair", 0.1, ()): 2 * LN2,
    ("sppo_hard", 0.5, ()): 2.0,  # 1/(2β²)
    ("aot", 0.1, (("label_smoothing", 0.0),)): LN2,
    ("aot_unpaired", 0.1, (("label_smoothing", 0.0),)): LN2,
    ("apo_zero", 0.1, ()): 1.0,
    ("apo_down", 0.1, ()): 1.0,
    ("discopop", 0.1, (("discopop_tau", 0.05),)): 0.5 * LN2 + 0.5,
    ("sigmoid_norm", 0.1, ()): LN2,
}


def test_the_registry_has_trls_fifteen_loss_types_and_their_settings():
    assert list(DPO_LOSSES) == TRL_LOSS_TYPES
    smoothed = [n for n in DPO_LOSSES if "label_smoothing" in dpo_loss_settings(n)]
    assert smoothed == ["exo_pair", "robust", "aot", "aot_unpaired"]
    assert [n for n in DPO_LOSSES if dpo_loss_settings(n) == ("discopop_tau",)] == [
        "discopop"
    ]
    assert {name for name, _, _ in AT_REFERENCE} | {"sft"} == set(DPO_LOSSES)


@pytest.mark.parametrize(("name", "beta", "settings"), list(AT_REFERENCE))
def test_value_at_policy_equals_reference(name, beta, settings):
    """Three pairs, all at r_c = r_r = 0 (lengths 1): every pair's loss is the
    constant worked out in the loss's own test."""
    pair = pair_with([0.0] * 3, [0.0] * 3)
    losses = loss_of(name, pair, beta, **dict(settings))
    assert_close(losses, [AT_REFERENCE[name, beta, settings]] * 3)


@pytest.mark.parametrize(
    ("name", "settings", "at"),
    [
        ("sigmoid", {}, (0.0, 0.0)),
        ("hinge", {}, (0.0, 0.0)),
        ("ipo", {}, (0.0, 0.0)),
        ("exo_pair", {"label_smoothing": 0.1}, (0.0, 0.0)),
        ("nca_pair", {}, (0.0, 0.0)),
        ("robust", {"label_smoothing": 0.2}, (0.0, 0.0)),
        ("bco_pair", {}, (0.0, 0.0)),
        ("sppo_hard", {}, (0.0, 0.0)),
        ("aot", {"label_smoothing": 0.0}, (0.0, 0.0)),
        ("aot_unpaired", {"label_smoothing": 0.0}, (0.0, 0.0)),
        ("apo_zero", {}, (0.0, 0.0)),
        ("discopop", {"discopop_tau": 0.05}, (10.0, 0.0)),  # β·Δs = 1
        ("sigmoid_norm", {}, (0.0, 0.0)),
    ],
)
def test_gradient_raises_chosen_and_lowers_rejected(name, settings, at):
    grad_chosen, grad_rejected = gradients(name, 0.1, *at, **settings)
    assert grad_chosen < -1e-4
    assert grad_rejected > 1e-4


# --- each loss's worked example ---------------------------------------------


def test_sigmoid_hand_value_and_metrics():
    """β = 0.5, r_c = 1, r_r = −1: h = 2, β·h = 1, loss = −log σ(1) = 0.313262.
    Second pair r_c = r_r = 0: ln 2, rewards 0 and 0, accuracy 0 (strict >).
    rewards/chosen = β·r_c = [0.5, 0], rewards/rejected = [−0.5, 0],
    margins [1, 0]; logps/* are the policy's: −2 + r_c and −3 + r_r."""
    pair = pair_with([1.0, 0.0], [-1.0, 0.0])
    assert_close(loss_of("sigmoid", pair, 0.5), [0.313262, LN2])
    metrics = dpo_metrics(pair, 0.5)
    assert_close(metrics["rewards/chosen"], [0.5, 0.0])
    assert_close(metrics["rewards/rejected"], [-0.5, 0.0])
    assert_close(metrics["rewards/margins"], [1.0, 0.0])
    assert_close(metrics["rewards/accuracies"], [1.0, 0.0])
    assert_close(metrics["logps/chosen"], [-1.0, -2.0])
    assert_close(metrics["logps/rejected"], [-4.0, -3.0])


def test_sigmoid_gradient_by_hand():
    """d/d pc of −log σ(β·h) = −β(1 − σ(βh)); at h = 0, β = 0.1: −0.05; d/d pr = +0.05."""
    assert gradients("sigmoid", 0.1) == pytest.approx((-0.05, 0.05), abs=1e-6)


def test_hinge_kink():
    """β = 1: h = 1 -> relu(1 − 1) = 0; h = 0.5 -> 0.5; h = 2 -> 0. Gradient on
    pc: −β = −1 before the kink (h = 0.5), 0 beyond it (h = 2)."""
    pair = pair_with([1.0, 0.5, 2.0], [0.0] * 3)
    assert_close(loss_of("hinge", pair, 1.0), [0.0, 0.5, 0.0])
    assert gradients("hinge", 1.0, r_c=0.5)[0] == pytest.approx(-1.0)
    assert gradients("hinge", 1.0, r_c=2.0)[0] == pytest.approx(0.0)


def test_ipo_target_and_length_normalisation():
    """β = 0.5, target 1/(2β) = 1. Chosen length 2, rejected length 4.
    Pair 1: r_c = 2 -> per token 1; r_r = 0; h̄ = 1 -> loss (1 − 1)² = 0.
    Pair 2: r_c = 0 -> h̄ = 0 -> (0 − 1)² = 1. Without the division pair 1
    would give h = 2 and loss 1. A filler pair (lengths 0) stays finite."""
    lengths = dict(chosen_lengths=mx.array([2.0, 2.0, 0.0]))
    lengths["rejected_lengths"] = mx.array([4.0, 4.0, 0.0])
    pair = pair_with([2.0, 0.0, 0.0], [0.0, 0.0, 0.0], **lengths)
    assert_close(loss_of("ipo", pair, 0.5), [0.0, 1.0, 1.0])


def test_exo_pair_hand_value():
    """β = 0.5, h = 2 (x = 1), ε = 0.1: q_w = σ(1) = 0.731059, log q_w = −0.313262,
    q_l = 0.268941, log q_l = −1.313262;
    q_w·(log q_w − log 0.9) + q_l·(log q_l − log 0.1)
    = 0.731059·(−0.207901) + 0.268941·0.989323 = −0.151988 + 0.266070 = 0.114082.
    At h = 0: ½(log ½ − log 0.9) + ½(log ½ − log 0.1) = 0.510826."""
    pair = pair_with([1.0], [-1.0])
    assert_close(loss_of("exo_pair", pair, 0.5, label_smoothing=0.1), [0.114082])


def test_nca_pair_hand_value():
    """β = 1, r_c = 1, r_r = −1: −log σ(1) − ½ log σ(−1) − ½ log σ(1)
    = 0.313262 + 0.656631 + 0.156631 = 1.126524. At the reference:
    ln 2 + ½ ln 2 + ½ ln 2 = 2 ln 2."""
    assert_close(loss_of("nca_pair", pair_with([1.0], [-1.0]), 1.0), [1.126524])


def test_robust_with_no_noise_is_dpo_and_its_hand_value():
    """ε = 0: [−1·log σ(βh) + 0] / 1 = DPO. β·h = 1, ε = 0.1:
    [−0.9·log σ(1) + 0.1·log σ(−1)] / 0.8 = [0.281936 − 0.131326] / 0.8 = 0.188262."""
    pair = pair_with([-1.0, 0.0, 2.5], [0.0] * 3)
    assert_close(
        loss_of("robust", pair, 0.2, label_smoothing=0.0),
        loss_of("sigmoid", pair, 0.2).tolist(),
    )
    one = pair_with([1.0], [0.0])
    assert_close(loss_of("robust", one, 1.0, label_smoothing=0.1), [0.188262])
    with pytest.raises(ValueError, match="label_smoothing"):
        loss_of("robust", one, 1.0, label_smoothing=0.5)


def test_bco_pair_hand_value():
    """β = 1, r_c = 1, r_r = −1: −log σ(1) − log σ(1) = 2·0.313262 = 0.626523.
    Gradient at the reference, β = 1: chosen −(1 − ½) = −0.5, rejected +0.5."""
    assert_close(loss_of("bco_pair", pair_with([1.0], [-1.0]), 1.0), [0.626523])
    assert gradients("bco_pair", 1.0) == pytest.approx((-0.5, 0.5), abs=1e-6)


def test_sppo_hard_hand_value():
    """β = 0.5, so 1/(2β) = 1. r_c = 1, r_r = −1: (1 − 1)² + (−1 + 1)² = 0;
    r_c = 0.5, r_r = −1: (0.5 − 1)² = 0.25. Gradient at the reference:
    chosen 2(0 − 1) = −2, rejected 2(0 + 1) = +2."""
    pair = pair_with([1.0, 0.5], [-1.0, -1.0])
    assert_close(loss_of("sppo_hard", pair, 0.5), [0.0, 0.25])
    assert gradients("sppo_hard", 0.5) == pytest.approx((-2.0, 2.0), abs=1e-6)


def test_aot_sorts_the_batch_and_skips_filler_pairs():
    """β = 1, ε = 0. The policy's log π(y_c) − log π(y_r) are [3, 1, 2] (pc =
    [0, −2, −1], pr = −3), the reference's rc − rr are [0, 2, 1] (rc = [−3, −1,
    −2], rr = −3). Sorted: [1, 2, 3] − [0, 1, 2] = [1, 1, 1]: every loss is
    −log σ(1) = 0.313262 (unsorted the Δs would be [3, −1, 1]). A filler pair
    placed second (valid 0, log-probs 0) sorts last and takes no real
    pair's slot: the real slots hold the same three losses."""
    policy_rejected = mx.full((3,), -3.0)
    pair = DPOPair.of(
        mx.array([0.0, -2.0, -1.0]),
        policy_rejected,
        mx.array([-3.0, -1.0, -2.0]),
        policy_rejected,
    )
    assert_close(loss_of("aot", pair, 1.0, label_smoothing=0.0), [0.313262] * 3)
    padded = DPOPair.of(
        *(mx.array([a[0].item(), 0.0, a[1].item(), a[2].item()]) for a in pair[:4]),
        valid=mx.array([1.0, 0.0, 1.0, 1.0]),
    )
    losses = loss_of("aot", padded, 1.0, label_smoothing=0.0)
    assert_close(losses[mx.array([0, 2, 3])], [0.313262] * 3)


def test_aot_unpaired_hand_value():
    """β = 1, ε = 0. r_c = [0.5, −1, 2] sorts to [−1, 0.5, 2], r_r = [0, 1, −2]
    to [−2, 0, 1]; Δ = [1, 0.5, 1]; the losses −log σ(Δ) are 0.313262,
    0.474077 and 0.313262 (in sorted order; their sum, 1.100600, is what
    the mean reads)."""
    pair = pair_with([0.5, -1.0, 2.0], [0.0, 1.0, -2.0])
    losses = loss_of("aot_unpaired", pair, 1.0, label_smoothing=0.0)
    assert_close(losses, [0.313262, 0.474077, 0.313262])


def test_apo_zero_hand_value():
    """β = 1, r_c = 1, r_r = −1: (1 − σ(1)) + σ(−1) = 2·0.268941 = 0.537883."""
    assert_close(loss_of("apo_zero", pair_with([1.0], [-1.0]), 1.0), [0.537883])


def test_apo_down_lowers_both_likelihoods():
    """β = 1, r_c = 0, r_r = −2: σ(0) + 1 − σ(2) = 0.5 + 0.119203 = 0.619203.
    Gradient there: chosen σ′(0) − σ′(2) = 0.25 − 0.104994 = +0.145006 and
    rejected +σ′(2) = +0.104994: both likelihoods go down, as the APO paper
    intends for chosen answers worse than the model's own."""
    assert_close(loss_of("apo_down", pair_with([0.0], [-2.0]), 1.0), [0.619203])
    grad_chosen, grad_rejected = gradients("apo_down", 1.0, r_c=0.0, r_r=-2.0)
    assert grad_chosen == pytest.approx(0.145006, abs=1e-5)
    assert grad_rejected == pytest.approx(0.104994, abs=1e-5)


def test_discopop_hand_value_and_its_non_convex_start():
    """β = 1, h = 0.1, τ = 0.05: x = 0.1, m = σ(2) = 0.880797;
    (1 − m)·(−log σ(0.1)) + m·e^(−0.1) = 0.119203·0.644397 + 0.880797·0.904837
    = 0.076813 + 0.796979 = 0.873792. At x = 0 the slope in x is
    −5·ln 2 − 0.25 + 5 − 0.5 = +0.784 (m′ = σ′(0)/τ = 5): DiscoPOP is
    non-convex there (the paper's figure 3), so the sign test above reads it
    at x = 1, where the slope is −e^(−1)."""
    pair = pair_with([0.1], [0.0])
    assert_close(loss_of("discopop", pair, 1.0, discopop_tau=0.05), [0.873792])
    grad_chosen, _ = gradients("discopop", 1.0, discopop_tau=0.05)
    assert grad_chosen == pytest.approx(0.784264, abs=1e-4)


def test_sft_is_the_chosen_token_mean_nll_over_real_pairs():
    """pc = [−4, −2, 0 (filler)], |y_c| = [2, 2, 0]: −(−4 − 2) / (2 + 2) = 1.5 on
    every pair; gradient −1/4 on each real pair's pc, 0 on every pr."""
    lengths = mx.array([2.0, 2.0, 0.0])
    valid = mx.array([1.0, 1.0, 0.0])
    rejected = mx.array([-5.0, -5.0, 0.0])

    def total(pc, pr):
        pair = DPOPair.of(pc, pr, pc, pr, lengths, lengths, valid)
        return loss_of("sft", pair, 0.1)

    pc = mx.array([-4.0, -2.0, 0.0])
    assert_close(total(pc, rejected), [1.5] * 3)
    grad_c, grad_r = mx.grad(lambda c, r: total(c, r)[0], argnums=(0, 1))(pc, rejected)
    assert_close(grad_c, [-0.25, -0.25, 0.0])
    assert_close(grad_r, [0.0] * 3)


def test_sigmoid_norm_hand_value():
    """β = 1, r_c = 2 over 2 tokens (1 per token), r_r = −2 over 4 (−0.5):
    −log σ(1 − (−0.5)) = −log σ(1.5) = 0.201413."""
    pair = pair_with(
        [2.0], [-2.0], chosen_lengths=mx.array([2.0]), rejected_lengths=mx.array([4.0])
    )
    assert_close(loss_of("sigmoid_norm", pair, 1.0), [0.201413])


# --- f-DPO and weighted sums -------------------------------------------------


def test_f_divergence_scores_by_hand():
    """f′(t) at t = π/π_ref: forward KL 1 − 1/t at t = 2: 0.5; JS log(2t/(t+1))
    at t = 2: log(4/3) = 0.287682; α-divergence (t^(α−1) − 1)/(α − 1) at
    t = 4, α = ½: (½ − 1)/(−½) = 1; α = 1 is the reverse KL (log t). Every
    score is 0 at t = 1, so the sigmoid loss is ln 2 at the reference."""
    ln2, ln4 = mx.array([LN2]), mx.array([2 * LN2])
    assert_close(f_divergence_scores(ln2, "forward_kl", 0.5), [0.5])
    assert_close(f_divergence_scores(ln2, "js_divergence", 0.5), [0.287682])
    assert_close(f_divergence_scores(ln4, "alpha_divergence", 0.5), [1.0])
    assert_close(f_divergence_scores(ln4, "alpha_divergence", 1.0), [2 * LN2])
    for divergence in ("forward_kl", "js_divergence", "alpha_divergence"):
        at_reference = pair_with([0.0], [0.0], divergence=divergence)
        assert_close(loss_of("sigmoid", at_reference, 0.1), [LN2])
    forward = pair_with([LN2], [0.0], divergence="forward_kl")  # Δs = 0.5
    assert_close(loss_of("sigmoid", forward, 1.0), [-math.log(sigmoid(0.5))])


def test_weighted_losses_sum_each_with_its_weight():
    """At the reference: 0.8·ln 2 (sigmoid) + 0.2·2 ln 2 (bco_pair) + 1.0·NLL
    (sft; pc = −2 over 1 token: 2) = 1.2·ln 2 + 2 = 2.831777."""
    pair = pair_with([0.0], [0.0])
    terms = [("sigmoid", 0.8), ("bco_pair", 0.2), ("sft", 1.0)]
    assert_close(weighted_dpo_losses(pair, 0.1, terms), [1.2 * LN2 + 2.0])


# --- the settings, checked before anything loads -----------------------------


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            {"loss": ("sigmoid", "sft"), "loss_weights": "1"},
            "--loss-weights: 1 weight for 2 losses",
        ),
        (
            {"label_smoothing": 0.1},
            "--label-smoothing: the 'sigmoid' loss does not use it",
        ),
        ({"discopop_tau": 0.1}, "--discopop-tau: the 'sigmoid' loss does not use it"),
        ({"loss": ("exo_pair",)}, "exo_pair needs ε > 0"),
        (
            {"loss": ("bco_pair",), "f_divergence_type": "js_divergence"},
            "js_divergence works only with .* not bco_pair",
        ),
        ({"f_alpha_divergence_coef": 0.3}, "only --f-divergence-type alpha_div"),
        ({"ld_alpha": 0.5, "loss": ("sigmoid", "sft")}, "--ld-alpha: the sft term"),
        ({"ld_alpha": 0.5, "sft_weight": 1.0}, "--ld-alpha: the sft term"),
        ({"ld_alpha": 1.5}, "--ld-alpha: must be in \\[0, 1\\]"),
        ({"loss": ("aot",), "use_weighting": True}, "--use-weighting: aot sorts"),
    ],
)
def test_loss_settings_that_clash_are_refused(flags, message):
    with pytest.raises(UserError, match=message):
        build_config(DPOConfig, {"model": "m", "data": "d", **flags}, None)


def test_several_losses_from_a_config_file(tmp_path):
    """TRL's list-valued loss_type reads from YAML as a list (or one name)."""
    path = tmp_path / "dpo.yaml"
    path.write_text("loss: [sigmoid, sft]\nloss_weights: '1.0,0.5'\n")
    config = build_config(DPOConfig, {"model": "m", "data": "d"}, str(path))
    assert config.loss == ("sigmoid", "sft")
    path.write_text("loss: []\n")
    with pytest.raises(UserError, match="--loss: at least one loss type"):
        build_config(DPOConfig, {"model": "m", "data": "d"}, str(path))
    path.write_text("loss: [sigmoid, nope]\n")
    with pytest.raises(UserError, match="'nope' is not one of sigmoid, hinge"):
        build_config(DPOConfig, {"model": "m", "data": "d"}, str(path))


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"loss": "hinge", "label_smoothing": 0.1}, "--label-smoothing: the 'hinge'"),
        ({"loss": "sigmoid", "simpo_gamma": 1.0}, "--simpo-gamma: the 'sigmoid'"),
        ({"loss": "alphapo", "cpo_alpha": 0.5}, "--cpo-alpha: alphapo has no NLL"),
    ],
)
def test_cpo_settings_that_clash_are_refused(flags, message):
    with pytest.raises(UserError, match=message):
        build_config(CPOConfig, {"model": "m", "data": "d", **flags}, None)


# --- WPO -------------------------------------------------------------------------


def test_wpo_weights_by_hand():
    """Two tokens drawn from p = (0.75, 0.25): log Σ p² = log 0.625 = −0.470004
    at both positions. Completion (token 0, token 1): mean log π = (log 0.75 +
    log 0.25)/2 = −0.836988; weight exp(−0.836988 + 0.470004) = 0.692820. A
    uniform 4-way distribution: log Σ p² = log ¼ = −1.386294."""
    from mlx_align.losses.dpo import wpo_weights
    from mlx_align.model.logprobs import distribution_stat, log_sum_sq_stat

    logits = mx.array([[math.log(3.0), 0.0], [0.0, 0.0]])
    sum_sq = distribution_stat(logits, log_sum_sq_stat)
    assert_close(sum_sq, [math.log(0.625), math.log(0.5)])
    uniform = distribution_stat(mx.zeros((1, 4)), log_sum_sq_stat)
    assert_close(uniform, [-1.386294])
    per_token = mx.array([[math.log(0.75), math.log(0.25), 0.0]])
    log_sum_sq = mx.array([[math.log(0.625), math.log(0.625), 0.0]])
    mask = mx.array([[1.0, 1.0, 0.0]])
    assert_close(wpo_weights(per_token, log_sum_sq, mask), [0.692820])
