"""Typed options built from a validated config section: the schema is the only place a
default is written.

Each stage declares a dataclass whose fields carry **no defaults** and a `SCHEMA_PATH`
naming its section in the config schema (`"*"` steps into a named entry, e.g.
`("sr", "*", "sample")`). `build(Options, section)` validates the section against that
part of the schema (filling the schema's defaults, raising `ConfigError` naming the key)
and returns the dataclass. The CLI calls it once at its boundary; tests call it the
same way, so a partial dict in a test runs with exactly the workflow's defaults.

Nested sections stay plain dicts unless the options class builds them itself (override
`from_section`).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from typing import Any, TypeVar

from .config import _key, _Validator, load_schema
from .errors import ConfigError

__all__ = ["schema_node", "defaults", "build", "OPTIONS_CLASSES", "register"]

T = TypeVar("T")

# every options class (for the test that checks each field against the schema)
OPTIONS_CLASSES: list[type] = []


def register(cls: type[T]) -> type[T]:
    """Class decorator: record an options class (it must declare `SCHEMA_PATH`)."""
    if not hasattr(cls, "SCHEMA_PATH"):
        raise TypeError(f"{cls.__name__} needs a SCHEMA_PATH")
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.{f.name} has a default; defaults live in the schema only")
    OPTIONS_CLASSES.append(cls)
    return cls


@functools.lru_cache(maxsize=1)
def _schema() -> dict:
    return load_schema()


def schema_node(path: tuple[str, ...] | list[str]) -> dict:
    """The (inlined) schema of the config section at `path` (`"*"`: a named entry)."""
    node = _schema()
    for part in path:
        if part == "*":
            node = node["additionalProperties"]
        else:
            node = node["properties"][part]
    return node


def defaults(path: tuple[str, ...] | list[str]) -> dict:
    """The section at `path` as the schema fills it from an empty mapping."""
    return _fill({}, schema_node(path), ".".join(path))


def _fill(section: dict, node: dict, where: str) -> dict:
    section = copy.deepcopy(dict(section or {}))
    errors = sorted(_Validator(node).iter_errors(section), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        key = ".".join(p for p in (where, _key(err.absolute_path)) if p and p != "<top level>")
        raise ConfigError(key, err.message)
    return section


def build(cls: type[T], section: dict | None, *, where: str | None = None) -> T:
    """Validate `section` against `cls.SCHEMA_PATH` (filling defaults) and return `cls`.

    `where` names the section in errors (default: the schema path, e.g. `sr.*.sample`).
    Keys of the section that the class does not declare are kept out of it (they are
    other stages' keys); a class field the schema does not fill is an error.
    """
    path = tuple(cls.SCHEMA_PATH)
    where = where or ".".join(path)
    filled = _fill(section or {}, schema_node(path), where)
    hook = getattr(cls, "from_section", None)
    if hook is not None:
        return hook(filled)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in filled:
            raise ConfigError(f"{where}.{f.name}", "missing (the schema gives it no default)")
        kwargs[f.name] = filled[f.name]
    return cls(**kwargs)
