"""Training curves: a run's ``metrics.jsonl`` as one PNG grid of panels.

One panel per metric, ``loss`` first, then the others in the order the run
first logged them. A train metric ``x`` and its eval twin ``val_x`` (written by
``train.evaluation.evaluate``) share a panel as two curves, "train" and "val".
Bookkeeping numbers (step, learning rate, throughput, memory, counts) are left
out; non-finite or missing values are skipped point by point.
"""

from __future__ import annotations

import math
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mlx_align.core.errors import DataError
from mlx_align.data.jsonl import read_jsonl

# Keys MetricsLog and the stages write that describe the run, not the model.
BOOKKEEPING_KEYS = frozenset(
    {
        "step",
        "learning_rate",
        "tokens",
        "tokens_per_sec",
        "peak_memory_gb",
        "elapsed",
        "seconds",
    }
)
BOOKKEEPING_PREFIXES = ("count/",)  # KTO's per-label example counts
VAL_PREFIX = "val_"
COLUMNS = 3
PANEL_INCHES = (4.5, 3.2)
DPI = 100


def finite_number(value: object) -> float | None:
    """``value`` as a float when it is a finite number (bools excluded), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def is_bookkeeping(key: str) -> bool:
    bare = key.removeprefix(VAL_PREFIX)
    return bare in BOOKKEEPING_KEYS or bare.startswith(BOOKKEEPING_PREFIXES)


def metric_panels(rows: list[dict]) -> dict[str, list[str]]:
    """Panel name -> its metric keys (train before val); ``loss`` first.

    Only keys with at least one finite number appear, so a panel never comes
    out empty.
    """
    panels: dict[str, list[str]] = {}
    for row in rows:
        for key, value in row.items():
            if is_bookkeeping(key) or finite_number(value) is None:
                continue
            keys = panels.setdefault(key.removeprefix(VAL_PREFIX), [])
            if key not in keys:
                keys.append(key)
    ordered = sorted(panels, key=lambda name: name != "loss")  # stable: keeps order
    return {
        name: sorted(panels[name], key=lambda k: k.startswith(VAL_PREFIX))
        for name in ordered
    }


def curve(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of ``key`` over the rows that hold a finite value for it."""
    points = [(row["step"], finite_number(row.get(key))) for row in rows]
    kept = [(step, value) for step, value in points if value is not None]
    return [step for step, _ in kept], [value for _, value in kept]


def metrics_figure(rows: list[dict], title: str) -> Figure:
    """A grid of panels (``COLUMNS`` wide), one per entry of ``metric_panels``."""
    panels = metric_panels(rows)
    n_rows = max(1, math.ceil(len(panels) / COLUMNS))
    n_columns = min(COLUMNS, max(1, len(panels)))
    width, height = PANEL_INCHES
    figure = Figure(figsize=(width * n_columns, height * n_rows), layout="constrained")
    FigureCanvasAgg(figure)  # attaches itself: no pyplot, no global backend
    axes = figure.subplots(n_rows, n_columns, squeeze=False).ravel()
    for ax, (name, keys) in zip(axes[: len(panels)], panels.items(), strict=True):
        for key in keys:
            steps, values = curve(rows, key)
            label = "val" if key.startswith(VAL_PREFIX) else "train"
            marker = "o" if len(steps) < 30 else None  # sparse eval points stay visible
            ax.plot(steps, values, label=label, marker=marker, markersize=3)
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend()
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    figure.suptitle(title)
    return figure


def read_metrics(run_dir: Path) -> list[dict]:
    """The rows of ``run_dir/metrics.jsonl``; bad input raises DataError at its line."""
    if not run_dir.is_dir():
        raise DataError(str(run_dir), 0, "not a run directory (no such directory)")
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise DataError(str(path), 0, "file not found: has this run logged a step?")
    records = read_jsonl(path)
    for record in records:
        if finite_number(record.fields.get("step")) is None:
            raise DataError(record.path, record.line, "missing or non-numeric 'step'")
    rows = [record.fields for record in records]
    if not metric_panels(rows):
        raise DataError(str(path), 0, "no metric values to plot")
    return rows


def plot_metrics(run_dir: Path, out: Path | None = None) -> Path:
    """Render ``run_dir/metrics.jsonl`` to ``out`` (default ``run_dir/metrics.png``)."""
    rows = read_metrics(run_dir)
    out = run_dir / "metrics.png" if out is None else out
    out.parent.mkdir(parents=True, exist_ok=True)
    metrics_figure(rows, title=run_dir.resolve().name).savefig(out, dpi=DPI)
    return out
