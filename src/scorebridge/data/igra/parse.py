"""IGRA v2 station files and the station list, parsed into columns (`format.IgraData`).

The parser never loops over records in Python: the whole file is one byte buffer,
lines are found with numpy, and each column of a field is gathered for all records at
once (`buf[starts + column]`) and decoded by a vectorised left-to-right state machine
that validates the text and accumulates the digits. A multi-decade station file
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
from .format import (
    DATA_SLICES,
    DATA_WIDTH,
    HEADER_SLICES,
    HEADER_WIDTH,
    MISSING,
    REMOVED,
    STATION_LIST_SLICES,
    T0,
    IgraData,
    wind_components,
)

__all__ = ["read_bytes", "parse_igra", "read_igra", "parse_station_list", "read_station_list"]

_CHARS = np.array([chr(i) for i in range(256)], dtype="U1")  # byte -> one-character str
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
                    raise InputError(f"expected one file inside the zip archive, found {[m.filename for m in members]}", path)
                return zf.read(members[0])
        return path.read_bytes()
    except FileNotFoundError:
        raise InputError("file not found", path) from None
    except zipfile.BadZipFile as err:
        raise InputError(f"corrupt zip archive: {err}", path) from None


def _lines(buf: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(start, end, line number) of every non-empty line; LF or CRLF line ends."""
    nl = np.flatnonzero(buf == 10)
    starts = np.concatenate([[0], nl + 1])
    ends = np.concatenate([nl, [len(buf)]])
    # CRLF: the carriage return is not part of the record
    has = ends > starts
    cr = np.zeros(len(ends), bool)
    cr[has] = buf[ends[has] - 1] == 13
    ends = ends - cr
    lineno = np.arange(1, len(starts) + 1, dtype=np.int64)
    keep = ends > starts
    return starts[keep], ends[keep], lineno[keep]


class _FieldError(Exception):
    def __init__(self, row: int, column: str, text: str, why: str):
        self.row, self.column, self.text, self.why = row, column, text, why


def _ints(buf: np.ndarray, starts: np.ndarray, name: str, cols: dict[str, tuple[int, int]]) -> np.ndarray:
    """Decode a right-aligned signed integer field of every record at once.

    `starts` are the records' first bytes in `buf` (every record is long enough). The
    field's columns are read one at a time as 1-D gathers, left to right, by a small
    state machine: blanks, then an optional '-', then digits up to the last column.
    Anything else raises _FieldError naming the first bad record.
    """
    a, b = cols[name]
    n = len(starts)
    value = np.zeros(n, np.int32)  # at most 6 columns: fits
    started = np.zeros(n, bool)  # a sign or digit has been seen
    negative = np.zeros(n, bool)
    bad = np.zeros(n, bool)
    digit = started
    d = np.empty(n, np.uint8)
    tmp = np.empty(n, bool)
    for j in range(a, b):
        c = buf[starts + j]
        np.subtract(c, np.uint8(48), out=d)  # wraps around for bytes below '0'
        digit = d <= 9
        blank = c == 32
        minus = c == 45
        np.logical_and(started, ~digit, out=tmp)  # after the sign or first digit: digits only
        bad |= tmp
        np.logical_or(digit, blank, out=tmp)
        tmp |= minus
        bad |= ~tmp  # a character that is neither blank, sign nor digit
        negative |= minus
        value *= 10
        d *= digit
        value += d
        started |= ~blank
    bad |= ~digit  # ends with a digit (a blank field or a lone '-' is malformed)
    if bad.any():
        row = int(np.argmax(bad))
        text = bytes(buf[starts[row] + a : starts[row] + b]).decode("latin-1")
        raise _FieldError(row, name, text, "is not an integer")
    np.negative(value, out=value, where=negative)
    return value.astype(np.int64)


def _text(buf: np.ndarray, starts: np.ndarray, name: str, cols: dict[str, tuple[int, int]]) -> np.ndarray:
    """A character field of every record, stripped of blanks (str array)."""
    a, b = cols[name]
    f = buf[starts[:, None] + np.arange(a, b)]
    return np.char.strip(f.view(f"S{b - a}").ravel().astype(f"U{b - a}"))


def _physical(raw: np.ndarray, scale: float = 1.0, offset: float = 0.0) -> np.ndarray:
    """Scale an integer column to SI; -9999 (missing) and -8888 (QC-removed) -> NaN."""
    out = raw * scale + offset
    out[(raw == MISSING) | (raw == REMOVED)] = np.nan
    return out


def _launch_times(year, month, day, hour, reltime) -> tuple[np.ndarray, np.ndarray]:
    """Nominal launch times (datetime64[ns]) and a mask of impossible dates.

    HOUR is the nominal hour; where it is 99 (missing) the release time (RELTIME, HHMM,
    minutes 99 = unknown) stands in; where both are missing the time is NaT.
    """
    rel_h, rel_m = reltime // 100, reltime % 100
    hour_ok = (hour >= 0) & (hour <= 23)
    rel_ok = (reltime >= 0) & (rel_h <= 23)
    h = np.where(hour_ok, hour, np.where(rel_ok, rel_h, 0))
    m = np.where(~hour_ok & rel_ok & (rel_m < 60), rel_m, 0)
    date_bad = (month < 1) | (month > 12) | (day < 1) | (day > 31)
    mm = np.clip(month, 1, 12)
    dd = np.clip(day, 1, 31)
    ym = (year - 1970) * 12 + (mm - 1)
    first_of_month = ym.astype("datetime64[M]").astype("datetime64[D]")
    days_in_month = ((ym + 1).astype("datetime64[M]").astype("datetime64[D]") - first_of_month).astype(np.int64)
    date_bad |= dd > days_in_month
    t = first_of_month + (dd - 1).astype("timedelta64[D]")
    t = t.astype("datetime64[ns]") + h.astype("timedelta64[h]") + m.astype("timedelta64[m]")
    t[~hour_ok & ~rel_ok] = np.datetime64("NaT")
    return t, date_bad


def parse_igra(data: bytes, source: str | os.PathLike = "<bytes>") -> IgraData:
    """Parse the text of an IGRA v2 station file (LF or CRLF) into columns.

    Raises InputError naming `source`, the line and the column for a header or data
    record that is malformed, and for a sounding whose header promises more (or fewer)
    levels than follow.
    """
    source = str(source)
    buf = np.frombuffer(data, np.uint8)
    starts, ends, lineno = _lines(buf)
    if len(starts) == 0:
        raise InputError("file is empty: no IGRA sounding found", source)
    is_header = buf[starts] == 35  # '#'
    if not is_header[0]:
        raise InputError("expected a header record starting with '#' (IGRA v2 station file)", source, int(lineno[0]))
    hrow = np.flatnonzero(is_header)
    drow = np.flatnonzero(~is_header)

    # header records
    hlen = ends[hrow] - starts[hrow]
    short = hlen < HEADER_WIDTH
    if short.any():
        k = int(np.argmax(short))
        raise InputError(
            f"header record too short ({int(hlen[k])} characters, expected {HEADER_WIDTH})", source, int(lineno[hrow[k]])
        )
    hstart = starts[hrow]
    try:
        hv = {k: _ints(buf, hstart, k, _H) for k in ("YEAR", "MONTH", "DAY", "HOUR", "RELTIME", "NUMLEV", "LAT", "LON")}
    except _FieldError as err:
        raise InputError(
            f"header column {err.column} (columns {_H[err.column][0] + 1}-{_H[err.column][1]}): "
            f"'{err.text}' {err.why}",
            source,
            int(lineno[hrow[err.row]]),
        ) from None

    # sounding structure: NUMLEV data records follow each header
    follow = np.diff(np.concatenate([hrow, [len(starts)]])) - 1
    numlev = hv["NUMLEV"]
    wrong = follow != numlev
    if wrong.any():
        k = int(np.argmax(wrong))
        line = int(lineno[hrow[k]])
        if follow[k] < numlev[k]:
            where = "the file ends" if k == len(hrow) - 1 else f"the next header at line {int(lineno[hrow[k + 1]])}"
            raise InputError(
                f"truncated sounding: the header promises {int(numlev[k])} levels (NUMLEV) but only "
                f"{int(follow[k])} data records follow before {where}",
                source,
                line,
            )
        extra = int(lineno[hrow[k] + numlev[k] + 1])
        raise InputError(
            f"the header promises {int(numlev[k])} levels (NUMLEV) but {int(follow[k])} data records follow "
            f"(line {extra} should be a header record starting with '#')",
            source,
            line,
        )

    # data records
    dlen = ends[drow] - starts[drow]
    short = dlen < DATA_WIDTH
    if short.any():
        k = int(np.argmax(short))
        raise InputError(
            f"data record too short ({int(dlen[k])} characters, expected {DATA_WIDTH}): truncated line?",
            source,
            int(lineno[drow[k]]),
        )
    dstart = starts[drow]
    try:
        raw = {k: _ints(buf, dstart, k, _D) for k in ("LVLTYP1", "LVLTYP2", "ETIME", "PRESS", "GPH", "TEMP", "RH", "DPDP", "WDIR", "WSPD")}
    except _FieldError as err:
        raise InputError(
            f"data column {err.column} (columns {_D[err.column][0] + 1}-{_D[err.column][1]}): '{err.text}' {err.why}",
            source,
            int(lineno[drow[err.row]]),
        ) from None

    # sounding index
    time, date_bad = _launch_times(hv["YEAR"], hv["MONTH"], hv["DAY"], hv["HOUR"], hv["RELTIME"])
    if date_bad.any():
        k = int(np.argmax(date_bad))
        raise InputError(
            f"header columns YEAR/MONTH/DAY: {int(hv['YEAR'][k])}-{int(hv['MONTH'][k]):02d}-{int(hv['DAY'][k]):02d} is not a date",
            source,
            int(lineno[hrow[k]]),
        )
    hour = hv["HOUR"]
    reltime = hv["RELTIME"]
    soundings = {
        "station": _text(buf, hstart, "ID", _H).astype(object),
        "time": time,
        "latitude": hv["LAT"] / 1e4,
        "longitude": hv["LON"] / 1e4,
        "hour": np.where((hour >= 0) & (hour <= 23), hour, -1).astype(np.int16),
        "reltime": np.where(reltime == 9999, -1, reltime).astype(np.int16),
        "p_src": _text(buf, hstart, "P_SRC", _H).astype(object),
        "np_src": _text(buf, hstart, "NP_SRC", _H).astype(object),
        "nlevels": numlev.astype(np.int64),
        "line": lineno[hrow],
    }

    # observations, SI units
    et = raw["ETIME"]
    etime = np.where(et >= 0, (et // 100) * 60 + et % 100, et).astype(np.float64)
    wspd = _physical(raw["WSPD"], 0.1)
    wdir = _physical(raw["WDIR"])
    u, v = (np.round(x, 6) for x in wind_components(wspd, wdir))  # drop float dust like sin(pi) = 1e-16
    obs = {
        "pressure": _physical(raw["PRESS"]),
        "gph": _physical(raw["GPH"]),
        "temperature": _physical(raw["TEMP"], 0.1, T0),
        "rh": _physical(raw["RH"], 0.1),
        "dpd": _physical(raw["DPDP"], 0.1),
        "wdir": wdir,
        "wspd": wspd,
        "u": u,
        "v": v,
        "etime": _physical(etime),
    }
    obs = {k: x.astype(np.float32) for k, x in obs.items()}
    for name, col in (("pflag", "PFLAG"), ("zflag", "ZFLAG"), ("tflag", "TFLAG")):
        obs[name] = _CHARS[buf[dstart + _D[col][0]]]
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
