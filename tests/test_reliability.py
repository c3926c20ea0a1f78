"""A run stops cleanly: a non-finite loss names its step, a checkpoint that
cannot be written leaves the previous one intact, an unwritable --out fails
before anything loads."""

import errno

import mlx.core as mx
import pytest
from test_sft import sft_config

from mlx_align.cli import main
from mlx_align.core.errors import RunError
from mlx_align.stages import sft
from mlx_align.stages.sft import run_sft
from mlx_align.train.checkpoint import latest_checkpoint


def flags(model, data, out, **extra) -> list[str]:
    settings = {
        "steps": 6,
        "save-every": 2,
        "log-every": 1,
        "no-compile": None,
        **extra,
    }
    args = ["--model", str(model), "--data", str(data), "--out", str(out)]
    for key, value in settings.items():
        args += [f"--{key}"] if value is None else [f"--{key}", str(value)]
    return args


def test_a_nan_loss_stops_the_run_at_its_step_and_the_checkpoint_resumes(
    tiny_model, sft_dir, tmp_path, monkeypatch, capsys
):
    real, calls = sft.completion_nll_loss, []

    def nan_at_step_3(model, batch):
        calls.append(1)
        loss, n, metrics = real(model, batch)
        return (loss * mx.nan if len(calls) == 3 else loss), n, metrics

    monkeypatch.setattr(sft, "completion_nll_loss", nan_at_step_3)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:
        main(["sft", *flags(tiny_model, sft_dir, out, **{"eval-every": 0})])
    assert stop.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("stopped: step 3: the loss is nan")
    assert "Traceback" not in "\n".join(err)
    assert latest_checkpoint(out).name == "step_0000002"  # step 3 never written
    monkeypatch.setattr(sft, "completion_nll_loss", real)
    config = sft_config(tiny_model, sft_dir, out, steps=6, save_every=2, resume=True)
    run_sft(config)  # the last good checkpoint loads and the run finishes
    assert latest_checkpoint(out).name == "step_0000006"


def test_a_checkpoint_that_cannot_be_written_leaves_the_previous_one(
    tiny_model, sft_dir, tmp_path, monkeypatch
):
    real = mx.save_safetensors

    def disk_full_at_step_4(path, *args, **kwargs):
        if "step_0000004" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(mx, "save_safetensors", disk_full_at_step_4)
    out = tmp_path / "run"
    with pytest.raises(
        RunError, match="step 4: checkpoint not written .*step_0000002 is intact"
    ):
        run_sft(sft_config(tiny_model, sft_dir, out, steps=6, save_every=2))
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["step_0000002"]  # no half-written step 4 left behind
    monkeypatch.setattr(mx, "save_safetensors", real)
    run_sft(sft_config(tiny_model, sft_dir, out, steps=6, save_every=2, resume=True))
    assert latest_checkpoint(out).name == "step_0000006"


def test_an_unwritable_out_fails_before_the_model_loads(sft_dir, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(SystemExit) as stop:
        main(["sft", *flags(tmp_path / "no-such-model", sft_dir, blocker / "run")])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: --out: cannot write to {blocker / 'run'}")
