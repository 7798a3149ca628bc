"""The raw netCDF of a `cds` or `synthetic` ERA5 dataset (the CDS layout either way).

`scorebridge era5-fetch` writes it; `scorebridge era5-ingest` then reads it like any
local file. The global attribute `SOURCE_ATTR` records how the file was made (the CDS
requests, or the simulation's settings), and ingestion copies it into provenance.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Mapping

import xarray as xr

from ...errors import ConfigError
from ...io import atomic_path
from ...progress import progress_enabled
from .options import Era5Options, era5_options

__all__ = ["SOURCE_ATTR", "fetch"]

# global attribute of fetched netCDF recording how it was made (request or simulation)
SOURCE_ATTR = "scorebridge_source"


def fetch(spec: Era5Options | Mapping, out: str | os.PathLike) -> Path:
    """Write the raw netCDF of a `synthetic` or `cds` dataset to `out` (atomically)."""
    opts = era5_options(spec)
    out = Path(out)
    if opts.source == "synthetic":
        _write_synthetic(opts, out)
        return out
    if opts.source == "cds":
        from .cds import build_cds_requests, retrieve_cds

        requests = build_cds_requests(opts)
        with (
            atomic_path(out) as tmp,
            tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.parts-") as folder,
        ):
            parts = retrieve_cds(requests, Path(folder), progress=progress_enabled())
            _join_cds_parts(parts, requests, tmp)
        return out
    raise ConfigError("source", f"era5-fetch makes the raw file of sources 'cds' and 'synthetic', not {opts.source!r}")


def _write_synthetic(opts: Era5Options, out: Path) -> None:
    from .synthetic import synthetic_era5

    ds = synthetic_era5(list(opts.variables), list(opts.levels), opts.synthetic)
    record = {"source": "synthetic", "synthetic": dict(sorted(dataclasses.asdict(opts.synthetic).items()))}
    ds.attrs[SOURCE_ATTR] = json.dumps(record, sort_keys=True)
    encoding = {name: {"zlib": True, "complevel": 1, "shuffle": True, "dtype": "float32"} for name in ds.data_vars}
    encoding["valid_time"] = {"units": "seconds since 1970-01-01", "calendar": "proleptic_gregorian", "dtype": "int64"}
    with atomic_path(out) as tmp:
        ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4", encoding=encoding)


def _join_cds_parts(parts: list[Path], requests: list[tuple[str, dict]], tmp: Path) -> None:
    """One netCDF from the retrieved parts (concatenated by time per product, merged
    across products), recording the requests."""
    record = json.dumps(
        {"source": "cds", "requests": [{"dataset": p, "request": r} for p, r in requests]}, sort_keys=True
    )
    if len(parts) == 1:
        ds = xr.open_dataset(parts[0], chunks={})
        if ds.attrs.get(SOURCE_ATTR) is None:
            ds.attrs[SOURCE_ATTR] = record
        ds.to_netcdf(tmp)
        return
    by_product: dict[str, list[Path]] = {}
    for path, (product, _) in zip(parts, requests):
        by_product.setdefault(product, []).append(path)
    datasets = []
    for paths in by_product.values():
        opened = [xr.open_dataset(p, chunks={}) for p in paths]
        tdim = "valid_time" if "valid_time" in opened[0].dims else "time"
        datasets.append(xr.concat(opened, dim=tdim, data_vars="minimal", coords="minimal", compat="override"))
    ds = xr.merge(datasets, compat="override", combine_attrs="override")
    ds.attrs[SOURCE_ATTR] = record
    ds.to_netcdf(tmp)
