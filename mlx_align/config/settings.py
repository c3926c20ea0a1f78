"""How a setting is declared: its help, choices, range ``Rule`` and stage defaults.

``setting(default, help, choices=..., check=..., multiple=...)`` declares one
config field; ``config.py`` holds the stage dataclasses built from them,
``build.py`` builds and checks one from flags and YAML.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mlx_align.data.formats import FIELD_MAP_HELP, is_field_map


def setting(default: Any, help: str, **kwargs: Any) -> Any:
    """A config field. ``choices`` is a tuple, or ``"module:REGISTRY"``: the
    registry the code calls, read when a value is checked (so the CLI starts
    without importing MLX, and a registry entry is a CLI choice). ``check``
    is a ``Rule`` the value must pass (``build_config`` applies it)."""
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass(frozen=True)
class Rule:
    """A named predicate on one setting's value: ``text`` completes "must be ...".

    Rules combine with ``|``: ``exactly(-1, "all") | at_least(1)`` reads
    "must be -1 (all) or >= 1".
    """

    test: Callable[[Any], bool]
    text: str

    def __call__(self, value: Any) -> bool:
        return bool(self.test(value))

    def __or__(self, other: Rule) -> Rule:
        return Rule(lambda v: self(v) or other(v), f"{self.text} or {other.text}")


def at_least(n: float) -> Rule:
    return Rule(lambda v: v >= n, f">= {n}")


def above(n: float) -> Rule:
    return Rule(lambda v: v > n, f"> {n}")


def in_range(low: float, high: float, *, open_low=False, open_high=False) -> Rule:
    """``[low, high]``, either end open on request: ``in_range(0, 1, open_high=True)`` is [0, 1)."""

    def test(v: Any) -> bool:
        above_low = v > low if open_low else v >= low
        below_high = v < high if open_high else v <= high
        return above_low and below_high

    left, right = "(" if open_low else "[", ")" if open_high else "]"
    return Rule(test, f"in {left}{low}, {high}{right}")


def one_of(*values: Any) -> Rule:
    return Rule(lambda v: v in values, "one of " + ", ".join(map(str, values)))


def exactly(value: Any, meaning: str) -> Rule:
    return Rule(lambda v: v == value, f"{value} ({meaning})")


positive = above(0)
non_negative = at_least(0)
fraction = in_range(0, 1, open_high=True)  # [0, 1)
SEED = in_range(0, 2**32 - 1)  # numpy and MLX take unsigned seeds
# A byte-level BPE vocabulary holds the 256 bytes and init-model's 5 special
# tokens before any merge (model/tiny.py: SPECIAL_TOKENS; a test keeps them equal).
MIN_VOCAB_SIZE = 256 + 5


def stage_defaults(**defaults: Any) -> Callable[[type], type]:
    """``@dataclass``, with the defaults of some inherited settings changed: a
    stage declares only the value (e.g. its learning rate); the help stays
    where the setting is declared."""

    def make(cls: type) -> type:
        annotations = cls.__dict__.get("__annotations__", {})
        for name, value in defaults.items():
            inherited = next(
                base.__dataclass_fields__[name]
                for base in cls.__mro__[1:]
                if name in getattr(base, "__dataclass_fields__", {})
            )
            annotations[name] = inherited.type
            setattr(cls, name, field(default=value, metadata=inherited.metadata))
        cls.__annotations__ = annotations
        return dataclass(cls)

    return make


# --field-map: NEW=OLD pairs (data/formats.py parses them), checked before anything loads.
FIELD_MAP = Rule(is_field_map, FIELD_MAP_HELP)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def shown(value: Any) -> str:
    """A value as a message quotes it: numbers plainly (-1, 0.5, 1e-05), others in repr."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return repr(value)
