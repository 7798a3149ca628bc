"""Training batches of the SR prior: random (time, member, crop) samples, in memory or
streamed from the zarr store, and a background reader that prepares them ahead.

- :class:`FieldBatcher`: draws a batch from a torch generator and reads it, from memory
  when the training fields fit in `max_memory_mb`, else from the store (one read per
  variable and sample). The draw depends only on the generator, so equal generators give
  equal batches in memory and streamed; `part` reads only a slice of the drawn batch (a
  DDP rank's shard) after drawing all of it.
- :class:`Prefetcher`: computes `make(step)` for the next `depth` steps in `depth`
  background threads, so the training loop waits only when reading is slower than a
  step; it records the time the loop waited (`wait_s`).
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError
from .data import Channel, Normalisation, _nan_error, load_fields

__all__ = ["FieldBatcher", "Draw", "Prefetcher"]


@dataclass(frozen=True)
class Draw:
    """The random choices of one batch of n samples: indices into the training times, the
    members, the crop corners, and the circular shifts (rows, columns; zeros without shift)."""

    ti: np.ndarray
    mi: np.ndarray
    i0: np.ndarray
    j0: np.ndarray
    roll: np.ndarray | None  # (n, 2) or None


class FieldBatcher:
    """Random (time, member, crop) batches of normalised training fields.

    In memory when the training fields fit in `max_memory_mb`, else read from the
    store per sample (each variable's levels in one read). `batch(generator, n)` draws n
    samples: a (n, C, h, w) tensor; `batch(generator, n, part)` draws the same n and
    returns only the samples of the slice `part`. The draw depends only on the generator.
    `shift`: axes ("latitude", "longitude") along which each sample is also rolled by a
    random whole number of cells (translation augmentation on periodic axes).
    """

    def __init__(
        self,
        ds,
        channels: Sequence[Channel],
        time_idx: Sequence[int],
        norm: Normalisation,
        crop: int | Sequence[int] | None = None,
        *,
        max_memory_mb: float,
        shift: Sequence[str] = (),
    ):
        self.ds = ds
        self.channels = list(channels)
        self.time_idx = np.asarray(time_idx, dtype=np.int64)
        self.norm = norm
        self.members = int(ds.sizes["number"]) if "number" in ds.dims else 0
        self.H, self.W = int(ds.sizes["latitude"]), int(ds.sizes["longitude"])
        if crop is None:
            self.crop = (self.H, self.W)
        else:
            ch, cw = (int(crop), int(crop)) if np.isscalar(crop) else (int(crop[0]), int(crop[1]))
            if ch > self.H or cw > self.W or ch < 1 or cw < 1:
                raise ConfigError("sr.train.crop", f"crop {ch}x{cw} does not fit the {self.H}x{self.W} grid")
            self.crop = (ch, cw)
        self.nbytes = len(self.time_idx) * max(1, self.members) * len(self.channels) * self.H * self.W * 4
        self.in_memory = self.nbytes <= max_memory_mb * 2**20
        self.data = load_fields(ds, self.channels, self.time_idx, norm) if self.in_memory else None
        self.shift = tuple(shift)
        self._reads = self._plan_reads()
        self._zarr = None if self.in_memory else self._open_arrays()

    def _plan_reads(self) -> list[tuple[str, list[int] | None, list[int]]]:
        """Per variable: (name, level indices in the store or None, output channel indices)."""
        levels = [float(x) for x in self.ds["level"].values] if "level" in self.ds.coords else []
        plan: dict[str, tuple[list[int] | None, list[int]]] = {}
        for c, (v, lv) in enumerate(self.channels):
            lev, out = plan.setdefault(v, ([] if lv is not None else None, []))
            if lv is not None:
                lev.append(next(i for i, x in enumerate(levels) if abs(x - lv) < 1e-6))
            out.append(c)
        return [(v, lev, out) for v, (lev, out) in plan.items()]

    def _open_arrays(self) -> dict | None:
        """The store's zarr arrays of the variables read, for reads without dask's scheduler
        (about 9 ms a read through it); None (reads through xarray) where a variable is
        packed or has a fill value other than NaN, or the store does not open so."""
        path = self.ds.attrs.get("source_path")
        arrays = {}
        try:
            import zarr

            for v, _, _ in self._reads:
                enc = self.ds[v].encoding
                fill = enc.get("_FillValue", np.nan)
                if "scale_factor" in enc or "add_offset" in enc or not (fill is None or np.isnan(fill)):
                    return None
                arr = zarr.open_array(store=path, path=v, mode="r")
                if arr.shape != self.ds[v].shape:
                    return None
                arrays[v] = arr
        except Exception:  # noqa: BLE001 - any store zarr cannot open directly is read through xarray
            return None
        return arrays

    def draw(self, generator: torch.Generator, n: int) -> Draw:
        """The random choices of a batch of n (consumes the generator as `batch` does)."""
        g = generator
        ti = torch.randint(len(self.time_idx), (n,), generator=g).numpy()
        mi = torch.randint(max(1, self.members), (n,), generator=g).numpy()
        ch, cw = self.crop
        i0 = torch.randint(self.H - ch + 1, (n,), generator=g).numpy()
        j0 = torch.randint(self.W - cw + 1, (n,), generator=g).numpy()
        roll = None
        if self.shift:  # drawn after the crops, so batches without shift are unchanged
            roll = np.zeros((n, 2), np.int64)
            for a, (axis, size) in enumerate((("latitude", ch), ("longitude", cw))):
                if axis in self.shift:
                    roll[:, a] = torch.randint(size, (n,), generator=g).numpy()
        return Draw(ti, mi, i0, j0, roll)

    def batch(self, generator: torch.Generator, n: int, part: slice | None = None) -> Tensor:
        return self.read(self.draw(generator, n), part)

    def read(self, d: Draw, part: slice | None = None) -> Tensor:
        """The samples `part` (default all) of draw `d`, (len, C, h, w) float32."""
        ks = range(len(d.ti))[part or slice(None)]
        ch, cw = self.crop
        out = np.empty((len(ks), len(self.channels), ch, cw), np.float32)
        for o, k in enumerate(ks):
            if self.in_memory:
                x = self.data[d.ti[k], d.mi[k]] if self.members else self.data[d.ti[k]]
                out[o] = x[:, d.i0[k] : d.i0[k] + ch, d.j0[k] : d.j0[k] + cw]
            else:
                out[o] = self._read_one(int(self.time_idx[d.ti[k]]), int(d.mi[k]), int(d.i0[k]), int(d.j0[k]))
            if d.roll is not None:
                for axis in (0, 1):
                    if d.roll[k, axis]:
                        out[o] = np.roll(out[o], int(d.roll[k, axis]), axis=axis - 2)
        return torch.from_numpy(out)

    def _read_one(self, t: int, m: int, i0: int, j0: int) -> np.ndarray:
        """One normalised sample (C, h, w) read from the store: one read per variable."""
        ch, cw = self.crop
        x = np.empty((len(self.channels), ch, cw), np.float32)
        index: dict[str, Any] = {
            "time": t,
            "latitude": slice(i0, i0 + ch),
            "longitude": slice(j0, j0 + cw),
            "number": m,
        }
        for v, lev, out in self._reads:
            var = self.ds[v].variable
            idx = {k: i for k, i in index.items() if k in var.dims}
            if lev is not None:
                idx["level"] = lev
            if self._zarr is not None:  # the store's order of dims; levels by orthogonal indexing
                arr = np.asarray(self._zarr[v].oindex[tuple(idx[d] for d in var.dims)], dtype=np.float32)
                arr = (
                    np.moveaxis(arr, var.dims.index("level") - sum(d in ("number", "time") for d in var.dims), 0)
                    if lev is not None
                    else arr
                )
            else:
                dims = (["level"] if lev is not None else []) + ["latitude", "longitude"]
                arr = np.asarray(var.isel(idx).transpose(*dims).values, dtype=np.float32)
            x[out] = arr if lev is not None else arr[None]
        if np.isnan(x).any():  # named as load_fields names it
            _nan_error(self.ds, self.channels, [self.ds["time"].values[t]], x[None], [self.ds["time"].values[t]])
        return self.norm.normalise(x).astype(np.float32)


class Prefetcher:
    """`make(step)` for consecutive steps, computed ahead by `depth` background threads.

    `get(step)` returns `make(step)`; up to `depth` later steps are being made meanwhile,
    each by its own thread (reading releases the GIL: zarr decompression, numpy), so a
    slow store is read `depth` ways in parallel. The threads start at the first step
    asked for (a resumed run starts mid-way) and restart if the steps asked for jump. An
    exception in `make` is raised by the `get` of its step. `wait_s` sums the time `get`
    waited; `close()` stops the threads. `depth` 0 computes in the caller (no thread).
    """

    def __init__(self, make: Callable[[int], Any], stop: int, depth: int):
        self.make, self.stop, self.depth = make, int(stop), int(depth)
        self.wait_s = 0.0
        self.calls = 0
        self._pool: ThreadPoolExecutor | None = None
        self._futures: dict[int, Future] = {}

    def _submit(self, step: int) -> None:
        if step < self.stop and step not in self._futures:
            self._futures[step] = self._pool.submit(self.make, step)

    def get(self, step: int) -> Any:
        t0 = time.perf_counter()
        self.calls += 1
        try:
            if self.depth <= 0:
                return self.make(step)
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.depth, thread_name_prefix="sr-prefetch")
            if step not in self._futures:  # the first step, or a jump: drop what was made ahead
                for f in self._futures.values():
                    f.cancel()
                self._futures.clear()
            for s in range(step, step + self.depth + 1):
                self._submit(s)
            return self._futures.pop(step).result()
        finally:
            self.wait_s += time.perf_counter() - t0

    def close(self) -> None:
        for f in self._futures.values():
            f.cancel()
        self._futures.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> "Prefetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
