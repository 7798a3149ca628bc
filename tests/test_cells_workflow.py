"""The cells rules end to end through Snakemake: simulate -> ingest, and the real EB/EMT files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from conftest import ROOT, SHARED_DATA, run_snakemake
from scorebridge.data.cells.store import load_snapshots


@pytest.mark.slow
def test_cells_rules_end_to_end(tmp_path):
    cells = {
        "lv": {
            "source": "simulate",
            "simulate": {"system": "lotka_volterra", "n_cells": [30, 40, 50], "times": [0, 1, 2]},
        },
    }
    eb, emt = SHARED_DATA / "cells" / "eb_5x300x5.npy", SHARED_DATA / "cells" / "emt_4timepoints.csv"
    if eb.exists():
        cells["eb"] = {"source": "npy", "path": str(eb), "times": [0, 6, 12, 18, 24]}
    if emt.exists():
        cells["emt"] = {"source": "csv", "path": str(emt), "time_key": "samples"}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"seed": 0, "cells": cells}))
    targets = [f"results/data/cells/{name}.zarr" for name in cells]
    run_snakemake(
        "-s",
        str(ROOT / "Snakefile"),
        "-d",
        str(tmp_path),
        "--configfile",
        str(tmp_path / "config.yaml"),
        "--cores",
        "1",
        *targets,
    )
    snaps, times, attrs = load_snapshots(tmp_path / "results/data/cells/lv.zarr")
    assert times.tolist() == [0, 1, 2] and [s.shape for s in snaps] == [(30, 2), (40, 2), (50, 2)]
    truth = json.loads(attrs["true_parameters"])
    assert truth["drift"] == {"alpha": 1.0, "beta": 0.4, "gamma": 0.4, "delta": 0.1} and truth["sigma"] == 0.1
    if "eb" in cells:
        snaps, times, _ = load_snapshots(tmp_path / "results/data/cells/eb.zarr")
        assert times.tolist() == [0, 6, 12, 18, 24] and np.allclose(snaps[4], np.load(eb)[4].astype(np.float32))
    if "emt" in cells:
        snaps, times, _ = load_snapshots(tmp_path / "results/data/cells/emt.zarr")
        assert [s.shape[0] for s in snaps] == [577, 885, 788, 883]
    assert (tmp_path / "results/logs/cells_ingest/lv.log").exists()
