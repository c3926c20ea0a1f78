"""A run you can re-run: every training run writes R/config.yaml, every
setting with its default, that `--config R/config.yaml` replays to the same
weights; `--print-config` prints it and runs nothing."""

import dataclasses

import mlx.core as mx
import pytest
import yaml

from mlx_align.cli import main
from mlx_align.config.stages import DPOConfig, SFTConfig


def sft_argv(model, data, out) -> list[str]:
    return [
        "sft", "--model", str(model), "--data", str(data), "--out", str(out),
        "--steps", "3", "--batch-size", "2", "--learning-rate", "1e-3",
        "--lora-rank", "4", "--save-every", "0", "--no-compile", "--max-length", "64",
    ]  # fmt: skip


def test_print_config_prints_every_setting_and_runs_nothing(tiny_model, sft_dir, tmp_path, capsys):  # fmt: skip
    out = tmp_path / "never"
    main([*sft_argv(tiny_model, sft_dir, out), "--print-config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert list(printed) == [f.name for f in dataclasses.fields(SFTConfig)]
    assert printed["steps"] == 3 and printed["learning_rate"] == 1e-3
    assert printed["warmup_steps"] == SFTConfig.warmup_steps  # a default, written out
    assert not out.exists()


def test_a_run_replays_from_its_config_yaml_to_the_same_weights(tiny_model, sft_dir, tmp_path):  # fmt: skip
    first, again = tmp_path / "first", tmp_path / "again"
    main(sft_argv(tiny_model, sft_dir, first))
    written = yaml.safe_load((first / "config.yaml").read_text())
    assert written["out"] == str(first) and written["resume"] is False
    main(["sft", "--config", str(first / "config.yaml"), "--out", str(again)])
    a, b = (mx.load(str(r / "adapters.safetensors")) for r in (first, again))
    assert a.keys() == b.keys()
    assert max(mx.abs(v).max().item() for k, v in a.items() if "lora_b" in k) > 0
    for name in a:
        assert mx.array_equal(a[name], b[name]).item(), name


def test_repeated_and_list_settings_round_trip(tmp_path, capsys):
    """A DPO config with several losses prints them as a list and reads back equal."""
    argv = ["dpo", "--model", "m", "--data", "d", "--loss", "sigmoid", "--loss", "sft",
            "--loss-weights", "1.0,0.5", "--print-config"]  # fmt: skip
    main(argv)
    path = tmp_path / "dpo.yaml"
    path.write_text(capsys.readouterr().out)
    from mlx_align.config.build import build_config

    config = build_config(DPOConfig, {}, str(path))
    assert config.loss == ("sigmoid", "sft") and config.loss_weights == "1.0,0.5"
    assert config == build_config(DPOConfig, {"model": "m", "data": "d", "loss": ("sigmoid", "sft"), "loss_weights": "1.0,0.5"}, None)  # fmt: skip


@pytest.mark.parametrize("stage", ["grpo", "rloo", "cpo", "kto", "ppo", "online-dpo"])
def test_every_stage_prints_a_config_that_builds_again(stage, tmp_path, capsys):
    main([stage, "--model", "m", "--data", "d", "--reward", "math", "--print-config"]
         if stage in ("grpo", "rloo", "ppo", "online-dpo")
         else [stage, "--model", "m", "--data", "d", "--print-config"])  # fmt: skip
    path = tmp_path / "c.yaml"
    path.write_text(capsys.readouterr().out)
    main([stage, "--config", str(path), "--print-config"])
    assert yaml.safe_load(capsys.readouterr().out) == yaml.safe_load(path.read_text())
