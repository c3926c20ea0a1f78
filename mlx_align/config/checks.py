"""Checks across settings: each returns ``(setting, message)`` or None.

Listed in ``CHECKS`` with the config class each applies to; ``build_config``
runs them after every setting passed its rule.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlx_align.config.losses import DPOLossSettings
from mlx_align.config.online import (
    GroupSettings,
    GRPOConfig,
    OnlineDPOConfig,
    PPOConfig,
    RewardSettings,
    SamplingSettings,
    ToolSettings,
)
from mlx_align.config.settings import flag, shown
from mlx_align.config.stages import (
    REPORT_TARGETS,
    AdapterSettings,
    CPOConfig,
    InitModelConfig,
    PreferenceSettings,
    RunSettings,
    TrainSettings,
)
from mlx_align.core.errors import UserError
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
    if config.full and config.adapter_path:
        return "--adapter-path", "continues adapters; it cannot be combined with --full"
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


def dpo_loss_settings_fit(config: DPOLossSettings) -> tuple[str, str] | None:
    """Weights that match the losses; a loss setting only with a loss that reads
    it (``losses.dpo.dpo_loss_settings``); the f-divergence only with the losses
    built on its scores; exo_pair's ε > 0. TRL refuses the same."""
    from mlx_align.losses.dpo import (
        DPO_LOSSES,
        F_DIVERGENCE_LOSSES,
        LOSS_SETTINGS,
        dpo_loss_settings,
    )

    names = config.loss
    if not names:
        return "--loss", "at least one loss type is needed"
    problem = weights_problem(
        "--loss-weights", config.loss_weights, names, "--loss", "losses"
    )
    if problem:
        return problem
    defaults = {f.name: f.default for f in dataclasses.fields(DPOLossSettings)}
    taken = {s for name in names for s in dpo_loss_settings(name)}
    for name in LOSS_SETTINGS:
        if getattr(config, name) != defaults[name] and name not in taken:
            users = ", ".join(n for n in DPO_LOSSES if name in dpo_loss_settings(n))
            subject = (
                f"the {names[0]!r} loss does"
                if len(names) == 1
                else f"the losses {', '.join(names)} do"
            )
            return flag(name), f"{subject} not use it (losses that do: {users})"
    if "exo_pair" in names and not config.label_smoothing:
        return "--label-smoothing", "exo_pair needs ε > 0 (the EXO paper uses 1e-3)"
    outside = [n for n in names if n not in F_DIVERGENCE_LOSSES]
    if config.f_divergence_type != "reverse_kl" and outside:
        return "--f-divergence-type", (
            f"{config.f_divergence_type} works only with the losses built on "
            f"s_c − s_r ({', '.join(sorted(F_DIVERGENCE_LOSSES))}), not {', '.join(outside)}"
        )
    sorted_losses = [n for n in names if n in ("aot", "aot_unpaired")]
    if config.use_weighting and sorted_losses:
        return "--use-weighting", (
            f"{', '.join(sorted_losses)} sorts the pairs of a batch, which would "
            "misalign the pairs' weights (TRL refuses it too)"
        )
    nll = "sft" in names or getattr(config, "sft_weight", 0.0)
    if config.ld_alpha != 1.0 and nll:
        return "--ld-alpha", (
            "the sft term (--loss sft, --sft-weight) reads the plain log-probs; "
            "LD-DPO with it is not supported"
        )
    alpha_given = config.f_alpha_divergence_coef != defaults["f_alpha_divergence_coef"]
    if alpha_given and config.f_divergence_type != "alpha_divergence":
        return "--f-alpha-divergence-coef", (
            "only --f-divergence-type alpha_divergence uses it"
        )
    return None


def cpo_settings_fit(config: CPOConfig) -> tuple[str, str] | None:
    """A CPO setting only with the losses that read it (TRL ignores it silently)."""
    smoothed = ("sigmoid", "simpo", "alphapo")
    if config.label_smoothing and config.loss not in smoothed:
        return "--label-smoothing", (
            f"the {config.loss!r} loss does not use it (losses that do: "
            f"{', '.join(smoothed)})"
        )
    if config.simpo_gamma != 0.5 and config.loss not in ("simpo", "alphapo"):
        return "--simpo-gamma", f"the {config.loss!r} loss does not use it (simpo, alphapo do)"  # fmt: skip
    if config.loss == "alphapo" and config.cpo_alpha != 1.0:
        return (
            "--cpo-alpha",
            "alphapo has no NLL term; use --loss simpo with --cpo-alpha",
        )
    return None


def best_checkpoint_settings(config: TrainSettings) -> tuple[str, str] | None:
    """--save-best names an evaluation metric; patience and direction need it."""
    if config.save_best and not config.save_best.startswith("val_"):
        return "--save-best", (
            f"evaluations log val_* metrics (val_loss, val_rewards/accuracies, ...), "
            f"got {config.save_best!r}"
        )
    if not config.save_best:
        if config.early_stopping_patience:
            return "--early-stopping-patience", "needs --save-best, the metric to watch"
        if config.greater_is_better != "auto":
            return "--greater-is-better", "needs --save-best, the metric it orders"
    return None


def trackers_installed(config: TrainSettings) -> tuple[str, str] | None:
    """Each --report-to tracker importable, or one line naming its extra."""
    for name in config.report_to:
        module = REPORT_TARGETS[name]
        if module and importlib.util.find_spec(module) is None:
            return "--report-to", (
                f'{name} is not installed: pip install "mlx-align[{name}]"'
            )
    if config.project_name and not {"wandb", "trackio"} & set(config.report_to):
        return "--project-name", "names the project of --report-to wandb or trackio"
    return None


def weights_problem(
    weights_flag: str, text: str, items: tuple[str, ...], items_flag: str, noun: str
) -> tuple[str, str] | None:
    """Comma-separated finite weights in ``text``, none or one per item (``noun``
    names the items in the message)."""
    weights = split_weights(text)
    for weight in weights:
        try:
            if not math.isfinite(float(weight)):
                raise ValueError
        except ValueError:
            return weights_flag, f"{weight!r} is not a finite number"
    if weights and len(weights) != len(items):
        return (
            weights_flag,
            f"{len(weights)} weight{'s' * (len(weights) != 1)} for "
            f"{len(items)} {noun} ({', '.join(items)}): "
            f"give one per {items_flag}",
        )
    return None


def split_weights(text: str) -> list[str]:
    """The comma-separated items of --reward-weights, as ``GroupScorer`` splits them."""
    return [w.strip() for w in text.split(",") if w.strip()]


def grpo_needs_a_reward(config: GroupSettings) -> tuple[str, str] | None:
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
    return weights_problem(
        "--reward-weights",
        config.reward_weights,
        config.reward,
        "--reward",
        "reward functions",
    )


def tools_resolve(config: ToolSettings) -> tuple[str, str] | None:
    """``--tool`` functions with schemas and an ``--environment`` factory that
    makes environments with ``reset``, imported before any model loads."""
    from mlx_align.sampling.tools import load_environment_factory, load_tools

    try:
        load_tools(config.tool)
        if config.environment:
            load_environment_factory(config.environment)
    except UserError as error:
        return error.setting, error.message
    return None


def clip_and_lengths(config: GroupSettings) -> tuple[str, str] | None:
    if config.epsilon_high and config.epsilon_high < config.epsilon:
        return (
            "--epsilon-high",
            f"must be 0 (same as --epsilon) or >= --epsilon ({shown(config.epsilon)}), "
            f"got {shown(config.epsilon_high)}",
        )
    return None


# GRPO settings read by some loss types only (TRL ignores them silently).
GRPO_LOSS_SETTINGS = {
    "sapo_temperature_pos": ("sapo",),
    "sapo_temperature_neg": ("sapo",),
    "vespo_k_pos": ("vespo",),
    "vespo_lambda_pos": ("vespo",),
    "vespo_k_neg": ("vespo",),
    "vespo_lambda_neg": ("vespo",),
    "delta": ("grpo", "bnpo", "dr_grpo", "dapo", "luspo"),
}


def grpo_loss_settings_fit(config: GRPOConfig) -> tuple[str, str] | None:
    """A loss setting only with a loss type that reads it; δ above the clip."""
    defaults = {f.name: f.default for f in dataclasses.fields(GRPOConfig)}
    for name, users in GRPO_LOSS_SETTINGS.items():
        if getattr(config, name) != defaults[name] and config.loss not in users:
            return flag(name), (
                f"the {config.loss!r} loss does not use it (losses that do: "
                f"{', '.join(users)})"
            )
    gdpo = config.multi_objective_aggregation == "normalize_then_sum"
    if gdpo and config.scale_rewards != "group":
        return "--scale-rewards", (
            "normalize_then_sum normalises each reward within its group and the sum "
            "over the batch itself; leave --scale-rewards at group"
        )
    clip_high = config.epsilon_high or config.epsilon
    if config.delta and config.delta <= 1.0 + clip_high:
        return "--delta", (
            f"must be above 1 + the upper clip ({shown(1.0 + clip_high)}), got "
            f"{shown(config.delta)}"
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
    return one_judge(config)


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
    (TrainSettings, best_checkpoint_settings),
    (TrainSettings, trackers_installed),
    (AdapterSettings, dora_needs_dense_layers),
    (RunSettings, splits_differ),
    (PreferenceSettings, reference_is_not_the_model),
    (DPOLossSettings, dpo_loss_settings_fit),
    (CPOConfig, cpo_settings_fit),
    (GroupSettings, grpo_needs_a_reward),
    (RewardSettings, rewards_resolve_and_match_weights),
    (GroupSettings, clip_and_lengths),
    (ToolSettings, tools_resolve),
    (GRPOConfig, grpo_loss_settings_fit),
    (SamplingSettings, length_problem),
    (InitModelConfig, hidden_size_fits_the_heads),
    (OnlineDPOConfig, judge_settings),
    (PPOConfig, a_reward),
]
