"""Held-out evaluation of the bridge against its baselines (arXiv 2408.06277, Sec. 5).

`leave_one_out`: for each split (a set of held-out snapshot indices), choose the model's
settings on the remaining snapshots alone (`model.select`, `scorebridge.bridge.select`),
fit the model with them and the vanilla SB (Brownian reference, one outer iteration) on
those snapshots, fit the baselines (previous snapshot, McCann, OT-CFM;
`scorebridge.bridge.baselines`) on the same ones, predict every held-out marginal from its
neighbours, and score each against the observed snapshot with W1, W2 (exact OT), RBF-MMD and
energy distance (`scorebridge.bridge.metrics`). Both bridges are scored both ways: `model`
(its selected mode), `model_ot` and `model_plan`; `vanilla_sb` (plan draws, the paper's) and
`vanilla_sb_ot` (its small-noise limit). Metric names: `{w1,w2,mmd,energy}/{method}/t{time}`
and `.../mean` (over held-out times), `fit_seconds/{method}/mean` (wall) and
`fit_cpu_seconds/{method}/mean` (process CPU time: comparable on a shared machine),
`select_seconds/model/mean`. Intervals: `scorebridge.bridge.bootstrap`.

`parameter_recovery`: relative error of the fitted reference parameters against the
simulator's `true_parameters` (|θ̂ − θ| / |θ|, Frobenius for matrices).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from .. import options
from .fit import FitResult
from .options import BaselinesOptions, ModelOptions, VanillaOptions, as_section
from .select import FitCache, predict, select_model
from .splits import splits_from_config

__all__ = [
    "splits_from_config",
    "time_label",
    "vanilla_options",
    "bridge_methods",
    "run_split",
    "leave_one_out",
    "parameter_recovery",
    "true_values",
    "Evaluation",
    "METHOD_ORDER",
]

log = logging.getLogger(__name__)

METHOD_ORDER = ["model", "model_ot", "model_plan", "vanilla_sb", "vanilla_sb_ot", "otcfm", "mccann", "previous"]


def time_label(t: float) -> str:
    """'t1' for 1.0, 't2.5' for 2.5 (stable metric names)."""
    return "t" + (str(int(t)) if float(t).is_integer() else f"{t:g}")


@dataclass
class Evaluation:
    metrics: dict = field(default_factory=dict)
    predictions: list = field(default_factory=list)  # (method, time, split, array (n, d))
    splits: list = field(default_factory=list)
    selections: list = field(default_factory=list)  # per split: how the model's settings were chosen
    chosen: list = field(default_factory=list)  # per split: the model options fitted (ModelOptions)
    vanilla: ModelOptions | None = None
    baselines: list = field(default_factory=list)  # the methods the model is compared with


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
    section["select"] = "none"
    section["predict"] = {"coupling": "plan", "noise": 1.0}
    return options.build(ModelOptions, section, where="vanilla_sb")


def bridge_methods(vanilla: bool = True) -> list[str]:
    """The bridge rows: the model in its selected mode, then both modes of the model and of
    the vanilla SB (plan draws, the paper's, and its small-noise limit)."""
    return ["model", "model_ot", "model_plan", *(["vanilla_sb", "vanilla_sb_ot"] if vanilla else [])]


def run_split(
    snapshots,
    times,
    held: list[int],
    model: ModelOptions,
    vanilla: ModelOptions,
    baselines: BaselinesOptions,
    seed: int,
    n_particles: int | None = None,
    cache: FitCache | None = None,
    scores: tuple[str, ...] | None = None,
):
    """Fit every method on the snapshots not in `held` (the model with the options `model`,
    already selected) and predict each held-out one. Returns ({(method, k): prediction},
    {(method, k): {metric: value}} (all four metrics unless `scores` names some), {method:
    (wall s, CPU s)} of the fits)."""
    from .baselines import make_baseline
    from .metrics import distribution_metrics, wasserstein1

    times = [float(t) for t in times]
    train = [k for k in range(len(times)) if k not in held]
    cache = cache if cache is not None else FitCache(snapshots, times, seed)
    fits, seconds = {}, {}
    for method, opts in (("model", model), ("vanilla_sb", vanilla)):
        start, cpu = time.perf_counter(), time.process_time()
        fits[method] = cache.fit(train, opts)
        seconds[method] = (time.perf_counter() - start, time.process_time() - cpu)
    learners = {}
    for method in baselines.methods:
        start, cpu = time.perf_counter(), time.process_time()
        learners[method] = make_baseline(method, getattr(baselines, method, None), seed=seed).fit(
            [snapshots[k] for k in train], [times[k] for k in train]
        )
        seconds[method] = (time.perf_counter() - start, time.process_time() - cpu)
    preds, metrics = {}, {}
    for k in held:
        t, obs = times[k], snapshots[k]
        n = int(n_particles or obs.shape[0])
        out = {
            "model": predict(fits["model"], t, n, seed, k),
            "model_ot": predict(fits["model"], t, n, seed, k, "ot"),
            "model_plan": predict(fits["model"], t, n, seed, k, "plan"),
            "vanilla_sb": predict(fits["vanilla_sb"], t, n, seed, k),
            "vanilla_sb_ot": predict(fits["vanilla_sb"], t, n, seed, k, "ot"),
        }
        for method, p in learners.items():
            out[method] = p.predict(t, n=n) if method == "mccann" else p.predict(t)
        for method, pred in out.items():
            pred = np.asarray(pred, dtype=np.float64)
            if not np.isfinite(pred).all():
                log.warning("%s predicted non-finite particles at t=%g; dropping them", method, t)
                pred = pred[np.isfinite(pred).all(1)]
            preds[(method, k)] = pred
            metrics[(method, k)] = (
                {"w1": wasserstein1(pred, obs)} if scores == ("w1",) else distribution_metrics(pred, obs)
            )
    return preds, metrics, seconds


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
    cache: FitCache | None = None,
) -> Evaluation:
    """Per split: choose the model's settings on the training snapshots alone (`model.select`,
    `scorebridge.bridge.select`), fit every method on them, predict the held-out snapshots,
    score them. model, baselines, vanilla: the experiment's options (`BridgeOptions.model`,
    `.baselines`, `.vanilla_sb`); `cache`: fits to share (e.g. with a bootstrap or a fit on
    every snapshot; built here when None)."""
    times = [float(t) for t in times]
    splits = splits_from_config(holdout, len(times))
    cache = cache if cache is not None else FitCache(snapshots, times, seed)
    van = vanilla_options(model, vanilla)
    ev = Evaluation(splits=splits, vanilla=van, baselines=["vanilla_sb", "vanilla_sb_ot", *baselines.methods])
    scores: dict[tuple[str, str], dict] = {}
    seconds: dict[str, list[tuple[float, float]]] = {}
    for split_no, held in enumerate(splits):
        train = [k for k in range(len(times)) if k not in held]
        log.info(
            "split %d: train on times %s, predict %s", split_no, [times[k] for k in train], [times[k] for k in held]
        )
        sel = select_model(cache, train, model)
        ev.selections.append({"held_out": [times[k] for k in held], **sel.record})
        ev.chosen.append(sel.options)
        preds, mets, secs = run_split(snapshots, times, held, sel.options, van, baselines, seed, n_particles, cache)
        seconds.setdefault("select", []).append((float(sel.record.get("seconds", 0.0)), 0.0))
        for method, s in secs.items():
            seconds.setdefault(method, []).append(s)
        for k in held:
            for method in [*bridge_methods(), *baselines.methods]:
                scores[(method, time_label(times[k]))] = mets[(method, k)]
                ev.predictions.append((method, times[k], split_no, preds[(method, k)]))
            if callback is not None:
                callback(split_no, k)
    labels = sorted({lab for _, lab in scores}, key=lambda s: float(s[1:]))
    for (method, lab), vals in scores.items():
        for name, v in vals.items():
            ev.metrics[f"{name}/{method}/{lab}"] = float(v)
    for method in [*bridge_methods(), *baselines.methods]:
        for name in ("w1", "w2", "mmd", "energy"):
            vals = [ev.metrics[f"{name}/{method}/{lab}"] for lab in labels if f"{name}/{method}/{lab}" in ev.metrics]
            if vals:
                ev.metrics[f"{name}/{method}/mean"] = float(np.mean(vals))
    for method, secs in seconds.items():
        if method == "select":
            ev.metrics["select_seconds/model/mean"] = float(np.mean([w for w, _ in secs]))
            continue
        ev.metrics[f"fit_seconds/{method}/mean"] = float(np.mean([w for w, _ in secs]))
        ev.metrics[f"fit_cpu_seconds/{method}/mean"] = float(np.mean([c for _, c in secs]))
    best = min(ev.baselines, key=lambda m: ev.metrics.get(f"w1/{m}/mean", np.inf))
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
    drift = (
        true_parameters["drift"] if "drift" in true_parameters else true_parameters
    )  # a simulator record, not config
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
