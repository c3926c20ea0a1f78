"""Verifiable rewards with TRL's signature: (prompts, completions, **columns)."""

from mlx_align.rewards.format import format_reward
from mlx_align.rewards.math import extract_answer, math_reward
from mlx_align.rewards.registry import REWARD_FUNCTIONS, RewardFunction, resolve_reward

__all__ = [
    "REWARD_FUNCTIONS",
    "RewardFunction",
    "extract_answer",
    "format_reward",
    "math_reward",
    "resolve_reward",
]
