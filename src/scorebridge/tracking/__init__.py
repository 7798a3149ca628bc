"""MLflow tracking for the workflow's jobs: one run per (experiment, rule, wildcards).

How the pieces fit (see config/README.md, section `tracking`):

- `options`: the `tracking:` config section (`TrackingOptions`) and `TrackingError`; how a
  job logs (`job_settings`: env `SCOREBRIDGE_TRACKING`, else experiments.json).
- `uri`: which store: config `tracking.uri` > env `MLFLOW_TRACKING_URI` >
  `sqlite:///<abs>/results/mlflow/mlflow.db` (artifacts in `results/mlflow/artifacts/<kind>/<name>`).
- `store`: rule `tracking_init` (`scorebridge tracking-init`) creates the store and every
  experiment `<prefix>/<kind>/<name>` once and writes their ids to
  `results/mlflow/experiments.json`, which jobs read. A SQLite store is opened under a
  lock on `<db>.lock` (`store_lock`): concurrent creators wait, one migrates.
- `job`: a job opens its run with `job_run(...)` (tracked with `--experiments`, else
  untracked); `run`: the `TrackedRun`, created with `MlflowClient.create_run` in the
  experiment by id, tagged with MLflow's context (user, source) and the job's provenance.
- Logging never breaks the science: any failure of the store switches the run offline; the
  job still writes its outputs and, at the end, a pending file
  (`results/mlflow/pending/...json`); `replay` (`scorebridge tracking-sync`) logs it
  later. With `tracking.on_error: fail` the job fails instead, with a clear message.
- `sysmetrics`: `job_run(..., system_metrics=True)` samples CPU, memory, disk, network and
  GPU utilisation into the run (`system/*`, MLflow's monitors).
- `models`: the trained SR prior and the fitted bridge logged as pyfunc models that sample
  (optionally registered), their checkpoints read with the safe loaders.
- `links`: the dashboard links of a workflow run's runs, printed at its end.
- `batch`: the batches and dataset inputs sent by live runs and replay alike.
- `secrets`: no secret is logged: secret-named config keys are redacted, any value equal
  to a secret from the environment (e.g. `CDSAPI_KEY`) or `~/.cdsapirc` is masked, and
  credentials in URLs (`scheme://user:pass@host`) are stripped.
- `cli`: `scorebridge tracking-init` and `scorebridge tracking-sync`.

Importing this package does not import MLflow (jobs without `--experiments` never do).
"""

from __future__ import annotations

from .batch import dataset_digest, flatten
from .job import job_run, tracked_run, untracked_run
from .options import TrackingError, TrackingOptions
from .replay import sync_pending
from .run import TrackedRun, UntrackedRun
from .secrets import Scrubber
from .store import init_store
from .uri import default_uri, experiment_name, resolve_uri, strip_credentials

__all__ = [
    "TrackingError",
    "TrackingOptions",
    "TrackedRun",
    "UntrackedRun",
    "job_run",
    "tracked_run",
    "untracked_run",
    "resolve_uri",
    "default_uri",
    "strip_credentials",
    "flatten",
    "dataset_digest",
    "experiment_name",
    "init_store",
    "sync_pending",
    "Scrubber",
]
