"""Bridge benchmark on the embryoid-body time course (arXiv 2408.06277's EB subsample).

Held-out W1/W2/MMD/energy of the multi-marginal SB with iterative reference refinement
against the vanilla SB, OT-CFM, McCann and the previous snapshot, on the paper's split
(train on snapshots 0, 2, 4; predict 1 and 3) and leave-one-out over the interior points,
repeated over seeds (the seed drives OT-CFM's initialisation and minibatches, the model's
and vanilla SB's particle draws, and the σ bootstrap when `--debias bootstrap`; McCann and
"previous" are deterministic). Prints mean ± std over seeds (std with ddof = 0).

    python benchmarks/bridge_eb.py [--seeds 0 1 2] [--reference linear] [--debias none]
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
PAPER = {"model (paper SBIRR)": (0.826, 1.009), "otcfm": (0.843, 1.034), "mccann": (0.847, 1.023), "previous": (1.700, 0.980), "vanilla_sb": (0.958, 0.988)}
METHODS = ("model", "vanilla_sb", "otcfm", "mccann", "previous")


def main(argv=None) -> int:
    import torch

    torch.set_num_threads(1)
    from scorebridge.bridge.evaluate import leave_one_out

    p = argparse.ArgumentParser()
    p.add_argument("--reference", default="linear", choices=["brownian", "linear", "potential"])
    p.add_argument("--sigma", type=float, default=1.0)
    p.add_argument("--debias", default="none", choices=["none", "bootstrap"])
    p.add_argument("--max-iter", type=int, default=10)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "bridge_eb.json"))
    a = p.parse_args(argv)
    X = np.load(DATA)
    snaps, times = [x for x in X], [0.0, 1.0, 2.0, 3.0, 4.0]
    model = {"reference": {"class": a.reference, "sigma": {"init": a.sigma, "debias": a.debias}}, "max_iter": a.max_iter, "tol": 5e-3}
    results = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": "python benchmarks/bridge_eb.py " + " ".join(argv or sys.argv[1:]), "model": model, "seeds": a.seeds, "runs": {}}
    for name, holdout in (("paper_split", [1, 3]), ("loo", "loo")):
        per_seed = []
        start = time.perf_counter()
        for seed in a.seeds:
            ev = leave_one_out(snaps, times, model, {"methods": ["previous", "mccann", "otcfm"]}, holdout, seed=seed)
            per_seed.append(ev.metrics)
        results["runs"][name] = per_seed
        keys = sorted({k for m in per_seed for k in m})
        summary = {k: (float(np.mean([m[k] for m in per_seed])), float(np.std([m[k] for m in per_seed]))) for k in keys}
        results[name] = {"mean_std": summary, "seconds": time.perf_counter() - start}
        labels = sorted({k.split("/")[2] for k in keys if k.startswith("w1/model/t")}, key=lambda s: float(s[1:]))
        print(f"\n{name}: W1 mean ± std over seeds {a.seeds} ({time.perf_counter() - start:.0f} s)")
        print(f"{'method':<12}" + "".join(f"{lab:>16}" for lab in labels) + f"{'mean':>16}{'fit s':>8}{'cpu s':>8}")
        for meth in METHODS:
            cells = [summary[f"w1/{meth}/{lab}"] for lab in labels] + [summary[f"w1/{meth}/mean"]]
            print(f"{meth:<12}" + "".join(f"{m:9.3f} ± {s:.3f}" for m, s in cells) + f"{summary[f'fit_seconds/{meth}/mean'][0]:8.1f}{summary[f'fit_cpu_seconds/{meth}/mean'][0]:8.1f}")
        diffs = [m["w1/model/mean"] - min(m[f"w1/{b}/mean"] for b in METHODS[1:]) for m in per_seed]
        print(f"model minus best baseline (mean W1), per seed: {[round(d, 3) for d in diffs]}")
    print("\npaper (train 0,2,4; t1 / t3):", PAPER)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
