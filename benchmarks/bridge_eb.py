"""Bridge benchmark on the embryoid-body time course (arXiv 2408.06277's EB subsample).

Held-out W1/W2/MMD/energy of the multi-marginal SB with iterative reference refinement
against the vanilla SB, OT-CFM, McCann and the previous snapshot, on the paper's split
(train on snapshots 0, 2, 4; predict 1 and 3) and leave-one-out over the interior points.

    python benchmarks/bridge_eb.py [--reference linear] [--out benchmarks/out/bridge_eb.json]
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


def main(argv=None) -> int:
    import torch

    torch.set_num_threads(1)
    from scorebridge.bridge.evaluate import leave_one_out

    p = argparse.ArgumentParser()
    p.add_argument("--reference", default="linear", choices=["brownian", "linear", "potential"])
    p.add_argument("--sigma", type=float, default=1.0)
    p.add_argument("--max-iter", type=int, default=10)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "bridge_eb.json"))
    a = p.parse_args(argv)
    X = np.load(DATA)
    snaps, times = [x for x in X], [0.0, 1.0, 2.0, 3.0, 4.0]
    model = {"reference": {"class": a.reference, "sigma": {"init": a.sigma}}, "max_iter": a.max_iter, "tol": 5e-3}
    results = {"date": time.strftime("%Y-%m-%d"), "command": "python benchmarks/bridge_eb.py " + " ".join(argv or sys.argv[1:]), "model": model}
    for name, holdout in (("paper_split", [1, 3]), ("loo", "loo")):
        start = time.perf_counter()
        ev = leave_one_out(snaps, times, model, {"methods": ["previous", "mccann", "otcfm"]}, holdout, seed=0)
        results[name] = {"metrics": ev.metrics, "seconds": time.perf_counter() - start}
        m = ev.metrics
        labels = sorted({k.split("/")[2] for k in m if k.startswith("w1/model/t")})
        print(f"\n{name} (W1; {time.perf_counter() - start:.0f} s)")
        print(f"{'method':<12}" + "".join(f"{lab:>8}" for lab in labels) + f"{'mean':>8}{'fit s':>8}{'cpu s':>8}")
        for meth in ("model", "vanilla_sb", "otcfm", "mccann", "previous"):
            print(f"{meth:<12}" + "".join(f"{m[f'w1/{meth}/{lab}']:8.3f}" for lab in labels) + f"{m[f'w1/{meth}/mean']:8.3f}{m[f'fit_seconds/{meth}/mean']:8.1f}{m[f'fit_cpu_seconds/{meth}/mean']:8.1f}")
    print("\npaper (train 0,2,4; t1 / t3):", PAPER)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
