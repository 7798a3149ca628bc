"""Cells ingestion refuses what it would otherwise guess (issue 12, items 6 and 9).

CSV without `features:`: a pandas index column, an integer index, a batch/sample/cluster
column, a column that only repeats the time, a true/false column, or a number column
with one typo is refused with the column, line and value and the key to set; the
features used are logged. Snapshots smaller than `min_cells` are refused at ingest.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from conftest import run_cli
from scorebridge.data.cells.store import ingest
from scorebridge.errors import ConfigError, InputError


def _frame(n_per: int = 12, times=(0, 1, 2), seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = n_per * len(times)
    return pd.DataFrame({"t": np.repeat(times, n_per), "g1": rng.normal(size=n), "g2": rng.normal(size=n)})


def _ingest(tmp_path, text_or_frame, spec=None, index=False):
    p = tmp_path / "in.csv"
    if isinstance(text_or_frame, pd.DataFrame):
        text_or_frame.to_csv(p, index=index)
    else:
        p.write_text(text_or_frame)
    out = tmp_path / "o.zarr"
    return ingest({"source": "csv", "time_key": "t", **(spec or {})}, p, out), p, out


def test_pandas_index_column_is_refused(tmp_path):
    # DataFrame.to_csv(index=True) writes an unnamed first column: 'Unnamed: 0' when read back
    df = _frame().sample(frac=1.0, random_state=0)  # shuffled rows: the index is a permutation
    with pytest.raises(InputError) as err:
        _ingest(tmp_path, df, index=True)
    msg = str(err.value)
    assert "'Unnamed: 0'" in msg and "features:" in msg and "g1" in msg
    assert not (tmp_path / "o.zarr").exists()
    # named, the same file is fine and the index column is ignored
    snaps, _, out = _ingest(tmp_path, df, {"features": ["g1", "g2"]}, index=True)
    assert snaps.features == ["g1", "g2"]


@pytest.mark.parametrize("start", [0, 1])
def test_integer_index_column_is_refused(tmp_path, start):
    df = _frame()
    df.insert(0, "row", np.arange(start, start + len(df)))
    with pytest.raises(InputError, match=rf"column 'row' .*{start}\.\.{start + len(df) - 1}.*features:"):
        _ingest(tmp_path, df)


@pytest.mark.parametrize("name", ["batch", "sample", "Cluster", "leiden", "donor_id", "replicate"])
def test_annotation_columns_are_refused(tmp_path, name):
    df = _frame()
    df[name] = np.tile([1, 2, 3, 4], len(df) // 4)  # integers that vary within a snapshot
    with pytest.raises(InputError, match=rf"column '{name}' .*features:"):
        _ingest(tmp_path, df)


def test_time_copy_and_booleans_are_refused(tmp_path):
    df = _frame()
    df["tt"] = df["t"] * 24.0  # the time again, in hours: one value per snapshot
    with pytest.raises(InputError, match=r"column 'tt' .*one value per time.*features:"):
        _ingest(tmp_path, df)
    df = _frame()
    df["pseudotime"] = np.linspace(0, 1, len(df))  # varies within snapshots, but named like a time
    with pytest.raises(InputError, match=r"column 'pseudotime' .*named like a time.*features:"):
        _ingest(tmp_path, df)
    df = _frame()
    df["doublet"] = np.arange(len(df)) % 3 == 0
    with pytest.raises(InputError, match=r"column 'doublet' .*true/false.*features:"):
        _ingest(tmp_path, df)


def test_typo_in_a_number_column_names_column_line_value(tmp_path):
    df = _frame()
    text = df.to_csv(index=False).splitlines()
    row = text[5].split(",")  # file line 6: header is line 1
    row[1] = "0.5x"
    text[5] = ",".join(row)
    with pytest.raises(InputError) as err:
        _ingest(tmp_path, "\n".join(text) + "\n")
    msg = str(err.value)
    assert "line 6" in msg and "'g1'" in msg and "'0.5x'" in msg
    # a typo in a named feature column: the same facts
    with pytest.raises(InputError, match=r"line 6: feature column 'g1' is not numeric \(value '0.5x'\)"):
        _ingest(tmp_path, "\n".join(text) + "\n", {"features": ["g1", "g2"]})


def test_line_numbers_count_blank_and_quoted_lines(tmp_path):
    text = 't,g1,note\n0,1,"two\nlines"\n\n0,2,a\n1,x,b\n1,4,c\n'
    with pytest.raises(InputError, match=r"line 6: feature column 'g1' is not numeric \(value 'x'\)"):
        _ingest(tmp_path, text, {"features": ["g1"], "min_cells": 1})


def test_text_columns_are_left_out_and_features_logged(tmp_path, caplog):
    df = _frame()
    df["label"] = ["a", "b", "c"] * (len(df) // 3)
    with caplog.at_level(logging.INFO, logger="scorebridge.data.cells"):
        snaps, _, out = _ingest(tmp_path, df)
    assert snaps.features == ["g1", "g2"]
    assert "features (2): g1, g2" in caplog.text and "'label'" in caplog.text


def test_min_cells_per_snapshot(tmp_path):
    df = _frame(n_per=12)
    df = df[~((df["t"] == 1) & (df.index % 12 >= 3))]  # t = 1 keeps 3 cells
    with pytest.raises(InputError) as err:
        _ingest(tmp_path, df)
    msg = str(err.value)
    assert "time 1" in msg and "3 cells" in msg and "min_cells" in msg and "10" in msg
    assert not (tmp_path / "o.zarr").exists()
    snaps, _, out = _ingest(tmp_path, df, {"min_cells": 3})
    assert json.loads(xr.open_zarr(out, consolidated=False).attrs["n_cells"]) == [12, 3, 12]
    # text labels: the message names the label too
    lab = df.assign(t=df["t"].map({0: "day0", 1: "day1", 2: "day2"}))
    with pytest.raises(InputError, match=r"time 1 \(label 'day1'\) has 3 cells"):
        _ingest(tmp_path, lab)
    # arrays: every source is checked
    np.save(tmp_path / "a.npy", np.zeros((3, 4, 2)))
    with pytest.raises(InputError, match=r"time 0 has 4 cells.*min_cells"):
        ingest({"source": "npy"}, tmp_path / "a.npy", tmp_path / "a.zarr")
    with pytest.raises(ConfigError, match="min_cells"):
        ingest({"source": "npy", "min_cells": 0}, tmp_path / "a.npy", tmp_path / "a.zarr")


def test_cli_says_which_key_to_set(tmp_path):
    df = _frame()
    df.insert(0, "batch", np.tile([1, 2], len(df) // 2))
    p = tmp_path / "b.csv"
    df.to_csv(p, index=False)
    proc = run_cli(
        "cells-ingest",
        "--spec",
        json.dumps({"source": "csv", "time_key": "t"}),
        "--out",
        tmp_path / "o.zarr",
        p,
        check=False,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "column 'batch'" in proc.stderr and "features:" in proc.stderr
