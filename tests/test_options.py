"""The schema is the only place a config default is written.

- every options class has fields without defaults, each a key of its schema section;
- no module in src/ reads a schema key from a dict with a fallback (`.get("key", x)`);
- `options.build` fills exactly the schema's defaults and names the key on errors;
- a built (non-editable) wheel ships the schemas and validates a config.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import scorebridge
from scorebridge import options
from scorebridge.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "scorebridge"

# `.get("key", default)` on something that is not a config section (a metrics dict, an
# MLflow response, ...) where the key happens to share a name with a schema key:
# (path relative to src/scorebridge, key) -> why it is not a config default.
NOT_CONFIG: dict[tuple[str, str], str] = {}


def _import_all() -> None:
    for mod in pkgutil.walk_packages(scorebridge.__path__, "scorebridge."):
        if mod.name.endswith("__main__"):
            continue
        importlib.import_module(mod.name)


def _schema_keys(node, out: set[str]) -> set[str]:
    if isinstance(node, dict):
        for name, sub in (node.get("properties") or {}).items():
            out.add(name)
            _schema_keys(sub, out)
        for k in ("additionalProperties", "items"):
            if isinstance(node.get(k), dict):
                _schema_keys(node[k], out)
        for k in ("anyOf", "oneOf", "allOf"):
            for sub in node.get(k) or []:
                _schema_keys(sub, out)
    return out


def test_options_classes_match_their_schema_sections():
    _import_all()
    assert options.OPTIONS_CLASSES, "no options class registered"
    for cls in options.OPTIONS_CLASSES:
        node = options.schema_node(cls.SCHEMA_PATH)
        props = set(node.get("properties", {}))
        for f in dataclasses.fields(cls):
            assert f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING, (cls, f.name)
            assert f.name in props, f"{cls.__name__}.{f.name} is not a key of {'.'.join(cls.SCHEMA_PATH)}"
        # built from an empty section, every field holds the schema's default
        required = set(node.get("required", []))
        if not required:
            built = options.build(cls, {})
            if dataclasses.is_dataclass(built):
                filled = options.defaults(cls.SCHEMA_PATH)
                for f in dataclasses.fields(cls):
                    value = getattr(built, f.name)
                    if not dataclasses.is_dataclass(value):
                        assert value == filled[f.name], (cls.__name__, f.name)


def test_no_second_default_for_a_schema_key_in_src():
    keys = _schema_keys(options._schema(), set())
    assert {"gamma", "members", "max_cells"} <= keys
    pattern = re.compile(r"""\.get\(\s*["']([A-Za-z_][A-Za-z0-9_]*)["']\s*,\s*(?!None\s*\))""")
    found = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            for m in pattern.finditer(line):
                key = m.group(1)
                if key in keys and (rel, key) not in NOT_CONFIG:
                    found.append(f"{rel}:{lineno}: .get({key!r}, ...)")
    assert not found, "schema keys with a second default in src/ (read options instead):\n" + "\n".join(found)


def test_build_fills_schema_defaults_and_names_the_key():
    @dataclasses.dataclass
    class Tracking:
        SCHEMA_PATH = ("tracking",)
        uri: object
        experiment_prefix: object

    node = options.schema_node(("tracking",))
    if not {"uri", "experiment_prefix"} <= set(node.get("properties", {})):
        pytest.skip("tracking schema keys changed")
    t = options.build(Tracking, {})
    assert t.experiment_prefix == options.defaults(("tracking",))["experiment_prefix"]
    with pytest.raises(ConfigError) as err:
        options.build(Tracking, {"nope": 1})
    assert "tracking" in str(err.value) and "nope" in str(err.value)


def test_a_built_wheel_ships_the_schemas_and_validates(tmp_path):
    wheel_dir = tmp_path / "wheel"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(wheel_dir),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = wheel_dir.glob("scorebridge-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "scorebridge/schemas/config.schema.yaml" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import scorebridge, scorebridge.config as c, sys\n"
        f"assert scorebridge.__file__.startswith({str(site)!r}), scorebridge.__file__\n"
        "cfg = c.validate_config({'cells': {'x': {'source': 'npy', 'path': 'a.npy'}}})\n"
        "assert cfg['seed'] == 0 and cfg['cells']['x']['time_key'] == 'time'\n"
        "try:\n    c.validate_config({'nope': 1})\nexcept c.ConfigError as e:\n    print('ERR', e)\n"
    )
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "ERR" in out.stdout and "nope" in out.stdout
