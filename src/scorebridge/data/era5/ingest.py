"""ERA5 into zarr: the inputs of one dataset, normalised and streamed into the store.

`ingest(spec, out, files)` opens every input lazily and normalises it to the data
contract (`inputs`, `layout`), subsets it by the entry's keys, checks that the grids
agree and streams it into zarr through dask, block by block (`stream`), with
normalisation statistics and provenance in the store's attributes. Sources: `local`
(the entry's `files`), `cds` and `synthetic` (the netCDF `fetch` wrote) and `arco`
(the ARCO-ERA5 zarr store, read lazily).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import glob
import json
import logging
import os
import threading
import warnings
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import xarray as xr

from ...errors import ConfigError, InputError
from ...io import atomic_path, remove
from ...provenance import git_state, package_versions, redact, sha256_file
from . import layout
from .fetch import SOURCE_ATTR
from .finite import NonFinite, nonfinite_error, summarise
from .inputs import engine_of, fmt_date, join_inputs, open_arco
from .layout import Selection
from .options import Era5Options, StreamOptions, era5_options
from .stream import stream_to_zarr
from .units import harmonise_units

__all__ = ["ingest", "bounded_readers", "READER_CHUNK_CACHE_BYTES", "READER_OPEN_FILES"]

log = logging.getLogger(__name__)


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
        if path.is_file() and engine_of(path) != "cfgrib":
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


def ingest(spec: Era5Options | Mapping, out: str | os.PathLike, files: Iterable[str | os.PathLike] = ()) -> Path:
    """Normalise the inputs of one ERA5 dataset (its entry `spec`: options, or a dict the
    schema fills) into the zarr store `out` (atomically)."""
    with bounded_readers():
        return _ingest(era5_options(spec), out, files)


def _ingest(opts: Era5Options, out: str | os.PathLike, files: Iterable[str | os.PathLike]) -> Path:
    out = Path(out)
    source = opts.source
    sel = Selection.from_spec(opts)
    chunk_time = int(opts.chunks["time"])
    files = [Path(f) for f in files]
    provenance: dict = {"source": source, "spec": redact(dataclasses.asdict(opts))}
    hashing = None
    if source == "arco":
        url = opts.arco_url
        ds = layout.standardise(open_arco(url), url)
        sub = layout.select(ds, sel, url, need_all=True)
        if sub is None:
            raise InputError(
                f"no times selected by dates {fmt_date(sel.start)}..{fmt_date(sel.end, -1)} and hours (keys 'dates', 'hours')",
                url,
            )
        ((_, data),) = harmonise_units([(url, layout.finish(sub, chunk_time))])
        data = data.chunk({"time": chunk_time})
        sources: dict = {str(v): url for v in data.data_vars}
        provenance["store"] = url
    elif source in ("local", "cds", "synthetic"):
        if not files:
            if source != "local":
                raise InputError(f"source {source!r}: pass the fetched netCDF file (results/raw/era5/<dataset>.nc)")
            files = _expand(opts.files)
        joined = join_inputs(files, sel, chunk_time, opts.on_conflict)
        data, sources = joined.data, joined.sources
        provenance["inputs"] = _input_record(files)
        hashing = _Digests(files)
    else:
        raise ConfigError("source", f"unknown source {source!r}; expected cds, arco, local or synthetic")
    provenance["packages"] = package_versions()
    provenance["git"] = git_state(Path(__file__).parent)
    provenance["created"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")

    times = data["time"].values

    def after_block(counts: NonFinite, stop: int) -> None:
        """`nan: error`: stop at the first block holding NaN or inf."""
        err = nonfinite_error(counts, times, sources, stop) if opts.nan == "error" else None
        if err is not None:
            raise err

    _remove_stale_partials(out)
    with atomic_path(out) as tmp, _dask_scheduler(opts.stream):
        stats, counts = stream_to_zarr(
            data, tmp, chunk_time=chunk_time, block_mb=float(opts.stream.block_mb), after_block=after_block
        )
        provenance["nonfinite"] = summarise(counts, times)
        if hashing is not None:
            for item, digest in zip(provenance["inputs"], hashing.result()):
                item["sha256"] = digest
        _set_attrs(
            tmp,
            {
                "normalisation": json.dumps(stats, sort_keys=True),
                "provenance": json.dumps(provenance, sort_keys=True, default=str),
                "Conventions": "CF-1.7",
            },
        )
    log.info("wrote %s: %s", out, {k: v for k, v in data.sizes.items()})
    return out


def _remove_stale_partials(out: Path) -> None:
    """Delete half-written stores of `out` left by killed runs (their process is gone);
    they never count as complete (another name), but they hold disk space."""
    import psutil

    for stale in out.parent.glob(f".{out.name}.partial-*"):
        try:
            pid = int(stale.name.rsplit("-", 1)[1])
        except ValueError:
            continue
        if pid != os.getpid() and not psutil.pid_exists(pid):
            log.info("removing %s, left by a killed run", stale)
            remove(stale)


@contextlib.contextmanager
def _dask_scheduler(stream: StreamOptions) -> Iterator[None]:
    """Local threads (`stream.workers` of them), or the dask.distributed scheduler at
    `stream.address` (workers must see the input files and the output folder)."""
    import dask

    address = stream.address
    if not address:
        workers = stream.workers
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
