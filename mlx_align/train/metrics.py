"""Training metrics: running sums between log lines, one JSONL line per logged step."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import mlx.core as mx

from mlx_align.data.jsonl import keep_lines
from mlx_align.train.report import Reporter


class MetricsLog:
    """Collects per-step numbers and writes ``{"step": ..., ...}`` lines to ``path``."""

    def __init__(
        self,
        path: Path,
        resume_from: int = 0,
        writes: bool = True,
        reporters: Sequence[Reporter] = (),
    ) -> None:
        """``writes`` False (ranks other than 0): the same records, no file.
        Each written record also goes to ``reporters`` (``--report-to``)."""
        self.path, self.writes, self.reporters = path, writes, reporters
        if not writes:
            pass
        elif resume_from == 0:
            path.unlink(missing_ok=True)
        else:  # drop lines from steps the resumed run will redo
            keep_lines(path, lambda record: record.get("step", 0) <= resume_from)
        self._reset()
        self.latest: dict[str, float] = {}

    def _reset(self) -> None:
        self.seconds = self.n_tokens = self.loss_sum = 0.0
        self.steps = 0
        self.metric_sums: dict[str, float] = {}

    def add(
        self, seconds: float, n_tokens: float, loss: float, metrics: dict[str, float]
    ) -> None:
        self.seconds += seconds
        self.n_tokens += n_tokens
        self.loss_sum += loss
        self.steps += 1
        for name, value in metrics.items():
            self.metric_sums[name] = self.metric_sums.get(name, 0.0) + value
        self.latest = {"loss": loss, "tokens_per_sec": n_tokens / max(seconds, 1e-9)}

    def flush(self, **extra: float) -> dict[str, float]:
        """Means since the last flush, plus throughput and peak memory."""
        n = max(self.steps, 1)
        record = {
            "loss": self.loss_sum / n,
            **{k: v / n for k, v in self.metric_sums.items()},
            "tokens": self.n_tokens,
            "tokens_per_sec": self.n_tokens / max(self.seconds, 1e-9),
            "peak_memory_gb": mx.get_peak_memory() / 1e9,
            **extra,
        }
        self._reset()
        return record

    def write(self, step: int, record: dict[str, float]) -> dict[str, float]:
        if self.writes:
            with open(self.path, "a") as f:
                f.write(json.dumps({"step": step, **record}) + "\n")
            for reporter in self.reporters:
                reporter.log(step, record)
        return record

    def close(self) -> None:
        for reporter in self.reporters:
            reporter.close()

    def postfix(self) -> str:
        loss = self.latest.get("loss", float("nan"))
        speed = self.latest.get("tokens_per_sec", 0.0)
        return (
            f"loss={loss:.4f} tok/s={speed:.0f} peak={mx.get_peak_memory() / 1e9:.2f}GB"
        )
