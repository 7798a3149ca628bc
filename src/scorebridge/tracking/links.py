"""Where to look at what a workflow run logged: printed at the end of a successful
`snakemake` call (the `onsuccess:` handler in workflow/rules/tracking.smk).

Each experiment the invocation logged to is listed with the link of its runs table
(`<ui>/#/experiments/<id>/runs?workflowType=machine_learning`: MLflow 3 otherwise opens an
experiment on its GenAI overview page, and a fresh browser in its GenAI mode) and each run
with its own page. For a tracking server the links point at
the server; for a SQLite (or other database) store they point at `mlflow ui` on
http://127.0.0.1:5000, and the command that serves it is printed with them. Runs that
could not be logged (pending files of this invocation) are counted with the command that
replays them.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

from .store import client, job_uri, load_experiments
from .uri import experiment_name, is_remote, sqlite_path

__all__ = [
    "LOCAL_UI",
    "dashboard",
    "runs_url",
    "run_url",
    "invocation_runs",
    "pending_files",
    "run_links",
    "print_run_links",
]

LOCAL_UI = "http://127.0.0.1:5000"
# MLflow 3's UI has a GenAI mode (traces, prompts) and a model-training mode (runs, models,
# registry); a fresh browser starts in the first unless the link asks for the second
VIEW = "?workflowType=machine_learning"


def dashboard(uri: str) -> tuple[str | None, str | None]:
    """(base URL of the dashboard, the command that serves it or None) for store `uri`
    (credentials already stripped)."""
    scheme = uri.split(":", 1)[0]
    if scheme in ("http", "https"):
        return uri.rstrip("/"), None
    if is_remote(uri):  # databricks, uc: their own workspace UI
        return None, None
    return LOCAL_UI, f"mlflow ui --backend-store-uri {shlex.quote(uri)} --host 127.0.0.1 --port 5000"


def runs_url(base: str, experiment_id: str) -> str:
    return f"{base}/#/experiments/{experiment_id}/runs{VIEW}"


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}{VIEW}"


def invocation_runs(info: dict, experiments_path: str | os.PathLike, invocation: str) -> list[tuple[str, str, object]]:
    """[(experiment name, experiment id, run)] of the runs tagged with `invocation`, in the
    experiments of experiments.json (those left unresolved are looked up by name)."""
    uri = job_uri(info, Path(experiments_path))
    db = sqlite_path(uri)
    if db is not None and not db.exists():
        return []
    c = client(uri)
    names: dict[str, str] = {}
    for kind, by_name in info["experiments"].items():
        for name, eid in by_name.items():
            label = experiment_name(info["experiment_prefix"], kind, name)
            if eid is None:
                exp = c.get_experiment_by_name(label)
                if exp is None:
                    continue
                eid = exp.experiment_id
            names[str(eid)] = label
    if not names:
        return []
    quoted = invocation.replace("'", "")
    runs = c.search_runs(
        sorted(names),
        filter_string=f"tags.`scorebridge.invocation` = '{quoted}'",
        max_results=1000,
        order_by=["attributes.start_time ASC"],
    )
    return [(names[r.info.experiment_id], r.info.experiment_id, r) for r in runs]


def pending_files(experiments_path: str | os.PathLike, invocation: str) -> list[Path]:
    """The pending files (what jobs could not log) written by jobs of `invocation`."""
    root = Path(experiments_path).resolve().parent / "pending"
    found = []
    for f in sorted(root.rglob("*.json")) if root.is_dir() else []:
        try:
            if json.loads(f.read_text()).get("invocation") == invocation:
                found.append(f)
        except (OSError, ValueError, AttributeError):
            continue
    return found


def run_links(experiments_path: str | os.PathLike, invocation: str) -> str:
    """The text printed at the end of a workflow run: the dashboard links of the runs that
    `invocation` made, and its pending files; empty when it logged nothing."""
    path = Path(experiments_path)
    if not path.exists() or path.stat().st_size == 0:
        return ""
    info = load_experiments(path)
    runs = invocation_runs(info, path, invocation)
    pending = pending_files(path, invocation)
    if not runs and not pending:
        return ""
    base, serve = dashboard(info["uri"])
    lines = [
        f"MLflow: {len(runs)} run(s) of this workflow run (tag scorebridge.invocation = '{invocation}') "
        f"in {info['uri']}"
    ]
    if serve:
        lines.append(f"  open the dashboard: {serve}   (then the links below)")
    by_experiment: dict[tuple[str, str], list] = {}
    for label, eid, run in runs:
        by_experiment.setdefault((label, eid), []).append(run)
    for (label, eid), exp_runs in by_experiment.items():
        lines.append(f"  {label}: {runs_url(base, eid)}" if base else f"  {label}: experiment {eid}")
        for r in exp_runs:
            where = run_url(base, eid, r.info.run_id) if base else f"run {r.info.run_id}"
            lines.append(f"    {r.info.run_name} ({r.info.status}): {where}")
    if pending:
        root = path.resolve().parent / "pending"
        lines.append(
            f"  not logged yet: {len(pending)} run(s) kept in {root}; replay with "
            f"`scorebridge tracking-sync {shlex.quote(str(root))}`"
        )
    return "\n".join(lines)


def print_run_links(experiments_path: str | os.PathLike, invocation: str | None) -> None:
    """Print `run_links` (never raises: the workflow has already succeeded)."""
    if not invocation:
        return
    try:
        text = run_links(experiments_path, invocation)
    except Exception as err:  # noqa: BLE001 - a summary must not turn a finished run into an error
        text = f"scorebridge: the MLflow links of this run are not available ({type(err).__name__}: {str(err)[:300]})"
    if text:
        print(text, flush=True)
