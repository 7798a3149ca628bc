"""Bridge benchmark on the embryoid-body time course (arXiv 2408.06277's EB subsample).

Held-out W1/W2/MMD/energy of the multi-marginal SB with iterative reference refinement
against the vanilla SB, OT-CFM, McCann and the previous snapshot, on the paper's split
(train on snapshots 0, 2, 4; predict 1 and 3) and leave-one-out over the interior points,
repeated over seeds (the seed drives OT-CFM's initialisation and minibatches, the model's
and vanilla SB's particle draws, and the σ bootstrap when `--debias bootstrap`; McCann and
"previous" are deterministic). Prints mean ± std over seeds (std with ddof = 0).

    python benchmarks/bridge_eb.py [--seeds 0 1 2] [--select]

The model by default is the model's default configuration (config/README.md): a symmetric
linear reference (the gradient field of a quadratic potential; the paper's EB reference is
also a gradient field) with σ fixed at 0.25x the data's own scale (`sigma: {init: auto,
auto_scale: 0.25, learn: false}`; the paper also fixes σ), predictions from the bridge's
small-noise limit. `--predict plan` draws from the SB plan instead; `--full-matrix
--learn-sigma --auto-scale 1 --predict plan` is the former default (full A, σ learned).

`--select` picks, per split and seed, a full or symmetric A, σ (learned / 0.2 / 0.5), the
iteration count (2 / 10) and the prediction mode (SB plan draws / small-noise limit) by
leave-one-out over the interior TRAINING snapshots only (`select_by_inner_loo`: the first,
minimum-W1 procedure, kept for the record; the model's own `select: inner_loo` is
`scorebridge.bridge.select`, benchmarked in bridge_generalise.py).
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
DATA = Path(os.environ.get("SCOREBRIDGE_SHARED_DATA", ROOT.parent / "shared" / "data")) / "cells" / "eb_5x300x5.npy"
PAPER = {
    "model (paper SBIRR)": (0.826, 1.009),
    "otcfm": (0.843, 1.034),
    "mccann": (0.847, 1.023),
    "previous": (1.700, 0.980),
    "vanilla_sb": (0.958, 0.988),
}
METHODS = ("model", "vanilla_sb", "otcfm", "mccann", "previous")


def candidates(reference: str) -> list[tuple[str, dict]]:
    """The model configurations `--select` chooses among: a full or symmetric A (linear class),
    σ learned (from 1.0) or fixed at 0.2 / 0.5, one refinement or up to ten, and the fitted
    bridge (SB plan, stochastic draws) or its small-noise limit (exact OT for the reference's
    cost, bridge mean path)."""
    out = []
    for symmetric in (False, True) if reference == "linear" else (None,):
        for sigma in ("learn", 0.2, 0.5):
            for max_iter in (2, 10):
                for coupling, noise in (("plan", 1.0), ("ot", 0.0)):
                    sig = {"init": 1.0, "learn": True} if sigma == "learn" else {"init": sigma, "learn": False}
                    ref = {"class": reference, "sigma": sig, **({} if symmetric is None else {"symmetric": symmetric})}
                    spec = {
                        "reference": ref,
                        "max_iter": max_iter,
                        "tol": 5e-3,
                        "select": "none",
                        "predict": {"coupling": coupling, "noise": noise},
                    }
                    out.append(
                        (("symmetric," if symmetric else "") + f"sigma={sigma},iter={max_iter},{coupling}", spec)
                    )
    return out


def select_by_inner_loo(snaps, times, train: list[int], reference: str, seed: int) -> tuple[dict, dict]:
    """Choose the model configuration by leave-one-out over the interior TRAINING snapshots
    (the outer held-out snapshots are never seen): mean W1 of each candidate predicting each
    interior training snapshot from the other training snapshots. Returns (spec, scores)."""
    import torch

    from scorebridge import options
    from scorebridge.bridge.fit import fit_bridge
    from scorebridge.bridge.metrics import wasserstein1
    from scorebridge.bridge.options import ModelOptions

    cands = candidates(reference)
    scores: dict[str, list[float]] = {name: [] for name, _ in cands}
    inner = train[1:-1]
    for h in inner:
        sub = [k for k in train if k != h]
        fits = {}
        for name, spec in cands:
            key = json.dumps({k: v for k, v in spec.items() if k != "predict"}, sort_keys=True)
            if key not in fits:
                fits[key] = fit_bridge(
                    [snaps[k] for k in sub], [times[k] for k in sub], options.build(ModelOptions, spec), seed=seed
                )
            gen = torch.Generator().manual_seed(seed * 1000 + h)
            pred = fits[key].bridge.sample_at(times[h], snaps[h].shape[0], gen, **spec["predict"]).numpy()
            scores[name].append(wasserstein1(pred, snaps[h]))
    mean = {name: float(np.mean(v)) for name, v in scores.items()}
    best = min(cands, key=lambda c: mean[c[0]])
    return best[1], {"chosen": best[0], "inner_holdouts": inner, "inner_w1": mean}


def main(argv=None) -> int:
    import torch

    torch.set_num_threads(1)
    from scorebridge import options
    from scorebridge.bridge.evaluate import leave_one_out
    from scorebridge.bridge.options import BaselinesOptions, ModelOptions, VanillaOptions

    baselines = options.build(BaselinesOptions, {"methods": ["previous", "mccann", "otcfm"]})
    vanilla = options.build(VanillaOptions, {})

    p = argparse.ArgumentParser()
    p.add_argument("--reference", default="linear", choices=["brownian", "linear", "potential"])
    p.add_argument("--full-matrix", action="store_true", help="linear reference with a full A (default: symmetric A)")
    p.add_argument("--sigma", default="auto", help="initial σ: 'auto' or a number")
    p.add_argument("--auto-scale", type=float, default=0.25, help="σ0 = auto_scale x auto (with --sigma auto)")
    p.add_argument("--learn-sigma", action="store_true", help="refit σ by maximum likelihood (default: fixed)")
    p.add_argument(
        "--predict",
        default="ot",
        choices=["plan", "ot"],
        help="plan: SB plan draws; ot: the small-noise limit (exact OT, bridge mean path)",
    )
    p.add_argument("--debias", default="none", choices=["none", "bootstrap"])
    p.add_argument("--max-iter", type=int, default=10)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--select",
        action="store_true",
        help="choose σ, iterations and prediction mode per split by inner leave-one-out on the training snapshots",
    )
    p.add_argument(
        "--out", default=None, help="default benchmarks/out/bridge_eb.json (bridge_eb_select.json with --select)"
    )
    a = p.parse_args(argv)
    a.out = a.out or str(ROOT / "benchmarks" / "out" / ("bridge_eb_select.json" if a.select else "bridge_eb.json"))
    X = np.load(DATA)
    snaps, times = [x for x in X], [0.0, 1.0, 2.0, 3.0, 4.0]
    sigma = {
        "init": a.sigma if a.sigma == "auto" else float(a.sigma),
        "auto_scale": a.auto_scale,
        "learn": a.learn_sigma,
        "debias": a.debias,
    }
    ref = {
        "class": a.reference,
        "sigma": sigma,
        **({"symmetric": not a.full_matrix} if a.reference == "linear" else {}),
    }
    predict = {"coupling": "plan", "noise": 1.0} if a.predict == "plan" else {"coupling": "ot", "noise": 0.0}
    model = {
        "reference": ref,
        "max_iter": a.max_iter,
        "tol": 5e-3,
        "select": "none",
        "predict": predict,
    }  # fixed settings (bridge_generalise.py: selected)
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python benchmarks/bridge_eb.py " + " ".join(argv or sys.argv[1:]),
        "model": model,
        "seeds": a.seeds,
        "runs": {},
    }
    for name, holdout in (("paper_split", [1, 3]), ("loo", "loo")):
        per_seed = []
        start = time.perf_counter()
        for seed in a.seeds:
            if not a.select:
                ev = leave_one_out(
                    snaps, times, options.build(ModelOptions, model), baselines, vanilla, holdout, seed=seed
                )
                per_seed.append(ev.metrics)
                continue
            merged: dict = {}
            for held in [[1, 3]] if holdout != "loo" else [[1], [2], [3]]:
                train = [k for k in range(len(times)) if k not in held]
                spec, info = select_by_inner_loo(snaps, times, train, a.reference, seed)
                print(
                    f"seed {seed}, hold out {held}: chose {info['chosen']} (inner W1 {info['inner_w1'][info['chosen']]:.3f})",
                    flush=True,
                )
                results.setdefault("selection", []).append({"split": name, "seed": seed, "held": held, **info})
                ev = leave_one_out(
                    snaps, times, options.build(ModelOptions, spec), baselines, vanilla, [held], seed=seed
                )
                for k, v in ev.metrics.items():
                    merged.setdefault(k, []).append(v)
            # per-time metrics come from one split each; means and times average over the splits
            per_seed.append({k: float(np.mean(v)) for k, v in merged.items()})
        results["runs"][name] = per_seed
        keys = sorted({k for m in per_seed for k in m})
        summary = {k: (float(np.mean([m[k] for m in per_seed])), float(np.std([m[k] for m in per_seed]))) for k in keys}
        results[name] = {"mean_std": summary, "seconds": time.perf_counter() - start}
        labels = sorted({k.split("/")[2] for k in keys if k.startswith("w1/model/t")}, key=lambda s: float(s[1:]))
        print(f"\n{name}: W1 mean ± std over seeds {a.seeds} ({time.perf_counter() - start:.0f} s)")
        print(f"{'method':<12}" + "".join(f"{lab:>16}" for lab in labels) + f"{'mean':>16}{'fit s':>8}{'cpu s':>8}")
        for meth in METHODS:
            cells = [summary[f"w1/{meth}/{lab}"] for lab in labels] + [summary[f"w1/{meth}/mean"]]
            print(
                f"{meth:<12}"
                + "".join(f"{m:9.3f} ± {s:.3f}" for m, s in cells)
                + f"{summary[f'fit_seconds/{meth}/mean'][0]:8.1f}{summary[f'fit_cpu_seconds/{meth}/mean'][0]:8.1f}"
            )
        diffs = [m["w1/model/mean"] - min(m[f"w1/{b}/mean"] for b in METHODS[1:]) for m in per_seed]
        print(f"model minus best baseline (mean W1), per seed: {[round(d, 3) for d in diffs]}")
    print("\npaper (train 0,2,4; t1 / t3):", PAPER)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
