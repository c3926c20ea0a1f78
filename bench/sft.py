"""Benchmark `mlx-align sft` against `mlx_lm lora` on the same LoRA fine-tune.

Both tools train the same freshly initialised model (`mlx-align init-model`)
on the same examples with the same settings: LoRA rank and scale on every
linear layer of every block, batch size, max length, AdamW (no weight decay,
bias-corrected) at a constant learning rate, no gradient clipping, no eval,
seed. The data is `recipes/make_data.py`'s `sft/train.jsonl` rewritten as
`{"messages": [user, assistant]}`, so both tokenise it with the model's chat
template into identical ids; `check_same_tokens` verifies that before any
run. Both train on the assistant turn only (mlx-lm: `--mask-prompt`).

Throughput counts completion tokens actually trained, per second of the
training loop as each tool times it, over the report windows after the first
(the first holds the compile and, on the CPU backend, a g++ build). mlx-lm's
own "Tokens/sec" also counts one pad token per row (its loss mask uses `<=`),
so `B` tokens per step are subtracted. mlx-lm's numbers are read exactly,
through a `TrainingCallback` injected into an unmodified `mlx_lm.lora.main()`
run in a worker process (this script with `--mlx-lm-worker`). Max RSS comes
from `os.wait4` on each tool's process.

Both processes run under the same BLAS (`--blas`): the system OpenBLAS via
`LD_PRELOAD` (what the `mlx-align` command does by itself), or mlx-cpu's
bundled reference BLAS for both.

    .venv/bin/python bench/sft.py [--preset small] [--steps 60] [--batch-size 8]

prints a markdown table and writes it to bench/results/sft.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from common import (
    BIN,
    RESULTS_DIR,
    add_model_options,
    bench_model,
    blas_env,
    machine,
    make_data,
    model_label,
    model_suffix,
    other_blas,
    run_measured,
    table_head,
    write_results,
)

RESULTS = RESULTS_DIR / "sft.md"


@dataclass
class Run:
    """One tool's run: report windows as (steps, completion tokens, seconds)."""

    tool: str
    windows: list[tuple[int, float, float]]
    peak_memory_gb: float
    max_rss_mb: float = 0.0
    wall_s: float = 0.0
    trainable: int = 0
    blas: str = ""

    @property
    def steps(self) -> int:
        return sum(w[0] for w in self.windows)

    def steady(self) -> tuple[int, float, float]:
        """(steps, tokens, seconds) summed over the windows after the first."""
        later = self.windows[1:] or self.windows
        return tuple(sum(w[i] for w in later) for i in range(3))

    def tokens_per_s(self) -> float:
        _, tokens, seconds = self.steady()
        return tokens / seconds

    def step_s(self) -> float:
        steps, _, seconds = self.steady()
        return seconds / steps

    def all_tokens_per_s(self) -> float:
        return sum(w[1] for w in self.windows) / sum(w[2] for w in self.windows)


# ------------------------------------------------------------------ inputs


def prepare_data(work: Path) -> Path:
    """`sft/train.jsonl` as chat messages in ``work/data`` (no valid split: no eval)."""
    raw, data = work / "raw", work / "data"
    if not (raw / "sft" / "train.jsonl").exists():
        make_data(raw)
    data.mkdir(parents=True, exist_ok=True)
    with (
        open(raw / "sft" / "train.jsonl") as src,
        open(data / "train.jsonl", "w") as dst,
    ):
        for line in src:
            record = json.loads(line)
            messages = [
                {"role": "user", "content": record["prompt"]},
                {"role": "assistant", "content": record["completion"]},
            ]
            dst.write(json.dumps({"messages": messages}) + "\n")
    return data


def check_same_tokens(model: Path, data: Path, max_length: int) -> dict:
    """Assert both tools turn every example into the same ids and trained span."""
    from mlx_lm import load
    from mlx_lm.tuner.datasets import ChatDataset

    from mlx_align.data.jsonl import read_jsonl
    from mlx_align.data.tokenize import encode_sft_record

    _, tokenizer = load(str(model))  # as both tools load it
    records = read_jsonl(data / "train.jsonl")
    theirs = ChatDataset([r.fields for r in records], tokenizer, mask_prompt=True)
    longest = completion = 0
    for i, record in enumerate(records):
        ours = encode_sft_record(tokenizer, record)
        tokens, offset = theirs.process(theirs[i])
        if (list(tokens), offset) != (ours.tokens, ours.completion_start):
            sys.exit(f"example {i}: mlx-align and mlx-lm tokenise differently")
        longest = max(longest, len(tokens))
        completion += ours.n_completion
    # mlx-lm's "one extra pad per row" holds only while no row fills the batch.
    if longest >= max_length:
        sys.exit(f"longest example ({longest} tokens) must be < --max-length")
    return {"examples": len(records), "longest": longest, "completion": completion}


# ------------------------------------------------------------------ runs


def run_mlx_align(opts, model: Path, data: Path, out: Path, env: dict) -> Run:
    cmd = [str(BIN / "mlx-align"), "sft", "--model", str(model), "--data", str(data)]
    cmd += ["--out", str(out), "--steps", str(opts.steps), "--seed", str(opts.seed)]
    cmd += ["--batch-size", str(opts.batch_size), "--max-length", str(opts.max_length)]
    cmd += ["--lora-rank", str(opts.lora_rank), "--lora-alpha", str(opts.lora_alpha)]
    cmd += ["--lora-layers", "-1", "--learning-rate", str(opts.learning_rate)]
    cmd += ["--warmup-steps", "0", "--min-lr-ratio", "1.0", "--max-grad-norm", "0"]
    cmd += ["--eval-every", "0", "--save-every", "0"]
    cmd += ["--log-every", str(opts.report_every)]
    wall, rss = run_measured(cmd, env, out.with_suffix(".log"))
    lines = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    windows, previous = [], 0
    for line in (x for x in lines if "tokens" in x):
        seconds = line["tokens"] / line["tokens_per_sec"]
        windows.append((line["step"] - previous, line["tokens"], seconds))
        previous = line["step"]
    log = out.with_suffix(".log").read_text()
    blas = next(s for s in log.splitlines() if s.startswith("mlx-align: BLAS"))
    trainable = int(log.split("trainable parameters: ")[1].split()[0].replace(",", ""))
    peak = lines[-1]["peak_memory_gb"]
    return Run("mlx-align sft", windows, peak, rss, wall, trainable, blas)


def write_mlx_lm_config(opts, path: Path) -> None:
    """Same LoRA and optimizer as mlx-align's flags (YAML is a superset of JSON)."""
    config = {
        "fine_tune_type": "lora",
        "num_layers": -1,
        "lora_parameters": {
            "rank": opts.lora_rank,
            "scale": opts.lora_alpha / opts.lora_rank,
            "dropout": 0.0,
        },
        "optimizer": "adamw",
        "optimizer_config": {"adamw": {"weight_decay": 0.0, "bias_correction": True}},
    }
    path.write_text(json.dumps(config, indent=2))


def run_mlx_lm(opts, model: Path, data: Path, out: Path, env: dict) -> Run:
    out.mkdir(parents=True, exist_ok=True)
    write_mlx_lm_config(opts, out / "config.yaml")
    never = str(opts.steps + 1)
    args = ["--train", "--model", str(model), "--data", str(data), "--mask-prompt"]
    args += ["-c", str(out / "config.yaml"), "--adapter-path", str(out)]
    args += ["--iters", str(opts.steps), "--batch-size", str(opts.batch_size)]
    args += ["--num-layers", "-1", "--learning-rate", str(opts.learning_rate)]
    args += ["--max-seq-length", str(opts.max_length), "--seed", str(opts.seed)]
    args += ["--steps-per-report", str(opts.report_every)]
    args += ["--steps-per-eval", never, "--save-every", never]
    report = out / "reports.jsonl"
    cmd = [sys.executable, __file__, "--mlx-lm-worker", str(report), "--", *args]
    wall, rss = run_measured(cmd, env, out.with_suffix(".log"))
    lines = [json.loads(s) for s in report.read_text().splitlines()]
    head = lines[0]
    windows, previous_it, previous_tokens = [], 0, 0
    for line in lines[1:]:
        steps, counted = line["iteration"] - previous_it, line["trained_tokens"]
        counted -= previous_tokens  # includes one pad token per row
        seconds = counted / line["tokens_per_second"]
        windows.append((steps, counted - steps * opts.batch_size, seconds))
        previous_it, previous_tokens = line["iteration"], line["trained_tokens"]
    peak = lines[-1]["peak_memory"]
    return Run("mlx_lm lora", windows, peak, rss, wall, head["trainable"], head["blas"])


def mlx_lm_worker(report: Path, argv: list[str]) -> None:
    """`mlx_lm lora` as its CLI runs it, with exact report numbers to ``report``."""
    import mlx.core as mx
    import mlx_lm.lora
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.callbacks import TrainingCallback

    from mlx_align.core.blas import blas_notice

    def write(record: dict) -> None:
        with open(report, "a") as f:
            f.write(json.dumps(record) + "\n")

    class Recorder(TrainingCallback):
        def on_train_loss_report(self, info: dict) -> None:
            write(
                {k: v.item() if isinstance(v, mx.array) else v for k, v in info.items()}
            )

    def count_trainable(model) -> None:
        trainable = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
        write({"trainable": trainable, "blas": blas_notice()})

    report.unlink(missing_ok=True)
    mlx_lm.lora.get_reporting_callbacks = lambda *a, **k: Recorder()
    mlx_lm.lora.print_trainable_parameters = count_trainable
    sys.argv = ["mlx_lm.lora", *argv]
    mlx_lm.lora.main()


# ------------------------------------------------------------------ report


def median_run(runs: list[Run]) -> Run:
    """The run with the median steady tokens/s (the upper median for an even count)."""
    ranked = sorted(runs, key=Run.tokens_per_s)
    return ranked[len(ranked) // 2]


def table(runs: dict[str, list[Run]]) -> str:
    rows = table_head(
        ["tool", "steps", "completion tok/s", "step ms", "tok/s incl. compile"]
        + ["wall s", "peak MLX GB", "max RSS MB", "trainable"]
    )
    for tool, tool_runs in runs.items():
        r = median_run(tool_runs)
        spread = ", ".join(f"{x.tokens_per_s():,.0f}" for x in tool_runs)
        speed = f"{r.tokens_per_s():,.0f}" + (
            f" ({spread})" if len(tool_runs) > 1 else ""
        )
        rows.append(
            f"| {tool} | {r.steps} | {speed} | {1000 * r.step_s():.1f} "
            f"| {r.all_tokens_per_s():,.0f} | {r.wall_s:.1f} | {r.peak_memory_gb:.3f} "
            f"| {r.max_rss_mb:,.0f} | {r.trainable:,} |"
        )
    ours, theirs = (median_run(x) for x in runs.values())
    # Runs i of both tools ran back to back, so their ratio shares the load.
    paired = [
        a.tokens_per_s() / b.tokens_per_s() for a, b in zip(*runs.values(), strict=True)
    ]
    rows.append(
        f"\nmlx-align / mlx_lm: completion tok/s {ours.tokens_per_s() / theirs.tokens_per_s():.2f}x "
        f"(run by run: {', '.join(f'{x:.2f}x' for x in paired)}), "
        f"incl. compile {ours.all_tokens_per_s() / theirs.all_tokens_per_s():.2f}x, "
        f"peak MLX memory {ours.peak_memory_gb / theirs.peak_memory_gb:.2f}x, "
        f"max RSS {ours.max_rss_mb / theirs.max_rss_mb:.2f}x"
    )
    return "\n".join(rows)


def parse_args() -> argparse.Namespace:
    from mlx_align.core.blas import openblas_path

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_blas = "openblas" if openblas_path() else "reference"
    add_model_options(p)
    p.add_argument("--steps", type=int, default=60, help="optimizer steps per run")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lora-alpha", type=float, default=16.0)
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report-every", type=int, default=10, help="steps per window")
    p.add_argument("--repeats", type=int, default=3, help="runs per tool (median)")
    p.add_argument("--blas", choices=["openblas", "reference"], default=default_blas)
    p.add_argument("--work", type=Path, default=Path("/tmp/mlx_align_bench_sft"))
    p.add_argument("--mlx-lm-worker", type=Path, help=argparse.SUPPRESS)
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    opts = p.parse_args()
    if opts.rest and not opts.mlx_lm_worker:
        p.error(f"unrecognized arguments: {' '.join(opts.rest)}")
    if opts.steps < 2 * opts.report_every:
        p.error("--steps must cover at least two --report-every windows")
    return opts


def run_alternating(opts, model: Path, data: Path) -> dict[str, list[Run]]:
    """``opts.repeats`` runs per tool, interleaved so drift in load hits both alike."""
    env = blas_env(opts.blas)
    tools = {"mlx-align sft": run_mlx_align, "mlx_lm lora": run_mlx_lm}
    runs: dict[str, list[Run]] = {tool: [] for tool in tools}
    for i in range(opts.repeats):
        for tool, run in reversed(tools.items()):
            out = opts.work / "runs" / f"{tool.split()[0]}-{i}"
            runs[tool].append(run(opts, model, data, out, env))
            print(f"{tool} run {i + 1}: {runs[tool][-1].tokens_per_s():,.0f} tok/s")
    blas = {r.blas for tool_runs in runs.values() for r in tool_runs}
    if other_blas(opts.blas, blas):
        sys.exit(f"a run used another BLAS than --blas {opts.blas}: {blas}")
    return runs


def describe(opts, stats: dict, load: tuple[float, float]) -> str:
    per_example = stats["completion"] / stats["examples"]
    return (
        f"{machine(opts.blas, load)}; {model_label(opts)}; {stats['examples']} "
        f"examples (longest {stats['longest']} tokens, {per_example:.1f} completion "
        f"tokens each); batch {opts.batch_size}, max length {opts.max_length}, "
        f"LoRA r={opts.lora_rank} alpha={opts.lora_alpha:g} on all layers; "
        f"median of {opts.repeats} runs per tool; completion tok/s and step ms over "
        f"the report windows of {opts.report_every} steps after the first\n"
    )


def main() -> None:
    opts = parse_args()
    if opts.mlx_lm_worker:
        return mlx_lm_worker(opts.mlx_lm_worker, opts.rest[1:])
    data = prepare_data(opts.work)
    model = bench_model(opts)
    stats = check_same_tokens(model, data, opts.max_length)
    load_before = os.getloadavg()[0]
    runs = run_alternating(opts, model, data)
    text = describe(opts, stats, (load_before, os.getloadavg()[0]))
    text += "\n" + table(runs)
    print(text)
    write_results(RESULTS.with_stem(f"sft{model_suffix(opts)}"), text, announce=False)


if __name__ == "__main__":
    main()
