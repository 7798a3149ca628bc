"""Tracking store URIs: which store, where its artifacts go, and credentials kept out of text."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

from ..errors import ConfigError
from .options import TrackingOptions

__all__ = [
    "strip_credentials",
    "default_uri",
    "resolve_uri",
    "store_identity",
    "experiment_name",
    "is_sqlite",
    "sqlite_path",
    "is_remote",
    "http_defaults",
    "default_artifact_root",
    "CRED_RE",
]

# Network timeouts: a refused connection costs seconds (4 attempts, ~7 s of backoff), a
# host that drops packets about 2 minutes, once per job (the run then goes offline); a busy
# server still gets 30 s per request. MLflow's defaults (7 retries, factor 2, 120 s) can
# hold a job for many minutes. The user's own environment values win.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}

CRED_RE = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<cred>[^/@\s?#]+)@")


def strip_credentials(text: str) -> str:
    """`scheme://user:pass@host/...` -> `scheme://***@host/...` anywhere in `text`."""
    return CRED_RE.sub(lambda m: f"{m.group('scheme')}***@", text)


def default_uri(results: str | os.PathLike = "results") -> str:
    db = Path(results).resolve() / "mlflow" / "mlflow.db"
    return f"sqlite:///{db}"


def resolve_uri(
    tracking: TrackingOptions | Mapping[str, Any] | None = None, results: str | os.PathLike = "results"
) -> tuple[str, str]:
    """(uri, source): config `tracking.uri` > env `MLFLOW_TRACKING_URI` > the SQLite default.

    A relative `sqlite:///rel/path.db` is made absolute (jobs may run elsewhere, e.g. on a
    cluster node with another working directory). A plain path is read as a SQLite file.
    """
    configured = TrackingOptions.of(tracking).uri
    if configured:
        uri, source = str(configured), "config"
    elif os.environ.get("MLFLOW_TRACKING_URI"):
        uri, source = os.environ["MLFLOW_TRACKING_URI"], "env"
    else:
        return default_uri(results), "default"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        rest = uri[len("sqlite:///") :]
        if rest and rest != ":memory:":
            uri = f"sqlite:///{Path(rest).resolve()}"
    elif "://" not in uri:
        if uri.endswith(".db"):
            uri = f"sqlite:///{Path(uri).resolve()}"
        else:
            raise ConfigError(
                "tracking.uri",
                f"'{strip_credentials(uri)}' is not a URI; use sqlite:///path.db or http://host:port "
                "(the plain ./mlruns file store is refused by MLflow >= 3.13)",
            )
    if uri.startswith("file:") or uri.rstrip("/").endswith("mlruns"):
        raise ConfigError(
            "tracking.uri", f"'{uri}': the MLflow file store is refused by MLflow >= 3.13; use sqlite:///path/mlflow.db"
        )
    return uri, source


def store_identity(tracking: TrackingOptions | Mapping[str, Any] | None = None) -> dict[str, str | None]:
    """Where the runs go, as rule `tracking_init` records it (its params): the configured
    URI, else env `MLFLOW_TRACKING_URI`, else None (the SQLite store under results/),
    credentials stripped; the artifact root and the experiment prefix. A change of any of
    them reruns the rule and every job that logs, so that the new store holds their runs."""
    t = TrackingOptions.of(tracking)
    uri = t.uri or os.environ.get("MLFLOW_TRACKING_URI") or None
    return {
        "uri": strip_credentials(str(uri)) if uri else None,
        "artifact_root": strip_credentials(str(t.artifact_root)) if t.artifact_root else None,
        "experiment_prefix": t.experiment_prefix,
    }


def is_sqlite(uri: str) -> bool:
    return uri.startswith("sqlite:")


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (None for other stores and in-memory ones)."""
    if not uri.startswith("sqlite:///"):
        return None
    rest = uri[len("sqlite:///") :].split("?", 1)[0]
    return Path(rest) if rest and rest != ":memory:" else None


def is_remote(uri: str) -> bool:
    return uri.split(":", 1)[0] in ("http", "https", "databricks", "uc")


def http_defaults() -> None:
    """Short MLflow HTTP timeouts and retries, unless the environment sets its own."""
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)


def default_artifact_root(uri: str, results: str | os.PathLike = "results") -> str | None:
    """Beside a SQLite database; results/mlflow/artifacts for other databases; None (the
    server's own --artifacts-destination) for a tracking server."""
    db = sqlite_path(uri)
    if db is not None:
        return (db.parent / "artifacts").resolve().as_uri()
    if is_remote(uri):
        return None
    return (Path(results).resolve() / "mlflow" / "artifacts").as_uri()


def experiment_name(prefix: str, kind: str, name: str) -> str:
    return f"{prefix}/{kind}/{name}"
