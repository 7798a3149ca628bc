"""Collocation of IGRA soundings with an ERA5 grid: box, nearest time within tolerance, levels."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from scorebridge.cli import main
from scorebridge.data.igra.collocate import G0, collocate, era5_grid, open_obs
from scorebridge.data.igra.format import format_data_record, format_header
from scorebridge.data.igra.ingest import ingest
from test_igra import make_era5

M = -9999


def sounding(station, when, lat, lon, levels):
    """IGRA text of one sounding; levels: (press Pa, gph m, temp tenths °C, wdir, wspd tenths)."""
    t = pd.Timestamp(when)
    lines = [format_header(station, t.year, t.month, t.day, t.hour, 9999, len(levels), lat, lon, "ncdc-gts", "")]
    for p, z, temp, wdir, wspd in levels:
        lines.append(format_data_record(1 if p > 0 else 3, 0, M, p, " ", z, "B", temp, "B", M, M, wdir, wspd))
    return "\n".join(lines) + "\n"


PROFILE = [
    (100000, 110, 150, 90, 20),  # 1000 hPa: below the ERA5 levels -> dropped
    (85000, 1500, 50, 180, 100),  # from the south at 10 m/s: v = +10
    (70000, 3000, -30, M, M),
    (50000, 5600, -200, 270, 155),  # from the west at 15.5 m/s: u = +15.5
    (30000, 9300, -450, 270, 300),  # above the ERA5 levels -> dropped
    (M, 12000, M, 270, 350),  # height-only level -> dropped
]


@pytest.fixture
def stores(tmp_path):
    era5 = tmp_path / "era5.zarr"
    make_era5(
        era5, nt=8, levels=(850.0, 500.0)
    )  # 2020-01-01 00..2020-01-02 18, 6-hourly; lat 30..34.5, lon -110..-104.5
    text = "".join(
        [
            sounding("ZZXUA000001", "2020-01-01 06", 31.0, -109.0, PROFILE),  # exactly ERA5 step 1
            sounding("ZZXUA000001", "2020-01-01 08", 31.0, -109.0, PROFILE),  # also nearest to step 1 (2 h): dropped
            sounding("ZZXUA000001", "2020-01-01 11", 31.0, -109.0, PROFILE),  # 1 h from step 2
        ]
    )
    text2 = "".join(
        [
            sounding("ZZXUA000002", "2020-01-01 09", 33.0, -105.0, PROFILE),  # 3 h from steps 1 and 2: the earlier
            sounding("ZZXUA000002", "2020-01-03 06", 33.0, -105.0, PROFILE),  # 12 h after the last step
        ]
    )
    outside = sounding("ZZXUA000003", "2020-01-01 06", 40.0, -109.0, PROFILE) + sounding(
        "ZZXUA000004", "2020-01-01 06", 31.0, -100.0, PROFILE
    )
    files = []
    for name, t in (("ZZXUA000001-data.txt", text), ("ZZXUA000002-data.txt", text2), ("ZZXUA000003-data.txt", outside)):
        (tmp_path / name).write_text(t)
        files.append(tmp_path / name)
    igra = tmp_path / "igra.zarr"
    ingest({"source": "local", "pressure_range": None}, files, igra)
    return tmp_path, igra, era5


def _run(tmp_path, igra, era5, tol=3, name="obs.zarr"):
    out = tmp_path / name
    rc = main(
        [
            "igra-collocate",
            "--spec",
            json.dumps({"collocate": {"tolerance_hours": tol}}),
            "--igra",
            str(igra),
            "--era5",
            str(era5),
            "--out",
            str(out),
        ]
    )
    return rc, out


def test_collocate_box_time_levels(stores):
    tmp_path, igra, era5 = stores
    rc, out = _run(tmp_path, igra, era5)
    assert rc == 0
    o = xr.open_zarr(out, consolidated=False).load()
    for k in ("station", "time", "time_index", "latitude", "longitude", "pressure", "t", "u", "v", "z"):
        assert o[k].dims == ("obs",), k
    rows = pd.DataFrame(
        {
            "station": o["station"].values.tolist(),
            "ti": o["time_index"].values,
            "launch": o["launch_time"].values,
            "p": o["pressure"].values,
        }
    )
    got = rows.groupby(["station", "ti"])["launch"].first()
    assert got.to_dict() == {
        ("ZZXUA000001", 1): pd.Timestamp("2020-01-01 06"),
        ("ZZXUA000001", 2): pd.Timestamp("2020-01-01 11"),
        ("ZZXUA000002", 1): pd.Timestamp("2020-01-01 09"),
    }
    times = pd.date_range("2020-01-01", periods=8, freq="6h")
    assert (pd.DatetimeIndex(o["time"].values) == times[o["time_index"].values]).all()
    # only the levels within 500..850 hPa, decreasing in pressure within a sounding
    assert sorted(set(o["pressure"].values.tolist())) == [50000.0, 70000.0, 85000.0]
    assert rows.groupby(["station", "ti"]).size().tolist() == [3, 3, 3]
    assert (np.diff(o["time_index"].values) >= 0).all()
    first = o.isel(obs=0)
    assert float(first["pressure"]) == 85000 and float(first["t"]) == pytest.approx(278.15, abs=1e-4)
    assert float(first["z"]) == pytest.approx(1500 * G0, rel=1e-6)
    assert float(first["v"]) == pytest.approx(10.0, abs=1e-5) and float(first["u"]) == pytest.approx(0.0, abs=1e-5)
    mid = o.isel(obs=1)
    assert np.isnan(float(mid["u"])) and np.isnan(float(mid["v"]))  # -9999 wind -> NaN
    top = o.isel(obs=2)
    assert float(top["u"]) == pytest.approx(15.5, abs=1e-5) and float(top["z"]) == pytest.approx(5600 * G0, rel=1e-6)
    prov = json.loads(o.attrs["provenance"])
    assert prov["tolerance_hours"] == 3 and prov["era5_grid"]["levels_hpa"] == [850.0, 500.0]


def test_tolerance_zero_keeps_exact_times(stores):
    tmp_path, igra, era5 = stores
    rc, out = _run(tmp_path, igra, era5, tol=0)
    assert rc == 0
    o = xr.open_zarr(out, consolidated=False)
    assert set(o["station"].values.tolist()) == {"ZZXUA000001"} and set(o["time_index"].values.tolist()) == {1}
    rc, out = _run(tmp_path, igra, era5, tol=12, name="wide.zarr")
    o = xr.open_zarr(out, consolidated=False)
    assert 7 in o["time_index"].values.tolist()  # the sounding 12 h after the last step now counts


def test_grid_in_0_360(stores):
    tmp_path, igra, era5 = stores
    ds = xr.open_zarr(era5, consolidated=False).load()
    ds360 = ds.assign_coords(longitude=ds["longitude"] + 360.0)
    grid = era5_grid(ds360)
    assert grid["lon360"]
    o = collocate(xr.open_zarr(igra, consolidated=False), grid, 3.0)
    assert set(np.round(o["longitude"].values, 4).tolist()) == {251.0, 255.0}
    assert o.sizes["obs"] == 9


def test_nothing_collocated_is_an_error(stores, capsys):
    tmp_path, igra, era5 = stores
    far = tmp_path / "far.zarr"
    make_era5(far, lat0=-40.0)
    rc, out = _run(tmp_path, igra, far, name="none.zarr")
    assert rc == 1 and not out.exists()
    assert "no sounding lies inside the ERA5 grid" in capsys.readouterr().err
    late = tmp_path / "late.zarr"
    ds = make_era5()
    ds.assign_coords(time=ds["time"] + np.timedelta64(30, "D")).to_zarr(late, consolidated=False)
    rc, out = _run(tmp_path, igra, late, name="none2.zarr")
    assert rc == 1 and not out.exists()
    assert "within 3.0 h of an ERA5 time" in capsys.readouterr().err
    high = tmp_path / "high.zarr"
    make_era5(high, levels=(200.0, 100.0))
    rc, out = _run(tmp_path, igra, high, name="none3.zarr")
    assert rc == 1 and "within the ERA5 levels 100..200 hPa" in capsys.readouterr().err
    rc, out = _run(tmp_path, tmp_path / "missing.zarr", era5, name="none4.zarr")
    assert rc == 1 and "IGRA zarr not found" in capsys.readouterr().err
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_synthetic_chain_collocates_everything(tmp_path):
    """synthetic soundings sampled from an ERA5 zarr -> ingest -> collocate: every sounding
    matches its ERA5 time exactly, and t at ERA5 levels is the field at the station within noise."""
    era5 = tmp_path / "era5.zarr"
    ds = make_era5(era5, linear=True, nt=4)
    raw, igra, out = tmp_path / "raw", tmp_path / "igra.zarr", tmp_path / "obs.zarr"
    spec = json.dumps(
        {
            "source": "synthetic",
            "synthetic": {"n_stations": 4, "noise_k": 0.0, "noise_wind_ms": 0.0, "missing_fraction": 0.0},
        }
    )
    assert main(["igra-fetch", "--spec", spec, "--out", str(raw), str(era5)]) == 0
    assert main(["igra-ingest", "--spec", spec, "--out", str(igra), str(raw)]) == 0
    assert main(["igra-collocate", "--spec", spec, "--igra", str(igra), "--era5", str(era5), "--out", str(out)]) == 0
    o = open_obs(out)
    assert o["station"].dtype == object
    assert (o["launch_time"].values == o["time"].values).all()
    assert o.sizes["obs"] == 4 * 4 * 3  # 2 ERA5 levels + 1 between them
    at = o.where(o["pressure"].isin([85000.0, 50000.0]), drop=True)
    ref = ds["t"].interp(
        time=xr.DataArray(at["time"].values, dims="obs"),
        level=xr.DataArray(at["pressure"].values / 100.0, dims="obs"),
        latitude=xr.DataArray(at["latitude"].values, dims="obs"),
        longitude=xr.DataArray(at["longitude"].values, dims="obs"),
    )
    np.testing.assert_allclose(at["t"].values, ref.values, atol=0.05 + 1e-3)
    np.testing.assert_allclose(
        at["z"].values,
        ds["z"]
        .interp(
            time=xr.DataArray(at["time"].values, dims="obs"),
            level=xr.DataArray(at["pressure"].values / 100.0, dims="obs"),
            latitude=xr.DataArray(at["latitude"].values, dims="obs"),
            longitude=xr.DataArray(at["longitude"].values, dims="obs"),
        )
        .values,
        atol=0.5 * G0 + 0.1,
    )
