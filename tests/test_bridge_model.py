"""The bridge model: closed forms, refit, convergence, prediction shapes, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scorebridge import options
from scorebridge.bridge.fit import check_snapshots, fit_bridge
from scorebridge.bridge.model_io import load_model, save_model
from scorebridge.bridge.options import ModelOptions, ReferenceOptions
from scorebridge.bridge.reference import Brownian, Linear, Parametric, Reference, make_reference
from scorebridge.bridge.refit import refit_reference
from scorebridge.bridge.sb import Coupling, PiecewiseBridge, bridge_sample, sinkhorn, static_bridge
from scorebridge.core.sde import euler_maruyama
from scorebridge.errors import ConfigError, InputError

torch.set_num_threads(1)
D = torch.float64
A_TRUE = [[-0.5, -1.0], [1.0, -0.3]]


def _model(section: dict) -> ModelOptions:
    """The `model` options as the workflow builds them (schema defaults filled in)."""
    return options.build(ModelOptions, section)


def _ref(section: dict) -> ReferenceOptions:
    return options.build(ReferenceOptions, section)


def _ou(**kw):
    return Linear(2, A=A_TRUE, b=[0.3, -0.2], sigma=0.3, **kw)


def test_ou_transition_closed_form_matches_simulation_and_lna():
    ref = _ou()
    x = torch.tensor([[1.0, -1.0]], dtype=D)
    F, c, Q = ref.closed_form(1.2)
    assert torch.allclose(F, torch.linalg.matrix_exp(torch.tensor(A_TRUE, dtype=D) * 1.2))
    with torch.no_grad():
        xs = euler_maruyama(
            lambda z, t: ref.drift(z), 0.3, x.expand(40000, 2), 0.0, 1.2, 240, torch.Generator().manual_seed(0)
        )
    mean = (x @ F.T + c)[0]
    assert torch.allclose(xs.mean(0), mean.detach(), atol=0.01)
    assert torch.allclose(torch.cov(xs.T), Q.detach(), atol=0.006)
    # the generic LNA integrator is exact for a linear drift
    m, P, Phi = Reference.moments(ref, x, [0.4, 1.2], substeps=40)
    assert torch.allclose(m[-1, 0], mean, atol=1e-6)
    assert torch.allclose(P[-1, 0], Q, atol=1e-6)
    assert torch.allclose(Phi[-1, 0], F, atol=1e-6)


def test_brownian_bridge_sample_moments():
    ref = Brownian(2, sigma=0.5)
    x = torch.zeros(20000, 2, dtype=D)
    y = torch.ones(20000, 2, dtype=D)
    z = bridge_sample(ref, x, y, 2.0, 0.5, torch.Generator().manual_seed(1))
    assert torch.allclose(z.mean(0), torch.full((2,), 0.25, dtype=D), atol=0.01)
    # Var = σ² s (Δ − s) / Δ = 0.25 · 0.5 · 1.5 / 2
    assert torch.allclose(z.var(0), torch.full((2,), 0.09375, dtype=D), rtol=0.05)


def test_ou_bridge_matches_conditioned_simulation():
    ref = Linear(1, A=[[-1.0]], b=[0.5], sigma=0.5)
    x0 = torch.zeros(1, 1, dtype=D)
    F, c, _ = ref.closed_form(1.0)
    y = float((x0 @ F.T + c)[0, 0].detach())  # the most likely end point
    with torch.no_grad():
        path = euler_maruyama(
            lambda z, t: ref.drift(z),
            0.5,
            x0.expand(200000, 1),
            0.0,
            1.0,
            100,
            torch.Generator().manual_seed(2),
            record=True,
        )
    keep = (path[-1, :, 0] - y).abs() < 0.02
    mid = path[40, keep, 0]
    z = bridge_sample(
        ref, x0.expand(50000, 1), torch.full((50000, 1), y, dtype=D), 1.0, 0.4, torch.Generator().manual_seed(3)
    )
    assert abs(float(mid.mean()) - float(z.mean())) < 0.02
    assert abs(float(mid.var()) - float(z.var())) < 0.01


def test_sinkhorn_matches_pot_and_warm_start():
    import ot

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(50, 2)), rng.normal(size=(60, 2)) + 1
    C = torch.tensor(ot.dist(x, y) / 0.4)
    a, b = torch.full((50,), 1 / 50, dtype=D), torch.full((60,), 1 / 60, dtype=D)
    P, duals, _ = sinkhorn(C, a, b, 1.0, tol=1e-10)
    ref = ot.sinkhorn(a.numpy(), b.numpy(), C.numpy(), 1.0, method="sinkhorn_log", stopThr=1e-12, numItermax=100000)
    assert np.abs(P.numpy() - ref).sum() < 1e-6
    P2, _, its = sinkhorn(C, a, b, 1.0, tol=1e-10, init=duals)
    assert its <= 25 and torch.allclose(P, P2, atol=1e-9)


def test_static_bridge_between_identical_gaussians_closed_form():
    # Brownian reference σ, Δt = 1, μ0 = μ1 = N(0, a): coupling covariance c solves c σ² = a² − c².
    gen = np.random.default_rng(1)
    a, sigma = 1.0, 1.0
    x = torch.tensor(gen.normal(size=(400, 2)), dtype=D)
    y = torch.tensor(gen.normal(size=(400, 2)), dtype=D)
    ref = Brownian(2, sigma=sigma)
    cpl = static_bridge(ref, x, y, 1.0)
    c_hat = float(((cpl.plan.sum() * 0 + cpl.plan)[:, :, None] * (x[:, None, :] * y[None, :, :])).sum((0, 1)).mean())
    c_true = (-(sigma**2) + math.sqrt(sigma**4 + 4 * a**2)) / 2
    assert abs(c_hat - c_true) < 0.08
    bridge = PiecewiseBridge([x, y], [0.0, 1.0], [cpl], ref)
    mid = bridge.sample_at(0.5, 4000, torch.Generator().manual_seed(0))
    var_true = a / 2 + c_true / 2 + sigma**2 / 4
    assert mid.shape == (4000, 2)
    assert abs(float(mid.var(0).mean()) - var_true) < 0.12
    assert float(mid.mean(0).abs().max()) < 0.1


def _simulate_ou_pairs(n=300, dt=0.5, seed=0):
    ref = _ou()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 2, generator=g, dtype=D) * 1.5
    with torch.no_grad():
        y = euler_maruyama(lambda z, t: ref.drift(z), 0.3, x, 0.0, dt, 100, g)
    return x, y


def test_linear_refit_recovers_drift_and_improves_likelihood():
    x, y = _simulate_ou_pairs()
    n = x.shape[0]
    plan = torch.eye(n, dtype=D) / n  # the true pairing
    cpl = Coupling(plan, (torch.zeros(n, dtype=D), torch.zeros(n, dtype=D)), 0.0, 0)
    ref = Linear(2, sigma=1.0)
    from scorebridge.bridge.refit import expected_nll

    with torch.no_grad():
        before = float(expected_nll(ref, [x, y], [0.0, 0.5], [cpl], 10))
    after = refit_reference(ref, [x, y], [0.0, 0.5], [cpl], max_iter=100)
    assert after < before
    assert torch.allclose(ref.A.detach(), torch.tensor(A_TRUE, dtype=D), atol=0.25)
    assert abs(float(ref.sigma) - 0.3) < 0.04


def test_refit_loss_from_row_statistics_equals_pairwise_expectation():
    """E_π[−log p(y|x)] from per-row moments (the refit's loss) = Σ_ij π_ij nll_ij, for a
    nonlinear (LNA) reference and a dense plan with unequal counts."""
    from scorebridge.bridge.refit import expected_nll, interval_costs
    from scorebridge.bridge.sb import sinkhorn

    g = torch.Generator().manual_seed(3)
    X = [
        torch.rand(9, 2, generator=g, dtype=D) * 3 + 0.5,
        torch.rand(7, 2, generator=g, dtype=D) * 3 + 0.5,
        torch.rand(8, 2, generator=g, dtype=D) * 3 + 0.5,
    ]
    times = [0.0, 0.7, 1.5]
    ref = Parametric(2, drift="lotka_volterra", noise="multiplicative", sigma=0.4)
    with torch.no_grad():
        costs = interval_costs(ref, X, times, 6)
        plans = [
            sinkhorn(
                C,
                torch.full((C.shape[0],), 1 / C.shape[0], dtype=D),
                torch.full((C.shape[1],), 1 / C.shape[1], dtype=D),
                1.0,
            )[0]
            for C in costs
        ]
        cpls = [Coupling(P, (None, None), 0.0, 0) for P in plans]
        pairwise = sum(float((P * C).sum()) for P, C in zip(plans, costs)) / len(plans)
        assert float(expected_nll(ref, X, times, cpls, 6)) == pytest.approx(pairwise, rel=1e-9)


@pytest.mark.parametrize("drift, dim", [("lotka_volterra", 2), ("repressilator", 3)])
def test_builtin_analytic_jacobians_match_finite_differences(drift, dim):
    ref = Parametric(
        dim, drift=drift, params={"beta": 7.0, "n": 2.5, "k": 1.3, "gamma": 0.8} if drift == "repressilator" else None
    )
    x = torch.rand(11, dim, generator=torch.Generator().manual_seed(0), dtype=D) * 3 + 0.05
    assert torch.allclose(ref.drift_jacobian(x), ref._fd_jacobian(x), atol=1e-7)


def _ou_snapshots(n=120, times=(0.0, 0.5, 1.0, 1.5), seed=0):
    ref = _ou()
    g = torch.Generator().manual_seed(seed)
    snaps = []
    for t in times:  # independent cells per snapshot
        x0 = torch.randn(n, 2, generator=g, dtype=D) * 0.3 + torch.tensor([2.0, 0.0], dtype=D)
        with torch.no_grad():
            snaps.append(
                euler_maruyama(lambda z, _t: ref.drift(z), 0.3, x0, 0.0, t, max(1, int(t * 50)), g).numpy()
                if t > 0
                else x0.numpy()
            )
    return snaps, list(times)


def test_fit_converges_early_and_predicts_any_time(tmp_path):
    snaps, times = _ou_snapshots()
    history = []
    res = fit_bridge(
        snaps,
        times,
        _model({"reference": {"class": "linear", "sigma": {"init": 0.5}}, "max_iter": 40, "tol": 2e-2}),
        callback=lambda i, r: history.append(r),
    )
    assert res.converged and len(res.history) < 40 and history == res.history
    objs = [h["objective"] for h in res.history]
    assert objs[-1] < objs[0]  # coordinate descent on Σ KL(π ‖ μ ⊗ p_θ)
    g = torch.Generator().manual_seed(0)
    b = res.bridge
    for t in (-0.3, 0.0, 0.25, 0.7, 1.5, 2.0):
        assert b.sample_at(t, 37, g).shape == (37, 2)
    assert b.push(0, 1.2, 50, g).shape == (50, 2)
    assert b.push(3, 0.2, gen=g).shape == (120, 2)
    tt, paths = b.trajectories(10, 4, g)
    assert tt.shape == (13,) and paths.shape == (10, 13, 2) and np.isfinite(paths).all()
    assert np.allclose(tt[[0, 4, 8, 12]], times)
    save_model(res, tmp_path / "m.pt")
    res2, _ = load_model(tmp_path / "m.pt")
    assert res2.reference.describe() == res.reference.describe()


def test_parametric_user_drift_by_import_path_and_errors():
    ref = make_reference(
        _ref(
            {
                "class": "parametric",
                "drift": "scorebridge.bridge.reference:lotka_volterra",
                "params": {"alpha": 1, "beta": 0.4, "gamma": 0.4, "delta": 0.1},
                "sigma": {"init": 1.0, "learn": True},
            }
        ),
        2,
    )
    assert isinstance(ref, Parametric) and abs(ref.describe()["alpha"] - 1) < 1e-12
    J = ref.drift_jacobian(torch.tensor([[2.0, 3.0]], dtype=D))
    assert torch.allclose(J[0], torch.tensor([[1 - 0.4 * 3, -0.4 * 2], [0.1 * 3, 0.1 * 2 - 0.4]], dtype=D), atol=1e-6)
    with pytest.raises(ConfigError, match="model.reference.drift"):
        make_reference(
            _ref({"class": "parametric", "drift": "no_such_module_xyz:f", "sigma": {"init": 1.0, "learn": True}}),
            2,
            key="model.reference",
        )
    with pytest.raises(ConfigError, match="model.reference.drift"):
        make_reference(
            _ref({"class": "parametric", "drift": "math:no_such_function", "sigma": {"init": 1.0, "learn": True}}),
            2,
            key="model.reference",
        )
    with pytest.raises(ConfigError, match="model.reference.class"):
        make_reference(_ref({"class": "quadratic", "sigma": {"init": 1.0, "learn": True}}), 2, key="model.reference")


def test_lotka_volterra_lna_bridge_recovers_parameters_quickly():
    from scorebridge.data.cells.simulate import simulate

    snaps, times, s = simulate({"system": "lotka_volterra", "n_cells": 80, "times": [0, 1.5, 3, 4.5], "seed": 1})
    spec = {
        "reference": {
            "class": "parametric",
            "drift": "lotka_volterra",
            "noise": "multiplicative",
            "sigma": {"init": 0.3},
        },
        "max_iter": 4,
        "substeps": 6,
    }
    res = fit_bridge(snaps, times, _model(spec))
    p = res.reference.describe()
    for k, v in s["drift"].items():
        assert abs(p[k] - v) / v < 0.3, (k, p[k], v)  # from init values 50% off


@pytest.mark.parametrize(
    "snaps, times, match",
    [
        ([np.zeros((5, 2))], [0.0], "at least 2 time points"),
        ([np.zeros((5, 2)), np.zeros((5, 2))], [1.0, 0.0], "strictly increasing"),
        ([np.zeros((5, 2)), np.zeros((5, 2))], [0.0, float("nan")], "finite"),
        ([np.zeros((5, 2)), np.full((5, 2), np.nan)], [0.0, 1.0], "NaN or infinite"),
        ([np.zeros((5, 2)), np.zeros((5, 3))], [0.0, 1.0], "features"),
    ],
)
def test_bad_snapshots(snaps, times, match):
    with pytest.raises(InputError, match=match):
        check_snapshots(snaps, times)


def test_ragged_counts_work():
    rng = np.random.default_rng(0)
    snaps = [rng.normal(size=(30, 2)), rng.normal(size=(45, 2)) + 1, rng.normal(size=(20, 2)) + 2]
    res = fit_bridge(snaps, [0, 1, 2], _model({"reference": {"class": "linear"}, "max_iter": 2}))
    assert [c.plan.shape for c in res.bridge.couplings] == [(30, 45), (45, 20)]
    assert res.bridge.sample_at(1.5, 33).shape == (33, 2)


def test_simulate_reference_independent_snapshots_have_brownian_moments():
    from scorebridge.bridge.fit import simulate_reference

    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(400, 2, generator=g, dtype=D)
    ref = Brownian(2, sigma=0.5)
    Y = simulate_reference(ref, x0, [0.0, 1.0, 3.0], [400, 300, 1000], g)
    assert [tuple(y.shape) for y in Y] == [(400, 2), (300, 2), (1000, 2)]
    assert torch.equal(Y[0], x0)
    var0 = float(x0.var(0).mean())
    for t, y in zip((1.0, 3.0), Y[1:]):  # Var X_t = Var X_0 + σ² t
        assert abs(float(y.var(0).mean()) - (var0 + 0.25 * t)) < 0.15 * (var0 + 0.25 * t)
        assert float(y.mean(0).abs().max()) < 0.2


def test_sigma_bootstrap_debias_moves_sigma_toward_truth():
    from scorebridge.data.cells.simulate import simulate

    snaps, times, s = simulate({"system": "ou"})  # truth σ = 0.1, A a damped rotation
    base = {
        "reference": {"class": "linear", "symmetric": False, "sigma": {"init": 0.5, "learn": True}},
        "max_iter": 10,
        "tol": 1e-2,
    }
    plain = fit_bridge(snaps, times, _model(base))
    deb_spec = {
        **base,
        "reference": {
            "class": "linear",
            "symmetric": False,
            "sigma": {"init": 0.5, "learn": True, "debias": "bootstrap"},
        },
    }
    deb = fit_bridge(snaps, times, _model(deb_spec), seed=0)
    s_plain, s_deb = float(plain.reference.sigma.detach()), float(deb.reference.sigma.detach())
    assert s_plain > 0.12  # the coupling blur read as noise
    assert abs(s_deb - 0.1) < 0.6 * abs(s_plain - 0.1)
    stages = [h["stage"] for h in deb.history]
    assert stages[0] == "fit" and stages[-1] == "debiased"
    assert deb.reference.log_sigma.requires_grad  # restored after the σ-fixed refit
    A = np.asarray(s["drift"]["A"])
    assert np.abs(deb.reference.A.detach().numpy() - A).max() < 0.1
    again = fit_bridge(snaps, times, _model(deb_spec), seed=0)
    assert float(again.reference.sigma.detach()) == s_deb  # seeded bootstrap: deterministic
    with pytest.raises(ConfigError, match="model.reference.sigma.debias"):
        fit_bridge(
            snaps, times, _model({"reference": {"class": "linear", "sigma": {"debias": "jackknife"}}, "max_iter": 1})
        )


def test_small_noise_prediction_of_brownian_bridge_is_mccann():
    """Brownian reference, coupling 'ot' (ε → 0 limit of the SB) and noise 0 (bridge mean):
    the marginal at s is the McCann interpolant (1 − s) x + s T(x) of the exact OT map."""
    from scorebridge.bridge.baselines import McCann

    g = np.random.default_rng(3)
    snaps = [g.normal(size=(40, 2)), g.normal(size=(40, 2)) * 1.5 + np.array([3.0, 1.0])]
    res = fit_bridge(
        snaps,
        [0.0, 2.0],
        _model({"reference": {"class": "brownian", "sigma": {"init": 0.7, "learn": False}}, "max_iter": 1}),
    )
    gen = torch.Generator().manual_seed(0)
    ours = res.bridge.sample_at(0.5, 40, gen, noise=0.0, coupling="ot").numpy()
    theirs = McCann().fit(snaps, [0.0, 2.0]).predict(0.5)

    def key(a):
        return a[np.lexsort(a.T[::-1])]

    np.testing.assert_allclose(key(ours), key(theirs), atol=1e-9)
    drawn = res.bridge.sample_at(0.5, 40, gen).numpy()  # the fitted SB: blurred by ε = σ²Δt
    assert not np.allclose(key(drawn), key(theirs), atol=1e-3)
    with pytest.raises(ValueError, match="coupling"):
        res.bridge.sample_at(0.5, 5, gen, coupling="sinkhorn")
    with pytest.raises(ConfigError, match="model.predict.coupling"):
        fit_bridge(snaps, [0.0, 2.0], _model({"predict": {"coupling": "emd"}}))


def test_auto_sigma_is_on_the_data_scale_and_the_fit_is_scale_equivariant():
    """sigma.init 'auto' (the default) follows the features' units: the same cells in units
    10x smaller start from a sigma 10x smaller and fit the same drift matrix (a linear
    reference is equivariant under x -> c x: A unchanged, b and sigma scaled by c). A fixed
    init on the wrong scale is what made the EMT fit lose to 'previous' (benchmarks/README)."""
    from scorebridge.bridge.fit import auto_sigma

    snaps, times = _ou_snapshots()
    small = [s / 10.0 for s in snaps]
    s1, s2 = auto_sigma(snaps, times), auto_sigma(small, times)
    assert 0.05 < s1 < 5.0 and s2 == pytest.approx(s1 / 10.0, rel=1e-6)
    spec = _model({"max_iter": 6, "tol": 1e-3})
    r1, r2 = fit_bridge(snaps, times, spec), fit_bridge(small, times, spec)
    assert (
        r1.spec["reference"]["sigma"]["init"] == pytest.approx(0.25 * s1)
        and r1.spec["reference"]["sigma"]["init_from"] == "auto"
    )
    d1, d2 = r1.reference.describe(), r2.reference.describe()
    for k in d1:
        if k.startswith("A"):
            assert d2[k] == pytest.approx(d1[k], rel=0.02, abs=5e-3), k  # to the optimisers' tolerances
        else:  # b and sigma carry the units
            assert d2[k] == pytest.approx(d1[k] / 10.0, rel=0.02, abs=5e-4), k
    with pytest.raises(InputError, match="do not move"):
        auto_sigma([snaps[0], snaps[0]], [0.0, 1.0])


def test_symmetric_linear_reference_is_a_gradient_field_and_recovers_a_symmetric_drift():
    """`reference.symmetric`: A = A^T (drift = -grad of a quadratic potential, no rotation).
    On pairs simulated with a symmetric A the refit recovers it; on the rotating A_TRUE it
    can only return a symmetric matrix, and its likelihood is worse than the full class's."""
    from scorebridge.core.sde import euler_maruyama as em

    a_sym = [[-0.6, 0.3], [0.3, -0.2]]
    truth = Linear(2, A=a_sym, b=[0.2, -0.1], sigma=0.3)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(400, 2, generator=g, dtype=D) * 1.5
    with torch.no_grad():
        y = em(lambda z, t: truth.drift(z), 0.3, x, 0.0, 0.5, 100, g)
    n = x.shape[0]
    cpl = Coupling(torch.eye(n, dtype=D) / n, (torch.zeros(n, dtype=D), torch.zeros(n, dtype=D)), 0.0, 0)
    ref = make_reference(_ref({"class": "linear", "symmetric": True, "sigma": {"init": 1.0, "learn": True}}), 2)
    refit_reference(ref, [x, y], [0.0, 0.5], [cpl], max_iter=100)
    A = ref.drift_parameters()["A"].detach()
    assert torch.equal(A, A.T)
    assert torch.allclose(A, torch.tensor(a_sym, dtype=D), atol=0.2)
    # the drift, Jacobian and closed form all use the symmetric part
    z = torch.randn(5, 2, generator=g, dtype=D)
    assert torch.allclose(ref.drift(z), z @ A.T + ref.b.detach())
    assert torch.allclose(ref.drift_jacobian(z)[0], A)
    # rotating data: the symmetric class fits worse than the full one
    xr, yr = _simulate_ou_pairs()
    nr = xr.shape[0]
    cpl = Coupling(torch.eye(nr, dtype=D) / nr, (torch.zeros(nr, dtype=D), torch.zeros(nr, dtype=D)), 0.0, 0)
    full, sym = Linear(2, sigma=1.0), Linear(2, sigma=1.0, symmetric=True)
    nll_full = refit_reference(full, [xr, yr], [0.0, 0.5], [cpl], max_iter=100)
    nll_sym = refit_reference(sym, [xr, yr], [0.0, 0.5], [cpl], max_iter=100)
    assert nll_sym > nll_full + 0.05
    sa = sym.drift_parameters()["A"].detach()
    assert torch.equal(sa, sa.T)


def test_sigma_auto_scale_applies_once_and_refits_recompute_auto():
    """`sigma.auto_scale` multiplies the auto sigma (default 0.25), not a numeric init. The
    fitted spec keeps `init_from: auto`, so refitting it on a subset (as bridge-evaluate does
    per split) measures auto on that subset and scales it once, not twice."""
    from scorebridge.bridge.fit import auto_sigma

    snaps, times = _ou_snapshots()
    res = fit_bridge(snaps, times, _model({"max_iter": 2}))  # the defaults: symmetric A, sigma 0.25 x auto, fixed
    s_all = auto_sigma(snaps, times)
    assert float(res.reference.sigma) == pytest.approx(0.25 * s_all)
    sub = fit_bridge(snaps[:3], times[:3], res.options)
    assert float(sub.reference.sigma) == pytest.approx(0.25 * auto_sigma(snaps[:3], times[:3]))
    half = fit_bridge(snaps, times, _model({"reference": {"sigma": {"auto_scale": 0.5}}, "max_iter": 1}))
    assert float(half.reference.sigma) == pytest.approx(0.5 * s_all)
    num = fit_bridge(snaps, times, _model({"reference": {"sigma": {"init": 0.4}}, "max_iter": 1}))
    assert float(num.reference.sigma) == pytest.approx(0.4)  # a number is used as given
    with pytest.raises(ConfigError, match="sigma.auto_scale"):
        fit_bridge(snaps, times, _model({"reference": {"sigma": {"auto_scale": 0.0}}}))


def test_fit_leaves_its_options_and_section_unchanged():
    """fit_bridge records the sigma it used in the result, never in what it was given: the
    config section and the options built from it are the same after the fit (sigma.init
    still 'auto'), so the same options refit on other snapshots measure auto again."""
    import copy

    from scorebridge.bridge.fit import auto_sigma

    snaps, times = _ou_snapshots()
    section = {
        "reference": {"class": "linear", "sigma": {"init": "auto", "learn": True, "debias": "bootstrap"}},
        "max_iter": 3,
    }
    before = copy.deepcopy(section)
    opts = _model(section)
    frozen = copy.deepcopy(opts)
    res = fit_bridge(snaps, times, opts, seed=0)
    assert section == before
    assert opts == frozen and opts.reference.sigma.init == "auto"
    assert res.options is opts
    assert res.spec["reference"]["sigma"]["init"] == pytest.approx(0.25 * auto_sigma(snaps, times))
    again = fit_bridge(snaps, times, opts, seed=0)
    assert again.reference.describe() == res.reference.describe()  # same options, same numbers


def test_model_file_roundtrip_is_tensors_and_json(tmp_path):
    import json

    snaps, times = _ou_snapshots(n=40)
    res = fit_bridge(snaps, times, _model({"reference": {"sigma": {"learn": True}}, "max_iter": 2}))
    save_model(res, tmp_path / "m.pt", {"features": ["a", "b"], "subsampled": {}})
    raw = torch.load(tmp_path / "m.pt", weights_only=True)  # no pickled objects in it
    assert isinstance(raw["metadata"], str) and json.loads(raw["metadata"])["features"] == ["a", "b"]
    back, meta = load_model(tmp_path / "m.pt")
    assert back.options == res.options and back.spec == res.spec and meta["features"] == ["a", "b"]
    assert back.reference.describe() == res.reference.describe()
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    assert torch.equal(back.bridge.sample_at(0.7, 25, g1), res.bridge.sample_at(0.7, 25, g2))


def test_crafted_pickle_model_is_refused_and_runs_nothing(tmp_path):
    """Issue 12, item 2: a model.pt whose unpickling would run code (here: create a file)
    is refused with an error naming the file, and the code does not run."""
    import os
    import shlex

    from scorebridge.errors import UnsafeFileError

    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {shlex.quote(str(marker))}",))

    path = tmp_path / "results" / "model.pt"
    path.parent.mkdir()
    torch.save({"format": "scorebridge.bridge/2", "metadata": "{}", "payload": Payload()}, path)
    with pytest.raises(UnsafeFileError, match="refused") as err:
        load_model(path)
    assert str(path) in str(err.value)
    assert not marker.exists()
    # the payload is real: a plain (pickle) load of the same file runs it
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_model_file_of_the_former_pickle_format_is_refused(tmp_path):
    """model.pt files of the former format held numpy arrays (pickled objects): refused by
    the safe loader with an error naming the file, not loaded by unpickling them."""
    from scorebridge.errors import UnsafeFileError

    path = tmp_path / "model.pt"
    torch.save({"format": "scorebridge.bridge/1", "snapshots": [np.zeros((3, 2))], "spec": {}}, path)
    with pytest.raises(UnsafeFileError, match="refused") as err:
        load_model(path)
    assert str(path) in str(err.value)
    torch.save({"format": "something else"}, path)
    with pytest.raises(InputError, match="not a scorebridge bridge model"):
        load_model(path)
