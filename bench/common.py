"""What `sft.py`, `dpo.py` and `grpo.py` share.

The scripts import it as ``common`` (Python puts a script's own folder first
on ``sys.path``). Workers import it too, inside mlx-lm-lora's own venv, so
only the standard library is imported at the top; mlx_align is imported
where a function needs it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RESULTS_DIR = ROOT / "bench" / "results"

# ------------------------------------------------------------------ inputs


def make_data(raw: Path) -> None:
    """`recipes/make_data.py`'s splits (and pretraining corpus) in ``raw``."""
    make = [sys.executable, str(ROOT / "recipes" / "make_data.py")]
    subprocess.run([*make, "--out", str(raw)], check=True, capture_output=True)


def prepare_model(work: Path, preset: str) -> Path:
    """A fresh `mlx-align init-model` model under ``work`` (cached)."""
    model = work / f"model-{preset}"
    if not (model / "config.json").exists():
        corpus = work / "raw" / "pretrain"
        cmd = [str(BIN / "mlx-align"), "init-model", "--preset", preset]
        cmd += ["--corpus", str(corpus), "--out", str(model)]
        subprocess.run(cmd, check=True, capture_output=True)
    return model


# The real models' config.json values (their public checkpoints'): ``--shape``
# builds a random-weight model of exactly that shape with mlx-lm's own classes
# (``model/random_init.py``), the vocabulary included; the tokenizer is the
# small one of ``prepare_model`` (its ids are a subset of the vocabulary).
QWEN = {"rope_theta": 1_000_000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "vocab_size": 151936}  # fmt: skip
REAL_SHAPES: dict[str, dict] = {
    "qwen2.5-0.5b": {
        **QWEN, "model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864,
        "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
        "max_position_embeddings": 32768,
    },
    "qwen3-0.6b": {
        **QWEN, "model_type": "qwen3", "hidden_size": 1024, "intermediate_size": 3072,
        "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
        "head_dim": 128, "max_position_embeddings": 40960,
    },
    "llama-3.2-1b": {
        "model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192,
        "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
        "head_dim": 64, "vocab_size": 128256, "rms_norm_eps": 1e-5,
        "rope_theta": 500_000.0, "tie_word_embeddings": True,
        "max_position_embeddings": 131072,
        "rope_scaling": {
            "factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192, "rope_type": "llama3",
        },
    },
    "qwen2.5-1.5b": {
        **QWEN, "model_type": "qwen2", "hidden_size": 1536, "intermediate_size": 8960,
        "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
        "max_position_embeddings": 32768,
    },
}  # fmt: skip


def shape_model(work: Path, shape: str) -> Path:
    """A random-weight model of ``REAL_SHAPES[shape]`` under ``work`` (cached)."""
    from mlx_align.model.random_init import init_random_model

    out = work / f"shape-{shape}"
    if not (out / "config.json").exists():
        tokenizer = prepare_model(work, "small")
        config = REAL_SHAPES[shape]
        init_random_model(out, config, tokenizer, vocab_size=config["vocab_size"])
    return out


def add_model_options(parser) -> None:
    """``--preset``, ``--vocab`` and ``--shape``: the model a bench trains."""
    parser.add_argument("--preset", default="small", choices=["tiny", "small", "base"])
    add_vocab_option(parser)
    parser.add_argument(
        "--shape",
        default="",
        choices=["", *REAL_SHAPES],
        help="a random-weight model of this real model's exact shape instead of "
        "--preset (no download)",
    )


def bench_model(opts) -> Path:
    """The model ``add_model_options`` chose, built under ``opts.work``."""
    if opts.shape:
        return shape_model(opts.work, opts.shape)
    model = prepare_model(opts.work, opts.preset)
    return widen_vocab(model, opts.vocab) if getattr(opts, "vocab", 0) else model


def model_label(opts) -> str:
    """What the header of a bench's table says the model was."""
    if opts.shape:
        return f"a random-weight {opts.shape} (its exact shape)"
    vocab = getattr(opts, "vocab", 0)
    return f"preset {opts.preset}" + (f" with its vocabulary widened to {vocab:,}" if vocab else "")  # fmt: skip


def model_suffix(opts) -> str:
    """The results file's suffix for the model: "", "-tiny", "-vocab151936", "-qwen2.5-0.5b"."""
    if opts.shape:
        return f"-{opts.shape}"
    vocab = getattr(opts, "vocab", 0)
    return (f"-{opts.preset}" if opts.preset != "small" else "") + (f"-vocab{vocab}" if vocab else "")  # fmt: skip


def widen_vocab(model: Path, vocab: int) -> Path:
    """A copy of ``model`` whose (tied) embeddings have ``vocab`` rows (cached).

    The tokenizer is unchanged and never emits the extra ids, but every
    logit row spans them: the memory a real model's large vocabulary costs.
    """
    import mlx.core as mx

    out = model.with_name(f"{model.name}-vocab{vocab}")
    if (out / "config.json").exists():
        return out
    config = json.loads((model / "config.json").read_text())
    weights = mx.load(str(model / "model.safetensors"))
    embedding = weights["model.embed_tokens.weight"]
    extra = vocab - embedding.shape[0]
    if extra <= 0 or not config.get("tie_word_embeddings", False):
        sys.exit(f"--vocab {vocab}: needs tied embeddings of fewer rows")
    shutil.copytree(model, out, dirs_exist_ok=True)
    mx.random.seed(0)
    new_rows = mx.random.normal((extra, embedding.shape[1])) * embedding.std()
    weights["model.embed_tokens.weight"] = mx.concatenate([embedding, new_rows])
    mx.save_safetensors(str(out / "model.safetensors"), weights)
    (out / "model.safetensors.index.json").unlink(missing_ok=True)
    config["vocab_size"] = vocab
    (out / "config.json").write_text(json.dumps(config, indent=4))
    return out


def spread(lengths: list[int], n: int) -> list[int]:
    """``n`` indices evenly spaced over the items sorted by length (shortest and longest in)."""
    if n <= 0 or n >= len(lengths):
        return list(range(len(lengths)))
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return sorted(order[round(k * (len(order) - 1) / max(n - 1, 1))] for k in range(n))


def mlx_lm_lora_config(opts) -> dict:
    """mlx-lm-lora's ``-c`` config: what has no CLI flag (YAML is a superset of JSON)."""
    return {
        "lora_parameters": {
            "rank": opts.lora_rank,
            "scale": opts.lora_alpha / opts.lora_rank,
            "dropout": 0.0,
        },
        "optimizer_config": {"adamw": {"weight_decay": 0.0, "bias_correction": True}},
        "fuse": False,
    }


# ------------------------------------------------------------------ BLAS


def blas_env(blas: str) -> dict[str, str]:
    """This process's environment with ``--blas``: OpenBLAS preloaded, or none."""
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    if blas == "openblas":
        from mlx_align.core.blas import openblas_path

        env["LD_PRELOAD"] = openblas_path()
    else:
        env["MLX_ALIGN_NO_OPENBLAS"] = "1"
    return env


def other_blas(blas: str, used: Iterable[str]) -> bool:
    """Whether any run reported another BLAS than ``--blas``."""
    return any(("OpenBLAS" in b) != (blas == "openblas") for b in used)


def check_lora_setup(opts) -> None:
    """Stop unless ``--blas`` is available and ``--lora-python`` exists."""
    from mlx_align.core.blas import openblas_path

    if opts.blas == "openblas" and openblas_path() is None:
        sys.exit("no system OpenBLAS (apt-get install libopenblas0-pthread)")
    if not Path(opts.lora_python).exists():
        sys.exit(f"{opts.lora_python} missing: pip install mlx-lm-lora into a venv")


# ------------------------------------------------------------------ runs


def run_measured(cmd: list[str], env: dict, log: Path) -> tuple[float, float]:
    """Run to completion with output in ``log``; (wall seconds, max RSS MiB)."""
    start = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if (code := os.waitstatus_to_exitcode(status)) != 0:
        sys.exit(f"{cmd[0]} failed ({code}); see {log}")
    return wall, usage.ru_maxrss / 1024  # Linux reports KiB


def fresh_dir(path: Path) -> None:
    """``path`` as an empty directory."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


def kernel_caches(root: Path, tools: Iterable[str], cold: bool) -> dict[str, Path]:
    """One ``TMPDIR`` (mx.compile's kernel cache) per tool under ``root``."""
    jit = {tool: root / tool.split()[0] for tool in tools}
    for d in jit.values():
        if cold:
            shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True, exist_ok=True)
    return jit


def check_same_trainable(runs: list) -> None:
    if len({r.trainable for r in runs}) != 1:
        sys.exit(f"trainable parameter counts differ: {[r.trainable for r in runs]}")


# ------------------------------------------------------------------ workers
# These run inside each tool's own interpreter: stdlib and that tool only.


def run_worker(opts, workers: dict) -> None:
    """``--worker NAME REPORT -- ARGS...``: the named worker on REPORT and ARGS."""
    target, args = Path(opts.rest[0]), opts.rest[2:]
    return workers[opts.worker](target, args)


def reporter(path: Path):
    """A function that appends one JSON record per line to ``path`` (emptied)."""
    path.unlink(missing_ok=True)

    def write(record: dict) -> None:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")

    return write


def blas_in_use() -> str:
    """Which BLAS mlx uses here (mlx_align.core.blas.blas_notice without mlx_align)."""
    with open("/proc/self/maps") as maps:
        loaded = [line.split()[-1] for line in maps if "libopenblas" in line]
    preloaded = "libopenblas" in os.environ.get("LD_PRELOAD", "")
    return f"OpenBLAS ({loaded[0]})" if loaded and preloaded else "reference BLAS"


def add_working_set(mx) -> None:
    """Give ``mx.device_info()`` Metal's ``max_recommended_working_set_size`` (RAM).

    mlx-lm-lora passes it to ``mx.set_wired_limit``, which does nothing on CPU.
    """
    device_info = mx.device_info
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    mx.device_info = lambda: {"max_recommended_working_set_size": ram, **device_info()}


# ------------------------------------------------------------------ report


@dataclass
class Step:
    """One optimizer step: completions sampled and the times the tool spent."""

    completions: int
    tokens: int  # completion tokens generated (EOS included when sampled)
    longest: int
    at_limit: int  # completions that ran to --max-completion-tokens
    rollout_s: float  # generating the completions (prefill + decode)
    score_s: float  # reward functions
    step_s: float  # the whole step as the tool times it (rollout included)

    @property
    def train_s(self) -> float:
        """The rest of the step: padding, forward + backward, optimizer update."""
        return self.step_s - self.rollout_s - self.score_s


@dataclass
class WorkerReport:
    """What ``align_grpo_worker`` (or a tool's own worker) wrote, by kind of record."""

    rollouts: list[
        dict
    ]  # one per step: completions, tokens, longest, at_limit, rollout_s
    scores: list[float]  # reward scoring seconds, one per step
    steps: dict[int, float]  # step -> the tool's own seconds for it
    fast_paths: dict[str, str | None]  # probed fast path -> why it is off (None: on)
    rest: dict  # everything else: trainable, peak_memory, blas, sampler, ...

    @classmethod
    def read(cls, path: Path) -> WorkerReport:
        report = cls([], [], {}, {}, {})
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if "rollout_s" in record:
                report.rollouts.append(record)
            elif "score_s" in record:
                report.scores.append(record["score_s"])
            elif "step" in record:
                report.steps[record["step"]] = record["seconds"]
            elif "fast_path" in record:
                report.fast_paths.setdefault(record["fast_path"], record["reason"])
            else:
                report.rest.update(record)
        return report


class PooledSteps:
    """A tool's steps over its runs, the first ``warmup`` of each left out.

    Mixed into a bench's ``Pooled`` dataclass, which holds ``runs`` (each with
    ``steps``, ``peak_mb``, ``max_rss_mb`` and ``wall_s``) and ``warmup``.
    """

    runs: list
    warmup: int

    @property
    def steps(self) -> list:
        return [s for r in self.runs for s in r.steps[self.warmup :]]

    def total(self, name: str) -> float:
        return sum(getattr(s, name) for s in self.steps)

    def median(self, name: str) -> float:
        return statistics.median(getattr(s, name) for s in self.steps)

    def completions_per_s(self) -> float:
        return self.total("completions") / self.total("step_s")

    def step_tokens_per_s(self) -> float:
        """Completion tokens per second of whole steps."""
        return self.total("tokens") / self.total("step_s")

    def rollout_tokens_per_s(self) -> float:
        """Completion tokens per second of sampling (steps with ``rollout_s``)."""
        return self.total("tokens") / self.total("rollout_s")

    def first_step_s(self) -> float:
        return statistics.median(r.steps[0].step_s for r in self.runs)

    @property
    def peak_mb(self) -> float:
        return max(r.peak_mb for r in self.runs)

    @property
    def max_rss_mb(self) -> float:
        return max(r.max_rss_mb for r in self.runs)

    @property
    def wall_s(self) -> float:
        return statistics.median(r.wall_s for r in self.runs)


def parse_bench_args(p, argv: list[str] | None, warmup: bool = True):
    """Parse a bench's options: a ``--worker`` run takes the tool's arguments
    after them (``rest``); a plain run takes none, and (``warmup``) more
    ``--steps`` than ``--warmup``."""
    p.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    opts = p.parse_args(argv)
    if opts.rest and not opts.worker:
        p.error(f"unrecognized arguments: {' '.join(opts.rest)}")
    if warmup and not opts.worker and opts.steps <= opts.warmup:
        p.error("--steps must exceed --warmup")
    return opts


def table_head(columns: list[str], left: int = 1) -> list[str]:
    """A markdown table's header and separator; the first ``left`` columns left-aligned."""
    align = ["---"] * left + ["---:"] * (len(columns) - left)
    return ["| " + " | ".join(columns) + " |", "|" + "|".join(align) + "|"]


def machine(blas: str, load: tuple[float, float]) -> str:
    """CPUs, load average before and after, and ``--blas``."""
    return (
        f"{os.cpu_count()} CPUs (load average {load[0]:.1f} before, {load[1]:.1f} "
        f"after), BLAS {blas}"
    )


def add_vocab_option(parser) -> None:
    """``--vocab N``: run both tools on the model widened by ``widen_vocab``."""
    parser.add_argument(
        "--vocab",
        type=int,
        default=0,
        help="widen the model's vocabulary to this many tokens (e.g. 151936, "
        "Qwen's) without changing the tokenizer: a large vocabulary's logits",
    )


def flags_suffix(flags: str) -> str:
    """A results-file suffix for extra flags: "--fuse-rollout off" -> "-fuse-rollout-off"."""
    return "-" + "-".join(re.findall(r"[A-Za-z0-9.]+", flags)) if flags else ""


def write_results(path: Path, text: str, announce: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")
    if announce:
        print(f"written to {path}")


def rollout_record(lengths: list[int], seconds: float, limit: int) -> dict:
    return {
        "completions": len(lengths),
        "tokens": sum(lengths),
        "longest": max(lengths, default=0),
        "at_limit": sum(n >= limit for n in lengths),
        "rollout_s": seconds,
    }


def align_grpo_worker(report: Path, argv: list[str]) -> None:
    """`mlx-align grpo` as its console script runs it, observed through ``report``.

    What the run does is heard through ``mlx_align.core.events`` (each rollout
    batch's sampling and scoring, the trainable parameters), not by patching
    its modules.
    """
    import mlx.core as mx

    from mlx_align.cli import main
    from mlx_align.core import events

    write = reporter(report)
    limit = int(argv[argv.index("--max-completion-tokens") + 1])
    heard = set()

    def listen(event: str, fields: dict) -> None:
        heard.add(event)
        if event == "rollout":  # one step's prompts x G completions
            write(rollout_record(fields["lengths"], fields["seconds"], limit))
        elif event == "rewards":
            write({"score_s": fields["seconds"]})
        elif event == "trainable":
            write({"trainable": fields["parameters"]})
        elif event == "fast_path":  # a fast path probed, and why it is off (None: on)
            write({"fast_path": fields["path"], "reason": fields["reason"]})

    with events.listening(listen):
        main(argv)
    missing = {"trainable", "rollout", "rewards"} - heard
    if missing:
        raise SystemExit(
            f"the run emitted no {sorted(missing)} events: update the bench"
        )
    out = Path(argv[argv.index("--out") + 1])
    log = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    for line in (x for x in log if "tokens" in x):  # --log-every 1: one line per step
        write(
            {"step": line["step"], "seconds": line["tokens"] / line["tokens_per_sec"]}
        )
    write({"peak_memory": mx.get_peak_memory(), "blas": blas_in_use()})
