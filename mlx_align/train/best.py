"""The best evaluation so far, its weights in ``R/best/``, and early stopping.

``--save-best METRIC`` watches one ``val_*`` metric of every evaluation:
when it improves, the trainable weights are written to ``R/best/`` (as a
checkpoint writes them: mlx-lm adapters, or the trained arrays with
``--full``) with ``best.json`` saying which evaluation it was.
``--early-stopping-patience N`` stops the run after N evaluations in a row
without improvement. The tracker's state lives in every checkpoint, so
``--resume`` continues with the same best value and count.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from mlx_align.config.stages import TrainSettings
from mlx_align.core import distributed
from mlx_align.core.errors import RunError
from mlx_align.train.checkpoint import checkpoint_state, latest_checkpoint

BEST_DIR = "best"


@dataclass
class BestTracker:
    """Which evaluation was best by ``metric``, and how many came after it."""

    metric: str
    greater: bool
    patience: int
    value: float | None = None
    step: int = 0
    stale: int = 0  # evaluations since the best one

    @classmethod
    def of(cls, settings: TrainSettings) -> BestTracker | None:
        """The tracker ``--save-best`` asks for (None without it)."""
        if not settings.save_best:
            return None
        if settings.greater_is_better == "auto":
            greater = not settings.save_best.endswith("loss")
        else:
            greater = settings.greater_is_better == "true"
        return cls(settings.save_best, greater, settings.early_stopping_patience)

    def observe(self, step: int, results: dict[str, float]) -> bool:
        """Take evaluation ``results`` of ``step``; whether it is the new best."""
        if self.metric not in results:
            logged = ", ".join(sorted(results))
            raise RunError(step, f"--save-best {self.metric}: evaluations log {logged}")
        value = results[self.metric]
        if self.value is not None and not (
            value > self.value if self.greater else value < self.value
        ):
            self.stale += 1
            return False
        self.value, self.step, self.stale = value, step, 0
        return True

    @property
    def stopping(self) -> bool:
        return bool(self.patience) and self.stale >= self.patience

    def state(self) -> dict:
        """What a checkpoint keeps of it."""
        return {"value": self.value, "step": self.step, "stale": self.stale}

    def restore(self, state: dict | None) -> None:
        """Continue from a checkpoint's ``state()`` (a checkpoint without one: as new)."""
        if state:
            self.value, self.step, self.stale = state["value"], state["step"], state["stale"]  # fmt: skip


def track(
    tracker: BestTracker,
    step: int,
    results: dict[str, float],
    out: Path,
    write_weights: Callable[[Path], None],
    writes: bool = True,
) -> bool:
    """Feed evaluation ``results`` of ``step`` to ``tracker``; write ``R/best/``
    (atomically, rank 0) when it improved. Returns whether to stop."""
    if tracker.observe(step, results):
        if writes:
            write_best(out, write_weights, tracker)
        tqdm.write(f"best {tracker.metric} so far: {tracker.value:.4f} at step {step}, in {out / BEST_DIR}")  # fmt: skip
    if tracker.stopping:
        tqdm.write(
            f"early stopping at step {step}: {tracker.metric} has not improved for "
            f"{tracker.stale} evaluations (best {tracker.value:.4f} at step {tracker.step})"
        )
    return tracker.stopping


def write_best(
    out: Path, write_weights: Callable[[Path], None], tracker: BestTracker
) -> None:
    """The weights of the best evaluation in ``out/best``, replacing the last best."""
    final = out / BEST_DIR
    tmp = final.with_name(BEST_DIR + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_weights(tmp)
    (tmp / "best.json").write_text(json.dumps(asdict(tracker), indent=2))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def resumed_tracker(out: Path, settings: TrainSettings, start: int) -> BestTracker | None:  # fmt: skip
    """``--save-best``'s tracker, continued from the checkpoint a run resumes
    (rank 0's, for every rank)."""
    tracker = BestTracker.of(settings)
    if tracker is None or not start:
        return tracker
    latest = latest_checkpoint(out) if distributed.is_main() else None
    if latest is not None:
        tracker.restore(checkpoint_state(latest).get("best"))
    if distributed.size() > 1:
        known = tracker.value is not None
        values = [float(known), tracker.value or 0.0, tracker.step, tracker.stale]
        known, value, step, stale = distributed.sum_floats(values if distributed.is_main() else [0.0] * 4)  # fmt: skip
        tracker.restore({"value": value if known else None, "step": int(step), "stale": int(stale)})  # fmt: skip
    return tracker
