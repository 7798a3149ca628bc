"""End to end on a tiny prior: sr-sample and sr-evaluate through the CLI; bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import xarray as xr

from conftest import run_cli

LEVELS = [850.0, 500.0]


def _era5(path, ntime=12, n=16, seed=0):
    """A contract ERA5 zarr of smooth random fields (t, u at 850/500 hPa)."""
    rng = np.random.default_rng(seed)
    lat = np.linspace(40.0, 47.5, n)
    lon = np.linspace(-5.0, 2.5, n)
    y, x = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    data = {}
    for v, base, amp in [("t", 270.0, 5.0), ("u", 5.0, 8.0)]:
        arr = np.empty((ntime, 2, n, n), np.float32)
        for t in range(ntime):
            for lv in range(2):
                f = np.zeros((n, n))
                for kx, ky in [(1, 0), (0, 1), (1, 1), (2, 1), (3, 2)]:
                    ph = rng.uniform(0, 2 * np.pi)
                    f += rng.standard_normal() / (kx + ky) * np.cos(2 * np.pi * (kx * x + ky * y) / n + ph)
                arr[t, lv] = base - 20 * lv + amp * f
        data[v] = (("time", "level", "latitude", "longitude"), arr)
    ds = xr.Dataset(
        data,
        coords={
            "time": np.datetime64("2021-01-01") + np.arange(ntime) * np.timedelta64(6, "h"),
            "level": LEVELS,
            "latitude": lat,
            "longitude": lon,
        },
    )
    norm = {
        v: {
            "mean": [float(ds[v].isel(level=i).mean()) for i in range(2)],
            "std": [float(ds[v].isel(level=i).std()) for i in range(2)],
        }
        for v in ("t", "u")
    }
    ds.attrs = {"normalisation": json.dumps(norm), "provenance": "{}"}
    ds.chunk({"time": 1}).to_zarr(path, consolidated=False)
    return ds


def _obs(path, ds, n_stations=6, seed=1, extra=None):
    """Collocated soundings at 850/700/500 hPa: values interpolated from the truth (scipy), some missing."""
    from scipy.interpolate import RegularGridInterpolator

    rng = np.random.default_rng(seed)
    lat, lon = ds.latitude.values, ds.longitude.values
    slat = rng.uniform(lat[1], lat[-2], n_stations)
    slon = rng.uniform(lon[1], lon[-2], n_stations)
    rows = []
    for ti, t in enumerate(ds.time.values):
        for s in range(n_stations):
            for p in (850.0, 700.0, 500.0):
                row = {
                    "station": f"ST{s:02d}",
                    "time": t,
                    "time_index": ti,
                    "latitude": slat[s],
                    "longitude": slon[s],
                    "pressure": p * 100,
                }
                for v in ("t", "u"):
                    f = ds[v].isel(time=ti).values[::-1]  # 500, 850: ascending log-p
                    row[v] = float(
                        RegularGridInterpolator((np.log([500.0, 850.0]), lat, lon), f)([np.log(p), slat[s], slon[s]])[0]
                    )
                row["v"] = np.nan
                row["z"] = np.nan
                rows.append(row)
    rows += extra or []
    obs = xr.Dataset({k: ("obs", np.array([r[k] for r in rows])) for k in rows[0]})
    obs["station"] = obs["station"].astype(object)
    obs.to_zarr(path, consolidated=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """ERA5 + obs + a prior trained for a few steps (shared by the tests of this module)."""
    from scorebridge.sr.options import resolve_spec
    from scorebridge.sr.train import train_prior

    d = tmp_path_factory.mktemp("sr")
    ds = _era5(d / "era5.zarr")
    _obs(d / "obs.zarr", ds)
    spec = {
        "era5": "tiny",
        "seed": 0,
        "train": {
            "steps": 20,
            "batch_size": 4,
            "log_every": 10,
            "checkpoint_every": 0,
            "threads": 1,
            "model": {"base": 8, "mults": [1, 2]},
            "split": {"train_fraction": 0.75, "validation": 2},
        },
    }
    os.environ["SCOREBRIDGE_NO_PROGRESS"] = "1"
    train_prior(resolve_spec(spec), d / "era5.zarr", None, d / "checkpoint.pt")
    spec["sample"] = {
        "members": 3,
        "steps": 4,
        "solver": "heun",
        "max_times": 2,
        "coarse": {"factor": 4},
        "compare_members": 2,
        "calibrate": {"times": 2, "gammas": [0.25, 1.0], "gap_hours": 6},
    }
    return d, spec


def _sample(d, spec, out="samples.zarr", obs=True, check=True):
    args = [
        "sr-sample",
        "--spec",
        json.dumps(spec),
        "--experiment",
        "tiny",
        "--era5",
        d / "era5.zarr",
        "--checkpoint",
        d / "checkpoint.pt",
        "--out",
        d / out,
        "--device",
        "cpu",
    ]
    if obs:
        args += ["--obs", d / "obs.zarr"]
    return run_cli(*args, check=check)


def test_cli_sample_and_evaluate(tiny):
    d, spec = tiny
    _sample(d, spec)
    s = xr.open_zarr(d / "samples.zarr", consolidated=False)
    assert s["t"].dims == ("time", "member", "level", "latitude", "longitude") and s["t"].shape == (2, 3, 2, 16, 16)
    assert s["t_coarse"].shape == (2, 2, 4, 4)
    assert set(s["conditioning"].values) == {"coarse", "radiosondes"}
    sampling = json.loads(s.attrs["sampling"])
    assert sampling["cost"]["forward_per_sample"] == 7 and sampling["cost"]["backward_per_sample"] == 7
    assert set(sampling["calibration"]["gamma"]) == {"coarse", "radiosondes"} and set(
        sampling["calibration"]["gamma"].values()
    ) <= {0.25, 1.0}
    assert np.all(np.asarray(sampling["inflation"]) > 0) and len(sampling["inflation"]) == 4
    assert len(sampling["withheld_stations"]) == 2  # round(0.25 * 6)
    # the spread is calibrated on the validation block: the last 2 times of the training period, not trained on
    from scorebridge.sr.data import open_era5, split_times
    from scorebridge.sr.options import resolve_spec

    train_idx, val_idx, test_idx = split_times(
        open_era5(d / "era5.zarr"), resolve_spec(spec).train.split, validation=True
    )
    era5_times = xr.open_zarr(d / "era5.zarr", consolidated=False)["time"].values
    assert sampling["calibration"]["on"] == "validation" and len(val_idx) == 2 and val_idx[0] > train_idx[-1]
    assert sampling["calibration"]["times"] == [str(t) for t in era5_times[val_idx].astype("datetime64[s]")]
    # one modality after the other: 2 gammas x (coarse, coarse + radiosondes), one chosen each
    assert (
        len(sampling["calibration"]["table"]) == 4
        and sum(bool(r.get("chosen")) for r in sampling["calibration"]["table"]) == 2
    )
    # held-out times are scored only `gap_hours` (6 h = 1 step) after the calibration times
    assert sampling["gap"]["steps"] == 1 and s["time_index"].values.min() > val_idx.max() + 1
    # the coarse-only reference ensemble is sampled in full beside coarse + radiosondes
    assert sampling["reference"]["conditioning"] == ["coarse"] and s["t_coarse_only"].shape == s["t"].shape
    # the coarse input is the block average of the truth
    truth = xr.open_zarr(d / "era5.zarr", consolidated=False)["t"].isel(time=s["time_index"].values[0]).values
    assert np.allclose(s["t_coarse"].values[0, 0, 1, 2], truth[0, 4:8, 8:12].mean(), atol=1e-3)
    # members vs mean/spread
    assert np.allclose(s["t"].mean("member").values, s["t_mean"].values, atol=1e-3)
    assert np.all(np.isfinite(s["t"].values))

    run_cli(
        "sr-evaluate",
        "--spec",
        json.dumps(spec),
        "--experiment",
        "tiny",
        "--era5",
        d / "era5.zarr",
        "--obs",
        d / "obs.zarr",
        "--samples",
        d / "samples.zarr",
        "--figures",
        d / "figures",
        "--out",
        d / "metrics.json",
    )
    m = json.loads((d / "metrics.json").read_text())
    mm = m["metrics"]
    for key in (
        "rmse/t/850",
        "rmse/t/850/bicubic",
        "rmse/u/500/bilinear",
        "rmse/t/500/nearest_radiosonde",
        "mae/t/850",
        "bias/u/850",
        "spread_skill/t/850",
        "crps/u/500",
        "spectral_ratio/t/850/bicubic",
        "withheld_rmse/t/coarse+radiosondes",
        "withheld_rmse/u/coarse",
        "withheld_rmse/t/nearest_radiosonde",
        "summary/rmse_ratio",
        "cost/forward_per_sample",
    ):
        assert key in mm and mm[key] is not None, key
    assert sum(m["rank_histogram"]["t/850"]) == 2 * 16 * 16
    # the fair scorecard: coarse-only vs bicubic, + radiosondes vs coarse-only, pooled; raw and calibrated spread-skill
    for key in (
        "summary/rmse_ratio",
        "summary/rmse_ratio_radiosondes",
        "rmse/t/850/coarse_only",
        "rmse_ratio_radiosondes/u/500",
        "spread_skill_raw/t/850",
        "spread_skill_raw/t/850/coarse_only",
        "summary/spread_skill_raw",
        "summary/spread_skill/coarse_only",
    ):
        assert key in mm and np.isfinite(mm[key]), key
    assert mm["rmse_ratio/t/850"] == pytest.approx(mm["rmse/t/850/coarse_only"] / mm["rmse/t/850/bicubic"])
    assert m["scorecard"]["main"] == "coarse+radiosondes" and "coarse / bicubic" in m["scorecard"]["pooled"]
    assert {p.name for p in (d / "figures").iterdir()} >= {
        "maps.png",
        "spectra.png",
        "rank_histogram.png",
        "withheld_radiosondes.png",
    }


def test_sample_bad_input(tiny, tmp_path):
    d, spec = tiny
    # radiosondes asked for without observations
    bad = json.loads(json.dumps(spec))
    bad["sample"]["conditioning"] = ["radiosondes"]
    proc = _sample(d, bad, out="x.zarr", obs=False, check=False)
    assert proc.returncode == 1 and "needs collocated observations" in proc.stderr
    # a factor that does not divide the grid: error when asked, warning + padding by default
    bad = json.loads(json.dumps(spec))
    bad["sample"].update(
        {"conditioning": ["coarse"], "coarse": {"factor": 3, "pad": "error"}, "calibrate": {"enabled": False}}
    )
    proc = _sample(d, bad, out="x.zarr", obs=False, check=False)
    assert proc.returncode == 1 and "does not divide" in proc.stderr
    assert not (d / "x.zarr").exists()
    # a checkpoint whose channels are not in the ERA5 store
    other = tmp_path / "other.zarr"
    ds = xr.open_zarr(d / "era5.zarr", consolidated=False).rename({"u": "v"})
    ds.to_zarr(other, consolidated=False)
    proc = run_cli(
        "sr-sample",
        "--spec",
        json.dumps(spec),
        "--era5",
        other,
        "--checkpoint",
        d / "checkpoint.pt",
        "--out",
        tmp_path / "y.zarr",
        "--device",
        "cpu",
        check=False,
    )
    assert proc.returncode == 1 and "not in this ERA5 store" in proc.stderr


def test_outside_and_all_missing_soundings(tiny, tmp_path):
    from scorebridge import options
    from scorebridge.sr.observations import radiosonde_observation, read_obs
    from scorebridge.sr.options import RadiosondeOptions

    d, _ = tiny
    ds = xr.open_zarr(d / "era5.zarr", consolidated=False)
    t0 = ds.time.values[0]
    extra = [
        {
            "station": "FAR",
            "time": t0,
            "time_index": 0,
            "latitude": 80.0,
            "longitude": 0.0,
            "pressure": 85000.0,
            "t": 250.0,
            "u": 1.0,
            "v": np.nan,
            "z": np.nan,
        },
        {
            "station": "EMPTY",
            "time": t0,
            "time_index": 0,
            "latitude": 44.0,
            "longitude": 0.0,
            "pressure": 85000.0,
            "t": np.nan,
            "u": np.nan,
            "v": np.nan,
            "z": np.nan,
        },
    ]
    _obs(tmp_path / "obs.zarr", ds.load(), n_stations=2, extra=extra)
    table = read_obs(tmp_path / "obs.zarr", ["t", "u"])
    chans = [("t", 850.0), ("t", 500.0), ("u", 850.0), ("u", 500.0)]
    std = np.ones(4, np.float32)
    cfg = {"sigma_y": {"t": 0.5}, "sigma_y_relative": 0.1, "gamma": 0.1}
    ob, info = radiosonde_observation(
        table,
        ds.time.values[:2],
        chans,
        ds.latitude.values,
        ds.longitude.values,
        std,
        options.build(RadiosondeOptions, cfg),
    )
    assert info["n_outside_horizontal"] == 2 and info["n_all_missing_soundings"] == 1 and info["n_missing"] >= 2
    assert ob.y.shape[0] == 2 and int(ob.mask().sum()) == info["n_used"]
    # t uses its physical sigma_y, u the relative one (0.1 x std = 0.1 here)
    assert np.allclose(sorted(set(np.round(ob.sigma_y[ob.mask()].numpy().astype(float), 4))), [0.1, 0.5])
    with pytest.raises(Exception, match="FAR"):
        radiosonde_observation(
            table,
            ds.time.values[:1],
            chans,
            ds.latitude.values,
            ds.longitude.values,
            std,
            options.build(RadiosondeOptions, {**cfg, "outside": "error"}),
        )
