"""Honest selection (`model.select: inner_loo`), both prediction modes, paired bootstrap
intervals, the AnnData export and the new simulators, on small real computations."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from scorebridge import options
from scorebridge.bridge.bootstrap import comparison_metrics, paired_bootstrap, verdict
from scorebridge.bridge.evaluate import bridge_methods, leave_one_out
from scorebridge.bridge.metrics import energy_distance, wasserstein1
from scorebridge.bridge.options import BaselinesOptions, ModelOptions, VanillaOptions
from scorebridge.bridge.select import (
    FitCache,
    candidate_options,
    candidates,
    criterion_values,
    inner_tasks,
    select_model,
)
from scorebridge.data.cells.simulate import simulate

torch.set_num_threads(1)

CHEAP = {
    "classes": ["brownian", "linear_symmetric", "linear_full"],
    "auto_scales": [1.0, 0.5],
    "draws": 2,
    "resamples": 50,
}
BASELINES = {"methods": ["previous", "mccann"]}


def _model(**kw) -> ModelOptions:
    return options.build(ModelOptions, {"max_iter": 4, "selection": CHEAP, **kw})


def _cycle(n=40, times=(0, 1, 2, 3, 4)):
    snaps, t, _ = simulate({"system": "cycle", "n_cells": n, "times": list(times)})
    return snaps, [float(x) for x in t]


def test_default_is_inner_loo_and_candidates_cover_the_issue_grid():
    m = options.build(ModelOptions, {})
    assert m.select == "inner_loo" and m.selection.criterion == "w1" and m.selection.rule == "one_se"
    cands = candidates(m)
    assert {c.cls for c in cands} == {"brownian", "linear_symmetric", "linear_full", "potential"}
    assert {c.predict for c in cands} == {"ot", "plan"} and len(cands) == 4 * len(m.selection.auto_scales) * 2
    opt = candidate_options(m, cands[-1])
    assert opt.select == "none" and opt.reference.class_ == "potential" and opt.reference.sigma.init == "auto"
    assert opt.reference.sigma.learn is False and opt.predict.coupling == "plan" and opt.predict.noise == 1.0


def test_criteria_match_the_metrics_and_resample():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 3)), rng.normal(size=(60, 3)) + 0.3
    idx = rng.integers(0, 60, size=(20, 60))
    w1 = criterion_values("w1", x, y, idx)
    assert w1[0] == pytest.approx(wasserstein1(x, y)) and w1.shape == (21,) and np.std(w1[1:]) > 0
    en = criterion_values("energy", x, y, idx)
    assert en[0] == pytest.approx(energy_distance(x, y)) and en[3] == pytest.approx(energy_distance(x, y[idx[2]]))
    sw = criterion_values("sliced_w2", x, y, idx)
    assert sw.shape == (21,) and np.isfinite(sw).all() and sw[0] > 0


def test_select_none_and_the_two_snapshot_fallback_keep_the_configured_settings():
    snaps, times = _cycle(times=(0, 1, 2))
    cache = FitCache(snaps, times)
    sel = select_model(cache, [0, 1, 2], _model(select="none"))
    assert sel.record["reason"] == "select: none" and sel.options.reference.class_ == "linear"
    sel = select_model(cache, [0, 2], _model())
    assert sel.record["mode"] == "inner_loo" and sel.record["reason"].startswith("fallback")
    assert (
        sel.options.select == "none"
        and sel.record["chosen"]["class"] == "linear"
        and sel.record["chosen"]["predict"] == "ot"
    )


def test_inner_loo_picks_a_rotating_reference_for_a_cycle_and_never_reads_held_out_snapshots():
    snaps, times = _cycle()
    m = _model()
    ev = leave_one_out(
        snaps, times, m, options.build(BaselinesOptions, BASELINES), options.build(VanillaOptions, {}), [[2]], seed=0
    )
    rec = ev.selections[0]
    assert rec["snapshots"] == [0.0, 1.0, 3.0, 4.0] and rec["inner_holdouts"] == [1.0, 3.0]
    assert rec["chosen"]["class"] == "linear_full"  # a symmetric A or no drift cannot rotate
    assert set(rec["scores"]) == {c.name for c in candidates(m)}
    # the held-out snapshot replaced by garbage: the same choice and the same scores
    bad = [s.copy() for s in snaps]
    bad[2] = bad[2] * 50 + 7
    ev2 = leave_one_out(
        bad, times, m, options.build(BaselinesOptions, BASELINES), options.build(VanillaOptions, {}), [[2]], seed=0
    )
    assert ev2.selections[0]["chosen"] == rec["chosen"]
    assert ev2.selections[0]["scores"] == rec["scores"]
    # every bridge method is scored both ways, and the model row is its chosen mode
    for method in bridge_methods():
        assert np.isfinite(ev.metrics[f"w1/{method}/t2"])
    assert ev.metrics["w1/model/t2"] == ev.metrics[f"w1/model_{rec['chosen']['predict']}/t2"]
    assert ev.metrics["w1/model/t2"] < ev.metrics["w1/mccann/t2"]


def test_one_se_rule_prefers_the_simpler_candidate_within_the_noise():
    # a pure translation with noise: no drift class can do better than the Brownian one by more than the noise
    rng = np.random.default_rng(3)
    times = [0.0, 1.0, 2.0, 3.0]
    snaps = [rng.normal(size=(50, 2)) + np.array([t, 0.0]) for t in times]
    cache = FitCache(snaps, times)
    one = select_model(cache, [0, 1, 2, 3], _model())
    best = select_model(cache, [0, 1, 2, 3], _model(selection={**CHEAP, "rule": "min"}))
    names = [c.name for c in candidates(_model())]
    assert names.index(one.record["chosen_name"]) <= names.index(best.record["chosen_name"])
    s = one.record["scores"]
    assert (
        s[one.record["chosen_name"]]["score"] - s[best.record["chosen_name"]]["score"]
        <= s[one.record["chosen_name"]]["se_vs_best"] + 1e-12
    )


def test_max_tasks_bounds_the_inner_tasks_of_a_long_course():
    assert inner_tasks(list(range(1, 20)), 4) == [1, 7, 13, 19]  # evenly spaced, both ends
    assert inner_tasks([1, 2, 3], 4) == [1, 2, 3]  # short courses: every interior snapshot
    assert inner_tasks(list(range(1, 8)), 1) == [4]
    assert inner_tasks(list(range(1, 20)), None) == list(range(1, 20))
    snaps, times = _cycle(n=30, times=tuple(range(9)))
    cache = FitCache(snaps, times)
    cheap = {**CHEAP, "classes": ["brownian"], "auto_scales": [1.0], "max_tasks": 2}
    sel = select_model(cache, list(range(9)), _model(max_iter=2, selection=cheap))
    assert sel.record["inner_holdouts"] == [1.0, 7.0]
    assert all(len(s["per_holdout"]) == 2 for s in sel.record["scores"].values())


def test_verdict_reads_the_interval():
    assert verdict(-0.2, -0.01) == "beats" and verdict(0.01, 0.3) == "loses"
    assert verdict(-0.1, 0.1) == "no difference" and verdict(float("nan"), float("nan")) == "no interval"
    assert (
        verdict(-1e-12, -1e-13) == "no difference" and verdict(1e-12, 2e-12) == "no difference"
    )  # the same prediction two ways


def test_paired_bootstrap_intervals_and_metric_names():
    snaps, times = _cycle(n=30, times=(0, 1, 2, 3))
    b = options.build(BaselinesOptions, BASELINES)
    ev = leave_one_out(snaps, times, _model(select="none"), b, options.build(VanillaOptions, {}), "loo", seed=0)
    comp = paired_bootstrap(snaps, times, ev, b, 0, 4)
    assert comp["replicates"] == 4 and set(comp["times"]) == {"t1", "t2", "mean"}
    for lab, row in comp["times"].items():
        assert row["best_baseline"] in ev.baselines
        for bl, c in row["baselines"].items():
            assert c["low"] <= c["high"] and c["verdict"] == verdict(c["low"], c["high"])
            assert c["difference"] == pytest.approx(ev.metrics[f"w1/model/{lab}"] - ev.metrics[f"w1/{bl}/{lab}"])
    metrics, tags = comparison_metrics(comp)
    best = comp["times"]["t1"]["best_baseline"]
    assert metrics["w1_low/model_minus_best_baseline/t1"] == comp["times"]["t1"]["baselines"][best]["low"]
    assert tags["verdict/t1"].endswith(best) and "w1_high/model_minus_mccann/mean" in metrics
    none = paired_bootstrap(snaps, times, ev, b, 0, 0)
    assert comparison_metrics(none)[1]["verdict/mean"] == "no interval"


@pytest.mark.parametrize("system", ["bifurcation", "cycle", "decelerate", "proliferation"])
def test_generalisation_simulators(system):
    snaps, times, s = simulate({"system": system, "n_cells": 100, "seed": 1})
    assert len(snaps) == len(times) == 6 and all(x.shape[1] == 2 and np.isfinite(x).all() for x in snaps)
    last = snaps[-1]
    if system == "bifurcation":  # two fates at x1 = ±1
        assert (last[:, 0] > 0.5).mean() > 0.3 and (last[:, 0] < -0.5).mean() > 0.3
    if system == "cycle":  # on the unit circle, rotated
        assert np.median(np.linalg.norm(last, axis=1)) == pytest.approx(1.0, abs=0.15)
    if system == "decelerate":  # slows down: each step shorter than the one before
        steps = np.diff([x[:, 0].mean() for x in snaps])
        assert (np.diff(steps) < 0).all()
    if system == "proliferation":  # counts grow and the population shifts to the dividing side
        counts = [x.shape[0] for x in snaps]
        assert counts[0] == 100 and counts[-1] > 2 * counts[0]
        assert last[:, 1].mean() > snaps[0][:, 1].mean() + 0.2


def test_marginals_share_axes_per_held_out_time():
    from scorebridge.bridge.figures import plot_marginals, plot_w1_intervals

    snaps, times = _cycle(n=30, times=(0, 1, 2, 3))
    b = options.build(BaselinesOptions, BASELINES)
    ev = leave_one_out(snaps, times, _model(select="none"), b, options.build(VanillaOptions, {}), "loo", seed=0)
    fig = plot_marginals(ev.predictions, snaps, times, ev.metrics)
    for row in np.asarray(fig.axes).reshape(2, -1):
        assert len({ax.get_xlim() for ax in row}) == 1 and len({ax.get_ylim() for ax in row}) == 1
    comp = paired_bootstrap(snaps, times, ev, b, 0, 2)
    fig = plot_w1_intervals({**ev.metrics, **comparison_metrics(comp)[0]}, comp)
    assert len(fig.axes) == 2


def test_predictions_h5ad_reads_with_anndata_alone(tmp_path):
    from scorebridge.bridge.export import write_anndata
    from scorebridge.bridge.fit import fit_bridge

    snaps, times = _cycle(n=20, times=(0, 1, 2, 3))
    b = options.build(BaselinesOptions, BASELINES)
    ev = leave_one_out(snaps, times, _model(select="none"), b, options.build(VanillaOptions, {}), [[1]], seed=0)
    fit = fit_bridge(snaps, times, _model(select="none"))
    traj = fit.bridge.trajectories(5, 4, torch.Generator().manual_seed(0))
    names = [[f"c{k}-{i}" for i in range(len(x))] for k, x in enumerate(snaps)]
    write_anndata(
        tmp_path / "p.h5ad",
        ev,
        snaps,
        times,
        ["gene_a", "gene_b"],
        names,
        traj,
        {
            "selection": {"fit": {"mode": "none"}, "splits": ev.selections},
            "fitted": {"reference": "linear", "sigma": [0.1]},
        },
    )
    code = f"""
import json, sys
import anndata
ad = anndata.read_h5ad({str(tmp_path / "p.h5ad")!r})
assert "scorebridge" not in sys.modules
obs = ad.obs
print(json.dumps({{"var": list(ad.var_names), "methods": sorted(set(obs["method"].astype(str))), "kinds": sorted(set(obs["kind"].astype(str))),
  "cells": sorted(set(obs.loc[obs["kind"] == "observed", "cell"].astype(str))), "n": ad.n_obs, "pca": list(ad.obsm["X_pca"].shape),
  "sel": json.loads(ad.uns["bridge"]["selection"])["splits"][0]["reason"], "traj": int((obs["trajectory"] >= 0).sum()),
  "times": sorted(set(obs.loc[obs["kind"] == "prediction", "time"].tolist()))}}))
"""
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert out["var"] == ["gene_a", "gene_b"]
    assert out["methods"] == sorted({*bridge_methods(), "previous", "mccann", "observed", "trajectory"})
    assert out["kinds"] == ["observed", "prediction", "trajectory"]
    assert out["cells"] == sorted(names[1]) and out["times"] == [1.0]
    assert out["traj"] == 5 * len(traj[0]) and out["pca"] == [out["n"], 2] and out["sel"] == "select: none"
