"""Radiosondes on an ERA5 grid: the soundings inside the grid, matched to its times.

`collocate_stores(spec, igra, era5, out)` (`scorebridge igra-collocate`) keeps the IGRA
levels that the super-resolution stages can use as point observations:

1. the sounding's station lies inside the ERA5 grid's box (latitude and longitude
   between the first and last grid coordinates; longitudes compared in the grid's own
   convention, -180..180 or 0..360);
2. its launch time lies within `collocate.tolerance_hours` of an ERA5 time; it is
   assigned the nearest one (``time``, ``time_index``). Where several soundings of one
   station fall to the same ERA5 time, the nearest in time is kept (the earlier on a tie);
3. the level's pressure lies within the ERA5 level range (levels without a pressure,
   and levels where t, u, v and z are all missing, are dropped); the surface record of a
   sounding (IGRA ``LVLTYP2 = 1``) is kept whatever its pressure and flagged ``surface``:
   its t, u, v observe the single-level fields t2m, u10, v10 when a prior models them.

Output (collocated-obs contract), dim ``obs`` sorted by (time_index, station,
decreasing pressure): ``station``, ``time`` (ERA5 time), ``time_index``, ``latitude``,
``longitude`` (grid convention), ``pressure`` (Pa), ``t`` (K), ``u``, ``v`` (m/s), ``z``
(geopotential m² s⁻² = g0 · geopotential height), ``launch_time``, ``surface`` (bool);
NaN where missing.

A store of IGRA derived parameters (`derived`) collocates the same way: its reported
pressure, temperature and u, v, and as height the reported geopotential height, else
the calculated one (``calc_gph``: the product's hydrostatic estimate).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from ...errors import ConfigError, InputError
from ...io import atomic_path, open_store, strings_as_object
from ...provenance import package_versions
from .options import CollocateOptions, collocate_options

__all__ = ["G0", "era5_grid", "collocate", "collocate_stores", "open_obs"]

log = logging.getLogger(__name__)

G0 = 9.80665  # m s-2: geopotential = G0 * geopotential height (WMO definition)


def open_obs(path):
    """The collocated obs (small: loaded into memory), strings as object arrays."""
    return strings_as_object(open_store(Path(path), "collocated obs").load())


def era5_grid(ds, path="ERA5") -> dict:
    """The grid an ERA5-contract dataset lives on: times, levels (hPa), lat/lon ranges."""
    missing = [c for c in ("time", "level", "latitude", "longitude") if c not in ds.coords]
    if missing:
        raise InputError(
            f"the ERA5 dataset lacks coordinate(s) {missing} (data contract: time, level, latitude, longitude)", path
        )
    times = ds["time"].to_numpy().astype("datetime64[ns]")
    if len(times) == 0:
        raise InputError("the ERA5 dataset has no time steps", path)
    if np.any(np.diff(times) <= np.timedelta64(0, "ns")):
        raise InputError("the ERA5 time axis is not strictly increasing", path)
    levels = np.atleast_1d(ds["level"].to_numpy()).astype(np.float64)
    if levels.size == 0:
        raise InputError("the ERA5 dataset has no pressure levels", path)
    lat = ds["latitude"].to_numpy().astype(np.float64)
    lon = ds["longitude"].to_numpy().astype(np.float64)
    return {
        "times": times,
        "levels_hpa": levels,
        "lat": (float(lat.min()), float(lat.max())),
        "lon": (float(lon.min()), float(lon.max())),
        "lon360": bool(lon.max() > 180.0),
    }


def _nearest_time(times: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index of the nearest of the sorted `times` to each `t`, and |t - times[i]| in hours."""
    ti = times.astype(np.int64)
    x = t.astype("datetime64[ns]").astype(np.int64)
    j = np.clip(np.searchsorted(ti, x), 1, len(ti) - 1) if len(ti) > 1 else np.zeros(len(x), np.int64)
    if len(ti) > 1:
        left_closer = np.abs(x - ti[j - 1]) <= np.abs(ti[j] - x)
        j = np.where(left_closer, j - 1, j)
    dt_h = np.abs(x - ti[j]) / 3.6e12
    return j.astype(np.int64), dt_h


def collocate(obs, grid: dict, tolerance_hours: float):
    """Collocated obs (xarray Dataset) of an IGRA obs table on an ERA5 grid (see module doc).

    Raises InputError when nothing is left, saying which step emptied the table.
    """
    import xarray as xr

    if tolerance_hours < 0:
        raise ConfigError("collocate.tolerance_hours", f"must be >= 0, got {tolerance_hours}")
    cols = ["station", "time", "latitude", "longitude", "pressure", "temperature", "u", "v", "gph"]
    absent = [c for c in cols if c not in obs.variables]
    if absent:
        raise InputError(f"the IGRA table lacks variable(s) {absent}")
    df = pd.DataFrame({c: obs[c].to_numpy() for c in cols})
    df["station"] = df["station"].astype(str)
    if "calc_gph" in obs.variables:  # derived parameters: the reported height, else the calculated one
        df["gph"] = df["gph"].fillna(pd.Series(obs["calc_gph"].to_numpy(), index=df.index))
    # IGRA LVLTYP2 = 1: the surface record (observes the single-level fields t2m, u10, v10)
    df["surface"] = (np.asarray(obs["lvltyp2"].to_numpy()) == 1) if "lvltyp2" in obs.variables else False
    n_read = len(df)

    # 1. inside the grid box, in the grid's longitude convention
    lon = df["longitude"].to_numpy(np.float64)
    lon = np.mod(lon, 360.0) if grid["lon360"] else (lon + 180.0) % 360.0 - 180.0
    df["longitude"] = lon
    lat = df["latitude"].to_numpy(np.float64)
    inside = (lat >= grid["lat"][0]) & (lat <= grid["lat"][1]) & (lon >= grid["lon"][0]) & (lon <= grid["lon"][1])
    df = df[inside]
    if df.empty:
        raise InputError(
            f"no sounding lies inside the ERA5 grid (latitude {grid['lat'][0]}..{grid['lat'][1]}, "
            f"longitude {grid['lon'][0]}..{grid['lon'][1]}); {n_read} levels were read"
        )

    # 2. nearest ERA5 time within the tolerance; one sounding per station and ERA5 time
    snd = df[["station", "time"]].drop_duplicates().reset_index(drop=True)
    idx, dt_h = _nearest_time(grid["times"], snd["time"].to_numpy())
    snd["time_index"], snd["dt"] = idx, dt_h
    snd = snd[snd["dt"] <= tolerance_hours + 1e-9]
    if snd.empty:
        t = grid["times"]
        raise InputError(
            f"no sounding inside the grid was launched within {tolerance_hours} h of an ERA5 time "
            f"({np.datetime_as_string(t[0], 'm')}..{np.datetime_as_string(t[-1], 'm')}, {len(t)} steps); "
            f"launch times span {df['time'].min()}..{df['time'].max()}"
        )
    snd = snd.sort_values(["station", "time_index", "dt", "time"]).drop_duplicates(
        ["station", "time_index"], keep="first"
    )
    df = df.merge(snd[["station", "time", "time_index"]], on=["station", "time"], how="inner")

    # 3. levels within the ERA5 level range, with at least one value
    lo, hi = grid["levels_hpa"].min() * 100.0, grid["levels_hpa"].max() * 100.0
    p = df["pressure"].to_numpy(np.float64)
    has_value = df[["temperature", "u", "v", "gph"]].notna().any(axis=1).to_numpy()
    df = df[(((p >= lo - 1e-6) & (p <= hi + 1e-6)) | df["surface"].to_numpy(bool)) & has_value]
    if df.empty:
        raise InputError(
            f"no level of the {len(snd)} matched soundings lies within the ERA5 levels "
            f"{grid['levels_hpa'].min():g}..{grid['levels_hpa'].max():g} hPa with a value of t, u, v or z"
        )
    df = df.sort_values(["time_index", "station", "pressure"], ascending=[True, True, False], kind="stable")

    f32 = np.float32
    out = xr.Dataset(
        {
            "station": ("obs", df["station"].to_numpy().astype(object)),
            "time": ("obs", grid["times"][df["time_index"].to_numpy()]),
            "time_index": ("obs", df["time_index"].to_numpy(np.int64)),
            "latitude": ("obs", df["latitude"].to_numpy(np.float64), {"units": "degrees_north"}),
            "longitude": ("obs", df["longitude"].to_numpy(np.float64), {"units": "degrees_east"}),
            "pressure": ("obs", df["pressure"].to_numpy(f32), {"units": "Pa"}),
            "t": ("obs", df["temperature"].to_numpy(f32), {"units": "K", "long_name": "temperature"}),
            "u": ("obs", df["u"].to_numpy(f32), {"units": "m s-1", "long_name": "eastward wind"}),
            "v": ("obs", df["v"].to_numpy(f32), {"units": "m s-1", "long_name": "northward wind"}),
            "z": (
                "obs",
                (df["gph"].to_numpy(np.float64) * G0).astype(f32),
                {"units": "m2 s-2", "long_name": "geopotential"},
            ),
            "launch_time": ("obs", df["time"].to_numpy().astype("datetime64[ns]")),
            "surface": (
                "obs",
                df["surface"].to_numpy(bool),
                {"long_name": "surface record (IGRA LVLTYP2 = 1); t, u, v observe t2m, u10, v10"},
            ),
        }
    )
    out.attrs["summary"] = json.dumps(
        {
            "obs": int(len(df)),
            "soundings": int(len(df[["station", "time_index"]].drop_duplicates())),
            "stations": int(df["station"].nunique()),
            "era5_times_with_obs": int(df["time_index"].nunique()),
            "levels_read": int(n_read),
        }
    )
    return out


def _json_attr(ds, name: str):
    try:
        return json.loads(ds.attrs.get(name) or "{}")
    except (TypeError, ValueError):
        return str(ds.attrs.get(name))


def collocate_stores(
    spec: CollocateOptions | Mapping, igra: str | os.PathLike, era5: str | os.PathLike, out: str | os.PathLike
) -> dict:
    """Collocate the IGRA zarr `igra` with the grid of the ERA5 zarr `era5` as the
    `collocate` block `spec` says (options, or a dict the schema fills) and write the
    collocated obs to `out` (atomically), with provenance; return the summary."""
    opts = collocate_options(spec)
    tol = float(opts.tolerance_hours)
    igra_ds = open_store(Path(igra), "IGRA")
    era5_ds = open_store(Path(era5), "ERA5")
    grid = era5_grid(era5_ds, era5)
    out_ds = collocate(igra_ds, grid, tol)
    out_ds.attrs["provenance"] = json.dumps(
        {
            "igra": str(igra),
            "era5": str(era5),
            "tolerance_hours": tol,
            "era5_grid": {
                "latitude": grid["lat"],
                "longitude": grid["lon"],
                "levels_hpa": grid["levels_hpa"].tolist(),
                "times": [str(grid["times"][0]), str(grid["times"][-1]), len(grid["times"])],
            },
            "igra_provenance": _json_attr(igra_ds, "provenance"),
            "era5_provenance": _json_attr(era5_ds, "provenance"),
            "package_versions": package_versions(),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
    )
    with atomic_path(out) as tmp:
        enc = {
            "time": {"units": "seconds since 1900-01-01", "dtype": "int64"},
            "launch_time": {"units": "seconds since 1900-01-01", "dtype": "int64"},
        }
        out_ds.to_zarr(tmp, mode="w", encoding=enc, consolidated=False)
    log.info("collocated %s on %s: %s -> %s", igra, era5, out_ds.attrs["summary"], out)
    return json.loads(out_ds.attrs["summary"])
