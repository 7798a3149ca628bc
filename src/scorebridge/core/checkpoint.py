"""Training checkpoints: atomic writes, discovery of the latest, identity checks.

A checkpoint is one `torch.save`d dict written through `scorebridge.io.atomic_path`
(a temp sibling renamed into place), so a kill -9 mid-write never leaves a file
that looks complete. It holds tensors and plain data only (dicts, lists, tuples,
numbers, strings; NumPy arrays are stored as tensors and restored on load) and is
read with `torch.load(weights_only=True)`: a file holding any other Python object (a
crafted pickle on a shared file system) is refused, never unpickled. Files are named `step_{step:09d}.pt` in the checkpoint
directory; `latest_checkpoint(dir)` returns the highest step that loads. Every
checkpoint carries an `identity` dict (what must agree for a resume to be valid,
e.g. channels and architecture) and its hash; `check_identity` raises a clear
ConfigError listing the keys that differ.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, InputError, UnsafeFileError
from ..io import atomic_path
from ..provenance import config_hash

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "list_checkpoints",
    "latest_checkpoint",
    "prune_checkpoints",
    "check_identity",
    "identity_hash",
    "checkpoint_name",
    "remove_partials",
    "to_plain",
    "from_plain",
    "safe_load",
]

log = logging.getLogger(__name__)
_NAME = re.compile(r"^step_(\d{9})\.pt$")


def checkpoint_name(step: int) -> str:
    return f"step_{int(step):09d}.pt"


def identity_hash(identity: dict) -> str:
    return config_hash(identity)


_ND = "__ndarray__"  # marker of a NumPy array stored as a tensor


def to_plain(obj: Any, where: str = "state") -> Any:
    """`obj` as tensors and plain data that `torch.load(weights_only=True)` reads back.

    NumPy arrays become `{"__ndarray__": tensor, "dtype": str}`, NumPy scalars Python
    numbers; anything else that is not a tensor, dict, list, tuple, str, number, bool or
    None is a TypeError naming where it sits (it would need pickle to load).
    """
    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor)):
        return obj
    if isinstance(obj, np.ndarray):
        return {
            _ND: torch.from_numpy(
                np.ascontiguousarray(obj).astype(np.int64) if obj.dtype.kind == "u" else np.ascontiguousarray(obj)
            ),
            "dtype": str(obj.dtype),
        }
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: key {k!r} is a {type(k).__name__} (only str and int keys are stored)")
            out[k] = to_plain(v, f"{where}.{k}")
        return out
    if isinstance(obj, (list, tuple)):
        vals = [to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return vals if isinstance(obj, list) else tuple(vals)
    raise TypeError(f"{where}: a {type(obj).__name__} cannot be stored without pickle")


def from_plain(obj: Any) -> Any:
    """Undo `to_plain` (NumPy arrays come back as arrays of their dtype)."""
    if isinstance(obj, dict):
        if _ND in obj and set(obj) == {_ND, "dtype"}:
            return obj[_ND].cpu().numpy().astype(obj["dtype"])
        return {k: from_plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(from_plain(v) for v in obj)
    return obj


def safe_load(path: str | Path, map_location: str | torch.device = "cpu", what: str = "checkpoint") -> Any:
    """`torch.load(path, weights_only=True)`: tensors and plain data only, never pickle.

    A file that holds other Python objects is refused (InputError naming the file) and
    nothing in it runs; a missing, truncated or corrupt file is an InputError too.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} not found", path)
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive
        raise InputError(
            f"not a readable {what} (not a torch.save archive: truncated, corrupt or another format)", path
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if "Unsupported" in ln or "global" in ln.lower()]
        first = lines[0] if lines else type(err).__name__
        raise UnsafeFileError(
            f"refused to load this {what}: it holds Python objects other than tensors and plain data "
            f"({first}). scorebridge writes only tensors and plain data, so this file was not written "
            "by it or was altered; nothing in it was run. Delete it and rerun the rule that makes it",
            path,
        ) from None
    except Exception as err:  # corrupt, truncated, not a torch file
        raise InputError(f"not a readable {what} ({type(err).__name__}: {err})", path) from None


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Atomically `torch.save` `state` (tensors and plain data, see `to_plain`) to `path`."""
    path = Path(path)
    plain = to_plain(state)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            torch.save(plain, fh)
            fh.flush()
            try:
                os.fsync(fh.fileno())
            except OSError:  # pragma: no cover - filesystems without fsync
                pass
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint dict without pickle; a file that is not one -> InputError naming it."""
    state = safe_load(path, map_location)
    if not isinstance(state, dict):
        raise InputError(f"not a scorebridge checkpoint (a {type(state).__name__}, expected a dict)", path)
    return from_plain(state)


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """(step, path) of the step checkpoints in `directory`, ascending by step."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(directory: str | Path, map_location: str | torch.device = "cpu") -> tuple[Path, dict] | None:
    """The newest checkpoint in `directory` that loads (older ones are tried if it is
    corrupt; one that would need pickle to load is refused with UnsafeFileError)."""
    for step, path in reversed(list_checkpoints(directory)):
        try:
            return path, load_checkpoint(path, map_location)
        except UnsafeFileError:
            raise
        except InputError as err:
            log.warning("skipping unreadable checkpoint: %s", err)
    return None


def prune_checkpoints(directory: str | Path, keep: int) -> None:
    """Delete all but the `keep` newest step checkpoints (keep <= 0 keeps all)."""
    if keep <= 0:
        return
    for _, path in list_checkpoints(directory)[:-keep]:
        path.unlink(missing_ok=True)


def remove_partials(directory: str | Path) -> int:
    """Delete temp files of checkpoint writes that a kill interrupted; returns how many.

    Only call this from the one process that writes to `directory`.
    """
    directory = Path(directory)
    n = 0
    if directory.is_dir():
        for p in directory.glob(".step_*.pt.partial-*"):
            p.unlink(missing_ok=True)
            n += 1
    return n


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            key = f"{prefix}.{k}" if prefix else str(k)
            if k not in a or k not in b:
                out.append(key)
            else:
                out += _diff(a[k], b[k], key)
        return out
    return [] if a == b else [prefix or "<value>"]


def check_identity(state: dict, identity: dict, path: str | Path) -> None:
    """Raise ConfigError when checkpoint `state` was made with a different identity.

    Channels are named explicitly (the commonest mistake: a checkpoint trained on other
    variables/levels than the experiment asks for).
    """
    theirs = state.get("identity")
    if theirs is None:
        raise InputError("checkpoint has no identity record (not written by scorebridge training)", path)
    # tuples become lists in some round trips; compare in JSON-like form
    import json

    a = json.loads(json.dumps(theirs, default=str))
    b = json.loads(json.dumps(identity, default=str))
    if a == b:
        return
    keys = _diff(a, b)
    detail = []
    if "channels" in keys:
        detail.append(f"checkpoint channels {a.get('channels')} != config channels {b.get('channels')}")
    others = [k for k in keys if k != "channels" and not k.startswith("channels.")]
    if others:
        detail.append("differing keys: " + ", ".join(others[:12]) + (" ..." if len(others) > 12 else ""))
    raise ConfigError(
        "train",
        f"checkpoint {path} was made with another config ({'; '.join(detail)}); "
        "use a checkpoint trained with this config, or delete it to train afresh",
    )
