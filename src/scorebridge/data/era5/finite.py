"""NaN and inf in ERA5 fields: counted while streaming, reported early, checked before use.

At ingest the streaming write counts the non-finite values of every chunk per time step
(`stream`); after each block `nonfinite_error` turns the first such time into an
InputError naming the input file, the variable, the time and the counts (entry key
`nan: error`, the default), and `summarise` writes the counts per variable and time
into the store's provenance (`nan: keep`). `check_finite` reads given times of a store,
a block at a time, for the stages that use the fields (the SR prior's training and
held-out times) before they start.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

from ...errors import InputError

__all__ = ["NonFinite", "nonfinite_error", "summarise", "check_finite"]


@dataclasses.dataclass
class NonFinite:
    """Counts of NaN and of +-inf per variable and time step (summed over every other dim)."""

    nan: dict[str, np.ndarray]
    inf: dict[str, np.ndarray]

    @classmethod
    def zeros(cls, names: Sequence[str], ntime: int) -> "NonFinite":
        return cls({n: np.zeros(ntime, np.int64) for n in names}, {n: np.zeros(ntime, np.int64) for n in names})

    def bad(self, name: str) -> np.ndarray:
        return self.nan[name] + self.inf[name]


def _time(t) -> str:
    t = np.datetime64(t, "s")
    return str(np.datetime_as_string(t, "m" if np.datetime64(t, "m") != np.datetime64(t, "h") else "h"))


def nonfinite_error(counts: NonFinite, times: np.ndarray, sources: dict[str, object], stop: int) -> InputError | None:
    """The error for the first time step before `stop` holding NaN or inf (None if none):
    it names the file the values come from, the variable, the time and the counts."""
    first = None
    for name in counts.nan:
        hits = np.flatnonzero(counts.bad(name)[:stop])
        if hits.size and (first is None or hits[0] < first[1]):
            first = (name, int(hits[0]))
    if first is None:
        return None
    name, t = first
    bad = counts.bad(name)[:stop]
    src = sources[name]
    where = src[t] if isinstance(src, np.ndarray) else src
    return InputError(
        f"variable '{name}' has {int(bad[t])} non-finite values ({int(counts.nan[name][t])} NaN, {int(counts.inf[name][t])} inf) "
        f"at {_time(times[t])}, the first such time ({int(bad.sum())} at {int(np.count_nonzero(bad))} of the {stop} times read so far); "
        "fix or leave out the file, or set the entry's key 'nan' to keep to ingest them (counted in the store's provenance)",
        where,
    )


def summarise(counts: NonFinite, times: np.ndarray) -> dict[str, dict]:
    """Per variable: total NaN and inf, and the times holding any as runs
    `[first, last, count]` of consecutive time steps with the same count."""
    out = {}
    for name in counts.nan:
        bad = counts.bad(name)
        runs = []
        t = 0
        while t < bad.size:
            if bad[t] == 0:
                t += 1
                continue
            end = t
            while end + 1 < bad.size and bad[end + 1] == bad[t]:
                end += 1
            runs.append([_time(times[t]), _time(times[end]), int(bad[t])])
            t = end + 1
        out[name] = {"nan": int(counts.nan[name].sum()), "inf": int(counts.inf[name].sum()), "times": runs}
    return out


def check_finite(
    ds, times, what: str, channels: Sequence[tuple[str, float | None]] | None = None, block_mb: float = 64.0
) -> None:
    """Raise InputError at the first of `times` (positions along `time`, or time values)
    where a field of `ds` holds NaN or inf, naming the store, `what` ("training",
    "held-out"), the variable, the level and the time. `channels`: (variable, level or
    None) pairs to check (None: every field). Reads about `block_mb` MB at a time."""
    tpos = _positions(ds, times)
    if tpos.size == 0:
        return
    if channels is None:
        channels = [(str(v), None) for v in ds.data_vars if "time" in ds[v].dims]
    levels: dict[str, list] = {}
    for name, level in channels:
        levels.setdefault(name, []).append(level)
    arrays = {}
    for name, lv in levels.items():
        da = ds[name]
        if "level" in da.dims and None not in lv:
            da = da.sel(level=lv)
        arrays[name] = da
    per_step = sum(a.dtype.itemsize * math.prod(n for d, n in a.sizes.items() if d != "time") for a in arrays.values())
    step = max(1, int(block_mb * 1e6 // max(per_step, 1)))
    label = ds.attrs["source_path"] if "source_path" in ds.attrs else "ERA5 store"
    for start in range(0, tpos.size, step):
        block = tpos[start : start + step]
        found = None  # (time position, variable, level, nan, inf)
        for name, da in arrays.items():
            leading = ("time", "level") if "level" in da.dims else ("time",)
            x = np.asarray(da.isel(time=block).transpose(*leading, ...).values)
            nan, inf = np.isnan(x), np.isinf(x)
            bad = nan | inf
            if not bad.any():
                continue
            t = int(np.flatnonzero(bad.reshape(x.shape[0], -1).any(axis=1))[0])
            level, at = None, (t,)
            if "level" in da.dims:
                li = int(np.flatnonzero(bad[t].reshape(x.shape[1], -1).any(axis=1))[0])
                level, at = float(da["level"].values[li]), (t, li)
            if found is None or block[t] < found[0]:
                found = (int(block[t]), name, level, int(nan[at].sum()), int(inf[at].sum()))
        if found is not None:
            t, name, level, n_nan, n_inf = found
            at = f" at {level:g} hPa" if level is not None else ""
            raise InputError(
                f"{what} times: variable '{name}'{at} has {n_nan + n_inf} non-finite values at {_time(ds['time'].values[t])} "
                f"({n_nan} NaN, {n_inf} inf); fill or leave out that time before using these fields",
                label,
            )


def _positions(ds, times) -> np.ndarray:
    times = np.asarray(times)
    if times.size == 0:
        return np.zeros(0, np.int64)
    if np.issubdtype(times.dtype, np.integer):
        return np.unique(times.astype(np.int64))
    index = ds.indexes["time"]
    pos = index.get_indexer(times.astype("datetime64[ns]"))
    if np.any(pos < 0):
        missing = times[pos < 0][0]
        raise InputError(
            f"time {_time(missing)} is not in the store", ds.attrs["source_path"] if "source_path" in ds.attrs else None
        )
    return np.unique(pos.astype(np.int64))
