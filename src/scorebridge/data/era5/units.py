"""Units of the ERA5 fields: checked against ERA5's and across files, known pairs converted.

Every input variable's `units` attribute is read (spellings such as `m s**-1`, `m s-1`,
`m/s` are the same units). A variable ERA5 defines (`ERA5_UNITS`, the short names of
`layout.LONG_NAMES`) must be in ERA5's units; any other variable in the units of the
first input that states them. Known pairs are converted lazily (the data still streams),
with a log line: degC -> K, hPa -> Pa (also inside compound units), geopotential height
(m) -> geopotential (m**2 s**-2, times g = 9.80665) and back. Anything else is an
InputError naming the file, the variable and both units. A variable without a `units`
attribute is taken to be in the expected units, with a warning.
"""

from __future__ import annotations

import logging
import re
from typing import Sequence

import numpy as np
import xarray as xr

from ...errors import InputError

__all__ = ["ERA5_UNITS", "G", "parse_units", "conversion", "harmonise_units"]

log = logging.getLogger(__name__)

G = 9.80665  # m s-2, the WMO standard gravity ERA5 uses for geopotential height

# ERA5 short name -> units as ECMWF writes them (GRIB and CDS netCDF).
ERA5_UNITS: dict[str, str] = {
    "t": "K",
    "u": "m s**-1",
    "v": "m s**-1",
    "z": "m**2 s**-2",
    "q": "kg kg**-1",
    "r": "%",
    "w": "Pa s**-1",
    "vo": "s**-1",
    "d": "s**-1",
    "pv": "K m**2 kg**-1 s**-1",
    "cc": "(0 - 1)",
    "o3": "kg kg**-1",
    "clwc": "kg kg**-1",
    "ciwc": "kg kg**-1",
    "t2m": "K",
    "d2m": "K",
    "u10": "m s**-1",
    "v10": "m s**-1",
    "u100": "m s**-1",
    "v100": "m s**-1",
    "msl": "Pa",
    "sp": "Pa",
    "tp": "m",
    "skt": "K",
    "sst": "K",
    "tcwv": "kg m**-2",
    "tcc": "(0 - 1)",
    "blh": "m",
    "lsm": "(0 - 1)",
}

Units = tuple[tuple[str, int], ...]  # (base unit, exponent), sorted; () is dimensionless

_WHOLE = {  # whole strings (lower case) that the token grammar below does not cover
    "(0 - 1)": (),
    "(0-1)": (),
    "0-1": (),
    "1": (),
    "-": (),
    "~": (),
    "fraction": (),
    "dimensionless": (),
    "%": (("%", 1),),
    "percent": (("%", 1),),
    "gpm": (("m", 1),),  # geopotential metres
    "°c": (("degC", 1),),
}
_BASES = {
    "k": "K",
    "kelvin": "K",
    "degk": "K",
    "deg_k": "K",
    "degrees_k": "K",
    "degree_kelvin": "K",
    "degc": "degC",
    "deg_c": "degC",
    "celsius": "degC",
    "degree_celsius": "degC",
    "degrees_celsius": "degC",
    "°c": "degC",
    "pa": "Pa",
    "pascal": "Pa",
    "pascals": "Pa",
    "hpa": "hPa",
    "mb": "hPa",
    "mbar": "hPa",
    "millibar": "hPa",
    "millibars": "hPa",
    "m": "m",
    "meter": "m",
    "metre": "m",
    "meters": "m",
    "metres": "m",
    "s": "s",
    "sec": "s",
    "second": "s",
    "seconds": "s",
    "kg": "kg",
    "kilogram": "kg",
    "kilograms": "kg",
    "g": "g",
    "km": "km",
    "%": "%",
}
_TOKEN = re.compile(r"\s*(/)?\s*([A-Za-z_°%]+)\s*(?:(?:\*\*|\^)\s*)?([-+]?\d+)?\s*")


def parse_units(text: str) -> Units | None:
    """Canonical form of a units string (None when it cannot be read)."""
    s = str(text).strip()
    if s.lower() in _WHOLE:
        return _WHOLE[s.lower()]
    s = s.replace("·", " ").replace(".", " ")
    powers: dict[str, int] = {}
    pos = 0
    while pos < len(s):
        m = _TOKEN.match(s, pos)
        if not m or m.end() == pos:
            return None
        slash, name, exp = m.groups()
        base = _BASES.get(name.lower())
        if base is None:
            return None
        power = (int(exp) if exp else 1) * (-1 if slash else 1)
        powers[base] = powers.get(base, 0) + power
        pos = m.end()
    return tuple(sorted((b, p) for b, p in powers.items() if p))


_GEOPOTENTIAL = (("m", 2), ("s", -2))
_HEIGHT = (("m", 1),)


def conversion(source: str, target: str) -> tuple[float, float, str] | None:
    """(scale, offset, how) such that value_in_target = value * scale + offset, or None
    when the units are neither the same nor a known pair."""
    a, b = parse_units(source), parse_units(target)
    if a is None or b is None:
        return (1.0, 0.0, "") if str(source).strip() == str(target).strip() else None
    if a == b:
        return 1.0, 0.0, ""
    if a == (("degC", 1),) and b == (("K", 1),):
        return 1.0, 273.15, "+273.15"
    if a == (("K", 1),) and b == (("degC", 1),):
        return 1.0, -273.15, "-273.15"
    if a == _HEIGHT and b == _GEOPOTENTIAL:
        return G, 0.0, f"geopotential height times g = {G}"
    if a == _GEOPOTENTIAL and b == _HEIGHT:
        return 1.0 / G, 0.0, f"geopotential divided by g = {G}"
    hpa, pa = dict(a).get("hPa", 0), dict(b).get("hPa", 0)
    swapped_a = tuple(sorted(("Pa" if u == "hPa" else u, p) for u, p in a))
    swapped_b = tuple(sorted(("Pa" if u == "hPa" else u, p) for u, p in b))
    if (hpa or pa) and swapped_a == swapped_b:
        scale = 100.0 ** (hpa - pa)
        return scale, 0.0, f"times {scale:g}"
    return None


_KNOWN = "degC <-> K, hPa <-> Pa, geopotential height m <-> geopotential m**2 s**-2"


def harmonise_units(parts: Sequence[tuple[object, xr.Dataset]]) -> list[tuple[object, xr.Dataset]]:
    """Each (label, dataset) with every variable in its target units (ERA5's, else the
    first stating input's), converted lazily; `units` attributes in the target spelling."""
    targets: dict[str, tuple[str, object | None]] = {}
    for label, ds in parts:
        for name in ds.data_vars:
            name = str(name)
            if name in targets:
                continue
            if name in ERA5_UNITS:
                targets[name] = (ERA5_UNITS[name], None)
            elif _units_of(ds[name]):
                targets[name] = (_units_of(ds[name]), label)
    out = []
    for label, ds in parts:
        changed = {}
        for name, var in ds.data_vars.items():
            name = str(name)
            if name not in targets:
                continue  # no input states units for this variable
            want, where = targets[name]
            have = _units_of(var)
            ours = "ERA5's" if where is None else f"those of {where}:"
            if not have:
                log.warning("%s: '%s' has no units attribute; taken as %s %s", label, name, ours, want)
                changed[name] = var.assign_attrs(units=want)
                continue
            conv = conversion(have, want)
            if conv is None:
                if where is None:
                    raise InputError(
                        f"variable '{name}' is in '{have}'; ERA5 '{want}' expected (known conversions: {_KNOWN}); convert the file or leave it out",
                        label,
                    )
                raise InputError(
                    f"variable '{name}' is in '{have}' but in '{want}' in {where} (known conversions: {_KNOWN})", label
                )
            scale, offset, how = conv
            if how:
                log.info("%s: '%s' in %s converted to %s (%s)", label, name, have, want, how)
                new = var * np.float32(scale) if scale != 1.0 else var
                new = new + np.float32(offset) if offset else new
                changed[name] = new.astype(var.dtype).assign_attrs({**var.attrs, "units": want})
            elif have != want:
                changed[name] = var.assign_attrs(units=want)
        out.append((label, ds.assign(changed) if changed else ds))
    return out


def _units_of(var: xr.DataArray) -> str:
    return str(var.attrs["units"]).strip() if "units" in var.attrs else ""
