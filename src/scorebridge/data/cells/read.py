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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ...errors import ConfigError, InputError
from .columns import check_features, csv_lines, pick_features
from .columns import show as _show
from .h5ad import open_h5ad
from .options import CellsOptions, cells_options
from .preprocess import preprocess_expression

__all__ = [
    "Snapshots",
    "read_snapshots",
    "read_array",
    "read_csv",
    "read_h5ad",
    "parse_time_labels",
]

log = logging.getLogger(__name__)

_META_KEYS = ("times", "features", "true_parameters", "time")


@dataclass
class Snapshots:
    """Cells of a time course, flat: X (n, d), time (n,), with names and metadata."""

    X: np.ndarray
    time: np.ndarray
    features: list[str]
    cells: list[str]
    preprocessing: dict = field(default_factory=dict)
    extra_attrs: dict = field(default_factory=dict)
    extra_vars: dict = field(default_factory=dict)  # name -> (dims, array), e.g. PCA loadings


def _check_finite(X: np.ndarray, names: list[str], path, what: str = "cell") -> None:
    bad = ~np.all(np.isfinite(X), axis=1)
    if bad.any():
        idx = np.flatnonzero(bad)
        raise InputError(
            f"NaN or infinite feature values in {len(idx)} {what}(s): {_show([names[i] for i in idx])}", path
        )


def _check_times(times: np.ndarray, path, key: str) -> None:
    times = np.asarray(times, dtype=float)
    if not np.all(np.isfinite(times)):
        raise InputError(f"`{key}` has missing or non-finite values: {times.tolist()}", path)
    if np.any(np.diff(times) <= 0):
        i = int(np.flatnonzero(np.diff(times) <= 0)[0])
        raise InputError(
            f"`{key}` must be strictly increasing; got {times[i]} then {times[i + 1]} at positions {i}, {i + 1}: {times.tolist()}",
            path,
        )


def _from_snapshot_list(snaps: list[tuple[str, np.ndarray]], times, path, times_key: str, features=None) -> Snapshots:
    """Stack named per-time arrays (name, (n_k, d)) into flat Snapshots after checks."""
    if times is None:
        times = np.arange(len(snaps), dtype=float)
    times = np.asarray(times, dtype=float).ravel()
    if times.size != len(snaps):
        raise InputError(f"`{times_key}` lists {times.size} times but the input has {len(snaps)} snapshots", path)
    _check_times(times, path, times_key)
    dims = {}
    for name, a in snaps:
        if a.ndim != 2:
            raise InputError(f"snapshot '{name}' has shape {a.shape}; expected (cells, features)", path)
        if a.shape[0] == 0:
            raise InputError(f"snapshot '{name}' has no cells", path)
        if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
            raise InputError(f"snapshot '{name}' has dtype {a.dtype}; expected real numbers", path)
        dims[name] = a.shape[1]
    if len(set(dims.values())) > 1:
        raise InputError(
            f"snapshots differ in their number of features: {_show([f'{k}: {v}' for k, v in dims.items()], 20)}", path
        )
    d = next(iter(dims.values()))
    for name, a in snaps:
        bad = np.flatnonzero(~np.all(np.isfinite(a), axis=1))
        if bad.size:
            raise InputError(
                f"NaN or infinite feature values in snapshot '{name}', cell(s) {_show(bad.tolist())}", path
            )
    X = np.concatenate([a for _, a in snaps]).astype(np.float64)
    time = np.repeat(times, [a.shape[0] for _, a in snaps])
    cells = [f"{name}_{i}" for name, a in snaps for i in range(a.shape[0])]
    if features is None:
        features = [f"x{i + 1}" for i in range(d)]
    features = [str(f) for f in np.asarray(features).ravel()]
    if len(features) != d:
        raise InputError(f"{len(features)} feature names for {d} features", path)
    return Snapshots(X, time, features, cells)


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


_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def parse_time_labels(labels: list[str]) -> dict[str, float] | None:
    """{label: time} when every label holds exactly one number and the same text around it
    ("day0", "day2.5" -> 0, 2.5; "D3", "E7.5", "24h"); None otherwise (e.g. "12h" beside
    "1d": different units, so the numbers alone would order them wrongly)."""
    out, rest = {}, set()
    for lab in labels:
        found = _NUMBER.findall(str(lab))
        if len(found) != 1:
            return None
        out[str(lab)] = float(found[0])
        rest.add(_NUMBER.sub("#", str(lab)).strip().lower())
    if len(rest) != 1 or len(set(out.values())) != len(out):
        return None
    return out


def _map_labels(strings, time_map: dict | None, key: str, path, unique: list[str]) -> tuple[np.ndarray, dict] | None:
    """Times for non-numeric labels: the config's `time_map`, else numbers parsed from the
    labels (`parse_time_labels`); None when neither applies."""
    if time_map:
        unmapped = [u for u in unique if u not in time_map]
        if unmapped:
            raise ConfigError(
                "time_map",
                f"time labels ({key}) {_show(unmapped)} of {path} are not in time_map (its labels: {_show(list(time_map))})",
            )
        mapping = {u: float(time_map[u]) for u in unique}
    else:
        mapping = parse_time_labels(unique)
        if mapping is None:
            return None
        log.info(
            "time labels (%s) read as numbers: %s",
            key,
            ", ".join(f"{k} -> {v:g}" for k, v in sorted(mapping.items(), key=lambda kv: kv[1])),
        )
    return np.asarray([mapping[v] for v in strings], dtype=float), {"time_labels": json.dumps(mapping)}


def _from_labels(
    X: np.ndarray, labels, cell_names: list[str], path, what: str, key: str, time_map: dict | None = None
) -> Snapshots:
    """Flat cells with per-cell time labels: convert labels to float (numbers as they are;
    other labels through `time_map` or the number each holds), check, sort by time."""
    import pandas as pd

    labels = pd.Series(labels).reset_index(drop=True)
    extra: dict[str, Any] = {}
    missing = labels.isna().to_numpy()
    if missing.any():
        idx = np.flatnonzero(missing)
        raise InputError(
            f"missing time label ({key}) in {len(idx)} {what}(s): {_show([cell_names[i] for i in idx])}", path
        )
    hint = "; give their times in the dataset's config as time_map: {label: time}"
    if isinstance(labels.dtype, pd.CategoricalDtype):
        cats = labels.cat.categories
        num = pd.to_numeric(pd.Series(cats), errors="coerce")
        strings = labels.astype(str).to_numpy()
        mapped = (
            None
            if (num.notna().all() and not time_map)
            else _map_labels(strings, time_map, key, path, [str(c) for c in cats])
        )
        if mapped is not None:
            time, extra = mapped
        elif num.notna().all():
            time = num.to_numpy(dtype=float)[labels.cat.codes.to_numpy()]
        elif labels.cat.ordered:
            time = labels.cat.codes.to_numpy().astype(float)
            extra["time_labels"] = json.dumps({str(c): float(i) for i, c in enumerate(cats)})
        else:
            raise InputError(
                f"time labels ({key}) are categories that are not numbers: {_show(list(cats))}; make the category ordered or the labels numeric{hint}",
                path,
            )
    else:
        num = pd.to_numeric(labels, errors="coerce")
        bad = num.isna().to_numpy()
        strings = labels.astype(str).to_numpy()
        mapped = (
            _map_labels(strings, time_map, key, path, sorted(set(strings.tolist())))
            if (bad.any() or time_map)
            else None
        )
        if mapped is not None:
            time, extra = mapped
        elif bad.any():
            idx = np.flatnonzero(bad)
            raise InputError(
                f"non-numeric time label ({key}) in {len(idx)} {what}(s): {_show([f'{cell_names[i]} ({labels[i]!r})' for i in idx])}{hint}",
                path,
            )
        else:
            time = num.to_numpy(dtype=float)
    if not np.all(np.isfinite(time)):
        idx = np.flatnonzero(~np.isfinite(time))
        raise InputError(f"non-finite time label ({key}) in {what}(s): {_show([cell_names[i] for i in idx])}", path)
    _check_finite(X, cell_names, path, what)
    order = np.argsort(time, kind="stable")
    out = Snapshots(X[order], time[order], [], [cell_names[i] for i in order])
    out.extra_attrs.update(extra)
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
