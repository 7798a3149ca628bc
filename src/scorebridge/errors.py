"""Errors a user can act on: what was wrong, where (file, line, key), what was expected."""

from __future__ import annotations

__all__ = ["ScorebridgeError", "InputError", "UnsafeFileError", "ConfigError"]


class ScorebridgeError(Exception):
    """Base class: the CLI prints the message (no traceback) and exits non-zero."""


class InputError(ScorebridgeError):
    """Bad input data. Names the file and, where it applies, the line."""

    def __init__(self, message: str, path: object = None, line: int | None = None):
        where = ""
        if path is not None:
            where = f"{path}"
            if line is not None:
                where += f", line {line}"
            where += ": "
        super().__init__(where + message)
        self.path = path
        self.line = line


class UnsafeFileError(InputError):
    """A file that would run code to load (a pickle holding arbitrary objects): refused."""


class ConfigError(ScorebridgeError):
    """A bad config value. Names the key."""

    def __init__(self, key: str, message: str):
        super().__init__(f"config key '{key}': {message}")
        self.key = key
