"""A run's model card: the README.md the hub shows for uploaded adapters or a fused model.

What a run directory ``R`` says about itself: its stage (the first line of
``R/config.yaml``), its settings, the data it read, and the held-out figures
it logged (the last ``val_*`` of ``R/metrics.jsonl``, and ``R/best/best.json``).
A fused model keeps the stages that made it in ``mlx_align_stages.json``, so
fusing a model that was itself fused (pretrain → SFT → DPO → GRPO) carries
the whole history into the card.

The front matter is what the hub reads (``huggingface_hub.ModelCardData``):
``library_name: mlx`` and ``pipeline_tag`` as mlx-lm's own cards write them,
``base_model`` and ``datasets`` where they are hub ids (a local path would
not resolve there), ``base_model_relation`` (``adapter`` or ``finetune``), and
the stages as ``tags``.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mlx_align.config.build import stage_of
from mlx_align.train.best import BEST_DIR
from mlx_align.train.report import markdown_table

HISTORY_FILE = "mlx_align_stages.json"
# The settings a card shows per stage, where the stage has them.
KEY_SETTINGS = (
    "loss",
    "steps",
    "learning_rate",
    "batch_size",
    "grad_accumulation",
    "group_size",
    "beta",
    "max_length",
    "lora_rank",
    "dora",
    "full",
    "quantize",
)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class StageRecord:
    """One training run, as a card tells it."""

    stage: str
    model: str
    data: str
    settings: dict[str, Any] = field(default_factory=dict)
    figures: dict[str, float] = field(default_factory=dict)  # last val_* logged
    best: dict[str, Any] | None = None  # R/best/best.json


def hub_id(name: str) -> str | None:
    """``name`` when it is a hub repository id and not a local path."""
    if not name or Path(name).expanduser().exists() or not HUB_ID.match(name):
        return None
    return name


def stage_record(run: Path) -> StageRecord:
    """What run directory ``run`` logged about itself."""
    text = (run / "config.yaml").read_text()
    config = yaml.safe_load(text) or {}
    figures: dict[str, float] = {}
    metrics = run / "metrics.jsonl"
    lines = metrics.read_text().splitlines() if metrics.exists() else []
    for line in lines:
        record = json.loads(line)
        figures |= {k: v for k, v in record.items() if k.startswith("val_")}
    best_file = run / BEST_DIR / "best.json"
    best = json.loads(best_file.read_text()) if best_file.exists() else None
    return StageRecord(
        stage=stage_of(text) or "training",
        model=str(config.get("model", "")),
        data=str(config.get("data", "")),
        settings={k: config[k] for k in KEY_SETTINGS if k in config},
        figures=figures,
        best=best,
    )


def history_of(model: str) -> list[StageRecord]:
    """The stages that made ``model`` (a local directory ``fuse`` wrote); none else."""
    path = Path(model).expanduser() / HISTORY_FILE
    if not path.exists():
        return []
    return [StageRecord(**entry) for entry in json.loads(path.read_text())]


def run_history(run: Path, base: str | None = None) -> list[StageRecord]:
    """The stages of ``run``'s base model (``base``, else the one it trained on),
    then ``run``'s own."""
    this = stage_record(run)
    return [*history_of(base or this.model), this]


def write_history(directory: Path, history: list[StageRecord]) -> None:
    (directory / HISTORY_FILE).write_text(
        json.dumps([asdict(h) for h in history], indent=2) + "\n"
    )


def base_model_of(history: list[StageRecord], adapters: bool) -> str | None:
    """The hub id of the model the adapters apply to (the last stage's), or that
    a fused model started from (the first stage's): the name itself, or the
    ``base_model`` of the card a converted local model carries (mlx-lm writes one)."""
    root = history[-1].model if adapters else history[0].model
    if hub_id(root):
        return root
    card = Path(root).expanduser() / "README.md"
    if card.exists():
        from huggingface_hub import ModelCard

        base = ModelCard.load(card).data.base_model
        return base if isinstance(base, str) and hub_id(base) else None
    return None


def settings_text(settings: dict[str, Any]) -> str:
    shown = {k: ", ".join(map(str, v)) if isinstance(v, list) else v for k, v in settings.items()}  # fmt: skip
    return "; ".join(f"{k} {v}" for k, v in shown.items() if v not in (False, 0, "", None))  # fmt: skip


def card_text(repo: str, history: list[StageRecord], adapters: bool) -> str:
    """The card's markdown body."""
    base = base_model_of(history, adapters)
    start = history[-1].model if adapters else history[0].model
    first = f"`{base}`" if base else f"`{start}` (a local model)"
    stages = " → ".join(h.stage for h in history)
    what = "LoRA adapters for" if adapters else "A model fused from"
    lines = [f"# {repo}", "", f"{what} {first}, trained with mlx-align: {stages}.", ""]
    lines += ["## Training", ""]
    rows = [
        {
            "stage": h.stage,
            "model": h.model,
            "data": h.data,
            "settings": settings_text(h.settings),
        }  # fmt: skip
        for h in history
    ]
    lines += [markdown_table(rows)]
    figures = [
        {"stage": h.stage, "metric": name, "value": value}
        for h in history
        for name, value in h.figures.items()
    ]
    figures += [
        {
            "stage": h.stage,
            "metric": f"best {h.best['metric']} (step {h.best['step']})",
            "value": h.best["value"],
        }  # fmt: skip
        for h in history
        if h.best
    ]
    if figures:
        note = "The last evaluation each run logged (with --save-best, also its best, whose weights stay in the run's best/)."  # fmt: skip
        lines += ["## Held-out figures", "", note, ""]
        lines += [markdown_table(figures)]
    lines += ["## Use with mlx-lm", "", "```bash", "pip install mlx-lm"]
    if adapters:
        local = repo.split("/")[-1]
        model = base or start
        lines += [
            f"hf download {repo} --local-dir {local}",
            f'mlx_lm.generate --model {model} --adapter-path {local} --prompt "Hello"',
        ]
    else:
        lines += [f'mlx_lm.generate --model {repo} --prompt "Hello"']
    lines += ["```", ""]
    return "\n".join(lines)


def model_card(repo: str, history: list[StageRecord], adapters: bool) -> str:
    """The whole README.md: the hub's front matter, then ``card_text``."""
    from huggingface_hub import ModelCard, ModelCardData

    base = base_model_of(history, adapters)
    tags = ["mlx", "mlx-align", *dict.fromkeys(h.stage for h in history)]
    last = history[-1].settings
    tags += [] if last.get("full") else ["dora" if last.get("dora") else "lora"]
    datasets = [d for d in dict.fromkeys(h.data for h in history) if hub_id(d)]
    data = ModelCardData(
        library_name="mlx",
        pipeline_tag="text-generation",
        base_model=base,
        base_model_relation=("adapter" if adapters else "finetune") if base else None,
        datasets=datasets or None,
        tags=tags,
    )
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{card_text(repo, history, adapters)}"))  # fmt: skip
