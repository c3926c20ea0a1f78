"""Nothing lost: a run killed with SIGKILL (also while a checkpoint is being
written) and resumed with ``--resume`` ends with exactly the weights of a run
never interrupted, for SFT, DPO and GRPO (μ = 2), through the CLI."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import pytest
from conftest import write_jsonl

# The run, in a child process, with a listener that SIGKILLs it at an event.
KILLER = """
import os, signal, sys
from mlx_align.core import events
from mlx_align.cli import main
event, step = sys.argv[1], int(sys.argv[2])
def kill(name, fields):
    if name == event and fields["step"] == step:
        os.kill(os.getpid(), signal.SIGKILL)
events._listeners.append(kill)
main(sys.argv[3:])
"""


def cli(args: list[str], kill_at: tuple[str, int] | None = None) -> int:
    tests = str(Path(__file__).parent)  # tool_helpers:... for --environment
    env = {**os.environ, "MLX_ALIGN_NO_OPENBLAS": "1", "PYTHONPATH": tests}
    if kill_at:
        cmd = [sys.executable, "-c", KILLER, kill_at[0], str(kill_at[1]), *args]
    else:
        cmd = [str(Path(sys.executable).parent / "mlx-align"), *args]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    if not kill_at:
        assert done.returncode == 0, done.stderr[-3000:]
    return done.returncode


def weights(run: Path) -> dict:
    return mx.load(str(run / "adapters.safetensors"))


def assert_identical(a: Path, b: Path) -> None:
    one, two = weights(a), weights(b)
    assert one.keys() == two.keys()
    for name in one:
        assert mx.array_equal(one[name], two[name]).item(), name  # max |Δw| = 0


def steps_logged(run: Path) -> list[int]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines]


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume_pairs")
    words = "apple river stone cloud tiger piano lemon forest".split()
    rows = [
        {"prompt": f"Question: What about the {w}?\nAnswer:", "chosen": " Good.", "rejected": " It is bad."}
        for w in words
    ]  # fmt: skip
    write_jsonl(root / "train.jsonl", rows)
    return root


@pytest.fixture(scope="module")
def grpo_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume_grpo")
    sums = [(1, 2), (3, 4), (2, 2), (5, 1), (6, 2), (4, 4)]
    rows = [{"prompt": f"Question: What is {a} + {b}?\nAnswer:", "answer": str(a + b)} for a, b in sums]  # fmt: skip
    write_jsonl(root / "train.jsonl", rows)
    return root


STAGES = {
    # stage: (data fixture, flags); dropout and accumulation make RNG and order matter
    "sft": ("sft_dir", ["--lora-dropout", "0.1", "--grad-accumulation", "2"]),
    "dpo": ("pairs_dir", ["--lora-dropout", "0.1"]),
    "grpo": (
        "grpo_dir",
        ["--iterations", "2", "--group-size", "4", "--max-completion-tokens", "6"],
    ),  # fmt: skip
}


@pytest.mark.kill
@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("kill_at", [("step", 5), ("checkpoint", 4)])
def test_killed_and_resumed_run_ends_with_the_same_weights(
    stage, kill_at, tiny_model, request, tmp_path, monkeypatch
):
    monkeypatch.setenv("MLX_ALIGN_CACHE", str(tmp_path / "cache"))
    fixture, flags = STAGES[stage]
    data = request.getfixturevalue(fixture)
    common = [
        stage, "--model", str(tiny_model), "--data", str(data), "--steps", "6",
        "--batch-size", "2", "--save-every", "2", "--log-every", "1",
        "--max-length", "64", "--learning-rate", "1e-2", *flags,
    ]  # fmt: skip
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    cli([*common, "--out", str(straight)])
    code = cli([*common, "--out", str(killed)], kill_at=kill_at)
    assert code == -signal.SIGKILL
    checkpoints = sorted(p.name for p in (killed / "checkpoints").iterdir())
    # killed after step 5: checkpoints 2 and 4; killed writing 4: 2 and 4's leftover
    expected = ["step_0000002", "step_0000004"]
    if kill_at[0] == "checkpoint":
        expected = ["step_0000002", "step_0000004.tmp"]
    assert checkpoints == expected
    cli([*common, "--out", str(killed), "--resume"])
    assert_identical(straight, killed)
    assert steps_logged(killed) == steps_logged(straight)  # none lost, none twice


@pytest.mark.kill
def test_multi_turn_grpo_killed_and_resumed_ends_with_the_same_weights(box_model, box_data, tmp_path):  # fmt: skip
    """GRPO with an environment and tool calls, killed after step 5 and resumed:
    the same weights, every step logged once, and the trajectories used the tool."""
    common = [
        "grpo", "--model", str(box_model), "--data", str(box_data), "--steps", "6",
        "--batch-size", "2", "--group-size", "4", "--iterations", "2",
        "--max-completion-tokens", "64", "--temperature", "0.7",
        "--environment", "tool_helpers:make_box", "--reward", "tool_helpers:opened",
        "--save-every", "2", "--log-every", "1", "--max-length", "400",
        "--learning-rate", "5e-3", "--eval-every", "0",
    ]  # fmt: skip
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    cli([*common, "--out", str(straight)])
    assert cli([*common, "--out", str(killed)], kill_at=("step", 5)) == -signal.SIGKILL
    cli([*common, "--out", str(killed), "--resume"])
    assert_identical(straight, killed)
    assert steps_logged(killed) == steps_logged(straight)
    lines = [json.loads(x) for x in (straight / "metrics.jsonl").read_text().splitlines()]  # fmt: skip
    assert sum(x["tools/calls"] for x in lines) > 0
