"""Distribution metrics against closed forms and scipy's 1-D implementations."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from scorebridge.bridge.metrics import (
    MMD_SCALES,
    distribution_metrics,
    energy_distance,
    median_bandwidth,
    mmd,
    wasserstein1,
    wasserstein2,
)


@pytest.mark.parametrize("d", [1, 3, 5])
def test_shifted_cloud_w1_w2_equal_shift_norm(d):
    rng = np.random.default_rng(d)
    x = rng.normal(size=(120, d))
    c = rng.normal(size=d) * 2
    perm = rng.permutation(120)
    # a translation is the optimal map for any convex cost of x − y: W1 = W2 = |c|
    assert wasserstein2(x, (x + c)[perm]) == pytest.approx(np.linalg.norm(c), rel=1e-9)
    assert wasserstein1(x, (x + c)[perm]) == pytest.approx(np.linalg.norm(c), rel=1e-9)
    assert wasserstein1(x, x[perm]) == pytest.approx(0, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_1d_against_scipy_unequal_counts(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=70), rng.normal(1.0, 2.0, size=130)
    assert wasserstein1(a, b) == pytest.approx(scipy.stats.wasserstein_distance(a, b), rel=1e-9)
    assert energy_distance(a, b) == pytest.approx(scipy.stats.energy_distance(a, b), rel=1e-9)
    assert energy_distance(a[:, None], b[:, None]) == pytest.approx(scipy.stats.energy_distance(a, b), rel=1e-9)


def test_w2_1d_quantile_closed_form():
    # in 1-D with equal counts the optimal plan matches sorted samples
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=50), rng.exponential(size=50)
    expect = np.sqrt(np.mean((np.sort(a) - np.sort(b)) ** 2))
    assert wasserstein2(a, b) == pytest.approx(expect, rel=1e-9)
    assert wasserstein1(a, b) <= wasserstein2(a, b) + 1e-12  # Jensen


def test_gaussian_w2_large_sample():
    # W2 between N(m1, I) and N(m2, 4 I) in 2-D: sqrt(|m1 − m2|² + 2 (2 − 1)²) = sqrt(|Δm|² + 2)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(1500, 2))
    y = np.array([3.0, 0.0]) + 2 * rng.normal(size=(1500, 2))
    assert wasserstein2(x, y) == pytest.approx(np.sqrt(9 + 2), rel=0.05)


def test_mmd_point_masses_and_properties():
    x, y = np.array([[0.0, 0.0]]), np.array([[3.0, 4.0]])
    for h in (1.0, 5.0):
        assert mmd(x, y, bandwidths=h) == pytest.approx(2 - 2 * np.exp(-25 / (2 * h * h)), rel=1e-12)
    assert mmd(x, y, bandwidths=[1.0, 5.0]) == pytest.approx(
        np.mean([2 - 2 * np.exp(-25 / (2 * h * h)) for h in (1.0, 5.0)])
    )
    rng = np.random.default_rng(5)
    a = rng.normal(size=(100, 3))
    assert mmd(a, a) == pytest.approx(0, abs=1e-12)
    b = rng.normal(size=(80, 3))
    assert mmd(a, b, bandwidths=[0.5, 2.0]) == pytest.approx(mmd(b, a, bandwidths=[0.5, 2.0]), rel=1e-12)
    near, far = mmd(a, b + 0.3, bandwidths=2.0), mmd(a, b + 3.0, bandwidths=2.0)
    assert 0 <= near < far
    with pytest.raises(ValueError):
        mmd(a, b, bandwidths=0.0)


def test_median_bandwidth_rule_uses_the_observations():
    y = np.array([[0.0], [1.0], [3.0]])
    assert median_bandwidth(y) == pytest.approx(2.0)  # distances 1, 3, 2
    x = np.array([[10.0], [20.0]])
    assert mmd(x, y) == pytest.approx(mmd(x, y, bandwidths=[c * 2.0 for c in MMD_SCALES]))
    assert median_bandwidth(np.zeros((3, 2))) == 1.0


def test_distribution_metrics_dict_and_subsampling():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(200, 4)), rng.normal(0.5, 1.0, size=(150, 4))
    out = distribution_metrics(x, y)
    assert set(out) == {"w1", "w2", "mmd", "energy"} and all(isinstance(v, float) and v > 0 for v in out.values())
    assert out["w1"] == pytest.approx(wasserstein1(x, y)) and out["energy"] == pytest.approx(energy_distance(x, y))
    sub = distribution_metrics(x, y, max_points=100, seed=1)
    assert sub == distribution_metrics(x, y, max_points=100, seed=1)
    assert sub["w1"] == pytest.approx(out["w1"], rel=0.3)
    torch = pytest.importorskip("torch")
    assert distribution_metrics(torch.as_tensor(x), torch.as_tensor(y))["w2"] == pytest.approx(out["w2"])
    with pytest.raises(ValueError, match="dimension"):
        distribution_metrics(x, y[:, :3])
    with pytest.raises(ValueError, match="NaN"):
        distribution_metrics(np.full((3, 4), np.nan), y)
