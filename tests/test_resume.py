"""Kill -9 during training, rerun: resumes from the last checkpoint and ends with the same weights
(bitwise, on CPU with the same seed) as an uninterrupted run (issue 6, "Faults")."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import bin_path
from scorebridge.core.checkpoint import list_checkpoints
from scorebridge.sr.data import write_toy_era5

SPEC = {
    "era5": "toy",
    "seed": 11,
    "train": {
        "variables": ["t"],
        "steps": 100,
        "batch_size": 4,
        "crop": 8,
        "checkpoint_every": 10,
        "log_every": 10,
        "model": {"base": 8, "mults": [1, 2]},
        "threads": 1,
        "device": "cpu",
    },
}


def _cmd(era5: Path, ckdir: Path, out: Path) -> list[str]:
    return [
        bin_path("scorebridge"),
        "sr-train",
        "--spec",
        json.dumps(SPEC),
        "--experiment",
        "toy",
        "--era5",
        str(era5),
        "--checkpoint-dir",
        str(ckdir),
        "--out",
        str(out),
    ]


def _env() -> dict:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "SCOREBRIDGE_NO_PROGRESS": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }


@pytest.mark.slow
def test_kill9_then_rerun_matches_uninterrupted(tmp_path):
    era5 = write_toy_era5(tmp_path / "toy.zarr", ntime=12, nlat=8, nlon=8, variables=("t",), seed=2)
    ck_a, ck_b = tmp_path / "ck_killed", tmp_path / "ck_plain"

    # 1. start training, kill -9 as soon as the second checkpoint exists
    proc = subprocess.Popen(
        _cmd(era5, ck_a, tmp_path / "a.pt"),
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.time() + 240
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        steps = [s for d in ck_a.glob("*") for s, _ in list_checkpoints(d)]
        if steps and max(steps) >= 20:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            killed_at = max(steps)
            break
        time.sleep(0.02)
    out = proc.stdout.read().decode() if proc.stdout else ""
    assert killed_at is not None, f"training ended before it could be killed (rc {proc.returncode}):\n{out[-3000:]}"
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "a.pt").exists()
    left = [s for d in ck_a.glob("*") for s, _ in list_checkpoints(d)]
    assert 20 <= max(left) < SPEC["train"]["steps"], left

    # 2. rerun the same command: resumes and finishes
    rerun = subprocess.run(_cmd(era5, ck_a, tmp_path / "a.pt"), env=_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    summary = json.loads(rerun.stdout[rerun.stdout.index("{") :])
    assert summary["resumed_from"] is not None and summary["resumed_from"] >= 20

    # 3. an uninterrupted run in a separate process
    plain = subprocess.run(_cmd(era5, ck_b, tmp_path / "b.pt"), env=_env(), capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert json.loads(plain.stdout[plain.stdout.index("{") :])["resumed_from"] is None

    a = torch.load(tmp_path / "a.pt", weights_only=False)
    b = torch.load(tmp_path / "b.pt", weights_only=False)
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs after resume"
    assert a["losses"] == b["losses"]
    assert len(a["losses"]) == SPEC["train"]["steps"]
