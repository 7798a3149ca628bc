"""Paired bootstrap intervals of the model's margin over each baseline (`evaluate.bootstrap`).

One replicate resamples the cells of every snapshot with replacement (training and held-out
alike, each snapshot keeping its size), refits every method on the resampled training
snapshots of every split (the model with the settings selected for that split on the
original data: the selection is not repeated, so the interval leaves out its variability),
predicts the held-out times and scores them against the resampled held-out cells with W1.
The fits' own randomness (OT-CFM's initialisation and minibatches, the SB's draws) is
seeded per replicate. The replicates are paired: every method sees the same cells.

For each held-out time and for the mean over them, and for each baseline b, the interval
is the (1 − level)/2 and (1 + level)/2 quantiles of the replicates' W1(model) − W1(b);
`best` is the baseline with the lowest W1 on the original data at that time. The verdict is
read from the interval alone: "beats" when it lies below zero, "loses" above zero, "no
difference" when it holds zero or lies within 1e-6 of it (the model's Brownian small-noise
prediction is McCann's, computed another way), and "no interval" without replicates.

Resampled cells repeat, which raises every W1 a little, most for the prediction closest to
the data; the replicates' differences are therefore pulled toward zero (and the interval
may miss the difference on the data): the percentile interval leans against any verdict
other than "no difference". With few replicates it is about their range.

Metrics: `w1/model_minus_{b}/{t}` (the difference on the original data),
`w1_low/model_minus_{b}/{t}`, `w1_high/model_minus_{b}/{t}`, with b a baseline or
`best_baseline` and t a time label or `mean`.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from .options import BaselinesOptions

__all__ = ["verdict", "paired_bootstrap", "comparison_metrics"]

log = logging.getLogger(__name__)


TOL = 1e-6  # a W1 margin below this is the same prediction computed two ways (e.g. Brownian/ot and McCann)


def verdict(low: float, high: float, tol: float = TOL) -> str:
    """'beats' (interval below 0), 'loses' (above 0), 'no difference' (holds 0, or within
    `tol` of it); 'no interval' (NaN)."""
    if not (np.isfinite(low) and np.isfinite(high)):
        return "no interval"
    if high < -tol:
        return "beats"
    if low > tol:
        return "loses"
    return "no difference"


def paired_bootstrap(
    snapshots: list[np.ndarray],
    times,
    ev,
    baselines: BaselinesOptions,
    seed: int,
    replicates: int,
    level: float = 0.95,
    n_particles: int | None = None,
    progress=None,
) -> dict:
    """Resample, refit and rescore `replicates` times (see the module doc); returns the
    comparison {"replicates", "level", "seconds", "times": {label: {"best_baseline",
    "baselines": {b: {"difference", "low", "high", "verdict"}}}}, "w1": {label: {method:
    {"value", "low", "high"}}}} with label a time label or "mean" ("w1": each method's own
    W1 and its interval); `ev`: the `Evaluation` of `leave_one_out` on the same snapshots."""
    from .evaluate import run_split, time_label

    times = [float(t) for t in times]
    labels = sorted({time_label(times[k]) for s in ev.splits for k in s}, key=lambda s: float(s[1:]))
    diffs: dict[tuple[str, str], list[float]] = {}
    values: dict[tuple[str, str], list[float]] = {}
    start = time.perf_counter()
    for r in range(int(replicates)):
        rng = np.random.default_rng([int(seed), 7919, r])
        boot = [x[rng.integers(0, x.shape[0], x.shape[0])] for x in snapshots]
        w1: dict[tuple[str, str], float] = {}
        for split_no, held in enumerate(ev.splits):
            _, mets, _ = run_split(
                boot, times, held, ev.chosen[split_no], ev.vanilla, baselines, seed + 1 + r, n_particles, scores=("w1",)
            )
            for (method, k), v in mets.items():
                w1[(method, time_label(times[k]))] = v["w1"]
        methods = sorted({m for m, _ in w1})
        for m in methods:
            for lab in labels:
                values.setdefault((m, lab), []).append(w1[(m, lab)])
            values.setdefault((m, "mean"), []).append(float(np.mean([w1[(m, lab)] for lab in labels])))
        for b in ev.baselines:
            per = [w1[("model", lab)] - w1[(b, lab)] for lab in labels]
            for lab, d in zip(labels, per):
                diffs.setdefault((b, lab), []).append(d)
            diffs.setdefault((b, "mean"), []).append(float(np.mean(per)))
        if progress is not None:
            progress(r)
        log.info("bootstrap replicate %d/%d (%.0f s)", r + 1, replicates, time.perf_counter() - start)
    q = ((1 - level) / 2, (1 + level) / 2)
    out: dict = {
        "replicates": int(replicates),
        "level": float(level),
        "seconds": time.perf_counter() - start,
        "times": {},
        "w1": {},
    }
    for lab in [*labels, "mean"]:
        rows = {}
        for b in ev.baselines:
            point = ev.metrics[f"w1/model/{lab}"] - ev.metrics[f"w1/{b}/{lab}"]
            reps = diffs.get((b, lab), [])
            low, high = (float(v) for v in np.quantile(reps, q)) if reps else (float("nan"), float("nan"))
            rows[b] = {"difference": float(point), "low": low, "high": high, "verdict": verdict(low, high)}
        best = min(ev.baselines, key=lambda b: ev.metrics[f"w1/{b}/{lab}"])
        out["times"][lab] = {"best_baseline": best, "baselines": rows}
        w1s = {}
        for (m, lb), reps in values.items():
            if lb == lab:
                lo, hi = (float(v) for v in np.quantile(reps, q))
                w1s[m] = {"value": ev.metrics[f"w1/{m}/{lab}"], "low": lo, "high": hi}
        out["w1"][lab] = w1s
    return out


def comparison_metrics(comparison: dict) -> tuple[dict[str, float], dict[str, str]]:
    """(metrics, tags) for metrics.json and MLflow: the differences and interval ends as
    numbers, the verdicts (`verdict/{label}/{baseline}`, `verdict/{label}` against the best
    baseline, e.g. 'beats mccann') as tags."""
    metrics: dict[str, float] = {}
    tags: dict[str, str] = {}
    for lab, row in comparison["times"].items():
        for b, c in row["baselines"].items():
            for name, key in (("w1", "difference"), ("w1_low", "low"), ("w1_high", "high")):
                metrics[f"{name}/model_minus_{b}/{lab}"] = c[key]
            tags[f"verdict/{lab}/{b}"] = c["verdict"]
        best = row["baselines"][row["best_baseline"]]
        for name, key in (("w1", "difference"), ("w1_low", "low"), ("w1_high", "high")):
            metrics[f"{name}/model_minus_best_baseline/{lab}"] = best[key]
        tags[f"verdict/{lab}"] = (
            f"{best['verdict']} {row['best_baseline']}" if best["verdict"] != "no interval" else "no interval"
        )
    return metrics, tags
