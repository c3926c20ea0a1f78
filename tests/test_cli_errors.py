"""Bad input gives one line `path:line: what is wrong` and exit code 2, no traceback."""

import os
import subprocess
import sys

import pytest

from mlx_align.cli import main


def run_cli(argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code, capsys.readouterr().err


CASES = {
    "missing_field": (
        '{"prompt": "Q:", "completion": " A."}\n{"prompt": "Q:"}\n',
        ":2: missing field 'completion'",
    ),
    "invalid_json": ('{"text": "ok"}\n{"text": oops}\n', ":2: invalid JSON"),
    "empty_file": ("", ": empty file"),
    "wrong_type": (
        '{"prompt": "Q:", "completion": 42}\n',
        ":1: field 'completion' must be a string, got int",
    ),
    "not_an_object": ('["a", "b"]\n', ":1: expected a JSON object, got list"),
    "no_known_fields": (
        '{"question": "Q"}\n',
        ":1: expected 'text', 'prompt' + 'completion', or 'messages'",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_sft_data_reports_path_line_and_exits_2(case, tiny_model, tmp_path, capsys):
    content, expected = CASES[case]
    (tmp_path / "train.jsonl").write_text(content)
    code, err = run_cli(
        [
            "sft",
            "--model",
            str(tiny_model),
            "--data",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert code == 2
    lines = [
        line for line in err.splitlines() if not line.startswith("mlx-align: BLAS")
    ]
    assert lines == [f"error: {tmp_path / 'train.jsonl'}{expected}"] or (
        len(lines) == 1
        and expected in lines[0]
        and str(tmp_path / "train.jsonl") in lines[0]
    )


def test_missing_train_file_names_the_file(tiny_model, tmp_path, capsys):
    code, err = run_cli(
        ["pretrain", "--model", str(tiny_model), "--data", str(tmp_path)], capsys
    )
    assert code == 2
    assert f"{tmp_path / 'train.jsonl'}: no train data: file not found" in err


def test_bad_config_file_and_missing_flag(tmp_path, capsys):
    bad = tmp_path / "c.yaml"
    bad.write_text("steps: 3\nno_such_setting: 1\n")
    code, err = run_cli(
        ["sft", "--config", str(bad), "--model", "m", "--data", "d"], capsys
    )
    assert code == 2 and "unknown setting 'no_such_setting'" in err
    code, err = run_cli(["sft", "--data", "d"], capsys)
    assert code == 2 and "missing required setting --model" in err


def test_console_script_prints_no_traceback(tmp_path):
    (tmp_path / "train.jsonl").write_text('{"text": 1}\n')
    env = {**os.environ, "MLX_ALIGN_NO_OPENBLAS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from mlx_align.cli import main; main()",
            "pretrain",
            "--model",
            "m",
            "--data",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")


def test_every_command_has_help_with_an_example(capsys):
    from mlx_align.cli import cli

    assert {"plot", "grpo", "fuse"} <= set(cli.commands)
    for command in cli.commands:  # every registered command, none missed by hand
        main([command, "--help"])
        out = capsys.readouterr().out
        assert "Example" in out and "mlx-align " + command in out, command


def test_enumerated_settings_are_refused_before_anything_loads(tmp_path, capsys):
    """Flags through click, config-file values through build_config: one line,
    exit code 2, and no model or data is touched (neither exists here)."""
    code, err = run_cli(
        ["init-model", "--corpus", str(tmp_path), "--preset", "huge"], capsys
    )
    assert code == 2 and "'huge' is not one of 'tiny', 'small', 'base'" in err
    config = tmp_path / "dpo.yaml"
    config.write_text("loss: foo\n")
    argv = ["dpo", "--config", str(config), "--model", "m", "--data", "d"]
    code, err = run_cli(argv, capsys)
    assert code == 2
    assert f"{config}: loss: 'foo' is not one of sigmoid, hinge, ipo, exo_pair" in err
    assert "Traceback" not in err
