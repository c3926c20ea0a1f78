"""Group-relative advantages (GRPO, RLOO) and the reward sum they start from."""

import math
import warnings
from collections.abc import Sequence

import mlx.core as mx
import numpy as np

from mlx_align.core import distributed

# Added to the std before dividing, as TRL, so a near-constant group cannot blow up.
STD_EPS = 1e-4

ADVANTAGE_SCALES = ("group", "batch", "none")


def group_advantages(
    rewards: mx.array,
    group_size: int,
    scale: str = "group",
) -> tuple[mx.array, dict[str, mx.array]]:
    """GRPO advantages: each reward minus its group's mean, optionally scaled.

    DeepSeekMath (Shao et al. 2024), outcome supervision: Â = (r − mean) / std
    over the G completions of one prompt. ``scale`` picks the divisor, as TRL
    ``scale_rewards``: ``group`` the group's std, ``batch`` the std of all N
    rewards (of every rank, as TRL gathers them), ``none`` no division (Liu et al. 2025, Dr. GRPO). ``STD_EPS`` is
    added to the std.

    Deviation from TRL: the std is the population std (ddof=0), so a group
    [1, 0, 0, 1] gives ±0.5/(0.5 + ε) ≈ ±1; TRL's torch.std is unbiased
    (ddof=1) and gives ±0.866. Groups whose rewards are all equal carry no
    signal: their advantages are exactly 0 and they are counted.

    Args:
        rewards: total reward per completion, (N,), N = groups × group_size,
            the completions of one prompt contiguous.
        group_size: G, completions per prompt.
        scale: ``group``, ``batch`` or ``none``.

    Returns:
        advantages (N,); metrics ``frac_reward_zero_std`` (share of groups with
        all rewards equal), a scalar.
    """
    if scale not in ADVANTAGE_SCALES:
        raise ValueError(f"scale must be one of {ADVANTAGE_SCALES}, got {scale!r}")
    if rewards.size % group_size:
        raise ValueError(
            f"{rewards.size} rewards do not split into groups of {group_size}"
        )
    grouped = rewards.reshape(-1, group_size)  # (G, K)
    centred = grouped - grouped.mean(axis=1, keepdims=True)  # (G, K)
    all_equal = grouped.max(axis=1, keepdims=True) == grouped.min(axis=1, keepdims=True)
    if scale == "group":
        centred = centred / (mx.std(grouped, axis=1, keepdims=True) + STD_EPS)
    elif scale == "batch":
        centred = centred / (batch_std(rewards) + STD_EPS)
    # An equal group's mean can differ from its members by rounding; force 0.
    advantages = mx.where(all_equal, 0.0, centred).reshape(-1)  # (N,)
    metrics = {"frac_reward_zero_std": all_equal.astype(mx.float32).mean()}
    return advantages, metrics


def batch_moments(values: mx.array) -> tuple[mx.array, mx.array]:
    """Mean and population std of ``values`` over the whole global batch (every rank's)."""
    if distributed.size() == 1:
        return values.mean(), mx.std(values)
    n, total, squares = distributed.all_sum(
        mx.stack([mx.array(values.size, mx.float32), values.sum(), (values**2).sum()])
    )
    mean = total / n
    return mean, mx.sqrt(mx.maximum(squares / n - mean**2, 0.0))


def batch_std(rewards: mx.array) -> mx.array:
    """The population std of the rewards of the whole global batch (every rank's)."""
    return batch_moments(rewards)[1]


def leave_one_out_advantages(
    rewards: mx.array, group_size: int, normalize: bool = False
) -> tuple[mx.array, dict[str, mx.array]]:
    """RLOO advantages: each reward minus the mean of its group's other G − 1.

    Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style
    Optimization for Learning from Human Feedback in LLMs", eq. 7 (Kool et
    al. 2019's leave-one-out baseline), as TRL ``RLOOTrainer``. ``normalize``
    then scales them over the global batch to mean 0 and std 1 (+ ``STD_EPS``;
    a population std, as ``group_advantages``).

    Args:
        rewards: total reward per completion (KL penalty included), (N,), a
            prompt's G completions contiguous.

    Returns:
        advantages (N,); ``frac_reward_zero_std`` as ``group_advantages``.
    """
    if group_size < 2 or rewards.size % group_size:
        raise ValueError(f"{rewards.size} rewards do not split into groups of {group_size} >= 2")  # fmt: skip
    grouped = rewards.reshape(-1, group_size)  # (P, G)
    others = (grouped.sum(axis=1, keepdims=True) - grouped) / (group_size - 1)
    advantages = (grouped - others).reshape(-1)  # (N,)
    if normalize:
        mean, std = batch_moments(advantages)
        advantages = (advantages - mean) / (std + STD_EPS)
    all_equal = grouped.max(axis=1) == grouped.min(axis=1)
    return advantages, {"frac_reward_zero_std": all_equal.astype(mx.float32).mean()}


MULTI_OBJECTIVE_AGGREGATIONS = ("sum_then_normalize", "normalize_then_sum")


def decoupled_advantages(
    per_function: Sequence[Sequence[float | None]],
    weights: Sequence[float] | None,
    group_size: int,
) -> tuple[mx.array, dict[str, mx.array]]:
    """GDPO: each reward function normalised within its group, then the weighted
    sum normalised over the global batch.

    Liu et al. 2026, "GDPO: Group reward-Decoupled Normalization Policy
    Optimization for Multi-reward RL Optimization", as TRL's
    ``multi_objective_aggregation="normalize_then_sum"``: a function whose
    rewards are all equal within a group adds 0 there, so a sparse reward
    is not drowned by a dense one. Stds are population stds (+ ``STD_EPS``),
    as ``group_advantages``; a missing reward (NaN) is left out of its
    function's group statistics and adds 0.

    Args:
        per_function: F lists of N rewards (None: missing), as ``combine_rewards``.
        weights: F weights (default all 1).

    Returns:
        advantages (N,); ``frac_reward_zero_std``: 1 when the summed rewards
        have no spread over the batch (TRL's meaning on this path).
    """
    table = reward_table(per_function)
    grouped = table.reshape(table.shape[0], -1, group_size)  # (F, P, G)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a group all missing
        mean = np.nanmean(grouped, axis=2, keepdims=True)
        std = np.nanstd(grouped, axis=2, keepdims=True)
    normalised = (grouped - mean) / (std + STD_EPS)  # (F, P, G)
    column = np.ones(table.shape[0]) if weights is None else np.asarray(weights)
    summed = np.nansum(normalised * column[:, None, None], axis=0).reshape(-1)
    rewards = mx.array(summed.astype(np.float32))  # (N,)
    mean, std = batch_moments(rewards)
    advantages = (rewards - mean) / (std + STD_EPS)
    zero_std = (std < 1e-6).astype(mx.float32)
    return advantages, {"frac_reward_zero_std": zero_std}


def reward_table(per_function: Sequence[Sequence[float | None]]) -> np.ndarray:
    """F lists of N rewards as an (F, N) float32 table, NaN where one is None."""
    rows = [[np.nan if r is None else r for r in f] for f in per_function]
    return np.array(rows, dtype=np.float32).reshape(len(rows), -1)


def combine_rewards(
    per_function_rewards: Sequence[Sequence[float | None]],
    weights: Sequence[float] | None = None,
    names: Sequence[str] | None = None,
) -> tuple[mx.array, dict[str, float]]:
    """Weighted sum of several reward functions' outputs, None meaning missing.

    As TRL ``GRPOTrainer`` (``_calculate_rewards`` then ``nansum``): a None is
    NaN, contributes 0 to its sample's total (a sample where every function
    returned None gets 0), and is ignored by that function's mean and std.

    Args:
        per_function_rewards: F lists of N rewards, one list per function.
        weights: F weights; default all 1.
        names: F names for the metrics; default ``reward_0``, ``reward_1``, ...

    Returns:
        total reward per completion, (N,); host-side float metrics ``reward``
        (mean total), ``reward_std`` and per function ``rewards/<name>/mean``,
        ``rewards/<name>/std``. Deviation from TRL: stds are population stds
        (ddof=0), and ``reward_std`` is the std of the totals over the batch,
        where TRL logs the mean of the per-group stds.
    """
    num_functions = len(per_function_rewards)
    weights = [1.0] * num_functions if weights is None else list(weights)
    names = [f"reward_{i}" for i in range(num_functions)] if names is None else names
    if not len(weights) == len(names) == num_functions:
        raise ValueError("need one weight and one name per reward function")
    table = reward_table(per_function_rewards)  # (F, N)
    weight_column = np.array(weights, dtype=np.float32)[:, None]  # (F, 1)
    totals = np.nansum(table * weight_column, axis=0)  # (N,) a missing reward adds 0
    metrics = {"reward": float(totals.mean()), "reward_std": float(totals.std())}
    for name, column in zip(names, table, strict=True):
        mean, std = _nan_mean_and_std(column)
        metrics[f"rewards/{name}/mean"] = mean
        metrics[f"rewards/{name}/std"] = std
    return mx.array(totals), metrics


def _nan_mean_and_std(values: np.ndarray) -> tuple[float, float]:
    """Mean and population std ignoring NaN, as TRL's nanmean/nanstd (which is
    ddof=1); NaN when every value is missing."""
    present = values[~np.isnan(values)]
    if present.size == 0:
        return math.nan, math.nan
    return float(present.mean()), float(present.std())
