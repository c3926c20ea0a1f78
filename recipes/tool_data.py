"""The calculator's data for `make capstone-tools`, beside make_data.py's own:

    python recipes/tool_data.py --data runs/capstone/data --seed 0 --scale 1.0

writes ``<data>/tools/`` and leaves every other file of ``<data>`` as it is:

- ``sft/{train,valid}.jsonl``: TRL conversational rows (``prompt`` and
  ``completion`` messages). Half show the tool (a ``tools`` column with
  ``add``'s schema, which the ``qa-tools`` template renders as a
  ``Tools: add(a, b)`` line); of those, ``CALL_SHARE`` call it, the running
  total first, from the right as ``Problem.work`` adds, and copy the last
  result into the answer (the template puts each result after its call as
  a worked step's sum)::

      Tools: add(a, b)
      Question: What is 2 + 9 + 3?
      Answer: <|tool_call_start|>[add(a=3, b=9)]<|tool_call_end|> = 12. <|tool_call_start|>[add(a=12, b=2)]<|tool_call_end|> = 14.
      #### 14

  (Results rendered ``\nResult: 14\nAnswer:`` instead, the SFT model
  copied the last one into ``#### 14`` right in 8-12 of 25 held-out
  demonstrations, teacher-forced: ``Answer: ####`` is where its bare answers,
  guesses, stand. With the term first, ``add(a=2, b=12)``, the SFT model
  copied the result into ``b`` right in 15-16 of 25, and computed a wrong sum
  there instead; with the total first, 24 of 25.)

  The rest answer as the DPO model's demonstrations do (``demonstration``:
  worked, or bare for most quick questions), unhedged, tool shown or not.
- ``grpo/{train,valid,test}.jsonl``: ``<data>/grpo``'s problems, the prompt as
  a user message (the tools' line needs a chat prompt). Without tools the
  template renders exactly ``<data>/grpo``'s prompt string, so figures on
  ``tools/grpo/test.jsonl`` and ``grpo/test.jsonl`` are of the same prompts.
"""

import argparse
import json
import random
from pathlib import Path

from calculator import add
from make_data import Problem, demonstration, random_problem

from mlx_align.sampling.tools import tool_schema

SIZES = {"train": 600, "valid": 100}  # SFT rows per split at --scale 1.0
TOOL_SHOWN = 0.5  # of SFT rows, the share that shows the tool
CALL_SHARE = 0.4  # of those, the share that calls it: "a few demonstrations"


def calling_turns(problem: Problem) -> list[dict]:
    """add(total so far, next term) once per addition, right to left, then the
    total on the ``####`` line, on a line of its own as after worked steps."""
    *rest, total = problem.terms
    turns = []
    for term in reversed(rest):
        call = {"name": "add", "arguments": {"a": total, "b": term}}
        total = add(term, total)
        turns += [
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"type": "function", "function": call}],
            },  # fmt: skip
            {"role": "tool", "name": "add", "content": str(total)},
        ]
    return [*turns, {"role": "assistant", "content": f"\n#### {problem.answer}"}]


def sft_rows(rng: random.Random, split: str, n: int) -> list[dict]:
    """Demonstrations: half show the tool, ``CALL_SHARE`` of those call it."""
    schema = tool_schema(add)
    rows = []
    for _ in range(n):
        problem = random_problem(rng, split)
        shown = rng.random() < TOOL_SHOWN
        if shown and rng.random() < CALL_SHARE:
            completion = calling_turns(problem)
        else:
            text = demonstration(problem, rng).strip()
            completion = [{"role": "assistant", "content": text}]
        row = {"prompt": [{"role": "user", "content": problem.asked}], "completion": completion}  # fmt: skip
        rows.append({**row, "tools": [schema]} if shown else row)
    return rows


def chat_prompt(row: dict) -> dict:
    """A GRPO row with its ``Question: ...\\nAnswer:`` prompt as a user message."""
    question = row["prompt"].removeprefix("Question: ").removesuffix("\nAnswer:")
    return {**row, "prompt": [{"role": "user", "content": question}]}


def write_rows(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(row) + "\n" for row in rows)
    path.write_text(lines, encoding="utf-8", newline="\n")


def write_tools(data: str | Path, seed: int = 0, scale: float = 1.0) -> dict[str, int]:
    """Write ``<data>/tools/{sft,grpo}/<split>.jsonl``; returns ``{"stage/split": rows}``."""
    data, counts = Path(data), {}
    for split, size in SIZES.items():
        rng = random.Random(f"{seed}/tools-sft/{split}")
        rows = sft_rows(rng, split, max(1, round(size * scale)))
        write_rows(data / "tools" / "sft" / f"{split}.jsonl", rows)
        counts[f"sft/{split}"] = len(rows)
    for path in sorted((data / "grpo").glob("*.jsonl")):
        rows = [chat_prompt(json.loads(line)) for line in path.read_text().splitlines()]
        write_rows(data / "tools" / "grpo" / path.name, rows)
        counts[f"grpo/{path.stem}"] = len(rows)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Write the calculator's SFT and GRPO data into DATA/tools.",
        epilog="example:\n  python recipes/tool_data.py --data runs/capstone/data --seed 0",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", required=True, help="make_data.py's output folder")
    parser.add_argument("--seed", type=int, default=0, help="make_data.py's seed")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the SFT sizes")  # fmt: skip
    args = parser.parse_args(argv)
    if args.scale <= 0:
        parser.error("--scale must be > 0")
    if not (Path(args.data) / "grpo").is_dir():
        parser.error(f"{args.data}/grpo not found: run make_data.py first")
    for name, count in write_tools(args.data, args.seed, args.scale).items():
        print(f"{args.data}/tools/{name}.jsonl: {count}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
