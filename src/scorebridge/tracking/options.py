"""The `tracking:` config section as typed options, and the error of `on_error: fail`."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from ..errors import ScorebridgeError
from ..options import build, register

__all__ = ["TrackingOptions", "TrackingError"]


class TrackingError(ScorebridgeError):
    """The tracking store failed and `tracking.on_error` is `fail`."""


@register
@dataclasses.dataclass(frozen=True)
class TrackingOptions:
    """`tracking:` of the config (src/scorebridge/schemas/tracking.schema.yaml)."""

    SCHEMA_PATH = ("tracking",)

    uri: str | None
    artifact_root: str | None
    experiment_prefix: str
    on_error: str

    @classmethod
    def of(cls, tracking: TrackingOptions | Mapping[str, Any] | None) -> TrackingOptions:
        """`tracking` itself, or the section (a mapping; None: empty) built from the schema."""
        if isinstance(tracking, cls):
            return tracking
        return build(cls, dict(tracking or {}))
