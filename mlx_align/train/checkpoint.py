"""Checkpoints that make ``--resume`` exact: trainable weights, optimizer state, step.

The RNG needs no saving: the loop re-seeds MLX from ``(seed, step)`` at every
step (``mx.random.state`` cannot be assigned from Python), so the step number
is the random state.

Each checkpoint is written into a temporary directory and renamed into
place, so an interrupted write never leaves a half checkpoint behind.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten, tree_unflatten

from mlx_align.core import distributed
from mlx_align.core.errors import RunError, UserError
from mlx_align.core.events import emit

STEP_PREFIX = "step_"


def checkpoint_dir(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"{STEP_PREFIX}{step:07d}"


def latest_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint; a half-written one (killed mid-write) is skipped."""
    root = out / "checkpoints"
    if not root.is_dir():
        return None
    done = sorted(
        p
        for p in root.iterdir()
        if p.name.startswith(STEP_PREFIX)
        and not p.name.endswith(".tmp")  # a write that was cut short
        and (p / "state.json").exists()
    )
    return done[-1] if done else None


def save_checkpoint(
    out: Path,
    step: int,
    model: nn.Module,
    optimizer: optim.Optimizer,
    write_weights: Callable[[Path], None],
    config: dict,
    keep: int = 2,
    writes: bool = True,
    extra: dict | None = None,
) -> Path:
    """Write checkpoint ``step`` atomically; keep only the newest ``keep`` of them.

    ``writes`` False (ranks other than 0): write nothing, return its path.
    ``extra`` joins ``state.json``."""
    final = checkpoint_dir(out, step)
    if not writes:
        return final
    tmp = final.with_name(final.name + ".tmp")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        write_weights(tmp)
        emit("checkpoint", step=step, path=tmp)  # half written: a kill loses nothing
        mx.save_safetensors(
            str(tmp / "optimizer.safetensors"), dict(tree_flatten(optimizer.state))
        )
        state = {"step": step, "ranks": distributed.size(), "config": config}
        state.update(extra or {})  # e.g. the best evaluation so far (train/best.py)
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
    except OSError as e:  # a full disk, say: the previous checkpoint stays
        shutil.rmtree(tmp, ignore_errors=True)
        previous = latest_checkpoint(out)
        intact = f"{previous} is intact" if previous else "no earlier checkpoint"
        raise RunError(step, f"checkpoint not written ({e}); {intact}") from None
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(final.parent.glob(f"{STEP_PREFIX}*"))[:-keep]:
        if not old.name.endswith(".tmp"):
            shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(
    path: Path, model: nn.Module, optimizer: optim.Optimizer, weights_file: str
) -> int:
    """Restore weights and optimizer state from ``path``; returns its step.

    Raises:
        UserError: when the checkpoint was written by another number of ranks
            (its data order would not match).
    """
    state_json = json.loads((path / "state.json").read_text())
    ranks = state_json.get("ranks", 1)
    if ranks != distributed.size():
        raise UserError(
            "--resume",
            f"{path} was written by a run of {ranks} rank(s); resume it with "
            f"{ranks}, not {distributed.size()}",
        )
    model.load_weights(str(path / weights_file), strict=False)
    state = mx.load(str(path / "optimizer.safetensors"))
    # The optimizer keeps its dict (a compiled step may already hold it); fill it in place.
    optimizer.state.update(tree_unflatten(list(state.items())))
    optimizer.init(
        model.trainable_parameters()
    )  # restores empty branches flattening dropped
    return state_json["step"]


def checkpoint_state(path: Path) -> dict:
    """The ``state.json`` of checkpoint ``path``."""
    return json.loads((path / "state.json").read_text())
