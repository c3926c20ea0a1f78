"""Run a command and record its wall time in a JSON file (for REPORT.md).

    python recipes/timed.py runs/capstone/times.json pt -- mlx-align pretrain ...

adds ``{"pt": seconds}`` to the file and exits with the command's exit code.
"""

import json
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    path, name, separator, *command = sys.argv[1:]
    if separator != "--" or not command:
        sys.exit("usage: timed.py TIMES.json NAME -- COMMAND ...")
    start = time.perf_counter()
    code = subprocess.call(command)
    if code == 0:
        times_file = Path(path)
        times = json.loads(times_file.read_text()) if times_file.exists() else {}
        times[name] = times.get(name, 0.0) + time.perf_counter() - start
        times_file.write_text(json.dumps(times, indent=1) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
