"""Write the capstone's REPORT.md: what each stage changed, on held-out data.

    python recipes/report.py runs/capstone

reads what the pipeline left in the run folder and prints the stage table,
then writes ``REPORT.md`` beside it:

- ``data/grpo/test.jsonl``: the held-out questions (disjoint from every train split);
- ``eval/{sft,dpo,grpo}.jsonl``: each model's greedy answers to them
  (``mlx-align eval-math --out``), from which come the format rate, the share
  of hedged answers and the accuracy;
- ``{pt-copy,pt,sft,rm,dpo,grpo}/metrics.jsonl``: validation metrics, tokens/s and peak
  memory; ``{stage}/metrics.png``: the curves (``mlx-align plot``);
- ``times.json``: each stage's wall time (``recipes/timed.py``);
- ``serve.txt``: the question asked over mlx-lm's HTTP server and its answer;
- ``rerank/figures.json``: best-of-K by DPO's implicit reward against one
  sample from the DPO policy (``recipes/rerank_eval.py``);
- ``eval/tools-*.jsonl`` (``make capstone-tools``): the calculator's figures
  and conversations (``recipes/tools_report.py``).

A missing input leaves a dash in its cell, so a partial run still reports.
"""

import argparse
import json
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

from make_data import HEDGES, Problem, is_hedged
from tools_report import TOOL_STAGES, tools_figures, tools_section

from mlx_align.rewards.format import format_reward

STAGES = {  # run folder -> what the report calls it
    "pt-copy": "copy drill",
    "pt": "pretrain",
    "sft": "SFT",
    "rm": "reward model",
    "dpo": "DPO",
    "grpo": "GRPO",
}
SIDE_BY_SIDE = 3  # held-out questions shown with every model's answer


@dataclass(frozen=True)
class Generations:
    """One model's greedy answers to the held-out questions."""

    completions: list[str]
    correct: list[bool]

    @property
    def accuracy(self) -> float:
        return sum(self.correct) / len(self.correct)

    @property
    def format_rate(self) -> float:
        return sum(format_reward([], self.completions)) / len(self.completions)

    @property
    def hedged_rate(self) -> float:
        return sum(map(is_hedged, self.completions)) / len(self.completions)

    @property
    def bare_rate(self) -> float:
        """Answers that skip the work: nothing but hedges before ``####``."""
        bare = [is_bare(c) for c in self.completions]
        return sum(bare) / len(bare)


def is_bare(completion: str) -> bool:
    work = completion.split("####")[0]
    for hedge in HEDGES:
        work = work.replace(hedge, "")
    return "####" in completion and not work.strip()


def expected_work(prompt: str) -> str:
    """The problem's worked steps as the data writes them (``Problem.work``)."""
    terms = tuple(int(t) for t in re.findall(r"\d+", prompt.split("?")[0]))
    return Problem(terms).work().split("\n")[0]


def worked_right(completion: str, prompt: str) -> bool:
    """Every worked step of ``completion`` is the problem's own: the right
    additions, in order, each summed right (hedges aside)."""
    work = completion.split("####")[0]
    for hedge in HEDGES:
        work = work.replace(hedge, "")
    return " ".join(work.split()) == expected_work(prompt)


def lucky_share(run: Path, model: str) -> tuple[int, int] | None:
    """(right answers, of those with every worked step right too) on the held-out questions."""
    rows = read_jsonl(run / "eval" / f"{model}.jsonl")
    if not rows:
        return None
    questions = read_jsonl(run / "data" / "grpo" / "test.jsonl")
    right = [r for r in rows if r["correct"]]
    sound = [r for r in right if worked_right(r["completion"], questions[r["line"] - 1]["prompt"])]  # fmt: skip
    return len(right), len(sound)


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def generations(run: Path, model: str) -> Generations | None:
    rows = read_jsonl(run / "eval" / f"{model}.jsonl")
    if not rows:
        return None
    return Generations(
        [r["completion"] for r in rows], [bool(r["correct"]) for r in rows]
    )


def last_value(run: Path, stage: str, key: str) -> float | None:
    """The last logged value of ``key`` in ``run/stage/metrics.jsonl``."""
    values = [
        row[key] for row in read_jsonl(run / stage / "metrics.jsonl") if key in row
    ]
    return values[-1] if values else None


def stage_costs(run: Path, stage: str, times: dict) -> list[str]:
    """Wall time, median tokens/s and peak memory of one stage, as table cells."""
    rows = read_jsonl(run / stage / "metrics.jsonl")
    speeds = [r["tokens_per_sec"] for r in rows if "tokens_per_sec" in r]
    peaks = [r["peak_memory_gb"] for r in rows if "peak_memory_gb" in r]
    seconds = times.get(stage)
    return [
        f"{seconds:.0f} s" if seconds is not None else "-",
        f"{statistics.median(speeds):,.0f}" if speeds else "-",
        f"{max(peaks) * 1024:.0f} MB" if peaks else "-",
    ]


def percent(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def verdict(met: bool | None) -> str:
    return "-" if met is None else ("met" if met else "**missed**")


def held_out_figures(run: Path) -> dict[str, tuple[str, str, bool | None]]:
    """Per stage: (held-out figure, goal, met?)."""
    sft, dpo, grpo = (generations(run, m) for m in ("sft", "dpo", "grpo"))
    rm_acc = last_value(run, "rm", "val_accuracy")
    dpo_acc = last_value(run, "dpo", "val_rewards/accuracies")
    figures: dict[str, tuple[str, str, bool | None]] = {
        stage: (f"val loss {loss:.3f}" if loss else "-", "-", None)
        for stage in ("pt-copy", "pt")
        for loss in [last_value(run, stage, "val_loss")]
    }
    figures |= {
        "sft": (
            f"answer format followed: {percent(sft and sft.format_rate)}",
            ">= 95%",
            sft and sft.format_rate >= 0.95,
        ),
        "rm": (f"pair accuracy {percent(rm_acc)}", ">= 90%", rm_acc and rm_acc >= 0.9),
    }
    if sft and dpo and dpo_acc is not None:
        drop = sft.hedged_rate - dpo.hedged_rate
        figures["dpo"] = (
            f"implicit-reward accuracy {percent(dpo_acc)}; hedged answers "
            f"{percent(sft.hedged_rate)} (SFT) -> {percent(dpo.hedged_rate)} "
            f"({100 * drop:+.1f} points)",
            ">= 90%; hedging down >= 30 points",
            dpo_acc >= 0.9 and drop >= 0.3,
        )
    if dpo and grpo:
        gain = grpo.accuracy - dpo.accuracy
        figures["grpo"] = (
            f"math accuracy {percent(dpo.accuracy)} -> {percent(grpo.accuracy)} "
            f"({100 * gain:+.1f} points); bare answers {percent(dpo.bare_rate)} "
            f"-> {percent(grpo.bare_rate)}",
            "start 15-60%; +15 points",
            0.15 <= dpo.accuracy <= 0.6 and gain >= 0.15,
        )
    return figures


def stage_table(run: Path) -> list[str]:
    times = (
        json.loads((run / "times.json").read_text())
        if (run / "times.json").exists()
        else {}
    )
    figures = held_out_figures(run) | tools_figures(run)
    stages = STAGES | {s: name for s, name in TOOL_STAGES.items() if s in figures}
    lines = [
        "| stage | held-out figure | goal | | wall | tokens/s | peak memory |",
        "|---|---|---|---|---:|---:|---:|",
    ]
    for stage, name in stages.items():
        figure, goal, met = figures.get(stage, ("-", "-", None))
        cells = [name, figure, goal, verdict(met), *stage_costs(run, stage, times)]
        lines.append("| " + " | ".join(cells) + " |")
    total = sum(times.values())
    lines.append(
        f"\nTraining stages: {total / 60:.1f} min of wall time in all (evaluation, "
        "fusing, serving and plots come on top)."
    )
    shares = {m: lucky_share(run, m) for m in ("dpo", "grpo")}
    if all(shares.values()):
        cells = [
            f"{name}: {sound} of {right} ({percent(sound / right if right else None)})"
            for name, (right, sound) in zip(
                ("DPO", "GRPO"), shares.values(), strict=True
            )
        ]
        lines.append(
            "\nThe math reward's blind spot: it reads the final answer only. Of the "
            "right answers, those whose every worked step is also the problem's own "
            f"(the right additions, in order, summed right): {'; '.join(cells)}. "
            "The rest were right by luck."
        )
    return lines


def rerank_section(run: Path) -> list[str]:
    """Best-of-K by implicit reward against one sample, when rerank_eval.py has run."""
    path = run / "rerank" / "figures.json"
    if not path.exists():
        return []
    f = json.loads(path.read_text())
    k, temperature = f["k"], f["temperature"]
    lines = [
        f"## Best of {k} by DPO's implicit reward",
        "",
        f"{k} completions of each of {f['prompts']} held-out questions sampled from the",
        f"DPO policy at temperature {temperature}, ranked by β·(log π − log π_ref)",
        f"(β {f['beta']}; the reference is the SFT model, DPO's adapters off);",
        f"`recipes/rerank_eval.py`, {f['seconds']:.0f} s.",
        "",
        "| DPO policy | hedged answers | bare answers | math accuracy |",
        "|---|---:|---:|---:|",
    ]
    rows = {
        f"one sample, T = {temperature} (mean over the {k} draws)": f["single_sample"],
        f"best of {k} by implicit reward": f["best_of_k"],
    }
    for name, row in rows.items():
        cells = [percent(row[key]) for key in ("hedged", "bare", "accuracy")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    dpo = generations(run, "dpo")
    if dpo:
        cells = [percent(x) for x in (dpo.hedged_rate, dpo.bare_rate, dpo.accuracy)]
        lines.append("| greedy (for comparison) | " + " | ".join(cells) + " |")
    hedged = f.get("hedged_draws") or {}
    if hedged.get("count"):
        lines += [
            "",
            f"The {hedged['count']} hedged draws of {k * f['prompts']} ranked at place "
            f"{hedged['mean_rank']:.1f} of {k} on average (1: best).",
        ]
    return [*lines, ""]


OPTIONAL = {  # run folder -> what the report calls it (make capstone-<name>)
    "online": "online DPO, judged by the reward model",
    "ppo": "PPO with a critic, rewarded by the reward model",
    "feedback": "DPO on chat feedback (make capstone-feedback)",
}


def optional_section(run: Path) -> list[str]:
    """The optional stages (``make capstone-online``, ``capstone-ppo``) that have run,
    each against the SFT model it starts from, on the held-out questions."""
    sft = generations(run, "sft")
    done = {s: generations(run, s) for s in OPTIONAL}
    done = {s: g for s, g in done.items() if g}
    if not sft or not done:
        return []
    lines = [
        "## Optional stages (from the SFT model)",
        "",
        "| model | hedged answers | bare answers | math accuracy | held-out win rate against the SFT model |",
        "|---|---:|---:|---:|---:|",
        f"| SFT | {percent(sft.hedged_rate)} | {percent(sft.bare_rate)} | {percent(sft.accuracy)} | - |",
    ]
    for stage, g in done.items():
        win = last_value(run, stage, "val_win_rate")
        cells = [percent(x) for x in (g.hedged_rate, g.bare_rate, g.accuracy, win)]
        lines.append(f"| {OPTIONAL[stage]} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def side_by_side(run: Path) -> list[str]:
    questions = read_jsonl(run / "data" / "grpo" / "test.jsonl")
    answers = {
        m: read_jsonl(run / "eval" / f"{m}.jsonl") for m in ("sft", "dpo", "grpo")
    }
    if not questions or not all(answers.values()):
        return ["(no generations yet)"]
    lines = []
    for i in range(min(SIDE_BY_SIDE, len(questions))):
        question = questions[i]["prompt"].removeprefix("Question: ").split("\n")[0]
        lines += [f"**{question}** (answer: {questions[i]['answer']})", ""]
        lines += ["| model | greedy answer | correct |", "|---|---|---|"]
        for model, rows in answers.items():
            text = rows[i]["completion"].strip().replace("\n", " ⏎ ")
            lines.append(
                f"| {model} | `{text}` | {'yes' if rows[i]['correct'] else 'no'} |"
            )
        lines.append("")
    return lines


def write_report(run: Path) -> str:
    served = run / "serve.txt"
    lines = [
        "# Capstone report",
        "",
        "Every figure is measured on held-out data: questions whose problems no",
        "train split contains (`recipes/make_data.py`, `problem_split`).",
        "",
        *stage_table(run),
        "",
        *rerank_section(run),
        *optional_section(run),
        *tools_section(run),
        "## Held-out questions, three models",
        "",
        *side_by_side(run),
        "## Served by mlx-lm",
        "",
        "```",
        served.read_text().strip() if served.exists() else "(not served yet)",
        "```",
        "",
        "## Curves",
        "",
    ]
    for stage, name in (STAGES | TOOL_STAGES).items():
        if (run / stage / "metrics.png").exists():
            lines += [f"### {name}", "", f"![{name}]({stage}/metrics.png)", ""]
    text = "\n".join(lines)
    (run / "REPORT.md").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="the capstone's run folder")
    args = parser.parse_args()
    text = write_report(args.run)
    table_end = text.index("## Held-out")
    print(text[:table_end].strip())
    print(f"\nwritten: {args.run / 'REPORT.md'}")


if __name__ == "__main__":
    main()
