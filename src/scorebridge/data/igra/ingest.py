"""IGRA v2 station files into the IGRA zarr contract.

`ingest(spec, inputs, out)` parses the station files (`parse`, or `derived`), filters
them by station, dates, area and pressure (`filters`), drops repeated soundings and
writes, in batches that bound memory:

- root group, dim ``obs`` (one row per level): ``station``, ``time`` (nominal launch
  time), ``latitude``, ``longitude``, ``pressure`` (Pa), ``gph`` (m), ``temperature``
  (K), ``rh`` (%), ``dpd`` (K), ``wdir`` (deg), ``wspd``, ``u``, ``v`` (m/s), flags
  ``pflag``, ``zflag``, ``tflag`` (one character: ' ', 'A', 'B'), ``lvltyp1``,
  ``lvltyp2``, ``etime`` (s); NaN for missing (-9999) and QC-removed (-8888);
- group ``soundings``, dim ``sounding``: ``sounding_id``, ``station``, ``time``, ``latitude``,
  ``longitude``, ``first`` (index of its first row in ``obs``), ``nlevels``, ``hour``,
  ``reltime``, ``p_src``, ``np_src``;
- root attrs ``provenance`` (JSON: source, product, input sha256s, filters, dropped
  repeats, versions, created) and ``product``.

CF-1.10 discrete sampling geometry (``featureType: profile``): a contiguous ragged array,
the levels of each sounding contiguous in ``obs`` in sounding order, counted by
``soundings/nlevels`` (``sample_dimension: obs``), each sounding named by
``soundings/sounding_id`` (``<station>@<launch time>``, ``cf_role: profile_id``); units and
standard names (`STANDARD_NAMES`) on the variables.

Derived-parameter files (`product: derived`, `derived`) give the same layout with their
own variables (`derived.LEVEL_VARIABLES` per level, `derived.SOUNDING_VARIABLES` per
sounding, each with its units) and positions from the station list. A sounding read
twice is kept once (`dedup`). Read the store back with :func:`open_igra`.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from ...errors import ConfigError, InputError
from ...io import atomic_path, open_store, strings_as_object
from ...progress import progress
from ...provenance import package_versions, sha256_file
from .dedup import Deduplicator
from .derived import DATA_HINT, DERIVED_ATTRS, DERIVED_HINT, detect_product, parse_derived, place_stations
from .filters import filter_igra
from .format import STATION_LIST_NAME, IgraData
from .options import IgraOptions, igra_options
from .parse import parse_igra, read_bytes, read_station_list

__all__ = ["station_files", "write_igra_zarr", "open_igra", "ingest"]

log = logging.getLogger(__name__)

OBS_CHUNK = 1 << 18  # rows per zarr chunk of the obs table
APPEND_ROWS = 1 << 21  # buffered rows per append (bounds memory with many files)


def station_files(inputs: Iterable[str | Path], product: str | None = None) -> list[Path]:
    """IGRA station files among `inputs`: files as given (a file given twice is read
    once, with a warning); in directories, the `*-data*` (product `data`) or `*-drvd*`
    (product `derived`; either when None) `.txt` and `.zip` files (the station list and
    manifest are skipped)."""
    marks = {"data": ("-data",), "derived": ("-drvd",), None: ("-data", "-drvd")}[product]
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(
                q
                for q in p.iterdir()
                if q.is_file() and any(m in q.name for m in marks) and q.name.endswith((".txt", ".zip"))
            )
            if not found:
                names = " or ".join(f"*{m}*.txt, *{m}*.txt.zip" for m in marks)
                raise InputError(f"no IGRA station files ({names}) in this directory", p)
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise InputError("file not found", p)
    if not files:
        raise InputError("no IGRA station files given")
    unique: dict[Path, Path] = {}
    for f in files:
        if f.resolve() in unique:
            log.warning("%s: given twice (as %s and %s); read once", f.resolve(), unique[f.resolve()], f)
            continue
        unique[f.resolve()] = f
    return list(unique.values())


def _station_table(opts: IgraOptions, inputs: Sequence[str | Path]) -> tuple[pd.DataFrame, str]:
    """The station list that places derived-parameter soundings: `station_list` when it
    is a file, else the igra2-station-list.txt of an input directory (the fetch puts one
    there)."""
    given = opts.station_list
    if given and not given.startswith(("http://", "https://")):
        path = Path(os.path.expanduser(given))
        if not path.is_file():
            raise ConfigError("station_list", f"file '{given}' not found")
        return read_station_list(path), str(path)
    for item in inputs:
        q = Path(item) / STATION_LIST_NAME
        if Path(item).is_dir() and q.is_file():
            return read_station_list(q), str(q)
    raise ConfigError(
        "station_list",
        "IGRA derived-parameter files carry no station position (no LAT/LON in the header): set `station_list` to the "
        f"path of {STATION_LIST_NAME} (the http source fetches it beside the files)",
    )


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
    snd["sounding_id"] = ("sounding", sounding_ids(data.soundings["station"], data.soundings["time"]))
    return xr.Dataset(obs), xr.Dataset(snd)


def sounding_ids(stations, times) -> np.ndarray:
    """``<station>@<nominal launch time, minutes>``: unique in a store (`dedup` keeps one
    sounding per station and launch time), the CF ``profile_id``."""
    when = np.datetime_as_string(np.asarray(times).astype("datetime64[m]"), unit="m")
    return np.array([f"{s}@{t}" for s, t in zip(np.asarray(stations).astype(str), when)], dtype=object)


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
    "latitude": {"units": "degrees_north", "long_name": "station latitude"},
    "longitude": {"units": "degrees_east", "long_name": "station longitude"},
    "pflag": {"long_name": "pressure QC flag (' ' unchecked, A tier-1, B tier-1 and tier-2)"},
    "zflag": {"long_name": "geopotential height QC flag"},
    "tflag": {"long_name": "temperature QC flag"},
    "lvltyp1": {"long_name": "major level type (1 standard, 2 other pressure, 3 non-pressure)"},
    "lvltyp2": {"long_name": "minor level type (1 surface, 2 tropopause, 0 other)"},
}
# CF standard names of the store variables that have one (both products)
STANDARD_NAMES = {
    "pressure": "air_pressure",
    "gph": "geopotential_height",
    "calc_gph": "geopotential_height",
    "temperature": "air_temperature",
    "potential_temperature": "air_potential_temperature",
    "virtual_temperature": "virtual_temperature",
    "rh": "relative_humidity",
    "calc_rh": "relative_humidity",
    "dpd": "dew_point_depression",
    "wdir": "wind_from_direction",
    "wspd": "wind_speed",
    "u": "eastward_wind",
    "v": "northward_wind",
    "vapor_pressure": "water_vapor_partial_pressure_in_air",
    "cape": "atmosphere_convective_available_potential_energy",
    "cin": "atmosphere_convective_inhibition",
    "latitude": "latitude",
    "longitude": "longitude",
    "time": "time",
}
# CF discrete sampling geometry: profiles in a contiguous ragged array. The `obs` table (root
# group) holds the levels of each sounding in sounding order; `soundings/nlevels` counts them
# (`sample_dimension`), `soundings/sounding_id` names each profile (`cf_role`).
GLOBAL_ATTRS = {"Conventions": "CF-1.10", "featureType": "profile"}
SOUNDING_ATTRS = {
    "nlevels": {"long_name": "number of levels of this sounding in obs", "sample_dimension": "obs"},
    "sounding_id": {"long_name": "sounding (station@nominal launch time)", "cf_role": "profile_id"},
    "first": {"long_name": "index of this sounding's first level in obs"},
    "hour": {"long_name": "nominal launch hour UTC (-1: missing)"},
    "reltime": {"long_name": "actual release time UTC as HHMM (-1: missing)"},
    "p_src": {"long_name": "source of the pressure levels (IGRA P_SRC)"},
    "np_src": {"long_name": "source of the non-pressure levels (IGRA NP_SRC)"},
    "station": {"long_name": "IGRA station id"},
    "time": {"long_name": "nominal launch time"},
    "latitude": {"units": "degrees_north", "long_name": "station latitude"},
    "longitude": {"units": "degrees_east", "long_name": "station longitude"},
}
OBS_ATTRS = {
    "station": {"long_name": "IGRA station id of the level's sounding"},
    "time": {"long_name": "nominal launch time of the level's sounding"},
}


def _with_standard_names(attrs: dict) -> dict:
    return {
        k: ({**a, "standard_name": STANDARD_NAMES[k]} if k in STANDARD_NAMES else dict(a)) for k, a in attrs.items()
    }


# variable attributes of each product's store
VARIABLE_ATTRS = {
    "data": _with_standard_names({**ATTRS, **OBS_ATTRS}),
    "derived": _with_standard_names(
        {"latitude": ATTRS["latitude"], "longitude": ATTRS["longitude"], **OBS_ATTRS, **DERIVED_ATTRS}
    ),
}
VARIABLE_ATTRS["data"]["pressure"]["positive"] = VARIABLE_ATTRS["derived"]["pressure"]["positive"] = "down"
FORMATS = {
    "data": "IGRA v2.2 (igra2-data-format.txt, 2023-01-19)",
    "derived": "IGRA v2.2 derived parameters (igra2-derived-format.txt, 2023-01-19)",
}
TITLES = {"data": "IGRA v2 soundings (scorebridge)", "derived": "IGRA v2 derived sounding parameters (scorebridge)"}


class _ZarrAppender:
    """Append IgraData batches to a zarr store: obs table at the root, index in `soundings`."""

    def __init__(self, path: Path, attrs: dict | None = None):
        self.path = path
        self.attrs = ATTRS if attrs is None else attrs  # variable name -> attributes (units, long_name)
        self.rows = 0
        self.soundings = 0

    def append(self, data: IgraData) -> None:
        if data.n_obs == 0:
            return
        obs, snd = _datasets(data, self.rows)
        for name, attrs in self.attrs.items():
            if name in obs:
                obs[name].attrs.update(attrs)
            if name in snd and name not in ("latitude", "longitude", "station", "time"):
                snd[name].attrs.update(attrs)
        for name, attrs in _with_standard_names(SOUNDING_ATTRS).items():
            if name in snd:
                snd[name].attrs.update(attrs)
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
        root.attrs.update({**GLOBAL_ATTRS, **attrs})


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
    path = Path(path)
    obs = open_store(path, "IGRA")
    snd = open_store(path, "IGRA", group="soundings")
    return strings_as_object(obs), strings_as_object(snd)


def _filters(opts: IgraOptions) -> dict:
    return {
        "stations": opts.stations or None,
        "dates": opts.dates,
        "area": opts.area,
        "pressure_range": opts.pressure_range,
    }


def _product(opts: IgraOptions, found: str, first: tuple[str, Path] | None, f: Path) -> None:
    """Refuse a file of the other IGRA product than `product` (or than the first file)."""
    hint = {"data": DATA_HINT, "derived": DERIVED_HINT}[found]
    what = {"data": "a sounding data file", "derived": "an IGRA derived-parameter file"}[found]
    if opts.product is not None and found != opts.product:
        raise InputError(
            f"this is {what} ({hint}) but product is '{opts.product}'; set product: {found} (or leave it unset to detect it)",
            f,
        )
    if first is not None and found != first[0]:
        raise InputError(
            f"this is {what} but {first[1]} is {'a sounding data file' if first[0] == 'data' else 'a derived-parameter file'}: "
            "one IGRA dataset holds one product; give them as two igra entries",
            f,
        )


def ingest(spec: IgraOptions | Mapping, inputs: Sequence[str | Path], out: str | Path) -> dict:
    """Parse station files, filter them by the entry `spec` (options, or a dict the
    schema fills), drop repeated soundings, write the IGRA zarr at `out`; return a summary."""
    opts = igra_options(spec)
    if opts.source == "synthetic" and opts.product == "derived":
        raise ConfigError("product", "the synthetic source writes sounding data files; product must be data or null")
    files = station_files(inputs, opts.product)
    filters = _filters(opts)
    seen_stations: set[str] = set()
    digests = {}
    totals = {"soundings_read": 0, "obs_read": 0}
    first: tuple[str, Path] | None = None
    stations, station_list = None, None
    dedup = Deduplicator()
    with atomic_path(out) as tmp:
        app = _ZarrAppender(tmp)
        buffer: list[IgraData] = []
        buffered = 0
        for f in progress(files, desc="IGRA files", unit="file"):
            digests[str(f)] = sha256_file(f)
            raw = read_bytes(f)
            found = detect_product(raw)
            _product(opts, found, first, f)
            if first is None:
                first = (found, f)
                app.attrs = VARIABLE_ATTRS[found]
            if found == "derived":
                if stations is None:
                    stations, station_list = _station_table(opts, inputs)
                data = place_stations(parse_derived(raw, f), stations, station_list)
            else:
                data = parse_igra(raw, f)
            totals["soundings_read"] += data.n_soundings
            totals["obs_read"] += data.n_obs
            seen_stations.update(np.unique(data.soundings["station"].astype(str)).tolist())
            data = filter_igra(data, stations=filters["stations"], dates=filters["dates"], area=filters["area"])
            data = filter_igra(dedup(data, str(f)), pressure_range=filters["pressure_range"])
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
        product = first[0] if first else "data"
        summary = {
            "soundings": app.soundings,
            "obs": app.rows,
            **totals,
            "duplicates_dropped": dedup.n_dropped,
            "stations": len(seen_stations),
            "product": product,
        }
        provenance = {
            "source": opts.source,
            "product": product,
            "inputs": digests,
            "filters": filters,
            "summary": summary,
            "duplicates": dedup.report(),
            "format": FORMATS[product],
            "package_versions": package_versions(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        if station_list is not None:
            provenance["station_list"] = {"path": station_list, "sha256": sha256_file(station_list)}
        app.finish({"provenance": json.dumps(provenance), "product": product, "title": TITLES[product]})
    log.info("IGRA %s: %d soundings, %d levels -> %s", product, app.soundings, app.rows, out)
    return summary
