"""Benchmark: the super-resolution targets, through the real workflow, in one run.

    python benchmarks/sr_targets.py            # default synthetic data, 4x coarsening
    python benchmarks/sr_targets.py --real     # + smoke run on the real ERA5 GRIB sample
    python benchmarks/sr_targets.py --cores 2 --set sr.default.sample.members=16

Runs Snakemake from the repository's Snakefile in a fresh working directory under
`benchmarks/out/sr_targets/` (nothing in `results/` is touched): first the data
(ERA5, IGRA, collocation, MLflow store; timed apart), then the SR chain
`sr_train -> sr_sample -> sr_evaluate` of experiment `default` (timed: the target is
< 10 min on 2 CPU cores). Then checks the targets on `metrics.json` (the fair scorecard,
pooled over channels in normalised units):

- coarse-only posterior-mean RMSE <= 0.6 x bicubic RMSE of the same coarse field
  (`summary/rmse_ratio`; the worst channel beside it);
- coarse + radiosondes below coarse-only (`summary/rmse_ratio_radiosondes` < 1);
- spread-skill ratio in [0.9, 1.1] for both ensembles, on held-out times kept
  `sample.calibrate.gap_hours` away from the calibration times (raw values beside);
- adding radiosondes to the coarse field lowers the RMSE at withheld radiosondes;
- <= 50 forward network evaluations per sample (backward passes stated).

`--real` adds a smoke run on `../shared/data/era5/era5-levels-members.grib` (z and t at
850/500 hPa, 10 members, 4 times, global 3 deg): ingestion through the `local` source,
a brief training on 3 times x 10 members, sampling and evaluating the last time
(coarse-only: there are no radiosondes for 2017-01 here). Writes
`benchmarks/out/sr_targets.json` and copies the figures to `benchmarks/out/sr_targets_figures/`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out"
SHARED = Path(os.environ.get("SCOREBRIDGE_SHARED_DATA", ROOT.parent / "shared" / "data"))


def _bin(name: str) -> str:
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


def _set(cfg: dict, assignment: str) -> None:
    key, value = assignment.split("=", 1)
    node = cfg
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = yaml.safe_load(value)


def snakemake(workdir: Path, configfile: Path, targets: list[str], cores: int) -> float:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "SCOREBRIDGE_NO_PROGRESS": "1",
    }
    cmd = [
        _bin("snakemake"),
        *targets,
        "--snakefile",
        str(ROOT / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(configfile),
        "--cores",
        str(cores),
        "--quiet",
        "rules",
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        logs = sorted((workdir / "results" / "logs").rglob("*.log"))
        tail = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in logs[-3:])
        raise SystemExit(f"snakemake failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}\n{tail}")
    return time.perf_counter() - t0


def _rule_seconds(work: Path, start: float) -> dict:
    """Wall seconds of each SR rule, from the times its output was written (the rules run one after another)."""
    out, prev = {}, start
    for rule, name in (("sr_train", "checkpoint.pt"), ("sr_sample", "samples.zarr"), ("sr_evaluate", "metrics.json")):
        path = work / "results" / "sr" / "default" / name
        if path.exists():
            end = path.stat().st_mtime
            out[rule] = round(end - prev, 1)
            prev = end
    return out


def default_run(cores: int, sets: list[str], name: str = "sr_targets") -> dict:
    work = OUT / name
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    for s in sets:
        _set(cfg, s)
    cfg["sr"] = {"default": cfg["sr"]["default"]}  # only the experiment under test
    cfg["bridge"] = {}
    cfg["cells"] = {}
    cfgfile = work / "config.yaml"
    cfgfile.write_text(yaml.safe_dump(cfg))
    exp = cfg["sr"]["default"]
    data_targets = [f"results/data/era5/{exp['era5']}.zarr", "results/mlflow/experiments.json"]
    if exp.get("igra"):
        data_targets.append(f"results/data/obs/{exp['era5']}/{exp['igra']}.zarr")
    t_data = snakemake(work, cfgfile, data_targets, cores)
    load_before, t_start = os.getloadavg(), time.time()
    t_sr = snakemake(work, cfgfile, ["results/sr/default/metrics.json"], cores)
    load_after = os.getloadavg()
    res = json.loads((work / "results" / "sr" / "default" / "metrics.json").read_text())
    m = res["metrics"]
    names = sorted({k.split("/", 1)[1] for k in m if k.startswith("rmse_ratio/")})
    ratios = [m[f"rmse_ratio/{c}"] for c in names]
    ssr = [m[f"spread_skill/{c}"] for c in names]
    wh_c = m.get("withheld_rmse/all_normalised/coarse")
    wh_cr = m.get("withheld_rmse/all_normalised/coarse+radiosondes")
    ssr_main, ssr_co = m["summary/spread_skill"], m.get("summary/spread_skill/coarse_only", m["summary/spread_skill"])
    sampling = res["sampling"]
    targets = {
        "coarse_only_vs_bicubic": {
            "value": m["summary/rmse_ratio"],
            "worst_channel": max(ratios),
            "ci95": [m.get("summary/rmse_ratio_ci_low"), m.get("summary/rmse_ratio_ci_high")],
            "vs_gaussian": m.get("summary/rmse_ratio_gaussian"),
            "vs_gaussian_ci95": [
                m.get("summary/rmse_ratio_gaussian_ci_low"),
                m.get("summary/rmse_ratio_gaussian_ci_high"),
            ],
            "target": "<= 0.6 (pooled, normalised units)",
            "met": m["summary/rmse_ratio"] <= 0.6,
        },
        "radiosondes_vs_coarse_only": {
            "value": m.get("summary/rmse_ratio_radiosondes"),
            "target": "< 1 (pooled, normalised units)",
            "met": m.get("summary/rmse_ratio_radiosondes") is not None and m["summary/rmse_ratio_radiosondes"] < 1,
        },
        "spread_skill": {
            "value": ssr_main,
            "raw": m["summary/spread_skill_raw"],
            "coarse_only": ssr_co,
            "coarse_only_raw": m.get("summary/spread_skill_raw/coarse_only"),
            "channels": [min(ssr), max(ssr)],
            "inflation": sampling.get("inflation"),
            "gap": sampling.get("gap"),
            "target": "in [0.9, 1.1] (pooled; held-out times `gap` after the calibration times)",
            "met": 0.9 <= ssr_main <= 1.1 and 0.9 <= ssr_co <= 1.1,
        },
        "withheld_radiosondes": {
            "coarse": wh_c,
            "coarse+radiosondes": wh_cr,
            "radiosondes": m.get("withheld_rmse/all_normalised/radiosondes"),
            "nearest_radiosonde": m.get("withheld_rmse/all_normalised/nearest_radiosonde"),
            "bicubic": m.get("withheld_rmse/all_normalised/bicubic"),
            "target": "coarse+radiosondes < coarse",
            "met": (wh_c is not None and wh_cr is not None and wh_cr < wh_c),
        },
        "forward_nfe": {
            "value": m["cost/forward_per_sample"],
            "backward": m["cost/backward_per_sample"],
            "seconds_per_sample": m["cost/seconds_per_sample"],
            "target": "<= 50",
            "met": m["cost/forward_per_sample"] <= 50,
        },
        "train_sample_evaluate_seconds": {
            "value": t_sr,
            "target": "< 600 on 2 CPU cores",
            "met": t_sr < 600,
            "load_average_1_5_15": {
                "before": [round(x, 2) for x in load_before],
                "after": [round(x, 2) for x in load_after],
            },
            "rule_seconds": _rule_seconds(work, t_start),
        },
    }
    per_channel = {
        c: {
            "rmse": m[f"rmse/{c}"],
            "rmse_coarse_only": m.get(f"rmse/{c}/coarse_only", m[f"rmse/{c}"]),
            "rmse_bicubic": m[f"rmse/{c}/bicubic"],
            "rmse_bilinear": m[f"rmse/{c}/bilinear"],
            "rmse_ratio": m[f"rmse_ratio/{c}"],
            "rmse_ratio_radiosondes": m.get(f"rmse_ratio_radiosondes/{c}"),
            "spread_skill": m[f"spread_skill/{c}"],
            "spread_skill_raw": m[f"spread_skill_raw/{c}"],
            "spread_skill_coarse_only": m.get(f"spread_skill/{c}/coarse_only"),
            "spread_skill_raw_coarse_only": m.get(f"spread_skill_raw/{c}/coarse_only"),
            "crps": m[f"crps/{c}"],
            "crps_bicubic": m[f"crps/{c}/bicubic"],
            "spectral_ratio": m.get(f"spectral_ratio/{c}"),
            "spectral_ratio_bicubic": m.get(f"spectral_ratio/{c}/bicubic"),
        }
        for c in names
    }
    figs = OUT / f"{name}_figures"
    if figs.exists():
        shutil.rmtree(figs)
    shutil.copytree(work / "results" / "sr" / "default" / "figures", figs)
    return {
        "data_seconds": t_data,
        "targets": targets,
        "per_channel": per_channel,
        "scorecard": res.get("scorecard"),
        "calibration": sampling.get("calibration"),
        "gamma": sampling.get("gamma"),
        "inflation": sampling.get("inflation"),
        "withheld": res.get("withheld"),
        "config": exp,
    }


def real_run(cores: int) -> dict:
    grib = SHARED / "era5" / "era5-levels-members.grib"
    if not grib.exists():
        return {"skipped": f"{grib} not present"}
    work = OUT / "sr_targets_real"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    cfg = {
        "seed": 0,
        "era5": {"real": {"source": "local", "files": [str(grib)], "variables": ["z", "t"], "levels": [850, 500]}},
        "sr": {
            "real": {
                "era5": "real",
                "train": {"steps": 300, "batch_size": 8, "model": {"base": 16}, "split": {"train_fraction": 0.75}},
                "sample": {"conditioning": ["coarse"], "members": 8, "calibrate": {"times": 2}},
            }
        },
    }
    cfgfile = work / "config.yaml"
    cfgfile.write_text(yaml.safe_dump(cfg))
    t_data = snakemake(work, cfgfile, ["results/data/era5/real.zarr", "results/mlflow/experiments.json"], cores)
    t_sr = snakemake(work, cfgfile, ["results/sr/real/metrics.json"], cores)
    res = json.loads((work / "results" / "sr" / "real" / "metrics.json").read_text())
    m = res["metrics"]
    names = sorted({k.split("/", 1)[1] for k in m if k.startswith("rmse_ratio/")})
    figs = OUT / "sr_targets_real_figures"
    if figs.exists():
        shutil.rmtree(figs)
    shutil.copytree(work / "results" / "sr" / "real" / "figures", figs)
    return {
        "data_seconds": t_data,
        "train_sample_evaluate_seconds": t_sr,
        "rmse_ratio_mean": m["summary/rmse_ratio"],
        "spread_skill_mean": m["summary/spread_skill"],
        "per_channel": {
            c: {"rmse": m[f"rmse/{c}"], "rmse_bicubic": m[f"rmse/{c}/bicubic"], "spread_skill": m[f"spread_skill/{c}"]}
            for c in names
        },
        "forward_nfe": m["cost/forward_per_sample"],
        "backward": m["cost/backward_per_sample"],
        "n_times": res["n_times"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cores", type=int, default=2)
    p.add_argument("--real", action="store_true", help="also the smoke run on the real ERA5 GRIB sample")
    p.add_argument("--only-real", action="store_true")
    p.add_argument(
        "--set", action="append", default=[], help="config override KEY=YAML (e.g. sr.default.sample.members=16)"
    )
    p.add_argument(
        "--name",
        default="sr_targets",
        help="scratch directory and report name under benchmarks/out/ (variants beside the default run)",
    )
    a = p.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    report = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "cores": a.cores,
        "command": " ".join(["python", "benchmarks/sr_targets.py", *(argv if argv is not None else sys.argv[1:])]),
    }
    if not a.only_real:
        report["default"] = default_run(a.cores, a.set, a.name)
    if a.only_real and (OUT / "sr_targets.json").exists():  # keep the last default run beside the new smoke run
        previous = json.loads((OUT / "sr_targets.json").read_text())
        if "default" in previous:
            report["default"] = {
                **previous["default"],
                "date": previous.get("date"),
                "command": previous.get("command"),
            }
    if a.real or a.only_real:
        report["real"] = real_run(a.cores)
    (OUT / f"{a.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    if "default" in report and not a.only_real:
        t = report["default"]["targets"]
        shown = {k: v.get("value", {kk: v.get(kk) for kk in ("coarse", "coarse+radiosondes")}) for k, v in t.items()}
        print(
            "\n".join(
                f"{k:32s} {'MET ' if v['met'] else 'MISS'} {shown[k]} (target {v['target']})" for k, v in t.items()
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
