"""Streaming a lazy (dask) dataset into a zarr store, block by block, with statistics.

The store's metadata and coordinates are written first (xarray, so the encoding is
xarray's); then blocks of whole time chunks are computed one at a time through dask.
Each dask chunk is one zarr chunk (time chunks aligned, other dims whole): one task
reads it, writes it into its region of the store and returns its sums for the
normalisation statistics, so every chunk is read once and released when its task ends.
Peak memory is a few chunks per worker thread, whatever the number of files or time
steps; `block_mb` only bounds the size of each scheduled graph (and paces progress).

Statistics are float64 sums of x and x^2 (squares of float32 are exact in float64):
mean = S1/N, var = S2/N - mean^2; the cancellation costs a relative (mean/std)^2 * 1e-16,
far below what normalisation needs for ERA5 fields.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import uuid
from pathlib import Path
from typing import Callable

import dask
import numpy as np
import xarray as xr

from ...progress import progress
from .finite import NonFinite

__all__ = ["stream_to_zarr", "time_block"]

log = logging.getLogger(__name__)


def time_block(ds: xr.Dataset, chunk_time: int, block_mb: float) -> int:
    """Time steps per block: a multiple of the zarr time chunk holding about `block_mb` MB."""
    per_step = sum(
        v.dtype.itemsize * math.prod(s for d, s in v.sizes.items() if d != "time") for v in ds.data_vars.values()
    )
    steps = max(1, int(block_mb * 1e6 // max(per_step, 1)))
    return max(chunk_time, steps // chunk_time * chunk_time)


def _chunk_sums(x: np.ndarray, level_axis: int | None, time_axis: int) -> tuple[np.ndarray, ...]:
    """(count, sum, sum of squares) of a chunk over every axis but `level_axis`, in float64
    (float32 squares are exact in float64), over the finite values; and the number of
    NaN and of +-inf per time step (along `time_axis`). No temporary copy without NaN/inf."""
    x = np.asarray(x)
    letters = "abcdefgh"[: x.ndim]
    out = letters[level_axis] if level_axis is not None else ""
    axes = tuple(i for i in range(x.ndim) if i != level_axis)
    not_time = tuple(i for i in range(x.ndim) if i != time_axis)
    s1 = x.sum(axis=axes, dtype=np.float64)
    if np.all(np.isfinite(s1)):  # any NaN or inf makes the float64 sum non-finite
        n = np.full(s1.shape, float(np.prod([x.shape[a] for a in axes])))
        nan = inf = np.zeros(x.shape[time_axis], np.int64)
    else:
        nan_mask, inf_mask = np.isnan(x), np.isinf(x)
        nan = nan_mask.sum(axis=not_time, dtype=np.int64)
        inf = inf_mask.sum(axis=not_time, dtype=np.int64)
        valid = ~(nan_mask | inf_mask)
        del nan_mask, inf_mask
        x = np.where(valid, x, np.zeros((), x.dtype))
        n = valid.sum(axis=axes).astype(np.float64)
        s1 = x.sum(axis=axes, dtype=np.float64)
    s2 = np.einsum(f"{letters},{letters}->{out}", x, x, dtype=np.float64)
    return n, s1, s2, nan, inf


_OPEN: dict[tuple[str, str, str], object] = {}
_OPEN_LOCK = threading.Lock()


def _zarr_array(store: str, name: str, run: str):
    """The zarr array `name` of `store`, opened once per process (tasks run in threads or
    on dask.distributed workers)."""
    key = (store, name, run)  # `run`: one write, so a store rewritten at the same path is reopened
    with _OPEN_LOCK:
        arr = _OPEN.get(key)
        if arr is None:
            import zarr

            arr = zarr.open_array(store=store, path=name, mode="r+")
            if len(_OPEN) > 256:
                _OPEN.clear()
            _OPEN[key] = arr
        return arr


def _write_chunk(
    x: np.ndarray, store: str, run: str, name: str, region: tuple[slice, ...], level_axis: int | None, time_axis: int
):
    """Write one chunk into its region of the store and return its statistics sums and
    non-finite counts, so that the chunk is read once and dropped when this task ends."""
    x = np.ascontiguousarray(x)
    _zarr_array(store, name, run)[region] = x
    return (region[time_axis].start, *_chunk_sums(x, level_axis, time_axis))


def _chunk_tasks(x, store: str, run: str, name: str, dims: tuple[str, ...], time_offset: int) -> list:
    """One delayed `_write_chunk` per dask chunk of `x`; chunks align with zarr chunks."""
    bounds = [np.concatenate([[0], np.cumsum(c)]) for c in x.chunks]
    time_axis = dims.index("time")
    level_axis = dims.index("level") if "level" in dims else None
    blocks = x.to_delayed()
    tasks = []
    for idx in np.ndindex(blocks.shape):
        region = []
        for axis, i in enumerate(idx):
            lo, hi = int(bounds[axis][i]), int(bounds[axis][i + 1])
            if axis == time_axis:
                lo, hi = lo + time_offset, hi + time_offset
            region.append(slice(lo, hi))
        tasks.append(
            dask.delayed(_write_chunk, pure=True)(blocks[idx], store, run, name, tuple(region), level_axis, time_axis)
        )
    return tasks


def stream_to_zarr(
    ds: xr.Dataset,
    path: str | os.PathLike,
    *,
    chunk_time: int,
    block_mb: float,
    after_block: Callable[[NonFinite, int], None] | None = None,
) -> tuple[dict[str, dict], NonFinite]:
    """Write `ds` (dask-backed, dim `time`) to a new zarr store at `path` in time blocks.

    Returns the normalisation statistics `{var: {"mean": [...per level] or x, "std": ...}}`
    over every dim but `level` (over the finite values, population std) and the counts
    of NaN and inf per variable and time step. `after_block(counts, stop)` runs after
    each block (the first `stop` time steps written and counted): it may raise to stop
    the write early. A progress bar counts the time steps written (`scorebridge.progress`)."""
    path = Path(path)
    nt = ds.sizes["time"]
    encoding = {}
    for name, var in ds.data_vars.items():
        encoding[name] = {"chunks": tuple(min(chunk_time, nt) if d == "time" else var.sizes[d] for d in var.dims)}
    encoding["time"] = {"units": "seconds since 1970-01-01", "calendar": "proleptic_gregorian", "dtype": "int64"}
    # metadata and the coordinates now (the returned delayed data write is dropped);
    # the data variables chunk by chunk below
    ds.to_zarr(path, mode="w-", compute=False, encoding=encoding, consolidated=False)

    sums = {name: [0, 0.0, 0.0] for name in ds.data_vars}  # N, S1, S2
    counts = NonFinite.zeros([str(n) for n in ds.data_vars], nt)
    run = uuid.uuid4().hex
    block = time_block(ds, chunk_time, block_mb)
    bar = progress(total=nt, unit="step", desc=f"write {path.name}", leave=True)
    try:
        for start in range(0, nt, block):
            stop = min(nt, start + block)
            sub = ds.isel(time=slice(start, stop))
            tasks = {
                name: _chunk_tasks(var.data, str(path), run, name, var.dims, start)
                for name, var in sub.data_vars.items()
            }
            (values,) = dask.compute(tasks)
            for name, parts in values.items():
                acc = sums[name]
                for t0, n, s1, s2, nan, inf in parts:
                    acc[0] = acc[0] + n
                    acc[1] = acc[1] + s1
                    acc[2] = acc[2] + s2
                    counts.nan[name][t0 : t0 + nan.size] += nan
                    counts.inf[name][t0 : t0 + inf.size] += inf
            bar.update(stop - start)
            if after_block is not None:
                after_block(counts, stop)
    finally:
        bar.close()
        with _OPEN_LOCK:
            for key in [k for k in _OPEN if k[2] == run]:
                del _OPEN[key]

    stats = {}
    for name, (n, s1, s2) in sums.items():
        n = np.asarray(n, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = s1 / n
            std = np.sqrt(np.maximum(s2 / n - mean**2, 0.0))
        if "level" in ds[name].dims:
            stats[name] = {
                "mean": [float(x) for x in np.atleast_1d(mean)],
                "std": [float(x) for x in np.atleast_1d(std)],
            }
        else:
            stats[name] = {"mean": float(mean), "std": float(std)}
    return stats, counts
