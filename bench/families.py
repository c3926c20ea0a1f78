"""Time one `mlx-align grpo` step on a Qwen3.5-shaped hybrid against a dense model of its size.

Two random-weight models, built with mlx-lm's own classes
(`mlx_align.model.random_init.init_random_model`) and cached under
``--work``:

- *dense*: ``model_type`` "qwen3" (every layer full attention);
- *hybrid*: ``model_type`` "qwen3_5", shaped like the Qwen3.5 configs: one
  layer in ``--interval`` (4, as theirs) is full attention (Qwen3-Next's
  gated attention: q_proj also yields an output gate; partial RoPE, 0.25
  of the head, multi-axis sections), the others gated-delta linear attention
  (causal depthwise conv + recurrent state; ``linear_num_value_heads`` =
  heads, ``linear_num_key_heads`` = heads / 2, key and value head dims =
  ``--head-dim``, conv kernel 4).

Both share the hidden size, layer count, heads / KV heads, head dim, MLP
width, tied embeddings and vocabulary: the tokenizer of `mlx-align
init-model --preset small` trained on `recipes/make_data.py`'s pretraining
corpus (``bench/common.py``'s `prepare_model`). Defaults: hidden 512, 8
layers (hybrid: 6 linear + 2 full), 8 heads / 2 KV heads of 64, MLP 1536.

Each model runs the real CLI (`mlx_align.cli.main`, what the ``mlx-align``
command runs) in a worker process (this script with ``--worker``), with the
CLI's defaults except::

    mlx-align grpo --model M --data D --out R --reward math --steps N
        --log-every 1 --save-every 0 --eval-every 0 --valid-split none
        --group-size G --max-completion-tokens C --batch-size B
        --temperature 1.0 --seed 0

(LoRA rank 8 on every linear layer of every block, the CLI's default). The
data are the first N x B prompts of `recipes/make_data.py`'s
``grpo/train.jsonl`` (``Question: What is 7 + 5 + 3?\\nAnswer:``, 16-23
tokens, no chat template), each visited once. A random model almost never
samples EOS, so completions run to C tokens in both (the table shows it).

The worker observes through `mlx_align.core.events`, patching nothing:
``rollout`` (the step's sampling, prefill + decode, seconds and lengths),
``rewards`` (scoring seconds), ``trainable`` and ``fast_path`` (which of the
probed fast paths serve the model, and why not). Step seconds come from the
run's own ``metrics.jsonl`` (``--log-every 1``: tokens / tokens_per_sec, the
whole step, rollout included); train = step - rollout - reward scoring
(padding, the log-prob forward(s), backward, update). Peak memory is
`mx.get_peak_memory()` at the end of the worker; max RSS from `os.wait4`.
The log lines where a model turns a fast path down (``...; decoding
eagerly``, ``...; scoring full rows``) are quoted under the table.

The models take turns (dense, hybrid, dense, hybrid with ``--repeats 2``),
the first ``--warmup`` steps of each run (compile: a g++ build on the CPU
backend the first time, cached per model under ``--work``/jit) are left out,
and a model's later steps are pooled over its runs.

    .venv/bin/python bench/families.py [--hidden 512] [--layers 8] [--steps 6]
        [--warmup 2] [--group-size 4] [--max-completion-tokens 32]
        [--batch-size 1] [--repeats 1] [--work DIR]

prints a markdown table and writes it to bench/results/families.md (a
``--hidden`` / ``--layers`` off the default, or ``--align-args``, adds a
suffix: families-hidden1024.md, families-no-compile.md).
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from common import (
    RESULTS_DIR,
    PooledSteps,
    Step,
    WorkerReport,
    align_grpo_worker,
    blas_env,
    flags_suffix,
    fresh_dir,
    kernel_caches,
    machine,
    make_data,
    other_blas,
    parse_bench_args,
    prepare_model,
    run_measured,
    run_worker,
    table_head,
    write_results,
)

RESULTS = RESULTS_DIR / "families.md"
DENSE, HYBRID = "dense", "hybrid"
# What a model prints when a probed fast path does not serve it
# (mlx_align.model.probes.probed: "<type>: no <path> (<reason>); <fallback>").
FALLBACK_LINE = re.compile(r": no .+\); ")


# ------------------------------------------------------------------ models


def mrope_sections(rotary_dim: int) -> list[int]:
    """Qwen3.5's three RoPE sections over ``rotary_dim / 2`` frequencies (64 -> 11, 11, 10)."""
    half = rotary_dim // 2
    first = (half + 2) // 3
    return [first, first, half - 2 * first]


def configs(opts) -> dict[str, dict]:
    """``config.json`` of the dense and the hybrid model (vocabulary set later)."""
    shared = {
        "hidden_size": opts.hidden,
        "num_hidden_layers": opts.layers,
        "intermediate_size": opts.intermediate,
        "num_attention_heads": opts.heads,
        "num_key_value_heads": opts.kv_heads,
        "head_dim": opts.head_dim,
        "rms_norm_eps": 1e-6,
        "vocab_size": 0,  # the tokenizer's, set by init_random_model
        "max_position_embeddings": 4096,
        "tie_word_embeddings": True,
    }
    dense = {"model_type": "qwen3", **shared, "rope_theta": 1_000_000.0}
    rotary = int(opts.head_dim * 0.25)
    text = {
        "model_type": "qwen3_5_text",
        **shared,
        "full_attention_interval": opts.interval,
        "linear_num_value_heads": opts.heads,
        "linear_num_key_heads": max(opts.heads // 2, 1),
        "linear_key_head_dim": opts.head_dim,
        "linear_value_head_dim": opts.head_dim,
        "linear_conv_kernel_dim": 4,
        "attention_bias": False,
        "rope_parameters": {
            "rope_type": "default",
            "mrope_section": mrope_sections(rotary),
            "mrope_interleaved": True,
            "partial_rotary_factor": 0.25,
            "rope_theta": 10_000_000.0,
        },
    }
    hybrid = {"model_type": "qwen3_5", "tie_word_embeddings": True, "text_config": text}
    return {DENSE: dense, HYBRID: hybrid}


def layer_kinds(opts) -> dict[str, str]:
    full = sum((i + 1) % opts.interval == 0 for i in range(opts.layers))
    return {
        DENSE: f"{opts.layers} full",
        HYBRID: f"{opts.layers - full} linear + {full} full",
    }


def build_models(opts, tokenizer_dir: Path) -> dict[str, Path]:
    """Each model's directory under ``--work`` (cached by shape)."""
    from mlx_align.model.random_init import init_random_model

    shape = (
        f"h{opts.hidden}-l{opts.layers}-a{opts.heads}-kv{opts.kv_heads}"
        f"-d{opts.head_dim}-i{opts.intermediate}-f{opts.interval}"
    )
    models = {}
    for name, config in configs(opts).items():
        out = opts.work / "models" / f"{name}-{shape}"
        if not (out / "config.json").exists():
            init_random_model(out, config, tokenizer_dir, seed=0)
        models[name] = out
    return models


def parameter_count(model: Path) -> int:
    import mlx.core as mx

    return sum(
        v.size for f in model.glob("*.safetensors") for v in mx.load(str(f)).values()
    )


def write_data(opts) -> Path:
    """``--steps`` x ``--batch-size`` prompts of grpo/train.jsonl, each seen once."""
    raw = opts.work / "raw" / "grpo" / "train.jsonl"
    rows = raw.read_text().splitlines()[: opts.steps * opts.batch_size]
    data = opts.work / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "train.jsonl").write_text("".join(r + "\n" for r in rows))
    return data


# ------------------------------------------------------------------ runs


@dataclass
class Run:
    model: str
    steps: list[Step]
    peak_mb: float
    max_rss_mb: float
    wall_s: float
    trainable: int
    blas: str
    fast_paths: dict[str, str | None]
    fallbacks: list[str] = field(default_factory=list)

    def step_s(self, warmup: int) -> float:
        return statistics.median(s.step_s for s in self.steps[warmup:])


@dataclass
class Pooled(PooledSteps):
    model: str
    runs: list[Run]
    warmup: int


def grpo_args(opts, model: Path, data: Path, out: Path) -> list[str]:
    args = ["grpo", "--model", str(model), "--data", str(data), "--out", str(out)]
    args += ["--reward", "math", "--steps", str(opts.steps), "--log-every", "1"]
    args += ["--save-every", "0", "--eval-every", "0", "--valid-split", "none"]
    args += ["--group-size", str(opts.group_size)]
    args += ["--max-completion-tokens", str(opts.max_completion_tokens)]
    args += ["--batch-size", str(opts.batch_size)]
    args += ["--temperature", "1.0", "--seed", str(opts.seed)]
    return args + shlex.split(opts.align_args)


def run_model(opts, name: str, model: Path, data: Path, out: Path, env: dict) -> Run:
    fresh_dir(out)
    report = out / "report.jsonl"
    args = grpo_args(opts, model, data, out)
    cmd = [sys.executable, __file__, "--worker", "grpo", str(report), "--", *args]
    log = out.with_suffix(".log")
    wall, rss = run_measured(cmd, env, log)
    return to_run(opts, name, report, log, wall, rss)


def to_run(opts, name: str, report: Path, log: Path, wall: float, rss: float) -> Run:
    """Pair the k-th rollout and reward scoring with step k of metrics.jsonl."""
    read = WorkerReport.read(report)
    rollouts, scores, steps, rest = read.rollouts, read.scores, read.steps, read.rest
    n = opts.steps
    if (len(rollouts), len(scores), sorted(steps)) != (n, n, list(range(1, n + 1))):
        sys.exit(f"{name}: {len(rollouts)} rollouts, {len(steps)} steps in {report}")
    rows = [
        Step(
            r["completions"],
            r["tokens"],
            r["longest"],
            r["at_limit"],
            r["rollout_s"],
            s,
            steps[k],
        )
        for k, (r, s) in enumerate(zip(rollouts, scores, strict=True), start=1)
    ]
    fallbacks = [
        line.strip()
        for line in log.read_text(errors="replace").splitlines()
        if FALLBACK_LINE.search(line)
    ]
    return Run(
        name,
        rows,
        rest["peak_memory"] / 2**20,
        rss,
        wall,
        rest["trainable"],
        rest["blas"],
        read.fast_paths,
        list(dict.fromkeys(fallbacks)),
    )


# ------------------------------------------------------------------ worker
# Runs in a fresh interpreter of this venv (this script with --worker).


# ------------------------------------------------------------------ report


def row(p: Pooled, kinds: dict[str, str], params: dict[str, int]) -> str:
    at_limit = sum(s.at_limit for s in p.steps) / p.total("completions")
    return (
        f"| {p.model} | {kinds[p.model]} | {params[p.model] / 1e6:.1f}M "
        f"| {p.runs[0].trainable / 1e6:.2f}M | {len(p.runs)} x {len(p.runs[0].steps)} "
        f"| {p.total('tokens') / p.total('completions'):.1f} ({at_limit:.0%}) "
        f"| {p.median('step_s'):.2f} | {p.median('rollout_s'):.2f} "
        f"| {p.median('train_s'):.2f} | {p.median('score_s') * 1000:.0f} "
        f"| {p.total('rollout_s') / p.total('step_s'):.0%} "
        f"| {p.rollout_tokens_per_s():,.0f} | {p.step_tokens_per_s():,.1f} "
        f"| {p.first_step_s():.1f} | {p.peak_mb:,.0f} | {p.max_rss_mb:,.0f} "
        f"| {p.wall_s:.1f} |"
    )


def ratio_lines(dense: Pooled, hybrid: Pooled, warmup: int) -> list[str]:
    def x(name: str) -> str:
        return f"{hybrid.median(name) / dense.median(name):.2f}x"

    paired = [
        f"{h.step_s(warmup) / d.step_s(warmup):.2f}x"
        for d, h in zip(dense.runs, hybrid.runs, strict=True)
    ]
    return [
        f"- **step time {x('step_s')}** (run by run: {', '.join(paired)}), "
        f"rollout {x('rollout_s')}, train part {x('train_s')}, completion tok/s "
        f"{hybrid.step_tokens_per_s() / dense.step_tokens_per_s():.2f}x, peak MLX memory "
        f"{hybrid.peak_mb / dense.peak_mb:.2f}x, max RSS "
        f"{hybrid.max_rss_mb / dense.max_rss_mb:.2f}x"
    ]


def fast_path_lines(pooled: dict[str, Pooled]) -> list[str]:
    lines = []
    for p in pooled.values():
        paths = {k: v for r in p.runs for k, v in r.fast_paths.items()}
        on = [k for k, v in paths.items() if v is None]
        off = [k for k, v in paths.items() if v is not None]
        lines.append(
            f"- {p.model}: fast paths on: {', '.join(on) or 'none'}; off: "
            f"{', '.join(off) or 'none'}"
        )
        fallbacks = dict.fromkeys(f for r in p.runs for f in r.fallbacks)
        lines += [f"  - `{f}`" for f in fallbacks]
    return lines


def describe(opts, params, load, blas) -> str:
    return (
        f"{machine(opts.blas, load)} ({'; '.join(blas)}); hidden {opts.hidden}, "
        f"{opts.layers} layers, {opts.heads} heads / {opts.kv_heads} KV heads of "
        f"{opts.head_dim}, MLP {opts.intermediate}, vocabulary {opts.vocab} (tied), "
        f"float32, random weights; hybrid = qwen3_5 with full attention every "
        f"{opts.interval}th layer, gated-delta linear attention elsewhere "
        f"({opts.heads} value / {max(opts.heads // 2, 1)} key heads of "
        f"{opts.head_dim}); dense = qwen3 ({params[DENSE]:,} vs {params[HYBRID]:,} "
        f"parameters). `mlx-align grpo` with its defaults (LoRA r=8 on all linear "
        f"layers of all blocks) but {opts.batch_size} prompt(s) per step, group size "
        f"{opts.group_size}, at most {opts.max_completion_tokens} completion tokens, "
        f"temperature 1, seed {opts.seed}; {opts.steps} steps per run, "
        f"{opts.repeats} run(s) per model (models alternating), the first "
        f"{opts.warmup} step(s) of each run left out"
        f"{'; cold kernel cache' if opts.cold else ''}"
        f"{f'; extra flags `{opts.align_args}`' if opts.align_args else ''}\n\n"
        "step s / rollout s / train s / score ms: medians over the pooled steps "
        "(step: the run's metrics.jsonl, rollout included; rollout: sampling the "
        "step's completions, prefill + decode; train: the rest but reward scoring: "
        "padding, log-prob forward(s), backward, update). rollout tok/s: completion "
        "tokens per second of rollout; step tok/s: per second of whole steps. first "
        "step s: step 1 (compile), median over runs. peak MLX: mx.get_peak_memory() "
        "at the end of the worker; max RSS: os.wait4; wall: the whole worker "
        "process, median over runs.\n"
    )


def table(pooled: dict[str, Pooled], opts, kinds, params) -> str:
    rows = table_head(
        ["model", "layers", "params", "LoRA params", "runs x steps"]
        + ["completion len (at limit)", "step s (median)", "rollout s", "train s"]
        + ["score ms", "rollout share", "rollout tok/s", "step tok/s"]
        + ["first step s", "peak MLX MB", "max RSS MB", "wall s"]
    )
    rows += [row(p, kinds, params) for p in pooled.values()]
    rows.append("\nhybrid / dense:")
    rows += ratio_lines(pooled[DENSE], pooled[HYBRID], opts.warmup)
    rows.append("\nFast paths (probed per model; the run's own lines):")
    rows += fast_path_lines(pooled)
    return "\n".join(rows)


def commands(opts, models: dict[str, Path], data: Path) -> str:
    bench = shlex.join([".venv/bin/python", "bench/families.py", *sys.argv[1:]])
    lines = ["\nCommand:", "", "```", bench, "```", "", "Each run (R: its --out):", ""]
    lines.append("```")
    for model in models.values():
        args = grpo_args(opts, model, data, Path("R"))
        lines.append(shlex.join(["mlx-align", *args]))
    lines.append("```")
    return "\n".join(lines)


# ------------------------------------------------------------------ main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--intermediate", type=int, default=1536)
    p.add_argument(
        "--interval", type=int, default=4, help="hybrid: one full-attention layer in N"
    )
    p.add_argument("--steps", type=int, default=6, help="optimizer steps per run")
    p.add_argument("--warmup", type=int, default=2, help="steps left out of each run")
    p.add_argument("--group-size", type=int, default=4)
    p.add_argument("--max-completion-tokens", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=1, help="prompts per step")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=1, help="runs per model")
    p.add_argument(
        "--align-args", default="", help="extra `mlx-align grpo` flags for both"
    )
    p.add_argument("--cold", action="store_true", help="empty the kernel caches first")
    p.add_argument("--blas", choices=["openblas", "reference"], default="openblas")
    p.add_argument("--work", type=Path, default=Path("/tmp/mlx_align_bench_families"))
    p.add_argument("--worker", choices=["grpo"], help=argparse.SUPPRESS)
    opts = parse_bench_args(p, argv)
    return opts


def main() -> None:
    opts = parse_args()
    if opts.worker:  # REPORT -- ARGS...
        return run_worker(opts, {"grpo": align_grpo_worker})
    if opts.blas == "openblas":
        from mlx_align.core.blas import openblas_path

        if openblas_path() is None:
            sys.exit("no system OpenBLAS (apt-get install libopenblas0-pthread)")
    from mlx_align.model.random_init import tokenizer_vocab_size

    if not (opts.work / "raw" / "grpo").exists():
        make_data(opts.work / "raw")
    tokenizer_dir = prepare_model(opts.work, "small")
    opts.vocab = tokenizer_vocab_size(tokenizer_dir)
    models = build_models(opts, tokenizer_dir)
    params = {name: parameter_count(path) for name, path in models.items()}
    kinds = layer_kinds(opts)
    data = write_data(opts)
    env = blas_env(opts.blas)
    jit = kernel_caches(opts.work / "jit" / opts.blas, models, opts.cold)
    load_before = os.getloadavg()[0]
    runs: dict[str, list[Run]] = {}
    for i in range(opts.repeats):
        for name, model in models.items():
            out = opts.work / "runs" / f"{name}-{i}"
            result = run_model(
                opts, name, model, data, out, {**env, "TMPDIR": str(jit[name])}
            )
            runs.setdefault(name, []).append(result)
            print(
                f"{name} run {i + 1}: {result.step_s(opts.warmup):.2f} s/step, "
                f"{result.wall_s:.1f} s wall",
                flush=True,
            )
    every = [r for rs in runs.values() for r in rs]
    if other_blas(opts.blas, (r.blas for r in every)):
        sys.exit(f"a run used another BLAS than --blas {opts.blas}")
    pooled = {name: Pooled(name, runs[name], opts.warmup) for name in runs}
    blas = sorted({r.blas for r in every})
    text = describe(opts, params, (load_before, os.getloadavg()[0]), blas)
    text += "\n" + table(pooled, opts, kinds, params)
    text += "\n" + commands(opts, models, data)
    print(text)
    shape = {"hidden": 512, "layers": 8}  # the defaults
    suffix = "".join(
        f"-{k}{getattr(opts, k)}" for k, v in shape.items() if getattr(opts, k) != v
    )
    write_results(
        RESULTS.with_stem(f"families{suffix}{flags_suffix(opts.align_args)}"), text
    )


if __name__ == "__main__":
    main()
