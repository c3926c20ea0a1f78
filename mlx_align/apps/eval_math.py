"""Held-out math accuracy with greedy decoding: ``mlx-align eval-math``.

With ``--tool``, each problem is a greedy conversation that may call the
tools (GRPO's multi-turn rollouts, ``stages/tool_rollouts.py``, at
temperature 0): the last model turn is the answer judged, and each row of
``--out`` also holds the turns, the calls and their failures.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mlx_lm
from tqdm import tqdm

from mlx_align.config.online import SamplingSettings, ToolSettings
from mlx_align.config.stages import EvalMathConfig
from mlx_align.data.prompts import check_prompt_records, column_value, encode_prompts
from mlx_align.data.source import load_split
from mlx_align.rewards.math import math_reward
from mlx_align.sampling.conversations import Trajectory
from mlx_align.sampling.fused_sampler import fuse_in_place
from mlx_align.stages.grpo_rollouts import converse_with
from mlx_align.stages.tool_rollouts import ToolUse, sample_rows


def write_judged(path: Path, records, texts, answers, scores, extras=None) -> None:
    """One JSON line per problem: its file and line (row), the completion, the
    reference answer, correct (1/0/None), and its ``extras`` entry if any."""
    path.parent.mkdir(parents=True, exist_ok=True)
    extras = extras or [{}] * len(records)
    with open(path, "w") as f:
        for record, text, answer, score, extra in zip(
            records, texts, answers, scores, extras, strict=True
        ):
            row = {
                "path": record.path,
                "line": record.line,
                "completion": text,
                "answer": answer,
                "correct": score,
                **extra,
            }
            f.write(json.dumps(row) + "\n")


def plain_answers(config: EvalMathConfig, model, tokenizer, records) -> list[str]:
    """One greedy completion per problem, ``--batch-size`` at a time."""
    prompts = encode_prompts(tokenizer, records)
    texts: list[str] = []
    for start in tqdm(
        range(0, len(prompts), config.batch_size), desc="eval-math", leave=False
    ):
        chunk = prompts[start : start + config.batch_size]
        texts += mlx_lm.batch_generate(
            model, tokenizer, chunk, max_tokens=config.max_tokens
        ).texts
    return texts


def tool_trajectories(config: EvalMathConfig, model, tokenizer, records) -> list[Trajectory]:  # fmt: skip
    """One greedy conversation per problem that may call ``--tool``, all its turns
    within ``--max-tokens``, ``--batch-size`` problems advanced together."""
    settings = ToolSettings(tool=config.tool, max_turns=config.max_turns)
    tool_use = ToolUse(settings, tokenizer, records, room=sys.maxsize)
    greedy = SamplingSettings(max_completion_tokens=config.max_tokens, temperature=0.0)  # fmt: skip
    trajectories: list[Trajectory] = []
    for start in tqdm(
        range(0, len(records), config.batch_size), desc="eval-math", leave=False
    ):
        indices = list(range(start, min(start + config.batch_size, len(records))))
        chunk = [records[i] for i in indices]
        trajectories += converse_with(tool_use, model, greedy, indices, chunk, 1)[1]
    return trajectories


def call_figures(trajectories: list[Trajectory], call_start: str) -> dict[str, float]:
    """Calls run, and of the calls the model made the share that parsed: a call
    cut off by the token budget or left in the last turn (never run) counts as
    made and not parsed."""
    calls = sum(t.calls for t in trajectories)
    unparsed = sum(t.failures["parse"] for t in trajectories)
    unfinished = sum(call_start in t.final_text for t in trajectories)
    made = calls + unfinished
    return {
        "calls": calls,
        "calls_per_problem": calls / max(len(trajectories), 1),
        "parsed": (calls - unparsed) / made if made else 1.0,
        "unparsed": unparsed,
        "unfinished": unfinished,
        "unknown": sum(t.failures["unknown"] for t in trajectories),
        "raised": sum(t.failures["raised"] for t in trajectories),
    }


def run_eval_math(config: EvalMathConfig) -> float:
    """Greedy completions of every problem, judged by ``math_reward``; returns the accuracy."""
    # --limit and --field-map travel with config.source (a DataSource).
    records = load_split(config.source, config.split, required=True)
    reference = ("answer", "solution")  # the columns math_reward reads
    check_prompt_records(records, needs=[reference])  # before the model loads
    answers = [column_value(r, reference) for r in records]
    model, tokenizer = mlx_lm.load(
        config.model, adapter_path=config.adapter_path or None
    )
    fuse_in_place(model)  # adapters, if any: one matmul per layer while decoding
    extras = None
    if config.tool:
        trajectories = tool_trajectories(config, model, tokenizer, records)
        texts = [t.final_text for t in trajectories]
        extras = [
            {"turns": turns, "calls": t.calls, "failures": t.failures}
            for t, turns in zip(trajectories, sample_rows(trajectories), strict=True)
        ]
    else:
        texts = plain_answers(config, model, tokenizer, records)
    scores = math_reward([r.fields["prompt"] for r in records], texts, answer=answers)
    judged = [s for s in scores if s is not None]
    accuracy = sum(judged) / max(len(judged), 1)
    if config.out:
        write_judged(Path(config.out), records, texts, answers, scores, extras)
    unjudged = len(scores) - len(judged)
    note = f" ({unjudged} with an unparseable reference left out)" if unjudged else ""
    print(f"math accuracy: {accuracy:.4f} ({int(sum(judged))}/{len(judged)}){note}")
    if config.tool:
        figures = call_figures(trajectories, tokenizer.tool_call_start)
        print(
            f"tool calls: {figures['calls']} ({figures['calls_per_problem']:.2f} per problem), "
            f"parsed {figures['parsed']:.1%} ({figures['unparsed']} unparsed, "
            f"{figures['unfinished']} unfinished); unknown tool {figures['unknown']}, "
            f"raised {figures['raised']}"
        )
    return accuracy
