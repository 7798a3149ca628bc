"""Stages refuse empty or too-small inputs and outputs with a clear error, and leave no
output behind (issue 12 items 8, 9 and 14): no held-out times to sample, a samples store
with no times, a bridge split with nothing to predict or outside the snapshots, a
snapshot with fewer cells than `bridge.<x>.min_cells`.
"""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import xarray as xr

from scorebridge.cli import main

BRIDGE = {
    "cells": "tiny",
    "seed": 0,
    "model": {"reference": {"class": "linear"}, "max_iter": 1},
    "evaluate": {"holdout": [1], "trajectories": 5},
    "baselines": {"methods": ["previous"]},
}


def _cells(path, counts=(30, 30, 30, 30)):
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(size=(n, 2)) + k for k, n in enumerate(counts)])
    T = np.concatenate([[float(k)] * n for k, n in enumerate(counts)])
    xr.Dataset(
        {"X": (("cell", "feature"), X.astype(np.float32)), "time": (("cell",), T)}, coords={"feature": ["a", "b"]}
    ).to_zarr(path, mode="w", consolidated=False)
    return path


def _fit(tmp_path, cells, spec, capsys):
    rc = main(
        [
            "bridge-fit",
            "--spec",
            json.dumps(spec),
            "--experiment",
            "tiny",
            "--cells",
            str(cells),
            "--out",
            str(tmp_path / "model.pt"),
        ]
    )
    return rc, capsys.readouterr().err


def _evaluate(tmp_path, cells, spec, capsys):
    rc = main(
        [
            "bridge-evaluate",
            "--spec",
            json.dumps(spec),
            "--experiment",
            "tiny",
            "--cells",
            str(cells),
            "--model",
            str(tmp_path / "model.pt"),
            "--predictions",
            str(tmp_path / "pred.zarr"),
            "--figures",
            str(tmp_path / "figs"),
            "--out",
            str(tmp_path / "metrics.json"),
        ]
    )
    return rc, capsys.readouterr().err


@pytest.mark.parametrize(
    "holdout, counts, message",
    [
        ([4], (30,) * 4, "indices [4] out of range: the cells store has 4 snapshots (indices 0..3)"),
        ([[1], [0, 7]], (30,) * 4, "indices [7] out of range: the cells store has 4 snapshots (indices 0..3)"),
        (
            "loo",
            (30,) * 2,
            "'loo' holds out each interior snapshot: the cells store has 2 snapshots, nothing to predict",
        ),
        ([0, 1, 2], (30,) * 4, "leaves fewer than 2 snapshots to fit"),
    ],
)
def test_bridge_fit_refuses_a_bad_holdout_before_fitting(tmp_path, capsys, caplog, holdout, counts, message):
    """The split is checked against the cells store at the start of bridge-fit (it runs
    first in the workflow), naming the key with the experiment's name."""
    cells = _cells(tmp_path / "cells.zarr", counts)
    with caplog.at_level(logging.INFO, logger="scorebridge"):
        rc, err = _fit(tmp_path, cells, {**BRIDGE, "evaluate": {"holdout": holdout}}, capsys)
    assert rc == 1, err
    assert "config key 'bridge.tiny.evaluate.holdout'" in err and message in err, err
    assert not (tmp_path / "model.pt").exists()
    fitting = [
        r.getMessage() for r in caplog.records if r.name.startswith(("scorebridge.bridge.", "scorebridge.tracking"))
    ]
    assert not fitting, fitting  # refused before any fit (or run) started


def test_bridge_refuses_snapshots_below_min_cells(tmp_path, capsys):
    cells = _cells(tmp_path / "cells.zarr", (30, 4, 30, 30))
    rc, err = _fit(tmp_path, cells, BRIDGE, capsys)
    assert rc == 1, err
    assert (
        "snapshot at time 1 has 4 cells" in err and "bridge.tiny.min_cells" in err and "10" in err and str(cells) in err
    ), err
    assert not (tmp_path / "model.pt").exists()
    # a lower minimum fits; scoring with the default minimum is refused as well
    rc, err = _fit(tmp_path, cells, {**BRIDGE, "min_cells": 4}, capsys)
    assert rc == 0, err
    rc, err = _evaluate(tmp_path, cells, BRIDGE, capsys)
    assert rc == 1 and "snapshot at time 1 has 4 cells" in err and "bridge.tiny.min_cells" in err, err
    assert not any((tmp_path / p).exists() for p in ("pred.zarr", "figs", "metrics.json"))
    rc, err = _evaluate(tmp_path, cells, {**BRIDGE, "min_cells": 4}, capsys)
    assert rc == 0, err


def test_bridge_evaluate_refuses_a_bad_holdout(tmp_path, capsys):
    cells = _cells(tmp_path / "cells.zarr")
    rc, err = _fit(tmp_path, cells, BRIDGE, capsys)
    assert rc == 0, err
    rc, err = _evaluate(tmp_path, cells, {**BRIDGE, "evaluate": {"holdout": [5]}}, capsys)
    assert rc == 1 and "config key 'bridge.tiny.evaluate.holdout'" in err and "4 snapshots" in err, err
    assert not (tmp_path / "metrics.json").exists()


def test_debias_without_learn_refused_by_the_cli(tmp_path, capsys):
    cells = _cells(tmp_path / "cells.zarr")
    spec = {**BRIDGE, "model": {"reference": {"class": "linear", "sigma": {"debias": "bootstrap"}}}}
    rc, err = _fit(tmp_path, cells, spec, capsys)
    assert rc == 1 and "config key 'model.reference.sigma.debias'" in err and "learn: true" in err, err
    assert not (tmp_path / "model.pt").exists()


# ----------------------------------------------------------------- sr


@pytest.fixture(scope="module")
def prior(tmp_path_factory):
    from scorebridge.sr.options import resolve_spec
    from scorebridge.sr.train import train_prior
    from test_sr_evaluate import _era5

    d = tmp_path_factory.mktemp("sr_empty")
    _era5(d / "era5.zarr", ntime=8)
    spec = {
        "era5": "tiny",
        "seed": 0,
        "train": {
            "steps": 2,
            "batch_size": 2,
            "log_every": 1,
            "checkpoint_every": 0,
            "threads": 1,
            "model": {"base": 8, "mults": [1, 2]},
        },
    }
    os.environ["SCOREBRIDGE_NO_PROGRESS"] = "1"
    train_prior(resolve_spec(spec), d / "era5.zarr", None, d / "checkpoint.pt")
    return d, spec


def test_sample_with_no_held_out_times_refused_and_writes_nothing(prior, capsys):
    d, spec = prior
    spec = {
        **spec,
        "train": {**spec["train"], "split": {"train_fraction": 1.0}},
        "sample": {"conditioning": ["coarse"], "members": 2, "steps": 2, "calibrate": {"enabled": False}},
    }
    rc = main(
        [
            "sr-sample",
            "--spec",
            json.dumps(spec),
            "--experiment",
            "tiny",
            "--era5",
            str(d / "era5.zarr"),
            "--checkpoint",
            str(d / "checkpoint.pt"),
            "--out",
            str(d / "samples.zarr"),
            "--device",
            "cpu",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1, err
    assert "no held-out times" in err and "train_fraction" in err and "8 times" in err, err
    assert not (d / "samples.zarr").exists()
    assert not list(d.glob(".samples.zarr.partial-*"))


def test_samples_store_with_no_times_is_neither_written_nor_read(prior, tmp_path, capsys):
    from scorebridge.errors import InputError
    from scorebridge.sr.store import samples_dataset, write_samples

    d, spec = prior
    channels = [("t", 850.0), ("t", 500.0)]
    ens = np.zeros((0, 2, 2, 16, 16), np.float32)
    lat = np.linspace(40.0, 47.5, 16)
    ds = samples_dataset(
        ens,
        np.zeros((0, 2, 4, 4), np.float32),
        channels,
        times=np.zeros(0, "datetime64[ns]"),
        time_index=np.zeros(0, int),
        lat=lat,
        lon=lat,
        factor=4,
    )
    with pytest.raises(InputError, match="no times"):
        write_samples(tmp_path / "samples.zarr", ds, sampling={}, channels=channels, provenance={})
    assert not (tmp_path / "samples.zarr").exists()
    # a store with no times written by an older version: sr-evaluate names it instead of a traceback
    ds.attrs.update(sampling=json.dumps({"coarse_factor": 4}), channels=json.dumps([list(c) for c in channels]))
    ds.to_zarr(tmp_path / "old.zarr", consolidated=False)
    rc = main(
        [
            "sr-evaluate",
            "--spec",
            json.dumps(spec),
            "--experiment",
            "tiny",
            "--era5",
            str(d / "era5.zarr"),
            "--samples",
            str(tmp_path / "old.zarr"),
            "--figures",
            str(tmp_path / "figs"),
            "--out",
            str(tmp_path / "metrics.json"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and "holds no times" in err and str(tmp_path / "old.zarr") in err, err
    assert not (tmp_path / "metrics.json").exists() and not (tmp_path / "figs").exists()
