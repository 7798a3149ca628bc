"""IGRA v2 station files and the station list, parsed into columns (`format.IgraData`).

The parser never loops over records in Python: the whole file is one byte buffer,
lines are found with numpy, and each column of a field is gathered for all records at
once (`buf[starts + column]`) and decoded by a vectorised left-to-right state machine
that validates the text and accumulates the digits (`fixed`). A multi-decade station file
(~100 MB) parses in a few seconds (see benchmarks/). Errors name the file, the line
and the columns of a malformed record.
"""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from ...errors import InputError
from .derived import DERIVED_HINT, detect_product
from .fixed import CHARS, physical, split_records, text_field
from .format import (
    DATA_SLICES,
    DATA_WIDTH,
    HEADER_SLICES,
    HEADER_WIDTH,
    STATION_LIST_SLICES,
    T0,
    IgraData,
    wind_components,
)

__all__ = ["read_bytes", "parse_igra", "read_igra", "parse_station_list", "read_station_list"]

_H = HEADER_SLICES
_D = DATA_SLICES


def read_bytes(path: str | os.PathLike) -> bytes:
    """The text of an IGRA file as bytes: plain, or the single member of a `.zip`."""
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                members = [m for m in zf.infolist() if not m.is_dir()]
                if len(members) != 1:
                    raise InputError(
                        f"expected one file inside the zip archive, found {[m.filename for m in members]}", path
                    )
                return zf.read(members[0])
        return path.read_bytes()
    except FileNotFoundError:
        raise InputError("file not found", path) from None
    except zipfile.BadZipFile as err:
        raise InputError(f"corrupt zip archive: {err}", path) from None


def parse_igra(data: bytes, source: str | os.PathLike = "<bytes>") -> IgraData:
    """Parse the text of an IGRA v2 station file (LF or CRLF) into columns.

    Raises InputError naming `source`, the line and the column for a header or data
    record that is malformed, and for a sounding whose header promises more (or fewer)
    levels than follow.
    """
    source = str(source)
    if detect_product(data) == "derived":
        raise InputError(
            f"this is an IGRA derived-parameter file ({DERIVED_HINT}), not sounding data; set product: derived", source
        )
    rec = split_records(
        data,
        source,
        header_width=HEADER_WIDTH,
        data_width=DATA_WIDTH,
        header_names=("YEAR", "MONTH", "DAY", "HOUR", "RELTIME", "NUMLEV", "LAT", "LON"),
        header_cols=_H,
    )
    buf, hstart, dstart, hv = rec.buf, rec.hstart, rec.dstart, rec.header
    raw = rec.data(("LVLTYP1", "LVLTYP2", "ETIME", "PRESS", "GPH", "TEMP", "RH", "DPDP", "WDIR", "WSPD"), _D, source)

    # sounding index
    time = rec.times(source)
    numlev = hv["NUMLEV"]
    hour = hv["HOUR"]
    reltime = hv["RELTIME"]
    soundings = {
        "station": text_field(buf, hstart, "ID", _H).astype(object),
        "time": time,
        "latitude": hv["LAT"] / 1e4,
        "longitude": hv["LON"] / 1e4,
        "hour": np.where((hour >= 0) & (hour <= 23), hour, -1).astype(np.int16),
        "reltime": np.where(reltime == 9999, -1, reltime).astype(np.int16),
        "p_src": text_field(buf, hstart, "P_SRC", _H).astype(object),
        "np_src": text_field(buf, hstart, "NP_SRC", _H).astype(object),
        "nlevels": numlev.astype(np.int64),
        "line": rec.hline,
    }

    # observations, SI units
    et = raw["ETIME"]
    etime = np.where(et >= 0, (et // 100) * 60 + et % 100, et).astype(np.float64)
    wspd = physical(raw["WSPD"], 0.1)
    wdir = physical(raw["WDIR"])
    u, v = (np.round(x, 6) for x in wind_components(wspd, wdir))  # drop float dust like sin(pi) = 1e-16
    obs = {
        "pressure": physical(raw["PRESS"]),
        "gph": physical(raw["GPH"]),
        "temperature": physical(raw["TEMP"], 0.1, T0),
        "rh": physical(raw["RH"], 0.1),
        "dpd": physical(raw["DPDP"], 0.1),
        "wdir": wdir,
        "wspd": wspd,
        "u": u,
        "v": v,
        "etime": physical(etime),
    }
    obs = {k: x.astype(np.float32) for k, x in obs.items()}
    for name, col in (("pflag", "PFLAG"), ("zflag", "ZFLAG"), ("tflag", "TFLAG")):
        obs[name] = CHARS[buf[dstart + _D[col][0]]]
    obs["lvltyp1"] = raw["LVLTYP1"].astype(np.int8)
    obs["lvltyp2"] = raw["LVLTYP2"].astype(np.int8)
    return IgraData(soundings, obs, source, [source])


def read_igra(path: str | os.PathLike) -> IgraData:
    """Parse an IGRA v2 station file: `{ID}-data.txt` or `{ID}-data.txt.zip`."""
    return parse_igra(read_bytes(path), path)


# --------------------------------------------------------------------------- station list


def parse_station_list(text: bytes | str, source: str | os.PathLike = "<station list>") -> pd.DataFrame:
    """Parse `igra2-station-list.txt` into a DataFrame.

    Columns: id, latitude, longitude (deg; NaN for mobile stations), elevation (m; NaN
    when missing or mobile), state, name, first_year, last_year, nobs.
    """
    if isinstance(text, bytes):
        text = text.decode("latin-1")
    c = STATION_LIST_SLICES
    rows = []
    for i, line in enumerate(io.StringIO(text), start=1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        if len(line) < 81:
            raise InputError(f"station list record too short ({len(line)} characters, expected at least 81)", source, i)

        def get(name, conv, line=line, i=i):
            a, b = c[name]
            raw = line[a:b]
            try:
                return conv(raw.strip() if raw.strip() else "nan" if conv is float else raw)
            except ValueError:
                raise InputError(f"column {name} (columns {a + 1}-{b}): '{raw}' is not a number", source, i) from None

        lat = get("LATITUDE", float)
        lon = get("LONGITUDE", float)
        elev = get("ELEVATION", float)
        rows.append(
            (
                line[0:11].strip(),
                np.nan if lat <= -98.0 else lat,
                np.nan if lon <= -998.0 else lon,
                np.nan if elev <= -998.0 else elev,
                line[38:40].strip(),
                line[41:71].strip(),
                get("FSTYEAR", int),
                get("LSTYEAR", int),
                get("NOBS", int) if len(line) > 82 and line[82:88].strip() else -1,
            )
        )
    if not rows:
        raise InputError("station list is empty", source)
    return pd.DataFrame(
        rows, columns=["id", "latitude", "longitude", "elevation", "state", "name", "first_year", "last_year", "nobs"]
    )


def read_station_list(path: str | os.PathLike) -> pd.DataFrame:
    try:
        return parse_station_list(Path(path).read_bytes(), path)
    except FileNotFoundError:
        raise InputError("station list not found", path) from None
