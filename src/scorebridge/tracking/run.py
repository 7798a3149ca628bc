"""A job's MLflow run: every call is safe.

A store failure switches the run offline (or raises `TrackingError` with `on_error:
fail`); what could not be logged is kept and, at the end, written to a pending file that
`scorebridge tracking-sync` replays. A request the store refuses (a param re-logged with
another value) costs that item only, with a warning. Runs are created with
`MlflowClient.create_run(experiment_id=...)`; nothing here calls a fluent (process-global)
MLflow API, so a run cannot land in the wrong experiment however many jobs log at once.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping

from ..io import write_json
from ..provenance import redact
from .batch import (
    BATCH_LIMITS,
    MAX_PARAM_LENGTH,
    MAX_TAG_LENGTH,
    chunks,
    clean_key,
    flatten,
    is_rejection,
    send_batch,
    send_datasets,
)
from .options import TrackingError, TrackingOptions
from .secrets import Scrubber
from .store import client, get_or_create_experiment, retry_locked
from .uri import sqlite_path, strip_credentials

__all__ = ["TrackedRun", "UntrackedRun", "final_path"]

FLUSH_SECONDS = 15.0  # buffered metrics are flushed at least this often
TEXT_ARTIFACT_SUFFIXES = {
    ".json",
    ".txt",
    ".yaml",
    ".yml",
    ".csv",
    ".html",
    ".md",
    ".log",
    ".rst",
    ".toml",
    ".cfg",
    ".ini",
    ".svg",
}
MAX_SCRUB_BYTES = 64 << 20
PENDING_KEYS = ("params", "tags", "metrics", "artifacts", "datasets")

_PARTIAL_RE = re.compile(r"^\.(?P<name>.+)\.partial-\d+$")


def final_path(p: Path) -> str:
    """A path inside an `atomic_path` temporary (`.figures.partial-123/x.png`) under its final name."""
    return str(Path(*[(m.group("name") if (m := _PARTIAL_RE.match(part)) else part) for part in p.parts]))


def _now_ms() -> int:
    return int(time.time() * 1000)


class UntrackedRun:
    """Stands in for a TrackedRun when a job runs without MLflow (no experiments file):
    the same methods, logging nothing."""

    run_id = None
    online = False
    settings = None

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


class TrackedRun:
    """A job's MLflow run. Use through `tracked_run(...)` or `job_run(...)`."""

    def __init__(
        self,
        *,
        uri: str,
        experiment_id: str | None,
        experiment_label: str,
        on_error: str,
        pending: Path,
        run_name: str,
        scrub: Scrubber,
        meta: dict,
        artifact_root: str | None = None,
        settings: TrackingOptions | None = None,
    ):
        self.uri = uri
        self.settings = settings  # how the job logs (system metrics, model registration)
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
        self.logged = {k: 0 for k in PENDING_KEYS}
        self.rejected: list[str] = []
        self._last_rejection: BaseException | None = None
        self._metrics_lock = threading.RLock()  # the system-metrics thread logs too

    # -- failure handling
    def _fail(self, what: str, err: BaseException) -> None:
        msg = f"{type(err).__name__}: {self.scrub(str(err))}"
        msg = msg if len(msg) < 600 else msg[:600] + " ..."
        if self.on_error == "fail":
            raise TrackingError(
                f"MLflow logging failed ({what}) at {strip_credentials(self.uri)}: {msg} "
                "(set tracking.on_error: warn to keep going and log later)"
            ) from None
        if self.online:
            self.online = False
            self.error = f"{what}: {msg}"
            print(
                f"scorebridge: WARNING: MLflow tracking at {strip_credentials(self.uri)} failed ({what}): {msg}\n"
                f"scorebridge: WARNING: the job continues and writes its outputs; what is not logged is kept in "
                f"{self.pending_path} (replay with `scorebridge tracking-sync {self.pending_path}`)",
                file=sys.stderr,
                flush=True,
            )

    def _call(self, what: str, fn, *args, **kwargs) -> str:
        """'ok', 'offline' (the store failed: switched offline, or raised in fail mode) or
        'rejected' (the store is up but refused this request, e.g. a param logged twice
        with different values: retrying later would not help)."""
        if not self.online:
            return "offline"
        try:
            retry_locked(fn, *args, **kwargs)
            return "ok"
        except TrackingError:
            raise
        except Exception as err:  # noqa: BLE001 - any store error must not stop the science
            if is_rejection(err):
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
    def start(self, params: dict[str, str], tags: dict[str, str], datasets: list[dict]) -> None:
        """Create the run (with the `mlflow.*` tags among `tags`: user, source) and log the rest."""
        self._pending["params"].update(params)
        self._pending["tags"].update(tags)
        self._pending["datasets"] += datasets
        db = sqlite_path(self.uri)
        try:
            if db is not None and not db.exists():
                raise FileNotFoundError(
                    f"the SQLite store {db} does not exist (rule tracking_init creates it; "
                    "rerun it with `snakemake -R tracking_init`)"
                )
            self.client = retry_locked(client, self.uri)
            if self.experiment_id is None:  # tracking_init could not reach the store
                kind, name = self.meta["kind"], self.meta["experiment"]
                self.experiment_id = get_or_create_experiment(
                    self.client, self.experiment_label, kind, name, self.artifact_root
                )
            exp = retry_locked(self.client.get_experiment, self.experiment_id)
            if exp.name != self.experiment_label:
                raise RuntimeError(
                    f"experiment id {self.experiment_id} is '{exp.name}', expected '{self.experiment_label}' "
                    "(experiments.json is stale: rerun rule tracking_init)"
                )
            system = {k: v for k, v in tags.items() if k.startswith("mlflow.")}
            run = retry_locked(
                self.client.create_run,
                self.experiment_id,
                tags={**system, "mlflow.runName": self.run_name},
                run_name=self.run_name,
            )
            self.run_id = run.info.run_id
        except TrackingError:
            raise
        except Exception as err:  # noqa: BLE001
            self._fail("create run", err)
            return
        self._log_items("params", params)
        self._log_items("tags", tags)
        self._log_datasets(datasets)

    def _log_items(self, kind: str, values: dict[str, str]) -> None:
        """Params or tags, in batches; what is not logged stays pending."""
        for chunk in chunks(list(values.items()), kind):
            left = self._batch(kind, chunk, lambda c: send_batch(self.client, self.run_id, kind, c))
            for k, _ in chunk:
                self._pending[kind].pop(k, None)
            self._pending[kind].update(dict(left))
            self.logged[kind] += len(chunk) - len(left)

    def _log_datasets(self, datasets: list[dict]) -> None:
        left = self._batch("dataset inputs", datasets, lambda ds: send_datasets(self.client, self.run_id, ds))
        self._pending["datasets"] = [d for d in self._pending["datasets"] if d not in datasets] + left
        self.logged["datasets"] += len(datasets) - len(left)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        clean = {clean_key(str(k)): self.scrub(str(v))[:MAX_TAG_LENGTH] for k, v in tags.items()}
        self._pending["tags"].update(clean)
        if self.online and self.run_id:
            self._log_items("tags", clean)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Extra params (flattened, redacted, scrubbed)."""
        clean = {clean_key(k): self.scrub(v)[:MAX_PARAM_LENGTH] for k, v in flatten(redact(dict(params))).items()}
        self._pending["params"].update(clean)
        if self.online and self.run_id:
            self._log_items("params", clean)

    # -- metrics
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Buffer metrics (a training curve when `step` is given; final metrics at step 0).

        Names are kept as given ('/' is allowed: `rmse/t/850`); values must be numbers
        (NaN and inf are kept). Flushed with `log_batch`, at most 1000 per request.
        """
        ts = _now_ms()
        s = int(step) if step is not None else 0
        with self._metrics_lock:
            for key, value in metrics.items():
                try:
                    v = float(value)
                except (TypeError, ValueError):
                    warnings.warn(f"metric '{key}' = {value!r} is not a number; not logged", stacklevel=2)
                    continue
                self._buffer.append((clean_key(str(key)), v, ts, s))
            if len(self._buffer) >= BATCH_LIMITS["metrics"] or time.monotonic() - self._last_flush > FLUSH_SECONDS:
                self.flush()

    def log_metric(self, key: str, value: float, step: int | None = None) -> None:
        self.log_metrics({key: value}, step=step)

    def flush(self) -> None:
        with self._metrics_lock:
            self._last_flush = time.monotonic()
            while self._buffer:
                limit = BATCH_LIMITS["metrics"]
                chunk, self._buffer = self._buffer[:limit], self._buffer[limit:]
                if self.run_id is None:
                    left = chunk
                else:
                    left = self._batch("metrics", chunk, lambda c: send_batch(self.client, self.run_id, "metrics", c))
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
        record = {"path": final_path(p.resolve()), "artifact_path": artifact_path}
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
        dirty = [
            f
            for f in files
            if f.suffix.lower() in TEXT_ARTIFACT_SUFFIXES
            and f.stat().st_size <= MAX_SCRUB_BYTES
            and self.scrub.leaks(f.read_bytes())
        ]
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
    def end(self, status: str) -> None:
        """Flush, mark the run `status` (FINISHED, FAILED, KILLED); write what is pending."""
        self.flush()
        if self.online and self.run_id:
            if (
                self._call("end run", self.client.set_terminated, self.run_id, status) == "ok"
                and not self._has_pending()
            ):
                return
        self._pending["status"] = status
        self._write_pending()

    def _has_pending(self) -> bool:
        return any(self._pending[k] for k in PENDING_KEYS)

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
            "status": self._pending["status"],
            **self.meta,
            "experiment_name": self.experiment_label,
            "artifact_root": self.artifact_root,
            **{k: self._pending[k] for k in PENDING_KEYS},
        }
        try:
            write_json(self.pending_path, doc)
        except OSError as err:
            print(f"scorebridge: WARNING: could not write {self.pending_path}: {err}", file=sys.stderr)
            return
        n = {k: len(doc[k]) for k in PENDING_KEYS}
        print(
            f"scorebridge: WARNING: not logged to MLflow ({self.error}): "
            + ", ".join(f"{v} {k}" for k, v in n.items())
            + f"; kept in {self.pending_path}",
            file=sys.stderr,
            flush=True,
        )
