"""What bridge-evaluate hands to the people who use the results.

- `predictions.zarr` (`write_predictions`): a flat table over `particle` with `X (particle,
  feature)` and the coordinates `method`, `time`, `split` (the observed held-out cells as
  method 'observed'), read with xarray.
- `predictions.h5ad` (`write_anndata`): the same particles, the observed cells and sampled
  trajectories of the bridge fitted on every snapshot, as an AnnData file that anndata or
  scanpy read without scorebridge:

  - `X` (cells, features): the features (`var_names`: the input's feature names);
  - `obs`: `method` (a method's name, `observed`, or `trajectory`), `time`, `split` (the
    split's index; -1 for trajectories), `kind` (`prediction`, `observed`, `trajectory`),
    `cell` (the input cell's name for observed cells, else empty), `trajectory` (the path's
    index, -1 otherwise); `obs_names` unique (`observed:<cell>`, `<method>:<split>:<time>:<i>`,
    `trajectory:<path>:<step>`);
  - `obsm["X_pca"]`: the first two principal components of every observed cell pooled (the
    figures' axes), `uns["pca"]` its mean and components;
  - `uns["bridge"]`: the fitted reference (`class`, parameters, σ), the selection (how the
    reference class, σ scale and prediction mode were chosen, on every snapshot and per
    split), the splits, the metrics of the evaluation, and the bootstrap comparison, each as
    plain strings, numbers and lists (JSON strings where nested).
"""

from __future__ import annotations

import json

import numpy as np

from ..io import atomic_path

__all__ = ["write_predictions", "write_anndata", "observed_rows"]


def observed_rows(predictions: list, snapshots: list[np.ndarray], times) -> list[tuple[float, int, int]]:
    """(time, split, snapshot index) of every held-out snapshot, in the order first predicted."""
    out, seen = [], set()
    tl = [float(x) for x in times]
    for _, t, split, _ in predictions:
        if (t, split) not in seen:
            seen.add((t, split))
            out.append((t, split, tl.index(float(t))))
    return out


def write_predictions(
    path,
    ev,
    snapshots: list[np.ndarray],
    times,
    features: list[str] | None = None,
    cell_names: list[list[str]] | None = None,
) -> None:
    """predictions.zarr: a flat table over `particle` with `X (particle, feature)` and the
    coordinates `method`, `time`, `split` (observed held-out cells included as method 'observed')
    and `cell` (the input's cell name of an observed cell, `cell_names[k]` for snapshot k;
    empty for predicted particles)."""
    import xarray as xr

    rows, meth, tim, spl, cells = [], [], [], [], []
    obs = {(t, s): k for t, s, k in observed_rows(ev.predictions, snapshots, times)}
    seen = set()
    for method, t, split, pred in ev.predictions:
        rows.append(pred)
        meth += [method] * len(pred)
        tim += [t] * len(pred)
        spl += [split] * len(pred)
        cells += [""] * len(pred)
        if (t, split) not in seen:
            seen.add((t, split))
            k = obs[(t, split)]
            rows.append(snapshots[k])
            meth += ["observed"] * len(snapshots[k])
            tim += [t] * len(snapshots[k])
            spl += [split] * len(snapshots[k])
            cells += (
                [str(c) for c in cell_names[k]]
                if cell_names is not None
                else [f"cell{k}_{i}" for i in range(len(snapshots[k]))]
            )
    X = np.concatenate(rows).astype(np.float32)
    d = X.shape[1]
    feats = list(features) if features is not None and len(features) == d else [f"f{i}" for i in range(d)]
    ds = xr.Dataset(
        {"X": (("particle", "feature"), X)},
        coords={
            "method": ("particle", np.asarray(meth, dtype=str)),
            "time": ("particle", np.asarray(tim, dtype=np.float64)),
            "split": ("particle", np.asarray(spl, dtype=np.int64)),
            "cell": ("particle", np.asarray(cells, dtype=str)),
            "feature": np.asarray(feats, dtype=str),
        },
        attrs={
            "description": "predicted particles per method and held-out time; method 'observed' holds the held-out cells",
            "splits": json.dumps(ev.splits),
        },
    )
    with atomic_path(path) as tmp:
        ds.to_zarr(tmp, mode="w", consolidated=False)


def _plain(value):
    """A value anndata writes natively: numbers, strings, lists of them; JSON otherwise."""
    if isinstance(value, (bool, int, float, str)) or value is None:
        return "null" if value is None else value
    if (
        isinstance(value, (list, tuple))
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        and value
    ):
        return np.asarray(value, dtype=np.float64)
    return json.dumps(value, default=str)


def write_anndata(
    path,
    ev,
    snapshots: list[np.ndarray],
    times,
    features: list[str] | None,
    cell_names: list[list[str]] | None,
    trajectories: tuple[np.ndarray, np.ndarray] | None,
    uns: dict,
) -> None:
    """predictions.h5ad (see the module doc). `cell_names[k]`: the names of snapshot k's
    cells (None: `cell<k>_<i>`); `trajectories`: (times (T,), paths (n, T, d)) or None;
    `uns`: entries of `uns["bridge"]` (made plain: nested values as JSON strings)."""
    import anndata
    import pandas as pd

    from .figures import pca_basis

    d = snapshots[0].shape[1]
    feats = [str(f) for f in features] if features is not None and len(features) == d else [f"f{i}" for i in range(d)]
    names = (
        cell_names
        if cell_names is not None
        else [[f"cell{k}_{i}" for i in range(len(x))] for k, x in enumerate(snapshots)]
    )
    blocks, cols = [], {"method": [], "time": [], "split": [], "kind": [], "cell": [], "trajectory": []}
    obs_names: list[str] = []

    def add(X, method, t, split, kind, cells=None, traj=None, tag=""):
        n = len(X)
        blocks.append(np.asarray(X, dtype=np.float32))
        cols["method"] += [method] * n
        cols["time"] += list(np.broadcast_to(np.asarray(t, dtype=np.float64), (n,)))
        cols["split"] += [int(split)] * n
        cols["kind"] += [kind] * n
        cols["cell"] += list(cells) if cells is not None else [""] * n
        cols["trajectory"] += list(traj) if traj is not None else [-1] * n
        if cells is None:
            obs_names.extend(f"{tag}{i}" for i in range(n))
        else:
            obs_names.extend(f"observed:{split}:{c}" for c in cells)

    for t, split, k in observed_rows(ev.predictions, snapshots, times):
        add(snapshots[k], "observed", t, split, "observed", cells=[str(c) for c in names[k]])
    for method, t, split, pred in ev.predictions:
        add(pred, method, t, split, "prediction", tag=f"{method}:{split}:{t:g}:")
    if trajectories is not None:
        ttimes, paths = trajectories
        n, T, _ = paths.shape
        add(
            paths.reshape(n * T, d),
            "trajectory",
            np.tile(ttimes, n),
            -1,
            "trajectory",
            traj=np.repeat(np.arange(n), T),
            tag="trajectory:",
        )
        obs_names[-n * T :] = [f"trajectory:{i}:{s}" for i in range(n) for s in range(T)]
    X = np.concatenate(blocks)
    obs = pd.DataFrame(cols, index=pd.Index(obs_names, dtype=str))
    for c in ("method", "kind"):
        obs[c] = obs[c].astype("category")
    mu, comp = pca_basis(snapshots)
    ad = anndata.AnnData(X=X, obs=obs, var=pd.DataFrame(index=pd.Index(feats, dtype=str)))
    ad.obsm["X_pca"] = ((X - mu) @ comp).astype(np.float32)
    ad.uns["pca"] = {"mean": np.asarray(mu, dtype=np.float64), "components": np.asarray(comp.T, dtype=np.float64)}
    ad.uns["bridge"] = {k: _plain(v) for k, v in uns.items()}
    with atomic_path(path) as tmp:
        ad.write_h5ad(tmp)
