"""How far a Gaussian prior with the data's own spectrum gets: the linear (Wiener) posterior
mean of a coarse field, beside the diffusion posterior and bicubic interpolation.

    python benchmarks/sr_linear_bound.py --work benchmarks/out/sr_targets

Reuses an `sr_targets.py` run (its scratch directory): the ERA5 store, the prior's channels
and normalisation, the training split and `results/sr/default/samples.zarr` (its held-out
times and coarse fields). Per channel, a stationary Gaussian prior on the doubly periodic
grid: mean = the training-time mean field, covariance = circulant from the power spectrum
of the training anomalies (the mean of |FFT|^2 over the training times; nothing else is
fitted or tuned). The observation is the workflow's own block average
(`sr.operators.CoarseGrain`, factor from the samples store) with noise `sigma_y_relative`
x std, as the sampler assumes. The posterior mean m + S A^T (A S A^T + R)^-1 (y - A m) is
scored like the diffusion posterior: latitude-weighted RMSE per channel and pooled in
normalised units, against the scorecard's bicubic baseline (`summary/rmse_ratio`).
Only the training times' fields are used to build it, so it is a fair baseline on the
held-out times. Beside the per-channel estimate, the same with all channels at once
(`*_linear_cross`: the covariance from the training anomalies' mean cross-spectra, in
normalised units; grids up to 8,192 values): the relations between channels are where much of
the information is. Every pooled ratio comes with a 95 % interval from a paired bootstrap over
the held-out times (`bootstrap`). And the prior as a denoiser (`denoiser_vs_linear`): its
denoising MSE against the cross-spectral Gaussian denoiser's (:mod:`scorebridge.sr.wiener`
from the training fields) on the validation times, at noise levels 0.005-2. Prints and writes
JSON (`--out`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]


def circulant_covariance(anomalies: np.ndarray) -> np.ndarray:
    """[T, H, W] anomalies -> the (H W) x (H W) covariance of a stationary field on the torus
    with their mean power spectrum."""
    T, H, W = anomalies.shape
    power = np.mean(np.abs(np.fft.fft2(anomalies)) ** 2, axis=0) / (H * W)
    autocov = np.real(np.fft.ifft2(power))  # autocov[dy, dx]
    iy, ix = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    iy, ix = iy.ravel(), ix.ravel()
    return autocov[(iy[:, None] - iy[None, :]) % H, (ix[:, None] - ix[None, :]) % W]


def cross_covariance(anomalies: np.ndarray) -> np.ndarray:
    """[T, C, H, W] anomalies -> the (C H W) x (C H W) covariance of a stationary multi-channel
    field on the torus with their mean cross-spectra (channel-major order)."""
    T, C, H, W = anomalies.shape
    f = np.fft.fft2(anomalies)
    cross = np.einsum("ncij,ndij->cdij", f, f.conj()) / (T * H * W)
    acov = np.real(np.fft.ifft2(cross))  # [C, C, dy, dx]
    iy, ix = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    iy, ix = iy.ravel(), ix.ravel()
    dense = acov[:, :, (iy[:, None] - iy[None, :]) % H, (ix[:, None] - ix[None, :]) % W]
    return dense.transpose(0, 2, 1, 3).reshape(C * H * W, C * H * W)


def denoiser_vs_linear(work: Path, ds, exp, train_idx, val_idx, draws: int = 8) -> dict:
    """Denoising MSE (normalised units, per channel) of the trained prior against the
    cross-spectral Gaussian (Wiener) denoiser built from the training fields, on the
    validation times (`draws` noise draws each) at a ladder of noise levels."""
    import torch

    from scorebridge.sr.data import load_fields
    from scorebridge.sr.prior import load_prior
    from scorebridge.sr.wiener import SpectralWiener, spectral_moments

    prior = load_prior(work / "results" / "sr" / "default" / "checkpoint.pt", device="cpu")
    norm = prior.normalisation

    def get(idx):
        x = load_fields(ds, prior.channels, np.asarray(idx), check_nan=False).astype(np.float32)
        return torch.from_numpy(np.asarray(norm.normalise(x), np.float32))

    tr, va = get(train_idx), get(val_idx).repeat(draws, 1, 1, 1)
    off = prior.denoiser.offset if prior.denoiser.offset is not None else torch.zeros(tr.shape[1:])
    gauss = SpectralWiener(tuple(tr.shape[1:]))
    gauss.set_moments(spectral_moments([tr.numpy()], off.numpy()))
    gen = torch.Generator().manual_seed(0)
    rows = []
    for s in (0.005, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0):
        x = va + s * torch.randn(va.shape, generator=gen)
        sig = torch.full((len(x),), s)
        with torch.no_grad():
            d_net = prior.denoise(x, sig)
            d_lin = gauss(x - off, sig) + off
        e_net = (d_net - va).square().mean((0, 2, 3))
        e_lin = (d_lin - va).square().mean((0, 2, 3))
        rows.append(
            {
                "sigma": s,
                "mse_prior": float(e_net.mean()),
                "mse_linear": float(e_lin.mean()),
                "prior_over_linear_per_channel": (e_net / e_lin).tolist(),
            }
        )
    skip = "wiener" if getattr(prior.denoiser, "wiener", None) is not None else "scalar"
    return {"skip": skip, "times": [int(t) for t in val_idx], "draws": draws, "rows": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default=str(ROOT / "benchmarks" / "out" / "sr_targets"))
    p.add_argument("--out", default=None, help="JSON (default: <work>/linear_bound.json)")
    a = p.parse_args(argv)
    import torch

    from scorebridge.sr import metrics as M
    from scorebridge.sr.data import load_fields, open_era5, split_times
    from scorebridge.sr.operators import CoarseGrain
    from scorebridge.sr.options import resolve_spec
    from scorebridge.sr.store import open_samples, vars_to_fields

    work = Path(a.work)
    cfg = yaml.safe_load((work / "config.yaml").read_text())
    spec = dict(cfg["sr"]["default"])
    spec["seed"] = cfg.get("seed", 0) if spec.get("seed") is None else spec["seed"]
    exp = resolve_spec(spec)
    ds = open_era5(work / "results" / "data" / "era5" / f"{spec['era5']}.zarr")
    sds, sampling, channels = open_samples(work / "results" / "sr" / "default" / "samples.zarr")
    train_idx, val_idx, _ = split_times(ds, exp.train.split, validation=True)
    tidx = np.asarray(sds["time_index"].values, np.int64)
    truth = load_fields(ds, channels, tidx, check_nan=False).astype(np.float64)
    train = load_fields(ds, channels, np.asarray(train_idx), check_nan=False).astype(np.float64)
    coarse = vars_to_fields(sds, channels, "_coarse").astype(np.float64)  # [T, C, h, w]
    post = vars_to_fields(sds, channels, "_coarse_only").astype(np.float64).mean(1)  # coarse-only posterior mean
    std = np.asarray(sampling["normalisation"]["std"], np.float64)
    lat = np.asarray(sds["latitude"].values, np.float64)
    T, C, H, W = truth.shape
    k = int(sampling["coarse_factor"])
    op = CoarseGrain(k, (H, W), pad=exp.sample.coarse.pad)
    basis = torch.eye(H * W, dtype=torch.float64).view(H * W, 1, H, W)
    A = op.forward(basis).reshape(H * W, -1).numpy().T  # [n_obs, H W]
    est = np.empty_like(truth)
    for c in range(C):
        m = train[:, c].mean(0)
        S = circulant_covariance(train[:, c] - m)
        R = (float(exp.sample.coarse.sigma_y_relative) * std[c]) ** 2 * np.eye(A.shape[0])
        gain = S @ A.T @ np.linalg.inv(A @ S @ A.T + R)
        resid = coarse[:, c].reshape(T, -1) - (A @ m.ravel())[None]
        est[:, c] = m[None] + (resid @ gain.T).reshape(T, H, W)
    # all channels at once (normalised units): the cross-covariances carry the relations between
    # channels (winds and temperature from the same streamfunctions in the synthetic data)
    est_x = None
    if C * H * W <= 8192:
        z = (train - train.mean(0)[None]) / std[None, :, None, None]
        S = cross_covariance(z)
        Ax = np.kron(np.eye(C), A)
        R = float(exp.sample.coarse.sigma_y_relative) ** 2 * np.eye(Ax.shape[0])
        gain = S @ Ax.T @ np.linalg.inv(Ax @ S @ Ax.T + R)
        m = train.mean(0)
        resid = (
            (coarse - np.stack([(A @ m[c].ravel()).reshape(coarse.shape[-2:]) for c in range(C)])[None])
            / std[None, :, None, None]
        ).reshape(T, -1)
        est_x = m[None] + (resid @ gain.T).reshape(T, C, H, W) * std[None, :, None, None]
    metrics = json.loads((work / "results" / "sr" / "default" / "metrics.json").read_text())
    metrics = metrics.get("metrics", metrics)
    names = [f"{v}/{int(lv)}" if lv is not None else v for v, lv in channels]
    r_lin, r_post = M.rmse(est, truth, lat), M.rmse(post, truth, lat)
    # the scorecard's baseline (per channel the better bicubic of the field or its anomalies):
    # rmse_ratio/<c> = coarse-only posterior-mean RMSE / that baseline
    have = all(f"rmse_ratio/{n}" in metrics for n in names)
    bic = np.array([r_post[i] / metrics[f"rmse_ratio/{n}"] for i, n in enumerate(names)]) if have else None
    res = {
        "work": str(work),
        "times": [int(t) for t in tidx],
        "train_times": len(train_idx),
        "channels": names,
        "rmse_linear": r_lin.tolist(),
        "rmse_diffusion_coarse_only": r_post.tolist(),
        "pooled_linear": M.pooled(r_lin, std),
        "pooled_diffusion_coarse_only": M.pooled(r_post, std),
        "linear_over_diffusion": (r_lin / r_post).tolist(),
    }
    if est_x is not None:
        r_x = M.rmse(est_x, truth, lat)
        res["rmse_linear_cross"] = r_x.tolist()
        res["pooled_linear_cross"] = M.pooled(r_x, std)
    if bic is not None:
        res["rmse_bicubic"] = bic.tolist()
        res["pooled_bicubic"] = M.pooled(bic, std)
        res["ratio_linear_vs_bicubic"] = res["pooled_linear"] / res["pooled_bicubic"]
        res["ratio_diffusion_vs_bicubic"] = res["pooled_diffusion_coarse_only"] / res["pooled_bicubic"]
        if est_x is not None:
            res["ratio_linear_cross_vs_bicubic"] = res["pooled_linear_cross"] / res["pooled_bicubic"]
            res["ratio_linear_cross_vs_bicubic_per_channel"] = (np.asarray(res["rmse_linear_cross"]) / bic).tolist()
    # paired bootstrap over the held-out times (2,000 resamples, percentile 95 % intervals) of
    # the pooled RMSE ratios: every estimator is scored on the same resampled times
    from scorebridge.sr.evaluate import _interpolated
    from scorebridge.sr.scorecard import bootstrap_ratio, per_time_mse

    fields = {"diffusion": post, "linear": est}
    if est_x is not None:
        fields["linear_cross"] = est_x
    interp, _ = _interpolated(sds, channels, coarse, k, (H, W), sampling["periodic"], truth, lat)
    fields["bicubic"] = interp["bicubic"]
    mse = {n: per_time_mse(f, truth, lat) for n, f in fields.items()}

    def pooled_of(name):
        return M.pooled(np.sqrt(mse[name].mean(0)), std)

    pairs = [("diffusion", "bicubic"), ("linear", "bicubic"), ("diffusion", "linear")]
    if est_x is not None:
        pairs += [("linear_cross", "bicubic"), ("diffusion", "linear_cross")]
    res["bootstrap"] = {}
    for num, den in pairs:
        res["bootstrap"][f"{num}/{den}"] = {
            "ratio": pooled_of(num) / pooled_of(den),
            "ci95": bootstrap_ratio(mse[num], mse[den], std, draws=2000),
        }
    if len(val_idx):
        res["denoiser_vs_linear"] = denoiser_vs_linear(work, ds, exp, train_idx, val_idx)
    out = Path(a.out) if a.out else work / "linear_bound.json"
    out.write_text(json.dumps(res, indent=1))
    print(json.dumps({k: v for k, v in res.items() if k != "times"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
