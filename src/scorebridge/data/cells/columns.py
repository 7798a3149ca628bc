"""Which CSV columns are features, and where each row sits in the file.

With `features: null` the features are the numeric columns besides the time, but only
when none of them is doubtful. A column is refused, with the key to set, when it is:

- a pandas index written by ``to_csv`` (``Unnamed: 0``, any ``Unnamed: *``);
- an integer row index (unique integers 0..n-1 or 1..n, in any order);
- an integer column named like a cell annotation (batch, sample, cluster, donor,
  replicate, plate, ...) or any numeric column named like a time (day, hour, pseudotime);
- a column holding one value per time point (a copy of the time, or a per-sample label);
- a true/false column;
- a column of numbers with text in some cells (a typo such as ``0.5x``): the error
  names the column, the file line and the value.

Columns of text only are left out (logged). The file lines are counted as in the file:
the header is line 1, blank lines and line breaks inside quoted fields count.
"""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path

import numpy as np

from ...errors import InputError

__all__ = ["show", "csv_lines", "pick_features", "check_features"]

log = logging.getLogger(__name__)

# tokens of a column name that mark a cell annotation when the column holds integers
ANNOTATION_WORDS = frozenset(
    """batch batches sample samples cluster clusters clustering leiden louvain seurat donor donors replicate
    replicates rep plate plates lane lanes well wells library patient patients subject subjects individual
    mouse embryo condition conditions group groups treatment label labels class category type celltype
    id ids idx index barcode cell cells run experiment dataset source tissue lineage clone phase""".split()
)
# tokens that mark a second time column (any numeric column)
TIME_WORDS = frozenset("time times day days hour hours hpf timepoint timepoints pseudotime dpt age week weeks".split())
HINT = "list the feature columns under `features:` in the dataset's config (cells.<name>.features)"


def show(items, limit: int = 5) -> str:
    """The first `limit` items, comma-separated, and how many more."""
    items = list(items)
    text = ", ".join(map(str, items[:limit]))
    return text + (f" (and {len(items) - limit} more)" if len(items) > limit else "")


def csv_lines(path: Path, n_rows: int) -> list[int]:
    """The 1-based file line where each of the `n_rows` data rows starts (header = line 1),
    counting blank lines and line breaks inside quoted fields as pandas skips them; row
    index + 2 when the file cannot be read that way."""
    starts: list[int] = []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            prev, header = 0, False
            for record in reader:
                first, prev = prev + 1, reader.line_num
                if not any(field.strip() for field in record):
                    continue  # blank line: pandas skips it
                if not header:
                    header = True
                    continue
                starts.append(first)
    except (OSError, UnicodeDecodeError, csv.Error):
        starts = []
    return starts if len(starts) == n_rows else [i + 2 for i in range(n_rows)]


def _tokens(name: str) -> set[str]:
    low = str(name).strip().lower()
    words = {w for w in re.split(r"[^a-z]+", low) if w}
    whole = re.sub(r"[^a-z]", "", low)
    return words | {whole, re.sub(r"(id|ids|nr|no)$", "", whole)}


def _integers(values: np.ndarray) -> bool:
    v = values[np.isfinite(values)]
    return v.size > 0 and v.size == values.size and bool(np.all(v == np.round(v)))


def _index_like(values: np.ndarray) -> str | None:
    """'0..n-1' or '1..n' when `values` are those integers, each once; else None."""
    n = values.size
    if n < 2 or not np.all(np.isfinite(values)) or values.min() not in (0, 1) or values.max() != values.min() + n - 1:
        return None
    if not _integers(values):
        return None
    s = np.sort(values)
    for start in (0, 1):
        if s[0] == start and np.array_equal(s, np.arange(start, start + n)):
            return f"{start}..{start + n - 1}"
    return None


def _bad_cell(df, column: str, lines: list[int]) -> tuple[int, str] | None:
    """(file line, text) of the first non-missing cell of `column` that is not a number."""
    import pandas as pd

    raw = df[column]
    bad = (pd.to_numeric(raw, errors="coerce").isna() & raw.notna()).to_numpy()
    if not bad.any():
        return None
    i = int(np.flatnonzero(bad)[0])
    return lines[i], str(raw.iloc[i])


def _per_time(df, columns: list, time_key: str) -> set:
    """The columns among `columns` that hold one value per time point (and more than one
    value in all), when some time point has two cells or more."""
    import pandas as pd

    if not columns:
        return set()
    codes = pd.factorize(df[time_key])[0]
    order = np.argsort(codes, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(codes[order]) != 0])
    if not (np.diff(np.r_[starts, len(codes)]) > 1).any():
        return set()
    X = df[columns].to_numpy(dtype=np.float64)
    lo, hi = np.fmin.reduceat(X[order], starts, axis=0), np.fmax.reduceat(X[order], starts, axis=0)
    constant = np.all((lo == hi) | (np.isnan(lo) & np.isnan(hi)), axis=0)
    varied = np.fmin.reduce(X, axis=0) != np.fmax.reduce(X, axis=0)
    return {c for c, yes in zip(columns, constant & varied) if yes}


def _doubt(df, column: str, time_key: str, per_time: set) -> str | None:
    """Why a numeric column should not silently become a feature, or None."""
    import pandas as pd

    col = df[column]
    name = str(column)
    if name.startswith("Unnamed:"):
        return "is an unnamed column (a pandas index written by DataFrame.to_csv)"
    if pd.api.types.is_bool_dtype(col):
        return "holds true/false values (an annotation, not a measurement)"
    values = col.to_numpy(dtype=np.float64)
    span = _index_like(values)
    if span is not None:
        return f"holds the integers {span}, each once: a row index"
    words = _tokens(name)
    if words & TIME_WORDS:
        return f"is named like a time besides the time column '{time_key}'"
    if words & ANNOTATION_WORDS and _integers(values):
        return "holds integers and is named like a cell annotation (batch, sample, cluster, ...)"
    if column in per_time:
        return "holds one value per time point (a copy of the time or a per-sample label)"
    return None


def pick_features(df, time_key: str, path: Path, lines: list[int]) -> list[str]:
    """The feature columns of a CSV read without `features:` (see the module doc)."""
    import pandas as pd

    features, text, refused = [], [], []
    numeric = [c for c in df.columns if c != time_key and pd.api.types.is_numeric_dtype(df[c])]
    per_time = _per_time(df, numeric, time_key)
    for column in df.columns:
        if column == time_key:
            continue
        col = df[column]
        if column in numeric:
            why = _doubt(df, column, time_key, per_time)
            if why:
                refused.append(f"column '{column}' {why}")
            else:
                features.append(str(column))
            continue
        bad = _bad_cell(df, column, lines)
        numbers = pd.to_numeric(col, errors="coerce").notna().sum()
        if bad is not None and numbers > 0:
            line, value = bad
            raise InputError(
                f"column '{column}' holds numbers but also the text {value!r}; if '{column}' is a feature, "
                f"correct that value; if it is not, {HINT}",
                path,
                line=line,
            )
        text.append(str(column))
    if refused:
        raise InputError(
            f"cannot tell the features without `features:`: {'; '.join(refused)}; {HINT} "
            f"(the other numeric columns: {show(features, 20) or 'none'})",
            path,
        )
    if not features:
        raise InputError(f"no numeric feature columns besides '{time_key}'", path)
    if text:
        log.info("columns of text left out of the features: %s", ", ".join(f"'{c}'" for c in text))
    return features


def check_features(df, features: list[str], path: Path, lines: list[int]) -> None:
    """Every feature column is numeric and finite; else name the column, line and value."""
    import pandas as pd

    for c in features:
        if not pd.api.types.is_numeric_dtype(df[c]):
            bad = _bad_cell(df, c, lines)
            line, value = bad if bad is not None else (lines[0] if lines else None, str(df[c].iloc[0]))
            raise InputError(f"feature column '{c}' is not numeric (value {value!r})", path, line=line)
    X = df[list(features)].to_numpy(dtype=np.float64)
    bad_rows = np.flatnonzero(~np.all(np.isfinite(X), axis=1))
    if bad_rows.size:
        where = []
        for i in bad_rows[:5]:
            cols = [c for j, c in enumerate(features) if not np.isfinite(X[i, j])]
            where.append(f"line {lines[i]} (column {', '.join(repr(c) for c in cols)}: {df[cols[0]].iloc[i]})")
        more = f" (and {bad_rows.size - 5} more)" if bad_rows.size > 5 else ""
        raise InputError(f"NaN or infinite feature values in {bad_rows.size} row(s): {', '.join(where)}{more}", path)
