"""Multi-turn rollouts against single-turn ones of the same length: model tokens per second.

B prompts x G rows each sample the same number of model tokens three ways:

* ``single``: one turn of 3n tokens (``sample_groups``);
* ``continued``: three turns of n tokens with two tool turns of k tokens
  between them, each later turn fed after the rows' kept keys and values
  (``continue_rows``), as ``--tool`` rollouts run;
* ``prefilled``: the same three turns, each prefilling the whole history
  again (what continuing saves);
* ``single, same total length``: one turn as long as a whole trajectory,
  tool turns included (3n + 2k), the issue's yardstick for trajectory
  tokens per second.

The model is a random-weight ``init-model`` preset (the capstone's ``small``
by default) with the ``chatml-tools`` template; rows never stop early (no
stop token is ever sampled: EOS is a token id outside the vocabulary's use),
so every row samples exactly n per turn and the rates compare like for like.
Each way runs once to compile, then ``--repeats`` times timed (warm): wall
time, and the process's CPU time (all its threads), which another load on
the machine disturbs less.

    python bench/multi_turn.py                       # small, B 4, G 8, n 32, k 24
    python bench/multi_turn.py --preset tiny --turn-tokens 16
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import mlx.core as mx
import mlx_lm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))


def build_model(preset: str, work: Path) -> Path:
    from make_data import build_all

    from mlx_align.model.tiny import PRESETS, init_model

    texts = [r["text"] for r in build_all(0, 0.2)["pretrain"]["train"]]
    return init_model(work / preset, PRESETS[preset], texts, seed=0, chat_template="chatml-tools")  # fmt: skip


def rollouts(model, prompts, group, turn, glue, stop):
    """The ways, each a function of no arguments that samples and returns the
    model tokens it sampled and the trajectories' tokens (tool turns included)."""
    from mlx_align.sampling.rollout import continue_rows, sample_groups

    rows = len(prompts) * group

    def single(length: int):
        groups = sample_groups(model, prompts, group, length, stop)
        tokens = sum(len(c) for g in groups for c in g.completions)
        return tokens, tokens

    def continued():
        groups = sample_groups(model, prompts, group, turn, stop, keep_history=True)
        rows = [c for g in groups for c in g.completions]
        histories = [h for g in groups for h in g.histories]
        total = sum(map(len, rows))
        for _ in range(2):
            feeds = [r[-1:] + glue for r in rows]
            rows, histories = continue_rows(model, histories, feeds, turn, stop)
            total += sum(map(len, rows))
        return total, total + 2 * len(glue) * len(rows)

    def prefilled():
        groups = sample_groups(model, prompts, group, turn, stop)
        histories = [g.prompt + c for g in groups for c in g.completions]
        total = sum(len(c) for g in groups for c in g.completions)
        for _ in range(2):
            grown = sample_groups(model, [h + glue for h in histories], 1, turn, stop)
            histories = [h + glue + g.completions[0] for h, g in zip(histories, grown, strict=True)]  # fmt: skip
            total += sum(len(g.completions[0]) for g in grown)
        return total, total + 2 * len(glue) * rows

    return {
        "single": lambda: single(3 * turn),
        "single, same total length": lambda: single(3 * turn + 2 * len(glue)),
        "continued": continued,
        "prefilled": prefilled,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--prompts", type=int, default=4, help="B")
    parser.add_argument("--group-size", type=int, default=8, help="G")
    parser.add_argument("--turn-tokens", type=int, default=32, help="n per model turn")
    parser.add_argument("--tool-tokens", type=int, default=24, help="k per tool turn")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        path = build_model(args.preset, Path(work))
        model, tok = mlx_lm.load(str(path))
        stop = {10**9}  # never sampled: every row runs to the turn's limit
        prompts = [
            tok.encode(
                f"Question: What is {i} + {i + 3} + 5?\nAnswer:",
                add_special_tokens=False,
            )  # fmt: skip
            for i in range(args.prompts)
        ]
        glue = tok.encode("<tool_response>\n" + "7 " * 40, add_special_tokens=False)[: args.tool_tokens]  # fmt: skip
        ways = rollouts(model, prompts, args.group_size, args.turn_tokens, glue, stop)
        rates = {}
        for name, run in ways.items():
            mx.random.seed(0)
            run()  # compile
            seconds, cpu, tokens = [], [], (0, 0)
            for _ in range(args.repeats):
                tic, cpu_tic = time.perf_counter(), time.process_time()
                tokens = run()
                seconds.append(time.perf_counter() - tic)
                cpu.append(time.process_time() - cpu_tic)
            rates[name] = (*tokens, statistics.median(seconds), statistics.median(cpu))
    print(
        f"{args.preset}: B {args.prompts} x G {args.group_size}, 3 turns of "
        f"{args.turn_tokens} model tokens, 2 tool turns of {len(glue)} tokens; "
        f"median of {args.repeats} warm runs"
    )
    print(
        "| way | model tokens | trajectory tokens | seconds | model tokens/s | vs single "
        "| trajectory tokens/s | vs single of the same length | CPU seconds |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    single_tokens, _, single_seconds, _ = rates["single"]
    _, long_tokens, long_seconds, _ = rates["single, same total length"]
    single_rate, long_rate = single_tokens / single_seconds, long_tokens / long_seconds
    for name, (model_tokens, tokens, seconds, cpu) in rates.items():
        model_rate, rate = model_tokens / seconds, tokens / seconds
        print(
            f"| {name} | {model_tokens} | {tokens} | {seconds:.2f} | {model_rate:,.0f} | "
            f"{model_rate / single_rate:.2f}x | {rate:,.0f} | {rate / long_rate:.2f}x | {cpu:.2f} |"
        )


if __name__ == "__main__":
    main()
