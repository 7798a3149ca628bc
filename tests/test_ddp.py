"""DDP: `torchrun --standalone --nproc_per_node 2` with gloo on CPU matches a single-process run
with the same global batch (issue 6, "Multi-GPU and multi-node training")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import bin_path
from scorebridge.core.checkpoint import list_checkpoints
from scorebridge.sr.data import write_toy_era5

SPEC = {
    "era5": "toy",
    "seed": 5,
    "train": {
        "variables": ["t", "u"],
        "levels": [850],
        "steps": 30,
        "batch_size": 8,
        "checkpoint_every": 10,
        "log_every": 5,
        "model": {"base": 8, "mults": [1, 2]},
        "threads": 1,
        "device": "cpu",
    },
}


def _env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SCOREBRIDGE_NO_PROGRESS": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


@pytest.mark.slow
def test_ddp_gloo_two_processes_matches_single(tmp_path):
    era5 = write_toy_era5(tmp_path / "toy.zarr", ntime=10, nlat=8, nlon=12, variables=("t", "u"), seed=4)
    args = ["sr-train", "--spec", json.dumps(SPEC), "--experiment", "toy", "--era5", str(era5)]
    ddp = subprocess.run(
        [
            bin_path("torchrun"),
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "scorebridge",
            *args,
            "--checkpoint-dir",
            str(tmp_path / "ck2"),
            "--out",
            str(tmp_path / "ddp.pt"),
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert ddp.returncode == 0, ddp.stdout[-3000:] + ddp.stderr[-5000:]
    one = subprocess.run(
        [bin_path("scorebridge"), *args, "--checkpoint-dir", str(tmp_path / "ck1"), "--out", str(tmp_path / "one.pt")],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-5000:]

    a = torch.load(tmp_path / "ddp.pt", weights_only=False)
    b = torch.load(tmp_path / "one.pt", weights_only=False)
    assert a["info"]["world_size"] == 2 and b["info"]["world_size"] == 1
    la = np.array([v for _, v in a["losses"]])
    lb = np.array([v for _, v in b["losses"]])
    assert len(la) == len(lb) == SPEC["train"]["steps"]
    np.testing.assert_allclose(la, lb, rtol=1e-3, atol=1e-5)
    # weights: Adam divides by sqrt(v), so float-rounding differences of near-zero gradients
    # move single weights by ~lr; compare each tensor relative to its norm
    for name, ref in b["ema"].items():
        if ref.dtype.is_floating_point and ref.norm() > 0:
            assert (a["ema"][name] - ref).norm() <= 1e-2 * ref.norm(), name
    # rank 0 alone wrote checkpoints (one folder, the same steps as the single run); one summary printed
    dirs = list((tmp_path / "ck2").iterdir())
    assert len(dirs) == 1
    assert [s for s, _ in list_checkpoints(dirs[0])] == [
        s for d in (tmp_path / "ck1").iterdir() for s, _ in list_checkpoints(d)
    ]
    assert ddp.stdout.count('"world_size": 2') == 1


def test_rule_launches_torchrun_when_resources_ask(tmp_path):
    """sr_train runs torchrun for nproc > 1 on CPU (and for > 1 GPU), and srun + torchrun with a
    c10d rendezvous for > 1 node (the default, one process, is in every other workflow run)."""
    import yaml

    from conftest import ROOT, run_snakemake

    base = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    exp = next(iter(base["sr"]))
    cases = {
        # torchrun through the interpreter Snakemake runs under (python -m torch.distributed.run)
        "cpu2": (
            {},
            {"device": "cpu", "nproc": 2},
            f"{sys.executable} -m torch.distributed.run --standalone --nproc_per_node 2 -m scorebridge sr-train",
        ),
        "nodes": (
            {"sr_train": {"gpus": 8, "nodes": 2}},
            {},
            f"srun --ntasks-per-node 1 {sys.executable} -m torch.distributed.run --nnodes 2 --nproc_per_node 4 --rdzv_backend c10d",
        ),
    }
    for name, (resources, train, expected) in cases.items():
        cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
        cfg["sr"][exp]["train"] = {**cfg["sr"][exp].get("train", {}), **train}
        cfg.setdefault("resources", {}).update(resources)
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        proc = run_snakemake(
            "-n",
            "-p",
            "--forceall",
            "--configfile",
            str(path),
            "-d",
            str(tmp_path / name),
            f"results/sr/{exp}/checkpoint.pt",
            "-s",
            str(ROOT / "Snakefile"),
        )
        lines = [ln for ln in proc.stdout.splitlines() if "sr-train" in ln]
        assert lines and expected in lines[0], (name, lines[:1])
