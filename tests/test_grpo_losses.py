"""TRL 1.16's GRPO loss types beyond the clipped surrogate (``losses/grpo.py``):
CISPO, SAPO, VESPO, LUSPO's reduction, GSPO's sequence ratio and the
two-sided clip. Each value and gradient is worked out in the docstring;
agreement with TRL itself: ``tests/trl_parity/grpo_losses.py``."""

import math

import mlx.core as mx
import numpy as np
import pytest

from mlx_align.config.build import build_config
from mlx_align.config.online import GRPOConfig
from mlx_align.core.errors import UserError
from mlx_align.losses.advantages import leave_one_out_advantages
from mlx_align.losses.grpo import grpo_loss, rloo_loss


def assert_close(actual, expected, tol: float = 1e-5):
    np.testing.assert_allclose(np.array(actual), expected, rtol=0, atol=tol)


def loss_and_grad(logps, old_logps, advantages, mask=None, entropy=None, **settings):
    """(loss, metrics) and d loss / d logps."""
    mask = mx.ones(logps.shape) if mask is None else mask
    args = (None, advantages, mask)

    def loss_of(x):
        return grpo_loss(x, old_logps, *args, entropy=entropy, **settings)[0]

    loss, metrics = grpo_loss(logps, old_logps, *args, entropy=entropy, **settings)
    return loss, metrics, mx.grad(loss_of)(logps)


def test_gspo_takes_one_ratio_per_sequence():
    """Log-ratios [ln 2, 0] over two tokens: the sequence ratio is
    exp(ln 2 / 2) = √2 = 1.414214 on both. A = 1, ε = 0.2: clipped at 1.2, a
    constant: loss −1.2, gradient 0, the one sequence counted clipped.
    A = −1: −min(−√2, −1.2) = √2 (grpo: the per-sequence mean of two equal
    tokens), and d√2/d log π_t = √2 · ½ = 0.707107 on each token."""
    logps, old = mx.array([[math.log(2.0), 0.0]]), mx.zeros((1, 2))
    settings = dict(loss_type="grpo", importance_sampling_level="sequence")
    loss, metrics, grad = loss_and_grad(logps, old, mx.array([1.0]), **settings)
    assert_close(loss, -1.2)
    assert_close(grad, [[0.0, 0.0]])
    assert_close(metrics["clip_ratio/high_mean"], 1.0)
    loss, _, grad = loss_and_grad(logps, old, mx.array([-1.0]), **settings)
    assert_close(loss, math.sqrt(2.0))
    assert_close(grad, [[0.707107, 0.707107]])


def test_two_sided_clip_caps_the_ratio_where_the_advantage_is_negative():
    """Ratio 3, A = −1, ε = 0.2: without δ, −min(−3, −1.2) = 3 with gradient
    3 (d ratio / d log π = ratio). With δ = 2 the ratio is capped first:
    −min(−2, −1.2) = 2, a constant, gradient 0."""
    logps, old, advantages = mx.array([[math.log(3.0)]]), mx.zeros((1, 1)), mx.array([-1.0])  # fmt: skip
    loss, _, grad = loss_and_grad(logps, old, advantages, loss_type="dapo")
    assert_close(loss, 3.0)
    assert_close(grad, [[3.0]])
    loss, _, grad = loss_and_grad(logps, old, advantages, loss_type="dapo", delta=2.0)
    assert_close(loss, 2.0)
    assert_close(grad, [[0.0]])


def test_cispo_clips_the_weight_not_the_update():
    """ε_max = 5, A = 1, two one-token sequences with ratios 6 and 0.5: the
    weights min(w, 5) = 5 and 0.5 are constants multiplying −A·log π, so the
    token-mean loss is −(5·ln 6 + 0.5·ln 0.5)/2 = −(8.958797 − 0.346574)/2 =
    −4.306112 and the gradient [−5/2, −0.5/2] = [−2.5, −0.25] (a clipped
    token still learns, unlike PPO's clip); cispo_clip_ratio 1/2."""
    logps = mx.array([[math.log(6.0)], [math.log(0.5)]])
    settings = dict(loss_type="cispo", epsilon_high=5.0)
    loss, metrics, grad = loss_and_grad(
        logps, mx.zeros((2, 1)), mx.array([1.0, 1.0]), **settings
    )
    assert_close(loss, -4.306112)
    assert_close(grad, [[-2.5], [-0.25]])
    assert_close(metrics["cispo_clip_ratio"], 0.5)


def test_sapo_gate_is_the_policy_gradient_at_ratio_one_and_soft_beyond():
    """Gate σ(τ(w − 1))·4/τ. At w = 1 its slope in log π is 4·σ′(0) = 1 for any
    τ: gradient −A (A = 1: −1; A = −1, τ = 1.05: +1). At w = e (τ = 1, A = 1):
    σ(1.718282) = 0.847907, σ′ = 0.128960, gradient −4·0.128960·e = −1.402203,
    where the hard clip at 1.2 would give 0."""
    one = mx.zeros((1, 1))
    _, _, grad = loss_and_grad(one, one, mx.array([1.0]), loss_type="sapo")
    assert_close(grad, [[-1.0]])
    _, _, grad = loss_and_grad(one, one, mx.array([-1.0]), loss_type="sapo")
    assert_close(grad, [[1.0]])
    _, _, grad = loss_and_grad(mx.ones((1, 1)), one, mx.array([1.0]), loss_type="sapo")
    assert_close(grad, [[-1.402203]])


def test_vespo_gamma_weight_by_hand():
    """φ(w) = e^(λ + k·log w − λw). At w = 1, φ = 1: gradient −A. A sequence
    with log-ratio ln 2 (A ≥ 0: k = 2, λ = 3): log φ = 3 + 2 ln 2 − 6 =
    −1.613706, φ = 0.199148, a constant: gradient −φ·A = −0.199148."""
    old = mx.zeros((1, 1))
    _, metrics, grad = loss_and_grad(old, old, mx.array([1.0]), loss_type="vespo")
    assert_close(grad, [[-1.0]])
    assert_close(metrics["vespo/phi_seq_mean"], 1.0)
    logps = mx.array([[math.log(2.0)]])
    _, metrics, grad = loss_and_grad(logps, old, mx.array([1.0]), loss_type="vespo")
    assert_close(grad, [[-0.199148]])
    assert_close(metrics["vespo/phi_seq_mean"], 0.199148)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"sapo_temperature_pos": 2.0}, "--sapo-temperature-pos: the 'dapo' loss"),
        ({"loss": "sapo", "vespo_k_pos": 1.0}, "--vespo-k-pos: the 'sapo' loss"),
        ({"loss": "cispo", "delta": 2.0}, "--delta: the 'cispo' loss"),
        ({"delta": 1.1}, "--delta: must be above 1 \\+ the upper clip \\(1.2\\)"),
        (
            {
                "multi_objective_aggregation": "normalize_then_sum",
                "scale_rewards": "none",
            },
            "--scale-rewards: normalize_then_sum normalises",
        ),
    ],
)
def test_grpo_loss_settings_that_clash_are_refused(flags, message):
    with pytest.raises(UserError, match=message):
        build_config(GRPOConfig, {"model": "m", "data": "d", **flags}, None)


def test_a_token_mean_loss_split_over_ranks_weighs_them_by_tokens():
    """dapo divides by the tokens of the whole batch. Two ranks holding 2 and 6
    tokens each take their own token mean; the loop weighs rank parts by
    ``count_of`` (the batch's ``tokens`` here, not its 1 completion each), so
    2/8·mean₁ + 6/8·mean₂ is the one-process token mean over all 8 tokens
    (weighing by completions, ½·mean₁ + ½·mean₂, would not be)."""
    from mlx_align.batches.types import GRPOBatch
    from mlx_align.train.evaluation import count_of

    logps = mx.array([[-1.0, -2.0, 0, 0, 0, 0], [-0.5, -1.5, -1.0, -2.0, -0.3, -0.7]])
    mask = mx.array([[1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=mx.float32)
    old = logps - mx.array([[0.3], [-0.2]])  # ratios off 1, some clipped
    advantages = mx.array([1.0, -1.0])
    whole, _ = grpo_loss(logps, old, None, advantages, mask, loss_type="dapo")
    parts, counts = [], []
    for row in (0, 1):
        one = slice(row, row + 1)
        loss, _ = grpo_loss(logps[one], old[one], None, advantages[one], mask[one], loss_type="dapo")  # fmt: skip
        batch = GRPOBatch(None, None, None, advantages[one], mx.zeros(1), tokens=mask[one].sum())  # fmt: skip
        parts.append(loss.item())
        counts.append(count_of(batch, mx.array(0.0)).item())
    assert counts == [2.0, 6.0]
    shares = [c / sum(counts) for c in counts]
    assert sum(s * p for s, p in zip(shares, parts, strict=True)) == pytest.approx(whole.item(), abs=1e-6)  # fmt: skip
    assert sum(parts) / 2 != pytest.approx(whole.item(), abs=1e-3)


# --- RLOO ----------------------------------------------------------------------


def test_leave_one_out_advantages_by_hand():
    """Group [1, 0, 0, 1] (G = 4): a 1 is measured against (1 + 0 + 0)/3 = 1/3,
    A = 2/3; a 0 against 2/3, A = −2/3. A second group of equal rewards gets
    0 and counts in frac_reward_zero_std (½). Normalised over the batch: the
    mean is 0 and the population std √(4·(4/9)/8) = √(2/9) = 0.471405, so
    ±2/3 / (0.471405 + 1e-4) = ±1.413914, and the equal group stays 0."""
    rewards = mx.array([1.0, 0.0, 0.0, 1.0, 3.0, 3.0, 3.0, 3.0])
    advantages, metrics = leave_one_out_advantages(rewards, 4)
    third = 2.0 / 3.0
    assert_close(advantages, [third, -third, -third, third, 0, 0, 0, 0])
    assert_close(metrics["frac_reward_zero_std"], 0.5)
    scaled, _ = leave_one_out_advantages(rewards, 4, normalize=True)
    std = float(np.std([third, -third, -third, third, 0, 0, 0, 0]))
    assert std == pytest.approx(0.471405, abs=1e-6)
    assert_close(scaled, [x / (std + 1e-4) for x in advantages.tolist()])


def test_rloo_loss_clips_the_ratio_of_whole_sequences():
    """Token log-ratios [0.1, 0.2]: w = e^0.3 = 1.349859 for the sequence. A = 1,
    ε = 0.2: clipped at 1.2, loss −1.2, gradient 0, the completion counted in
    clip_ratio/high_mean. A = −1: −min(−w, −1.2) = w = 1.349859, and
    dw/d log π_t = w on each token (a sum, not GSPO's mean)."""
    old = mx.array([[-1.0, -2.0]])
    logps = old + mx.array([[0.1, 0.2]])
    mask = mx.ones((1, 2))

    def run(advantage):
        def loss_of(x):
            return rloo_loss(x, old, mx.array([advantage]), mask)[0]

        loss, metrics = rloo_loss(logps, old, mx.array([advantage]), mask)
        return loss, metrics, mx.grad(loss_of)(logps)

    loss, metrics, grad = run(1.0)
    assert_close(loss, -1.2)
    assert_close(grad, [[0.0, 0.0]])
    assert_close(metrics["clip_ratio/high_mean"], 1.0)
    loss, _, grad = run(-1.0)
    assert_close(loss, 1.349859)
    assert_close(grad, [[1.349859, 1.349859]])


def test_gdpo_normalises_each_reward_within_its_group_before_the_sum():
    """One group of 4, a dense reward f1 = [1, 0, 0, 1] and a sparse one f2 =
    [0, 0, 0, 1]. Each within the group: f1 -> ±1 (mean ½, std ½), f2 ->
    [−0.577, −0.577, −0.577, 1.732] (mean ¼, std 0.433); the sum [0.423,
    −1.577, −1.577, 2.731] over the batch (mean 0, std 1.776): [0.238, −0.888,
    −0.888, 1.538]. Summing first ([1, 0, 0, 2], GRPO's default) gives [0.301,
    −0.904, −0.904, 1.507]: GDPO lifts the sparse reward's one success more."""
    from mlx_align.losses.advantages import decoupled_advantages, group_advantages

    table = [[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0]]
    advantages, metrics = decoupled_advantages(table, None, 4)
    assert_close(advantages, [0.237959, -0.888028, -0.888028, 1.538096], tol=1e-4)
    assert_close(metrics["frac_reward_zero_std"], 0.0)
    summed, _ = group_advantages(mx.array([1.0, 0.0, 0.0, 2.0]), 4)
    assert_close(summed, [0.301475, -0.904425, -0.904425, 1.507375], tol=1e-4)


def test_high_entropy_mask_keeps_the_top_quantile_of_active_tokens():
    """Active entropies [0.1, 0.5, 0.9, 0.3] (a padded 5.0 ignored). q = 0.5:
    the 0.5-quantile of [0.1, 0.3, 0.5, 0.9] sits at position 3·0.5 = 1.5,
    0.3 + 0.5·(0.5 − 0.3) = 0.4: tokens 0.5 and 0.9 train. q = 0: position 3,
    only 0.9. q = 1: position 0, every active token."""
    from mlx_align.losses.grpo import high_entropy_mask

    entropy = mx.array([[0.1, 0.5, 0.9], [0.3, 5.0, 0.0]])
    mask = mx.array([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert_close(high_entropy_mask(entropy, mask, 0.5), [[0, 1, 1], [0, 0, 0]])
    assert_close(high_entropy_mask(entropy, mask, 0.0), [[0, 0, 1], [0, 0, 0]])
    assert_close(high_entropy_mask(entropy, mask, 1.0), [[1, 1, 1], [1, 0, 0]])
    _, metrics, grad = loss_and_grad(
        mx.zeros((2, 3)),
        mx.zeros((2, 3)),
        mx.array([1.0, 1.0]),
        mask,
        loss_type="dapo",
        top_entropy_quantile=0.5,
        entropy=entropy,
    )
    assert_close(grad, [[0, -0.25, -0.25], [0, 0, 0]])  # −A / 4 active tokens
    assert_close(metrics["entropy"], (0.1 + 0.5 + 0.9 + 0.3) / 4)


def test_entropy_bonus_subtracts_the_mean_entropy_of_the_trained_tokens():
    """c = 0.5, ratio 1, A = 0 (no policy term): loss = −0.5 · mean H over the
    active tokens = −0.5 · (0.1 + 0.5 + 0.9 + 0.3)/4 = −0.225, and
    d loss / d H = −0.5/4 = −0.125 on each active token (the bonus raises
    entropy); with --top-entropy-quantile 0.5 only tokens 0.5 and 0.9 count:
    −0.5 · 0.7 = −0.35. policy_loss logs the loss without the bonus (0)."""
    entropy = mx.array([[0.1, 0.5, 0.9], [0.3, 5.0, 0.0]])
    mask = mx.array([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    zeros, advantages = mx.zeros((2, 3)), mx.zeros(2)

    def loss_of(h, **settings):
        return grpo_loss(zeros, zeros, None, advantages, mask, entropy=h, **settings)

    loss, metrics = loss_of(entropy, loss_type="dapo", entropy_coef=0.5)
    assert_close(loss, -0.225)
    assert_close(metrics["policy_loss"], 0.0)
    grad = mx.grad(lambda h: loss_of(h, loss_type="dapo", entropy_coef=0.5)[0])(entropy)
    assert_close(grad, [[-0.125, -0.125, -0.125], [-0.125, 0, 0]])
    top, _ = loss_of(
        entropy, loss_type="dapo", entropy_coef=0.5, top_entropy_quantile=0.5
    )
    assert_close(top, -0.35)
