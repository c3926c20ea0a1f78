"""Best-of-K by DPO's implicit reward against one sample, on the capstone's held-out questions.

    python recipes/rerank_eval.py runs/capstone --k 8 --beta 0.1 --temperature 1.0

samples K completions of each question in ``data/grpo/test.jsonl`` from the
DPO policy (``sft-fused`` + the ``dpo`` adapters), ranks them by
β·(log π − log π_ref) with ``sft-fused`` (the adapters off) as the reference
(``mlx_align.apps.rerank``, what ``mlx-align rerank`` runs), and writes

- ``rerank/ranked.jsonl``: every question's K completions, best first;
- ``rerank/figures.json``: the share of hedged answers (``make_data.is_hedged``,
  what the preference data penalises), of bare answers and the math accuracy
  (``mlx_align.rewards.math``) of the best of K, of one sample (the mean over
  the K draws, which are independent: the expected figure of a single sample,
  with less noise than the first draw alone) and of the first draw; and
  where the hedged draws landed in their question's ranking (1: best, K: last).

report.py puts the figures in REPORT.md.
"""

import argparse
import json
import time
from pathlib import Path

from make_data import is_hedged
from report import is_bare

from mlx_align.apps.rerank import load_models, rerank_records, write_ranked
from mlx_align.data.jsonl import read_jsonl
from mlx_align.rewards.math import math_reward


def figures(completions: list[str], prompts: list[str], answers: list[str]) -> dict:
    """Hedged share, bare share and math accuracy of one completion per prompt (or several)."""
    judged = [
        s for s in math_reward(prompts, completions, answer=answers) if s is not None
    ]
    n = len(completions)
    return {
        "hedged": sum(map(is_hedged, completions)) / n,
        "bare": sum(map(is_bare, completions)) / n,
        "accuracy": sum(judged) / max(len(judged), 1),
        "completions": n,
    }


def hedged_ranks(ranked) -> dict:
    """How many draws hedge, and their mean place in their question's ranking (1: best)."""
    ranks = [
        place
        for r in ranked
        for place, c in enumerate(r.candidates, start=1)
        if is_hedged(c.completion)
    ]
    return {
        "count": len(ranks),
        "mean_rank": sum(ranks) / len(ranks) if ranks else None,
    }


def summarise(ranked, k: int) -> dict:
    """The three figures for the best of K, every draw, and the first draw."""
    prompts = [r.record.fields["prompt"] for r in ranked]
    answers = [r.record.fields["answer"] for r in ranked]
    every = [c for r in ranked for c in sorted(r.candidates, key=lambda c: c.sample)]
    return {
        "best_of_k": figures([r.best.completion for r in ranked], prompts, answers),
        "single_sample": figures(
            [c.completion for c in every],
            [p for p in prompts for _ in range(k)],
            [a for a in answers for _ in range(k)],
        ),
        "first_draw": figures(
            [min(r.candidates, key=lambda c: c.sample).completion for r in ranked],
            prompts,
            answers,
        ),
        "hedged_draws": hedged_ranks(ranked),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="the capstone's run folder")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--limit", type=int, default=0, help="first N questions (0: all)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    records = read_jsonl(args.run / "data" / "grpo" / "test.jsonl")
    records = records[: args.limit] if args.limit else records
    policy, tokenizer, scorers = load_models(
        str(args.run / "sft-fused"), str(args.run / "dpo"), beta=args.beta
    )
    ranked = rerank_records(
        policy,
        tokenizer,
        records,
        scorers,
        args.k,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        batch_size=8,
        seed=args.seed,
        progress=True,
    )
    out = args.run / "rerank"
    write_ranked(ranked, out / "ranked.jsonl")
    result = {
        "prompts": len(ranked),
        "k": args.k,
        "beta": args.beta,
        "temperature": args.temperature,
        "max_tokens": args.max_tokens,
        "seed": args.seed,
        **summarise(ranked, args.k),
        "seconds": time.perf_counter() - start,
    }
    (out / "figures.json").write_text(json.dumps(result, indent=1) + "\n")
    best, one = result["best_of_k"], result["single_sample"]
    print(
        f"best of {args.k} by implicit reward vs one sample (T={args.temperature}, "
        f"{len(ranked)} held-out questions): hedged {100 * best['hedged']:.1f}% vs "
        f"{100 * one['hedged']:.1f}%, math accuracy {100 * best['accuracy']:.1f}% vs "
        f"{100 * one['accuracy']:.1f}% ({result['seconds']:.0f} s)"
    )


if __name__ == "__main__":
    main()
