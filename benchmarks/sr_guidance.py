"""Benchmark: guidance methods and sampler steps at equal network passes, on one trained prior.

    python benchmarks/sr_guidance.py --work benchmarks/out/sr_targets [--variants sda-25 mmps1-17 ...]
                                     [--conditioning coarse] [--threads 1] [--out benchmarks/out/sr_guidance.json]

Reuses the data and the prior of a `benchmarks/sr_targets.py` run (its scratch directory
`--work`: `results/data/era5/default.zarr`, the collocated radiosondes and
`results/sr/default/checkpoint.pt`) and runs, for each variant, the real sampling stage
(`scorebridge.sr.sample.run_sampling`: per-modality gamma chosen on the validation times,
held-out times `calibrate.gap_hours` away from them) and the evaluation
(`scorebridge.sr.evaluate.evaluate`), with `sr.default.sample` overridden by the variant.

A variant is `<guidance>[<cg iterations>]-<steps>[-key=value...]` (keys of
`sr.default.sample`, YAML values), e.g. `sda-25`, `sda-25-solver=heun`, `dps-25`,
`mmps3-10-calibrate.gammas=[0.0,0.25]`. Network passes per sample: the default solver
`dpm2m` makes `steps` forward passes (`heun`: `2 steps - 1`); SDA one backward pass per
forward pass, MMPS `cg + 1`, DPS one per step. Appends one JSON row per variant (so a long
list can be run in parts): pooled RMSE ratio coarse-only / bicubic, pooled spread-skill raw
and calibrated, CRPS, passes and seconds per sample, the chosen gammas. The runs score the
held-out times (the test times). `--on validation` instead samples the validation block
(the times choices are made on) with the variant's settings as given (no calibration: give
`coarse.gamma=...`), coarse field only, and scores the pooled normalised posterior-mean
RMSE, spread-skill and fair CRPS there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def parse_variant(text: str) -> dict:
    """`sda-25`, `mmps2-9`, `sda-13-churn=1` -> sample overrides."""
    head, steps, *extra = text.split("-")
    guidance = head.rstrip("0123456789")
    over: dict = {"guidance": guidance, "steps": int(steps)}
    if guidance == "mmps":
        over["cg_iterations"] = int(head[len(guidance) :] or 1)
    for kv in extra:
        key, value = kv.split("=", 1)
        node = over
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return over


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


def run_variant(name: str, work: Path, conditioning: list[str], threads: int) -> dict:
    import torch

    from scorebridge.sr.data import open_era5
    from scorebridge.sr.evaluate import evaluate
    from scorebridge.sr.options import resolve_spec
    from scorebridge.sr.prior import load_prior
    from scorebridge.sr.sample import run_sampling

    cfg = yaml.safe_load((work / "config.yaml").read_text())
    spec = dict(cfg["sr"]["default"])
    spec["seed"] = cfg.get("seed", 0) if spec.get("seed") is None else spec["seed"]
    over = parse_variant(name)
    if over["guidance"] == "dps":  # DPS has no gamma: one calibration candidate (inflation only)
        over.setdefault("calibrate", {}).setdefault("gammas", [0.0])
    spec["sample"] = _merge(_merge(spec.get("sample", {}), {"conditioning": conditioning, "threads": threads}), over)
    exp = resolve_spec(spec)
    torch.set_num_threads(threads)
    era5 = work / "results" / "data" / "era5" / f"{spec['era5']}.zarr"
    obs = work / "results" / "data" / "obs" / spec["era5"] / f"{spec['igra']}.zarr" if spec.get("igra") else None
    prior = load_prior(work / "results" / "sr" / "default" / "checkpoint.pt", device="cpu")
    ds = open_era5(era5)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        sampling = run_sampling(
            prior,
            ds,
            exp,
            str(obs) if obs and "radiosondes" in conditioning else None,
            device=prior.device,
            out=Path(tmp) / "s.zarr",
        )
        wall = time.perf_counter() - t0
        res = evaluate(
            Path(tmp) / "s.zarr",
            era5,
            str(obs) if obs and "radiosondes" in conditioning else None,
            options=exp.evaluate,
        )
    m = res["metrics"]
    return {
        "variant": name,
        "conditioning": conditioning,
        "sample": over,
        "forward": m["cost/forward_per_sample"],
        "backward": m["cost/backward_per_sample"],
        "passes": m["cost/forward_per_sample"] + m["cost/backward_per_sample"],
        "seconds_per_sample": m["cost/seconds_per_sample"],
        "stage_seconds": wall,
        "rmse_ratio_pooled": m.get("summary/rmse_ratio"),
        "rmse_ratio_radiosondes_pooled": m.get("summary/rmse_ratio_radiosondes"),
        "rmse_normalised": m["summary/rmse_normalised"],
        "spread_skill_raw": m["summary/spread_skill_raw"],
        "spread_skill": m["summary/spread_skill"],
        "crps_normalised": m["summary/crps_normalised"],
        "rmse_ratio_channels": {k.split("/", 1)[1]: v for k, v in m.items() if k.startswith("rmse_ratio/")},
        "spread_skill_raw_channels": {
            k.split("/", 1)[1]: v
            for k, v in m.items()
            if k.startswith("spread_skill_raw/") and not k.endswith("coarse_only")
        },
        "gamma": sampling["gamma"],
        "inflation": sampling["inflation"],
        "calibration": [
            {k: r[k] for k in ("conditioning", "gamma", "ssr_raw", "crps_raw", "rmse")}
            for r in sampling["calibration"]["table"]
        ]
        if sampling["calibration"]
        else None,
        "n_times": res["n_times"],
        "load_average": os.getloadavg(),
    }


def run_on_validation(name: str, work: Path, threads: int) -> dict:
    """The variant on the validation block: fixed settings, coarse field only, no calibration."""
    import numpy as np
    import torch

    from scorebridge.sr import metrics as M
    from scorebridge.sr.calibrate import Conditioner, sample_times
    from scorebridge.sr.data import open_era5, split_times
    from scorebridge.sr.options import resolve_spec
    from scorebridge.sr.prior import load_prior

    cfg = yaml.safe_load((work / "config.yaml").read_text())
    spec = dict(cfg["sr"]["default"])
    spec["seed"] = cfg.get("seed", 0) if spec.get("seed") is None else spec["seed"]
    over = parse_variant(name)
    spec["sample"] = _merge(spec.get("sample", {}), over)
    exp = resolve_spec(spec)
    torch.set_num_threads(threads)
    prior = load_prior(work / "results" / "sr" / "default" / "checkpoint.pt", device="cpu")
    ds = open_era5(work / "results" / "data" / "era5" / f"{spec['era5']}.zarr")
    _, val_idx, _ = split_times(ds, exp.train.split, validation=True)
    mean, std = (np.asarray(a, np.float32) for a in (prior.normalisation.mean, prior.normalisation.std))
    cond = Conditioner(ds, list(prior.channels), mean, std, exp.sample, None)
    truth = cond.truth(val_idx)
    t0 = time.perf_counter()
    ens, cost, _ = sample_times(
        prior, cond, val_idx, truth, ["coarse"], int(exp.sample.members), seed=exp.run_seed + 7919, device="cpu"
    )
    rmse = M.rmse(ens.mean(1), truth, cond.lat)
    return {
        "variant": name,
        "on": "validation",
        "times": int(len(val_idx)),
        "members": int(exp.sample.members),
        "sample": over,
        "forward": cost.forward,
        "backward": cost.backward,
        "seconds": time.perf_counter() - t0,
        "rmse_normalised": M.pooled(rmse, std),
        "spread_skill_raw": M.pooled_spread_skill(ens, truth, std, cond.lat),
        "crps_normalised": float(np.mean(M.fair_crps(ens, truth, cond.lat) / std)),
        "rmse_channels_normalised": [float(r) for r in rmse / std],
        "spread_skill_raw_channels": [float(r) for r in M.spread_skill(ens, truth, cond.lat)],
        "load_average": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default=str(ROOT / "benchmarks" / "out" / "sr_targets"))
    p.add_argument(
        "--variants",
        nargs="+",
        default=["sda-25-solver=heun", "sda-25", "sda-18", "sda-12", "dps-25", "mmps1-17-calibrate.gammas=[0.0,0.25]"],
    )
    p.add_argument("--conditioning", default="coarse", help="comma-separated modalities")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "sr_guidance.json"))
    p.add_argument(
        "--on",
        choices=["test", "validation"],
        default="test",
        help="score the held-out (test) times through the stages, or the validation block",
    )
    a = p.parse_args(argv)
    os.environ.setdefault("SCOREBRIDGE_NO_PROGRESS", "1")
    out = Path(a.out)
    rows = json.loads(out.read_text()) if out.exists() else []
    for name in a.variants:
        if a.on == "validation":
            row = run_on_validation(name, Path(a.work), a.threads)
        else:
            row = run_variant(name, Path(a.work), a.conditioning.split(","), a.threads)
        row["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        rows.append(row)
        out.write_text(json.dumps(rows, indent=1) + "\n")
        keys = (
            "variant",
            "forward",
            "backward",
            "rmse_normalised",
            "rmse_ratio_pooled",
            "spread_skill_raw",
            "spread_skill",
            "crps_normalised",
            "gamma",
        )
        print(json.dumps({k: row[k] for k in keys if k in row}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
