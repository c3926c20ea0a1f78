"""Data parallel: two ranks under ``mlx.launch -n 2 --backend ring`` with
micro-batch b each train like one process with batch 2b (SFT, DPO)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import pytest
from conftest import write_jsonl

BIN = Path(sys.executable).parent
LAUNCH = BIN / "mlx.launch"
ALIGN = BIN / "mlx-align"

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.skipif(
        not LAUNCH.exists() or shutil.which("g++") is None,
        reason="needs mlx.launch (mlx's ring backend)",
    ),
]


def run(cmd: list[str], ranks: int, cwd: Path) -> str:
    """``cmd`` under ``mlx.launch -n ranks --backend ring``, or alone for 1 rank."""
    if ranks > 1:
        cmd = [str(LAUNCH), "-n", str(ranks), "--backend", "ring", *cmd]
    tests = str(Path(__file__).parent)  # tool_helpers:... for --environment
    env = {**os.environ, "MLX_ALIGN_NO_OPENBLAS": "1", "PYTHONPATH": tests}
    done = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def common_flags(model: Path, data: Path, out: Path, batch_size: int) -> list[str]:
    return [
        "--model", str(model), "--data", str(data), "--out", str(out),
        "--steps", "5", "--batch-size", str(batch_size), "--learning-rate", "1e-2",
        "--warmup-steps", "0", "--log-every", "1", "--eval-every", "0",
        "--save-every", "0", "--lora-rank", "4", "--lora-alpha", "8",
        "--lora-dropout", "0", "--max-length", "64",
    ]  # fmt: skip


def assert_same_adapters(a: Path, b: Path) -> None:
    one, two = (mx.load(str(p / "adapters.safetensors")) for p in (a, b))
    assert one.keys() == two.keys()
    moved = max(mx.abs(v).max().item() for k, v in one.items() if "lora_b" in k)
    assert moved > 1e-3  # the runs trained
    for name in one:
        assert mx.allclose(one[name], two[name], atol=1e-5, rtol=0).item(), name


def metrics(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory) -> Path:
    """Six examples of varied lengths: batches of 4 (2 x 2) and a short last one."""
    root = tmp_path_factory.mktemp("dist_sft")
    rows = [
        {"prompt": f"Question: What is {a} + {b}?\nAnswer:", "completion": f" {a + b}."}
        for a, b in [(1, 2), (3, 4), (10, 20), (5, 5), (7, 11), (2, 2)]
    ]
    write_jsonl(root / "train.jsonl", rows)
    return root


def test_two_ranks_train_sft_like_one_process_of_twice_the_batch(
    tiny_model, sft_data, tmp_path
):
    one, two = tmp_path / "one", tmp_path / "two"
    run([str(ALIGN), "sft", *common_flags(tiny_model, sft_data, one, 4)], 1, tmp_path)
    log = run(
        [str(ALIGN), "sft", *common_flags(tiny_model, sft_data, two, 2)], 2, tmp_path
    )
    assert "2 ranks" in log
    assert_same_adapters(one, two)
    for a, b in zip(metrics(one), metrics(two), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["tokens"] == b["tokens"]  # global tokens, every rank's


def test_two_ranks_train_dpo_like_one_process_of_twice_the_batch(
    tiny_model, tmp_path, monkeypatch
):
    data = tmp_path / "pairs"
    rows = [
        {
            "prompt": f"Question: What about the {w}?\nAnswer:",
            "chosen": " It is good.",
            "rejected": " It is bad, sadly." if i % 2 else " Bad.",
        }
        for i, w in enumerate("apple river stone cloud tiger piano".split())
    ]
    write_jsonl(data / "train.jsonl", rows)
    write_jsonl(data / "valid.jsonl", rows[:3])
    monkeypatch.setenv("MLX_ALIGN_CACHE", str(tmp_path / "cache"))
    one, two = tmp_path / "one", tmp_path / "two"
    flags = ["--beta", "0.5", "--eval-every", "5"]
    run(
        [str(ALIGN), "dpo", *common_flags(tiny_model, data, one, 4), *flags],
        1,
        tmp_path,
    )
    run(
        [str(ALIGN), "dpo", *common_flags(tiny_model, data, two, 2), *flags],
        2,
        tmp_path,
    )
    assert_same_adapters(one, two)
    a, b = metrics(one), metrics(two)
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        for key in ("loss", "rewards/accuracies", "val_loss", "val_rewards/margins"):
            if key in x:
                assert x[key] == pytest.approx(y[key], abs=1e-5), key


def test_kto_and_grpo_run_on_two_ranks_and_only_rank_0_writes(tiny_model, tmp_path):
    """Five prompts on two ranks of one: the last global batch is topped up for
    GRPO (no filler rows), and KTO's last share is filler; rank 0 alone writes."""
    prompts = [f"Question: What is {a} + {b}?\nAnswer:" for a, b in [(1, 2), (3, 4), (2, 2), (5, 1), (6, 2)]]  # fmt: skip
    grpo, kto = tmp_path / "grpo_data", tmp_path / "kto_data"
    write_jsonl(grpo / "train.jsonl", [{"prompt": p, "answer": "3"} for p in prompts])
    write_jsonl(
        kto / "train.jsonl",
        [{"prompt": p, "completion": " 3.", "label": i % 2 == 0} for i, p in enumerate(prompts)],
    )  # fmt: skip
    common = ["--model", str(tiny_model), "--steps", "3", "--log-every", "1", "--save-every", "2", "--max-length", "64"]  # fmt: skip
    run([str(ALIGN), "grpo", *common, "--data", str(grpo), "--out", str(tmp_path / "g"), "--batch-size", "1", "--group-size", "4", "--max-completion-tokens", "6", "--scale-rewards", "batch"], 2, tmp_path)  # fmt: skip
    run([str(ALIGN), "kto", *common, "--data", str(kto), "--out", str(tmp_path / "k"), "--batch-size", "2"], 2, tmp_path)  # fmt: skip
    for name in ("g", "k"):
        out = tmp_path / name
        lines = metrics(out)
        assert [m["step"] for m in lines] == [1, 2, 3]  # one writer: no line twice
        assert (out / "adapters.safetensors").exists()
        assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_0000002"]
    rows = (tmp_path / "g" / "samples.jsonl").read_text().splitlines()
    assert len(rows) == 3 * 2  # rank 0's prompt, two completions, each step


def test_multi_turn_grpo_runs_on_two_ranks(box_model, box_data, tmp_path):
    """GRPO with an environment on two ranks: each samples its own trajectories
    and calls its own tools; rank 0 alone writes, every step once."""
    out = tmp_path / "tools"
    flags = [
        "--model", str(box_model), "--data", str(box_data), "--out", str(out),
        "--steps", "3", "--batch-size", "1", "--group-size", "4", "--log-every", "1",
        "--save-every", "0", "--max-completion-tokens", "64", "--max-length", "400",
        "--environment", "tool_helpers:make_box", "--reward", "tool_helpers:opened",
        "--temperature", "0.7", "--eval-every", "0",
    ]  # fmt: skip
    run([str(ALIGN), "grpo", *flags], 2, tmp_path)
    lines = metrics(out)
    assert [m["step"] for m in lines] == [1, 2, 3]
    assert sum(m["tools/calls"] for m in lines) > 0 and (out / "adapters.safetensors").exists()  # fmt: skip
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3 * 2  # rank 0's prompt, two trajectories, each step
    assert all(s["completion"][0]["role"] == "assistant" for s in samples)


def test_the_other_trainers_run_on_two_ranks(tiny_model, tmp_path):
    """Pretrain, ORPO, reward, online DPO and PPO under two ranks: each ends,
    rank 0 alone logs each step."""
    prompts = [{"prompt": f"Question: What is {a} + {b}?\nAnswer:", "answer": str(a + b)} for a, b in [(1, 2), (3, 4), (2, 2), (5, 1)]]  # fmt: skip
    write_jsonl(tmp_path / "prompts" / "train.jsonl", prompts)
    texts = [{"text": f"The sum of {a} and {b} is {a + b}."} for a in range(4) for b in range(3)]  # fmt: skip
    write_jsonl(tmp_path / "text" / "train.jsonl", texts)
    common = ["--model", str(tiny_model), "--steps", "2", "--log-every", "1", "--save-every", "0", "--max-length", "64"]  # fmt: skip
    pairs = [{"prompt": p["prompt"], "chosen": f" {p['answer']}.", "rejected": " No."} for p in prompts]  # fmt: skip
    write_jsonl(tmp_path / "pairs" / "train.jsonl", pairs)
    sampled = ["--reward", "math", "--max-completion-tokens", "6", "--batch-size", "1"]
    runs = {
        "pretrain": ["--data", str(tmp_path / "text"), "--batch-size", "2"],
        "orpo": ["--data", str(tmp_path / "pairs"), "--batch-size", "1"],
        "reward": ["--data", str(tmp_path / "pairs"), "--batch-size", "1"],
        "online-dpo": ["--data", str(tmp_path / "prompts"), *sampled],
        "ppo": ["--data", str(tmp_path / "prompts"), *sampled],
    }
    for stage, flags in runs.items():
        out = tmp_path / stage
        run([str(ALIGN), stage, *common, *flags, "--out", str(out)], 2, tmp_path)
        assert [m["step"] for m in metrics(out)] == [1, 2], stage
