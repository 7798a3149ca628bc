"""The synthetic ERA5 source: deterministic, weather-like (k^-3 spectra, balanced, evolving)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from conftest import run_cli
from scorebridge.data.era5.dynamics import energy_spectrum, simulate_turbulence
from scorebridge.data.era5.fetch import fetch
from scorebridge.data.era5.synthetic import R_DRY, SyntheticOptions, synthetic_era5
from scorebridge.errors import ConfigError
from scorebridge.options import build

SPEC = '{"source":"synthetic","variables":["t","u","v","z","q","t2m"],"levels":[850,500,250],"synthetic":{"nlat":32,"nlon":32,"ntime":24,"seed":%d}}'


@pytest.fixture(scope="module")
def fields() -> xr.Dataset:
    grid = build(SyntheticOptions, {"nlat": 32, "nlon": 32, "ntime": 48, "seed": 3})
    return synthetic_era5(["t", "u", "v", "z", "q", "r", "vo", "t2m", "u10", "v10", "msl"], [1000, 850, 500, 250], grid)


def test_same_seed_same_bytes_different_seed_differs(tmp_path):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        fetch(json.loads(SPEC % seed), tmp_path / f"{name}.nc")
    a, b, c = ((tmp_path / f"{n}.nc").read_bytes() for n in "abc")
    assert a == b
    with xr.open_dataset(tmp_path / "a.nc") as da_, xr.open_dataset(tmp_path / "c.nc") as dc:
        assert not np.allclose(da_.u.values, dc.u.values)
        assert da_.u.shape == dc.u.shape == (24, 3, 32, 32)


def test_new_cds_layout_and_cf_attributes(tmp_path):
    out = tmp_path / "x.nc"
    run_cli("era5-fetch", "--spec", SPEC % 0, "--out", out)
    with xr.open_dataset(out) as ds:
        assert set(ds.dims) == {"valid_time", "pressure_level", "latitude", "longitude"}
        assert ds.t.dims == ("valid_time", "pressure_level", "latitude", "longitude")
        assert ds.t2m.dims == ("valid_time", "latitude", "longitude")
        assert np.all(np.diff(ds.latitude.values) < 0), "CDS writes latitude descending"
        assert ds.pressure_level.attrs["units"] == "hPa"
        assert [ds[v].attrs["units"] for v in ("t", "u", "z", "q", "t2m")] == [
            "K",
            "m s**-1",
            "m**2 s**-2",
            "kg kg**-1",
            "K",
        ]
        assert all(ds[v].dtype == np.float32 for v in ds.data_vars)
        assert ds.valid_time.encoding["units"].startswith("seconds since 1970")
        assert "expver" in ds.coords and "number" in ds.coords
        assert ds.attrs["Conventions"].startswith("CF")
        assert np.diff(ds.valid_time.values)[0] == np.timedelta64(6, "h")


def test_values_are_physical(fields):
    t = fields.t.mean(("valid_time", "latitude", "longitude")).values  # 1000, 850, 500, 250 hPa
    assert np.all(np.diff(t) < 0) and 270 < t[0] < 295 and 200 < t[-1] < 230
    z = fields.z.mean(("valid_time", "latitude", "longitude")).values / 9.80665  # geopotential height (m)
    assert abs(z[1] - 1450) < 250 and abs(z[2] - 5550) < 400 and abs(z[3] - 10300) < 700
    u = fields.u.mean(("valid_time", "latitude", "longitude")).values
    assert np.all(np.diff(u) > 0) and u[-1] > 15, "westerlies strengthen with height"
    eddy = float(fields.v.sel(pressure_level=500).std())
    assert 4 < eddy < 20
    q = fields.q.values
    assert (
        q.min() > 0
        and q.max() < 0.03
        and np.all(np.diff(fields.q.mean(("valid_time", "latitude", "longitude")).values) < 0)
    )
    assert float(fields.r.min()) >= 5.0 and float(fields.r.max()) <= 100.0
    assert 95000 < float(fields.msl.min()) and float(fields.msl.max()) < 106000


def test_hydrostatic_and_geostrophic_balance(fields):
    """T = -(1/R) dPhi/dlnp between levels, and v = (1/f) dPhi/dx: the fields are balanced."""
    p = fields.pressure_level.values
    phi = fields.z.values.astype(np.float64)
    t = fields.t.values.astype(np.float64)
    # layer-mean temperature from the hypsometric equation vs the mean of the two levels
    for i in range(len(p) - 1):
        t_layer = (phi[:, i + 1] - phi[:, i]) / (R_DRY * np.log(p[i] / p[i + 1]))
        t_mid = 0.5 * (t[:, i] + t[:, i + 1])
        assert np.corrcoef(t_layer.ravel() - t_layer.mean(), t_mid.ravel() - t_mid.mean())[0, 1] > 0.9
    # geostrophic v from the zonal geopotential gradient (centred differences on the grid)
    lat = np.deg2rad(fields.latitude.values.mean())
    f = 2 * 7.292e-5 * np.sin(lat)
    dx = 6.371e6 * np.deg2rad(0.5) * np.cos(lat)
    phi500 = fields.z.sel(pressure_level=500).values.astype(np.float64)
    vg = (phi500[..., 2:] - phi500[..., :-2]) / (2 * dx) / f
    v = fields.v.sel(pressure_level=500).values[..., 1:-1]
    assert np.corrcoef(vg.ravel(), v.ravel())[0, 1] > 0.9


def test_kinetic_energy_spectrum_is_k_minus_3(fields):
    u = fields.u.sel(pressure_level=500).values
    v = fields.v.sel(pressure_level=500).values
    k, e = energy_spectrum(u, v)
    band = (k >= 4) & (k <= 8)  # above the forcing, below the hyperdiffusion
    slope = np.polyfit(np.log(k[band]), np.log(e[band]), 1)[0]
    assert -4.6 < slope < -2.4, slope
    # white noise would be flat (slope ~ +1 for shell sums): the fields are spatially correlated
    noise = np.random.default_rng(0).standard_normal(u.shape)
    kn, en = energy_spectrum(noise, noise)
    assert np.polyfit(np.log(kn[band]), np.log(en[band]), 1)[0] > 0


def test_fields_evolve_in_time(fields):
    u = fields.u.sel(pressure_level=500).values
    a = u - u.mean(axis=0)
    lag = lambda n: float(np.mean(a[n:] * a[:-n]) / np.mean(a * a))  # noqa: E731
    assert lag(1) > 0.6, "6-hourly steps are strongly correlated"
    assert lag(24) < 0.5 * lag(1), "and decorrelate over days"
    assert not np.allclose(u[0], u[-1])


def test_turbulence_is_deterministic_and_bounded():
    a = simulate_turbulence(16, 24, 4, 0.25, seed=5)
    b = simulate_turbulence(16, 24, 4, 0.25, seed=5)
    assert a.shape == (4, 2, 16, 24)
    assert np.array_equal(a, b) and np.all(np.isfinite(a))


def test_unknown_variable_and_bad_levels_are_config_errors():
    grid = build(SyntheticOptions, {"nlat": 8, "nlon": 8, "ntime": 2})
    with pytest.raises(ConfigError, match="variables"):
        synthetic_era5(["t", "sst"], [500], grid)
    with pytest.raises(ConfigError, match="levels"):
        synthetic_era5(["t"], [], grid)
