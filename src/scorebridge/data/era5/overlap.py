"""Joining files along time when their times overlap (`on_conflict`).

Files holding the same variables are joined along time. A time held by several files
(or twice by one) is kept once: with `on_conflict: error` (the default) the values of
every copy are compared, one time step and one variable at a time (never a whole
array), and must be equal to float32 precision (NaN equal to NaN) — equal copies are
dropped with a log line, different ones are an InputError naming both files, the first
conflicting time, the variable and the largest difference. `first` / `last` keep the
copy of the file listed first / last among the inputs (the `files` order, each glob
expanded in name order) without comparing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import xarray as xr

from ...errors import InputError

__all__ = ["join_in_time", "ON_CONFLICT"]

log = logging.getLogger(__name__)

ON_CONFLICT = ("error", "first", "last")
_RTOL = 1e-6  # float32 precision (a conversion of units may round the last bit)


def join_in_time(members: Sequence[tuple[Path, xr.Dataset]], on_conflict: str) -> tuple[xr.Dataset, np.ndarray]:
    """Join `members` ((path, dataset) in input order, the same variables) along time.

    Returns the dataset with strictly increasing times and, per time, the path of the
    file its values come from."""
    if on_conflict not in ON_CONFLICT:
        raise ValueError(f"on_conflict {on_conflict!r}: expected one of {ON_CONFLICT}")
    sizes = [ds.sizes["time"] for _, ds in members]
    times = np.concatenate([ds["time"].values for _, ds in members])
    owner = np.repeat(np.arange(len(members)), sizes)
    local = np.concatenate([np.arange(n) for n in sizes])
    rank = -owner if on_conflict == "last" else owner
    order = np.lexsort((rank, times))  # by time, the preferred copy first
    first = np.concatenate([[True], np.diff(times[order]) > np.timedelta64(0, "ns")])
    keep = order[first]
    if keep.size < times.size:
        _report(members, times, owner, local, order, first, on_conflict)
    datasets = [ds for _, ds in members]
    joined = (
        datasets[0]
        if len(datasets) == 1
        else xr.concat(datasets, dim="time", data_vars="minimal", coords="minimal", compat="override", join="override")
    )
    if not np.array_equal(keep, np.arange(times.size)):
        joined = joined.isel(time=keep)
    paths = np.array([str(p) for p, _ in members], dtype=object)
    return joined, paths[owner[keep]]


def _report(members, times, owner, local, order, first, on_conflict: str) -> None:
    """Compare (on_conflict: error) or announce the dropped copies, per pair of files."""
    winner = np.maximum.accumulate(np.where(first, np.arange(order.size), 0))  # position of each copy's kept copy
    pairs: dict[tuple[int, int], int] = {}
    for pos in np.flatnonzero(~first):
        kept, dropped = order[winner[pos]], order[pos]
        a, b = int(owner[kept]), int(owner[dropped])
        if on_conflict == "error":
            _compare(members, a, int(local[kept]), b, int(local[dropped]), times[kept])
        pairs[(a, b)] = pairs.get((a, b), 0) + 1
    for (a, b), n in pairs.items():
        pa, pb = str(members[a][0]), str(members[b][0])
        both = f"twice in {pa}" if a == b else f"in both {' and '.join(sorted((pa, pb)))}"
        if on_conflict == "error":
            log.info("%d times %s with equal values: duplicates dropped", n, both)
        else:
            log.info("%d times %s: the values of %s kept (on_conflict: %s)", n, both, pa, on_conflict)


def _compare(members, a: int, ia: int, b: int, ib: int, time) -> None:
    (pa, da), (pb, db) = members[a], members[b]
    for name in da.data_vars:
        x = np.asarray(da[name].isel(time=ia).values)
        y = np.asarray(db[name].isel(time=ib).values)
        if np.allclose(x, y, rtol=_RTOL, atol=0.0, equal_nan=True):
            continue
        nan_x, nan_y = np.isnan(x), np.isnan(y)
        if np.any(nan_x != nan_y):
            what = f"NaN at {int(np.sum(nan_x != nan_y))} points in one file only"
        else:
            what = f"largest difference {float(np.nanmax(np.abs(x.astype(np.float64) - y))):g}"
        when = np.datetime_as_string(np.datetime64(time, "s"), "m" if _has_minutes(time) else "h")
        raise InputError(
            f"values differ from {pa} at time {when} (variable '{name}', {what}); both files hold this time: "
            "drop one of them or set the entry's on_conflict to first or last (the file listed first / last wins)",
            pb,
        )


def _has_minutes(time) -> bool:
    return bool(np.datetime64(time, "m") != np.datetime64(time, "h"))
