"""Advantage and reward-combination tests, expected values worked by hand."""

import math

import mlx.core as mx
import pytest

from mlx_align.losses.advantages import STD_EPS, combine_rewards, group_advantages


def test_group_scaling_gives_plus_minus_one():
    """[1, 0, 0, 1]: mean 0.5, population std 0.5 -> ±0.5 / (0.5 + 1e-4) ≈ ±1.
    (TRL's unbiased std 0.577 would give ±0.866.)"""
    advantages, metrics = group_advantages(mx.array([1.0, 0.0, 0.0, 1.0]), group_size=4)
    unit = 0.5 / (0.5 + STD_EPS)
    assert advantages.tolist() == pytest.approx([unit, -unit, -unit, unit], abs=1e-6)
    assert advantages.tolist() == pytest.approx([1, -1, -1, 1], abs=1e-3)
    assert metrics["frac_reward_zero_std"].item() == 0.0


def test_all_equal_group_gets_zero_and_is_counted():
    """Groups [1, 0, 2] and [2.2, 2.2, 2.2]: the second has no signal, its
    advantages are exactly 0 and it is 1 of 2 groups -> 0.5. (In float32 the
    mean of three 2.2s is off by 2.4e-7, so centring alone would not give 0.)"""
    rewards = mx.array([1.0, 0.0, 2.0, 2.2, 2.2, 2.2])
    for scale in ("group", "batch", "none"):
        advantages, metrics = group_advantages(rewards, group_size=3, scale=scale)
        assert advantages[3:].tolist() == [0.0, 0.0, 0.0]
        assert metrics["frac_reward_zero_std"].item() == 0.5


def test_batch_scaling_uses_std_of_all_rewards():
    """[1, 0, 0, 1 | 3, 3, 3, 3]: batch mean 14/8 = 1.75; squared deviations
    2·0.5625 + 2·3.0625 + 4·1.5625 = 13.5, population std sqrt(13.5/8) = 1.299038.
    Group-centred [0.5, −0.5, −0.5, 0.5, 0, 0, 0, 0] / (1.299038 + 1e-4)."""
    rewards = mx.array([1.0, 0.0, 0.0, 1.0, 3.0, 3.0, 3.0, 3.0])
    advantages, _ = group_advantages(rewards, group_size=4, scale="batch")
    unit = 0.5 / (math.sqrt(13.5 / 8) + STD_EPS)
    expected = [unit, -unit, -unit, unit, 0.0, 0.0, 0.0, 0.0]
    assert advantages.tolist() == pytest.approx(expected, abs=1e-6)


def test_none_scaling_only_centres():
    """Dr. GRPO: [1, 2, 3] -> minus mean 2 -> [−1, 0, 1]; [4, 8, 0] -> mean 4 ->
    [0, 4, −4]. No division, no eps."""
    rewards = mx.array([1.0, 2.0, 3.0, 4.0, 8.0, 0.0])
    advantages, _ = group_advantages(rewards, group_size=3, scale="none")
    assert advantages.tolist() == pytest.approx([-1, 0, 1, 0, 4, -4], abs=1e-6)


def test_group_advantages_rejects_bad_arguments():
    with pytest.raises(ValueError, match="groups of 4"):
        group_advantages(mx.zeros(6), group_size=4)
    with pytest.raises(ValueError, match="scale"):
        group_advantages(mx.zeros(4), group_size=4, scale="global")


def test_combine_rewards_with_missing_values():
    """f1 = [1, None, 0], f2 = [0.5, 0.5, None], weights [1, 2]:
    totals [1 + 1, 0 + 1, 0 + 0] = [2, 1, 0] (None adds 0, TRL's nansum).
    reward = 1, reward_std = sqrt((1 + 0 + 1)/3) = 0.816497.
    f1 mean over [1, 0] = 0.5, std 0.5; f2 mean over [0.5, 0.5] = 0.5, std 0."""
    totals, metrics = combine_rewards(
        [[1.0, None, 0.0], [0.5, 0.5, None]],
        weights=[1.0, 2.0],
        names=["math", "format"],
    )
    assert totals.tolist() == pytest.approx([2.0, 1.0, 0.0])
    assert metrics["reward"] == pytest.approx(1.0)
    assert metrics["reward_std"] == pytest.approx(math.sqrt(2 / 3))
    assert metrics["rewards/math/mean"] == pytest.approx(0.5)
    assert metrics["rewards/math/std"] == pytest.approx(0.5)
    assert metrics["rewards/format/mean"] == pytest.approx(0.5)
    assert metrics["rewards/format/std"] == pytest.approx(0.0)


def test_combine_rewards_defaults_and_all_missing_function():
    """Default weights 1 and names reward_i; a function that is None everywhere
    adds 0 to every total and has a NaN mean."""
    totals, metrics = combine_rewards([[1.0, 2.0], [None, None]])
    assert totals.tolist() == pytest.approx([1.0, 2.0])
    assert metrics["rewards/reward_0/mean"] == pytest.approx(1.5)
    assert math.isnan(metrics["rewards/reward_1/mean"])


def test_combine_rewards_needs_one_weight_per_function():
    with pytest.raises(ValueError, match="one weight"):
        combine_rewards([[1.0], [0.0]], weights=[1.0])
