"""Point observations from soundings: the :class:`~scorebridge.sr.operators.PointObs` of a
flat list of (latitude, longitude, pressure, variable, value) observations.

Horizontal bilinear weights between the four surrounding grid points (wrapping across
the date line on a global grid), linear interpolation in log-pressure between the two
bracketing model levels; observations outside the grid or the levels' pressure range are
dropped (with a warning) or refused.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from ..errors import InputError
from .operators import PointObs

__all__ = ["build_point_obs", "PointObsReport", "is_global_longitude"]

log = logging.getLogger(__name__)

Channel = tuple[str, "float | None"]


@dataclass
class PointObsReport:
    """What happened to each observation when the operator was built."""

    n_total: int = 0
    n_used: int = 0
    n_missing: int = 0  # NaN value
    n_outside_horizontal: int = 0
    n_outside_vertical: int = 0
    n_unobservable: int = 0  # variable not among the prior's channels
    outside_stations: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


def _bracket(coord: np.ndarray, q: np.ndarray, periodic: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices ``i0, i1`` and weight ``f`` of ``i1`` with ``q = (1-f) c[i0] + f c[i1]``; i0 = -1 outside.

    ``coord`` ascending. ``periodic`` (longitude of a global grid): wraps between the
    last and the first point (+360).
    """
    n = len(coord)
    q = np.asarray(q, dtype=np.float64)
    i0 = np.full(q.shape, -1, dtype=np.int64)
    i1 = np.zeros(q.shape, dtype=np.int64)
    f = np.zeros(q.shape, dtype=np.float64)
    if n == 1:
        hit = np.isclose(q, coord[0], atol=1e-9)
        i0[hit] = 0
        return i0, i1, f
    j = np.searchsorted(coord, q, side="right") - 1
    inside = (q >= coord[0]) & (q <= coord[-1])
    jj = np.clip(j, 0, n - 2)
    lo, hi = coord[jj], coord[jj + 1]
    fi = np.where(hi > lo, (q - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0)
    i0[inside], i1[inside], f[inside] = jj[inside], jj[inside] + 1, np.clip(fi[inside], 0.0, 1.0)
    if periodic:
        gap = (q > coord[-1]) | (q < coord[0])
        qq = np.where(q < coord[0], q + 360.0, q)
        span = coord[0] + 360.0 - coord[-1]
        fw = (qq - coord[-1]) / span
        ok = gap & (fw >= 0) & (fw <= 1)
        i0[ok], i1[ok], f[ok] = n - 1, 0, fw[ok]
    return i0, i1, f


def _wrap_longitude(lon: np.ndarray, grid_lon: np.ndarray) -> np.ndarray:
    """Observation longitudes in the grid's convention (-180..180, or 0..360 when the grid uses it)."""
    lon = np.asarray(lon, dtype=np.float64)
    if grid_lon.max() > 180.0:
        return np.mod(lon, 360.0)
    return np.where(lon > 180.0, lon - 360.0, lon)


def is_global_longitude(grid_lon: np.ndarray) -> bool:
    """True when the (ascending) grid longitudes close the circle: n x spacing = 360 degrees."""
    if len(grid_lon) < 2:
        return False
    d = np.median(np.diff(grid_lon))
    return abs(grid_lon[-1] - grid_lon[0] + d - 360.0) < 0.5 * d


def build_point_obs(
    channels: Sequence[Channel],
    grid_lat: np.ndarray,
    grid_lon: np.ndarray,
    latitude: np.ndarray,
    longitude: np.ndarray,
    pressure_pa: np.ndarray,
    variable: Sequence[str],
    values: np.ndarray,
    station: Sequence[str] | None = None,
    outside: str = "drop",
    source: object = None,
) -> tuple[PointObs, np.ndarray, np.ndarray, PointObsReport]:
    """Build a single-element :class:`PointObs` from a flat list of observations.

    Each observation ``m`` is the value ``values[m]`` of ``variable[m]`` at
    (``latitude``, ``longitude``, ``pressure_pa``). Observations whose value is NaN
    are masked; those of a variable that is not a channel of the prior are skipped;
    those outside the grid horizontally or outside the model levels' pressure range
    (no extrapolation) are dropped with a warning (``outside="drop"``) or raise an
    :class:`InputError` naming the stations (``outside="error"``). For a
    single-level variable (one level, or ``level is None``) only the horizontal
    interpolation applies (``None``) or the pressure must equal the level.

    Returns ``(operator, y, kept, report)``: ``y[1, M]`` the used values (float32),
    ``kept`` the indices of the input observations that made it in.
    """
    grid_lat = np.asarray(grid_lat, dtype=np.float64)
    grid_lon = np.asarray(grid_lon, dtype=np.float64)
    if np.any(np.diff(grid_lat) <= 0) or np.any(np.diff(grid_lon) <= 0):
        raise InputError("grid latitude and longitude must be strictly ascending", source)
    H, W, C = len(grid_lat), len(grid_lon), len(channels)
    lat = np.asarray(latitude, dtype=np.float64)
    lon = _wrap_longitude(np.asarray(longitude, dtype=np.float64), grid_lon)
    p = np.asarray(pressure_pa, dtype=np.float64) / 100.0  # hPa
    vals = np.asarray(values, dtype=np.float64)
    variable = np.array([str(x) for x in np.asarray(variable, dtype=object)])
    n = len(vals)
    station = np.array([str(x) for x in np.asarray(station if station is not None else [""] * n, dtype=object)])
    report = PointObsReport(n_total=n)

    # Channels per variable, by ascending log-pressure.
    by_var: dict[str, list[tuple[float | None, int]]] = {}
    for c, (v, lev) in enumerate(channels):
        by_var.setdefault(v, []).append((None if lev is None else float(lev), c))

    ii0, ii1, fi = _bracket(grid_lat, lat)
    jj0, jj1, fj = _bracket(grid_lon, lon, periodic=is_global_longitude(grid_lon))
    finite_pos = np.isfinite(lat) & np.isfinite(lon)
    horiz_ok = (ii0 >= 0) & (jj0 >= 0) & finite_pos

    rows_idx, rows_w, kept = [], [], []
    outside_h, outside_v = [], []
    for m in range(n):
        v = variable[m]
        if v not in by_var:
            report.n_unobservable += 1
            continue
        if not np.isfinite(vals[m]):
            report.n_missing += 1
            continue
        if not horiz_ok[m]:
            outside_h.append(m)
            continue
        levels = by_var[v]
        if len(levels) == 1 and levels[0][0] is None:
            vert = [(levels[0][1], 1.0)]
        else:
            if not np.isfinite(p[m]) or any(lev is None for lev, _ in levels):
                outside_v.append(m)
                continue
            order = sorted(levels, key=lambda t: np.log(t[0]))
            logl = np.log(np.array([t[0] for t in order]))
            k0, k1, fk = _bracket(logl, np.array([np.log(p[m])]))
            if k0[0] < 0:
                outside_v.append(m)
                continue
            vert = [(order[k0[0]][1], 1.0 - fk[0])] + ([(order[k1[0]][1], fk[0])] if fk[0] > 0 else [])
        horiz = [
            (ii0[m], jj0[m], (1 - fi[m]) * (1 - fj[m])),
            (ii0[m], jj1[m], (1 - fi[m]) * fj[m]),
            (ii1[m], jj0[m], fi[m] * (1 - fj[m])),
            (ii1[m], jj1[m], fi[m] * fj[m]),
        ]
        idx, w = [], []
        for c, wv in vert:
            for i, j, wh in horiz:
                if wv * wh > 0:
                    idx.append((c * H + i) * W + j)
                    w.append(wv * wh)
        rows_idx.append(idx)
        rows_w.append(w)
        kept.append(m)

    report.n_outside_horizontal = len(outside_h)
    report.n_outside_vertical = len(outside_v)
    if outside_h:
        names = sorted({str(x) for x in station[outside_h]})
        report.outside_stations = names
        msg = (
            f"{len(outside_h)} observation(s) from station(s) {names[:10]}{'...' if len(names) > 10 else ''} lie outside the "
            f"grid (lat {grid_lat[0]:.2f}..{grid_lat[-1]:.2f}, lon {grid_lon[0]:.2f}..{grid_lon[-1]:.2f})"
        )
        if outside == "error":
            raise InputError(msg + "; set sample.radiosondes.outside: drop to drop them", source)
        warnings.warn(msg + "; dropped", stacklevel=2)
    if outside_v:
        msg = f"{len(outside_v)} observation(s) lie outside the model levels' pressure range (no extrapolation in log-pressure)"
        if outside == "error":
            raise InputError(msg, source)
        log.info("%s; dropped", msg)
    report.n_used = len(kept)

    M = len(kept)
    K = max([len(r) for r in rows_idx], default=1)
    index = torch.zeros(1, M, K, dtype=torch.long)
    weight = torch.zeros(1, M, K, dtype=torch.float64)
    for r, (idx, w) in enumerate(zip(rows_idx, rows_w)):
        index[0, r, : len(idx)] = torch.tensor(idx)
        weight[0, r, : len(w)] = torch.tensor(w)
    op = PointObs(index, weight, torch.ones(1, M, dtype=torch.bool), (C, H, W))
    y = torch.tensor(vals[kept] if kept else np.zeros(0), dtype=torch.float32).reshape(1, M)
    return op, y, np.asarray(kept, dtype=np.int64), report
