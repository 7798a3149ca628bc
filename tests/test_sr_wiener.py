"""The spectral Wiener skip of the SR denoiser (`sr.train.model.skip`)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scorebridge.errors import ConfigError
from scorebridge.sr.data import write_toy_era5
from scorebridge.sr.options import resolve_spec
from scorebridge.sr.prior import GaussianPrior, load_prior
from scorebridge.sr.train import train_prior
from scorebridge.sr.wiener import SpectralWiener, spectral_moments


def _stationary_pair(n: int, H: int, W: int, seed: int = 0) -> np.ndarray:
    """Two channels on a torus: a smooth field and its x-difference (plus a little noise)."""
    rng = np.random.default_rng(seed)
    ky, kx = np.fft.fftfreq(H)[:, None] * H, np.fft.fftfreq(W)[None] * W
    a = np.fft.ifft2(np.fft.fft2(rng.standard_normal((n, H, W))) * np.exp(-0.08 * (ky**2 + kx**2))).real
    b = np.roll(a, 1, axis=-1) - a + 0.1 * rng.standard_normal((n, H, W))
    return np.stack([a, b], 1)


def _dense_covariance(moments: np.ndarray) -> torch.Tensor:
    """The (C H W)^2 circulant covariance with cross-spectra `moments[H, W, C, C]`."""
    H, W, C, _ = moments.shape
    acov = np.real(np.fft.ifft2(moments.transpose(2, 3, 0, 1), axes=(-2, -1)))
    iy, ix = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    iy, ix = iy.ravel(), ix.ravel()
    dense = acov[:, :, (iy[:, None] - iy[None, :]) % H, (ix[:, None] - ix[None, :]) % W]
    return torch.from_numpy(dense.transpose(0, 2, 1, 3).reshape(C * H * W, C * H * W))


def test_wiener_skip_is_the_exact_gaussian_denoiser():
    C, H, W = 2, 8, 6
    x = _stationary_pair(3000, H, W)
    moments = spectral_moments([x[:1000], x[1000:]], None)  # chunks add up
    np.testing.assert_allclose(moments, spectral_moments([x], None), rtol=1e-10, atol=1e-12)
    wiener = SpectralWiener((C, H, W))
    wiener.set_moments(moments)
    exact = GaussianPrior(_dense_covariance(moments), (C, H, W))
    noisy = torch.from_numpy(x[:5]).float() + 0.3 * torch.randn(5, C, H, W, generator=torch.Generator().manual_seed(0))
    sigma = torch.tensor([0.01, 0.1, 0.3, 1.0, 3.0])
    torch.testing.assert_close(wiener(noisy, sigma), exact.denoise(noisy, sigma), atol=1e-5, rtol=1e-5)
    # it uses the cross-channel relation: the denoised difference channel follows the smooth one
    clean = torch.from_numpy(x[:200]).float()
    gen = torch.Generator().manual_seed(1)
    noisy = clean + 0.5 * torch.randn(clean.shape, generator=gen)
    err_wiener = (wiener(noisy, torch.full((200,), 0.5)) - clean).square().mean()
    var = clean.var(dim=(0, 2, 3), keepdim=True)
    best_scalar = (var / (var + 0.25) * noisy - clean).square().mean()  # the best per-channel scalar skip
    assert err_wiener < 0.7 * best_scalar
    with pytest.raises(ValueError, match=r"defined on the \(8, 6\) grid"):
        wiener(torch.zeros(1, C, 4, 4), torch.ones(1))


def _spec(**model):
    return {
        "era5": "toy",
        "seed": 2,
        "train": {
            "steps": 6,
            "batch_size": 4,
            "checkpoint_every": 0,
            "log_every": 2,
            "threads": 1,
            "anomalies": True,
            "model": {"base": 8, "mults": [1, 2], **model},
        },
    }


def test_trained_prior_with_wiener_skip_round_trips(tmp_path):
    era5 = write_toy_era5(tmp_path / "toy.zarr", ntime=16, nlat=8, nlon=12, seed=3)
    out = tmp_path / "wiener.pt"
    train_prior(resolve_spec(_spec(periodic=["latitude", "longitude"])), era5, tmp_path / "ck", out)
    prior = load_prior(out, "cpu")
    assert prior.config["train"]["model"]["skip"] == "auto"  # resolved on the doubly periodic model
    den = prior.denoiser
    assert den.wiener is not None and den.wiener.grid == (8, 12)
    assert float(den.wiener.evals.sum()) > 0  # estimated from the training fields, stored, loaded back
    x = torch.randn(2, len(prior.channels), 8, 12)
    sigma = torch.tensor([0.05, 2.0])
    with torch.no_grad():
        net_part = prior.denoise(x, sigma) - (den.offset + den.wiener(x - den.offset, sigma))
    c_out = sigma * 1.0 / torch.sqrt(sigma**2 + 1.0)
    assert net_part.abs().amax((1, 2, 3)).le(10 * c_out).all()  # the rest is the network's c_out F
    # a one-axis (or auto on a regional grid) model keeps EDM's scalar skip
    out2 = tmp_path / "scalar.pt"
    train_prior(resolve_spec(_spec()), era5, tmp_path / "ck2", out2)
    assert load_prior(out2, "cpu").denoiser.wiener is None
    # an explicit Wiener skip on a regional grid: mirror-extended along both (non-periodic) axes
    out3 = tmp_path / "regional.pt"
    train_prior(resolve_spec(_spec(skip="wiener")), era5, tmp_path / "ck3", out3)
    reg = load_prior(out3, "cpu").denoiser.wiener
    assert reg.extend == (True, True) and reg.grid == (8, 12) and tuple(reg.evals.shape[:2]) == (16, 24)
    with pytest.raises(ConfigError, match=r"sr\.train\.model\.skip.*whole-grid"):
        cropped = _spec(skip="wiener")
        cropped["train"]["crop"] = 6
        cropped["train"]["anomalies"] = False
        train_prior(resolve_spec(cropped), era5, tmp_path / "ck4", tmp_path / "bad.pt")


class _WienerPrior:
    """A prior whose denoiser is its Wiener skip alone (the exact denoiser of stationary
    Gaussian data), laid out as a trained prior is (`prior.denoiser.wiener`)."""

    sigma_min, sigma_max = 0.002, 80.0

    def __init__(self, wiener: SpectralWiener):
        self.denoiser = torch.nn.Module()
        self.denoiser.wiener = wiener

    def denoise(self, x, sigma):
        return self.denoiser.wiener(x, sigma)


def test_mmps_with_the_wiener_covariance_matches_the_closed_form_posterior():
    from scorebridge.sr.operators import CoarseGrain, Observation
    from scorebridge.sr.sampler import posterior_sample

    torch.set_num_threads(1)
    C, H, W = 2, 8, 6
    moments = spectral_moments([_stationary_pair(3000, H, W, seed=4)], None)
    wiener = SpectralWiener((C, H, W))
    wiener.set_moments(moments)
    gauss = GaussianPrior(_dense_covariance(moments), (C, H, W))
    truth = gauss.sample(1, torch.Generator().manual_seed(2))
    cg = CoarseGrain(2, (H, W), pad="edge")
    y = cg(truth)
    eye = torch.eye(C * H * W).reshape(-1, C, H, W)
    A = cg(eye).reshape(C * H * W, -1).T.double()
    m, P = gauss.posterior(A, y.flatten().double(), 0.05**2 * torch.eye(A.shape[0], dtype=torch.float64))
    sd = P.diag().clamp_min(1e-12).sqrt()

    def run(prior, covariance):
        return posterior_sample(
            prior,
            [Observation("coarse", cg, y, torch.tensor(0.05), 0.0)],
            256,
            10,
            shape=(C, H, W),
            mean=torch.zeros(C),
            std=torch.ones(C),
            guidance="mmps",
            cg_iterations=1,  # the coarse block is solved exactly in Fourier space: one step suffices
            covariance=covariance,
            solver="dpm2m",
            generator=torch.Generator().manual_seed(3),
        )

    x, cost = run(_WienerPrior(wiener), "wiener")
    assert cost.forward == 10 and cost.backward == 0  # the covariance costs no network pass
    e = x[0].reshape(256, -1).double()
    err = ((e.mean(0) - m) / sd).pow(2).mean().sqrt()
    assert err < 0.4, f"posterior mean off by {err:.2f} posterior sd (rms)"
    ratio = (e.std(0) / sd).mean()
    assert 0.8 < ratio < 1.25, f"ensemble sd / posterior sd = {ratio:.2f}"
    assert (sd < 0.7 * gauss.cov.diag().sqrt()).float().mean() > 0.5  # the coarse field is informative
    x_auto, cost = run(_WienerPrior(wiener), "auto")  # the default takes the Wiener skip when there is one
    assert cost.backward == 0 and torch.equal(x_auto, x)
    with pytest.raises(ConfigError, match=r"sr\.sample\.covariance.*Wiener skip"):
        run(gauss, "wiener")  # a prior without a Wiener skip


def test_gaussian_posterior_mean_matches_the_closed_form():
    from scorebridge.sr.guidance import Units
    from scorebridge.sr.operators import CoarseGrain, Observation
    from scorebridge.sr.wiener import gaussian_posterior_mean

    C, H, W = 2, 8, 6
    moments = spectral_moments([_stationary_pair(3000, H, W, seed=5)], None)
    wiener = SpectralWiener((C, H, W))
    wiener.set_moments(moments)
    gauss = GaussianPrior(_dense_covariance(moments), (C, H, W))
    mean, std = torch.tensor([1.0, -2.0]), torch.tensor([2.0, 0.5])  # physical = mean + std * normalised
    truth = gauss.sample(2, torch.Generator().manual_seed(6)).double()
    offset = 0.1 * torch.randn(C, H, W, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    cg = CoarseGrain(2, (H, W), pad="edge")
    phys = mean.reshape(1, -1, 1, 1) + std.reshape(1, -1, 1, 1) * (truth + offset)
    sigma_y = torch.tensor([0.05, 0.02]).reshape(1, -1, 1, 1)
    ob = Observation("coarse", cg, cg(phys).float(), sigma_y.float(), 0.0)
    got = gaussian_posterior_mean(wiener, offset, [ob], Units.of(mean, std, "cpu"), iterations=1)  # exact in Fourier
    # the closed form on normalised fields: A' = A diag(std), y' = y - A (mean + std * offset)
    eye = torch.eye(C * H * W, dtype=torch.float64).reshape(-1, C, H, W)
    A = cg(eye * std.double().reshape(1, -1, 1, 1)).reshape(C * H * W, -1).T
    R = torch.diag((sigma_y.double().expand(1, C, H // 2, W // 2) ** 2).flatten())
    for b in range(2):
        y = (
            cg(phys[b : b + 1]) - cg(mean.reshape(1, -1, 1, 1).double() + std.reshape(1, -1, 1, 1) * offset[None])
        ).flatten()
        m, _ = gauss.posterior(A, y, R)
        torch.testing.assert_close(got[b] - offset, m.reshape(C, H, W).to(got.dtype), atol=1e-6, rtol=1e-5)


def test_mirror_extended_filter_is_a_symmetric_psd_cosine_filter():
    """On axes that do not wrap, the filter acts on the mirror-extended field: no wrap-around
    edge, and still symmetric positive semi-definite (what MMPS's conjugate gradients need)."""
    C, H, W = 2, 6, 5
    rng = np.random.default_rng(8)
    # a smooth, non-periodic field: a ramp plus noise, whose periodic wrap would jump
    ramp = np.linspace(-2, 2, W)[None, None, None, :] + np.linspace(-1, 1, H)[None, None, :, None]
    x = ramp * rng.standard_normal((400, C, 1, 1)) + 0.1 * rng.standard_normal((400, C, H, W))
    wiener = SpectralWiener((C, H, W), extend=(True, True))
    wiener.set_moments(spectral_moments([x], None, (True, True)))
    n = C * H * W
    basis = torch.eye(n, dtype=torch.float32).reshape(n, C, H, W)
    for s in (0.05, 0.5, 2.0):
        T = wiener(basis, torch.full((n,), s)).reshape(n, n).double()
        torch.testing.assert_close(T, T.T, atol=1e-5, rtol=1e-4)
        assert torch.linalg.eigvalsh(0.5 * (T + T.T)).min() > -1e-5
    K = wiener.covariance(basis.double()).reshape(n, n)
    torch.testing.assert_close(K, K.T, atol=1e-8, rtol=1e-6)
    # the mirror filter denoises these non-periodic fields better than the plain periodic one
    periodic = SpectralWiener((C, H, W))
    periodic.set_moments(spectral_moments([x], None))
    clean = torch.from_numpy(x[:100]).float()
    noisy = clean + 0.5 * torch.randn(clean.shape, generator=torch.Generator().manual_seed(9))
    sig = torch.full((100,), 0.5)
    assert (wiener(noisy, sig) - clean).square().mean() < (periodic(noisy, sig) - clean).square().mean()
