"""ERA5 into zarr: fetch (cds, synthetic) and ingest (local, cds, synthetic, arco).

`scorebridge era5-fetch --spec JSON --out raw.nc` writes the raw netCDF of a `cds` or
`synthetic` dataset (the CDS layout either way). `scorebridge era5-ingest --spec JSON
--out data.zarr [files...]` opens every input lazily, normalises its layout to the data
contract (see `era5_layout`), subsets it by the config keys, checks that the grids agree
and streams it into zarr through dask, block by block (`era5_stream`), with
normalisation statistics and provenance in the store's attributes.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import glob
import json
import logging
import os
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import xarray as xr

from ..config import parse_spec
from ..errors import ConfigError, InputError
from ..io import atomic_path
from ..provenance import git_state, package_versions, redact, sha256_file
from . import era5_layout as layout
from .era5_cds import build_cds_requests, retrieve_cds
from .era5_layout import Selection
from .era5_stream import stream_to_zarr

__all__ = [
    "SOURCE_ATTR",
    "open_file",
    "open_inputs",
    "open_arco",
    "fetch",
    "ingest",
    "fetch_cli",
    "ingest_cli",
]

log = logging.getLogger(__name__)

# global attribute of fetched netCDF recording how it was made (request or simulation)
SOURCE_ATTR = "scorebridge_source"
_GRIB_SUFFIXES = (".grib", ".grb", ".grib1", ".grib2", ".grb2")
_DEFAULT_CHUNK = 8


def _progress() -> bool:
    return os.environ.get("SCOREBRIDGE_NO_PROGRESS") != "1"


# --- opening -----------------------------------------------------------------------------


def _engine(path: Path) -> str:
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
    engine = _engine(path)
    try:
        if engine == "cfgrib":
            return _open_grib(path)
        if engine == "zarr":
            return xr.open_zarr(path, chunks=None, decode_timedelta=False)
        return xr.open_dataset(path, engine=engine, chunks=None, decode_timedelta=False)
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - any reader failure is a bad input
        raise InputError(f"cannot read as {engine}: {type(err).__name__}: {err}", path) from None


def _open_grib(path: Path) -> xr.Dataset:
    """GRIB through cfgrib without writing an index beside the file; files mixing level
    types (several hypercubes) are opened per hypercube and merged."""
    kwargs = {"indexpath": ""}
    try:
        return xr.open_dataset(path, engine="cfgrib", chunks=None, backend_kwargs=kwargs, decode_timedelta=True)
    except Exception as err:  # noqa: BLE001
        import cfgrib

        if "DatasetBuildError" not in type(err).__name__ and "multiple values" not in str(err):
            raise
        parts = cfgrib.open_datasets(str(path), backend_kwargs=kwargs, decode_timedelta=True)
        return xr.merge(parts, compat="override", join="outer", combine_attrs="drop_conflicts")


def open_arco(url: str) -> xr.Dataset:
    """The ARCO-ERA5 store (or any zarr with its layout), lazily; gs:// anonymously."""
    storage = {"token": "anon"} if str(url).startswith("gs://") else None
    try:
        return xr.open_zarr(url, chunks=None, storage_options=storage, decode_timedelta=False)
    except Exception as err:  # noqa: BLE001
        raise InputError(f"cannot open the ARCO-ERA5 zarr store: {type(err).__name__}: {err}", url) from None


def _describe_grid(ds: xr.Dataset) -> str:
    lat, lon = ds["latitude"].values, ds["longitude"].values
    return f"{lat.size}x{lon.size} latitude {lat.min():g}..{lat.max():g} longitude {lon.min():g}..{lon.max():g}"


def _same_axis(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.allclose(a, b, atol=1e-6)


def open_inputs(files: Iterable[str | os.PathLike], sel: Selection, chunk_time: int = _DEFAULT_CHUNK) -> xr.Dataset:
    """Normalise and subset each input lazily and join them along time.

    Files may split the data by time, by variable, or both; grids must agree, and a
    requested variable must be in some file (else the error names the files and what
    they hold)."""
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
        raise InputError(f"no variable {', '.join(repr(v) for v in absent)} in the input ({where})", files[0] if len(files) == 1 else None)
    if not parts:
        covered = []
        for path in files:
            times = layout.standardise(open_file(path), str(path))["time"].values
            covered.append(f"{path}: {np.datetime_as_string(times.min(), 'h')}..{np.datetime_as_string(times.max(), 'h')}")
        raise InputError(
            f"no times selected by dates {_fmt(sel.start)}..{_fmt(sel.end, -1)} and hours "
            f"{list(sel.hours) if sel.hours is not None else 'all'} (keys 'dates', 'hours'); inputs cover {'; '.join(covered)}",
        )

    # grids (and levels) must agree
    ref_path, ref = parts[0]
    for path, ds in parts[1:]:
        if not (_same_axis(ds["latitude"].values, ref["latitude"].values) and _same_axis(ds["longitude"].values, ref["longitude"].values)):
            raise InputError(f"grid differs across files: {_describe_grid(ds)} here, {_describe_grid(ref)} in {ref_path}", path)
        if "level" in ds.coords and "level" in ref.coords and not _same_axis(ds["level"].values, ref["level"].values):
            raise InputError(f"pressure levels differ across files: {ds['level'].values.tolist()} here, {ref['level'].values.tolist()} in {ref_path}", path)
        if ("number" in ds.dims) != ("number" in ref.dims) or ("number" in ds.dims and not _same_axis(ds["number"].values, ref["number"].values)):
            raise InputError(f"ensemble members differ across files (this file: {ds['number'].values.tolist() if 'number' in ds.dims else 'none'})", path)

    # group by the variables each file holds; concatenate each group along time
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
                raise InputError(f"files hold different variables: {pa} has {list(a)}, {pb} has {list(b)} (both have {common}; {lacking} missing in one)", pb)
    joined = []
    for key, members in groups.items():
        members.sort(key=lambda item: item[1]["time"].values[0])
        datasets = [ds for _, ds in members]
        ds = datasets[0] if len(datasets) == 1 else xr.concat(datasets, dim="time", data_vars="minimal", coords="minimal", compat="override", join="override")
        times = ds["time"].values
        if times.size > 1 and np.any(np.diff(times) <= np.timedelta64(0, "ns")):
            order = np.argsort(times, kind="stable")
            unique = order[np.concatenate([[True], np.diff(times[order]) > np.timedelta64(0, "ns")])]
            log.warning("overlapping times across files %s: %d duplicates dropped", [str(p) for p, _ in members], times.size - unique.size)
            ds = ds.isel(time=unique)
        joined.append((key, [p for p, _ in members], ds))
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
    return out.chunk({"time": chunk_time})


def _same_times(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.all(a == b))


def _fmt(t, days: int = 0) -> str:
    if t is None:
        return "*"
    return str(np.datetime_as_string(t + np.timedelta64(days, "D"), "D"))


# --- fetch -------------------------------------------------------------------------------


def fetch(spec: dict, out: str | os.PathLike) -> Path:
    """Write the raw netCDF of a `synthetic` or `cds` dataset to `out` (atomically)."""
    source = spec.get("source")
    out = Path(out)
    if source == "synthetic":
        from .synthetic_weather import SyntheticGrid, synthetic_era5

        sim = spec.get("synthetic") or {}
        grid = SyntheticGrid.from_spec(sim)
        ds = synthetic_era5(
            list(spec.get("variables") or []),
            list(spec.get("levels") or []),
            grid,
            eddy_wind=float(sim.get("eddy_wind", 10.0)),
            turnover_hours=float(sim.get("turnover_hours", 24.0)),
        )
        ds.attrs[SOURCE_ATTR] = json.dumps({"source": "synthetic", "synthetic": dict(sorted((spec.get("synthetic") or {}).items()))}, sort_keys=True)
        encoding = {name: {"zlib": True, "complevel": 1, "shuffle": True, "dtype": "float32"} for name in ds.data_vars}
        encoding["valid_time"] = {"units": "seconds since 1970-01-01", "calendar": "proleptic_gregorian", "dtype": "int64"}
        with atomic_path(out) as tmp:
            ds.to_netcdf(tmp, engine="netcdf4", format="NETCDF4", encoding=encoding)
        return out
    if source == "cds":
        requests = build_cds_requests(spec)
        with atomic_path(out) as tmp, tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.parts-") as folder:
            parts = retrieve_cds(requests, Path(folder), progress=_progress())
            _join_cds_parts(parts, requests, tmp)
        return out
    raise ConfigError("source", f"era5-fetch makes the raw file of sources 'cds' and 'synthetic', not {source!r}")


def _join_cds_parts(parts: list[Path], requests: list[tuple[str, dict]], tmp: Path) -> None:
    """One netCDF from the retrieved parts (concatenated by time per product, merged
    across products), recording the requests."""
    record = json.dumps({"source": "cds", "requests": [{"dataset": p, "request": r} for p, r in requests]}, sort_keys=True)
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


# --- ingest ------------------------------------------------------------------------------


def _expand(patterns: Iterable[str]) -> list[Path]:
    files: list[Path] = []
    for pattern in patterns:
        found = sorted(glob.glob(os.path.expanduser(str(pattern))))
        if not found:
            raise ConfigError("files", f"no file matches {pattern!r}")
        files += [Path(f) for f in found]
    return files


def _input_record(files: list[Path]) -> list[dict]:
    """Path, size and (for fetched files) how they were made; digests come from `_Digests`."""
    out = []
    for path in files:
        item = {"path": str(path), "bytes": path.stat().st_size if path.is_file() else None}
        if path.is_file() and _engine(path) != "cfgrib":
            try:
                with xr.open_dataset(path, chunks=None) as ds:
                    if SOURCE_ATTR in ds.attrs:
                        item["made_by"] = json.loads(ds.attrs[SOURCE_ATTR])
            except Exception:  # noqa: BLE001 - provenance is best effort beyond the digest
                pass
        out.append(item)
    return out


class _Digests(threading.Thread):
    """sha256 of the input files, computed in a daemon thread while the data streams
    (hashlib releases the GIL on large blocks), so provenance adds no wall time."""

    def __init__(self, files: list[Path]):
        super().__init__(daemon=True, name="era5-sha256")
        self.files = files
        self.digests: list[str | None] = []
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.digests = [sha256_file(p) if p.is_file() else None for p in self.files]
        except BaseException as err:  # noqa: BLE001 - reported by result()
            self.error = err

    def result(self) -> list[str | None]:
        self.join()
        if self.error is not None:
            raise InputError(f"cannot read input for its sha256: {self.error}")
        return self.digests


# Reader caches, bounded so that memory does not grow with the number of input files:
# netCDF-C gives every variable of every open file a chunk cache (64 MB by default), and
# xarray keeps up to 128 files open. Streaming reads each chunk once, in time order, so a
# few open files with small caches lose nothing.
READER_CHUNK_CACHE_BYTES = 4 << 20
READER_OPEN_FILES = 8


@contextlib.contextmanager
def bounded_readers() -> Iterator[None]:
    """Small netCDF chunk caches and few open files while the block is active."""
    try:
        import netCDF4
    except ImportError:  # pragma: no cover - in the lock file
        netCDF4 = None
    old = netCDF4.get_chunk_cache() if netCDF4 is not None else None
    if netCDF4 is not None:
        netCDF4.set_chunk_cache(READER_CHUNK_CACHE_BYTES, 101, 0.75)
    try:
        with xr.set_options(file_cache_maxsize=READER_OPEN_FILES):
            yield
    finally:
        if old is not None:
            netCDF4.set_chunk_cache(*old)


def ingest(spec: dict, out: str | os.PathLike, files: Iterable[str | os.PathLike] = ()) -> Path:
    """Normalise the inputs of one ERA5 dataset into the zarr store `out` (atomically)."""
    with bounded_readers():
        return _ingest(spec, out, files)


def _ingest(spec: dict, out: str | os.PathLike, files: Iterable[str | os.PathLike]) -> Path:
    out = Path(out)
    source = spec.get("source")
    sel = Selection.from_spec(spec)
    chunk_time = int((spec.get("chunks") or {}).get("time") or _DEFAULT_CHUNK)
    stream = spec.get("stream") or {}
    files = [Path(f) for f in files]
    provenance: dict = {"source": source, "spec": redact(spec)}
    hashing = None
    if source == "arco":
        url = spec.get("arco_url") or layout_default_arco()
        ds = layout.standardise(open_arco(url), url)
        sub = layout.select(ds, sel, url, need_all=True)
        if sub is None:
            raise InputError(f"no times selected by dates {_fmt(sel.start)}..{_fmt(sel.end, -1)} and hours (keys 'dates', 'hours')", url)
        data = layout.finish(sub, chunk_time).chunk({"time": chunk_time})
        provenance["store"] = url
    elif source in ("local", "cds", "synthetic"):
        if not files:
            if source != "local":
                raise InputError(f"source {source!r}: pass the fetched netCDF file (results/raw/era5/<dataset>.nc)")
            files = _expand(spec.get("files") or [])
        data = open_inputs(files, sel, chunk_time)
        provenance["inputs"] = _input_record(files)
        hashing = _Digests(files)
    else:
        raise ConfigError("source", f"unknown source {source!r}; expected cds, arco, local or synthetic")
    provenance["packages"] = package_versions()
    provenance["git"] = git_state(Path(__file__).parent)
    provenance["created"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")

    _remove_stale_partials(out)
    with atomic_path(out) as tmp, _dask_scheduler(stream):
        stats = stream_to_zarr(data, tmp, chunk_time=chunk_time, block_mb=float(stream.get("block_mb") or 256), progress=_progress())
        if hashing is not None:
            for item, digest in zip(provenance["inputs"], hashing.result()):
                item["sha256"] = digest
        _set_attrs(tmp, {"normalisation": json.dumps(stats, sort_keys=True), "provenance": json.dumps(provenance, sort_keys=True, default=str), "Conventions": "CF-1.7"})
    log.info("wrote %s: %s", out, {k: v for k, v in data.sizes.items()})
    return out


def _remove_stale_partials(out: Path) -> None:
    """Delete half-written stores of `out` left by killed runs (their process is gone);
    they never count as complete (another name), but they hold disk space."""
    import psutil

    from ..io import remove

    for stale in out.parent.glob(f".{out.name}.partial-*"):
        try:
            pid = int(stale.name.rsplit("-", 1)[1])
        except ValueError:
            continue
        if pid != os.getpid() and not psutil.pid_exists(pid):
            log.info("removing %s, left by a killed run", stale)
            remove(stale)


def layout_default_arco() -> str:
    return "gs://gcp-public-data-arco-era5/ar/full_37-1h-0p25deg-chunk-1.zarr-v3"


@contextlib.contextmanager
def _dask_scheduler(stream: dict) -> Iterator[None]:
    """Local threads (`stream.workers` of them), or the dask.distributed scheduler at
    `stream.address` (workers must see the input files and the output folder)."""
    import dask

    address = stream.get("address")
    if not address:
        workers = stream.get("workers")
        with dask.config.set(scheduler="threads", num_workers=int(workers) if workers else None):
            yield
        return
    try:
        from dask.distributed import Client
    except ImportError:  # pragma: no cover - in the lock file
        raise ConfigError("stream.address", "a dask.distributed scheduler needs the 'distributed' package") from None
    try:
        client = Client(address, timeout=dask.config.get("distributed.comm.timeouts.connect"), set_as_default=False)
    except Exception as err:  # noqa: BLE001 - connection failures are the user's to fix
        raise ConfigError("stream.address", f"cannot connect to the dask scheduler at {address!r}: {err}") from None
    try:
        with dask.config.set(scheduler=client.get):
            log.info("streaming through the dask.distributed scheduler at %s", address)
            yield
    finally:
        client.close()


def _set_attrs(store: Path, attrs: dict) -> None:
    import zarr

    group = zarr.open_group(str(store), mode="r+")
    group.attrs.update(attrs)
    # consolidated metadata: quick opening and no fallback warning in xr.open_zarr(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(str(store))


# --- command line ------------------------------------------------------------------------


def fetch_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scorebridge era5-fetch", description="download (cds) or generate (synthetic) raw ERA5 netCDF")
    parser.add_argument("--spec", required=True, help="the dataset's config entry as JSON")
    parser.add_argument("--out", required=True, help="netCDF file to write")
    args = parser.parse_args(argv)
    fetch(parse_spec(args.spec), args.out)
    return 0


def ingest_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scorebridge era5-ingest", description="normalise ERA5 files or stores into the zarr data contract")
    parser.add_argument("--spec", required=True, help="the dataset's config entry as JSON")
    parser.add_argument("--out", required=True, help="zarr store to write")
    parser.add_argument("--threads", type=int, default=None, help="dask threads when the spec's stream.workers is null")
    parser.add_argument("files", nargs="*", help="input netCDF/GRIB files (local, cds, synthetic)")
    args = parser.parse_args(argv)
    spec = parse_spec(args.spec)
    if args.threads and not (spec.get("stream") or {}).get("workers"):
        spec["stream"] = {**(spec.get("stream") or {}), "workers": args.threads}
    ingest(spec, args.out, args.files)
    return 0
