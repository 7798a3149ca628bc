"""The samples store (`samples.zarr`, written by `sr-sample`, read by `sr-evaluate`).

Layout: per variable ``{v}`` (dims ``time, member, [level,] latitude, longitude``) the
ensemble, ``{v}_mean`` and ``{v}_spread`` over members, ``{v}_coarse`` on the coarse grid
(``latitude_coarse``, ``longitude_coarse``) and, when comparison conditioning sets were
sampled, ``{v}_mean_compare`` (leading dim ``conditioning``). Coordinates ``time``,
``member``, ``latitude``, ``longitude``, ``level`` (multi-level variables share one set),
``time_index`` (into the ERA5 store). Attributes (JSON strings): ``sampling`` (what was
done, calibration, cost, withheld stations), ``channels``, ``provenance``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError
from .operators import coarse_coords

__all__ = ["channel_layout", "fields_to_vars", "vars_to_fields", "samples_dataset", "write_samples", "open_samples"]


def channel_layout(channels) -> tuple[list[str], list[float]]:
    """Variables in channel order and the shared pressure levels (hPa) of the multi-level ones."""
    variables: list[str] = []
    levels_of: dict[str, list[float]] = {}
    for v, lv in channels:
        if v not in variables:
            variables.append(v)
        if lv is not None:
            levels_of.setdefault(v, []).append(float(lv))
    lvls = list(levels_of.values())
    if any(lv != lvls[0] for lv in lvls):
        raise InputError(f"variables have different level sets {levels_of}; the samples store needs one shared `level` axis")
    return variables, (lvls[0] if lvls else [])


def fields_to_vars(arr: np.ndarray, channels, lead_dims: Sequence[str], suffix: str = "", lat_dim: str = "latitude", lon_dim: str = "longitude") -> dict:
    """Split ``arr[..., C, H, W]`` by variable: ``{name: (dims, data)}`` for an ``xr.Dataset``."""
    out = {}
    variables, _ = channel_layout(channels)
    for v in variables:
        cs = [c for c, (vv, _) in enumerate(channels) if vv == v]
        if channels[cs[0]][1] is None:
            out[v + suffix] = ((*lead_dims, lat_dim, lon_dim), arr[..., cs[0], :, :])
        else:
            out[v + suffix] = ((*lead_dims, "level", lat_dim, lon_dim), arr[..., cs, :, :])
    return out


def vars_to_fields(ds, channels, suffix: str = "", **isel) -> np.ndarray:
    """Inverse of :func:`fields_to_vars`: stack a store's variables into ``[..., C, H, W]``."""
    planes = []
    for v, lv in channels:
        da = ds[v + suffix]
        if isel:
            da = da.isel(**{k: i for k, i in isel.items() if k in da.dims})
        planes.append(np.asarray((da if lv is None else da.sel(level=lv)).values))
    return np.stack(planes, axis=-3)


def samples_dataset(ens: np.ndarray, coarse: np.ndarray, channels, *, times: np.ndarray, time_index: np.ndarray, lat: np.ndarray, lon: np.ndarray, factor: int,
                    compare: Sequence[Sequence[str]] = (), compare_means: Sequence[np.ndarray] = (), attrs_from=None):
    """The store's dataset of ensembles ``ens[T, N, C, H, W]`` and coarse fields
    ``coarse[T, C, h, w]`` (physical); ``compare_means[j]`` the ensemble mean conditioned on
    ``compare[j]``; variable attributes (units, names) copied from ``attrs_from``."""
    import xarray as xr

    variables, levels = channel_layout(channels)
    coords = {
        "time": times,
        "member": np.arange(ens.shape[1]),
        "latitude": lat,
        "longitude": lon,
        "latitude_coarse": coarse_coords(lat, factor),
        "longitude_coarse": coarse_coords(lon, factor),
        "time_index": ("time", np.asarray(time_index).astype(np.int64)),
    }
    if levels:
        coords["level"] = np.asarray(levels, np.float64)
    data = {}
    data.update(fields_to_vars(ens, channels, ("time", "member")))
    data.update(fields_to_vars(ens.mean(1), channels, ("time",), "_mean"))
    data.update(fields_to_vars(ens.std(1, ddof=1), channels, ("time",), "_spread"))
    data.update(fields_to_vars(coarse, channels, ("time",), "_coarse", "latitude_coarse", "longitude_coarse"))
    if len(compare_means):
        coords["conditioning"] = np.array(["+".join(c) if c else "prior" for c in compare])
        data.update(fields_to_vars(np.stack(compare_means), channels, ("conditioning", "time"), "_mean_compare"))
    out = xr.Dataset({n: (d, np.asarray(a, np.float32)) for n, (d, a) in data.items()}, coords=coords)
    if attrs_from is not None:
        for v in variables:
            if v in attrs_from.data_vars:
                out[v].attrs.update({k: a for k, a in attrs_from[v].attrs.items() if k in ("units", "long_name", "standard_name")})
    return out


def write_samples(out: str | Path, ds, *, sampling: dict, channels, provenance: dict) -> None:
    """Write the dataset ``ds`` of :func:`samples_dataset` with its attributes, atomically."""
    from ..io import atomic_path

    ds.attrs["sampling"] = json.dumps(sampling)
    ds.attrs["channels"] = json.dumps([[v, lv] for v, lv in channels])
    ds.attrs["provenance"] = json.dumps(provenance)
    with atomic_path(out) as tmp:
        ds.chunk({"time": 1}).to_zarr(tmp, mode="w", consolidated=False)


def open_samples(path: str | Path):
    """``(dataset, sampling record, channels)`` of a samples store; InputError if it is not one."""
    import xarray as xr

    path = Path(path)
    if not path.exists():
        raise InputError("samples store not found (run sr-sample first)", path)
    try:
        ds = xr.open_zarr(path, consolidated=False)
        sampling = json.loads(ds.attrs["sampling"])
        channels = [(v, None if lv is None else float(lv)) for v, lv in json.loads(ds.attrs["channels"])]
    except (KeyError, ValueError, OSError) as err:
        raise InputError(f"not a samples store written by sr-sample ({err})", path) from None
    return ds, sampling, channels
