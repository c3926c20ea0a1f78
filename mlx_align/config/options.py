"""Click options from a config dataclass: every field a flag, its help and choices
from the field's metadata (``settings.setting``); unset flags stay None so the
config's own precedence (``build.build_config``) decides."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable

import click

from mlx_align.config.build import choices_of


class RegistryChoice(click.Choice):
    """``click.Choice`` over the keys of a registry named ``"module:NAME"``.

    The module is imported when a value is checked or help is shown, not when
    the CLI starts, so a bad value fails before any model or data loads, and
    an entry added to the registry is a valid choice with no other change.
    """

    def __init__(self, registry: str) -> None:
        super().__init__(())
        self.registry = registry

    @property
    def choices(self) -> tuple[str, ...]:
        return choices_of(self.registry)

    @choices.setter
    def choices(self, _: object) -> None:  # click.Choice.__init__ assigns it
        pass


def choice_type(
    choices: tuple[str, ...] | str | None, kind: type
) -> click.ParamType | type:
    if isinstance(choices, str):
        return RegistryChoice(choices)
    return click.Choice(choices) if choices else kind


def options_from(cls: type) -> Callable:
    """Click options for every field of a config dataclass; unset flags stay None."""
    hints = typing.get_type_hints(cls)

    def decorate(command: Callable) -> Callable:
        for f in reversed(dataclasses.fields(cls)):
            flag = "--" + f.name.replace("_", "-")
            kind = hints[f.name]
            default = f.default
            if isinstance(default, tuple):  # a repeatable setting's values
                default = ", ".join(default) or "none"
            if f.metadata.get("required"):
                shown = "(required)"
            else:  # an empty text says what it means in the help itself
                shown = f"(default: {default})" if default != "" else ""

            help_text = f"{f.metadata.get('help', '')} {shown}"
            if f.metadata.get("multiple"):
                option = click.option(
                    flag,
                    f.name,
                    multiple=True,
                    type=choice_type(f.metadata.get("choices"), str),
                    help=help_text,
                )
            elif kind is bool:
                option = click.option(
                    f"{flag}/--no-{flag[2:]}", f.name, default=None, help=help_text
                )
            else:
                option = click.option(
                    flag,
                    f.name,
                    type=choice_type(f.metadata.get("choices"), kind),
                    default=None,
                    help=help_text,
                )
            command = option(command)
        return click.option(
            "--config",
            "config_file",
            type=click.Path(),
            help="YAML file of settings; flags override it.",
        )(command)

    return decorate
