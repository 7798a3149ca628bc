"""SR metrics against hand-computed values."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from scorebridge.sr import metrics


def test_lat_weights_and_weighted_rmse():
    lat = np.array([0.0, 60.0])
    w = metrics.lat_weights(lat)
    assert np.allclose(w, [1 / 0.75, 0.5 / 0.75])
    truth = np.zeros((1, 1, 2, 3))
    pred = np.zeros((1, 1, 2, 3))
    pred[0, 0, 0] = 2.0  # error 2 on the equator row only
    # weighted MSE = (w0 * 4 * 3 + w1 * 0) / (3 * (w0 + w1)) = 4 * 1 / 1.5
    assert metrics.rmse(pred, truth, lat)[0] == pytest.approx(np.sqrt(4 / 1.5))
    assert metrics.mae(pred, truth, lat)[0] == pytest.approx(2 / 1.5)
    assert metrics.bias(-pred, truth, lat)[0] == pytest.approx(-2 / 1.5)
    assert metrics.rmse(pred, truth)[0] == pytest.approx(np.sqrt(2.0))  # unweighted


def test_fair_crps_small_ensembles_by_hand():
    ens = np.array([1.0, 3.0, 4.0])
    y = 2.0
    skill = (1 + 1 + 2) / 3
    pairs = sum(abs(a - b) for a, b in itertools.permutations(ens, 2))  # ordered pairs i != j
    hand = skill - pairs / (2 * 3 * 2)
    got = metrics.fair_crps(ens.reshape(1, 3, 1, 1, 1), np.full((1, 1, 1, 1), y))
    assert got[0] == pytest.approx(hand)
    # two members: |x1-y|/2 + |x2-y|/2 - |x1-x2|/2
    got2 = metrics.fair_crps(np.array([0.0, 1.0]).reshape(1, 2, 1, 1, 1), np.zeros((1, 1, 1, 1)))
    assert got2[0] == pytest.approx(0.5 - 0.5)
    # fair CRPS is unbiased: for members and truth iid N(0,1) its mean is 1/sqrt(pi)
    rng = np.random.default_rng(0)
    e = rng.standard_normal((4000, 4, 1, 1, 1))
    t = rng.standard_normal((4000, 1, 1, 1))
    assert metrics.fair_crps(e, t)[0] == pytest.approx(1 / np.sqrt(np.pi), rel=0.05)


def test_spread_skill_of_a_reliable_ensemble_is_one():
    rng = np.random.default_rng(1)
    T, N = 3000, 5
    centre = rng.standard_normal((T, 1, 1, 1, 1))
    ens = centre + rng.standard_normal((T, N, 1, 1, 1))
    truth = centre[:, 0] + rng.standard_normal((T, 1, 1, 1))
    assert metrics.spread_skill(ens, truth)[0] == pytest.approx(1.0, abs=0.05)
    assert metrics.spread(ens)[0] == pytest.approx(1.0, abs=0.05)
    assert metrics.spread_skill(0.5 * (ens - ens.mean(1, keepdims=True)) + ens.mean(1, keepdims=True), truth)[
        0
    ] == pytest.approx(0.5, abs=0.05)


def test_rank_histogram_counts():
    ens = np.array([[1.0, 2.0, 3.0]]).reshape(1, 3, 1, 1, 1)
    for y, rank in [(0.5, 0), (1.5, 1), (2.5, 2), (9.0, 3)]:
        h = metrics.rank_histogram(ens, np.full((1, 1, 1, 1), y))
        assert h.shape == (1, 4) and h[0, rank] == 1 and h.sum() == 1
    rng = np.random.default_rng(2)
    e = rng.standard_normal((50, 4, 2, 3, 3))
    t = rng.standard_normal((50, 2, 3, 3))
    h = metrics.rank_histogram(e, t)
    assert h.shape == (2, 5) and (h.sum(1) == 50 * 9).all()
    assert h.min() > 0.12 * 450  # roughly flat for a reliable ensemble


def test_spectrum_of_a_sine_peaks_at_its_wavenumber():
    H, W = 32, 32
    j = np.arange(W)
    for k0 in (3, 7):
        f = np.tile(np.sin(2 * np.pi * k0 * j / W), (H, 1))
        k, P = metrics.power_spectrum(f[None])
        assert k[np.argmax(P)] == k0
        assert P.sum() == pytest.approx(f.var(), rel=1e-6)  # Parseval: sin^2 averages 1/2
    # a 2-D wave along the diagonal: |k| = sqrt(3^2 + 4^2) = 5
    i = np.arange(H)[:, None]
    f = np.cos(2 * np.pi * (3 * i + 4 * j[None]) / H)
    k, P = metrics.power_spectrum(f)
    assert k[np.argmax(P)] == 5


def test_point_rmse_ignores_nan():
    assert metrics.point_rmse([1.0, 2.0, np.nan], [1.0, 4.0, 5.0]) == pytest.approx(np.sqrt(2.0))
    assert np.isnan(metrics.point_rmse([np.nan], [1.0]))
