"""`make capstone-tools`'s recipes: recipes/tool_data.py writes the calculator's
data beside make_data.py's, leaving every file of it as it was; its calling
demonstrations make the additions Problem.work makes and answer with the
last result; its GRPO prompts are the capstone's held-out questions, rendered
by qa-tools without tools to the capstone's prompt strings; and the make target
at tiny sizes leaves every artifact and REPORT.md's calculator section."""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlx_lm.tokenizer_utils import load as load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"


def _load(name: str):
    """recipes/ is a folder of scripts: import one from its file, its siblings found."""
    sys.path.insert(0, str(RECIPES))
    try:
        spec = importlib.util.spec_from_file_location(name, RECIPES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up here
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(RECIPES))


make_data, tool_data = _load("make_data"), _load("tool_data")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data")
    make_data.write_all(out, seed=0, scale=0.2)
    return out


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.jsonl"))}  # fmt: skip


def test_tool_data_adds_its_folder_and_changes_nothing_else(data):
    before = snapshot(data)
    counts = tool_data.write_tools(data, seed=0, scale=0.2)
    after = snapshot(data)
    assert {k: v for k, v in after.items() if not k.startswith("tools/")} == before
    assert counts["sft/train"] == 120 and counts["grpo/test"] == len(
        (data / "grpo" / "test.jsonl").read_text().splitlines()
    )
    again = data.parent / "again"
    shutil.copytree(data, again, ignore=shutil.ignore_patterns("tools"))
    tool_data.write_tools(again, seed=0, scale=0.2)
    assert snapshot(again) == after  # same seed, same bytes


def test_calling_demonstrations_add_as_the_worked_answers_do(data):
    """The same additions as the worked answer, in its order, the running total
    as ``a``; the answer is the last result."""
    tool_data.write_tools(data, seed=0, scale=0.2)
    rows = [json.loads(line) for line in (data / "tools" / "sft" / "train.jsonl").read_text().splitlines()]  # fmt: skip
    calling = [r for r in rows if len(r["completion"]) > 1]
    shown = [r for r in rows if "tools" in r]
    assert 0.3 < len(shown) / len(rows) < 0.7
    assert 0.25 < len(calling) / len(shown) < 0.55 and all(
        "tools" in r for r in calling
    )
    for row in calling:
        question = row["prompt"][0]["content"]
        terms = [int(t) for t in re.findall(r"\d+", question)]
        steps = make_data.Problem(tuple(terms)).work().split("\n")[0]
        made = []
        for turn, result in zip(row["completion"][0:-1:2], row["completion"][1::2], strict=True):  # fmt: skip
            arguments = turn["tool_calls"][0]["function"]["arguments"]
            assert result["content"] == str(arguments["a"] + arguments["b"])
            made.append(f"{arguments['b']} + {arguments['a']} = {result['content']}.")
        assert " ".join(made) == steps
        assert row["completion"][-1]["content"] == f"\n#### {sum(terms)}"


def test_tool_prompts_without_tools_are_the_capstones_prompts(data, tmp_path):
    from mlx_align.model.tiny import PRESETS, init_model

    tool_data.write_tools(data, seed=0, scale=0.2)
    texts = [json.loads(line)["text"] for line in (data / "pretrain" / "train.jsonl").read_text().splitlines()]  # fmt: skip
    model = init_model(tmp_path / "m", PRESETS["tiny"], texts, chat_template="qa-tools")  # fmt: skip
    tokenizer = load_tokenizer(model)
    for split in ("train", "valid", "test"):
        plain = (data / "grpo" / f"{split}.jsonl").read_text().splitlines()
        chat = (data / "tools" / "grpo" / f"{split}.jsonl").read_text().splitlines()
        for a, b in zip(map(json.loads, plain), map(json.loads, chat), strict=True):
            rendered = tokenizer.apply_chat_template(b["prompt"], tokenize=False, add_generation_prompt=True)  # fmt: skip
            assert (rendered, b["answer"]) == (a["prompt"], a["answer"])


TINY = {
    "PRESET": "tiny", "SCALE": "0.05", "COPY_STEPS": "4", "PT_STEPS": "6", "SFT_STEPS": "4",
    "RM_STEPS": "4", "DPO_STEPS": "4", "TOOLS_SFT_STEPS": "4", "TOOLS_GRPO_STEPS": "2",
    "GROUP_SIZE": "2", "TRAIN_FLAGS": "--no-compile",
}  # fmt: skip


def test_make_capstone_tools_leaves_its_models_evaluations_and_report(tmp_path):
    if shutil.which("make") is None or not (ROOT / ".venv" / "bin" / "mlx-align").exists():  # fmt: skip
        pytest.skip("needs make and the project's .venv (make test creates it)")
    settings = [f"{k}={v}" for k, v in {**TINY, "OUT": str(tmp_path)}.items()]
    result = subprocess.run(
        ["make", "-C", str(ROOT), "capstone-tools", *settings],
        capture_output=True, text=True, timeout=400,
        env={**os.environ, "MLX_ALIGN_CACHE": str(tmp_path / "cache")},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    tokenizer = load_tokenizer(tmp_path / "tools-base")
    assert tokenizer.has_tool_calling
    for model in ("tools-sft/model", "tools-grpo-fused"):
        assert (tmp_path / model / "config.json").exists(), model
    questions = (tmp_path / "data" / "tools" / "grpo" / "test.jsonl").read_text().splitlines()  # fmt: skip
    for name in ("tools-sft", "tools-grpo"):
        rows = [json.loads(r) for r in (tmp_path / "eval" / f"{name}.jsonl").read_text().splitlines()]  # fmt: skip
        assert len(rows) == len(questions) and all("turns" in r for r in rows)
        plain = (tmp_path / "eval" / f"{name}-plain.jsonl").read_text().splitlines()
        assert len(plain) == len(questions)
    times = json.loads((tmp_path / "times.json").read_text())
    assert {"tools-sft", "tools-grpo"} <= set(times)
    report = (tmp_path / "REPORT.md").read_text()
    assert "| SFT with a calculator |" in report and "| GRPO with a calculator |" in report  # fmt: skip
    assert "## A calculator (make capstone-tools)" in report
    assert report.count("<details>") == 1 and "**Without the tool**" in report
    for stage in ("tools-sft", "tools-grpo"):
        assert f"]({stage}/metrics.png)" in report, stage
