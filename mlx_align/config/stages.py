"""One small dataclass per stage; precedence is CLI flag > ``--config`` YAML > default.

The stages that sample from the policy while they train (GRPO, online DPO,
PPO) have theirs in ``online.py``.

Each field's ``help`` metadata is the text ``--help`` shows, so the
dataclass is the single place a setting is described (``settings.py``: how;
``build.py``: building and checking one; ``checks.py``: the checks
across settings).
"""

from __future__ import annotations

from dataclasses import dataclass

from mlx_align.config.losses import DPOLossSettings
from mlx_align.config.memory import MemorySettings
from mlx_align.config.settings import (
    FIELD_MAP,
    MIN_VOCAB_SIZE,
    SEED,
    Rule,
    at_least,
    exactly,
    fraction,
    in_range,
    non_negative,
    one_of,
    positive,
    setting,
    stage_defaults,
)
from mlx_align.config.tools import EvalToolSettings
from mlx_align.data.source import DataOptions, DataSource
from mlx_align.model.chat_templates import CHAT_TEMPLATES


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


# --report-to's choices: the module each tracker needs (None: nothing to report).
TRACKERS = ("tensorboard", "wandb", "trackio")  # each tracker's module is its name
REPORT_TARGETS: dict[str, str | None] = {**{t: t for t in TRACKERS}, "none": None}


@dataclass
class TrainSettings(MemorySettings):
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
    report_to: tuple = setting(
        (),
        "Experiment tracker beside metrics.jsonl: tensorboard (R/tensorboard/), "
        "wandb (R/wandb/; WANDB_MODE=offline keeps it local), trackio (its local "
        'store) or none; repeat for several. Each is an extra: pip install "mlx-align[wandb]".',
        choices="mlx_align.config.stages:REPORT_TARGETS",
        multiple=True,
    )
    project_name: str = setting(
        "",
        "wandb's and trackio's project (default: WANDB_PROJECT / TRACKIO_PROJECT, else mlx-align).",
    )
    save_best: str = setting(
        "",
        "Keep the weights of the best evaluation by this metric (val_loss, "
        "val_rewards/accuracies, val_win_rate, ...) in R/best/ beside the last.",
    )
    greater_is_better: str = setting(
        "auto",
        "Whether a higher --save-best is better: auto (lower for a *loss, higher "
        "otherwise), true or false.",
        choices=("auto", "true", "false"),
    )
    early_stopping_patience: int = setting(
        0,
        "Stop after this many evaluations without a better --save-best (0: never).",
        check=non_negative,
    )


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
    adapter_path: str = setting(
        "",
        "Keep training these adapters (a directory with adapters.safetensors + "
        "adapter_config.json; its type, rank and layers replace the LoRA flags); "
        "the reference stays the base model.",
    )
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
        "Chat template: chatml, chatml-tools (ChatML with <tool_call> tokens, as "
        "Qwen2.5 calls tools), qa (a user turn is 'Question: ...\\nAnswer:') or qa-tools (qa with pythonic calls).",
        choices=tuple(CHAT_TEMPLATES),
    )


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
        "Pack pairs end to end in rows without padding (models whose attention allows it, probed at load; each "
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
    RunSettings,
    TrainSettings,
    AdapterSettings,
    PreferenceSettings,
    PairSettings,
    DPOLossSettings,
):
    sft_weight: float = setting(
        0.0,
        "α: add α · the chosen completion's per-token NLL, a per-pair mean "
        "(RPO; TRL 1.16 writes RPO as --loss sigmoid --loss sft, a batch token mean).",
        check=non_negative,
    )


@stage_defaults(learning_rate=5e-5)
class ORPOConfig(RunSettings, TrainSettings, AdapterSettings, PairSettings):
    beta: float = setting(
        0.1,
        "λ: weight of the odds-ratio term against the chosen NLL.",
        check=positive,
    )


@stage_defaults(learning_rate=5e-5)
class CPOConfig(RunSettings, TrainSettings, AdapterSettings, PairSettings):
    """Reference-free pairs (TRL's experimental ``CPOConfig``, its names)."""

    loss: str = setting(
        "sigmoid",
        "TRL's loss_type: sigmoid (CPO), hinge, ipo, simpo, or alphapo (simpo "
        "without the NLL term; shape its reward with --alpha).",
        choices="mlx_align.losses.cpo:CPO_LOSSES",
    )
    beta: float = setting(
        0.1, "β: the scale of the implicit reward (τ for ipo).", check=positive
    )
    cpo_alpha: float = setting(
        1.0,
        "Weight of the chosen completion's NLL (CPO's behaviour-cloning term); 0 "
        "with --loss simpo is SimPO.",
        check=non_negative,
    )
    simpo_gamma: float = setting(
        0.5, "γ: SimPO's target reward margin (simpo, alphapo).", check=non_negative
    )
    label_smoothing: float = setting(
        0.0,
        "ε: the conservative loss's share of flipped labels (sigmoid, simpo, alphapo).",
        check=in_range(0, 0.5, open_high=True),
    )
    alpha: float = setting(
        0.0,
        "AlphaPO's α: rewards (1 − p^(−α))/α instead of log p (0: log p).",
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


@dataclass
class EvalMathConfig(EvalToolSettings):
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
