"""--report-to tensorboard: the same metrics as metrics.jsonl, read back with
TensorBoard's own reader, and the run's config; a tracker that is not
installed is one line naming its extra, before anything loads."""

import json

import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from mlx_align.config.build import build_config
from mlx_align.config.stages import SFTConfig
from mlx_align.core.errors import UserError
from mlx_align.stages.sft import run_sft


def test_tensorboard_event_files_hold_every_logged_metric(tiny_model, sft_dir, tmp_path):  # fmt: skip
    out = tmp_path / "run"
    config = SFTConfig(
        model=str(tiny_model), data=str(sft_dir), out=str(out), steps=4,
        batch_size=2, log_every=2, eval_every=2, save_every=0, compile=False,
        lora_rank=4, max_length=64, report_to=("tensorboard",),
    )  # fmt: skip
    run_sft(config)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    reader = event_accumulator.EventAccumulator(
        str(out / "tensorboard"), size_guidance={event_accumulator.TENSORS: 0}
    )
    reader.Reload()
    tags = set(reader.Tags()["tensors"])
    for line in lines:
        for key, value in line.items():
            if key == "step":
                continue
            assert key in tags, key
            logged = {e.step: float(tensor_util.make_ndarray(e.tensor_proto)) for e in reader.Tensors(key)}  # fmt: skip
            assert logged[line["step"]] == pytest.approx(value, rel=1e-6), key
    assert {"loss", "val_loss", "learning_rate"} <= tags
    assert reader.SummaryMetadata("loss").plugin_data.plugin_name == "scalars"
    table = tensor_util.make_ndarray(reader.Tensors("config")[0].tensor_proto).item()
    assert b"| learning_rate |" in table and b"| steps | 4 |" in table


def test_a_tracker_that_is_not_installed_is_refused_before_loading(monkeypatch):
    monkeypatch.setitem(
        __import__("mlx_align.config.stages", fromlist=["x"]).REPORT_TARGETS,
        "tensorboard",
        "no_such_module_for_the_test",
    )
    with pytest.raises(UserError, match='--report-to: tensorboard is not installed: pip install "mlx-align\\[tensorboard\\]"'):  # fmt: skip
        build_config(SFTConfig, {"model": "m", "data": "d", "report_to": ("tensorboard",)}, None)  # fmt: skip


def test_grpo_reports_its_sampled_completions_as_a_table(tiny_model, tmp_path):
    """The completions GRPO writes to samples.jsonl are a table in TensorBoard's
    text tab too (TRL logs one), at the step that sampled them."""
    from test_grpo import grpo_config

    from mlx_align.stages.grpo import run_grpo

    run_grpo(grpo_config(tiny_model, tmp_path, steps=2, report_to=("tensorboard",)))
    reader = event_accumulator.EventAccumulator(
        str(tmp_path / "run" / "tensorboard"),
        size_guidance={event_accumulator.TENSORS: 0},
    )
    reader.Reload()
    tables = reader.Tensors("completions")
    assert [e.step for e in tables] == [1, 2]  # log_every 1: every rollout
    table = tensor_util.make_ndarray(tables[0].tensor_proto).item().decode()
    assert table.startswith("| rollout | prompt | completion | reward |")
    samples = (tmp_path / "run" / "samples.jsonl").read_text().splitlines()
    assert table.count("\n") == 2 + sum(json.loads(s)["rollout"] == 0 for s in samples)
