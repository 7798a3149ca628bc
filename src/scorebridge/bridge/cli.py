"""CLI of the bridge stage: `scorebridge bridge-fit` and `scorebridge bridge-evaluate`.

bridge-fit       fit the multi-marginal SB with iterative reference refinement on every
                 snapshot of a cells zarr -> model.pt; iterations logged to MLflow.
bridge-evaluate  held-out evaluation (leave one time point out, or an explicit split) of
                 the model, the vanilla SB and the baselines -> metrics.json,
                 predictions.zarr, figures/; parameter recovery on simulated data.
"""

from __future__ import annotations

import json
import logging
import math
import time

import numpy as np

from ..data.cells.store import read_cells
from ..tracking import job_run
from .inputs import check_cells

__all__ = ["fit_cli", "evaluate_cli"]

log = logging.getLogger(__name__)


def subsample_indices(n: int, k: int, max_cells: int | None, seed: int) -> np.ndarray | None:
    """The cells kept of snapshot k's n cells (sorted; None: all): a seeded subsample without
    replacement of at most `max_cells`."""
    if max_cells is None or n <= max_cells:
        return None
    rng = np.random.default_rng([int(seed), k])
    return np.sort(rng.choice(n, size=int(max_cells), replace=False))


def subsample_snapshots(
    snaps: list[np.ndarray], times: list[float], max_cells: int | None, seed: int
) -> tuple[list[np.ndarray], dict]:
    """At most `max_cells` cells per snapshot: a seeded subsample without replacement of
    each larger snapshot (the same cells for bridge-fit and bridge-evaluate, given the seed).
    Returns the snapshots and a record {time label: [cells kept, cells observed]} of the
    snapshots that were cut (empty when none was)."""
    if max_cells is None:
        return snaps, {}
    out, cut = [], {}
    for k, (x, t) in enumerate(zip(snaps, times)):
        keep = subsample_indices(x.shape[0], k, max_cells, seed)
        if keep is None:
            out.append(x)
            continue
        out.append(x[keep])
        cut[f"t={t:g}"] = [int(max_cells), int(x.shape[0])]
    if cut:
        log.warning(
            "max_cells=%d: subsampled %d of %d snapshots (%s); set max_cells: null to use every cell",
            max_cells,
            len(cut),
            len(snaps),
            ", ".join(f"{k}: {a} of {b} cells" for k, (a, b) in cut.items()),
        )
    return out, cut


def cell_names(path, times: list[float], max_cells: int | None, seed: int) -> list[list[str]] | None:
    """The names of the cells `read_cells` + `subsample_snapshots` return, per snapshot (the
    store's `cell` coordinate; None when it has none)."""
    from ..io import open_store

    ds = open_store(path, "cells")
    if "cell" not in ds.coords:
        return None
    names = np.array([str(c) for c in ds["cell"].values], dtype=object)  # zarr v3 strings read back as StringDType
    t = np.asarray(ds["time"].values, dtype=np.float64)
    out = []
    for k, v in enumerate(times):
        sel = names[t == v]
        keep = subsample_indices(sel.size, k, max_cells, seed)
        out.append([str(c) for c in (sel if keep is None else sel[keep])])
    return out


def _parser(command: str, description: str):
    """The shared job arguments (`--spec`, `--experiment`, `--experiments`) and `--cells`."""
    from ..cli import job_parser

    p = job_parser(command, description, experiment_default="default")  # the name MLflow files the run under
    p.add_argument("--cells", required=True, help="cells zarr (X (cell, feature), time (cell))")
    return p


def _options(text: str):
    """The `--spec` entry as `BridgeOptions` (validated, schema defaults filled in), and the
    experiment's seed; also pins torch to few threads (small dense problems run fastest
    single-threaded; SCOREBRIDGE_TORCH_THREADS overrides)."""
    import os

    import torch

    from ..config import parse_spec
    from .options import bridge_options

    spec = parse_spec(text)
    opts = bridge_options(spec)
    torch.set_num_threads(int(os.environ.get("SCOREBRIDGE_TORCH_THREADS", "1")))
    return spec, opts, opts.run_seed


def selection_params(record: dict, prefix: str = "select") -> dict[str, str]:
    """MLflow params of a selection record: mode, the chosen class, σ scale and prediction mode, and why."""
    out = {f"{prefix}/mode": str(record["mode"])}
    for k, v in record["chosen"].items():
        out[f"{prefix}/{k}"] = str(v)
    if "reason" in record:
        out[f"{prefix}/reason"] = str(record["reason"])[:250]
    return out


def fit_cli(argv: list[str]) -> int:
    from .fit import fit_bridge
    from .model_io import save_model
    from .options import as_section
    from .select import FitCache, select_model

    p = _parser("bridge-fit", "fit the multi-marginal SB with iterative reference refinement")
    p.add_argument("--out", required=True, help="model.pt to write")
    a = p.parse_args(argv)
    spec, opts, seed = _options(a.spec)
    import torch

    torch.manual_seed(seed)
    snaps, times, attrs, feats = read_cells(a.cells)
    check_cells(snaps, times, opts, a.experiment, a.cells)  # before any fit: min_cells, holdout
    snaps, cut = subsample_snapshots(snaps, times, opts.max_cells, seed)
    with job_run(
        a.experiments,
        kind="bridge",
        experiment=a.experiment,
        rule="bridge_fit",
        wildcards={"experiment": a.experiment},
        spec=spec,
        datasets={"cells": a.cells},
        system_metrics=True,
    ) as run:

        def on_iteration(it: int, rec: dict) -> None:
            m = {
                "fit/objective": rec["objective"],
                "fit/seconds": rec["seconds"],
                "fit/sinkhorn_iterations": rec["sinkhorn_iterations"],
            }
            if math.isfinite(rec["rel_change"]):
                m["fit/rel_change"] = rec["rel_change"]
            if math.isfinite(rec["nll"]):
                m["fit/nll"] = rec["nll"]
            m.update({f"param/{k}": v for k, v in list(rec["params"].items())[:200]})
            run.log_metrics(m, step=it)
            log.info(
                "iteration %d: objective %.5g, relative change %.3g, %s",
                it,
                rec["objective"],
                rec["rel_change"],
                ", ".join(f"{k}={v:.4g}" for k, v in list(rec["params"].items())[:8]),
            )

        from .fit import check_snapshots

        check_snapshots(snaps, times, a.cells)
        selection = select_model(FitCache(snaps, times, seed), range(len(times)), opts.model)
        run.log_params(selection_params(selection.record))
        result = fit_bridge(
            snaps, times, selection.options, callback=on_iteration, progress=True, where=a.cells, seed=seed
        )
        extra = {
            "features": feats,
            "true_parameters": attrs.get("true_parameters"),
            "cells": str(a.cells),
            "subsampled": cut,
            "selection": selection.record,
            "configured": as_section(opts.model),
        }
        save_model(result, a.out, extra)
        final = {
            "fit/total_seconds": result.seconds,
            "fit/iterations": len(result.history),
            "fit/converged": float(result.converged),
        }
        for key in ("sigma_fitted", "sigma_bootstrap"):  # σ before the bootstrap debias, and its bootstrap refit
            for i, v in enumerate(result.history[-1].get(key, []) if result.history else []):
                final[f"fit/{key}" + (f"[{i}]" if len(result.history[-1][key]) > 1 else "")] = float(v)
        if attrs.get("true_parameters"):
            from .evaluate import parameter_recovery

            final.update(parameter_recovery(result, attrs["true_parameters"]))
        run.log_metrics(final)
        run.log_artifact(a.out)
        from ..tracking.models import log_bridge_model

        log_bridge_model(run, a.out)  # the bridge as an MLflow model that samples
    log.info(
        "fitted in %.1f s (%d iterations, converged: %s): %s",
        result.seconds,
        len(result.history),
        result.converged,
        result.reference.describe(),
    )
    return 0


def evaluate_cli(argv: list[str]) -> int:
    from pathlib import Path

    from ..io import atomic_path, write_json
    from .bootstrap import comparison_metrics, paired_bootstrap
    from .evaluate import leave_one_out, parameter_recovery, true_values
    from .export import write_anndata, write_predictions
    from .figures import plot_marginals, plot_parameters, plot_trajectories, plot_w1_intervals
    from .model_io import load_model
    from .select import FitCache

    p = _parser("bridge-evaluate", "held-out evaluation against baselines; figures; MLflow")
    p.add_argument("--model", required=True, help="model.pt from bridge-fit (all snapshots)")
    p.add_argument("--predictions", required=True, help="predictions.zarr to write")
    p.add_argument("--anndata", default=None, help="predictions.h5ad to write (default: beside --predictions)")
    p.add_argument("--figures", required=True, help="directory for the figures")
    p.add_argument("--out", required=True, help="metrics.json to write")
    a = p.parse_args(argv)
    spec, opts, seed = _options(a.spec)
    import torch

    from ..plots import save_figure

    torch.manual_seed(seed)
    snaps, times, attrs, feats = read_cells(a.cells)
    check_cells(snaps, times, opts, a.experiment, a.cells)  # before any fit: min_cells, holdout
    snaps, cut = subsample_snapshots(snaps, times, opts.max_cells, seed)
    names = cell_names(a.cells, times, opts.max_cells, seed)  # the cells kept, by the store's names
    result, meta = load_model(a.model)
    ev_opts = opts.evaluate
    with job_run(
        a.experiments,
        kind="bridge",
        experiment=a.experiment,
        rule="bridge_evaluate",
        wildcards={"experiment": a.experiment},
        spec=spec,
        datasets={"cells": a.cells, "model": a.model},
        system_metrics=True,
    ) as run:
        start = time.perf_counter()
        # per split: the settings chosen on its training snapshots (opts.model.select), never the model.pt's
        # choice, which saw every snapshot
        ev = leave_one_out(
            snaps,
            times,
            opts.model,
            opts.baselines,
            opts.vanilla_sb,
            ev_opts.holdout,
            seed,
            ev_opts.n_particles,
            cache=FitCache(snaps, times, seed),
        )
        metrics = dict(ev.metrics)
        metrics["evaluate/seconds"] = time.perf_counter() - start
        comparison = paired_bootstrap(
            snaps, times, ev, opts.baselines, seed, ev_opts.bootstrap, ev_opts.level, ev_opts.n_particles
        )
        comp_metrics, verdicts = comparison_metrics(comparison)
        metrics.update(comp_metrics)
        metrics["bootstrap/seconds"] = comparison["seconds"]
        metrics["fit/total_seconds"] = result.seconds
        metrics["fit/iterations"] = len(result.history)
        truth = attrs.get("true_parameters")
        if truth:
            metrics.update(parameter_recovery(result, truth))
        write_predictions(a.predictions, ev, snaps, times, feats, names)
        gen = torch.Generator().manual_seed(seed)
        ttimes, paths = result.bridge.trajectories(int(ev_opts.trajectories), 8, gen)
        selection = {"fit": meta["selection"], "splits": ev.selections}
        fitted = {
            "reference": result.reference.kind,
            "parameters": result.reference.describe(),
            "converged": result.converged,
            "iterations": len(result.history),
            "seconds": result.seconds,
            "sigma": result.reference.sigma.detach().reshape(-1).tolist(),
        }
        write_anndata(
            a.anndata or Path(a.predictions).with_suffix(".h5ad"),
            ev,
            snaps,
            times,
            feats,
            names,
            (ttimes, paths),
            {
                "fitted": fitted,
                "selection": selection,
                "splits": [[times[k] for k in s] for s in ev.splits],
                "metrics": metrics,
                "comparison": comparison,
                "verdicts": verdicts,
                "features": feats,
            },
        )
        with atomic_path(a.figures) as tmp:
            tmp.mkdir(parents=True)
            save_figure(
                plot_trajectories(snaps, times, ttimes, paths, f"{a.experiment}: {result.reference.kind} reference"),
                tmp / "trajectories.png",
                run=run,
            )
            save_figure(plot_marginals(ev.predictions, snaps, times, metrics), tmp / "marginals.png", run=run)
            save_figure(plot_w1_intervals(metrics, comparison), tmp / "w1.png", run=run)
            save_figure(
                plot_parameters(result.history, true_values(truth) if truth else None), tmp / "parameters.png", run=run
            )
        out = {
            "metrics": metrics,
            "splits": [[times[k] for k in s] for s in ev.splits],
            "selection": selection,
            "comparison": comparison,
            "fit": fitted,
            "true_parameters": json.loads(truth) if isinstance(truth, str) else truth,
            "subsampled": cut,
        }
        write_json(a.out, out)
        params = {}
        for n, rec in enumerate(ev.selections):
            params.update(selection_params(rec, f"select/split{n}"))
        run.log_params(params)
        run.set_tags(verdicts)
        run.log_metrics({k: v for k, v in metrics.items() if isinstance(v, float) and math.isfinite(v)})
        run.log_artifact(a.out)
    summary = ", ".join(
        f"{m} {metrics[f'w1/{m}/mean']:.3f}"
        for m in ("model", "vanilla_sb", "otcfm", "mccann", "previous")
        if f"w1/{m}/mean" in metrics
    )
    log.info(
        "mean held-out W1: %s; against the best baseline: %s",
        summary,
        ", ".join(f"{k.split('/', 1)[1]} {v}" for k, v in verdicts.items() if k.count("/") == 1),
    )
    return 0
