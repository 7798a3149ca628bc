"""The cells zarr contract: write it from an input (`ingest`), read it back (`read_cells`).

Store (``results/data/cells/{dataset}.zarr``)::

    X     (cell, feature) float32     the features
    time  (cell) float64              the snapshot time of each cell (cells sorted by time)
    cell, feature                     string coordinates (cell ids, feature names)
    attrs: times (JSON list), n_cells (JSON list per time), source,
           preprocessing (JSON), provenance (JSON, with the input's sha256),
           true_parameters (JSON, simulated data only), time_labels (JSON {label: time},
           when the labels were not numbers: `time_map`, numbers parsed from labels such
           as "day2", or the order of an ordered category)

h5ad inputs made into principal components also keep the PCA (`pca_components`
(feature, gene), `pca_mean` (gene), coordinate `gene`).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
from pathlib import Path
from typing import Mapping

import numpy as np

from ...errors import InputError
from ...io import atomic_path, open_store
from ...provenance import package_versions, sha256_file
from .options import CellsOptions, cells_options
from .read import read_snapshots
from .snapshots import Snapshots

__all__ = ["write_cells_zarr", "ingest", "read_cells", "load_snapshots"]


def write_cells_zarr(out, snaps: Snapshots, attrs: dict) -> None:
    """Write the cells contract atomically: X (cell, feature) float32, time (cell) float64."""
    import xarray as xr

    data = {"X": (("cell", "feature"), snaps.X.astype(np.float32)), "time": (("cell",), snaps.time.astype(np.float64))}
    coords = {"cell": np.asarray(snaps.cells, dtype=object), "feature": np.asarray(snaps.features, dtype=object)}
    for name, (dims, arr) in snaps.extra_vars.items():
        (coords if name == "gene" else data)[name] = (dims, arr)
    ds = xr.Dataset(data, coords=coords)
    uniq, counts = np.unique(snaps.time, return_counts=True)
    ds.attrs.update(
        {
            "times": json.dumps(uniq.tolist()),
            "n_cells": json.dumps(counts.tolist()),
            "preprocessing": json.dumps(snaps.preprocessing, sort_keys=True),
            **{k: v for k, v in snaps.extra_attrs.items()},
            **attrs,
        }
    )
    chunk = min(len(snaps.time), 65536)
    encoding = {"X": {"chunks": (chunk, snaps.X.shape[1])}, "time": {"chunks": (chunk,)}}
    with atomic_path(out) as tmp:
        ds.to_zarr(tmp, mode="w", consolidated=False, encoding=encoding)


def ingest(spec: CellsOptions | Mapping, path, out) -> Snapshots:
    """Read `path` per the cells entry `spec` (options, or a dict the schema fills) and
    write the zarr contract to `out`."""
    opts = cells_options(spec)
    snaps = read_snapshots(path, opts)
    if snaps.preprocessing == {}:
        snaps.preprocessing = {"features": "as given"}
    provenance = {
        "source": opts.source,
        "input": str(path),
        "sha256": sha256_file(path),
        "spec": dataclasses.asdict(opts),
        "packages": package_versions(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_cells_zarr(
        out, snaps, {"source": str(opts.source), "provenance": json.dumps(provenance, sort_keys=True, default=str)}
    )
    return snaps


def read_cells(path) -> tuple[list[np.ndarray], list[float], dict, list[str] | None]:
    """(snapshots, times, attrs, feature names) of a cells zarr: one float64 array
    (n_k, d) per time, the times ascending, the store's attributes, and the names of
    the features (None when the store has no `feature` coordinate).

    Raises InputError naming the store when it is missing or unreadable, lacks X or
    time, has the wrong shapes, or holds NaN times or non-finite features.
    """
    path = Path(path)
    ds = open_store(path, "cells")
    for var in ("X", "time"):
        if var not in ds:
            raise InputError(f"missing variable '{var}' (the cells contract: X (cell, feature), time (cell))", path)
    X = np.asarray(ds["X"].values, dtype=np.float64)
    t = np.asarray(ds["time"].values, dtype=np.float64)
    if X.ndim != 2 or t.shape != (X.shape[0],):
        raise InputError(f"X must be (cell, feature) and time (cell), got {X.shape} and {t.shape}", path)
    if np.isnan(t).any():
        raise InputError(f"{int(np.isnan(t).sum())} cells have a missing (NaN) time label", path)
    bad = ~np.isfinite(X).all(1)
    if bad.any():
        raise InputError(
            f"{int(bad.sum())} cells have NaN or infinite features (first: cell index {int(np.argmax(bad))})", path
        )
    times = np.unique(t)
    feats = [str(f) for f in ds["feature"].values] if "feature" in ds.coords else None
    return [X[t == v] for v in times], [float(v) for v in times], dict(ds.attrs), feats


def load_snapshots(path) -> tuple[list[np.ndarray], np.ndarray, dict]:
    """`read_cells` without the feature names, the times as an array (K,)."""
    snaps, times, attrs, _ = read_cells(path)
    return snaps, np.asarray(times, dtype=np.float64), attrs
