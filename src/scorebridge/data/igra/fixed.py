"""Fixed-width IGRA text, vectorised: the records of a byte buffer and their fields.

Shared by the sounding-data parser (`parse`) and the derived-parameter parser
(`derived`). Every field of every record is gathered at once (`buf[starts + column]`)
and decoded by a left-to-right state machine that validates the text; a malformed field
raises `FieldError` naming the first bad record, which the callers turn into an
InputError naming the file, line and columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import InputError
from .format import MISSING, REMOVED

__all__ = [
    "CHARS",
    "FieldError",
    "Records",
    "record_lines",
    "split_records",
    "int_field",
    "text_field",
    "physical",
    "launch_times",
]

CHARS = np.array([chr(i) for i in range(256)], dtype="U1")  # byte -> one-character str


def record_lines(buf: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


class FieldError(Exception):
    def __init__(self, row: int, column: str, text: str, why: str):
        self.row, self.column, self.text, self.why = row, column, text, why


def int_field(buf: np.ndarray, starts: np.ndarray, name: str, cols: dict[str, tuple[int, int]]) -> np.ndarray:
    """Decode a right-aligned signed integer field of every record at once.

    `starts` are the records' first bytes in `buf` (every record is long enough). The
    field's columns are read one at a time as 1-D gathers, left to right, by a small
    state machine: blanks, then an optional '-', then digits up to the last column.
    Anything else raises FieldError naming the first bad record.
    """
    a, b = cols[name]
    n = len(starts)
    value = np.zeros(n, np.int32)  # at most 7 columns: fits
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
        raise FieldError(row, name, text, "is not an integer")
    np.negative(value, out=value, where=negative)
    return value.astype(np.int64)


def text_field(buf: np.ndarray, starts: np.ndarray, name: str, cols: dict[str, tuple[int, int]]) -> np.ndarray:
    """A character field of every record, stripped of blanks (str array)."""
    a, b = cols[name]
    f = buf[starts[:, None] + np.arange(a, b)]
    return np.char.strip(f.view(f"S{b - a}").ravel().astype(f"U{b - a}"))


def physical(
    raw: np.ndarray, scale: float = 1.0, offset: float = 0.0, missing: tuple[int, ...] = (MISSING, REMOVED)
) -> np.ndarray:
    """Scale an integer column to SI; the `missing` codes (by default -9999, missing, and
    -8888, removed by QC) -> NaN."""
    out = raw * scale + offset
    out[np.isin(raw, missing)] = np.nan
    return out


def launch_times(year, month, day, hour, reltime) -> tuple[np.ndarray, np.ndarray]:
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


@dataclass
class Records:
    """The header and data records of one station file, checked for structure.

    `header` holds the decoded integer header fields (int64 arrays, one per sounding),
    `hstart`/`dstart` the first byte of each header/data record in `buf`, `hline`/`dline`
    their 1-based line numbers.
    """

    buf: np.ndarray
    hstart: np.ndarray
    hline: np.ndarray
    dstart: np.ndarray
    dline: np.ndarray
    header: dict[str, np.ndarray]

    def data(self, names, cols: dict[str, tuple[int, int]], source: str) -> dict[str, np.ndarray]:
        """The integer data fields `names` of every data record (errors name line and columns)."""
        return _decode(self.buf, self.dstart, self.dline, names, cols, "data", source)

    def times(self, source: str) -> np.ndarray:
        """Nominal launch times from YEAR/MONTH/DAY/HOUR/RELTIME; an impossible date is an error."""
        hv = self.header
        time, date_bad = launch_times(hv["YEAR"], hv["MONTH"], hv["DAY"], hv["HOUR"], hv["RELTIME"])
        if date_bad.any():
            k = int(np.argmax(date_bad))
            raise InputError(
                f"header columns YEAR/MONTH/DAY: {int(hv['YEAR'][k])}-{int(hv['MONTH'][k]):02d}-{int(hv['DAY'][k]):02d} is not a date",
                source,
                int(self.hline[k]),
            )
        return time


def _decode(buf, starts, lines, names, cols, what: str, source: str) -> dict[str, np.ndarray]:
    try:
        return {k: int_field(buf, starts, k, cols) for k in names}
    except FieldError as err:
        a, b = cols[err.column]
        raise InputError(
            f"{what} column {err.column} (columns {a + 1}-{b}): '{err.text}' {err.why}", source, int(lines[err.row])
        ) from None


def split_records(
    data: bytes,
    source: str,
    *,
    header_width: int,
    data_width: int,
    header_names,
    header_cols: dict[str, tuple[int, int]],
) -> Records:
    """Find the header ('#') and data records of `data`, decode the integer header fields
    `header_names` (NUMLEV among them) and check that each header is followed by NUMLEV
    data records and that every record is wide enough. Errors name `source` and the line."""
    buf = np.frombuffer(data, np.uint8)
    starts, ends, lineno = record_lines(buf)
    if len(starts) == 0:
        raise InputError("file is empty: no IGRA sounding found", source)
    is_header = buf[starts] == 35  # '#'
    if not is_header[0]:
        raise InputError("expected a header record starting with '#' (IGRA v2 station file)", source, int(lineno[0]))
    hrow = np.flatnonzero(is_header)
    drow = np.flatnonzero(~is_header)

    hlen = ends[hrow] - starts[hrow]
    short = hlen < header_width
    if short.any():
        k = int(np.argmax(short))
        raise InputError(
            f"header record too short ({int(hlen[k])} characters, expected {header_width})",
            source,
            int(lineno[hrow[k]]),
        )
    hv = _decode(buf, starts[hrow], lineno[hrow], header_names, header_cols, "header", source)

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

    dlen = ends[drow] - starts[drow]
    short = dlen < data_width
    if short.any():
        k = int(np.argmax(short))
        raise InputError(
            f"data record too short ({int(dlen[k])} characters, expected {data_width}): truncated line?",
            source,
            int(lineno[drow[k]]),
        )
    return Records(buf, starts[hrow], lineno[hrow], starts[drow], lineno[drow], hv)
