"""Does the bridge hold on data it was not tuned on? Two real time courses and four simulated
regimes, each scored leave-one-out with the model's settings chosen per split by
`model.select: inner_loo` on the training snapshots alone (nothing set by hand per data set),
against the vanilla SB (plan draws and small-noise limit), OT-CFM, McCann and the previous
snapshot, with paired bootstrap intervals of the model's margin.

    python benchmarks/bridge_generalise.py [--datasets eb emt bifurcation cycle decelerate proliferation]
                                           [--bootstrap 5] [--jobs 2] [--seed 0]

Data: EB (5 snapshots x 300 cells, 5-D, ../shared/data/cells/eb_5x300x5.npy), EMT (A549, 4
snapshots of 577-885 cells, 10-D, emt_4timepoints.csv), and the simulators of
`scorebridge.data.cells.simulate` at their default parameters, 5 snapshots (t = 0..4):
bifurcation (two fates), cycle (a limit cycle), decelerate (fast, then lingering),
proliferation (division favours one side; 60 founders per snapshot, so the counts grow), 100
cells per snapshot otherwise.
Every data set runs with the same options: the schema's defaults except `max_iter: 10,
tol: 5e-3` (as the EB and EMT benchmarks), baselines at their defaults. The row "fixed" is
the former fixed default (symmetric linear reference, σ 0.25x auto, small-noise limit),
chosen by looking at EB's held-out snapshots: shown for comparison, without an interval.

Writes benchmarks/out/bridge_generalise.json and prints markdown tables (pasted into
benchmarks/README.md) with the date, the command, the wall and CPU time and the load.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SCOREBRIDGE_SHARED_DATA", ROOT.parent / "shared" / "data")) / "cells"
DATASETS = ["eb", "cycle", "emt", "bifurcation", "decelerate", "proliferation"]
MODEL = {"max_iter": 10, "tol": 5e-3}
FIXED = {**MODEL, "select": "none"}  # the former default (schema reference + predict without selection)
SIM_TIMES = [0, 1, 2, 3, 4]


def load(name: str) -> tuple[list[np.ndarray], list[float]]:
    if name == "eb":
        X = np.load(SHARED / "eb_5x300x5.npy")
        return [x.astype(np.float64) for x in X], [0.0, 1.0, 2.0, 3.0, 4.0]
    if name == "emt":
        from scorebridge.data.cells.read import read_snapshots

        cells = read_snapshots(SHARED / "emt_4timepoints.csv", {"source": "csv", "time_key": "samples"})
        times = sorted(float(t) for t in np.unique(cells.time))
        return [cells.X[cells.time == t].astype(np.float64) for t in times], times
    from scorebridge.data.cells.simulate import simulate

    snaps, times, _ = simulate(
        {"system": name, "n_cells": 60 if name == "proliferation" else 100, "times": SIM_TIMES, "seed": 0}
    )
    return snaps, [float(t) for t in times]


def run(name: str, replicates: int, seed: int) -> dict:
    import torch

    torch.set_num_threads(1)
    from scorebridge import options
    from scorebridge.bridge.bootstrap import comparison_metrics, paired_bootstrap
    from scorebridge.bridge.evaluate import leave_one_out, time_label
    from scorebridge.bridge.metrics import wasserstein1
    from scorebridge.bridge.options import BaselinesOptions, ModelOptions, VanillaOptions
    from scorebridge.bridge.select import FitCache, predict

    snaps, times = load(name)
    start, cpu = time.perf_counter(), time.process_time()
    cache = FitCache(snaps, times, seed)
    baselines = options.build(BaselinesOptions, {})
    ev = leave_one_out(
        snaps,
        times,
        options.build(ModelOptions, MODEL),
        baselines,
        options.build(VanillaOptions, {}),
        "loo",
        seed=seed,
        cache=cache,
    )
    loo_s = time.perf_counter() - start
    comp = paired_bootstrap(snaps, times, ev, baselines, seed, replicates)
    metrics, verdicts = comparison_metrics(comp)
    fixed = options.build(ModelOptions, FIXED)
    for held in ev.splits:
        fit = cache.fit([i for i in range(len(times)) if i not in held], fixed)
        for k in held:
            metrics[f"w1/fixed/{time_label(times[k])}"] = wasserstein1(
                predict(fit, times[k], snaps[k].shape[0], seed, k), snaps[k]
            )
    labels = [time_label(times[s[0]]) for s in ev.splits]
    metrics["w1/fixed/mean"] = float(np.mean([metrics[f"w1/fixed/{lab}"] for lab in labels]))
    return {
        "dataset": name,
        "snapshots": [int(x.shape[0]) for x in snaps],
        "dim": int(snaps[0].shape[1]),
        "times": times,
        "metrics": {**ev.metrics, **metrics},
        "verdicts": verdicts,
        "comparison": comp,
        "selections": ev.selections,
        "seconds": {
            "loo": loo_s,
            "bootstrap": comp["seconds"],
            "total": time.perf_counter() - start,
            "cpu": time.process_time() - cpu,
        },
    }


def _fmt_ci(c: dict) -> str:
    return f"{c['difference']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}]"


def _verdict(c: dict) -> str:
    from scorebridge.bridge.bootstrap import verdict

    return verdict(c["low"], c["high"])


def tables(results: list[dict]) -> str:
    lines = [
        "| data | chosen per split (class, σ scale, mode) | model | model ot / plan | vanilla SB plan / ot | OT-CFM | McCann | previous | fixed | model − best baseline, 95 % CI | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        m = r["metrics"]
        chosen = "; ".join(
            f"t{s['held_out'][0]:g}: "
            + (
                f"{s['chosen']['class']} {s['chosen']['auto_scale']:g}x {s['chosen']['predict']}"
                if "auto_scale" in s["chosen"]
                else "configured"
            )
            for s in r["selections"]
        )
        row = r["comparison"]["times"]["mean"]
        best = row["baselines"][row["best_baseline"]]
        lines.append(
            f"| {r['dataset']} | {chosen} | **{m['w1/model/mean']:.3f}** | {m['w1/model_ot/mean']:.3f} / {m['w1/model_plan/mean']:.3f} | "
            f"{m['w1/vanilla_sb/mean']:.3f} / {m['w1/vanilla_sb_ot/mean']:.3f} | {m['w1/otcfm/mean']:.3f} | {m['w1/mccann/mean']:.3f} | "
            f"{m['w1/previous/mean']:.3f} | {m['w1/fixed/mean']:.3f} | {_fmt_ci(best)} vs {row['best_baseline']} | {_verdict(best)} |"
        )
    lines += [
        "",
        "| data | held out | model W1 | "
        + " | ".join(f"model − {b}" for b in ("vanilla_sb", "vanilla_sb_ot", "otcfm", "mccann", "previous"))
        + " |",
        "|---|---|---|" + "---|" * 5,
    ]
    for r in results:
        for lab, row in r["comparison"]["times"].items():
            cells = []
            for b in ("vanilla_sb", "vanilla_sb_ot", "otcfm", "mccann", "previous"):
                c = row["baselines"][b]
                cells.append(f"{_fmt_ci(c)} {_verdict(c)}")
            lines.append(
                f"| {r['dataset']} | {lab} | {r['metrics'][f'w1/model/{lab}']:.3f} | " + " | ".join(cells) + " |"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--datasets", nargs="+", default=DATASETS, choices=DATASETS)
    p.add_argument("--bootstrap", type=int, default=5, help="paired bootstrap replicates per data set")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2, help="data sets run in parallel processes")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "bridge_generalise.json"))
    a = p.parse_args(argv)
    os.environ.setdefault("SCOREBRIDGE_NO_PROGRESS", "1")
    load_before = os.getloadavg()
    start, cpu0 = time.perf_counter(), os.times()
    if a.jobs > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(a.jobs) as pool:
            futures = {d: pool.submit(run, d, a.bootstrap, a.seed) for d in a.datasets}
            results = []
            for d, f in futures.items():
                results.append(f.result())
                print(f"{d}: done ({time.perf_counter() - start:.0f} s)", flush=True)
                Path(a.out + ".partial").write_text(json.dumps(results, default=float))
    else:
        results = [run(d, a.bootstrap, a.seed) for d in a.datasets]
    t = os.times()
    out = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python benchmarks/bridge_generalise.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "wall_seconds": time.perf_counter() - start,
        "cpu_seconds": (t.children_user + t.children_system + t.user + t.system)
        - (cpu0.children_user + cpu0.children_system + cpu0.user + cpu0.system),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "model": MODEL,
        "bootstrap": a.bootstrap,
        "results": results,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1, default=float))
    print(
        f"\n{out['date']}, {out['wall_seconds']:.0f} s wall, {out['cpu_seconds']:.0f} s CPU, load {load_before[0]:.1f} -> {out['load_average_after'][0]:.1f}\n"
    )
    print(tables(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
