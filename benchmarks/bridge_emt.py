"""Bridge benchmark on a second real time course: A549 EMT (4 time points, 577-885 cells,
10-D embedding; ../shared/data/cells/emt_4timepoints.csv), leave-one-out over the interior
time points, seeds 0..2. It checks that the model's defaults carry over to data on another
scale (features ~0.14 std, against ~0.8 for EB): the initial sigma (`auto` against a fixed
1.0) and the prediction mode (the fitted SB plan against its small-noise limit).

    python benchmarks/bridge_emt.py [--seeds 0 1 2]

"default" is the model's default configuration (symmetric linear reference, σ fixed at
0.25x auto, small-noise-limit predictions); "former default" is the full-A reference with
σ learned from auto (1.0x), and "init 1.0" the one before it.

Writes benchmarks/out/bridge_emt.json and prints W1 mean ± std over seeds.
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
DATA = (
    Path(os.environ.get("SCOREBRIDGE_SHARED_DATA", ROOT.parent / "shared" / "data")) / "cells" / "emt_4timepoints.csv"
)
PLAN = {"coupling": "plan", "noise": 1.0}
CONFIGS = {
    "default, ot + noise 0": {},
    "default, plan draws": {"predict": PLAN},
    "former default, plan": {
        "reference": {
            "class": "linear",
            "symmetric": False,
            "sigma": {"init": "auto", "auto_scale": 1.0, "learn": True},
        },
        "predict": PLAN,
    },
    "init 1.0, plan": {
        "reference": {"class": "linear", "symmetric": False, "sigma": {"init": 1.0, "learn": True}},
        "predict": PLAN,
    },
}


def main(argv=None) -> int:
    import torch

    torch.set_num_threads(1)
    from scorebridge import options
    from scorebridge.bridge.evaluate import leave_one_out
    from scorebridge.bridge.options import BaselinesOptions, ModelOptions, VanillaOptions
    from scorebridge.data.cells.read import read_snapshots

    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "bridge_emt.json"))
    a = p.parse_args(argv)
    if not DATA.exists():
        print(f"{DATA} not found (set SCOREBRIDGE_SHARED_DATA)", file=sys.stderr)
        return 1
    cells = read_snapshots(DATA, {"source": "csv", "time_key": "samples"})
    times = sorted(float(t) for t in np.unique(cells.time))
    snaps = [cells.X[cells.time == t].astype(np.float64) for t in times]
    results = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python benchmarks/bridge_emt.py " + " ".join(argv or sys.argv[1:]),
        "seeds": a.seeds,
        "rows": {},
    }
    rows: dict[str, list[float]] = {}
    for i, (name, spec) in enumerate(CONFIGS.items()):
        spec = {
            **spec,
            "max_iter": 10,
            "tol": 5e-3,
            "select": "none",
        }  # fixed settings (bridge_generalise.py: selected)
        # the baselines do not depend on the model's config: score them with the first one
        baselines = {"methods": ["previous", "mccann", "otcfm"]} if i == 0 else {"methods": []}
        for seed in a.seeds:
            start = time.process_time()
            ev = leave_one_out(
                snaps,
                times,
                options.build(ModelOptions, spec),
                options.build(BaselinesOptions, baselines),
                options.build(VanillaOptions, {}),
                "loo",
                seed=seed,
            )
            cpu = time.process_time() - start
            rows.setdefault(f"model: {name}", []).append(ev.metrics["w1/model/mean"])
            rows.setdefault(f"vanilla SB ({name.split(',')[0]})", []).append(ev.metrics["w1/vanilla_sb/mean"])
            for b in baselines["methods"]:
                rows.setdefault(b, []).append(ev.metrics[f"w1/{b}/mean"])
            results.setdefault("runs", []).append(
                {"config": name, "seed": seed, "cpu_seconds": cpu, "metrics": ev.metrics}
            )
            print(f"{name}, seed {seed}: model W1 {ev.metrics['w1/model/mean']:.3f} ({cpu:.0f} s CPU)", flush=True)
    print(f"\nEMT leave-one-out (t1, t2), mean W1 over seeds {a.seeds}:")
    for name, vals in rows.items():
        results["rows"][name] = [float(np.mean(vals)), float(np.std(vals))]
        print(f"  {name:<32} {np.mean(vals):.3f} ± {np.std(vals):.3f}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
