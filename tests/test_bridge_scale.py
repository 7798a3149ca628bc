"""Couplings at single-cell scale: the batched Sinkhorn, the block costs, the minibatch solver
(agreement with the dense one, marginals, sampling) and its memory bound."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from scorebridge import options
from scorebridge.bridge.costs import IntervalCost, gaussian_nll
from scorebridge.bridge.fit import coupling_solver, fit_bridge
from scorebridge.bridge.minibatch import MinibatchCoupling, minibatch_bridge, partition
from scorebridge.bridge.model_io import load_model, save_model
from scorebridge.bridge.options import ModelOptions
from scorebridge.bridge.reference import Brownian, Linear, Parametric
from scorebridge.bridge.refit import RowStats, coupling_statistics, expected_nll
from scorebridge.bridge.sb import Coupling, static_bridge
from scorebridge.bridge.sinkhorn import sinkhorn, sinkhorn_batched

torch.set_num_threads(1)
D = torch.float64


def _model(section: dict) -> ModelOptions:
    return options.build(ModelOptions, section)


def _clouds(n: int, m: int, d: int, seed: int, shift: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=D)
    y = torch.randn(m, d, generator=g, dtype=D) * 1.2 + shift
    return x, y


def _linear(d: int, sigma: float = 0.4) -> Linear:
    A = -0.3 * torch.eye(d, dtype=D)
    A[0, 1], A[1, 0] = -0.5, 0.5
    return Linear(d, A=A, b=torch.full((d,), 0.2, dtype=D), sigma=sigma)


def _dense_plan(c: MinibatchCoupling, cost: IntervalCost) -> torch.Tensor:
    """The minibatch coupling as an n x m matrix (small problems only: for the checks)."""
    n, m = c.shape
    P = torch.zeros(n, m, dtype=D)
    f, g = c.duals
    for b in range(c.rows.shape[0]):
        r, s = c.rows[b][c.rmask[b]], c.cols[b][c.cmask[b]]
        P[r[:, None], s[None, :]] = float(c.weights[b]) * torch.exp(f[r][:, None] + g[s][None, :] - cost.block(r, s))
    return P


# -- batched Sinkhorn ---------------------------------------------------------------------


def test_batched_sinkhorn_with_padding_equals_each_problem_alone():
    """Problems of different sizes padded into one batch have the plans they have alone."""
    sizes = [(30, 41), (45, 20), (12, 12)]
    n, m = max(s[0] for s in sizes), max(s[1] for s in sizes)
    C = torch.zeros(len(sizes), n, m, dtype=D)
    a = torch.zeros(len(sizes), n, dtype=D)
    b = torch.zeros(len(sizes), m, dtype=D)
    alone = []
    for i, (r, c) in enumerate(sizes):
        x, y = _clouds(r, c, 3, i)
        Ci = torch.cdist(x, y) ** 2 / 0.3
        C[i] = 7.0  # padding: any finite cost
        C[i, :r, :c] = Ci
        a[i, :r], b[i, :c] = 1.0 / r, 1.0 / c
        alone.append(sinkhorn(Ci, a[i, :r], b[i, :c], 1.0, tol=1e-11)[0])
    f, g, _ = sinkhorn_batched(C, a, b, 1.0, tol=1e-11)
    for i, (r, c) in enumerate(sizes):
        P = torch.exp(f[i, :r, None] + g[i, None, :c] - C[i, :r, :c])
        assert torch.allclose(P.sum(1), a[i, :r], atol=1e-10) and torch.allclose(P.sum(0), b[i, :c], atol=1e-10)
        assert float((P - alone[i]).abs().sum()) < 1e-8


def test_small_eps_converges_to_the_requested_marginal_error():
    """The regime of the bridge's default σ: ε tiny against the cost's spread."""
    x, y = _clouds(200, 150, 10, 0, shift=2.0)
    C = torch.cdist(x, y) ** 2 * 40.0  # spread ~ 10^4 x ε
    a, b = torch.full((200,), 1 / 200, dtype=D), torch.full((150,), 1 / 150, dtype=D)
    for tol in (1e-3, 1e-4):
        P, _, its = sinkhorn(C, a, b, 1.0, tol=tol)
        assert float((P.sum(0) - b).abs().sum()) < tol and float((P.sum(1) - a).abs().sum()) < 1e-9
        assert its < 10000


# -- costs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("ref", [_linear(4), Brownian(4, sigma=0.3)], ids=["linear", "brownian"])
def test_shared_covariance_block_cost_equals_the_gaussian_nll(ref):
    x, y = _clouds(25, 31, 4, 1)
    cost = IntervalCost(ref, x, y, 0.7)
    assert cost.shared
    with torch.no_grad():
        mean, cov = ref.transition(x, 0.7)
        full = gaussian_nll(mean, cov, y)
    assert torch.allclose(cost.block(), full, rtol=1e-10, atol=1e-9)
    rows, cols = torch.tensor([3, 0, 24]), torch.tensor([30, 2])
    assert torch.allclose(cost.block(rows, cols), full[rows][:, cols], rtol=1e-10, atol=1e-9)
    blocks = cost.blocks(torch.stack([rows, rows.flip(0)]), torch.stack([cols, cols]))
    assert torch.allclose(blocks[1], full[rows.flip(0)][:, cols], rtol=1e-10, atol=1e-9)


def test_refit_loss_from_summed_statistics_equals_the_per_row_loss():
    """With a shared covariance the refit uses Σ_i w_i S_i only: the same loss as per row."""
    ref = _linear(3)
    X = [_clouds(40, 40, 3, s)[0] + s for s in range(3)]
    times = [0.0, 0.5, 1.3]
    with torch.no_grad():
        cpls = [static_bridge(ref, X[k], X[k + 1], times[k + 1] - times[k]) for k in range(2)]
        shared = float(expected_nll(ref, X, times, cpls, 5))
        from scorebridge.bridge.refit import _nll_rows

        per_row = float(_nll_rows(ref, X, times, coupling_statistics(X, cpls, per_row=True), 5)) / 2
        pairwise = (
            sum(
                float((c.plan * IntervalCost(ref, X[k], X[k + 1], times[k + 1] - times[k]).block()).sum())
                for k, c in enumerate(cpls)
            )
            / 2
        )
    assert shared == pytest.approx(per_row, rel=1e-10)
    assert shared == pytest.approx(pairwise, rel=1e-10)


# -- minibatch solver ------------------------------------------------------------------------


def test_partition_covers_every_index_once_with_balanced_batches():
    idx, mask = partition(103, 10, torch.Generator().manual_seed(0))
    assert sorted(idx[mask].tolist()) == list(range(103))
    assert set(mask.sum(1).tolist()) == {10, 11}


def test_one_batch_is_the_dense_coupling():
    x, y = _clouds(60, 70, 3, 2)
    ref = _linear(3)
    cost = IntervalCost(ref, x, y, 0.5)
    dense = static_bridge(ref, x, y, 0.5, tol=1e-6, cost=cost.block())
    mb = minibatch_bridge(cost, 1000, torch.Generator().manual_seed(0), 1e-6)  # float32 kernel
    assert mb.rows.shape[0] == 1
    assert float((_dense_plan(mb, cost) - dense.plan).abs().sum()) < 1e-5
    assert mb.objective == pytest.approx(dense.objective, abs=1e-4)
    st, sd = mb.statistics(y, per_row=False), dense.statistics(y, per_row=False)
    for name in ("w", "ybar", "Sbar"):
        assert torch.allclose(getattr(st, name), getattr(sd, name), atol=1e-5)


@pytest.mark.parametrize(
    "seed, n, m, batch, d", [(0, 300, 300, 100, 2), (1, 257, 190, 64, 5), (2, 500, 620, 128, 10), (3, 90, 400, 50, 3)]
)
def test_minibatch_plan_marginals_and_cost_close_to_the_dense_one(seed, n, m, batch, d):
    """Property test over sizes (ragged snapshots, padding): rows sum to 1/n, columns to 1/m up
    to the batch-size rounding, and the transport cost <π, C> is close to the dense plan's."""
    x, y = _clouds(n, m, d, seed)
    ref = _linear(d, sigma=0.5)
    cost = IntervalCost(ref, x, y, 0.6)
    tol = 1e-6
    mb = minibatch_bridge(cost, batch, torch.Generator().manual_seed(seed), tol)
    P = _dense_plan(mb, cost)
    G = mb.rows.shape[0]
    assert float((P.sum(1) - 1.0 / n).abs().sum()) < 2 * tol
    # a batch holds n/G sources and m/G targets up to one: columns carry 1/m up to that
    col_rel = (P.sum(0) * m - 1).abs().max()
    assert float(col_rel) <= 1.0 / (n // G) + 1.0 / (m // G) + 1e-6
    assert float(P.sum()) == pytest.approx(1.0, abs=1e-6)  # float32 kernel
    C = cost.block()
    dense = static_bridge(ref, x, y, 0.6, tol=tol, cost=C)
    t_mb, t_dense = float((P * C).sum()), float((dense.plan * C).sum())
    assert t_mb >= t_dense - 0.02 * abs(t_dense)  # the dense plan is the better transport
    assert t_mb == pytest.approx(t_dense, rel=0.25)
    # the refit statistics kept by the solver are those of the assembled plan
    from scorebridge.bridge.refit import plan_statistics

    ref_stats = plan_statistics(P, y, per_row=False)
    st = mb.statistics(y, per_row=False)
    assert torch.allclose(st.w, ref_stats.w, atol=1e-12) and torch.allclose(st.Sbar, ref_stats.Sbar, atol=1e-8)
    assert torch.allclose(st.ybar, ref_stats.ybar, atol=1e-8)


def test_minibatch_per_row_statistics_for_an_lna_reference():
    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(50, 2, generator=g, dtype=D) * 3 + 0.5, torch.rand(45, 2, generator=g, dtype=D) * 3 + 0.5
    ref = Parametric(2, drift="lotka_volterra", noise="multiplicative", sigma=0.4)
    cost = IntervalCost(ref, x, y, 0.5, 6)
    assert not cost.shared
    mb = minibatch_bridge(cost, 20, torch.Generator().manual_seed(0), 1e-6, per_row=True)
    from scorebridge.bridge.refit import plan_statistics

    want = plan_statistics(_dense_plan(mb, cost), y, per_row=True)
    got = mb.statistics(y, per_row=True)
    assert isinstance(got, RowStats) and torch.allclose(got.S, want.S, atol=1e-9)
    # the refit's loss from these statistics is the pairwise expectation under the plan
    with torch.no_grad():
        pairwise = float((_dense_plan(mb, cost) * cost.block()).sum())
        assert float(expected_nll(ref, [x, y], [0.0, 0.5], [mb], 6)) == pytest.approx(pairwise, rel=1e-8)


@pytest.mark.parametrize("mode", ["plan", "ot"])
def test_minibatch_sampling_follows_the_plan_rows_and_columns(mode):
    x, y = _clouds(12, 9, 2, 4)
    ref = _linear(2, sigma=0.6)
    cost = IntervalCost(ref, x, y, 0.5)
    mb = minibatch_bridge(cost, 5, torch.Generator().manual_seed(1), 1e-6)
    if mode == "plan":
        P = _dense_plan(mb, cost)
    else:
        rows, cols, vals = mb._sparse_ot(cost)
        P = torch.zeros(12, 9, dtype=D).index_put_((rows, cols), vals, accumulate=True)
        assert float(P.sum()) == pytest.approx(1.0)
    gen = torch.Generator().manual_seed(0)
    draws = 20000
    for forward in (True, False):
        i = 7 if forward else 4
        who = torch.full((draws,), i, dtype=torch.long)
        got = mb.sample(who, forward, gen, cost, mode)
        freq = torch.bincount(got, minlength=9 if forward else 12).to(D) / draws
        want = (P[i] if forward else P[:, i]) / (P[i] if forward else P[:, i]).sum()
        assert float((freq - want).abs().max()) < 0.02
        assert bool((want[got] > 0).all())  # never a partner outside the plan's support


def test_coupling_solver_auto_switches_above_the_threshold():
    opts = _model({"minibatch": {"auto_above": 100}})
    assert coupling_solver(opts, [50, 100, 80]) == "dense"
    assert coupling_solver(opts, [50, 101]) == "minibatch"
    assert coupling_solver(_model({"coupling_solver": "minibatch"}), [10, 10]) == "minibatch"
    assert coupling_solver(_model({"coupling_solver": "dense", "minibatch": {"auto_above": 2}}), [5000]) == "dense"


def _course(n=120, d=3, K=4, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(n + 7 * k, d)) * (1 + 0.1 * k) + 0.4 * k for k in range(K)], [0.0, 1.0, 2.0, 3.5]


def test_minibatch_fit_predicts_like_the_dense_fit_and_round_trips_through_model_pt(tmp_path):
    from scorebridge.bridge.metrics import wasserstein1

    snaps, times = _course(n=300)
    train = [0, 1, 3]  # snapshot 2 held out
    base = {"max_iter": 6, "tol": 5e-3}
    fits = {}
    for name, extra in (("dense", {}), ("mb", {"coupling_solver": "minibatch", "minibatch": {"batch_size": 100}})):
        fits[name] = fit_bridge([snaps[k] for k in train], [times[k] for k in train], _model({**base, **extra}))
    dense, mb = fits["dense"], fits["mb"]
    assert all(isinstance(c, MinibatchCoupling) for c in mb.bridge.couplings)
    assert all(isinstance(c, Coupling) for c in dense.bridge.couplings)
    A_d, A_m = dense.reference.drift_parameters()["A"].detach(), mb.reference.drift_parameters()["A"].detach()
    assert float((A_d - A_m).norm() / A_d.norm()) < 0.2
    w1 = {}
    for name, res in fits.items():
        for mode, noise in (("ot", 0.0), ("plan", 1.0)):
            pred = res.bridge.sample_at(
                times[2], snaps[2].shape[0], torch.Generator().manual_seed(0), noise=noise, coupling=mode
            )
            w1[name, mode] = wasserstein1(pred.numpy(), snaps[2])
    for mode in ("ot", "plan"):  # held-out W1 of the two solvers: close (the issue asks 0.01 on EB/EMT)
        assert abs(w1["mb", mode] - w1["dense", mode]) < 0.03, w1
    # chains and plan draws work on minibatch couplings; the dense plan is refused with a reason
    gen = torch.Generator().manual_seed(1)
    assert mb.bridge.push(0, 3.0, 50, gen).shape == (50, 3)
    assert mb.bridge.sample_at(0.5, 40, gen, coupling="plan", noise=1.0).shape == (40, 3)
    with pytest.raises(ValueError, match="no dense plan"):
        mb.bridge.plan(0)
    save_model(mb, tmp_path / "model.pt")
    back, _ = load_model(tmp_path / "model.pt")
    for c0, c1 in zip(mb.bridge.couplings, back.bridge.couplings):
        assert (
            isinstance(c1, MinibatchCoupling)
            and torch.equal(c0.rows, c1.rows)
            and torch.equal(c0.duals[0], c1.duals[0])
        )
    a = mb.bridge.sample_at(2.2, 64, torch.Generator().manual_seed(5), noise=0.0, coupling="ot")
    b = back.bridge.sample_at(2.2, 64, torch.Generator().manual_seed(5), noise=0.0, coupling="ot")
    assert torch.allclose(a, b)


_BIG = textwrap.dedent(
    """
    import json, resource, sys, time
    import numpy as np, torch
    torch.set_num_threads(1)
    from scorebridge import options
    from scorebridge.bridge.fit import fit_bridge
    from scorebridge.bridge.options import ModelOptions
    n, d = int(sys.argv[1]), 5
    rng = np.random.default_rng(0)
    snaps = [rng.normal(size=(n, d)) + 0.5 * k for k in range(3)]
    start = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    res = fit_bridge(snaps, [0.0, 1.0, 2.0], options.build(ModelOptions, {"max_iter": 2, "minibatch": {"auto_above": 4000}}))
    gen = torch.Generator().manual_seed(0)
    ot = res.bridge.sample_at(0.5, n, gen, noise=0.0, coupling="ot")
    plan = res.bridge.sample_at(1.5, n, gen, noise=1.0, coupling="plan")
    print(json.dumps({"seconds": time.perf_counter() - start, "kinds": sorted({type(c).__name__ for c in res.bridge.couplings}),
                      "finite": bool(torch.isfinite(ot).all() and torch.isfinite(plan).all()),
                      "rss_before_mb": before / 1024, "rss_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
    """
)


def test_twenty_thousand_cells_fit_and_predict_without_an_n_by_n_array():
    """n = 20,000 cells per snapshot: an n x n float64 array alone would be 3.2 GB. The fit
    (auto solver: minibatch above 4,000 cells) and both prediction modes run in a fresh
    process whose peak RSS grows by well under that."""
    n = 20000
    out = subprocess.run([sys.executable, "-c", _BIG, str(n)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    assert rec["kinds"] == ["MinibatchCoupling"] and rec["finite"]
    assert rec["rss_peak_mb"] - rec["rss_before_mb"] < 1000, rec  # n*n*8 bytes would be 3,200 MB
    assert rec["seconds"] < 300, rec
