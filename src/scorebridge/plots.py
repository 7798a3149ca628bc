"""Figures, headless: one call saves a figure to the rule's output (hence the Snakemake
report) and to the job's MLflow run at once; metrics tables for the report.

    from scorebridge.plots import new_figure, save_figure
    fig, ax = new_figure()
    ax.plot(...)
    save_figure(fig, f"{figures}/power_spectra.png", run=run)
"""

from __future__ import annotations

import argparse
import html
import math
import os
from pathlib import Path
from typing import Any, Mapping

import matplotlib

matplotlib.use("Agg")  # headless: no display on cluster nodes; set before pyplot is imported

import matplotlib.pyplot as plt  # noqa: E402

from .errors import InputError  # noqa: E402
from .io import atomic_path, read_json  # noqa: E402

__all__ = ["DPI", "new_figure", "save_figure", "flatten_metrics", "metrics_table_html", "metrics_table_cli"]

DPI = 120


def new_figure(nrows: int = 1, ncols: int = 1, width: float = 4.0, height: float = 3.2, **kwargs: Any):
    """`plt.subplots` sized per panel (inches), constrained layout."""
    kwargs.setdefault("constrained_layout", True)
    return plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=kwargs.pop("squeeze", True), **kwargs)


def save_figure(fig, path: str | os.PathLike, run=None, dpi: int = DPI, artifact_path: str = "figures") -> Path:
    """Write `fig` as PNG to `path` atomically, log it to `run` under `figures/`, close it.

    `run` is the `TrackedRun` of `scorebridge.tracking.tracked_run` (or None: file only).
    The figure is closed even if writing fails, so long loops do not leak memory.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"save_figure writes PNG; got '{path.name}' (use a .png name)")
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, metadata={"Software": "scorebridge"})
    finally:
        plt.close(fig)
    if run is not None:
        run.log_artifact(path, artifact_path)
    return path


# --------------------------------------------------------------------------- metrics tables


def flatten_metrics(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested metrics.json -> {'rmse/t/850': 1.3, ...} (keys joined with '/')."""
    out: dict[str, Any] = {}
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            out.update(flatten_metrics(v, f"{prefix}/{k}" if prefix else str(k)))
    elif isinstance(obj, list) and obj and all(isinstance(v, (int, float)) or v is None for v in obj) and len(obj) > 8:
        out[prefix] = f"[{len(obj)} values]"
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.update(flatten_metrics(v, f"{prefix}/{i}"))
    else:
        out[prefix] = obj
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return "" if v is None else str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "NaN"
        if v == 0 or 1e-3 <= abs(v) < 1e5:
            return f"{v:.4g}"
        return f"{v:.3e}"
    return str(v)


def metrics_table_html(metrics: Mapping[str, Any], title: str) -> str:
    """A standalone HTML page: one table per top-level group of metrics.

    Keys of the form `group/name/...` are grouped by `group`; inside a group, when keys
    share the form `<metric>/<rest>` with several metrics over the same rest (e.g.
    `rmse/t/850`, `crps/t/850`), they are pivoted into rows = rest, columns = metric.
    """
    flat = flatten_metrics(metrics)
    groups: dict[str, dict[str, Any]] = {}
    for k, v in flat.items():
        head, _, tail = k.partition("/")
        groups.setdefault(head if tail else "", {})[tail or head] = v
    # merge groups that are themselves single scalars into one "summary" table
    parts = ["<!DOCTYPE html><html><head><meta charset='utf-8'>",
             f"<title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;font-size:13px}table{border-collapse:collapse;margin:0 0 1.5em}"
             "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
             "th{background:#eee}caption{font-weight:bold;text-align:left;padding:4px 0}</style></head><body>",
             f"<h3>{html.escape(title)}</h3>"]
    scalars = {k: v for k, v in groups.pop("", {}).items()}
    for g in list(groups):
        if len(groups[g]) == 1 and "/" not in next(iter(groups[g])):
            (name, value), = groups[g].items()
            scalars[f"{g}/{name}"] = value
            del groups[g]
    if scalars:
        parts.append(_table("summary", ["metric", "value"], [[k, _fmt(v)] for k, v in sorted(scalars.items())]))
    for g, items in groups.items():
        # pivot `<metric>/<rest>` when metric names repeat over the same rests
        split = [(k.partition("/")[0], k.partition("/")[2], v) for k, v in items.items()]
        cols = sorted({m for m, rest, _ in split if rest})
        rows = sorted({rest for _, rest, _ in split if rest})
        if len(cols) > 1 and all(rest for _, rest, _ in split) and len(rows) * len(cols) <= 4 * len(split):
            cell = {(rest, m): v for m, rest, v in split}
            body = [[r] + [_fmt(cell.get((r, c))) for c in cols] for r in rows]
            parts.append(_table(g, [""] + cols, body))
        else:
            parts.append(_table(g, ["metric", "value"], [[k, _fmt(v)] for k, v in sorted(items.items())]))
    parts.append("</body></html>")
    return "\n".join(parts)


def _table(caption: str, header: list[str], rows: list[list[str]]) -> str:
    h = "".join(f"<th>{html.escape(str(c))}</th>" for c in header)
    b = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><caption>{html.escape(caption)}</caption><tr>{h}</tr>{b}</table>"


def metrics_table_cli(argv: list[str]) -> int:
    """`scorebridge metrics-table --metrics metrics.json --title T --out metrics.html`."""
    ap = argparse.ArgumentParser(prog="scorebridge metrics-table", description=metrics_table_cli.__doc__)
    ap.add_argument("--metrics", required=True, help="metrics.json written by an evaluate rule")
    ap.add_argument("--title", default=None)
    ap.add_argument("--out", required=True, help="HTML table to write (shown in the Snakemake report)")
    args = ap.parse_args(argv)
    import json

    try:
        metrics = read_json(args.metrics)
    except FileNotFoundError:
        raise InputError("not found", args.metrics) from None
    except json.JSONDecodeError as err:
        raise InputError(f"not valid JSON: {err.msg}", args.metrics, err.lineno) from None
    if not isinstance(metrics, dict):
        raise InputError("expected a JSON object of metrics", args.metrics)
    title = args.title or f"Metrics: {Path(args.metrics).parent.name}"
    with atomic_path(args.out) as tmp:
        tmp.write_text(metrics_table_html(metrics, title))
    return 0
