"""IGRA v2 derived-parameter files (`*-drvd.txt`): written to igra2-derived-format.txt,
parsed with values checked by hand, ingested (positions from the station list),
collocated with an ERA5 grid and read as radiosonde observations."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from conftest import shared_file
from scorebridge.cli import main
from scorebridge.data.igra.collocate import G0, open_obs
from scorebridge.data.igra.derived import (
    DERIVED_DATA_COLUMNS,
    DERIVED_HEADER_COLUMNS,
    format_derived_header,
    format_derived_record,
    parse_derived,
)
from scorebridge.data.igra.format import format_station_list
from scorebridge.data.igra.ingest import ingest, open_igra
from scorebridge.data.igra.parse import parse_igra
from scorebridge.errors import ConfigError, InputError
from test_igra import _Server, _zip_bytes, make_era5

M = -99999

# Written by hand, field by field, from the column table of igra2-derived-format.txt.
HEADER = (
    "#USM00072201 2020 01 01 00 2315    3"  # HEADREC 1, ID 2-12, YEAR 14-17, MONTH 19-20, DAY 22-23, HOUR 25-26, RELTIME 28-31, NUMLEV 32-36
    " "
    "  2345"  # PW 38-43: 23.45 mm
    "-99999"  # INVPRESS 44-49
    "-99999"  # INVHGT 50-55
    "   123"  # INVTEMPDIF 56-61: 12.3 K
    " 95000"  # MIXPRESS 62-67
    "   512"  # MIXHGT 68-73
    " 70000"  # FRZPRESS 74-79
    "  3012"  # FRZHGT 80-85
    " 90000"  # LCLPRESS 86-91
    "   950"  # LCLHGT 92-97
    "-99999"  # LFCPRESS 98-103
    "-99999"  # LFCHGT 104-109
    "-99999"  # LNBPRESS 110-115
    "-99999"  # LNBHGT 116-121
    "    -3"  # LI 122-127
    "     2"  # SI 128-133
    "    31"  # KI 134-139
    "    48"  # TTI 140-145
    "  1234"  # CAPE 146-151
    "   -56"  # CIN 152-157
)
SURFACE = " ".join(
    [
        " 101000",  # PRESS 1-7: Pa
        "    110",  # REPGPH 9-15: m
        "    112",  # CALCGPH 17-23
        "   2881",  # TEMP 25-31: 288.1 K
        "    -65",  # TEMPGRAD 33-39: -6.5 K/km
        "   2873",  # PTEMP 41-47
        "     32",  # PTEMPGRAD 49-55: 3.2 K/km
        "   2900",  # VTEMP 57-63
        "   2895",  # VPTEMP 65-71
        "  12345",  # VAPPRESS 73-79: 12.345 hPa = 1234.5 Pa
        "  17050",  # SATVAP 81-87: 17.05 hPa = 1705.0 Pa
        "    724",  # REPRH 89-95: 72.4 %
        "    723",  # CALCRH 97-103
        " -99999",  # RHGRAD 105-111: missing
        "    -55",  # UWND 113-119: -5.5 m/s
        "     12",  # UWDGRAD 121-127: 1.2 m/s per km
        "    100",  # VWND 129-135: 10.0 m/s
        " -99999",  # VWNDGRAD 137-143
        "    320",  # N 145-151
    ]
)
HEADER_PARAMS = {
    "PW": 2345,
    "INVTEMPDIF": 123,
    "MIXPRESS": 95000,
    "MIXHGT": 512,
    "FRZPRESS": 70000,
    "FRZHGT": 3012,
    "LCLPRESS": 90000,
    "LCLHGT": 950,
    "LI": -3,
    "SI": 2,
    "KI": 31,
    "TTI": 48,
    "CAPE": 1234,
    "CIN": -56,
}
SURFACE_FIELDS = {
    "PRESS": 101000,
    "REPGPH": 110,
    "CALCGPH": 112,
    "TEMP": 2881,
    "TEMPGRAD": -65,
    "PTEMP": 2873,
    "PTEMPGRAD": 32,
    "VTEMP": 2900,
    "VPTEMP": 2895,
    "VAPPRESS": 12345,
    "SATVAP": 17050,
    "REPRH": 724,
    "CALCRH": 723,
    "UWND": -55,
    "UWDGRAD": 12,
    "VWND": 100,
    "N": 320,
}


def level(p, gph, calc, temp, u, v):
    """A data record with pressure (Pa), reported and calculated height (m), temperature (K * 10), u, v (m/s * 10)."""
    return format_derived_record({"PRESS": p, "REPGPH": gph, "CALCGPH": calc, "TEMP": temp, "UWND": u, "VWND": v})


def sounding(station, when, levels, params=None):
    t = pd.Timestamp(when)
    head = format_derived_header(station, t.year, t.month, t.day, t.hour, 9999, len(levels), params)
    return "\n".join([head, *levels]) + "\n"


PROFILE = [
    level(100000, 110, 112, 2881, -30, 20),  # 1000 hPa: below the ERA5 levels
    level(85000, 1500, 1498, 2781, -55, 100),  # t 278.1 K, u -5.5, v 10.0
    level(70000, M, 3012, 2661, M, M),  # no reported height: the calculated 3012 m
    level(50000, 5600, 5590, 2521, 155, 0),
]


def test_writer_matches_the_format_by_hand():
    assert len(HEADER) == 157 and len(SURFACE) == 151
    assert format_derived_header("USM00072201", 2020, 1, 1, 0, 2315, 3, HEADER_PARAMS) == HEADER
    assert format_derived_record(SURFACE_FIELDS) == SURFACE
    for name, a, b in DERIVED_HEADER_COLUMNS[2:]:  # every integer field ends where the format says
        assert HEADER[b - 1] != " " and (a == 1 or HEADER[a - 2] in " 0123456789"), name
    for name, a, b in DERIVED_DATA_COLUMNS:
        assert SURFACE[b - 1] != " ", name
        if a > 1:
            assert SURFACE[a - 2] == " ", name  # one blank between the 7-column fields
    with pytest.raises(ValueError, match="CAPE"):
        format_derived_header("X", 2020, 1, 1, 0, 0, 1, {"CAPE": 1234567})


def test_parse_values_by_hand():
    text = (
        "\r\n".join(
            [HEADER, SURFACE, SURFACE.replace(" 101000", "  85000", 1), SURFACE.replace(" 101000", "  50000", 1)]
        )
        + "\r\n"
    )
    d = parse_derived(text.encode(), "USM00072201-drvd.txt")
    s = {k: v[0] for k, v in d.soundings.items()}
    assert s["station"] == "USM00072201" and pd.Timestamp(s["time"]) == pd.Timestamp("2020-01-01 00:00")
    assert s["reltime"] == 2315 and s["hour"] == 0 and s["nlevels"] == 3 and s["line"] == 1
    assert np.isnan(s["latitude"]) and np.isnan(s["longitude"])  # no position in the file
    assert s["precipitable_water"] == pytest.approx(23.45)
    assert s["inversion_temperature_difference"] == pytest.approx(12.3)
    assert np.isnan(s["inversion_pressure"]) and np.isnan(s["lfc_height"])
    assert s["mixed_layer_pressure"] == 95000 and s["freezing_level_height"] == 3012 and s["lcl_height"] == 950
    assert (s["lifted_index"], s["showalter_index"], s["k_index"], s["total_totals_index"]) == (-3, 2, 31, 48)
    assert s["cape"] == 1234 and s["cin"] == -56
    o = {k: v[0] for k, v in d.obs.items()}
    assert o["pressure"] == 101000 and o["gph"] == 110 and o["calc_gph"] == 112
    assert o["temperature"] == pytest.approx(288.1, abs=1e-4)  # K * 10, not °C
    assert o["temperature_gradient"] == pytest.approx(-6.5) and o["potential_temperature_gradient"] == pytest.approx(
        3.2
    )
    assert o["potential_temperature"] == pytest.approx(287.3, abs=1e-4) and o["virtual_temperature"] == pytest.approx(
        290.0
    )
    assert o["virtual_potential_temperature"] == pytest.approx(289.5, abs=1e-4)
    assert o["vapor_pressure"] == pytest.approx(1234.5) and o["saturation_vapor_pressure"] == pytest.approx(1705.0)
    assert o["rh"] == pytest.approx(72.4) and o["calc_rh"] == pytest.approx(72.3) and np.isnan(o["rh_gradient"])
    assert o["u"] == pytest.approx(-5.5) and o["u_gradient"] == pytest.approx(1.2) and o["v"] == pytest.approx(10.0)
    assert np.isnan(o["v_gradient"]) and o["refractive_index"] == 320
    assert d.obs["pressure"].tolist() == [101000, 85000, 50000]


def test_each_mode_names_the_other_product():
    derived = (HEADER + "\n" + SURFACE + "\n" + SURFACE + "\n" + SURFACE + "\n").encode()
    with pytest.raises(InputError, match=r"x-drvd.txt: this is an IGRA derived-parameter file .*set product: derived"):
        parse_igra(derived, "x-drvd.txt")
    data = shared_file("igra", "USM00074794-data-exampleportion.txt").read_bytes()
    with pytest.raises(InputError, match=r"this is an IGRA sounding data file .*set product: data"):
        parse_derived(data, "x-data.txt")


def test_malformed_derived_records_name_line_and_columns():
    lines = [HEADER, SURFACE, SURFACE, SURFACE]
    bad = list(lines)
    bad[2] = bad[2][:27] + "x" + bad[2][28:]  # column 28: inside TEMP (25-31)
    with pytest.raises(
        InputError, match=r"bad.txt, line 3: data column TEMP \(columns 25-31\): '   x881' is not an integer"
    ):
        parse_derived("\n".join(bad).encode(), "bad.txt")
    bad = list(lines)
    bad[0] = bad[0][:145] + "  12a4" + bad[0][151:]
    with pytest.raises(InputError, match=r"line 1: header column CAPE \(columns 146-151\)"):
        parse_derived("\n".join(bad).encode(), "bad.txt")
    with pytest.raises(InputError, match=r"line 1: truncated sounding: the header promises 3 levels"):
        parse_derived("\n".join(lines[:3]).encode(), "bad.txt")
    with pytest.raises(InputError, match=r"line 2: data record too short \(51 characters, expected 151\)"):
        parse_derived("\n".join([HEADER, SURFACE[:51], SURFACE, SURFACE]).encode(), "bad.txt")


@pytest.fixture
def derived_files(tmp_path):
    """Two stations inside the make_era5 grid (lat 30..34.5, lon -110..-104.5), a station list."""
    a = sounding("ZZXUA000001", "2020-01-01 06", PROFILE, {"CAPE": 850, "PW": 1234}) + sounding(
        "ZZXUA000001", "2020-01-01 12", PROFILE
    )
    b = sounding("ZZXUA000002", "2020-01-01 06", PROFILE)
    (tmp_path / "ZZXUA000001-drvd.txt").write_text(a)
    (tmp_path / "ZZXUA000002-drvd.txt").write_text(b)
    rows = [
        {
            "id": "ZZXUA000001",
            "latitude": 31.0,
            "longitude": -109.0,
            "name": "A",
            "first_year": 2020,
            "last_year": 2020,
        },
        {
            "id": "ZZXUA000002",
            "latitude": 33.0,
            "longitude": -105.0,
            "name": "B",
            "first_year": 2020,
            "last_year": 2020,
        },
    ]
    (tmp_path / "stations.txt").write_text(format_station_list(rows))
    return tmp_path, [tmp_path / "ZZXUA000001-drvd.txt", tmp_path / "ZZXUA000002-drvd.txt"], tmp_path / "stations.txt"


def test_ingest_derived_with_positions_from_the_station_list(derived_files):
    tmp_path, files, stations = derived_files
    out = tmp_path / "igra.zarr"
    summary = ingest({"source": "local", "station_list": str(stations)}, files, out)  # product detected
    assert summary["product"] == "derived" and summary["soundings"] == 3 and summary["obs"] == 12
    obs, snd = open_igra(out)
    assert obs.attrs["product"] == "derived"
    assert obs["temperature"].attrs["units"] == "K" and obs["vapor_pressure"].attrs["units"] == "Pa"
    assert obs["temperature_gradient"].attrs["units"] == "K km-1" and snd["cape"].attrs["units"] == "J kg-1"
    assert snd["station"].values.tolist() == ["ZZXUA000001", "ZZXUA000001", "ZZXUA000002"]
    assert snd["latitude"].values.tolist() == [31.0, 31.0, 33.0] and snd["longitude"].values.tolist() == [
        -109.0,
        -109.0,
        -105.0,
    ]
    assert (
        snd["cape"].values[0] == 850
        and np.isnan(snd["cape"].values[1])
        and snd["precipitable_water"].values[0] == pytest.approx(12.34)
    )
    assert obs["temperature"].values[:4] == pytest.approx([288.1, 278.1, 266.1, 252.1], abs=1e-4)
    assert np.isnan(obs["gph"].values[2]) and obs["calc_gph"].values[2] == 3012
    prov = json.loads(obs.attrs["provenance"])
    assert (
        prov["product"] == "derived"
        and "igra2-derived-format.txt" in prov["format"]
        and prov["station_list"]["path"] == str(stations)
    )
    # area and pressure filters work on the positions from the list
    only_b = ingest(
        {
            "source": "local",
            "product": "derived",
            "station_list": str(stations),
            "area": [34, -106, 32, -104],
            "pressure_range": [50000, 85000],
        },
        files,
        tmp_path / "b.zarr",
    )
    assert only_b["soundings"] == 1 and only_b["obs"] == 3


def test_derived_ingest_errors(derived_files, tmp_path):
    _, files, stations = derived_files
    with pytest.raises(ConfigError, match=r"station_list.*no station position"):
        ingest({"source": "local"}, files, tmp_path / "a.zarr")
    (tmp_path / "one.txt").write_text(
        format_station_list(
            [
                {
                    "id": "ZZXUA000001",
                    "latitude": 31.0,
                    "longitude": -109.0,
                    "name": "A",
                    "first_year": 2020,
                    "last_year": 2020,
                }
            ]
        )
    )
    with pytest.raises(
        InputError,
        match=r"one.txt: station\(s\) \['ZZXUA000002'\] of .*ZZXUA000002-drvd.txt are not in the station list",
    ):
        ingest({"source": "local", "station_list": str(tmp_path / "one.txt")}, files, tmp_path / "a.zarr")
    with pytest.raises(
        InputError,
        match=r"ZZXUA000001-drvd.txt: this is an IGRA derived-parameter file .*product is 'data'; set product: derived",
    ):
        ingest({"source": "local", "product": "data"}, files, tmp_path / "a.zarr")
    data = shared_file("igra", "USM00074794-data-exampleportion.txt")
    with pytest.raises(InputError, match=r"this is a sounding data file .*product is 'derived'; set product: data"):
        ingest({"source": "local", "product": "derived", "station_list": str(stations)}, [data], tmp_path / "a.zarr")
    with pytest.raises(
        InputError,
        match=r"this is a sounding data file but .*drvd.txt is a derived-parameter file: one IGRA dataset holds one product",
    ):
        ingest({"source": "local", "station_list": str(stations)}, [files[0], data], tmp_path / "a.zarr")
    with pytest.raises(ConfigError, match="product"):
        ingest({"source": "synthetic", "product": "derived"}, files, tmp_path / "a.zarr")
    assert not (tmp_path / "a.zarr").exists()


def test_cli_data_mode_on_a_derived_file(derived_files, capsys):
    tmp_path, files, _ = derived_files
    out = tmp_path / "x.zarr"
    assert (
        main(["igra-ingest", "--spec", '{"source": "local", "product": "data"}', "--out", str(out), str(files[0])]) == 1
    )
    err = capsys.readouterr().err
    assert "this is an IGRA derived-parameter file" in err and "set product: derived" in err and "Traceback" not in err
    assert not out.exists()


def test_derived_collocated_and_read_as_radiosonde_observations(derived_files):
    tmp_path, files, stations = derived_files
    era5, igra, out = tmp_path / "era5.zarr", tmp_path / "igra.zarr", tmp_path / "obs.zarr"
    make_era5(era5, nt=8, levels=(850.0, 500.0))
    spec = {"source": "local", "product": "derived", "station_list": str(stations), "collocate": {"tolerance_hours": 1}}
    assert main(["igra-ingest", "--spec", json.dumps(spec), "--out", str(igra), *map(str, files)]) == 0
    assert (
        main(
            ["igra-collocate", "--spec", json.dumps(spec), "--igra", str(igra), "--era5", str(era5), "--out", str(out)]
        )
        == 0
    )
    o = open_obs(out)
    rows = pd.DataFrame({k: o[k].values for k in ("station", "time_index", "pressure", "t", "u", "v", "z")})
    assert sorted(set(zip(rows["station"], rows["time_index"]))) == [
        ("ZZXUA000001", 1),
        ("ZZXUA000001", 2),
        ("ZZXUA000002", 1),
    ]
    first = rows[(rows["station"] == "ZZXUA000001") & (rows["time_index"] == 1)].reset_index(drop=True)
    assert first["pressure"].tolist() == [85000.0, 70000.0, 50000.0]  # 1000 hPa is outside the ERA5 levels
    assert first["t"].tolist() == pytest.approx([278.1, 266.1, 252.1], abs=1e-4)
    assert first["z"].tolist() == pytest.approx(
        [1500 * G0, 3012 * G0, 5600 * G0], rel=1e-6
    )  # 700 hPa: the calculated height
    assert first["u"][0] == pytest.approx(-5.5) and first["v"][0] == pytest.approx(10.0) and np.isnan(first["u"][1])
    assert o["latitude"].values[0] == 31.0 and o["longitude"].values[0] == -109.0

    from scorebridge.sr.observations import read_obs

    table = read_obs(out, ["t", "u", "v", "z"])
    t = table.value[(table.variable == "t") & (table.station == "ZZXUA000002")]
    assert t.tolist() == pytest.approx([278.1, 266.1, 252.1], abs=1e-4)
    assert (
        set(table.variable.tolist()) == {"t", "u", "v", "z"}
        and (table.latitude[table.station == "ZZXUA000002"] == 33.0).all()
    )


def test_http_fetches_derived_files_and_the_station_list(derived_files):
    tmp_path, files, stations = derived_files
    lines = shared_file("igra", "igra2-station-list.txt").read_text().splitlines(keepends=True)
    listed = [line for line in lines if line.startswith("USM00072201")]
    text = sounding("USM00072201", "2020-01-01 00", PROFILE[:2])
    routes = {
        "/igra/doc/igra2-station-list.txt": "".join(listed).encode(),
        "/igra/derived/derived-por/USM00072201-drvd.txt.zip": _zip_bytes("USM00072201-drvd.txt", text.encode()),
    }
    with _Server(routes) as srv:
        spec = json.dumps(
            {
                "source": "http",
                "product": "derived",
                "stations": ["USM00072201"],
                "base_url": srv.url,
                "http": {"retries": 0, "timeout_s": 10},
            }
        )
        raw = tmp_path / "raw"
        assert main(["igra-fetch", "--spec", spec, "--out", str(raw)]) == 0
    assert sorted(p.name for p in raw.iterdir()) == [
        "USM00072201-drvd.txt.zip",
        "igra2-station-list.txt",
        "manifest.json",
    ]
    out = tmp_path / "h.zarr"
    assert main(["igra-ingest", "--spec", spec, "--out", str(out), str(raw)]) == 0  # positions from the fetched list
    obs, snd = open_igra(out)
    row = pd.Series(listed[0][12:30].split(), index=["latitude", "longitude"]).astype(float)
    assert snd["latitude"].values[0] == pytest.approx(row["latitude"]) and snd["longitude"].values[0] == pytest.approx(
        row["longitude"]
    )
    assert obs["temperature"].values.tolist() == pytest.approx([288.1, 278.1], abs=1e-4)
    assert xr.open_zarr(out, consolidated=False).attrs["product"] == "derived"
