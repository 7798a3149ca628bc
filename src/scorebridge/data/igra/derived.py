"""IGRA v2 derived-parameter files (`{ID}-drvd.txt`): the format, a writer and the parser.

Written to the official description (IGRA v2.2, 2023-01-19: `igra2-derived-format.txt`).
Each sounding is a 157-column header record (station, date, nominal hour, release time,
NUMLEV, then 20 sounding parameters: precipitable water, inversion, mixed layer,
freezing level, LCL, LFC, LNB, stability indices, CAPE, CIN) followed by NUMLEV
151-column data records, one per pressure level (the surface first): 19 fields of 7
columns. Every value is an integer; -99999 is missing. The header carries no latitude
or longitude: `place_stations` takes them from the station list.

Units of the parsed table: pressures and vapour pressures Pa, heights m (the header's
heights are above the surface), temperatures K (TEMP, PTEMP, VTEMP, VPTEMP are K * 10),
vertical gradients per km (K/km, %/km, m/s per km; given * 10), relative humidity %
(* 10), u and v m/s (* 10), precipitable water mm (* 100), inversion temperature
difference K (* 10), the stability indices °C, CAPE and CIN J/kg, the refractive index
in N-units as given.
"""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np
import pandas as pd

from ...errors import InputError
from .fixed import physical, split_records, text_field
from .format import HEADER_WIDTH, IgraData

__all__ = [
    "DERIVED_HEADER_COLUMNS",
    "DERIVED_DATA_COLUMNS",
    "DERIVED_HEADER_WIDTH",
    "DERIVED_DATA_WIDTH",
    "DERIVED_MISSING",
    "LEVEL_VARIABLES",
    "SOUNDING_VARIABLES",
    "DERIVED_ATTRS",
    "DERIVED_HINT",
    "DATA_HINT",
    "detect_product",
    "format_derived_header",
    "format_derived_record",
    "parse_derived",
    "place_stations",
]

DERIVED_MISSING = -99999
DERIVED_HINT = "igra2-derived-format.txt: a 157-column header with precipitable water, CAPE and more, without LAT/LON"
DATA_HINT = "igra2-data-format.txt: a 71-column header with LAT/LON"

# (name, first column, last column) -- 1-based and inclusive, as in the format description.
DERIVED_HEADER_COLUMNS: list[tuple[str, int, int]] = [
    ("HEADREC", 1, 1),
    ("ID", 2, 12),
    ("YEAR", 14, 17),
    ("MONTH", 19, 20),
    ("DAY", 22, 23),
    ("HOUR", 25, 26),
    ("RELTIME", 28, 31),
    ("NUMLEV", 32, 36),
    ("PW", 38, 43),
    ("INVPRESS", 44, 49),
    ("INVHGT", 50, 55),
    ("INVTEMPDIF", 56, 61),
    ("MIXPRESS", 62, 67),
    ("MIXHGT", 68, 73),
    ("FRZPRESS", 74, 79),
    ("FRZHGT", 80, 85),
    ("LCLPRESS", 86, 91),
    ("LCLHGT", 92, 97),
    ("LFCPRESS", 98, 103),
    ("LFCHGT", 104, 109),
    ("LNBPRESS", 110, 115),
    ("LNBHGT", 116, 121),
    ("LI", 122, 127),
    ("SI", 128, 133),
    ("KI", 134, 139),
    ("TTI", 140, 145),
    ("CAPE", 146, 151),
    ("CIN", 152, 157),
]
DERIVED_DATA_COLUMNS: list[tuple[str, int, int]] = [
    ("PRESS", 1, 7),
    ("REPGPH", 9, 15),
    ("CALCGPH", 17, 23),
    ("TEMP", 25, 31),
    ("TEMPGRAD", 33, 39),
    ("PTEMP", 41, 47),
    ("PTEMPGRAD", 49, 55),
    ("VTEMP", 57, 63),
    ("VPTEMP", 65, 71),
    ("VAPPRESS", 73, 79),
    ("SATVAP", 81, 87),
    ("REPRH", 89, 95),
    ("CALCRH", 97, 103),
    ("RHGRAD", 105, 111),
    ("UWND", 113, 119),
    ("UWDGRAD", 121, 127),
    ("VWND", 129, 135),
    ("VWNDGRAD", 137, 143),
    ("N", 145, 151),
]
DERIVED_HEADER_WIDTH = 157
DERIVED_DATA_WIDTH = 151
_DH = {name: (a - 1, b) for name, a, b in DERIVED_HEADER_COLUMNS}
_DD = {name: (a - 1, b) for name, a, b in DERIVED_DATA_COLUMNS}

# field -> (store variable, scale to the stored unit, units, long name)
LEVEL_VARIABLES: dict[str, tuple[str, float, str, str]] = {
    "PRESS": ("pressure", 1.0, "Pa", "reported pressure"),
    "REPGPH": ("gph", 1.0, "m", "reported geopotential height"),
    "CALCGPH": (
        "calc_gph",
        1.0,
        "m",
        "calculated geopotential height (hydrostatic, from the next lower reported height)",
    ),
    "TEMP": ("temperature", 0.1, "K", "reported temperature"),
    "TEMPGRAD": (
        "temperature_gradient",
        0.1,
        "K km-1",
        "temperature gradient to the next higher level with a temperature",
    ),
    "PTEMP": ("potential_temperature", 0.1, "K", "potential temperature"),
    "PTEMPGRAD": (
        "potential_temperature_gradient",
        0.1,
        "K km-1",
        "potential temperature gradient to the next higher level",
    ),
    "VTEMP": ("virtual_temperature", 0.1, "K", "virtual temperature"),
    "VPTEMP": ("virtual_potential_temperature", 0.1, "K", "virtual potential temperature"),
    "VAPPRESS": ("vapor_pressure", 0.1, "Pa", "vapour pressure (from temperature, pressure and dew-point depression)"),
    "SATVAP": ("saturation_vapor_pressure", 0.1, "Pa", "saturation vapour pressure"),
    "REPRH": ("rh", 0.1, "%", "reported relative humidity"),
    "CALCRH": ("calc_rh", 0.1, "%", "calculated relative humidity"),
    "RHGRAD": ("rh_gradient", 0.1, "% km-1", "relative humidity gradient to the next higher usable level"),
    "UWND": ("u", 0.1, "m s-1", "eastward wind"),
    "UWDGRAD": ("u_gradient", 0.1, "m s-1 km-1", "vertical gradient of the eastward wind"),
    "VWND": ("v", 0.1, "m s-1", "northward wind"),
    "VWNDGRAD": ("v_gradient", 0.1, "m s-1 km-1", "vertical gradient of the northward wind"),
    "N": ("refractive_index", 1.0, "1", "refractive index (N-units)"),
}
SOUNDING_VARIABLES: dict[str, tuple[str, float, str, str]] = {
    "PW": ("precipitable_water", 0.01, "mm", "precipitable water between the surface and 500 hPa"),
    "INVPRESS": ("inversion_pressure", 1.0, "Pa", "pressure of the warmest level (when above the surface)"),
    "INVHGT": ("inversion_height", 1.0, "m", "height above the surface of the warmest level"),
    "INVTEMPDIF": ("inversion_temperature_difference", 0.1, "K", "warmest minus surface temperature"),
    "MIXPRESS": ("mixed_layer_pressure", 1.0, "Pa", "pressure at the top of the mixed layer (parcel method)"),
    "MIXHGT": ("mixed_layer_height", 1.0, "m", "height above the surface of the top of the mixed layer"),
    "FRZPRESS": ("freezing_level_pressure", 1.0, "Pa", "pressure where the temperature first reaches freezing"),
    "FRZHGT": ("freezing_level_height", 1.0, "m", "height above the surface of the freezing level"),
    "LCLPRESS": ("lcl_pressure", 1.0, "Pa", "pressure of the lifting condensation level"),
    "LCLHGT": ("lcl_height", 1.0, "m", "height above the surface of the lifting condensation level"),
    "LFCPRESS": ("lfc_pressure", 1.0, "Pa", "pressure of the level of free convection"),
    "LFCHGT": ("lfc_height", 1.0, "m", "height above the surface of the level of free convection"),
    "LNBPRESS": ("lnb_pressure", 1.0, "Pa", "pressure of the level of neutral buoyancy"),
    "LNBHGT": ("lnb_height", 1.0, "m", "height above the surface of the level of neutral buoyancy"),
    "LI": ("lifted_index", 1.0, "degC", "lifted index"),
    "SI": ("showalter_index", 1.0, "degC", "Showalter index"),
    "KI": ("k_index", 1.0, "degC", "K index"),
    "TTI": ("total_totals_index", 1.0, "degC", "total totals index"),
    "CAPE": ("cape", 1.0, "J kg-1", "convective available potential energy"),
    "CIN": ("cin", 1.0, "J kg-1", "convective inhibition"),
}
DERIVED_ATTRS = {
    name: {"units": units, "long_name": long}
    for name, _, units, long in (*LEVEL_VARIABLES.values(), *SOUNDING_VARIABLES.values())
}


def detect_product(data: bytes) -> str:
    """'derived' when the first record is a derived-parameter header (wider than a
    sounding-data header by far), else 'data'."""
    first = data[:4096].lstrip(b"\r\n").split(b"\n", 1)[0].rstrip(b"\r")
    return "derived" if first.startswith(b"#") and len(first) > HEADER_WIDTH + 20 else "data"


# --------------------------------------------------------------------------- writing


def _fill(width: int, columns: list[tuple[str, int, int]], values: Mapping[str, object]) -> str:
    line = [" "] * width
    for name, a, b in columns:
        if name not in values:
            continue
        text = values[name] if isinstance(values[name], str) else str(int(values[name]))
        n = b - a + 1
        if len(text) > n:
            raise ValueError(f"{name}={values[name]!r} does not fit in {n} columns")
        line[a - 1 : b] = list(text.ljust(n) if name in ("HEADREC", "ID") else text.rjust(n))
    return "".join(line)


def format_derived_header(
    station: str,
    year: int,
    month: int,
    day: int,
    hour: int,
    reltime: int,
    numlev: int,
    params: Mapping[str, int] | None = None,
) -> str:
    """One derived-parameter header record (157 columns); `params` maps PW ... CIN to
    integers in the file's units (missing ones are written -99999)."""
    if len(station) > 11:
        raise ValueError(f"station id '{station}' longer than 11 characters")
    params = dict(params or {})
    unknown = set(params) - set(SOUNDING_VARIABLES)
    if unknown:
        raise ValueError(f"unknown header parameter(s) {sorted(unknown)}; known: {list(SOUNDING_VARIABLES)}")
    values = {
        "HEADREC": "#",
        "ID": station,
        "YEAR": f"{year:04d}",
        "MONTH": f"{month:02d}",
        "DAY": f"{day:02d}",
        "HOUR": f"{hour:02d}",
        "RELTIME": f"{reltime:04d}",
        "NUMLEV": numlev,
    }
    values.update({k: params.get(k, DERIVED_MISSING) for k in SOUNDING_VARIABLES})
    return _fill(DERIVED_HEADER_WIDTH, DERIVED_HEADER_COLUMNS, values)


def format_derived_record(values: Mapping[str, int]) -> str:
    """One derived-parameter data record (151 columns); `values` maps PRESS ... N to
    integers in the file's units (missing ones are written -99999)."""
    unknown = set(values) - set(LEVEL_VARIABLES)
    if unknown:
        raise ValueError(f"unknown data field(s) {sorted(unknown)}; known: {list(LEVEL_VARIABLES)}")
    return _fill(DERIVED_DATA_WIDTH, DERIVED_DATA_COLUMNS, {k: values.get(k, DERIVED_MISSING) for k in LEVEL_VARIABLES})


# --------------------------------------------------------------------------- parsing


def parse_derived(data: bytes, source: str | os.PathLike = "<bytes>") -> IgraData:
    """Parse the text of a derived-parameter file (LF or CRLF) into columns: the level
    variables of LEVEL_VARIABLES in `obs`, the sounding variables of SOUNDING_VARIABLES
    beside station, time, hour, reltime, nlevels and line in `soundings`; latitude and
    longitude are NaN until `place_stations` fills them. Errors name the line and columns."""
    source = str(source)
    if detect_product(data) == "data":
        raise InputError(
            f"this is an IGRA sounding data file ({DATA_HINT}), not derived parameters; set product: data", source
        )
    rec = split_records(
        data,
        source,
        header_width=DERIVED_HEADER_WIDTH,
        data_width=DERIVED_DATA_WIDTH,
        header_names=("YEAR", "MONTH", "DAY", "HOUR", "RELTIME", "NUMLEV", *SOUNDING_VARIABLES),
        header_cols=_DH,
    )
    hv = rec.header
    raw = rec.data(tuple(LEVEL_VARIABLES), _DD, source)
    time = rec.times(source)
    n = len(time)
    hour, reltime = hv["HOUR"], hv["RELTIME"]
    soundings = {
        "station": text_field(rec.buf, rec.hstart, "ID", _DH).astype(object),
        "time": time,
        "latitude": np.full(n, np.nan),
        "longitude": np.full(n, np.nan),
        "hour": np.where((hour >= 0) & (hour <= 23), hour, -1).astype(np.int16),
        "reltime": np.where(reltime == 9999, -1, reltime).astype(np.int16),
        "nlevels": hv["NUMLEV"].astype(np.int64),
        "line": rec.hline,
    }
    for field, (name, scale, _, _) in SOUNDING_VARIABLES.items():
        soundings[name] = physical(hv[field], scale, missing=(DERIVED_MISSING,)).astype(np.float32)
    obs = {
        name: physical(raw[field], scale, missing=(DERIVED_MISSING,)).astype(np.float32)
        for field, (name, scale, _, _) in LEVEL_VARIABLES.items()
    }
    return IgraData(soundings, obs, source, [source])


def place_stations(data: IgraData, stations: pd.DataFrame, list_source: str) -> IgraData:
    """`data` with each sounding's latitude and longitude from the station list
    (`parse.parse_station_list`); a station missing from the list is an error."""
    pos = stations.drop_duplicates("id").set_index("id")
    ids = data.soundings["station"].astype(str)
    unknown = sorted(set(ids.tolist()) - set(pos.index))
    if unknown:
        raise InputError(
            f"station(s) {unknown} of {data.source} are not in the station list: a derived-parameter file carries no "
            "position, so each of its stations must be in the list (set `station_list` to the igra2-station-list.txt that holds them)",
            list_source,
        )
    soundings = dict(data.soundings)
    soundings["latitude"] = pos["latitude"].reindex(ids).to_numpy(np.float64)
    soundings["longitude"] = pos["longitude"].reindex(ids).to_numpy(np.float64)
    return IgraData(soundings, data.obs, data.source, list(data.files))
