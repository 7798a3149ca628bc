"""Cells ingestion: real EB (.npy) and EMT (.csv) files, npz/h5ad inputs, preprocessing, bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from conftest import run_cli
from scorebridge.data.cells.preprocess import highly_variable_genes
from scorebridge.data.cells.simulate import simulate, write_snapshots_npz
from scorebridge.data.cells.store import ingest, load_snapshots
from scorebridge.errors import ConfigError, InputError
from scorebridge.provenance import sha256_file


def _open(path):
    return xr.open_zarr(path, consolidated=False)


def test_eb_npy_real(shared, tmp_path):
    src = shared("cells", "eb_5x300x5.npy")
    out = tmp_path / "eb.zarr"
    run_cli("cells-ingest", "--spec", json.dumps({"source": "npy"}), "--out", out, src)
    ds = _open(out)
    assert ds["X"].dims == ("cell", "feature") and ds["X"].dtype == np.float32 and ds["X"].shape == (1500, 5)
    assert ds["time"].dtype == np.float64
    raw = np.load(src)
    snaps, times, attrs = load_snapshots(out)
    assert times.tolist() == [0, 1, 2, 3, 4] and json.loads(attrs["n_cells"]) == [300] * 5
    for k in range(5):
        assert np.allclose(snaps[k], raw[k].astype(np.float32))
    prov = json.loads(attrs["provenance"])
    assert prov["sha256"] == sha256_file(src) and prov["source"] == "npy" and "numpy" in prov["packages"]


def test_emt_csv_real_ragged(shared, tmp_path):
    src = shared("cells", "emt_4timepoints.csv")
    out = tmp_path / "emt.zarr"
    ingest({"source": "csv", "time_key": "samples"}, src, out)
    ds = _open(out)
    assert list(ds["feature"].values) == [f"x{i}" for i in range(1, 11)]
    snaps, times, attrs = load_snapshots(out)
    assert times.tolist() == [0, 1, 2, 3]
    assert [s.shape[0] for s in snaps] == [577, 885, 788, 883]
    assert np.all(np.diff(ds["time"].values) >= 0)  # cells sorted by time
    df = pd.read_csv(src)
    assert np.allclose(np.sort(snaps[2][:, 0]), np.sort(df.loc[df.samples == 2, "x1"].to_numpy(np.float32)))
    # a configured feature list
    ingest({"source": "csv", "time_key": "samples", "features": ["x3", "x1"]}, src, tmp_path / "two.zarr")
    assert list(_open(tmp_path / "two.zarr")["feature"].values) == ["x3", "x1"]


def test_simulated_npz_carries_true_parameters(tmp_path):
    snaps, times, s = simulate({"system": "ou", "n_cells": [10, 20, 30], "times": [0, 0.5, 2]})
    write_snapshots_npz(tmp_path / "ou.npz", snaps, times, {"system": "ou", "drift": s["drift"]}, s["features"])
    run_cli(
        "cells-ingest", "--spec", json.dumps({"source": "simulate"}), "--out", tmp_path / "ou.zarr", tmp_path / "ou.npz"
    )
    got, t, attrs = load_snapshots(tmp_path / "ou.zarr")
    assert t.tolist() == [0, 0.5, 2] and [g.shape for g in got] == [(10, 2), (20, 2), (30, 2)]
    assert json.loads(attrs["true_parameters"])["drift"]["A"] == s["drift"]["A"]
    assert list(_open(tmp_path / "ou.zarr")["feature"].values) == ["x1", "x2"]


def test_npz_forms_and_config_times(tmp_path):
    rng = np.random.default_rng(0)
    cube = rng.normal(size=(3, 8, 4))
    np.savez(tmp_path / "cube.npz", data=cube)
    ingest({"source": "npz", "times": [0, 2, 7], "min_cells": 1}, tmp_path / "cube.npz", tmp_path / "a.zarr")
    _, t, _ = load_snapshots(tmp_path / "a.zarr")
    assert t.tolist() == [0, 2, 7]
    # ragged keys sorted by number, not as text (t10 after t9)
    arrays = {f"t{k}": rng.normal(size=(k + 2, 3)) for k in range(11)}
    np.savez(tmp_path / "rag.npz", **arrays)
    ingest({"source": "npz", "min_cells": 1}, tmp_path / "rag.npz", tmp_path / "r.zarr")
    snaps, t, _ = load_snapshots(tmp_path / "r.zarr")
    assert t.tolist() == list(range(11)) and [s.shape[0] for s in snaps] == list(range(2, 13))
    assert np.allclose(snaps[10], arrays["t10"].astype(np.float32))
    # flat X + per-cell time
    np.savez(tmp_path / "flat.npz", X=rng.normal(size=(9, 2)), time=np.array([3, 1, 1, 3, 2, 2, 1, 3, 2.0]))
    ingest({"source": "npz", "min_cells": 1}, tmp_path / "flat.npz", tmp_path / "f.zarr")
    snaps, t, _ = load_snapshots(tmp_path / "f.zarr")
    assert t.tolist() == [1, 2, 3] and [s.shape[0] for s in snaps] == [3, 3, 3]


def _adata(rng, n_per=40, times=(0.0, 1.0, 2.0), genes=100, variable=(3, 17, 42)):
    import anndata

    n = n_per * len(times)
    t = np.repeat(times, n_per)
    rate = np.tile(np.exp(rng.uniform(np.log(1.0), np.log(50.0), genes)), (n, 1))  # Poisson background
    for g in variable:  # planted genes keeping their mean but swinging between cells (overdispersed)
        rate[:, g] *= np.where(rng.random(n) < 0.5, 0.2, 1.8)
    counts = rng.poisson(rate).astype(np.float32)
    ad = anndata.AnnData(
        X=counts,
        obs=pd.DataFrame({"day": t}, index=[f"c{i}" for i in range(n)]),
        var=pd.DataFrame(index=[f"g{j}" for j in range(genes)]),
    )
    ad.obsm["X_pca"] = rng.normal(size=(n, 6))
    return ad


def test_h5ad_obsm_and_preprocessing(tmp_path):
    import scipy.sparse as sp

    rng = np.random.default_rng(1)
    ad = _adata(rng)
    ad.obs["day"] = pd.Categorical(ad.obs["day"].astype(str))  # numeric-looking categories
    ad.write_h5ad(tmp_path / "a.h5ad")
    ingest(
        {"source": "h5ad", "time_key": "day", "obsm_key": "X_pca", "n_components": 4},
        tmp_path / "a.h5ad",
        tmp_path / "o.zarr",
    )
    ds = _open(tmp_path / "o.zarr")
    assert ds["X"].shape == (120, 4) and np.allclose(ds["X"].values, ad.obsm["X_pca"][:, :4].astype(np.float32))
    assert ds["cell"].values[0] == "c0"
    # preprocessing: normalise, log1p, HVG (the planted genes are found), PCA
    spec = {"source": "h5ad", "time_key": "day", "preprocess": {"n_top_genes": 3, "hvg_bins": 5, "n_pcs": 2}}
    ingest(spec, tmp_path / "a.h5ad", tmp_path / "p.zarr")
    ds = _open(tmp_path / "p.zarr")
    assert ds["X"].shape == (120, 2) and list(ds["feature"].values) == ["PC1", "PC2"]
    steps = json.loads(ds.attrs["preprocessing"])["steps"]
    names = [next(iter(s)) for s in steps]
    assert names == ["normalize_total", "log1p", "highly_variable_genes", "pca"]
    assert steps[2]["highly_variable_genes"]["genes"] == ["g3", "g17", "g42"]
    assert list(ds["gene"].values) == ["g3", "g17", "g42"] and ds["pca_components"].shape == (2, 3)
    # sparse counts give the same features
    ad.X = sp.csr_matrix(ad.X)
    ad.write_h5ad(tmp_path / "s.h5ad")
    ingest(spec, tmp_path / "s.h5ad", tmp_path / "s.zarr")
    assert np.allclose(_open(tmp_path / "s.zarr")["X"].values, ds["X"].values, atol=1e-4)


def test_highly_variable_genes_by_hand():
    X = np.ones((6, 4)) + np.array([[0, 0, 0, 5], [0, 0, 0, 0]] * 3) + np.array([[0, 0.1, 0, 0], [0, 0, 0, 0]] * 3)
    X[:, 0] = 0  # never expressed: never selected
    assert highly_variable_genes(X, 1, n_bins=1, log_input=False).tolist() == [3]
    assert highly_variable_genes(X, 2, n_bins=1, log_input=False).tolist() == [1, 3]
    assert highly_variable_genes(X, 4, n_bins=1, log_input=False).tolist() == [1, 2, 3]
    assert highly_variable_genes(np.log1p(X), 2, n_bins=1).tolist() == [1, 3]


def test_csv_rows_sorted_by_time_value(tmp_path):
    (tmp_path / "c.csv").write_text("t,a,b,label\n2,1,1,x\n0,2,2,y\n1,3,3,z\n0,4,4,w\n")
    ingest(
        {"source": "csv", "time_key": "t", "features": ["a", "b"], "min_cells": 1},
        tmp_path / "c.csv",
        tmp_path / "c.zarr",
    )
    ds = _open(tmp_path / "c.zarr")
    assert ds["time"].values.tolist() == [0, 0, 1, 2]
    assert ds["X"].values[:, 0].tolist() == [2, 4, 3, 1] and list(ds["feature"].values) == ["a", "b"]


def _csv(tmp_path, text):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "text, spec, match",
    [
        ("t,a\n0,1\n0,2\n", {}, "only one time point"),
        ("t,a\n0,1\n,2\n1,3\n", {}, r"missing time label .*line 3"),
        ("t,a\n0,1\nday1,2\n1,3\n", {}, r"non-numeric time label .*line 3 \('day1'\)"),
        ("t,a\n0,1\n1,nan\n1,3\n", {}, r"NaN or infinite .*line 3"),
        ("t,a\n0,1\n1,inf\n1,3\n", {}, r"NaN or infinite .*line 3"),
        ("t,a\n0,1\n1,2\n", {"time_key": "day"}, "column 'day' not in"),
        ("t,a\n0,1\n1,2\n", {"features": ["a", "b"]}, r"column\(s\) \['b'\] not in"),
        ("t,a,b\n0,1,x\n1,2,y\n", {"features": ["a", "b"]}, "'b' is not numeric"),
    ],
)
def test_bad_csv(tmp_path, text, spec, match):
    with pytest.raises((InputError, ConfigError), match=match):
        ingest(
            {"source": "csv", "time_key": "t", "features": ["a"], "min_cells": 1, **spec},
            _csv(tmp_path, text),
            tmp_path / "o.zarr",
        )
    assert not (tmp_path / "o.zarr").exists()


def test_bad_arrays(tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "one.npy", rng.normal(size=(1, 5, 2)))
    with pytest.raises(InputError, match="only one time point"):
        ingest({"source": "npy"}, tmp_path / "one.npy", tmp_path / "o.zarr")
    np.save(tmp_path / "c.npy", rng.normal(size=(3, 5, 2)))
    with pytest.raises(InputError, match="strictly increasing"):
        ingest({"source": "npy", "times": [0, 2, 1]}, tmp_path / "c.npy", tmp_path / "o.zarr")
    with pytest.raises(InputError, match="lists 2 times but the input has 3 snapshots"):
        ingest({"source": "npy", "times": [0, 1]}, tmp_path / "c.npy", tmp_path / "o.zarr")
    np.save(tmp_path / "flat.npy", rng.normal(size=(5, 2)))
    with pytest.raises(InputError, match="expected 3-D"):
        ingest({"source": "npy"}, tmp_path / "flat.npy", tmp_path / "o.zarr")
    np.savez(tmp_path / "dims.npz", t0=rng.normal(size=(4, 3)), t1=rng.normal(size=(5, 2)))
    with pytest.raises(InputError, match="differ in their number of features: t0: 3, t1: 2"):
        ingest({"source": "npz"}, tmp_path / "dims.npz", tmp_path / "o.zarr")
    bad = rng.normal(size=(6, 2))
    bad[4, 1] = np.nan
    np.savez(tmp_path / "nan.npz", t0=rng.normal(size=(4, 2)), t1=bad)
    with pytest.raises(InputError, match=r"snapshot 't1', cell\(s\) 4"):
        ingest({"source": "npz"}, tmp_path / "nan.npz", tmp_path / "o.zarr")
    np.savez(tmp_path / "t.npz", t0=rng.normal(size=(4, 2)), t1=rng.normal(size=(4, 2)), times=np.array([1.0, 1.0]))
    with pytest.raises(InputError, match="npz key 'times'.* strictly increasing"):
        ingest({"source": "npz"}, tmp_path / "t.npz", tmp_path / "o.zarr")
    np.savez(tmp_path / "gap.npz", t0=rng.normal(size=(4, 2)), t2=rng.normal(size=(4, 2)))
    with pytest.raises(InputError, match="without gaps"):
        ingest({"source": "npz"}, tmp_path / "gap.npz", tmp_path / "o.zarr")
    np.save(tmp_path / "obj.npy", np.array([np.zeros((2, 2)), np.zeros((3, 2))], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="ragged snapshots as an .npz"):
        ingest({"source": "npy"}, tmp_path / "obj.npy", tmp_path / "o.zarr")
    assert not (tmp_path / "o.zarr").exists()


def test_bad_h5ad(tmp_path):
    rng = np.random.default_rng(2)
    ad = _adata(rng, n_per=5, genes=10, variable=(1,))
    ad.obs.loc["c3", "day"] = np.nan
    ad.write_h5ad(tmp_path / "a.h5ad")
    with pytest.raises(InputError, match=r"missing time label .*c3"):
        ingest({"source": "h5ad", "time_key": "day", "obsm_key": "X_pca"}, tmp_path / "a.h5ad", tmp_path / "o.zarr")
    with pytest.raises(ConfigError, match="obs column 'time' not in"):
        ingest({"source": "h5ad", "obsm_key": "X_pca"}, tmp_path / "a.h5ad", tmp_path / "o.zarr")
    with pytest.raises(ConfigError, match="'X_umap' not in the obsm.*X_pca"):
        ingest({"source": "h5ad", "time_key": "day", "obsm_key": "X_umap"}, tmp_path / "a.h5ad", tmp_path / "o.zarr")
    ad = _adata(rng, n_per=5, genes=10, variable=(1,))
    ad.obsm["X_pca"][7, 2] = np.inf
    ad.write_h5ad(tmp_path / "b.h5ad")
    with pytest.raises(InputError, match=r"NaN or infinite .*c7"):
        ingest({"source": "h5ad", "time_key": "day", "obsm_key": "X_pca"}, tmp_path / "b.h5ad", tmp_path / "o.zarr")
    assert not (tmp_path / "o.zarr").exists()


def test_cli_reports_bad_input_cleanly(tmp_path):
    proc = run_cli(
        "cells-ingest",
        "--spec",
        json.dumps({"source": "csv"}),
        "--out",
        tmp_path / "o.zarr",
        _csv(tmp_path, "t,a\n0,1\n0,2\n"),
        check=False,
    )
    assert proc.returncode == 1
    assert "error:" in proc.stderr and "column 'time' not in" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o.zarr").exists()


def test_text_time_labels_parsed_or_mapped(tmp_path):
    """Labels such as 'day2' are read as the number they hold when every label shares the
    same text around it (recorded in attrs time_labels); labels in different units need
    time_map, and a time_map that misses a label names it."""
    from scorebridge.data.cells.snapshots import parse_time_labels

    assert parse_time_labels(["day0", "day2.5", "day10"]) == {"day0": 0.0, "day2.5": 2.5, "day10": 10.0}
    assert parse_time_labels(["E7.5", "e8.25"]) == {"E7.5": 7.5, "e8.25": 8.25}
    assert parse_time_labels(["12h", "1d"]) is None  # different units
    assert parse_time_labels(["day1", "day01"]) is None  # two labels, one time
    assert parse_time_labels(["d1r2", "d2r2"]) is None  # two numbers
    p = _csv(tmp_path, "t,a\nday10,1\nday0,2\nday2,3\nday0,4\n")
    ingest({"source": "csv", "time_key": "t", "features": ["a"], "min_cells": 1}, p, tmp_path / "o.zarr")
    ds = _open(tmp_path / "o.zarr")
    assert ds["time"].values.tolist() == [0, 0, 2, 10] and ds["X"].values[:, 0].tolist() == [2, 4, 3, 1]
    assert json.loads(ds.attrs["time_labels"]) == {"day0": 0.0, "day10": 10.0, "day2": 2.0}
    units = _csv(tmp_path, "t,a\n12h,1\n1d,2\n2d,3\n")
    with pytest.raises(InputError, match=r"non-numeric time label .*time_map"):
        ingest({"source": "csv", "time_key": "t", "features": ["a"], "min_cells": 1}, units, tmp_path / "u.zarr")
    ingest(
        {
            "source": "csv",
            "time_key": "t",
            "features": ["a"],
            "min_cells": 1,
            "time_map": {"12h": 0.5, "1d": 1, "2d": 2},
        },
        units,
        tmp_path / "u.zarr",
    )
    assert _open(tmp_path / "u.zarr")["time"].values.tolist() == [0.5, 1, 2]
    with pytest.raises(ConfigError, match=r"time labels .* 2d of .*not in time_map"):
        ingest(
            {"source": "csv", "time_key": "t", "features": ["a"], "min_cells": 1, "time_map": {"12h": 0.5, "1d": 1}},
            units,
            tmp_path / "v.zarr",
        )
    assert not (tmp_path / "v.zarr").exists()
    # an h5ad category of text labels, unordered: parsed the same way
    ad = _adata(np.random.default_rng(2))
    ad.obs["day"] = pd.Categorical(ad.obs["day"].map({0.0: "D0", 1.0: "D3", 2.0: "D7"}))
    ad.write_h5ad(tmp_path / "a.h5ad")
    ingest({"source": "h5ad", "time_key": "day", "obsm_key": "X_pca"}, tmp_path / "a.h5ad", tmp_path / "h.zarr")
    assert sorted(set(_open(tmp_path / "h.zarr")["time"].values.tolist())) == [0.0, 3.0, 7.0]
