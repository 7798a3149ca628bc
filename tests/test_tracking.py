"""MLflow tracking under concurrency: a fresh SQLite store and a real `mlflow server` on
loopback, >= 8 processes logging at once through `tracked_run`; secrets never reach the
store; an unreachable store never breaks the job (warn) or fails it clearly (fail)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from conftest import bin_path, run_cli
from scorebridge.provenance import is_secret_key, redact
from scorebridge.tracking import Scrubber, flatten, resolve_uri, strip_credentials

# Secrets planted in the environment, ~/.cdsapirc (via CDSAPI_RC) and the config; none may
# appear in any byte of the store.
CDS_KEY = "271828:0f1e2d3c-cds-env-secret-4b5a"
RC_KEY = "314159:9a8b7c6d-cds-rc-secret-1e2f"
TOKEN = "tok-config-secret-8d7c6b5a"
PASSWORD = "pw-url-secret-5e4d3c2b"
SPEC = {
    "era5": "default",
    "token": TOKEN,
    "source_url": f"https://alice:{PASSWORD}@data.example.org/era5",
    "time_key": "valid_time",  # not a secret: must stay readable
    "levels": [850, 500],
    "train": {"steps": 1200, "lr": 0.001, "batch_size": 4},
}
N_STEPS = 1200  # > 1000: the curve needs two log_batch requests
SECRETS = [CDS_KEY, CDS_KEY.split(":")[1], RC_KEY.split(":")[1], TOKEN, PASSWORD, "alice:"]


def job(experiments, kind: str, name: str, rule: str, out, spec: dict):
    """What a model job does with the tracking API: a training curve, final metrics,
    metrics.json, a text artifact holding secrets, a figure. Returns the run."""
    import matplotlib.pyplot as plt

    from scorebridge.io import write_json
    from scorebridge.plots import save_figure
    from scorebridge.tracking import tracked_run

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = out / "data.txt"
    data.write_text(f"dataset of {kind}/{name}\n")
    with tracked_run(
        experiments=experiments,
        kind=kind,
        experiment=name,
        rule=rule,
        wildcards={"experiment": name},
        spec=spec,
        datasets={"inputs": str(data)},
    ) as run:
        for step in range(N_STEPS):
            run.log_metrics({"train/loss": 1.0 / (step + 1), "train/lr": 0.001}, step=step)
        run.log_metrics({"rmse/t/850": 1.5, "rmse/t/500": 2.5})
        write_json(out / "metrics.json", {"rmse": {"t": {"850": 1.5, "500": 2.5}}, "who": f"{kind}/{name}"})
        run.log_artifact(out / "metrics.json")
        (out / "notes.txt").write_text(
            "key used: " + os.environ.get("CDSAPI_KEY", "") + "\nurl " + spec["source_url"] + "\n"
        )
        run.log_artifact(out / "notes.txt")
        fig, ax = plt.subplots()
        ax.plot(range(10))
        save_figure(fig, out / "figures" / "curve.png", run=run)
    return run


def _forked_job(env: dict, q, *args) -> None:
    try:
        # A fresh process as far as the store is concerned: no inherited engines or HTTP sessions.
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
        from mlflow.utils import request_utils

        SqlAlchemyStore._engine_map.clear()
        for name in ("_get_request_session", "_cached_get_request_session"):
            getattr(getattr(request_utils, name, None), "cache_clear", lambda: None)()
        os.environ.clear()
        os.environ.update(env)
        run = job(*args)
        q.put((args[1], args[2], run.run_id, run.online, run.pending(), None))
    except BaseException as err:  # noqa: BLE001 - reported to the parent, which fails the test
        q.put((args[1], args[2], None, False, {}, repr(err)))
        raise


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job_env(tmp: Path, invocation: str) -> dict:
    rc = tmp / "cdsapirc"
    rc.write_text(f"url: https://cds.climate.copernicus.eu/api\nkey: {RC_KEY}\n")
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(
        {
            "CDSAPI_KEY": CDS_KEY,
            "CDSAPI_RC": str(rc),
            "SCOREBRIDGE_INVOCATION": invocation,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "OMP_NUM_THREADS": "1",
            "MPLBACKEND": "Agg",
        }
    )
    return env


def store_bytes(*roots: Path) -> bytes:
    blobs = []
    for root in roots:
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        blobs += [p.read_bytes() for p in files]
    return b"\n".join(blobs)


KINDS = {"sr": ["alpha", "beta", "gamma", "delta"], "bridge": ["lv", "rep", "ou", "toy"]}


def init_store(tmp: Path, tracking: dict, env: dict) -> dict:
    out = tmp / "results" / "mlflow" / "experiments.json"
    run_cli(
        "tracking-init",
        "--tracking",
        json.dumps(tracking),
        "--sr",
        ",".join(KINDS["sr"]),
        "--bridge",
        ",".join(KINDS["bridge"]),
        "--out",
        out,
        cwd=tmp,
        env=env,
    )
    return json.loads(out.read_text())


def run_workers(tmp: Path, experiments: Path, env: dict) -> dict:
    """All 8 jobs at once, one process each, started together; {(kind, name): run_id}.

    The processes are forked from this (already warm) interpreter to save the ~3 s of
    imports each; each opens its own connections to the store, as a Snakemake job does.
    The real workflow with parallel jobs is run in tests/test_report.py.
    """
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = []
    for kind, names in KINDS.items():
        for name in names:
            spec = {**SPEC, "cds_key": CDS_KEY, "name": name}
            rule = "sr_train" if kind == "sr" else "bridge_fit"
            procs.append(
                ctx.Process(
                    target=_forked_job, args=(env, q, experiments, kind, name, rule, tmp / "out" / kind / name, spec)
                )
            )
    for p in procs:
        p.start()
    results = []
    deadline = time.monotonic() + 300
    while len(results) < len(procs):
        try:
            results.append(q.get(timeout=1))
        except Exception:  # queue.Empty
            dead = [p.exitcode for p in procs if p.exitcode not in (None, 0)]
            assert not dead and time.monotonic() < deadline, f"job processes died without a result: {dead}"
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0, f"a job process crashed (exit code {p.exitcode})"
    runs = {}
    for kind, name, run_id, online, pending, err in results:
        assert err is None, f"{kind}/{name} crashed: {err}"
        assert online and run_id, f"{kind}/{name} fell back to offline logging: {pending}"
        assert not any(pending[k] for k in ("params", "tags", "metrics", "artifacts", "datasets")), pending
        runs[(kind, name)] = run_id
    return runs


def check_runs(uri: str, info: dict, runs: dict, invocation: str) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    assert len(set(runs.values())) == len(runs) == 8
    for (kind, name), run_id in runs.items():
        run = client.get_run(run_id)
        exp = client.get_experiment(run.info.experiment_id)
        # the right experiment, by id and by name
        assert run.info.experiment_id == info["experiments"][kind][name]
        assert exp.name == f"scorebridge/{kind}/{name}"
        assert run.info.status == "FINISHED"
        tags = run.data.tags
        assert tags["scorebridge.rule"] == ("sr_train" if kind == "sr" else "bridge_fit")
        assert json.loads(tags["scorebridge.wildcards"]) == {"experiment": name}
        assert tags["scorebridge.invocation"] == invocation
        assert len(tags["git.commit"]) in (40, 7) and tags["git.dirty"] in ("true", "false")
        assert tags["version.mlflow"] and tags["version.torch"].startswith("2.13.0")
        assert len(tags["scorebridge.config_hash"]) == 16
        # params: the spec flattened, the secret-named key redacted, URL credentials stripped
        params = run.data.params
        assert params["train.steps"] == "1200" and params["train.lr"] == "0.001"
        assert params["levels"] == "[850, 500]" and params["name"] == name
        assert params["token"] == "***" and params["cds_key"] == "***"
        assert params["source_url"] == "https://***@data.example.org/era5"
        assert params["time_key"] == "valid_time"
        # metrics: the full curve with steps, final metrics by stable name
        hist = client.get_metric_history(run_id, "train/loss")
        assert sorted(m.step for m in hist) == list(range(N_STEPS))
        assert min(m.value for m in hist) == pytest.approx(1.0 / N_STEPS)
        assert run.data.metrics["rmse/t/850"] == 1.5 and run.data.metrics["rmse/t/500"] == 2.5
        # artifacts
        top = {a.path for a in client.list_artifacts(run_id)}
        assert {"metrics.json", "notes.txt", "figures"} <= top, top
        assert [a.path for a in client.list_artifacts(run_id, "figures")] == ["figures/curve.png"]
        local = Path(client.download_artifacts(run_id, "metrics.json"))
        assert json.loads(local.read_text())["who"] == f"{kind}/{name}"
        notes = Path(client.download_artifacts(run_id, "notes.txt")).read_text()
        assert "***" in notes and CDS_KEY not in notes
        # dataset input with its digest
        (ds,) = run.inputs.dataset_inputs
        assert ds.dataset.name == "inputs" and tags["dataset.inputs.digest"].startswith(ds.dataset.digest)
        context = {t.key: t.value for t in ds.tags}["mlflow.data.context"]
        assert context == "training"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sqlite")
    invocation = uuid.uuid4().hex
    env = job_env(tmp, invocation)
    info = init_store(tmp, {"on_error": "warn"}, env)
    return tmp, info, env, invocation


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 (free port, SQLite backend), stopped by its pid."""
    tmp = tmp_path_factory.mktemp("server")
    port = free_port()
    db = tmp / "server.db"
    art = tmp / "server-artifacts"
    log = open(tmp / "server.log", "w")
    proc = subprocess.Popen(
        [
            bin_path("mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{db}",
            "--artifacts-destination",
            str(art),
        ],
        cwd=tmp,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        import urllib.request

        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start:\n{(tmp / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield {"uri": f"http://127.0.0.1:{port}", "db": db, "artifacts": art, "tmp": tmp}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 15)  # the server and its worker, started in their own session
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
        log.close()


# --------------------------------------------------------------------------- units


def test_secret_key_matching_is_precise():
    secret = [
        "key",
        "KEY",
        "api_key",
        "CDSAPI_KEY",
        "cdsApiKey",
        "token",
        "hf_token",
        "MLFLOW_TRACKING_TOKEN",
        "password",
        "db.passwd",
        "aws_secret_access_key",
        "client_secret",
        "credentials",
        "auth",
        "private_key",
    ]
    plain = [
        "time_key",
        "sort_key",
        "keys",
        "monkey",
        "tokens_per_batch",
        "author",
        "level_key",
        "keyframe",
        "n_tokens",
    ]
    assert [k for k in secret if not is_secret_key(k)] == []
    assert [k for k in plain if is_secret_key(k)] == []
    assert redact({"time_key": "valid_time", "cds": {"key": "x"}, "token": 1}) == {
        "time_key": "valid_time",
        "cds": {"key": "***"},
        "token": "***",
    }


def test_strip_credentials_and_scrubber(monkeypatch):
    assert (
        strip_credentials("postgresql://u:p@db:5432/ml and https://tok@h/x")
        == "postgresql://***@db:5432/ml and https://***@h/x"
    )
    assert strip_credentials("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    monkeypatch.setenv("MY_SERVICE_TOKEN", "abcdef123456")
    monkeypatch.setenv("CDSAPI_KEY", CDS_KEY)
    s = Scrubber(extra=["my-config-secret"])
    text = s(f"a abcdef123456 b {CDS_KEY} c {CDS_KEY.split(':')[1]} d my-config-secret e https://u:p@x")
    assert text == "a *** b *** c *** d *** e https://***@x"
    assert s.leaks(b"xx abcdef123456") and not s.leaks(b"harmless")


def test_flatten_dotted_keys():
    assert flatten({"a": {"b": 1, "c": [850, 500]}, "d": None, "e": [{"x": 1}], "f": "s"}) == {
        "a.b": "1",
        "a.c": "[850, 500]",
        "d": "null",
        "e.0.x": "1",
        "f": "s",
    }


def test_uri_precedence_config_env_default(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri, src = resolve_uri({}, tmp_path / "results")
    assert (uri, src) == (f"sqlite:///{(tmp_path / 'results' / 'mlflow' / 'mlflow.db').resolve()}", "default")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert resolve_uri({"uri": None}, tmp_path) == ("http://127.0.0.1:5999", "env")
    assert resolve_uri({"uri": "http://10.0.0.1:5000"}, tmp_path) == ("http://10.0.0.1:5000", "config")
    monkeypatch.chdir(tmp_path)
    assert resolve_uri({"uri": "sqlite:///x/m.db"}, tmp_path)[0] == f"sqlite:///{tmp_path.resolve()}/x/m.db"
    from scorebridge.errors import ConfigError

    with pytest.raises(ConfigError, match="tracking.uri"):
        resolve_uri({"uri": "./mlruns"}, tmp_path)


# --------------------------------------------------------------------------- concurrency


def test_parallel_jobs_fresh_sqlite_store(sqlite_store):
    tmp, info, env, invocation = sqlite_store
    assert info["uri"].startswith("sqlite:////") and info["uri_source"] == "default"
    assert sorted(info["experiments"]["sr"]) == sorted(KINDS["sr"])
    runs = run_workers(tmp, tmp / "results" / "mlflow" / "experiments.json", env)
    check_runs(info["uri"], info, runs, invocation)
    # artifacts beside the database, no pending file, no stray store
    assert (tmp / "results" / "mlflow" / "artifacts" / "sr" / "alpha").is_dir()
    assert not (tmp / "results" / "mlflow" / "pending").exists()
    assert not (tmp / "mlruns").exists()
    blob = store_bytes(tmp / "results" / "mlflow")
    assert b"valid_time" in blob and b"train/loss" in blob  # the grep below can see the store
    leaked = [s for s in SECRETS if s.encode() in blob]
    assert not leaked, f"secrets in the store: {leaked}"


def test_parallel_jobs_mlflow_server(mlflow_server, tmp_path):
    invocation = uuid.uuid4().hex
    env = job_env(tmp_path, invocation)
    info = init_store(tmp_path, {"uri": mlflow_server["uri"], "on_error": "fail"}, env)
    assert info["uri"] == mlflow_server["uri"] and info["uri_source"] == "config" and info["artifact_root"] is None
    runs = run_workers(tmp_path, tmp_path / "results" / "mlflow" / "experiments.json", env)
    check_runs(mlflow_server["uri"], info, runs, invocation)
    assert not (tmp_path / "results" / "mlflow" / "mlflow.db").exists()  # everything went to the server
    blob = store_bytes(mlflow_server["db"], mlflow_server["artifacts"])
    assert b"train/loss" in blob and b"curve.png" not in b"" and len(blob) > 10_000
    leaked = [s for s in SECRETS if s.encode() in blob]
    assert not leaked, f"secrets in the server's store: {leaked}"


def test_tracking_init_is_idempotent(sqlite_store):
    from scorebridge.cli import main

    tmp, info, env, _ = sqlite_store
    again = tmp / "again.json"
    assert (
        main(
            [
                "tracking-init",
                "--tracking",
                "{}",
                "--sr",
                "alpha,new",
                "--bridge",
                "",
                "--results",
                str(tmp / "results"),
                "--out",
                str(again),
            ]
        )
        == 0
    )
    info2 = json.loads(again.read_text())
    assert info2["experiments"]["sr"]["alpha"] == info["experiments"]["sr"]["alpha"]
    assert info2["experiments"]["sr"]["new"] not in info["experiments"]["sr"].values()


# --------------------------------------------------------------------------- failures


def _unreachable_experiments(tmp: Path, info: dict, on_error: str) -> Path:
    bad = {**info, "uri": f"http://127.0.0.1:{free_port()}", "on_error": on_error}  # nothing listens there
    path = tmp / f"unreachable-{on_error}" / "experiments.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(bad))
    return path


def test_unreachable_store_warns_writes_outputs_and_pending(sqlite_store, tmp_path, monkeypatch, capsys):
    from mlflow import MlflowClient

    from scorebridge.cli import main

    tmp, info, env, invocation = sqlite_store
    for k in ("CDSAPI_KEY", "CDSAPI_RC", "SCOREBRIDGE_INVOCATION"):
        monkeypatch.setenv(k, env[k])
    experiments = _unreachable_experiments(tmp_path, info, "warn")
    out = tmp_path / "job"
    t0 = time.monotonic()
    run = job(experiments, "sr", "alpha", "sr_train", out, {**SPEC, "cds_key": CDS_KEY, "name": "alpha"})
    elapsed = time.monotonic() - t0
    err = capsys.readouterr().err
    assert elapsed < 60, f"an unreachable server held the job for {elapsed:.0f} s"
    # the science is intact
    assert json.loads((out / "metrics.json").read_text())["who"] == "sr/alpha"
    assert (out / "figures" / "curve.png").stat().st_size > 1000
    # a clear warning and a pending file holding everything that was not logged
    assert "WARNING: MLflow tracking at http://127.0.0.1" in err and "tracking-sync" in err, err
    assert not run.online
    (pending,) = list((experiments.parent / "pending" / "sr" / "alpha").glob("*.json"))
    assert str(pending) in err
    doc = json.loads(pending.read_text())
    assert doc["run_id"] is None and doc["rule"] == "sr_train" and "Connection refused" in doc["error"]
    assert len([m for m in doc["metrics"] if m[0] == "train/loss"]) == N_STEPS
    assert {Path(a["path"]).name for a in doc["artifacts"]} == {"metrics.json", "notes.txt", "curve.png"}
    assert doc["params"]["token"] == "***" and doc["tags"]["scorebridge.invocation"] == invocation
    assert not [x for x in SECRETS if x in pending.read_text()]
    # nothing is lost: replay it into the real store
    assert main(["tracking-sync", "--uri", info["uri"], str(pending)]) == 0
    assert "logged to run" in capsys.readouterr().out and not pending.exists()
    client = MlflowClient(info["uri"])
    (replayed,) = client.search_runs(
        [info["experiments"]["sr"]["alpha"]],
        f"tags.`scorebridge.invocation` = '{invocation}' and tags.`scorebridge.replayed` != ''",
    )
    assert replayed.data.params["train.steps"] == "1200" and replayed.data.metrics["rmse/t/850"] == 1.5
    assert len(client.get_metric_history(replayed.info.run_id, "train/loss")) == N_STEPS
    assert "figures" in {a.path for a in client.list_artifacts(replayed.info.run_id)}
    assert replayed.info.user_id == replayed.data.tags["mlflow.user"] != "unknown"


def _fail_job(argv: list[str]) -> int:
    from scorebridge.tracking import tracked_run

    with tracked_run(experiments=argv[0], kind="sr", experiment="alpha", rule="sr_train") as run:
        run.log_metrics({"x": 1.0})
    return 0


def test_unreachable_store_fail_mode_exits_nonzero(sqlite_store, tmp_path, monkeypatch, capsys):
    import scorebridge.cli as cli

    tmp, info, env, _ = sqlite_store
    experiments = _unreachable_experiments(tmp_path, info, "fail")
    monkeypatch.setitem(cli.COMMANDS, "fail-job", (__name__, "_fail_job", ""))
    assert cli.main(["fail-job", str(experiments)]) == 1
    err = capsys.readouterr().err
    assert "scorebridge fail-job: error: MLflow logging failed (create run) at http://127.0.0.1" in err, err
    assert "tracking.on_error: warn" in err


def test_job_errors_are_actionable(sqlite_store, tmp_path):
    from scorebridge.errors import InputError
    from scorebridge.tracking import tracked_run

    tmp, info, env, _ = sqlite_store
    with pytest.raises(InputError, match="tracking_init"):
        with tracked_run(tmp_path / "missing.json", kind="sr", experiment="alpha", rule="sr_train"):
            pass
    # an experiment added after tracking_init ran: created by name on first use, once
    from mlflow import MlflowClient

    path = tmp / "results" / "mlflow" / "experiments.json"
    ids = []
    for _ in range(2):
        with tracked_run(path, kind="sr", experiment="added_later", rule="sr_train") as run:
            run.log_metrics({"x": 1.0})
        ids.append(MlflowClient(info["uri"]).get_run(run.run_id).info.experiment_id)
    exp = MlflowClient(info["uri"]).get_experiment(ids[0])
    assert ids[0] == ids[1] and exp.name.endswith("/sr/added_later")


def test_failed_job_marks_run_failed(sqlite_store, monkeypatch):
    from mlflow import MlflowClient

    from scorebridge.tracking import tracked_run

    tmp, info, env, _ = sqlite_store
    monkeypatch.chdir(tmp)
    with pytest.raises(ZeroDivisionError):
        with tracked_run(
            tmp / "results" / "mlflow" / "experiments.json",
            kind="bridge",
            experiment="toy",
            rule="bridge_fit",
            wildcards={"experiment": "toy"},
            spec={"seed": 1},
        ) as run:
            run.log_metrics({"train/loss": 3.0}, step=7)
            1 / 0
    r = MlflowClient(info["uri"]).get_run(run.run_id)
    assert r.info.status == "FAILED" and r.data.metrics["train/loss"] == 3.0


def test_runs_carry_mlflow_context_tags(sqlite_store, monkeypatch):
    """A run names its user and source as MLflow's context registry resolves them (not
    user "unknown"); `job_run` without an experiments file gives an untracked run."""
    import getpass

    from mlflow import MlflowClient

    from scorebridge.tracking import UntrackedRun, job_run

    tmp, info, env, _ = sqlite_store
    monkeypatch.chdir(tmp)
    job = {
        "kind": "sr",
        "experiment": "alpha",
        "rule": "sr_train",
        "wildcards": {"experiment": "alpha"},
        "spec": {"seed": 1},
        "datasets": {},
    }
    with job_run(None, **job) as run:
        assert isinstance(run, UntrackedRun)
        run.log_metrics({"x": 1.0})
    with job_run(tmp / "results" / "mlflow" / "experiments.json", **job) as run:
        run.log_metrics({"x": 1.0})
    r = MlflowClient(info["uri"]).get_run(run.run_id)
    tags = r.data.tags
    assert tags["mlflow.user"] == getpass.getuser() != "unknown"
    assert r.info.user_id == tags["mlflow.user"]
    assert tags["mlflow.source.name"] == "scorebridge sr_train" and tags["mlflow.source.type"] == "JOB"


def test_rejected_items_are_dropped_loudly_not_offline(sqlite_store, monkeypatch, capsys):
    """A store that is up but refuses one item (a param re-logged with another value, a
    metric name MLflow forbids) costs that item only, with a warning; the run stays online."""
    import matplotlib.pyplot as plt
    from mlflow import MlflowClient

    from scorebridge.plots import save_figure
    from scorebridge.tracking import tracked_run
    from scorebridge.tracking.batch import clean_key as _clean_key
    from scorebridge.tracking.run import final_path as _final_path

    tmp, info, env, _ = sqlite_store
    monkeypatch.chdir(tmp)
    with tracked_run(
        tmp / "results" / "mlflow" / "experiments.json",
        kind="sr",
        experiment="beta",
        rule="sr_sample",
        wildcards={"experiment": "beta"},
        spec={"a": 1},
    ) as run:
        run.log_params({"a": 2, "b": 3})
        with pytest.warns(UserWarning, match="not a number"):
            run.log_metrics({"/odd//name/": 1.0, "../up": 2.0, "nan": float("nan"), "text": "x"}, step=2)
        plt.close("all")  # figures another test left open in this worker are not ours
        fig = plt.figure()
        with pytest.raises(ValueError, match="PNG"):
            save_figure(fig, tmp / "f.pdf", run=run)
        assert not plt.get_fignums()  # closed even on error
    assert run.online and len(run.rejected) == 1 and "Changing param values is not allowed" in run.rejected[0]
    assert "WARNING: MLflow rejected params ('a', '2')" in capsys.readouterr().err
    r = MlflowClient(info["uri"]).get_run(run.run_id)
    assert r.data.params == {"a": "1", "b": "3"}
    assert set(r.data.metrics) == {"odd/name", "__/up", "nan"}
    assert _clean_key("rmse/t/850") == "rmse/t/850" and _clean_key("a b:c/d-e.f") == "a b:c/d-e.f"
    assert _final_path(Path("/r/sr/x/.figures.partial-42/maps.png")) == "/r/sr/x/figures/maps.png"


def test_store_down_at_init_warn_mode_jobs_resolve_later(mlflow_server, tmp_path, monkeypatch, capsys):
    """warn: a server that is down when the workflow starts does not stop it; each job
    finds (or creates, safely: names are unique on the server) its experiment by name."""
    from mlflow import MlflowClient

    from scorebridge.cli import main

    down = f"http://127.0.0.1:{free_port()}"
    out = tmp_path / "results" / "mlflow" / "experiments.json"
    args = ["tracking-init", "--sr", "late", "--bridge", "", "--out", str(out)]
    assert main([*args, "--tracking", json.dumps({"uri": down, "on_error": "fail"})]) == 1
    assert "cannot create the MLflow store/experiments at " + down in capsys.readouterr().err
    assert main([*args, "--tracking", json.dumps({"uri": down, "on_error": "warn"})]) == 0
    assert "WARNING: cannot create the MLflow store/experiments" in capsys.readouterr().err
    info = json.loads(out.read_text())
    assert info["experiments"] == {"sr": {"late": None}, "bridge": {}} and info["offline"]
    # the server is up by the time the job runs
    out.write_text(json.dumps({**info, "uri": mlflow_server["uri"]}))
    monkeypatch.setenv("CDSAPI_KEY", CDS_KEY)
    run = job(out, "sr", "late", "sr_train", tmp_path / "job", {**SPEC, "name": "late"})
    assert run.online and not run.pending()["metrics"]
    client = MlflowClient(mlflow_server["uri"])
    exp = client.get_experiment_by_name("scorebridge/sr/late")
    assert client.get_run(run.run_id).info.experiment_id == exp.experiment_id


def _long_job(experiments: str, ready: str) -> None:
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    from scorebridge.tracking import tracked_run

    SqlAlchemyStore._engine_map.clear()
    with tracked_run(
        experiments, kind="sr", experiment="gamma", rule="sr_train", wildcards={"experiment": "gamma"}
    ) as run:
        for step in range(5):
            run.log_metrics({"train/loss": float(step)}, step=step)  # buffered, not yet sent
        Path(ready).write_text(run.run_id)
        time.sleep(120)


def test_sigterm_flushes_and_marks_run_killed(sqlite_store, tmp_path):
    """scancel / a time limit / snakemake stopping a job: the buffered curve is flushed and
    the run is KILLED, not left RUNNING; the job still exits with SIGTERM's status."""
    import multiprocessing as mp
    import signal

    from mlflow import MlflowClient

    tmp, info, env, _ = sqlite_store
    ready = tmp_path / "ready"
    proc = mp.get_context("fork").Process(
        target=_long_job, args=(str(tmp / "results" / "mlflow" / "experiments.json"), str(ready))
    )
    proc.start()
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert proc.is_alive() and time.monotonic() < deadline, "the job did not start"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGTERM)
    proc.join(timeout=60)
    assert proc.exitcode == 128 + signal.SIGTERM
    client = MlflowClient(info["uri"])
    run = client.get_run(ready.read_text())
    assert run.info.status == "KILLED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [0, 1, 2, 3, 4]
