"""Checks across settings: each returns ``(setting, message)`` or None.

Listed in ``CHECKS`` with the config class each applies to; ``build_config``
runs them after every setting passed its rule.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlx_align.config.online import (
    GRPOConfig,
    OnlineDPOConfig,
    PPOConfig,
    RewardSettings,
    SamplingSettings,
)
from mlx_align.config.settings import shown
from mlx_align.config.stages import (
    AdapterSettings,
    DPOConfig,
    InitModelConfig,
    PreferenceSettings,
    RunSettings,
)
from mlx_align.model.load import same_model
from mlx_align.sampling.judges import one_judge


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


EXPERT_COUNTS = (
    "num_experts",
    "n_routed_experts",
    "num_local_experts",
    "moe_num_experts",
)


def dora_needs_dense_layers(config: AdapterSettings) -> tuple[str, str] | None:
    """mlx-lm has no DoRA for expert layers (``SwitchLinear``): a local model whose
    config.json counts experts says so before its weights load (a hub id is
    checked once loaded, by ``model.adapters.attach_adapters``)."""
    if not config.dora or config.lora_keys:
        return None
    path = Path(getattr(config, "model", "")) / "config.json"
    if not path.is_file():
        return None
    model_config = json.loads(path.read_text())
    sections = [model_config, model_config.get("text_config") or {}]
    experts = max((s.get(k) or 0 for s in sections for k in EXPERT_COUNTS), default=0)
    if not isinstance(experts, int) or experts <= 0:
        return None
    return (
        "--dora",
        f"mlx-lm has no DoRA for mixture-of-experts layers ({experts} experts in "
        f"{path}): train with LoRA, or set --lora-keys to non-expert layers",
    )


def splits_differ(config: RunSettings) -> tuple[str, str] | None:
    if config.valid_split == config.data_split:
        return (
            "--valid-split",
            f"is --data-split itself ({config.data_split!r}): evaluating on the "
            "training split measures nothing held out",
        )
    return None


def reference_is_not_the_model(config: Any) -> tuple[str, str] | None:
    if config.ref_model and same_model(config.ref_model, config.model):
        return (
            "--ref-model",
            f"{config.ref_model!r} is --model itself; leave --ref-model out "
            "(the reference is then --model's weights, without adapters)",
        )
    return None


def label_smoothing_needs_a_loss_using_it(config: DPOConfig) -> tuple[str, str] | None:
    """``--label-smoothing`` reaches a DPO loss only if it takes it
    (``losses.preference.dpo_loss_needs``)."""
    if not config.label_smoothing:
        return None
    from mlx_align.losses.preference import DPO_LOSSES, dpo_loss_needs

    if dpo_loss_needs(config.loss).label_smoothing:
        return None
    users = ", ".join(n for n in DPO_LOSSES if dpo_loss_needs(n).label_smoothing)
    return (
        "--label-smoothing",
        f"the {config.loss!r} loss does not use it (losses that do: {users})",
    )


def split_weights(text: str) -> list[str]:
    """The comma-separated items of --reward-weights, as ``GroupScorer`` splits them."""
    return [w.strip() for w in text.split(",") if w.strip()]


def grpo_needs_a_reward(config: GRPOConfig) -> tuple[str, str] | None:
    if not config.reward:
        return "--reward", "at least one reward function is needed"
    return None


def rewards_resolve_and_match_weights(config: RewardSettings) -> tuple[str, str] | None:
    """``--reward`` names that resolve and ``--reward-weights`` that match them."""
    from mlx_align.rewards.registry import resolve_reward

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


def clip_and_lengths(config: GRPOConfig) -> tuple[str, str] | None:
    if config.epsilon_high and config.epsilon_high < config.epsilon:
        return (
            "--epsilon-high",
            f"must be 0 (same as --epsilon) or >= --epsilon ({shown(config.epsilon)}), "
            f"got {shown(config.epsilon_high)}",
        )
    return None


def length_problem(config: Any) -> tuple[str, str] | None:
    """A completion must leave room for its prompt within --max-length."""
    if config.max_completion_tokens >= config.max_length:
        return (
            "--max-completion-tokens",
            f"must be below --max-length ({config.max_length}), which also holds "
            f"the prompt, got {config.max_completion_tokens}",
        )
    return None


def hidden_size_fits_the_heads(config: InitModelConfig) -> tuple[str, str] | None:
    """Attention splits the hidden size into the preset's heads, and RoPE
    rotates each head in pairs of dimensions: a multiple of 2 x heads."""
    if not config.hidden_size:
        return None
    from mlx_align.model.tiny import PRESETS

    heads = PRESETS[config.preset].num_attention_heads
    if config.hidden_size % (2 * heads):
        return (
            "--hidden-size",
            f"must be a multiple of {2 * heads} (2 x the {config.preset} preset's "
            f"{heads} attention heads), got {config.hidden_size}",
        )
    return None


# The stages that sample and score: one judge, or at least one reward.


def judge_settings(config: OnlineDPOConfig) -> tuple[str, str] | None:
    return one_judge(config) or label_smoothing_needs_a_loss_using_it(config)


def a_reward(config: PPOConfig) -> tuple[str, str] | None:
    if not (config.reward_model or config.reward):
        return (
            "--reward-model / --reward",
            "PPO needs a reward model or a reward function",
        )
    return None


# Every check, with the config class (and its subclasses) it applies to;
# ``build.build_config`` runs them in this order after each setting's ``Rule``.
CHECKS: list[tuple[type, Callable[[Any], tuple[str, str] | None]]] = [
    (AdapterSettings, quantize_needs_adapters),
    (AdapterSettings, dora_needs_dense_layers),
    (RunSettings, splits_differ),
    (PreferenceSettings, reference_is_not_the_model),
    (DPOConfig, label_smoothing_needs_a_loss_using_it),
    (GRPOConfig, grpo_needs_a_reward),
    (RewardSettings, rewards_resolve_and_match_weights),
    (GRPOConfig, clip_and_lengths),
    (SamplingSettings, length_problem),
    (InitModelConfig, hidden_size_fits_the_heads),
    (OnlineDPOConfig, judge_settings),
    (PPOConfig, a_reward),
]
