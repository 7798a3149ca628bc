"""Shared fixtures: repository paths, the real sample data in ../shared/data, CLI runner."""

from __future__ import annotations

import os
import shutil
import sqlite3  # noqa: F401 - before eccodes' bundled SQLite 3.26 (see scorebridge/__init__.py)
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Real sample files live beside the project (../shared/data) or where SCOREBRIDGE_SHARED_DATA points.
SHARED_DATA = Path(os.environ.get("SCOREBRIDGE_SHARED_DATA", ROOT.parent / "shared" / "data"))

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("SCOREBRIDGE_NO_PROGRESS", "1")


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", help="torch device for model tests (cpu, cuda)")


@pytest.fixture(scope="session")
def device(request) -> str:
    return request.config.getoption("--device")


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


def shared_file(*parts: str) -> Path:
    """A file from ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real sample file {path} not present (set SCOREBRIDGE_SHARED_DATA)")
    return path


@pytest.fixture
def shared():
    return shared_file


def bin_path(name: str) -> str:
    """An executable of this environment (the venv's bin first)."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else (shutil.which(name) or name)


def run_cli(
    *args: str, cwd: Path | str | None = None, check: bool = True, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run `scorebridge <args>` in a subprocess; return the completed process."""
    full_env = {**os.environ, **(env or {})}
    full_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{full_env.get('PATH', '')}"
    proc = subprocess.run(
        [bin_path("scorebridge"), *map(str, args)], cwd=cwd, capture_output=True, text=True, env=full_env
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"scorebridge {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        )
    return proc


def run_snakemake(
    *args: str, cwd: Path | str = ROOT, check: bool = True, env: dict | None = None, timeout: int = 1200
) -> subprocess.CompletedProcess:
    """Run snakemake with this environment's binaries on PATH."""
    full_env = {**os.environ, **(env or {})}
    full_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{full_env.get('PATH', '')}"
    proc = subprocess.run(
        [bin_path("snakemake"), *map(str, args)], cwd=cwd, capture_output=True, text=True, env=full_env, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(map(str, args))} failed ({proc.returncode}):\n{proc.stdout[-5000:]}\n{proc.stderr[-10000:]}"
        )
    return proc
