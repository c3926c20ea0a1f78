"""The package's errors: bad data (``DataError``), a bad flag or setting
(``UserError``) and a run that had to stop (``RunError``).

The CLI prints each as one line, with no traceback: exit code 2 for bad
input, 1 for a stopped run.
"""

from __future__ import annotations


class UserError(Exception):
    """A flag or setting that cannot work: ``setting`` names it (``--preset``,
    or a config file's ``path:line``), ``message`` says what is wrong."""

    def __init__(self, setting: str, message: str) -> None:
        self.setting, self.message = setting, message
        super().__init__(f"{setting}: {message}")


class RunError(Exception):
    """A run that cannot go on (a non-finite loss, a checkpoint that cannot be
    written): ``step`` names where, ``message`` what happened and what is intact."""

    def __init__(self, step: int, message: str) -> None:
        self.step, self.message = step, message
        super().__init__(f"step {step}: {message}")


class DataError(Exception):
    """A problem in the user's data, located by file and line (line 0: the whole file);
    printed as ``path:line: what``."""

    def __init__(self, path: str, line: int, message: str) -> None:
        self.path, self.line, self.message = str(path), line, message
        where = f"{self.path}:{line}" if line else self.path
        super().__init__(f"{where}: {message}")
