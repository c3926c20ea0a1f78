"""How a step's predicted peak grows with length, and the attention's share of it.

``apps.plan.plan_stage`` (within 2% of the measured peak at 0.5B and 1.5B
for DPO and SFT, ``bench/plan.py``) for rows of 512 to 4,096 tokens
(prompt:completion 4:1, batch 2), with and without ``--grad-checkpoint``.
The attention's share is what the plan holds for attention scores: the
blocks' kept scores and the widest call's backward buffers (MLX's CPU
attention forms heads x queries x keys in float32). Predicted, not
measured: no step runs, so it takes seconds::

    .venv/bin/python bench/growth.py --shape qwen2.5-0.5b
    .venv/bin/python bench/growth.py --shape qwen2.5-1.5b --stages dpo

Writes bench/results/growth-<shape>.md.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from common import REAL_SHAPES, RESULTS_DIR, write_results
from plan import model_for, stage_flags, write_split


def attention_bytes(plan, footprint, checkpoint: bool) -> float:
    """The plan's bytes for attention scores: its parts less the same with none."""
    from mlx_align.train.memory_plan import activations, transient

    g = plan.geometry
    none = dataclasses.replace(g, attention=0, widest_call=0)
    kept = activations(footprint, g, checkpoint) - activations(footprint, none, checkpoint)  # fmt: skip
    return kept + transient(footprint, g)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="qwen2.5-0.5b", choices=list(REAL_SHAPES))
    p.add_argument("--layers", type=int, default=0)
    p.add_argument("--stages", default="dpo,sft")
    p.add_argument("--lengths", default="512,1024,2048,4096")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--flags", default="")
    p.add_argument("--work", type=Path, default=Path("/tmp/mlx-align-bench-plan"))
    opts = p.parse_args()
    from mlx_lm.utils import load_tokenizer

    from mlx_align.apps.plan import plan_stage
    from mlx_align.cli import config_for
    from mlx_align.model.footprint import footprint, lazy_model
    from mlx_align.train.adapted import adapter_config

    model = model_for(opts)
    tokenizer = load_tokenizer(model)
    lines = [
        "| stage | tokens a row | positions | peak GB | attention GB (share) | --grad-checkpoint: peak GB | attention GB (share) |",  # fmt: skip
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for stage in opts.stages.split(","):
        for total in map(int, opts.lengths.split(",")):
            data = write_split(opts.work / f"data-{stage}-{total}", stage, tokenizer, total * 4 // 5, total // 5)  # fmt: skip
            argv = stage_flags(stage, model, data, opts.work / "run", opts, total * 4 // 5, total // 5)  # fmt: skip
            cells = []
            for checkpoint in (False, True):
                config = config_for(stage, argv + (["--grad-checkpoint"] if checkpoint else []))  # fmt: skip
                plan = plan_stage(stage, config)
                lazy, _ = lazy_model(config.model)
                fp = footprint(lazy, adapter_config(config))
                share = attention_bytes(plan, fp, checkpoint)
                cells += [f"{plan.peak / 1e9:.2f}", f"{share / 1e9:.2f} ({100 * share / plan.peak:.0f}%)"]  # fmt: skip
            lines.append(f"| {stage} | {total:,} | {plan.geometry.positions:,} | " + " | ".join(cells) + " |")  # fmt: skip
            print(lines[-1], flush=True)
    write_results(RESULTS_DIR / f"growth-{opts.shape}.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
