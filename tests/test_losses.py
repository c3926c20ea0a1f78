"""Loss tests: each docstring works the expected value out by hand."""

import math

import mlx.core as mx
import numpy as np
import pytest

from mlx_align.losses.cpo import alphapo_rewards, cpo_loss
from mlx_align.losses.preference import (
    bt_loss,
    grpo_loss,
    k3_kl,
    kto_loss,
    orpo_loss,
)

LN2 = math.log(2.0)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def assert_close(actual: mx.array, expected, tol: float = 1e-5):
    np.testing.assert_allclose(np.array(actual), expected, rtol=0, atol=tol)


# --- Bradley-Terry -------------------------------------------------------------


def test_bt_loss_with_margin():
    """r_w = [2, 0], r_l = [1, 0], m = [0.5, 0]:
    loss = [−log σ(2 − 1 − 0.5), −log σ(0)] = [−log σ(0.5), ln 2];
    accuracy = [1, 0] (0 > 0 is false); margin = r_w − r_l = [1, 0]."""
    losses, metrics = bt_loss(
        mx.array([2.0, 0.0]), mx.array([1.0, 0.0]), margin=mx.array([0.5, 0.0])
    )
    assert_close(losses, [-math.log(sigmoid(0.5)), LN2])
    assert_close(metrics["accuracy"], [1.0, 0.0])
    assert_close(metrics["margin"], [1.0, 0.0])


def test_bt_loss_without_margin():
    """r_w − r_l = 1: loss = −log σ(1) = log(1 + e^−1) = 0.313262."""
    losses, _ = bt_loss(mx.array([2.0]), mx.array([1.0]))
    assert_close(losses, [math.log1p(math.exp(-1.0))])


# --- ORPO ----------------------------------------------------------------------


def test_orpo_equal_inputs_is_nll_plus_beta_ln2():
    """Chosen and rejected mean log-probs equal: log-odds 0,
    loss = NLL − β·log σ(0) = 1.2 + 0.1·ln 2 = 1.269315."""
    losses, metrics = orpo_loss(
        mx.array([-0.5]), mx.array([-0.5]), mx.array([1.2]), beta=0.1
    )
    assert_close(losses, [1.2 + 0.1 * LN2])
    assert_close(metrics["log_odds_chosen"], [0.0])
    assert_close(metrics["log_odds_ratio"], [-LN2])


def test_orpo_hand_value():
    """p_c = 0.5: odds 1, log-odds 0. p_r = 0.2: odds 0.25, log-odds ln 0.25.
    log odds ratio = 0 − ln 0.25 = ln 4; σ(ln 4) = 4/5.
    loss = NLL − β·log(0.8) = 2 + 0.5·0.223144 = 2.111572.
    rewards/chosen = β·log 0.5, rewards/rejected = β·log 0.2."""
    losses, metrics = orpo_loss(
        mx.array([math.log(0.5)]), mx.array([math.log(0.2)]), mx.array([2.0]), beta=0.5
    )
    assert_close(losses, [2.0 - 0.5 * math.log(0.8)])
    assert_close(metrics["log_odds_chosen"], [math.log(4.0)])
    assert_close(metrics["log_odds_ratio"], [math.log(0.8)])
    assert_close(metrics["rewards/chosen"], [0.5 * math.log(0.5)])
    assert_close(metrics["rewards/rejected"], [0.5 * math.log(0.2)])
    assert_close(metrics["rewards/accuracies"], [1.0])


def test_orpo_is_finite_near_probability_one():
    """mean log-prob −1e-8 (p ≈ 1): log(1 − p) ≈ log(1e-8) = −18.42, finite;
    log1p(−exp(x)) would round to log(0) in float32."""
    losses, metrics = orpo_loss(
        mx.array([-1e-8]), mx.array([-1.0]), mx.array([0.0]), 1.0
    )
    assert math.isfinite(losses.item())
    # log-odds chosen: −1e-8 − log(1e-8) ≈ 18.42; rejected: −1 − log(1 − e^−1) = −0.5413
    assert_close(metrics["log_odds_chosen"], [18.4207 + 0.5413], tol=1e-3)


# --- KTO -----------------------------------------------------------------------


def test_kto_mixed_labels_hand_values():
    """β = 1, z₀ = 0.5, λ_D = 1, λ_U = 2. r = policy − ref = [1, −1].
    desirable (r = 1):    1·(1 − σ(1 − 0.5)) = 1 − σ(0.5) = 0.377541
    undesirable (r = −1): 2·(1 − σ(0.5 + 1)) = 2·(1 − σ(1.5)) = 0.364851
    metrics: rewards/chosen_sum = [1, 0], rewards/rejected_sum = [0, −1]."""
    losses, metrics = kto_loss(
        mx.array([-1.0, -2.0]),
        mx.array([-2.0, -1.0]),
        labels=mx.array([True, False]),
        kl=0.5,
        beta=1.0,
        desirable_weight=1.0,
        undesirable_weight=2.0,
    )
    assert_close(losses, [1 - sigmoid(0.5), 2 * (1 - sigmoid(1.5))])
    assert_close(metrics["rewards/chosen_sum"], [1.0, 0.0])
    assert_close(metrics["rewards/rejected_sum"], [0.0, -1.0])
    assert_close(metrics["count/chosen"], [1.0, 0.0])
    assert_close(metrics["count/rejected"], [0.0, 1.0])
    assert_close(metrics["kl"], [0.5, 0.5])


def test_kto_negative_kl_is_clamped_to_zero():
    """z₀ = −3 is clamped to 0: desirable r = 1 -> 1 − σ(1) = 0.268941
    (unclamped it would be 1 − σ(4) = 0.017986)."""
    losses, metrics = kto_loss(
        mx.array([-1.0]),
        mx.array([-2.0]),
        mx.array([True]),
        kl=mx.array(-3.0),
        beta=1.0,
    )
    assert_close(losses, [1 - sigmoid(1.0)])
    assert_close(metrics["kl"], [0.0])


def test_kto_kl_gets_no_gradient():
    """z₀ is detached: d loss / d z₀ = 0 although the loss depends on its value."""
    policy, ref, labels = (
        mx.array([-1.0, -2.0]),
        mx.array([-2.0, -1.0]),
        mx.array([1, 0]),
    )
    grad = mx.grad(lambda kl: kto_loss(policy, ref, labels, kl, beta=1.0)[0].sum())(
        mx.array(0.5)
    )
    assert grad.item() == 0.0


# --- GRPO ----------------------------------------------------------------------


def test_k3_kl_zero_at_reference_and_hand_values():
    """d = ref − logp. d = 0 -> e⁰ − 0 − 1 = 0.
    logp = 0, ref = ln 2: d = ln 2 -> 2 − ln 2 − 1 = 0.306853.
    logp = ln 2, ref = 0: d = −ln 2 -> 0.5 + ln 2 − 1 = 0.193147."""
    kl = k3_kl(mx.array([[-1.3, 0.0, LN2]]), mx.array([[-1.3, LN2, 0.0]]))
    assert_close(kl, [[0.0, 1.0 - LN2, LN2 - 0.5]])


def test_grpo_ratio_one_is_minus_mean_advantage():
    """old_logps = logps: ratio 1, per-token loss −A on every active token.
    A = [1, −0.5], lengths 3 and 1: per-sequence means [−1, 0.5],
    grpo loss = (−1 + 0.5)/2 = −0.25 = −mean(A). Nothing is clipped."""
    logps = mx.array([[-1.0, -2.0, -0.5], [-0.7, 9.0, 9.0]])
    mask = mx.array([[1, 1, 1], [1, 0, 0]])
    loss, metrics = grpo_loss(
        logps, logps, None, mx.array([1.0, -0.5]), mask, loss_type="grpo"
    )
    assert_close(loss, -0.25)
    assert_close(metrics["clip_ratio/region_mean"], 0.0)
    assert "kl" not in metrics


def test_grpo_single_iteration_is_plain_policy_gradient():
    """μ = 1: pass old_logps = logps. They are detached, so the ratio is 1 in
    value but d ratio / d logp = 1: gradient −A / (tokens in the sequence).
    A = [2, −1], lengths 2 and 1, grpo mean over B = 2:
    row 0: −2 / 2 / 2 = −0.5 per token; row 1: +1 / 1 / 2 = 0.5."""
    mask = mx.array([[1, 1], [1, 0]])
    advantages = mx.array([2.0, -1.0])

    def loss_of(x):
        return grpo_loss(x, x, None, advantages, mask, loss_type="grpo")[0]

    assert_close(
        mx.grad(loss_of)(mx.array([[-1.0, -2.0], [-0.5, -3.0]])),
        [[-0.5, -0.5], [0.5, 0.0]],
    )


def test_grpo_clip_removes_gradient_and_is_counted():
    """ε = 0.2, A = 1, two tokens: ratio = [e^{ln 1.5}, 1] = [1.5, 1].
    Token 0: min(1.5·1, clip(1.5)·1) = 1.2, a constant -> gradient 0, clipped.
    Token 1: ratio·A, d/d logp (−ratio·A / 2 tokens) = −0.5.
    loss = −(1.2 + 1)/2 = −1.1; clip_ratio = 1/2, all of it high-side."""
    logps = mx.array([[math.log(1.5), 0.0]])
    old_logps = mx.zeros((1, 2))
    advantages, mask = mx.array([1.0]), mx.ones((1, 2))

    def loss_of(x):
        return grpo_loss(x, old_logps, None, advantages, mask, epsilon=0.2)[0]

    loss, metrics = grpo_loss(logps, old_logps, None, advantages, mask, epsilon=0.2)
    assert_close(loss, -1.1)
    assert_close(mx.grad(loss_of)(logps), [[0.0, -0.5]])
    assert_close(metrics["clip_ratio/region_mean"], 0.5)
    assert_close(metrics["clip_ratio/high_mean"], 0.5)
    assert_close(metrics["clip_ratio/low_mean"], 0.0)


def test_grpo_clip_binds_only_on_the_side_the_advantage_pushes():
    """ε = 0.2, B = 4 sequences of one token, loss = mean over B.
    ratio 0.5, A = −1: min(−0.5, −0.8) = −0.8, constant -> gradient 0, clipped.
    ratio 0.5, A = +1: min(0.5, 0.8) = 0.5 = ratio·A -> gradient −0.5/4 = −0.125.
    ratio 1.5, A = −1: min(−1.5, −1.2) = −1.5 = ratio·A -> gradient +1.5/4 = 0.375.
    ratio 1.5, A = +1: min(1.5, 1.2) = 1.2, constant -> gradient 0, clipped.
    clip_ratio = 2/4, low 1/4, high 1/4."""
    logps = mx.log(mx.array([[0.5], [0.5], [1.5], [1.5]]))
    old_logps, mask = mx.zeros((4, 1)), mx.ones((4, 1))
    advantages = mx.array([-1.0, 1.0, -1.0, 1.0])

    def loss_of(x):
        return grpo_loss(x, old_logps, None, advantages, mask)[0]

    _, metrics = grpo_loss(logps, old_logps, None, advantages, mask)
    assert_close(mx.grad(loss_of)(logps), [[0.0], [-0.125], [0.375], [0.0]])
    assert_close(metrics["clip_ratio/region_mean"], 0.5)
    assert_close(metrics["clip_ratio/low_mean"], 0.25)
    assert_close(metrics["clip_ratio/high_mean"], 0.25)


def test_grpo_epsilon_high_widens_the_upper_clip():
    """ratio 1.25, A = 1: clipped at 1 + ε = 1.2, but not at 1 + ε_high = 1.28,
    so with ε_high the gradient is −ratio·A = −1.25 and clip_ratio 0."""
    logps, old_logps = mx.array([[math.log(1.25)]]), mx.zeros((1, 1))
    advantages, mask = mx.array([1.0]), mx.ones((1, 1))

    def loss_of(x):
        return grpo_loss(x, old_logps, None, advantages, mask, epsilon_high=0.28)[0]

    _, metrics = grpo_loss(logps, old_logps, None, advantages, mask, epsilon_high=0.28)
    assert_close(mx.grad(loss_of)(logps), [[-1.25]])
    assert_close(metrics["clip_ratio/region_mean"], 0.0)
    _, symmetric = grpo_loss(logps, old_logps, None, advantages, mask)
    assert_close(symmetric["clip_ratio/region_mean"], 1.0)


def test_grpo_kl_penalty_hand_value():
    """A = 0, ratio 1: the surrogate is 0, only β·k3 remains.
    logp = 0, ref = ln 2: k3 = 1 − ln 2 = 0.306853; β = 0.1 -> loss 0.0306853.
    The masked padding token (k3 of 5 vs 0 would be e⁵ − 6) is ignored."""
    logps = mx.array([[0.0, 0.0]])
    ref_logps = mx.array([[LN2, 5.0]])
    mask = mx.array([[1, 0]])
    loss, metrics = grpo_loss(logps, logps, ref_logps, mx.array([0.0]), mask, beta=0.1)
    assert_close(loss, 0.1 * (1 - LN2))
    assert_close(metrics["kl"], 1 - LN2)


@pytest.mark.parametrize(
    ("loss_type", "max_completion_tokens", "expected"),
    [
        ("grpo", None, (-1.0 + -2.0) / 2),  # mean of per-sequence means
        ("bnpo", None, (-3.0 - 2.0) / 4),  # token sum / 4 active tokens
        ("dapo", None, (-3.0 - 2.0) / 4),  # = bnpo in one process
        ("luspo", None, (-3.0 - 2.0) / 2),  # per-sequence sums, then their mean
        ("sapo", None, (-2.0 + -4.0) / 2),  # gate σ(0)·4/τ = 2 (τ = 1): −2A, seq means
        ("dr_grpo", None, (-3.0 - 2.0) / (2 * 3)),  # / (B × T)
        ("dr_grpo", 5, (-3.0 - 2.0) / (2 * 5)),  # / (B × max tokens)
    ],
)
def test_grpo_aggregations_with_unequal_lengths(
    loss_type, max_completion_tokens, expected
):
    """Ratio 1 on active tokens, A = [1, 2], lengths 3 and 1 (T = 3):
    per-token losses row 0 = [−1, −1, −1], row 1 = [−2]; token sum −5.
    Padding carries logps 5 vs old 0 (ratio e⁵), which must not count."""
    mask = mx.array([[1, 1, 1], [1, 0, 0]])
    logps = mx.array([[-1.0, -1.0, -1.0], [-1.0, 5.0, 5.0]])
    old_logps = mx.array([[-1.0, -1.0, -1.0], [-1.0, 0.0, 0.0]])
    loss, metrics = grpo_loss(
        logps,
        old_logps,
        None,
        mx.array([1.0, 2.0]),
        mask,
        loss_type=loss_type,
        max_completion_tokens=max_completion_tokens,
    )
    assert_close(loss, expected)
    assert_close(metrics.get("clip_ratio/region_mean", 0.0), 0.0)


def test_grpo_rejects_bad_arguments():
    x, mask = mx.zeros((1, 2)), mx.ones((1, 2))
    with pytest.raises(ValueError, match="ref_logps"):
        grpo_loss(x, x, None, mx.array([1.0]), mask, beta=0.1)
    with pytest.raises(ValueError, match="loss_type"):
        grpo_loss(x, x, None, mx.array([1.0]), mask, loss_type="mean")


# --- CPO / SimPO / AlphaPO (reference-free) ----------------------------------


def test_cpo_losses_at_equal_log_probs():
    """x = log π(y_c) − log π(y_r) = 0: sigmoid −log σ(0) = ln 2; hinge 1;
    ipo (0 − 1/(2·0.5))² = 1; simpo (β = 2, γ = 0.5) −log σ(2·(0 − 0.25))
    = −log σ(−0.5) = 0.974077."""
    same = mx.array([-2.0])
    expected = {"sigmoid": LN2, "hinge": 1.0, "ipo": 1.0, "simpo": 0.974077}
    for loss_type, value in expected.items():
        beta = {"ipo": 0.5, "simpo": 2.0}.get(loss_type, 0.1)
        losses, _ = cpo_loss(same, same, beta, loss_type)
        assert_close(losses, [value])


def test_cpo_hand_values():
    """β = 0.5, pc = −1, pr = −3: x = 2, βx = 1. sigmoid −log σ(1) = 0.313262;
    with ε = 0.1: 0.9·0.313262 + 0.1·1.313262 = 0.413262. hinge (β = 1, x =
    0.5): 0.5. simpo (β = 2, γ = 0.5, x = 0.5): −log σ(1 − 0.5) = 0.474077.
    rewards/chosen = β·pc = −0.5, margins β·x = 1."""
    pc, pr = mx.array([-1.0]), mx.array([-3.0])
    losses, metrics = cpo_loss(pc, pr, 0.5, "sigmoid")
    assert_close(losses, [0.313262])
    assert_close(metrics["rewards/chosen"], [-0.5])
    assert_close(metrics["rewards/margins"], [1.0])
    assert_close(cpo_loss(pc, pr, 0.5, "sigmoid", label_smoothing=0.1)[0], [0.413262])
    half = mx.array([-2.5])
    assert_close(cpo_loss(half, pr, 1.0, "hinge")[0], [0.5])
    assert_close(cpo_loss(half, pr, 2.0, "simpo", simpo_gamma=0.5)[0], [0.474077])


def test_alphapo_reward_shape():
    """r = (1 − p^(−α))/α: p = 0.25, α = 0.5: (1 − 2)/0.5 = −2; α = 0: log p.
    rewards/chosen is β·r."""
    logp = mx.array([math.log(0.25)])
    assert_close(alphapo_rewards(logp, 0.5), [-2.0])
    assert_close(alphapo_rewards(logp, 0.0), [math.log(0.25)])
    _, metrics = cpo_loss(logp, logp - 1.0, 2.0, "alphapo", alpha=0.5)
    assert_close(metrics["rewards/chosen"], [-4.0])


def test_cpo_gradient_raises_chosen_and_lowers_rejected():
    """sigmoid, β = 0.1, x = 0: d/d pc = −β·(1 − σ(0)) = −0.05, d/d pr = +0.05;
    simpo and alphapo push the same way."""
    pc, pr = mx.array([-2.0]), mx.array([-2.0])
    for loss_type, expected in (("sigmoid", 0.05), ("simpo", None), ("alphapo", None)):
        alpha = 0.3 if loss_type == "alphapo" else 0.0

        def total(c, r, t=loss_type, a=alpha):
            return cpo_loss(c, r, 0.1, t, alpha=a)[0].sum()

        grad = mx.grad(total, argnums=(0, 1))
        grad_c, grad_r = (g.item() for g in grad(pc, pr))
        assert grad_c < 0 < grad_r
        if expected:
            assert grad_c == pytest.approx(-expected, abs=1e-6)
