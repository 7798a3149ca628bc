"""The rules' shell commands: every path quoted (a file name is data, never shell code),
the CLI run through the interpreter Snakemake runs under (no `scorebridge` on PATH
needed), per-rule benchmarks on the heavy rules, and a conda env file that carries its
own pins (issues 12 and 15)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml

from conftest import ROOT, SHARED_DATA

# Snakemake's marker file inside directory() outputs is no zarr component.
pytestmark = pytest.mark.filterwarnings("ignore:Object at .snakemake_timestamp")

RULES = ROOT / "workflow" / "rules"
# A name that runs `touch PWNED` when a shell sees it unquoted, with a space and a quote.
NASTY = "$(touch PWNED) `touch PWNED` it's 6 o'clock"
HEAVY = ["sr_train", "sr_sample", "sr_evaluate", "bridge_fit", "bridge_evaluate", "era5_ingest"]
# Placeholders a shell command may hold unquoted: ints, and values the workflow quotes
# itself (params.cli/python: SCOREBRIDGE/PYTHON, shlex.quote'd in common.smk; params.obs:
# obs_argument; params.srun/torchrun: fixed words).
UNQUOTED_OK = {"threads", "params.cli", "params.python", "params.obs", "params.srun", "params.torchrun"}


def rule_blocks() -> dict[str, str]:
    """Every rule's source text, by name, from workflow/rules/*.smk."""
    blocks = {}
    for path in sorted(RULES.glob("*.smk")):
        parts = re.split(r"^rule (\w+):\n", path.read_text(), flags=re.M)
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            blocks[name] = re.split(r"^\S", body, maxsplit=1, flags=re.M)[0]
    return blocks


def shell_command(block: str) -> str:
    """The rule's shell: string (the adjacent string literals joined)."""
    match = re.search(r"^    shell:\n((?:        .*\n?)+)", block, flags=re.M)
    assert match, block
    return "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', match.group(1)))


def test_every_path_in_every_rule_is_quoted():
    blocks = rule_blocks()
    assert {
        "era5_ingest",
        "igra_fetch",
        "igra_ingest",
        "cells_ingest",
        "sr_train",
        "bridge_evaluate",
        "tracking_init",
    } <= set(blocks)
    bad = []
    for name, block in blocks.items():
        command = shell_command(block)
        through = ("cli=SCOREBRIDGE," in block and command.startswith("{params.cli} ")) or (
            "python=PYTHON," in block and "{params.python} " in command
        )
        assert through, f"rule {name} does not run the CLI through the workflow's interpreter: {command}"
        assert not re.search(r"(^|[;&|}]|(?<!-m) )scorebridge\s", command), (
            f"rule {name} calls a bare `scorebridge` from PATH: {command}"
        )
        for field in re.findall(r"(?<!\{)\{([^{}]+)\}(?!\})", command):
            key, _, fmt = field.partition(":")
            if key not in UNQUOTED_OK and fmt != "q":
                bad.append(f"{name}: {{{field}}}")
    assert not bad, f"placeholders without :q (a path with a space or $(...) breaks or runs): {bad}"


def test_heavy_rules_record_benchmarks():
    blocks = rule_blocks()
    for name in HEAVY:
        match = re.search(
            r"^    benchmark:\n\s+f\"\{RESULTS\}/benchmarks/(\w+)/\{\{(\w+)\}\}\.tsv\"", blocks[name], flags=re.M
        )
        assert match and match.group(1) == name, (
            f'rule {name}: expected benchmark: f"{{RESULTS}}/benchmarks/{name}/{{{{<wildcard>}}}}.tsv"'
        )


def test_conda_env_is_generated_from_the_lock():
    env = yaml.safe_load((ROOT / "envs" / "scorebridge.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    lock = [
        ln.strip()
        for ln in (ROOT / "requirements.lock").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert pip == lock
    assert not [p for p in pip if p.startswith("-")], "no -r/-e lines: Snakemake builds the env from a copy elsewhere"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "sync-conda-env.py"), "--check"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


def write_era5(path: Path) -> xr.Dataset:
    """A small netCDF in the new CDS layout (valid_time, pressure_level, latitude 90..-90)."""
    rng = np.random.default_rng(0)
    times = pd.date_range("2020-01-01", periods=4, freq="6h")
    levels = np.array([1000.0, 850.0, 500.0])
    lat, lon = np.arange(34.0, 29.0, -1.0), np.arange(250.0, 256.0, 1.0)
    t = (250.0 + 10.0 * rng.standard_normal((4, 3, lat.size, lon.size))).astype(np.float32)
    ds = xr.Dataset(
        {
            "t": (
                ("valid_time", "pressure_level", "latitude", "longitude"),
                t,
                {"units": "K", "long_name": "Temperature", "standard_name": "air_temperature"},
            )
        },
        coords={
            "number": ((), np.int64(0)),
            "valid_time": ("valid_time", times.values, {"standard_name": "time"}),
            "pressure_level": ("pressure_level", levels, {"units": "hPa", "standard_name": "air_pressure"}),
            "latitude": ("latitude", lat, {"units": "degrees_north", "standard_name": "latitude"}),
            "longitude": ("longitude", lon, {"units": "degrees_east", "standard_name": "longitude"}),
            "expver": ("valid_time", np.array(["0001"] * 4, dtype=object)),
        },
    )
    ds.to_netcdf(path, encoding={"valid_time": {"units": "seconds since 1970-01-01", "dtype": "int64"}})
    return ds


def write_cells(path: Path) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    frame = pd.DataFrame(
        {"time": np.repeat([0, 1, 2], 20), "g1": rng.standard_normal(60), "g2": rng.standard_normal(60)}
    )
    frame.to_csv(path, index=False)
    return frame


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    """One real `snakemake` run of the ingest rules on files with shell syntax in their
    names, started by its absolute path with a PATH that holds no virtual environment."""
    work = tmp_path_factory.mktemp("rule safety")
    data = work / "data"
    data.mkdir()
    era5 = write_era5(data / f"era5_{NASTY}.nc")
    cells = write_cells(work / f"-cells {NASTY}.csv")  # a leading '-' is no option either
    config = {
        "seed": 0,
        "era5": {"nasty": {"source": "local", "files": ["data/*.nc"], "variables": ["t"], "levels": [850, 500]}},
        "cells": {
            "nasty": {"source": "csv", "path": f"-cells {NASTY}.csv", "time_key": "time", "features": ["g1", "g2"]}
        },
    }
    targets = ["results/data/era5/nasty.zarr", "results/data/cells/nasty.zarr"]
    sounding = SHARED_DATA / "igra" / "USM00074794-data-exampleportion.txt"
    if sounding.exists():
        shutil.copy(sounding, data / f"USM00074794 {NASTY}.txt")
        config["igra"] = {"nasty": {"source": "local", "files": ["data/*.txt"]}}
        targets.append("results/data/igra/nasty.zarr")
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    bare_path = "/usr/bin:/bin"
    assert shutil.which("scorebridge", path=bare_path) is None, "the test needs a PATH without scorebridge"
    env = {**os.environ, "PATH": bare_path, "SCOREBRIDGE_NO_PROGRESS": "1"}
    env.pop("VIRTUAL_ENV", None)
    snakemake = Path(sys.executable).parent / "snakemake"
    proc = subprocess.run(
        [
            str(snakemake),
            "-s",
            str(ROOT / "Snakefile"),
            "-d",
            str(work),
            "--configfile",
            str(work / "config.yaml"),
            "--cores",
            "2",
            *targets,
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    return work, proc, era5, cells, "igra" in config


def test_nasty_file_names_are_ingested_and_nothing_runs(ingested):
    work, proc, era5, cells, with_igra = ingested
    logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in sorted((work / "results" / "logs").rglob("*.log")))
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}\n{logs}"
    assert not list(work.rglob("PWNED")) and not (ROOT / "PWNED").exists(), "a file name ran as shell code"
    store = xr.open_zarr(work / "results" / "data" / "era5" / "nasty.zarr", consolidated=False).load()
    expected = era5.t.sel(pressure_level=[850.0, 500.0]).sortby("latitude").values
    np.testing.assert_array_equal(store.t.values, expected)
    assert store.time.size == 4 and store.level.values.tolist() == [850.0, 500.0]
    snapshots = xr.open_zarr(work / "results" / "data" / "cells" / "nasty.zarr", consolidated=False).load()
    np.testing.assert_allclose(snapshots["X"].values, cells[["g1", "g2"]].values, rtol=1e-6)
    assert snapshots["time"].values.tolist() == cells["time"].tolist()
    assert json.loads(snapshots.attrs["provenance"])["input"] == f"./-cells {NASTY}.csv"
    if with_igra:
        assert (work / "results" / "data" / "igra" / "nasty.zarr").is_dir()


def test_cli_runs_without_the_environment_on_path(ingested):
    """`.venv/bin/snakemake` without activation (issue 15: exit 127, scorebridge: command not found)."""
    work, proc, *_ = ingested
    assert proc.returncode == 0, proc.stderr[-6000:]
    assert "command not found" not in proc.stderr
    log = (work / "results" / "logs" / "era5_ingest" / "nasty.log").read_text()
    assert "command not found" not in log


def test_era5_ingest_writes_its_benchmark(ingested):
    work, proc, *_ = ingested
    assert proc.returncode == 0, proc.stderr[-6000:]
    table = pd.read_csv(work / "results" / "benchmarks" / "era5_ingest" / "nasty.tsv", sep="\t")
    assert {"s", "max_rss"} <= set(table.columns) and table["s"].iloc[0] > 0
