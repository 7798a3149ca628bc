"""Soundings given more than once: identical repeats dropped, disagreeing ones refused.

A sounding is known by its station and nominal launch time. The same sounding read
again (the same file given twice, an LF and a CRLF copy, a file that repeats itself)
is dropped, and `Deduplicator.report` says which files repeated which; two soundings
of one station and launch time that differ in their levels or values are an error
naming both files and header lines. Soundings are compared by a 64-bit digest of every
header value and every level (values, flags, level order), computed for all soundings
at once.
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pandas as pd

from ...errors import InputError
from .format import IgraData

__all__ = ["sounding_digests", "Deduplicator"]

log = logging.getLogger(__name__)

_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_STEP = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: every input bit reaches every output bit (uint64, wraps)."""
    x = np.asarray(x, np.uint64)
    x = x ^ (x >> np.uint64(30))
    x = x * _MIX1
    x = x ^ (x >> np.uint64(27))
    x = x * _MIX2
    return x ^ (x >> np.uint64(31))


def _bits(x: np.ndarray) -> np.ndarray:
    """The values of a column as uint64 codes: float bits (with -0.0 as 0.0), integers,
    one-character flags as code points; other columns by pandas' hash."""
    if x.dtype.kind == "f":
        return (x.astype(np.float64) + 0.0).view(np.uint64)
    if x.dtype.kind in "iub":
        return x.astype(np.int64).view(np.uint64)
    if x.dtype.kind in "Mm":
        return x.astype(f"{x.dtype.kind}8[ns]").view(np.uint64)
    if x.dtype.kind == "U" and x.dtype.itemsize == 4:
        return x.view(np.uint32).astype(np.uint64)
    return pd.util.hash_array(np.asarray(x, dtype=object))


def _rows(columns: dict[str, np.ndarray], n: int) -> np.ndarray:
    """One uint64 per row from every column, in name order."""
    out = np.zeros(n, np.uint64)
    for j, k in enumerate(sorted(columns)):
        out = _mix(out ^ _bits(columns[k]) ^ (np.uint64(j + 1) * _STEP))
    return out


def sounding_digests(data: IgraData) -> np.ndarray:
    """One uint64 per sounding from its header values (all but the file line) and its
    levels in order; equal soundings give equal digests."""
    with np.errstate(over="ignore"):
        rows = _rows(data.obs, data.n_obs)
        first = data.first
        nlev = data.soundings["nlevels"].astype(np.int64)
        pos = (np.arange(data.n_obs, dtype=np.int64) - np.repeat(first, nlev)).astype(np.uint64)
        levels = _mix(rows ^ ((pos + np.uint64(1)) * _STEP))
        per = np.zeros(data.n_soundings, np.uint64)
        has = nlev > 0
        if data.n_obs:
            per[has] = np.add.reduceat(levels, first[has])
        heads = _rows({k: v for k, v in data.soundings.items() if k != "line"}, data.n_soundings)
        return _mix(heads ^ _mix(per))


class Deduplicator:
    """Remembers every sounding (station, launch time) read so far, by file and line."""

    def __init__(self) -> None:
        self.seen: dict[tuple[str, int], tuple[str, int, int, int]] = {}
        self.dropped: Counter[tuple[str, str]] = Counter()

    def __call__(self, data: IgraData, source: str) -> IgraData:
        """`data` without the soundings already seen identically; a sounding that was
        seen with other levels or values is an InputError naming both places."""
        if data.n_soundings == 0:
            return data
        digests = sounding_digests(data).tolist()
        stations = data.soundings["station"].astype(str).tolist()
        times = data.soundings["time"].astype("datetime64[ns]").astype(np.int64).tolist()
        lines = data.soundings["line"].tolist()
        nlev = data.soundings["nlevels"].tolist()
        keep = np.ones(data.n_soundings, bool)
        seen = self.seen
        for i, key in enumerate(zip(stations, times)):
            mine = (source, lines[i], digests[i], nlev[i])
            prev = seen.setdefault(key, mine)
            if prev is mine:
                continue
            if prev[2] == digests[i]:
                keep[i] = False
                self.dropped[(prev[0], source)] += 1
                continue
            when = np.datetime_as_string(np.datetime64(times[i], "ns"), "m")
            what = (
                f"{prev[3]} vs {nlev[i]} levels"
                if prev[3] != nlev[i]
                else f"the same {nlev[i]} levels with different values"
            )
            raise InputError(
                f"two different soundings of station {key[0]} launched at {when}: {prev[0]}, line {prev[1]} and "
                f"{source}, line {lines[i]} ({what}); a station's sounding at one launch time may be given once: "
                "remove the copy that is wrong (or the file that repeats it)"
            )
        return data if keep.all() else data.select_soundings(keep)

    @property
    def n_dropped(self) -> int:
        return int(sum(self.dropped.values()))

    def report(self) -> list[dict]:
        """Log one warning per pair of files with repeats; the pairs for the provenance."""
        out = []
        for (kept, dropped), n in self.dropped.items():
            where = f"earlier in {kept}" if kept == dropped else f"in {kept}"
            log.warning(
                "%s: %d sounding(s) repeat identical soundings (station, launch time, levels) %s; the repeats were dropped",
                dropped,
                n,
                where,
            )
            out.append({"kept": kept, "dropped": dropped, "soundings": n})
        return out
