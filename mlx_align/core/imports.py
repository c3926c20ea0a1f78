"""Objects named by an import path: ``package.module:name`` (or ``package.module.name``)."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def import_callable(spec: str, kind: str) -> Callable:
    """The callable ``spec`` names; ``kind`` (reward, tool, environment) words the errors.

    Raises:
        ValueError: naming ``spec`` when it is no import path, cannot be
            imported, or is not callable.
    """
    module_name, _, attribute = spec.rpartition(":" if ":" in spec else ".")
    if not module_name or not attribute:
        raise ValueError(f"{kind} {spec!r} is not an import path 'module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"cannot import {kind} {spec!r}: {error}") from error
    found = getattr(module, attribute, None)
    if not callable(found):
        raise ValueError(
            f"{kind} {spec!r}: {module_name} has no callable {attribute!r}"
        )
    return found
