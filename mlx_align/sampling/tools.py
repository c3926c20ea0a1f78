"""The tools a policy may call while it samples: plain functions and environments.

A tool is a Python function with type hints and a Google-style docstring;
its JSON schema (what a chat template's ``tools=`` takes) is
``transformers.utils.get_json_schema``'s, as TRL builds it. An environment
(TRL's ``environment_factory`` shape) is an object made once per sampled
trajectory: ``reset(**row)`` returns an optional first observation, and
each of its other public methods is a tool that reads and changes its state.

The model's calls are read with mlx-lm's own machinery: the tokenizer
wrapper's ``tool_call_start`` / ``tool_call_end`` markers and its
``tool_parser`` (``mlx_lm.tool_parsers``), so any template mlx-lm serves with
tools works here. A call that does not parse, names no known tool, or
raises becomes a tool message saying so, and is counted; it never stops
the run.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from mlx_align.core.errors import UserError
from mlx_align.core.imports import import_callable

# Why a call failed: the metric each kind is counted under.
FAILURES = ("parse", "unknown", "raised")


def tool_schema(function: Callable, flag: str = "--tool") -> dict:
    """``function``'s JSON schema for a chat template; a function without type
    hints or a docstring for each argument is a UserError naming ``flag``."""
    from transformers.utils import get_json_schema

    try:
        return get_json_schema(function)
    except (
        Exception
    ) as error:  # transformers' TypeHintParsingException, DocstringParsingException
        name = getattr(function, "__name__", repr(function))
        reason = str(error).splitlines()[0]
        raise UserError(flag, f"{name}: {reason}") from None


def load_tools(specs: Sequence[str]) -> dict[str, Callable]:
    """The ``--tool module:function`` functions by name, their schemas checked."""
    tools = {}
    for spec in specs:
        try:
            function = import_callable(spec, "tool")
        except ValueError as error:
            raise UserError("--tool", str(error)) from None
        tool_schema(function)
        tools[function.__name__] = function
    return tools


def environment_tools(environment: Any) -> dict[str, Callable]:
    """An environment's tools: its public methods other than ``reset``."""
    return {
        name: method
        for name, method in inspect.getmembers(environment, inspect.ismethod)
        if not name.startswith("_") and name != "reset"
    }


def load_environment_factory(spec: str) -> Callable[[], Any]:
    """``--environment module:factory``, checked by making one environment."""
    try:
        factory = import_callable(spec, "environment")
    except ValueError as error:
        raise UserError("--environment", str(error)) from None
    try:
        sample = factory()
    except Exception as error:  # the user's factory: any failure is theirs to see
        raise UserError("--environment", f"{spec}() failed: {type(error).__name__}: {error}") from None  # fmt: skip
    if not callable(getattr(sample, "reset", None)):
        raise UserError("--environment", f"{spec}() has no reset(**row) method")
    for name, method in environment_tools(sample).items():
        tool_schema(method, f"--environment {spec}: {name}")
    return factory


@dataclass
class CallResult:
    """One call's tool message, and why it failed (None: it ran)."""

    name: str
    content: str
    failure: str | None = None


class ToolBox:
    """The tools one trajectory may call: the ``--tool`` functions and its
    environment's methods (the environment's win on a shared name)."""

    def __init__(self, functions: dict[str, Callable], environment: Any = None):
        self.environment = environment
        own = environment_tools(environment) if environment is not None else {}
        self.tools = {**functions, **own}

    @property
    def schemas(self) -> list[dict]:
        return [tool_schema(f) for f in self.tools.values()]

    def run(self, call_text: str, parser: Callable, schemas: list[dict]) -> list[CallResult]:  # fmt: skip
        """Parse the text between the call markers with mlx-lm's ``parser`` and run
        each call it names; every outcome is a tool message."""
        try:
            parsed = parser(call_text, schemas)
        except (
            Exception
        ) as error:  # the parsers raise ValueError, JSONDecodeError, KeyError, ...
            return [CallResult("", f"error: the tool call did not parse ({type(error).__name__})", "parse")]  # fmt: skip
        calls = parsed if isinstance(parsed, list) else [parsed]
        return [self.call(c) for c in calls]

    def call(self, call: Any) -> CallResult:
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            return CallResult("", "error: the tool call names no function", "parse")
        name, arguments = call["name"], call.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                return CallResult(name, "error: the arguments are not JSON", "parse")
        if name not in self.tools:
            known = ", ".join(self.tools) or "none"
            return CallResult(name, f"error: no tool named {name!r} (tools: {known})", "unknown")  # fmt: skip
        if not isinstance(arguments, dict):
            return CallResult(name, "error: the arguments are not an object", "parse")
        try:
            result = self.tools[name](**arguments)
        except Exception as error:  # the tool's own failure is the model's to see
            return CallResult(name, f"error: {type(error).__name__}: {error}", "raised")
        return CallResult(
            name, result if isinstance(result, str) else json.dumps(result)
        )
