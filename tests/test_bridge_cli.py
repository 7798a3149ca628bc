"""`scorebridge bridge-fit` and `bridge-evaluate` on a tiny cells zarr written by the test."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

from scorebridge.cli import (
    main,  # in-process: the console script's dispatcher and error handling, no interpreter start-up
)


def run_cli(*args) -> None:
    rc = main([str(a) for a in args])
    assert rc == 0, f"scorebridge {args[0]} exited {rc}"


SPEC = {
    "cells": "tiny",
    "seed": 0,
    "max_cells": 32,  # t = 3 holds 33 cells: subsampled
    "model": {
        "select": "none",
        "reference": {"class": "linear", "sigma": {"init": 0.5, "learn": True, "debias": "bootstrap"}},
        "max_iter": 3,
    },
    "evaluate": {"holdout": "loo", "trajectories": 10, "bootstrap": 2},
    "baselines": {
        "methods": ["previous", "mccann", "otcfm"],
        "otcfm": {"steps": 30, "hidden": 16, "layers": 1, "batch": 16},
    },
}


def _write_cells(path, times=(0.0, 1.0, 2.0, 3.0), n=30, nan_time=False, cell_names=False):
    rng = np.random.default_rng(0)
    X, T = [], []
    for t in times:
        c = np.array([np.cos(t), np.sin(t)]) * 2
        X.append(c + 0.3 * rng.normal(size=(n + int(t), 2)))  # ragged counts
        T += [t] * (n + int(t))
    T = np.asarray(T, dtype=float)
    if nan_time:
        T[3] = np.nan
    coords = {"feature": ["a", "b"], **({"cell": [f"bc-{i:03d}" for i in range(len(T))]} if cell_names else {})}
    ds = xr.Dataset(
        {"X": (("cell", "feature"), np.concatenate(X).astype(np.float32)), "time": (("cell",), T)}, coords=coords
    )
    ds.to_zarr(path, mode="w", consolidated=False)
    return path


@pytest.mark.slow
def test_fit_and_evaluate_end_to_end(tmp_path):
    cells = _write_cells(tmp_path / "cells.zarr")
    spec = json.dumps(SPEC)
    run_cli("bridge-fit", "--spec", spec, "--experiment", "tiny", "--cells", cells, "--out", tmp_path / "model.pt")
    assert (tmp_path / "model.pt").exists()
    from scorebridge.bridge.model_io import load_model

    fitted, _ = load_model(tmp_path / "model.pt")
    stages = [h["stage"] for h in fitted.history]
    assert stages[0] == "fit" and stages[-1] == "debiased"  # the σ bootstrap ran and was saved
    assert float(fitted.reference.sigma.detach()) != pytest.approx(fitted.history[-1]["sigma_fitted"][0])
    run_cli(
        "bridge-evaluate",
        "--spec",
        spec,
        "--experiment",
        "tiny",
        "--cells",
        cells,
        "--model",
        tmp_path / "model.pt",
        "--predictions",
        tmp_path / "pred.zarr",
        "--figures",
        tmp_path / "figs",
        "--out",
        tmp_path / "metrics.json",
    )
    out = json.loads((tmp_path / "metrics.json").read_text())
    m = out["metrics"]
    for method in ("model", "vanilla_sb", "otcfm", "mccann", "previous"):
        for name in ("w1", "w2", "mmd", "energy"):
            assert np.isfinite(m[f"{name}/{method}/t1"]) and np.isfinite(m[f"{name}/{method}/t2"])
            assert m[f"{name}/{method}/mean"] == pytest.approx(
                (m[f"{name}/{method}/t1"] + m[f"{name}/{method}/t2"]) / 2
            )
    assert out["splits"] == [[1.0], [2.0]]
    assert out["subsampled"] == {"t=3": [32, 33]}
    assert fitted.bridge.snapshots[-1].shape[0] == 32  # the fit saw the subsample too
    ds = xr.open_zarr(tmp_path / "pred.zarr", consolidated=False)
    # every bridge method both ways: the model in its chosen mode, ot and plan; the vanilla SB plan (the paper's) and ot
    assert set(np.unique(ds["method"].values)) == {
        "model",
        "model_ot",
        "model_plan",
        "vanilla_sb",
        "vanilla_sb_ot",
        "otcfm",
        "mccann",
        "previous",
        "observed",
    }
    sel = (ds["method"].values == "model") & (ds["time"].values == 1.0)
    assert sel.sum() == 31 and ds["X"].shape[1] == 2  # as many particles as observed cells at t = 1
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == [
        "marginals.png",
        "parameters.png",
        "trajectories.png",
        "w1.png",
    ]


@pytest.mark.slow
def test_default_selection_bootstrap_and_anndata_end_to_end(tmp_path):
    """select: inner_loo (the default) in bridge-fit and per split in bridge-evaluate; the
    choice recorded in model.pt and metrics.json; bootstrap intervals and verdicts;
    predictions.h5ad with the input's feature and cell names."""
    import anndata

    from scorebridge.bridge.model_io import load_model

    cells = _write_cells(tmp_path / "cells.zarr", times=(0.0, 1.0, 2.0, 3.0, 4.0), n=25, cell_names=True)
    spec = json.dumps(
        {
            "cells": "tiny",
            "seed": 0,
            "model": {
                "max_iter": 3,
                "selection": {
                    "classes": ["brownian", "linear_full"],
                    "auto_scales": [1.0],
                    "draws": 1,
                    "resamples": 20,
                },
            },
            "evaluate": {"holdout": [[2], [3]], "trajectories": 6, "bootstrap": 3},
            "baselines": {"methods": ["previous", "mccann"]},
        }
    )
    run_cli("bridge-fit", "--spec", spec, "--experiment", "tiny", "--cells", cells, "--out", tmp_path / "model.pt")
    _, meta = load_model(tmp_path / "model.pt")
    assert meta["selection"]["mode"] == "inner_loo" and meta["selection"]["inner_holdouts"] == [1.0, 2.0, 3.0]
    assert meta["configured"]["select"] == "inner_loo" and meta["options"]["select"] == "none"
    run_cli(
        "bridge-evaluate",
        "--spec",
        spec,
        "--experiment",
        "tiny",
        "--cells",
        cells,
        "--model",
        tmp_path / "model.pt",
        "--predictions",
        tmp_path / "pred.zarr",
        "--figures",
        tmp_path / "figs",
        "--out",
        tmp_path / "metrics.json",
    )
    out = json.loads((tmp_path / "metrics.json").read_text())
    splits = out["selection"]["splits"]
    assert [s["held_out"] for s in splits] == [[2.0], [3.0]] and splits[0]["snapshots"] == [0.0, 1.0, 3.0, 4.0]
    assert all(s["chosen"]["class"] in ("brownian", "linear_full") for s in splits)
    comp = out["comparison"]
    assert comp["replicates"] == 3 and set(comp["times"]) == {"t2", "t3", "mean"}
    m = out["metrics"]
    for lab in ("t2", "t3", "mean"):
        assert m[f"w1_low/model_minus_best_baseline/{lab}"] <= m[f"w1_high/model_minus_best_baseline/{lab}"]
        for method in ("model_ot", "model_plan", "vanilla_sb", "vanilla_sb_ot"):
            assert np.isfinite(m[f"w1/{method}/{lab}"])
    ad = anndata.read_h5ad(tmp_path / "pred.h5ad")
    assert list(ad.var_names) == ["a", "b"]
    observed = ad.obs[ad.obs["kind"] == "observed"]
    # the store's cell names: t = 2 holds cells 51..77, t = 3 cells 78..105 (25 + t cells per time)
    assert sorted(observed["cell"]) == [f"bc-{i:03d}" for i in range(51, 106)]
    assert json.loads(ad.uns["bridge"]["selection"])["fit"]["mode"] == "inner_loo"


@pytest.mark.parametrize(
    "change, times, nan_time, message",
    [
        ({}, (0.0,), False, "at least 2 time points"),
        ({}, (0.0, 1.0), True, "missing (NaN) time label"),
        ({"model": {"reference": {"class": "cubic"}}}, (0.0, 1.0), False, "config key 'model.reference.class'"),
        (
            {"model": {"reference": {"class": "parametric", "drift": "nowhere.module:f"}}},
            (0.0, 1.0),
            False,
            "config key 'model.reference.drift'",
        ),
    ],
)
def test_bad_input_clear_errors(tmp_path, capsys, change, times, nan_time, message):
    cells = _write_cells(tmp_path / "cells.zarr", times=times, n=5, nan_time=nan_time)
    spec = json.dumps({**SPEC, **change})
    rc = main(["bridge-fit", "--spec", spec, "--cells", str(cells), "--out", str(tmp_path / "model.pt")])
    err = capsys.readouterr().err
    assert rc == 1, err
    assert message in err
    assert not (tmp_path / "model.pt").exists()


def test_subsample_snapshots_seeded_and_bounded():
    from scorebridge.bridge.cli import subsample_snapshots

    rng = np.random.default_rng(1)
    snaps = [rng.normal(size=(n, 3)) for n in (10, 50, 7)]
    out, cut = subsample_snapshots(snaps, [0.0, 1.5, 3.0], 20, seed=4)
    assert [x.shape[0] for x in out] == [10, 20, 7] and cut == {"t=1.5": [20, 50]}
    assert out[0] is snaps[0]  # small snapshots untouched
    rows = {tuple(r) for r in snaps[1]}
    assert all(tuple(r) in rows for r in out[1]) and len({tuple(r) for r in out[1]}) == 20  # distinct observed cells
    again, _ = subsample_snapshots(snaps, [0.0, 1.5, 3.0], 20, seed=4)
    other, _ = subsample_snapshots(snaps, [0.0, 1.5, 3.0], 20, seed=5)
    assert np.array_equal(again[1], out[1]) and not np.array_equal(other[1], out[1])
    assert subsample_snapshots(snaps, [0.0, 1.5, 3.0], None, seed=4) == (snaps, {})
