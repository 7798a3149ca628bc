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

from .errors import InputError
from .io import atomic_path, read_json

# Headless: no display on cluster nodes. Agg can be selected even after pyplot was imported.
matplotlib.use("Agg")

__all__ = ["DPI", "new_figure", "save_figure", "flatten_metrics", "metrics_table_html", "metrics_table_cli"]

DPI = 120


def new_figure(nrows: int = 1, ncols: int = 1, width: float = 4.0, height: float = 3.2, **kwargs: Any):
    """`plt.subplots` sized per panel (inches), constrained layout."""
    import matplotlib.pyplot as plt

    kwargs.setdefault("constrained_layout", True)
    return plt.subplots(
        nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=kwargs.pop("squeeze", True), **kwargs
    )


def save_figure(fig, path: str | os.PathLike, run=None, dpi: int = DPI, artifact_path: str = "figures") -> Path:
    """Write `fig` as PNG to `path` atomically, log it to `run` under `figures/`, close it.

    `run` is the `TrackedRun` of `scorebridge.tracking.tracked_run` (or None: file only).
    The figure is closed even if writing fails, so long loops do not leak memory.
    """
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        if path.suffix.lower() != ".png":
            raise ValueError(f"save_figure writes PNG; got '{path.name}' (use a .png name)")
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
    """A standalone HTML page of a metrics.json, readable at a glance.

    Keys are flattened with '/' (a top-level `metrics` wrapper is dropped). A key
    `<metric>/<rest>` (e.g. `rmse/t/850`, `rmse/t/850/bicubic`) becomes the cell (row `rest`,
    column `metric`) of one pivot table, for every metric whose rows are shared with
    another metric; other groups get their own two-column table, plain scalars a summary
    table. Arrays (spectra, histograms) are listed by size only: they are in the figures.
    """
    flat = flatten_metrics(metrics)
    if all(
        k.startswith("metrics/") for k in flat if not isinstance(flat[k], str) or not flat[k].startswith("[")
    ) and any(k.startswith("metrics/") for k in flat):
        flat = {(k[len("metrics/") :] if k.startswith("metrics/") else k): v for k, v in flat.items()}
    scalars: dict[str, Any] = {}
    arrays: dict[str, Any] = {}
    groups: dict[str, dict[str, Any]] = {}
    for k, v in flat.items():
        if isinstance(v, str) and v.startswith("[") and v.endswith("values]"):
            arrays[k] = v
            continue
        head, _, rest = k.partition("/")
        if rest:
            groups.setdefault(head, {})[rest] = v
        else:
            scalars[k] = v
    rows_of = {g: set(items) for g, items in groups.items()}
    pivot = [g for g in groups if any(rows_of[g] & rows_of[h] for h in groups if h != g)]
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;font-size:13px}table{border-collapse:collapse;margin:0 0 1.5em}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
        "th{background:#eee}caption{font-weight:bold;text-align:left;padding:4px 0}</style></head><body>",
        f"<h3>{html.escape(title)}</h3>",
    ]
    if scalars:
        parts.append(_table("overall", ["metric", "value"], [[k, _fmt(v)] for k, v in sorted(scalars.items())]))
    if pivot:
        cols = sorted(pivot)
        rows = sorted(set().union(*(rows_of[g] for g in pivot)), key=_row_key)
        body = [[r] + [_fmt(groups[c].get(r)) for c in cols] for r in rows]
        parts.append(
            _table("by variable / level (columns: metric; rows ending in a name: that baseline)", [""] + cols, body)
        )
    for g in sorted(set(groups) - set(pivot)):
        parts.append(
            _table(
                g, ["", "value"], [[k, _fmt(v)] for k, v in sorted(groups[g].items(), key=lambda kv: _row_key(kv[0]))]
            )
        )
    if arrays:
        parts.append(
            "<p>Arrays in metrics.json (shown in the figures): "
            + ", ".join(f"<code>{html.escape(k)}</code> {html.escape(v)}" for k, v in sorted(arrays.items()))
            + "</p>"
        )
    parts.append("</body></html>")
    return "\n".join(parts)


def _row_key(row: str) -> tuple:
    """Sort `t/850` before `t/850/bicubic`, and levels numerically."""
    return tuple((0, float(p), "") if p.replace(".", "", 1).isdigit() else (1, 0.0, p) for p in row.split("/"))


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
