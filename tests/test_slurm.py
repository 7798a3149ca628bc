"""The workflow through a real SLURM cluster with profiles/slurm.

Needs a running cluster (`sudo bash scripts/slurm-up.sh` starts a single-node one; `.ci/run`
does that before the tests); skipped with the reason where there is none. Checks that
every job really went through sbatch (the job ids snakemake reports are jobs SLURM knows,
each with its log), that the outputs equal a local run's, that MLflow runs logged by SLURM
jobs land in the experiment `tracking_init` created (MLFLOW_TRACKING_URI and the
invocation id reach the jobs), and that a failed or cancelled job is reported with its log
paths and a rerun resumes only what is missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, bin_path, run_snakemake

# Status by squeue (the test cluster has no accounting, so no sacct; MinJobAge=3600 keeps
# finished jobs visible) and short polling intervals, to keep the tests quick.
SLURM_ARGS = [
    "--profile",
    str(ROOT / "profiles" / "slurm"),
    "--slurm-status-command",
    "squeue",
    "--slurm-init-seconds-before-status-checks",
    "1",
    "--seconds-between-status-checks",
    "2",
    "--latency-wait",
    "5",
]
SUBMITTED = re.compile(r"Job \d+ has been submitted with SLURM jobid (\d+) \(log: (\S+?)\)\.")


def _slurm_unavailable() -> str | None:
    if not shutil.which("sinfo") or not shutil.which("sbatch"):
        return "SLURM is not installed here (no sinfo/sbatch); `sudo bash scripts/slurm-up.sh` starts a local cluster"
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo did not answer within 20 s: the SLURM controller is down"
    if proc.returncode != 0:
        return f"the SLURM cluster is down (sinfo: {proc.stderr.strip()}); `sudo bash scripts/slurm-up.sh` starts it"
    states = {s.strip().rstrip("*~#") for s in proc.stdout.split()}
    if not states & {"idle", "mix", "alloc", "comp"}:
        return f"no SLURM node is up (node states: {sorted(states) or 'none'})"
    return None


@pytest.fixture(scope="module")
def slurm():
    reason = _slurm_unavailable()
    if reason:
        pytest.skip(reason)


def smk(workdir: Path, config: Path, *args: str, check: bool = True, env: dict | None = None, timeout: int = 900):
    return run_snakemake(
        "-s",
        str(ROOT / "Snakefile"),
        "-d",
        str(workdir),
        "--configfile",
        str(config),
        *args,
        cwd=workdir,
        check=check,
        env=env,
        timeout=timeout,
    )


def smk_popen(workdir: Path, config: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    full_env = {**os.environ, **(env or {})}
    full_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{full_env.get('PATH', '')}"
    log = open(workdir / "snakemake.out", "w")
    return subprocess.Popen(
        [bin_path("snakemake"), "-s", str(ROOT / "Snakefile"), "-d", str(workdir), "--configfile", str(config), *args],
        cwd=workdir,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        env=full_env,
        start_new_session=True,
    )


def slurm_states(job_ids) -> dict[str, str]:
    """SLURM's own record of the jobs (squeue keeps finished ones for MinJobAge)."""
    proc = subprocess.run(
        ["squeue", "-h", "-t", "all", "-j", ",".join(job_ids), "-o", "%i %T"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return dict(line.split() for line in proc.stdout.splitlines() if line.strip())


def slurm_job(job_id: str) -> dict[str, str]:
    """`scontrol show job` as a dict (finished jobs stay for MinJobAge)."""
    proc = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=30)
    return dict(field.split("=", 1) for field in proc.stdout.split() if "=" in field)


def default_partition() -> str:
    proc = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=30)
    return next(p.rstrip("*") for p in proc.stdout.split() if p.endswith("*"))


def submitted(out: str) -> dict[str, tuple[str, Path]]:
    """rule/wildcards (from the SLURM log path) -> (SLURM job id, log path)."""
    jobs = {}
    for job_id, log in SUBMITTED.findall(out):
        log = Path(log)
        parts = log.parts[log.parts.index("slurm_logs") + 1 : -1]  # rule_<rule>[/<wildcards>]
        jobs["/".join(parts)] = (job_id, log)
    return jobs


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# Small enough for a 2-CPU node: the ERA5 data rules and a few steps of the SR prior
# (the MLflow check). Memory and time requests fit any test machine.
TINY = {
    "seed": 0,
    "era5": {
        "tiny": {
            "source": "synthetic",
            "variables": ["t"],
            "levels": [850],
            "synthetic": {"nlat": 16, "nlon": 16, "ntime": 8},
        }
    },
    "sr": {
        "tiny": {
            "era5": "tiny",
            "train": {
                "steps": 3,
                "batch_size": 2,
                "model": {"base": 8, "mults": [1, 2]},
                "checkpoint_every": 0,
                "log_every": 1,
                "device": "cpu",
                "threads": 1,
            },
        }
    },
    # One CPU per job, so that two jobs share the 2-CPU test node; sr_train's own entry
    # wins over `default` (checked in SLURM's record of the job).
    "resources": {"default": {"mem_mb": 1000, "runtime": 10, "cpus": 1}, "sr_train": {"mem_mb": 1200, "runtime": 15}},
}
DATA_TARGETS = ["results/data/era5/tiny.zarr"]
SLURM_TARGETS = DATA_TARGETS + ["results/sr/tiny/checkpoint.pt"]


@pytest.mark.slow
def test_workflow_through_slurm(slurm, tmp_path, monkeypatch):
    import mlflow
    import xarray as xr

    on_slurm, local = tmp_path / "slurm", tmp_path / "local"
    on_slurm.mkdir()
    local.mkdir()
    tiny = {
        **TINY,
        "resources": {
            **TINY["resources"],
            "default": {**TINY["resources"]["default"], "partition": default_partition()},
        },
    }
    config = write_config(tmp_path / "config.yaml", tiny)
    uri = f"sqlite:///{tmp_path / 'server' / 'mlflow.db'}"
    (tmp_path / "server").mkdir()
    env = {"MLFLOW_TRACKING_URI": uri}
    monkeypatch.delenv("SCOREBRIDGE_INVOCATION", raising=False)  # the Snakefile makes one per call
    env_local = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'local.db'}"}

    # The local reference run of the data rules overlaps with the cluster run.
    ref = smk_popen(local, config, "--cores", "1", *DATA_TARGETS, env=env_local)
    proc = smk(on_slurm, config, *SLURM_ARGS, *SLURM_TARGETS, env=env)
    out = proc.stdout + proc.stderr
    assert ref.wait(timeout=900) == 0, (local / "snakemake.out").read_text()[-5000:]

    # Every job went through sbatch: one SLURM job per rule instance, each known to SLURM
    # as completed, each with its SLURM log.
    expected = {"rule_era5_fetch/tiny", "rule_era5_ingest/tiny", "rule_tracking_init", "rule_sr_train/tiny"}
    jobs = submitted(out)
    assert set(jobs) == expected, out[-5000:]
    finished = re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", out)
    assert sorted(finished) == sorted(k.split("/")[0][len("rule_") :] for k in expected), out[-5000:]
    states = slurm_states([job_id for job_id, _ in jobs.values()])
    assert set(states.values()) == {"COMPLETED"}, states
    assert len(states) == len(expected)
    for job_id, log in jobs.values():
        assert log.exists() and on_slurm / ".snakemake" / "slurm_logs" in log.parents, log
        assert "slurm-jobstep" in log.read_text()  # the job re-entered snakemake inside the allocation

    # The config's resources reached sbatch (rule entry over `default` over built-in).
    partition = tiny["resources"]["default"]["partition"]
    train, fetch = slurm_job(jobs["rule_sr_train/tiny"][0]), slurm_job(jobs["rule_era5_fetch/tiny"][0])
    assert (train["TimeLimit"], train["MinMemoryNode"], train["NumCPUs"], train["Partition"]) == (
        "00:15:00",
        "1200M",
        "1",
        partition,
    )
    assert (fetch["TimeLimit"], fetch["MinMemoryNode"], fetch["NumCPUs"], fetch["Partition"]) == (
        "00:10:00",
        "1000M",
        "1",
        partition,
    )
    assert train["WorkDir"] == str(on_slurm)

    # The outputs equal the local run's.
    for target in DATA_TARGETS:
        a = xr.open_zarr(on_slurm / target, consolidated=False)
        b = xr.open_zarr(local / target, consolidated=False)
        xr.testing.assert_equal(a.load(), b.load())
        assert set(a.attrs) == set(b.attrs)

    # MLflow: tracking_init (a SLURM job) created the experiment in the store named by
    # MLFLOW_TRACKING_URI, and sr_train (another SLURM job) logged its run there, tagged
    # with its SLURM job id and the invocation id the Snakefile made for this call.
    experiments = json.loads((on_slurm / "results" / "mlflow" / "experiments.json").read_text())
    assert experiments["uri"] == uri
    assert re.fullmatch(r"[0-9a-f]{32}", experiments["invocation"] or ""), experiments
    exp_id = experiments["experiments"]["sr"]["tiny"]
    client = mlflow.MlflowClient(tracking_uri=uri)
    runs = client.search_runs([exp_id])
    assert len(runs) == 1, [r.info for r in runs]
    tags = runs[0].data.tags
    assert tags["scorebridge.rule"] == "sr_train"
    assert tags["scorebridge.slurm_job_id"] == jobs["rule_sr_train/tiny"][0]
    assert tags["scorebridge.invocation"] == experiments["invocation"]  # one id across the jobs of one call
    assert runs[0].info.status == "FINISHED"
    assert not (on_slurm / "results" / "mlflow" / "mlflow.db").exists()  # nothing went to the default store


@pytest.mark.slow
def test_failed_and_cancelled_jobs(slurm, tmp_path):
    """A job that exits nonzero and one cancelled with scancel while running: snakemake
    reports each with its rule log and SLURM log; a rerun runs exactly those two."""
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "bad.npz").write_bytes(b"this is not an npz archive\n" * 20)  # fails inside the job
    os.mkfifo(inputs / "hang.npz")  # the job blocks reading it until cancelled
    config = write_config(
        tmp_path / "config.yaml",
        {
            "cells": {
                "good": {"source": "simulate", "simulate": {"system": "lotka_volterra", "n_cells": 40}},
                "bad": {"source": "npz", "path": str(inputs / "bad.npz")},
                "hang": {"source": "npz", "path": str(inputs / "hang.npz")},
            },
            "resources": {"default": {"mem_mb": 500, "runtime": 10}},
        },
    )
    # One wave of three jobs: a simulation that succeeds, an ingestion that fails, one that hangs.
    targets = ["results/raw/cells/good.npz"] + [f"results/data/cells/{name}.zarr" for name in ("bad", "hang")]
    proc = smk_popen(tmp_path, config, *SLURM_ARGS, "--keep-going", *targets)
    out_file = tmp_path / "snakemake.out"
    try:
        # Cancel the hanging job once SLURM runs it.
        deadline = time.time() + 600
        hang_id = None
        while time.time() < deadline and proc.poll() is None:
            hang = submitted(out_file.read_text()).get("rule_cells_ingest/hang")
            if hang and slurm_states([hang[0]]).get(hang[0]) == "RUNNING":
                hang_id = hang[0]
                subprocess.run(["scancel", hang_id], check=True, timeout=30)
                break
            time.sleep(1)
        assert hang_id, f"the hanging job never ran:\n{out_file.read_text()[-5000:]}"
        rc = proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
    out = out_file.read_text()
    assert rc != 0, out[-5000:]
    jobs = submitted(out)

    # The failed job: SLURM state, its rule log (with the reader's error) and SLURM log.
    bad_id, bad_slurm_log = jobs["rule_cells_ingest/bad"]
    assert slurm_states([bad_id])[bad_id] == "FAILED"
    assert re.search(rf"SLURM-job '{bad_id}' failed, SLURM status is: 'FAILED'", out), out[-5000:]
    assert f"results/logs/cells_ingest/bad.log, {bad_slurm_log}" in out
    assert bad_slurm_log.exists()
    assert "bad.npz" in (tmp_path / "results/logs/cells_ingest/bad.log").read_text()

    # The cancelled job.
    hang_slurm_log = jobs["rule_cells_ingest/hang"][1]
    assert slurm_states([hang_id])[hang_id] == "CANCELLED"
    assert re.search(rf"SLURM-job '{hang_id}' failed, SLURM status is: 'CANCELLED'", out), out[-5000:]
    assert f"results/logs/cells_ingest/hang.log, {hang_slurm_log}" in out
    assert hang_slurm_log.exists()

    # The rest finished, and nothing half-written looks complete.
    good = tmp_path / "results/raw/cells/good.npz"
    assert slurm_states([jobs["rule_cells_simulate/good"][0]]) == {jobs["rule_cells_simulate/good"][0]: "COMPLETED"}
    assert not (tmp_path / "results/data/cells/bad.zarr").exists()
    assert not (tmp_path / "results/data/cells/hang.zarr").exists()
    good_mtime = good.stat().st_mtime_ns

    # Fix the inputs; the rerun resumes exactly the two missing outputs, again on SLURM.
    (inputs / "hang.npz").unlink()
    for name in ("bad", "hang"):
        shutil.copy(good, inputs / f"{name}.npz")
    rerun = smk(tmp_path, config, *SLURM_ARGS, *targets)
    out = rerun.stdout + rerun.stderr
    again = submitted(out)
    assert set(again) == {"rule_cells_ingest/bad", "rule_cells_ingest/hang"}, out[-5000:]
    assert sorted(re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", out)) == ["cells_ingest", "cells_ingest"]
    assert set(slurm_states([j for j, _ in again.values()]).values()) == {"COMPLETED"}
    assert good.stat().st_mtime_ns == good_mtime
    for name in ("bad", "hang"):
        assert (tmp_path / f"results/data/cells/{name}.zarr/zarr.json").exists()


def test_resources_from_config(tmp_path):
    """The config's `resources:` become the resources the SLURM plugin reads (no cluster
    needed: the dry run prints each job's resources): a rule's entry over `default` over
    the rule's built-in value; GPUs on SR training/sampling unless the device is cpu."""
    config = write_config(
        tmp_path / "config.yaml",
        {
            "era5": TINY["era5"],
            "sr": {
                "gpu": {"era5": "tiny"},
                "cpu": {"era5": "tiny", "train": {"device": "cpu"}, "sample": {"device": "cpu"}},
            },
            "resources": {
                "default": {"account": "proj", "partition": "short", "runtime": 20},
                "sr_train": {
                    "gpus": 2,
                    "gpu_model": "a100",
                    "nodes": 2,
                    "cpus": 8,
                    "partition": "gpu",
                    "mem_mb": 64000,
                },
            },
        },
    )
    proc = smk(tmp_path, config, "-n", "results/sr/gpu/samples.zarr", "results/sr/cpu/samples.zarr")
    jobs = {}
    for rule, wildcards, resources in re.findall(
        r"^rule (\w+):\n(?:    (?!resources).*\n)*?(?:    wildcards: (.*)\n)(?:    .*\n)*?    resources: (.*)$",
        proc.stdout,
        flags=re.M,
    ):
        jobs[(rule, wildcards)] = dict(item.split("=", 1) for item in resources.split(", "))
    train_gpu = jobs[("sr_train", "experiment=gpu")]
    assert {
        k: train_gpu.get(k)
        for k in ("gpu", "gpu_model", "nodes", "cpus_per_task", "slurm_partition", "slurm_account", "runtime", "mem_mb")
    } == {
        "gpu": "2",
        "gpu_model": "a100",
        "nodes": "2",
        "cpus_per_task": "8",
        "slurm_partition": "gpu",
        "slurm_account": "proj",
        "runtime": "20",
        "mem_mb": "64000",
    }
    assert "tasks" not in train_gpu  # sbatch --nodes gives a GPU job one task per node
    train_cpu = jobs[("sr_train", "experiment=cpu")]
    assert train_cpu["gpu"] == "0" and "gpu_model" not in train_cpu  # the config says CPU: no GPU asked
    assert train_cpu["tasks"] == "2"  # one DDP launcher per node
    assert jobs[("sr_sample", "experiment=gpu")]["gpu"] == "1"  # the built-in default for sampling
    assert jobs[("sr_sample", "experiment=cpu")]["gpu"] == "0"
    ingest = jobs[("era5_ingest", "dataset=tiny")]
    assert (ingest["slurm_partition"], ingest["slurm_account"], ingest["runtime"], ingest["mem_mb"], ingest["gpu"]) == (
        "short",
        "proj",
        "20",
        "4000",
        "0",
    )
