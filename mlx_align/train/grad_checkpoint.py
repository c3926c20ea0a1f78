"""Gradient checkpointing for chosen layer *instances*.

mlx-lm's ``grad_checkpoint`` replaces ``__call__`` on the layer class, so
every instance of that class in the process (a reference model, a second
run in the same process) is checkpointed too, and each call wraps it again.
Here each chosen instance gets its own subclass (``layer.__class__`` is
swapped), the parameter paths stay the same, and ``restore_layers`` undoes it.
"""

from __future__ import annotations

from collections.abc import Iterable

import mlx.core as mx
import mlx.nn as nn

_CHECKPOINTED: dict[type, type] = {}


def _checkpointed_class(cls: type) -> type:
    if cls not in _CHECKPOINTED:
        plain_call = cls.__call__

        def __call__(self, *args, **kwargs):
            def forward(params, *args, **kwargs):
                self.update(params)
                return plain_call(self, *args, **kwargs)

            return mx.checkpoint(forward)(self.trainable_parameters(), *args, **kwargs)

        _CHECKPOINTED[cls] = type(
            cls.__name__, (cls,), {"__call__": __call__, "_plain": cls}
        )
    return _CHECKPOINTED[cls]


def checkpoint_layers(layers: Iterable[nn.Module]) -> None:
    """Recompute these layers' activations during the backward pass."""
    for layer in layers:
        if not hasattr(type(layer), "_plain"):
            layer.__class__ = _checkpointed_class(type(layer))


def restore_layers(layers: Iterable[nn.Module]) -> None:
    for layer in layers:
        if hasattr(type(layer), "_plain"):
            layer.__class__ = type(layer)._plain
