"""Training data of the SR prior: channels, normalisation, the train/held-out split, batches.

ERA5 zarr (data contract in DESIGN.md): variables by short name with dims
(time, level, latitude, longitude) or (time, latitude, longitude), optional leading
`number` (ensemble member); `attrs["normalisation"]` a JSON string of per-variable
(per-level) mean and std.

Public helpers (also used by posterior sampling and evaluation):

- `open_era5(path) -> xr.Dataset`
- `resolve_channels(ds, variables=None, levels=None) -> list[(var, level | None)]`
  multi-level variables expand over the chosen levels (in the order of `level`),
  single-level ones contribute one channel with level None.
- `normalisation_of(ds, channels) -> Normalisation` (mean/std per channel;
  `.normalise(x)` / `.denormalise(x)` for arrays or tensors with channels on axis -3).
- `split_times(ds, split) -> (train_idx, test_idx)`: integer indices into `ds.time`
  (`split`: the `train.split` options, `scorebridge.sr.options.SplitOptions`);
  `split_times(ds, split, validation=True) -> (train_idx, validation_idx, test_idx)`.
- `load_fields(ds, channels, time_idx, norm=None, member=None) -> np.ndarray`
  (T, C, H, W) float32 (or (T, M, C, H, W) with all members), NaN -> InputError.

Training batches (in memory or streamed, prefetched): `scorebridge.sr.loader`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, InputError
from .options import SplitOptions

__all__ = [
    "Channel",
    "Normalisation",
    "open_era5",
    "resolve_channels",
    "normalisation_of",
    "split_times",
    "load_fields",
    "channel_names",
    "write_toy_era5",
]

Channel = tuple[str, float | None]


def channel_names(channels: Sequence[Channel]) -> list[str]:
    """Readable names: 't/850', 't2m'."""
    return [f"{v}/{_fmt_level(lv)}" if lv is not None else v for v, lv in channels]


def _fmt_level(level: float) -> str:
    return f"{level:g}"


def open_era5(path: str | Path):
    """Open an ERA5 zarr store of the data contract (lazily)."""
    from ..io import open_store

    path = Path(path)
    ds = open_store(path, "ERA5")
    for coord in ("time", "latitude", "longitude"):
        if coord not in ds.coords and coord not in ds.dims:
            raise InputError(f"missing coordinate '{coord}' (ERA5 data contract)", path)
    ds.attrs["source_path"] = str(path)  # named in error messages
    return ds


def _is_field(ds, name: str) -> bool:
    da = ds[name]
    return {"time", "latitude", "longitude"} <= set(da.dims)


def resolve_channels(
    ds, variables: Sequence[str] | None = None, levels: Sequence[float] | None = None
) -> list[Channel]:
    """The (variable, level) channels for the chosen variables and levels (None: all)."""
    where = ds.attrs.get("source_path", "ERA5 store")
    available = [v for v in ds.data_vars if _is_field(ds, v)]
    # a stable order: that of attrs["normalisation"] (the dataset's config order), then by name;
    # the order in which a zarr store lists its arrays is not guaranteed
    try:
        order = list(json.loads(ds.attrs.get("normalisation", "{}")))
    except (TypeError, ValueError):
        order = []
    available.sort(key=lambda v: (order.index(v) if v in order else len(order), str(v)))
    if variables is None:
        variables = available
    missing = [v for v in variables if v not in ds.data_vars]
    if missing:
        raise ConfigError("sr.train.variables", f"{missing} not in {where}; available: {available}")
    ds_levels = [float(x) for x in ds["level"].values] if "level" in ds.coords else []
    if levels is not None:
        bad = [lv for lv in levels if not any(abs(float(lv) - x) < 1e-6 for x in ds_levels)]
        if bad:
            raise ConfigError("sr.train.levels", f"levels {bad} hPa not in {where}; available: {ds_levels}")
        chosen = [x for x in ds_levels if any(abs(float(lv) - x) < 1e-6 for lv in levels)]
    else:
        chosen = ds_levels
    channels: list[Channel] = []
    for v in variables:
        if "level" in ds[v].dims:
            channels += [(str(v), float(lv)) for lv in chosen]
        else:
            channels.append((str(v), None))
    if not channels:
        raise ConfigError("sr.train.variables", f"no channels selected from {where}")
    return channels


@dataclass
class Normalisation:
    """Per-channel mean and std (float32 arrays of length C): x_norm = (x - mean) / std."""

    mean: np.ndarray
    std: np.ndarray

    def _shape(self, x: Any) -> tuple[Any, Any]:
        mean, std = self.mean, self.std
        if isinstance(x, Tensor):
            mean = torch.as_tensor(mean, dtype=x.dtype, device=x.device)
            std = torch.as_tensor(std, dtype=x.dtype, device=x.device)
        return mean.reshape(-1, 1, 1), std.reshape(-1, 1, 1)

    def normalise(self, x):
        """x with channels on axis -3 (..., C, H, W)."""
        m, s = self._shape(x)
        return (x - m) / s

    def denormalise(self, x):
        m, s = self._shape(x)
        return x * s + m

    def to_dict(self) -> dict:
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}

    @classmethod
    def from_dict(cls, d: dict) -> "Normalisation":
        return cls(np.asarray(d["mean"], dtype=np.float32), np.asarray(d["std"], dtype=np.float32))


def normalisation_of(ds, channels: Sequence[Channel]) -> Normalisation:
    """Mean/std per channel from `attrs["normalisation"]` (computed from the data if absent)."""
    where = ds.attrs.get("source_path", "ERA5 store")
    raw = ds.attrs.get("normalisation")
    stats = None
    if raw is not None:
        try:
            stats = json.loads(raw) if isinstance(raw, str) else dict(raw)
        except (TypeError, ValueError) as err:
            raise InputError(f"attrs['normalisation'] is not valid JSON ({err})", where) from None
    ds_levels = [float(x) for x in ds["level"].values] if "level" in ds.coords else []
    mean, std = [], []
    for v, lv in channels:
        if stats is None or v not in stats:
            da = ds[v] if lv is None else ds[v].sel(level=lv)
            m, s = float(da.mean().compute()), float(da.std().compute())
        else:
            entry = stats[v]
            try:
                m, s = entry["mean"], entry["std"]
                if lv is not None:
                    k = next(i for i, x in enumerate(ds_levels) if abs(x - lv) < 1e-6)
                    m, s = m[k], s[k]
                m, s = float(m), float(s)
            except (KeyError, IndexError, TypeError, StopIteration) as err:
                raise InputError(
                    f"attrs['normalisation'] has no usable mean/std for {v} at level {lv} ({err!r})", where
                ) from None
        if not (np.isfinite(m) and np.isfinite(s) and s > 0):
            raise InputError(
                f"normalisation of {v} (level {lv}) is mean={m}, std={s}: need finite values and std > 0", where
            )
        mean.append(m)
        std.append(s)
    return Normalisation(np.asarray(mean, np.float32), np.asarray(std, np.float32))


def split_times(ds, split: SplitOptions, validation: bool = False) -> tuple[np.ndarray, ...]:
    """Training and held-out time indices into `ds.time` (sorted int arrays, disjoint).

    `split` is the experiment's `train.split` options:
      train_fraction: the first fraction of the times trains (when no train_start/train_end
          is given);
      train_start / train_end: dates (inclusive, any numpy datetime string) of training;
      test_start / test_end: dates of the held-out times; none: every time not used
          for training that lies more than `gap` time steps from a training time;
      gap: time steps left out between training and held-out times (temporal
          autocorrelation);
      validation: the last this many times of the training period are not trained on
          (nor `gap` steps before them); posterior sampling calibrates its spread on
          them. Returned as a middle array when `validation=True`.
    """
    s = split
    times = np.asarray(ds["time"].values).astype("datetime64[ns]")
    n = len(times)
    if n == 0:
        raise InputError("ERA5 store has no times", ds.attrs.get("source_path"))
    idx = np.arange(n)

    def window(start, end, key):
        try:
            lo = np.datetime64(start, "ns") if start else times.min()
            hi = np.datetime64(end, "ns") if end else times.max()
        except ValueError as err:
            raise ConfigError(f"sr.train.split.{key}", f"not a date: {err}") from None
        if end and len(str(end)) <= 10:  # a date alone: include the whole day
            hi = hi + np.timedelta64(1, "D") - np.timedelta64(1, "ns")
        return idx[(times >= lo) & (times <= hi)]

    gap = int(s.gap or 0)
    if s.train_start or s.train_end:
        train = window(s.train_start, s.train_end, "train_start")
    else:
        frac = float(s.train_fraction)
        if not 0 < frac <= 1:
            raise ConfigError("sr.train.split.train_fraction", f"must be in (0, 1], got {frac}")
        train = idx[: max(1, int(np.floor(frac * n)))]
    if len(train) == 0:
        raise ConfigError("sr.train.split", f"no training times in {times.min()}..{times.max()}")
    if s.test_start or s.test_end:
        test = window(s.test_start, s.test_end, "test_start")
        overlap = np.intersect1d(train, test)
        if len(overlap):
            raise ConfigError(
                "sr.train.split", f"{len(overlap)} time(s) both in training and held out, e.g. {times[overlap[0]]}"
            )
    else:
        dist = np.abs(idx[:, None] - train[None, :]).min(axis=1)
        test = idx[dist > gap]
    if len(test) == 0:  # nothing to sample or evaluate: refused before training or sampling starts
        if s.test_start or s.test_end:
            why = f"test_start/test_end select none of the {n} times ({times.min()}..{times.max()})"
        else:
            used = (
                f"train_fraction {s.train_fraction}" if not (s.train_start or s.train_end) else "train_start/train_end"
            )
            why = f"{used} trains on {len(train)} of the {n} times" + (
                f" and gap {gap} leaves out the rest" if len(train) < n else ""
            )
        raise ConfigError("sr.train.split", f"no held-out times to sample and evaluate: {why}")
    nval = int(s.validation or 0)
    val = np.zeros(0, dtype=np.int64)
    if nval:
        if nval >= len(train):
            raise ConfigError(
                "sr.train.split.validation", f"{nval} validation times leave nothing of the {len(train)} training times"
            )
        val = train[-nval:]
        train = train[train < val[0] - gap]
        if len(train) == 0:
            raise ConfigError(
                "sr.train.split.validation", f"no training times left before the validation block with gap {gap}"
            )
    if validation:
        return train.astype(np.int64), val.astype(np.int64), test.astype(np.int64)
    return train.astype(np.int64), test.astype(np.int64)


def _nan_error(ds, channels, times, arr, t_axis_vals, member=None) -> None:
    bad = np.isnan(arr)
    if not bad.any():
        return
    pos = np.argwhere(bad)[0]
    t = t_axis_vals[pos[0]]
    c = pos[-3]
    v, lv = channels[c]
    where = ds.attrs.get("source_path", "ERA5 store")
    lvl = f" at {lv:g} hPa" if lv is not None else ""
    mem = f", member {pos[1]}" if arr.ndim == 5 else ""
    raise InputError(
        f"NaN in training field '{v}'{lvl} at time {np.datetime_as_string(np.datetime64(t, 's'))}{mem} "
        f"({int(bad.sum())} NaN values among the selected times); fill or drop those times (sr.train.split)",
        where,
    )


def load_fields(
    ds,
    channels: Sequence[Channel],
    time_idx: Sequence[int],
    norm: Normalisation | None = None,
    member: int | None = None,
    check_nan: bool = True,
) -> np.ndarray:
    """Fields at `time_idx` stacked as (T, C, H, W) float32 ((T, M, C, H, W) when `ds` has
    members and `member` is None); normalised when `norm` is given. NaN -> InputError."""
    time_idx = np.asarray(time_idx, dtype=np.int64)
    sub = ds.isel(time=time_idx)
    has_members = "number" in ds.dims
    if has_members and member is not None:
        sub = sub.isel(number=member)
    planes = []
    for v, lv in channels:
        da = sub[v] if lv is None else sub[v].sel(level=lv)
        dims = ["time"] + (["number"] if "number" in da.dims else []) + ["latitude", "longitude"]
        planes.append(np.asarray(da.transpose(*dims).values, dtype=np.float32))
    arr = np.stack(planes, axis=-3)
    if check_nan:
        _nan_error(ds, channels, sub["time"].values, arr, sub["time"].values)
    if norm is not None:
        arr = norm.normalise(arr).astype(np.float32)
    return np.ascontiguousarray(arr)


def write_toy_era5(
    path: str | Path,
    ntime: int = 24,
    nlat: int = 16,
    nlon: int = 16,
    variables: Sequence[str] = ("t", "u"),
    levels: Sequence[float] = (850.0, 500.0),
    single: Sequence[str] = (),
    members: int = 0,
    seed: int = 0,
    slope: float = 3.0,
) -> Path:
    """A small ERA5-contract zarr of smooth random fields (for tests and benchmarks).

    Each (variable, level) is a Gaussian random field with isotropic power spectrum
    ∝ k^-slope, AR(1)-correlated in time (ρ = 0.8), with a per-channel mean and
    scale; `attrs["normalisation"]` holds the per-channel mean/std.
    """
    import pandas as pd
    import xarray as xr

    from ..io import atomic_path

    rng = np.random.default_rng(seed)
    ky = np.fft.fftfreq(nlat)[:, None]
    kx = np.fft.fftfreq(nlon)[None, :]
    k = np.sqrt(kx**2 + ky**2)
    amp = np.where(k > 0, np.maximum(k, 1.0 / max(nlat, nlon)) ** (-slope / 2), 0.0)
    nm = max(1, members)

    def field() -> np.ndarray:
        out = np.empty((ntime, nm, nlat, nlon), np.float32)
        z = None
        for t in range(ntime):
            w = rng.standard_normal((nm, nlat, nlon)) + 1j * rng.standard_normal((nm, nlat, nlon))
            z = w if z is None else 0.8 * z + 0.6 * w
            f = np.fft.ifft2(z * amp, axes=(-2, -1)).real
            out[t] = f / (f.std() + 1e-12)
        return out

    coords = {
        "time": pd.date_range("2020-01-01", periods=ntime, freq="6h").values.astype("datetime64[ns]"),
        "latitude": np.linspace(30.0, 30.0 + 0.5 * (nlat - 1), nlat),
        "longitude": np.linspace(-110.0, -110.0 + 0.5 * (nlon - 1), nlon),
    }
    lead = ("number",) if members else ()
    if members:
        coords["number"] = np.arange(members)
    data_vars, stats = {}, {}
    if levels:
        coords["level"] = np.asarray(levels, dtype=float)
    for i, v in enumerate(variables):
        means = [250.0 + 10 * i + j for j in range(len(levels))]
        stds = [5.0 + i + j for j in range(len(levels))]
        arr = np.stack([m + s * field() for m, s in zip(means, stds)], axis=2)  # (T, M, L, H, W)
        arr = arr if members else arr[:, 0]
        dims = ("time",) + lead + ("level", "latitude", "longitude")
        data_vars[v] = (dims, arr.astype(np.float32) if members else arr.astype(np.float32))
        stats[v] = {
            "mean": [float(x) for x in np.nanmean(arr, axis=tuple(a for a in range(arr.ndim) if a != arr.ndim - 3))],
            "std": [float(x) for x in np.nanstd(arr, axis=tuple(a for a in range(arr.ndim) if a != arr.ndim - 3))],
        }
    for v in single:
        arr = 280.0 + 8.0 * field()
        arr = arr if members else arr[:, 0]
        data_vars[v] = (("time",) + lead + ("latitude", "longitude"), arr.astype(np.float32))
        stats[v] = {"mean": float(arr.mean()), "std": float(arr.std())}
    ds = xr.Dataset(data_vars, coords=coords)
    if members:
        ds = ds.transpose("number", "time", ...)
    ds.attrs["normalisation"] = json.dumps(stats)
    ds.attrs["provenance"] = json.dumps({"source": "scorebridge.sr.data.write_toy_era5", "seed": seed})
    path = Path(path)
    with atomic_path(path) as tmp:
        ds.chunk({"time": 8}).to_zarr(tmp, consolidated=False)
    return path
