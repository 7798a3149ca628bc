"""Crash-safe outputs (write beside the target, then rename into place) and the one
zarr opener.

A store or file only appears under its final name once it is complete, so neither
Snakemake nor a reader ever takes a half-written output as done. Every zarr store is
read through `open_store`, which names the path when it is missing or unreadable.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator

__all__ = [
    "atomic_path",
    "remove_stale_partials",
    "write_json",
    "read_json",
    "remove",
    "open_store",
    "strings_as_object",
]


def remove(path: str | os.PathLike) -> None:
    """Delete a file or a directory tree if it exists."""
    p = Path(path)
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_partials(final: Path) -> None:
    """Remove the temporaries `.<name>.partial-<pid>` of `final` left by writers that were
    killed (SIGKILL, a node lost) before they could clean up: those of processes no
    longer running here. Snakemake runs one job per output at a time."""
    prefix = f".{final.name}.partial-"
    try:
        siblings = list(final.parent.iterdir())
    except OSError:
        return
    for p in siblings:
        pid = p.name[len(prefix) :]
        if p.name.startswith(prefix) and pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            remove(p)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling path to write `path` (file or directory) into.

    On success the temporary is renamed onto `path` (replacing an old one); on any
    error it is removed and nothing is left under `path`. Temporaries of `path` left by
    killed writers are removed first (`remove_stale_partials`).
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(final)
    tmp = final.with_name(f".{final.name}.partial-{os.getpid()}")
    remove(tmp)
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"nothing was written to {tmp} for {final}")
        remove(final)
        os.replace(tmp, final)
    except BaseException:
        remove(tmp)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write `obj` as indented JSON (NaN written as null)."""

    def clean(x: Any) -> Any:
        if isinstance(x, float) and x != x:
            return None
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        if hasattr(x, "item") and callable(x.item) and getattr(x, "ndim", 1) == 0:
            return clean(x.item())
        if hasattr(x, "tolist"):
            return clean(x.tolist())
        return x

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(clean(obj), indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def open_store(path: str | os.PathLike, what: str, **kw: Any):
    """Open a zarr store lazily with xarray, quiet about the `.snakemake_timestamp` marker
    Snakemake leaves in directory outputs. The one zarr opener of the package.

    `what` names the store in errors: a missing local store is an InputError
    "<what> zarr not found", an unreadable one "not a readable zarr store", both naming
    the path. Keyword arguments go to `xarray.open_zarr`; `consolidated` defaults to
    False (the stores written here are not consolidated). A URL (`gs://...`) is opened
    as it is (no existence check).
    """
    import warnings

    import xarray as xr

    from .errors import InputError

    remote = isinstance(path, str) and "://" in path
    p = path if remote else Path(path)
    if not remote and not p.exists():
        raise InputError(f"{what} zarr not found", p)
    kw.setdefault("consolidated", False)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr hierarchy")
            warnings.filterwarnings("ignore", message=".*snakemake_timestamp.*")
            return xr.open_zarr(p, **kw)
    except Exception as err:  # noqa: BLE001 - zarr/xarray raise many types for a bad store
        raise InputError(f"not a readable zarr store ({type(err).__name__}: {err})", p) from None


def strings_as_object(ds):
    """`ds` with variables stored as zarr v3 `string` (read back as numpy StringDType) made
    object arrays of str, which every numpy/xarray/pandas operation accepts (e.g. `where`
    with NaN)."""
    for name, var in ds.variables.items():
        if var.dtype.kind == "T":
            ds[name] = var.astype(object)
    return ds
