"""Config validation against the JSON schema shipped in the package, with defaults.

The schemas live in `scorebridge/schemas/` (read with `importlib.resources`, so an
installed wheel validates a config as the source tree does) and are the only place a
default is written: stages turn their validated section into a typed options object
with `scorebridge.options.build`.

The schema is split per section (`era5.schema.yaml`, ...) and joined by relative
`$ref`s; they are inlined here so that defaults apply at every depth. Errors name
the offending key as a dotted path (`era5.default.levels[0]`) and, given the files the
config was read from, the file and line that set it.

A whole workflow config is also checked beyond its schema, before anything runs:
names that refer to other entries (`check_references`: `sr.x.era5` names an `era5`
dataset) and rules across keys of one entry (`check_entries`: `debias: bootstrap` needs
`learn: true`, `train_fraction: 1.0` leaves nothing to evaluate, a `holdout` outside the
simulated snapshots). A config file that is empty, not YAML or not a mapping is
reported with its file and line (`read_config_file`, in `scorebridge.configfile`).
"""

from __future__ import annotations

import copy
import json
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator, validators

from .configfile import key_depth, key_parts, locate_key, read_config_file
from .errors import ConfigError

__all__ = [
    "SCHEMA",
    "load_schema",
    "validate_config",
    "check_references",
    "check_entries",
    "bridge_entry_rules",
    "read_config_file",
    "locate_key",
    "load_config",
    "load_configs",
    "parse_spec",
]

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


def _schema_error(config: dict, sch: dict) -> tuple[ConfigError, str] | None:
    """The first schema error as a ConfigError, and the key to look up in the files (the
    unexpected key itself for an unknown one)."""
    errors = sorted(_Validator(sch).iter_errors(config), key=lambda e: list(e.absolute_path))
    if not errors:
        return None
    err = errors[0]
    key = _key(err.absolute_path)
    lookup = key
    if err.validator == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        msg = f"{err.message}; allowed keys here: {allowed}" if allowed else err.message
        extra = (
            sorted(map(str, set(err.instance) - set(err.schema.get("properties", {}))))
            if isinstance(err.instance, dict)
            else []
        )
        if extra:
            lookup = str(extra[0]) if key == "<top level>" else f"{key}.{extra[0]}"
    else:
        msg = err.message
    return ConfigError(key, msg), lookup


def _is_workflow_schema(sch: dict) -> bool:
    return {"era5", "igra", "cells", "sr", "bridge"} <= set(sch.get("properties", {}))


def validate_config(
    config: dict, schema: str | Path | dict = SCHEMA, *, files=(), overrides: dict | None = None
) -> dict:
    """Validate `config` in place, filling defaults; raise ConfigError naming the key.

    A whole workflow config (the package's config schema) is then checked for names of
    undefined entries (`check_references`) and rules across keys (`check_entries`).
    `files`: the config files it was read from, lowest precedence first (Snakemake's
    order); an error then also names the file and line that set the key (unless
    `overrides`, the command line's `--config`, sets it)."""
    sch = schema if isinstance(schema, dict) else load_schema(schema)
    lookup = None
    try:
        found = _schema_error(config, sch)
        if found is not None:
            err, lookup = found
            raise err
        if _is_workflow_schema(sch):
            check_references(config)
            check_entries(config)
    except ConfigError as err:
        place = _place(err, lookup, files, overrides)
        if place is not None:
            raise err.located(*place) from None
        raise
    return config


def _place(err: ConfigError, lookup: str | None, files, overrides: dict | None):
    key = lookup or err.key
    if not files or err.file is not None or key is None or key == "<top level>":
        return None
    if overrides and key_depth(overrides, key_parts(key)) > 0:
        return None
    return locate_key(files, key)


# ----------------------------------------------------------------- cross-references

# (section, key path inside one of its entries, the section the value names)
REFERENCES = (
    ("sr", ("era5",), "era5"),
    ("sr", ("igra",), "igra"),
    ("bridge", ("cells",), "cells"),
    ("igra", ("collocate", "era5"), "era5"),
    ("igra", ("synthetic", "era5"), "era5"),  # read for source 'synthetic' only
)


def check_references(config: dict) -> None:
    """Every name that refers to another entry (`sr.<x>.era5`, `sr.<x>.igra`,
    `bridge.<x>.cells`, `igra.<x>.collocate.era5`, `igra.<x>.synthetic.era5` of a synthetic
    source) is defined; else ConfigError naming that key and the defined names. `config`:
    a validated workflow config (defaults filled)."""
    for section, path, target in REFERENCES:
        for name, entry in sorted(config[section].items()):
            if path == ("synthetic", "era5") and entry["source"] != "synthetic":
                continue
            value = entry
            for part in path:
                value = value[part]
            if value is None:
                continue
            defined = sorted(config[target])
            if value in defined:
                continue
            key = ".".join((section, name, *path))
            if defined:
                raise ConfigError(key, f"'{value}' is not a defined {target} dataset; defined: {defined}")
            raise ConfigError(key, f"'{value}': no {target} dataset is defined (add an entry under `{target}:`)")


# ----------------------------------------------------------------- rules across keys


def _sub(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def sr_entry_rules(entry: dict, where: str = "") -> None:
    """Rules across the keys of one validated `sr` entry (`where`: its key, for errors)."""
    split = entry["train"]["split"]
    if split["train_fraction"] >= 1 and not (split["train_start"] or split["train_end"]):
        raise ConfigError(
            _sub(where, "train.split.train_fraction"),
            f"{split['train_fraction']} trains on every time and leaves no held-out times to sample and evaluate; "
            "use a fraction below 1, or train_start/train_end (and test_start/test_end)",
        )


def bridge_entry_rules(entry: dict, where: str = "") -> None:
    """Rules across the keys of one validated `bridge` entry (`where`: its key, for errors;
    bridge-fit and bridge-evaluate check their `--spec` with `where` empty)."""
    reference = entry["model"]["reference"]
    if reference["class"] == "parametric" and not reference["drift"]:
        raise ConfigError(
            _sub(where, "model.reference.drift"),
            "the parametric class needs a drift: a built-in name (lotka_volterra, repressilator) or 'module:function'",
        )
    sigma = reference["sigma"]
    if sigma["debias"] == "bootstrap" and not sigma["learn"]:
        raise ConfigError(
            _sub(where, "model.reference.sigma.debias"),
            "'bootstrap' corrects the bias of a learned sigma, and sigma is fixed here: set model.reference.sigma.learn: true, or debias: none",
        )
    if entry["max_cells"] is not None and entry["max_cells"] < entry["min_cells"]:
        raise ConfigError(
            _sub(where, "max_cells"),
            f"{entry['max_cells']} is below min_cells = {entry['min_cells']}: every larger snapshot would be cut below the fewest cells the bridge fits and scores on",
        )


def check_entries(config: dict) -> None:
    """Rules across keys, per entry (`sr_entry_rules`, `bridge_entry_rules`), and what a
    bridge experiment can know of simulated snapshots before they exist: their number
    (`cells.<d>.simulate.times`) against `evaluate.holdout`, their size
    (`simulate.n_cells`) against `min_cells`. `config`: validated, references checked."""
    from .bridge.splits import splits_from_config

    for name, entry in sorted(config["sr"].items()):
        sr_entry_rules(entry, f"sr.{name}")
    for name, entry in sorted(config["bridge"].items()):
        where = f"bridge.{name}"
        bridge_entry_rules(entry, where)
        cells = config["cells"][entry["cells"]]
        if cells["source"] != "simulate":
            continue
        sim = cells["simulate"]
        if sim["times"]:
            n = len(set(sim["times"]))
            splits_from_config(
                entry["evaluate"]["holdout"],
                n,
                key=f"{where}.evaluate.holdout",
                where=f"cells.{entry['cells']} (simulate.times)",
            )
        counts = sim["n_cells"] if isinstance(sim["n_cells"], list) else [sim["n_cells"]]
        if counts and min(counts) < entry["min_cells"]:
            raise ConfigError(
                f"{where}.min_cells",
                f"cells.{entry['cells']} simulates {min(counts)} cells in a snapshot (simulate.n_cells), fewer than min_cells = {entry['min_cells']}: "
                "simulate more cells, or lower min_cells only if so few cells can stand for a snapshot",
            )


def _merge(base: dict, update: dict) -> dict:
    """`update` merged into `base` as Snakemake merges config files (nested mappings key by key)."""
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = copy.deepcopy(v)
    return base


def load_config(path: str | Path) -> dict:
    """Read a YAML config file and validate it (errors name the file and line)."""
    return load_configs([path])


def load_configs(paths) -> dict:
    """Read config files, merge them in order (the later wins, as Snakemake's
    `--configfile a.yaml b.yaml`) and validate the result; errors name the file and line."""
    config: dict = {}
    for p in paths:
        _merge(config, read_config_file(p))
    return validate_config(config, files=list(paths))


def parse_spec(text: str, what: str = "--spec") -> dict:
    """The JSON config entry a rule passes to the CLI."""
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError(what, f"not valid JSON: {err}") from None
    if not isinstance(spec, dict):
        raise ConfigError(what, "expected a JSON object")
    return spec
