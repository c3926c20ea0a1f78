"""What a run reports as it goes, to whoever listens: benchmarks and tests.

A stage calls ``emit(name, **fields)`` at the points an observer may want to
time or count (the reference pass, each planned batch, each rollout); a
listener is any callable ``(name, fields)``. Observers use ``listening``
instead of patching the modules that do the work, so moving code around
cannot silently leave them measuring nothing.

Events: ``trainable`` (parameters), ``reference`` (seconds, items),
``batch`` (pairs, tokens, widths), ``rollout`` (lengths, seconds),
``rewards`` (seconds), ``step`` (step: after each optimizer step, its
checkpoint written; a listener raising ``KeyboardInterrupt`` there is a
Ctrl-C), ``checkpoint`` (step, path: a checkpoint half written, in its
temporary directory).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

Listener = Callable[[str, dict[str, Any]], None]

_listeners: list[Listener] = []


def emit(name: str, **fields: Any) -> None:
    """Tell every listener that ``name`` happened, with ``fields``; free when nobody listens."""
    for listener in list(_listeners):
        listener(name, fields)


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Call ``listener`` on every event emitted inside the ``with`` block."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)
