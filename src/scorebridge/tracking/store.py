"""The store and its experiments: created once, by rule `tracking_init`, and found by jobs.

That process creates the database (MLflow runs its schema migrations) and every experiment
`<prefix>/<kind>/<name>`, and writes their ids to `results/mlflow/experiments.json`, which
jobs read (`load_experiments`). Processes racing to create one SQLite database crash in
MLflow 3 (`duplicate column name: step`: both run the migrations), e.g. two workflows
sharing one store: every client of a SQLite store is opened under an exclusive lock on
`<db>.lock` beside the database (`store_lock`), so one process creates and migrates it
and the others find it complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Mapping

from ..errors import InputError, ScorebridgeError
from ..io import atomic_path, read_json, write_json
from .options import TrackingError, TrackingOptions
from .secrets import Scrubber
from .uri import (
    default_artifact_root,
    experiment_name,
    http_defaults,
    is_remote,
    resolve_uri,
    sqlite_path,
    strip_credentials,
)

__all__ = [
    "ENV_INVOCATION",
    "retry_locked",
    "store_lock",
    "client",
    "store_settings",
    "get_or_create_experiment",
    "init_store",
    "write_experiments",
    "load_experiments",
    "job_uri",
]

ENV_INVOCATION = "SCOREBRIDGE_INVOCATION"
SQLITE_LOCK_WAIT = 120.0  # seconds to keep retrying a locked SQLite database
STORE_LOCK_WAIT = 600.0  # seconds to wait for another process creating the same SQLite store
_THREAD_LOCK = threading.Lock()  # POSIX locks are per process: threads of one process queue here


def retry_locked(fn, *args, **kwargs):
    """Call `fn`, retrying while SQLite reports the database locked (concurrent writers)."""
    deadline = time.monotonic() + SQLITE_LOCK_WAIT
    delay = 0.05
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - MLflow wraps sqlite errors in several types
            text = str(err).lower()
            if (
                "database is locked" not in text and "database table is locked" not in text
            ) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


@contextlib.contextmanager
def store_lock(db: str | os.PathLike, wait: float = STORE_LOCK_WAIT):
    """Hold an exclusive lock on `<db>.lock` (created beside the database, kept there).

    A POSIX record lock (`fcntl.lockf`), which also works on NFS v4 and Lustre, the file
    systems a cluster shares results on. Raises `TrackingError` naming the lock file when
    another process holds it for longer than `wait` seconds."""
    path = Path(f"{db}.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    with _THREAD_LOCK, open(path, "a") as f:
        deadline = time.monotonic() + wait
        delay = 0.05
        while True:
            try:
                fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TrackingError(
                        f"{path}: another process has held this lock for over {wait:.0f} s while "
                        "creating the MLflow store beside it; if none is running, delete the lock file"
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
        try:
            yield path
        finally:
            fcntl.lockf(f, fcntl.LOCK_UN)


def client(uri: str):
    """An `MlflowClient` bound to `uri` (nothing process-global is set).

    For a SQLite store, the store is opened once under `store_lock`: the first process
    creates the database and runs MLflow's migrations while the others wait, then find
    every table in place (MLflow caches the opened store per process)."""
    from mlflow import MlflowClient

    db = sqlite_path(uri)
    if db is None:
        return MlflowClient(tracking_uri=uri, registry_uri=uri if not is_remote(uri) else None)
    db.parent.mkdir(parents=True, exist_ok=True)
    with store_lock(db):
        c = MlflowClient(tracking_uri=uri, registry_uri=uri)  # opens (creates, migrates) the store
        retry_locked(c.search_registered_models, max_results=1)  # and the model registry's
    return c


def store_settings(tracking: TrackingOptions, results: str | os.PathLike) -> tuple[str, str, str, str | None]:
    """(uri, uri source, experiment prefix, artifact root or None for the server's own)."""
    uri, source = resolve_uri(tracking, results)
    artifact_root = tracking.artifact_root
    if artifact_root:
        artifact_root = str(artifact_root)
        if "://" not in artifact_root:
            artifact_root = Path(artifact_root).resolve().as_uri()
    else:
        artifact_root = default_artifact_root(uri, results)
    return uri, source, tracking.experiment_prefix, artifact_root


# MLflow 3's own classification of an experiment (model training, not GenAI development).
# The UI's view is chosen by the link (tracking.links.VIEW), not by this tag
EXPERIMENT_KIND_TAG = {"mlflow.experimentKind": "custom_model_development"}


def get_or_create_experiment(mlflow_client, label: str, kind: str, name: str, artifact_root: str | None) -> str:
    """The id of experiment `label`, created if missing (restored if deleted).

    Safe when two processes race on a store that exists: the name is unique in MLflow's
    schema, so one creation wins and the other reads the winner's id.
    """
    from mlflow.exceptions import MlflowException

    exp = retry_locked(mlflow_client.get_experiment_by_name, label)
    if exp is None:
        location = f"{artifact_root.rstrip('/')}/{kind}/{name}" if artifact_root else None
        try:
            return str(
                retry_locked(
                    mlflow_client.create_experiment,
                    label,
                    artifact_location=location,
                    tags={"scorebridge.kind": kind, "scorebridge.experiment": name, **EXPERIMENT_KIND_TAG},
                )
            )
        except MlflowException:
            exp = retry_locked(mlflow_client.get_experiment_by_name, label)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        retry_locked(mlflow_client.restore_experiment, exp.experiment_id)
    return str(exp.experiment_id)


def init_store(
    tracking: TrackingOptions | Mapping[str, Any] | None,
    sr: list[str],
    bridge: list[str],
    results: str | os.PathLike = "results",
) -> dict:
    """Create the store (migrations run once, here) and every experiment; return their ids."""
    tracking = TrackingOptions.of(tracking)
    http_defaults()
    uri, source, prefix, artifact_root = store_settings(tracking, results)
    mlflow_client = retry_locked(client, uri)
    ids: dict[str, dict[str, str | None]] = {"sr": {}, "bridge": {}}
    for kind, names in (("sr", sr), ("bridge", bridge)):
        for name in names:
            ids[kind][name] = get_or_create_experiment(
                mlflow_client, experiment_name(prefix, kind, name), kind, name, artifact_root
            )
    return _info(tracking, uri, source, prefix, artifact_root, ids)


def _info(
    tracking: TrackingOptions,
    uri: str,
    source: str,
    prefix: str,
    artifact_root: str | None,
    ids: dict,
    offline: str | None = None,
) -> dict:
    return {
        "uri": strip_credentials(uri),
        "uri_source": source,
        "has_credentials": strip_credentials(uri) != uri,
        "experiment_prefix": prefix,
        "artifact_root": strip_credentials(artifact_root) if artifact_root else None,
        "on_error": tracking.on_error,
        "system_metrics": dataclasses.asdict(tracking.system_metrics),
        "register": tracking.register,
        "experiments": ids,
        "offline": offline,
        "invocation": os.environ.get(ENV_INVOCATION),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def credentials_file(out: Path) -> Path:
    return out.with_name(out.name + ".credentials")


def write_experiments(tracking: TrackingOptions, sr: list[str], bridge: list[str], out: Path, results: Path) -> dict:
    """`init_store`, then write its ids to `out` (experiments.json) and the URI's
    credentials, if any, to a sibling file readable by the owner only. A tracking server
    that cannot be reached, with `on_error: warn`, leaves the experiments unresolved."""
    uri, source, prefix, artifact_root = store_settings(tracking, results)
    try:
        info = init_store(tracking, sr, bridge, results)
    except ScorebridgeError:
        raise
    except Exception as err:  # noqa: BLE001
        msg = (
            f"cannot create the MLflow store/experiments at {strip_credentials(uri)}: "
            f"{type(err).__name__}: {Scrubber()(str(err))[:500]}"
        )
        if tracking.on_error == "fail" or sqlite_path(uri) is not None:
            raise TrackingError(msg) from None
        # warn: the workflow goes on. Experiments are left unresolved (id null); each job
        # looks its experiment up by name when it starts (get-or-create is safe on a running
        # server), or keeps everything in a pending file if the server is still down.
        print(
            f"scorebridge: WARNING: {msg}\nscorebridge: WARNING: jobs will look up their experiments when they start, "
            "or keep what they log in results/mlflow/pending/",
            file=sys.stderr,
        )
        ids = {"sr": {n: None for n in sr}, "bridge": {n: None for n in bridge}}
        info = _info(tracking, uri, source, prefix, artifact_root, ids, offline=msg)
    cred = credentials_file(out)
    if info["has_credentials"]:
        # The URI's credentials stay out of experiments.json (which may be shared); jobs read
        # them from this sibling file, readable by the owner only, never logged.
        cred.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cred) as tmp:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(uri)
    elif cred.exists():
        cred.unlink()
    write_json(out, info)
    return info


_EXPERIMENTS_KEYS = ("uri", "experiments", "experiment_prefix", "on_error")


def load_experiments(path: str | os.PathLike) -> dict:
    """The experiments file written by `scorebridge tracking-init`."""
    p = Path(path)
    try:
        info = read_json(p)
    except FileNotFoundError:
        raise InputError(
            "not found (rule tracking_init writes it: `snakemake results/mlflow/experiments.json`)", p
        ) from None
    except json.JSONDecodeError as err:
        raise InputError(f"not valid JSON: {err.msg}", p, err.lineno) from None
    if not isinstance(info, dict) or any(k not in info for k in _EXPERIMENTS_KEYS):
        raise InputError(
            "not an experiments file written by `scorebridge tracking-init` (keys "
            + ", ".join(_EXPERIMENTS_KEYS)
            + "; rerun it with `snakemake -R tracking_init`)",
            p,
        )
    return info


def job_uri(info: dict, experiments_path: Path) -> str:
    """The store's URI with its credentials (from the sibling file or the environment)."""
    if info.get("has_credentials"):
        cred = credentials_file(experiments_path)
        if cred.exists():
            return cred.read_text().strip()
        if info.get("uri_source") == "env" and os.environ.get("MLFLOW_TRACKING_URI"):
            return os.environ["MLFLOW_TRACKING_URI"]
    return info["uri"]
