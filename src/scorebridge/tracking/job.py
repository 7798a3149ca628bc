"""The run of one job, (experiment, rule, wildcards), tracked or not: `job_run(...)`.

All runs of one `snakemake` invocation share the tag `scorebridge.invocation` (the
Snakefile sets env `SCOREBRIDGE_INVOCATION`, a uuid inherited by every job, also through
sbatch). A parent run is not used: MLflow nests runs only inside one experiment, and
creating a parent lazily from concurrent processes is a race with no atomic primitive in
the tracking API (two jobs would each create "the" parent).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import sys
import threading
import uuid
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping

from ..errors import ConfigError, InputError
from ..provenance import config_hash, git_state, package_versions, redact
from .batch import MAX_PARAM_LENGTH, MAX_TAG_LENGTH, clean_key, context_tags, dataset_record, flatten
from .options import TrackingError, job_settings
from .run import TrackedRun, UntrackedRun
from .secrets import Scrubber, secret_values
from .store import ENV_INVOCATION, job_uri, load_experiments
from .sysmetrics import SystemMetrics
from .uri import experiment_name, http_defaults

__all__ = ["job_run", "tracked_run", "untracked_run"]

log = logging.getLogger(__name__)


def job_run(
    experiments: str | os.PathLike | None,
    *,
    kind: str,
    experiment: str,
    rule: str,
    wildcards: Mapping[str, Any] | None,
    spec: Mapping[str, Any] | None,
    datasets: Mapping[str, str | os.PathLike] | None,
    system_metrics: bool = False,
) -> contextlib.AbstractContextManager:
    """The run of a job, as a context manager: a `TrackedRun` (`tracked_run`) when
    `experiments` (the experiments.json of tracking-init, the CLI's `--experiments`) is
    given, else an `UntrackedRun` that logs nothing. `system_metrics`: this job samples
    the machine's utilisation into its run (training and sampling jobs), when
    `tracking.system_metrics.enabled`."""
    if not experiments:
        log.info("no --experiments given: the run is not tracked in MLflow")
        return untracked_run()
    return tracked_run(
        experiments,
        kind,
        experiment,
        rule,
        wildcards=wildcards,
        spec=spec,
        datasets=datasets,
        system_metrics=system_metrics,
    )


def untracked_run() -> contextlib.AbstractContextManager:
    """A context manager yielding an UntrackedRun (for CLI calls without --experiments)."""
    return contextlib.nullcontext(UntrackedRun())


def _pending_path(experiments_path: Path, kind: str, experiment: str, rule: str, wildcards: Mapping[str, Any]) -> Path:
    wc = "-".join(f"{k}={v}" for k, v in sorted(wildcards.items()))
    wc = re.sub(r"[^A-Za-z0-9_=\-.]", "_", wc)
    name = f"{rule}{'-' + wc if wc else ''}-{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
    return experiments_path.resolve().parent / "pending" / kind / experiment / name


def _run_tags(kind: str, experiment: str, rule: str, wildcards: dict, spec: dict, invocation: str) -> dict[str, str]:
    """The job's tags over MLflow's context tags (user, source): rule, wildcards,
    invocation, config hash, host, git state, package versions."""
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
    return context_tags(tag)


@contextlib.contextmanager
def tracked_run(
    experiments: str | os.PathLike,
    kind: str,
    experiment: str,
    rule: str,
    wildcards: Mapping[str, Any] | None = None,
    spec: Mapping[str, Any] | None = None,
    datasets: Mapping[str, str | os.PathLike] | None = None,
    *,
    tags: Mapping[str, Any] | None = None,
    pending: str | os.PathLike | None = None,
    on_error: str | None = None,
    system_metrics: bool = False,
) -> Iterator[TrackedRun]:
    """Open the MLflow run of one job: (experiment, rule, wildcards) in experiment `<prefix>/<kind>/<experiment>`.

    `spec` (the experiment's resolved config) becomes the run's params, flattened to dotted
    keys with secrets redacted. Tags: MLflow's context (user, source), rule, wildcards,
    invocation, git commit and dirty flag, config hash, package versions, dataset digests
    (the datasets are also logged as MLflow dataset inputs). The run ends FINISHED, or
    FAILED if the body raises (the error is re-raised). `pending` overrides where unlogged
    data goes (default `<dir of experiments.json>/pending/<kind>/<experiment>/<rule>-<wildcards>-...json`);
    `on_error` overrides `tracking.on_error`. How the job logs (`on_error`,
    `system_metrics`, `register`) comes from env `SCOREBRIDGE_TRACKING` (the workflow's
    current config), else from experiments.json (`job_settings`). `system_metrics`: sample
    the machine into the run (`tracking.system_metrics`; `scorebridge.tracking.sysmetrics`).
    """
    http_defaults()
    exp_path = Path(experiments)
    info = load_experiments(exp_path)
    wildcards = dict(wildcards or {})
    spec = dict(spec or {})
    by_kind = info["experiments"].get(kind)
    if by_kind is None:
        raise InputError(f"no experiments of kind '{kind}' (kinds: {sorted(info['experiments'])})", exp_path)
    # An experiment added to the config after tracking_init ran is not in experiments.json:
    # the job resolves it by name and creates it if missing (race-safe: names are unique in
    # the store, so of two creators one wins and the other reads the winner's id).
    settings = job_settings(info)
    mode = on_error or os.environ.get("SCOREBRIDGE_TRACKING_ON_ERROR") or settings.on_error
    if mode not in ("warn", "fail"):
        raise ConfigError("tracking.on_error", f"'{mode}' is not one of warn, fail")
    uri = job_uri(info, exp_path)
    scrub = Scrubber(extra=secret_values(spec) + ([uri] if info.get("has_credentials") else []))

    # params: the resolved config, flattened, redacted, scrubbed, truncated to MLflow's limit
    params = {clean_key(k): scrub(v)[:MAX_PARAM_LENGTH] for k, v in flatten(redact(spec)).items()}
    invocation = os.environ.get(ENV_INVOCATION) or f"standalone-{uuid.uuid4().hex}"
    tag = _run_tags(kind, experiment, rule, wildcards, spec, invocation)
    ds_records = []
    context = "training" if any(w in rule for w in ("train", "fit")) else "evaluation"
    for name, path in (datasets or {}).items():
        try:
            record = dataset_record(name, path, context)
        except OSError as err:
            warnings.warn(f"dataset {name} at {path}: {err}; digest not logged", stacklevel=2)
            continue
        tag[f"dataset.{name}.digest"] = record["digest"]
        tag[f"dataset.{name}.path"] = record["source"]
        ds_records.append(record)
    for k, v in (tags or {}).items():
        tag[str(k)] = str(v)
    tag = {clean_key(k): scrub(v)[:MAX_TAG_LENGTH] for k, v in tag.items() if v != ""}

    run_name = f"{rule}" + ("[" + ",".join(f"{v}" for _, v in sorted(wildcards.items())) + "]" if wildcards else "")
    label = experiment_name(info["experiment_prefix"], kind, experiment)
    pending_path = Path(pending) if pending else _pending_path(exp_path, kind, experiment, rule, wildcards)
    eid = by_kind.get(experiment)
    run = TrackedRun(
        uri=uri,
        experiment_id=None if eid is None else str(eid),
        experiment_label=label,
        on_error=mode,
        pending=pending_path,
        run_name=run_name,
        scrub=scrub,
        artifact_root=info.get("artifact_root"),
        meta={"kind": kind, "experiment": experiment, "rule": rule, "wildcards": wildcards, "invocation": invocation},
        settings=settings,
    )
    run.start(params, tag, ds_records)
    monitor = _system_metrics(run) if system_metrics else None
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
            if monitor is not None:
                monitor.stop()
            run.end(status)
        except TrackingError as terr:
            print(f"scorebridge: {terr}", file=sys.stderr)
        raise
    finally:
        _restore_sigterm(previous)
    if monitor is not None:
        monitor.stop()
    run.end("FINISHED")


def _system_metrics(run: TrackedRun):
    """Start sampling the machine into `run` (None when disabled or the run is offline)."""
    opts = run.settings.system_metrics
    if not (opts.enabled and run.online and run.run_id):
        return None
    try:
        return SystemMetrics(run, opts).start()
    except Exception as err:  # noqa: BLE001 - monitoring never stops the job
        warnings.warn(f"system metrics not logged: {type(err).__name__}: {err}", stacklevel=3)
        return None


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
