"""What goes to MLflow and how, for live runs and replay alike: names MLflow accepts,
params from a nested config, batches within MLflow's limits, dataset inputs, and the tags
that `mlflow.tracking.context` resolves (user, source)."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from ..provenance import sha256_tree

__all__ = [
    "BATCH_LIMITS",
    "MAX_PARAM_LENGTH",
    "MAX_TAG_LENGTH",
    "flatten",
    "clean_key",
    "is_rejection",
    "chunks",
    "send_batch",
    "dataset_digest",
    "dataset_record",
    "send_datasets",
    "context_tags",
]

# MLflow's log_batch limits per request
BATCH_LIMITS = {"params": 100, "tags": 100, "metrics": 1000}
MAX_PARAM_LENGTH = 6000
MAX_TAG_LENGTH = 8000


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


def clean_key(key: str) -> str:
    """A name MLflow accepts for a param, tag or metric: allowed characters only, and a
    normalised relative path (`rmse/t/850` stays; `/a//b/` -> `a/b`, `..` -> `__`)."""
    key = _BAD_KEY_CHARS.sub("_", str(key))
    parts = [("__" if part == ".." else part) for part in key.split("/") if part not in ("", ".")]
    return "/".join(parts)[:250] or "_"


_REJECTION_CODES = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "INVALID_STATE", "BAD_REQUEST"}


def is_rejection(err: BaseException) -> bool:
    """The store answered and refused the request (bad value, duplicate param with another
    value): not a reason to go offline."""
    code = getattr(err, "error_code", None)
    return isinstance(code, str) and code in _REJECTION_CODES


def chunks(items: Sequence, kind: str) -> Iterator[list]:
    """`items` in requests of at most MLflow's limit for `kind` (params, tags, metrics)."""
    size = BATCH_LIMITS[kind]
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


def send_batch(client, run_id: str, kind: str, items: Sequence) -> None:
    """One `log_batch` request: params and tags as (key, value), metrics as
    (key, value, timestamp ms, step); a metric value None (JSON null) is sent as NaN."""
    from mlflow.entities import Metric, Param, RunTag

    if kind == "params":
        client.log_batch(run_id, params=[Param(k, v) for k, v in items])
    elif kind == "tags":
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in items])
    elif kind == "metrics":
        client.log_batch(
            run_id,
            metrics=[Metric(k, float(v) if v is not None else float("nan"), int(t), int(s)) for k, v, t, s in items],
        )
    else:
        raise ValueError(f"log_batch sends params, tags or metrics, not '{kind}'")


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


def dataset_record(name: str, path: str | os.PathLike, context: str) -> dict:
    """The record of one input dataset (kept in pending files as it is): name, digest,
    resolved source path, context (training / evaluation) and how the digest was taken."""
    digest, how = dataset_digest(path)
    return {
        "name": name,
        "digest": digest,
        "source": str(Path(path).resolve()),
        "context": context,
        "profile": {"digest_kind": how, "sha256": digest},
    }


def send_datasets(client, run_id: str, records: Sequence[Mapping[str, Any]]) -> None:
    """Log dataset records (`dataset_record`) as the run's MLflow dataset inputs."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    client.log_inputs(
        run_id,
        datasets=[
            DatasetInput(
                Dataset(
                    name=d["name"],
                    digest=d["digest"][:36],
                    source_type="local",
                    source=json.dumps({"uri": d["source"]}),
                    profile=json.dumps(d.get("profile", {})),
                ),
                tags=[InputTag("mlflow.data.context", d["context"])],
            )
            for d in records
        ],
    )


def context_tags(tags: Mapping[str, str] | None = None) -> dict[str, str]:
    """`tags` over what MLflow's context registry resolves for this process (`mlflow.user`,
    `mlflow.source.name`, `mlflow.source.type`, git, ...), as the fluent API does."""
    from mlflow.tracking.context.registry import resolve_tags

    return {str(k): str(v) for k, v in resolve_tags(dict(tags or {})).items()}
