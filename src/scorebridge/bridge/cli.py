"""CLI of the bridge stage: `scorebridge bridge-fit` and `scorebridge bridge-evaluate`.

bridge-fit       fit the multi-marginal SB with iterative reference refinement on every
                 snapshot of a cells zarr -> model.pt; iterations logged to MLflow.
bridge-evaluate  held-out evaluation (leave one time point out, or an explicit split) of
                 the model, the vanilla SB and the baselines -> metrics.json,
                 predictions.zarr, figures/; parameter recovery on simulated data.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..tracking import job_run

__all__ = ["fit_cli", "evaluate_cli", "load_cells"]

log = logging.getLogger(__name__)


def load_cells(path) -> tuple[list[np.ndarray], list[float], dict, list[str] | None]:
    """(snapshots, times, attrs, feature names) from a cells zarr (the data contract)."""
    from ..io import open_store

    path = Path(path)
    ds = open_store(path, "cells")
    for var in ("X", "time"):
        if var not in ds:
            raise InputError(f"missing variable '{var}' (the cells contract: X (cell, feature), time (cell))", path)
    X = np.asarray(ds["X"].values, dtype=np.float64)
    t = np.asarray(ds["time"].values, dtype=np.float64)
    if X.ndim != 2 or t.shape != (X.shape[0],):
        raise InputError(f"X must be (cell, feature) and time (cell), got {X.shape} and {t.shape}", path)
    if np.isnan(t).any():
        raise InputError(f"{int(np.isnan(t).sum())} cells have a missing (NaN) time label", path)
    bad = ~np.isfinite(X).all(1)
    if bad.any():
        raise InputError(f"{int(bad.sum())} cells have NaN or infinite features (first: cell index {int(np.argmax(bad))})", path)
    times = np.unique(t)
    feats = [str(f) for f in ds["feature"].values] if "feature" in ds.coords else None
    return [X[t == v] for v in times], [float(v) for v in times], dict(ds.attrs), feats


def subsample_snapshots(snaps: list[np.ndarray], times: list[float], max_cells: int | None, seed: int) -> tuple[list[np.ndarray], dict]:
    """At most `max_cells` cells per snapshot: a seeded subsample without replacement of
    each larger snapshot (the same cells for bridge-fit and bridge-evaluate, given the seed).
    Returns the snapshots and a record {time label: [cells kept, cells observed]} of the
    snapshots that were cut (empty when none was)."""
    if max_cells is None:
        return snaps, {}
    out, cut = [], {}
    for k, (x, t) in enumerate(zip(snaps, times)):
        if x.shape[0] <= max_cells:
            out.append(x)
            continue
        rng = np.random.default_rng([int(seed), k])
        keep = np.sort(rng.choice(x.shape[0], size=int(max_cells), replace=False))
        out.append(x[keep])
        cut[f"t={t:g}"] = [int(max_cells), int(x.shape[0])]
    if cut:
        log.warning("max_cells=%d: subsampled %d of %d snapshots (%s); set max_cells: null to use every cell",
                    max_cells, len(cut), len(snaps), ", ".join(f"{k}: {a} of {b} cells" for k, (a, b) in cut.items()))
    return out, cut


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec", required=True, help="the experiment's config entry as JSON")
    p.add_argument("--experiment", default="default", help="experiment name (MLflow)")
    p.add_argument("--cells", required=True, help="cells zarr (X (cell, feature), time (cell))")
    p.add_argument("--experiments", default=None, help="results/mlflow/experiments.json (omit: no MLflow)")


def _seed(spec: dict) -> int:
    """The experiment's seed; also pins torch to few threads (small dense problems run
    fastest single-threaded; SCOREBRIDGE_TORCH_THREADS overrides)."""
    import os

    import torch

    torch.set_num_threads(int(os.environ.get("SCOREBRIDGE_TORCH_THREADS", "1")))
    return int(spec.get("seed") or 0)


def fit_cli(argv: list[str]) -> int:
    from ..config import parse_spec
    from .fit import fit_bridge, save_model

    p = argparse.ArgumentParser(prog="scorebridge bridge-fit", description="fit the multi-marginal SB with iterative reference refinement")
    _common(p)
    p.add_argument("--out", required=True, help="model.pt to write")
    a = p.parse_args(argv)
    spec = parse_spec(a.spec)
    import torch

    torch.manual_seed(_seed(spec))
    snaps, times, attrs, feats = load_cells(a.cells)
    snaps, cut = subsample_snapshots(snaps, times, spec.get("max_cells"), _seed(spec))
    with job_run(a.experiments, kind="bridge", experiment=a.experiment, rule="bridge_fit",
                 wildcards={"experiment": a.experiment}, spec=spec, datasets={"cells": a.cells}) as run:

        def on_iteration(it: int, rec: dict) -> None:
            m = {"fit/objective": rec["objective"], "fit/seconds": rec["seconds"], "fit/sinkhorn_iterations": rec["sinkhorn_iterations"]}
            if math.isfinite(rec["rel_change"]):
                m["fit/rel_change"] = rec["rel_change"]
            if math.isfinite(rec["nll"]):
                m["fit/nll"] = rec["nll"]
            m.update({f"param/{k}": v for k, v in list(rec["params"].items())[:200]})
            run.log_metrics(m, step=it)
            log.info("iteration %d: objective %.5g, relative change %.3g, %s", it, rec["objective"], rec["rel_change"],
                     ", ".join(f"{k}={v:.4g}" for k, v in list(rec["params"].items())[:8]))

        result = fit_bridge(snaps, times, spec.get("model"), callback=on_iteration, progress=True, where=a.cells, seed=_seed(spec))
        extra = {"features": feats, "true_parameters": attrs.get("true_parameters"), "cells": str(a.cells), "subsampled": cut}
        save_model(result, a.out, extra)
        final = {"fit/total_seconds": result.seconds, "fit/iterations": len(result.history), "fit/converged": float(result.converged)}
        for key in ("sigma_fitted", "sigma_bootstrap"):  # σ before the bootstrap debias, and its bootstrap refit
            for i, v in enumerate(result.history[-1].get(key, []) if result.history else []):
                final[f"fit/{key}" + (f"[{i}]" if len(result.history[-1][key]) > 1 else "")] = float(v)
        if attrs.get("true_parameters"):
            from .evaluate import parameter_recovery

            final.update(parameter_recovery(result, attrs["true_parameters"]))
        run.log_metrics(final)
        run.log_artifact(a.out)
    log.info("fitted in %.1f s (%d iterations, converged: %s): %s", result.seconds, len(result.history), result.converged, result.reference.describe())
    return 0


def evaluate_cli(argv: list[str]) -> int:
    from ..config import parse_spec
    from ..io import atomic_path, write_json
    from .evaluate import leave_one_out, parameter_recovery, write_predictions, _true_values
    from .figures import plot_marginals, plot_parameters, plot_trajectories
    from .fit import load_model

    p = argparse.ArgumentParser(prog="scorebridge bridge-evaluate", description="held-out evaluation against baselines; figures; MLflow")
    _common(p)
    p.add_argument("--model", required=True, help="model.pt from bridge-fit (all snapshots)")
    p.add_argument("--predictions", required=True, help="predictions.zarr to write")
    p.add_argument("--figures", required=True, help="directory for the figures")
    p.add_argument("--out", required=True, help="metrics.json to write")
    a = p.parse_args(argv)
    spec = parse_spec(a.spec)
    import torch

    from ..plots import save_figure

    seed = _seed(spec)
    torch.manual_seed(seed)
    snaps, times, attrs, feats = load_cells(a.cells)
    snaps, cut = subsample_snapshots(snaps, times, spec.get("max_cells"), seed)
    result, raw = load_model(a.model)
    ev_cfg = dict(spec.get("evaluate") or {})
    with job_run(a.experiments, kind="bridge", experiment=a.experiment, rule="bridge_evaluate",
                 wildcards={"experiment": a.experiment}, spec=spec, datasets={"cells": a.cells, "model": a.model}) as run:
        start = time.perf_counter()
        ev = leave_one_out(snaps, times, result.spec, spec.get("baselines"), ev_cfg.get("holdout", "loo"), seed, ev_cfg.get("n_particles"), spec.get("vanilla_sb"))
        metrics = dict(ev.metrics)
        metrics["evaluate/seconds"] = time.perf_counter() - start
        metrics["fit/total_seconds"] = result.seconds
        metrics["fit/iterations"] = len(result.history)
        truth = attrs.get("true_parameters")
        if truth:
            metrics.update(parameter_recovery(result, truth))
        write_predictions(a.predictions, ev, snaps, times, feats)
        with atomic_path(a.figures) as tmp:
            tmp.mkdir(parents=True)
            gen = torch.Generator().manual_seed(seed)
            ttimes, paths = result.bridge.trajectories(int(ev_cfg.get("trajectories", 100)), 8, gen)
            save_figure(plot_trajectories(snaps, times, ttimes, paths, f"{a.experiment}: {result.reference.kind} reference"), tmp / "trajectories.png", run=run)
            save_figure(plot_marginals(ev.predictions, snaps, times, metrics), tmp / "marginals.png", run=run)
            save_figure(plot_parameters(result.history, {k: v for k, v in _true_values(truth).items()} if truth else None), tmp / "parameters.png", run=run)
        out = {
            "metrics": metrics,
            "splits": [[times[k] for k in s] for s in ev.splits],
            "fit": {"reference": result.reference.kind, "parameters": result.reference.describe(), "converged": result.converged,
                    "iterations": len(result.history), "seconds": result.seconds},
            "true_parameters": json.loads(truth) if isinstance(truth, str) else truth,
            "subsampled": cut,
        }
        write_json(a.out, out)
        run.log_metrics({k: v for k, v in metrics.items() if isinstance(v, float) and math.isfinite(v)})
        run.log_artifact(a.out)
    summary = ", ".join(f"{m} {metrics[f'w1/{m}/mean']:.3f}" for m in ("model", "vanilla_sb", "otcfm", "mccann", "previous") if f"w1/{m}/mean" in metrics)
    log.info("mean held-out W1: %s", summary)
    return 0
