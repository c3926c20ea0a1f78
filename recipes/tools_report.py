"""REPORT.md's calculator part (`make capstone-tools`), when that run exists.

Reads ``eval/tools-{sft,grpo}.jsonl`` (greedy conversations with the tool:
each row's turns, calls and failures) and ``eval/tools-{sft,grpo}-plain.jsonl``
(the same models without it), beside the capstone's ``eval/{dpo,grpo}.jsonl``.
``report.py`` puts ``tools_figures`` into its stage table and
``tools_section`` after it.
"""

import json
from pathlib import Path

TOOL_STAGES = {"tools-sft": "SFT with a calculator", "tools-grpo": "GRPO with a calculator"}  # fmt: skip
CALL_START, CALL_END = "<|tool_call_start|>", "<|tool_call_end|>"
GAIN, PARSED = (
    0.15,
    0.95,
)  # the goals: points over SFT with the tool; parse rate


def rows_of_file(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def rows_of(run: Path, name: str) -> list[dict]:
    return rows_of_file(run / "eval" / f"{name}.jsonl")


def accuracy(rows: list[dict]) -> float:
    return sum(bool(r["correct"]) for r in rows) / len(rows)


def percent(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def call_stats(rows: list[dict]) -> dict[str, float]:
    """Per model, with the tool: calls run, questions answered with one, and the
    share of the calls it made that parsed (a call left in its last turn, never
    run, counts as made and not parsed), as ``eval-math`` prints them."""
    calls = sum(r["calls"] for r in rows)
    unparsed = sum(r["failures"]["parse"] for r in rows)
    made = calls + sum(CALL_START in r["completion"] for r in rows)
    return {
        "calls": calls,
        "per_question": calls / len(rows),
        "with_call": sum(r["calls"] > 0 for r in rows) / len(rows),
        "parsed": (calls - unparsed) / made if made else None,
        "failed": sum(r["failures"]["unknown"] + r["failures"]["raised"] for r in rows),
    }


def tools_figures(run: Path) -> dict[str, tuple[str, str, bool | None]]:
    """The stage table's rows: (held-out figure, goal, met?) per tools stage."""
    sft, grpo = rows_of(run, "tools-sft"), rows_of(run, "tools-grpo")
    plain = rows_of(run, "grpo")
    figures: dict[str, tuple[str, str, bool | None]] = {}
    if sft:
        s = call_stats(sft)
        figures["tools-sft"] = (
            f"with the tool: math accuracy {percent(accuracy(sft))}, a call in "
            f"{percent(s['with_call'])} of answers",
            "-",
            None,
        )
    if sft and grpo:
        gain = accuracy(grpo) - accuracy(sft)
        parsed = call_stats(grpo)["parsed"]
        baseline = accuracy(plain) if plain else None  # step 7 may not have run
        met = gain >= GAIN and parsed is not None and parsed >= PARSED
        figures["tools-grpo"] = (
            f"with the tool: math accuracy {percent(accuracy(sft))} (SFT) -> "
            f"{percent(accuracy(grpo))} ({100 * gain:+.1f} points); GRPO without "
            f"tools {percent(baseline)}; calls that parse {percent(parsed)}",
            "+15 points; above GRPO without tools; parse >= 95%",
            None if baseline is None else met and accuracy(grpo) > baseline,
        )
    return figures


def trajectory_text(row: dict) -> str:
    """A conversation on one line: calls as ``[add(a=9, b=3)]``, results as ``→ 12``;
    without turns (no tool), the completion with its calls' markers dropped."""
    parts = []
    for turn in row.get("turns", [{"content": row["completion"]}]):
        text = turn["content"].replace(CALL_START, "").replace(CALL_END, "").strip()
        text = f"→ {text}" if turn.get("role") == "tool" else text
        parts.append(text.replace("\n", " ⏎ ").replace("|", "\\|"))
    return " · ".join(parts)


def summary_table(run: Path) -> list[str]:
    models = {
        "DPO (the start), no tools": ("dpo", None),
        "GRPO without tools (step 7)": ("grpo", None),
        "SFT with a calculator": ("tools-sft-plain", "tools-sft"),
        "GRPO with a calculator": ("tools-grpo-plain", "tools-grpo"),
    }
    lines = [
        "| model | accuracy with the tool | answers with a call | calls per answer | calls that parse | failed calls | accuracy without the tool | answers that write a call without it |",  # fmt: skip
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, (plain_name, tool_name) in models.items():
        plain, tool = rows_of(run, plain_name), rows_of(run, tool_name) if tool_name else []  # fmt: skip
        s = call_stats(tool) if tool else None
        cells = [
            percent(accuracy(tool)) if tool else "-",
            percent(s["with_call"]) if s else "-",
            f"{s['per_question']:.2f}" if s else "-",
            percent(s["parsed"]) if s else "-",
            str(s["failed"]) if s else "-",
            percent(accuracy(plain)) if plain else "-",
            percent(sum(CALL_START in r["completion"] for r in plain) / len(plain))
            if plain
            else "-",  # fmt: skip
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def without_tool(run: Path) -> list[str]:
    """What the GRPO model does when the tool is gone: its plain answers."""
    rows = rows_of(run, "tools-grpo-plain")
    if not rows:
        return []
    calling = [r for r in rows if CALL_START in r["completion"]]
    lines = [
        "**Without the tool** (the same model, the prompt without the `Tools:` line, one plain",
        "greedy completion that nothing stops at a call's end): "
        f"{len(calling)} of {len(rows)} answers still write a call",
    ]
    if calling:
        writes_result = sum(f"{CALL_END} = " in r["completion"] for r in calling)
        lines[-1] += (
            f", {writes_result} of them go on to write the result themselves, and "
            f"{sum(bool(r['correct']) for r in calling)} of them end right"
        )
    others = [r for r in rows if CALL_START not in r["completion"]]
    if others:
        lines[-1] += (
            f"; the other {len(others)} answer without one, "
            f"{percent(accuracy(others))} right"
        )
    examples = [*calling[:2], *others[: 3 - len(calling[:2])]]
    return [lines[0], lines[1] + ". For example:", "", *example_lines(examples)]


def example_lines(rows: list[dict]) -> list[str]:
    return [f"- `{trajectory_text(r)}` ({'right' if r['correct'] else 'wrong'})" for r in rows]  # fmt: skip


def trajectories(run: Path) -> list[str]:
    """The GRPO model's conversation with the tool on every held-out question."""
    rows = rows_of(run, "tools-grpo")
    questions = [json.loads(line) for line in (run / "data" / "tools" / "grpo" / "test.jsonl").read_text().splitlines()]  # fmt: skip
    if not rows:
        return []
    lines = [
        "<details><summary>Every held-out question: the GRPO model's greedy conversation with the tool</summary>",  # fmt: skip
        "",
        "| question | answer | conversation (calls, → results, the final turn) | correct |",
        "|---|---:|---|---|",
    ]
    for row in rows:
        question = questions[row["line"] - 1]["prompt"][-1]["content"]
        verdict = "yes" if row["correct"] else "no"
        lines.append(f"| {question} | {row['answer']} | `{trajectory_text(row)}` | {verdict} |")  # fmt: skip
    return [*lines, "", "</details>"]


def tools_section(run: Path) -> list[str]:
    """The calculator's section of REPORT.md; nothing before `make capstone-tools` ran."""
    if not rows_of(run, "tools-sft"):
        return []
    demos = rows_of_file(run / "data" / "tools" / "sft" / "train.jsonl")
    calling = sum(len(r["completion"]) > 1 for r in demos)
    return [
        "## A calculator (make capstone-tools)",
        "",
        "The DPO model with the `qa-tools` template and two new call tokens, SFT on",
        f"{len(demos)} demonstrations of which {calling} call `add(a, b)` and answer with",
        "its result (`recipes/tool_data.py`), then GRPO with the math reward and the",
        "tool: greedy answers to the same held-out questions, with the tool (up to 3",
        "model turns) and without it.",
        "",
        *summary_table(run),
        "",
        *without_tool(run),
        "",
        *trajectories(run),
        "",
    ]
