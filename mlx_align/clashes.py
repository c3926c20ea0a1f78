"""Checks across settings: each returns ``(setting, message)`` or None.

Registered with ``config_build.clash(cls)`` for a config class (and its
subclasses); ``build_config`` runs them after every setting passed its rule.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import (
    AdapterSettings,
    DPOConfig,
    InitModelConfig,
    PreferenceSettings,
    RunSettings,
)
from .config_build import clash, shown
from .config_online import (
    GRPOConfig,
    OnlineDPOConfig,
    PPOConfig,
    RewardSettings,
    SamplingSettings,
)
from .judges import JUDGE_FLAGS, judges_named


@clash(AdapterSettings)
def quantize_needs_adapters(config: AdapterSettings) -> tuple[str, str] | None:
    if config.full and config.quantize:
        return (
            "--quantize",
            "QLoRA trains adapters on a frozen quantized base; it cannot be "
            "combined with --full (drop one of them)",
        )
    if config.full and config.dora:
        return "--dora", "DoRA is an adapter; it cannot be combined with --full"
    return None


def same_model(a: str, b: str) -> bool:
    """Two --model values naming one model: equal, or local paths to one directory."""
    if a == b:
        return True
    first, second = Path(a).expanduser(), Path(b).expanduser()
    return first.exists() and second.exists() and first.resolve() == second.resolve()


@clash(RunSettings)
def splits_differ(config: RunSettings) -> tuple[str, str] | None:
    if config.valid_split == config.data_split:
        return (
            "--valid-split",
            f"is --data-split itself ({config.data_split!r}): evaluating on the "
            "training split measures nothing held out",
        )
    return None


@clash(PreferenceSettings)
def reference_is_not_the_model(config: Any) -> tuple[str, str] | None:
    if config.ref_model and same_model(config.ref_model, config.model):
        return (
            "--ref-model",
            f"{config.ref_model!r} is --model itself; leave --ref-model out "
            "(the reference is then --model's weights, without adapters)",
        )
    return None


@clash(DPOConfig)
def label_smoothing_needs_a_loss_using_it(config: DPOConfig) -> tuple[str, str] | None:
    """``--label-smoothing`` reaches a DPO loss only if its signature takes it
    (``train.dpo.dpo_objective``): the registry is the source."""
    if not config.label_smoothing:
        return None
    from .losses import DPO_LOSSES

    def takes_it(loss: Callable) -> bool:
        return "label_smoothing" in inspect.signature(loss).parameters

    if takes_it(DPO_LOSSES[config.loss]):
        return None
    users = ", ".join(name for name, loss in DPO_LOSSES.items() if takes_it(loss))
    return (
        "--label-smoothing",
        f"the {config.loss!r} loss does not use it (losses that do: {users})",
    )


def split_weights(text: str) -> list[str]:
    """The comma-separated items of --reward-weights, as ``GroupScorer`` splits them."""
    return [w.strip() for w in text.split(",") if w.strip()]


@clash(GRPOConfig)
def grpo_needs_a_reward(config: GRPOConfig) -> tuple[str, str] | None:
    if not config.reward:
        return "--reward", "at least one reward function is needed"
    return None


@clash(RewardSettings)
def rewards_resolve_and_match_weights(config: RewardSettings) -> tuple[str, str] | None:
    """``--reward`` names that resolve and ``--reward-weights`` that match them."""
    from .rewards.registry import resolve_reward

    for spec in config.reward:
        try:
            resolve_reward(spec)
        except ValueError as error:
            return "--reward", str(error)
    weights = split_weights(config.reward_weights)
    for weight in weights:
        try:
            if not math.isfinite(float(weight)):
                raise ValueError
        except ValueError:
            return "--reward-weights", f"{weight!r} is not a finite number"
    if weights and len(weights) != len(config.reward):
        return (
            "--reward-weights",
            f"{len(weights)} weight{'s' * (len(weights) != 1)} for "
            f"{len(config.reward)} reward functions "
            f"({', '.join(config.reward)}): give one per --reward",
        )
    return None


@clash(GRPOConfig)
def clip_and_lengths(config: GRPOConfig) -> tuple[str, str] | None:
    if config.epsilon_high and config.epsilon_high < config.epsilon:
        return (
            "--epsilon-high",
            f"must be 0 (same as --epsilon) or >= --epsilon ({shown(config.epsilon)}), "
            f"got {shown(config.epsilon_high)}",
        )
    return None


@clash(SamplingSettings)
def length_problem(config: Any) -> tuple[str, str] | None:
    """A completion must leave room for its prompt within --max-length."""
    if config.max_completion_tokens >= config.max_length:
        return (
            "--max-completion-tokens",
            f"must be below --max-length ({config.max_length}), which also holds "
            f"the prompt, got {config.max_completion_tokens}",
        )
    return None


@clash(InitModelConfig)
def hidden_size_fits_the_heads(config: InitModelConfig) -> tuple[str, str] | None:
    """Attention splits the hidden size into the preset's heads, and RoPE
    rotates each head in pairs of dimensions: a multiple of 2 x heads."""
    if not config.hidden_size:
        return None
    from .model.tiny import PRESETS

    heads = PRESETS[config.preset].num_attention_heads
    if config.hidden_size % (2 * heads):
        return (
            "--hidden-size",
            f"must be a multiple of {2 * heads} (2 x the {config.preset} preset's "
            f"{heads} attention heads), got {config.hidden_size}",
        )
    return None


# The stages that sample and score: one judge, or at least one reward.


@clash(OnlineDPOConfig)
def one_judge(config: OnlineDPOConfig) -> tuple[str, str] | None:
    named = judges_named(config)
    if len(named) != 1:
        return (
            " / ".join(JUDGE_FLAGS),
            f"name exactly one judge, got {', '.join(named) or 'none'}",
        )
    if config.judge_prompt and not config.judge_model:
        return "--judge-prompt", "is the prompt of --judge-model's LLM judge; name one"
    return label_smoothing_needs_a_loss_using_it(config)


@clash(PPOConfig)
def a_reward(config: PPOConfig) -> tuple[str, str] | None:
    if not (config.reward_model or config.reward):
        return (
            "--reward-model / --reward",
            "PPO needs a reward model or a reward function",
        )
    return None
