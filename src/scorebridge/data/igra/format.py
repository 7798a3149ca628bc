"""IGRA v2 fixed-width text: the format, the parsed-table container and the writers.

Written to the official format descriptions (IGRA v2.2, 2023-01-19:
`igra2-data-format.txt`, `igra2-list-format.txt`). A station file is a sequence of
soundings; each is one header record (starting with ``#``) followed by NUMLEV data
records. Fields run into each other, so every field is read (`parse`) and written
(here) by its column positions.

Units of the parsed table (SI): pressure Pa, geopotential height m, temperature K (TEMP
is tenths of °C), relative humidity % (RH is tenths of %), dew-point depression K
(DPDP tenths of °C), wind direction degrees from north, wind speed m/s (WSPD tenths
of m/s), u/v m/s (meteorological convention: the direction the wind blows *from*),
elapsed time since launch s (ETIME is MMMSS). -9999 (missing) and -8888 (removed by
IGRA quality assurance) become NaN.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

__all__ = [
    "HEADER_COLUMNS",
    "DATA_COLUMNS",
    "STATION_LIST_COLUMNS",
    "HEADER_SLICES",
    "DATA_SLICES",
    "STATION_LIST_SLICES",
    "HEADER_WIDTH",
    "DATA_WIDTH",
    "STATION_LIST_NAME",
    "MISSING",
    "REMOVED",
    "T0",
    "IgraData",
    "format_header",
    "format_data_record",
    "format_data_records",
    "format_station_list",
    "wind_components",
    "wind_speed_direction",
]

MISSING = -9999  # value missing prior to quality assurance
REMOVED = -8888  # value removed by IGRA quality assurance
T0 = 273.15  # K at 0 °C

# (name, first column, last column) -- 1-based and inclusive, as in the format description.
HEADER_COLUMNS: list[tuple[str, int, int]] = [
    ("HEADREC", 1, 1),
    ("ID", 2, 12),
    ("YEAR", 14, 17),
    ("MONTH", 19, 20),
    ("DAY", 22, 23),
    ("HOUR", 25, 26),
    ("RELTIME", 28, 31),
    ("NUMLEV", 33, 36),
    ("P_SRC", 38, 45),
    ("NP_SRC", 47, 54),
    ("LAT", 56, 62),
    ("LON", 64, 71),
]
DATA_COLUMNS: list[tuple[str, int, int]] = [
    ("LVLTYP1", 1, 1),
    ("LVLTYP2", 2, 2),
    ("ETIME", 4, 8),
    ("PRESS", 10, 15),
    ("PFLAG", 16, 16),
    ("GPH", 17, 21),
    ("ZFLAG", 22, 22),
    ("TEMP", 23, 27),
    ("TFLAG", 28, 28),
    ("RH", 29, 33),
    ("DPDP", 35, 39),
    ("WDIR", 41, 45),
    ("WSPD", 47, 51),
]
STATION_LIST_COLUMNS: list[tuple[str, int, int]] = [
    ("ID", 1, 11),
    ("LATITUDE", 13, 20),
    ("LONGITUDE", 22, 30),
    ("ELEVATION", 32, 37),
    ("STATE", 39, 40),
    ("NAME", 42, 71),
    ("FSTYEAR", 73, 76),
    ("LSTYEAR", 78, 81),
    ("NOBS", 83, 88),
]
HEADER_WIDTH = 71
DATA_WIDTH = 51
# name -> 0-based half-open column slice
HEADER_SLICES = {name: (a - 1, b) for name, a, b in HEADER_COLUMNS}
DATA_SLICES = {name: (a - 1, b) for name, a, b in DATA_COLUMNS}
STATION_LIST_SLICES = {name: (a - 1, b) for name, a, b in STATION_LIST_COLUMNS}
STATION_LIST_NAME = "igra2-station-list.txt"  # the station list's file name at NCEI

# obs-table variables (dim obs) and sounding-index variables (dim sounding) of IgraData
OBS_FLOAT = ("pressure", "gph", "temperature", "rh", "dpd", "wdir", "wspd", "u", "v", "etime")
OBS_FLAGS = ("pflag", "zflag", "tflag")
OBS_INT = ("lvltyp1", "lvltyp2")


# --------------------------------------------------------------------------- container


@dataclass
class IgraData:
    """Parsed soundings as columns.

    `soundings` holds one entry per sounding (arrays of length S): ``station`` (str),
    ``time`` (datetime64[ns], nominal launch time), ``latitude``, ``longitude`` (deg),
    ``hour`` (nominal hour, -1 missing), ``reltime`` (HHMM release time, -1 missing),
    ``p_src``, ``np_src`` (str), ``nlevels`` (int) and ``line`` (1-based line of the
    header record in ``source``). `obs` holds one entry per level (arrays of length
    sum(nlevels)) in sounding order: the float variables in OBS_FLOAT (SI units, NaN
    for missing / QC-removed), the flags in OBS_FLAGS (one character each) and the
    level types in OBS_INT.
    """

    soundings: dict[str, np.ndarray]
    obs: dict[str, np.ndarray]
    source: str = ""
    files: list[str] = field(default_factory=list)

    @property
    def n_soundings(self) -> int:
        return int(len(self.soundings["nlevels"]))

    @property
    def n_obs(self) -> int:
        return int(len(self.obs["pressure"]))

    @property
    def first(self) -> np.ndarray:
        """Index of each sounding's first level in the obs table."""
        n = self.soundings["nlevels"].astype(np.int64)
        return np.concatenate([[0], np.cumsum(n)[:-1]]).astype(np.int64) if len(n) else np.zeros(0, np.int64)

    @property
    def sounding_of_obs(self) -> np.ndarray:
        """For every obs row, the index of its sounding."""
        return np.repeat(np.arange(self.n_soundings), self.soundings["nlevels"])

    def obs_column(self, name: str) -> np.ndarray:
        """A per-sounding variable (station, time, latitude, longitude) broadcast to obs rows."""
        return np.repeat(self.soundings[name], self.soundings["nlevels"])

    def select_soundings(self, keep: np.ndarray) -> "IgraData":
        keep = np.asarray(keep, bool)
        level_keep = np.repeat(keep, self.soundings["nlevels"])
        return IgraData(
            {k: v[keep] for k, v in self.soundings.items()},
            {k: v[level_keep] for k, v in self.obs.items()},
            self.source,
            list(self.files),
        )

    def select_levels(self, keep: np.ndarray) -> "IgraData":
        """Keep the obs rows in `keep`; soundings left without levels are dropped."""
        keep = np.asarray(keep, bool)
        nlev = np.bincount(self.sounding_of_obs[keep], minlength=self.n_soundings)
        snd = {k: v for k, v in self.soundings.items()}
        snd["nlevels"] = nlev.astype(np.int64)
        out = IgraData(snd, {k: v[keep] for k, v in self.obs.items()}, self.source, list(self.files))
        return out.select_soundings(nlev > 0)

    @staticmethod
    def concat(parts: Sequence["IgraData"]) -> "IgraData":
        parts = list(parts)
        if not parts:
            return IgraData.empty()
        return IgraData(
            {k: np.concatenate([p.soundings[k] for p in parts]) for k in parts[0].soundings},
            {k: np.concatenate([p.obs[k] for p in parts]) for k in parts[0].obs},
            ";".join(p.source for p in parts),
            [f for p in parts for f in p.files],
        )

    @staticmethod
    def empty() -> "IgraData":
        snd = {
            "station": np.zeros(0, object),
            "time": np.zeros(0, "datetime64[ns]"),
            "latitude": np.zeros(0, np.float64),
            "longitude": np.zeros(0, np.float64),
            "hour": np.zeros(0, np.int16),
            "reltime": np.zeros(0, np.int16),
            "p_src": np.zeros(0, object),
            "np_src": np.zeros(0, object),
            "nlevels": np.zeros(0, np.int64),
            "line": np.zeros(0, np.int64),
        }
        obs = {k: np.zeros(0, np.float32) for k in OBS_FLOAT}
        obs.update({k: np.zeros(0, "U1") for k in OBS_FLAGS})
        obs.update({k: np.zeros(0, np.int8) for k in OBS_INT})
        return IgraData(snd, obs)


# --------------------------------------------------------------------------- wind


def wind_components(wspd: np.ndarray, wdir: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """u, v (m/s) from speed and meteorological direction (deg the wind blows from).

    u = -|V| sin(dir), v = -|V| cos(dir): a wind from the north (360°) blows southward, v < 0.
    """
    rad = np.deg2rad(wdir)
    return -wspd * np.sin(rad), -wspd * np.cos(rad)


def wind_speed_direction(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Speed (m/s) and meteorological direction (deg in (0, 360], 0 for calm) from u, v."""
    speed = np.hypot(u, v)
    direction = np.mod(np.rad2deg(np.arctan2(-u, -v)), 360.0)
    direction = np.where(direction == 0.0, 360.0, direction)
    return speed, np.where(speed == 0.0, 0.0, direction)


# --------------------------------------------------------------------------- writing


def format_header(
    station: str,
    year: int,
    month: int,
    day: int,
    hour: int,
    reltime: int,
    numlev: int,
    lat: float,
    lon: float,
    p_src: str = "",
    np_src: str = "",
) -> str:
    """One header record (71 columns; HOUR 99 / RELTIME 9999 for missing)."""
    if len(station) > 11:
        raise ValueError(f"station id '{station}' longer than 11 characters")
    lat_i = int(round(lat * 1e4))
    lon_i = int(round(lon * 1e4))
    return (
        f"#{station:<11s} {year:4d} {month:02d} {day:02d} {hour:02d} {reltime:04d} {numlev:4d} "
        f"{p_src:<8.8s} {np_src:<8.8s} {lat_i:7d} {lon_i:8d}"
    )


def _fit(value: int, width: int, name: str) -> int:
    if not (-(10 ** (width - 1)) < value < 10**width):
        raise ValueError(f"{name}={value} does not fit in {width} columns")
    return value


def format_data_record(
    lvltyp1: int,
    lvltyp2: int,
    etime: int,
    press: int,
    pflag: str,
    gph: int,
    zflag: str,
    temp: int,
    tflag: str,
    rh: int,
    dpdp: int,
    wdir: int,
    wspd: int,
) -> str:
    """One data record in IGRA integer units (Pa, m, tenths °C, tenths %, deg, tenths m/s).

    Columns 1-51 as in the format description, plus the trailing blank NCEI files carry.
    """
    return (
        f"{lvltyp1:1d}{lvltyp2:1d} {_fit(etime, 5, 'ETIME'):5d} {_fit(press, 6, 'PRESS'):6d}{pflag:1.1s}"
        f"{_fit(gph, 5, 'GPH'):5d}{zflag:1.1s}{_fit(temp, 5, 'TEMP'):5d}{tflag:1.1s}{_fit(rh, 5, 'RH'):5d} "
        f"{_fit(dpdp, 5, 'DPDP'):5d} {_fit(wdir, 5, 'WDIR'):5d} {_fit(wspd, 5, 'WSPD'):5d} "
    )


def format_station_list(rows: Iterable[dict]) -> str:
    """Station-list records (columns as in igra2-list-format.txt), LF line ends."""
    out = []
    for r in rows:
        out.append(
            f"{r['id']:<11s} {r['latitude']:8.4f} {r['longitude']:9.4f} {r.get('elevation', -999.9):6.1f} "
            f"{r.get('state', ''):<2.2s} {r['name']:<30.30s} {r['first_year']:4d} {r['last_year']:4d} {r.get('nobs', 0):6d}"
        )
    return "\n".join(out) + "\n"


def _right_aligned(values: np.ndarray, width: int, name: str) -> np.ndarray:
    """(n, width) bytes of right-aligned signed integers, all at once."""
    v = np.asarray(values, dtype=np.int64)
    neg = v < 0
    a = np.abs(v)
    if ((a >= 10**width) | (neg & (a >= 10 ** (width - 1)))).any():
        raise ValueError(f"{name}: a value does not fit in {width} columns")
    ndig = 1 + sum((a >= 10**k).astype(np.int64) for k in range(1, width))
    out = np.empty((len(v), width), np.uint8)
    for k in range(width):  # k-th digit from the right
        digit = (a // 10**k) % 10
        out[:, width - 1 - k] = np.where(k < ndig, 48 + digit, np.where((k == ndig) & neg, 45, 32))
    return out


def format_data_records(fields: dict[str, np.ndarray]) -> np.ndarray:
    """Many data records at once: a (n, 53) byte matrix, each row one record + blank + LF.

    `fields` maps the DATA_COLUMNS names (LVLTYP1 ... WSPD) to integer arrays in IGRA
    units, and the flags (PFLAG, ZFLAG, TFLAG) to one-character str or byte arrays.
    Row-for-row identical to :func:`format_data_record`.
    """
    n = len(fields["PRESS"])
    out = np.full((n, DATA_WIDTH + 2), 32, np.uint8)
    out[:, -1] = 10
    for name, a, b in DATA_COLUMNS:
        x = np.asarray(fields[name])
        if name.endswith("FLAG"):
            out[:, a - 1] = np.frombuffer(x.astype("S1").tobytes(), np.uint8) if x.dtype.kind in "US" else x
        else:
            out[:, a - 1 : b] = _right_aligned(x, b - a + 1, name)
    return out
