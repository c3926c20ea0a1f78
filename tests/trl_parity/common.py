"""What the TRL parity scripts share: the TRL side in a subprocess, and the table.

The TRL side runs in a throwaway venv (torch and TRL are no project
dependency) as ``python SCRIPT --trl-side``, reading its job as JSON on stdin
and printing TRL's values as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

# One case per DPO loss type of TRL 1.16 (with the setting it needs), and a
# weighted sum: what every DPO parity script checks, before its own extras.
DPO_CASES = [
    {"loss_type": ["sigmoid"]},
    {"loss_type": ["hinge"]},
    {"loss_type": ["ipo"]},
    {"loss_type": ["exo_pair"], "label_smoothing": 1e-3},
    {"loss_type": ["nca_pair"]},
    {"loss_type": ["robust"], "label_smoothing": 0.1},
    {"loss_type": ["bco_pair"]},
    {"loss_type": ["sppo_hard"]},
    {"loss_type": ["aot"]},
    {"loss_type": ["aot_unpaired"]},
    {"loss_type": ["apo_zero"]},
    {"loss_type": ["apo_down"]},
    {"loss_type": ["discopop"]},
    {"loss_type": ["sft"]},
    {"loss_type": ["sigmoid_norm"]},
    {"loss_type": ["sigmoid", "bco_pair", "sft"], "loss_weights": [0.8, 0.2, 1.0]},
]

HEADER = "| loss_type | settings | TRL loss | mlx-align loss | max abs diff (loss, metrics) |"  # fmt: skip


def trl_values(python: str, script: str, job: dict) -> dict | list:
    """``script --trl-side`` under ``python``, fed ``job``; exits with its error."""
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}  # mlx's BLAS
    side = subprocess.run(
        [python, script, "--trl-side"],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        env=env,
    )
    if side.returncode:
        sys.exit(f"the TRL side failed:\n{side.stderr}")
    return json.loads(side.stdout)


def print_table(title: str, cases: list[dict], theirs_all: list[dict], ours_of: Callable[[dict], dict]) -> float:  # fmt: skip
    """One row per case (keys both sides have are compared); the largest difference."""
    print(f"{title}\n\n{HEADER}\n|---|---|---:|---:|---:|")
    worst = 0.0
    for case, theirs in zip(cases, theirs_all, strict=True):
        ours = ours_of(case)
        diff = max(abs(ours[k] - theirs[k]) for k in theirs if k in ours)
        worst = max(worst, diff)
        settings = ", ".join(f"{k}={v}" for k, v in case.items() if k != "loss_type")
        names = case["loss_type"]
        names = names if isinstance(names, str) else "+".join(names)
        print(
            f"| {names} | {settings or '-'} | {theirs['loss']:.6f} | "
            f"{ours['loss']:.6f} | {diff:.1e} |"
        )
    print()
    return worst


def compare(tables: list[tuple], tolerance: float) -> int:
    """``print_table`` for each (title, cases, TRL's values, ours_of); 0 when the
    largest difference is within ``tolerance``, else 1."""
    worst = max(print_table(*table) for table in tables)
    print(f"largest difference: {worst:.1e} (tolerance {tolerance:g})")
    return 0 if worst <= tolerance else 1
