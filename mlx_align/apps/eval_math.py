"""Held-out math accuracy with greedy decoding: ``mlx-align eval-math``."""

from __future__ import annotations

import json
from pathlib import Path

import mlx_lm
from tqdm import tqdm

from mlx_align.config.stages import EvalMathConfig
from mlx_align.data.prompts import check_prompt_records, column_value, encode_prompts
from mlx_align.data.source import load_split
from mlx_align.rewards.math import math_reward
from mlx_align.sampling.fused_sampler import fuse_in_place


def write_judged(path: Path, records, texts, answers, scores) -> None:
    """One JSON line per problem: its file and line (row), the completion, the
    reference answer, correct (1/0/None)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for record, text, answer, score in zip(
            records, texts, answers, scores, strict=True
        ):
            row = {
                "path": record.path,
                "line": record.line,
                "completion": text,
                "answer": answer,
                "correct": score,
            }
            f.write(json.dumps(row) + "\n")


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
    prompts = encode_prompts(tokenizer, records)
    texts: list[str] = []
    for start in tqdm(
        range(0, len(prompts), config.batch_size), desc="eval-math", leave=False
    ):
        chunk = prompts[start : start + config.batch_size]
        texts += mlx_lm.batch_generate(
            model, tokenizer, chunk, max_tokens=config.max_tokens
        ).texts
    scores = math_reward([r.fields["prompt"] for r in records], texts, answer=answers)
    judged = [s for s in scores if s is not None]
    accuracy = sum(judged) / max(len(judged), 1)
    if config.out:
        write_judged(Path(config.out), records, texts, answers, scores)
    unjudged = len(scores) - len(judged)
    note = f" ({unjudged} with an unparseable reference left out)" if unjudged else ""
    print(f"math accuracy: {accuracy:.4f} ({int(sum(judged))}/{len(judged)}){note}")
    return accuracy
