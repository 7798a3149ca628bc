"""Streaming a lazy (dask) dataset into a zarr store, block by block, with statistics.

The store's metadata and coordinates are written first; then blocks of whole time chunks
are computed one at a time, each written into its region of the store while, in the
same dask graph, its sums for the normalisation statistics are reduced. Peak memory is
about one block (`block_mb`) times a small factor, whatever the number of files or time
steps. Statistics are shifted sums in float64 (mean = c + S1/N, var = S2/N - (S1/N)^2
with c the first time step's mean), so one pass is numerically safe.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import xarray as xr

__all__ = ["stream_to_zarr", "time_block"]

log = logging.getLogger(__name__)


def time_block(ds: xr.Dataset, chunk_time: int, block_mb: float) -> int:
    """Time steps per block: a multiple of the zarr time chunk holding about `block_mb` MB."""
    per_step = sum(v.dtype.itemsize * math.prod(s for d, s in v.sizes.items() if d != "time") for v in ds.data_vars.values())
    steps = max(1, int(block_mb * 1e6 // max(per_step, 1)))
    return max(chunk_time, steps // chunk_time * chunk_time)


def _reduce_axes(var: xr.DataArray) -> tuple[int, ...]:
    return tuple(i for i, d in enumerate(var.dims) if d != "level")


def _shift(ds: xr.Dataset) -> dict[str, np.ndarray]:
    """Per variable (and level) mean of the first time step: the shift of the sums."""
    first = ds.isel(time=slice(0, 1))
    lazy = {name: da.nanmean(var.data.astype(np.float64), axis=_reduce_axes(var)) for name, var in first.data_vars.items()}
    values = dask.compute(lazy)[0]
    return {k: np.nan_to_num(np.asarray(v, dtype=np.float64)) for k, v in values.items()}


def stream_to_zarr(
    ds: xr.Dataset,
    path: str | os.PathLike,
    *,
    chunk_time: int,
    block_mb: float = 256.0,
    progress: bool = True,
) -> dict[str, dict]:
    """Write `ds` (dask-backed, dim `time`) to a new zarr store at `path` in time blocks.

    Returns the normalisation statistics `{var: {"mean": [...per level] or x, "std": ...}}`
    over every dim but `level` (NaN-aware, population std)."""
    path = Path(path)
    nt = ds.sizes["time"]
    encoding = {}
    for name, var in ds.data_vars.items():
        encoding[name] = {"chunks": tuple(min(chunk_time, nt) if d == "time" else var.sizes[d] for d in var.dims)}
    encoding["time"] = {"units": "seconds since 1970-01-01", "calendar": "proleptic_gregorian", "dtype": "int64"}
    # metadata and the coordinates now; data variables by region below
    ds.to_zarr(path, mode="w-", compute=False, encoding=encoding, consolidated=False)

    shift = _shift(ds)
    sums = {name: [0, 0.0, 0.0] for name in ds.data_vars}  # N, S1, S2
    block = time_block(ds, chunk_time, block_mb)
    static = [c for c in ds.coords if "time" not in ds[c].dims]
    starts = range(0, nt, block)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=nt, unit="step", desc=f"write {path.name}", disable=os.environ.get("SCOREBRIDGE_NO_PROGRESS") == "1")
    for start in starts:
        stop = min(nt, start + block)
        sub = ds.isel(time=slice(start, stop))
        store = sub.drop_vars(static).to_zarr(path, region={"time": slice(start, stop)}, compute=False, consolidated=False)
        reductions = {}
        for name, var in sub.data_vars.items():
            x = var.data
            axes = _reduce_axes(var)
            c = shift[name].reshape([-1 if d == "level" else 1 for d in var.dims]) if shift[name].ndim else shift[name]
            xc = x.astype(np.float64) - c
            reductions[name] = (da.sum(~da.isnan(x), axis=axes), da.nansum(xc, axis=axes), da.nansum(xc * xc, axis=axes))
        _, values = dask.compute(store, reductions)
        for name, (n, s1, s2) in values.items():
            acc = sums[name]
            acc[0] = acc[0] + np.asarray(n, dtype=np.float64)
            acc[1] = acc[1] + np.asarray(s1)
            acc[2] = acc[2] + np.asarray(s2)
        if bar is not None:
            bar.update(stop - start)
    if bar is not None:
        bar.close()

    stats = {}
    for name, (n, s1, s2) in sums.items():
        n = np.asarray(n, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_c = s1 / n
            var = np.maximum(s2 / n - mean_c**2, 0.0)
        mean = shift[name] + mean_c
        std = np.sqrt(var)
        if "level" in ds[name].dims:
            stats[name] = {"mean": [float(x) for x in np.atleast_1d(mean)], "std": [float(x) for x in np.atleast_1d(std)]}
        else:
            stats[name] = {"mean": float(mean), "std": float(std)}
    return stats
