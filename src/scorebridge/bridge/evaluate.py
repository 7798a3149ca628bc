"""Held-out evaluation of the bridge against its baselines (arXiv 2408.06277, Sec. 5).

`leave_one_out`: for each split (a set of held-out snapshot indices), fit the model and
the vanilla SB (Brownian reference, one outer iteration) on the remaining snapshots, fit
the baselines (previous snapshot, McCann, OT-CFM; `scorebridge.bridge.baselines`) on the
same ones, predict every held-out marginal from its neighbours, and score each against
the observed snapshot with W1, W2 (exact OT), RBF-MMD and energy distance
(`scorebridge.bridge.metrics`). Metric names: `{w1,w2,mmd,energy}/{method}/t{time}` and
`.../mean` (over held-out times), `fit_seconds/{method}/mean` (wall) and
`fit_cpu_seconds/{method}/mean` (process CPU time: comparable on a shared machine).

`parameter_recovery`: relative error of the fitted reference parameters against the
simulator's `true_parameters` (|θ̂ − θ| / |θ|, Frobenius for matrices).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import options
from .fit import FitResult, fit_bridge
from .options import BaselinesOptions, ModelOptions, VanillaOptions, as_section
from .splits import splits_from_config

__all__ = ["splits_from_config", "time_label", "vanilla_options", "leave_one_out", "parameter_recovery", "true_values", "Evaluation", "write_predictions", "METHOD_ORDER"]

log = logging.getLogger(__name__)

METHOD_ORDER = ["model", "vanilla_sb", "otcfm", "mccann", "previous"]


def time_label(t: float) -> str:
    """'t1' for 1.0, 't2.5' for 2.5 (stable metric names)."""
    return "t" + (str(int(t)) if float(t).is_integer() else f"{t:g}")


@dataclass
class Evaluation:
    metrics: dict = field(default_factory=dict)
    predictions: list = field(default_factory=list)  # (method, time, split, array (n, d))
    splits: list = field(default_factory=list)


def vanilla_options(model: ModelOptions, vanilla: VanillaOptions) -> ModelOptions:
    """Brownian reference, one outer iteration (no refit), draws from the SB plan itself
    (not its small-noise limit): the paper's vanilla SB, with the model's noise type and
    bridge settings. σ: `vanilla.sigma`, else the model's initial σ (auto: recomputed on
    each split with the same auto_scale; or its number), fixed."""
    section = as_section(model)
    sig = model.reference.sigma
    if vanilla.sigma is not None:
        sigma = {"init": vanilla.sigma}
    else:
        sigma = {"init": sig.init, "auto_scale": sig.auto_scale}
    section["reference"] = {"class": "brownian", "noise": model.reference.noise, "sigma": {**sigma, "learn": False}}
    section["max_iter"] = 1
    section["predict"] = {"coupling": "plan", "noise": 1.0}
    return options.build(ModelOptions, section, where="vanilla_sb")


def leave_one_out(
    snapshots: list[np.ndarray],
    times,
    model: ModelOptions,
    baselines: BaselinesOptions,
    vanilla: VanillaOptions,
    holdout="loo",
    seed: int = 0,
    n_particles: int | None = None,
    callback=None,
) -> Evaluation:
    """Fit on the training snapshots of each split, predict the held-out ones, score them.

    model, baselines, vanilla: the experiment's options (`BridgeOptions.model`, `.baselines`,
    `.vanilla_sb`)."""
    from .baselines import make_baseline
    from .metrics import distribution_metrics

    times = [float(t) for t in times]
    splits = splits_from_config(holdout, len(times))
    specs = {"model": model, "vanilla_sb": vanilla_options(model, vanilla)}
    methods = [*specs, *baselines.methods]
    ev = Evaluation(splits=splits)
    scores: dict[tuple[str, str], dict] = {}
    seconds: dict[str, list[float]] = {m: [] for m in methods}
    cpu_seconds: dict[str, list[float]] = {m: [] for m in methods}
    for split_no, held in enumerate(splits):
        train = [k for k in range(len(times)) if k not in held]
        tr_snaps, tr_times = [snapshots[k] for k in train], [times[k] for k in train]
        log.info("split %d: train on times %s, predict %s", split_no, tr_times, [times[k] for k in held])
        predictors = {}
        for method in methods:
            start, cpu_start = time.perf_counter(), time.process_time()
            if method in specs:
                predictors[method] = fit_bridge(tr_snaps, tr_times, specs[method], seed=seed)
            else:
                predictors[method] = make_baseline(method, getattr(baselines, method, None), seed=seed).fit(tr_snaps, tr_times)
            seconds[method].append(time.perf_counter() - start)
            cpu_seconds[method].append(time.process_time() - cpu_start)
        for k in held:
            t, obs = times[k], snapshots[k]
            n = int(n_particles or obs.shape[0])
            for method in methods:
                p = predictors[method]
                if isinstance(p, FitResult):
                    gen = torch.Generator().manual_seed(seed * 1000 + k)
                    mode = p.options.predict
                    pred = p.bridge.sample_at(t, n, gen, noise=float(mode.noise), coupling=mode.coupling).numpy()
                elif method == "mccann":
                    pred = p.predict(t, n=n)
                else:
                    pred = p.predict(t)
                pred = np.asarray(pred, dtype=np.float64)
                if not np.isfinite(pred).all():
                    log.warning("%s predicted non-finite particles at t=%g; dropping them", method, t)
                    pred = pred[np.isfinite(pred).all(1)]
                scores[(method, time_label(t))] = distribution_metrics(pred, obs)
                ev.predictions.append((method, t, split_no, pred))
            if callback is not None:
                callback(split_no, k)
    labels = sorted({lab for _, lab in scores}, key=lambda s: float(s[1:]))
    for (method, lab), vals in scores.items():
        for name, v in vals.items():
            ev.metrics[f"{name}/{method}/{lab}"] = float(v)
    for method in methods:
        for name in ("w1", "w2", "mmd", "energy"):
            vals = [ev.metrics[f"{name}/{method}/{lab}"] for lab in labels if f"{name}/{method}/{lab}" in ev.metrics]
            if vals:
                ev.metrics[f"{name}/{method}/mean"] = float(np.mean(vals))
        ev.metrics[f"fit_seconds/{method}/mean"] = float(np.mean(seconds[method])) if seconds[method] else float("nan")
        ev.metrics[f"fit_cpu_seconds/{method}/mean"] = float(np.mean(cpu_seconds[method])) if cpu_seconds[method] else float("nan")
    best = min((m for m in methods if m != "model"), key=lambda m: ev.metrics.get(f"w1/{m}/mean", np.inf))
    ev.metrics["w1/model_minus_best_baseline/mean"] = ev.metrics["w1/model/mean"] - ev.metrics[f"w1/{best}/mean"]
    return ev


def true_values(true_parameters) -> dict[str, np.ndarray]:
    """{name: value} of a simulator's `true_parameters` (a dict or its JSON): the drift's
    parameters and `sigma`; {} when there are none to read."""
    if isinstance(true_parameters, str):
        try:
            true_parameters = json.loads(true_parameters)
        except json.JSONDecodeError:
            return {}
    if not isinstance(true_parameters, dict):
        return {}
    drift = true_parameters["drift"] if "drift" in true_parameters else true_parameters  # a simulator record, not config
    out = {k: np.asarray(v, dtype=np.float64) for k, v in drift.items() if isinstance(v, (int, float, list))}
    if "sigma" in true_parameters and isinstance(true_parameters["sigma"], (int, float)):
        out["sigma"] = np.asarray(true_parameters["sigma"], dtype=np.float64)
    return out


def parameter_recovery(result: FitResult, true_parameters) -> dict[str, float]:
    """{'recovery/<name>': relative error} for every parameter both the fit and the truth name,
    plus 'recovery/max_drift' (the largest drift-parameter error)."""
    truth = true_values(true_parameters)
    ref = result.reference
    fitted = {k: v.detach().numpy() for k, v in ref.drift_parameters().items()}
    fitted["sigma"] = ref.sigma.detach().numpy()
    out: dict[str, float] = {}
    for name, tv in truth.items():
        if name not in fitted:
            continue
        fv = fitted[name]
        if name == "sigma" and fv.size > 1:
            fv = fv.mean()
        if np.shape(fv) != np.shape(tv) and np.size(fv) != np.size(tv):
            continue
        denom = float(np.linalg.norm(tv)) or 1.0
        out[f"recovery/{name}"] = float(np.linalg.norm(np.asarray(fv).reshape(tv.shape) - tv) / denom)
    drift = [v for k, v in out.items() if k != "recovery/sigma"]
    if drift:
        out["recovery/max_drift"] = max(drift)
    return out


def write_predictions(path, ev: Evaluation, snapshots: list[np.ndarray], times, features: list[str] | None = None) -> None:
    """predictions.zarr: a flat table over `particle` with `X (particle, feature)` and the
    coordinates `method`, `time`, `split` (observed held-out cells included as method 'observed')."""
    import xarray as xr

    from ..io import atomic_path

    rows, meth, tim, spl = [], [], [], []
    seen = set()
    for method, t, split, pred in ev.predictions:
        rows.append(pred)
        meth += [method] * len(pred)
        tim += [t] * len(pred)
        spl += [split] * len(pred)
        if (t, split) not in seen:
            seen.add((t, split))
            k = [float(x) for x in times].index(float(t))
            rows.append(snapshots[k])
            meth += ["observed"] * len(snapshots[k])
            tim += [t] * len(snapshots[k])
            spl += [split] * len(snapshots[k])
    X = np.concatenate(rows).astype(np.float32)
    d = X.shape[1]
    feats = list(features) if features is not None and len(features) == d else [f"f{i}" for i in range(d)]
    ds = xr.Dataset(
        {"X": (("particle", "feature"), X)},
        coords={
            "method": ("particle", np.asarray(meth, dtype=str)),
            "time": ("particle", np.asarray(tim, dtype=np.float64)),
            "split": ("particle", np.asarray(spl, dtype=np.int64)),
            "feature": np.asarray(feats, dtype=str),
        },
        attrs={"description": "predicted particles per method and held-out time; method 'observed' holds the held-out cells", "splits": json.dumps(ev.splits)},
    )
    with atomic_path(path) as tmp:
        ds.to_zarr(tmp, mode="w", consolidated=False)
