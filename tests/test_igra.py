"""IGRA v2: the fixed-width parser on the real excerpt, the station list, filters, errors,
the http source against a loopback server, the synthetic source, and the zarr ingest."""

from __future__ import annotations

import http.server
import io
import threading
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from conftest import run_cli, shared_file
from scorebridge.cli import main
from scorebridge.data.igra.filters import filter_igra, in_area
from scorebridge.data.igra.format import (
    DATA_COLUMNS,
    HEADER_COLUMNS,
    format_data_record,
    format_header,
    format_station_list,
    wind_components,
    wind_speed_direction,
)
from scorebridge.data.igra.ingest import ingest, open_igra
from scorebridge.data.igra.parse import parse_igra, parse_station_list, read_igra, read_station_list
from scorebridge.data.igra.sources import select_stations
from scorebridge.data.igra.synthetic import synthesize_soundings
from scorebridge.errors import ConfigError, InputError

EXCERPT = ("igra", "USM00074794-data-exampleportion.txt")
STATION_LIST = ("igra", "igra2-station-list.txt")


def make_era5(
    path: Path | None = None,
    *,
    nt=8,
    nlat=10,
    nlon=12,
    lat0=30.0,
    lon0=-110.0,
    levels=(850.0, 500.0),
    with_z=True,
    with_q=False,
    linear=False,
    seed=0,
) -> xr.Dataset:
    """A small dataset in the ERA5 zarr contract (time, level, latitude, longitude), 0.5° grid.

    `linear`: fields linear in latitude and longitude (bilinear sampling is then exact).
    """
    rng = np.random.default_rng(seed)
    time = pd.date_range("2020-01-01", periods=nt, freq="6h")
    lat = lat0 + 0.5 * np.arange(nlat)
    lon = lon0 + 0.5 * np.arange(nlon)
    lev = np.asarray(levels, dtype=np.float64)
    shape = (nt, len(lev), nlat, nlon)
    height = 44330.8 * (1 - (lev / 1013.25) ** 0.190263)
    la, lo = np.meshgrid(lat - lat0, lon - lon0, indexing="ij")
    if linear:
        pattern = 0.8 * la - 0.3 * lo
        fields = {
            "t": (288.0 - 6.5e-3 * height)[None, :, None, None]
            + pattern[None, None]
            + 0.1 * np.arange(nt)[:, None, None, None],
            "u": 10.0 + 0.5 * pattern[None, None] + np.zeros(shape),
            "v": -2.0 + 0.2 * la[None, None] + np.zeros(shape),
        }
    else:
        fields = {
            "t": (288.0 - 6.5e-3 * height)[None, :, None, None] + rng.normal(0, 2, shape),
            "u": 10 + rng.normal(0, 3, shape),
            "v": rng.normal(0, 3, shape),
        }
    if with_z:
        fields["z"] = 9.80665 * height[None, :, None, None] + 20.0 * la[None, None] + np.zeros(shape)
    if with_q:
        fields["q"] = 0.008 * (lev / 1000.0)[None, :, None, None] ** 3 + np.zeros(shape)
    ds = xr.Dataset(
        {k: (("time", "level", "latitude", "longitude"), v.astype(np.float32)) for k, v in fields.items()},
        coords={"time": time, "level": lev, "latitude": lat, "longitude": lon},
    )
    if path is not None:
        ds.to_zarr(path, mode="w", consolidated=False)
    return ds


# --------------------------------------------------------------------------- the real excerpt


@pytest.fixture(scope="module")
def excerpt():
    path = shared_file(*EXCERPT)
    return path, read_igra(path)


def test_excerpt_structure(excerpt):
    path, d = excerpt
    assert b"\r\n" in path.read_bytes()  # the real excerpt has CRLF line ends
    assert d.n_soundings == 14 and d.n_obs == 153
    assert d.soundings["nlevels"].tolist() == [10, 9, 4, 10, 15, 11, 15, 11, 13, 10, 13, 11, 11, 10]
    assert d.soundings["line"].tolist() == [1, 12, 22, 27, 38, 54, 66, 82, 94, 108, 119, 133, 145, 157]
    t = pd.DatetimeIndex(d.soundings["time"])
    assert t[0] == pd.Timestamp("1950-02-04 03:00") and t[-1] == pd.Timestamp("1950-02-14 03:00")
    assert (np.diff(t.asi8) > 0).all()


def test_excerpt_first_header(excerpt):
    _, d = excerpt
    s = {k: v[0] for k, v in d.soundings.items()}
    assert s["station"] == "USM00074794"
    assert pd.Timestamp(s["time"]) == pd.Timestamp("1950-02-04T03")
    assert s["hour"] == 3 and s["reltime"] == -1  # RELTIME 9999: missing
    assert s["nlevels"] == 10
    assert s["p_src"] == "ncdc6310" and s["np_src"] == ""
    assert s["latitude"] == pytest.approx(28.4667) and s["longitude"] == pytest.approx(-80.55)


def test_excerpt_values_in_si(excerpt):
    _, d = excerpt
    o = d.obs
    # line 2: "21 -9999 102400B    3   231B-9999 -9999 -9999 -9999"
    assert o["lvltyp1"][0] == 2 and o["lvltyp2"][0] == 1
    assert o["pressure"][0] == 102400.0
    assert o["gph"][0] == 3.0
    assert o["temperature"][0] == pytest.approx(23.1 + 273.15, abs=1e-4)
    assert (o["pflag"][0], o["zflag"][0], o["tflag"][0]) == ("B", " ", "B")
    for k in ("rh", "dpd", "wdir", "wspd", "u", "v", "etime"):
        assert np.isnan(o[k][0]), k  # -9999 -> NaN
    # line 6 (500 hPa): "10 -9999  50000  5844B -115B..."
    assert o["pressure"][4] == 50000.0 and o["gph"][4] == 5844.0
    assert o["temperature"][4] == pytest.approx(-11.5 + 273.15, abs=1e-4)
    # line 13 (sounding 2, first level): RH 900 -> 90.0 %, WDIR 360, WSPD 50 -> 5.0 m/s from the north
    i = 10
    assert o["rh"][i] == pytest.approx(90.0) and o["wdir"][i] == 360.0 and o["wspd"][i] == pytest.approx(5.0)
    assert o["u"][i] == pytest.approx(0.0, abs=1e-5) and o["v"][i] == pytest.approx(-5.0)
    # line 109: "21 -9999 102000B    3   210B  790 -9999    90    30": an easterly of 3.0 m/s
    j = int(d.first[9])
    assert o["pressure"][j] == 102000.0 and o["temperature"][j] == pytest.approx(294.15, abs=1e-4)
    assert (
        o["rh"][j] == pytest.approx(79.0)
        and o["u"][j] == pytest.approx(-3.0)
        and o["v"][j] == pytest.approx(0.0, abs=1e-5)
    )
    # dew-point depression is missing throughout the excerpt; no sentinel survives anywhere
    assert np.isnan(o["dpd"]).all()
    for k in ("pressure", "gph", "temperature", "rh", "wdir", "wspd", "etime"):
        assert not np.isin(o[k], [-9999, -8888, -999.9, -888.8, -9999 * 0.1 + 273.15]).any(), k
    assert np.nanmin(o["temperature"]) > 180 and np.nanmax(o["temperature"]) < 320


def test_lf_crlf_and_zip_identical(excerpt, tmp_path):
    path, d = excerpt
    raw = path.read_bytes()
    lf = parse_igra(raw.replace(b"\r\n", b"\n"), "lf")
    zpath = tmp_path / "USM00074794-data.txt.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("USM00074794-data.txt", raw)
    zipped = read_igra(zpath)
    no_final_newline = parse_igra(raw.rstrip(b"\r\n"), "nofinal")
    for other in (lf, zipped, no_final_newline):
        assert other.n_obs == d.n_obs
        for k in d.obs:
            np.testing.assert_array_equal(other.obs[k], d.obs[k], err_msg=k)
        for k in ("station", "time", "latitude", "longitude", "nlevels"):
            np.testing.assert_array_equal(other.soundings[k], d.soundings[k], err_msg=k)


def test_wind_convention():
    u, v = wind_components(np.array([10.0, 10.0, 10.0, 10.0]), np.array([90.0, 180.0, 270.0, 360.0]))
    np.testing.assert_allclose(u, [-10, 0, 10, 0], atol=1e-12)  # from the east blows westward
    np.testing.assert_allclose(v, [0, 10, 0, -10], atol=1e-12)  # from the south blows northward
    spd, dirn = wind_speed_direction(u, v)
    np.testing.assert_allclose(spd, 10.0)
    np.testing.assert_allclose(dirn, [90, 180, 270, 360], atol=1e-9)
    assert wind_speed_direction(np.array([0.0]), np.array([0.0]))[1][0] == 0.0  # calm


def test_writer_columns_match_format():
    h = format_header("USM00074794", 1950, 2, 4, 3, 9999, 10, 28.4667, -80.55, "ncdc6310", "")
    real = "#USM00074794 1950 02 04 03 9999   10 ncdc6310           284667  -805500"
    assert h == real and len(h) == 71
    r = format_data_record(2, 1, -9999, 102400, "B", 3, " ", 231, "B", -9999, -9999, -9999, -9999)
    assert r == "21 -9999 102400B    3   231B-9999 -9999 -9999 -9999 "
    for name, a, b in DATA_COLUMNS:  # every numeric field ends where the format says
        if not name.endswith("FLAG"):
            assert r[b - 1] != " ", name
    for name, a, b in HEADER_COLUMNS[2:8]:
        assert h[b - 1] != " ", name


# --------------------------------------------------------------------------- errors


def _excerpt_lines():
    return shared_file(*EXCERPT).read_bytes().replace(b"\r\n", b"\n").split(b"\n")[:-1]


def test_truncated_file_names_file_and_line():
    lines = _excerpt_lines()[:-3]  # the last sounding (header at line 157) loses 3 of its 10 levels
    with pytest.raises(InputError) as err:
        parse_igra(b"\n".join(lines) + b"\n", "cut.txt")
    msg = str(err.value)
    assert "cut.txt, line 157" in msg and "promises 10 levels" in msg and "only 7" in msg


def test_missing_records_between_soundings():
    lines = _excerpt_lines()
    del lines[14]  # a level of the 2nd sounding (header at line 12)
    with pytest.raises(
        InputError, match=r"x.txt, line 12: truncated sounding.*9 levels.*only 8.*next header at line 21"
    ):
        parse_igra(b"\n".join(lines), "x.txt")


def test_extra_records():
    lines = _excerpt_lines()
    lines.insert(3, lines[2])
    with pytest.raises(InputError, match=r"x.txt, line 1: .*promises 10 levels.*11 data records"):
        parse_igra(b"\n".join(lines), "x.txt")


@pytest.mark.parametrize(
    "lineno, col, new, column",
    [
        (3, 22, b"x", "TEMP"),  # 0-based column 22 = column 23, first of TEMP
        (3, 11, b"A", "PRESS"),
        (4, 48, b" ", "WSPD"),  # an embedded blank: '-9 99'
        (5, 29, b"-", "RH"),
    ],
)
def test_malformed_data_field(lineno, col, new, column):
    lines = _excerpt_lines()
    line = bytearray(lines[lineno - 1])
    line[col : col + len(new)] = new
    lines[lineno - 1] = bytes(line)
    with pytest.raises(InputError) as err:
        parse_igra(b"\n".join(lines), "bad.txt")
    assert f"bad.txt, line {lineno}: data column {column}" in str(err.value)


def test_malformed_header_and_others():
    lines = _excerpt_lines()
    bad = list(lines)
    bad[11] = bad[11][:13] + b"19x0" + bad[11][17:]
    with pytest.raises(InputError, match=r"h.txt, line 12: header column YEAR \(columns 14-17\): '19x0'"):
        parse_igra(b"\n".join(bad), "h.txt")
    bad = list(lines)
    bad[0] = bad[0][:18] + b"13" + bad[0][20:]
    with pytest.raises(InputError, match=r"line 1: header columns YEAR/MONTH/DAY: 1950-13-04 is not a date"):
        parse_igra(b"\n".join(bad), "h.txt")
    with pytest.raises(InputError, match=r"line 1: expected a header record"):
        parse_igra(b"\n".join(lines[1:]), "h.txt")
    with pytest.raises(InputError, match=r"line 3: data record too short"):
        parse_igra(b"\n".join(lines[:2] + [lines[2][:30]] + lines[3:]), "h.txt")
    with pytest.raises(InputError, match="empty"):
        parse_igra(b"\n\n", "h.txt")


# --------------------------------------------------------------------------- station list, filters


def test_station_list():
    st = read_station_list(shared_file(*STATION_LIST))
    assert len(st) == 2879
    row = st.set_index("id").loc["USM00074794"]
    assert row["latitude"] == pytest.approx(28.4667) and row["longitude"] == pytest.approx(-80.55)
    assert row["first_year"] == 1950 and row["name"].startswith("CAPE")
    assert st["id"].str.len().eq(11).all()
    assert st["latitude"].dropna().between(-90, 90).all() and st["longitude"].dropna().between(-180, 180).all()
    assert st["latitude"].isna().sum() > 0  # mobile stations (-98.8888) become NaN
    text = format_station_list(
        [
            {
                "id": "ZZXUA000001",
                "latitude": 1.5,
                "longitude": -2.25,
                "name": "X",
                "first_year": 2020,
                "last_year": 2021,
                "nobs": 3,
            }
        ]
    )
    back = parse_station_list(text)
    assert (
        back.loc[0, "id"] == "ZZXUA000001" and back.loc[0, "longitude"] == -2.25 and np.isnan(back.loc[0, "elevation"])
    )
    with pytest.raises(InputError, match=r"list.txt, line 2: column LATITUDE"):
        parse_station_list(text + text.replace(" 1.5000", "  north"), "list.txt")


def test_select_stations_by_area_and_years():
    st = read_station_list(shared_file(*STATION_LIST))
    florida = select_stations(st, {"source": "http", "area": [31, -82, 27, -79], "years": [1950, 1950]})
    assert "USM00074794" in florida
    assert (
        select_stations(st, {"source": "http", "area": [31, 278, 27, 281], "years": [1950, 1950]}) == florida
    )  # 0..360 box
    across = select_stations(st, {"source": "http", "area": [70, 170, 50, 190]})  # crosses the antimeridian
    lon = st.set_index("id").loc[across, "longitude"]
    assert len(across) > 0 and ((lon >= 170) | (lon <= -170)).all()
    assert select_stations(st, {"source": "http", "stations": ["USM00074794"]}) == ["USM00074794"]
    with pytest.raises(InputError, match=r"unknown IGRA station id\(s\) \['USM00074795'\].*USM00074794"):
        select_stations(st, {"source": "http", "stations": ["USM00074795"]})
    with pytest.raises(ConfigError):
        select_stations(st, {"source": "http"})


def test_filters(excerpt):
    _, d = excerpt
    f = filter_igra(d, dates={"start": "1950-02-07", "end": "1950-02-08"})
    assert pd.DatetimeIndex(f.soundings["time"]).strftime("%d%H").tolist() == ["0703", "0715", "0803", "0815"]
    assert f.n_obs == 10 + 15 + 11 + 15
    f = filter_igra(d, pressure_range=[50000, 85000])
    assert f.obs["pressure"].min() == 50000 and f.obs["pressure"].max() == 85000
    assert (
        f.soundings["nlevels"].sum() == f.n_obs
        and (f.first == np.concatenate([[0], np.cumsum(f.soundings["nlevels"])[:-1]])).all()
    )
    assert filter_igra(d, area=[30, 279, 27, 280]).n_soundings == 14  # 0..360 box around -80.55
    assert filter_igra(d, area=[30, -79, 27, -78]).n_soundings == 0
    with pytest.raises(ConfigError, match="empty date range"):
        filter_igra(d, dates={"start": "1950-02-09", "end": "1950-02-01"})
    with pytest.raises(ConfigError, match="dates.start"):
        filter_igra(d, dates={"start": "Feb 31st"})
    assert in_area(np.array([0.0, 0.0]), np.array([179.0, -179.0]), [10, 170, -10, -170]).all()
    assert in_area(np.array([0.0]), np.array([5.0]), [90, 0, -90, 360]).all()


# --------------------------------------------------------------------------- synthetic source


def test_synthetic_round_trip_to_format_precision():
    ds = make_era5(levels=(850.0, 700.0, 500.0), with_q=True)
    spec = {"synthetic": {"n_stations": 4, "seed": 3, "missing_fraction": 0.1}}
    syn = synthesize_soundings(ds, spec["synthetic"])
    assert len(syn.texts) == 4
    parsed = [parse_igra(syn.texts[r["id"]].encode(), r["id"]) for r in syn.station_rows]
    truth = syn.truth
    o = {k: np.concatenate([p.obs[k] for p in parsed]) for k in parsed[0].obs}
    n = len(truth["pressure"])
    assert len(o["pressure"]) == n == 4 * 8 * (5 + 1)  # 3 ERA5 levels + 2 in between + 1 height-only level
    tol = {
        "pressure": 0.0,
        "gph": 0.5,
        "temperature": 0.05 + 1e-4,
        "rh": 0.05 + 1e-4,
        "dpd": 0.05 + 1e-4,
        "wspd": 0.05 + 1e-4,
    }
    for k, t in tol.items():
        assert (np.isnan(o[k]) == np.isnan(truth[k])).all(), k
        np.testing.assert_allclose(o[k], truth[k], atol=t, rtol=0, err_msg=k)
    spd = np.nan_to_num(truth["wspd"])
    for k in ("u", "v"):  # speed to 0.05 m/s, direction to 0.5 deg
        err = np.abs(o[k] - truth[k])
        assert np.nanmax(err - (0.05 + spd * np.deg2rad(0.5) + 1e-4)) <= 0, k
    # missing values are written (-9999 / -8888) and come back as NaN
    assert 0.03 < np.isnan(truth["temperature"][~np.isnan(truth["pressure"])]).mean() < 0.25
    text = "".join(syn.texts.values())
    assert "-8888" in text and "-9999" in text
    # station positions inside the grid, header and list agree
    for r, p in zip(syn.station_rows, parsed):
        assert 30.0 <= r["latitude"] <= 34.5 and -110.0 <= r["longitude"] <= -104.5
        assert (p.soundings["latitude"] == r["latitude"]).all() and (p.soundings["longitude"] == r["longitude"]).all()
    # deterministic with the seed
    assert synthesize_soundings(ds, spec["synthetic"]).texts == syn.texts
    assert synthesize_soundings(ds, {"n_stations": 4, "seed": 4}).texts != syn.texts


def test_synthetic_samples_the_field_bilinearly():
    ds = make_era5(linear=True, with_z=False, levels=(850.0, 500.0))
    syn = synthesize_soundings(
        ds,
        {"n_stations": 5, "noise_k": 0, "noise_wind_ms": 0, "missing_fraction": 0, "extra_levels": 0, "hours": [0, 12]},
    )
    height = 44330.8 * (1 - (np.array([850.0, 500.0]) / 1013.25) ** 0.190263)
    for r in syn.station_rows:
        d = parse_igra(syn.texts[r["id"]].encode(), r["id"])
        assert pd.DatetimeIndex(d.soundings["time"]).hour.isin([0, 12]).all() and d.n_soundings == 4
        la, lo = r["latitude"] - 30.0, r["longitude"] + 110.0
        p = d.obs["pressure"].reshape(4, 3)
        t = d.obs["temperature"].reshape(4, 3)
        steps = np.array([0, 2, 4, 6])[:, None]
        expect = 288.0 - 6.5e-3 * height[None, :] + 0.8 * la - 0.3 * lo + 0.1 * steps
        np.testing.assert_array_equal(p[:, :2], [[85000, 50000]] * 4)
        np.testing.assert_allclose(t[:, :2], expect, atol=0.05 + 1e-3)
        # without z: heights by the hypsometric equation are increasing and plausible
        z = d.obs["gph"].reshape(4, 3)
        assert (np.diff(z, axis=1) > 0).all() and 1000 < z[0, 0] < 2000 and 5000 < z[0, 1] < 6500
        u = d.obs["u"].reshape(4, 3)[:, :2]
        np.testing.assert_allclose(u, 10.0 + 0.5 * (0.8 * la - 0.3 * lo), atol=0.05 + 0.01 * np.abs(u).max())


# --------------------------------------------------------------------------- CLI: fetch + ingest


def test_fetch_synthetic_and_ingest_cli(tmp_path):
    era5 = tmp_path / "era5.zarr"
    make_era5(era5)
    raw, out = tmp_path / "raw", tmp_path / "igra.zarr"
    spec = '{"source": "synthetic", "synthetic": {"n_stations": 3, "seed": 1}}'
    assert main(["igra-fetch", "--spec", spec, "--out", str(raw), str(era5)]) == 0
    names = sorted(p.name for p in raw.iterdir())
    assert names == [
        "ZZXUA000001-data.txt.zip",
        "ZZXUA000002-data.txt.zip",
        "ZZXUA000003-data.txt.zip",
        "igra2-station-list.txt",
        "manifest.json",
    ]
    assert len(read_station_list(raw / "igra2-station-list.txt")) == 3
    assert main(["igra-ingest", "--spec", spec, "--out", str(out), str(raw)]) == 0
    obs, snd = open_igra(out)
    for k in (
        "station",
        "time",
        "latitude",
        "longitude",
        "pressure",
        "gph",
        "temperature",
        "rh",
        "dpd",
        "wdir",
        "wspd",
        "u",
        "v",
        "pflag",
        "zflag",
        "tflag",
        "lvltyp1",
        "lvltyp2",
        "etime",
    ):
        assert k in obs and obs[k].dims == ("obs",), k
    for k in ("station", "time", "latitude", "longitude", "first", "nlevels"):
        assert k in snd and snd[k].dims == ("sounding",), k
    assert snd.sizes["sounding"] == 3 * 8
    # the default pressure range drops the height-only level: 3 levels per sounding
    assert obs.sizes["obs"] == 3 * 8 * 3 and not np.isnan(obs["pressure"].values).any()
    first = snd["first"].values
    assert obs["station"].values[first].tolist() == snd["station"].values.tolist()
    assert obs["temperature"].dtype == np.float32 and np.nanmax(obs["temperature"].values) < 330
    prov = __import__("json").loads(obs.attrs["provenance"])
    assert len(prov["inputs"]) == 3 and all(len(h) == 64 for h in prov["inputs"].values())
    # deterministic: a second fetch writes identical bytes
    raw2 = tmp_path / "raw2"
    assert main(["igra-fetch", "--spec", spec, "--out", str(raw2), str(era5)]) == 0
    for name in names[:4]:
        assert (raw / name).read_bytes() == (raw2 / name).read_bytes()


def test_ingest_local_real_file_and_filters(tmp_path, excerpt):
    path, _ = excerpt
    out = tmp_path / "x.zarr"
    summary = ingest(
        {"source": "local", "dates": {"start": "1950-02-10"}, "pressure_range": [50000, 102400]}, [path], out
    )
    obs, snd = open_igra(out)
    assert snd.sizes["sounding"] == 5 and summary["soundings_read"] == 14
    assert obs["pressure"].values.min() >= 50000
    with pytest.raises(InputError, match="no observations left after the filters"):
        ingest({"source": "local", "dates": {"start": "1990-01-01"}}, [path], tmp_path / "y.zarr")
    with pytest.raises(InputError, match=r"unknown station id\(s\) \['USM00072201'\]"):
        ingest({"source": "local", "stations": ["USM00072201"]}, [path], tmp_path / "z.zarr")
    assert not (tmp_path / "y.zarr").exists() and not (tmp_path / "z.zarr").exists()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no partial store left behind


def test_ingest_cli_truncated_file_fails_cleanly(tmp_path):
    lines = _excerpt_lines()
    bad = tmp_path / "USM00074794-data.txt"
    bad.write_bytes(b"\n".join(lines[:-1]) + b"\n")
    out = tmp_path / "igra.zarr"
    proc = run_cli("igra-ingest", "--spec", '{"source": "local"}', "--out", out, bad, check=False)
    assert proc.returncode == 1
    assert f"{bad}, line 157: truncated sounding" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


# --------------------------------------------------------------------------- http source (loopback)


class _Server:
    """A loopback HTTP server serving `routes` (path -> bytes); `flaky` paths answer 503 first."""

    def __init__(self, routes: dict[str, bytes], flaky: dict[str, int] | None = None):
        self.routes, self.flaky, self.hits = routes, dict(flaky or {}), []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                server.hits.append(self.path)
                if server.flaky.get(self.path, 0) > 0:
                    server.flaky[self.path] -= 1
                    self.send_error(503)
                    return
                body = server.routes.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/igra"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def _zip_bytes(name: str, data: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture
def igra_server():
    real = shared_file(*EXCERPT).read_bytes()
    stations = shared_file(*STATION_LIST).read_text().splitlines(keepends=True)
    keep = [line for line in stations if line[:11] in ("USM00074794", "USM00072201", "ASM00094120", "UKM00003005")]
    assert len(keep) == 4
    synthetic = (
        format_header("ASM00094120", 2001, 1, 1, 0, 2315, 1, -12.4239, 130.8925, "ncdc-gts", "")
        + "\n"
        + format_data_record(1, 0, 0, 85000, " ", 1500, "B", 200, "B", 500, 30, 90, 55)
        + "\n"
    )
    routes = {
        "/igra/doc/igra2-station-list.txt": "".join(keep).encode(),
        "/igra/data/data-por/USM00074794-data.txt.zip": _zip_bytes("USM00074794-data.txt", real),
        "/igra/data/data-por/ASM00094120-data.txt.zip": _zip_bytes("ASM00094120-data.txt", synthetic.encode()),
        # USM00072201 is listed but not served: 404
    }
    with _Server(routes, flaky={"/igra/data/data-por/USM00074794-data.txt.zip": 2}) as srv:
        yield srv


def _http_spec(url: str, **kw) -> str:
    import json

    return json.dumps(
        {"source": "http", "base_url": url, "http": {"retries": 3, "backoff_s": 0.01, "timeout_s": 10}, **kw}
    )


def test_http_by_id_with_retries_then_ingest(igra_server, tmp_path):
    raw = tmp_path / "raw"
    spec = _http_spec(igra_server.url, stations=["USM00074794"])
    assert main(["igra-fetch", "--spec", spec, "--out", str(raw)]) == 0
    assert sorted(p.name for p in raw.iterdir()) == [
        "USM00074794-data.txt.zip",
        "igra2-station-list.txt",
        "manifest.json",
    ]
    assert igra_server.hits.count("/igra/data/data-por/USM00074794-data.txt.zip") == 3  # two 503s, then the file
    got = read_igra(raw / "USM00074794-data.txt.zip")
    assert got.n_soundings == 14 and got.n_obs == 153
    out = tmp_path / "igra.zarr"
    assert main(["igra-ingest", "--spec", spec, "--out", str(out), str(raw)]) == 0
    obs, snd = open_igra(out)
    assert snd.sizes["sounding"] == 14 and set(obs["station"].values.tolist()) == {"USM00074794"}


def test_http_by_area_and_years(igra_server, tmp_path):
    raw = tmp_path / "raw"
    # a box around northern Australia, 0..360 longitudes: only ASM00094120 (Darwin)
    assert (
        main(
            [
                "igra-fetch",
                "--spec",
                _http_spec(igra_server.url, area=[-5, 120, -20, 140], years=[1990, 2020]),
                "--out",
                str(raw),
            ]
        )
        == 0
    )
    assert sorted(p.name for p in raw.iterdir()) == [
        "ASM00094120-data.txt.zip",
        "igra2-station-list.txt",
        "manifest.json",
    ]
    d = read_igra(raw / "ASM00094120-data.txt.zip")
    assert d.obs["wspd"][0] == pytest.approx(5.5) and d.obs["u"][0] == pytest.approx(-5.5)


def test_http_errors(igra_server, tmp_path, capsys):
    out = tmp_path / "raw"
    assert main(["igra-fetch", "--spec", _http_spec(igra_server.url, stations=["USM00074795"]), "--out", str(out)]) == 1
    assert "unknown IGRA station id(s) ['USM00074795']" in capsys.readouterr().err
    assert not out.exists()
    assert main(["igra-fetch", "--spec", _http_spec(igra_server.url, stations=["USM00072201"]), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "/igra/data/data-por/USM00072201-data.txt.zip: HTTP 404 not found" in err
    assert not out.exists() and not any(p.name.startswith(".") for p in tmp_path.iterdir())
    assert (
        main(
            [
                "igra-fetch",
                "--spec",
                _http_spec(igra_server.url + "/nothing", stations=["USM00074794"]),
                "--out",
                str(out),
            ]
        )
        == 1
    )
    assert "igra2-station-list.txt: HTTP 404" in capsys.readouterr().err
    assert (
        main(["igra-fetch", "--spec", _http_spec(igra_server.url, area=[-60, -30, -70, -20]), "--out", str(out)]) == 1
    )
    assert "no station in the station list lies inside area" in capsys.readouterr().err
    assert main(["igra-fetch", "--spec", '{"source": "http", "stations": "USM00074794"}', "--out", str(out)]) == 1
    assert "config key 'stations'" in capsys.readouterr().err
    assert not out.exists()


def test_fetch_local_copies(tmp_path, excerpt):
    path, _ = excerpt
    raw = tmp_path / "raw"
    assert main(["igra-fetch", "--spec", '{"source": "local"}', "--out", str(raw), str(path)]) == 0
    assert (raw / path.name).read_bytes() == path.read_bytes()


def test_vectorised_writer_matches_record_writer():
    from scorebridge.data.igra.format import format_data_records

    rng = np.random.default_rng(0)
    n = 300
    names = [c for c, _, _ in DATA_COLUMNS]
    f = {
        "LVLTYP1": rng.integers(1, 4, n),
        "LVLTYP2": rng.integers(0, 3, n),
        "ETIME": rng.choice([-9999, -8888, 0, 5, 12345, 99959], n),
        "PRESS": rng.integers(-9999, 110000, n),
        "PFLAG": rng.choice([" ", "A", "B"], n),
        "GPH": rng.integers(-9999, 99999, n),
        "ZFLAG": rng.choice([" ", "A", "B"], n),
        "TEMP": rng.integers(-9999, 9999, n),
        "TFLAG": rng.choice([" ", "B"], n),
        "RH": rng.integers(-9999, 1000, n),
        "DPDP": rng.integers(-9999, 999, n),
        "WDIR": rng.integers(-9999, 361, n),
        "WSPD": rng.integers(-9999, 9999, n),
    }
    mat = format_data_records(f)
    text = mat.tobytes().decode()
    assert text == "".join(format_data_record(*[f[k][i] for k in names]) + "\n" for i in range(n))
    header = format_header("ZZXUA000001", 2000, 1, 1, 0, 2315, n, 0.0, 0.0)
    back = parse_igra((header + "\n" + text).encode())
    np.testing.assert_array_equal(back.obs["lvltyp1"], f["LVLTYP1"])
    raw_t = np.where(np.isnan(back.obs["temperature"]), -1, np.round((back.obs["temperature"] - 273.15) * 10))
    np.testing.assert_array_equal(raw_t, np.where(np.isin(f["TEMP"], [-9999, -8888]), -1, f["TEMP"]))


def test_synthetic_input_errors(tmp_path):
    ds = make_era5(nt=2)
    with pytest.raises(InputError, match="no temperature 't'"):
        synthesize_soundings(ds.drop_vars("t"), {})
    with pytest.raises(ConfigError, match="synthetic.hours"):
        synthesize_soundings(ds, {"hours": [3]})
    # a 0..360 grid (straddling the antimeridian) and ensemble members: ids in -180..180 in the header
    wrap = ds.assign_coords(longitude=177.0 + 0.5 * np.arange(ds.sizes["longitude"])).expand_dims(number=2)
    syn = synthesize_soundings(wrap, {"n_stations": 6, "seed": 1})
    lons = np.array([r["longitude"] for r in syn.station_rows])
    assert ((lons >= 177) | (lons <= -177.5)).all() and (lons < 0).any() and (lons > 0).any()
    assert (
        main(
            [
                "igra-fetch",
                "--spec",
                '{"source": "synthetic"}',
                "--out",
                str(tmp_path / "raw"),
                str(tmp_path / "nope.zarr"),
            ]
        )
        == 1
    )
    assert not (tmp_path / "raw").exists()
