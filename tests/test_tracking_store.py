"""The tracking store under concurrent creation, the settings a job logs with, and the
dashboard links printed at the end of a workflow run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import bin_path
from scorebridge.tracking.options import ENV_TRACKING, job_settings
from scorebridge.tracking.store import store_lock
from scorebridge.tracking.uri import store_identity


def test_two_workflows_create_one_fresh_sqlite_store_at_once(tmp_path):
    """Issue 12 item 12: two `tracking-init` processes, started from different working
    directories, create the same fresh SQLite store at once: both succeed (without the
    lock the second one failed with `duplicate column name: step`), and both see the same
    experiment ids."""
    db = tmp_path / "shared" / "mlflow.db"
    tracking = json.dumps({"uri": f"sqlite:///{db}"})
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", ENV_TRACKING)}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    procs = []
    for name in ("wf_a", "wf_b", "wf_c"):
        work = tmp_path / name
        work.mkdir()
        out = work / "results" / "mlflow" / "experiments.json"
        procs.append(
            (
                out,
                subprocess.Popen(
                    [
                        bin_path("scorebridge"),
                        "tracking-init",
                        "--tracking",
                        tracking,
                        "--sr",
                        "x,y",
                        "--bridge",
                        "z",
                        "--out",
                        str(out),
                    ],
                    cwd=work,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                ),
            )
        )
    for out, proc in procs:
        text, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, text[-3000:]
        assert "duplicate column" not in text
    ids = [json.loads(out.read_text())["experiments"] for out, _ in procs]
    assert ids[0] == ids[1] == ids[2] and sorted(ids[0]["sr"]) == ["x", "y"]
    assert (tmp_path / "shared" / "mlflow.db.lock").exists()  # beside the database
    # model-training experiments: MLflow 3's UI opens them on the runs, not in its GenAI mode
    from mlflow import MlflowClient

    exp = MlflowClient(f"sqlite:///{db}").get_experiment(ids[0]["sr"]["x"])
    assert exp.tags.get("mlflow.experimentKind") == "custom_model_development"
    assert exp.tags.get("scorebridge.kind") == "sr"


def test_store_lock_waits_then_names_the_lock_file(tmp_path):
    """A lock held by another process: the waiter gives up after its wait with an error
    naming the lock file (no silent hang)."""
    from scorebridge.tracking.options import TrackingError

    db = tmp_path / "m.db"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time\n"
                "from scorebridge.tracking.store import store_lock\n"
                f"with store_lock({str(db)!r}):\n"
                "    print('held', flush=True)\n"
                "    time.sleep(60)\n"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        t0 = time.monotonic()
        with pytest.raises(TrackingError, match=r"m\.db\.lock: another process has held this lock"):
            with store_lock(db, wait=1.0):
                pass
        assert time.monotonic() - t0 < 10
    finally:
        holder.kill()
        holder.wait()
    with store_lock(db, wait=5.0) as path:  # released with its process
        assert path == Path(f"{db}.lock")


def test_store_identity_is_where_the_runs_go(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert store_identity({}) == {"uri": None, "artifact_root": None, "experiment_prefix": "scorebridge"}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://u:secret@host:5000")
    assert store_identity({"on_error": "fail"})["uri"] == "http://***@host:5000"  # env when the config has none
    assert store_identity({"uri": "http://a:5000", "experiment_prefix": "p", "system_metrics": {"interval": 1}}) == {
        "uri": "http://a:5000",
        "artifact_root": None,
        "experiment_prefix": "p",
    }


def test_job_settings_from_the_workflow_env_else_experiments_json(monkeypatch):
    info = {
        "uri": "sqlite:////x.db",
        "experiment_prefix": "pre",
        "on_error": "fail",
        "experiments": {},
        "system_metrics": {"enabled": False, "interval": 3},
        "register": True,
    }
    monkeypatch.delenv(ENV_TRACKING, raising=False)
    s = job_settings(info)
    assert (s.on_error, s.system_metrics.enabled, s.system_metrics.interval, s.register) == ("fail", False, 3, True)
    old = {k: info[k] for k in ("uri", "experiment_prefix", "on_error", "experiments")}  # an older experiments.json
    s = job_settings(old)
    assert (s.system_metrics.enabled, s.system_metrics.interval, s.register) == (True, 10, False)  # the schema's
    monkeypatch.setenv(
        ENV_TRACKING, json.dumps({"uri": "http://elsewhere", "on_error": "warn", "system_metrics": {"interval": 2}})
    )
    s = job_settings(info)
    assert (s.on_error, s.system_metrics.interval, s.register, s.experiment_prefix) == ("warn", 2, False, "pre")
    assert s.uri is None  # where runs go is experiments.json's, never the environment's
    monkeypatch.setenv(ENV_TRACKING, "{not json")
    from scorebridge.errors import ConfigError

    with pytest.raises(ConfigError, match="SCOREBRIDGE_TRACKING is not valid JSON"):
        job_settings(info)


# --------------------------------------------------------------------------- links


def _store(tmp_path: Path, sr=("alpha", "beta"), bridge=("lv",)) -> Path:
    from scorebridge.tracking.options import TrackingOptions
    from scorebridge.tracking.store import write_experiments

    out = tmp_path / "results" / "mlflow" / "experiments.json"
    write_experiments(TrackingOptions.of({}), list(sr), list(bridge), out, tmp_path / "results")
    return out


def test_run_links_of_one_invocation(tmp_path, monkeypatch, capsys):
    """The end-of-run summary lists the runs of this invocation only, each experiment
    with its runs table (`#/experiments/<id>/runs`) and each run with its page, the
    `mlflow ui` command for a SQLite store, and this invocation's pending files."""
    from scorebridge.tracking import tracked_run
    from scorebridge.tracking.links import print_run_links, run_links

    monkeypatch.delenv(ENV_TRACKING, raising=False)
    experiments = _store(tmp_path)
    info = json.loads(experiments.read_text())
    mine, other = uuid.uuid4().hex, uuid.uuid4().hex
    runs = {}
    for invocation, kind, name, rule in [
        (mine, "sr", "alpha", "sr_train"),
        (mine, "bridge", "lv", "bridge_fit"),
        (other, "sr", "beta", "sr_train"),
    ]:
        monkeypatch.setenv("SCOREBRIDGE_INVOCATION", invocation)
        with tracked_run(experiments, kind, name, rule, wildcards={"experiment": name}) as run:
            run.log_metrics({"x": 1.0})
        runs[name] = run.run_id
    # a job of this invocation that could not log
    pending = experiments.parent / "pending" / "sr" / "alpha" / "sr_sample-x.json"
    pending.parent.mkdir(parents=True)
    pending.write_text(json.dumps({"invocation": mine, "rule": "sr_sample"}))

    text = run_links(experiments, mine)
    db = tmp_path / "results" / "mlflow" / "mlflow.db"
    sr_id, lv_id = info["experiments"]["sr"]["alpha"], info["experiments"]["bridge"]["lv"]
    assert f"MLflow: 2 run(s) of this workflow run (tag scorebridge.invocation = '{mine}')" in text
    assert f"mlflow ui --backend-store-uri sqlite:///{db.resolve()} --host 127.0.0.1 --port 5000" in text
    assert (
        f"scorebridge/sr/alpha: http://127.0.0.1:5000/#/experiments/{sr_id}/runs?workflowType=machine_learning\n"
        in text
    )
    assert (
        f"sr_train[alpha] (FINISHED): http://127.0.0.1:5000/#/experiments/{sr_id}/runs/{runs['alpha']}?workflowType=machine_learning"
        in text
    )
    assert (
        f"scorebridge/bridge/lv: http://127.0.0.1:5000/#/experiments/{lv_id}/runs?workflowType=machine_learning\n"
        in text
    )
    assert runs["beta"] not in text and "scorebridge/sr/beta" not in text  # another invocation's
    assert "not logged yet: 1 run(s)" in text and "scorebridge tracking-sync" in text
    assert run_links(experiments, uuid.uuid4().hex) == ""  # an invocation that logged nothing

    print_run_links(experiments, mine)
    assert capsys.readouterr().out.strip() == text
    experiments.write_text("")  # `snakemake --touch` leaves an empty file: nothing to say, no error
    print_run_links(experiments, mine)
    experiments.write_text("{broken")
    print_run_links(experiments, mine)  # never raises
    assert "MLflow links of this run are not available" in capsys.readouterr().out


def test_dashboard_of_a_tracking_server():
    from scorebridge.tracking.links import dashboard, run_url, runs_url

    assert dashboard("http://mlflow.example.org:5000/") == ("http://mlflow.example.org:5000", None)
    base, serve = dashboard("postgresql://***@db/mlflow")
    assert base == "http://127.0.0.1:5000" and serve.startswith("mlflow ui --backend-store-uri ")
    assert runs_url("http://h:5000", "7") == "http://h:5000/#/experiments/7/runs?workflowType=machine_learning"
    assert (
        run_url("http://h:5000", "7", "abc") == "http://h:5000/#/experiments/7/runs/abc?workflowType=machine_learning"
    )
