"""Fast paths chosen by what a model does, not by its name: each tried once on a few tokens.

A fast path (scoring each prompt once for its group, packing rows without
padding, the compiled decoder, reading logits as head(backbone)) re-creates
part of the model's forward with its own stand-in caches. Whether that
computes the model's function depends on the model's attention and state,
not on its ``model_type``: smollm3 is a llama backbone under another name,
and a hybrid with linear-attention layers is not, whatever it is called.

So each path is tried once per model object on a few fixed tokens and
compared with the model's own forward through mlx-lm's prompt cache (what
generation computes). A path that raises, or whose log-probs differ, is off
for that model; the reason is printed once, and ``emit("fast_path", ...)``
tells listeners (the family test builds the README's table from it).
"""

from __future__ import annotations

from collections.abc import Callable

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten
from tqdm import tqdm

from mlx_align.core.events import emit

# Largest difference in log-probs a path may show and still count as the
# model's own function: float32 rounding, or bf16/fp16 rounding for such weights.
FLOAT32_TOLERANCE = 1e-3
HALF_TOLERANCE = 5e-2
_RESULTS = "_mlx_align_fast_paths"


def tolerance(model: nn.Module) -> float:
    """How far two exact ways of computing ``model``'s log-probs may drift apart."""
    dtypes = {v.dtype for _, v in tree_flatten(model.parameters())}
    return FLOAT32_TOLERANCE if dtypes <= {mx.float32, mx.uint32} else HALF_TOLERANCE


def differs(a: mx.array, b: mx.array, model: nn.Module) -> str | None:
    """None when ``a`` equals ``b`` within ``tolerance(model)``; else how far apart they are."""
    gap = mx.abs(a.astype(mx.float32) - b.astype(mx.float32)).max().item()
    if gap == gap and gap <= tolerance(model):  # NaN fails too
        return None
    return f"its log-probs differ from the model's own forward by {gap:.3g}"


def probed(
    model: nn.Module,
    path: str,
    check: Callable[[nn.Module], str | None],
    fallback: str | None,
) -> bool:
    """Whether ``path`` serves ``model``: ``check(model)`` returns None when it
    does, else the reason it does not; an exception is a reason too. A path
    turned down is printed once with ``fallback``, what runs instead (None:
    nothing worth telling).

    Computed once per model object, in eval mode (no dropout, no random
    draws), and remembered on the model. Asked first inside ``mx.compile``
    (where nothing can be evaluated) it answers False, the model's own way,
    without remembering: stages probe at load time (``probe_scoring``).
    """
    results = vars(model).setdefault(_RESULTS, {})
    if path not in results:
        training = model.training
        model.eval()
        try:
            reason = check(model)
        except Exception as e:  # a path that cannot run on this model says so
            if "function transformations" in str(e):
                return False  # inside a compiled function: ask again outside
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            reason = f"{type(e).__name__}: {first}".rstrip(": ")
        finally:
            model.train(training)
        results[path] = reason
        emit("fast_path", model=model, path=path, reason=reason)
        if reason is not None and fallback:
            kind = getattr(model, "model_type", type(model).__name__)
            tqdm.write(f"{kind}: no {path} ({reason}); {fallback}")
    return results[path] is None


def share_probes(source: nn.Module, twin: nn.Module) -> None:
    """Give ``twin`` (the same architecture on the same arrays) ``source``'s answers."""
    vars(twin)[_RESULTS] = vars(source).setdefault(_RESULTS, {})


def probe_tokens(vocab: int, rows: int, length: int, start: int = 3) -> list[list[int]]:
    """Fixed, distinct token ids for a probe: no random draws, same on every rank."""
    return [
        [(start + 7 * r + 13 * t + r * t) % vocab for t in range(length)]
        for r in range(rows)
    ]
