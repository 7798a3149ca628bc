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
    """A bad config value. Names the key and, where known, the config file and line that
    set it (`config file my.yaml, line 12: config key 'sr.x.era5': ...`); `key` None for
    an error of the file itself (not YAML, empty, not a mapping)."""

    def __init__(self, key: str | None, message: str, *, file: object = None, line: int | None = None):
        where = ""
        if file is not None:
            where = f"config file {file}" + (f", line {line}" if line is not None else "") + ": "
        super().__init__(where + (f"config key '{key}': " if key is not None else "") + message)
        self.key = key
        self.detail = message
        self.file = file
        self.line = line

    def located(self, file: object, line: int | None) -> "ConfigError":
        """The same error, said to come from `file`, `line`."""
        return ConfigError(self.key, self.detail, file=file, line=line)
