"""Print the last logged value of metrics from a run's metrics.jsonl.

Example: python recipes/last_metric.py runs/capstone/dpo val_rewards/accuracies
"""

import json
import sys
from pathlib import Path


def main() -> None:
    run, *keys = sys.argv[1:]
    lines = [
        json.loads(x) for x in (Path(run) / "metrics.jsonl").read_text().splitlines()
    ]
    for key in keys:
        values = [line[key] for line in lines if key in line]
        print(
            f"{run}: {key} = {values[-1]:.4f}" if values else f"{run}: no {key} logged"
        )


if __name__ == "__main__":
    main()
