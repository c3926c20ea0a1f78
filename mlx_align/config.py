"""One small dataclass per stage; precedence is CLI flag > ``--config`` YAML > default.

Each field's ``help`` metadata is the text ``--help`` shows, so the
dataclass is the single place a setting is described.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .data.formats import FIELD_MAP_HELP, is_field_map
from .data.source import DataOptions, DataSource
from .errors import UserError
from .model.chat_templates import CHAT_TEMPLATES


def setting(default: Any, help: str, **kwargs: Any) -> Any:
    """A config field. ``choices`` is a tuple, or ``"module:REGISTRY"``: the
    registry the code calls, read when a value is checked (so the CLI starts
    without importing MLX, and a registry entry is a CLI choice). ``check``
    is a ``Rule`` the value must pass (``build_config`` applies it)."""
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass(frozen=True)
class Rule:
    """A named predicate on one setting's value: ``text`` completes "must be ...".

    Rules combine with ``|``: ``exactly(-1, "all") | at_least(1)`` reads
    "must be -1 (all) or >= 1".
    """

    test: Callable[[Any], bool]
    text: str

    def __call__(self, value: Any) -> bool:
        return bool(self.test(value))

    def __or__(self, other: Rule) -> Rule:
        return Rule(lambda v: self(v) or other(v), f"{self.text} or {other.text}")


def at_least(n: float) -> Rule:
    return Rule(lambda v: v >= n, f">= {n}")


def above(n: float) -> Rule:
    return Rule(lambda v: v > n, f"> {n}")


def in_range(low: float, high: float, *, open_low=False, open_high=False) -> Rule:
    """``[low, high]``, either end open on request: ``in_range(0, 1, open_high=True)`` is [0, 1)."""

    def test(v: Any) -> bool:
        above_low = v > low if open_low else v >= low
        below_high = v < high if open_high else v <= high
        return above_low and below_high

    left, right = "(" if open_low else "[", ")" if open_high else "]"
    return Rule(test, f"in {left}{low}, {high}{right}")


def one_of(*values: Any) -> Rule:
    return Rule(lambda v: v in values, "one of " + ", ".join(map(str, values)))


def exactly(value: Any, meaning: str) -> Rule:
    return Rule(lambda v: v == value, f"{value} ({meaning})")


positive = above(0)
non_negative = at_least(0)
fraction = in_range(0, 1, open_high=True)  # [0, 1)
SEED = in_range(0, 2**32 - 1)  # numpy and MLX take unsigned seeds
# A byte-level BPE vocabulary holds the 256 bytes and init-model's 5 special
# tokens before any merge (model/tiny.py: SPECIAL_TOKENS; a test keeps them equal).
MIN_VOCAB_SIZE = 256 + 5


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


# --field-map: NEW=OLD pairs (data/formats.py parses them), checked before anything loads.
FIELD_MAP = Rule(is_field_map, FIELD_MAP_HELP)


@dataclass
class RunSettings:
    """Where a stage reads and writes."""

    model: str = setting(
        "", "Local mlx-lm model directory or Hugging Face hub id.", required=True
    )
    data: str = setting(
        "",
        "Directory with train.jsonl (and valid.jsonl), one .jsonl/.parquet file, "
        "or a Hugging Face hub dataset ORG/NAME[:CONFIG] (parquet, JSON lines or "
        "JSON; HF_HUB_OFFLINE=1 reads the cache only). A local path that exists wins.",
        required=True,
    )
    data_split: str = setting(
        "train",
        "The split to train on: a hub dataset's split name (train, train_prefs, "
        "...), or DIR/<name>.jsonl.",
        check=Rule(bool, "a split name"),
    )
    valid_split: str = setting(
        "",
        "The split evaluated during training; empty: valid.jsonl for a directory, "
        "for a hub dataset the first present of validation (valid, val, dev) and "
        "test, printed; 'none': no evaluation split.",
    )
    max_samples: int = setting(
        0, "Read at most N rows of each split (0: all).", check=non_negative
    )
    field_map: str = setting(
        "",
        "Rename dataset columns: NEW=OLD pairs, e.g. prompt=question,answer=solution "
        "(the package's 'prompt' is the dataset's 'question').",
        check=FIELD_MAP,
    )
    out: str = setting(
        "runs/out", "Run directory: results, checkpoints, metrics.jsonl."
    )

    @property
    def source(self) -> DataSource:
        """``--data`` with the settings that read it, for ``load_split`` (``data/source.py``)."""
        options = DataOptions(
            self.data_split, self.valid_split, self.max_samples, self.field_map
        )
        return DataSource(self.data, options)


@dataclass
class TrainSettings:
    """The training loop: steps, batch, schedule, eval, checkpoints."""

    steps: int = setting(200, "Optimizer steps to train for.", check=at_least(1))
    batch_size: int = setting(
        4,
        "Examples per micro-batch and rank: under mlx.launch with N ranks a "
        "global batch holds N x this many.",
        check=at_least(1),
    )
    grad_accumulation: int = setting(
        1, "Micro-batches per optimizer step.", check=at_least(1)
    )
    learning_rate: float = setting(
        1e-4,
        "Peak learning rate (AdamW, bias-corrected as in PyTorch).",
        check=positive,
    )
    warmup_steps: int = setting(
        10, "Linear warmup steps before cosine decay.", check=non_negative
    )
    min_lr_ratio: float = setting(
        0.1, "Final learning rate as a fraction of the peak.", check=in_range(0, 1)
    )
    weight_decay: float = setting(0.0, "AdamW weight decay.", check=non_negative)
    max_grad_norm: float = setting(
        1.0, "Clip the global gradient norm (0 disables).", check=non_negative
    )
    max_length: int = setting(
        512,
        "Longest sequence in tokens; longer examples are truncated.",
        check=at_least(2),
    )
    eval_every: int = setting(
        50,
        "Evaluate on the valid split every N steps (0: only at the end).",
        check=non_negative,
    )
    eval_batches: int = setting(
        25,
        "Valid batches per evaluation (-1: the whole split).",
        check=exactly(-1, "the whole split") | at_least(1),
    )
    log_every: int = setting(
        10, "Write a metrics line every N steps.", check=at_least(1)
    )
    save_every: int = setting(
        100, "Checkpoint every N steps (0: only at the end).", check=non_negative
    )
    seed: int = setting(0, "Seed for data order, LoRA init and dropout.", check=SEED)
    compile: bool = setting(True, "mx.compile the training step.")
    grad_checkpoint: bool = setting(
        False, "Recompute layer activations in the backward pass to save memory."
    )
    resume: bool = setting(False, "Continue from the newest checkpoint in --out.")


@dataclass
class AdapterSettings:
    """LoRA / DoRA / full fine-tuning and the quantized base (QLoRA)."""

    lora_rank: int = setting(8, "LoRA rank r.", check=at_least(1))
    lora_alpha: float = setting(
        16.0, "LoRA alpha; the update is scaled by alpha / rank.", check=positive
    )
    lora_dropout: float = setting(0.0, "Dropout on the LoRA input.", check=fraction)
    lora_layers: int = setting(
        -1,
        "Number of final transformer blocks to adapt (-1: all).",
        check=exactly(-1, "all") | at_least(1),
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
        check=one_of(0, 4, 8),
    )


@stage_defaults(learning_rate=1e-3)
class PretrainConfig(RunSettings, TrainSettings):
    max_length: int = setting(
        256,
        "Longest sequence in tokens; longer documents are truncated.",
        check=at_least(2),
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
    vocab_size: int = setting(
        0,
        "BPE vocabulary size (0: the preset's).",
        check=exactly(0, "the preset's") | at_least(MIN_VOCAB_SIZE),
    )
    hidden_size: int = setting(
        0, "Override the preset's hidden size.", check=non_negative
    )
    num_layers: int = setting(
        0, "Override the preset's number of layers.", check=non_negative
    )
    seed: int = setting(0, "Seed for the weight initialisation.", check=SEED)
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


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def shown(value: Any) -> str:
    """A value as a message quotes it: numbers plainly (-1, 0.5, 1e-05), others in repr."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return repr(value)


KIND_NAMES = {
    int: "an integer",
    float: "a number",
    bool: "true or false",
    str: "a string",
}


def yaml_value(name: str, kind: type, value: Any, source: str) -> Any:
    """A config-file value as its setting's type (flags are typed by click).

    A float setting also takes a numeric string: PyYAML reads ``1e-4`` (no
    dot) as the string '1e-4'. A string setting takes a number as its text.
    """
    if value is None:
        raise UserError(source, f"{name}: no value given")
    if kind is bool and isinstance(value, bool):
        return value
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is float and not isinstance(value, bool):
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    if kind is str and not isinstance(value, bool | list | dict):
        return str(value)
    if kind is tuple:  # a repeatable setting: one string or a list of them
        items = [value] if isinstance(value, str) else value
        if isinstance(items, list) and all(isinstance(v, str) for v in items):
            return tuple(items)
        raise UserError(source, f"{name}: expected a string or a list of strings")
    got = type(value).__name__
    raise UserError(
        source, f"{name}: expected {KIND_NAMES[kind]}, got {got} {shown(value)}"
    )


# Checks across settings: (config class, check). A check returns None, or
# (setting, message) for the UserError; ``build_config`` runs those whose class
# the config is an instance of, after every single setting passed its ``Rule``.
Clash = Callable[[Any], "tuple[str, str] | None"]
CLASHES: list[tuple[type, Clash]] = []


def clash(cls: type) -> Callable[[Clash], Clash]:
    """Register a check across settings of ``cls`` (and its subclasses)."""

    def register(check: Clash) -> Clash:
        CLASHES.append((cls, check))
        return check

    return register


def check_settings(config: Any, origin: dict[str, str]) -> None:
    """Every setting against its ``Rule``, then the clashes; the first failure raises.

    ``origin`` maps a setting given in a config file to that file: its error
    then names the file and the key, a flag's names the flag.
    """
    for f in dataclasses.fields(config):
        value, rule = getattr(config, f.name), f.metadata.get("check")
        if isinstance(value, float) and not math.isfinite(value):
            problem = f"must be a finite number, got {shown(value)}"
        elif rule is not None and not rule(value):
            problem = f"must be {rule.text}, got {shown(value)}"
        else:
            continue
        if f.name in origin:
            raise UserError(origin[f.name], f"{f.name}: {problem}")
        raise UserError(flag(f.name), problem)
    for cls, check in CLASHES:
        if isinstance(config, cls) and (found := check(config)):
            raise UserError(*found)


def build_config(cls: type[C], cli: dict[str, Any], config_file: str | None) -> C:
    """Defaults, then the YAML file, then flags the user actually gave (non-None).

    The result is checked before anything loads: each setting's ``Rule``,
    then the ``CLASHES`` between settings; a failure is a ``UserError``.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kinds = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    if config_file:
        for key, value in load_yaml(config_file).items():
            key = str(key).replace("-", "_")
            if key not in fields:
                raise UserError(config_file, f"unknown setting '{key}'")
            values[key] = yaml_value(key, kinds[key], value, config_file)
            origin[key] = config_file
        check_choices(cls, values, config_file)
    given = {k: v for k, v in cli.items() if v is not None and v != () and k in fields}
    values.update(given)
    for key in given:
        origin.pop(key, None)
    missing = [
        name
        for name, f in fields.items()
        if f.metadata.get("required") and not values.get(name)
    ]
    if missing:
        flags = ", ".join(map(flag, missing))
        raise UserError(
            config_file or "command line", f"missing required setting {flags}"
        )
    for name, f in fields.items():  # a single flag value for a repeatable one
        if f.metadata.get("multiple") and name in values:
            value = values[name]
            values[name] = (value,) if isinstance(value, str) else tuple(value)
    config = cls(**values)
    check_settings(config, origin)
    return config


@dataclass
class PreferenceSettings:
    """Shared by the reference-based preference stages (DPO family, KTO)."""

    beta: float = setting(
        0.1, "β: strength of the KL constraint to the reference.", check=positive
    )
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
        check=at_least(-1),
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
        0.0,
        "ε for the robust loss: assumed fraction of flipped labels.",
        check=in_range(0, 0.5, open_high=True),
    )
    sft_weight: float = setting(
        0.0, "α: add α · NLL of the chosen completion (RPO).", check=non_negative
    )


@stage_defaults(learning_rate=5e-5)
class ORPOConfig(RunSettings, TrainSettings, AdapterSettings, PairSettings):
    beta: float = setting(
        0.1,
        "λ: weight of the odds-ratio term against the chosen NLL.",
        check=positive,
    )


@stage_defaults(learning_rate=5e-5)
class KTOConfig(RunSettings, TrainSettings, AdapterSettings, PreferenceSettings):
    desirable_weight: float = setting(
        1.0, "λ_D: weight of desirable examples.", check=positive
    )
    undesirable_weight: float = setting(
        1.0, "λ_U: weight of undesirable examples.", check=positive
    )


@dataclass
class RewardConfig(RunSettings, TrainSettings, AdapterSettings):
    center_rewards_coefficient: float = setting(
        0.0,
        "Add c · (r_w + r_l)² to keep rewards centred at 0 (TRL's option).",
        check=non_negative,
    )


@stage_defaults(learning_rate=1e-5)
class GRPOConfig(RunSettings, TrainSettings, AdapterSettings):
    batch_size: int = setting(
        2,
        "Prompts per micro-batch and rank (N ranks: N x this many per global "
        "batch); each is sampled --group-size times.",
        check=at_least(1),
    )
    reward: tuple = setting(
        ("math",),
        "Reward function: math, format, or module:function (repeat the flag for several).",
        multiple=True,
    )
    reward_weights: str = setting(
        "", "Comma-separated weights, one per --reward (default: all 1)."
    )
    group_size: int = setting(
        8,
        "G: completions sampled per prompt (advantages compare a group's "
        "rewards, so at least 2).",
        check=at_least(2),
    )
    max_completion_tokens: int = setting(
        256, "Longest sampled completion.", check=at_least(1)
    )
    temperature: float = setting(
        1.0, "Sampling temperature for rollouts.", check=positive
    )
    top_p: float = setting(
        1.0,
        "Nucleus sampling threshold for rollouts.",
        check=in_range(0, 1, open_low=True),
    )
    beta: float = setting(
        0.0,
        "Weight of the k3 KL to the reference (0: no reference pass).",
        check=non_negative,
    )
    epsilon: float = setting(
        0.2, "Lower clip: ratios below 1 - epsilon are clipped.", check=fraction
    )
    epsilon_high: float = setting(
        0.0,
        "Upper clip (0: same as --epsilon; DAPO uses 0.28).",
        check=non_negative,
    )
    iterations: int = setting(
        1,
        "μ: optimisation passes per rollout batch (the clip only acts when μ > 1); "
        "checkpoints fall on multiples of μ, so --resume is exact.",
        check=at_least(1),
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
    max_length: int = setting(
        1024, "Longest prompt + completion in tokens.", check=at_least(2)
    )


@dataclass
class EvalMathConfig:
    model: str = setting("", "Model directory or hub id.", required=True)
    data: str = setting(
        "",
        "Directory with test.jsonl (prompt + answer), one .jsonl/.parquet file, or a "
        "Hugging Face hub dataset ORG/NAME[:CONFIG] (e.g. GSM8K's question + answer).",
        required=True,
    )
    adapter_path: str = setting("", "Optional adapters to load on the model.")
    split: str = setting(
        "test",
        "Which split of --data to evaluate: DIR/<split>.jsonl, or a hub dataset's split.",
        check=Rule(bool, "a split name"),
    )
    max_tokens: int = setting(64, "Longest greedy completion.", check=at_least(1))
    batch_size: int = setting(32, "Prompts decoded together.", check=at_least(1))
    limit: int = setting(
        0, "Evaluate only the first N problems (0: all).", check=non_negative
    )
    field_map: str = setting(
        "",
        "Rename dataset columns: NEW=OLD pairs, e.g. prompt=problem,answer=solution.",
        check=FIELD_MAP,
    )
    out: str = setting("", "Optional JSONL file for per-problem results.")

    @property
    def source(self) -> DataSource:
        """eval-math reads one split, whichever role ``load_split`` is asked for."""
        options = DataOptions(self.split, self.split, self.limit, self.field_map)
        return DataSource(self.data, options)


# Checks across settings (``clash``): each returns (setting, message) or None.


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
def rewards_resolve_and_match_weights(config: GRPOConfig) -> tuple[str, str] | None:
    from .rewards.registry import resolve_reward

    if not config.reward:
        return "--reward", "at least one reward function is needed"
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
    return length_problem(config)


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


@stage_defaults(learning_rate=5e-5)
class OnlineDPOConfig(RunSettings, TrainSettings, AdapterSettings):
    """Online DPO: pairs sampled from the policy each step, labelled by a judge."""

    batch_size: int = setting(
        4,
        "Prompts per micro-batch and rank (N ranks: N x this many per global "
        "batch); each is sampled twice.",
        check=at_least(1),
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
    beta: float = setting(
        0.1, "β: strength of the KL constraint to the reference.", check=positive
    )
    loss: str = setting(
        "sigmoid",
        "DPO-family loss on the judged pairs: any name in losses.DPO_LOSSES.",
        choices="mlx_align.losses:DPO_LOSSES",
    )
    label_smoothing: float = setting(
        0.0,
        "ε for the robust loss: assumed fraction of flipped labels.",
        check=in_range(0, 0.5, open_high=True),
    )
    max_completion_tokens: int = setting(
        64, "Longest sampled completion.", check=at_least(1)
    )
    temperature: float = setting(
        0.9, "Sampling temperature (TRL's default).", check=positive
    )
    top_p: float = setting(
        1.0, "Nucleus sampling threshold.", check=in_range(0, 1, open_low=True)
    )
    fuse_rollout: str = setting(
        "auto",
        "Sample from LoRA-fused weights, a copy held while sampling "
        "(auto: when the copy is under 10% of memory; never for a quantized base).",
        choices="mlx_align.fused_sampler:FUSE_CHOICES",
    )
    max_length: int = setting(
        1024, "Longest prompt + completion in tokens.", check=at_least(2)
    )


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
        check=at_least(1),
    )
    ppo_epochs: int = setting(
        4,
        "Passes over each rollout batch; --ppo-epochs x --num-mini-batches "
        "optimizer steps share one rollout, and checkpoints fall on multiples of it.",
        check=at_least(1),
    )
    kl_coef: float = setting(
        0.05,
        "β: the per-token penalty β·(log π − log π_ref) taken from the reward.",
        check=non_negative,
    )
    gamma: float = setting(
        1.0, "γ: discount factor of the returns.", check=in_range(0, 1)
    )
    lam: float = setting(
        0.95, "λ of generalised advantage estimation (GAE).", check=in_range(0, 1)
    )
    cliprange: float = setting(
        0.2,
        "ε: policy ratios outside [1 − ε, 1 + ε] are clipped.",
        check=in_range(0, 1, open_low=True, open_high=True),
    )
    cliprange_value: float = setting(
        0.2,
        "Values may move at most this far from their rollout-time value.",
        check=positive,
    )
    vf_coef: float = setting(
        0.1, "Weight of the value loss in the total loss.", check=non_negative
    )
    whiten_rewards: bool = setting(
        False, "Scale the per-token rewards to unit variance over each rollout batch."
    )
    missing_eos_penalty: float = setting(
        0.0,
        "Subtracted from the score of a completion that stops without EOS.",
        check=non_negative,
    )
    max_completion_tokens: int = setting(
        64, "Longest sampled completion.", check=at_least(1)
    )
    temperature: float = setting(
        1.0, "Sampling temperature for rollouts.", check=positive
    )
    top_p: float = setting(
        1.0,
        "Nucleus sampling threshold for rollouts.",
        check=in_range(0, 1, open_low=True),
    )
    fuse_rollout: str = setting(
        "auto",
        "Sample from LoRA-fused weights, a copy held during each rollout "
        "(auto: when the copy is under 10% of memory; never for a quantized base).",
        choices="mlx_align.fused_sampler:FUSE_CHOICES",
    )
    max_length: int = setting(
        1024, "Longest prompt + completion in tokens.", check=at_least(2)
    )


# Clashes of the stages that sample and score: one judge or reward, that
# resolves; weights that match; room for the prompt.


def reward_problem(
    specs: tuple, weights: str, required: bool
) -> tuple[str, str] | None:
    """``--reward`` names that resolve and ``--reward-weights`` that match them."""
    if not specs:
        return (
            ("--reward", "at least one reward function is needed") if required else None
        )
    return rewards_resolve_and_match_weights(
        dataclasses.replace(
            GRPOConfig(model="m", data="d"), reward=specs, reward_weights=weights
        )
    )


@clash(OnlineDPOConfig)
def one_judge(config: OnlineDPOConfig) -> tuple[str, str] | None:
    named = [f for f, v in (("--reward-model", config.reward_model), ("--judge", config.judge), ("--reward", config.reward)) if v]  # fmt: skip
    if len(named) != 1:
        return (
            "--reward-model / --judge / --reward",
            f"name exactly one judge, got {', '.join(named) or 'none'}",
        )
    smoothing = label_smoothing_needs_a_loss_using_it(config)
    return (
        smoothing
        or reward_problem(config.reward, config.reward_weights, False)
        or length_problem(config)
    )


@clash(PPOConfig)
def a_reward(config: PPOConfig) -> tuple[str, str] | None:
    if not (config.reward_model or config.reward):
        return (
            "--reward-model / --reward",
            "PPO needs a reward model or a reward function",
        )
    return reward_problem(
        config.reward, config.reward_weights, False
    ) or length_problem(config)
