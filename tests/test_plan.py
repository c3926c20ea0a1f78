"""The memory planner: `mlx-align plan`, `--memory-limit`, and the footprint it reads."""

from __future__ import annotations

import mlx.core as mx
import pytest
import yaml
from conftest import write_jsonl

from mlx_align.cli import config_for, main
from mlx_align.core.sizes import is_size, parse_size
from mlx_align.model.adapters import attach_adapters
from mlx_align.model.footprint import footprint, lazy_model, nbytes
from mlx_align.model.load import load_model
from mlx_align.train.adapted import adapter_config
from mlx_align.train.memory_plan import SAMPLING, STEP, MemoryPlan

WORDS = "red green blue cat dog sat on the mat and a small big sky".split()


def long_text(n: int, salt: int) -> str:
    return " ".join(WORDS[(i * 5 + salt) % len(WORDS)] for i in range(n))


@pytest.fixture(scope="module")
def long_pairs(tmp_path_factory):
    """Pairs long enough that activations, not weights, set the tiny model's peak."""
    root = tmp_path_factory.mktemp("long_pairs")
    rows = [
        {
            "prompt": long_text(120, i),
            "chosen": long_text(30, i + 1),
            "rejected": long_text(30, i + 2),
        }  # fmt: skip
        for i in range(8)
    ]
    write_jsonl(root / "train.jsonl", rows)
    return root


@pytest.fixture(scope="module")
def long_prompts(tmp_path_factory):
    root = tmp_path_factory.mktemp("long_prompts")
    rows = [{"prompt": long_text(150, i), "answer": "7"} for i in range(8)]
    write_jsonl(root / "train.jsonl", rows)
    return root


@pytest.fixture(scope="module")
def long_sft(tmp_path_factory):
    root = tmp_path_factory.mktemp("long_sft")
    rows = [{"prompt": long_text(150, i), "completion": long_text(40, i + 1)} for i in range(8)]  # fmt: skip
    write_jsonl(root / "train.jsonl", rows)
    return root


def test_sizes_read_as_bytes():
    assert parse_size("16GB") == 16 * 10**9
    assert parse_size("1.5GiB") == int(1.5 * 2**30)
    assert parse_size("512m") == 512 * 10**6
    assert parse_size("1.5e10") == 15 * 10**9
    assert parse_size("none") == 0 and parse_size("0") == 0
    assert parse_size("auto") > 10**8  # the machine's memory
    assert parse_size("lots") is None and not is_size("16 apples")


def test_footprint_is_exactly_what_the_run_holds_and_reads_no_weight(tiny_model):
    mx.eval(mx.zeros(1))
    before = mx.get_active_memory()
    config = config_for("dpo", ["--model", str(tiny_model), "--data", "x", "--lora-rank", "4"])  # fmt: skip
    lazy, _ = lazy_model(str(tiny_model))
    planned = footprint(lazy, adapter_config(config))
    assert mx.get_active_memory() - before < 4096  # nothing was read

    model, _, _ = load_model(str(tiny_model))
    attach_adapters(model, adapter_config(config))
    trainable = nbytes(model.trainable_parameters())
    assert planned.trainable_bytes == trainable > 0
    assert planned.frozen_bytes == nbytes(model.parameters()) - trainable
    assert planned.layers == len(model.layers)


def peak_of(capsys) -> float:
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("peak memory: ") and lines[-1].endswith(" GB")
    return float(lines[-1].split()[2])


def measured_peak(argv: list[str]) -> float:
    """The peak an in-process run adds over what was live before it, GB."""
    mx.eval(mx.zeros(1))
    before = mx.get_active_memory()
    mx.reset_peak_memory()
    main(argv)
    return (mx.get_peak_memory() - before) / 1e9


def test_a_rollout_and_the_step_are_not_held_together():
    plan = MemoryPlan("grpo")
    plan.add("weights", 10.0)
    plan.add("activations", 5.0, phase=STEP)
    plan.add("attention buffers", 2.0, phase=STEP)
    plan.add("sampling caches", 4.0, phase=SAMPLING)
    assert plan.phase_peaks() == {STEP: 17.0, SAMPLING: 14.0}
    assert plan.peak == 17.0
    plan.add("fused sampling copy", 4.0, phase=SAMPLING)
    assert plan.peak == 18.0
    lines = plan.lines()
    assert lines[-1] == "peak memory: 1.8e-08 GB"
    assert any("[sampling]" in line and "fused" in line for line in lines)


SAMPLED = ["--max-completion-tokens", "16", "--reward", "math", "--max-length", "512"]


@pytest.mark.parametrize("case", ["dpo", "sft", "sft --grad-checkpoint", "grpo", "ppo"])  # fmt: skip
def test_plan_predicts_the_measured_peak(case, tiny_model, long_pairs, long_sft, long_prompts, tmp_path, capsys):  # fmt: skip
    stage, *extra = case.split()
    data = {"dpo": long_pairs, "sft": long_sft}.get(stage, long_prompts)
    flags = ["--model", str(tiny_model), "--data", str(data), "--batch-size", "4", *extra]  # fmt: skip
    flags += {
        "dpo": ["--max-length", "256", "--max-batch-tokens", "0"],
        "sft": ["--max-length", "256"],
        "grpo": [*SAMPLED, "--group-size", "4"],
        "ppo": SAMPLED,
    }[stage]
    main(["plan", stage, *flags])
    predicted = peak_of(capsys)
    run = ["--out", str(tmp_path / "run"), "--steps", "1", "--eval-every", "0", "--memory-limit", "none"]  # fmt: skip
    measured = measured_peak([stage, *flags, *run])
    assert abs(predicted - measured) <= 0.2 * measured, (predicted, measured)


def test_memory_limit_picks_a_token_budget_that_fits(tiny_model, long_pairs, tmp_path, capsys):  # fmt: skip
    flags = ["--model", str(tiny_model), "--data", str(long_pairs), "--batch-size", "4", "--max-length", "256"]  # fmt: skip
    main(["plan", "dpo", *flags, "--max-batch-tokens", "0"])
    whole = peak_of(capsys)
    limit = 0.7 * whole
    out = tmp_path / "run"
    run = ["--out", str(out), "--steps", "1", "--eval-every", "0", "--memory-limit", f"{limit}GB"]  # fmt: skip
    measured = measured_peak(["dpo", *flags, *run])
    said = capsys.readouterr().err
    assert "is over the" in said and "--max-batch-tokens" in said
    settings = yaml.safe_load((out / "config.yaml").read_text())
    assert 0 < settings["max_batch_tokens"] < 4 * 2 * 256
    assert measured <= limit


def test_memory_limit_checkpoints_sft_then_accumulates(tiny_model, long_sft, capsys):
    flags = ["--model", str(tiny_model), "--data", str(long_sft), "--batch-size", "4", "--max-length", "256"]  # fmt: skip
    main(["plan", "sft", *flags])
    whole = peak_of(capsys)
    main(["plan", "sft", *flags, "--grad-checkpoint"])
    checkpointed = peak_of(capsys)
    assert checkpointed < whole
    from mlx_align.apps.plan import fit_to_memory

    said = []
    config = config_for("sft", [*flags, "--memory-limit", f"{(checkpointed + whole) / 2}GB"])  # fmt: skip
    fitted = fit_to_memory("sft", config, said.append)
    assert fitted.grad_checkpoint and fitted.batch_size == 4
    config = config_for("sft", [*flags, "--memory-limit", f"{0.8 * checkpointed}GB"])
    fitted = fit_to_memory("sft", config, said.append)
    assert fitted.grad_checkpoint and fitted.batch_size * fitted.grad_accumulation == 4
    assert fitted.batch_size < 4


def test_a_run_that_cannot_fit_stops_before_loading(tiny_model, long_sft, tmp_path, capsys):  # fmt: skip
    argv = ["sft", "--model", str(tiny_model), "--data", str(long_sft), "--out", str(tmp_path / "r")]  # fmt: skip
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--memory-limit", "1MB"])
    err = capsys.readouterr().err
    assert stop.value.code == 2
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert (
        len(lines) == 1 and "--memory-limit" in lines[0] and "smallest plan" in lines[0]
    )
    assert "Traceback" not in err and "trainable parameters" not in err


def test_fuse_rollout_auto_fuses_only_where_the_copy_costs_no_peak(tiny_model, long_prompts, tmp_path):  # fmt: skip
    from mlx_align.apps.plan import fit_to_memory, plan_stage

    short = tmp_path / "short"
    write_jsonl(short / "train.jsonl", [{"prompt": "sum 1 2", "answer": "3"}] * 8)
    flags = ["--model", str(tiny_model), "--batch-size", "4", "--max-length", "512", "--reward", "math", "--memory-limit", "100GB"]  # fmt: skip
    cases = {  # long prompts: the step dwarfs sampling; 64 rows of 8 tokens: the caches win
        "on": [
            *flags,
            "--data",
            str(long_prompts),
            "--max-completion-tokens",
            "16",
            "--group-size",
            "4",
        ],  # fmt: skip
        "off": [
            *flags,
            "--data",
            str(short),
            "--max-completion-tokens",
            "8",
            "--group-size",
            "16",
        ],  # fmt: skip
    }
    for expected, argv in cases.items():
        said = []
        fitted = fit_to_memory("grpo", config_for("grpo", argv), said.append)
        assert fitted.fuse_rollout == expected
        assert any(f"--fuse-rollout auto: {expected}" in line for line in said)
        peaks = plan_stage("grpo", fitted).phase_peaks()
        assert (peaks[SAMPLING] <= peaks[STEP]) == (expected == "on")
