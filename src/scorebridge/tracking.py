"""MLflow tracking for the workflow's jobs: one run per (experiment, rule, wildcards).

How the pieces fit (see config/README.md, section `tracking`):

- The store is resolved once, by rule `tracking_init` (`scorebridge tracking-init`):
  config `tracking.uri` > env `MLFLOW_TRACKING_URI` > `sqlite:///<abs>/results/mlflow/mlflow.db`
  (artifacts in `results/mlflow/artifacts/<kind>/<name>`). That single process creates the
  database (MLflow runs its schema migrations once; processes racing to create one SQLite
  database crash in MLflow 3) and every experiment `<prefix>/<kind>/<name>`, and writes their
  ids to `results/mlflow/experiments.json`.
- Jobs open runs with `tracked_run(...)`, which reads the id from that file and creates the
  run with `MlflowClient.create_run(experiment_id=...)`. Nothing here calls
  `mlflow.set_experiment` or any other fluent (process-global) API, so a run cannot land in
  the wrong experiment however many jobs log at once.
- All runs of one `snakemake` invocation share the tag `scorebridge.invocation` (the
  Snakefile sets env `SCOREBRIDGE_INVOCATION`, a uuid inherited by every job, also through
  sbatch). A parent run is not used: MLflow nests runs only inside one experiment, and
  creating a parent lazily from concurrent processes is a race with no atomic primitive
  in the tracking API (two jobs would each create "the" parent).
- Logging never breaks the science: any failure of the store (unreachable server, locked or
  missing database) switches the run to offline mode; the job still writes its outputs and,
  at the end, writes a pending file (`results/mlflow/pending/...json`) holding everything
  that was not logged, warns on stderr, and `scorebridge tracking-sync` replays it later.
  With `tracking.on_error: fail` the job fails instead, with a clear message.
- No secret is logged: secret-named config keys are redacted, any value equal to a secret
  from the environment (e.g. `CDSAPI_KEY`) or `~/.cdsapirc` is masked, and credentials in
  URLs (`scheme://user:pass@host`) are stripped, in params, tags and text artifacts.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping

from .errors import ConfigError, InputError, ScorebridgeError
from .io import atomic_path, read_json, write_json
from .provenance import config_hash, git_state, is_secret_key, package_versions, redact, sha256_tree

__all__ = [
    "TrackingError",
    "TrackedRun",
    "tracked_run",
    "untracked_run",
    "UntrackedRun",
    "resolve_uri",
    "default_uri",
    "strip_credentials",
    "flatten",
    "experiment_name",
    "init_store",
    "init_cli",
    "sync_pending",
    "sync_cli",
    "Scrubber",
]

ENV_INVOCATION = "SCOREBRIDGE_INVOCATION"
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
MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limit
MAX_PARAMS_PER_BATCH = 100
MAX_TAGS_PER_BATCH = 100
MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 8000
FLUSH_SECONDS = 15.0  # buffered metrics are flushed at least this often
SQLITE_LOCK_WAIT = 120.0  # seconds to keep retrying a locked SQLite database
TEXT_ARTIFACT_SUFFIXES = {".json", ".txt", ".yaml", ".yml", ".csv", ".html", ".md", ".log", ".rst", ".toml", ".cfg", ".ini", ".svg"}
MAX_SCRUB_BYTES = 64 << 20


class TrackingError(ScorebridgeError):
    """The tracking store failed and `tracking.on_error` is `fail`."""


# --------------------------------------------------------------------------- URIs


_CRED_RE = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<cred>[^/@\s?#]+)@")


def strip_credentials(text: str) -> str:
    """`scheme://user:pass@host/...` -> `scheme://***@host/...` anywhere in `text`."""
    return _CRED_RE.sub(lambda m: f"{m.group('scheme')}***@", text)


def default_uri(results: str | os.PathLike = "results") -> str:
    db = Path(results).resolve() / "mlflow" / "mlflow.db"
    return f"sqlite:///{db}"


def resolve_uri(tracking: Mapping[str, Any] | None = None, results: str | os.PathLike = "results") -> tuple[str, str]:
    """(uri, source): config `tracking.uri` > env `MLFLOW_TRACKING_URI` > the SQLite default.

    A relative `sqlite:///rel/path.db` is made absolute (jobs may run elsewhere, e.g. on a
    cluster node with another working directory). A plain path is read as a SQLite file.
    """
    tracking = tracking or {}
    if tracking.get("uri"):
        uri, source = str(tracking["uri"]), "config"
    elif os.environ.get("MLFLOW_TRACKING_URI"):
        uri, source = os.environ["MLFLOW_TRACKING_URI"], "env"
    else:
        return default_uri(results), "default"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        rest = uri[len("sqlite:///"):]
        if rest and rest != ":memory:":
            uri = f"sqlite:///{Path(rest).resolve()}"
    elif "://" not in uri:
        if uri.endswith(".db"):
            uri = f"sqlite:///{Path(uri).resolve()}"
        else:
            raise ConfigError("tracking.uri", f"'{strip_credentials(uri)}' is not a URI; use sqlite:///path.db or http://host:port "
                              "(the plain ./mlruns file store is refused by MLflow >= 3.13)")
    if uri.startswith("file:") or uri.rstrip("/").endswith("mlruns"):
        raise ConfigError("tracking.uri", f"'{uri}': the MLflow file store is refused by MLflow >= 3.13; use sqlite:///path/mlflow.db")
    return uri, source


def _is_sqlite(uri: str) -> bool:
    return uri.startswith("sqlite:")


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    rest = uri[len("sqlite:///"):].split("?", 1)[0]
    return Path(rest) if rest and rest != ":memory:" else None


def _is_remote(uri: str) -> bool:
    return uri.split(":", 1)[0] in ("http", "https", "databricks", "uc")


def _http_defaults() -> None:
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)


def experiment_name(prefix: str, kind: str, name: str) -> str:
    return f"{prefix}/{kind}/{name}"


# --------------------------------------------------------------------------- secrets


def _cdsapirc_secrets() -> list[str]:
    path = Path(os.environ.get("CDSAPI_RC", "~/.cdsapirc")).expanduser()
    out = []
    try:
        text = path.read_text()
    except OSError:
        return out
    for line in text.splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            if key.strip().lower() == "key" and value.strip():
                out.append(value.strip())
    return out


class Scrubber:
    """Masks secrets in text: values of secret-named env vars, the CDS key, credentials in
    URLs, and any extra values given (e.g. the redacted values of the config)."""

    def __init__(self, extra: list[str] | tuple[str, ...] = ()):
        values = set(extra)
        for name, value in os.environ.items():
            if is_secret_key(name) and value:
                values.add(value)
        values.update(_cdsapirc_secrets())
        for v in list(values):
            # a CDS key "uid:apikey" also leaks if only its second half is logged
            if ":" in v:
                values.update(p for p in v.split(":") if len(p) >= 8)
        # too short to be a real secret and would mask ordinary text
        self.values = sorted((v for v in values if len(v) >= 6), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        text = strip_credentials(text)
        for v in self.values:
            if v in text:
                text = text.replace(v, "***")
        return text

    def leaks(self, data: bytes) -> bool:
        if _CRED_RE.search(data.decode("utf-8", "replace")):
            return True
        return any(v.encode() in data for v in self.values)


def _secret_values(obj: Any) -> list[str]:
    """String values stored under secret-named keys (anywhere in a nested config)."""
    out: list[str] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if is_secret_key(k):
                out += [str(x) for x in _leaves(v) if x not in (None, "")]
            else:
                out += _secret_values(v)
    elif isinstance(obj, list):
        for v in obj:
            out += _secret_values(v)
    return out


def _leaves(obj: Any) -> Iterator[Any]:
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _leaves(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _leaves(v)
    else:
        yield obj


# --------------------------------------------------------------------------- params


def flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    """Nested config -> {'dotted.key': 'value'}; lists of scalars as JSON, lists of dicts by index.

    >>> flatten({"a": {"b": 1, "c": [850, 500]}, "d": None})
    {'a.b': '1', 'a.c': '[850, 500]', 'd': 'null'}
    """
    out: dict[str, str] = {}
    if isinstance(obj, dict):
        if not obj and prefix:
            out[prefix] = "{}"
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(obj, list) and any(isinstance(v, (dict, list)) for v in obj):
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}.{i}"))
    else:
        if isinstance(obj, str):
            out[prefix] = obj
        else:
            out[prefix] = json.dumps(obj, default=str)
    return out


_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. /:]")


def _clean_key(key: str) -> str:
    """A name MLflow accepts for a param, tag or metric: allowed characters only, and a
    normalised relative path (`rmse/t/850` stays; `/a//b/` -> `a/b`, `..` -> `__`)."""
    key = _BAD_KEY_CHARS.sub("_", str(key))
    parts = [("__" if part == ".." else part) for part in key.split("/") if part not in ("", ".")]
    return "/".join(parts)[:250] or "_"


_REJECTION_CODES = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "INVALID_STATE", "BAD_REQUEST"}


def _is_rejection(err: BaseException) -> bool:
    """The store answered and refused the request (bad value, duplicate param with another
    value): not a reason to go offline."""
    code = getattr(err, "error_code", None)
    return isinstance(code, str) and code in _REJECTION_CODES


# --------------------------------------------------------------------------- datasets


def dataset_digest(path: str | os.PathLike, full_limit: int = 256 << 20) -> tuple[str, str]:
    """(sha256, how): a content digest for inputs up to `full_limit` bytes, else a digest of
    the store's metadata files plus every chunk's relative path and size ('listing')."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(p)
    files = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file())
    total = sum(f.stat().st_size for f in files)
    if total <= full_limit:
        return sha256_tree(p), "content"
    h = hashlib.sha256()
    meta = {".zarray", ".zattrs", ".zgroup", ".zmetadata", "zarr.json"}
    for f in files:
        rel = str(f.relative_to(p)) if p.is_dir() else f.name
        h.update(rel.encode())
        h.update(str(f.stat().st_size).encode())
        if f.name in meta:
            h.update(f.read_bytes())
    return h.hexdigest(), "listing"


# --------------------------------------------------------------------------- store init


def _retry_locked(fn, *args, **kwargs):
    """Call `fn`, retrying while SQLite reports the database locked (concurrent writers)."""
    deadline = time.monotonic() + SQLITE_LOCK_WAIT
    delay = 0.05
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - MLflow wraps sqlite errors in several types
            text = str(err).lower()
            if ("database is locked" not in text and "database table is locked" not in text) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri if not _is_remote(uri) else None)


def _store_settings(tracking: Mapping[str, Any], results: str | os.PathLike) -> tuple[str, str, str, str | None]:
    """(uri, uri source, experiment prefix, artifact root or None for the server's own)."""
    uri, source = resolve_uri(tracking, results)
    prefix = tracking.get("experiment_prefix") or "scorebridge"
    artifact_root = tracking.get("artifact_root")
    if artifact_root:
        artifact_root = str(artifact_root)
        if "://" not in artifact_root:
            artifact_root = Path(artifact_root).resolve().as_uri()
    else:
        artifact_root = _default_artifact_root(uri, results)
    return uri, source, prefix, artifact_root


def _default_artifact_root(uri: str, results: str | os.PathLike = "results") -> str | None:
    """Beside a SQLite database; results/mlflow/artifacts for other databases; None (the
    server's own --artifacts-destination) for a tracking server."""
    db = _sqlite_path(uri)
    if db is not None:
        return (db.parent / "artifacts").resolve().as_uri()
    if _is_remote(uri):
        return None
    return (Path(results).resolve() / "mlflow" / "artifacts").as_uri()


def _get_or_create_experiment(client, label: str, kind: str, name: str, artifact_root: str | None) -> str:
    """The id of experiment `label`, created if missing (restored if deleted).

    Safe when two processes race on a store that exists: the name is unique in MLflow's
    schema, so one creation wins and the other reads the winner's id.
    """
    from mlflow.exceptions import MlflowException

    exp = _retry_locked(client.get_experiment_by_name, label)
    if exp is None:
        location = f"{artifact_root.rstrip('/')}/{kind}/{name}" if artifact_root else None
        try:
            return str(_retry_locked(client.create_experiment, label, artifact_location=location,
                                     tags={"scorebridge.kind": kind, "scorebridge.experiment": name}))
        except MlflowException:
            exp = _retry_locked(client.get_experiment_by_name, label)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        _retry_locked(client.restore_experiment, exp.experiment_id)
    return str(exp.experiment_id)


def init_store(tracking: Mapping[str, Any] | None, sr: list[str], bridge: list[str], results: str | os.PathLike = "results") -> dict:
    """Create the store (migrations run once, here) and every experiment; return their ids."""
    tracking = dict(tracking or {})
    _http_defaults()
    uri, source, prefix, artifact_root = _store_settings(tracking, results)
    db = _sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    client = _retry_locked(_client, uri)
    ids: dict[str, dict[str, str | None]] = {"sr": {}, "bridge": {}}
    for kind, names in (("sr", sr), ("bridge", bridge)):
        for name in names:
            ids[kind][name] = _get_or_create_experiment(client, experiment_name(prefix, kind, name), kind, name, artifact_root)
    return _info(tracking, uri, source, prefix, artifact_root, ids)


def _info(tracking: Mapping[str, Any], uri: str, source: str, prefix: str, artifact_root: str | None, ids: dict,
          offline: str | None = None) -> dict:
    return {
        "uri": strip_credentials(uri),
        "uri_source": source,
        "has_credentials": strip_credentials(uri) != uri,
        "experiment_prefix": prefix,
        "artifact_root": strip_credentials(artifact_root) if artifact_root else None,
        "on_error": tracking.get("on_error", "warn"),
        "experiments": ids,
        "offline": offline,
        "invocation": os.environ.get(ENV_INVOCATION),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _credentials_file(out: Path) -> Path:
    return out.with_name(out.name + ".credentials")


def init_cli(argv: list[str]) -> int:
    """`scorebridge tracking-init --tracking JSON --sr a,b --bridge c --out experiments.json`."""
    ap = argparse.ArgumentParser(prog="scorebridge tracking-init", description=init_cli.__doc__)
    ap.add_argument("--tracking", default="{}", help="the config's `tracking` section as JSON")
    ap.add_argument("--sr", default=os.environ.get("SCOREBRIDGE_SR_EXPERIMENTS", ""),
                    help="comma-separated names of the sr experiments (default: env SCOREBRIDGE_SR_EXPERIMENTS)")
    ap.add_argument("--bridge", default=os.environ.get("SCOREBRIDGE_BRIDGE_EXPERIMENTS", ""),
                    help="comma-separated names of the bridge experiments (default: env SCOREBRIDGE_BRIDGE_EXPERIMENTS)")
    ap.add_argument("--results", default=None, help="results directory (default: the parent of --out's directory)")
    ap.add_argument("--out", required=True, help="experiments.json to write")
    args = ap.parse_args(argv)
    try:
        tracking = json.loads(args.tracking)
    except json.JSONDecodeError as err:
        raise ConfigError("tracking", f"--tracking is not valid JSON: {err}") from None
    if not isinstance(tracking, dict):
        raise ConfigError("tracking", "--tracking must be a JSON object")
    out = Path(args.out)
    results = Path(args.results) if args.results else out.resolve().parent.parent
    split = lambda s: [x for x in (p.strip() for p in s.split(",")) if x]  # noqa: E731
    sr, bridge = split(args.sr), split(args.bridge)
    uri, source, prefix, artifact_root = _store_settings(tracking, results)
    try:
        info = init_store(tracking, sr, bridge, results)
    except ScorebridgeError:
        raise
    except Exception as err:  # noqa: BLE001
        msg = (f"cannot create the MLflow store/experiments at {strip_credentials(uri)}: "
               f"{type(err).__name__}: {Scrubber()(str(err))[:500]}")
        if tracking.get("on_error", "warn") == "fail" or _sqlite_path(uri) is not None:
            raise TrackingError(msg) from None
        # warn: the workflow goes on. Experiments are left unresolved (id null); each job
        # looks its experiment up by name when it starts (get-or-create is safe on a running
        # server), or keeps everything in a pending file if the server is still down.
        print(f"scorebridge: WARNING: {msg}\nscorebridge: WARNING: jobs will look up their experiments when they start, "
              "or keep what they log in results/mlflow/pending/", file=sys.stderr)
        ids = {"sr": {n: None for n in sr}, "bridge": {n: None for n in bridge}}
        info = _info(tracking, uri, source, prefix, artifact_root, ids, offline=msg)
    cred = _credentials_file(out)
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
    n = sum(len(v) for v in info["experiments"].values())
    state = "unreachable, experiments unresolved" if info["offline"] else f"{n} experiments"
    print(f"tracking store {info['uri']} ({info['uri_source']}): {state} -> {out}")
    return 0


# --------------------------------------------------------------------------- runs


def _now_ms() -> int:
    return int(time.time() * 1000)


class TrackedRun:
    """A job's MLflow run. Use through `tracked_run(...)`.

    Every call is safe: a store failure switches the run offline (or raises `TrackingError`
    when `on_error` is `fail`); what could not be logged is kept and written to `pending`.
    """

    def __init__(self, *, uri: str, experiment_id: str | None, experiment_label: str, on_error: str, pending: Path,
                 run_name: str, scrub: Scrubber, meta: dict, artifact_root: str | None = None):
        self.uri = uri
        self.experiment_id = experiment_id
        self.experiment_label = experiment_label
        self.artifact_root = artifact_root
        self.on_error = on_error
        self.pending_path = pending
        self.run_name = run_name
        self.scrub = scrub
        self.meta = meta
        self.run_id: str | None = None
        self.client = None
        self.online = True
        self.error: str | None = None
        self._buffer: list[tuple[str, float, int, int]] = []
        self._last_flush = time.monotonic()
        self._pending: dict[str, Any] = {"params": {}, "tags": {}, "metrics": [], "artifacts": [], "datasets": []}
        self.logged = {"params": 0, "tags": 0, "metrics": 0, "artifacts": 0, "datasets": 0}
        self.rejected: list[str] = []
        self._last_rejection: BaseException | None = None

    # -- failure handling
    def _fail(self, what: str, err: BaseException) -> None:
        msg = f"{type(err).__name__}: {self.scrub(str(err))}"
        msg = msg if len(msg) < 600 else msg[:600] + " ..."
        if self.on_error == "fail":
            raise TrackingError(f"MLflow logging failed ({what}) at {strip_credentials(self.uri)}: {msg} "
                                "(set tracking.on_error: warn to keep going and log later)") from None
        if self.online:
            self.online = False
            self.error = f"{what}: {msg}"
            print(f"scorebridge: WARNING: MLflow tracking at {strip_credentials(self.uri)} failed ({what}): {msg}\n"
                  f"scorebridge: WARNING: the job continues and writes its outputs; what is not logged is kept in "
                  f"{self.pending_path} (replay with `scorebridge tracking-sync {self.pending_path}`)", file=sys.stderr, flush=True)

    def _call(self, what: str, fn, *args, **kwargs) -> str:
        """'ok', 'offline' (the store failed: switched offline, or raised in fail mode) or
        'rejected' (the store is up but refused this request, e.g. a param logged twice
        with different values: retrying later would not help)."""
        if not self.online:
            return "offline"
        try:
            _retry_locked(fn, *args, **kwargs)
            return "ok"
        except TrackingError:
            raise
        except Exception as err:  # noqa: BLE001 - any store error must not stop the science
            if _is_rejection(err):
                self._last_rejection = err
                return "rejected"
            self._fail(what, err)
            return "offline"

    def _batch(self, what: str, items: list, send) -> list:
        """Send `items` with `send(items)`; return those that must stay pending. A rejected
        batch is retried item by item so that one bad item does not cost the others."""
        if not items:
            return []
        status = self._call(what, send, items)
        if status == "ok":
            return []
        if status == "offline":
            return items
        if len(items) > 1:
            left: list = []
            for item in items:
                left += self._batch(what, [item], send)
            return left
        err = self._last_rejection
        msg = f"MLflow rejected {what} {self.scrub(repr(items[0]))[:200]}: {self.scrub(str(err))[:400]}"
        if self.on_error == "fail":
            raise TrackingError(msg)
        self.rejected.append(msg)
        print(f"scorebridge: WARNING: {msg} (dropped)", file=sys.stderr, flush=True)
        return []

    # -- start/end
    def _start(self, params: dict[str, str], tags: dict[str, str], datasets: list[dict]) -> None:
        self._pending["params"].update(params)
        self._pending["tags"].update(tags)
        self._pending["datasets"] += datasets
        db = _sqlite_path(self.uri)
        try:
            if db is not None and not db.exists():
                raise FileNotFoundError(f"the SQLite store {db} does not exist (rule tracking_init creates it; "
                                        "rerun it with `snakemake -R tracking_init`)")
            self.client = _retry_locked(_client, self.uri)
            if self.experiment_id is None:  # tracking_init could not reach the store
                kind, name = self.meta["kind"], self.meta["experiment"]
                self.experiment_id = _get_or_create_experiment(self.client, self.experiment_label, kind, name, self.artifact_root)
            exp = _retry_locked(self.client.get_experiment, self.experiment_id)
            if exp.name != self.experiment_label:
                raise RuntimeError(f"experiment id {self.experiment_id} is '{exp.name}', expected '{self.experiment_label}' "
                                   "(experiments.json is stale: rerun rule tracking_init)")
            run = _retry_locked(self.client.create_run, self.experiment_id, tags={"mlflow.runName": self.run_name},
                                run_name=self.run_name)
            self.run_id = run.info.run_id
        except TrackingError:
            raise
        except Exception as err:  # noqa: BLE001
            self._fail("create run", err)
            return
        self._log_params(params)
        self._log_tags(tags)
        self._log_datasets(datasets)

    def _log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = list(params.items())
        for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
            chunk = items[i:i + MAX_PARAMS_PER_BATCH]
            left = self._batch("params", chunk, lambda c: self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in c]))
            for k, _ in chunk:
                self._pending["params"].pop(k, None)
            self._pending["params"].update(dict(left))
            self.logged["params"] += len(chunk) - len(left)

    def _log_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        items = list(tags.items())
        for i in range(0, len(items), MAX_TAGS_PER_BATCH):
            chunk = items[i:i + MAX_TAGS_PER_BATCH]
            left = self._batch("tags", chunk, lambda c: self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in c]))
            for k, _ in chunk:
                self._pending["tags"].pop(k, None)
            self._pending["tags"].update(dict(left))
            self.logged["tags"] += len(chunk) - len(left)

    def _log_datasets(self, datasets: list[dict]) -> None:
        from mlflow.entities import Dataset, DatasetInput, InputTag

        def send(ds: list[dict]) -> None:
            self.client.log_inputs(self.run_id, datasets=[
                DatasetInput(Dataset(name=d["name"], digest=d["digest"][:36], source_type="local",
                                     source=json.dumps({"uri": d["source"]}), profile=json.dumps(d.get("profile", {}))),
                             tags=[InputTag("mlflow.data.context", d["context"])]) for d in ds])

        left = self._batch("dataset inputs", datasets, send)
        self._pending["datasets"] = [d for d in self._pending["datasets"] if d not in datasets] + left
        self.logged["datasets"] += len(datasets) - len(left)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        clean = {_clean_key(str(k)): self.scrub(str(v))[:MAX_TAG_LENGTH] for k, v in tags.items()}
        self._pending["tags"].update(clean)
        if self.online and self.run_id:
            self._log_tags(clean)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Extra params (flattened, redacted, scrubbed)."""
        clean = {_clean_key(k): self.scrub(v)[:MAX_PARAM_LENGTH] for k, v in flatten(redact(dict(params))).items()}
        self._pending["params"].update(clean)
        if self.online and self.run_id:
            self._log_params(clean)

    # -- metrics
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Buffer metrics (a training curve when `step` is given; final metrics at step 0).

        Names are kept as given ('/' is allowed: `rmse/t/850`); values must be numbers
        (NaN and inf are kept). Flushed with `log_batch`, at most 1000 per request.
        """
        ts = _now_ms()
        s = int(step) if step is not None else 0
        for key, value in metrics.items():
            try:
                v = float(value)
            except (TypeError, ValueError):
                warnings.warn(f"metric '{key}' = {value!r} is not a number; not logged", stacklevel=2)
                continue
            self._buffer.append((_clean_key(str(key)), v, ts, s))
        if len(self._buffer) >= MAX_METRICS_PER_BATCH or time.monotonic() - self._last_flush > FLUSH_SECONDS:
            self.flush()

    def log_metric(self, key: str, value: float, step: int | None = None) -> None:
        self.log_metrics({key: value}, step=step)

    def flush(self) -> None:
        from mlflow.entities import Metric

        self._last_flush = time.monotonic()
        while self._buffer:
            chunk, self._buffer = self._buffer[:MAX_METRICS_PER_BATCH], self._buffer[MAX_METRICS_PER_BATCH:]
            if self.run_id is None:
                left = chunk
            else:
                left = self._batch("metrics", chunk, lambda c: self.client.log_batch(
                    self.run_id, metrics=[Metric(k, v, t, s) for k, v, t, s in c]))
            self.logged["metrics"] += len(chunk) - len(left)
            self._pending["metrics"] += [list(m) for m in left]

    # -- artifacts
    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        """Log a file or directory (e.g. metrics.json, the checkpoint, a figure).

        Text files holding a secret are logged as a scrubbed copy.
        """
        p = Path(path)
        if not p.exists():
            warnings.warn(f"artifact {p} does not exist; not logged", stacklevel=2)
            return
        # a file inside an `atomic_path` temporary (`.figures.partial-123/x.png`) is recorded
        # under its final name, which is where it will be when the pending file is replayed
        record = {"path": _final_path(p.resolve()), "artifact_path": artifact_path}
        if not (self.online and self.run_id):
            self._pending["artifacts"].append(record)
            return
        with self._scrubbed(p) as src:
            fn = self.client.log_artifacts if src.is_dir() else self.client.log_artifact
            if not self._batch(f"artifact {p.name}", [record], lambda _: fn(self.run_id, str(src), artifact_path)):
                self.logged["artifacts"] += 1
            else:
                self._pending["artifacts"].append(record)

    @contextlib.contextmanager
    def _scrubbed(self, p: Path) -> Iterator[Path]:
        files = [p] if p.is_file() else [q for q in p.rglob("*") if q.is_file()]
        dirty = [f for f in files if f.suffix.lower() in TEXT_ARTIFACT_SUFFIXES and f.stat().st_size <= MAX_SCRUB_BYTES
                 and self.scrub.leaks(f.read_bytes())]
        if not dirty:
            yield p
            return
        with tempfile.TemporaryDirectory(prefix="scorebridge-scrub-") as tmp:
            dst = Path(tmp) / p.name
            if p.is_dir():
                shutil.copytree(p, dst)
            else:
                shutil.copy2(p, dst)
            for f in dirty:
                target = dst if p.is_file() else dst / f.relative_to(p)
                target.write_text(self.scrub(f.read_text(errors="replace")))
            yield dst

    # -- end
    def _end(self, status: str) -> None:
        self.flush()
        if self.online and self.run_id:
            if self._call("end run", self.client.set_terminated, self.run_id, status) == "ok" and not self._has_pending():
                return
        self._pending["status"] = status
        self._write_pending()

    def _has_pending(self) -> bool:
        return any(self._pending[k] for k in ("params", "tags", "metrics", "artifacts", "datasets"))

    def pending(self) -> dict:
        """What has not been logged yet (empty lists/dicts when everything landed)."""
        return {k: v for k, v in self._pending.items()}

    def _write_pending(self) -> None:
        doc = {
            "what": "MLflow logging that did not reach the store; replay with `scorebridge tracking-sync <this file>`",
            "error": self.error,
            "uri": strip_credentials(self.uri),
            "experiment_id": self.experiment_id,
            "run_id": self.run_id,
            "run_name": self.run_name,
            "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "status": self._pending.get("status", "FINISHED"),
            **self.meta,
            "experiment_name": self.experiment_label,
            "artifact_root": self.artifact_root,
            "params": self._pending["params"],
            "tags": self._pending["tags"],
            "metrics": self._pending["metrics"],
            "artifacts": self._pending["artifacts"],
            "datasets": self._pending["datasets"],
        }
        try:
            write_json(self.pending_path, doc)
        except OSError as err:
            print(f"scorebridge: WARNING: could not write {self.pending_path}: {err}", file=sys.stderr)
            return
        n = {k: len(doc[k]) for k in ("params", "tags", "metrics", "artifacts", "datasets")}
        print(f"scorebridge: WARNING: not logged to MLflow ({self.error}): "
              + ", ".join(f"{v} {k}" for k, v in n.items()) + f"; kept in {self.pending_path}", file=sys.stderr, flush=True)


_PARTIAL_RE = re.compile(r"^\.(?P<name>.+)\.partial-\d+$")


def _final_path(p: Path) -> str:
    return str(Path(*[(m.group("name") if (m := _PARTIAL_RE.match(part)) else part) for part in p.parts]))


def _load_experiments(path: str | os.PathLike) -> dict:
    p = Path(path)
    try:
        info = read_json(p)
    except FileNotFoundError:
        raise InputError("not found (rule tracking_init writes it: `snakemake results/mlflow/experiments.json`)", p) from None
    except json.JSONDecodeError as err:
        raise InputError(f"not valid JSON: {err.msg}", p, err.lineno) from None
    if not isinstance(info, dict) or "experiments" not in info or "uri" not in info:
        raise InputError("not an experiments file written by `scorebridge tracking-init` (keys uri, experiments)", p)
    return info


def _job_uri(info: dict, experiments_path: Path) -> str:
    if info.get("has_credentials"):
        cred = _credentials_file(experiments_path)
        if cred.exists():
            return cred.read_text().strip()
        if info.get("uri_source") == "env" and os.environ.get("MLFLOW_TRACKING_URI"):
            return os.environ["MLFLOW_TRACKING_URI"]
    return info["uri"]


def _pending_path(experiments_path: Path, kind: str, experiment: str, rule: str, wildcards: Mapping[str, Any]) -> Path:
    wc = "-".join(f"{k}={v}" for k, v in sorted(wildcards.items()))
    wc = re.sub(r"[^A-Za-z0-9_=\-.]", "_", wc)
    name = f"{rule}{'-' + wc if wc else ''}-{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
    return experiments_path.resolve().parent / "pending" / kind / experiment / name


class UntrackedRun:
    """Stands in for a TrackedRun when a job runs without MLflow (no experiments file):
    the same methods, logging nothing."""

    run_id = None

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        pass

    def log_metric(self, key: str, value: float, step: int | None = None) -> None:
        pass

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        pass

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        pass

    def flush(self) -> None:
        pass


def untracked_run() -> contextlib.AbstractContextManager:
    """A context manager yielding an UntrackedRun (for CLI calls without --experiments)."""
    return contextlib.nullcontext(UntrackedRun())


@contextlib.contextmanager
def tracked_run(experiments: str | os.PathLike, kind: str, experiment: str, rule: str,
                wildcards: Mapping[str, Any] | None = None, spec: Mapping[str, Any] | None = None,
                datasets: Mapping[str, str | os.PathLike] | None = None, *, tags: Mapping[str, Any] | None = None,
                pending: str | os.PathLike | None = None, on_error: str | None = None) -> Iterator[TrackedRun]:
    """Open the MLflow run of one job: (experiment, rule, wildcards) in experiment `<prefix>/<kind>/<experiment>`.

    `spec` (the experiment's resolved config) becomes the run's params, flattened to dotted
    keys with secrets redacted. Tags: rule, wildcards, invocation, git commit and dirty flag,
    config hash, package versions, dataset digests (the datasets are also logged as MLflow
    dataset inputs). The run ends FINISHED, or FAILED if the body raises (the error is
    re-raised). `pending` overrides where unlogged data goes (default
    `<dir of experiments.json>/pending/<kind>/<experiment>/<rule>-<wildcards>-...json`);
    `on_error` overrides `tracking.on_error` from experiments.json.
    """
    _http_defaults()
    exp_path = Path(experiments)
    info = _load_experiments(exp_path)
    wildcards = dict(wildcards or {})
    spec = dict(spec or {})
    by_kind = info["experiments"].get(kind)
    if by_kind is None:
        raise InputError(f"no experiments of kind '{kind}' (kinds: {sorted(info['experiments'])})", exp_path)
    # An experiment added to the config after tracking_init ran is not in experiments.json:
    # the job resolves it by name and creates it if missing (race-safe: names are unique in
    # the store, so of two creators one wins and the other reads the winner's id).
    mode = on_error or os.environ.get("SCOREBRIDGE_TRACKING_ON_ERROR") or info.get("on_error", "warn")
    if mode not in ("warn", "fail"):
        raise ConfigError("tracking.on_error", f"'{mode}' is not one of warn, fail")
    uri = _job_uri(info, exp_path)
    scrub = Scrubber(extra=_secret_values(spec) + ([uri] if info.get("has_credentials") else []))

    # params: the resolved config, flattened, redacted, scrubbed, truncated to MLflow's limit
    params = {_clean_key(k): scrub(v)[:MAX_PARAM_LENGTH] for k, v in flatten(redact(spec)).items()}
    invocation = os.environ.get(ENV_INVOCATION) or f"standalone-{uuid.uuid4().hex}"
    git = git_state(Path(__file__).resolve().parent)  # the package's checkout (editable install) ...
    if git["commit"] == "unknown":
        git = git_state(Path.cwd())  # ... else the workflow's working directory
    tag = {
        "scorebridge.kind": kind,
        "scorebridge.experiment": experiment,
        "scorebridge.rule": rule,
        "scorebridge.wildcards": json.dumps(wildcards, sort_keys=True),
        "scorebridge.invocation": invocation,
        "scorebridge.config_hash": config_hash(redact(spec)),
        "scorebridge.host": os.uname().nodename if hasattr(os, "uname") else "",
        "scorebridge.slurm_job_id": os.environ.get("SLURM_JOB_ID", ""),
        "git.commit": git["commit"],
        "git.dirty": git["dirty"],
        "mlflow.source.git.commit": git["commit"],
        "mlflow.source.type": "JOB",
        "mlflow.source.name": f"scorebridge {rule}",
    }
    for k, v in wildcards.items():
        tag[f"scorebridge.wildcard.{k}"] = str(v)
    for name, version in package_versions().items():
        tag[f"version.{name}"] = version
    ds_records = []
    context = "training" if any(w in rule for w in ("train", "fit")) else "evaluation"
    for name, path in (datasets or {}).items():
        try:
            digest, how = dataset_digest(path)
        except OSError as err:
            warnings.warn(f"dataset {name} at {path}: {err}; digest not logged", stacklevel=2)
            continue
        tag[f"dataset.{name}.digest"] = digest
        tag[f"dataset.{name}.path"] = str(Path(path).resolve())
        ds_records.append({"name": name, "digest": digest, "source": str(Path(path).resolve()), "context": context,
                           "profile": {"digest_kind": how, "sha256": digest}})
    for k, v in (tags or {}).items():
        tag[str(k)] = str(v)
    tag = {_clean_key(k): scrub(v)[:MAX_TAG_LENGTH] for k, v in tag.items() if v != ""}

    run_name = f"{rule}" + ("[" + ",".join(f"{v}" for _, v in sorted(wildcards.items())) + "]" if wildcards else "")
    label = experiment_name(info.get("experiment_prefix", "scorebridge"), kind, experiment)
    pending_path = Path(pending) if pending else _pending_path(exp_path, kind, experiment, rule, wildcards)
    eid = by_kind.get(experiment)
    run = TrackedRun(uri=uri, experiment_id=None if eid is None else str(eid), experiment_label=label, on_error=mode,
                     pending=pending_path, run_name=run_name, scrub=scrub, artifact_root=info.get("artifact_root"),
                     meta={"kind": kind, "experiment": experiment, "rule": rule, "wildcards": wildcards, "invocation": invocation})
    run._start(params, tag, ds_records)
    previous = _catch_sigterm()
    try:
        yield run
    except BaseException as err:
        if isinstance(err, SystemExit) and err.code in (0, None):
            status = "FINISHED"
        elif isinstance(err, (KeyboardInterrupt, _Terminated)):
            status = "KILLED"
        else:
            status = "FAILED"
        try:
            run._end(status)
        except TrackingError as terr:
            print(f"scorebridge: {terr}", file=sys.stderr)
        raise
    finally:
        _restore_sigterm(previous)
    run._end("FINISHED")


class _Terminated(SystemExit):
    """SIGTERM (scancel, a SLURM time limit, snakemake stopping a job) inside a tracked run."""


def _on_sigterm(signum, frame):  # noqa: ARG001
    raise _Terminated(128 + signum)


def _catch_sigterm():
    """While a run is open, SIGTERM unwinds the job (as SystemExit 143) instead of killing it
    outright, so that buffered metrics are flushed and the run is marked KILLED, not left
    RUNNING; temporaries of `atomic_path` are removed on the way. Only in the main thread
    and only where nobody else handles SIGTERM."""
    if threading.current_thread() is not threading.main_thread():
        return None
    previous = signal.getsignal(signal.SIGTERM)
    if previous not in (signal.SIG_DFL, None):
        return None
    signal.signal(signal.SIGTERM, _on_sigterm)
    return previous


def _restore_sigterm(previous) -> None:
    if previous is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, previous)


# --------------------------------------------------------------------------- replay


def sync_pending(path: str | os.PathLike, uri: str | None = None) -> dict:
    """Replay one pending file into the store; remove it when everything landed.

    Continues the run it names when that run exists, else creates a new run (tagged
    `scorebridge.replayed`). Returns counts of what was logged.
    """
    from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag

    _http_defaults()
    p = Path(path)
    doc = read_json(p)
    target = uri or os.environ.get("MLFLOW_TRACKING_URI") or doc["uri"]
    if "***@" in target:
        raise ConfigError("tracking.uri", f"{p} names a store with credentials; pass the full URI with --uri")
    client = _retry_locked(_client, target)
    run_id = doc.get("run_id")
    if run_id:
        try:
            _retry_locked(client.get_run, run_id)
        except Exception:  # noqa: BLE001
            run_id = None
    if not run_id:
        # ids belong to one store: resolve the experiment by name in the target store
        root = doc.get("artifact_root") if target == doc["uri"] else None
        eid = _get_or_create_experiment(client, doc["experiment_name"], doc["kind"], doc["experiment"],
                                        root or _default_artifact_root(target))
        run = _retry_locked(client.create_run, eid, run_name=doc.get("run_name"),
                            tags={"scorebridge.replayed": p.name})
        run_id = run.info.run_id
    params = list(doc["params"].items())
    for i in range(0, len(params), MAX_PARAMS_PER_BATCH):
        _retry_locked(client.log_batch, run_id, params=[Param(k, v) for k, v in params[i:i + MAX_PARAMS_PER_BATCH]])
    tags = list(doc["tags"].items())
    for i in range(0, len(tags), MAX_TAGS_PER_BATCH):
        _retry_locked(client.log_batch, run_id, tags=[RunTag(k, v) for k, v in tags[i:i + MAX_TAGS_PER_BATCH]])
    ms = doc["metrics"]
    for i in range(0, len(ms), MAX_METRICS_PER_BATCH):
        _retry_locked(client.log_batch, run_id, metrics=[Metric(k, float(v) if v is not None else float("nan"), int(t), int(s))
                                                          for k, v, t, s in ms[i:i + MAX_METRICS_PER_BATCH]])
    if doc["datasets"]:
        _retry_locked(client.log_inputs, run_id, datasets=[
            DatasetInput(Dataset(name=d["name"], digest=d["digest"][:36], source_type="local", source=json.dumps({"uri": d["source"]}),
                                 profile=json.dumps(d.get("profile", {}))), tags=[InputTag("mlflow.data.context", d["context"])])
            for d in doc["datasets"]])
    missing = []
    for a in doc["artifacts"]:
        src = Path(a["path"])
        if not src.exists():
            missing.append(str(src))
            continue
        fn = client.log_artifacts if src.is_dir() else client.log_artifact
        _retry_locked(fn, run_id, str(src), a.get("artifact_path"))
    _retry_locked(client.set_terminated, run_id, doc.get("status", "FINISHED"))
    if missing:
        print(f"scorebridge: WARNING: artifacts no longer on disk, not logged: {missing}", file=sys.stderr)
    p.unlink()
    return {"run_id": run_id, "params": len(params), "tags": len(tags), "metrics": len(ms), "artifacts": len(doc["artifacts"]) - len(missing),
            "datasets": len(doc["datasets"])}


def sync_cli(argv: list[str]) -> int:
    """`scorebridge tracking-sync [--uri URI] PENDING.json|DIR ...`: replay what a job could not log."""
    ap = argparse.ArgumentParser(prog="scorebridge tracking-sync", description=sync_cli.__doc__)
    ap.add_argument("--uri", default=None, help="store to log into (default: $MLFLOW_TRACKING_URI, else the one in each file)")
    ap.add_argument("paths", nargs="+", help="pending files, or directories searched for them (results/mlflow/pending)")
    args = ap.parse_args(argv)
    files: list[Path] = []
    for raw in args.paths:
        q = Path(raw)
        if q.is_dir():
            files += sorted(q.rglob("*.json"))
        elif q.exists():
            files.append(q)
        else:
            raise InputError("no such pending file or directory", q)
    failed = 0
    for f in files:
        try:
            n = sync_pending(f, args.uri)
            print(f"{f}: logged to run {n['run_id']} ({n['params']} params, {n['tags']} tags, {n['metrics']} metrics, "
                  f"{n['artifacts']} artifacts, {n['datasets']} datasets)")
        except ScorebridgeError:
            raise
        except Exception as err:  # noqa: BLE001
            failed += 1
            print(f"{f}: not logged: {type(err).__name__}: {Scrubber()(str(err))[:300]}", file=sys.stderr)
    return 1 if failed else 0
