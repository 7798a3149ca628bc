"""Synthetic IGRA v2 station files: soundings sampled from an ERA5 zarr.

Stations sit at seeded random positions inside the ERA5 grid; each sounding samples the
fields bilinearly at the station, adds levels between the ERA5 levels (linear in
log-pressure), noise and missing values, and is written in exact IGRA v2 text, so that
`scorebridge igra-ingest` reads it with the real parser.
"""

from __future__ import annotations

import dataclasses
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from ...errors import ConfigError, InputError
from ...io import atomic_path, open_store
from ...progress import progress
from ...provenance import sha256_file
from .filters import lon180
from .format import (
    MISSING,
    REMOVED,
    STATION_LIST_NAME,
    T0,
    format_data_record,
    format_header,
    format_station_list,
    wind_speed_direction,
)
from .options import IgraOptions, SoundingsOptions, soundings_options

__all__ = ["SyntheticSoundings", "synthesize_soundings", "write_zip", "fetch_synthetic"]

STANDARD_LEVELS_HPA = (1000, 925, 850, 700, 500, 400, 300, 250, 200, 150, 100, 70, 50, 30, 20, 10, 7, 5, 3, 2, 1)
G = 9.80665  # m s-2, standard gravity (geopotential = G * geopotential height)
RD = 287.05  # J kg-1 K-1, gas constant of dry air


@dataclass
class SyntheticSoundings:
    """Synthetic soundings: the IGRA text per station, the station list, and the truth.

    `truth` holds, for every written data record in file order (stations in
    `station_rows` order, soundings by time, levels top-down in pressure), the sampled
    values before they were rounded to the format's precision: `pressure` (Pa), `gph`
    (m), `temperature` (K), `rh` (%), `dpd` (K), `u`, `v`, `wspd` (m/s), `wdir` (deg),
    NaN where the record says missing (-9999) or removed (-8888).
    """

    texts: dict[str, str]
    station_rows: list[dict]
    truth: dict[str, np.ndarray]


def _bilinear(ds, name: str, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """Field `name` at points (lat, lon) by bilinear weights on the grid cell around each.

    f = (1-a)(1-b) f00 + (1-a) b f01 + a (1-b) f10 + a b f11, with a, b the fractional
    positions along latitude and longitude. Returns (time, [level,] point).
    """
    import xarray as xr

    glat = ds["latitude"].to_numpy()
    glon = ds["longitude"].to_numpy()

    def frac(grid, x):
        i = np.clip(np.searchsorted(grid, x, side="right") - 1, 0, len(grid) - 2)
        return i, (x - grid[i]) / (grid[i + 1] - grid[i])

    i, a = frac(glat, lat)
    j, b = frac(glon, lon)
    da = ds[name]
    pts = "point"
    out = 0.0
    for di, wi in ((0, 1 - a), (1, a)):
        for dj, wj in ((0, 1 - b), (1, b)):
            corner = da.isel(latitude=xr.DataArray(i + di, dims=pts), longitude=xr.DataArray(j + dj, dims=pts))
            out = out + corner.to_numpy().astype(np.float64) * (wi * wj)
    return out


def _standard_height(p_hpa):
    """ICAO standard-atmosphere height (m) of a pressure (hPa), troposphere formula."""
    return 44330.8 * (1.0 - (np.asarray(p_hpa) / 1013.25) ** 0.190263)


def _saturation_hpa(t_k):
    """Saturation vapour pressure over water, hPa (Bolton 1980)."""
    tc = t_k - T0
    return 6.112 * np.exp(17.67 * tc / (tc + 243.5))


def _dewpoint_k(t_k, rh):
    """Dew point from temperature and relative humidity (inverse Magnus/Bolton)."""
    tc = t_k - T0
    gamma = np.log(np.clip(rh, 0.1, 100.0) / 100.0) + 17.67 * tc / (tc + 243.5)
    return 243.5 * gamma / (17.67 - gamma) + T0


def synthesize_soundings(ds, syn: SoundingsOptions | Mapping) -> SyntheticSoundings:
    """Sample soundings from an ERA5-contract dataset at random station positions, as the
    `synthetic` block `syn` (options, or a dict the schema fills) says.

    Per station and ERA5 time (optionally only some hours of day): the ERA5 levels
    plus `extra_levels` levels between each pair, interpolated linearly in log-pressure;
    temperature (+ Gaussian noise `noise_k`), wind (u, v + noise `noise_wind_ms`, written
    as speed / meteorological direction), geopotential height (z / g, or the hypsometric
    equation dz = (R_d / g) T dln p from a standard-atmosphere base where z is absent),
    relative humidity from q where present (else a plausible profile) and dew-point
    depression from it; one height-only wind level above the top; a fraction
    `missing_fraction` of values written as missing (-9999) or QC-removed (-8888).
    """
    syn = soundings_options(syn)
    rng = np.random.default_rng(syn.seed)
    if "number" in ds.dims:
        ds = ds.isel(number=0)
    if "level" not in ds.coords or ds["level"].size == 0:
        raise InputError("the ERA5 dataset has no pressure levels (coordinate 'level') to sample soundings from")
    present = [v for v in ("t", "u", "v", "z", "q") if v in ds.data_vars and "level" in ds[v].dims]
    if "t" not in present:
        raise InputError(
            f"the ERA5 dataset has no temperature 't' on pressure levels (variables: {sorted(ds.data_vars)})"
        )
    hours = syn.hours
    times = pd.DatetimeIndex(ds["time"].to_numpy())
    tsel = np.ones(len(times), bool) if hours is None else np.isin(times.hour, list(hours))
    if not tsel.any():
        raise ConfigError("synthetic.hours", f"no ERA5 time falls on hours {hours}")
    ds = ds.isel(time=np.flatnonzero(tsel))
    times = times[tsel]
    ds = ds.sortby("level", ascending=False)  # top-down in pressure: surface first
    levels = ds["level"].to_numpy().astype(np.float64)

    glat, glon = ds["latitude"].to_numpy(), ds["longitude"].to_numpy()
    n = int(syn.n_stations)
    # positions rounded to the header precision (1e-4 deg) so that header and sample agree
    slat = np.round(rng.uniform(glat.min(), glat.max(), n), 4)
    slon = np.round(rng.uniform(glon.min(), glon.max(), n), 4)
    slat = np.clip(slat, glat.min(), glat.max())
    slon = np.clip(slon, glon.min(), glon.max())
    sampled = {v: _bilinear(ds[[v]], v, slat, slon) for v in present}  # (time, level, station)

    # pressures: ERA5 levels plus `extra_levels` per gap, linear in log p; whole Pa
    k = int(syn.extra_levels)
    lp = np.log(levels * 100.0)
    if len(levels) > 1 and k > 0:
        frac = np.arange(1, k + 1) / (k + 1)
        mids = (lp[:-1, None] + (lp[1:] - lp[:-1])[:, None] * frac[None, :]).ravel()
        lp_all = np.sort(np.concatenate([lp, mids]))[::-1]
    else:
        lp_all = lp
    p_pa = np.round(np.exp(lp_all))
    lp_all = np.log(p_pa)

    # linear interpolation in log p as a matrix: W[j, k] = weight of ERA5 level k at level j
    eye = np.eye(len(lp))
    w_interp = np.stack([np.interp(lp_all[::-1], lp[::-1], col[::-1])[::-1] for col in eye], axis=1)

    def to_levels(x):  # (time, nlev, station) -> (time, station, nlev_all)
        return np.moveaxis(x, 1, -1) @ w_interp.T

    t = to_levels(sampled["t"])
    shape = t.shape  # (time, station, level)
    if "z" in sampled:
        gph = to_levels(sampled["z"]) / G
    else:  # hypsometric integration of the sampled temperature from a standard-atmosphere base
        gph = np.empty(shape)
        gph[..., 0] = _standard_height(p_pa[0] / 100.0)
        for i in range(1, shape[-1]):
            tm = 0.5 * (t[..., i - 1] + t[..., i])
            gph[..., i] = gph[..., i - 1] + RD / G * tm * np.log(p_pa[i - 1] / p_pa[i])
    u = to_levels(sampled["u"]) if "u" in sampled else np.full(shape, np.nan)
    v = to_levels(sampled["v"]) if "v" in sampled else np.full(shape, np.nan)
    t = t + rng.normal(0.0, syn.noise_k, shape)
    u = u + rng.normal(0.0, syn.noise_wind_ms, shape)
    v = v + rng.normal(0.0, syn.noise_wind_ms, shape)
    if "q" in sampled:
        q = np.clip(to_levels(sampled["q"]), 0.0, None)
        e = q * (p_pa / 100.0) / (0.622 + 0.378 * q)
        rh = 100.0 * e / _saturation_hpa(t)
    else:
        rh = 20.0 + 70.0 * (p_pa / 1e5) ** 3 + rng.normal(0.0, 5.0, shape)
    rh = np.clip(rh, 1.0, 100.0)
    dpd = np.maximum(t - _dewpoint_k(t, rh), 0.0)

    # the height-only wind level above the top (LVLTYP1 = 3, no pressure)
    top_gph = gph[..., -1] + 1000.0
    top_u = u[..., -1] + rng.normal(0.0, syn.noise_wind_ms, shape[:2])
    top_v = v[..., -1] + rng.normal(0.0, syn.noise_wind_ms, shape[:2])

    nlev = shape[-1] + 1
    frac_missing = float(syn.missing_fraction)

    def miss(shape_):
        return rng.random(shape_) < frac_missing

    m_t, m_rh, m_w, m_z, m_e = (miss(shape) for _ in range(5))
    removed_t = m_t & (rng.random(shape) < 0.5)
    m_wtop = miss(shape[:2])
    flag_a = rng.random(shape) < 0.1
    std = np.isin(np.round(p_pa / 100.0), STANDARD_LEVELS_HPA) & (p_pa % 100 == 0)

    ids = [f"ZZXUA{i + 1:06d}" for i in range(n)]
    truth = {key: [] for key in ("pressure", "gph", "temperature", "rh", "dpd", "u", "v", "wspd", "wdir")}
    texts = {}
    rows = []
    for s, sid in enumerate(ids):
        lines = []
        for it, when in enumerate(times):
            rel_min = (when.hour * 60 - 45 + int(rng.integers(-10, 11))) % 1440
            lines.append(
                format_header(
                    sid,
                    when.year,
                    when.month,
                    when.day,
                    when.hour,
                    (rel_min // 60) * 100 + rel_min % 60,
                    nlev,
                    float(slat[s]),
                    float(lon180(slon[s])),
                    "ncdc-gts",
                    "ncdc-gts",
                )
            )
            z0 = gph[it, s, 0]
            for i in range(nlev):
                top = i == shape[-1]
                tt = np.nan if top else t[it, s, i]
                zz = top_gph[it, s] if top else gph[it, s, i]
                uu, vv = (top_u[it, s], top_v[it, s]) if top else (u[it, s, i], v[it, s, i])
                rr = np.nan if top else rh[it, s, i]
                dd = np.nan if top else dpd[it, s, i]
                if not top:
                    if m_t[it, s, i]:
                        tt, dd = np.nan, np.nan
                    if m_rh[it, s, i]:
                        rr, dd = np.nan, np.nan
                    if m_z[it, s, i]:
                        zz = np.nan
                if (m_wtop[it, s] if top else m_w[it, s, i]) or not np.isfinite(uu + vv):
                    uu, vv = np.nan, np.nan
                spd, dirn = wind_speed_direction(np.float64(uu), np.float64(vv))
                wspd_i = MISSING if np.isnan(spd) else int(round(float(spd) * 10))
                wdir_i = MISSING if np.isnan(dirn) else int(round(float(dirn)))
                if wdir_i == 0 and wspd_i > 0:
                    wdir_i = 360
                if wspd_i == 0:
                    wdir_i = 0
                temp_i = MISSING if np.isnan(tt) else int(round((tt - T0) * 10))
                if not top and removed_t[it, s, i]:
                    temp_i = REMOVED
                zz_i = MISSING if np.isnan(zz) else int(round(zz))
                elapsed = (zz - z0) / 5.0  # ~5 m/s ascent
                etime_i = (
                    MISSING
                    if (np.isnan(elapsed) or (not top and m_e[it, s, i]))
                    else int(elapsed // 60) * 100 + int(elapsed % 60)
                )
                lines.append(
                    format_data_record(
                        3 if top else (1 if std[i] else 2),
                        0,
                        etime_i,
                        MISSING if top else int(p_pa[i]),
                        " " if (top or std[i]) else "B",
                        zz_i,
                        " " if zz_i < 0 else ("A" if not top and flag_a[it, s, i] else "B"),
                        temp_i,
                        " " if temp_i < 0 else ("A" if flag_a[it, s, i] else "B"),
                        MISSING if np.isnan(rr) else int(round(rr * 10)),
                        MISSING if np.isnan(dd) else int(round(dd * 10)),
                        wdir_i,
                        wspd_i,
                    )
                )
                truth["pressure"].append(np.nan if top else p_pa[i])
                truth["gph"].append(zz)
                truth["temperature"].append(tt)
                truth["rh"].append(rr)
                truth["dpd"].append(dd)
                truth["u"].append(uu)
                truth["v"].append(vv)
                truth["wspd"].append(spd)
                truth["wdir"].append(dirn)
        texts[sid] = "\n".join(lines) + "\n"
        rows.append(
            {
                "id": sid,
                "latitude": float(slat[s]),
                "longitude": float(lon180(slon[s])),
                "elevation": -999.9,
                "state": "",
                "name": f"SYNTHETIC STATION {s + 1:03d}",
                "first_year": int(times.year.min()),
                "last_year": int(times.year.max()),
                "nobs": len(times),
            }
        )
    return SyntheticSoundings(texts, rows, {k: np.asarray(v, np.float64) for k, v in truth.items()})


def write_zip(dest: Path, member: str, text: str) -> None:
    """A deterministic zip archive (fixed time stamp) holding `text` as `member`."""
    info = zipfile.ZipInfo(member, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    with atomic_path(dest) as tmp, zipfile.ZipFile(tmp, "w") as zf:
        zf.writestr(info, text.encode("ascii"))


def fetch_synthetic(opts: IgraOptions, inputs: list[str], out: Path) -> dict:
    """Write synthetic station files sampled from the ERA5 zarr given as the input."""
    if len(inputs) != 1:
        raise ConfigError("synthetic.era5", f"source 'synthetic' needs exactly one ERA5 zarr as input, got {inputs}")
    era5 = Path(inputs[0])
    ds = open_store(era5, "ERA5")
    syn = synthesize_soundings(ds, opts.synthetic)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for sid, text in progress(syn.texts.items(), desc="synthetic IGRA", unit="station"):
        dest = out / f"{sid}-data.txt.zip"
        write_zip(dest, f"{sid}-data.txt", text)
        files[dest.name] = {"sha256": sha256_file(dest)}
    (out / STATION_LIST_NAME).write_text(format_station_list(syn.station_rows))
    return {"source": "synthetic", "era5": str(era5), "synthetic": dataclasses.asdict(opts.synthetic), "files": files}
