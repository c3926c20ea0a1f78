"""Sample from a LoRA policy with its adapters fused: one matmul per adapted linear.

A LoRA linear costs three matmuls a token (``x W``, ``x A``, ``(x A) B``)
plus a scaled add; while sampling, the adapters do not change, so
``W + s (A B)^T`` serves just as well, which is what TRL does when it hands
merged weights to vLLM. At decode time a matmul of a few rows costs about
the time it takes to stream its weight (weight-bound), and each extra
kernel has a fixed cost, so the fused step is shorter: 5.0 ms against
6.3 ms with LoRA at G = 4 for the ``small`` preset on CPU (bench/README.md).

The price is a copy of every fused weight while the rollout runs; it is
freed afterwards. The run's memory plan (``apps/plan.py``) settles
``--fuse-rollout auto`` before the model loads: on where the rollout with
the copy stays under the training step's peak (the copy is free), else off.
Unplanned (``--memory-limit none``), auto fuses when the copy is under a
tenth of the machine's memory. Quantized bases (QLoRA) are never fused:
re-quantizing ``W + delta`` would change the policy.

The sampler is a twin of the policy: its module tree is copied, its arrays
are the policy's, and only the adapted layers are swapped for their fused
versions. It stays the same object from rollout to rollout, so the compiled
decode step (keyed by the model) keeps its trace; between rollouts its
layers point back at the policy's LoRA modules and hold no extra memory.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_unflatten

from mlx_align.core.errors import UserError
from mlx_align.core.sizes import machine_memory

FUSE_MEMORY_SHARE = 0.1
FUSE_CHOICES = ("auto", "on", "off")


def _base_layer(module: nn.Module) -> nn.Module | None:
    """The frozen layer an adapter wraps (mlx-lm's ``linear`` / ``embedding``), else None."""
    base = getattr(module, "linear", None)
    return base if base is not None else getattr(module, "embedding", None)


def fusable_adapters(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(path, module) of every adapter layer whose base is not quantized (LoRA, DoRA)."""
    found = []
    for path, module in model.named_modules():
        base = _base_layer(module)
        if hasattr(module, "fuse") and base is not None and "scales" not in base:
            found.append((path, module))
    return found


def fused_layers(model: nn.Module) -> dict:
    """``{path: fused layer}`` for every fusable adapter, from its current weights (module tree)."""
    return tree_unflatten([(path, m.fuse()) for path, m in fusable_adapters(model)])


def fuse_in_place(model: nn.Module) -> None:
    """Fuse ``model``'s (unquantized) adapters for inference: same outputs, one matmul a layer."""
    model.update_modules(fused_layers(model))


def should_fuse(model: nn.Module, mode: str) -> bool:
    """``on``: whenever there is an adapter to fuse; ``auto``: also if the copy is under 10% of memory."""
    if mode not in FUSE_CHOICES:
        raise UserError(
            "--fuse-rollout", f"must be one of {', '.join(FUSE_CHOICES)}, got {mode!r}"
        )
    adapters = fusable_adapters(model)
    if mode == "off" or not adapters:
        return False
    return (
        mode == "on" or fused_copy_bytes(model) <= FUSE_MEMORY_SHARE * machine_memory()
    )


def fused_copy_bytes(model: nn.Module) -> int:
    """What the fused twin holds besides the shared arrays: each adapted layer's fused weight."""
    return sum(_base_layer(m).weight.nbytes for _, m in fusable_adapters(model))


def _copy_tree(value):
    """Every module and container copied, every array and Python value shared."""
    if isinstance(value, nn.Module):
        twin = copy.copy(value)
        for key, child in value.items():
            twin[key] = _copy_tree(child)
        return twin
    if isinstance(value, list):
        return [_copy_tree(v) for v in value]
    if isinstance(value, dict):
        return {k: _copy_tree(v) for k, v in value.items()}
    return value


class FusedSampler:
    """The policy's sampling twin; ``with sampler.fused() as model:`` samples from fused weights."""

    def __init__(self, policy: nn.Module):
        self.policy = policy
        self.model = _copy_tree(policy)
        self.model.eval()  # no dropout while sampling, as the policy's eval mode
        self._unfuse()

    def _unfuse(self) -> None:
        adapters = fusable_adapters(self.policy)
        self.model.update_modules(tree_unflatten(adapters))

    @contextmanager
    def fused(self) -> Iterator[nn.Module]:
        """The twin with ``W + s (A B)^T`` in each adapted layer, built from the current adapters."""
        self.model.update_modules(fused_layers(self.policy))
        mx.eval(self.model.parameters())
        try:
            yield self.model
        finally:
            self._unfuse()


@contextmanager
def sampling_model(
    policy: nn.Module, sampler: FusedSampler | None
) -> Iterator[nn.Module]:
    """The model to sample from: ``sampler``'s fused twin, or the policy in eval mode."""
    if sampler is not None:
        with sampler.fused() as model:
            yield model
        return
    policy.eval()
    try:
        yield policy
    finally:
        policy.train()
