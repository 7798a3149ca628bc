"""ERA5 layouts -> the zarr data contract: names, axes, selection, all lazy.

Accepted layouts (each file or store is opened without loading data):

- new CDS netCDF: `valid_time`, `pressure_level`, `latitude` descending, scalar `number`,
  `expver` per time;
- old CDS netCDF: `time`, `level`, int16 packed with `scale_factor`/`add_offset`,
  possibly an `expver` dimension (ERA5 + ERA5T);
- GRIB through cfgrib: `time` (+ `step`, 2-D `valid_time`), `isobaricInhPa`,
  ensemble `number`, scalar time for single-field files;
- ARCO-ERA5 zarr: variables named by CDS long names (`temperature`, ...), `level`.

The result has dims `([number,] time, [level,] latitude, longitude)`, `level` in hPa
(descending pressure), `latitude` ascending, `longitude` ascending in -180..180 (0..360
only when the grid straddles the antimeridian), float32, and is chunked by time.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from ...errors import ConfigError, InputError
from .options import Era5Options, era5_options

__all__ = [
    "PRESSURE_LEVEL_NAMES",
    "SINGLE_LEVEL_NAMES",
    "LONG_NAMES",
    "Selection",
    "standardise",
    "select",
    "finish",
    "lon_order",
]

log = logging.getLogger(__name__)

# ERA5 short name -> CDS / ARCO long name (the `variable` values of the CDS API).
PRESSURE_LEVEL_NAMES: dict[str, str] = {
    "t": "temperature",
    "u": "u_component_of_wind",
    "v": "v_component_of_wind",
    "z": "geopotential",
    "q": "specific_humidity",
    "r": "relative_humidity",
    "w": "vertical_velocity",
    "vo": "vorticity",
    "d": "divergence",
    "pv": "potential_vorticity",
    "cc": "fraction_of_cloud_cover",
    "o3": "ozone_mass_mixing_ratio",
    "clwc": "specific_cloud_liquid_water_content",
    "ciwc": "specific_cloud_ice_water_content",
}
SINGLE_LEVEL_NAMES: dict[str, str] = {
    "t2m": "2m_temperature",
    "d2m": "2m_dewpoint_temperature",
    "u10": "10m_u_component_of_wind",
    "v10": "10m_v_component_of_wind",
    "u100": "100m_u_component_of_wind",
    "v100": "100m_v_component_of_wind",
    "msl": "mean_sea_level_pressure",
    "sp": "surface_pressure",
    "tp": "total_precipitation",
    "skt": "skin_temperature",
    "sst": "sea_surface_temperature",
    "tcwv": "total_column_water_vapour",
    "tcc": "total_cloud_cover",
    "blh": "boundary_layer_height",
    "lsm": "land_sea_mask",
}
LONG_NAMES: dict[str, str] = {**PRESSURE_LEVEL_NAMES, **SINGLE_LEVEL_NAMES}
# GRIB shortNames that cfgrib or other tools may keep as variable names.
_ALIASES = {"2t": "t2m", "2d": "d2m", "10u": "u10", "10v": "v10", "100u": "u100", "100v": "v100"}
_FROM_LONG = {long: short for short, long in LONG_NAMES.items()}

_TIME_NAMES = ("valid_time", "time")
_LEVEL_NAMES = ("pressure_level", "isobaricInhPa", "level", "plev", "lev")
_LAT_NAMES = ("latitude", "lat")
_LON_NAMES = ("longitude", "lon")
_MEMBER_NAMES = ("number", "realization", "member")
_KEEP_ATTRS = ("units", "long_name", "standard_name")


@dataclasses.dataclass(frozen=True)
class Selection:
    """What to keep: the config keys of one ERA5 dataset, checked (`from_spec`)."""

    variables: tuple[str, ...]
    levels: tuple[float, ...]  # empty: every level
    area: tuple[float, float, float, float] | None  # north, west, south, east
    start: np.datetime64 | None  # inclusive
    end: np.datetime64 | None  # exclusive (the day after the `end` date)
    hours: tuple[int, ...] | None
    member: int | None
    grid: float | None

    @classmethod
    def from_spec(cls, spec: Era5Options | Mapping) -> "Selection":
        """The selection of an ERA5 entry (options, or a dict the schema fills)."""
        opts = era5_options(spec)
        variables = tuple(opts.variables)
        if not variables:
            raise ConfigError("variables", "at least one variable is needed")
        if len(set(variables)) != len(variables):
            raise ConfigError("variables", f"duplicated names in {list(variables)}")
        levels = tuple(float(x) for x in opts.levels)
        if any(not (0 < x <= 1100) for x in levels):
            raise ConfigError("levels", f"pressure levels must be in (0, 1100] hPa; got {list(levels)}")
        area = opts.area
        if area is not None:
            north, west, south, east = (float(x) for x in area)
            if not (-90 <= south <= north <= 90):
                raise ConfigError("area", f"[north, west, south, east] needs -90 <= south <= north <= 90; got {area}")
            area = (north, west, south, east)
        dates = opts.dates
        start = _parse_date(dates["start"], "dates.start")
        end = _parse_date(dates["end"], "dates.end")
        if start is not None and end is not None and end < start:
            raise ConfigError("dates", f"empty date range: end {dates['end']} is before start {dates['start']}")
        end_excl = None if end is None else end + np.timedelta64(1, "D")
        hours = None if opts.hours is None else tuple(sorted({int(h) for h in opts.hours}))
        if hours is not None and not hours:
            raise ConfigError("hours", "empty list: no hour of day would be kept (null keeps all)")
        grid = opts.grid
        if grid is not None and float(grid) <= 0:
            raise ConfigError("grid", f"grid spacing must be positive; got {grid}")
        member = opts.member
        return cls(
            variables,
            levels,
            area,
            start,
            end_excl,
            hours,
            None if member is None else int(member),
            None if grid is None else float(grid),
        )


def _parse_date(text: str | None, key: str) -> np.datetime64 | None:
    if text in (None, ""):
        return None
    try:
        return np.datetime64(dt.date.fromisoformat(str(text)[:10]), "ns")
    except ValueError:
        raise ConfigError(key, f"expected a date YYYY-MM-DD; got {text!r}") from None


# --- names and axes ----------------------------------------------------------------------


def _first(names: Sequence[str], present) -> str | None:
    return next((n for n in names if n in present), None)


def standardise(ds: xr.Dataset, label: str) -> xr.Dataset:
    """Rename the axes and variables of any accepted layout to the contract's names.

    No data is read. Raises InputError naming `label` when an axis is missing."""
    ds = ds.rename(
        {name: _FROM_LONG[name] for name in ds.data_vars if name in _FROM_LONG and _FROM_LONG[name] not in ds}
    )
    ds = ds.rename({name: _ALIASES[name] for name in ds.data_vars if name in _ALIASES and _ALIASES[name] not in ds})

    # horizontal axes
    lat = _first(_LAT_NAMES, ds.dims)
    lon = _first(_LON_NAMES, ds.dims)
    if lat is None or lon is None:
        raise InputError(f"no latitude/longitude dimensions (dims: {dict(ds.sizes)})", label)
    ds = ds.rename({lat: "latitude", lon: "longitude"})

    # old CDS files mixing ERA5 (expver 1) and ERA5T (expver 5) along an `expver` dimension
    if "expver" in ds.dims:
        parts = [ds.isel(expver=i, drop=True) for i in range(ds.sizes["expver"])]
        merged = parts[0]
        for part in parts[1:]:
            merged = merged.combine_first(part)
        ds = merged

    ds = _standardise_time(ds, label)

    level = _first(_LEVEL_NAMES, ds.dims)
    if level is not None:
        if level != "level":
            ds = ds.rename({level: "level"})
        values = np.asarray(ds["level"].values, dtype=np.float64)
        units = str(ds["level"].attrs.get("units", "")).strip().lower()
        if units == "pa" or (units not in ("hpa", "millibars", "mbar", "mb") and values.max(initial=0) > 2000):
            values = values / 100.0  # Pa -> hPa
        ds = ds.assign_coords(level=("level", values))

    member = _first(_MEMBER_NAMES, ds.dims)
    if member is not None and member != "number":
        ds = ds.rename({member: "number"})

    # keep dimension coordinates only (drop expver, step, surface, scalar number, 2-D valid_time, ...)
    ds = ds.drop_vars([c for c in ds.coords if c not in ds.dims])
    return ds


def _standardise_time(ds: xr.Dataset, label: str) -> xr.Dataset:
    """One `time` dimension holding the valid time (analysis or forecast)."""
    if "valid_time" in ds.dims:  # new CDS netCDF
        if "time" in ds.coords:
            ds = ds.drop_vars("time")
        return ds.rename({"valid_time": "time"})
    if "time" in ds.dims and "step" in ds.dims:  # GRIB forecasts: time x step -> valid time
        valid = ds["valid_time"] if "valid_time" in ds.coords else ds["time"] + ds["step"]
        ds = ds.drop_vars([c for c in ("valid_time",) if c in ds.coords])
        ds = ds.stack(vt=("time", "step"), create_index=False)
        vt = np.asarray(valid.transpose("time", "step").values).reshape(-1)
        ds = ds.drop_vars([c for c in ("time", "step") if c in ds.coords]).rename({"vt": "time"})
        ds = ds.assign_coords(time=("time", vt))
        order = np.argsort(vt, kind="stable")
        keep = order[np.concatenate([[True], np.diff(vt[order]) > np.timedelta64(0, "ns")])]
        return ds.isel(time=keep).transpose("time", ...)
    if "time" in ds.dims:
        if "valid_time" in ds.coords and ds["valid_time"].dims == ("time",):
            ds = ds.assign_coords(time=("time", ds["valid_time"].values))
        return ds
    # a single field: scalar valid_time / time coordinate
    for name in _TIME_NAMES:
        if name in ds.coords and ds[name].ndim == 0:
            value = np.asarray(ds[name].values)
            ds = ds.drop_vars([c for c in _TIME_NAMES if c in ds.coords])
            return ds.expand_dims(time=[value.astype("datetime64[ns]")])
    raise InputError(f"no time coordinate (looked for {list(_TIME_NAMES)}; coords: {sorted(ds.coords)})", label)


# --- selection ---------------------------------------------------------------------------


def _as_indexer(idx: np.ndarray, size: int):
    """A slice when the integer indices are evenly spaced (cheap lazy indexing), else them."""
    if idx.size == 0:
        return idx
    if idx.size == size and np.array_equal(idx, np.arange(size)):
        return slice(None)
    if idx.size == 1:
        return slice(int(idx[0]), int(idx[0]) + 1)
    steps = np.diff(idx)
    if np.all(steps == steps[0]) and steps[0] > 0:
        return slice(int(idx[0]), int(idx[-1]) + 1, int(steps[0]))
    return idx


def lon_order(lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(order, values): longitudes in -180..180 ascending, or 0..360 when the grid
    straddles the antimeridian (contiguous in 0..360 but not in -180..180)."""
    lon180 = (np.asarray(lon, dtype=np.float64) + 180.0) % 360.0 - 180.0
    lon360 = lon180 % 360.0
    if lon.size < 2:
        return np.arange(lon.size), lon180

    def max_gap(values: np.ndarray) -> float:
        return float(np.max(np.diff(np.sort(values))))

    order180 = np.argsort(lon180, kind="stable")
    step = float(np.min(np.diff(lon180[order180])))
    if max_gap(lon180) > 1.5 * step and max_gap(lon360) <= 1.5 * step:
        order = np.argsort(lon360, kind="stable")
        return order, lon360[order]
    return order180, lon180[order180]


def select(ds: xr.Dataset, sel: Selection, label: str, *, need_all: bool = True) -> xr.Dataset | None:
    """Subset a standardised dataset lazily: variables, member, levels, area, grid, times.

    `need_all`: a requested variable missing from this file is an error (else the file
    contributes the variables it has). Returns None when no time is selected (the caller
    decides whether that is an error)."""
    have = sorted(str(v) for v in ds.data_vars)
    missing = [v for v in sel.variables if v not in ds.data_vars]
    if missing and need_all:
        raise InputError(
            f"no variable {', '.join(repr(v) for v in missing)} (the file has: {', '.join(have) or 'no variables'})",
            label,
        )
    keep = [v for v in sel.variables if v in ds.data_vars]
    ds = ds[keep]
    indexers: dict[str, object] = {}

    if "number" in ds.dims:
        members = np.asarray(ds["number"].values)
        if sel.member is not None:
            hit = np.flatnonzero(members == sel.member)
            if hit.size == 0:
                raise InputError(
                    f"ensemble member {sel.member} (key 'member') not present; members: {members.tolist()}", label
                )
            ds = ds.isel(number=int(hit[0]), drop=True)
        elif ds.sizes["number"] == 1:
            ds = ds.isel(number=0, drop=True)

    if "level" in ds.dims:
        have_levels = np.asarray(ds["level"].values, dtype=np.float64)
        if sel.levels:
            want = np.asarray(sorted(set(sel.levels), reverse=True))
            idx = []
            for lev in want:
                hit = np.flatnonzero(np.isclose(have_levels, lev, atol=1e-6))
                if hit.size == 0:
                    raise InputError(
                        f"pressure level {lev:g} hPa (key 'levels') not present; levels: {[float(x) for x in have_levels]}",
                        label,
                    )
                idx.append(int(hit[0]))
            indexers["level"] = np.asarray(idx)
        else:
            indexers["level"] = np.argsort(-have_levels, kind="stable")  # descending pressure

    lat = np.asarray(ds["latitude"].values, dtype=np.float64)
    lon = np.asarray(ds["longitude"].values, dtype=np.float64)
    lat_ok = np.ones(lat.size, bool)
    lon_ok = np.ones(lon.size, bool)
    if sel.area is not None:
        north, west, south, east = sel.area
        lat_ok &= (lat >= south - 1e-9) & (lat <= north + 1e-9)
        width = (east - west) % 360.0
        if width == 0 and east != west:
            width = 360.0
        lon_ok &= ((lon - west) % 360.0) <= width + 1e-9
        if not lat_ok.any() or not lon_ok.any():
            raise InputError(
                f"area {list(sel.area)} (key 'area', [north, west, south, east]) selects no grid point; "
                f"the grid spans latitude {lat.min():g}..{lat.max():g}, longitude {lon.min():g}..{lon.max():g}",
                label,
            )
    if sel.grid is not None:
        native = float(np.min(np.abs(np.diff(lat)))) if lat.size > 1 else sel.grid
        ratio = sel.grid / native
        if ratio > 1 + 1e-6:
            if abs(ratio - round(ratio)) > 1e-6:
                raise ConfigError(
                    "grid", f"{sel.grid} deg is not a multiple of the native spacing {native:g} deg of {label}"
                )
            lat_ok &= np.isclose(np.round(lat / sel.grid) * sel.grid, lat, atol=1e-6)
            lon_ok &= np.isclose(np.round(lon / sel.grid) * sel.grid, lon, atol=1e-6)
    indexers["latitude"] = np.flatnonzero(lat_ok)
    indexers["longitude"] = np.flatnonzero(lon_ok)

    times = pd.DatetimeIndex(ds["time"].values)
    t_ok = np.ones(times.size, bool)
    if sel.start is not None:
        t_ok &= times.values >= sel.start
    if sel.end is not None:
        t_ok &= times.values < sel.end
    if sel.hours is not None:
        t_ok &= np.isin(times.hour, sel.hours)
    if not t_ok.any():
        return None
    indexers["time"] = np.flatnonzero(t_ok)

    return ds.isel({k: _as_indexer(np.asarray(v), ds.sizes[k]) for k, v in indexers.items()})


def finish(ds: xr.Dataset, chunk_time: int) -> xr.Dataset:
    """Chunk by time, flip latitude to ascending, order longitude, cast to float32,
    put dims in contract order and keep only CF attributes."""
    ds = ds.chunk({d: (chunk_time if d == "time" else -1) for d in ds.dims})
    lat = np.asarray(ds["latitude"].values)
    if lat.size > 1 and lat[0] > lat[-1]:
        ds = ds.isel(latitude=slice(None, None, -1))
    order, values = lon_order(np.asarray(ds["longitude"].values))
    if not np.array_equal(order, np.arange(order.size)):
        ds = ds.isel(longitude=order)
    ds = ds.assign_coords(longitude=("longitude", values))
    out = {}
    for name, var in ds.data_vars.items():
        dims = [d for d in ("number", "time", "level", "latitude", "longitude") if d in var.dims]
        extra = [d for d in var.dims if d not in dims]
        if extra:
            raise InputError(f"variable {name!r} has unexpected dimensions {extra} (dims: {list(var.dims)})", None)
        var = var.transpose(*dims).astype(np.float32)
        var.attrs = {k: var.attrs[k] for k in _KEEP_ATTRS if k in var.attrs}
        var.encoding = {}
        out[name] = var
    ds = xr.Dataset(out)
    ds["latitude"].attrs = {"units": "degrees_north", "standard_name": "latitude", "long_name": "latitude"}
    ds["longitude"].attrs = {"units": "degrees_east", "standard_name": "longitude", "long_name": "longitude"}
    ds["time"].attrs = {"standard_name": "time", "long_name": "valid time"}
    if "level" in ds.coords:
        ds["level"] = ds["level"].astype(np.float64)
        ds["level"].attrs = {
            "units": "hPa",
            "long_name": "pressure",
            "standard_name": "air_pressure",
            "positive": "down",
        }
    for c in ds.coords:
        ds[c].encoding = {}
    return ds
