"""Flat snapshots (:class:`Snapshots`) and the checks every reader of
:mod:`scorebridge.data.cells.read` shares: finite features, strictly increasing times, named
per-time arrays stacked (`_from_snapshot_list`), and per-cell time labels turned into
numbers and sorted (`_from_labels`: numbers as they are; other labels through `time_map`,
the number each holds (:func:`parse_time_labels`), or the order of an ordered category).
Errors name the file, the row/cell/key and what was expected.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import ConfigError, InputError
from .columns import show as _show

__all__ = ["Snapshots", "parse_time_labels"]

log = logging.getLogger(__name__)


@dataclass
class Snapshots:
    """Cells of a time course, flat: X (n, d), time (n,), with names and metadata."""

    X: np.ndarray
    time: np.ndarray
    features: list[str]
    cells: list[str]
    preprocessing: dict = field(default_factory=dict)
    extra_attrs: dict = field(default_factory=dict)
    extra_vars: dict = field(default_factory=dict)  # name -> (dims, array), e.g. PCA loadings


def _check_finite(X: np.ndarray, names: list[str], path, what: str = "cell") -> None:
    bad = ~np.all(np.isfinite(X), axis=1)
    if bad.any():
        idx = np.flatnonzero(bad)
        raise InputError(
            f"NaN or infinite feature values in {len(idx)} {what}(s): {_show([names[i] for i in idx])}", path
        )


def _check_times(times: np.ndarray, path, key: str) -> None:
    times = np.asarray(times, dtype=float)
    if not np.all(np.isfinite(times)):
        raise InputError(f"`{key}` has missing or non-finite values: {times.tolist()}", path)
    if np.any(np.diff(times) <= 0):
        i = int(np.flatnonzero(np.diff(times) <= 0)[0])
        raise InputError(
            f"`{key}` must be strictly increasing; got {times[i]} then {times[i + 1]} at positions {i}, {i + 1}: {times.tolist()}",
            path,
        )


def _from_snapshot_list(snaps: list[tuple[str, np.ndarray]], times, path, times_key: str, features=None) -> Snapshots:
    """Stack named per-time arrays (name, (n_k, d)) into flat Snapshots after checks."""
    if times is None:
        times = np.arange(len(snaps), dtype=float)
    times = np.asarray(times, dtype=float).ravel()
    if times.size != len(snaps):
        raise InputError(f"`{times_key}` lists {times.size} times but the input has {len(snaps)} snapshots", path)
    _check_times(times, path, times_key)
    dims = {}
    for name, a in snaps:
        if a.ndim != 2:
            raise InputError(f"snapshot '{name}' has shape {a.shape}; expected (cells, features)", path)
        if a.shape[0] == 0:
            raise InputError(f"snapshot '{name}' has no cells", path)
        if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
            raise InputError(f"snapshot '{name}' has dtype {a.dtype}; expected real numbers", path)
        dims[name] = a.shape[1]
    if len(set(dims.values())) > 1:
        raise InputError(
            f"snapshots differ in their number of features: {_show([f'{k}: {v}' for k, v in dims.items()], 20)}", path
        )
    d = next(iter(dims.values()))
    for name, a in snaps:
        bad = np.flatnonzero(~np.all(np.isfinite(a), axis=1))
        if bad.size:
            raise InputError(
                f"NaN or infinite feature values in snapshot '{name}', cell(s) {_show(bad.tolist())}", path
            )
    X = np.concatenate([a for _, a in snaps]).astype(np.float64)
    time = np.repeat(times, [a.shape[0] for _, a in snaps])
    cells = [f"{name}_{i}" for name, a in snaps for i in range(a.shape[0])]
    if features is None:
        features = [f"x{i + 1}" for i in range(d)]
    features = [str(f) for f in np.asarray(features).ravel()]
    if len(features) != d:
        raise InputError(f"{len(features)} feature names for {d} features", path)
    return Snapshots(X, time, features, cells)


_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def parse_time_labels(labels: list[str]) -> dict[str, float] | None:
    """{label: time} when every label holds exactly one number and the same text around it
    ("day0", "day2.5" -> 0, 2.5; "D3", "E7.5", "24h"); None otherwise (e.g. "12h" beside
    "1d": different units, so the numbers alone would order them wrongly)."""
    out, rest = {}, set()
    for lab in labels:
        found = _NUMBER.findall(str(lab))
        if len(found) != 1:
            return None
        out[str(lab)] = float(found[0])
        rest.add(_NUMBER.sub("#", str(lab)).strip().lower())
    if len(rest) != 1 or len(set(out.values())) != len(out):
        return None
    return out


def _map_labels(strings, time_map: dict | None, key: str, path, unique: list[str]) -> tuple[np.ndarray, dict] | None:
    """Times for non-numeric labels: the config's `time_map`, else numbers parsed from the
    labels (`parse_time_labels`); None when neither applies."""
    if time_map:
        unmapped = [u for u in unique if u not in time_map]
        if unmapped:
            raise ConfigError(
                "time_map",
                f"time labels ({key}) {_show(unmapped)} of {path} are not in time_map (its labels: {_show(list(time_map))})",
            )
        mapping = {u: float(time_map[u]) for u in unique}
    else:
        mapping = parse_time_labels(unique)
        if mapping is None:
            return None
        log.info(
            "time labels (%s) read as numbers: %s",
            key,
            ", ".join(f"{k} -> {v:g}" for k, v in sorted(mapping.items(), key=lambda kv: kv[1])),
        )
    return np.asarray([mapping[v] for v in strings], dtype=float), {"time_labels": json.dumps(mapping)}


def _from_labels(
    X: np.ndarray, labels, cell_names: list[str], path, what: str, key: str, time_map: dict | None = None
) -> Snapshots:
    """Flat cells with per-cell time labels: convert labels to float (numbers as they are;
    other labels through `time_map` or the number each holds), check, sort by time."""
    import pandas as pd

    labels = pd.Series(labels).reset_index(drop=True)
    extra: dict[str, Any] = {}
    missing = labels.isna().to_numpy()
    if missing.any():
        idx = np.flatnonzero(missing)
        raise InputError(
            f"missing time label ({key}) in {len(idx)} {what}(s): {_show([cell_names[i] for i in idx])}", path
        )
    hint = "; give their times in the dataset's config as time_map: {label: time}"
    if isinstance(labels.dtype, pd.CategoricalDtype):
        cats = labels.cat.categories
        num = pd.to_numeric(pd.Series(cats), errors="coerce")
        strings = labels.astype(str).to_numpy()
        mapped = (
            None
            if (num.notna().all() and not time_map)
            else _map_labels(strings, time_map, key, path, [str(c) for c in cats])
        )
        if mapped is not None:
            time, extra = mapped
        elif num.notna().all():
            time = num.to_numpy(dtype=float)[labels.cat.codes.to_numpy()]
        elif labels.cat.ordered:
            time = labels.cat.codes.to_numpy().astype(float)
            extra["time_labels"] = json.dumps({str(c): float(i) for i, c in enumerate(cats)})
        else:
            raise InputError(
                f"time labels ({key}) are categories that are not numbers: {_show(list(cats))}; make the category ordered or the labels numeric{hint}",
                path,
            )
    else:
        num = pd.to_numeric(labels, errors="coerce")
        bad = num.isna().to_numpy()
        strings = labels.astype(str).to_numpy()
        mapped = (
            _map_labels(strings, time_map, key, path, sorted(set(strings.tolist())))
            if (bad.any() or time_map)
            else None
        )
        if mapped is not None:
            time, extra = mapped
        elif bad.any():
            idx = np.flatnonzero(bad)
            raise InputError(
                f"non-numeric time label ({key}) in {len(idx)} {what}(s): {_show([f'{cell_names[i]} ({labels[i]!r})' for i in idx])}{hint}",
                path,
            )
        else:
            time = num.to_numpy(dtype=float)
    if not np.all(np.isfinite(time)):
        idx = np.flatnonzero(~np.isfinite(time))
        raise InputError(f"non-finite time label ({key}) in {what}(s): {_show([cell_names[i] for i in idx])}", path)
    _check_finite(X, cell_names, path, what)
    order = np.argsort(time, kind="stable")
    out = Snapshots(X[order], time[order], [], [cell_names[i] for i in order])
    out.extra_attrs.update(extra)
    return out
