"""Why the first inner leave-one-out selection picked worse settings, with numbers (issue 14).

For EB and EMT, every candidate (Brownian / linear symmetric A / linear full A, σ fixed at
0.25, 0.5 or 1 x auto, predictions from the small-noise limit `ot` or SB plan draws `plan`)
is fitted on every set of snapshots an outer leave-one-out split and its inner splits use
(all but {k} and all but {k, j}); each prediction is scored against its left-out snapshot
(plan: 5 draws) by W1, W1 on standardised features, the energy distance and sliced W2 (both
standardised). `analyse` then compares, per outer split, the inner score of each candidate
(mean over the interior training snapshots j) with its outer W1 (Spearman), and the outer
W1 of what each criterion and rule would choose.

    python benchmarks/bridge_select_study.py run eb     # ~4 min CPU (EMT ~20 min)
    python benchmarks/bridge_select_study.py analyse eb

Writes and reads benchmarks/out/bridge_select_study_<data>.json.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CLASSES = {
    "brownian": {"class": "brownian"},
    "lin_sym": {"class": "linear", "symmetric": True},
    "lin_full": {"class": "linear", "symmetric": False},
}
SCALES = [0.25, 0.5, 1.0]
MODES = {"ot": ("ot", 0.0), "plan": ("plan", 1.0)}
DRAWS = 5


def sliced_w2(x, y, n_proj=64, seed=0):
    rng = np.random.default_rng(seed)
    th = rng.normal(size=(x.shape[1], n_proj))
    th /= np.linalg.norm(th, axis=0)
    px, py = np.sort(x @ th, 0), np.sort(y @ th, 0)
    n = max(len(px), len(py))
    q = np.linspace(0, 1, n + 1)[1:] - 0.5 / n
    return float(np.sqrt(np.mean((np.quantile(px, q, axis=0) - np.quantile(py, q, axis=0)) ** 2) * x.shape[1]))


def run(name: str) -> None:
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bridge_generalise import load
    from scorebridge import options
    from scorebridge.bridge.fit import fit_bridge
    from scorebridge.bridge.metrics import energy_distance, wasserstein1
    from scorebridge.bridge.options import ModelOptions

    snaps, times = load(name)
    K = len(times)
    allx = np.concatenate(snaps)
    mu, sd = allx.mean(0), allx.std(0)
    outer = list(range(1, K - 1))
    sets = {(k,) for k in outer} | {tuple(sorted((k, j))) for k in outer for j in outer if j != k}
    res = []
    for held in sorted(sets):
        tr = [i for i in range(K) if i not in held]
        for (cn, ref), sc in itertools.product(CLASSES.items(), SCALES):
            spec = {
                "reference": {**ref, "sigma": {"init": "auto", "auto_scale": sc, "learn": False}},
                "max_iter": 10,
                "tol": 5e-3,
                "select": "none",
            }
            start = time.process_time()
            fit = fit_bridge([snaps[i] for i in tr], [times[i] for i in tr], options.build(ModelOptions, spec))
            cpu = time.process_time() - start
            for tgt in held:
                obs = snaps[tgt]
                for mn, (cp, nz) in MODES.items():
                    for d in range(DRAWS if mn == "plan" else 1):
                        pred = fit.bridge.sample_at(
                            times[tgt],
                            obs.shape[0],
                            torch.Generator().manual_seed(1000 * d + tgt),
                            noise=nz,
                            coupling=cp,
                        ).numpy()
                        zs, zo = (pred - mu) / sd, (obs - mu) / sd
                        res.append(
                            {
                                "held": list(held),
                                "target": tgt,
                                "cls": cn,
                                "scale": sc,
                                "mode": mn,
                                "draw": d,
                                "cpu": cpu,
                                "w1": wasserstein1(pred, obs),
                                "w1_std": wasserstein1(zs, zo),
                                "energy_std": energy_distance(zs, zo),
                                "sw2_std": sliced_w2(zs, zo),
                            }
                        )
            print(name, held, cn, sc, f"{cpu:.1f} s", flush=True)
    (ROOT / "benchmarks" / "out").mkdir(exist_ok=True)
    (ROOT / "benchmarks" / "out" / f"bridge_select_study_{name}.json").write_text(json.dumps(res))


def analyse(name: str) -> None:
    from scipy.stats import spearmanr

    res = json.loads((ROOT / "benchmarks" / "out" / f"bridge_select_study_{name}.json").read_text())
    ks = sorted({r["target"] for r in res})
    agg = defaultdict(list)
    for r in res:
        agg[(tuple(r["held"]), r["target"], (r["cls"], r["scale"], r["mode"]))].append(r)
    cands = sorted({(r["cls"], r["scale"], r["mode"]) for r in res})
    order = {"brownian": 0, "lin_sym": 1, "lin_full": 2}
    pref = sorted(cands, key=lambda c: (order[c[0]], -c[1], c[2] != "ot"))

    def val(rows, crit):
        return rows[0]["w1"] if crit == "w1_1draw" else float(np.mean([x[crit] for x in rows]))

    sds = [np.std([x["w1"] for x in rows]) for (h, t, c), rows in agg.items() if c[2] == "plan"]
    print(f"{name}: SD of W1 over {DRAWS} plan draws: median {np.median(sds):.4f}, max {np.max(sds):.4f}")
    picks = defaultdict(list)
    for k in ks:
        outer = {c: val(agg[((k,), k, c)], "w1") for c in cands}
        inner_js = [j for j in ks if j != k]
        print(
            f"\nhold out t{k}: inner tasks {inner_js}; best outer {min(outer.values()):.3f} {min(outer, key=outer.get)}"
        )
        for crit in ("w1", "w1_1draw", "w1_std", "energy_std", "sw2_std"):
            inner = {c: np.array([val(agg[(tuple(sorted((k, j))), j, c)], crit) for j in inner_js]) for c in cands}
            rho = spearmanr([inner[c].mean() for c in cands], [outer[c] for c in cands]).correlation
            ch = min(cands, key=lambda c: inner[c].mean())
            picks[f"{crit} min"].append(outer[ch])
            line = f"  {crit:<11} Spearman {rho:+.2f}, min picks {ch} -> {outer[ch]:.3f}"
            if (
                crit == "w1_std"
            ):  # the one-SE rule with the inner tasks' disagreement (the cells' bootstrap is in bridge.select)
                J = len(inner_js)
                se = {c: (np.std(inner[c] - inner[ch], ddof=1) / np.sqrt(J) if J > 1 else 0.0) for c in cands}
                c1 = next(c for c in pref if inner[c].mean() - inner[ch].mean() <= se[c])
                picks["w1_std one_se"].append(outer[c1])
                line += f"; one_se picks {c1} -> {outer[c1]:.3f}"
            print(line)
        picks["best (oracle)"].append(min(outer.values()))
        picks["lin_sym 0.25x ot (the former default)"].append(outer[("lin_sym", 0.25, "ot")])
        picks["brownian ot (= McCann)"].append(outer[("brownian", 1.0, "ot")])
    print("\nmean outer W1 of the pick:")
    for r, v in picks.items():
        print(f"  {r:<40} {np.mean(v):.4f}")


if __name__ == "__main__":
    {"run": run, "analyse": analyse}[sys.argv[1]](sys.argv[2])
