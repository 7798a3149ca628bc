"""CDS requests for ERA5, built from a dataset's config (pure, no network), and retrieval.

The new CDS API (cdsapi >= 0.7) takes `variable` long names, `pressure_level`,
`year`/`month`/`day` lists (their Cartesian product: non-existent dates are skipped),
`time` as "HH:00", `area` [N, W, S, E], `grid` [dlat, dlon], `data_format` and
`download_format`. Credentials come from `~/.cdsapirc` or CDSAPI_URL / CDSAPI_KEY and
are read by cdsapi itself; they are never printed, logged or stored.
"""

from __future__ import annotations

import calendar
import datetime as dt
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Mapping

from ...errors import ConfigError, InputError
from .layout import PRESSURE_LEVEL_NAMES, SINGLE_LEVEL_NAMES
from .options import Era5Options, era5_options

__all__ = ["PRODUCTS", "build_cds_requests", "date_groups", "retrieve_cds"]

log = logging.getLogger(__name__)

PRODUCTS = {"pressure": "reanalysis-era5-pressure-levels", "single": "reanalysis-era5-single-levels"}


def _date(text, key: str) -> dt.date:
    if text in (None, ""):
        raise ConfigError(key, "required for source 'cds' (YYYY-MM-DD)")
    try:
        return dt.date.fromisoformat(str(text)[:10])
    except ValueError:
        raise ConfigError(key, f"expected a date YYYY-MM-DD; got {text!r}") from None


def date_groups(start: dt.date, end: dt.date) -> list[dict[str, list[str]]]:
    """Exact cover of [start, end] by year x month x day products, as few as possible.

    Whole months use days 01..31 (CDS skips dates that do not exist), so the whole
    months of a year share one product; partial months at the ends get their own."""
    if end < start:
        raise ConfigError("dates", f"empty date range: end {end} is before start {start}")
    per_month: "OrderedDict[tuple[int, int], tuple[str, ...]]" = OrderedDict()
    day = start
    while day <= end:
        last = calendar.monthrange(day.year, day.month)[1]
        stop = min(end, dt.date(day.year, day.month, last))
        if day.day == 1 and stop.day == last:
            days = tuple(f"{d:02d}" for d in range(1, 32))
        else:
            days = tuple(f"{d:02d}" for d in range(day.day, stop.day + 1))
        per_month[(day.year, day.month)] = days
        day = stop + dt.timedelta(days=1)
    # months of one year with the same days -> one group; then years with the same months+days
    by_year: "OrderedDict[tuple[int, tuple[str, ...]], list[int]]" = OrderedDict()
    for (year, month), days in per_month.items():
        by_year.setdefault((year, days), []).append(month)
    merged: "OrderedDict[tuple[tuple[int, ...], tuple[str, ...]], list[int]]" = OrderedDict()
    for (year, days), months in by_year.items():
        merged.setdefault((tuple(months), days), []).append(year)
    return [
        {"year": [str(y) for y in years], "month": [f"{m:02d}" for m in months], "day": list(days)}
        for (months, days), years in merged.items()
    ]


def build_cds_requests(spec: Era5Options | Mapping) -> list[tuple[str, dict]]:
    """(CDS dataset name, request) pairs that fetch exactly what the entry `spec` asks for.

    Pressure-level and single-level variables go to their own products when `product`
    is `auto`; an explicit product must serve every variable."""
    opts = era5_options(spec)
    variables = list(opts.variables)
    if not variables:
        raise ConfigError("variables", "at least one variable is needed")
    unknown = [v for v in variables if v not in PRESSURE_LEVEL_NAMES and v not in SINGLE_LEVEL_NAMES]
    if unknown:
        raise ConfigError(
            "variables",
            f"no CDS name known for {unknown}; known: pressure levels {sorted(PRESSURE_LEVEL_NAMES)}, "
            f"single levels {sorted(SINGLE_LEVEL_NAMES)}",
        )
    kinds = {
        "pressure": [v for v in variables if v in PRESSURE_LEVEL_NAMES],
        "single": [v for v in variables if v in SINGLE_LEVEL_NAMES],
    }
    product = opts.product
    if product != "auto":
        kind = next((k for k, name in PRODUCTS.items() if name == product), None)
        if kind is None:
            raise ConfigError(
                "product", f"unknown CDS dataset {product!r}; use 'auto' or one of {sorted(PRODUCTS.values())}"
            )
        other = "single" if kind == "pressure" else "pressure"
        if kinds[other]:
            raise ConfigError(
                "product", f"{product} does not serve {kinds[other]}; use product 'auto' to fetch both kinds"
            )
    levels = [float(x) for x in opts.levels]
    if kinds["pressure"] and not levels:
        raise ConfigError("levels", f"pressure levels are needed for {kinds['pressure']}")
    groups = date_groups(_date(opts.dates["start"], "dates.start"), _date(opts.dates["end"], "dates.end"))
    hours = sorted({int(h) for h in (opts.hours if opts.hours is not None else range(24))})
    if not hours:
        raise ConfigError("hours", "empty list")

    common: dict = {"product_type": [opts.product_type]}
    common["time"] = [f"{h:02d}:00" for h in hours]
    if opts.area is not None:
        common["area"] = [float(x) for x in opts.area]
    if opts.grid is not None:
        common["grid"] = [float(opts.grid), float(opts.grid)]
    common["data_format"] = "netcdf"
    common["download_format"] = "unarchived"

    requests = []
    for kind in ("pressure", "single"):
        if not kinds[kind]:
            continue
        for group in groups:
            req = {
                "product_type": common["product_type"],
                "variable": [PRESSURE_LEVEL_NAMES.get(v) or SINGLE_LEVEL_NAMES[v] for v in kinds[kind]],
            }
            if kind == "pressure":
                req["pressure_level"] = [f"{lev:g}" for lev in sorted(set(levels), reverse=True)]
            req.update(group)
            req.update({k: v for k, v in common.items() if k != "product_type"})
            requests.append((PRODUCTS[kind], req))
    return requests


def retrieve_cds(requests: list[tuple[str, dict]], folder: Path, *, progress: bool = True) -> list[Path]:
    """Retrieve each request into `folder` with cdsapi; return the files in order."""
    try:
        import cdsapi
    except ImportError as err:  # pragma: no cover - in the lock file
        raise InputError(f"source 'cds' needs the cdsapi package: {err}") from None
    try:
        client = cdsapi.Client(quiet=not progress, progress=progress)
    except Exception:  # noqa: BLE001 - cdsapi raises bare Exception for missing configuration
        raise ConfigError(
            "source",
            "no CDS credentials: create ~/.cdsapirc (url: https://cds.climate.copernicus.eu/api, key: <your key>) "
            "or set CDSAPI_URL and CDSAPI_KEY",
        ) from None
    files = []
    for i, (product, request) in enumerate(requests):
        target = Path(folder) / f"part-{i:04d}.nc"
        log.info("CDS request %d/%d: %s %s", i + 1, len(requests), product, request)
        try:
            client.retrieve(product, request, str(target))
        except Exception as err:  # noqa: BLE001 - surface the CDS message without credentials
            raise InputError(f"CDS retrieval of {product} failed: {type(err).__name__}: {err}") from None
        files.append(target)
    return files
