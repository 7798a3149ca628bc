"""Config validation against the JSON schema shipped in the package, with defaults.

The schemas live in `scorebridge/schemas/` (read with `importlib.resources`, so an
installed wheel validates a config as the source tree does) and are the only place a
default is written: stages turn their validated section into a typed options object
with `scorebridge.options.build`.

The schema is split per section (`era5.schema.yaml`, ...) and joined by relative
`$ref`s; they are inlined here so that defaults apply at every depth. Errors name
the offending key as a dotted path (`era5.default.levels[0]`).
"""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator, validators

from .errors import ConfigError

__all__ = ["SCHEMA", "load_schema", "validate_config", "load_config", "parse_spec"]

SCHEMA = "config.schema.yaml"  # inside the package's schemas/ folder


def _schema_file(path: str | Path):
    """(file, folder) of a schema in the package's schemas/ (bare name) or on disk."""
    if isinstance(path, str) and "/" not in path and "\\" not in path:
        folder = resources.files("scorebridge").joinpath("schemas")
        return folder.joinpath(path), folder
    return Path(path), Path(path).parent


def load_schema(path: str | Path = SCHEMA) -> dict:
    """The schema at `path` (default: the package's config schema) with every relative
    file `$ref` inlined."""
    path, folder = _schema_file(path)

    def inline(node: Any, base: Path) -> Any:
        if isinstance(node, dict):
            if "$ref" in node and not str(node["$ref"]).startswith("#"):
                ref = base.joinpath(node["$ref"])
                sub = inline(yaml.safe_load(ref.read_text()), base)
                sub.pop("$schema", None)
                rest = {k: inline(v, base) for k, v in node.items() if k != "$ref"}
                return {**sub, **rest}
            return {k: inline(v, base) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v, base) for v in node]
        return node

    return inline(yaml.safe_load(path.read_text()), folder)


def _with_defaults(cls):
    validate_properties = cls.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return validators.extend(cls, {"properties": set_defaults})


_Validator = _with_defaults(Draft202012Validator)


def _key(path) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<top level>"


def validate_config(config: dict, schema: str | Path | dict = SCHEMA) -> dict:
    """Validate `config` in place, filling defaults; raise ConfigError naming the key."""
    sch = schema if isinstance(schema, dict) else load_schema(schema)
    errors = sorted(_Validator(sch).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        err = min(errors, key=lambda e: len(e.absolute_path)) if len(errors) > 1 else errors[0]
        err = errors[0]
        key = _key(err.absolute_path)
        if err.validator == "additionalProperties":
            allowed = sorted(err.schema.get("properties", {}))
            msg = f"{err.message}; allowed keys here: {allowed}" if allowed else err.message
        else:
            msg = err.message
        raise ConfigError(key, msg)
    return config


def load_config(path: str | Path) -> dict:
    """Read a YAML config file and validate it."""
    try:
        config = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(str(path), f"not valid YAML: {err}") from None
    return validate_config(config)


def parse_spec(text: str, what: str = "--spec") -> dict:
    """The JSON config entry a rule passes to the CLI."""
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(what, f"not valid JSON: {err}") from None
    if not isinstance(spec, dict):
        raise ConfigError(what, "expected a JSON object")
    return spec
