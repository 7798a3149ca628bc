"""Which IGRA soundings and levels to keep: stations, launch dates, area, pressure."""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from ...errors import ConfigError
from .format import IgraData

__all__ = ["lon180", "in_area", "filter_igra"]


def lon180(lon):
    """Longitudes (deg) in -180..180."""
    return (np.asarray(lon, dtype=np.float64) + 180.0) % 360.0 - 180.0


def in_area(lat, lon, area: Sequence[float], key: str = "area") -> np.ndarray:
    """Mask of points inside `area` = [north, west, south, east] (deg).

    Longitudes of points and box may each be -180..180 or 0..360; a box whose west edge
    lies east of its east edge (after wrapping) crosses the antimeridian; a box at least
    360° wide keeps every longitude.
    """
    if len(area) != 4:
        raise ConfigError(key, f"expected [north, west, south, east], got {area}")
    north, west, south, east = map(float, area)
    if south > north:
        raise ConfigError(key, f"south edge {south} is north of north edge {north} ([north, west, south, east])")
    lat = np.asarray(lat, dtype=np.float64)
    ok = (lat >= south) & (lat <= north)
    if east - west >= 360.0:
        return ok & np.isfinite(lon)
    w, e, x = lon180(west), lon180(east), lon180(lon)
    if w <= e:
        return ok & (x >= w) & (x <= e)
    return ok & ((x >= w) | (x <= e))


def _date(text, key: str, end: bool = False):
    if text is None:
        return None
    try:
        ts = pd.Timestamp(text)
    except (ValueError, TypeError):
        raise ConfigError(key, f"'{text}' is not a date (YYYY-MM-DD or YYYY-MM-DDTHH:MM)") from None
    if end and len(str(text).strip()) <= 10:  # a day: inclusive of the whole day
        ts = ts + pd.Timedelta(days=1) - pd.Timedelta(nanoseconds=1)
    return ts.to_datetime64().astype("datetime64[ns]")


def filter_igra(
    data: IgraData,
    *,
    stations: Iterable[str] | None = None,
    dates: dict | None = None,
    area: Sequence[float] | None = None,
    pressure_range: Sequence[float] | None = None,
) -> IgraData:
    """Keep the soundings of `stations`, launched within `dates` ({start, end}, inclusive
    days), inside `area` ([N, W, S, E]); and their levels with pressure (Pa) within
    `pressure_range` ([min, max]; levels without a pressure are dropped by it). Soundings
    without a launch time (HOUR 99 and RELTIME 9999) are dropped."""
    snd = data.soundings
    keep = ~np.isnat(snd["time"])
    if stations:
        keep &= np.isin(snd["station"].astype(str), list(stations))
    dates = dates or {}
    start, end = _date(dates.get("start"), "dates.start"), _date(dates.get("end"), "dates.end", end=True)
    if start is not None and end is not None and start > end:
        raise ConfigError("dates", f"empty date range: start {dates['start']} is after end {dates['end']}")
    if start is not None:
        keep &= snd["time"] >= start
    if end is not None:
        keep &= snd["time"] <= end
    if area is not None:
        keep &= in_area(snd["latitude"], snd["longitude"], area)
    out = data.select_soundings(keep) if not keep.all() else data
    if pressure_range is not None:
        lo, hi = map(float, pressure_range)
        if lo > hi:
            raise ConfigError("pressure_range", f"min {lo} Pa is above max {hi} Pa")
        p = out.obs["pressure"]
        out = out.select_levels((p >= lo) & (p <= hi))
    return out
