"""The `tracking:` config section as typed options, and the error of `on_error: fail`.

The section reaches the processes in two ways. Where the runs go (`uri`, `artifact_root`,
`experiment_prefix`: `store_identity`) is resolved once, by rule `tracking_init`, into
`results/mlflow/experiments.json`; a change of it reruns that rule and every job that logs
(their input). How jobs log (`on_error`, `system_metrics`, `register`) is read by each job
from env `SCOREBRIDGE_TRACKING` (the workflow's current section, set by
workflow/rules/tracking.smk, inherited by every job, also through sbatch), else from
experiments.json: changing it reruns nothing and applies to the jobs that run from then on.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

from ..errors import ConfigError, ScorebridgeError
from ..options import build, register

__all__ = [
    "TrackingOptions",
    "SystemMetricsOptions",
    "TrackingError",
    "ENV_TRACKING",
    "JOB_KEYS",
    "STORE_KEYS",
    "env_section",
    "job_settings",
]

ENV_TRACKING = "SCOREBRIDGE_TRACKING"
STORE_KEYS = ("uri", "artifact_root", "experiment_prefix")  # where the runs go
JOB_KEYS = ("on_error", "system_metrics", "register")  # how each job logs


class TrackingError(ScorebridgeError):
    """The tracking store failed and `tracking.on_error` is `fail`."""


@register
@dataclasses.dataclass(frozen=True)
class SystemMetricsOptions:
    """`tracking.system_metrics`: utilisation sampled on training and sampling runs."""

    SCHEMA_PATH = ("tracking", "system_metrics")

    enabled: bool
    interval: float


@register
@dataclasses.dataclass(frozen=True)
class TrackingOptions:
    """`tracking:` of the config (src/scorebridge/schemas/tracking.schema.yaml)."""

    SCHEMA_PATH = ("tracking",)

    uri: str | None
    artifact_root: str | None
    experiment_prefix: str
    on_error: str
    system_metrics: SystemMetricsOptions
    register: bool

    @classmethod
    def from_section(cls, section: dict) -> TrackingOptions:
        values = {f.name: section[f.name] for f in dataclasses.fields(cls)}
        values["system_metrics"] = build(
            SystemMetricsOptions, section["system_metrics"], where="tracking.system_metrics"
        )
        return cls(**values)

    @classmethod
    def of(cls, tracking: TrackingOptions | Mapping[str, Any] | None) -> TrackingOptions:
        """`tracking` itself, or the section (a mapping; None: empty) built from the schema."""
        if isinstance(tracking, cls):
            return tracking
        return build(cls, dict(tracking or {}))

    def section(self) -> dict:
        """As a config section (JSON-serialisable)."""
        return dataclasses.asdict(self)


def env_section() -> dict | None:
    """The section in env `SCOREBRIDGE_TRACKING` (JSON), None when unset or empty."""
    text = os.environ.get(ENV_TRACKING)
    if not text:
        return None
    try:
        section = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConfigError("tracking", f"env {ENV_TRACKING} is not valid JSON: {err}") from None
    if not isinstance(section, dict):
        raise ConfigError("tracking", f"env {ENV_TRACKING} must hold a JSON object (the config's tracking section)")
    return section


def job_settings(info: Mapping[str, Any]) -> TrackingOptions:
    """How a job logs: the `JOB_KEYS` of env `SCOREBRIDGE_TRACKING` when set (the current
    config), else those recorded in experiments.json `info`; the store's keys of `info`."""
    section = env_section()
    if section is None:
        section = {k: info[k] for k in JOB_KEYS if k in info}
    section = {k: v for k, v in section.items() if k in JOB_KEYS}
    section["experiment_prefix"] = info["experiment_prefix"]
    return TrackingOptions.of(section)
