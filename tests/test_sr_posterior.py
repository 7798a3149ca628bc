"""Posterior sampling on a Gaussian prior with an exact denoiser: the closed-form posterior is the reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scorebridge.sr.calibrate import inflate
from scorebridge.sr.edm import edm_sigmas
from scorebridge.sr.operators import CoarseGrain, Observation, PointObs
from scorebridge.sr.point_obs import build_point_obs
from scorebridge.sr.prior import GaussianPrior
from scorebridge.sr.sampler import posterior_sample

H = W = 8
MEAN, STD = 1.0, 2.0  # physical = MEAN + STD * normalised: exercises the unit conversions


@pytest.fixture(scope="module")
def problem():
    torch.set_num_threads(1)
    g = np.stack(np.meshgrid(np.arange(H), np.arange(W), indexing="ij"), -1).reshape(-1, 2)
    d2 = ((g[:, None] - g[None]) ** 2).sum(-1)
    cov = torch.tensor(np.exp(-d2 / (2 * 2.0**2)) + 1e-2 * np.eye(H * W))
    prior = GaussianPrior(cov, (1, H, W))
    gen = torch.Generator().manual_seed(0)
    truth = MEAN + STD * prior.sample(2, gen)  # two cases
    cg = CoarseGrain(2, (H, W), pad="edge")
    ops, yps = [], []
    for b, pts in enumerate([([1.5, 4.2, 6.0], [2.5, 5.0, 0.3]), ([0.5, 3.0], [6.5, 1.2])]):
        op, _, _, _ = build_point_obs(
            [("c0", None)],
            np.arange(8.0),
            np.arange(8.0),
            pts[0],
            pts[1],
            [np.nan] * len(pts[0]),
            ["c0"] * len(pts[0]),
            [0.0] * len(pts[0]),
        )
        ops.append(op)
        yps.append(op(truth[b : b + 1]).float() + 0.2 * torch.randn(1, len(pts[0]), generator=gen))
    point = PointObs.stack(ops)
    yp = torch.full(point.valid.shape, float("nan"))
    for b, y in enumerate(yps):
        yp[b, : y.shape[1]] = y[0]
    yc = cg(truth) + 0.2 * torch.randn(2, 1, 4, 4, generator=gen)
    # closed form per case (normalised coordinates: A_norm = A * STD, y_norm = y - A MEAN)
    eye = torch.eye(H * W).reshape(-1, 1, H, W)
    Ac = cg(eye).reshape(H * W, -1).T
    refs = []
    for b, op in enumerate(ops):
        Ap = op(eye.double()).reshape(H * W, -1).T.float()
        A = torch.cat([Ac, Ap])
        y = torch.cat([yc[b].flatten(), yps[b].flatten()])
        m, P = prior.posterior(A * STD, y - A @ torch.full((H * W,), MEAN), 0.04 * torch.eye(len(y)))
        refs.append((MEAN + STD * m, STD * P.diag().sqrt()))
    return prior, cg, point, yc, yp, refs, STD * cov.diag().sqrt()


def _obs(problem, gamma):
    prior, cg, point, yc, yp, refs, psd = problem
    return [
        Observation("coarse", cg, yc, torch.tensor(0.2), gamma, zeta=0.3),
        Observation("radiosondes", point, yp, torch.tensor(0.2), gamma, zeta=0.3),
    ]


def _sample(
    problem, guidance="sda", gamma=0.3, members=256, steps=25, seed=1, churn=0.0, cg_iterations=1, solver="heun"
):
    prior = problem[0]
    return posterior_sample(
        prior,
        _obs(problem, gamma),
        members,
        steps,
        shape=(1, H, W),
        mean=torch.tensor([MEAN]),
        std=torch.tensor([STD]),
        guidance=guidance,
        churn=churn,
        cg_iterations=cg_iterations,
        solver=solver,
        generator=torch.Generator().manual_seed(seed),
    )


def test_sda_matches_closed_form_posterior(problem):
    refs, psd = problem[5], problem[6]
    x, cost = _sample(problem)
    assert x.shape == (2, 256, 1, H, W)
    for b, (m, sd) in enumerate(refs):
        e = x[b].reshape(256, -1).double()
        err = (e.mean(0) - m) / sd
        assert err.pow(2).mean().sqrt() < 0.5, (
            f"case {b}: posterior mean off by {err.pow(2).mean().sqrt():.2f} posterior sd (rms)"
        )
        assert ((e.mean(0) - m) / psd).abs().max() < 0.25
        ratio = (e.std(0) / sd).mean()
        assert 0.8 < ratio < 1.25, f"case {b}: ensemble sd / posterior sd = {ratio:.2f}"
        assert (sd < 0.6 * psd).all()  # the data are informative: the check is not vacuous
    # per-case observations: the two cases get different posteriors
    assert (x[0].mean(0) - x[1].mean(0)).abs().max() > 0.5


def test_mmps_matches_closed_form_posterior(problem):
    """MMPS (covariance through the denoiser's Jacobian, gamma 0): exact for a Gaussian prior
    up to the conjugate-gradient solve and the sampler's discretisation."""
    refs = problem[5]
    x, cost = _sample(problem, guidance="mmps", gamma=0.0, cg_iterations=3)
    assert cost.forward == 49 and cost.backward == 49 * 4  # 3 CG steps + the final product per evaluation
    for b, (m, sd) in enumerate(refs):
        e = x[b].reshape(256, -1).double()
        err = (e.mean(0) - m) / sd
        assert err.pow(2).mean().sqrt() < 0.4, (
            f"case {b}: posterior mean off by {err.pow(2).mean().sqrt():.2f} posterior sd (rms)"
        )
        ratio = (e.std(0) / sd).mean()
        assert 0.85 < ratio < 1.2, f"case {b}: ensemble sd / posterior sd = {ratio:.2f}"
    _, cost = _sample(problem, guidance="mmps", gamma=0.0, members=4, steps=13)
    assert cost.forward == 25 and cost.backward == 50


def test_multistep_solver_matches_closed_form_at_half_the_passes(problem):
    """DPM-Solver++(2M): one evaluation per noise level, the same posterior as Heun's two."""
    refs = problem[5]
    x, cost = _sample(problem, solver="dpm2m")
    assert cost.forward == 25 and cost.backward == 25
    for b, (m, sd) in enumerate(refs):
        e = x[b].reshape(256, -1).double()
        assert ((e.mean(0) - m) / sd).pow(2).mean().sqrt() < 0.5
        assert 0.8 < (e.std(0) / sd).mean() < 1.25
    with pytest.raises(ValueError, match="churn"):
        _sample(problem, solver="dpm2m", churn=1.0, members=2)


def test_cost_accounting(problem):
    _, cost = _sample(problem, members=4, steps=25)
    assert cost.forward == 49 and cost.backward == 49 and cost.seconds > 0
    _, cost = _sample(problem, guidance="dps", members=4, steps=25)
    assert cost.forward == 49 and cost.backward == 25
    _, cost = _sample(problem, guidance="none", members=4, steps=10)
    assert cost.forward == 19 and cost.backward == 0


def test_dps_pulls_towards_posterior_and_prior_does_not(problem):
    refs, psd = problem[5], problem[6]
    x_dps, _ = _sample(problem, guidance="dps", members=128)
    x_pri, _ = _sample(problem, guidance="none", members=128)
    m = refs[0][0]
    err_dps = ((x_dps[0].reshape(128, -1).double().mean(0) - m) / psd).pow(2).mean().sqrt()
    err_pri = ((x_pri[0].reshape(128, -1).double().mean(0) - m) / psd).pow(2).mean().sqrt()
    assert err_dps < 0.2 < err_pri
    # unconditional samples have the prior's spread
    assert (x_pri[0].reshape(128, -1).std(0).double() / psd).mean() == pytest.approx(1.0, abs=0.15)


def test_seeded_and_churn(problem):
    a, _ = _sample(problem, members=3, seed=5)
    b, _ = _sample(problem, members=3, seed=5)
    c, _ = _sample(problem, members=3, seed=6)
    assert torch.equal(a, b) and not torch.equal(a, c)
    d, _ = _sample(problem, members=64, churn=5.0)
    refs = problem[5]
    assert ((d[0].reshape(64, -1).double().mean(0) - refs[0][0]) / problem[6]).abs().max() < 0.3


def test_schedule_and_inflation():
    s = edm_sigmas(25, 0.002, 80.0, 7.0)
    assert len(s) == 26 and s[0] == pytest.approx(80.0) and s[-2] == pytest.approx(0.002) and s[-1] == 0
    ens = np.random.default_rng(0).standard_normal((2, 5, 1, 3, 3)).astype(np.float32)
    inf = inflate(ens, 2.0)
    assert np.allclose(inf.mean(1), ens.mean(1), atol=1e-6)
    assert np.allclose(inf.std(1), 2 * ens.std(1), atol=1e-5)
