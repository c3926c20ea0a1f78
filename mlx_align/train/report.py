"""Experiment trackers beside ``metrics.jsonl``: ``--report-to`` (TRL's and mlx-lm's flag).

``tensorboard`` writes event files to ``R/tensorboard/`` with TensorBoard's
own event-file writer and summary protos (no TensorFlow, no torch): every
logged metric as a scalar under its ``metrics.jsonl`` key, at its step, the
run's settings once as a text table (``config``), and the completions a
rollout writes to ``samples.jsonl`` as a table (``completions``). Rank 0 alone reports.
A tracker is an optional extra (``pip install "mlx-align[tensorboard]"``);
asking for one that is not installed is refused before anything loads
(``config/checks.py``; the choices are ``config.stages.REPORT_TARGETS``).
"""

from __future__ import annotations

import math
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
    """Scalars and the config as TensorBoard event files in ``directory``."""

    def __init__(self, directory: Path, config: dict[str, Any]) -> None:
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self.writer = EventFileWriter(str(directory))
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

        for tag, value in record.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if not math.isfinite(value):
                continue
            tensor = tensor_pb2.TensorProto(
                dtype=types_pb2.DT_FLOAT,
                float_val=[float(value)],
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


def open_reporters(
    names: tuple[str, ...], out: Path, config: dict[str, Any]
) -> list[Reporter]:
    """The trackers ``--report-to`` names, writing under ``out``."""
    reporters: list[Reporter] = []
    if "tensorboard" in names:
        reporters.append(TensorBoardReport(out / "tensorboard", config))
    return reporters


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
