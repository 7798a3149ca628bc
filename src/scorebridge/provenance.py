"""Provenance: package versions, input digests, git state and config hashes."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

__all__ = [
    "package_versions",
    "sha256_file",
    "sha256_tree",
    "config_hash",
    "git_state",
    "SECRET_KEYS",
    "is_secret_key",
    "redact",
]

PACKAGES = (
    "scorebridge",
    "numpy",
    "xarray",
    "zarr",
    "dask",
    "torch",
    "pot",
    "mlflow",
    "snakemake",
    "cfgrib",
    "eccodes",
    "netCDF4",
    "pandas",
    "scipy",
)

# Words that make a key secret wherever they appear in it (as a whole word of the key,
# split at _ - . space and camelCase): `token`, `hf_token`, `aws_secret_access_key`.
SECRET_KEYS = (
    "token",
    "secret",
    "password",
    "passwd",
    "pwd",
    "credential",
    "credentials",
    "auth",
    "authorization",
    "apikey",
    "passphrase",
    "cookie",
)
# `key` alone is ambiguous (`time_key`, `sort_key` are not secrets): secret only as the whole
# name (`key`) or after one of these words (`api_key`, `cdsapi_key`, `access_key`).
SECRET_KEY_QUALIFIERS = (
    "api",
    "cds",
    "cdsapi",
    "access",
    "private",
    "secret",
    "ssh",
    "client",
    "signing",
    "encryption",
    "account",
    "license",
    "licence",
    "auth",
    "service",
    "master",
    "ecmwf",
)


def is_secret_key(name: object) -> bool:
    """Whether a config key or environment variable name holds a secret.

    >>> [is_secret_key(k) for k in ("key", "CDSAPI_KEY", "apiKey", "token", "time_key", "monkey")]
    [True, True, True, True, False, False]
    """
    text = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(name))
    words = [w for w in re.split(r"[^A-Za-z0-9]+", text.lower()) if w]
    if any(w in SECRET_KEYS for w in words):
        return True
    if words and words[-1] == "key":
        return len(words) == 1 or words[-2] in SECRET_KEY_QUALIFIERS
    return False


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_tree(path: str | os.PathLike) -> str:
    """Digest of a file, or of a directory (e.g. a zarr store) by relative paths and contents."""
    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    h = hashlib.sha256()
    for f in sorted(q for q in p.rglob("*") if q.is_file()):
        h.update(str(f.relative_to(p)).encode())
        h.update(sha256_file(f).encode())
    return h.hexdigest()


def config_hash(obj: Any) -> str:
    """Stable short hash of a JSON-able config."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def git_state(cwd: str | os.PathLike | None = None) -> dict[str, str]:
    """{'commit': sha or 'unknown', 'dirty': 'true'/'false'/'unknown'}."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return {"commit": "unknown", "dirty": "unknown"}
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return {"commit": commit.stdout.strip(), "dirty": str(bool(status.stdout.strip())).lower()}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": "unknown"}


def redact(obj: Any) -> Any:
    """Copy of a config with the values of secret-looking keys replaced by '***'."""
    if isinstance(obj, dict):
        return {k: ("***" if is_secret_key(k) else redact(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj
