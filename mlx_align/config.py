"""One small dataclass per stage; precedence is CLI flag > ``--config`` YAML > default.

Each field's ``help`` metadata is the text ``--help`` shows, so the
dataclass is the single place a setting is described.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import UserError
from .model.chat_templates import CHAT_TEMPLATES


def setting(default: Any, help: str, **kwargs: Any) -> Any:
    """A config field. ``choices`` is a tuple, or ``"module:REGISTRY"``: the
    registry the code calls, read when a value is checked (so the CLI starts
    without importing MLX, and a registry entry is a CLI choice)."""
    return field(default=default, metadata={"help": help, **kwargs})


def stage_defaults(**defaults: Any) -> Callable[[type], type]:
    """``@dataclass``, with the defaults of some inherited settings changed: a
    stage declares only the value (e.g. its learning rate); the help stays
    where the setting is declared."""

    def make(cls: type) -> type:
        annotations = cls.__dict__.get("__annotations__", {})
        for name, value in defaults.items():
            inherited = next(
                base.__dataclass_fields__[name]
                for base in cls.__mro__[1:]
                if name in getattr(base, "__dataclass_fields__", {})
            )
            annotations[name] = inherited.type
            setattr(cls, name, field(default=value, metadata=inherited.metadata))
        cls.__annotations__ = annotations
        return dataclass(cls)

    return make


@dataclass
class RunSettings:
    """Where a stage reads and writes."""

    model: str = setting(
        "", "Local mlx-lm model directory or Hugging Face hub id.", required=True
    )
    data: str = setting(
        "",
        "Directory with train.jsonl (and valid.jsonl), or one .jsonl file.",
        required=True,
    )
    out: str = setting(
        "runs/out", "Run directory: results, checkpoints, metrics.jsonl."
    )


@dataclass
class TrainSettings:
    """The training loop: steps, batch, schedule, eval, checkpoints."""

    steps: int = setting(200, "Optimizer steps to train for.")
    batch_size: int = setting(
        4,
        "Examples per micro-batch and rank: under mlx.launch with N ranks a "
        "global batch holds N x this many.",
    )
    grad_accumulation: int = setting(1, "Micro-batches per optimizer step.")
    learning_rate: float = setting(
        1e-4, "Peak learning rate (AdamW, bias-corrected as in PyTorch)."
    )
    warmup_steps: int = setting(10, "Linear warmup steps before cosine decay.")
    min_lr_ratio: float = setting(0.1, "Final learning rate as a fraction of the peak.")
    weight_decay: float = setting(0.0, "AdamW weight decay.")
    max_grad_norm: float = setting(1.0, "Clip the global gradient norm (0 disables).")
    max_length: int = setting(
        512, "Longest sequence in tokens; longer examples are truncated."
    )
    eval_every: int = setting(
        50, "Evaluate on the valid split every N steps (0: only at the end)."
    )
    eval_batches: int = setting(
        25, "Valid batches per evaluation (-1: the whole split)."
    )
    log_every: int = setting(10, "Write a metrics line every N steps.")
    save_every: int = setting(100, "Checkpoint every N steps (0: only at the end).")
    seed: int = setting(0, "Seed for data order, LoRA init and dropout.")
    compile: bool = setting(True, "mx.compile the training step.")
    grad_checkpoint: bool = setting(
        False, "Recompute layer activations in the backward pass to save memory."
    )
    resume: bool = setting(False, "Continue from the newest checkpoint in --out.")


@dataclass
class AdapterSettings:
    """LoRA / DoRA / full fine-tuning and the quantized base (QLoRA)."""

    lora_rank: int = setting(8, "LoRA rank r.")
    lora_alpha: float = setting(
        16.0, "LoRA alpha; the update is scaled by alpha / rank."
    )
    lora_dropout: float = setting(0.0, "Dropout on the LoRA input.")
    lora_layers: int = setting(
        -1, "Number of final transformer blocks to adapt (-1: all)."
    )
    lora_keys: str = setting(
        "",
        "Comma-separated module paths to adapt, e.g. self_attn.q_proj (empty: all linear layers).",
    )
    dora: bool = setting(False, "Weight-decomposed LoRA (DoRA) instead of LoRA.")
    full: bool = setting(False, "Train all weights instead of adapters.")
    quantize: int = setting(
        0,
        "Quantize the base to 4 or 8 bits in memory before attaching adapters (QLoRA).",
    )


@stage_defaults(learning_rate=1e-3)
class PretrainConfig(RunSettings, TrainSettings):
    max_length: int = setting(
        256, "Longest sequence in tokens; longer documents are truncated."
    )


@dataclass
class SFTConfig(RunSettings, TrainSettings, AdapterSettings):
    pass


@dataclass
class InitModelConfig:
    corpus: str = setting(
        "",
        "Directory (or .jsonl file) whose text trains the BPE tokenizer.",
        required=True,
    )
    out: str = setting("models/base", "Output model directory.")
    preset: str = setting(
        "tiny",
        "Size preset: tiny, small (~3M), base (~25M).",
        choices="mlx_align.model.tiny:PRESETS",
    )
    vocab_size: int = setting(0, "BPE vocabulary size (0: the preset's).")
    hidden_size: int = setting(0, "Override the preset's hidden size.")
    num_layers: int = setting(0, "Override the preset's number of layers.")
    seed: int = setting(0, "Seed for the weight initialisation.")
    chat_template: str = setting(
        "chatml",
        "Chat template: chatml, or qa (a user turn is 'Question: ...\\nAnswer:').",
        choices=tuple(CHAT_TEMPLATES),
    )


C = TypeVar("C")


def load_yaml(path: str) -> dict:
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise UserError(path, "config file not found") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        raise UserError(where, f"invalid YAML: {e}") from None
    if not isinstance(values, dict):
        raise UserError(path, "a config file must be a mapping of setting: value")
    return values


def choices_of(spec: tuple[str, ...] | str) -> tuple[str, ...]:
    """A field's ``choices``: the tuple, or the keys of the ``"module:REGISTRY"`` it names."""
    if isinstance(spec, tuple):
        return spec
    module, name = spec.split(":")
    return tuple(getattr(importlib.import_module(module), name))


def check_choices(cls: type, values: dict[str, Any], source: str) -> None:
    """Values given in a config file for enumerated settings (flags are checked by click)."""
    for f in dataclasses.fields(cls):
        spec = f.metadata.get("choices")
        if spec and f.name in values and values[f.name] not in choices_of(spec):
            allowed = ", ".join(choices_of(spec))
            raise UserError(
                source, f"{f.name}: {values[f.name]!r} is not one of {allowed}"
            )


def build_config(cls: type[C], cli: dict[str, Any], config_file: str | None) -> C:
    """Defaults, then the YAML file, then flags the user actually gave (non-None)."""
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    if config_file:
        for key, value in load_yaml(config_file).items():
            key = key.replace("-", "_")
            if key not in names:
                raise UserError(config_file, f"unknown setting '{key}'")
            values[key] = value
        check_choices(cls, values, config_file)
    given = {k: v for k, v in cli.items() if v is not None and v != () and k in names}
    values.update(given)
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.metadata.get("required") and not values.get(f.name)
    ]
    if missing:
        flags = ", ".join("--" + m.replace("_", "-") for m in missing)
        raise UserError(
            config_file or "command line", f"missing required setting {flags}"
        )
    for f in dataclasses.fields(
        cls
    ):  # a YAML list or a single flag value for a repeatable one
        if f.metadata.get("multiple") and f.name in values:
            value = values[f.name]
            values[f.name] = (value,) if isinstance(value, str) else tuple(value)
    return cls(**values)


@dataclass
class PreferenceSettings:
    """Shared by the reference-based preference stages (DPO family, KTO)."""

    beta: float = setting(0.1, "β: strength of the KL constraint to the reference.")
    ref_model: str = setting(
        "", "A separate reference model (default: the base weights with adapters off)."
    )
    precompute: bool = setting(
        True, "Compute reference log-probs once before training and cache them."
    )


@dataclass
class PairSettings:
    """How the paired stages (DPO family, ORPO) batch chosen and rejected."""

    padding_free: bool = setting(
        False,
        "Pack pairs end to end in rows without padding (llama-family models; each "
        "prompt once either way). Saves the compute padding costs; attention over "
        "a packed row grows with its length, so it pays off for larger models.",
    )
    max_batch_tokens: int = setting(
        -1,
        "Split a batch whose padded tokens exceed this into micro-batches, with "
        "the same gradient, so the few longest batches do not set the peak "
        "memory (-1: auto, 1.25x the run's median batch; 0: never split).",
    )


@stage_defaults(learning_rate=5e-5)
class DPOConfig(
    RunSettings, TrainSettings, AdapterSettings, PreferenceSettings, PairSettings
):
    loss: str = setting(
        "sigmoid",
        "sigmoid (DPO), ipo, hinge (SLiC), robust (cDPO-style, needs "
        "--label-smoothing), or any other name in losses.DPO_LOSSES.",
        choices="mlx_align.losses:DPO_LOSSES",
    )
    label_smoothing: float = setting(
        0.0, "ε for the robust loss: assumed fraction of flipped labels."
    )
    sft_weight: float = setting(0.0, "α: add α · NLL of the chosen completion (RPO).")


@stage_defaults(learning_rate=5e-5)
class ORPOConfig(RunSettings, TrainSettings, AdapterSettings, PairSettings):
    beta: float = setting(
        0.1, "λ: weight of the odds-ratio term against the chosen NLL."
    )


@stage_defaults(learning_rate=5e-5)
class KTOConfig(RunSettings, TrainSettings, AdapterSettings, PreferenceSettings):
    desirable_weight: float = setting(1.0, "λ_D: weight of desirable examples.")
    undesirable_weight: float = setting(1.0, "λ_U: weight of undesirable examples.")


@dataclass
class RewardConfig(RunSettings, TrainSettings, AdapterSettings):
    center_rewards_coefficient: float = setting(
        0.0, "Add c · (r_w + r_l)² to keep rewards centred at 0 (TRL's option)."
    )


@stage_defaults(learning_rate=1e-5)
class GRPOConfig(RunSettings, TrainSettings, AdapterSettings):
    batch_size: int = setting(
        2,
        "Prompts per micro-batch and rank (N ranks: N x this many per global "
        "batch); each is sampled --group-size times.",
    )
    reward: tuple = setting(
        ("math",),
        "Reward function: math, format, or module:function (repeat the flag for several).",
        multiple=True,
    )
    reward_weights: str = setting(
        "", "Comma-separated weights, one per --reward (default: all 1)."
    )
    group_size: int = setting(8, "G: completions sampled per prompt.")
    max_completion_tokens: int = setting(256, "Longest sampled completion.")
    temperature: float = setting(1.0, "Sampling temperature for rollouts.")
    top_p: float = setting(1.0, "Nucleus sampling threshold for rollouts.")
    beta: float = setting(
        0.0, "Weight of the k3 KL to the reference (0: no reference pass)."
    )
    epsilon: float = setting(0.2, "Lower clip: ratios below 1 - epsilon are clipped.")
    epsilon_high: float = setting(
        0.0, "Upper clip (0: same as --epsilon; DAPO uses 0.28)."
    )
    iterations: int = setting(
        1,
        "μ: optimisation passes per rollout batch (the clip only acts when μ > 1); "
        "checkpoints fall on multiples of μ, so --resume is exact.",
    )
    loss: str = setting(
        "grpo",
        "Token aggregation: grpo, bnpo, dr_grpo or dapo.",
        choices="mlx_align.grpo_loss:GRPO_AGGREGATIONS",
    )
    scale_rewards: str = setting(
        "group",
        "Advantage scaling: group, batch or none (Dr. GRPO).",
        choices="mlx_align.advantages:ADVANTAGE_SCALES",
    )
    fuse_rollout: str = setting(
        "auto",
        "Sample from LoRA-fused weights, a copy held during each rollout "
        "(auto: when the copy is under 10% of memory; never for a quantized base).",
        choices="mlx_align.fused_sampler:FUSE_CHOICES",
    )
    max_length: int = setting(1024, "Longest prompt + completion in tokens.")


@dataclass
class EvalMathConfig:
    model: str = setting("", "Model directory or hub id.", required=True)
    data: str = setting(
        "",
        "Directory with test.jsonl (prompt + answer), or one .jsonl file.",
        required=True,
    )
    adapter_path: str = setting("", "Optional adapters to load on the model.")
    split: str = setting("test", "Which split of --data to evaluate.")
    max_tokens: int = setting(64, "Longest greedy completion.")
    batch_size: int = setting(32, "Prompts decoded together.")
    limit: int = setting(0, "Evaluate only the first N problems (0: all).")
    out: str = setting("", "Optional JSONL file for per-problem results.")


@stage_defaults(learning_rate=5e-5)
class OnlineDPOConfig(RunSettings, TrainSettings, AdapterSettings):
    """Online DPO: pairs sampled from the policy each step, labelled by a judge."""

    batch_size: int = setting(
        4,
        "Prompts per micro-batch and rank (N ranks: N x this many per global "
        "batch); each is sampled twice.",
    )
    reward_model: str = setting(
        "", "Judge: a reward model from `mlx-align reward` (the higher score wins)."
    )
    judge: str = setting(
        "",
        "Judge: module:function with TRL's pairwise-judge signature "
        "judge(prompts, completion_pairs) -> preferred index per pair (-1: tie).",
    )
    reward: tuple = setting(
        (),
        "Judge: reward function(s) with GRPO's signature, e.g. math (the higher "
        "reward wins; repeat the flag for several).",
        multiple=True,
    )
    reward_weights: str = setting(
        "", "Comma-separated weights, one per --reward (default: all 1)."
    )
    beta: float = setting(0.1, "β: strength of the KL constraint to the reference.")
    loss: str = setting(
        "sigmoid",
        "DPO-family loss on the judged pairs: any name in losses.DPO_LOSSES.",
        choices="mlx_align.losses:DPO_LOSSES",
    )
    label_smoothing: float = setting(
        0.0, "ε for the robust loss: assumed fraction of flipped labels."
    )
    max_completion_tokens: int = setting(64, "Longest sampled completion.")
    temperature: float = setting(0.9, "Sampling temperature (TRL's default).")
    top_p: float = setting(1.0, "Nucleus sampling threshold.")
    fuse_rollout: str = setting(
        "auto",
        "Sample from LoRA-fused weights, a copy held while sampling "
        "(auto: when the copy is under 10% of memory; never for a quantized base).",
        choices="mlx_align.fused_sampler:FUSE_CHOICES",
    )
    max_length: int = setting(1024, "Longest prompt + completion in tokens.")


@stage_defaults(learning_rate=1e-5)
class PPOConfig(RunSettings, TrainSettings, AdapterSettings):
    """PPO with a critic (``mlx-align ppo``): TRL ``PPOTrainer``'s settings, its names."""

    reward_model: str = setting(
        "",
        "An `mlx-align reward` output directory: its score of each completion, "
        "read at the last token, is the reward.",
    )
    reward: tuple = setting(
        (),
        "Reward function: math, format, or module:function, as grpo's (repeat the "
        "flag for several); added to --reward-model's score when both are given.",
        multiple=True,
    )
    reward_weights: str = setting(
        "", "Comma-separated weights, one per --reward (default: all 1)."
    )
    value_model: str = setting(
        "",
        "A separate mlx-lm model (same tokenizer) as the critic's backbone "
        "(default: the policy's base with the critic's own adapters).",
    )
    num_mini_batches: int = setting(
        1,
        "Mini-batches per rollout batch, one optimizer step each: a rollout "
        "batch holds this x --grad-accumulation x --batch-size prompts.",
    )
    ppo_epochs: int = setting(
        4,
        "Passes over each rollout batch; --ppo-epochs x --num-mini-batches "
        "optimizer steps share one rollout, and checkpoints fall on multiples of it.",
    )
    kl_coef: float = setting(
        0.05, "β: the per-token penalty β·(log π − log π_ref) taken from the reward."
    )
    gamma: float = setting(1.0, "γ: discount factor of the returns.")
    lam: float = setting(0.95, "λ of generalised advantage estimation (GAE).")
    cliprange: float = setting(
        0.2, "ε: policy ratios outside [1 − ε, 1 + ε] are clipped."
    )
    cliprange_value: float = setting(
        0.2, "Values may move at most this far from their rollout-time value."
    )
    vf_coef: float = setting(0.1, "Weight of the value loss in the total loss.")
    whiten_rewards: bool = setting(
        False, "Scale the per-token rewards to unit variance over each rollout batch."
    )
    missing_eos_penalty: float = setting(
        0.0, "Subtracted from the score of a completion that stops without EOS."
    )
    max_completion_tokens: int = setting(64, "Longest sampled completion.")
    temperature: float = setting(1.0, "Sampling temperature for rollouts.")
    top_p: float = setting(1.0, "Nucleus sampling threshold for rollouts.")
    fuse_rollout: str = setting(
        "auto",
        "Sample from LoRA-fused weights, a copy held during each rollout "
        "(auto: when the copy is under 10% of memory; never for a quantized base).",
        choices="mlx_align.fused_sampler:FUSE_CHOICES",
    )
    max_length: int = setting(1024, "Longest prompt + completion in tokens.")
