"""`make capstone` at tiny sizes: every stage runs, every artifact is there,
REPORT.md holds every stage's row, the side-by-side answers, the served
answer and the curves. The stage *goals* are checked by the full-size run,
whose figures go to the closing note and the README, not by this test."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import matplotlib.image
import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "PRESET": "tiny",
    "SCALE": "0.05",
    "COPY_STEPS": "4",
    "PT_STEPS": "6",
    "SFT_STEPS": "4",
    "RM_STEPS": "4",
    "DPO_STEPS": "4",
    "GRPO_STEPS": "2",
    "GROUP_SIZE": "2",
    "TRAIN_FLAGS": "--no-compile",
}
STAGES = ("pt-copy", "pt", "sft", "rm", "dpo", "grpo")


@pytest.fixture(scope="module")
def capstone(tmp_path_factory) -> Path:
    if (
        shutil.which("make") is None
        or not (ROOT / ".venv" / "bin" / "mlx-align").exists()
    ):
        pytest.skip("needs make and the project's .venv (make test creates it)")
    out = tmp_path_factory.mktemp("capstone")
    settings = [f"{k}={v}" for k, v in {**TINY, "OUT": str(out)}.items()]
    result = subprocess.run(
        ["make", "-C", str(ROOT), "capstone", *settings],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MLX_ALIGN_CACHE": str(out / "cache")},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (out / "make.log").write_text(result.stdout)
    return out


def test_every_stage_leaves_its_artifacts(capstone):
    for model in (
        "base",
        "pt-copy/model",
        "pt/model",
        "sft-fused",
        "dpo-fused",
        "grpo-fused",
    ):
        assert (capstone / model / "config.json").exists(), model
    assert (capstone / "rm" / "reward_head.safetensors").exists()
    for stage in ("sft", "dpo", "grpo"):
        assert (capstone / stage / "adapters.safetensors").exists(), stage
    questions = (capstone / "data" / "grpo" / "test.jsonl").read_text().splitlines()
    for model in ("sft", "dpo", "grpo"):
        rows = (capstone / "eval" / f"{model}.jsonl").read_text().splitlines()
        assert len(rows) == len(questions) > 0
        assert all(isinstance(json.loads(r)["completion"], str) for r in rows)
    rerank = json.loads((capstone / "rerank" / "figures.json").read_text())
    assert rerank["prompts"] == len(questions) and rerank["k"] == 8
    assert {"hedged", "accuracy"} <= set(rerank["best_of_k"]) & set(
        rerank["single_sample"]
    )
    times = json.loads((capstone / "times.json").read_text())
    assert set(times) == set(STAGES) and all(t > 0 for t in times.values())


def test_the_served_model_answered_over_http(capstone):
    served = (capstone / "serve.txt").read_text()
    assert "Q: What is" in served and "\nA: " in served


def test_every_stage_has_curves_that_decode(capstone):
    for stage in STAGES:
        image = matplotlib.image.imread(capstone / stage / "metrics.png")
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
        assert image.std() > 0  # not a blank canvas


def test_report_has_every_stage_the_answers_and_the_curves(capstone):
    report = (capstone / "REPORT.md").read_text()
    for name in ("copy drill", "pretrain", "SFT", "reward model", "DPO", "GRPO"):
        assert f"| {name} |" in report, name
    assert "answer format followed:" in report
    assert "implicit-reward accuracy" in report and "hedged answers" in report
    assert "math accuracy" in report
    assert "## Best of 8 by DPO's implicit reward" in report
    questions = (capstone / "data" / "grpo" / "test.jsonl").read_text().splitlines()
    shown = min(3, len(questions))
    assert report.count("| sft | `") == report.count("| grpo | `") == shown == 3
    assert "Q: What is" in report
    for stage in STAGES:
        assert f"]({stage}/metrics.png)" in report, stage
    assert "Training stages:" in (capstone / "make.log").read_text()
