"""An interrupted forced rerun never leaves a state Snakemake takes as complete
(issue 12 item 11).

Snakemake deletes a job's outputs before the job starts, and again when it fails; a job
killed during a forced rerun (`snakemake -R bridge_fit`) therefore loses its previous
output whatever the job does. Before the fix, the next `snakemake` said "Nothing to be
done": the output of an intermediate rule (model.pt, samples.zarr) was gone while the
downstream outputs were still there, and Snakemake only rebuilds a missing intermediate
file when something downstream must run. The default target now lists every output
of the model rules, so a missing one is rebuilt (and what depends on it rerun).
Every writer goes through `scorebridge.io.atomic_path`, so an output only appears under
its final name once complete; a temporary left by a killed job is removed by the next
write of that output.

Real `snakemake` runs on tiny configs; the job is killed with SIGKILL.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from conftest import ROOT, bin_path, run_snakemake

BRIDGE_CONFIG = {
    "seed": 0,
    "progress": False,
    "tracking": {"on_error": "warn"},
    "cells": {"ou": {"source": "simulate", "simulate": {"system": "ou", "n_cells": 40, "times": [0, 1, 2, 3]}}},
    "bridge": {
        "ou": {
            "cells": "ou",
            "model": {"reference": {"class": "linear"}, "max_iter": 2},
            "evaluate": {"holdout": [1], "trajectories": 10},
            "baselines": {"methods": ["previous", "otcfm"], "otcfm": {"steps": 20}},
        }
    },
}

SR_CONFIG = {
    "seed": 0,
    "progress": False,
    "tracking": {"on_error": "warn"},
    "era5": {
        "small": {
            "source": "synthetic",
            "variables": ["t"],
            "levels": [850],
            "synthetic": {"nlat": 16, "nlon": 16, "ntime": 12},
        }
    },
    "sr": {
        "small": {
            "era5": "small",
            "train": {
                "steps": 4,
                "batch_size": 2,
                "model": {"base": 8, "mults": [1, 2]},
                "checkpoint_every": 2,
                "log_every": 2,
                "device": "cpu",
                "threads": 1,
            },
            "sample": {
                "conditioning": ["coarse"],
                "members": 2,
                "steps": 2,
                "max_times": 1,
                "device": "cpu",
                "threads": 1,
                "calibrate": {"enabled": False},
            },
            "evaluate": {"map_channels": 1},
        }
    },
}


def _smk_args(workdir: Path) -> list[str]:
    return [
        "-s",
        str(ROOT / "Snakefile"),
        "-d",
        str(workdir),
        "--configfile",
        str(workdir / "config.yaml"),
        "--replace-workflow-config",
    ]


def _smk(workdir: Path, *args: str, check: bool = True):
    return run_snakemake(*_smk_args(workdir), *args, cwd=workdir, check=check, timeout=900)


def _setup(tmp_path: Path, config: dict) -> Path:
    workdir = tmp_path / "wd"
    workdir.mkdir()
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    _smk(workdir, "--cores", "1")
    return workdir


def _job_process(root: psutil.Process, command: str) -> psutil.Process | None:
    """The `python -m scorebridge <command>` process among `root`'s descendants."""
    for p in root.children(recursive=True):
        try:
            cmd = p.cmdline()
        except psutil.Error:
            continue
        if "scorebridge" in cmd and command in cmd:
            return p
    return None


def _kill_job_during_forced_rerun(workdir: Path, rule: str, command: str, after_s: float) -> str:
    """`snakemake -R <rule>`; SIGKILL the job's process `after_s` seconds after it starts.
    Returns Snakemake's output (it reports the job as failed)."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.Popen(
        [bin_path("snakemake"), *_smk_args(workdir), "--cores", "1", "-R", rule],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    root = psutil.Process(proc.pid)
    deadline = time.time() + 300
    job = None
    while proc.poll() is None and time.time() < deadline:
        job = _job_process(root, command)
        if job is not None:
            break
        time.sleep(0.05)
    assert job is not None, f"the {rule} job never started:\n{proc.communicate()[0]}"
    time.sleep(after_s)
    job.send_signal(signal.SIGKILL)
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode != 0, out
    return out


def _planned(workdir: Path, *triggers: str) -> str:
    proc = _smk(workdir, "-n", *(("--rerun-triggers", *triggers) if triggers else ()))
    return proc.stdout + proc.stderr


def _complete(workdir: Path) -> bool:
    """No output missing or older than its inputs (mtime only: a config default or code
    changed meanwhile in the checkout is not what is checked here)."""
    return "Nothing to be done" in _planned(workdir, "mtime")


def _leftovers(workdir: Path) -> list[Path]:
    return sorted(p for p in (workdir / "results").rglob(".*.partial-*"))


@pytest.mark.slow
def test_killed_forced_bridge_fit_is_rerun(tmp_path):
    workdir = _setup(tmp_path, BRIDGE_CONFIG)
    model = workdir / "results" / "bridge" / "ou" / "model.pt"
    assert model.exists()
    out = _kill_job_during_forced_rerun(workdir, "bridge_fit", "bridge-fit", after_s=1.0)
    assert "Error in rule bridge_fit" in out, out
    plan = _planned(workdir)
    assert "Nothing to be done" not in plan, plan
    assert "rule bridge_fit:" in plan and "rule bridge_evaluate:" in plan, plan
    _smk(workdir, "--cores", "1")
    assert model.exists() and not _leftovers(workdir)
    assert _complete(workdir)


@pytest.mark.slow
def test_killed_forced_sr_sample_is_rerun(tmp_path):
    workdir = _setup(tmp_path, SR_CONFIG)
    samples = workdir / "results" / "sr" / "small" / "samples.zarr"
    assert (samples / "t").exists()
    out = _kill_job_during_forced_rerun(workdir, "sr_sample", "sr-sample", after_s=1.0)
    assert "Error in rule sr_sample" in out, out
    assert not samples.exists() or (samples / "t").exists()  # the previous store or nothing, never a partial one
    plan = _planned(workdir)
    assert "Nothing to be done" not in plan, plan
    assert "rule sr_sample:" in plan and "rule sr_evaluate:" in plan and "rule sr_train:" not in plan, plan
    _smk(workdir, "--cores", "1")
    assert (samples / "t").exists() and not _leftovers(workdir)
    assert _complete(workdir)


def test_every_model_output_is_a_default_target(tmp_path):
    """Each model rule's outputs are inputs of `all` (what makes a missing one rebuilt)."""
    workdir = tmp_path / "wd"
    workdir.mkdir()
    (workdir / "config.yaml").write_text(yaml.safe_dump({**BRIDGE_CONFIG, **SR_CONFIG}, sort_keys=False))
    proc = _smk(workdir, "-n", "--forceall")
    out = proc.stdout + proc.stderr
    block = out[re.search(r"^(local)?rule all:", out, flags=re.M).start() :]
    inputs = block.split("input: ", 1)[1].split("\n", 1)[0].split(", ")
    for path in (
        "results/sr/small/checkpoint.pt",
        "results/sr/small/samples.zarr",
        "results/sr/small/metrics.json",
        "results/bridge/ou/model.pt",
        "results/bridge/ou/predictions.zarr",
        "results/bridge/ou/metrics.json",
    ):
        assert path in inputs, (path, inputs)


def test_atomic_path_removes_a_killed_writers_temporary(tmp_path):
    from scorebridge.io import atomic_path

    final = tmp_path / "samples.zarr"
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    stale = tmp_path / f".samples.zarr.partial-{dead}"
    (stale / "t").mkdir(parents=True)
    live = tmp_path / f".samples.zarr.partial-{os.getppid()}"  # a running process: maybe writing, kept
    live.mkdir()
    other = tmp_path / ".other.zarr.partial-1"
    other.mkdir()
    with atomic_path(final) as tmp:
        tmp.mkdir()
    assert final.is_dir() and not stale.exists() and live.exists() and other.exists()
