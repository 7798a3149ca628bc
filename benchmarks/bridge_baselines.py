"""Baselines for population prediction on real snapshot data: previous snapshot, McCann, OT-CFM.

EB (embryoid body, 5 x 300 cells x 5 PCs): the paper's split (train on 0, 2, 4; predict 1
and 3) and leave-one-out over the interior time points 1, 2, 3; EMT (A549, 4 time points,
577..885 cells, 10-D): leave-one-out over 1, 2. W1, W2, MMD and energy distance at the
held-out times; OT-CFM over several seeds; CPU seconds per fit (one thread).

    .venv/bin/python benchmarks/bridge_baselines.py [--seeds 3] [--data ../shared/data/cells]

Writes benchmarks/out/bridge_baselines.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("SCOREBRIDGE_NO_PROGRESS", "1")

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    import pandas as pd
    import torch

    from scorebridge.bridge.baselines import OTCFM, McCann, Previous
    from scorebridge.bridge.metrics import distribution_metrics

    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="OT-CFM seeds")
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "cells"))
    args = parser.parse_args()
    data = Path(args.data)
    eb = np.load(data / "eb_5x300x5.npy")
    emt = pd.read_csv(data / "emt_4timepoints.csv")
    datasets = {
        "eb": [eb[k] for k in range(5)],
        "emt": [emt.loc[emt.samples == k].drop(columns="samples").to_numpy(float) for k in range(4)],
    }
    splits = [("eb", "paper", [0, 2, 4], [1, 3]), ("eb", "loo", None, [1, 2, 3]), ("emt", "loo", None, [1, 2])]
    rows = []
    for name, split, train_idx, targets in splits:
        snaps = datasets[name]
        groups = (
            [(train_idx, targets)] if train_idx else [([k for k in range(len(snaps)) if k != t], [t]) for t in targets]
        )
        for tr, held in groups:
            train, times = [snaps[k] for k in tr], np.asarray(tr, float)
            methods = [("previous", Previous, {}), ("mccann", McCann, {})] + [
                ("otcfm", OTCFM, {"seed": s}) for s in range(args.seeds)
            ]
            for method, cls, cfg in methods:
                cpu = time.process_time()
                model = cls(**cfg).fit(train, times)
                fit_s = time.process_time() - cpu
                for t in held:
                    m = distribution_metrics(model.predict(float(t)), snaps[t])
                    rows.append(
                        {
                            "data": name,
                            "split": split,
                            "method": method,
                            "seed": cfg.get("seed"),
                            "t": t,
                            "fit_cpu_s": fit_s,
                            **m,
                        }
                    )
                    print(
                        f"{name:4s} {split:6s} {method:9s} seed={cfg.get('seed')} t={t} w1={m['w1']:.3f} w2={m['w2']:.3f} mmd={m['mmd']:.4f} energy={m['energy']:.3f} fit={fit_s:.1f}s",
                        flush=True,
                    )
    df = pd.DataFrame(rows)
    summary = df.groupby(["data", "split", "method", "t"])[["w1", "w2", "mmd", "energy", "fit_cpu_s"]].mean().round(4)
    print(summary.to_string())
    means = df.groupby(["data", "split", "method"])[["w1", "w2", "mmd", "energy"]].mean().round(4)
    print(means.to_string())
    out = ROOT / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "bridge_baselines.json").write_text(
        json.dumps(
            {
                "rows": rows,
                "summary": summary.reset_index().to_dict("records"),
                "means": means.reset_index().to_dict("records"),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
