"""Benchmark `mlx-align online-dpo` against the `mlx-lm-lora` package on the same LoRA online DPO.

Both tools train the same freshly initialised model (`mlx-align init-model`)
on the same prompts with the same settings: ``--batch-size`` prompts per step,
two completions of each sampled from the policy, at most
``--max-completion-tokens`` tokens, temperature ``--temperature`` with no
top-p / top-k filter (mlx-lm-lora's online DPO samples that way by itself),
stopping at EOS; a judge orders each pair; sigmoid DPO loss and beta against
the starting model as reference; LoRA rank and scale (alpha / rank) on every
linear layer of every block, no dropout; AdamW (no weight decay,
bias-corrected) at a constant learning rate, no gradient clipping; seed and
steps; no valid split, so neither evaluates (nor, for mlx-align, computes
its held-out win rate).

The judge. mlx-lm-lora's online DPO only takes an LLM judge (``--judge
MODEL``: `LLMPairwiseJudge`, which renders its pairwise leaderboard prompt
through the chat template, lets the judge model greedily generate up to 16
tokens, and reads "0" or "1"; anything else, and "1", train the second
completion as chosen) or a human at the keyboard. With this model's
466-token vocabulary that judge prompt is ~870 tokens plus the two
completions, so judging is most of a step; the table reports it apart
("judge s", "steps/s excl. judge"). Three judges:

- ``--judge llm`` (the default): each tool's own LLM judge on the starting
  model. mlx-lm-lora: ``--judge MODEL --reference-model-path MODEL`` (its
  reference copy doubles as the judge, no third copy). mlx-align:
  ``--judge-model MODEL`` (`mlx_align.sampling.llm_judge`): the same prompt text
  (checked), read as the log-odds of "0" vs "1" as the first answer token,
  every pair of a step in one batch, the prompt prefix they share cached,
  the top block run at the answer position alone, on the CPU the rows
  shared out over one stream per core, on the policy's base weights (no
  second copy). The two judges may pick
  differently (greedy text vs first-token log-odds; each its own order
  flips); both train every pair.
- ``--judge llm-port``: mlx-lm-lora's judge in both. mlx-align gets
  ``--judge online_dpo:llm_judge``, this file's port of
  `LLMPairwiseJudge.judge`: the same rendered prompt text, `mlx_lm.generate`
  with max_tokens=16 on its own copy of the model (loaded as mlx-lm-lora
  loads it), the same random order flip and the same reading of the answer.
  This isolates everything but the judge.
- ``--judge length``: a deterministic judge (the shorter completion text
  wins, equal lengths: the first): mlx-align ``--judge
  online_dpo:length_judge``, mlx-lm-lora the same function in place of
  `LLMPairwiseJudge` (the one thing its worker changes; it still loads its
  reference copy, which the judge then does not use).

Same prompts: `recipes/make_data.py`'s ``grpo/train.jsonl`` questions as
one-message chats (mlx-lm-lora renders a prompt row through the chat
template either way); `check_same_tokens` verifies that both turn every row
into the same prompt ids, and that the text mlx-align's judge renders is
mlx-lm-lora's ``prompt_text``, before any run. The train file holds ``--steps``
x ``--batch-size`` of them, spread over the length range: one epoch. Both
group prompts of similar length into batches and visit each batch once
(mlx-align: its seeded batch order; mlx-lm-lora draws a batch with
replacement every step, so its worker makes the draw walk a seeded
permutation, `dpo.EpochDraws`, as bench/dpo.py does).

What differs, by design of the tools: mlx-lm-lora decodes the samples to
text and re-tokenises prompt text + completion text for the loss (a text
round trip; mlx-align trains on the sampled ids) and scores whole rows
(prompt tokens too: they cancel in the DPO margin) with a second, frozen
model copy; mlx-align scores completions only, with the prompt shared by
both samples, and its reference is the policy with the adapters switched
off (one copy; with ``--judge llm`` its judge loads a second one, so each
tool holds two). mlx-align samples from LoRA-fused weights (its default).
Each tool seeds its own sampler, so the two draw different completions (the
same ones in every run of a tool): the share that runs to the limit differs
by tool (the table shows it; "tok/s" counts the tokens actually sampled).
mlx-align's at-limit share is read off its ``val/contain_eos_token`` metric.

Each tool runs its own entry point (`mlx_align.cli.main`,
`mlx_lm_lora.train.main`) in a worker process (this script with
``--worker``): mlx-align in this venv, mlx-lm-lora in its own
(``--lora-python``; ``python3 -m venv /tmp/lora-venv &&
/tmp/lora-venv/bin/pip install mlx-lm-lora "mlx[cpu]"``). Besides
`EpochDraws` (and, with ``--judge length``, the judge) the workers only
observe: each step's judge call (mlx-align's ``rewards`` event; mlx-lm-lora:
the judge's `judge` method, timed), the tokens each step samples (mlx-align:
the completion tokens in its metrics line; mlx-lm-lora: the tokens its
`BatchGenerator` returns, EOS included, and the time of its
`generate_for_online_dpo`, which mlx-align does not report), the tool's own
per-step seconds (mlx-align's metrics.jsonl with ``--log-every 1``,
mlx-lm-lora's report callback with one report per step; both cover
sampling, judging, the reference and the update), the trainable parameter
count and the final `mx.get_peak_memory()`. On the CPU backend mlx-lm-lora
needs ``mx.device_info()["max_recommended_working_set_size"]``, a key only
Metal reports; its worker adds it (the machine's RAM). Max RSS comes from
`os.wait4`; wall time is the whole worker process.

Both run under the same BLAS (``--blas``): the system OpenBLAS via
``LD_PRELOAD`` (what the ``mlx-align`` command does by itself) or mlx-cpu's
bundled reference BLAS. `mx.compile` on the CPU backend builds kernels with
g++ on first use and caches them under ``$TMPDIR/mlx``; each tool gets its own
``TMPDIR``, emptied at the start, so its first run is cold (reported on its
own row, all steps) and the ``--repeats`` later ones warm (their steps
pooled, the first ``--warmup`` of each left out), the tools taking turns so
drift in load hits both alike.

    .venv/bin/python bench/online_dpo.py [--judge llm|llm-port|length] [--steps 10] [--repeats 2]

prints a markdown table and writes it to bench/results/online_dpo.md (with
``--judge llm-port``: online_dpo-llm-port.md, ``--judge length``:
online_dpo-length-judge.md; ``--blas reference``,
``--batch-size``, ``--preset`` and ``--align-args`` add their own suffix).
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

RESULTS = RESULTS_DIR / "online_dpo.md"
ALIGN, LORA = "mlx-align online-dpo", "mlx-lm-lora online_dpo"
# The JSON file (model, judge prompt template, seed) this file's judges read
# inside mlx-align's worker, where `--judge online_dpo:...` imports this file.
JUDGE_ENV = "MLX_ALIGN_BENCH_JUDGE"
JUDGE_MAX_TOKENS = 16  # LLMPairwiseJudge's generate(..., max_tokens=16)


@dataclass
class Step:
    """One optimizer step: what it sampled and the seconds it took."""

    completions: int
    tokens: int  # completion tokens sampled (EOS included when sampled)
    at_limit: int  # completions that ran to --max-completion-tokens (no EOS)
    judge_s: float
    step_s: float  # the whole step as the tool times it (sampling, judge, update)
    rollout_s: float | None = None  # mlx-lm-lora only: generate_for_online_dpo

    @property
    def rest_s(self) -> float:
        """The step without the judge: sampling, reference, forward + backward, update."""
        return self.step_s - self.judge_s


@dataclass
class Run:
    tool: str
    label: str
    steps: list[Step]
    peak_mb: float
    max_rss_mb: float
    wall_s: float
    trainable: int
    blas: str
    notes: list[str] = field(default_factory=list)


@dataclass
class Pooled(PooledSteps):
    """A tool's steps over its runs (the first ``warmup`` of each left out)."""

    tool: str
    label: str
    runs: list[Run]
    warmup: int

    def steps_per_s(self) -> float:
        return len(self.steps) / self.total("step_s")

    def steps_per_s_without_judge(self) -> float:
        return len(self.steps) / self.total("rest_s")

    def tokens_per_s(self) -> float:
        return self.total("tokens") / self.total("step_s")


def run_steps_per_s(run: Run, warmup: int) -> float:
    later = run.steps[warmup:]
    return len(later) / sum(s.step_s for s in later)


# ------------------------------------------------------------------ judges
# `--judge online_dpo:llm_judge` / `online_dpo:length_judge`: mlx-align's
# FunctionJudge imports this file as `online_dpo` in its worker and calls
# judge(prompts, completion_pairs) -> preferred index per pair (TRL's contract).

_judge: dict = {}


def llm_judge(prompts: list, completions: list[list[str]]) -> list[int]:
    """mlx-lm-lora's `LLMPairwiseJudge.judge` (shuffle_order=True), step for step.

    ``prompts`` are mlx-align's rows' chats, rendered here as mlx-lm-lora's
    `PromptDataset` renders them (its ``prompt_text``).
    """
    import numpy as np
    from mlx_lm import generate

    if not _judge:  # the model and tokenizer as mlx-lm-lora's load_judge_model
        from mlx_lm import load
        from mlx_lm.utils import load_tokenizer

        spec = json.loads(Path(os.environ[JUDGE_ENV]).read_text())
        model, _ = load(spec["model"])
        _judge.update(
            model=model.freeze(),
            tokenizer=load_tokenizer(Path(spec["model"])),
            template=spec["template"],
            rng=np.random.default_rng(spec["seed"]),
        )
    tokenizer = _judge["tokenizer"]
    flips = _judge["rng"].integers(0, 2, len(prompts)).astype(bool)
    picks = []
    for chat, pair, flip in zip(prompts, completions, flips, strict=True):
        prompt = tokenizer.apply_chat_template(
            chat, add_generation_prompt=True, tokenize=False
        )
        first, second = pair[::-1] if flip else pair
        content = _judge["template"].format(
            prompt=prompt, response0=first, response1=second
        )
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": content}],
            tokenize=False,
            enable_thinking=False,
            add_generation_prompt=True,
        )
        response = generate(
            _judge["model"], tokenizer, text, max_tokens=JUDGE_MAX_TOKENS
        )
        rank = int(response) if response in ("0", "1") else -1
        rank = 1 - rank if flip else rank
        picks.append(0 if rank == 0 else 1)  # mlx-lm-lora: anything but 0 -> second
    return picks


def length_judge(prompts: list, completions: list[list[str]]) -> list[int]:
    """The shorter completion text wins; equal lengths: the first."""
    return [int(len(b) < len(a)) for a, b in completions]


# ------------------------------------------------------------------ inputs


def write_data(records: list[dict], directory: Path) -> Path:
    """``train.jsonl`` for both tools: each question as a one-message chat."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "train.jsonl", "w") as f:
        for record in records:
            chat = [{"role": "user", "content": record["prompt"]}]
            f.write(json.dumps({"prompt": chat}) + "\n")
    return directory


def prepare_data(opts, model: Path) -> tuple[Path, dict]:
    """The prompts both tools get (steps x batch size), checked to tokenise alike."""
    raw = opts.work / "raw" / "grpo" / "train.jsonl"
    records = [json.loads(line) for line in raw.read_text().splitlines()]
    lengths = check_same_tokens(opts, model, write_data(records, opts.work / "all"))
    keep = spread(lengths, opts.steps * opts.batch_size)
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
    return write_data([records[i] for i in keep], opts.work / "data"), stats


def check_same_tokens(opts, model: Path, data: Path) -> list[int]:
    """Assert both tools turn every row into the same prompt ids, and that the
    judge sees mlx-lm-lora's prompt text; returns the prompt lengths.

    Also writes the judge file mlx-align's worker reads (`JUDGE_ENV`).
    """
    from mlx_lm.utils import load_tokenizer

    from mlx_align.data.jsonl import read_jsonl
    from mlx_align.data.tokenize import encode_prompt
    from mlx_align.sampling.llm_judge import PAIRWISE_PROMPT

    dump = opts.work / "mlx-lm-lora-tokens.json"
    cmd = [opts.lora_python, __file__, "--worker", "tokens", str(dump), "--"]
    subprocess.run([*cmd, str(model), str(data)], check=True, capture_output=True)
    theirs = json.loads(dump.read_text())
    tokenizer = load_tokenizer(model)
    rows = read_jsonl(data / "train.jsonl")
    if len(rows) != len(theirs["rows"]):
        sys.exit(
            f"{len(rows)} prompts for mlx-align, {len(theirs['rows'])} for mlx-lm-lora"
        )
    lengths = []
    for i, (row, (ids, text)) in enumerate(zip(rows, theirs["rows"], strict=True)):
        if encode_prompt(tokenizer, row) != ids:
            sys.exit(f"row {i}: mlx-align and mlx-lm-lora tokenise the prompt apart")
        rendered = tokenizer.apply_chat_template(
            row.fields["prompt"], add_generation_prompt=True, tokenize=False
        )
        if rendered != text:
            sys.exit(f"row {i}: the judge would see another prompt text")
        lengths.append(len(ids))
    if theirs["template"] != PAIRWISE_PROMPT:
        sys.exit("mlx-align's --judge-model prompt is not mlx-lm-lora's judge prompt")
    judge = {"model": str(model), "template": theirs["template"], "seed": opts.seed}
    (opts.work / "judge.json").write_text(json.dumps(judge))
    return lengths


# ------------------------------------------------------------------ runs


def read_report(path: Path) -> tuple[list[dict], dict[int, dict], dict]:
    """(per-step judge / rollout records in order, per-step tool records, the rest)."""
    judged, steps, rest = [], {}, {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if "judge_s" in record:
            judged.append(record)
        elif "step" in record:
            steps[record["step"]] = record
        elif "rollout_s" in record:
            rest.setdefault("rollouts", []).append(record)
        else:
            rest.update(record)
    return judged, steps, rest


def to_run(opts, tool: str, label: str, report: Path, wall: float, rss: float) -> Run:
    judged, steps, rest = read_report(report)
    n = opts.steps
    if len(judged) != n or sorted(steps) != list(range(1, n + 1)):
        sys.exit(f"{tool}: {len(judged)} judge calls, {len(steps)} steps in {report}")
    rollouts = rest.get("rollouts", [None] * n)
    if len(rollouts) != n:
        sys.exit(f"{tool}: {len(rollouts)} rollouts in {n} steps in {report}")
    rows, notes = [], []
    for k, (judge, rollout) in enumerate(zip(judged, rollouts, strict=True)):
        step = steps[k + 1]
        if rollout is not None:  # mlx-lm-lora: what its BatchGenerator returned
            completions, tokens = rollout["completions"], rollout["tokens"]
            at_limit = rollout["at_limit"]
            if rollout["longest"] > opts.max_completion_tokens:
                notes.append(f"step {k + 1}: a {rollout['longest']}-token completion")
        else:  # mlx-align: its metrics line
            completions, tokens = step["completions"], step["tokens"]
            at_limit = round((1 - step["ended"]) * completions)
        if completions != 2 * opts.batch_size:
            sys.exit(f"{tool}: {completions} completions in step {k + 1}")
        if step.get("ties"):
            notes.append(f"step {k + 1}: the judge tied {step['ties']:.0%} of pairs")
        rows.append(
            Step(
                completions,
                tokens,
                at_limit,
                judge["judge_s"],
                step["seconds"],
                rollout["rollout_s"] if rollout else None,
            )
        )
    return Run(
        tool,
        label,
        rows,
        rest["peak_memory"] / 2**20,
        rss,
        wall,
        rest["trainable"],
        rest["blas"],
        notes,
    )


def run_mlx_align(opts, label: str, model: Path, data: Path, out: Path, env: dict):
    args = ["online-dpo", "--model", str(model), "--data", str(data)]
    args += ["--out", str(out)]
    if opts.judge == "llm":  # mlx-align's own LLM judge: the start model itself
        args += ["--judge-model", str(model)]
    else:  # this file's judges: the port of mlx-lm-lora's, or the length judge
        args += ["--judge", f"online_dpo:{opts.judge.replace('-port', '')}_judge"]
    args += ["--steps", str(opts.steps), "--batch-size", str(opts.batch_size)]
    args += ["--max-completion-tokens", str(opts.max_completion_tokens)]
    args += ["--temperature", str(opts.temperature), "--top-p", "1.0"]
    args += ["--lora-rank", str(opts.lora_rank), "--lora-alpha", str(opts.lora_alpha)]
    args += ["--lora-layers", "-1", "--lora-dropout", "0", "--loss", "sigmoid"]
    args += ["--beta", str(opts.beta), "--max-length", str(opts.max_length)]
    args += ["--learning-rate", str(opts.learning_rate), "--seed", str(opts.seed)]
    args += ["--warmup-steps", "0", "--min-lr-ratio", "1.0", "--max-grad-norm", "0"]
    args += ["--weight-decay", "0", "--eval-every", "0", "--save-every", "0"]
    args += ["--log-every", "1"]
    args += opts.align_args.split()
    fresh_dir(out)
    report = out / "report.jsonl"
    env = {**env, JUDGE_ENV: str(opts.work / "judge.json")}
    cmd = [sys.executable, __file__, "--worker", "mlx-align", str(report), "--", *args]
    wall, rss = run_measured(cmd, env, out.with_suffix(".log"))
    return to_run(opts, ALIGN, label, report, wall, rss)


def run_mlx_lm_lora(opts, label: str, model: Path, data: Path, out: Path, env: dict):
    fresh_dir(out)
    never = str(opts.steps + 1)
    config = json.dumps(mlx_lm_lora_config(opts), indent=2)
    (out / "config.yaml").write_text(config)
    args = ["--train", "--train-mode", "online_dpo", "--train-type", "lora"]
    args += ["--model", str(model), "--data", str(data), "--adapter-path", str(out)]
    args += ["-c", str(out / "config.yaml"), "--optimizer", "adamw"]
    args += ["--judge", str(model), "--reference-model-path", str(model)]
    args += ["--iters", str(opts.steps), "--batch-size", str(opts.batch_size)]
    args += ["--max-completion-length", str(opts.max_completion_tokens)]
    args += ["--temperature", str(opts.temperature)]
    args += ["--num-layers", "-1", "--learning-rate", str(opts.learning_rate)]
    args += ["--max-seq-length", str(opts.max_length), "--seed", str(opts.seed)]
    args += ["--beta", str(opts.beta), "--dpo-cpo-loss-type", "sigmoid"]
    args += ["--steps-per-report", "1", "--steps-per-eval", never]
    args += ["--save-every", never]
    report = out / "report.jsonl"
    cmd = [opts.lora_python, __file__, "--worker", "mlx-lm-lora", str(report), "--"]
    if opts.judge == "length":
        cmd += ["--length-judge"]
    wall, rss = run_measured([*cmd, *args], env, out.with_suffix(".log"))
    return to_run(opts, LORA, label, report, wall, rss)


# ------------------------------------------------------------------ workers
# These run inside each tool's own interpreter: stdlib and that tool only.


def mlx_align_worker(report: Path, argv: list[str]) -> None:
    """`mlx-align` as its console script runs it, observed through ``report``.

    What the run does is heard through ``mlx_align.core.events`` (each step's
    judge call, the trainable parameters), not by patching its modules.
    """
    import mlx.core as mx

    from mlx_align.cli import main
    from mlx_align.core import events

    write = reporter(report)
    heard = set()

    def listen(event: str, fields: dict) -> None:
        heard.add(event)
        if event == "rewards":  # the judge, once per micro-batch
            write({"judge_s": fields["seconds"]})
        elif event == "trainable":
            write({"trainable": fields["parameters"]})

    with events.listening(listen):
        main(argv)
    missing = {"trainable", "rewards", "step"} - heard
    if missing:
        raise SystemExit(
            f"the run emitted no {sorted(missing)} events: update the bench"
        )
    out = Path(argv[argv.index("--out") + 1])
    batch = int(argv[argv.index("--batch-size") + 1])
    log = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    for line in (x for x in log if "tokens" in x):  # --log-every 1: one line per step
        write(
            {
                "step": line["step"],
                "seconds": line["tokens"] / line["tokens_per_sec"],
                "tokens": round(line["tokens"]),  # the 2B completions' tokens
                "completions": 2 * batch,
                "ties": line.get("judge/ties", 0.0),
                "ended": line["val/contain_eos_token"],  # share ending in EOS
            }
        )
    write({"peak_memory": mx.get_peak_memory(), "blas": blas_in_use()})


def mlx_lm_lora_worker(report: Path, argv: list[str]) -> None:
    """`mlx_lm_lora.train` as its CLI runs it, observed through ``report``."""
    import mlx.core as mx
    import mlx_lm_lora.train as lora_train
    import mlx_lm_lora.trainer.online_dpo_trainer as trainer
    from dpo import EpochDraws
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.callbacks import TrainingCallback

    write = reporter(report)
    length = "--length-judge" in argv
    argv = [a for a in argv if a != "--length-judge"]
    limit = int(argv[argv.index("--max-completion-length") + 1])
    seed = int(argv[argv.index("--seed") + 1])
    add_working_set(mx)
    trainer.np = EpochDraws(seed)  # each batch once per epoch, as mlx-align
    sampled: list[int] = []  # tokens per completion of the current rollout

    class CountingBatchGenerator(trainer.BatchGenerator):
        def insert(self, prompts, *args, **kwargs):
            uids = super().insert(prompts, *args, **kwargs)
            self.counts = dict.fromkeys(uids, 0)
            return uids

        def next_generated(self):
            responses = super().next_generated()
            for r in responses:
                self.counts[r.uid] += 1
            return responses

        def close(self):  # also called again by __del__
            sampled.extend(self.__dict__.pop("counts", {}).values())
            return super().close()

    generate = trainer.generate_for_online_dpo

    def timed_generate(*args, **kwargs):  # one step's pairs, prefill + decode
        sampled.clear()
        tic = time.perf_counter()
        pairs = generate(*args, **kwargs)  # decoded texts: synced
        seconds = time.perf_counter() - tic
        write(
            {
                "rollout_s": seconds,
                "completions": len(sampled),
                "tokens": sum(sampled),
                "longest": max(sampled, default=0),
                "at_limit": sum(n >= limit for n in sampled),
            }
        )
        return pairs

    base = trainer.LLMPairwiseJudge
    if length:  # a deterministic judge: this file's length_judge

        class Base:
            def __init__(self, *args, **kwargs) -> None:
                pass

            def judge(self, prompts, completions, shuffle_order=True):
                return length_judge(prompts, completions)

        base = Base

    class TimedJudge(base):
        def judge(self, *args, **kwargs):
            tic = time.perf_counter()
            picks = super().judge(*args, **kwargs)
            write({"judge_s": time.perf_counter() - tic})
            return picks

    class Recorder(TrainingCallback):
        def on_train_loss_report(self, info: dict) -> None:  # one per step
            seconds = 1 / info["iterations_per_second"]
            write({"step": info["iteration"], "seconds": seconds})

    def count_trainable(model) -> None:
        trainable = sum(v.size for _, v in tree_flatten(model.trainable_parameters()))
        write({"trainable": trainable})

    run = lora_train.run
    trainer.BatchGenerator = CountingBatchGenerator
    trainer.generate_for_online_dpo = timed_generate
    trainer.LLMPairwiseJudge = TimedJudge
    lora_train.print_trainable_parameters = count_trainable
    lora_train.run = lambda args, training_callback=None: run(args, Recorder())
    sys.argv = ["mlx_lm_lora.train", *argv]
    lora_train.main()
    write({"peak_memory": mx.get_peak_memory(), "blas": blas_in_use()})


def tokens_worker(dump: Path, model: str, data: str) -> None:
    """mlx-lm-lora's prompt ids and text of every row, and its judge's prompt."""
    from types import SimpleNamespace

    from mlx_lm.utils import load_tokenizer
    from mlx_lm_lora.chat_template import ensure_chat_template
    from mlx_lm_lora.trainer.datasets import load_local_dataset
    from mlx_lm_lora.trainer.judge import DEFAULT_PAIRWISE_SYSTEM_PROMPT

    tokenizer = load_tokenizer(Path(model))
    ensure_chat_template(tokenizer)
    config = SimpleNamespace(train_mode="online_dpo")
    train, _, _ = load_local_dataset(Path(data), tokenizer, config)
    rows = []
    for i in range(len(train)):
        item = train.process(train[i])
        rows.append([list(item["prompt"]), item["prompt_text"]])
    dump.write_text(
        json.dumps({"rows": rows, "template": DEFAULT_PAIRWISE_SYSTEM_PROMPT})
    )


# ------------------------------------------------------------------ report


def row(p: Pooled) -> str:
    rollout = (
        f"{statistics.median(s.rollout_s for s in p.steps):.2f}"
        if all(s.rollout_s is not None for s in p.steps)
        else "-"
    )
    return (
        f"| {p.tool} | {p.label} | {len(p.runs)} x {len(p.runs[0].steps)} "
        f"| {p.total('tokens') / p.total('completions'):.1f} "
        f"({p.total('at_limit') / p.total('completions'):.0%}) "
        f"| {p.median('step_s'):.2f} | {p.median('judge_s'):.2f} "
        f"| {p.median('rest_s'):.2f} | {rollout} | **{p.steps_per_s():.3f}** "
        f"| {p.steps_per_s_without_judge():.3f} | {p.completions_per_s():.2f} "
        f"| {p.tokens_per_s():,.0f} | {p.first_step_s():.1f} | {p.peak_mb:.1f} "
        f"| {p.max_rss_mb:,.0f} | {p.wall_s:.1f} |"
    )


def ratios(ours: Pooled, theirs: Pooled, warmup: int) -> list[str]:
    def x(f) -> str:
        return f"{f(ours) / f(theirs):.2f}x"

    paired = [
        f"{run_steps_per_s(a, warmup) / run_steps_per_s(b, warmup):.2f}x"
        for a, b in zip(ours.runs, theirs.runs, strict=True)
    ]
    shorter = theirs.median("step_s") / ours.median("step_s")
    judged = theirs.median("judge_s") > 0.01  # an LLM judge, not a function
    judge = (
        f"steps/s excl. judge {x(Pooled.steps_per_s_without_judge)}, judge call "
        f"{ours.median('judge_s') / theirs.median('judge_s'):.2f}x the time, "
        if judged
        else ""
    )
    return [
        f"- {ours.label}: **steps/s {x(Pooled.steps_per_s)}** (run by run: "
        f"{', '.join(paired)}; median step {shorter:.2f}x shorter), {judge}"
        f"completions/s {x(Pooled.completions_per_s)}, completion tok/s "
        f"{x(Pooled.tokens_per_s)}, peak MLX memory "
        f"{ours.peak_mb / theirs.peak_mb:.2f}x, max RSS "
        f"{ours.max_rss_mb / theirs.max_rss_mb:.2f}x, wall "
        f"{ours.wall_s / theirs.wall_s:.2f}x"
    ]


def table(cold: dict[str, Pooled], warm: dict[str, Pooled], opts) -> str:
    rows = table_head(
        ["tool", "runs", "runs x steps", "completion len (at limit)", "step s (median)"]
        + ["judge s", "step excl. judge s", "rollout s", "steps/s"]
        + ["steps/s excl. judge", "completions/s", "tok/s", "first step s"]
        + ["peak MLX MB", "max RSS MB", "wall s"],
        left=2,
    )
    rows += [row(p) for p in (*cold.values(), *warm.values())]
    rows.append("\nmlx-align / mlx-lm-lora:")
    if opts.repeats:
        rows += ratios(warm[ALIGN], warm[LORA], opts.warmup)
    rows += ratios(cold[ALIGN], cold[LORA], 0)
    notes = [
        f"{r.tool} {r.label}: {n}"
        for p in (*cold.values(), *warm.values())
        for r in p.runs
        for n in r.notes
    ]
    rows += [f"- note: {n}" for n in notes]
    return "\n".join(rows)


def describe(opts, stats: dict, runs: list[Run], load: tuple[float, float]) -> str:
    (trainable,) = {r.trainable for r in runs} or {0}
    blas = sorted({r.blas for r in runs})
    judge = {
        "llm": "LLM judge on the starting model, each tool's own: mlx-lm-lora's "
        "LLMPairwiseJudge (16 greedy tokens per pair, one pair at a time), "
        "mlx-align's --judge-model (the same prompt; the log-odds of the first "
        "answer token, all pairs in one batch, the shared prefix cached, on the "
        "policy's own base weights)",
        "llm-port": "LLM judge: mlx-lm-lora's LLMPairwiseJudge on the starting "
        "model (16 greedy tokens), mlx-align the same through --judge "
        "online_dpo:llm_judge",
        "length": "deterministic judge: the shorter completion text wins "
        "(online_dpo:length_judge, in place of mlx-lm-lora's LLMPairwiseJudge)",
    }[opts.judge]
    return (
        f"{machine(opts.blas, load)} ({'; '.join(blas)}); {model_label(opts)}; "
        f"{stats['prompts']} of the split's {stats['split']} prompts, spread over "
        f"the length range ({stats['shortest']}-{stats['longest']} tokens, mean "
        f"{stats['mean']:.1f}, one-message chats), one epoch per run; "
        f"{opts.batch_size} prompts per step, 2 completions each, at most "
        f"{opts.max_completion_tokens} completion tokens, temperature "
        f"{opts.temperature:g}, no top-p / top-k; {judge}; sigmoid DPO "
        f"beta={opts.beta:g}; LoRA r={opts.lora_rank} alpha={opts.lora_alpha:g} "
        f"(scale {opts.lora_alpha / opts.lora_rank:g}) on all linear layers of all "
        f"blocks ({trainable:,} trainable), AdamW lr={opts.learning_rate:g} "
        f"constant, no clipping; {opts.steps} steps per run; cold = the first run "
        f"(empty mx.compile kernel cache), all its steps; warm = {opts.repeats} "
        f"run(s) per tool (tools alternating), steps pooled, the first "
        f"{opts.warmup} of each left out"
        f"{f'; mlx-align also gets `{opts.align_args}`' if opts.align_args else ''}\n\n"
        "step s / judge s: medians over the pooled steps, as each tool times its "
        "step (sampling, judging, reference, forward + backward, update); step "
        "excl. judge = step - judge call. rollout s: mlx-lm-lora's "
        "generate_for_online_dpo (mlx-align reports no sampling time for online "
        "DPO). steps/s, completions/s, tok/s (completion tokens sampled): per "
        "second of whole steps, summed over the pooled steps; steps/s excl. judge: "
        "per second of the steps without their judge call. first step s: step 1 "
        "(compile), median over runs. peak MLX: mx.get_peak_memory() at the end "
        "of the process. wall: the whole process, median over runs.\n"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_options(p)
    p.add_argument(
        "--judge",
        choices=["llm", "llm-port", "length"],
        default="llm",
        help="llm: each tool's own LLM judge on the starting model (mlx-align: "
        "--judge-model); llm-port: mlx-lm-lora's LLM judge in both (ported for "
        "mlx-align); length: shorter completion wins, in both",
    )
    p.add_argument("--steps", type=int, default=10, help="optimizer steps per run")
    p.add_argument("--batch-size", type=int, default=4, help="prompts per step")
    p.add_argument("--max-completion-tokens", type=int, default=32)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--lora-alpha", type=float, default=16.0)
    p.add_argument("--learning-rate", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--align-args",
        default="",
        help="extra `mlx-align online-dpo` flags, e.g. '--fuse-rollout off'",
    )
    p.add_argument("--warmup", type=int, default=1, help="steps left out of warm runs")
    p.add_argument("--repeats", type=int, default=2, help="warm runs per tool")
    p.add_argument("--blas", choices=["openblas", "reference"], default="openblas")
    p.add_argument("--lora-python", default="/tmp/lora-venv/bin/python")
    p.add_argument("--work", type=Path, default=Path("/tmp/mlx_align_bench_online_dpo"))
    p.add_argument(
        "--worker",
        choices=["mlx-align", "mlx-lm-lora", "tokens"],
        help=argparse.SUPPRESS,
    )
    opts = parse_bench_args(p, argv)
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
    if not (opts.work / "raw" / "grpo").exists():
        make_data(opts.work / "raw")
    model = bench_model(opts)
    data, stats = prepare_data(opts, model)
    env = blas_env(opts.blas)
    tools = {
        LORA: lambda label, out, env: run_mlx_lm_lora(
            opts, label, model, data, out, env
        ),
        ALIGN: lambda label, out, env: run_mlx_align(
            opts, label, model, data, out, env
        ),
    }
    jit = kernel_caches(opts.work / "jit" / opts.blas, tools, cold=True)
    load_before = os.getloadavg()[0]
    runs: dict[tuple[str, str], list[Run]] = {}
    for i in range(opts.repeats + 1):
        for tool, run in tools.items():
            label = "cold" if i == 0 else "warm"
            out = opts.work / "runs" / opts.judge / f"{tool.split()[0]}-{i}"
            result = run(label, out, {**env, "TMPDIR": str(jit[tool])})
            runs.setdefault((tool, label), []).append(result)
            skip = 0 if i == 0 else opts.warmup
            later = result.steps[skip:]
            print(
                f"{tool} {label} run: {run_steps_per_s(result, skip):.3f} steps/s, "
                f"{statistics.median(s.step_s for s in later):.2f} s/step "
                f"(judge {statistics.median(s.judge_s for s in later):.2f} s), "
                f"{result.wall_s:.1f} s wall",
                flush=True,
            )
    every = [r for rs in runs.values() for r in rs]
    if other_blas(opts.blas, (r.blas for r in every)):
        sys.exit(f"a run used another BLAS than --blas {opts.blas}")
    check_same_trainable(every)
    cold = {t: Pooled(t, "cold", runs[(t, "cold")], 0) for t in (LORA, ALIGN)}
    warm = {
        t: Pooled(t, "warm", runs[(t, "warm")], opts.warmup)
        for t in (LORA, ALIGN)
        if (t, "warm") in runs
    }
    text = describe(opts, stats, every, (load_before, os.getloadavg()[0]))
    text += "\n" + table(cold, warm, opts)
    print(text)
    suffix = {"llm": "", "llm-port": "-llm-port", "length": "-length-judge"}[opts.judge]
    suffix += "-reference-blas" if opts.blas == "reference" else ""
    suffix += f"-batch{opts.batch_size}" if opts.batch_size != 4 else ""
    suffix += model_suffix(opts)
    suffix += flags_suffix(opts.align_args)
    write_results(RESULTS.with_stem(f"online_dpo{suffix}"), text)


if __name__ == "__main__":
    main()
