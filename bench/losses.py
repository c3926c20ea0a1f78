"""Train the capstone's model briefly with every preference / RL loss the CLI offers.

Not a speed race: it checks that each loss type of `mlx-align dpo`, `cpo` and
`grpo` trains the capstone's model without a traceback, and gives one short
run's held-out figure for each.

The models are the capstone's own, built once by the Makefile into
``--work`` (default /tmp/mlx_align_bench_losses) and reused when present::

    make -C . OUT=WORK/capstone WORK/capstone/dpo-fused/config.json

(data, pretraining, LoRA SFT, reward model, DPO; ~9 min on 2 CPUs). Then one
run per loss, each with the CLI as a subprocess into WORK/runs/FAMILY/NAME
(train.cmd, train.stdout.log, train.stderr.log, metrics.jsonl):

- DPO (16 runs: the 15 ``--loss`` types and one weighted sum, MPO) and CPO
  (5: sigmoid, hinge, ipo, SimPO, AlphaPO) from ``sft-fused`` on the
  capstone's preference pairs, with the Makefile's DPO flags but no RPO term
  (``--sft-weight``), so each loss acts alone::

      mlx-align dpo --model WORK/capstone/sft-fused --data WORK/capstone/data/preference
          --out RUN --steps N --batch-size 8 --learning-rate 2e-4 --beta 0.1
          --lora-rank 16 --lora-alpha 32 --max-length 128 --seed 0
          --eval-every N --eval-batches -1 --save-every N --log-every 5 --loss X ...

  (`cpo`: the same; SimPO and AlphaPO at ``--beta 2.0`` as in `cpo --help`'s
  examples). The held-out figures are the final evaluation on the whole
  ``valid.jsonl`` (200 pairs): ``val_rewards/accuracies`` (share of pairs whose
  chosen reward is strictly above the rejected one), ``val_rewards/margins``
  and ``val_loss``. DPO's rewards are β·(log π − log π_ref); at step 0 policy ==
  reference, so every margin is 0 and the accuracy 0: any figure above is
  learned. CPO's rewards are β·log π (summed; ipo and simpo: per-token mean;
  alphapo: (1 − p^(−α))/α) with no reference, so its figures do not start at
  0: each CPO run has a "start" run beside it, the same command for one step
  at lr 1e-12 (the CLI takes neither 0 steps nor lr 0; LoRA's B starts at 0,
  so that evaluation is sft-fused's own), and the table gives both.

- GRPO (8 runs: grpo bnpo dr_grpo dapo cispo sapo luspo vespo, and
  ``mlx-align rloo`` with the same flags) from
  ``dpo-fused`` on the capstone's math questions, with the Makefile's GRPO
  flags::

      mlx-align grpo --model WORK/capstone/dpo-fused --data WORK/capstone/data/grpo
          --out RUN --reward math --reward format --reward-weights 1.0,0.1
          --steps N --iterations 2 --batch-size 4 --group-size 8
          --max-completion-tokens 48 --temperature 0.8 --learning-rate 5e-4
          --lora-rank 16 --lora-alpha 32 --log-every 5 --save-every N
          --eval-every 0 --valid-split none --max-length 128 --seed 0 --loss X ...
      mlx-align fuse --model WORK/capstone/dpo-fused --adapter-path RUN --save-path RUN/fused
      mlx-align eval-math --model RUN/fused --data WORK/capstone/data/grpo
          --split test --max-tokens 64 --out RUN/eval.jsonl

  (cispo with ``--epsilon-high 5.0``, luspo with ``--importance-sampling-level
  sequence``; ``--valid-split none`` skips the stage's own sampled eval,
  eval-math is the held-out figure). The held-out figure is eval-math's greedy
  accuracy on the 70 test questions; the first row is ``dpo-fused`` itself,
  the start of every run. "train reward" is the last logged mean reward
  (math + 0.1 x format) of the run's own samples.

A run that exits non-zero (or outlives ``--timeout``) shows as ``FAILED:`` and
its stderr's last line; the last lines of its stderr are quoted under the
tables. Wall seconds are the whole subprocess (start, loading, reference pass,
compile, training, evaluation, saving; CPO: the trained run, not its start;
GRPO: training, then fuse + eval-math apart). DPO's reference log-probs are
cached in WORK/cache (``MLX_ALIGN_CACHE``), so only the first DPO run of a
fresh work dir pays the reference pass (~5 s).

    .venv/bin/python bench/losses.py                     # all 29 runs (~9-12 min on 2 CPUs once the models are built)
    .venv/bin/python bench/losses.py --only grpo --grpo-steps 10
    .venv/bin/python bench/losses.py --only dpo --only cpo --steps 60

prints one markdown table per family and writes them to
bench/results/losses.md (with ``--only``: losses-dpo.md, losses-cpo-grpo.md, ...).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import (
    BIN,
    RESULTS_DIR,
    ROOT,
    blas_env,
    fresh_dir,
    machine,
    table_head,
    write_results,
)

FAMILIES = ("dpo", "cpo", "grpo")
LORA = ["--lora-rank", "16", "--lora-alpha", "32"]
COMMON = ["--max-length", "128", "--seed", "0"]

# (name, the run's own flags); the name is also the run's folder.
DPO_CASES: list[tuple[str, list[str]]] = [
    ("sigmoid", []),
    ("hinge", []),
    ("ipo", []),
    ("exo_pair", ["--label-smoothing", "1e-3"]),
    ("nca_pair", []),
    ("robust", ["--label-smoothing", "0.1"]),
    ("bco_pair", []),
    ("sppo_hard", []),
    ("aot", []),
    ("aot_unpaired", []),
    ("apo_zero", []),
    ("apo_down", []),
    ("discopop", []),
    ("sft", []),
    ("sigmoid_norm", []),
]
DPO_RUNS = [(name, ["--loss", name, *flags]) for name, flags in DPO_CASES] + [
    (
        "mpo",
        ["--loss", "sigmoid", "--loss", "bco_pair", "--loss", "sft"]
        + ["--loss-weights", "0.8,0.2,1.0"],
    )
]
CPO_RUNS = [
    ("sigmoid", ["--loss", "sigmoid", "--beta", "0.1"]),
    ("hinge", ["--loss", "hinge", "--beta", "0.1"]),
    ("ipo", ["--loss", "ipo", "--beta", "0.1"]),
    ("simpo", ["--loss", "simpo", "--cpo-alpha", "0", "--beta", "2.0"]),
    ("alphapo", ["--loss", "alphapo", "--alpha", "0.25", "--beta", "2.0"]),
]
GRPO_CASES: list[tuple[str, list[str]]] = [
    ("grpo", []),
    ("bnpo", []),
    ("dr_grpo", []),
    ("dapo", []),
    ("cispo", ["--epsilon-high", "5.0"]),
    ("sapo", []),
    ("luspo", ["--importance-sampling-level", "sequence"]),
    ("vespo", []),
]
GRPO_RUNS = [(name, ["--loss", name, *flags]) for name, flags in GRPO_CASES]
GRPO_RUNS.append(("rloo", []))  # `mlx-align rloo` on the same rollouts and flags


@dataclass
class Result:
    """One run: its figures, or why it failed."""

    name: str
    flags: list[str]
    steps: int
    wall_s: float = 0.0
    eval_s: float = 0.0
    figures: dict = field(default_factory=dict)
    failed: str = ""
    stderr_tail: list[str] = field(default_factory=list)
    start: Result | None = None  # CPO: the same evaluation before training


# ------------------------------------------------------------------ runs


def capstone_models(opts, env: dict) -> Path:
    """The capstone's data and models under WORK/capstone (the Makefile's targets)."""
    out = opts.work / "capstone"
    target = out / "dpo-fused" / "config.json"
    if target.exists():
        print(f"capstone models: {out} (already built)", flush=True)
        return out
    opts.work.mkdir(parents=True, exist_ok=True)
    log = opts.work / "make.log"
    print(f"building the capstone models into {out} (log: {log}) ...", flush=True)
    start = time.perf_counter()
    cmd = ["make", "-C", str(ROOT), f"OUT={out}", str(target)]
    with open(log, "w") as f:
        code = subprocess.run(
            cmd, env=env, stdout=f, stderr=subprocess.STDOUT
        ).returncode
    if code != 0:
        sys.exit(f"{shlex.join(cmd)} failed ({code}); see {log}")
    print(f"built in {time.perf_counter() - start:.0f} s", flush=True)
    return out


def stderr_lines(path: Path) -> list[str]:
    """The non-empty lines of a log, progress-bar redraws (``\\r``) split apart."""
    if not path.exists():
        return []
    text = path.read_text(errors="replace")
    return [x.rstrip() for x in re.split(r"[\r\n]", text) if x.strip()]


def run_cli(args: list[str], run: Path, tag: str, env: dict, timeout: float):
    """``mlx-align ARGS`` with its output in RUN/TAG.{stdout,stderr}.log.

    Returns (wall seconds, stdout, failure or "", stderr's last lines).
    """
    cmd = [str(BIN / "mlx-align"), *args]
    out, err = run / f"{tag}.stdout.log", run / f"{tag}.stderr.log"
    (run / f"{tag}.cmd").write_text(shlex.join(cmd) + "\n")
    start = time.perf_counter()
    with open(out, "w") as fo, open(err, "w") as fe:
        try:
            code = subprocess.run(
                cmd, env=env, stdout=fo, stderr=fe, timeout=timeout
            ).returncode
        except subprocess.TimeoutExpired:
            code = None
    wall = time.perf_counter() - start
    lines = stderr_lines(err)
    if code is None:
        failed = f"timed out after {timeout:.0f} s ({tag})"
    elif code != 0:
        failed = lines[-1] if lines else f"{tag} exited with {code}"
    else:
        failed = ""
    return wall, out.read_text(errors="replace"), failed, lines[-8:] if failed else []


def metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def last(lines: list[dict], key: str):
    values = [x[key] for x in lines if key in x]
    return values[-1] if values else None


def preference_run(
    opts, family: str, name: str, flags: list[str], models, env, start: bool = False
):
    """One `dpo` / `cpo` run from sft-fused; the final held-out evaluation's figures.

    ``start``: one step at lr 1e-12 instead (the CLI takes no step 0 nor lr 0;
    LoRA's B starts at 0, so the evaluated policy is sft-fused to ~1e-12).
    """
    run = opts.work / "runs" / family / (f"{name}-start" if start else name)
    fresh_dir(run)
    steps, lr = (1, "1e-12") if start else (opts.steps, "2e-4")
    args = [family, "--model", str(models / "sft-fused")]
    args += ["--data", str(models / "data" / "preference"), "--out", str(run)]
    args += ["--steps", str(steps), "--batch-size", "8", "--learning-rate", lr]
    args += [] if family == "cpo" else ["--beta", "0.1"]
    args += [*LORA, *COMMON, "--eval-every", str(steps), "--eval-batches", "-1"]
    args += ["--save-every", str(steps), "--log-every", "5", *flags]
    result = Result(name, flags, steps)
    result.wall_s, _, result.failed, result.stderr_tail = run_cli(
        args, run, "train", env, opts.timeout
    )
    lines = metrics(run)
    for key in ("val_rewards/accuracies", "val_rewards/margins", "val_loss", "loss"):
        result.figures[key] = last(lines, key)
    if not result.failed and result.figures["val_rewards/accuracies"] is None:
        result.failed = "no val_rewards/accuracies in metrics.jsonl"
    return result


def eval_math(model: Path, data: Path, out: Path, run: Path, env, timeout):
    """eval-math's held-out accuracy: (accuracy, "n/m", seconds, failure, stderr tail)."""
    args = ["eval-math", "--model", str(model), "--data", str(data)]
    args += ["--split", "test", "--max-tokens", "64", "--out", str(out)]
    wall, stdout, failed, tail = run_cli(args, run, "eval", env, timeout)
    found = re.search(r"math accuracy: ([0-9.]+) \((\d+/\d+)\)", stdout)
    if not failed and not found:
        failed = "no 'math accuracy:' line in eval-math's output"
    if failed:
        return None, "", wall, failed, tail
    return float(found.group(1)), found.group(2), wall, "", []


def grpo_baseline(opts, models: Path, env: dict) -> Result:
    """eval-math on dpo-fused, every GRPO run's start."""
    run = opts.work / "runs" / "grpo" / "start-dpo-fused"
    fresh_dir(run)
    result = Result("(start: dpo-fused)", [], 0)
    data = models / "data" / "grpo"
    acc, count, result.eval_s, result.failed, result.stderr_tail = eval_math(
        models / "dpo-fused", data, run / "eval.jsonl", run, env, opts.timeout
    )
    result.figures = {"accuracy": acc, "count": count, "reward": None}
    return result


def grpo_run(opts, name: str, flags: list[str], models: Path, env: dict) -> Result:
    """One `grpo` run from dpo-fused, fused, then eval-math on the test questions."""
    run = opts.work / "runs" / "grpo" / name
    fresh_dir(run)
    steps = opts.grpo_steps
    data = models / "data" / "grpo"
    command = "rloo" if name == "rloo" else "grpo"
    args = [command, "--model", str(models / "dpo-fused"), "--data", str(data)]
    args += ["--out", str(run), "--reward", "math", "--reward", "format"]
    args += ["--reward-weights", "1.0,0.1", "--steps", str(steps), "--iterations", "2"]
    args += ["--batch-size", "4", "--group-size", "8", "--max-completion-tokens", "48"]
    args += ["--temperature", "0.8", "--learning-rate", "5e-4", *LORA]
    args += ["--log-every", "5", "--save-every", str(steps), "--eval-every", "0"]
    args += ["--valid-split", "none", *COMMON, *flags]
    result = Result(name, flags, steps)
    result.wall_s, _, result.failed, result.stderr_tail = run_cli(
        args, run, "train", env, opts.timeout
    )
    result.figures = {
        "accuracy": None,
        "count": "",
        "reward": last(metrics(run), "reward"),
    }
    if result.failed:
        return result
    fused = run / "fused"
    fuse = ["fuse", "--model", str(models / "dpo-fused"), "--adapter-path", str(run)]
    fuse += ["--save-path", str(fused)]
    fuse_s, _, failed, tail = run_cli(fuse, run, "fuse", env, opts.timeout)
    if failed:
        result.failed, result.stderr_tail, result.eval_s = (
            f"fuse: {failed}",
            tail,
            fuse_s,
        )
        return result
    acc, count, eval_s, failed, tail = eval_math(
        fused, data, run / "eval.jsonl", run, env, opts.timeout
    )
    result.eval_s = fuse_s + eval_s
    result.figures.update(accuracy=acc, count=count)
    if failed:
        result.failed, result.stderr_tail = f"eval-math: {failed}", tail
    return result


# ------------------------------------------------------------------ tables


def fmt(value, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def cell(text: str) -> str:
    return text.replace("|", "\\|")


def flags_cell(flags: list[str]) -> str:
    return f"`{shlex.join(flags)}`" if flags else "-"


def val_figures(r: Result) -> list[str]:
    """val acc, val margin, val loss; or FAILED and two dashes."""
    if r.failed:
        return [f"FAILED: {cell(r.failed)}", "-", "-"]
    f = r.figures
    return [
        fmt(f["val_rewards/accuracies"]),
        fmt(f["val_rewards/margins"]),
        fmt(f["val_loss"], ".4f"),
    ]


def preference_table(results: list[Result]) -> list[str]:
    columns = ["loss", "flags", "steps", "val acc", "val margin", "val loss"]
    starts = any(r.start for r in results)
    if starts:
        columns += ["start acc", "start margin", "start loss"]
    lines = table_head([*columns, "wall s"], left=2)
    for r in results:
        row = [r.name, flags_cell(r.flags), str(r.steps), *val_figures(r)]
        if starts:
            row += val_figures(r.start) if r.start else ["-"] * 3
        lines.append("| " + " | ".join([*row, f"{r.wall_s:.0f}"]) + " |")
    return lines


def grpo_table(results: list[Result]) -> list[str]:
    columns = ["loss", "flags", "steps", "held-out acc", "train reward", "train s"]
    lines = table_head([*columns, "fuse + eval s"], left=2)
    for r in results:
        f = r.figures
        if r.failed:
            acc = f"FAILED: {cell(r.failed)}"
        else:
            acc = f"{f['accuracy']:.3f} ({f['count']})"
        wall = f"{r.wall_s:.0f}" if r.steps else "-"
        row = [r.name, flags_cell(r.flags), str(r.steps), acc, fmt(f["reward"])]
        lines.append("| " + " | ".join([*row, wall, f"{r.eval_s:.0f}"]) + " |")
    return lines


def failures(results: dict[str, list[Result]]) -> list[str]:
    lines = []
    for family, rs in results.items():
        for r in [x for run in rs for x in (run, run.start) if x]:
            if r.failed:
                what = f"{r.name} (start)" if r.steps == 1 else r.name
                lines += ["", f"`{family}` {what} (last lines of stderr):", "", "```"]
                lines += r.stderr_tail or [r.failed]
                lines.append("```")
    return ["", "### Failures", *lines] if lines else []


def code_version() -> str:
    """HEAD's short hash, and whether mlx_align/ differs from it (another
    process editing the package while the runs go would show here)."""
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True)
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "mlx_align"], capture_output=True
    )
    if head.returncode != 0:
        return "code: not a git checkout"
    edits = " + uncommitted edits in mlx_align/" if dirty.stdout.strip() else ""
    return f"code: {head.stdout.decode().strip()}{edits}"


def report(opts, models: Path, results, total: float, load, code: str) -> str:
    """The tables (one per family) under a header, failures quoted below."""
    text = [
        "# Every loss type on the capstone's model",
        "",
        f"{machine('openblas', load)}; {code}. Models: `{models}`; runs: "
        f"`{opts.work / 'runs'}`; {total:.0f} s for the runs (model build not "
        "included).",
    ]
    held_out = "held-out = valid.jsonl (200 pairs)"
    titles = {
        "dpo": f"`mlx-align dpo` from sft-fused, {opts.steps} steps, {held_out}",
        "cpo": f"`mlx-align cpo` from sft-fused, {opts.steps} steps, {held_out}; "
        "start = the same evaluation after one step at lr 1e-12",
        "grpo": f"`mlx-align grpo` from dpo-fused, {opts.grpo_steps} steps x 2 "
        "iterations, held-out = eval-math on grpo/test.jsonl (greedy, 64 tokens)",
    }
    for family, rs in results.items():
        table = grpo_table(rs) if family == "grpo" else preference_table(rs)
        text += ["", f"## {titles[family]}", "", *table]
    return "\n".join(text + failures(results))


# ------------------------------------------------------------------ main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40, help="DPO / CPO steps per run")
    p.add_argument("--grpo-steps", type=int, default=30, help="GRPO steps per run")
    p.add_argument(
        "--only",
        choices=FAMILIES,
        action="append",
        help="run only this family (repeatable; default: all three)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=900,
        help="seconds before a command counts as failed",
    )
    p.add_argument("--work", type=Path, default=Path("/tmp/mlx_align_bench_losses"))
    return p.parse_args(argv)


def one_run(opts, family: str, name: str, flags: list[str], models, env) -> Result:
    """One loss's run (CPO: and its start), with a progress line."""
    if family == "grpo":
        result = grpo_run(opts, name, flags, models, env)
    else:
        result = preference_run(opts, family, name, flags, models, env)
        if family == "cpo":
            start = preference_run(opts, family, name, flags, models, env, start=True)
            result.start = start
    wall = result.wall_s + result.eval_s + (result.start.wall_s if result.start else 0)
    status = f"FAILED: {result.failed}" if result.failed else "ok"
    print(f"{family} {name}: {status} ({wall:.0f} s)", flush=True)
    return result


def main() -> None:
    opts = parse_args()
    families = [f for f in FAMILIES if f in (opts.only or FAMILIES)]
    env = blas_env("openblas")
    # The reference log-probs (DPO) are cached with the runs, not in ~/.cache.
    env["MLX_ALIGN_CACHE"] = str(opts.work / "cache")
    models = capstone_models(opts, env)
    load_before, code = os.getloadavg()[0], code_version()
    start = time.perf_counter()
    results: dict[str, list[Result]] = {}
    runs = {"dpo": DPO_RUNS, "cpo": CPO_RUNS, "grpo": GRPO_RUNS}
    for family in families:
        done = results.setdefault(family, [])
        if family == "grpo":
            done.append(grpo_baseline(opts, models, env))
        for name, flags in runs[family]:
            done.append(one_run(opts, family, name, flags, models, env))
    total = time.perf_counter() - start
    load = (load_before, os.getloadavg()[0])
    if (after := code_version()) != code:
        code = f"{code} at the start, {after.removeprefix('code: ')} at the end"
    text = report(opts, models, results, total, load, code)
    print(text)
    suffix = "" if families == list(FAMILIES) else "-" + "-".join(families)
    write_results(RESULTS_DIR / f"losses{suffix}.md", text)
    print(f"total wall: {total:.0f} s")


if __name__ == "__main__":
    main()
