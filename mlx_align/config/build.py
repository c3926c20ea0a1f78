"""A stage's config from flags and a ``--config`` YAML file, checked before anything loads.

Precedence: CLI flag > YAML > default. Enumerated settings are checked
against the registries the code calls (``choices``), every value against its
``Rule`` (``settings.py``), then the checks across settings (``checks.py``).
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from mlx_align.config.checks import CHECKS
from mlx_align.config.settings import flag, shown
from mlx_align.core.errors import UserError

C = TypeVar("C")


def load_yaml(path: str) -> dict:
    try:
        values = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise UserError(path, "config file not found") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else path
        raise UserError(where, f"invalid YAML: {e}") from None
    if not isinstance(values, dict):
        raise UserError(path, "a config file must be a mapping of setting: value")
    return values


def choices_of(spec: tuple[str, ...] | str) -> tuple[str, ...]:
    """A field's ``choices``: the tuple, or the keys of the ``"module:REGISTRY"`` it names."""
    if isinstance(spec, tuple):
        return spec
    module, name = spec.split(":")
    return tuple(getattr(importlib.import_module(module), name))


def check_choices(cls: type, values: dict[str, Any], source: str) -> None:
    """Values given in a config file for enumerated settings (flags are checked by click)."""
    for f in dataclasses.fields(cls):
        spec = f.metadata.get("choices")
        if not spec or f.name not in values:
            continue
        given = values[f.name]
        for value in given if isinstance(given, tuple) else (given,):
            if value not in choices_of(spec):
                allowed = ", ".join(choices_of(spec))
                raise UserError(source, f"{f.name}: {value!r} is not one of {allowed}")


KIND_NAMES = {
    int: "an integer",
    float: "a number",
    bool: "true or false",
    str: "a string",
}


def yaml_value(name: str, kind: type, value: Any, source: str) -> Any:
    """A config-file value as its setting's type (flags are typed by click).

    A float setting also takes a numeric string: PyYAML reads ``1e-4`` (no
    dot) as the string '1e-4'. A string setting takes a number as its text.
    """
    if value is None:
        raise UserError(source, f"{name}: no value given")
    if kind is bool and isinstance(value, bool):
        return value
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is float and not isinstance(value, bool):
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    if kind is str and not isinstance(value, bool | list | dict):
        return str(value)
    if kind is tuple:  # a repeatable setting: one string or a list of them
        items = [value] if isinstance(value, str) else value
        if isinstance(items, list) and all(isinstance(v, str) for v in items):
            return tuple(items)
        raise UserError(source, f"{name}: expected a string or a list of strings")
    got = type(value).__name__
    raise UserError(
        source, f"{name}: expected {KIND_NAMES[kind]}, got {got} {shown(value)}"
    )


def check_settings(config: Any, origin: dict[str, str]) -> None:
    """Every setting against its ``Rule``, then the clashes; the first failure raises.

    ``origin`` maps a setting given in a config file to that file: its error
    then names the file and the key, a flag's names the flag.
    """
    for f in dataclasses.fields(config):
        value, rule = getattr(config, f.name), f.metadata.get("check")
        if isinstance(value, float) and not math.isfinite(value):
            problem = f"must be a finite number, got {shown(value)}"
        elif rule is not None and not rule(value):
            problem = f"must be {rule.text}, got {shown(value)}"
        else:
            continue
        if f.name in origin:
            raise UserError(origin[f.name], f"{f.name}: {problem}")
        raise UserError(flag(f.name), problem)
    for cls, check in CHECKS:
        if isinstance(config, cls) and (found := check(config)):
            raise UserError(*found)


def config_yaml(config: Any, command: str = "") -> str:
    """Every setting of ``config``, defaults included, as the YAML ``--config``
    reads back: the same run again, from the start (``resume: false``). With
    ``command`` (the stage) a first comment line names it (``stage_of`` reads it)."""
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    values = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
    if "resume" in values:
        values["resume"] = False
    head = f"{STAGE_LINE}{command} --config <this file>\n" if command else ""
    return head + yaml.safe_dump(values, sort_keys=False, allow_unicode=True)


STAGE_LINE = "# mlx-align "


def stage_of(config_text: str) -> str | None:
    """The stage a run's ``config.yaml`` was written by (None: no such line)."""
    first = config_text.partition("\n")[0]
    return first[len(STAGE_LINE) :].split()[0] if first.startswith(STAGE_LINE) else None


def build_config(cls: type[C], cli: dict[str, Any], config_file: str | None) -> C:
    """Defaults, then the YAML file, then flags the user actually gave (non-None).

    The result is checked before anything loads: each setting's ``Rule``,
    then the ``checks.CHECKS`` across settings; a failure is a ``UserError``.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kinds = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    if config_file:
        for key, value in load_yaml(config_file).items():
            key = str(key).replace("-", "_")
            if key not in fields:
                raise UserError(config_file, f"unknown setting '{key}'")
            values[key] = yaml_value(key, kinds[key], value, config_file)
            origin[key] = config_file
        check_choices(cls, values, config_file)
    given = {k: v for k, v in cli.items() if v is not None and v != () and k in fields}
    values.update(given)
    for key in given:
        origin.pop(key, None)
    missing = [
        name
        for name, f in fields.items()
        if f.metadata.get("required") and not values.get(name)
    ]
    if missing:
        flags = ", ".join(map(flag, missing))
        raise UserError(
            config_file or "command line", f"missing required setting {flags}"
        )
    for name, f in fields.items():  # a single flag value for a repeatable one
        if f.metadata.get("multiple") and name in values:
            value = values[name]
            values[name] = (value,) if isinstance(value, str) else tuple(value)
    config = cls(**values)
    check_settings(config, origin)
    return config
