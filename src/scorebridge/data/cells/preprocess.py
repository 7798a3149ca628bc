"""Expression matrix -> features: normalise total counts, log1p, highly variable genes,
PCA (each optional, in this order), as the `preprocess` block of a cells entry says.

The matrix is read in row blocks of about `block_mb` MB (`h5ad.RowBlocks`: an h5ad
element on disk, or an array) and never held whole, dense or sparse:

1. one pass checks the values (finite; not negative when normalising or taking logs) and
   sums each gene's mean and variance of the normalised counts (blocks of cells: a cell's
   normalisation needs only its own row);
2. highly variable genes from those sums (scanpy's ``flavor='seurat'``, below);
3. PCA of the log values of the kept genes (`pca.block_pca`: covariance or randomized,
   one pass per product), then one pass for the scores.

Each step is scanpy's (1.11) on the same data: ``normalize_total(target_sum)``,
``log1p``, ``highly_variable_genes(flavor='seurat', n_top_genes, n_bins)`` on the log
data, ``pca(n_comps, zero_center=True)`` on the kept genes (tests/test_cells_scale.py
checks the parity). Where it differs:

- a cell with no counts stays all zero (as scanpy), and is counted in the record;
- highly variable genes: when fewer genes than `n_top_genes` have a dispersion (the rest
  are constant or never expressed), scanpy keeps fewer; here constant expressed genes
  fill the count (in gene order) and genes never expressed are never kept;
- the PCA is exact (covariance) up to 4,096 kept genes: scanpy's default ARPACK solver
  converges to the same components; signs follow scikit-learn (the largest loading of each
  component positive), which scanpy's ARPACK path does not fix, so compare up to sign.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import ConfigError, InputError
from .columns import show as _show
from .h5ad import RowBlocks
from .options import PreprocessOptions
from .pca import MeanVar, block_pca

__all__ = ["highly_variable_genes", "hvg_from_stats", "preprocess_expression"]


def hvg_from_stats(mean: np.ndarray, var: np.ndarray, n_top: int, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """(kept gene indices sorted, normalised dispersions) from each gene's mean and variance
    (ddof=1) of the normalised counts: scanpy's ``flavor='seurat'`` (Satija et al. 2015).

    dispersion = log(var / mean) (NaN when var = 0); z-scored within `n_bins` equal-width
    bins of log1p(mean) (pandas.cut, as scanpy); a bin with one dispersion gives z = 1; the
    genes with z at least the `n_top`-th highest are kept (ties included). When fewer genes
    have a z-score, constant expressed genes fill up to `n_top`; never-expressed genes never.
    """
    import pandas as pd

    mean = np.asarray(mean, dtype=np.float64).copy()
    var = np.asarray(var, dtype=np.float64)
    expressed = mean > 0
    mean[mean == 0] = 1e-12
    with np.errstate(divide="ignore", invalid="ignore"):
        disp = var / mean
        disp[disp == 0] = np.nan
        disp = np.log(disp)
    level = np.log1p(mean)
    bins = pd.cut(pd.Series(level), bins=n_bins).cat.codes.to_numpy()
    ok = ~np.isnan(disp)
    nb = max(int(bins.max()) + 1, 1)
    count = np.bincount(bins[ok], minlength=nb).astype(np.float64)
    total = np.bincount(bins[ok], weights=disp[ok], minlength=nb)
    with np.errstate(divide="ignore", invalid="ignore"):
        avg = total / count
        ss = np.bincount(bins[ok], weights=(disp[ok] - avg[bins[ok]]) ** 2, minlength=nb)
        dev = np.sqrt(ss / (count - 1))
        one = count == 1  # scanpy: a lone gene's normalised dispersion is 1
        dev[one], avg[one] = avg[one], 0.0
        dev[count == 0] = np.nan
        z = (disp - avg[bins]) / dev[bins]
    finite = z[~np.isnan(z)]
    n_top = min(int(n_top), int(expressed.sum()))
    if n_top <= finite.size:
        if n_top == 0:
            return np.zeros(0, dtype=np.int64), z
        cut = np.sort(finite)[::-1][n_top - 1]
        return np.flatnonzero(np.nan_to_num(z, nan=-np.inf) >= cut), z
    keep = np.flatnonzero(~np.isnan(z))
    fill = np.flatnonzero(expressed & np.isnan(z))[: n_top - keep.size]
    return np.sort(np.concatenate([keep, fill])), z


def highly_variable_genes(X, n_top: int, n_bins: int, log_input: bool = True) -> np.ndarray:
    """Indices of the `n_top` most variable genes of X (cells, genes), sorted (`hvg_from_stats`
    on the normalised counts: ``expm1(X)`` when X is log1p-transformed). X dense or sparse."""
    if log_input:
        if hasattr(X, "tocsr"):
            X = X.tocsr(copy=True)
            X.data = np.expm1(X.data)
        else:
            X = np.expm1(X)
    acc = MeanVar(X.shape[1])
    acc.update(X.astype(np.float64))
    return hvg_from_stats(acc.mean, acc.var, n_top, n_bins)[0]


class _Steps:
    """normalise total -> log1p on one block of rows (each row on its own)."""

    def __init__(self, cfg: PreprocessOptions):
        self.cfg = cfg

    def normalise(self, R):
        import scipy.sparse as sp

        if not self.cfg.normalize_total:
            return R
        totals = np.asarray(R.sum(axis=1)).ravel()
        scale = np.where(totals > 0, self.cfg.target_sum / np.where(totals > 0, totals, 1.0), 0.0)
        return sp.diags(scale) @ R if sp.issparse(R) else R * scale[:, None]

    def log(self, N):
        if not self.cfg.log1p:
            return N
        if hasattr(N, "tocsr"):
            N = N.tocsr(copy=True)
            N.data = np.log1p(N.data)
            return N
        return np.log1p(N)


def _bad_rows(R) -> tuple[np.ndarray, bool]:
    """(rows holding NaN/inf, any negative value) of one block."""
    if hasattr(R, "tocsr"):
        rows = np.repeat(np.arange(R.shape[0]), np.diff(R.indptr))
        return np.unique(rows[~np.isfinite(R.data)]), bool((R.data < 0).any())
    return np.flatnonzero(~np.all(np.isfinite(R), axis=1)), bool((R < 0).any())


def preprocess_expression(
    M, genes: list[str], cfg: PreprocessOptions, path, cells: list[str] | None = None
) -> tuple[np.ndarray, list[str], dict, dict]:
    """normalise total -> log1p -> HVG -> PCA (each optional) of M (cells, genes): an
    array (dense or sparse) or `RowBlocks`; returns (features, names, record, extra vars).
    Errors name the file and, for bad values, the cells (`cells`, else row numbers)."""
    src = M if isinstance(M, RowBlocks) else RowBlocks(M)
    n, g = src.shape
    max_bytes = float(cfg.block_mb) * 2**20
    steps = _Steps(cfg)
    need_hvg = cfg.n_top_genes is not None and cfg.n_top_genes < g
    acc = MeanVar(g) if need_hvg else None
    bad: list[np.ndarray] = []
    negative, empty = False, 0
    for a, _, R in src.blocks(max_bytes):
        rows, neg = _bad_rows(R)
        if rows.size:
            bad.append(rows + a)
        negative |= neg
        if bad:
            continue
        empty += int((np.asarray(R.sum(axis=1)).ravel() <= 0).sum())
        if acc is not None:
            acc.update(steps.normalise(R))
    if bad:
        idx = np.concatenate(bad)
        names = [cells[i] for i in idx] if cells is not None else [f"row {i}" for i in idx]
        raise InputError(f"NaN or infinite expression values in {idx.size} cell(s): {_show(names)}", path)
    if (cfg.normalize_total or cfg.log1p) and negative:
        raise InputError(
            "the expression matrix has negative values; normalise/log1p expect counts (set preprocess.normalize_total/log1p false, or use obsm_key)",
            path,
        )
    record: dict[str, Any] = {"steps": []}
    extra: dict[str, Any] = {}
    if cfg.normalize_total:
        record["steps"].append({"normalize_total": {"target_sum": cfg.target_sum, "empty_cells": empty}})
    if cfg.log1p:
        record["steps"].append({"log1p": True})
    keep = np.arange(g)
    if acc is not None:
        keep = hvg_from_stats(acc.mean, acc.var, cfg.n_top_genes, cfg.hvg_bins)[0]
        genes = [genes[i] for i in keep]
        record["steps"].append(
            {
                "highly_variable_genes": {
                    "flavor": "seurat",
                    "n_top_genes": len(keep),
                    "n_bins": cfg.hvg_bins,
                    "genes": genes,
                }
            }
        )
    cols = keep if acc is not None else None

    def blocks():
        for a, b, R in src.blocks(max_bytes, dense_cols=len(keep)):
            Y = steps.log(steps.normalise(R))
            yield a, b, (Y[:, cols] if cols is not None else Y)

    names = list(genes)
    if cfg.n_pcs is not None:
        k = int(cfg.n_pcs)
        if k > min(n, len(keep)):
            raise ConfigError("preprocess.n_pcs", f"{k} components but the data has {n} cells x {len(keep)} genes")
        pca = block_pca(blocks, n, len(keep), k, cfg.pca_solver, cfg.seed)
        X = pca.transform_blocks(blocks, n)
        names = [f"PC{i + 1}" for i in range(k)]
        record["steps"].append(
            {
                "pca": {
                    "n_pcs": k,
                    "solver": pca.solver,
                    "explained_variance_ratio": pca.explained_variance_ratio_.tolist(),
                    "seed": cfg.seed,
                }
            }
        )
        extra["pca_components"] = (("feature", "gene"), pca.components_.astype(np.float32))
        extra["pca_mean"] = (("gene",), pca.mean_.astype(np.float32))
        extra["gene"] = (("gene",), np.asarray(genes, dtype=object))
    else:  # the kept genes are the features: (cells, genes) dense, as asked
        X = np.empty((n, len(keep)))
        for a, b, Y in blocks():
            X[a:b] = Y.toarray() if hasattr(Y, "toarray") else Y
    if cfg.standardize:
        sd = X.std(axis=0)
        X = (X - X.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
        record["steps"].append({"standardize": True})
    return X, names, record, extra
