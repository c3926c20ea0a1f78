"""Experiment trackers beside ``metrics.jsonl``: ``--report-to`` (TRL's and mlx-lm's flag).

Each tracker gets every logged metric under its ``metrics.jsonl`` key, at
its step; the run's settings as its hyperparameters; and the completions a
rollout writes to ``samples.jsonl`` (GRPO, RLOO, PPO, online DPO) as a table
named ``completions``, at the step that sampled them. Rank 0 alone reports.

- ``tensorboard``: event files in ``R/tensorboard/`` through TensorBoard's own
  event-file writer and summary protos (no TensorFlow, no torch); the
  settings as a text table (``config``).
- ``wandb``: a run in ``R/wandb/`` (``WANDB_MODE=offline`` keeps it local),
  named after ``R`` as mlx-lm names it; ``--resume`` continues the same run
  (its id is kept in ``R/wandb/run-id``).
- ``trackio``: a run in trackio's local store (``TRACKIO_DIR``, by default
  ``~/.cache/huggingface/trackio``) named after ``R``; ``--resume`` continues it.

``--project-name`` is the project of wandb and trackio (mlx-lm's flag; by
default ``WANDB_PROJECT`` / ``TRACKIO_PROJECT``, else ``mlx-align``). A tracker
is an optional extra (``pip install "mlx-align[wandb]"``); asking for one
that is not installed is refused before anything loads (``config/checks.py``;
the choices are ``config.stages.REPORT_TARGETS``).
"""

from __future__ import annotations

import math
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol


class Reporter(Protocol):
    def log(self, step: int, record: dict[str, Any]) -> None: ...

    def samples(self, step: int, rows: list[dict[str, Any]]) -> None: ...

    def close(self) -> None: ...


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """``rows`` (one dict each, the first's keys as columns) as a markdown table."""
    columns = list(rows[0]) if rows else []

    def cell(value: Any) -> str:
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|").replace("\n", "<br>")

    head = f"| {' | '.join(columns)} |\n|{'---|' * len(columns)}\n"
    return head + "".join(
        f"| {' | '.join(cell(r[c]) for c in columns)} |\n" for r in rows
    )


class TensorBoardReport:
    """Scalars and the config as TensorBoard event files in ``out/tensorboard``
    (a resumed run adds a file beside the first's)."""

    def __init__(self, out: Path, config: dict[str, Any], project: str = "", resumed: bool = False) -> None:  # fmt: skip
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self.writer = EventFileWriter(str(out / "tensorboard"))
        settings = [{"setting": k, "value": v} for k, v in config.items()]
        self.text("config", 0, markdown_table(settings))

    def _event(self, tag: str, step: int, plugin: str, tensor) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2

        data = summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin)
        value = summary_pb2.Summary.Value(
            tag=tag,
            tensor=tensor,
            metadata=summary_pb2.SummaryMetadata(plugin_data=data),
        )
        summary = summary_pb2.Summary(value=[value])
        self.writer.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))  # fmt: skip

    def log(self, step: int, record: dict[str, Any]) -> None:
        """Every finite number of ``record`` as a scalar at ``step``."""
        from tensorboard.compat.proto import tensor_pb2, tensor_shape_pb2, types_pb2

        for tag, value in numbers(record).items():
            tensor = tensor_pb2.TensorProto(
                dtype=types_pb2.DT_FLOAT,
                float_val=[value],
                tensor_shape=tensor_shape_pb2.TensorShapeProto(),
            )
            self._event(tag, step, "scalars", tensor)
        self.writer.flush()

    def text(self, tag: str, step: int, markdown: str) -> None:
        """A markdown text at ``step`` (TensorBoard's text tab)."""
        from tensorboard.compat.proto import tensor_pb2, tensor_shape_pb2, types_pb2

        tensor = tensor_pb2.TensorProto(
            dtype=types_pb2.DT_STRING,
            string_val=[markdown.encode()],
            tensor_shape=tensor_shape_pb2.TensorShapeProto(),
        )
        self._event(tag, step, "text", tensor)
        self.writer.flush()

    def samples(self, step: int, rows: list[dict[str, Any]]) -> None:
        """Sampled completions (GRPO, RLOO, PPO) as a text table at ``step``."""
        self.text("completions", step, markdown_table(rows))

    def close(self) -> None:
        self.writer.close()


def numbers(record: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of ``record`` (what a tracker plots)."""
    return {
        k: float(v)
        for k, v in record.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }


def project_of(project_name: str, variable: str) -> str:
    return project_name or os.environ.get(variable) or "mlx-align"


class LibraryReport:
    """A tracker whose library logs dicts to a run and has a ``Table`` (wandb's
    API, which trackio copies): ``module`` the library, ``run`` the run."""

    module: Any
    run: Any

    def log(self, step: int, record: dict[str, Any]) -> None:
        self.run.log(numbers(record), step=step)

    def samples(self, step: int, rows: list[dict[str, Any]]) -> None:
        columns = list(rows[0]) if rows else []
        table = self.module.Table(columns=columns, data=[[r[c] for c in columns] for r in rows])  # fmt: skip
        self.run.log({"completions": table}, step=step)

    def close(self) -> None:
        self.run.finish()


class WandbReport(LibraryReport):
    """A wandb run in ``out/wandb``; resuming continues the run whose id it kept."""

    def __init__(self, out: Path, config: dict[str, Any], project: str, resumed: bool) -> None:  # fmt: skip
        import wandb

        directory = out / "wandb"
        directory.mkdir(parents=True, exist_ok=True)
        id_file = directory / "run-id"
        if resumed and id_file.exists():
            run_id = id_file.read_text().strip()
        else:
            run_id = secrets.token_hex(4)  # wandb ids: 8 lowercase letters or digits
            id_file.write_text(run_id)
        self.module = wandb
        self.run = wandb.init(  # mlx-lm's name and directory for the run
            project=project_of(project, "WANDB_PROJECT"),
            name=out.name,
            dir=str(out),
            id=run_id,
            resume="allow",
            config=config,
        )


class TrackioReport(LibraryReport):
    """A run in trackio's local store, named after ``out``."""

    def __init__(self, out: Path, config: dict[str, Any], project: str, resumed: bool) -> None:  # fmt: skip
        import trackio

        self.module = trackio
        self.run = trackio.init(
            project=project_of(project, "TRACKIO_PROJECT"),
            name=out.name,
            config=config,
            resume="allow" if resumed else "never",
            embed=False,
        )


TRACKERS = {"tensorboard": TensorBoardReport, "wandb": WandbReport, "trackio": TrackioReport}  # fmt: skip


def open_reporters(
    names: tuple[str, ...],
    out: Path,
    config: dict[str, Any],
    project: str = "",
    resumed: bool = False,
) -> list[Reporter]:
    """The trackers ``--report-to`` names, for the run in ``out``."""
    return [TRACKERS[n](out, config, project, resumed) for n in names if n in TRACKERS]


def samples_to(reporters: list, start: int) -> Callable[[str, dict], None]:
    """A listener handing the ``samples`` a rollout emits to the trackers, at
    the step being trained (the one after the last ``step`` event)."""
    done = [start]

    def listen(event: str, fields: dict) -> None:
        if event == "step":
            done[0] = fields["step"]
        elif event == "samples":
            for reporter in reporters:
                reporter.samples(done[0] + 1, fields["rows"])

    return listen
