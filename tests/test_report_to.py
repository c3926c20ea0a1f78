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


@pytest.mark.parametrize("tracker", ["tensorboard", "wandb", "trackio"])
def test_a_tracker_that_is_not_installed_is_refused_before_loading(monkeypatch, tracker):  # fmt: skip
    monkeypatch.setitem(
        __import__("mlx_align.config.stages", fromlist=["x"]).REPORT_TARGETS,
        tracker,
        "no_such_module_for_the_test",
    )
    message = f'--report-to: {tracker} is not installed: pip install "mlx-align\\[{tracker}\\]"'  # fmt: skip
    with pytest.raises(UserError, match=message):
        build_config(SFTConfig, {"model": "m", "data": "d", "report_to": (tracker,)}, None)  # fmt: skip


def test_project_name_without_a_tracker_that_reads_it_is_refused():
    with pytest.raises(UserError, match="--project-name: names the project of --report-to wandb or trackio"):  # fmt: skip
        build_config(SFTConfig, {"model": "m", "data": "d", "report_to": ("tensorboard",), "project_name": "p"}, None)  # fmt: skip


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


# --- wandb (offline) and trackio (local store), through the CLI -----------------

WANDB_BLOCK, WANDB_HEADER = 32768, 7  # the LevelDB log format of run-*.wandb


def wandb_records(path):
    """The protobuf records of a wandb run file: 32 KiB blocks of (crc32, length,
    type) headed chunks after a 7-byte file header; types 1 full, 2-4 first/middle/last."""
    from wandb.proto import wandb_internal_pb2

    data, pos, pieces, records = path.read_bytes(), WANDB_HEADER, b"", []
    while pos + WANDB_HEADER <= len(data):
        room = WANDB_BLOCK - pos % WANDB_BLOCK
        if room < WANDB_HEADER:  # the block's tail is padding
            pos += room
            continue
        length = int.from_bytes(data[pos + 4 : pos + 6], "little")
        kind = data[pos + 6]
        pieces += data[pos + WANDB_HEADER : pos + WANDB_HEADER + length]
        pos += WANDB_HEADER + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            records.append(record)
            pieces = b""
    return records


def wandb_history(run_dir):
    """{step: {key: value}} over every offline run of ``run_dir`` (a resume adds one),
    and the config of the first."""
    history, config = {}, {}
    for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        for record in wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "history":
                items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}  # fmt: skip
                history.setdefault(items.pop("_step"), {}).update(items)
            elif kind == "run" and not config:
                config = {"_project": record.run.project, "_name": record.run.display_name}  # fmt: skip
                config |= {i.key: json.loads(i.value_json) for i in record.run.config.update}  # fmt: skip
    return history, config


@pytest.fixture(scope="module")
def tracked_grpo(tiny_model, tmp_path_factory):
    """GRPO through the CLI with --report-to wandb --report-to trackio: 2 steps,
    then resumed to 4 (a checkpoint at step 2)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from test_grpo import grpo_config

    from mlx_align.config.build import config_yaml

    root = tmp_path_factory.mktemp("trackers")
    env = {
        **os.environ,
        "WANDB_MODE": "offline",
        "TRACKIO_DIR": str(root / "trackio"),
        "PYTHONPATH": str(Path(__file__).parent),
    }
    mlx_align = Path(sys.executable).parent / "mlx-align"
    for steps, resume in ((2, []), (4, ["--resume"])):
        config = grpo_config(
            tiny_model, root, steps=steps, save_every=2, group_size=4,
            max_completion_tokens=4, compile=False, project_name="p",
            report_to=("wandb", "trackio"),
        )  # fmt: skip
        (root / "config.yaml").write_text(config_yaml(config))
        done = subprocess.run(
            [mlx_align, "grpo", "--config", root / "config.yaml", *resume],
            env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
    run = root / "run"
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return root, run, lines


def test_wandb_offline_run_holds_every_logged_metric_and_resumes_the_same_run(tracked_grpo):  # fmt: skip
    root, run, lines = tracked_grpo
    assert [line["step"] for line in lines] == [1, 2, 3, 4]
    run_id = (run / "wandb" / "run-id").read_text()
    files = sorted(run.glob("wandb/offline-run-*/run-*.wandb"))
    assert [f.name for f in files] == [f"run-{run_id}.wandb"] * 2  # resumed: same id
    history, config = wandb_history(run)
    for line in lines:
        for key, value in line.items():
            if key != "step":
                assert history[line["step"]][key] == pytest.approx(value, rel=1e-6), key  # fmt: skip
    assert config["_project"] == "p" and config["_name"] == "run"
    assert config["learning_rate"] == pytest.approx(2e-2) and config["steps"] == 2
    tables = sorted(s for s, items in history.items() if "completions/path" in items)
    assert tables == [1, 2, 3, 4]  # log_every 1: every rollout's samples
    assert history[1]["completions/_type"] == "table-file"
    table = json.loads((files[0].parent / "files" / history[1]["completions/path"]).read_text())  # fmt: skip
    assert table["columns"] == ["rollout", "prompt", "completion", "reward"]
    samples = [json.loads(s) for s in (run / "samples.jsonl").read_text().splitlines()]
    assert table["data"] == [list(s.values()) for s in samples if s["rollout"] == 0]
    # The resumed run kept the first part's samples and wrote each rollout once.
    assert [s["rollout"] for s in samples] == [r for r in range(4) for _ in range(4)]


def test_trackio_local_store_holds_every_logged_metric_in_one_resumed_run(tracked_grpo, monkeypatch):  # fmt: skip
    from trackio import sqlite_storage

    root, run, lines = tracked_grpo
    monkeypatch.setattr(sqlite_storage, "TRACKIO_DIR", root / "trackio")
    storage = sqlite_storage.SQLiteStorage
    assert storage.get_runs("p") == ["run"]  # --resume continued it
    logged: dict[int, dict] = {}
    for entry in storage.get_logs("p", "run"):
        logged.setdefault(entry["step"], {}).update(entry)
    for line in lines:
        for key, value in line.items():
            assert logged[line["step"]][key] == pytest.approx(value, rel=1e-6), key
    table = logged[1]["completions"]
    samples = [json.loads(s) for s in (run / "samples.jsonl").read_text().splitlines()]
    assert table["_value"] == [s for s in samples if s["rollout"] == 0]
    config = storage.get_run_config("p", "run")
    assert config["learning_rate"] == pytest.approx(2e-2) and config["group_size"] == 4
