"""The samples store (`samples.zarr`, written by `sr-sample`, read by `sr-evaluate`).

Layout: per variable ``{v}`` (dims ``time, member, [level,] latitude, longitude``) the
ensemble, ``{v}_mean`` and ``{v}_spread`` over members, ``{v}_coarse`` on the coarse grid
(``latitude_coarse``, ``longitude_coarse``), when the conditioning adds radiosondes to the
coarse field the coarse-only ensemble ``{v}_coarse_only`` (same dims as ``{v}``), for a prior
that models anomalies its training-time mean field ``{v}_climatology`` and, when
comparison conditioning sets were sampled, ``{v}_mean_compare`` (leading dim ``conditioning``). Coordinates ``time``,
``member``, ``latitude``, ``longitude``, ``level`` (multi-level variables share one set),
``time_index`` (into the ERA5 store), the coarse cells' edges ``latitude_coarse_bounds``,
``longitude_coarse_bounds``. Attributes (JSON strings): ``sampling`` (what was done,
calibration, cost, withheld stations), ``channels``, ``provenance``.

CF-1.10 (:func:`cf_attributes`): every variable has ``units``, ``long_name`` and the
field's ``standard_name``; ``{v}_mean`` / ``{v}_spread`` have ``cell_methods``
``realization: mean`` / ``realization: standard_deviation``, ``{v}_coarse``
``latitude_coarse: longitude_coarse: mean`` (over the bounded coarse cells); ``member`` is
CF's ``realization`` axis; global ``Conventions``, ``title``, ``source``, ``history``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError
from .operators import coarse_coords

__all__ = [
    "GLOBAL_ATTRS",
    "channel_layout",
    "fields_to_vars",
    "vars_to_fields",
    "samples_dataset",
    "cf_attributes",
    "write_samples",
    "open_samples",
]

GLOBAL_ATTRS = {
    "Conventions": "CF-1.10",
    "title": "Posterior ensembles of super-resolved ERA5 fields (scorebridge)",
    "source": "scorebridge sr-sample: score-based (EDM) prior conditioned zero-shot on coarse fields and radiosondes",
    "comment": "per variable v: v (members), v_mean, v_spread (over members, after the calibration's inflation), v_coarse (the "
    "coarse input), v_coarse_only, v_mean_compare and v_gaussian (the Gaussian baseline) when sampled; attributes sampling, channels, provenance are JSON",
}


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
        raise InputError(
            f"variables have different level sets {levels_of}; the samples store needs one shared `level` axis"
        )
    return variables, (lvls[0] if lvls else [])


def fields_to_vars(
    arr: np.ndarray,
    channels,
    lead_dims: Sequence[str],
    suffix: str = "",
    lat_dim: str = "latitude",
    lon_dim: str = "longitude",
) -> dict:
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


def samples_dataset(
    ens: np.ndarray,
    coarse: np.ndarray,
    channels,
    *,
    times: np.ndarray,
    time_index: np.ndarray,
    lat: np.ndarray,
    lon: np.ndarray,
    factor: int,
    compare: Sequence[Sequence[str]] = (),
    compare_means: Sequence[np.ndarray] = (),
    reference: np.ndarray | None = None,
    climatology: np.ndarray | None = None,
    gaussian: np.ndarray | None = None,
    attrs_from=None,
):
    """The store's dataset of ensembles ``ens[T, N, C, H, W]`` and coarse fields
    ``coarse[T, C, h, w]`` (physical); ``compare_means[j]`` the ensemble mean conditioned on
    ``compare[j]``; ``reference`` the coarse-only ensemble ``[T, N, C, H, W]`` sampled beside a
    conditioning set that adds radiosondes; ``climatology[C, H, W]`` the prior's training-time
    mean field (a prior that models anomalies); ``gaussian[T, C, H, W]`` the coarse-only posterior
    mean of the prior's Gaussian part (a prior with a Wiener skip); variable attributes (units, names) copied
    from ``attrs_from``."""
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
    if reference is not None:
        data.update(fields_to_vars(reference, channels, ("time", "member"), "_coarse_only"))
    if climatology is not None:
        data.update(fields_to_vars(climatology, channels, (), "_climatology"))
    if gaussian is not None:
        data.update(fields_to_vars(gaussian, channels, ("time",), "_gaussian"))
    if len(compare_means):
        coords["conditioning"] = np.array(["+".join(c) if c else "prior" for c in compare])
        data.update(fields_to_vars(np.stack(compare_means), channels, ("conditioning", "time"), "_mean_compare"))
    out = xr.Dataset({n: (d, np.asarray(a, np.float32)) for n, (d, a) in data.items()}, coords=coords)
    return cf_attributes(out, variables, factor, attrs_from)


def _block_bounds(coord: np.ndarray, k: int) -> np.ndarray:
    """``(n_coarse, 2)`` edges of the coarse cells: from the first fine cell's outer edge to
    the last's (edge padding: the last block ends at the grid's edge)."""
    c = np.asarray(coord, np.float64)
    d = (c[-1] - c[0]) / (len(c) - 1) if len(c) > 1 else 1.0
    first = np.arange(0, len(c), k)
    last = np.minimum(first + k, len(c)) - 1
    return np.stack([c[first] - d / 2, c[last] + d / 2], axis=1)


def _field_attrs(v: str, attrs_from) -> dict:
    """units, long_name, standard_name of field ``v``: the ERA5 store's, else ERA5's own names."""
    from ..data.era5.synthetic import PRESSURE_VARIABLES, SINGLE_VARIABLES

    std, long, units = {**PRESSURE_VARIABLES, **SINGLE_VARIABLES}.get(v, (None, v, None))
    known = {"units": units, "long_name": long, "standard_name": std}
    if attrs_from is not None and v in attrs_from.data_vars:
        known.update({k: a for k, a in attrs_from[v].attrs.items() if k in ("units", "long_name", "standard_name")})
    return {k: a for k, a in known.items() if a is not None}


# suffix -> (what the variable holds, cell_methods)
_KINDS = {
    "": ("posterior ensemble member", None),
    "_mean": ("posterior ensemble mean", "realization: mean"),
    "_spread": (
        "posterior ensemble spread (standard deviation over members, unbiased)",
        "realization: standard_deviation",
    ),
    "_coarse": ("coarse input: block average of the truth", "latitude_coarse: longitude_coarse: mean"),
    "_coarse_only": ("posterior ensemble member conditioned on the coarse input only", None),
    "_mean_compare": ("posterior ensemble mean of each comparison conditioning set", "realization: mean"),
    "_gaussian": (
        "posterior mean of the Gaussian prior with the training fields' cross-spectra, coarse input only",
        None,
    ),
    "_climatology": ("the prior's training-time mean field (it models anomalies from it)", "time: mean"),
}


def cf_attributes(ds, variables: Sequence[str], factor: int, attrs_from=None):
    """CF-1.10 attributes on every variable of a samples dataset: units, long_name,
    standard_name (where one exists), cell_methods of the statistics over members
    (``realization: mean`` / ``standard_deviation``) and of the coarse block averages
    (with the coarse cells' bounds), the ``member`` axis as CF's ``realization``."""
    coord_attrs = {
        "time": {"standard_name": "time", "long_name": "valid time", "axis": "T"},
        "latitude": {"units": "degrees_north", "standard_name": "latitude", "long_name": "latitude", "axis": "Y"},
        "longitude": {"units": "degrees_east", "standard_name": "longitude", "long_name": "longitude", "axis": "X"},
        "level": {
            "units": "hPa",
            "standard_name": "air_pressure",
            "long_name": "pressure",
            "positive": "down",
            "axis": "Z",
        },
        "member": {"standard_name": "realization", "long_name": "posterior ensemble member", "units": "1"},
        "latitude_coarse": {
            "units": "degrees_north",
            "standard_name": "latitude",
            "bounds": "latitude_coarse_bounds",
            "long_name": f"latitude of the coarse cells (centres of blocks of {factor} x {factor} grid cells)",
        },
        "longitude_coarse": {
            "units": "degrees_east",
            "standard_name": "longitude",
            "bounds": "longitude_coarse_bounds",
            "long_name": f"longitude of the coarse cells (centres of blocks of {factor} x {factor} grid cells)",
        },
        "time_index": {"long_name": "index of this time along the time axis of the ERA5 store", "units": "1"},
        "conditioning": {"long_name": "observations a comparison ensemble was conditioned on"},
    }
    for name, attrs in coord_attrs.items():
        if name in ds.variables:
            ds[name].attrs.update(attrs)
    for axis in ("latitude", "longitude"):
        ds[f"{axis}_coarse_bounds"] = (
            (f"{axis}_coarse", "bounds"),
            _block_bounds(ds[axis].values, int(factor)),
            {"units": ds[axis].attrs["units"], "long_name": f"edges of the coarse cells along {axis}"},
        )
    for v in variables:
        base = _field_attrs(v, attrs_from)
        for suffix, (what, method) in _KINDS.items():
            if v + suffix not in ds.data_vars:
                continue
            attrs = dict(base)
            attrs["long_name"] = f"{base.get('long_name', v)}: {what}"
            if method:
                attrs["cell_methods"] = method
            ds[v + suffix].attrs.update(attrs)
    return ds


def write_samples(out: str | Path, ds, *, sampling: dict, channels, provenance: dict) -> None:
    """Write the dataset ``ds`` of :func:`samples_dataset` with its attributes, atomically."""
    from ..io import atomic_path

    if "time" not in ds.dims or ds.sizes["time"] == 0:
        raise InputError("the samples hold no times: nothing to write (no held-out times were sampled)", out)
    ds.attrs.update(GLOBAL_ATTRS)
    if provenance.get("created"):
        ds.attrs["history"] = f"{provenance['created']}: written by scorebridge sr-sample"
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
    if "time" not in ds.dims or ds.sizes["time"] == 0:
        raise InputError(
            "the samples store holds no times: nothing to evaluate (rerun sr-sample with held-out times, sr.<x>.train.split)",
            path,
        )
    return ds, sampling, channels
