"""Expression matrix -> features: normalise total counts, log1p, highly variable genes,
PCA (each optional, in this order), as the `preprocess` block of a cells entry says."""

from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import ConfigError, InputError
from .options import PreprocessOptions

__all__ = ["highly_variable_genes", "preprocess_expression"]


def highly_variable_genes(X, n_top: int, n_bins: int, log_input: bool = True) -> np.ndarray:
    """Indices of the `n_top` most variable genes of X (cells, genes), sorted.

    Dispersion-based, as in Seurat v1 (Satija et al. 2015): on normalised counts
    (``expm1(X)`` when X is log1p-transformed), dispersion = var / mean per gene; log
    dispersion is z-scored within `n_bins` equal-width bins of log1p(mean) (bins holding a
    single gene give z = 0); the highest z-scores win, genes with zero mean never. X may be
    dense or scipy-sparse.
    """
    if log_input:
        if hasattr(X, "tocsr"):
            X = X.tocsr(copy=True)
            X.data = np.expm1(X.data)
        else:
            X = np.expm1(X)
    mean = np.asarray(X.mean(axis=0)).ravel()
    sq = X.multiply(X) if hasattr(X, "multiply") else X * X
    var = np.asarray(sq.mean(axis=0)).ravel() - mean**2
    var = np.maximum(var, 0.0) * X.shape[0] / max(X.shape[0] - 1, 1)
    ok = mean > 0
    disp = np.full(mean.shape, -np.inf)
    disp[ok] = np.log(np.maximum(var[ok], 1e-300) / mean[ok])
    z = np.full(mean.shape, -np.inf)
    if ok.any():
        level = np.log1p(mean)
        edges = np.linspace(level[ok].min(), level[ok].max(), n_bins + 1)
        bins = np.clip(np.digitize(level, edges[1:-1]), 0, n_bins - 1)
        for b in np.unique(bins[ok]):
            sel = ok & (bins == b)
            sd = disp[sel].std(ddof=1) if sel.sum() > 1 else 0.0
            z[sel] = (disp[sel] - disp[sel].mean()) / sd if sd > 0 else 0.0
    n_top = min(int(n_top), int(ok.sum()))
    top = np.argsort(-z, kind="stable")[:n_top]
    return np.sort(top)


def preprocess_expression(X, genes: list[str], cfg: PreprocessOptions, path) -> tuple[np.ndarray, list[str], dict, dict]:
    """normalise total -> log1p -> HVG -> PCA (each optional); returns (features, names, record, extra vars)."""
    import scipy.sparse as sp

    X = sp.csr_matrix(X, dtype=np.float64) if sp.issparse(X) else np.asarray(X, dtype=np.float64)
    record: dict[str, Any] = {"steps": []}
    extra: dict[str, Any] = {}
    if cfg.normalize_total or cfg.log1p:
        neg = (X.data < 0).any() if sp.issparse(X) else (X < 0).any()
        if neg:
            raise InputError("the expression matrix has negative values; normalise/log1p expect counts (set preprocess.normalize_total/log1p false, or use obsm_key)", path)
    if cfg.normalize_total:
        totals = np.asarray(X.sum(axis=1)).ravel()
        scale = np.where(totals > 0, cfg.target_sum / np.where(totals > 0, totals, 1.0), 0.0)
        X = sp.diags(scale) @ X if sp.issparse(X) else X * scale[:, None]
        record["steps"].append({"normalize_total": {"target_sum": cfg.target_sum, "empty_cells": int((totals <= 0).sum())}})
    if cfg.log1p:
        if sp.issparse(X):
            X = X.copy()
            X.data = np.log1p(X.data)
        else:
            X = np.log1p(X)
        record["steps"].append({"log1p": True})
    if cfg.n_top_genes is not None and cfg.n_top_genes < X.shape[1]:
        keep = highly_variable_genes(X, cfg.n_top_genes, cfg.hvg_bins, log_input=bool(cfg.log1p))
        X = X[:, keep]
        genes = [genes[i] for i in keep]
        record["steps"].append({"highly_variable_genes": {"flavor": "seurat v1 dispersion z-score in mean bins", "n_top_genes": len(keep), "n_bins": cfg.hvg_bins, "genes": genes}})
    X = X.toarray() if sp.issparse(X) else X
    names = list(genes)
    if cfg.n_pcs is not None:
        from sklearn.decomposition import PCA

        k = int(cfg.n_pcs)
        if k > min(X.shape):
            raise ConfigError("preprocess.n_pcs", f"{k} components but the data has {X.shape[0]} cells x {X.shape[1]} genes")
        pca = PCA(n_components=k, random_state=cfg.seed)
        X = pca.fit_transform(X)
        names = [f"PC{i + 1}" for i in range(k)]
        record["steps"].append({"pca": {"n_pcs": k, "explained_variance_ratio": pca.explained_variance_ratio_.tolist(), "seed": cfg.seed}})
        extra["pca_components"] = (("feature", "gene"), pca.components_.astype(np.float32))
        extra["pca_mean"] = (("gene",), pca.mean_.astype(np.float32))
        extra["gene"] = (("gene",), np.asarray(genes, dtype=object))
    if cfg.standardize:
        sd = X.std(axis=0)
        X = (X - X.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
        record["steps"].append({"standardize": True})
    return X, names, record, extra
