"""Self-describing outputs: the SR figures (coastlines, radiosondes, spread-skill, RMSE by
level, the loss curve), samples.zarr's CF attributes, the IGRA store's CF discrete sampling
geometry, and the figure lists of the rules against the code and the captions."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from conftest import ROOT
from test_igra import make_era5
from test_igra_derived import derived_files  # noqa: F401 (fixture)

cf_xarray = pytest.importorskip("cf_xarray")


# --------------------------------------------------------------------------- coastlines


def test_coastlines_come_from_the_installed_package_in_the_domains_convention():
    from scorebridge.coastlines import coastline_segments, data_dir, gshhs_polygons

    assert (data_dir() / "gshhs_l.dat").is_file()
    kinds = {k for k, _ in gshhs_polygons("c")}
    assert {1, 2} <= kinds
    # the synthetic default domain (lat0 30, lon0 250 in 0..360, 32 x 0.5 deg): lakes and reservoirs
    default = coastline_segments((250.0, 265.5), (30.0, 45.5))
    assert len(default) > 10
    # a larger domain in that convention: Hudson Bay, the Great Lakes
    segs = coastline_segments((250.0, 282.0), (30.0, 62.0))
    assert len(segs) > 20
    pts = np.concatenate(segs)
    assert pts[:, 0].min() < 282 and pts[:, 0].max() > 250 and pts[:, 0].max() <= 360  # shifted by +360
    inside = (pts[:, 0] >= 250) & (pts[:, 0] <= 282) & (pts[:, 1] >= 30) & (pts[:, 1] <= 62)
    assert inside.sum() > 500
    # the same place in -180..180
    west = np.concatenate(coastline_segments((-110.0, -78.0), (30.0, 62.0)))
    assert west.shape == pts.shape and np.allclose(west + [360.0, 0.0], pts)
    # open ocean far from land: nothing
    assert coastline_segments((-140.0, -135.0), (-45.0, -40.0)) == []


def test_draw_coastlines_keeps_the_axes_limits():
    import matplotlib.pyplot as plt

    from scorebridge.coastlines import draw_coastlines

    fig, ax = plt.subplots()
    ax.imshow(np.zeros((8, 8)), extent=[-10, 30, 35, 60], origin="lower")
    before = (ax.get_xlim(), ax.get_ylim())
    assert draw_coastlines(ax, np.linspace(-10, 30, 8), np.linspace(35, 60, 8)) > 10  # Europe
    assert (ax.get_xlim(), ax.get_ylim()) == before
    plt.close(fig)


# --------------------------------------------------------------------------- SR figures


def test_binned_spread_error_matches_the_spread_skill_ratio():
    from scorebridge.sr import metrics as M
    from scorebridge.sr.diagnostic_figures import binned_spread_error

    rng = np.random.default_rng(0)
    T, N, H, W = 6, 32, 20, 24  # enough members that binning by the sampled variance selects little noise
    lat = np.linspace(-60, 60, H)
    sigma = np.exp(rng.normal(0, 0.7, (T, 1, H, W)))  # spread varies from point to point
    centre = rng.normal(0, 1, (T, 1, H, W))
    ens = centre + sigma * rng.normal(size=(T, N, H, W))
    truth = (centre + sigma * rng.normal(size=(T, 1, H, W)))[:, 0]  # calibrated: truth is one more member
    sp, err, share = binned_spread_error(ens, truth, lat, bins=5)
    assert len(sp) == 5 and np.all(np.diff(sp) > 0) and share.sum() == pytest.approx(1.0)
    assert np.allclose(err / sp, 1.0, atol=0.15)  # on the diagonal, bin by bin
    pooled_spread = np.sqrt(np.sum(share * sp**2))
    pooled_err = np.sqrt(np.sum(share * err**2))
    ratio = M.spread_skill(ens[:, :, None], truth[:, None], lat)[0]
    assert pooled_spread / pooled_err == pytest.approx(ratio, rel=1e-6)
    # an under-dispersive ensemble sits above the diagonal
    sp2, err2, _ = binned_spread_error(centre + 0.3 * sigma * rng.normal(size=(T, N, H, W)), truth, lat)
    assert np.all(err2 > sp2)


def _obs_store(path: Path, times, stations: dict[str, tuple[float, float]]) -> None:
    """A collocated-observations store (the igra-collocate contract) with one level per station and time."""
    rows = [(s, t, la, lo) for t in times for s, (la, lo) in stations.items()]
    n = len(rows)
    xr.Dataset(
        {
            "station": ("obs", np.array([r[0] for r in rows], dtype=object)),
            "time": ("obs", np.array([r[1] for r in rows], dtype="datetime64[ns]")),
            "latitude": ("obs", np.array([r[2] for r in rows])),
            "longitude": ("obs", np.array([r[3] for r in rows])),
            "pressure": ("obs", np.full(n, 85000.0)),
            "t": ("obs", np.full(n, 280.0)),
        }
    ).to_zarr(path, mode="w", consolidated=False)


def test_write_figures_writes_every_declared_figure(tmp_path):
    import matplotlib.image as mpimg

    from scorebridge.sr import metrics as M
    from scorebridge.sr.diagnostic_figures import rmse_table
    from scorebridge.sr.figures import EVALUATE_FIGURES, station_positions, write_figures

    rng = np.random.default_rng(1)
    names = ["t/850", "t/500", "t2m"]
    T, N, C, H, W, k = 2, 3, 3, 8, 8, 2
    lat, lon = np.linspace(37.5, 30.0, H), np.linspace(250.0, 257.0, W)  # latitude stored north to south, 0..360
    truth = rng.normal(size=(T, C, H, W))
    ens = truth[:, None] + rng.normal(size=(T, N, C, H, W))
    mean = ens.mean(1)
    coarse = truth.reshape(T, C, H // k, k, W // k, k).mean((3, 5))
    base = {"bicubic": np.repeat(np.repeat(coarse, k, -2), k, -1)}
    metrics = {}
    for i, c in enumerate(names):
        metrics[f"rmse/{c}"] = float(M.rmse(mean, truth, lat)[i])
        metrics[f"rmse/{c}/bicubic"] = float(M.rmse(base["bicubic"], truth, lat)[i])
        metrics[f"spread_skill/{c}"] = float(M.spread_skill(ens, truth, lat)[i])
    metrics["rmse/t/850/scorecard"] = None  # not a number: left out
    assert rmse_table(metrics, names)["t/850"] == {
        "posterior_mean": metrics["rmse/t/850"],
        "bicubic": metrics["rmse/t/850/bicubic"],
    }
    spectra = {c: {"k": [1.0, 2.0, 3.0], "truth": [3.0, 2.0, 1.0], "members": [3.0, 2.0, 0.5]} for c in names}
    hist = [np.ones(N + 1) for _ in names]
    times = np.array(["2020-01-01T00", "2020-01-01T06"], dtype="datetime64[ns]")
    obs = tmp_path / "obs.zarr"
    _obs_store(obs, times, {"A": (31.0, -108.0), "B": (35.0, -105.0), "HELD": (33.0, 254.5)})
    pos = station_positions(obs, ["t"], times[1], ["HELD"], lon)
    assert pos["used"][:, 0].tolist() == [252.0, 255.0] and pos["withheld"].tolist() == [[254.5, 33.0]]  # -108 -> 252
    sampling = {"withheld_stations": ["HELD"], "conditioning": ["coarse", "radiosondes"]}
    paths = write_figures(
        tmp_path / "figures",
        truth=truth,
        coarse=coarse,
        mean=mean,
        ens=ens,
        base=base,
        names=names,
        lat=lat,
        lon=lon,
        factor=k,
        hist=hist,
        spectra=spectra,
        metrics=metrics,
        sampling=sampling,
        times=times,
        obs_path=obs,
        map_time=1,
        map_channels=2,
    )
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == sorted(f"{n}.png" for n in EVALUATE_FIGURES)
    assert [p.stem for p in paths] == list(EVALUATE_FIGURES)
    for p in paths:
        assert mpimg.imread(p).shape[0] > 100, p  # a real image
    # without observations the radiosonde figure still exists and says why it is empty
    write_figures(
        tmp_path / "noobs",
        truth=truth,
        coarse=coarse,
        mean=mean,
        ens=ens,
        base=base,
        names=names,
        lat=lat,
        lon=lon,
        factor=k,
        hist=hist,
        spectra=spectra,
        metrics=metrics,
        sampling={"withheld_stations": [], "conditioning": ["coarse"]},
        times=times,
        obs_path=None,
        map_time=0,
        map_channels=1,
    )
    assert sorted(p.name for p in (tmp_path / "noobs").iterdir()) == sorted(f"{n}.png" for n in EVALUATE_FIGURES)


def test_training_loss_figure(tmp_path):
    from scorebridge.sr.diagnostic_figures import training_loss

    out = training_loss([(s, float(np.exp(-s / 20))) for s in range(120)], tmp_path / "figures" / "training_loss.png")
    assert out.is_file() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert training_loss([], tmp_path / "empty.png").is_file()  # a resumed, finished run: the figure says so


# --------------------------------------------------------------------------- samples.zarr: CF


def test_samples_store_cf_attributes(tmp_path):
    from scorebridge.sr.store import open_samples, samples_dataset, write_samples

    rng = np.random.default_rng(2)
    channels = [("t", 850.0), ("t", 500.0), ("u", 850.0), ("u", 500.0), ("t2m", None)]
    T, N, H, W, k = 2, 3, 10, 12, 4
    lat, lon = np.linspace(40.0, 35.5, H), np.linspace(-110.0, -104.5, W)
    era5 = make_era5(nt=4, nlat=H, nlon=W)
    era5["t"].attrs.update(
        units="K", long_name="Temperature", standard_name="air_temperature"
    )  # as the ERA5 store has them
    era5["u"].attrs.update(units="m s**-1", long_name="U component of wind")  # no standard_name: ERA5's own is used
    ens = rng.normal(size=(T, N, 5, H, W))
    coarse = rng.normal(size=(T, 5, 3, 3))
    ds = samples_dataset(
        ens,
        coarse,
        channels,
        times=era5["time"].values[:T],
        time_index=np.arange(T),
        lat=lat,
        lon=lon,
        factor=k,
        compare=[["coarse"], []],
        compare_means=[ens.mean(1), ens.mean(1)],
        reference=ens,
        attrs_from=era5,
    )
    write_samples(
        tmp_path / "samples.zarr",
        ds,
        sampling={"x": 1},
        channels=channels,
        provenance={"created": "2026-01-01T00:00:00Z"},
    )
    s, sampling, chans = open_samples(tmp_path / "samples.zarr")
    assert sampling == {"x": 1} and chans == channels
    assert s.attrs["Conventions"] == "CF-1.10" and "sr-sample" in s.attrs["history"] and s.attrs["title"]
    # every variable: units (coordinates of strings and time excepted), long_name
    for name, var in s.variables.items():
        if name in ("time", "conditioning"):
            continue
        assert "units" in var.attrs, name
    for name, var in s.variables.items():
        assert var.attrs.get("long_name"), name
    # standard names where one exists, per cf_xarray
    std = s.cf.standard_names
    assert set(std["air_temperature"]) == {
        "t",
        "t_mean",
        "t_spread",
        "t_coarse",
        "t_coarse_only",
        "t_mean_compare",
        "t2m",
        "t2m_mean",
        "t2m_spread",
        "t2m_coarse",
        "t2m_coarse_only",
        "t2m_mean_compare",
    }
    assert "u_mean" in std["eastward_wind"] and std["realization"] == ["member"] and std["air_pressure"] == ["level"]
    assert set(std["latitude"]) == {"latitude", "latitude_coarse"} and set(std["longitude"]) == {
        "longitude",
        "longitude_coarse",
    }
    assert s["t"].attrs["units"] == "K" and s["u_spread"].attrs["units"] == "m s**-1"
    # statistics over members and the coarse block averages
    assert (
        s["t_mean"].attrs["cell_methods"] == "realization: mean"
        and s["u_mean_compare"].attrs["cell_methods"] == "realization: mean"
    )
    assert s["t_spread"].attrs["cell_methods"] == "realization: standard_deviation"
    assert s["t_coarse"].attrs["cell_methods"] == "latitude_coarse: longitude_coarse: mean"
    assert "cell_methods" not in s["t"].attrs
    for name in s.data_vars:
        method = s[name].attrs.get("cell_methods")
        if method:  # every name in cell_methods is a dimension of the variable or a standard name
            for part in re.findall(r"(\w+):", method):
                assert part in s[name].dims or part in ("realization", "time"), (name, method)
    # the realization axis, the axes, the coarse field's own coordinates and their bounds
    assert s.cf["realization"].name == "member"
    assert s.cf.axes == {"X": ["longitude"], "Y": ["latitude"], "Z": ["level"], "T": ["time"]}
    assert s.cf.bounds == {
        "latitude_coarse": ["latitude_coarse_bounds"],
        "longitude_coarse": ["longitude_coarse_bounds"],
    }
    assert s["t_coarse"].dims[-2:] == ("latitude_coarse", "longitude_coarse")
    b = s["latitude_coarse_bounds"].values
    c = s["latitude_coarse"].values
    assert b.shape == (3, 2) and np.all((c - b[:, 0]) * (c - b[:, 1]) <= 0)  # each centre between its edges
    assert b[0, 0] == pytest.approx(40.25) and b[-1, 1] == pytest.approx(
        35.25
    )  # the grid's outer edges (0.5 deg cells)
    assert np.allclose(b[1:, 0], b[:-1, 1])  # contiguous cells
    assert s["level"].attrs["positive"] == "down" and s["level"].attrs["units"] == "hPa"


# --------------------------------------------------------------------------- IGRA: CF DSG


def _check_dsg(obs, snd):
    assert obs.attrs["featureType"] == "profile" and obs.attrs["Conventions"] == "CF-1.10"
    assert snd.cf.cf_roles == {"profile_id": ["sounding_id"]}
    ids = snd["sounding_id"].values
    assert len(set(ids)) == len(ids)
    assert snd["nlevels"].attrs["sample_dimension"] == "obs"
    n = snd["nlevels"].values
    assert n.sum() == obs.sizes["obs"]  # contiguous ragged array: the counts cover the obs table in order
    assert np.array_equal(np.r_[0, np.cumsum(n)[:-1]], snd["first"].values)
    first = snd["first"].values
    assert obs["station"].values[first].tolist() == snd["station"].values.tolist()
    assert [i.split("@")[0] for i in ids] == snd["station"].values.tolist()
    assert obs["pressure"].attrs == {
        "units": "Pa",
        "long_name": obs["pressure"].attrs["long_name"],
        "standard_name": "air_pressure",
        "positive": "down",
    }
    for name, var in list(obs.variables.items()) + list(snd.variables.items()):
        assert var.attrs.get("long_name"), name
    for name in ("latitude", "longitude", "time"):
        assert obs[name].attrs["standard_name"] == name and snd[name].attrs["standard_name"] == name
    assert snd["latitude"].attrs["units"] == "degrees_north" and snd["longitude"].attrs["units"] == "degrees_east"


def test_igra_store_is_a_cf_profile_ragged_array(tmp_path):
    from scorebridge.cli import main
    from scorebridge.data.igra.ingest import open_igra

    era5 = tmp_path / "era5.zarr"
    make_era5(era5)
    spec = '{"source": "synthetic", "synthetic": {"n_stations": 3, "seed": 1}}'
    assert main(["igra-fetch", "--spec", spec, "--out", str(tmp_path / "raw"), str(era5)]) == 0
    assert main(["igra-ingest", "--spec", spec, "--out", str(tmp_path / "igra.zarr"), str(tmp_path / "raw")]) == 0
    obs, snd = open_igra(tmp_path / "igra.zarr")
    _check_dsg(obs, snd)
    expect = {
        "temperature": ("air_temperature", "K"),
        "gph": ("geopotential_height", "m"),
        "rh": ("relative_humidity", "%"),
        "dpd": ("dew_point_depression", "K"),
        "wdir": ("wind_from_direction", "degree"),
        "wspd": ("wind_speed", "m s-1"),
        "u": ("eastward_wind", "m s-1"),
        "v": ("northward_wind", "m s-1"),
    }
    for name, (std, units) in expect.items():
        assert (obs[name].attrs["standard_name"], obs[name].attrs["units"]) == (std, units), name
    assert obs["etime"].attrs["units"] == "s" and "standard_name" not in obs["etime"].attrs
    assert (
        snd["sounding_id"].values[0]
        == f"{snd['station'].values[0]}@{pd.Timestamp(snd['time'].values[0]):%Y-%m-%dT%H:%M}"
    )


def test_igra_derived_store_is_a_cf_profile_ragged_array(derived_files):  # noqa: F811
    from scorebridge.data.igra.ingest import ingest, open_igra

    tmp_path, files, stations = derived_files
    ingest({"source": "local", "station_list": str(stations)}, files, tmp_path / "igra.zarr")
    obs, snd = open_igra(tmp_path / "igra.zarr")
    _check_dsg(obs, snd)
    assert snd["cape"].attrs["standard_name"] == "atmosphere_convective_available_potential_energy"
    assert obs["potential_temperature"].attrs["standard_name"] == "air_potential_temperature"


# --------------------------------------------------------------------------- rules, code and captions agree


def _smk_list(name: str) -> list[str]:
    text = (ROOT / "workflow" / "rules" / "common.smk").read_text()
    m = re.search(rf"^{name} = \[(.*?)\]$", text, flags=re.M | re.S)
    assert m, f"workflow/rules/common.smk: no list {name}"
    return re.findall(r'"(\w+)"', m.group(1))


def test_declared_figures_match_the_code_and_each_has_its_caption():
    from scorebridge.sr.figures import EVALUATE_FIGURES, TRAINING_FIGURE

    assert _smk_list("SR_EVALUATE_FIGURES") == list(EVALUATE_FIGURES)
    assert _smk_list("SR_TRAIN_FIGURES") == [TRAINING_FIGURE]
    bridge = _smk_list("BRIDGE_EVALUATE_FIGURES")
    written = re.findall(r'tmp / "(\w+)\.png"', (ROOT / "src" / "scorebridge" / "bridge" / "cli.py").read_text())
    assert sorted(written) == sorted(bridge), "bridge-evaluate writes other figures than bridge_evaluate declares"
    report = ROOT / "workflow" / "report"
    for section, names in (("sr", [TRAINING_FIGURE, *EVALUATE_FIGURES]), ("bridge", bridge)):
        captions = sorted(p.stem for p in (report / section).glob("*.rst"))
        assert captions == sorted(names), f"workflow/report/{section}/: captions {captions}, figures {sorted(names)}"
        for name in names:
            text = (report / section / f"{name}.rst").read_text()
            assert "{{ snakemake.wildcards.experiment }}" in text and f"figures/{name}.png" in text, name
    for rule_file in ("sr.smk", "bridge.smk"):
        text = (ROOT / "workflow" / "rules" / rule_file).read_text()
        assert "patterns=" not in text, f"{rule_file}: figures are declared one by one, not as a pattern in a directory"
