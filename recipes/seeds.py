"""The capstone over several seeds: each held-out figure per seed, its median and
range, and whether every stage met its goal on every seed.

    python recipes/seeds.py runs/capstone-seed0 runs/capstone-seed1 ... --out runs/SEEDS.md

``make capstone-seeds`` runs the capstone once per seed (``SEEDS``, each in
its own ``runs/capstone-seedN``) and then this. The figures and goals are
``report.py``'s, read from each run's ``eval/`` and ``metrics.jsonl``.
"""

import argparse
import json
import statistics
from pathlib import Path

from report import generations, held_out_figures, last_value, lucky_share

GOAL_STAGES = ("sft", "rm", "dpo", "grpo")


def figures_of(run: Path) -> dict[str, float | None]:
    """One run's held-out figures as numbers (None: not there)."""
    sft, dpo, grpo = (generations(run, m) for m in ("sft", "dpo", "grpo"))
    right, sound = lucky_share(run, "grpo") or (0, 0)
    times = run / "times.json"
    return {
        "pretrain val loss": last_value(run, "pt", "val_loss"),
        "SFT format": sft and sft.format_rate,
        "SFT hedged": sft and sft.hedged_rate,
        "RM pair accuracy": last_value(run, "rm", "val_accuracy"),
        "DPO implicit-reward accuracy": last_value(
            run, "dpo", "val_rewards/accuracies"
        ),
        "DPO hedged": dpo and dpo.hedged_rate,
        "GRPO start (DPO) accuracy": dpo and dpo.accuracy,
        "GRPO accuracy": grpo and grpo.accuracy,
        "GRPO gain": grpo and dpo and grpo.accuracy - dpo.accuracy,
        "GRPO right answers with every step right": sound / right if right else None,
        "training minutes": sum(json.loads(times.read_text()).values()) / 60
        if times.exists()
        else None,  # fmt: skip
    }


def cell(name: str, value: float | None) -> str:
    if value is None:
        return "-"
    if "loss" in name or "minutes" in name:
        return f"{value:.3f}" if "loss" in name else f"{value:.1f}"
    return f"{100 * value:+.1f}" if "gain" in name else f"{100 * value:.1f}%"


def summary(runs: list[Path]) -> str:
    per_run = [figures_of(r) for r in runs]
    goals = [held_out_figures(r) for r in runs]
    names = list(per_run[0])
    lines = [
        "| figure | " + " | ".join(r.name for r in runs) + " | median | range |",
        "|---|" + "---:|" * (len(runs) + 2),
    ]
    for name in names:
        values = [f[name] for f in per_run]
        known = [v for v in values if v is not None]
        spread = [statistics.median(known), min(known), max(known)] if known else [None] * 3  # fmt: skip
        row = [cell(name, v) for v in values] + [cell(name, spread[0])]
        row.append(
            f"{cell(name, spread[1])} to {cell(name, spread[2])}" if known else "-"
        )
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    lines += ["", "| goal | " + " | ".join(r.name for r in runs) + " |", "|---|" + "---|" * len(runs)]  # fmt: skip
    for stage in GOAL_STAGES:
        marks = [g.get(stage, ("-", "-", None)) for g in goals]
        cells = ["met" if m[2] else ("**missed**" if m[2] is not None else "-") for m in marks]  # fmt: skip
        lines.append(f"| {stage}: {marks[0][1]} | " + " | ".join(cells) + " |")
    every = all(g.get(s, (0, 0, False))[2] for g in goals for s in GOAL_STAGES)
    lines += ["", f"Every goal met on every seed: {'yes' if every else '**no**'}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", type=Path, nargs="+", help="capstone run folders")
    parser.add_argument("--out", type=Path, default=None, help="write the tables here")
    args = parser.parse_args()
    text = summary(args.runs)
    if args.out:
        args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
