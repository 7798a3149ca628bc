"""The `tracking:` section in real `snakemake` runs (issue 12 item 13, issue 15).

- Changing where the runs go (the experiment prefix, the URI) reruns `tracking_init` and
  every job that logs, so the new experiments hold their runs; before, the call ran
  `tracking_init` alone and exited 0 ("100% done", no experiment ran), also hiding the
  jobs of an experiment added in the same call.
- Changing how jobs log (`on_error`, `system_metrics`) reruns nothing.
- At the end of a run, the dashboard links of the runs it made are printed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, bin_path

CELLS = {"ou": {"source": "simulate", "simulate": {"system": "ou", "n_cells": 30, "times": [0, 1, 2]}}}
BRIDGE = {"cells": "ou", "model": {"reference": {"class": "linear"}, "max_iter": 1}}
BASE = {"tracking": {"on_error": "warn"}, "cells": CELLS, "bridge": {"ou": BRIDGE}}


def snakemake(workdir: Path, config: dict, *args: str, env: dict | None = None) -> str:
    path = workdir / f"config-{abs(hash(json.dumps(config, sort_keys=True)))}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MLFLOW_TRACKING_URI", "SCOREBRIDGE_TRACKING", "SCOREBRIDGE_INVOCATION")
    }
    clean["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{clean.get('PATH', '')}"
    clean.update(env or {})
    proc = subprocess.run(
        [bin_path("snakemake"), "-s", str(ROOT / "Snakefile"), "-d", str(workdir), "--configfile", str(path), *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        env=clean,
        timeout=900,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-8000:]
    return out


def finished(out: str) -> list[str]:
    return sorted(re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", out))


def planned(out: str) -> dict[str, int]:
    block = out.split("Job stats:", 1)[1].split("\n\n", 1)[0] if "Job stats:" in out else ""
    return {
        m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, flags=re.M) if m.group(1) != "total"
    }


def targets(*names: str) -> list[str]:
    return [f"results/bridge/{n}/model.pt" for n in names]


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """The bridge experiment fitted once, logged to the default SQLite store."""
    work = tmp_path_factory.mktemp("tracking_wf")
    out = snakemake(work, BASE, "--cores", "2", *targets("ou"))
    return work, out


def _runs(work: Path, experiment: str) -> list:
    from mlflow import MlflowClient

    info = json.loads((work / "results" / "mlflow" / "experiments.json").read_text())
    client = MlflowClient(info["uri"])
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id])


@pytest.mark.slow
def test_first_run_prints_the_dashboard_links(done):
    work, out = done
    assert finished(out) == ["bridge_fit", "cells_ingest", "cells_simulate", "tracking_init"]
    (run,) = _runs(work, "scorebridge/bridge/ou")
    eid = run.info.experiment_id
    db = (work / "results" / "mlflow" / "mlflow.db").resolve()
    assert f"mlflow ui --backend-store-uri sqlite:///{db}" in out
    assert f"scorebridge/bridge/ou: http://127.0.0.1:5000/#/experiments/{eid}/runs?workflowType=machine_learning" in out
    assert (
        f"bridge_fit[ou] (FINISHED): http://127.0.0.1:5000/#/experiments/{eid}/runs/{run.info.run_id}?workflowType=machine_learning"
        in out
    )
    # the run has its model and its system metrics
    assert run.outputs.model_outputs and "system/cpu_utilization_percentage" in run.data.metrics


@pytest.mark.slow
def test_how_jobs_log_reruns_nothing(done):
    work, _ = done
    changed = {**BASE, "tracking": {"on_error": "fail", "system_metrics": {"interval": 3}, "register": True}}
    out = snakemake(work, changed, "-n", *targets("ou"))
    assert "Nothing to be done" in out, out[-3000:]


@pytest.mark.slow
def test_where_runs_go_reruns_every_logging_job(done):
    """Env MLFLOW_TRACKING_URI (with `tracking.uri: null`) is where the runs go too."""
    work, _ = done
    out = snakemake(work, BASE, "-n", *targets("ou"), env={"MLFLOW_TRACKING_URI": f"sqlite:///{work / 'other.db'}"})
    assert planned(out) == {"tracking_init": 1, "bridge_fit": 1}, out[-3000:]


@pytest.mark.slow
def test_changed_prefix_and_new_experiment_run_in_one_call(done, tmp_path):
    """The case that ran `tracking_init` alone: a new experiment prefix and a new
    experiment in one call. Now every job that logs runs, into the new experiments."""
    work, _ = done
    copy = tmp_path / "wf"
    shutil.copytree(work, copy, symlinks=True)  # the other tests keep the finished state
    # the store's absolute path moves with the copy: point the copy at its own database
    changed = {
        **BASE,
        "tracking": {
            "on_error": "warn",
            "experiment_prefix": "renamed",
            "uri": f"sqlite:///{copy / 'results' / 'mlflow' / 'mlflow.db'}",
        },
        "bridge": {"ou": BRIDGE, "ou2": BRIDGE},
    }
    out = snakemake(copy, changed, "--cores", "2", *targets("ou", "ou2"))
    assert finished(out) == ["bridge_fit", "bridge_fit", "tracking_init"], out[-5000:]
    assert "cells_simulate" not in finished(out)  # the data are kept
    for name in ("ou", "ou2"):
        (run,) = _runs(copy, f"renamed/bridge/{name}")
        assert run.info.status == "FINISHED" and run.data.tags["scorebridge.rule"] == "bridge_fit"
        assert (
            f"renamed/bridge/{name}: http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs?workflowType=machine_learning"
            in out
        )
    assert "MLflow: 2 run(s) of this workflow run" in out
    again = snakemake(copy, changed, "-n", *targets("ou", "ou2"))
    assert "Nothing to be done" in again
