"""Open ERA5 inputs lazily and join them into one dataset of the data contract.

Each netCDF / GRIB file or zarr store is opened without reading data, normalised to
the contract's layout (`layout.standardise`), subset by the entry's keys (`layout.select`)
and chunked by time; files that split the data by time, by variable or both are joined
after checking that their grids, levels and members agree.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Iterable

import numpy as np
import xarray as xr

from ...errors import InputError
from ...io import open_store
from ...options import defaults, schema_node
from . import layout
from .grib import field_count, scan_grib
from .layout import Selection
from .options import Era5Options
from .overlap import join_in_time
from .units import harmonise_units

__all__ = ["open_file", "open_arco", "open_inputs", "join_inputs", "Joined", "engine_of", "fmt_date"]

log = logging.getLogger(__name__)

_GRIB_SUFFIXES = (".grib", ".grb", ".grib1", ".grib2", ".grb2")


def engine_of(path: Path) -> str:
    """The xarray engine that reads `path`: by suffix, else by the file's signature."""
    if path.is_dir():
        return "zarr"
    name = path.name.lower()
    if name.endswith(_GRIB_SUFFIXES):
        return "cfgrib"
    with open(path, "rb") as f:
        magic = f.read(8)
    if magic.startswith(b"GRIB"):
        return "cfgrib"
    if magic.startswith(b"\x89HDF"):
        return "netcdf4"
    if magic.startswith(b"CDF"):
        return "scipy" if _has("scipy") else "netcdf4"
    if name.endswith((".nc", ".nc4", ".netcdf", ".cdf")):
        return "netcdf4"
    raise InputError("not a netCDF, GRIB or zarr input (unknown file signature)", path)


def _has(module: str) -> bool:
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def open_file(path: str | os.PathLike) -> xr.Dataset:
    """Open one netCDF / GRIB file or zarr store lazily (no data read, no dask yet)."""
    path = Path(path)
    if not path.exists():
        raise InputError("no such file", path)
    engine = engine_of(path)
    try:
        if engine == "cfgrib":
            return _open_grib(path)
        if engine == "zarr":
            return open_store(path, "ERA5 input", chunks=None, decode_timedelta=False)
        return xr.open_dataset(path, engine=engine, chunks=None, decode_timedelta=False)
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - any reader failure is a bad input
        raise InputError(f"cannot read as {engine}: {type(err).__name__}: {err}", path) from None


def _open_grib(path: Path) -> xr.Dataset:
    """GRIB through cfgrib without writing an index beside the file; files mixing level
    types (several hypercubes) are opened per hypercube and merged.

    The file's messages are checked first (`grib.scan_grib`: a truncated or corrupt one
    is an error naming its byte offset); fewer messages than the fields cfgrib lays out
    means whole messages are absent, read as NaN (a warning here; the finiteness check
    of the ingestion names the times)."""
    messages = scan_grib(path)
    kwargs = {"indexpath": ""}
    try:
        ds = xr.open_dataset(path, engine="cfgrib", chunks=None, backend_kwargs=kwargs, decode_timedelta=True)
        fields = field_count(ds)
    except Exception as err:  # noqa: BLE001
        import cfgrib

        if "DatasetBuildError" not in type(err).__name__ and "multiple values" not in str(err):
            raise
        parts = cfgrib.open_datasets(str(path), backend_kwargs=kwargs, decode_timedelta=True)
        fields = sum(field_count(part) for part in parts)
        ds = xr.merge(parts, compat="override", join="outer", combine_attrs="drop_conflicts")
    if messages < fields:
        log.warning(
            "%s: %d GRIB messages for %d fields: %d fields are absent and read as NaN (an incomplete file?)",
            path,
            messages,
            fields,
            fields - messages,
        )
    return ds


def open_arco(url: str) -> xr.Dataset:
    """The ARCO-ERA5 store (or any zarr with its layout), lazily; gs:// anonymously."""
    storage = {"token": "anon"} if str(url).startswith("gs://") else None
    # consolidated metadata when the store has it: one request instead of one per array
    return open_store(url, "ARCO-ERA5", consolidated=None, chunks=None, storage_options=storage, decode_timedelta=False)


def _describe_grid(ds: xr.Dataset) -> str:
    lat, lon = ds["latitude"].values, ds["longitude"].values
    return f"{lat.size}x{lon.size} latitude {lat.min():g}..{lat.max():g} longitude {lon.min():g}..{lon.max():g}"


def _same_axis(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.allclose(a, b, atol=1e-6)


def open_inputs(
    files: Iterable[str | os.PathLike], sel: Selection, chunk_time: int | None = None, on_conflict: str | None = None
) -> xr.Dataset:
    """Normalise and subset each input lazily and join them along time, chunked by
    `chunk_time` steps (None: the schema's `chunks.time`); see `join_inputs`."""
    return join_inputs(files, sel, chunk_time, on_conflict).data


@dataclasses.dataclass(frozen=True)
class Joined:
    """The joined inputs (lazy) and, per variable, the file each time comes from."""

    data: xr.Dataset
    sources: dict[str, np.ndarray]


def join_inputs(
    files: Iterable[str | os.PathLike], sel: Selection, chunk_time: int | None = None, on_conflict: str | None = None
) -> Joined:
    """Normalise and subset each input lazily and join them along time, chunked by
    `chunk_time` steps (None: the schema's `chunks.time`).

    Files may split the data by time, by variable, or both; grids must agree, and a
    requested variable must be in some file (else the error names the files and what
    they hold). Units are checked and converted (`units`); times held by several files
    are kept once (`overlap`, `on_conflict`; None: the schema's default)."""
    if chunk_time is None:
        chunk_time = defaults((*Era5Options.SCHEMA_PATH, "chunks"))["time"]
    if on_conflict is None:
        on_conflict = schema_node((*Era5Options.SCHEMA_PATH, "on_conflict"))["default"]
    files = [Path(f) for f in files]
    if not files:
        raise InputError("no input files")
    parts: list[tuple[Path, xr.Dataset]] = []
    holdings: dict[Path, list[str]] = {}
    for path in files:
        ds = layout.standardise(open_file(path), str(path))
        holdings[path] = sorted(str(v) for v in ds.data_vars)
        if len(files) == 1:
            sub = layout.select(ds, sel, str(path), need_all=True)
        else:
            if not any(v in ds.data_vars for v in sel.variables):
                raise InputError(
                    f"none of the requested variables {list(sel.variables)} (the file has: {', '.join(holdings[path]) or 'no variables'})",
                    path,
                )
            sub = layout.select(ds, sel, str(path), need_all=False)
        if sub is None:
            log.info("%s: no time selected, skipped", path)
            continue
        parts.append((path, layout.finish(sub, chunk_time)))

    absent = [v for v in sel.variables if not any(v in vars_ for vars_ in holdings.values())]
    if absent:
        where = "; ".join(f"{p} has: {', '.join(v) or 'nothing'}" for p, v in holdings.items())
        raise InputError(
            f"no variable {', '.join(repr(v) for v in absent)} in the input ({where})",
            files[0] if len(files) == 1 else None,
        )
    if not parts:
        covered = []
        for path in files:
            times = layout.standardise(open_file(path), str(path))["time"].values
            covered.append(
                f"{path}: {np.datetime_as_string(times.min(), 'h')}..{np.datetime_as_string(times.max(), 'h')}"
            )
        raise InputError(
            f"no times selected by dates {fmt_date(sel.start)}..{fmt_date(sel.end, -1)} and hours "
            f"{list(sel.hours) if sel.hours is not None else 'all'} (keys 'dates', 'hours'); inputs cover {'; '.join(covered)}",
        )

    parts = harmonise_units(parts)

    # grids (and levels) must agree
    ref_path, ref = parts[0]
    for path, ds in parts[1:]:
        if not (
            _same_axis(ds["latitude"].values, ref["latitude"].values)
            and _same_axis(ds["longitude"].values, ref["longitude"].values)
        ):
            raise InputError(
                f"grid differs across files: {_describe_grid(ds)} here, {_describe_grid(ref)} in {ref_path}", path
            )
        if "level" in ds.coords and "level" in ref.coords and not _same_axis(ds["level"].values, ref["level"].values):
            raise InputError(
                f"pressure levels differ across files: {ds['level'].values.tolist()} here, {ref['level'].values.tolist()} in {ref_path}",
                path,
            )
        if ("number" in ds.dims) != ("number" in ref.dims) or (
            "number" in ds.dims and not _same_axis(ds["number"].values, ref["number"].values)
        ):
            raise InputError(
                f"ensemble members differ across files (this file: {ds['number'].values.tolist() if 'number' in ds.dims else 'none'})",
                path,
            )

    # group by the variables each file holds (input order kept); join each group along time
    groups: dict[tuple[str, ...], list[tuple[Path, xr.Dataset]]] = {}
    for path, ds in parts:
        groups.setdefault(tuple(sorted(ds.data_vars)), []).append((path, ds))
    keys = list(groups)
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            common = sorted(set(a) & set(b))
            if common:
                pa, pb = groups[a][0][0], groups[b][0][0]
                lacking = sorted(set(a) ^ set(b))
                raise InputError(
                    f"files hold different variables: {pa} has {list(a)}, {pb} has {list(b)} (both have {common}; {lacking} missing in one)",
                    pb,
                )
    joined = []
    sources: dict[str, np.ndarray] = {}
    for key, members in groups.items():
        ds, origin = join_in_time(members, on_conflict)
        joined.append((key, [p for p, _ in members], ds))
        sources.update({name: origin for name in key})
    if len(joined) > 1:
        base_key, base_files, base = joined[0]
        for key, files_, ds in joined[1:]:
            if not _same_times(ds["time"].values, base["time"].values):
                raise InputError(
                    f"time axes differ between files holding {list(key)} ({ds.sizes['time']} times) and files holding "
                    f"{list(base_key)} ({base.sizes['time']} times, e.g. {base_files[0]})",
                    files_[0],
                )
        out = xr.merge([ds for _, _, ds in joined], compat="override", join="override", combine_attrs="drop")
    else:
        out = joined[0][2]
    out = out[[v for v in sel.variables]]
    return Joined(out.chunk({"time": chunk_time}), {v: sources[v] for v in sel.variables})


def _same_times(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.all(a == b))


def fmt_date(t, days: int = 0) -> str:
    """A day of a selection bound for messages (`*` when open)."""
    if t is None:
        return "*"
    return str(np.datetime_as_string(t + np.timedelta64(days, "D"), "D"))
