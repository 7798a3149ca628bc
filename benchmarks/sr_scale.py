"""SR at scale: training and sampling throughput and memory from 64^2 to 256x512, 6 channels.

    python benchmarks/sr_scale.py                       # CPU: 64x64,128x128,256x256,256x512, 2,000 times
    python benchmarks/sr_scale.py --sizes 64x64 --times 400 --train-steps 6
    python benchmarks/sr_scale.py --dry-run             # every code path at tiny sizes (seconds)
    benchmarks/gpu_check.sh                             # one GPU: 256x256, a few hundred steps

For each grid: synthetic ERA5 (t, u, v at 850 and 500 hPa; `synthetic.dynamics:
stochastic`, streamed to a zarr store in time blocks), then, each in its own process
(peak RSS of the process polled with psutil; peak GPU memory from torch):

- training (`scorebridge.sr.train.train_prior`, the default config's U-Net, base 16,
  mults [1, 2, 2]) with the fields streamed from the store (`max_memory_mb` far below
  their size, prefetching reader) and, where they fit, held in memory: steady-state CPU
  and wall seconds per step (steps after the first two), samples/s, CPU seconds per
  sample and megapixel, the share of the loop's wall time spent waiting for data;
- posterior sampling (`scorebridge.sr.calibrate.sample_times`, SDA guidance on the 4x
  coarse field, one time, `--members` members in one batch): seconds per sample and
  guided network evaluation (one forward and one backward pass), and per sample at 49
  evaluations (25 Heun steps; 25 steps of solver dpm2m are 25).

Then the seam error of patch-wise sampling: a prior trained on 32x32 crops of the
smallest grid samples it whole and in windows (`sample.patch`), same seed; the
difference, in normalised units, in cells one window covers and in blended cells,
beside the ensemble spread. Output: benchmarks/out/sr_scale.json (and a markdown table
on stdout). Everything runs on CPU unless `--device cuda`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(HERE))

VARIABLES, LEVELS = ["t", "u", "v"], [850.0, 500.0]
PIXELS_PER_STEP = 131072  # batch = this / (H W): the same work per step at every size
MODEL = {"base": 16, "mults": [1, 2, 2]}


def write_store(path: Path, nlat: int, nlon: int, ntime: int, chunk_time: int = 8, block: int = 64) -> dict:
    """Synthetic ERA5 (stochastic dynamics) in the data contract, block by block, with its
    normalisation statistics; returns timings."""
    import numpy as np
    import zarr

    from scorebridge import options
    from scorebridge.data.era5 import layout
    from scorebridge.data.era5.options import SyntheticOptions
    from scorebridge.data.era5.synthetic import synthetic_blocks

    grid = options.build(
        SyntheticOptions, {"nlat": nlat, "nlon": nlon, "ntime": ntime, "dynamics": "stochastic", "step_hours": 6}
    )
    sums: dict[str, list] = {}
    t_gen = t_write = 0.0
    first = True
    t0 = time.perf_counter()
    for block_ds in synthetic_blocks(VARIABLES, LEVELS, grid, block):
        t1 = time.perf_counter()
        t_gen += t1 - t0
        ds = layout.finish(layout.standardise(block_ds, "synthetic"), chunk_time=chunk_time)
        for v in VARIABLES:
            x = ds[v].values.astype(np.float64)  # (time, level, lat, lon)
            s = sums.setdefault(v, [0, 0.0, 0.0])
            s[0] += x.size // x.shape[1]
            s[1] = s[1] + x.sum(axis=(0, 2, 3))
            s[2] = s[2] + (x**2).sum(axis=(0, 2, 3))
        enc = (
            {"time": {"units": "seconds since 1970-01-01", "calendar": "proleptic_gregorian", "dtype": "int64"}}
            if first
            else None
        )
        ds.to_zarr(
            path, mode="w" if first else "a", append_dim=None if first else "time", encoding=enc, consolidated=False
        )
        first = False
        t0 = time.perf_counter()
        t_write += t0 - t1
    stats = {}
    for v, (n, s1, s2) in sums.items():
        mean = s1 / n
        stats[v] = {
            "mean": [float(m) for m in mean],
            "std": [float(x) for x in np.sqrt(np.maximum(s2 / n - mean**2, 0))],
        }
    zarr.open_group(str(path), mode="r+").attrs.update({"normalisation": json.dumps(stats)})
    nbytes = ntime * len(VARIABLES) * len(LEVELS) * nlat * nlon * 4
    return {"generate_s": t_gen, "write_s": t_write, "fields_mb": nbytes / 2**20, "chunk_time": chunk_time}


class StepClock:
    """Stands in for the MLflow run of train_prior: its log_metrics is called after every step
    (log_every 1), so the wall and CPU time of each step are recorded."""

    def __init__(self):
        self.wall, self.cpu = [time.perf_counter()], [time.process_time()]

    def log_metrics(self, metrics, step=None):
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())


def _median_step(ticks: list[float], skip: int = 2) -> float:
    import numpy as np

    d = np.diff(ticks)[skip:]
    return float(np.median(d)) if len(d) else float("nan")


def _gpu_peak(device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def train_worker(a) -> dict:
    import torch

    from scorebridge.sr.data import open_era5
    from scorebridge.sr.options import resolve_spec
    from scorebridge.sr.train import train_prior

    last = str(open_era5(a.store)["time"].values[-1])[:19]  # one held-out time (its loss is computed after training)
    spec = {
        "era5": "bench",
        "seed": 0,
        "train": {
            "variables": VARIABLES,
            "levels": LEVELS,
            "steps": a.train_steps,
            "batch_size": a.batch,
            "lr_warmup": 1,
            "checkpoint_every": 0,
            "log_every": 1,
            "model": MODEL,
            "threads": a.threads,
            "device": a.device,
            "max_memory_mb": a.max_memory_mb,
            "precision": a.precision,
            "channels_last": a.channels_last,
            "compile": a.compile,
            "crop": a.crop,
            "prefetch": a.prefetch,
            "split": {"train_fraction": 0.9, "test_start": last, "test_end": last},
        },
    }
    clock = StepClock()
    summary = train_prior(resolve_spec(spec), a.store, None, a.checkpoint, run=clock)
    device = torch.device(summary["device"])
    step_wall, step_cpu = _median_step(clock.wall), _median_step(clock.cpu)
    h, w = a.crop or a.shape
    return {
        "batch": a.batch,
        "steps": a.train_steps,
        "step_wall_s": step_wall,
        "step_cpu_s": step_cpu,
        "samples_per_s": a.batch / step_wall,
        "cpu_s_per_sample_mpix": step_cpu / a.batch / (h * w / 1e6),
        "wall_s_per_sample_mpix": step_wall / a.batch / (h * w / 1e6),
        "data": summary["data"],
        "final_loss": summary["final_loss"],
        "gpu_peak_mb": _gpu_peak(device),
        "device": summary["device"],
    }


def sample_worker(a) -> dict:
    import numpy as np
    import torch

    from scorebridge.sr.calibrate import Conditioner, sample_times
    from scorebridge.sr.data import open_era5
    from scorebridge.sr.options import resolve_spec
    from scorebridge.sr.patches import patched
    from scorebridge.sr.prior import load_prior

    torch.set_num_threads(a.threads)
    sample = {
        "conditioning": ["coarse"],
        "members": a.members,
        "steps": a.sample_steps,
        "guidance": "sda",
        "batch_size": a.sample_batch,
        "calibrate": {"enabled": False},
        "precision": a.precision,
        "channels_last": a.channels_last,
        "patch": {"size": a.patch[0], "overlap": a.patch[1]} if a.patch else None,
    }
    opts = resolve_spec({"era5": "bench", "sample": sample}).sample
    prior = load_prior(a.checkpoint, a.device, precision=a.precision, channels_last=a.channels_last)
    ds = open_era5(a.store)
    cond = Conditioner(ds, prior.channels, prior.normalisation.mean, prior.normalisation.std, opts, None)
    idx = np.asarray([ds.sizes["time"] - 1 - i for i in range(a.sample_times)])
    truth = cond.truth(idx)
    den = patched(prior, opts.patch, truth.shape[-2:], opts.batch_size)
    c0 = time.process_time()
    ens, cost, _ = sample_times(den, cond, idx, truth, ["coarse"], a.members, seed=0, device=prior.device)
    cpu = (time.process_time() - c0) / ens.shape[0] / ens.shape[1]
    h, w = truth.shape[-2:]
    out = {
        "members": a.members,
        "batch_size": opts.batch_size,
        "times": len(idx),
        "steps": a.sample_steps,
        "forward": cost.forward,
        "backward": cost.backward,
        "s_per_sample": cost.seconds,
        "cpu_s_per_sample": cpu,
        "s_per_eval": cost.seconds / cost.forward,
        "cpu_s_per_eval": cpu / cost.forward,
        "cpu_s_per_eval_mpix": cpu / cost.forward / (h * w / 1e6),
        "s_per_sample_49_evals": cost.seconds / cost.forward * 49,
        "cpu_s_per_sample_49_evals": cpu / cost.forward * 49,
        "gpu_peak_mb": _gpu_peak(prior.device),
        "patch": a.patch,
    }
    if a.save_ensemble:
        std = np.asarray(prior.normalisation.std).reshape(1, 1, -1, 1, 1)
        np.save(a.save_ensemble, ens / std)
        np.save(Path(a.save_ensemble).with_suffix(".truth.npy"), truth / std[0])
        if opts.patch is not None:
            np.save(Path(a.save_ensemble).with_suffix(".weights.npy"), den.weights())
    return out


def run_worker(kind: str, a, **kw) -> dict:
    """`kind` in a child process: its result, wall/CPU time and peak RSS (era5_streaming.measure)."""
    from era5_streaming import measure

    res = Path(tempfile.mktemp(suffix=".json", dir=a.tmp))
    args = [sys.executable, __file__, "--worker", kind, "--result", str(res)]
    for k, v in {**vars(a), **kw}.items():
        if k in ("worker", "result", "sizes", "out", "dry_run", "cpu_reference") or v is None or v is False:
            continue
        flag = "--" + k.replace("_", "-")
        if v is True:
            args.append(flag)
        elif isinstance(v, (list, tuple)):
            args += [flag, *map(str, v)]
        else:
            args += [flag, str(v)]
    m = measure(args, env={"SCOREBRIDGE_NO_PROGRESS": "1", "OMP_NUM_THREADS": str(a.threads)})
    out = json.loads(res.read_text())
    res.unlink()
    return {**out, "process_wall_s": m["wall_s"], "process_cpu_s": m["cpu_s"], "peak_rss_mb": m["peak_rss_mb"]}


def seam_error(a, store: Path, tmp: Path) -> dict:
    """A prior trained on crops of the grid samples it whole and in windows, same seed."""
    import numpy as np

    ck = tmp / "seam.pt"
    H, W = a.shape
    crop = max(8, H // 2)
    train = run_worker(
        "train", a, store=store, checkpoint=ck, crop=[crop, crop], batch=8, train_steps=a.seam_steps, max_memory_mb=2048
    )
    runs = {}
    for name, patch in (("full", None), ("patch", [crop, crop // 4])):
        path = tmp / f"{name}.npy"
        runs[name] = run_worker(
            "sample",
            a,
            store=store,
            checkpoint=ck,
            members=8,
            sample_steps=10,
            sample_times=2,
            patch=patch,
            save_ensemble=path,
        )
        runs[name]["ensemble"] = np.load(path)
    truth = np.load(tmp / "full.truth.npy")
    weights = np.load(tmp / "patch.weights.npy")
    single = (weights > 0).sum(0) == 1
    full, patch = runs["full"].pop("ensemble"), runs["patch"].pop("ensemble")
    d = full - patch

    def rms(x, mask):
        return float(np.sqrt(np.mean(x[..., mask] ** 2)))

    every = np.ones_like(single)
    return {
        "grid": [H, W],
        "crop": crop,
        "patch": {"size": crop, "overlap": crop // 4},
        "windows": int(weights.shape[0]),
        "train_steps": a.seam_steps,
        "train_final_loss": train["final_loss"],
        "members": 8,
        "sample_steps": 10,
        "diff_rms_single_window": rms(d, single),
        "diff_rms_blended": rms(d, ~single),
        "diff_rms_all": rms(d, every),
        "spread_full": float(np.mean(full.std(axis=1, ddof=1))),
        "rmse_mean_full": rms(full.mean(1) - truth, every),
        "rmse_mean_patch": rms(patch.mean(1) - truth, every),
        "rmse_mean_patch_blended": rms(patch.mean(1) - truth, ~single),
        "rmse_mean_full_blended": rms(full.mean(1) - truth, ~single),
        "cost_patch_vs_full": runs["patch"]["cpu_s_per_sample"] / runs["full"]["cpu_s_per_sample"],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="64x64,128x128,256x256,256x512")
    ap.add_argument("--times", type=int, default=2000, help="time steps of each synthetic store")
    ap.add_argument("--train-steps", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: robust on a shared machine)")
    ap.add_argument("--max-memory-mb", type=float, default=16.0, help="sr.train.max_memory_mb of the streamed runs")
    ap.add_argument("--prefetch", type=int, default=2, help="sr.train.prefetch")
    ap.add_argument(
        "--chunk-time", type=int, default=8, help="time steps per zarr chunk of the stores (8: the ingestion's default)"
    )
    ap.add_argument(
        "--in-memory-upto-mb",
        type=float,
        default=1024.0,
        help="also train from memory when the fields are at most this",
    )
    ap.add_argument("--members", type=int, default=16)
    ap.add_argument("--sample-steps", type=int, default=2, help="sampler steps measured (cost extrapolated to 25)")
    ap.add_argument("--sample-batch", type=int, default=64, help="sample.batch_size")
    ap.add_argument(
        "--seam-steps", type=int, default=300, help="training steps of the prior of the seam test (0: skip)"
    )
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument(
        "--batch", type=int, default=None, help="training batch (default: %d pixels per step)" % PIXELS_PER_STEP
    )
    ap.add_argument("--tmpdir", default="/tmp")
    ap.add_argument("--out", default=str(HERE / "out" / "sr_scale.json"))
    ap.add_argument("--cpu-reference", default=None, help="a CPU result JSON copied beside this run's figures")
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU: checks every code path in seconds")
    # worker arguments
    ap.add_argument("--worker", choices=["generate", "train", "sample"], help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    for name in ("--store", "--checkpoint", "--save-ensemble", "--tmp"):
        ap.add_argument(name, help=argparse.SUPPRESS)
    ap.add_argument("--shape", type=int, nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--crop", type=int, nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--patch", type=int, nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--sample-times", type=int, default=1, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        os.environ.setdefault("SCOREBRIDGE_NO_PROGRESS", "1")
        work = {
            "generate": lambda: write_store(Path(a.store), *a.shape, a.times, a.chunk_time),
            "train": lambda: train_worker(a),
            "sample": lambda: sample_worker(a),
        }
        Path(a.result).write_text(json.dumps(work[a.worker]()))
        return 0
    if a.dry_run:
        a.sizes, a.times, a.train_steps, a.members, a.sample_steps, a.seam_steps = "16x16,16x32", 80, 4, 2, 1, 4
        a.device, a.batch, a.max_memory_mb, a.in_memory_upto_mb, a.threads = "cpu", 4, 0.01, 0.5, 1
    sizes = [tuple(int(n) for n in s.split("x")) for s in a.sizes.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="sr-scale-", dir=a.tmpdir))
    a.tmp = str(tmp)
    result = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "cpus": os.cpu_count(),
        "load_avg_start": os.getloadavg(),
        "settings": {k: v for k, v in vars(a).items() if v is not None},
        "sizes": {},
    }
    try:
        import torch

        result["torch"] = torch.__version__
        for H, W in sizes:
            key = f"{H}x{W}"
            store = tmp / f"era5_{key}.zarr"
            entry = {"generate": run_worker("generate", a, store=store, shape=[H, W])}
            batch = a.batch or max(1, PIXELS_PER_STEP // (H * W))
            common = dict(store=store, checkpoint=tmp / f"{key}.pt", shape=[H, W], batch=batch)
            entry["train_streamed"] = run_worker("train", a, **common)
            if entry["generate"]["fields_mb"] <= a.in_memory_upto_mb:
                entry["train_in_memory"] = run_worker("train", a, **dict(common, max_memory_mb=4096))
            entry["sample"] = run_worker("sample", a, store=store, checkpoint=tmp / f"{key}.pt", shape=[H, W])
            entry["load_avg"] = os.getloadavg()
            result["sizes"][key] = entry
            print(json.dumps({key: entry}), flush=True)
            if (H, W) != sizes[0]:
                shutil.rmtree(store, ignore_errors=True)
        if a.seam_steps:
            a.shape = list(sizes[0])
            result["seam"] = seam_error(a, tmp / f"era5_{sizes[0][0]}x{sizes[0][1]}.zarr", tmp)
        result["targets"] = targets(result)
        result["load_avg_end"] = os.getloadavg()
        if a.cpu_reference and Path(a.cpu_reference).exists():
            result["cpu_reference"] = json.loads(Path(a.cpu_reference).read_text())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))
    return 0


def targets(r: dict) -> dict:
    """The issue's targets, from the figures: cost per pixel within 1.3x of the smallest grid's;
    sampling 16 members at 256x256 under 8 GB; < 10 % of the step waiting for streamed data."""
    sizes = r["sizes"]
    first = next(iter(sizes.values()))
    base = first["train_streamed"]["cpu_s_per_sample_mpix"]
    sbase = first["sample"]["cpu_s_per_eval_mpix"]
    out = {
        "cost_per_pixel_ratio": {k: v["train_streamed"]["cpu_s_per_sample_mpix"] / base for k, v in sizes.items()},
        "sampling_cost_per_pixel_ratio": {k: v["sample"]["cpu_s_per_eval_mpix"] / sbase for k, v in sizes.items()},
        "data_wait_share": {k: v["train_streamed"]["data"]["wait_share"] for k, v in sizes.items()},
        "sample_peak_rss_mb": {k: v["sample"]["peak_rss_mb"] for k, v in sizes.items()},
    }
    out["cost_per_pixel_ok"] = all(x <= 1.3 for x in out["cost_per_pixel_ratio"].values())
    out["sampling_cost_per_pixel_ok"] = all(x <= 1.3 for x in out["sampling_cost_per_pixel_ratio"].values())
    out["data_wait_ok"] = all(x < 0.10 for x in out["data_wait_share"].values())
    if "256x256" in sizes:
        out["sample_256_16_members_under_8gb"] = sizes["256x256"]["sample"]["peak_rss_mb"] < 8192
    return out


def table(r: dict) -> str:
    rows = [
        "| grid | fields | generate + write | train: samples/s | CPU s / sample / Mpx | waiting for data | peak RSS (train) "
        "| sampling: CPU s / sample / evaluation / Mpx | CPU s / sample at 49 evaluations | peak RSS (sample) |",
        "|---" * 10 + "|",
    ]
    for k, e in r["sizes"].items():
        t, s, g = e["train_streamed"], e["sample"], e["generate"]
        mem = e.get("train_in_memory")
        mem_txt = f" (in memory: {mem['cpu_s_per_sample_mpix']:.2f})" if mem else ""
        rows.append(
            f"| {k} | {g['fields_mb']:,.0f} MB | {g['generate_s']:.0f} + {g['write_s']:.0f} s | {t['samples_per_s']:.2f} | "
            f"{t['cpu_s_per_sample_mpix']:.2f}{mem_txt} | {100 * t['data']['wait_share']:.1f} % | {t['peak_rss_mb']:,.0f} MB | "
            f"{s['cpu_s_per_eval_mpix']:.2f} | {s['cpu_s_per_sample_49_evals']:.1f} s | {s['peak_rss_mb']:,.0f} MB |"
        )
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main())
