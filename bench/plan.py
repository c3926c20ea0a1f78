"""The memory planner against measured peaks: `mlx-align plan` vs the run itself.

For each (stage, model, length) case this script writes a train split of 8
rows whose prompt and completion have the given token counts, asks
``apps.plan.plan_stage`` for the predicted peak (a lazily built model: no
weight is read), then runs the stage for one step through its console
entry point (``--memory-limit none``, so the plan changes nothing) and reads
the peak MLX reports (``mx.get_peak_memory()``, the whole run: loading,
the reference pass, sampling and the step). Prints a table::

    .venv/bin/python bench/plan.py                            # the 3M capstone model
    .venv/bin/python bench/plan.py --shape qwen2.5-0.5b --stages dpo,sft
    .venv/bin/python bench/plan.py --lengths 250,500,1000 --layers 4

``--layers N`` keeps the shape's width and vocabulary with N blocks (a
quick check of the per-block terms). Results land in
bench/results/plan<suffix>.md and, one JSON line per case, .jsonl.
Not a test: run it by hand; a 0.5B case takes one to three minutes here.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

from common import (
    REAL_SHAPES,
    RESULTS_DIR,
    make_data,
    prepare_model,
    write_results,
)

PAIRS = ("dpo", "orpo", "cpo", "reward")
SAMPLING = ("grpo", "rloo", "ppo", "online-dpo")
WORDS = "alpha beta gamma delta one two three four five six seven".split()


def model_for(opts) -> Path:
    """The small preset, or a random-weight ``--shape`` (with ``--layers`` blocks)."""
    from mlx_align.model.random_init import init_random_model

    if not (opts.work / "raw").exists():
        make_data(opts.work / "raw")
    small = prepare_model(opts.work, "small")
    if not opts.shape:
        return small
    config = copy.deepcopy(REAL_SHAPES[opts.shape])
    if opts.layers:
        config["num_hidden_layers"] = opts.layers
    out = opts.work / f"{opts.shape}-L{config['num_hidden_layers']}"
    if not (out / "config.json").exists():
        init_random_model(out, config, small, vocab_size=config["vocab_size"])
    return out


def text_of(tokenizer, n: int, salt: int) -> str:
    """Words whose encoding is at most ``n`` tokens (and close to it)."""
    words = [WORDS[(i * 7 + salt) % len(WORDS)] for i in range(n)]
    while len(tokenizer.encode(" ".join(words), add_special_tokens=False)) > n:
        words = words[: max(1, len(words) - max(1, len(words) // 50))]
    return " ".join(words)


def write_split(directory: Path, stage: str, tokenizer, prompt: int, completion: int) -> Path:  # fmt: skip
    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(8):
        p = text_of(tokenizer, prompt, i)
        if stage in PAIRS:
            rows.append({"prompt": p, "chosen": text_of(tokenizer, completion, i + 1), "rejected": text_of(tokenizer, completion, i + 2)})  # fmt: skip
        elif stage == "kto":
            rows.append({"prompt": p, "completion": text_of(tokenizer, completion, i + 1), "label": i % 2 == 0})  # fmt: skip
        elif stage == "sft":
            rows.append({"prompt": p, "completion": text_of(tokenizer, completion, i + 1)})  # fmt: skip
        else:
            rows.append({"prompt": p, "answer": "7"})
    (directory / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return directory


def stage_flags(stage: str, model: Path, data: Path, out: Path, opts, prompt: int, completion: int) -> list[str]:  # fmt: skip
    flags = ["--model", str(model), "--data", str(data), "--out", str(out)]
    flags += ["--steps", "1", "--batch-size", str(opts.batch_size), "--eval-every", "0"]
    flags += ["--log-every", "1", "--save-every", "0", "--memory-limit", "none"]
    flags += ["--max-length", str(prompt + completion + 64), *opts.flags.split()]
    if stage in SAMPLING:
        flags += ["--max-completion-tokens", str(completion), "--reward", "math"]
        flags += ["--group-size", "4"] if stage in ("grpo", "rloo") else []
    return flags


def predicted(stage: str, argv: list[str]) -> dict:
    """``plan_stage``'s parts (GB) for the stage's flags, parsed as the CLI parses
    them, after what ``--memory-limit`` (when given in ``--flags``) changes."""
    from mlx_align.apps.plan import fit_to_memory, plan_stage
    from mlx_align.cli import config_for

    chosen = []
    config = fit_to_memory(stage, config_for(stage, argv), chosen.append)
    result = plan_stage(stage, config)
    parts = {p.name: p.bytes / 1e9 for p in result.parts}
    return parts | {"peak": result.peak / 1e9, "chosen": " ".join(chosen)}


def measured(stage: str, argv: list[str], work: Path) -> float:
    """The run's own peak, GB (a worker process: a fresh allocator)."""
    code = (
        "import sys, json, mlx.core as mx\n"
        "from mlx_align.cli import main\n"
        "main(sys.argv[1:])\n"
        "print('PEAK', mx.get_peak_memory() / 1e9)\n"
    )
    env = dict(os.environ, MLX_ALIGN_CACHE=str(work / "cache" / str(os.getpid())))
    done = subprocess.run([sys.executable, "-c", code, stage, *argv], capture_output=True, text=True, env=env)  # fmt: skip
    if done.returncode:
        sys.exit(f"mlx-align {stage} failed:\n{done.stderr[-2000:]}")
    return float(done.stdout.split("PEAK")[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="", choices=["", *REAL_SHAPES])
    p.add_argument("--layers", type=int, default=0)
    p.add_argument("--stages", default="sft,dpo,orpo,kto,reward,grpo,ppo,online-dpo")
    p.add_argument("--lengths", default="250,500,1000", help="prompt + completion tokens (4:1)")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--flags", default="", help="more flags for every run (`--memory-limit 16GB` replaces none)")  # fmt: skip
    p.add_argument("--work", type=Path, default=Path("/tmp/mlx-align-bench-plan"))
    p.add_argument("--replan", action="store_true", help="re-predict the saved cases (new coefficients), measure nothing")  # fmt: skip
    opts = p.parse_args()
    suffix = (f"-{opts.shape}" if opts.shape else "") + (f"-L{opts.layers}" if opts.layers else "")  # fmt: skip
    if opts.replan:
        rows = [json.loads(line) for line in open(RESULTS_DIR / f"plan{suffix}.jsonl")]
        for row in rows:
            row["parts"] = predicted(row["stage"], row["argv"])
            row["predicted"] = row["parts"].pop("peak")
            row["chosen"] = row["parts"].pop("chosen")
        return report(rows, suffix)
    from mlx_lm.utils import load_tokenizer

    model = model_for(opts)
    tokenizer = load_tokenizer(model)
    rows = []
    for stage in opts.stages.split(","):
        for total in map(int, opts.lengths.split(",")):
            prompt, completion = total * 4 // 5, total // 5
            if stage in SAMPLING:
                prompt, completion = total - 32, 32
            data = write_split(opts.work / f"data-{stage}-{total}", stage, tokenizer, prompt, completion)  # fmt: skip
            argv = stage_flags(stage, model, data, opts.work / "run", opts, prompt, completion)  # fmt: skip
            plan = predicted(stage, argv)
            peak = measured(stage, argv, opts.work)
            chosen = plan.pop("chosen")
            row = {"stage": stage, "model": model.name, "tokens": total, "predicted": plan.pop("peak"), "measured": peak, "chosen": chosen, "parts": plan, "argv": argv}  # fmt: skip
            print(json.dumps(row), flush=True)
            rows.append(row)
    report(rows, suffix)


def extra_flags(argv: list[str]) -> list[str]:
    """The ``--flags`` of a case: what follows ``--max-length N``, before the sampling flags."""
    start = argv.index("--max-length") + 2
    end = argv.index("--max-completion-tokens") if "--max-completion-tokens" in argv else len(argv)  # fmt: skip
    return argv[start:end]


def report(rows: list[dict], suffix: str) -> None:
    """The JSON lines and the markdown table of ``rows`` and of the cases saved
    before that these did not measure again."""
    path = RESULTS_DIR / f"plan{suffix}.jsonl"
    key = lambda r: (r["stage"], r["model"], r["tokens"], " ".join(r["argv"][6:]))  # noqa: E731
    fresh = {key(r) for r in rows}
    saved = [json.loads(line) for line in open(path)] if path.exists() else []
    rows = [r for r in saved if key(r) not in fresh] + rows
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    lines = ["| stage | model | tokens | flags | predicted GB | measured GB | error | --memory-limit chose |", "|---|---|---:|---|---:|---:|---:|---|"]  # fmt: skip
    for r in rows:
        error = 100 * (r["predicted"] - r["measured"]) / r["measured"]
        flags = " ".join(extra_flags(r["argv"]))
        lines.append(f"| {r['stage']} | {r['model']} | {r['tokens']} | {flags} | {r['predicted']:.3f} | {r['measured']:.3f} | {error:+.1f}% | {r.get('chosen', '')} |")  # fmt: skip
    write_results(RESULTS_DIR / f"plan{suffix}.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
