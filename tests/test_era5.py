"""ERA5 ingestion: every layout normalised to the zarr contract, subsetting, streaming,
the real GRIB samples, CDS requests (no network), ARCO selection, errors, Snakemake."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import yaml

from conftest import ROOT, bin_path, run_cli, run_snakemake, shared_file
from scorebridge.data.era5 import layout
from scorebridge.data.era5.cds import build_cds_requests, date_groups
from scorebridge.data.era5.ingest import ingest
from scorebridge.data.era5.inputs import open_inputs
from scorebridge.data.era5.layout import Selection, lon_order
from scorebridge.data.era5.synthetic import SyntheticOptions, synthetic_era5
from scorebridge.errors import ConfigError, InputError
from scorebridge.options import build
from scorebridge.provenance import sha256_file

BASE = {"source": "local", "variables": ["t", "u", "t2m"], "levels": [850, 500], "hours": None, "chunks": {"time": 4}}


def spec(**kw) -> dict:
    return {**BASE, **kw}


def new_cds(
    seed=0,
    ntime=8,
    nlat=8,
    nlon=12,
    lon0=250.0,
    lat0=30.0,
    res=1.0,
    start="2020-01-01",
    step=6,
    variables=("t", "u", "t2m"),
) -> xr.Dataset:
    # replace, not build: some grids here are smaller than the config allows (nlat >= 8)
    grid = dataclasses.replace(
        build(SyntheticOptions, {}),
        nlat=nlat,
        nlon=nlon,
        ntime=ntime,
        lon0=lon0,
        lat0=lat0,
        resolution=res,
        start=start,
        step_hours=step,
        seed=seed,
    )
    return synthetic_era5(list(variables), [1000, 850, 500], grid)


def write_new(ds: xr.Dataset, path: Path) -> Path:
    enc = {"valid_time": {"units": "seconds since 1970-01-01", "dtype": "int64"}}
    ds.to_netcdf(path, encoding=enc)
    return path


def write_old(ds: xr.Dataset, path: Path) -> Path:
    """The pre-2024 CDS netCDF: time (hours since 1900, int32), level, int16 packing."""
    old = ds.drop_vars(["expver", "number"]).rename({"valid_time": "time", "pressure_level": "level"})
    enc = {"time": {"units": "hours since 1900-01-01 00:00:00.0", "calendar": "gregorian", "dtype": "int32"}}
    for name in old.data_vars:
        lo, hi = float(old[name].min()), float(old[name].max())
        scale = (hi - lo) / (2**16 - 4)  # +-32766: clear of the fill value, as the CDS packs
        enc[name] = {"dtype": "int16", "scale_factor": scale, "add_offset": (hi + lo) / 2, "_FillValue": -32767}
    old["level"] = old["level"].astype(np.int32)
    old["level"].attrs = {"units": "millibars", "long_name": "pressure_level"}
    old.to_netcdf(path, encoding=enc, format="NETCDF3_64BIT")
    return path


def expected(ds: xr.Dataset, levels=(850.0, 500.0)) -> xr.Dataset:
    """The contract form computed independently: rename, pick levels, sort axes, -180..180."""
    out = ds.drop_vars(["expver", "number"]).rename({"valid_time": "time", "pressure_level": "level"})
    out = out.sel(level=list(levels))
    out = out.assign_coords(longitude=(out.longitude + 180) % 360 - 180).sortby("latitude").sortby("longitude")
    return out


def read(path: Path) -> xr.Dataset:
    return xr.open_zarr(path, consolidated=False).load()


# --- layouts -----------------------------------------------------------------------------


def test_new_cds_layout_meets_the_contract(tmp_path):
    src = new_cds()
    f = write_new(src, tmp_path / "new.nc")
    out = ingest(spec(), tmp_path / "new.zarr", [f])
    ds = xr.open_zarr(out, consolidated=False)
    assert ds.t.dims == ("time", "level", "latitude", "longitude") and ds.t2m.dims == ("time", "latitude", "longitude")
    assert ds.time.dtype == np.dtype("datetime64[ns]") and ds.level.dtype == np.float64
    assert ds.level.values.tolist() == [850.0, 500.0] and ds.level.attrs["units"] == "hPa"
    assert np.all(np.diff(ds.latitude.values) > 0)
    lon = ds.longitude.values
    assert np.all(np.diff(lon) > 0) and lon.min() >= -180 and lon.max() <= 180 and lon[0] == -110.0
    assert all(ds[v].dtype == np.float32 for v in ds.data_vars)
    assert ds.t.encoding["chunks"][0] == 4 and ds.t.chunks[0] == (4, 4)
    assert ds.t.attrs["units"] == "K" and ds.u.attrs["standard_name"] == "eastward_wind"
    ds = ds.load()
    exp = expected(src)
    for v in ("t", "u", "t2m"):
        np.testing.assert_array_equal(ds[v].values, exp[v].values)
    norm = json.loads(ds.attrs["normalisation"])
    np.testing.assert_allclose(
        norm["t"]["mean"], ds.t.mean(("time", "latitude", "longitude"), dtype=np.float64).values, rtol=1e-9
    )
    np.testing.assert_allclose(
        norm["u"]["std"], ds.u.astype(np.float64).std(("time", "latitude", "longitude")).values, rtol=1e-7
    )
    assert (
        isinstance(norm["t2m"]["mean"], float)
        and abs(norm["t2m"]["std"] - float(ds.t2m.astype(np.float64).std())) < 1e-6
    )
    prov = json.loads(ds.attrs["provenance"])
    assert prov["source"] == "local" and prov["inputs"][0]["sha256"] == sha256_file(f)
    assert {"numpy", "xarray", "zarr", "dask"} <= set(prov["packages"]) and prov["created"]


def test_old_netcdf_and_longitude_conventions_give_the_same_store(tmp_path):
    src = new_cds(seed=1)
    ref = read(ingest(spec(), tmp_path / "ref.zarr", [write_new(src, tmp_path / "new.nc")]))
    old = read(ingest(spec(), tmp_path / "old.zarr", [write_old(src, tmp_path / "old.nc")]))
    assert old.t.dims == ref.t.dims and old.level.values.tolist() == [850.0, 500.0]
    np.testing.assert_array_equal(old.time.values, ref.time.values)
    for v in ("t", "u", "t2m"):
        span = float(src[v].max() - src[v].min())
        np.testing.assert_allclose(old[v].values, ref[v].values, atol=span / 2**15)
    west = src.assign_coords(longitude=src.longitude - 360.0)  # same grid written as -110..-99
    alt = read(ingest(spec(), tmp_path / "alt.zarr", [write_new(west, tmp_path / "west.nc")]))
    xr.testing.assert_identical(alt.drop_attrs(), ref.drop_attrs())


def test_global_0_360_grid_is_rotated_and_area_crosses_greenwich(tmp_path):
    src = new_cds(nlat=7, nlon=36, lat0=-60.0, lon0=0.0, res=10.0, ntime=4)  # lon 0..350, descending lat
    f = write_new(src, tmp_path / "global.nc")
    ds = read(ingest(spec(), tmp_path / "g.zarr", [f]))
    assert ds.longitude.values[0] == -180.0 and ds.longitude.values[-1] == 170.0
    np.testing.assert_array_equal(
        ds.t.sel(longitude=-170.0).values,
        src.t.sel(longitude=190.0, pressure_level=[850, 500])
        .transpose("valid_time", "pressure_level", "latitude")
        .values[:, :, ::-1],
    )
    box = read(ingest(spec(area=[0, -20, -40, 20]), tmp_path / "box.zarr", [f]))
    assert box.longitude.values.tolist() == [-20.0, -10.0, 0.0, 10.0, 20.0]
    assert box.latitude.values.tolist() == [-40.0, -30.0, -20.0, -10.0, 0.0]
    np.testing.assert_array_equal(
        box.u.sel(longitude=-10.0, latitude=-30.0).values,
        src.u.sel(longitude=350.0, latitude=-30.0, pressure_level=[850, 500]).values,
    )


def test_grid_straddling_the_antimeridian_keeps_0_360():
    order, values = lon_order(np.array([170.0, 172.5, 175.0, 177.5, 180.0, 182.5, 185.0]))
    assert values.tolist() == [170.0, 172.5, 175.0, 177.5, 180.0, 182.5, 185.0] and order.tolist() == list(range(7))
    order, values = lon_order(np.array([-175.0, 175.0, -180.0, 170.0]))  # straddling, given as -180..180
    assert values.tolist() == [170.0, 175.0, 180.0, 185.0]
    order, values = lon_order(np.arange(0.0, 360.0, 90.0))  # global -> -180..180
    assert values.tolist() == [-180.0, -90.0, 0.0, 90.0] and order.tolist() == [2, 3, 0, 1]


def test_ensemble_members_kept_or_selected(tmp_path):
    members = [new_cds(seed=s, ntime=4) for s in range(3)]
    ens = xr.concat([m.drop_vars("number") for m in members], dim=xr.DataArray([0, 1, 2], dims="number", name="number"))
    ens = ens.transpose("number", ...)
    f = write_new(ens, tmp_path / "ens.nc")
    ds = read(ingest(spec(), tmp_path / "all.zarr", [f]))
    assert ds.t.dims == ("number", "time", "level", "latitude", "longitude") and ds.number.values.tolist() == [0, 1, 2]
    assert ds.t.encoding["chunks"][:2] == (3, 4)
    one = read(ingest(spec(member=2), tmp_path / "one.zarr", [f]))
    assert "number" not in one.dims
    np.testing.assert_array_equal(one.t.values, ds.t.sel(number=2).values)
    np.testing.assert_array_equal(one.u.values, expected(members[2]).u.values)
    with pytest.raises(InputError, match=r"member 7 .*members: \[0, 1, 2\]"):
        ingest(spec(member=7), tmp_path / "bad.zarr", [f])
    assert not (tmp_path / "bad.zarr").exists()


def test_subsetting_by_area_dates_hours_levels_variables(tmp_path):
    src = new_cds(ntime=16, nlat=10, nlon=10, lat0=40.0, lon0=-10.0, res=1.0)  # 4 days, 6-hourly
    f = write_new(src, tmp_path / "s.nc")
    sub = spec(
        variables=["u"],
        levels=[500],
        area=[45, -8, 42, -5],
        dates={"start": "2020-01-02", "end": "2020-01-03"},
        hours=[6, 18],
    )
    ds = read(ingest(sub, tmp_path / "sub.zarr", [f]))
    assert list(ds.data_vars) == ["u"]
    assert ds.level.values.tolist() == [500.0]
    assert ds.latitude.values.tolist() == [42.0, 43.0, 44.0, 45.0] and ds.longitude.values.tolist() == [
        -8.0,
        -7.0,
        -6.0,
        -5.0,
    ]
    assert [str(t)[:13] for t in ds.time.values] == ["2020-01-02T06", "2020-01-02T18", "2020-01-03T06", "2020-01-03T18"]
    want = src.u.sel(pressure_level=[500], latitude=slice(45, 42), longitude=slice(-8, -5), valid_time=ds.time.values)
    np.testing.assert_array_equal(ds.u.values, want.values[:, :, ::-1, :])
    grid = read(ingest(spec(variables=["t2m"], grid=2.0), tmp_path / "grid.zarr", [f]))
    assert grid.latitude.values.tolist() == [40.0, 42.0, 44.0, 46.0, 48.0] and grid.longitude.values[0] == -10.0


def test_multi_file_archives_by_time_and_variable_equal_one_file(tmp_path):
    src = new_cds(ntime=12, seed=4)
    whole = read(ingest(spec(), tmp_path / "whole.zarr", [write_new(src, tmp_path / "whole.nc")]))
    files = []
    for i, part in enumerate((slice(8, 12), slice(0, 4), slice(4, 8))):  # out of order on purpose
        sl = src.isel(valid_time=part)
        files.append(write_new(sl[["t", "u"]], tmp_path / f"pl{i}.nc"))
        files.append(write_new(sl[["t2m"]], tmp_path / f"sfc{i}.nc"))
    split = read(ingest(spec(stream={"block_mb": 0.001}), tmp_path / "split.zarr", files))  # tiny blocks: many regions
    xr.testing.assert_identical(split.drop_attrs(), whole.drop_attrs())
    n1, n2 = json.loads(split.attrs["normalisation"]), json.loads(whole.attrs["normalisation"])
    for v in n1:
        np.testing.assert_allclose(n1[v]["mean"], n2[v]["mean"], rtol=1e-12)
        np.testing.assert_allclose(n1[v]["std"], n2[v]["std"], rtol=1e-9)
    assert len(json.loads(split.attrs["provenance"])["inputs"]) == 6


def test_streams_through_a_dask_distributed_scheduler(tmp_path):
    distributed = pytest.importorskip("distributed")
    src = new_cds(ntime=8, seed=6)
    f = write_new(src, tmp_path / "d.nc")
    local = read(ingest(spec(), tmp_path / "local.zarr", [f]))
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None
    ) as cluster:
        remote = read(
            ingest(spec(stream={"address": cluster.scheduler_address, "block_mb": 0.2}), tmp_path / "remote.zarr", [f])
        )
        assert any("write_chunk" in p for p in cluster.scheduler.task_prefixes), "the scheduler ran the tasks"
    xr.testing.assert_identical(remote.drop_attrs(), local.drop_attrs())
    assert remote.attrs["normalisation"] == local.attrs["normalisation"]
    import dask

    with (
        dask.config.set({"distributed.comm.timeouts.connect": "1s"}),
        pytest.raises(ConfigError, match="stream.address"),
    ):
        ingest(spec(stream={"address": "tcp://127.0.0.1:9"}), tmp_path / "x.zarr", [f])
    assert not (tmp_path / "x.zarr").exists()


def test_lazy_until_written(tmp_path):
    """open_inputs builds a dask graph chunked by time; nothing is loaded."""
    f = write_new(new_cds(ntime=8), tmp_path / "l.nc")
    ds = open_inputs([f], Selection.from_spec(spec()), chunk_time=2)
    assert all(v.chunks is not None and v.chunks[0] == (2, 2, 2, 2) for v in ds.data_vars.values())


def test_grib_step_and_scalar_time_become_valid_time():
    t0 = np.array(["2020-01-01T00", "2020-01-01T12"], dtype="datetime64[ns]")
    steps = np.array([0, 6], dtype="timedelta64[h]").astype("timedelta64[ns]")
    valid = t0[:, None] + steps[None, :]
    data = np.arange(2 * 2 * 3 * 4, dtype=np.float32).reshape(2, 2, 3, 4)
    ds = xr.Dataset(
        {"tp": (("time", "step", "latitude", "longitude"), data)},
        coords={
            "time": t0,
            "step": steps,
            "valid_time": (("time", "step"), valid),
            "latitude": [10.0, 5.0, 0.0],
            "longitude": [0.0, 1.0, 2.0, 3.0],
            "surface": 0.0,
        },
    )
    out = layout.standardise(ds, "fc.grib")
    assert out.tp.dims == ("time", "latitude", "longitude")
    assert [str(t)[:13] for t in out.time.values] == [
        "2020-01-01T00",
        "2020-01-01T06",
        "2020-01-01T12",
        "2020-01-01T18",
    ]
    np.testing.assert_array_equal(out.tp.values[1], data[0, 1])
    scalar = xr.Dataset(
        {"t2m": (("latitude", "longitude"), data[0, 0])},
        coords={
            "time": t0[0],
            "step": steps[0],
            "valid_time": t0[0] + steps[1],
            "latitude": [10.0, 5.0, 0.0],
            "longitude": [0.0, 1.0, 2.0, 3.0],
        },
    )
    out = layout.standardise(scalar, "an.grib")
    assert out.t2m.dims == ("time", "latitude", "longitude") and str(out.time.values[0])[:13] == "2020-01-01T06"


# --- the real GRIB samples ---------------------------------------------------------------


def test_real_grib_ensemble_levels(tmp_path):
    path = shared_file("era5", "era5-levels-members.grib")
    ds = read(ingest(spec(variables=["z", "t"], levels=[500, 850], chunks={"time": 2}), tmp_path / "m.zarr", [path]))
    assert ds.t.dims == ("number", "time", "level", "latitude", "longitude")
    assert ds.t.shape == ds.z.shape == (10, 4, 2, 61, 120)
    assert ds.level.values.tolist() == [850.0, 500.0]
    assert [str(t)[:13] for t in ds.time.values] == ["2017-01-01T00", "2017-01-01T12", "2017-01-02T00", "2017-01-02T12"]
    assert ds.latitude.values[0] == -90.0 and ds.latitude.values[-1] == 90.0
    assert (
        ds.longitude.values[0] == -180.0
        and ds.longitude.values[-1] == 177.0
        and np.allclose(np.diff(ds.longitude.values), 3.0)
    )
    assert 215 < float(ds.t.min()) and float(ds.t.max()) < 315
    z850, z500 = (ds.z.sel(level=lev) / 9.80665 for lev in (850, 500))
    assert 900 < float(z850.mean()) < 1600 and 4800 < float(z500.mean()) < 5900
    raw = xr.open_dataset(path, engine="cfgrib", backend_kwargs={"indexpath": ""})
    np.testing.assert_array_equal(
        ds.t.sel(longitude=-3.0, latitude=45.0).values, raw.t.sel(longitude=357.0, latitude=45.0).values
    )
    one = read(
        ingest(
            spec(
                variables=["t"], levels=[500], member=3, dates={"start": "2017-01-02", "end": "2017-01-02"}, hours=[12]
            ),
            tmp_path / "one.zarr",
            [path],
        )
    )
    assert one.t.shape == (1, 1, 61, 120) and "number" not in one.dims
    np.testing.assert_array_equal(one.t.values[0, 0], ds.t.sel(number=3, level=500).values[3])


def test_real_grib_single_level_scalar_time(tmp_path):
    path = shared_file("era5", "era5-single-level-scalar-time.grib")
    ds = read(ingest(spec(variables=["t2m"]), tmp_path / "s.zarr", [path]))
    assert ds.t2m.dims == ("time", "latitude", "longitude") and ds.t2m.shape == (1, 121, 201)
    assert "level" not in ds.dims
    assert (
        ds.latitude.values[0] == 30.0
        and ds.latitude.values[-1] == 60.0
        and np.allclose(np.diff(ds.latitude.values), 0.25)
    )
    assert ds.longitude.values[0] == -10.0 and ds.longitude.values[-1] == 40.0
    assert str(ds.time.values[0])[:13] == "2017-01-01T12"
    assert 255 < float(ds.t2m.min()) < float(ds.t2m.max()) < 300
    raw = xr.open_dataset(path, engine="cfgrib", backend_kwargs={"indexpath": ""})
    np.testing.assert_array_equal(ds.t2m.values[0], raw.t2m.values[::-1])
    norm = json.loads(ds.attrs["normalisation"])["t2m"]
    assert abs(norm["mean"] - float(raw.t2m.mean(dtype=np.float64))) < 1e-3


def test_real_gribs_on_different_grids_are_an_error(tmp_path):
    a = shared_file("era5", "era5-levels-members.grib")
    b = shared_file("era5", "era5-single-level-scalar-time.grib")
    with pytest.raises(InputError, match=r"grid differs across files: 121x201 .* 61x120 .*era5-levels-members"):
        ingest(spec(variables=["t", "t2m"], levels=[850], member=0), tmp_path / "x.zarr", [a, b])
    assert not (tmp_path / "x.zarr").exists()


# --- ARCO --------------------------------------------------------------------------------


def test_arco_layout_selected_lazily(tmp_path):
    """A local zarr with the ARCO-ERA5 layout: long names, level, latitude 90..-90, lon 0..359, hourly."""
    times = np.arange("2021-03-01T00", "2021-03-04T00", dtype="datetime64[h]").astype("datetime64[ns]")
    lat = np.arange(90.0, -90.1, -10.0)
    lon = np.arange(0.0, 360.0, 10.0)
    levels = np.array([50, 100, 250, 500, 850, 1000])
    rng = np.random.default_rng(0)
    store = xr.Dataset(
        {
            "temperature": (
                ("time", "level", "latitude", "longitude"),
                rng.normal(250, 10, (times.size, levels.size, lat.size, lon.size)).astype(np.float32),
            ),
            "u_component_of_wind": (
                ("time", "level", "latitude", "longitude"),
                rng.normal(0, 10, (times.size, levels.size, lat.size, lon.size)).astype(np.float32),
            ),
            "2m_temperature": (
                ("time", "latitude", "longitude"),
                rng.normal(280, 5, (times.size, lat.size, lon.size)).astype(np.float32),
            ),
            "geopotential": (
                ("time", "level", "latitude", "longitude"),
                np.zeros((times.size, levels.size, lat.size, lon.size), np.float32),
            ),
        },
        coords={"time": times, "level": levels, "latitude": lat, "longitude": lon},
    )
    url = tmp_path / "arco.zarr"
    store.chunk({"time": 1}).to_zarr(url, consolidated=True, zarr_format=2)
    sel = {
        "source": "arco",
        "arco_url": str(url),
        "variables": ["t", "t2m"],
        "levels": [850, 250],
        "area": [60, -30, 20, 30],
        "dates": {"start": "2021-03-02", "end": "2021-03-02"},
        "hours": [0, 6, 12, 18],
    }
    ds = read(ingest(sel, tmp_path / "a.zarr"))
    assert sorted(ds.data_vars) == ["t", "t2m"] and ds.t.dims == ("time", "level", "latitude", "longitude")
    assert ds.level.values.tolist() == [850.0, 250.0]
    assert ds.latitude.values.tolist() == [20.0, 30.0, 40.0, 50.0, 60.0]
    assert ds.longitude.values.tolist() == [-30.0, -20.0, -10.0, 0.0, 10.0, 20.0, 30.0]
    assert [str(t)[11:13] for t in ds.time.values] == ["00", "06", "12", "18"] and str(ds.time.values[0])[
        :10
    ] == "2021-03-02"
    want = store.temperature.sel(
        time=ds.time.values, level=[850, 250], latitude=[20, 30, 40, 50, 60], longitude=[330, 340, 350, 0, 10, 20, 30]
    )
    np.testing.assert_array_equal(ds.t.values, want.values)
    assert json.loads(ds.attrs["provenance"])["store"] == str(url)
    with pytest.raises(InputError, match=r"no variable 'q' \(the file has: .*t, t2m, u, z"):
        ingest({**sel, "variables": ["t", "q"]}, tmp_path / "b.zarr")


# --- CDS requests (no network) -----------------------------------------------------------


def test_cds_requests_from_config():
    reqs = build_cds_requests(
        {
            "source": "cds",
            "variables": ["t", "u", "t2m"],
            "levels": [500, 850, 1000],
            "area": [60, -10, 30, 40],
            "grid": 0.5,
            "hours": [0, 12],
            "dates": {"start": "2020-01-30", "end": "2020-03-02"},
            "product": "auto",
        }
    )
    products = [p for p, _ in reqs]
    assert products == ["reanalysis-era5-pressure-levels"] * 3 + ["reanalysis-era5-single-levels"] * 3
    first = reqs[0][1]
    assert first["variable"] == ["temperature", "u_component_of_wind"] and reqs[3][1]["variable"] == ["2m_temperature"]
    assert first["pressure_level"] == ["1000", "850", "500"] and "pressure_level" not in reqs[3][1]
    assert (
        first["time"] == ["00:00", "12:00"]
        and first["area"] == [60.0, -10.0, 30.0, 40.0]
        and first["grid"] == [0.5, 0.5]
    )
    assert first["data_format"] == "netcdf" and first["product_type"] == ["reanalysis"]
    assert [(r["year"], r["month"], r["day"][0], r["day"][-1]) for _, r in reqs[:3]] == [
        (["2020"], ["01"], "30", "31"),
        (["2020"], ["02"], "01", "31"),
        (["2020"], ["03"], "01", "02"),
    ]
    json.dumps(reqs)  # plain JSON: recorded verbatim in provenance


def test_cds_date_groups_cover_exactly():
    groups = date_groups(dt.date(2019, 1, 1), dt.date(2020, 12, 31))
    assert groups == [
        {
            "year": ["2019", "2020"],
            "month": [f"{m:02d}" for m in range(1, 13)],
            "day": [f"{d:02d}" for d in range(1, 32)],
        }
    ]
    groups = date_groups(dt.date(2021, 2, 27), dt.date(2021, 5, 3))
    covered = set()
    for g in groups:
        for y in g["year"]:
            for m in g["month"]:
                for d in g["day"]:
                    try:
                        covered.add(dt.date(int(y), int(m), int(d)))
                    except ValueError:
                        pass  # CDS skips dates that do not exist
    want = {
        dt.date(2021, 2, 27) + dt.timedelta(days=i)
        for i in range((dt.date(2021, 5, 3) - dt.date(2021, 2, 27)).days + 1)
    }
    assert covered == want and len(groups) == 3


@pytest.mark.parametrize(
    "bad, key",
    [
        ({"variables": ["t", "sst_bogus"]}, "variables"),
        ({"product": "reanalysis-era5-pressure-levels", "variables": ["t2m"]}, "product"),
        ({"dates": {"start": "2020-01-01"}}, "dates.end"),
        ({"dates": {"start": "2020-02-01", "end": "2020-01-01"}}, "dates"),
        ({"levels": []}, "levels"),
    ],
)
def test_cds_request_config_errors(bad, key):
    base = {
        "source": "cds",
        "variables": ["t"],
        "levels": [500],
        "dates": {"start": "2020-01-01", "end": "2020-01-02"},
        "hours": [0],
    }
    with pytest.raises(ConfigError) as err:
        build_cds_requests({**base, **bad})
    assert f"config key '{key}'" in str(err.value)


def test_cds_parts_joined_into_one_netcdf_with_the_requests(tmp_path):
    """What era5-fetch does after retrieval: parts per product and month -> one file."""
    from scorebridge.data.era5.fetch import SOURCE_ATTR, _join_cds_parts

    src = new_cds(ntime=8, seed=8)
    parts = [
        write_new(src[["t", "u"]].isel(valid_time=slice(0, 4)), tmp_path / "p0.nc"),
        write_new(src[["t", "u"]].isel(valid_time=slice(4, 8)), tmp_path / "p1.nc"),
        write_new(src[["t2m"]], tmp_path / "s0.nc"),
    ]
    reqs = [
        ("reanalysis-era5-pressure-levels", {"month": ["01"]}),
        ("reanalysis-era5-pressure-levels", {"month": ["02"]}),
        ("reanalysis-era5-single-levels", {"month": ["01", "02"]}),
    ]
    _join_cds_parts(parts, reqs, tmp_path / "joined.nc")
    with xr.open_dataset(tmp_path / "joined.nc") as ds:
        assert json.loads(ds.attrs[SOURCE_ATTR])["requests"][2]["dataset"] == "reanalysis-era5-single-levels"
    a = read(ingest(spec(source="cds"), tmp_path / "a.zarr", [tmp_path / "joined.nc"]))
    b = read(ingest(spec(), tmp_path / "b.zarr", [write_new(src, tmp_path / "whole.nc")]))
    xr.testing.assert_identical(a.drop_attrs(), b.drop_attrs())
    assert json.loads(a.attrs["provenance"])["inputs"][0]["made_by"]["source"] == "cds"


def test_cds_fetch_without_credentials_fails_cleanly(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDSAPI")}
    env.update({"HOME": str(tmp_path), "CDSAPI_RC": str(tmp_path / "none")})
    spec_ = {
        "source": "cds",
        "variables": ["t"],
        "levels": [500],
        "dates": {"start": "2020-01-01", "end": "2020-01-01"},
        "hours": [0],
    }
    proc = subprocess.run(
        [bin_path("scorebridge"), "era5-fetch", "--spec", json.dumps(spec_), "--out", str(tmp_path / "x.nc")],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 1
    assert "no CDS credentials" in proc.stderr and "Traceback" not in proc.stderr
    assert not list(tmp_path.glob("*.nc")) and not list(tmp_path.glob(".x.nc*"))


# --- errors ------------------------------------------------------------------------------


def test_error_missing_variable_names_file_and_contents(tmp_path):
    f = write_new(new_cds(ntime=2), tmp_path / "a.nc")
    out = tmp_path / "o.zarr"
    proc = run_cli("era5-ingest", "--spec", json.dumps(spec(variables=["t", "q"])), "--out", out, f, check=False)
    assert proc.returncode == 1
    assert f"{f}: no variable 'q' (the file has: t, t2m, u)" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists() and not list(tmp_path.glob(".o.zarr*"))


def test_error_variable_missing_from_every_file(tmp_path):
    a = write_new(new_cds(ntime=2)[["t"]], tmp_path / "a.nc")
    b = write_new(new_cds(ntime=2, start="2020-01-02")[["t"]], tmp_path / "b.nc")
    with pytest.raises(InputError, match=r"no variable 'u' in the input \(.*a.nc has: t; .*b.nc has: t\)"):
        open_inputs([a, b], Selection.from_spec(spec(variables=["t", "u"])))


def test_error_grids_differ(tmp_path):
    a = write_new(new_cds(ntime=2), tmp_path / "a.nc")
    b = write_new(new_cds(ntime=2, start="2020-01-05", res=0.5), tmp_path / "b.nc")
    with pytest.raises(InputError, match=r"b.nc: grid differs across files: 8x12 latitude 30..33.5 .* in .*a.nc"):
        ingest(spec(), tmp_path / "o.zarr", [a, b])
    assert not (tmp_path / "o.zarr").exists()


def test_error_no_times_selected_and_empty_range(tmp_path):
    f = write_new(new_cds(ntime=4), tmp_path / "a.nc")
    with pytest.raises(
        InputError, match=r"no times selected by dates 2021-01-01..2021-01-31 .*a.nc: 2020-01-01T00..2020-01-01T18"
    ):
        ingest(spec(dates={"start": "2021-01-01", "end": "2021-01-31"}), tmp_path / "o.zarr", [f])
    with pytest.raises(InputError, match="no times selected"):
        ingest(spec(hours=[3]), tmp_path / "o.zarr", [f])
    with pytest.raises(ConfigError, match=r"'dates': empty date range"):
        ingest(spec(dates={"start": "2020-01-02", "end": "2020-01-01"}), tmp_path / "o.zarr", [f])
    assert not (tmp_path / "o.zarr").exists()


def test_error_unreadable_file_and_missing_level(tmp_path):
    bad = tmp_path / "broken.nc"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    with pytest.raises(InputError, match=r"broken.nc: cannot read as netcdf4"):
        ingest(spec(), tmp_path / "o.zarr", [bad])
    junk = tmp_path / "junk.dat"
    junk.write_text("hello")
    with pytest.raises(InputError, match=r"junk.dat: not a netCDF, GRIB or zarr input"):
        ingest(spec(), tmp_path / "o.zarr", [junk])
    f = write_new(new_cds(ntime=2), tmp_path / "a.nc")
    with pytest.raises(InputError, match=r"a.nc: pressure level 300 hPa .*levels: \[1000.0, 850.0, 500.0\]"):
        ingest(spec(levels=[300]), tmp_path / "o.zarr", [f])
    assert not (tmp_path / "o.zarr").exists()


@pytest.mark.slow
def test_kill_during_zarr_write_leaves_nothing_complete(tmp_path):
    """kill -9 mid-stream: the store never appears under its name; a rerun builds it."""
    rng = np.random.default_rng(0)
    nt, ny, nx = 64, 90, 180
    ds = xr.Dataset(
        {
            "t": (
                ("valid_time", "pressure_level", "latitude", "longitude"),
                rng.normal(250, 10, (nt, 2, ny, nx)).astype(np.float32),
            )
        },
        coords={
            "valid_time": np.arange(nt).astype("timedelta64[h]") + np.datetime64("2020-01-01", "ns"),
            "pressure_level": [850.0, 500.0],
            "latitude": np.linspace(89, -89, ny),
            "longitude": np.arange(nx) * 2.0,
        },
    )
    f = write_new(ds, tmp_path / "big.nc")
    out = tmp_path / "k.zarr"
    args = [
        "era5-ingest",
        "--spec",
        json.dumps(spec(variables=["t"], chunks={"time": 1}, stream={"block_mb": 0.2, "workers": 1})),
        "--out",
        str(out),
        str(f),
    ]
    proc = subprocess.Popen([bin_path("scorebridge"), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    partial = None
    while time.time() < deadline and proc.poll() is None:
        found = [
            p for p in tmp_path.glob(".k.zarr.partial-*") if (p / "t").exists() and len(list((p / "t").rglob("*"))) > 6
        ]
        if found:
            partial = found[0]
            break
        time.sleep(0.05)
    assert partial is not None and proc.poll() is None, (
        "the ingestion finished before it could be killed; make the input larger"
    )
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "a killed write must not look complete"
    assert partial.exists()
    ingest(spec(variables=["t"], chunks={"time": 1}), out, [f])  # the rerun (in-process: quicker)
    done = xr.open_zarr(out, consolidated=False)
    assert done.t.shape == (nt, 2, ny, nx) and "normalisation" in done.attrs
    assert not partial.exists(), "the rerun removes the killed run's leftovers"


# --- the workflow ------------------------------------------------------------------------


@pytest.mark.slow
def test_snakemake_builds_era5_targets(tmp_path):
    """End to end through Snakemake: a synthetic dataset (fetch + ingest) and a local one
    (the real GRIB), on a tiny config in a scratch working directory."""
    try:
        grib = shared_file("era5", "era5-single-level-scalar-time.grib")
    except pytest.skip.Exception:
        grib = None
    cfg = {
        "era5": {
            "tiny": {
                "source": "synthetic",
                "variables": ["t", "u", "v", "t2m"],
                "levels": [850, 500],
                "synthetic": {"nlat": 16, "nlon": 16, "ntime": 8, "seed": 1},
                "chunks": {"time": 4},
            }
        }
    }
    targets = ["results/data/era5/tiny.zarr"]
    if grib is not None:
        cfg["era5"]["sample"] = {"source": "local", "variables": ["t2m"], "files": [str(grib)], "area": [50, 0, 40, 10]}
        targets.append("results/data/era5/sample.zarr")
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(cfg))
    run_snakemake("-s", ROOT / "Snakefile", "--cores", "2", *targets, cwd=tmp_path)
    ds = xr.open_zarr(tmp_path / targets[0], consolidated=False)
    assert ds.t.shape == (8, 2, 16, 16) and ds.t2m.shape == (8, 16, 16)
    assert json.loads(ds.attrs["provenance"])["inputs"][0]["made_by"]["source"] == "synthetic"
    assert (tmp_path / "results" / "raw" / "era5" / "tiny.nc").exists()
    if grib is not None:
        s = xr.open_zarr(tmp_path / targets[1], consolidated=False)
        assert s.t2m.shape == (1, 41, 41) and s.longitude.values[0] == 0.0
    again = run_snakemake("-s", ROOT / "Snakefile", "--cores", "2", *targets, "-n", cwd=tmp_path)
    assert "Nothing to be done" in again.stdout + again.stderr
