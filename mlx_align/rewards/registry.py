"""Reward functions by name: builtins, or any importable callable."""

from collections.abc import Callable, Sequence

from mlx_align.core.imports import import_callable
from mlx_align.rewards.format import format_reward
from mlx_align.rewards.math import math_reward

# TRL's reward-function contract: (prompts, completions, **columns) -> rewards,
# one float per completion, or None where the function does not apply.
RewardFunction = Callable[..., list[float | None]]

REWARD_FUNCTIONS: dict[str, RewardFunction] = {
    "math": math_reward,
    "format": format_reward,
}

# The dataset columns a builtin reward reads from every record, checked before
# a run loads a model (``data.prompts.check_prompt_records``): each entry is a
# column, or a tuple of alternatives of which the first present is read.
REWARD_COLUMNS: dict[str, tuple[str | tuple[str, ...], ...]] = {
    "math": (("answer", "solution"),),
}


def reward_columns(specs: Sequence[str]) -> list[str | tuple[str, ...]]:
    """The columns the ``--reward`` functions ``specs`` need (builtins only; an
    imported function's own columns are its business), without repeats."""
    needed: list[str | tuple[str, ...]] = []
    for spec in specs:
        for column in REWARD_COLUMNS.get(spec, ()):
            if column not in needed:
                needed.append(column)
    return needed


def resolve_reward(spec: str) -> RewardFunction:
    """A builtin reward by name (``math``, ``format``), or a callable named by an
    import path ``package.module:function`` or ``package.module.function``.

    Raises:
        ValueError: naming ``spec`` when it is neither, cannot be imported, or
            is not callable.
    """
    if spec in REWARD_FUNCTIONS:
        return REWARD_FUNCTIONS[spec]
    if not (":" in spec or "." in spec.strip(".")):
        raise ValueError(
            f"unknown reward {spec!r}: not a builtin ({', '.join(REWARD_FUNCTIONS)}) "
            "nor an import path 'module:function'"
        )
    return import_callable(spec, "reward")
