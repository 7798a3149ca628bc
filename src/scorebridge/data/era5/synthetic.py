"""Synthetic ERA5: a seeded 2-D turbulence simulation dressed as pressure-level weather.

The dynamics are two independent copies of the forced, dissipative barotropic vorticity
equation on a doubly periodic square of side 2*pi (pseudo-spectral, 2/3 de-aliasing,
RK4 with an integrating factor for the linear terms):

    d(zeta)/dt + J(psi, zeta) + U0 d(zeta)/dx = F - mu*zeta - nu*(-lap)^4 zeta,   zeta = lap(psi)

with a white-in-time random forcing F on a ring of wavenumbers near k_f, linear drag
mu (absorbs the inverse energy cascade) and hyperdiffusion nu (absorbs enstrophy at the
grid scale). Forward enstrophy cascade above k_f gives the k^-3 kinetic-energy spectrum
of 2-D turbulence (Kraichnan 1967), the slope ERA5 shows at synoptic scales (Nastrom and
Gage 1985). The state starts from random phases with that spectrum and is spun up, so
short runs are already statistically steady.

The two streamfunctions are read as the barotropic (psi0) and first baroclinic (psi1)
vertical modes. On pressure level p, with s = ln(p_ref/p) / ln(p_ref/p_top):

    Phi'(p) = f0 * (A(s) psi0 + B(s) psi1)               geostrophic geopotential
    u = Ubar(s) - (1/f0) dPhi'/dy,  v = (1/f0) dPhi'/dx   geostrophic wind
    T = Tbar(p) - (1/R) dPhi/dln p                        hydrostatic balance

so thermal wind holds by construction; q is relative humidity (a smooth function of the
relative vorticity) times saturation specific humidity (Bolton 1980). Single-level
fields are taken near 1000 hPa. Everything is seeded and deterministic. The streamfunctions
come from :mod:`scorebridge.data.era5.dynamics`.
"""

from __future__ import annotations

import itertools
from typing import Iterator

import numpy as np
import scipy.fft as _fft
import xarray as xr

from ...errors import ConfigError
from .dynamics import _wavenumbers, simulate_turbulence, stochastic_streamfunction
from .options import SyntheticOptions

__all__ = [
    "PRESSURE_VARIABLES",
    "SINGLE_VARIABLES",
    "SyntheticOptions",
    "synthetic_era5",
    "synthetic_blocks",
]

G = 9.80665  # m s-2
R_DRY = 287.05  # J kg-1 K-1
OMEGA = 7.292e-5  # s-1
EARTH_RADIUS = 6.371e6  # m
SCALE_TIMES = 64  # dynamics "stochastic": the first times that set the wind and humidity scales
_NEAR = {"t2m": "t", "u10": "u", "v10": "v", "msl": "z"}  # single-level field -> its 1000 hPa source

# ERA5 short name -> (CF standard_name, long_name, units) of the fields this source makes.
PRESSURE_VARIABLES: dict[str, tuple[str, str, str]] = {
    "t": ("air_temperature", "Temperature", "K"),
    "u": ("eastward_wind", "U component of wind", "m s**-1"),
    "v": ("northward_wind", "V component of wind", "m s**-1"),
    "z": ("geopotential", "Geopotential", "m**2 s**-2"),
    "q": ("specific_humidity", "Specific humidity", "kg kg**-1"),
    "r": ("relative_humidity", "Relative humidity", "%"),
    "vo": ("atmosphere_relative_vorticity", "Vorticity (relative)", "s**-1"),
}
SINGLE_VARIABLES: dict[str, tuple[str, str, str]] = {
    "t2m": ("air_temperature", "2 metre temperature", "K"),
    "u10": ("eastward_wind", "10 metre U wind component", "m s**-1"),
    "v10": ("northward_wind", "10 metre V wind component", "m s**-1"),
    "msl": ("air_pressure_at_mean_sea_level", "Mean sea level pressure", "Pa"),
}


# --- vertical structure and thermodynamics -------------------------------------------------


def _std_temperature(p_hpa: np.ndarray) -> np.ndarray:
    """Mid-latitude mean temperature (K): lapse rate 6.5 K/km in the troposphere in log-p
    (T = T0 (p/p0)^(R Gamma / g)), isothermal 216.65 K above the tropopause."""
    t = 288.15 * (p_hpa / 1013.25) ** (R_DRY * 0.0065 / G)
    return np.maximum(t, 216.65) - 8.0  # a winter-ish mid-latitude offset


def _std_geopotential(p_hpa: np.ndarray) -> np.ndarray:
    """Geopotential (m2 s-2) of the mean state from the hypsometric equation."""
    grid = np.linspace(np.log(1013.25), np.log(1.0), 4000)  # ln p from surface upward
    temp = _std_temperature(np.exp(grid))
    # dPhi = -R T dlnp, Phi = 0 at 1013.25 hPa
    phi = np.concatenate([[0.0], np.cumsum(-R_DRY * 0.5 * (temp[1:] + temp[:-1]) * np.diff(grid))])
    return np.interp(-np.log(p_hpa), -grid, phi)


def _modes(p_hpa: np.ndarray) -> tuple[np.ndarray, ...]:
    """Vertical structure A, B (barotropic, baroclinic), their d/dlnp, and the mean wind."""
    s = np.log(1000.0 / p_hpa) / np.log(1000.0 / 100.0)  # 0 at 1000 hPa, 1 at 100 hPa
    ds_dlnp = -1.0 / np.log(10.0)
    a = 0.6 + 0.8 * s  # barotropic amplitude grows with height (jet level strongest)
    b = np.cos(np.pi * s)  # first baroclinic mode, changes sign mid-troposphere
    da = np.full_like(s, 0.8 * ds_dlnp)
    db = -np.pi * np.sin(np.pi * s) * ds_dlnp
    ubar = 4.0 + 22.0 * np.sin(np.pi / 2.0 * np.clip(s / 0.8, 0.0, 1.0))  # westerlies, 26 m/s aloft
    dubar = 22.0 * np.cos(np.pi / 2.0 * np.clip(s / 0.8, 0.0, 1.0)) * np.pi / 2.0 / 0.8 * (s < 0.8) * ds_dlnp
    return a, b, da, db, ubar, dubar


def _saturation_q(t: np.ndarray, p_pa: np.ndarray | float) -> np.ndarray:
    """Saturation specific humidity (kg/kg), Bolton (1980) vapour pressure over water."""
    es = 611.2 * np.exp(17.67 * (t - 273.15) / (t - 29.65))
    es = np.minimum(es, 0.5 * p_pa)
    return 0.622 * es / (p_pa - 0.378 * es)


def _check(variables: list[str], levels: list[float]) -> tuple[list[str], list[str], np.ndarray]:
    """(pressure-level variables, single-level variables, levels in hPa descending)."""
    unknown = [v for v in variables if v not in PRESSURE_VARIABLES and v not in SINGLE_VARIABLES]
    if unknown:
        raise ConfigError(
            "variables",
            f"the synthetic source cannot make {unknown}; it makes {sorted(PRESSURE_VARIABLES)} "
            f"(pressure levels) and {sorted(SINGLE_VARIABLES)} (single level)",
        )
    if not variables:
        raise ConfigError("variables", "no variables requested")
    plev_vars = [v for v in variables if v in PRESSURE_VARIABLES]
    levels_hpa = np.asarray(sorted({float(x) for x in levels}, reverse=True), dtype=np.float64)
    if plev_vars and (levels_hpa.size == 0 or np.any(levels_hpa <= 0) or np.any(levels_hpa > 1100)):
        raise ConfigError("levels", f"need pressure levels in (0, 1100] hPa for {plev_vars}; got {levels}")
    return plev_vars, [v for v in variables if v in SINGLE_VARIABLES], levels_hpa


def synthetic_era5(
    variables: list[str],
    levels: list[float],
    grid: SyntheticOptions,
) -> xr.Dataset:
    """ERA5-like fields on `grid`, in the new CDS netCDF layout (valid_time,
    pressure_level, latitude descending, longitude as configured), float32, CF attrs.

    `grid.eddy_wind` (m/s) is the RMS eddy wind of the barotropic mode;
    `grid.turnover_hours` the physical time of one non-dimensional time unit (about one
    eddy turnover). `grid.dynamics` "turbulence" simulates the vorticity equation (the
    module docstring); "stochastic" draws the streamfunctions from the linear stochastic
    model of :func:`stochastic_streamfunction` (see :func:`synthetic_blocks`)."""
    plev_vars, single, levels_hpa = _check(variables, levels)
    if grid.dynamics == "stochastic":
        return xr.concat(list(synthetic_blocks(variables, levels, grid, grid.ntime)), dim="valid_time")
    dt_out = grid.step_hours / grid.turnover_hours  # non-dimensional time per output step
    psi_nd = simulate_turbulence(grid.nlat, grid.nlon, grid.ntime, dt_out, seed=grid.seed)
    return _to_dataset(psi_nd, plev_vars, single, levels_hpa, grid, 0)[0]


def synthetic_blocks(
    variables: list[str], levels: list[float], grid: SyntheticOptions, block: int
) -> Iterator[xr.Dataset]:
    """The dataset of `synthetic_era5` with `grid.dynamics` "stochastic", as consecutive
    time blocks of at most `block` steps (the first: `SCALE_TIMES`; memory: a few times one block's fields in
    float64), so that thousands of times on large grids stream to a store. The RMS eddy
    wind and the vorticity scale of the humidity are set by the first `SCALE_TIMES` times, so
    the blocks do not change the result."""
    if grid.dynamics != "stochastic":
        raise ConfigError(
            "synthetic.dynamics",
            "time blocks need dynamics 'stochastic' (the turbulence run is scaled by all its times at once)",
        )
    plev_vars, single, levels_hpa = _check(variables, levels)
    dt_out = grid.step_hours / grid.turnover_hours
    stream = stochastic_streamfunction(grid.nlat, grid.nlon, grid.ntime, dt_out, seed=grid.seed, block=block)
    head: list[np.ndarray] = []
    while sum(len(p) for p in head) < min(SCALE_TIMES, grid.ntime):
        head.append(next(stream))
    first = np.concatenate(head)
    ds, scales = _to_dataset(first[:SCALE_TIMES], plev_vars, single, levels_hpa, grid, 0)
    yield ds  # the first SCALE_TIMES times set the scales (a longer first block)
    start = min(SCALE_TIMES, len(first))
    for psi_nd in itertools.chain([first[SCALE_TIMES:]] if len(first) > SCALE_TIMES else [], stream):
        yield _to_dataset(psi_nd, plev_vars, single, levels_hpa, grid, start, scales)[0]
        start += psi_nd.shape[0]


def _to_dataset(
    psi_nd: np.ndarray,
    plev_vars: list[str],
    single: list[str],
    levels_hpa: np.ndarray,
    grid: SyntheticOptions,
    start: int,
    scales: dict | None = None,
) -> tuple[xr.Dataset, dict]:
    """The CDS-layout dataset of non-dimensional streamfunctions `psi_nd` (n, 2, ny, nx),
    the output times `start`..`start + n`; and the `scales` it used (the RMS eddy wind per
    mode and the vorticity std of the humidity, computed from `psi_nd` when None)."""
    lat = grid.latitude  # descending
    lon = grid.longitude
    times = grid.times[start : start + psi_nd.shape[0]]
    ntime = len(times)
    lat_mid = float(np.deg2rad(grid.lat0 + grid.resolution * (grid.nlat - 1) / 2.0))
    f0 = 2.0 * OMEGA * np.sin(lat_mid) if abs(np.sin(lat_mid)) > 0.17 else 2.0 * OMEGA * 0.5
    dy = EARTH_RADIUS * np.deg2rad(grid.resolution)  # m per grid step north
    dx = dy * np.cos(lat_mid)
    fixed = scales is not None
    scales = dict(scales or {})

    # to physical units: psi (m2/s) with RMS eddy wind `eddy_wind` (barotropic), 0.5x (baroclinic)
    ky, kx = _wavenumbers(grid.nlat, grid.nlon)
    psi_h = _fft.rfft2(psi_nd)
    sy = 2.0 * np.pi / (grid.nlat * dy)  # d/dy of a unit wavenumber, 1/m (rows run south->north)
    sx = 2.0 * np.pi / (grid.nlon * dx)
    dpsi_dx = _fft.irfft2(1j * kx * sx * psi_h, s=psi_nd.shape[-2:])
    dpsi_dy = _fft.irfft2(1j * ky * sy * psi_h, s=psi_nd.shape[-2:])
    # vorticity only for the humidity and vo (the single-level fields are t, u, v, z at 1000 hPa)
    need_lap = bool({"q", "r", "vo"} & set(plev_vars))
    lap = (
        _fft.irfft2(-((kx * sx) ** 2 + (ky * sy) ** 2) * psi_h, s=psi_nd.shape[-2:])
        if need_lap
        else np.zeros_like(psi_nd[:1])
    )
    rms = scales["rms"] if fixed else np.sqrt(np.mean(dpsi_dx**2 + dpsi_dy**2, axis=(0, 2, 3)))  # per mode
    scales["rms"] = rms
    scale = np.array([grid.eddy_wind, 0.5 * grid.eddy_wind])[: rms.size] / rms
    psi = psi_nd * scale[None, :, None, None]
    dpsi_dx *= scale[None, :, None, None]
    dpsi_dy *= scale[None, :, None, None]
    lap *= scale[None, :, None, None]
    # rows of the simulation run south -> north; flip to the descending CDS latitude order
    psi, dpsi_dx, dpsi_dy, lap = (x[:, :, ::-1, :] for x in (psi, dpsi_dx, dpsi_dy, lap))
    y = (lat - lat.mean())[:, None] * dy / grid.resolution  # m north of the centre, (nlat, 1)

    def level_fields(p: np.ndarray, key: str, names: set[str]) -> dict[str, np.ndarray]:
        """Fields `names` (time, level, lat, lon) at pressures p (hPa) (the others are not
        computed); `key` names the vorticity scale of the humidity."""
        a, b, da, db, ubar, dubar = _modes(p)
        sel = lambda arr, w0, w1: w0[None, :, None, None] * arr[:, 0:1] + w1[None, :, None, None] * arr[:, 1:2]  # noqa: E731
        out: dict[str, np.ndarray] = {}
        if "u" in names:
            out["u"] = ubar[None, :, None, None] - sel(dpsi_dy, a, b)
        if "v" in names:
            out["v"] = sel(dpsi_dx, a, b)
        if "z" in names:
            # geopotential: mean + geostrophic mean-flow gradient (-f0 Ubar y) + eddies (f0 psi)
            out["z"] = (
                _std_geopotential(p)[None, :, None, None]
                - f0 * ubar[None, :, None, None] * y[None, None]
                + f0 * sel(psi, a, b)
            )
        if names & {"t", "q"}:
            # hydrostatic temperature T = -(1/R) dPhi/dlnp; the mean part from the standard atmosphere
            dphi_eddy = f0 * sel(psi, da, db) - f0 * dubar[None, :, None, None] * y[None, None]
            out["t"] = _std_temperature(p)[None, :, None, None] - dphi_eddy / R_DRY
        if names & {"q", "r", "vo"}:
            vort = sel(lap, a, b)
            out["vo"] = vort
        if names & {"q", "r"}:
            # relative humidity: moist in cyclonic (positive vorticity) regions, 5..100 %
            std = scales[key] if fixed else np.std(vort)
            scales[key] = std
            zs = vort / (std + 1e-30)
            rh = np.clip(0.55 + 0.35 * np.tanh(zs) - 0.25 * (1.0 - p / 1000.0)[None, :, None, None], 0.05, 1.0)
            out["q"] = rh * _saturation_q(out["t"], p[None, :, None, None] * 100.0)
            out["r"] = 100.0 * rh
        return out

    data_vars = {}
    coords = {
        "number": (
            (),
            np.int64(0),
            {"long_name": "ensemble member numerical id", "units": "1", "standard_name": "realization"},
        ),
        "valid_time": (
            "valid_time",
            times.values.astype("datetime64[ns]"),
            {"long_name": "time", "standard_name": "time"},
        ),
        "latitude": (
            "latitude",
            lat,
            {
                "units": "degrees_north",
                "standard_name": "latitude",
                "long_name": "latitude",
                "stored_direction": "decreasing",
            },
        ),
        "longitude": (
            "longitude",
            lon,
            {"units": "degrees_east", "standard_name": "longitude", "long_name": "longitude"},
        ),
        "expver": ("valid_time", np.array(["0001"] * ntime, dtype=object), {"long_name": "Experiment version"}),
    }
    if plev_vars:
        coords["pressure_level"] = (
            "pressure_level",
            levels_hpa,
            {
                "units": "hPa",
                "long_name": "pressure",
                "standard_name": "air_pressure",
                "positive": "down",
                "stored_direction": "decreasing",
            },
        )
        fields = level_fields(levels_hpa, "levels", set(plev_vars))
        for name in plev_vars:
            std_name, long_name, units = PRESSURE_VARIABLES[name]
            attrs = {"units": units, "long_name": long_name, "standard_name": std_name, "GRIB_shortName": name}
            data_vars[name] = (
                ("valid_time", "pressure_level", "latitude", "longitude"),
                fields[name].astype(np.float32),
                attrs,
            )
    if single:
        near = level_fields(np.array([1000.0]), "single", {_NEAR[v] for v in single})
        sfc = {
            "t2m": lambda: near["t"][:, 0] + 2.0,
            "u10": lambda: 0.7 * near["u"][:, 0],
            "v10": lambda: 0.7 * near["v"][:, 0],
            # msl from the 1000 hPa geopotential: p = 1000 hPa + rho0 * Phi(1000) (rho0 = 1.2 kg/m3)
            "msl": lambda: 100000.0 + 1.2 * near["z"][:, 0],
        }
        for name in single:
            std_name, long_name, units = SINGLE_VARIABLES[name]
            attrs = {"units": units, "long_name": long_name, "standard_name": std_name, "GRIB_shortName": name}
            data_vars[name] = (("valid_time", "latitude", "longitude"), sfc[name]().astype(np.float32), attrs)
    ds = xr.Dataset(data_vars, coords={k: (v[0], v[1], v[2]) for k, v in coords.items()})
    ds.attrs = {
        "GRIB_centre": "ecmf",
        "GRIB_centreDescription": "European Centre for Medium-Range Weather Forecasts",
        "Conventions": "CF-1.7",
        "institution": "scorebridge synthetic source (not ECMWF data)",
        "history": "generated by scorebridge.data.era5.synthetic: forced 2-D turbulence, seed "
        f"{grid.seed}, {grid.nlat}x{grid.nlon} at {grid.resolution} deg, {grid.ntime} steps of {grid.step_hours} h",
    }
    if grid.dynamics != "turbulence":
        ds.attrs["history"] = ds.attrs["history"].replace("forced 2-D turbulence", f"{grid.dynamics} streamfunctions")
    return ds, scales
