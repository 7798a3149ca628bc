"""Bridge at single-cell scale: fit and evaluation time and peak memory against cells and
time points, and the 21 x 500 x 30 leave-one-out.

    python benchmarks/bridge_scale.py                      # every case below, JSON to benchmarks/out/
    python benchmarks/bridge_scale.py --cells 2000 10000   # a subset
    python benchmarks/bridge_scale.py --loo-only --workers 2

Data: a simulated 30-D Ornstein-Uhlenbeck course (`scorebridge.data.cells.simulate`, system
`ou` with a stable 30 x 30 drift: decay, three rotating planes, weak random coupling;
σ = 0.3, snapshots every 0.5 time units, every snapshot its own cells).

Cases, each in a fresh process (its peak RSS is its own), torch on `--threads` threads:

- cells per snapshot 2k, 10k, 50k, 100k with 5 snapshots in 30-D, and 500 cells with 5, 10
  and 20 snapshots: `fit` = `fit_bridge` on every snapshot with the default model options
  (`coupling_solver: auto`: dense up to 4,000 cells, minibatch above); `evaluate` = the
  middle snapshot held out, the model refitted on the others, as many cells predicted as it
  holds (the default small-noise prediction) and scored with `distribution_metrics` (W1,
  W2, MMD, energy on seeded 5,000-cell subsamples). `previous` (the preceding snapshot) is
  scored beside it for scale.
- `accuracy` (`--accuracy`): on EB (5 x 300, 5-D) and EMT (4 time points, 577-885 cells,
  10-D) from ../shared/data/cells, the leave-one-out over the interior snapshots of the model
  (the configured settings, `select: none`) with the dense solver and with the minibatch one
  (`minibatch.batch_size` 256, the default, and 128, so that every snapshot is split into
  2-7 batches); mean held-out W1 per solver and seed, and its difference from the dense one.
- `loo`: the 21 x 500 x 30 course, the whole leave-one-out of `bridge.evaluate.leave_one_out`
  (19 splits, the model, the vanilla SB and the baselines previous, McCann, OT-CFM) with the
  model's configured settings (`select: none`), splits run by `--workers` processes (each
  torch on `threads / workers` threads) and merged.

Every record carries the load average before and after (the machine may be shared).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DIM = 30


def simulate_course(n: int, K: int, d: int = DIM, seed: int = 0) -> tuple[list[np.ndarray], list[float]]:
    """K snapshots of n cells of the stable d-dimensional OU course (see the module docstring)."""
    from scorebridge.data.cells.simulate import simulate

    rng = np.random.default_rng(seed)
    A = -0.15 * np.eye(d) + 0.05 * rng.standard_normal((d, d)) / np.sqrt(d)
    for p in range(0, 6, 2):
        A[p, p + 1] -= 0.6
        A[p + 1, p] += 0.6
    mean = np.zeros(d)
    mean[:6] = 3.0
    sim = {
        "system": "ou",
        "params": {"A": A.tolist(), "b": [0.0] * d},
        "times": [0.5 * k for k in range(K)],
        "n_cells": n,
        "sigma": 0.3,
        "initial": {"mean": mean.tolist(), "std": [0.5] * d},
        "dt": 0.05,
        "seed": seed,
    }
    snaps, times, _ = simulate(sim)
    return snaps, [float(t) for t in times]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_case(n: int, K: int, threads: int, model_spec: dict) -> dict:
    """One fit + one held-out evaluation (in this process)."""
    import torch

    torch.set_num_threads(threads)
    import ot  # noqa: F401  - imported before the clock starts (its first import takes 10-30 s here)
    import scipy.spatial  # noqa: F401

    from scorebridge import options
    from scorebridge.bridge.fit import coupling_solver, fit_bridge
    from scorebridge.bridge.metrics import distribution_metrics
    from scorebridge.bridge.options import ModelOptions

    rec: dict = {"cells": n, "snapshots": K, "dim": DIM, "threads": threads, "load_before": os.getloadavg()}
    t0 = time.perf_counter()
    snaps, times = simulate_course(n, K)
    rec["simulate_s"] = time.perf_counter() - t0
    opts = options.build(ModelOptions, model_spec)
    rec["solver"] = coupling_solver(opts, [s.shape[0] for s in snaps])
    rss0 = _rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    fit = fit_bridge(snaps, times, opts, seed=0)
    rec.update(
        fit_s=time.perf_counter() - t0,
        fit_cpu_s=time.process_time() - c0,
        fit_iterations=len(fit.history),
        fit_converged=fit.converged,
    )
    rec["rss_after_fit_mb"] = _rss_mb()
    del fit
    h = K // 2
    train = [k for k in range(K) if k != h]
    t0, c0 = time.perf_counter(), time.process_time()
    held = fit_bridge([snaps[k] for k in train], [times[k] for k in train], opts, seed=0)
    t1 = time.perf_counter()
    gen = torch.Generator().manual_seed(h)
    pred = held.bridge.sample_at(
        times[h], snaps[h].shape[0], gen, noise=float(opts.predict.noise), coupling=opts.predict.coupling
    ).numpy()
    t2 = time.perf_counter()
    scores = distribution_metrics(pred, snaps[h])
    rec.update(
        eval_s=time.perf_counter() - t0,
        eval_cpu_s=time.process_time() - c0,
        eval_iterations=len(held.history),
        eval_fit_s=t1 - t0,
        eval_predict_s=t2 - t1,
        eval_score_s=time.perf_counter() - t2,
    )
    rec["heldout"] = {
        "time": times[h],
        **{f"model_{k}": v for k, v in scores.items()},
        "previous_w1": distribution_metrics(snaps[h - 1], snaps[h])["w1"],
    }
    rec["peak_rss_mb"] = _rss_mb()
    rec["rss_before_fit_mb"] = rss0
    rec["load_after"] = os.getloadavg()
    return rec


def run_loo_part(splits: list[int], threads: int, model_spec: dict) -> dict:
    """The leave-one-out of the 21 x 500 course over `splits` (held-out indices), in this process."""
    import torch

    torch.set_num_threads(threads)
    from scorebridge import options
    from scorebridge.bridge.evaluate import leave_one_out
    from scorebridge.bridge.options import BaselinesOptions, ModelOptions, VanillaOptions

    snaps, times = simulate_course(500, 21)
    t0, c0 = time.perf_counter(), time.process_time()
    ev = leave_one_out(
        snaps,
        times,
        options.build(ModelOptions, {"select": "none", **model_spec}),
        options.build(BaselinesOptions, {}),
        options.build(VanillaOptions, {}),
        [[k] for k in splits],
        seed=0,
    )
    return {
        "splits": splits,
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - c0,
        "metrics": ev.metrics,
        "peak_rss_mb": _rss_mb(),
    }


def run_accuracy(seeds: list[int], threads: int, model_spec: dict) -> dict:
    """Dense against minibatch couplings on EB and EMT (see the module docstring)."""
    import torch

    torch.set_num_threads(threads)
    from scorebridge import options
    from scorebridge.bridge.evaluate import leave_one_out
    from scorebridge.bridge.options import BaselinesOptions, ModelOptions, VanillaOptions
    from scorebridge.data.cells.read import read_snapshots

    data = Path(os.environ.get("SCOREBRIDGE_SHARED_DATA", ROOT.parent / "shared" / "data")) / "cells"
    courses = {}
    if (data / "eb_5x300x5.npy").exists():
        eb = np.load(data / "eb_5x300x5.npy")
        courses["EB"] = ([s.astype(np.float64) for s in eb], [float(k) for k in range(eb.shape[0])])
    if (data / "emt_4timepoints.csv").exists():
        cells = read_snapshots(data / "emt_4timepoints.csv", {"source": "csv", "time_key": "samples"})
        ts = sorted(float(t) for t in np.unique(cells.time))
        courses["EMT"] = ([cells.X[cells.time == t].astype(np.float64) for t in ts], ts)
    solvers = {
        "dense": {"coupling_solver": "dense"},
        "minibatch 256": {"coupling_solver": "minibatch", "minibatch": {"batch_size": 256}},
        "minibatch 128": {"coupling_solver": "minibatch", "minibatch": {"batch_size": 128}},
    }
    out: dict = {"data": str(data), "seeds": seeds, "courses": {}}
    for name, (snaps, times) in courses.items():
        rows: dict = {}
        for solver, extra in solvers.items():
            spec = {**model_spec, "select": "none", **extra}
            for seed in seeds:
                t0 = time.perf_counter()
                ev = leave_one_out(
                    snaps,
                    times,
                    options.build(ModelOptions, spec),
                    options.build(BaselinesOptions, {"methods": []}),
                    options.build(VanillaOptions, {}),
                    "loo",
                    seed=seed,
                )
                rows.setdefault(solver, []).append(
                    {"seed": seed, "w1": ev.metrics["w1/model/mean"], "seconds": time.perf_counter() - t0}
                )
        dense = np.array([r["w1"] for r in rows["dense"]])
        out["courses"][name] = {
            "cells": [int(s.shape[0]) for s in snaps],
            "runs": rows,
            "mean_w1": {s: float(np.mean([r["w1"] for r in v])) for s, v in rows.items()},
            "max_abs_diff_vs_dense": {
                s: float(np.max(np.abs(np.array([r["w1"] for r in v]) - dense))) for s, v in rows.items()
            },
        }
    return out


def _child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": out.stderr[-4000:], "args": args}
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_loo(workers: int, threads: int, model_spec: dict) -> dict:
    """All 19 splits, by `workers` processes in parallel (interleaved split lists), merged."""
    from concurrent.futures import ThreadPoolExecutor

    splits = list(range(1, 20))
    parts = [splits[i::workers] for i in range(workers)]
    per = max(1, threads // workers)
    load = os.getloadavg()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        results = list(
            pool.map(
                lambda p: _child(
                    ["--loo-part", json.dumps(p), "--threads", str(per), "--model", json.dumps(model_spec)]
                ),
                parts,
            )
        )
    wall = time.perf_counter() - t0
    errors = [r for r in results if "error" in r]
    if errors:
        return {"workers": workers, "error": errors}
    metrics = {}
    for r in results:
        metrics.update({k: v for k, v in r["metrics"].items() if "/t" in k})
    methods = sorted({k.split("/")[1] for k in metrics if k.startswith("w1/") and k.endswith(tuple("0123456789"))})
    mean_w1 = {m: float(np.mean([v for k, v in metrics.items() if k.startswith(f"w1/{m}/t")])) for m in methods}
    return {
        "workers": workers,
        "threads_per_worker": per,
        "wall_s": wall,
        "cpu_s": sum(r["cpu_seconds"] for r in results),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
        "mean_w1": mean_w1,
        "per_time_w1": {k: v for k, v in metrics.items() if k.startswith("w1/")},
        "load_before": load,
        "load_after": os.getloadavg(),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--cells", type=int, nargs="*", default=[2000, 10000, 50000, 100000], help="cells per snapshot (5 snapshots)"
    )
    p.add_argument("--courses", type=int, nargs="*", default=[5, 10, 20], help="snapshot counts at 500 cells")
    p.add_argument(
        "--workers",
        type=int,
        nargs="*",
        default=[1, 2],
        help="processes for the 21 x 500 leave-one-out (each setting run once)",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", default="{}", help="model options (JSON) over the defaults")
    p.add_argument("--loo-only", action="store_true")
    p.add_argument("--accuracy", action="store_true", help="only the dense / minibatch comparison on EB and EMT")
    p.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2], help="seeds of the accuracy comparison")
    p.add_argument("--no-loo", action="store_true")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "bridge_scale.json"))
    p.add_argument("--case", nargs=2, type=int, help=argparse.SUPPRESS)  # n K: one case, JSON on stdout
    p.add_argument("--loo-part", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    spec = json.loads(a.model)
    if a.case:
        print(json.dumps(run_case(a.case[0], a.case[1], a.threads, spec)))
        return 0
    if a.accuracy:
        acc = run_accuracy(a.seeds, a.threads, spec)
        for name, c in acc["courses"].items():
            print(name, {s: round(v, 4) for s, v in c["mean_w1"].items()}, "max |diff|:", c["max_abs_diff_vs_dense"])
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(acc, indent=1))
        return 0
    if a.loo_part:
        print(json.dumps(run_loo_part(json.loads(a.loo_part), a.threads, spec)))
        return 0
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python benchmarks/bridge_scale.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "cpu_count": os.cpu_count(),
        "model": spec,
        "cases": [],
        "loo": [],
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    cases = [] if a.loo_only else [(n, 5) for n in a.cells] + [(500, K) for K in a.courses]
    for n, K in cases:
        rec = _child(["--case", str(n), str(K), "--threads", str(a.threads), "--model", a.model])
        results["cases"].append(rec)
        if "error" in rec:
            print(f"{n} cells x {K}: failed\n{rec['error']}", flush=True)
        else:
            print(
                f"{n:>7} cells x {K:>2} snapshots ({rec['solver']}): fit {rec['fit_s']:.1f} s ({rec['fit_iterations']} it), evaluate {rec['eval_s']:.1f} s "
                f"(refit {rec['eval_fit_s']:.1f}, predict {rec['eval_predict_s']:.1f}, score {rec['eval_score_s']:.1f}), "
                f"peak RSS {rec['peak_rss_mb']:.0f} MB, held-out W1 {rec['heldout']['model_w1']:.3f} (previous {rec['heldout']['previous_w1']:.3f}), "
                f"load {rec['load_before'][0]:.1f} -> {rec['load_after'][0]:.1f}",
                flush=True,
            )
        Path(a.out).write_text(json.dumps(results, indent=1))
    if not a.no_loo:
        for w in a.workers:
            rec = run_loo(w, a.threads, spec)
            results["loo"].append(rec)
            if "error" in rec:
                print(f"loo, {w} workers: failed\n{rec['error']}", flush=True)
            else:
                print(
                    f"21 x 500 leave-one-out, {w} worker(s): {rec['wall_s']:.0f} s wall, {rec['cpu_s']:.0f} s CPU, mean W1 {rec['mean_w1']}",
                    flush=True,
                )
            Path(a.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
