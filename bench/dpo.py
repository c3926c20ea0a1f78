"""Benchmark `mlx-align dpo` against the `mlx-lm-lora` package on the same LoRA DPO.

Both tools train the same freshly initialised model (`mlx-align init-model`)
on the same preference pairs with the same settings: sigmoid DPO loss and
beta, LoRA rank and scale (alpha / rank) on every linear layer of every block,
no dropout, batch size (pairs per step), max length, AdamW (no weight decay,
bias-corrected) at a constant learning rate, no gradient clipping, seed and
steps; no valid split, so neither evaluates. mlx-lm-lora always renders a
pair through the chat template, so mlx-align gets the prompt as a one-message
chat; `check_same_tokens` verifies that both turn every pair of
`recipes/make_data.py`'s `preference/train.jsonl` into identical ids and
trained spans before any run.

Same pairs: the train file holds `--pairs` of the split's pairs (default
steps x batch size: exactly one epoch), evenly spread over the length range,
shortest and longest included. mlx-align walks its batches in a seeded order,
each once per epoch. mlx-lm-lora shuffles all batches every step and takes
the first, i.e. draws with replacement; its worker makes that first index
walk a seeded permutation (`EpochDraws`), so it too sees every pair once. So
both train on the same pairs and the same completion tokens (checked), each
with its own batching and padding. `--pairs 0` uses the whole split (1,500
pairs, most never visited in a short run).

The reference: mlx-lm-lora loads a second copy of the model and runs it on
every step's batch; mlx-align scores every train pair once before training
and caches the log-probs on disk. Each mlx-align run gets an empty cache
(`MLX_ALIGN_CACHE`), so that pass is part of its run, reported on its own
("ref pass s") and counted in "tok/s incl. ref".

Each tool runs its own entry point (`mlx_align.cli.main`,
`mlx_lm_lora.train.main`) in a worker process (this script with `--worker`):
mlx-align in this venv, mlx-lm-lora in its own (`--lora-python`; `python3 -m
venv /tmp/lora-venv && /tmp/lora-venv/bin/pip install mlx-lm-lora
"mlx[cpu]"`). Besides `EpochDraws` the workers only observe: the batches a
tool draws (width; completion tokens, chosen + rejected, counted from the
pairs / loss masks, the same way for both), the tool's own per-step seconds
(mlx-align's metrics.jsonl with `--log-every 1`, mlx-lm-lora's report
callback with one report per step), the reference pass time, the trainable
parameter count and the final `mx.get_peak_memory()`. On the CPU backend
mlx-lm-lora calls `mx.set_wired_limit(mx.device_info()
["max_recommended_working_set_size"])`, a key only Metal reports; its worker
adds it (the machine's RAM; the wired limit does nothing on CPU) in its own
process. Max RSS comes from `os.wait4`; wall time is the whole worker process
(interpreter start, imports, loading, tokenising, reference, training,
saving adapters; mlx-lm-lora's `fuse` is off, as mlx-align does not fuse).

Both run under the same BLAS (`--blas`): the system OpenBLAS via `LD_PRELOAD`
(what the `mlx-align` command does by itself) or mlx-cpu's bundled reference
BLAS. `mx.compile` on the CPU backend builds kernels with g++ on first use and
caches them under `$TMPDIR/mlx`; each tool gets its own `TMPDIR`, emptied at
the start, so its first run is cold (reported on its own row) and the
`--repeats` later ones warm (median), the tools taking turns so drift in load
hits both alike.

    .venv/bin/python bench/dpo.py [--steps 20] [--repeats 3] [--blas reference]

prints a markdown table and writes it to bench/results/dpo.md (with
`--blas reference`: dpo-reference-blas.md; with `--pairs 0`:
dpo-whole-split.md; `--grad-checkpoint X`, a `--preset` other than small
and `--align-args` add their own suffix).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from common import (
    RESULTS_DIR,
    add_model_options,
    add_working_set,
    bench_model,
    blas_env,
    blas_in_use,
    check_lora_setup,
    check_same_trainable,
    flags_suffix,
    fresh_dir,
    kernel_caches,
    machine,
    make_data,
    mlx_lm_lora_config,
    model_label,
    model_suffix,
    other_blas,
    parse_bench_args,
    reporter,
    run_measured,
    run_worker,
    spread,
    table_head,
    write_results,
)

RESULTS = RESULTS_DIR / "dpo.md"
ALIGN, LORA = "mlx-align dpo", "mlx-lm-lora dpo"


@dataclass
class Run:
    """One tool's run; ``steps`` holds (width, pairs, completion tokens, seconds)."""

    tool: str
    label: str
    steps: list[tuple[int, int, int, float]]
    peak_mb: float
    tool_peak_mb: float
    max_rss_mb: float
    wall_s: float
    ref_s: float
    trainable: int
    blas: str
    shapes: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def widest(self) -> int:
        return max(s[0] for s in self.steps)

    def steady_tokens_per_s(self) -> float:
        later = self.steps[1:] or self.steps
        return sum(s[2] for s in later) / sum(s[3] for s in later)

    @property
    def train_s(self) -> float:
        return sum(s[3] for s in self.steps)

    @property
    def tokens(self) -> int:
        return sum(s[2] for s in self.steps)

    @property
    def pairs(self) -> int:
        return sum(s[1] for s in self.steps)

    def tokens_per_s(self) -> float:
        return self.tokens / self.train_s

    def tokens_per_s_with_ref(self) -> float:
        return self.tokens / (self.train_s + self.ref_s)

    def step_ms(self) -> float:
        return 1000 * statistics.median(s[3] for s in self.steps)


# ------------------------------------------------------------------ inputs


def write_data(records: list[dict], directory: Path) -> tuple[Path, Path]:
    """``train.jsonl`` for mlx-lm-lora (strings) and mlx-align (the prompt as a chat)."""
    lora, align = directory / "mlx-lm-lora", directory / "mlx-align"
    for d in (lora, align):
        d.mkdir(parents=True, exist_ok=True)
    with (
        open(lora / "train.jsonl", "w") as theirs,
        open(align / "train.jsonl", "w") as ours,
    ):
        for record in records:
            theirs.write(json.dumps(record) + "\n")
            chat = [{"role": "user", "content": record["prompt"]}]
            ours.write(json.dumps({**record, "prompt": chat}) + "\n")
    return lora, align


def prepare_data(opts, model: Path) -> tuple[Path, Path, dict]:
    """The train pairs both tools get (``--pairs`` of them), checked to tokenise alike."""
    raw = opts.work / "raw" / "preference" / "train.jsonl"
    records = [json.loads(line) for line in raw.read_text().splitlines()]
    lengths = check_same_tokens(opts, model, *write_data(records, opts.work / "all"))
    keep = spread([n for n, _ in lengths], opts.pairs)
    stats = {
        "split": len(records),
        "pairs": len(keep),
        "longest": max(lengths[i][0] for i in keep),
        "completion": sum(lengths[i][1] for i in keep),
    }
    return *write_data([records[i] for i in keep], opts.work / "data"), stats


def check_same_tokens(opts, model: Path, lora: Path, align: Path) -> list:
    """Assert both tools turn every pair into the same ids and completion start.

    Returns per pair (longer row's length, completion tokens of both rows).
    """
    from mlx_lm.utils import load_tokenizer

    from mlx_align.batches.preference import encode_pairs
    from mlx_align.data.jsonl import read_jsonl

    dump = opts.work / "mlx-lm-lora-tokens.json"
    cmd = [opts.lora_python, __file__, "--worker", "tokens", str(dump), "--"]
    subprocess.run([*cmd, str(model), str(lora)], check=True, capture_output=True)
    theirs = json.loads(dump.read_text())
    tokenizer = load_tokenizer(model)
    ours = encode_pairs(tokenizer, read_jsonl(align / "train.jsonl"), 10**6)
    if len(ours) != len(theirs):
        sys.exit(f"{len(ours)} pairs for mlx-align, {len(theirs)} for mlx-lm-lora")
    out = []
    for i, (pair, (chosen, rejected, start)) in enumerate(
        zip(ours, theirs, strict=True)
    ):
        for ex, tokens in ((pair.chosen, chosen), (pair.rejected, rejected)):
            if (ex.tokens, ex.completion_start) != (tokens, start):
                sys.exit(f"pair {i}: mlx-align and mlx-lm-lora tokenise differently")
        length = max(len(chosen), len(rejected))
        # Past max length the two truncate differently (left prompt vs right end).
        if length > opts.max_length:
            sys.exit(f"pair {i} has {length} tokens: raise --max-length")
        out.append((length, pair.chosen.n_completion + pair.rejected.n_completion))
    return out


# ------------------------------------------------------------------ runs


def read_report(path: Path) -> tuple[list[dict], dict, dict]:
    """(batches drawn, per-step tool records, the other records merged)."""
    batches, steps, rest = [], {}, {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if "batch" in record:
            batches.append(record)
        elif "step" in record:
            steps[record["step"]] = record
        elif "reference_s" in record:  # one per scored split
            rest["reference_s"] = rest.get("reference_s", 0.0) + record["reference_s"]
        else:
            rest.update(record)
    return batches, steps, rest


def per_step(batches: list[dict], micro: int) -> list[dict]:
    """Micro-batches (mlx-align with ``--grad-accumulation``) merged into their steps;
    ``widths``: the padded width of every forward (pieces of a split batch too)."""
    return [
        {
            "width": max(b["width"] for b in group),
            "widths": [w for b in group for w in b.get("widths", [b["width"]])],
            "pairs": sum(b["pairs"] for b in group),
            "tokens": sum(b["tokens"] for b in group),
        }
        for group in (batches[i : i + micro] for i in range(0, len(batches), micro))
    ]


def to_run(opts, tool: str, label: str, report: Path, wall: float, rss: float) -> Run:
    batches, steps, rest = read_report(report)
    if len(batches) % opts.steps or sorted(steps) != list(range(1, opts.steps + 1)):
        sys.exit(f"{tool}: {len(batches)} batches, {len(steps)} steps in {report}")
    batches = per_step(batches, len(batches) // opts.steps)
    rows, notes = [], []
    for batch, step in zip(batches, (steps[k] for k in sorted(steps)), strict=True):
        if batch["pairs"] != opts.batch_size:
            sys.exit(f"{tool}: a batch of {batch['pairs']} pairs in {report}")
        if step["tokens"] != batch["tokens"]:  # the tool's own count must agree
            notes.append(f"step {step['step']}: tool counted {step['tokens']}")
        rows.append((batch["width"], batch["pairs"], batch["tokens"], step["seconds"]))
    shapes = len({w for b in batches for w in b["widths"]})
    pieces = sum(len(b["widths"]) for b in batches)
    if pieces > len(batches):  # micro-batches, or batches split to fit the token budget
        notes.append(f"{pieces} forwards in {len(batches)} steps")
    return Run(
        tool,
        label,
        rows,
        rest["peak_memory"] / 2**20,
        rest["tool_peak_memory"] / 2**20,
        rss,
        wall,
        rest.get("reference_s", 0.0),
        rest["trainable"],
        rest["blas"],
        shapes,
        notes,
    )


def run_mlx_align(opts, label: str, model: Path, data: Path, out: Path, env: dict):
    args = ["dpo", "--model", str(model), "--data", str(data), "--out", str(out)]
    args += ["--steps", str(opts.steps), "--batch-size", str(opts.batch_size)]
    args += ["--lora-rank", str(opts.lora_rank), "--lora-alpha", str(opts.lora_alpha)]
    args += ["--lora-layers", "-1", "--lora-dropout", "0", "--loss", "sigmoid"]
    args += ["--max-length", str(opts.max_length), "--beta", str(opts.beta)]
    args += ["--learning-rate", str(opts.learning_rate), "--seed", str(opts.seed)]
    args += ["--warmup-steps", "0", "--min-lr-ratio", "1.0", "--max-grad-norm", "0"]
    args += ["--weight-decay", "0", "--eval-every", "0", "--save-every", "0"]
    args += ["--log-every", "1"]
    if opts.grad_checkpoint in ("both", "mlx-align"):
        args += ["--grad-checkpoint"]
    args += opts.align_args.split()
    fresh_dir(out)
    report = out / "report.jsonl"
    env = {**env, "MLX_ALIGN_CACHE": str(out / "reference-cache")}  # empty: no reuse
    cmd = [sys.executable, __file__, "--worker", "mlx-align", str(report), "--", *args]
    wall, rss = run_measured(cmd, env, out.with_suffix(".log"))
    return to_run(opts, ALIGN, label, report, wall, rss)


def run_mlx_lm_lora(opts, label: str, model: Path, data: Path, out: Path, env: dict):
    fresh_dir(out)
    never = str(opts.steps + 1)
    config = json.dumps(mlx_lm_lora_config(opts), indent=2)
    (out / "config.yaml").write_text(config)
    args = ["--train", "--train-mode", "dpo", "--train-type", "lora"]
    args += ["--model", str(model), "--data", str(data), "--adapter-path", str(out)]
    args += ["-c", str(out / "config.yaml"), "--optimizer", "adamw"]
    args += ["--iters", str(opts.steps), "--batch-size", str(opts.batch_size)]
    args += ["--num-layers", "-1", "--learning-rate", str(opts.learning_rate)]
    args += ["--max-seq-length", str(opts.max_length), "--seed", str(opts.seed)]
    args += ["--beta", str(opts.beta), "--dpo-cpo-loss-type", "sigmoid"]
    args += ["--steps-per-report", "1", "--steps-per-eval", never]
    args += ["--save-every", never]
    if opts.grad_checkpoint == "both":
        args += ["--grad-checkpoint"]
    report = out / "report.jsonl"
    cmd = [opts.lora_python, __file__, "--worker", "mlx-lm-lora", str(report), "--"]
    wall, rss = run_measured([*cmd, *args], env, out.with_suffix(".log"))
    return to_run(opts, LORA, label, report, wall, rss)


# ------------------------------------------------------------------ workers
# These run inside each tool's own interpreter: stdlib and that tool only.


def mlx_align_worker(report: Path, argv: list[str]) -> None:
    """`mlx-align` as its console script runs it, observed through ``report``.

    What the run does is heard through ``mlx_align.core.events`` (the reference
    pass, the trainable parameters, every train batch drawn with the pieces
    it was split into), not by patching its modules.
    """
    import mlx.core as mx

    from mlx_align.cli import main
    from mlx_align.core import events

    write = reporter(report)
    heard = set()
    drawn = iter(range(1 << 30))

    def listen(event: str, fields: dict) -> None:
        heard.add(event)
        if event == "reference":
            write({"reference_s": fields["seconds"]})
        elif event == "trainable":
            write({"trainable": fields["parameters"]})
        elif event == "batch":  # widths: full rows T; shared prompt Lp + C; packed W
            widths = fields["widths"]
            row = {"batch": next(drawn), "width": max(widths), "widths": widths}
            write({**row, "pairs": fields["pairs"], "tokens": fields["tokens"]})

    with events.listening(listen):
        main(argv)
    missing = {"trainable", "batch"} - heard
    if missing:
        raise SystemExit(
            f"the run emitted no {sorted(missing)} events: update the bench"
        )
    out = Path(argv[argv.index("--out") + 1])
    log = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    for line in (x for x in log if "tokens" in x):  # --log-every 1: one line per step
        seconds = line["tokens"] / line["tokens_per_sec"]
        write(
            {"step": line["step"], "tokens": round(line["tokens"]), "seconds": seconds}
        )
    write(
        {
            "peak_memory": mx.get_peak_memory(),
            "tool_peak_memory": log[-1]["peak_memory_gb"] * 1e9,
            "blas": blas_in_use(),
        }
    )


def mlx_lm_lora_worker(report: Path, argv: list[str]) -> None:
    """`mlx_lm_lora.train` as its CLI runs it, observed through ``report``."""
    import mlx.core as mx
    import mlx_lm_lora.train as lora_train
    import mlx_lm_lora.trainer.dpo_trainer as trainer
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.callbacks import TrainingCallback

    write = reporter(report)
    iterate_batches = trainer.iterate_dpo_batches
    add_working_set(mx)
    seed = int(argv[argv.index("--seed") + 1]) if "--seed" in argv else 0
    trainer.np = EpochDraws(seed)
    state = {"tokens": 0, "peak": 0.0, "batch": 0}

    def recorded_batches(*args, **kwargs):
        for batch in iterate_batches(*args, **kwargs):
            _, _, chosen_mask, rejected_mask = batch  # scored targets: mask[:, 1:]
            tokens = int(
                chosen_mask[:, 1:].sum().item() + rejected_mask[:, 1:].sum().item()
            )
            record = {"batch": state["batch"], "width": batch[0].shape[1]}
            write({**record, "pairs": batch[0].shape[0], "tokens": tokens})
            state["batch"] += 1
            yield batch

    class Recorder(TrainingCallback):
        def on_train_loss_report(self, info: dict) -> None:  # one per step
            tokens = info["trained_tokens"] - state["tokens"]
            seconds = 1 / info["iterations_per_second"]
            write({"step": info["iteration"], "tokens": tokens, "seconds": seconds})
            state["tokens"], state["peak"] = info["trained_tokens"], info["peak_memory"]

    def count_trainable(model) -> None:
        trainable = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
        write({"trainable": trainable})

    run = lora_train.run
    trainer.iterate_dpo_batches = recorded_batches
    lora_train.print_trainable_parameters = count_trainable
    lora_train.run = lambda args, training_callback=None: run(args, Recorder())
    sys.argv = ["mlx_lm_lora.train", *argv]
    lora_train.main()
    write(
        {
            "peak_memory": mx.get_peak_memory(),
            "tool_peak_memory": state["peak"] * 1e9,
            "blas": blas_in_use(),
        }
    )


class EpochDraws:
    """numpy for mlx-lm-lora's dpo_trainer, but batches drawn an epoch at a time.

    Each step, ``iterate_dpo_batches`` shuffles all batches and yields only the
    first, so it draws with replacement. Here that first index walks a seeded
    permutation instead, so like mlx-align it sees every batch once per epoch.
    What a batch holds and how it is padded stays mlx-lm-lora's own code.
    """

    def __init__(self, seed: int) -> None:
        import numpy

        self.numpy, self.random, self.order = numpy, self, []
        self.rng = numpy.random.default_rng(seed)

    def __getattr__(self, name: str):
        return getattr(self.numpy, name)

    def permutation(self, n: int):
        if not self.order:
            self.order = [int(i) for i in self.rng.permutation(n)]
        first = self.order.pop(0)
        return self.numpy.array([first, *(i for i in range(n) if i != first)])


def tokens_worker(dump: Path, model: str, data: str) -> None:
    """mlx-lm-lora's token ids of every train pair, as its CLI builds them."""
    from types import SimpleNamespace

    from mlx_lm.utils import load_tokenizer
    from mlx_lm_lora.chat_template import ensure_chat_template
    from mlx_lm_lora.trainer.datasets import load_local_dataset

    tokenizer = load_tokenizer(Path(model))
    ensure_chat_template(tokenizer)
    config = SimpleNamespace(train_mode="dpo")
    train, _, _ = load_local_dataset(Path(data), tokenizer, config)
    rows = []
    for i in range(len(train)):
        item = train.process(train[i])
        assert item["chosen_prompt_length"] == item["rejected_prompt_length"]
        rows.append([item["chosen"], item["rejected"], item["chosen_prompt_length"]])
    dump.write_text(json.dumps(rows))


# ------------------------------------------------------------------ report


def median_run(runs: list[Run]) -> Run:
    """The run with the median train-loop tokens/s (the upper median for an even count)."""
    return sorted(runs, key=Run.tokens_per_s)[len(runs) // 2]


def row(r: Run) -> str:
    return (
        f"| {r.tool} | {r.label} | {len(r.steps)} | {r.tokens:,} "
        f"| {r.shapes} ({r.widest}) | {r.wall_s:.1f} | {r.ref_s:.1f} "
        f"| {r.train_s:.1f} | {r.step_ms():.0f} | {r.tokens_per_s():,.0f} "
        f"| {r.steady_tokens_per_s():,.0f} | {r.tokens_per_s_with_ref():,.0f} "
        f"| {r.peak_mb:.1f} | {r.max_rss_mb:,.0f} |"
    )


def ratios(ours: Run, theirs: Run, what: str) -> str:
    def x(f) -> str:
        return f"{f(ours) / f(theirs):.2f}x"

    return (
        f"- {what}: tok/s {x(Run.tokens_per_s)}, steady {x(Run.steady_tokens_per_s)}, "
        f"incl. ref pass {x(Run.tokens_per_s_with_ref)}, "
        f"wall {ours.wall_s / theirs.wall_s:.2f}x, "
        f"peak MLX memory {ours.peak_mb / theirs.peak_mb:.2f}x, "
        f"max RSS {ours.max_rss_mb / theirs.max_rss_mb:.2f}x"
    )


def table(cold: dict[str, Run], warm: dict[str, list[Run]]) -> str:
    rows = table_head(
        ["tool", "run", "steps", "completion tokens", "shapes", "wall s"]
        + ["ref pass s", "train loop s", "step ms (median)", "tok/s", "tok/s steady"]
        + ["tok/s incl. ref", "peak MLX MB", "max RSS MB"],
        left=2,
    )
    rows += [row(cold[tool]) for tool in cold]
    rows += [row(median_run(runs)) for runs in warm.values() if runs]
    rows.append("\nmlx-align / mlx-lm-lora:")
    if all(warm.values()):
        ours, theirs = (median_run(warm[t]) for t in (ALIGN, LORA))
        rows.append(ratios(ours, theirs, "warm (median runs)"))
        paired = [
            f"{a.tokens_per_s() / b.tokens_per_s():.2f}x"
            for a, b in zip(warm[ALIGN], warm[LORA], strict=True)
        ]
        rows.append(f"- warm tok/s (train loop), run by run: {', '.join(paired)}")
    rows.append(ratios(cold[ALIGN], cold[LORA], "cold (first runs)"))
    for tool, runs in warm.items():
        if len(runs) > 1:
            speeds = ", ".join(f"{r.tokens_per_s():,.1f}" for r in runs)
            rows.append(f"- {tool} warm tok/s (train loop) of each run: {speeds}")
    notes = [f"{r.tool} {r.label}: {n}" for r in cold.values() for n in r.notes]
    notes += [f"{r.tool}: {n}" for runs in warm.values() for r in runs for n in r.notes]
    rows += [f"- note: {n}" for n in notes]
    return "\n".join(rows)


def describe(opts, stats: dict, runs: list[Run], load: tuple[float, float]) -> str:
    (trainable,) = {r.trainable for r in runs} or {0}
    blas = sorted({r.blas for r in runs})
    epoch = stats["pairs"] == opts.steps * opts.batch_size
    return (
        f"{machine(opts.blas, load)} ({'; '.join(blas)}); {model_label(opts)}; "
        f"{stats['pairs']} of the split's {stats['split']} train pairs, spread over "
        f"the length range (longest sequence {stats['longest']} tokens, "
        f"{stats['completion'] / stats['pairs']:.1f} completion tokens per pair, "
        f"chosen + rejected){', one epoch for each tool' if epoch else ''}; "
        f"batch {opts.batch_size} pairs, max length {opts.max_length}, LoRA "
        f"r={opts.lora_rank} alpha={opts.lora_alpha:g} (scale "
        f"{opts.lora_alpha / opts.lora_rank:g}) on all linear layers of all blocks "
        f"({trainable:,} trainable), sigmoid DPO beta={opts.beta:g}, AdamW "
        f"lr={opts.learning_rate:g} constant, no clipping; gradient checkpointing: "
        f"{opts.grad_checkpoint}; {f'mlx-align also gets `{opts.align_args}`; ' if opts.align_args else ''}"
        f"{opts.steps} steps per "
        f"run; cold = first run (empty mx.compile kernel cache), warm = median of "
        f"{opts.repeats} runs\n\n"
        "tok/s: completion tokens (chosen + rejected) of the pairs each tool drew, "
        "per second of its training loop (the tools' own per-step seconds, summed; "
        "step 1 holds the compile), or of steps 2+ (steady), or of training loop + "
        "reference pass (incl. ref). mlx-lm-lora runs a second, frozen copy of the "
        "model on every step's batch; mlx-align scores every train pair once before "
        "training (ref pass s). shapes: distinct padded batch widths (each a new "
        "mx.compile trace), widest in brackets. peak MLX: mx.get_peak_memory() at "
        "the end of the process. wall: the whole process.\n"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_options(p)
    p.add_argument("--steps", type=int, default=20, help="optimizer steps per run")
    p.add_argument("--batch-size", type=int, default=4, help="pairs per step")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lora-alpha", type=float, default=16.0)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--learning-rate", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--pairs",
        type=int,
        default=-1,
        help="train pairs, spread over the length range (-1: steps x batch size, "
        "one epoch; 0: the whole split)",
    )
    p.add_argument(
        "--grad-checkpoint",
        choices=["none", "both", "mlx-align"],
        default="none",
        help="recompute each layer's activations in the backward pass: in neither "
        "tool, both, or mlx-align only",
    )
    p.add_argument(
        "--align-args",
        default="",
        help="extra `mlx-align dpo` flags, e.g. '--padding-free'",
    )
    p.add_argument("--repeats", type=int, default=3, help="warm runs per tool")
    p.add_argument("--blas", choices=["openblas", "reference"], default="openblas")
    p.add_argument("--lora-python", default="/tmp/lora-venv/bin/python")
    p.add_argument("--work", type=Path, default=Path("/tmp/mlx_align_bench_dpo"))
    p.add_argument(
        "--worker",
        choices=["mlx-align", "mlx-lm-lora", "tokens"],
        help=argparse.SUPPRESS,
    )
    opts = parse_bench_args(p, argv, warmup=False)
    if opts.pairs < 0:
        opts.pairs = opts.steps * opts.batch_size
    return opts


def main() -> None:
    opts = parse_args()
    if opts.worker:  # REPORT -- ARGS...
        workers = {
            "mlx-align": mlx_align_worker,
            "mlx-lm-lora": mlx_lm_lora_worker,
            "tokens": lambda dump, a: tokens_worker(dump, *a),
        }
        return run_worker(opts, workers)

    check_lora_setup(opts)
    if not (opts.work / "raw" / "pretrain").exists():
        make_data(opts.work / "raw")
    model = bench_model(opts)
    lora_data, align_data, stats = prepare_data(opts, model)
    env = blas_env(opts.blas)
    tools = {
        LORA: lambda label, out, env: run_mlx_lm_lora(
            opts, label, model, lora_data, out, env
        ),
        ALIGN: lambda label, out, env: run_mlx_align(
            opts, label, model, align_data, out, env
        ),
    }
    jit = kernel_caches(opts.work / "jit", tools, cold=True)  # nothing compiled yet
    load_before = os.getloadavg()[0]
    cold, warm = {}, {tool: [] for tool in tools}
    for i in range(opts.repeats + 1):
        for tool, run in tools.items():
            label = "cold" if i == 0 else "warm"
            out = opts.work / "runs" / f"{tool.split()[0]}-{i}"
            result = run(label, out, {**env, "TMPDIR": str(jit[tool])})
            if i == 0:
                cold[tool] = result
            else:
                warm[tool].append(result)
            print(
                f"{tool} {label} run: {result.tokens_per_s():,.1f} tok/s train loop, "
                f"{result.wall_s:.1f} s wall, ref pass {result.ref_s:.1f} s",
                flush=True,
            )
    runs = [*cold.values(), *(r for rs in warm.values() for r in rs)]
    if stats["pairs"] == opts.steps * opts.batch_size:  # one epoch: same pairs
        for r in (r for r in runs if r.tokens != stats["completion"]):
            r.notes.append(f"{r.tokens} completion tokens, not {stats['completion']}")
    if other_blas(opts.blas, (r.blas for r in runs)):
        sys.exit(f"a run used another BLAS than --blas {opts.blas}")
    check_same_trainable(runs)
    text = describe(opts, stats, runs, (load_before, os.getloadavg()[0]))
    text += "\n" + table(cold, warm)
    print(text)
    suffix = "-reference-blas" if opts.blas == "reference" else ""
    suffix += "-whole-split" if stats["pairs"] == stats["split"] else ""
    if opts.grad_checkpoint != "none":
        suffix += f"-grad-checkpoint-{opts.grad_checkpoint}"
    suffix += model_suffix(opts)
    suffix += flags_suffix(opts.align_args)  # "--padding-free" -> "-padding-free"
    results = RESULTS.with_stem(f"dpo{suffix}")
    write_results(results, text)


if __name__ == "__main__":
    main()
