"""Cells at single-cell scale (issue 14): h5ad read lazily in row blocks, never densified,
and preprocessing that matches scanpy's on the same data.

Counts are negative-binomial (gene means log-normal, four cell types with their own
fold changes, per-cell size factors), as in single-cell RNA-seq.
"""

from __future__ import annotations

import logging
import tracemalloc

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scorebridge.data.cells.h5ad import RowBlocks, open_h5ad
from scorebridge.data.cells.options import cells_options
from scorebridge.data.cells.pca import block_pca
from scorebridge.data.cells.preprocess import hvg_from_stats, preprocess_expression
from scorebridge.data.cells.read import read_snapshots
from scorebridge.data.cells.store import ingest, load_snapshots


def nb_counts(rng, n_cells: int, n_genes: int, mean_log: float = -2.0) -> np.ndarray:
    """(cells, genes) negative-binomial counts with four cell types (dispersion r = 2)."""
    types = rng.integers(0, 4, n_cells)
    base = np.exp(rng.normal(mean_log, 1.5, n_genes))
    fold = np.exp(rng.normal(0.0, 0.7, (4, n_genes)) * (rng.random((4, n_genes)) < 0.15))
    size = np.exp(rng.normal(0.0, 0.4, n_cells))
    mu = size[:, None] * base[None, :] * fold[types]
    return rng.negative_binomial(2.0, 2.0 / (2.0 + mu)).astype(np.float64)


def write_h5ad(path, counts, times, layers=None, fmt="csr"):
    import anndata

    n, g = counts.shape
    X = (
        sp.csr_matrix(counts, dtype=np.float32)
        if fmt == "csr"
        else sp.csc_matrix(counts, dtype=np.float32)
        if fmt == "csc"
        else counts.astype(np.float32)
    )
    obs = pd.DataFrame({"time": np.asarray(times, dtype=float)}, index=[f"c{i}" for i in range(n)])
    ad = anndata.AnnData(X=X, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(g)]))
    for name, val in (layers or {}).items():
        ad.layers[name] = val
    ad.write_h5ad(path)
    return ad


@pytest.fixture(scope="module")
def parity_data(tmp_path_factory):
    rng = np.random.default_rng(0)
    n, g = 3000, 2000
    counts = nb_counts(rng, n, g)
    path = tmp_path_factory.mktemp("parity") / "nb.h5ad"
    write_h5ad(path, counts, np.repeat([0.0, 1.0, 2.0], n // 3))
    return path, counts.astype(np.float32).astype(np.float64)  # as stored


def _read(path, **pre):
    return read_snapshots(path, {"source": "h5ad", "preprocess": pre})


def _match_signs(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    return ref * np.sign((ref * got).sum(axis=0))


def test_preprocessing_matches_scanpy(parity_data):
    """normalize_total + log1p to 1e-6, HVG (flavor 'seurat') identical, PCA scores equal
    up to sign per component to 1e-4 (against scanpy's ARPACK PCA and a full SVD)."""
    sc = pytest.importorskip("scanpy")
    import anndata

    path, counts = parity_data
    assert 0.03 < (counts > 0).mean() < 0.3  # sparse, as single-cell counts are
    ad = anndata.AnnData(X=counts.copy(), var=pd.DataFrame(index=[f"g{j}" for j in range(counts.shape[1])]))
    sc.pp.normalize_total(ad, target_sum=1e4)
    sc.pp.log1p(ad)
    full = _read(path, n_top_genes=None, n_pcs=None)
    assert full.cells[:3] == ["c0", "c1", "c2"] and full.features[:2] == ["g0", "g1"]
    assert np.abs(full.X - ad.X).max() < 1e-6

    sc.pp.highly_variable_genes(ad, flavor="seurat", n_top_genes=500, n_bins=20)
    theirs = list(ad.var_names[ad.var["highly_variable"]])
    hvg = _read(path, n_top_genes=500, n_pcs=None)
    assert hvg.features == theirs and len(theirs) == 500
    assert np.abs(hvg.X - ad[:, theirs].X).max() < 1e-6

    sc.pp.pca(ad, n_comps=10, svd_solver="arpack", mask_var="highly_variable", dtype="float64")
    ours = _read(path, n_top_genes=500, n_pcs=10)
    assert ours.preprocessing["steps"][-1]["pca"]["solver"] == "covariance"
    ref = ad.obsm["X_pca"]
    assert np.abs(_match_signs(ref, ours.X) - ours.X).max(axis=0).max() < 1e-4
    Y = ad[:, theirs].X - ad[:, theirs].X.mean(axis=0)
    U, S, _ = np.linalg.svd(Y, full_matrices=False)
    svd = U[:, :10] * S[:10]
    assert np.abs(_match_signs(svd, ours.X) - ours.X).max() < 1e-4
    ratio = ours.preprocessing["steps"][-1]["pca"]["explained_variance_ratio"]
    assert np.allclose(ratio, ad.uns["pca"]["variance_ratio"], rtol=1e-6)


def test_randomized_pca_finds_the_leading_components(parity_data):
    """The randomized solver (for many genes) agrees with the exact one where the spectrum
    has gaps: the cell-type components; the noise floor behind them is not resolved by any
    randomized solver, so only those are compared."""
    path, _ = parity_data
    exact = _read(path, n_top_genes=500, n_pcs=3)
    rand = _read(path, n_top_genes=500, n_pcs=3, pca_solver="randomized", seed=1)
    assert rand.preprocessing["steps"][-1]["pca"]["solver"] == "randomized"
    scale = np.abs(exact.X).max(axis=0)
    assert (np.abs(_match_signs(rand.X, exact.X) - exact.X).max(axis=0) / scale < 1e-3).all()


def test_hvg_rules_of_scanpy_seurat():
    """A bin with one gene gives z = 1 (scanpy), constant genes take no part in the bin
    statistics, ties at the cut-off are all kept."""
    mean = np.array([1.0, 1.1, 1.2, 50.0, 1.05, 0.0])
    var = np.array([2.0, 1.0, 3.0, 80.0, 1.05, 0.0])
    keep, z = hvg_from_stats(mean, var, 2, n_bins=4)
    d = np.log(var[[0, 1, 2, 4]] / mean[[0, 1, 2, 4]])  # the first bin (gene 3 is alone in the last)
    assert np.allclose(z[[0, 1, 2, 4]], (d - d.mean()) / d.std(ddof=1)) and z[3] == 1.0
    assert np.isnan(z[5])  # never expressed
    assert keep.tolist() == sorted(np.argsort(-np.nan_to_num(z, nan=-np.inf))[:2].tolist())
    const = np.array([2.0, 1.0, 3.0, 80.0, 0.0, 0.0])  # gene 4 expressed but constant
    keep, z = hvg_from_stats(mean, const, 5, n_bins=1)
    assert np.isnan(z[4]) and keep.tolist() == [0, 1, 2, 3, 4]  # filled with the constant gene, never gene 5
    tie = np.array([1.0, 1.0, 1.0, 1.0])
    keep, _ = hvg_from_stats(tie, np.array([2.0, 2.0, 1.0, 0.5]), 1, n_bins=1)
    assert keep.tolist() == [0, 1]


def test_blocks_do_not_change_the_result(parity_data):
    """Small blocks, one block, an in-memory sparse or dense matrix: the same features."""
    path, counts = parity_data
    opts = cells_options({"source": "h5ad", "preprocess": {"n_top_genes": 300, "n_pcs": 5, "block_mb": 0.2}})
    with open_h5ad(path) as h:
        M = h.matrix(None)
        assert len(M.ranges(opts.preprocess.block_mb * 2**20)) > 20
        small, names, _, _ = preprocess_expression(M, h.var_names, opts.preprocess, path)
    one = cells_options({"source": "h5ad", "preprocess": {"n_top_genes": 300, "n_pcs": 5, "block_mb": 1e4}}).preprocess
    genes = [f"g{j}" for j in range(counts.shape[1])]
    for M in (sp.csr_matrix(counts), counts):
        X, names2, _, _ = preprocess_expression(M, genes, one, path)
        assert names2 == names and np.abs(X - small).max() < 1e-9


def test_row_ranges_follow_the_memory_budget():
    rng = np.random.default_rng(3)
    M = sp.random(1000, 50, density=0.1, format="csr", random_state=rng)
    rb = RowBlocks(M)
    ranges = rb.ranges(4000, dense_cols=10)
    assert ranges[0][0] == 0 and ranges[-1][1] == 1000 and all(a < b for a, b in ranges)
    assert all(b == c for (_, b), (c, _) in zip(ranges, ranges[1:]))
    for a, b in ranges:
        assert b - a == 1 or 16 * (M.indptr[b] - M.indptr[a]) + 80 * (b - a) <= 4000
    dense = RowBlocks(M.toarray())
    assert dense.ranges(8 * 60 * 7, dense_cols=10)[0] == (0, 7)
    assert RowBlocks(M).select([4, 1]).read(0, 3).toarray().tolist() == M[:3][:, [4, 1]].toarray().tolist()


def _scale_file(path, n_per=2000, times=5, genes=2000, density=0.05, dense_layer=False):
    """times x n_per cells x genes, ~density stored values; returns the dense float64 size."""
    rng = np.random.default_rng(4)
    n = n_per * times
    X = sp.random(n, genes, density=density, format="csr", random_state=rng, dtype=np.float32)
    X.data = rng.integers(1, 20, X.data.size).astype(np.float32)
    layers = {"big": np.ones((n, genes), dtype=np.float32)} if dense_layer else None
    write_h5ad(path, X, np.repeat(np.arange(times, dtype=float), n_per), layers=layers)
    return n * genes * 8, X


def test_ingest_never_densifies_the_matrix(tmp_path):
    """5 time points x 2,000 cells x 2,000 genes at 5 % density (dense: 160 MB; the full
    size is benchmarks/cells_ingest_scale.py): peak traced memory of the whole ingest stays
    a fraction of the dense matrix, and of a dense layer the file also holds (anndata's
    backed mode would read every layer whole)."""
    path = tmp_path / "big.h5ad"
    dense_bytes, X = _scale_file(path, dense_layer=True)
    spec = {"source": "h5ad", "preprocess": {"n_top_genes": 500, "n_pcs": 10, "block_mb": 8}}
    tracemalloc.start()
    try:
        snaps = ingest(spec, path, tmp_path / "big.zarr")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert snaps.X.shape == (10000, 10)
    assert peak < dense_bytes / 4, (
        f"peak traced memory {peak / 2**20:.0f} MB for a {dense_bytes / 2**20:.0f} MB dense matrix"
    )
    got, times, _ = load_snapshots(tmp_path / "big.zarr")
    assert times.tolist() == [0, 1, 2, 3, 4] and [s.shape[0] for s in got] == [2000] * 5
    ref, _, _, _ = preprocess_expression(X, [f"g{j}" for j in range(2000)], cells_options(spec).preprocess, path)
    assert np.abs(snaps.X - ref).max() < 1e-8


def test_dense_csc_and_layer_matrices(tmp_path, caplog):
    """X stored dense (HDF5 dataset) or by columns (CSC: read once, sparse, with a warning),
    and a counts layer, give the features of the CSR file."""
    rng = np.random.default_rng(5)
    counts = nb_counts(rng, 300, 200, mean_log=0.0)
    t = np.repeat([0.0, 1.0, 2.0], 100)
    spec = {"n_top_genes": 50, "n_pcs": 4, "block_mb": 0.05}
    write_h5ad(tmp_path / "csr.h5ad", counts, t)
    ref = _read(tmp_path / "csr.h5ad", **spec).X
    write_h5ad(tmp_path / "dense.h5ad", counts, t, fmt="dense")
    assert np.abs(_read(tmp_path / "dense.h5ad", **spec).X - ref).max() < 1e-9
    with caplog.at_level(logging.WARNING):
        write_h5ad(tmp_path / "csc.h5ad", counts, t, fmt="csc")
        assert np.abs(_read(tmp_path / "csc.h5ad", **spec).X - ref).max() < 1e-9
    assert "stored by columns (CSC)" in caplog.text
    write_h5ad(tmp_path / "layer.h5ad", np.log1p(counts), t, layers={"counts": sp.csr_matrix(counts)})
    got = read_snapshots(tmp_path / "layer.h5ad", {"source": "h5ad", "layer": "counts", "preprocess": spec})
    assert np.abs(got.X - ref).max() < 1e-9 and got.preprocessing["features"] == "layers['counts']"


def test_bad_values_found_block_by_block(tmp_path):
    """NaN in a late block names its cell; negative counts are refused."""
    from scorebridge.errors import InputError

    rng = np.random.default_rng(6)
    counts = nb_counts(rng, 300, 100, mean_log=0.0)
    counts[250, 7] = np.nan
    counts[251, 3] = np.inf
    write_h5ad(tmp_path / "nan.h5ad", counts, np.repeat([0.0, 1.0, 2.0], 100))
    with pytest.raises(InputError, match=r"NaN or infinite expression values in 2 cell\(s\): c250, c251"):
        _read(tmp_path / "nan.h5ad", n_top_genes=20, n_pcs=2, block_mb=0.01)
    counts[250, 7], counts[251, 3], counts[10, 0] = 1, 1, -1
    write_h5ad(tmp_path / "neg.h5ad", counts, np.repeat([0.0, 1.0, 2.0], 100))
    with pytest.raises(InputError, match="negative values"):
        _read(tmp_path / "neg.h5ad", n_top_genes=20, n_pcs=2, block_mb=0.01)


def test_block_pca_matches_svd_on_dense_blocks():
    """The covariance solver over blocks equals a full SVD (scores up to sign)."""
    rng = np.random.default_rng(7)
    Y = rng.normal(size=(500, 40)) @ np.diag(np.linspace(3, 0.5, 40))
    rb = RowBlocks(Y)
    pca = block_pca(lambda: rb.blocks(8 * 40 * 37), 500, 40, 5, "covariance", 0)
    scores = pca.transform_blocks(lambda: rb.blocks(8 * 40 * 37), 500)
    U, S, _ = np.linalg.svd(Y - Y.mean(axis=0), full_matrices=False)
    assert np.abs(_match_signs(U[:, :5] * S[:5], scores) - scores).max() < 1e-10
