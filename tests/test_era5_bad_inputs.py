"""ERA5 inputs that used to be ingested silently wrong (issue 12 items 3, 4, 5, 7):
truncated or corrupt GRIB, units that differ across files, overlapping times with
different values, NaN and inf in the fields (at ingest and before SR training)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from conftest import run_cli, shared_file
from scorebridge.data.era5.ingest import ingest
from scorebridge.errors import ConfigError, InputError
from test_era5 import expected, new_cds, read, spec, write_new

G = 9.80665


def _messages(path: Path) -> list[tuple[int, int]]:
    """(offset, length) of every GRIB message, as eccodes reads them (independent of the code under test)."""
    eccodes = pytest.importorskip("eccodes")
    out = []
    with open(path, "rb") as f:
        while True:
            h = eccodes.codes_grib_new_from_file(f)
            if h is None:
                return out
            out.append((int(eccodes.codes_get(h, "offset")), int(eccodes.codes_get_message_size(h))))
            eccodes.codes_release(h)


def _cut(src: Path, dst: Path, nbytes: int) -> Path:
    dst.write_bytes(src.read_bytes()[:nbytes])
    return dst


GRIB_SPEC = {"variables": ["z", "t"], "levels": [850, 500], "chunks": {"time": 2}}


# --- item 3: truncated or corrupt GRIB --------------------------------------------------


def test_grib_cut_inside_a_message_fails_naming_the_file_and_offset(tmp_path):
    """Half the file (cut at 1 MiB, inside message 72 of 160): cfgrib skips the broken
    message and fills its field with NaN; the job used to exit 0."""
    src = shared_file("era5", "era5-levels-members.grib")
    msgs = _messages(src)
    assert len(msgs) == 160
    for cut in (1 << 20, msgs[3][0] + 5, msgs[3][0] + 30, 5000):
        start = max(o for o, _ in msgs if o <= cut)
        path = _cut(src, tmp_path / f"cut{cut}.grib", cut)
        with pytest.raises(InputError, match=re.escape(f"{path}: truncated GRIB message at byte offset {start}")):
            ingest(spec(**GRIB_SPEC), tmp_path / "o.zarr", [path])
        assert not (tmp_path / "o.zarr").exists()
    # through the command: exit 1, the message, no traceback, no store
    path = _cut(src, tmp_path / "half.grib", 1 << 20)
    out = tmp_path / "cli.zarr"
    proc = run_cli("era5-ingest", "--spec", json.dumps(spec(**GRIB_SPEC)), "--out", out, path, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{path}: truncated GRIB message at byte offset {max(o for o, _ in msgs if o <= 1 << 20)}" in proc.stderr
    assert f"file ends after {(1 << 20) - max(o for o, _ in msgs if o <= 1 << 20)} of its" in proc.stderr
    assert not out.exists()


def test_corrupt_grib_messages_fail_naming_the_offset(tmp_path):
    src = shared_file("era5", "era5-levels-members.grib")
    msgs = _messages(src)
    data = bytearray(src.read_bytes())
    off, length = msgs[7]
    bad = data.copy()
    bad[off + length - 4 : off + length] = b"0000"  # the end marker overwritten
    path = tmp_path / "marker.grib"
    path.write_bytes(bytes(bad))
    with pytest.raises(
        InputError,
        match=re.escape(
            f"{path}: corrupt GRIB message at byte offset {off}: no end marker '7777' at byte offset {off + length - 4}"
        ),
    ):
        ingest(spec(**GRIB_SPEC), tmp_path / "o.zarr", [path])
    junk = tmp_path / "junk.grib"  # bytes that are neither padding nor a message
    nxt = msgs[8][0]
    junk.write_bytes(bytes(data[:nxt]) + b"HELLO" + bytes(data[nxt:]))
    with pytest.raises(
        InputError, match=re.escape(f"{junk}: byte offset {nxt}: b'HELLOGRI'") + r".*not the start of a GRIB message"
    ):
        ingest(spec(**GRIB_SPEC), tmp_path / "o.zarr", [junk])
    # zero padding between messages and at the end is normal (the sample pads each message to 8 bytes)
    padded = tmp_path / "padded.grib"
    padded.write_bytes(bytes(data) + b"\0" * 100)
    ds = read(ingest(spec(**GRIB_SPEC), tmp_path / "p.zarr", [padded]))
    assert ds.t.shape == (10, 4, 2, 61, 120)


def test_grib_missing_whole_messages_is_an_error(tmp_path, caplog):
    """Cut exactly between messages 75 and 76: a valid GRIB file, but 5 fields of time
    2017-01-01T12 are absent and cfgrib reads them as NaN."""
    src = shared_file("era5", "era5-levels-members.grib")
    msgs = _messages(src)
    path = _cut(src, tmp_path / "75.grib", msgs[75][0])
    with caplog.at_level(logging.WARNING), pytest.raises(InputError) as err:
        ingest(spec(**GRIB_SPEC), tmp_path / "o.zarr", [path])
    text = str(err.value)
    assert text.startswith(f"{path}: variable 't'") and "2017-01-01T12" in text and "NaN" in text
    assert "75 GRIB messages for 80 fields" in caplog.text
    # the write stopped midway; another store written at the same path in this process
    # (other dims) gets arrays of its own, not those of the stopped write
    other = read(ingest(spec(), tmp_path / "o.zarr", [write_new(new_cds(ntime=4), tmp_path / "after.nc")]))
    assert other.t.dims == ("time", "level", "latitude", "longitude")
    # a file cut at a time boundary is complete as far as anything inside it can tell
    ds = read(ingest(spec(**GRIB_SPEC), tmp_path / "120.zarr", [_cut(src, tmp_path / "120.grib", msgs[120][0])]))
    assert ds.sizes["time"] == 3


def _write_grib(path: Path, edition: int, ntime: int, ni: int = 5, nj: int = 4, bits: int = 16) -> Path:
    eccodes = pytest.importorskip("eccodes")
    sample = "GRIB2" if edition == 2 else "regular_ll_pl_grib1"
    with open(path, "wb") as f:
        for i in range(ntime):
            h = eccodes.codes_grib_new_from_samples(sample)
            keys = {
                "Ni": ni,
                "Nj": nj,
                "latitudeOfFirstGridPointInDegrees": 30.0 + (nj - 1) * 0.25,
                "latitudeOfLastGridPointInDegrees": 30.0,
                "longitudeOfFirstGridPointInDegrees": 250.0,
                "longitudeOfLastGridPointInDegrees": 250.0 + (ni - 1) * 0.25,
                "iDirectionIncrementInDegrees": 0.25,
                "jDirectionIncrementInDegrees": 0.25,
                "dataDate": 20200101,
                "dataTime": i * 600,
                "bitsPerValue": bits,
            }
            if edition == 2:
                keys = {
                    "discipline": 0,
                    "parameterCategory": 0,
                    "parameterNumber": 0,
                    "typeOfFirstFixedSurface": 100,
                    "level": 850,
                    **keys,
                }
            else:
                keys = {"indicatorOfParameter": 130, "level": 850, **keys}
            for k, v in keys.items():
                eccodes.codes_set(h, k, v)
            eccodes.codes_set_values(h, 280.0 + np.random.default_rng(i).normal(0, 5, ni * nj))
            eccodes.codes_write(h, f)
            eccodes.codes_release(h)
    return path


def test_grib2_and_large_grib1_messages(tmp_path):
    """Edition 2 keeps its length in 8 bytes at offset 8; ECMWF's large GRIB1 messages
    (over 8 MiB) set the top bit of the 3-byte length."""
    g2 = _write_grib(tmp_path / "a.grib2", 2, 3)
    ds = read(ingest(spec(variables=["t"], levels=[]), tmp_path / "g2.zarr", [g2]))
    assert ds.t.shape == (3, 4, 5)
    msgs = _messages(g2)
    cut = _cut(g2, tmp_path / "cut.grib2", msgs[2][0] + 20)
    with pytest.raises(InputError, match=re.escape(f"{cut}: truncated GRIB message at byte offset {msgs[2][0]}")):
        ingest(spec(variables=["t"], levels=[]), tmp_path / "o.zarr", [cut])
    big = _write_grib(tmp_path / "big.grib", 1, 2, ni=1200, nj=1441, bits=40)
    msgs = _messages(big)
    assert msgs[0][1] > 0x800000 and big.read_bytes()[4] & 0x80, "a large GRIB1 message (length flag set)"
    ds = read(ingest(spec(variables=["t"], levels=[]), tmp_path / "big.zarr", [big]))
    assert ds.t.shape == (2, 1441, 1200)
    cut = _cut(big, tmp_path / "cut.grib", msgs[1][0] + msgs[1][1] // 2)
    with pytest.raises(InputError, match=re.escape(f"{cut}: truncated GRIB message at byte offset {msgs[1][0]}")):
        ingest(spec(variables=["t"], levels=[]), tmp_path / "o.zarr", [cut])


# --- item 4: units ------------------------------------------------------------------------


def _with_units(ds: xr.Dataset, name: str, values, units: str) -> xr.Dataset:
    ds = ds.copy()
    ds[name] = (ds[name].dims, np.asarray(values, dtype=np.float32), {**ds[name].attrs, "units": units})
    return ds


def test_units_converted_to_era5_units_across_files(tmp_path, caplog):
    """A file in K and one in degC (and hPa, geopotential height) are joined in ERA5 units."""
    src = new_cds(ntime=8, variables=("t", "z", "msl"))
    sp = spec(variables=["t", "z", "msl"])
    whole = read(ingest(sp, tmp_path / "whole.zarr", [write_new(src, tmp_path / "whole.nc")]))
    a = write_new(src.isel(valid_time=slice(0, 4)), tmp_path / "a.nc")
    late = src.isel(valid_time=slice(4, 8))
    late = _with_units(late, "t", late.t.values - 273.15, "degC")
    late = _with_units(late, "z", late.z.values / G, "m")
    late = _with_units(late, "msl", late.msl.values / 100.0, "hPa")
    b = write_new(late, tmp_path / "b.nc")
    with caplog.at_level(logging.INFO):
        ds = read(ingest(sp, tmp_path / "ab.zarr", [a, b]))
    assert ds.t.attrs["units"] == "K" and ds.z.attrs["units"] == "m**2 s**-2" and ds.msl.attrs["units"] == "Pa"
    np.testing.assert_allclose(ds.t.values, whole.t.values, atol=1e-4)
    np.testing.assert_allclose(ds.z.values, whole.z.values, rtol=1e-6)
    np.testing.assert_allclose(ds.msl.values, whole.msl.values, rtol=1e-6)
    assert f"{b}: 't' in degC converted to K" in caplog.text
    assert f"{b}: 'z' in m converted to m**2 s**-2" in caplog.text and "9.80665" in caplog.text
    assert f"{b}: 'msl' in hPa converted to Pa" in caplog.text
    # the statistics are those of the converted values
    norm = json.loads(ds.attrs["normalisation"])
    assert 200 < norm["t"]["mean"][0] < 320


def test_units_that_cannot_be_converted_fail_naming_file_variable_and_units(tmp_path):
    src = new_cds(ntime=4, variables=("t", "u"))
    f = write_new(_with_units(src, "t", src.t.values * 1.8 - 459.67, "degF"), tmp_path / "f.nc")
    with pytest.raises(
        InputError, match=re.escape(f"{f}: variable 't' is in 'degF'; ERA5 'K' expected") + r".*convert"
    ):
        ingest(spec(variables=["t", "u"]), tmp_path / "o.zarr", [f])
    w = write_new(_with_units(src, "u", src.u.values, "K"), tmp_path / "w.nc")
    with pytest.raises(InputError, match=re.escape(f"{w}: variable 'u' is in 'K'; ERA5 'm s**-1' expected")):
        ingest(spec(variables=["t", "u"]), tmp_path / "o.zarr", [w])
    # a variable ERA5 does not define: the units must agree across files
    foo = src.rename({"u": "foo"})
    a = write_new(_with_units(foo.isel(valid_time=slice(0, 2)), "foo", foo.foo.values[:2], "m"), tmp_path / "a.nc")
    b = write_new(_with_units(foo.isel(valid_time=slice(2, 4)), "foo", foo.foo.values[2:], "km"), tmp_path / "b.nc")
    with pytest.raises(InputError, match=re.escape(f"{b}: variable 'foo' is in 'km' but in 'm' in {a}")):
        ingest(spec(variables=["foo"], levels=[850]), tmp_path / "o.zarr", [a, b])
    assert not (tmp_path / "o.zarr").exists()
    # other spellings of the same units are the same units
    same = write_new(_with_units(src, "u", src.u.values, "m/s"), tmp_path / "same.nc")
    ds = read(ingest(spec(variables=["t", "u"]), tmp_path / "same.zarr", [same]))
    np.testing.assert_array_equal(ds.u.values, expected(src).u.values)
    assert ds.u.attrs["units"] == "m s**-1"


def test_units_table_and_spellings():
    from scorebridge.data.era5.layout import LONG_NAMES
    from scorebridge.data.era5.units import ERA5_UNITS, conversion, parse_units

    assert set(ERA5_UNITS) == set(LONG_NAMES), "every ERA5 short name has its units"
    assert all(parse_units(u) is not None for u in ERA5_UNITS.values())
    for a, b in [
        ("m s**-1", "m s-1"),
        ("m s**-1", "m/s"),
        ("m**2 s**-2", "m2 s-2"),
        ("K", "kelvin"),
        ("(0 - 1)", "1"),
        ("Pa s**-1", "Pa/s"),
    ]:
        assert parse_units(a) == parse_units(b), (a, b)
    assert conversion("hPa s**-1", "Pa s**-1")[:2] == (100.0, 0.0)
    assert conversion("Pa", "hPa")[:2] == (0.01, 0.0)
    assert conversion("K", "degC")[:2] == (1.0, -273.15)
    assert conversion("gpm", "m**2 s**-2")[:2] == (G, 0.0)
    assert conversion("m", "K") is None and conversion("furlongs", "m") is None


def test_missing_units_are_taken_as_era5_units_with_a_warning(tmp_path, caplog):
    src = new_cds(ntime=4, variables=("t",))
    bare = src.copy()
    bare["t"].attrs = {}
    f = write_new(bare, tmp_path / "bare.nc")
    with caplog.at_level(logging.WARNING):
        ds = read(ingest(spec(variables=["t"]), tmp_path / "o.zarr", [f]))
    assert f"{f}: 't' has no units attribute; taken as ERA5's K" in caplog.text
    assert ds.t.attrs["units"] == "K"


# --- item 5: overlapping times ------------------------------------------------------------


def test_overlapping_times_with_equal_values_are_dropped_and_said(tmp_path, caplog):
    src = new_cds(ntime=12, seed=2)
    whole = read(ingest(spec(), tmp_path / "whole.zarr", [write_new(src, tmp_path / "whole.nc")]))
    a = write_new(src.isel(valid_time=slice(0, 8)), tmp_path / "a.nc")
    b = write_new(src.isel(valid_time=slice(4, 12)), tmp_path / "b.nc")
    with caplog.at_level(logging.INFO):
        ds = read(ingest(spec(), tmp_path / "ab.zarr", [b, a]))
    xr.testing.assert_identical(ds.drop_attrs(), whole.drop_attrs())
    assert re.search(r"4 times in both .*a.nc and .*b.nc with equal values: duplicates dropped", caplog.text)


def test_overlapping_times_with_different_values(tmp_path):
    src = new_cds(ntime=12, seed=3)
    a = write_new(src.isel(valid_time=slice(0, 8)), tmp_path / "a.nc")
    late = src.isel(valid_time=slice(4, 12))
    t = late.t.values.copy()
    t[2:] += 0.5  # 2020-01-02T12 (index 6) onwards differs; 2020-01-02T00, T06 agree
    b = write_new(_with_units(late, "t", t, "K"), tmp_path / "b.nc")
    with pytest.raises(
        InputError,
        match=re.escape(f"{b}: values differ from {a} at time 2020-01-02T12 (variable 't', largest difference 0.5)")
        + r".*on_conflict",
    ):
        ingest(spec(), tmp_path / "o.zarr", [a, b])
    assert not (tmp_path / "o.zarr").exists()
    first = read(ingest(spec(on_conflict="first"), tmp_path / "first.zarr", [a, b]))
    last = read(ingest(spec(on_conflict="last"), tmp_path / "last.zarr", [a, b]))
    exp = expected(src)
    np.testing.assert_array_equal(first.t.values[:8], exp.t.values[:8])  # a's values at the overlap 4..7
    np.testing.assert_array_equal(first.t.values[8:], exp.t.values[8:] + 0.5)  # b alone holds 8..11
    np.testing.assert_array_equal(last.t.values[8:], exp.t.values[8:] + 0.5)
    np.testing.assert_array_equal(last.t.values[6:8], exp.t.values[6:8] + 0.5)  # b's values at the overlap
    np.testing.assert_array_equal(last.t.values[:6], exp.t.values[:6])
    # "first" is the order of the inputs, not of the times
    flipped = read(ingest(spec(on_conflict="first"), tmp_path / "flipped.zarr", [b, a]))
    np.testing.assert_array_equal(flipped.t.values, last.t.values)
    with pytest.raises(ConfigError, match="on_conflict"):
        ingest(spec(on_conflict="newest"), tmp_path / "o.zarr", [a, b])


# --- item 7: NaN and inf ------------------------------------------------------------------


def test_nan_and_inf_fail_at_ingest_naming_file_variable_time_and_count(tmp_path):
    src = new_cds(ntime=8, seed=5)
    a = write_new(src.isel(valid_time=slice(0, 4)), tmp_path / "a.nc")
    late = src.isel(valid_time=slice(4, 8))
    t = late.t.values.copy()
    t[1, 1, 2, 3:6] = np.nan  # 3 NaN at 2020-01-02T06, 850 hPa
    t[2, 2, 0, 0] = np.inf  # 2020-01-02T12, 500 hPa
    b = write_new(_with_units(late, "t", t, "K"), tmp_path / "b.nc")
    out = tmp_path / "o.zarr"
    proc = run_cli("era5-ingest", "--spec", json.dumps(spec()), "--out", out, a, b, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert (
        f"{b}: variable 't' has 3 non-finite values (3 NaN, 0 inf) at 2020-01-02T06, the first such time" in proc.stderr
    )
    assert "key 'nan'" in proc.stderr and not out.exists()
    # nan: keep ingests them and counts them in the provenance, per variable and time
    ds = read(ingest(spec(nan="keep"), out, [a, b]))
    nonfinite = json.loads(ds.attrs["provenance"])["nonfinite"]
    assert nonfinite["t"] == {
        "nan": 3,
        "inf": 1,
        "times": [["2020-01-02T06", "2020-01-02T06", 3], ["2020-01-02T12", "2020-01-02T12", 1]],
    }
    assert nonfinite["u"] == {"nan": 0, "inf": 0, "times": []}
    norm = json.loads(ds.attrs["normalisation"])["t"]
    assert all(np.isfinite(norm["mean"])) and all(np.isfinite(norm["std"])), "statistics over the finite values"
    with pytest.raises(ConfigError, match="nan"):
        ingest(spec(nan="drop"), tmp_path / "x.zarr", [a, b])


def test_check_finite_before_sr_training(tmp_path):
    """A NaN at a held-out time used to fail sr-train after every step had run."""
    from scorebridge.data.era5.finite import check_finite
    from scorebridge.sr.data import open_era5, resolve_channels, write_toy_era5
    from scorebridge.sr.options import resolve_spec
    from scorebridge.sr.train import train_prior

    path = write_toy_era5(tmp_path / "toy.zarr", ntime=16, nlat=8, nlon=8)
    ds = xr.open_zarr(path, consolidated=False).load()
    ds["u"][14, 1, 2, 2:4] = np.nan  # a held-out time (the last 20 %), 500 hPa
    ds.to_zarr(tmp_path / "nan.zarr", consolidated=False)
    store = open_era5(tmp_path / "nan.zarr")
    channels = resolve_channels(store)
    check_finite(store, np.arange(12), "training", channels)
    with pytest.raises(
        InputError,
        match=re.escape(
            f"{tmp_path / 'nan.zarr'}: held-out times: variable 'u' at 500 hPa has 2 non-finite values at 2020-01-04T12"
        ),
    ):
        check_finite(store, np.arange(12, 16), "held-out", channels)
    check_finite(store, np.arange(12, 16), "held-out", [("t", 850.0), ("u", 850.0)])  # only the channels used
    spec_ = resolve_spec(
        {
            "era5": "toy",
            "seed": 0,
            "train": {"steps": 4, "batch_size": 2, "model": {"base": 8, "mults": [1, 2]}, "threads": 1},
        }
    )
    with pytest.raises(InputError, match=r"held-out times: variable 'u' at 500 hPa"):
        train_prior(spec_, tmp_path / "nan.zarr", tmp_path / "ck", tmp_path / "prior.pt")
    assert not (tmp_path / "ck").exists() and not (tmp_path / "prior.pt").exists(), "refused before the first step"
