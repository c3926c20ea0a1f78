"""A bad flag or setting, as opposed to bad data (``data.errors.DataError``).

The CLI prints either as one line and exits with code 2, with no traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A flag or setting that cannot work: ``setting`` names it (``--preset``,
    or a config file's ``path:line``), ``message`` says what is wrong."""

    def __init__(self, setting: str, message: str) -> None:
        self.setting, self.message = setting, message
        super().__init__(f"{setting}: {message}")
