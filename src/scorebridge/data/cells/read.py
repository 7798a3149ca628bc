"""Snapshot time courses (single cells, simulated systems) read as flat snapshots.

Inputs (config entry of ``cells:``, see config/README.md "## cells"):

- AnnData ``.h5ad``, read lazily (`h5ad`): time from the ``obs`` column ``time_key``;
  features from the ``obsm`` embedding ``obsm_key`` (e.g. ``X_pca``), or made from the
  expression matrix (``X`` or ``layer``, read in row blocks, never whole) by the configured
  preprocessing (`preprocess`, scanpy's steps): normalise total counts, log1p, highly
  variable genes (flavor 'seurat': dispersion z-score within mean bins, Satija et al.
  2015), PCA.
- ``.npy``: one array (time, cells, features).
- ``.npz``: ragged snapshots ``t0 .. t{K-1}`` (each (n_k, features)), or one 3-D array,
  or a flat ``X`` (cells, features) with ``time`` (cells); optional ``times`` (K,),
  ``features`` (names) and ``true_parameters`` (JSON string, written by the simulators).
- CSV: a time column ``time_key`` (e.g. ``samples``) and feature columns (``features``,
  or every other numeric column when none is doubtful: `columns`).

Array inputs with explicit times must list them strictly increasing; CSV and h5ad time
labels are sorted by value (numbers as they are; other labels through `time_map`, the
number each holds, or the order of an ordered category). Errors name the file, the
row/cell/key and what was expected; a snapshot with fewer than `min_cells` cells is refused.
`store.ingest` writes the result as the zarr contract.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Mapping

import numpy as np

from ...errors import ConfigError, InputError
from .columns import check_features, csv_lines, pick_features
from .columns import show as _show
from .h5ad import open_h5ad
from .options import CellsOptions, cells_options
from .preprocess import preprocess_expression
from .snapshots import Snapshots, _check_finite, _from_labels, _from_snapshot_list

__all__ = [
    "read_snapshots",
    "read_array",
    "read_csv",
    "read_h5ad",
]

log = logging.getLogger(__name__)

_META_KEYS = ("times", "features", "true_parameters", "time")


def read_array(path, spec: CellsOptions) -> Snapshots:
    """Read .npy (time, cells, features) or .npz (ragged t0..tK, one 3-D array, or flat X + time)."""
    path = Path(path)
    cfg_times = spec.times
    try:
        loaded = np.load(path, allow_pickle=False)
    except ValueError as err:  # object arrays need pickle, which we never load from user files
        raise InputError(
            f"cannot read as a numeric array ({err}); store ragged snapshots as an .npz with keys t0, t1, ...", path
        ) from None
    except (OSError, EOFError) as err:
        raise InputError(f"cannot read the file: {err}", path) from None
    if isinstance(loaded, np.ndarray):
        if loaded.ndim != 3:
            raise InputError(
                f"array of shape {loaded.shape}; expected 3-D (time, cells, features), or an .npz with ragged snapshots t0, t1, ...",
                path,
            )
        snaps = [(f"t{k}", loaded[k]) for k in range(loaded.shape[0])]
        return _from_snapshot_list(
            snaps, cfg_times, path, "times" if cfg_times is not None else "times (default 0, 1, ...)"
        )
    with loaded as z:
        keys = list(z.keys())
        meta = {}
        if "true_parameters" in keys:
            meta["true_parameters"] = str(z["true_parameters"])
        features = z["features"] if "features" in keys else None
        file_times = z["times"] if "times" in keys else None
        ragged = sorted((k for k in keys if re.fullmatch(r"t\d+", k)), key=lambda k: int(k[1:]))
        times, times_key = (
            (cfg_times, "config key 'times'") if cfg_times is not None else (file_times, "npz key 'times'")
        )
        if ragged:
            ks = [int(k[1:]) for k in ragged]
            if ks != list(range(len(ks))):
                raise InputError(f"snapshot keys must run t0, t1, ... without gaps; found {_show(ragged, 20)}", path)
            out = _from_snapshot_list([(k, z[k]) for k in ragged], times, path, times_key, features)
        elif "X" in keys and "time" in keys:
            X, t = np.asarray(z["X"], dtype=np.float64), np.asarray(z["time"], dtype=np.float64)
            if X.ndim != 2 or t.shape != (X.shape[0],):
                raise InputError(
                    f"flat npz needs X (cells, features) and time (cells,); got X {X.shape}, time {t.shape}", path
                )
            out = _from_labels(X, t, [f"cell{i}" for i in range(X.shape[0])], path, "cell", "npz key 'time'")
            out.features = (
                [str(f) for f in features] if features is not None else [f"x{i + 1}" for i in range(X.shape[1])]
            )
        else:
            arrays = [k for k in keys if k not in _META_KEYS]
            if len(arrays) != 1:
                raise InputError(
                    f"cannot tell which arrays are the snapshots among keys {keys}; use t0, t1, ... (ragged) or one 3-D array",
                    path,
                )
            a = z[arrays[0]]
            if a.ndim != 3:
                raise InputError(f"npz key '{arrays[0]}' has shape {a.shape}; expected (time, cells, features)", path)
            out = _from_snapshot_list([(f"t{k}", a[k]) for k in range(a.shape[0])], times, path, times_key, features)
    out.extra_attrs.update(meta)
    return out


def read_csv(path, spec: CellsOptions) -> Snapshots:
    """CSV with a time column `time_key` and feature columns (`features`, else the numeric
    columns besides the time when none of them is doubtful: see `columns`)."""
    import pandas as pd

    path = Path(path)
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise InputError(f"cannot parse as CSV: {err}", path) from None
    key = spec.time_key
    if key not in df.columns:
        raise ConfigError("time_key", f"column '{key}' not in {path}; columns: {_show(list(df.columns), 30)}")
    lines = csv_lines(path, len(df))  # the file line of each row (header = line 1)
    features = spec.features
    if features is None:
        features = pick_features(df, key, path, lines)
    else:
        unknown = [c for c in features if c not in df.columns]
        if unknown:
            raise ConfigError("features", f"column(s) {unknown} not in {path}; columns: {_show(list(df.columns), 30)}")
    check_features(df, list(features), path, lines)
    log.info("%s: features (%d): %s", path, len(features), _show(features, 50))
    X = df[list(features)].to_numpy(dtype=np.float64)
    out = _from_labels(X, df[key], [f"line {i}" for i in lines], path, "row", f"column '{key}'", spec.time_map)
    out.features = [str(c) for c in features]
    return out


def read_h5ad(path, spec: CellsOptions) -> Snapshots:
    """AnnData: time from obs[`time_key`]; features from obsm[`obsm_key`] or the preprocessed
    expression, read lazily (`h5ad`: the matrix in row blocks, never whole)."""
    path = Path(path)
    with open_h5ad(path) as h:
        key = spec.time_key
        obs = h.obs
        if key not in obs.columns:
            raise ConfigError(
                "time_key", f"obs column '{key}' not in {path}; obs columns: {_show(list(obs.columns), 30)}"
            )
        cells = [str(c) for c in obs.index]
        obsm_key = spec.obsm_key
        extra_vars: dict = {}
        if obsm_key:
            if obsm_key not in h.obsm_keys():
                raise ConfigError(
                    "obsm_key", f"'{obsm_key}' not in the obsm of {path}; obsm keys: {_show(h.obsm_keys(), 30)}"
                )
            X = h.obsm(obsm_key)
            if X.ndim != 2:
                raise InputError(f"obsm['{obsm_key}'] has shape {X.shape}; expected (cells, features)", path)
            n = spec.n_components
            if n is not None:
                if n > X.shape[1]:
                    raise ConfigError("n_components", f"{n} components but obsm['{obsm_key}'] has {X.shape[1]}")
                X = X[:, :n]
            names = [f"{obsm_key}_{i + 1}" for i in range(X.shape[1])]
            record = {"features": f"obsm['{obsm_key}']", "n_components": X.shape[1]}
            _check_finite(X, cells, path)
        else:
            layer = spec.layer
            if layer is not None and layer not in h.layer_keys():
                raise ConfigError(
                    "layer", f"'{layer}' not in the layers of {path}; layers: {_show(h.layer_keys(), 30)}"
                )
            M = h.matrix(layer)
            genes = h.var_names
            if M.shape[0] != len(cells) or M.shape[1] != len(genes):
                raise InputError(
                    f"{M.name} has shape {M.shape} but obs has {len(cells)} cells and var {len(genes)} genes", path
                )
            if spec.features is not None:
                pos = {g: i for i, g in enumerate(genes)}
                unknown = [g for g in spec.features if g not in pos]
                if unknown:
                    raise ConfigError("features", f"gene(s) {_show(unknown)} not in the var names of {path}")
                idx = [pos[g] for g in spec.features]
                M, genes = M.select(idx), [genes[i] for i in idx]
            log.info(
                "%s: %s, %d cells x %d genes (%s), read in blocks of %g MB",
                path,
                M.name,
                M.shape[0],
                M.shape[1],
                "sparse" if M.sparse else "dense",
                spec.preprocess.block_mb,
            )
            X, names, record, extra_vars = preprocess_expression(M, genes, spec.preprocess, path, cells)
            record = {"features": f"layers['{layer}']" if layer else "X", **record}
        true_parameters = h.uns_text("true_parameters")
        out = _from_labels(X, obs[key], cells, path, "cell", f"obs column '{key}'", spec.time_map)
    out.features = names
    out.preprocessing = record
    out.extra_vars = extra_vars
    if true_parameters is not None:
        out.extra_attrs["true_parameters"] = true_parameters
    return out


_READERS = {"h5ad": read_h5ad, "npy": read_array, "npz": read_array, "csv": read_csv, "simulate": read_array}


def read_snapshots(path, spec: CellsOptions | Mapping) -> Snapshots:
    """Read `path` by the entry's `source` (`spec`: options, or a dict the schema fills)
    and check it has at least two time points."""
    path = Path(path)
    spec = cells_options(spec)
    source = spec.source
    if source not in _READERS:
        raise ConfigError("source", f"unknown source '{source}'; known: {sorted(_READERS)}")
    if not path.exists():
        raise InputError("no such file", path)
    snaps = _READERS[source](path, spec)
    if snaps.X.shape[0] == 0:
        raise InputError("no cells", path)
    if snaps.X.shape[1] == 0:
        raise InputError("no features", path)
    uniq, counts = np.unique(snaps.time, return_counts=True)
    if uniq.size < 2:
        raise InputError(f"only one time point ({uniq.tolist()}); a time course needs at least two snapshots", path)
    small = counts < spec.min_cells
    if small.any():
        labels = {v: k for k, v in json.loads(snaps.extra_attrs.get("time_labels", "{}")).items()}
        what = [
            f"time {t:g}" + (f" (label {labels[t]!r})" if t in labels else "") + f" has {n} cell{'s' * (n != 1)}"
            for t, n in zip(uniq[small].tolist(), counts[small].tolist())
        ]
        raise InputError(
            f"{_show(what, 10)}; every snapshot needs at least min_cells = {spec.min_cells} cells "
            "(cells.<name>.min_cells: lower it only if so few cells can stand for a time point)",
            path,
        )
    return snaps
