"""Benchmark `mlx-align grpo` against the `mlx-lm-lora` package on the same LoRA GRPO.

Both tools train the same freshly initialised model (`mlx-align init-model`)
on the same prompts with the same settings: group size G (4 and 8 by
default), at most 32 completion tokens, temperature 1.0 with no top-p /
top-k filter, 1 prompt per step, LoRA rank and scale (alpha / rank) on every
linear layer of every block, no dropout, AdamW (no weight decay,
bias-corrected) at a constant learning rate, no gradient clipping, the
``grpo`` loss (per-sequence token mean), one optimisation pass per rollout
(mu = 1, so the clip never acts; epsilon 0.2 for both), no KL term (beta 0:
neither tool runs a reference model), one exact-answer reward, seed and
steps; no valid split, so neither evaluates.

Same prompts: mlx-lm-lora always renders a GRPO prompt through the chat
template as ``[system, user]``; a row without a ``system`` field gets its
default system message (the R1 ``<think>``/``<answer>`` instruction), 140
tokens under this tokenizer, so prompts are ~156 tokens and ``--max-length``
is 256. That is what mlx-lm-lora does with `recipes/make_data.py`'s rows
out of the box, and the issue's baseline figure. ``--system TEXT`` puts a
``system`` field in every row instead (e.g. ``--system "Answer with a
number."``: ~51-token prompts). mlx-align gets the same two messages as its
``prompt``; `check_same_tokens` verifies that both turn every row into
identical prompt ids before any run. The train file holds ``--steps`` rows of
`recipes/make_data.py`'s ``grpo/train.jsonl``, spread over the prompt-length
range, and both tools visit each once (mlx-align: its seeded batch order;
mlx-lm-lora: one permutation of all 1-prompt batches), each in its own order.

Sampling: mlx-lm-lora's GRPO samples with ``top_p=0.95, top_k=20`` (fixed
`GRPOTrainingArgs` defaults, no flag); its worker sets ``top_p=1.0,
top_k=0`` so both draw from the plain temperature-1 softmax. mlx-lm-lora
also stops at the text ``</answer>``; mlx-align only at EOS. A random model
almost never emits either, so completions run to the limit in both tools
(the table shows the mean completion length and the share at the limit).
Rewards: mlx-align ``--reward math`` (math-verify), mlx-lm-lora
``r1_accuracy_reward_func`` (its exact ``<answer>`` match).

Each tool runs its own entry point (`mlx_align.cli.main`,
`mlx_lm_lora.train.main`) in a worker process (this script with
``--worker``): mlx-align in this venv, mlx-lm-lora in its own
(``--lora-python``; ``python3 -m venv /tmp/lora-venv &&
/tmp/lora-venv/bin/pip install mlx-lm-lora "mlx[cpu]"``). The workers only
observe, besides the sampler defaults above: the rollout (the calls that
generate a step's completions, prefill + decode: mlx-align's
`rollout.sample_groups`, mlx-lm-lora's `generate_grpo`; timed, with the
completion tokens they return, EOS included when sampled), the reward
scoring, the tools' own per-step seconds (mlx-align's metrics.jsonl with
``--log-every 1``, which covers the rollout of that step; mlx-lm-lora's
report callback with one report per step, which does too), the trainable
parameter count and the final `mx.get_peak_memory()`. On the CPU backend
mlx-lm-lora needs ``mx.device_info()["max_recommended_working_set_size"]``,
a key only Metal reports; its worker adds it (the machine's RAM). Max RSS
comes from `os.wait4`; wall time is the whole worker process.

Both run under the same BLAS (``--blas``): the system OpenBLAS via
``LD_PRELOAD`` (what the ``mlx-align`` command does by itself) or mlx-cpu's
bundled reference BLAS. `mx.compile` on the CPU backend builds kernels with
g++ on first use and caches them under ``$TMPDIR/mlx``; each tool gets its own
``TMPDIR`` under ``--work``, kept between invocations (``--cold`` empties it
first). The first ``--warmup`` steps of every run (compile) are left out of
the step figures. The tools take turns, ``--repeats`` runs each per group
size, and a tool's steps are pooled over its runs.

    .venv/bin/python bench/grpo.py [--steps 10] [--groups 4,8] [--repeats 2] [--blas reference]

prints a markdown table and writes it to bench/results/grpo.md (with
``--blas reference``: grpo-reference-blas.md; with ``--system``: a
``-short-system`` suffix).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import (
    RESULTS_DIR,
    PooledSteps,
    Step,
    WorkerReport,
    add_model_options,
    add_working_set,
    align_grpo_worker,
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
    rollout_record,
    run_measured,
    run_worker,
    spread,
    table_head,
    write_results,
)

RESULTS = RESULTS_DIR / "grpo.md"
ALIGN, LORA = "mlx-align grpo", "mlx-lm-lora grpo"
SYSTEM = "Answer with a number."
# What mlx-lm-lora's GRPODataset puts in when a row has no ``system`` field.
LORA_SYSTEM = (
    "You are given a problem. Think about the problem and provide your working "
    "out. Place it between <think> and </think>. Then, provide your solution "
    "between <answer> </answer>."
)


@dataclass
class Run:
    tool: str
    group: int
    steps: list[Step]
    peak_mb: float
    max_rss_mb: float
    wall_s: float
    trainable: int
    blas: str
    notes: list[str] = field(default_factory=list)


@dataclass
class Pooled(PooledSteps):
    """A tool's post-warm-up steps over all its runs at one group size."""

    tool: str
    group: int
    runs: list[Run]
    warmup: int

    def rollout_share(self) -> float:
        return self.total("rollout_s") / self.total("step_s")


def run_tokens_per_s(run: Run, warmup: int) -> float:
    later = run.steps[warmup:]
    return sum(s.tokens for s in later) / sum(s.step_s for s in later)


# ------------------------------------------------------------------ inputs


def write_data(records: list[dict], directory: Path, system: str) -> tuple[Path, Path]:
    """``train.jsonl`` for mlx-lm-lora (strings + ``system``) and mlx-align (the chat).

    ``system`` "default": no ``system`` field, so mlx-lm-lora uses its own.
    """
    lora, align = directory / "mlx-lm-lora", directory / "mlx-align"
    for d in (lora, align):
        d.mkdir(parents=True, exist_ok=True)
    with (
        open(lora / "train.jsonl", "w") as theirs,
        open(align / "train.jsonl", "w") as ours,
    ):
        for record in records:
            if system == "default":
                theirs.write(json.dumps(record) + "\n")
            else:
                theirs.write(json.dumps({**record, "system": system}) + "\n")
            chat = [
                {
                    "role": "system",
                    "content": LORA_SYSTEM if system == "default" else system,
                },
                {"role": "user", "content": record["prompt"]},
            ]
            ours.write(json.dumps({**record, "prompt": chat}) + "\n")
    return lora, align


def prepare_data(opts, model: Path) -> tuple[Path, Path, dict]:
    """The prompts both tools get (``--steps`` of them), checked to tokenise alike."""
    raw = opts.work / "raw" / "grpo" / "train.jsonl"
    records = [json.loads(line) for line in raw.read_text().splitlines()]
    everything = write_data(records, opts.work / "all", opts.system)
    lengths = check_same_tokens(opts, model, *everything)
    keep = spread(lengths, opts.steps)
    stats = {
        "split": len(records),
        "prompts": len(keep),
        "shortest": min(lengths[i] for i in keep),
        "longest": max(lengths[i] for i in keep),
        "mean": sum(lengths[i] for i in keep) / len(keep),
    }
    if stats["longest"] + opts.max_completion_tokens > opts.max_length:
        sys.exit(
            f"prompts of up to {stats['longest']} tokens + "
            f"{opts.max_completion_tokens} completion tokens: raise --max-length"
        )
    data = write_data([records[i] for i in keep], opts.work / "data", opts.system)
    return *data, stats


def check_same_tokens(opts, model: Path, lora: Path, align: Path) -> list[int]:
    """Assert both tools turn every row into the same prompt ids; returns their lengths."""
    from mlx_lm.utils import load_tokenizer

    from mlx_align.data.jsonl import read_jsonl
    from mlx_align.data.tokenize import encode_prompt

    dump = opts.work / "mlx-lm-lora-tokens.json"
    cmd = [opts.lora_python, __file__, "--worker", "tokens", str(dump), "--"]
    subprocess.run([*cmd, str(model), str(lora)], check=True, capture_output=True)
    theirs = json.loads(dump.read_text())
    tokenizer = load_tokenizer(model)
    ours = [encode_prompt(tokenizer, r) for r in read_jsonl(align / "train.jsonl")]
    if len(ours) != len(theirs):
        sys.exit(f"{len(ours)} prompts for mlx-align, {len(theirs)} for mlx-lm-lora")
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        if a != b:
            sys.exit(f"row {i}: mlx-align and mlx-lm-lora tokenise the prompt apart")
    return [len(p) for p in ours]


# ------------------------------------------------------------------ runs


def to_run(opts, tool: str, group: int, report: Path, wall: float, rss: float) -> Run:
    """Pair the k-th rollout (and scoring) with the k-th step the tool timed."""
    read = WorkerReport.read(report)
    rollouts, scores, steps, rest = read.rollouts, read.scores, read.steps, read.rest
    if rest.get("sampler", {"top_p": 1.0, "top_k": 0}) != {"top_p": 1.0, "top_k": 0}:
        sys.exit(f"{tool} sampled with {rest['sampler']}, not plain temperature")
    n = opts.steps
    if (len(rollouts), len(scores), sorted(steps)) != (n, n, list(range(1, n + 1))):
        sys.exit(f"{tool}: {len(rollouts)} rollouts, {len(steps)} steps in {report}")
    rows, notes = [], []
    for k, (rollout, score_s) in enumerate(zip(rollouts, scores, strict=True)):
        if rollout["completions"] != group:
            sys.exit(f"{tool}: {rollout['completions']} completions in a step")
        if rollout["longest"] > opts.max_completion_tokens:
            notes.append(f"step {k + 1}: a {rollout['longest']}-token completion")
        rows.append(
            Step(
                rollout["completions"],
                rollout["tokens"],
                rollout["longest"],
                rollout["at_limit"],
                rollout["rollout_s"],
                score_s,
                steps[k + 1],
            )
        )
    return Run(
        tool,
        group,
        rows,
        rest["peak_memory"] / 2**20,
        rss,
        wall,
        rest["trainable"],
        rest["blas"],
        notes,
    )


def run_mlx_align(opts, group: int, model: Path, data: Path, out: Path, env: dict):
    args = ["grpo", "--model", str(model), "--data", str(data), "--out", str(out)]
    args += ["--reward", "math", "--steps", str(opts.steps), "--batch-size", "1"]
    args += ["--group-size", str(group)]
    args += ["--max-completion-tokens", str(opts.max_completion_tokens)]
    args += ["--temperature", str(opts.temperature), "--top-p", "1.0"]
    args += ["--lora-rank", str(opts.lora_rank), "--lora-alpha", str(opts.lora_alpha)]
    args += ["--lora-layers", "-1", "--lora-dropout", "0"]
    args += ["--learning-rate", str(opts.learning_rate), "--seed", str(opts.seed)]
    args += ["--warmup-steps", "0", "--min-lr-ratio", "1.0", "--max-grad-norm", "0"]
    args += ["--weight-decay", "0", "--max-length", str(opts.max_length)]
    args += ["--beta", "0", "--epsilon", "0.2", "--iterations", "1", "--loss", "grpo"]
    args += ["--eval-every", "0", "--save-every", "0", "--log-every", "1"]
    args += opts.align_args.split()
    fresh_dir(out)
    report = out / "report.jsonl"
    cmd = [sys.executable, __file__, "--worker", "mlx-align", str(report), "--", *args]
    wall, rss = run_measured(cmd, env, out.with_suffix(".log"))
    return to_run(opts, ALIGN, group, report, wall, rss)


def run_mlx_lm_lora(opts, group: int, model: Path, data: Path, out: Path, env: dict):
    fresh_dir(out)
    never = str(opts.steps + 1)
    config = json.dumps(mlx_lm_lora_config(opts), indent=2)
    (out / "config.yaml").write_text(config)
    args = ["--train", "--train-mode", "grpo", "--train-type", "lora"]
    args += ["--model", str(model), "--data", str(data), "--adapter-path", str(out)]
    args += ["-c", str(out / "config.yaml"), "--optimizer", "adamw"]
    args += ["--iters", str(opts.steps), "--batch-size", "1"]
    args += ["--group-size", str(group)]
    args += ["--max-completion-length", str(opts.max_completion_tokens)]
    args += ["--temperature", str(opts.temperature)]
    args += ["--num-layers", "-1", "--learning-rate", str(opts.learning_rate)]
    args += ["--max-seq-length", str(opts.max_length), "--seed", str(opts.seed)]
    args += ["--beta", "0", "--epsilon", "0.2", "--grpo-loss-type", "grpo"]
    args += ["--reward-functions", "r1_accuracy_reward_func"]
    args += ["--steps-per-report", "1", "--steps-per-eval", never]
    args += ["--save-every", never]
    report = out / "report.jsonl"
    cmd = [opts.lora_python, __file__, "--worker", "mlx-lm-lora", str(report), "--"]
    wall, rss = run_measured([*cmd, *args], env, out.with_suffix(".log"))
    return to_run(opts, LORA, group, report, wall, rss)


# ------------------------------------------------------------------ workers
# These run inside each tool's own interpreter: stdlib and that tool only.


def mlx_lm_lora_worker(report: Path, argv: list[str]) -> None:
    """`mlx_lm_lora.train` as its CLI runs it, observed through ``report``."""
    from functools import partial

    import mlx.core as mx
    import mlx_lm_lora.train as lora_train
    import mlx_lm_lora.trainer.grpo_trainer as trainer
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.callbacks import TrainingCallback

    write = reporter(report)
    limit = int(argv[argv.index("--max-completion-length") + 1])
    add_working_set(mx)
    # Plain temperature sampling, as mlx-align (its defaults: top_p 0.95, top_k 20).
    lora_train.GRPOTrainingArgs = partial(trainer.GRPOTrainingArgs, top_p=1.0, top_k=0)
    generate, rewards = trainer.generate_grpo, trainer._rollout_rewards

    def timed_generate(*args, **kwargs):  # one step's completions, prefill + decode
        tic = time.perf_counter()
        completions, texts, indices = generate(*args, **kwargs)  # synced (.tolist)
        seconds = time.perf_counter() - tic
        write(rollout_record([c.size for c in completions], seconds, limit))
        return completions, texts, indices

    def timed_rewards(*args, **kwargs):
        tic = time.perf_counter()
        advantages, metrics = rewards(*args, **kwargs)
        mx.eval(advantages)
        write({"score_s": time.perf_counter() - tic})
        return advantages, metrics

    class Recorder(TrainingCallback):
        def on_train_loss_report(self, info: dict) -> None:  # one per step
            seconds = 1 / info["iterations_per_second"]
            write({"step": info["iteration"], "seconds": seconds})

    def count_trainable(model) -> None:
        trainable = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
        write({"trainable": trainable})

    train_grpo = lora_train.train_grpo

    def checked_train_grpo(*args, **kwargs):
        settings = kwargs["args"]
        write({"sampler": {"top_p": settings.top_p, "top_k": settings.top_k}})
        return train_grpo(*args, **kwargs)

    run = lora_train.run
    lora_train.train_grpo = checked_train_grpo
    trainer.generate_grpo = timed_generate
    trainer._rollout_rewards = timed_rewards
    lora_train.print_trainable_parameters = count_trainable
    lora_train.run = lambda args, training_callback=None: run(args, Recorder())
    sys.argv = ["mlx_lm_lora.train", *argv]
    lora_train.main()
    write({"peak_memory": mx.get_peak_memory(), "blas": blas_in_use()})


def tokens_worker(dump: Path, model: str, data: str) -> None:
    """mlx-lm-lora's prompt ids of every train row, as its CLI builds them."""
    from types import SimpleNamespace

    from mlx_lm.utils import load_tokenizer
    from mlx_lm_lora.chat_template import ensure_chat_template
    from mlx_lm_lora.trainer.datasets import load_local_dataset

    tokenizer = load_tokenizer(Path(model))
    ensure_chat_template(tokenizer)
    config = SimpleNamespace(train_mode="grpo")
    train, _, _ = load_local_dataset(Path(data), tokenizer, config)
    rows = [list(train.process(train[i])[0]) for i in range(len(train))]
    dump.write_text(json.dumps(rows))


# ------------------------------------------------------------------ report


def row(p: Pooled) -> str:
    steps = p.steps
    mean_length = p.total("tokens") / p.total("completions")
    at_limit = sum(s.at_limit for s in steps) / p.total("completions")
    return (
        f"| {p.tool} | {p.group} | {len(p.runs)} x {len(p.runs[0].steps)} "
        f"| {mean_length:.1f} ({at_limit:.0%}) "
        f"| {p.median('step_s'):.2f} | {p.median('rollout_s'):.2f} "
        f"| {p.median('train_s'):.2f} | {p.median('score_s') * 1000:.0f} "
        f"| {p.rollout_share():.0%} | {p.rollout_tokens_per_s():,.0f} "
        f"| {p.step_tokens_per_s():,.1f} | {p.completions_per_s():.2f} "
        f"| {p.first_step_s():.1f} | {p.peak_mb:.1f} | {p.max_rss_mb:,.0f} "
        f"| {p.wall_s:.1f} |"
    )


def ratios(ours: Pooled, theirs: Pooled, warmup: int) -> list[str]:
    def x(f) -> str:
        return f"{f(ours) / f(theirs):.2f}x"

    paired = [
        f"{run_tokens_per_s(a, warmup) / run_tokens_per_s(b, warmup):.2f}x"
        for a, b in zip(ours.runs, theirs.runs, strict=True)
    ]
    speedup = theirs.median("step_s") / ours.median("step_s")
    return [
        f"- G={ours.group}: **step throughput {x(Pooled.step_tokens_per_s)}** "
        f"(run by run: {', '.join(paired)}; median step time {speedup:.2f}x "
        f"shorter), rollout tok/s {x(Pooled.rollout_tokens_per_s)}, train part "
        f"{theirs.median('train_s') / ours.median('train_s'):.2f}x faster, "
        f"peak MLX memory {ours.peak_mb / theirs.peak_mb:.2f}x, max RSS "
        f"{ours.max_rss_mb / theirs.max_rss_mb:.2f}x, wall "
        f"{ours.wall_s / theirs.wall_s:.2f}x"
    ]


def table(pooled: dict[tuple[str, int], Pooled], opts) -> str:
    rows = table_head(
        ["tool", "G", "runs x steps", "completion len (at limit)", "step s (median)"]
        + ["rollout s", "train s", "score ms", "rollout share", "rollout tok/s"]
        + ["step tok/s", "completions/s", "first step s", "peak MLX MB"]
        + ["max RSS MB", "wall s"]
    )
    rows += [row(p) for p in pooled.values()]
    rows.append("\nmlx-align / mlx-lm-lora:")
    for group in opts.groups:
        ours, theirs = pooled[(ALIGN, group)], pooled[(LORA, group)]
        rows += ratios(ours, theirs, opts.warmup)
    notes = [
        f"{r.tool} G={r.group}: {n}"
        for p in pooled.values()
        for r in p.runs
        for n in r.notes
    ]
    rows += [f"- note: {n}" for n in notes]
    return "\n".join(rows)


def describe(opts, stats: dict, runs: list[Run], load: tuple[float, float]) -> str:
    (trainable,) = {r.trainable for r in runs} or {0}
    blas = sorted({r.blas for r in runs})
    system = (
        "mlx-lm-lora's default system message"
        if opts.system == "default"
        else f"system message {opts.system!r}"
    )
    return (
        f"{machine(opts.blas, load)} ({'; '.join(blas)}); {model_label(opts)}; "
        f"{stats['prompts']} of the split's {stats['split']} prompts, spread over "
        f"the length range ({stats['shortest']}-{stats['longest']} tokens, mean "
        f"{stats['mean']:.1f}, chat template with {system}), "
        f"each visited once per run; 1 prompt per step, group sizes "
        f"{', '.join(map(str, opts.groups))}, at most "
        f"{opts.max_completion_tokens} completion tokens, temperature "
        f"{opts.temperature:g}, no top-p / top-k; LoRA r={opts.lora_rank} "
        f"alpha={opts.lora_alpha:g} (scale {opts.lora_alpha / opts.lora_rank:g}) "
        f"on all linear layers of all blocks ({trainable:,} trainable), grpo loss, "
        f"beta 0, mu 1, AdamW lr={opts.learning_rate:g} constant, no clipping; "
        f"{opts.steps} steps per run, {opts.repeats} run(s) per tool and group size "
        f"(tools alternating), the first {opts.warmup} step(s) of each run left "
        f"out{'; cold kernel cache' if opts.cold else ''}"
        f"{f'; mlx-align also gets `{opts.align_args}`' if opts.align_args else ''}\n\n"
        "step s / rollout s / train s / score ms: medians over the pooled steps; "
        "rollout = generating the step's G completions (prefill + decode), train = "
        "the rest of the step (padding, forward + backward, update), score = the "
        "reward function. rollout tok/s: completion tokens generated per second of "
        "rollout. step tok/s, completions/s: per second of whole steps (rollout "
        "included), summed over the pooled steps: the step throughput. first step "
        "s: step 1 (compile), median over runs. peak MLX: mx.get_peak_memory() at "
        "the end of the process. wall: the whole process, median over runs.\n"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_options(p)
    p.add_argument("--steps", type=int, default=10, help="optimizer steps per run")
    p.add_argument("--groups", default="4,8", help="group sizes, comma-separated")
    p.add_argument("--max-completion-tokens", type=int, default=32)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lora-alpha", type=float, default=16.0)
    p.add_argument("--learning-rate", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--system",
        default="default",
        help="system message of every prompt (default: mlx-lm-lora's own, 140 "
        f"tokens under this tokenizer; e.g. {SYSTEM!r}: a short one)",
    )
    p.add_argument(
        "--align-args",
        default="",
        help="extra `mlx-align grpo` flags, e.g. '--fuse-rollout off'",
    )
    p.add_argument("--warmup", type=int, default=1, help="steps left out of each run")
    p.add_argument("--repeats", type=int, default=2, help="runs per tool and group")
    p.add_argument("--cold", action="store_true", help="empty the kernel caches first")
    p.add_argument("--blas", choices=["openblas", "reference"], default="openblas")
    p.add_argument("--lora-python", default="/tmp/lora-venv/bin/python")
    p.add_argument("--work", type=Path, default=Path("/tmp/mlx_align_bench_grpo"))
    p.add_argument(
        "--worker",
        choices=["mlx-align", "mlx-lm-lora", "tokens"],
        help=argparse.SUPPRESS,
    )
    opts = parse_bench_args(p, argv)
    opts.groups = [int(g) for g in opts.groups.split(",") if g.strip()]
    return opts


def main() -> None:
    opts = parse_args()
    if opts.worker:  # REPORT -- ARGS...
        workers = {
            "mlx-align": align_grpo_worker,
            "mlx-lm-lora": mlx_lm_lora_worker,
            "tokens": lambda dump, a: tokens_worker(dump, *a),
        }
        return run_worker(opts, workers)

    check_lora_setup(opts)
    if not (opts.work / "raw" / "grpo").exists():
        make_data(opts.work / "raw")
    model = bench_model(opts)
    lora_data, align_data, stats = prepare_data(opts, model)
    env = blas_env(opts.blas)
    tools = {
        LORA: lambda group, out, env: run_mlx_lm_lora(
            opts, group, model, lora_data, out, env
        ),
        ALIGN: lambda group, out, env: run_mlx_align(
            opts, group, model, align_data, out, env
        ),
    }
    jit = kernel_caches(opts.work / "jit" / opts.blas, tools, opts.cold)
    load_before = os.getloadavg()[0]
    runs: dict[tuple[str, int], list[Run]] = {}
    for group in opts.groups:
        for i in range(opts.repeats):
            for tool, run in tools.items():
                out = opts.work / "runs" / f"{tool.split()[0]}-g{group}-{i}"
                result = run(group, out, {**env, "TMPDIR": str(jit[tool])})
                runs.setdefault((tool, group), []).append(result)
                later = result.steps[opts.warmup :]
                print(
                    f"{tool} G={group} run {i + 1}: "
                    f"{statistics.median(s.step_s for s in later):.2f} s/step, "
                    f"{run_tokens_per_s(result, opts.warmup):,.1f} completion tok/s, "
                    f"{result.wall_s:.1f} s wall",
                    flush=True,
                )
    every = [r for rs in runs.values() for r in rs]
    if other_blas(opts.blas, (r.blas for r in every)):
        sys.exit(f"a run used another BLAS than --blas {opts.blas}")
    check_same_trainable(every)
    pooled = {key: Pooled(*key, runs[key], opts.warmup) for key in runs}  # G, then tool
    text = describe(opts, stats, every, (load_before, os.getloadavg()[0]))
    text += "\n" + table(pooled, opts)
    print(text)
    suffix = "-reference-blas" if opts.blas == "reference" else ""
    suffix += "" if opts.system == "default" else "-short-system"
    suffix += flags_suffix(opts.align_args)
    suffix += model_suffix(opts)
    results = RESULTS.with_stem(f"grpo{suffix}")
    write_results(results, text)


if __name__ == "__main__":
    main()
