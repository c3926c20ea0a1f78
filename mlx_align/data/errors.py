"""One error type for bad user data, printed by the CLI as ``path:line: what``."""

from __future__ import annotations


class DataError(Exception):
    """A problem in the user's data, located by file and line (line 0: the whole file)."""

    def __init__(self, path: str, line: int, message: str) -> None:
        self.path, self.line, self.message = str(path), line, message
        where = f"{self.path}:{line}" if line else self.path
        super().__init__(f"{where}: {message}")
