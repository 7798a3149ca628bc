"""IGRA v2 radiosondes into zarr: sources, filters, the zarr data contract, and the CLI.

`scorebridge igra-fetch --spec JSON --out DIR [inputs...]` fills a directory with station
files (http download, the user's files, or synthetic soundings sampled from an ERA5
zarr); `scorebridge igra-ingest --spec JSON --out X.zarr files-or-dirs...` parses them
with the fixed-width parser (`igra_format`), filters by station, dates, area and
pressure, and writes the IGRA zarr contract:

- root group, dim ``obs`` (one row per level): ``station``, ``time`` (nominal launch
  time), ``latitude``, ``longitude``, ``pressure`` (Pa), ``gph`` (m), ``temperature``
  (K), ``rh`` (%), ``dpd`` (K), ``wdir`` (deg), ``wspd``, ``u``, ``v`` (m/s), flags
  ``pflag``, ``zflag``, ``tflag`` (one character: ' ', 'A', 'B'), ``lvltyp1``,
  ``lvltyp2``, ``etime`` (s); NaN for missing (-9999) and QC-removed (-8888);
- group ``soundings``, dim ``sounding``: ``station``, ``time``, ``latitude``,
  ``longitude``, ``first`` (index of its first row in ``obs``), ``nlevels``, ``hour``,
  ``reltime``, ``p_src``, ``np_src``;
- root attrs ``provenance`` (JSON: source, input sha256s, filters, versions, created).

Read it back with :func:`open_igra`.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from ..config import parse_spec
from ..errors import ConfigError, InputError
from ..io import atomic_path, write_json
from ..provenance import package_versions, sha256_file
from .igra_format import (
    IgraData,
    parse_igra,
    parse_station_list,
    read_bytes,
    read_igra,
    read_station_list,
)
from .igra_sources import FETCHERS, STATION_LIST_NAME, progress

__all__ = [
    "IgraData",
    "parse_igra",
    "read_igra",
    "parse_station_list",
    "read_station_list",
    "in_area",
    "filter_igra",
    "station_files",
    "write_igra_zarr",
    "open_igra",
    "ingest",
    "fetch_cli",
    "ingest_cli",
]

log = logging.getLogger(__name__)

OBS_CHUNK = 1 << 18  # rows per zarr chunk of the obs table
APPEND_ROWS = 1 << 21  # buffered rows per append (bounds memory with many files)


# --------------------------------------------------------------------------- filters


def _lon180(lon):
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
    w, e, x = _lon180(west), _lon180(east), _lon180(lon)
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


# --------------------------------------------------------------------------- zarr


def station_files(inputs: Iterable[str | Path]) -> list[Path]:
    """IGRA station files among `inputs`: files as given; in directories, the
    `*-data*.txt` and `*-data*.zip` files (the station list and manifest are skipped)."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and "-data" in q.name and q.name.endswith((".txt", ".zip")))
            if not found:
                raise InputError("no IGRA station files (*-data*.txt or *-data*.txt.zip) in this directory", p)
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise InputError("file not found", p)
    if not files:
        raise InputError("no IGRA station files given")
    return files


def _datasets(data: IgraData, offset: int):
    """(obs, soundings) xarray Datasets of `data`; `first` offset by the rows before it."""
    import xarray as xr

    obs = {
        "station": ("obs", data.obs_column("station").astype(object)),
        "time": ("obs", data.obs_column("time")),
        "latitude": ("obs", data.obs_column("latitude")),
        "longitude": ("obs", data.obs_column("longitude")),
    }
    for k, x in data.obs.items():
        obs[k] = ("obs", x.astype(object) if x.dtype.kind == "U" else x)
    snd = {k: ("sounding", v) for k, v in data.soundings.items() if k != "line"}
    snd["first"] = ("sounding", data.first + offset)
    return xr.Dataset(obs), xr.Dataset(snd)


ATTRS = {
    "pressure": {"units": "Pa", "long_name": "pressure"},
    "gph": {"units": "m", "long_name": "geopotential height"},
    "temperature": {"units": "K", "long_name": "air temperature"},
    "rh": {"units": "%", "long_name": "relative humidity"},
    "dpd": {"units": "K", "long_name": "dew-point depression"},
    "wdir": {"units": "degree", "long_name": "wind direction (from, clockwise from north)"},
    "wspd": {"units": "m s-1", "long_name": "wind speed"},
    "u": {"units": "m s-1", "long_name": "eastward wind"},
    "v": {"units": "m s-1", "long_name": "northward wind"},
    "etime": {"units": "s", "long_name": "elapsed time since launch"},
    "latitude": {"units": "degrees_north"},
    "longitude": {"units": "degrees_east"},
    "pflag": {"long_name": "pressure QC flag (' ' unchecked, A tier-1, B tier-1 and tier-2)"},
    "zflag": {"long_name": "geopotential height QC flag"},
    "tflag": {"long_name": "temperature QC flag"},
    "lvltyp1": {"long_name": "major level type (1 standard, 2 other pressure, 3 non-pressure)"},
    "lvltyp2": {"long_name": "minor level type (1 surface, 2 tropopause, 0 other)"},
}


class _ZarrAppender:
    """Append IgraData batches to a zarr store: obs table at the root, index in `soundings`."""

    def __init__(self, path: Path):
        self.path = path
        self.rows = 0
        self.soundings = 0

    def append(self, data: IgraData) -> None:
        if data.n_obs == 0:
            return
        obs, snd = _datasets(data, self.rows)
        for name, attrs in ATTRS.items():
            if name in obs:
                obs[name].attrs.update(attrs)
        if self.rows == 0:
            enc = {k: {"chunks": (OBS_CHUNK,)} for k in obs.data_vars}
            enc["time"].update({"units": "seconds since 1900-01-01", "dtype": "int64"})
            obs.to_zarr(self.path, mode="w", encoding=enc, consolidated=False)
            senc = {k: {"chunks": (OBS_CHUNK,)} for k in snd.data_vars}
            senc["time"].update({"units": "seconds since 1900-01-01", "dtype": "int64"})
            snd.to_zarr(self.path, mode="a", group="soundings", encoding=senc, consolidated=False)
        else:
            obs.to_zarr(self.path, append_dim="obs", consolidated=False)
            snd.to_zarr(self.path, append_dim="sounding", group="soundings", consolidated=False)
        self.rows += data.n_obs
        self.soundings += data.n_soundings

    def finish(self, attrs: dict) -> None:
        import zarr

        root = zarr.open_group(str(self.path), mode="a")
        root.attrs.update(attrs)


def write_igra_zarr(data: IgraData, path: str | Path, attrs: dict | None = None) -> None:
    """Write `data` to a zarr store at `path` (atomically) in the IGRA contract."""
    if data.n_obs == 0:
        raise InputError("no observations to write", path)
    with atomic_path(path) as tmp:
        app = _ZarrAppender(tmp)
        app.append(data)
        app.finish(attrs or {})


def open_igra(path: str | Path):
    """(obs, soundings): the two xarray Datasets of an IGRA zarr store (lazy; strings as
    object arrays of str rather than numpy StringDType)."""
    from .collocate import open_zarr, strings_as_object

    path = Path(path)
    if not path.exists():
        raise InputError("IGRA zarr not found", path)
    obs = open_zarr(path)
    snd = open_zarr(path, group="soundings")
    return strings_as_object(obs), strings_as_object(snd)


def _filters(spec: dict) -> dict:
    return {
        "stations": spec.get("stations") or None,
        "dates": spec.get("dates") or {},
        "area": spec.get("area"),
        "pressure_range": spec.get("pressure_range", [10000, 105000]),
    }


def ingest(spec: dict, inputs: Sequence[str | Path], out: str | Path) -> dict:
    """Parse station files, filter them, write the IGRA zarr at `out`; return a summary."""
    files = station_files(inputs)
    filters = _filters(spec)
    seen_stations: set[str] = set()
    digests = {}
    totals = {"soundings_read": 0, "obs_read": 0}
    with atomic_path(out) as tmp:
        app = _ZarrAppender(tmp)
        buffer: list[IgraData] = []
        buffered = 0
        for f in progress(files, desc="IGRA files", unit="file"):
            digests[str(f)] = sha256_file(f)
            data = parse_igra(read_bytes(f), f)
            totals["soundings_read"] += data.n_soundings
            totals["obs_read"] += data.n_obs
            seen_stations.update(np.unique(data.soundings["station"].astype(str)).tolist())
            data = filter_igra(data, **filters)
            if data.n_obs:
                buffer.append(data)
                buffered += data.n_obs
            if buffered >= APPEND_ROWS:
                app.append(IgraData.concat(buffer))
                buffer, buffered = [], 0
        if buffer:
            app.append(IgraData.concat(buffer))
        if filters["stations"]:
            missing = sorted(set(filters["stations"]) - seen_stations)
            if missing:
                raise InputError(
                    f"unknown station id(s) {missing}: no sounding of them in the {len(files)} input file(s) "
                    f"(stations present: {sorted(seen_stations)[:20]})"
                )
        if app.rows == 0:
            raise InputError(
                f"no observations left after the filters (stations {filters['stations']}, dates {filters['dates']}, "
                f"area {filters['area']}, pressure_range {filters['pressure_range']} Pa): "
                f"{totals['soundings_read']} soundings / {totals['obs_read']} levels were read from {len(files)} file(s)"
            )
        summary = {"soundings": app.soundings, "obs": app.rows, **totals, "stations": len(seen_stations)}
        provenance = {
            "source": spec.get("source", "local"),
            "inputs": digests,
            "filters": filters,
            "summary": summary,
            "format": "IGRA v2.2 (igra2-data-format.txt, 2023-01-19)",
            "package_versions": package_versions(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        app.finish({"provenance": json.dumps(provenance), "title": "IGRA v2 soundings (scorebridge)"})
    log.info("IGRA: %d soundings, %d levels -> %s", app.soundings, app.rows, out)
    return summary


# --------------------------------------------------------------------------- CLI


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--spec", required=True, help="the dataset's config entry as JSON (see config/README.md, igra)")
    p.add_argument("--out", required=True, help="output path")
    return p


def _defaults(spec: dict) -> dict:
    """Validate a dataset entry against igra.schema.yaml, filling defaults for omitted keys."""
    from ..config import SCHEMA, load_schema, validate_config

    return validate_config(dict(spec), load_schema(SCHEMA.parent / "igra.schema.yaml"))


def fetch_cli(argv: list[str]) -> int:
    """`scorebridge igra-fetch --spec JSON --out DIR [inputs...]`."""
    p = _parser("scorebridge igra-fetch", "download (http), copy (local) or synthesise (synthetic) IGRA v2 station files")
    p.add_argument("inputs", nargs="*", help="synthetic: the ERA5 zarr to sample; local: the user's files")
    args = p.parse_args(argv)
    spec = _defaults(parse_spec(args.spec))
    source = spec["source"]
    out = Path(args.out)
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        manifest = FETCHERS[source](spec, list(args.inputs), tmp)
        manifest["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        manifest["package_versions"] = package_versions()
        write_json(tmp / "manifest.json", manifest)
    log.info("IGRA %s: %d file(s) -> %s", source, len(manifest.get("files", {})), out)
    return 0


def ingest_cli(argv: list[str]) -> int:
    """`scorebridge igra-ingest --spec JSON --out X.zarr files-or-dirs...`."""
    p = _parser("scorebridge igra-ingest", "parse IGRA v2 station files into the zarr data contract")
    p.add_argument("inputs", nargs="+", help="IGRA station files (.txt, .zip) or directories of them")
    args = p.parse_args(argv)
    spec = _defaults(parse_spec(args.spec))
    ingest(spec, args.inputs, args.out)
    return 0
