"""Benchmark: training the SR prior with the default config on the default synthetic ERA5.

    python benchmarks/sr_prior_train.py [--era5 results/data/era5/default.zarr] [--threads 2]
                                        [--steps N] [--base N] [--samples 16] [--set KEY=YAML ...]

Measures wall and CPU time of `scorebridge.sr.train.train_prior` (no MLflow), the loss
curve, the denoising loss per σ on the VALIDATION times (`sr.train.split.validation`: the
end of the training period, not trained on; never the test times that the SR scores use,
so choices made on it do not peek at the scorecard), and how realistic unconditional samples are:
radially averaged power spectra of EDM-Heun samples (32 levels, 63 network evaluations)
against the validation fields, per channel, and the ratio of their power at the scales a 4x
coarse field does not resolve. Writes benchmarks/out/sr_prior_train.{json,png}.
Make the data first: `snakemake --cores 2 results/data/era5/default.zarr`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from scorebridge.config import load_config  # noqa: E402
from scorebridge.sr.data import load_fields, open_era5, split_times  # noqa: E402
from scorebridge.sr.edm import edm_sigmas  # noqa: E402
from scorebridge.sr.options import resolve_spec  # noqa: E402
from scorebridge.sr.prior import load_prior  # noqa: E402
from scorebridge.sr.train import VAL_SIGMAS, held_out_loss, train_prior  # noqa: E402


def radial_spectrum(x: np.ndarray) -> np.ndarray:
    """Radially averaged power spectrum of fields (..., H, W), averaged over leading dims."""
    h, w = x.shape[-2:]
    f = np.abs(np.fft.fft2(x - x.mean(axis=(-2, -1), keepdims=True))) ** 2
    f = f.reshape(-1, h, w).mean(0)
    ky, kx = np.meshgrid(np.fft.fftfreq(h) * h, np.fft.fftfreq(w) * w, indexing="ij")
    k = np.rint(np.sqrt(kx**2 + ky**2)).astype(int)
    kmax = min(h, w) // 2
    return np.array([f[k == i].mean() for i in range(1, kmax + 1)])


@torch.no_grad()
def heun_samples(prior, n: int, shape, steps: int = 32, seed: int = 0) -> np.ndarray:
    """Unconditional samples by Karras et al. Algorithm 1 (deterministic Heun)."""
    g = torch.Generator().manual_seed(seed)
    sig = edm_sigmas(steps, prior.sigma_min, prior.sigma_max, 7.0).float()
    x = torch.randn((n, prior.n_channels, *shape), generator=g) * sig[0]
    for i in range(steps):
        s, s_next = sig[i], sig[i + 1]
        d = (x - prior.denoise(x, s)) / s
        x_next = x + (s_next - s) * d
        if s_next > 0:
            d2 = (x_next - prior.denoise(x_next, s_next)) / s_next
            x_next = x + (s_next - s) * 0.5 * (d + d2)
        x = x_next
    return x.numpy()


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--era5", default=str(ROOT / "results/data/era5/default.zarr"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--base", type=int, default=None)
    p.add_argument("--samples", type=int, default=16)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        help="override of sr.default.train, KEY=YAML (e.g. model.periodic=[] or anomalies=false)",
    )
    p.add_argument("--out", default=str(ROOT / "benchmarks/out"))
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not Path(args.era5).exists():
        print(f"{args.era5} missing: run `snakemake --cores 2 results/data/era5/default.zarr` first", file=sys.stderr)
        return 1
    os.environ.setdefault("SCOREBRIDGE_NO_PROGRESS", "1")
    config = load_config(ROOT / "config/config.yaml")
    spec = dict(config["sr"]["default"])
    spec["seed"] = config["seed"] if spec.get("seed") is None else spec["seed"]
    spec["train"] = dict(spec["train"], threads=args.threads, device="cpu")
    if args.steps:
        spec["train"]["steps"] = args.steps
    if args.base:
        spec["train"]["model"] = dict(spec["train"]["model"], base=args.base)
    for assignment in args.set:
        key, value = assignment.split("=", 1)
        node = spec["train"]
        *parents, leaf = key.split(".")
        for part in parents:
            node[part] = dict(node.get(part, {}))
            node = node[part]
        node[leaf] = yaml.safe_load(value)
    ckpt = out / "sr_prior.pt"
    t0, c0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    exp = resolve_spec(spec)
    summary = train_prior(exp, args.era5, None, ckpt)
    c1 = resource.getrusage(resource.RUSAGE_SELF)
    wall = time.perf_counter() - t0
    cpu = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)

    prior = load_prior(ckpt, "cpu")
    ds = open_era5(args.era5)
    _, val_idx, _ = split_times(ds, exp.train.split, validation=True)
    if not len(val_idx):
        print("sr.train.split.validation is 0: no validation times to choose on", file=sys.stderr)
        return 1
    vfields = load_fields(ds, prior.channels, val_idx, prior.normalisation)
    val = held_out_loss(prior.denoiser, vfields, VAL_SIGMAS, prior.sigma_data, exp.run_seed, "cpu")
    truth = vfields  # spectra against the validation fields too
    t1 = time.perf_counter()
    samples = heun_samples(prior, args.samples, truth.shape[-2:], seed=1)
    t_sample = time.perf_counter() - t1
    names = prior.channel_names
    spectra = {n: (radial_spectrum(truth[:, c]), radial_spectrum(samples[:, c])) for c, n in enumerate(names)}
    kmax = len(next(iter(spectra.values()))[0])
    k_fine = kmax // 4  # wavenumbers above the Nyquist of a 4x coarser grid
    fine_ratio = {n: float(s[k_fine:].sum() / t[k_fine:].sum()) for n, (t, s) in spectra.items()}
    total_ratio = {n: float(s.sum() / t.sum()) for n, (t, s) in spectra.items()}
    losses = [v for _, v in summary["losses"]]
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "era5": args.era5,
        "threads": args.threads,
        "steps": summary["steps"],
        "params": summary["params"],
        "model": spec["train"]["model"],
        "train_overrides": args.set,
        "wall_s": wall,
        "cpu_s": cpu,
        "train_loop_s": summary["seconds"],
        "loss_first_50": float(np.mean(losses[:50])),
        "loss_last_10pct": summary["final_loss"],
        "validation_times": int(len(val_idx)),
        "val_loss": {f"{k:g}": v for k, v in val.items()},
        "val_loss_mean": float(np.mean(list(val.values()))),
        "sample_seconds": t_sample,
        "sample_nfe_per_sample": 2 * 32 - 1,
        "power_ratio_fine_scales": fine_ratio,
        "power_ratio_total": total_ratio,
        "load_average": os.getloadavg(),
    }
    (out / "sr_prior_train.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    steps = np.arange(1, len(losses) + 1)
    axes[0].plot(steps, losses, lw=0.5, alpha=0.4)
    k = 50
    axes[0].plot(steps[k - 1 :], np.convolve(losses, np.ones(k) / k, "valid"), lw=1.5)
    axes[0].set(
        yscale="log", xlabel="step", ylabel="EDM loss", title=f"training ({wall:.0f} s wall, {args.threads} threads)"
    )
    kk = np.arange(1, kmax + 1)
    for n, (t, s) in spectra.items():
        (line,) = axes[1].loglog(kk, t, lw=1.5, label=f"{n} truth")
        axes[1].loglog(kk, s, "--", color=line.get_color(), lw=1)
    axes[1].axvline(k_fine, color="k", lw=0.5)
    axes[1].set(xlabel="wavenumber", ylabel="power", title="spectra: truth (solid) vs prior samples (dashed)")
    axes[1].legend(fontsize=6, ncol=2)
    c = 0
    both = np.concatenate([truth[:1, c], samples[:1, c]], axis=-1)[0]
    axes[2].imshow(both, origin="lower", cmap="RdBu_r")
    axes[2].set_title(f"{names[c]}: validation truth | prior sample")
    fig.tight_layout()
    fig.savefig(out / "sr_prior_train.png", dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main())
