"""Replay of pending files: what a job could not log (store down, `on_error: warn`) is
logged later by `scorebridge tracking-sync`, with the same batches as a live run."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..errors import ConfigError
from ..io import read_json
from .batch import chunks, context_tags, send_batch, send_datasets
from .secrets import Scrubber
from .store import client, get_or_create_experiment, retry_locked
from .uri import default_artifact_root, http_defaults

__all__ = ["sync_pending"]


def sync_pending(path: str | os.PathLike, uri: str | None = None) -> dict:
    """Replay one pending file into the store; remove it when everything landed.

    Continues the run it names when that run exists, else creates a new run (tagged
    `scorebridge.replayed`, with the job's `mlflow.*` tags: user, source). Returns counts
    of what was logged.
    """
    http_defaults()
    p = Path(path)
    doc = read_json(p)
    target = uri or os.environ.get("MLFLOW_TRACKING_URI") or doc["uri"]
    if "***@" in target:
        raise ConfigError("tracking.uri", f"{p} names a store with credentials; pass the full URI with --uri")
    mlflow_client = retry_locked(client, target)
    run_id = doc.get("run_id")
    if run_id:
        try:
            retry_locked(mlflow_client.get_run, run_id)
        except Exception:  # noqa: BLE001
            run_id = None
    if not run_id:
        # ids belong to one store: resolve the experiment by name in the target store
        root = doc.get("artifact_root") if target == doc["uri"] else None
        eid = get_or_create_experiment(
            mlflow_client, doc["experiment_name"], doc["kind"], doc["experiment"], root or default_artifact_root(target)
        )
        system = {k: v for k, v in doc["tags"].items() if k.startswith("mlflow.")}
        scrub = Scrubber()
        tags = {k: scrub(v) for k, v in context_tags({**system, "scorebridge.replayed": p.name}).items()}
        run = retry_locked(mlflow_client.create_run, eid, run_name=doc.get("run_name"), tags=tags)
        run_id = run.info.run_id
    params = list(doc["params"].items())
    tags = list(doc["tags"].items())
    metrics = doc["metrics"]
    for kind, items in (("params", params), ("tags", tags), ("metrics", metrics)):
        for chunk in chunks(items, kind):
            retry_locked(send_batch, mlflow_client, run_id, kind, chunk)
    if doc["datasets"]:
        retry_locked(send_datasets, mlflow_client, run_id, doc["datasets"])
    missing = []
    for a in doc["artifacts"]:
        src = Path(a["path"])
        if not src.exists():
            missing.append(str(src))
            continue
        fn = mlflow_client.log_artifacts if src.is_dir() else mlflow_client.log_artifact
        retry_locked(fn, run_id, str(src), a.get("artifact_path"))
    retry_locked(mlflow_client.set_terminated, run_id, doc.get("status", "FINISHED"))
    if missing:
        print(f"scorebridge: WARNING: artifacts no longer on disk, not logged: {missing}", file=sys.stderr)
    p.unlink()
    return {
        "run_id": run_id,
        "params": len(params),
        "tags": len(tags),
        "metrics": len(metrics),
        "artifacts": len(doc["artifacts"]) - len(missing),
        "datasets": len(doc["datasets"]),
    }
