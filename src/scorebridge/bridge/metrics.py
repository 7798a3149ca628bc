"""Distances between a predicted and an observed population (point clouds of equal weight).

All four compare empirical measures p = (1/n) Σ δ_{x_i} (predicted) and q = (1/m) Σ δ_{y_j}
(observed); counts may differ.

- ``wasserstein1``: W1 = min_π Σ π_ij |x_i − y_j|, exact OT (``ot.emd2``, network simplex).
- ``wasserstein2``: W2 = (min_π Σ π_ij |x_i − y_j|²)^{1/2}, exact OT with squared-Euclidean
  cost, then the square root (the "EMD" of arXiv 2408.06277).
- ``mmd``: squared maximum mean discrepancy with a mixture of RBF kernels (biased
  V-statistic, always >= 0), MMD² = E k(x,x') + E k(y,y') − 2 E k(x,y) with
  k(a, b) = (1/L) Σ_l exp(−|a − b|² / (2 h_l²)). Bandwidth rule: h_l = c_l · h_med, the
  median heuristic h_med = median pairwise distance within the OBSERVED cloud (the second
  argument), and c_l ∈ {0.5, 1, 2} (``MMD_SCALES``) so that finer and coarser scales count.
  Taking h from the observations alone gives every method scored against the same
  observed snapshot the same kernel, so their MMDs are comparable. Explicit
  ``bandwidths`` override the rule.
- ``energy_distance``: D = (2 E|X − Y| − E|X − X'| − E|Y − Y'|)^{1/2} (Székely & Rizzo), with
  all pairs (V-statistic); in 1-D this equals ``scipy.stats.energy_distance``.

``distribution_metrics(pred, obs)`` returns {"w1", "w2", "mmd", "energy"} as floats.
Clouds larger than ``max_points`` are subsampled (seeded) before scoring, to bound the
O(n m) memory and the O(n³) exact OT; the default keeps every point up to 5000.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = [
    "MMD_SCALES",
    "wasserstein1",
    "wasserstein2",
    "mmd",
    "median_bandwidth",
    "energy_distance",
    "distribution_metrics",
]

MMD_SCALES = (0.5, 1.0, 2.0)


def _points(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2 or a.shape[0] == 0:
        raise ValueError(f"expected a point cloud (n, d) with n >= 1, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError("point cloud has NaN or infinite values")
    return a


def _pair(x, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = _points(x), _points(y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"point clouds differ in dimension: {x.shape[1]} vs {y.shape[1]}")
    return x, y


def _sqdist(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """|x_i − y_j|², (n, m), computed directly (no |x|² + |y|² − 2 x·y cancellation)."""
    from scipy.spatial.distance import cdist

    return cdist(x, y, "sqeuclidean")


def _emd2(x: np.ndarray, y: np.ndarray, cost: np.ndarray) -> float:
    import ot

    a = np.full(x.shape[0], 1.0 / x.shape[0])
    b = np.full(y.shape[0], 1.0 / y.shape[0])
    return float(ot.emd2(a, b, cost, numItermax=10_000_000))


def wasserstein1(x, y) -> float:
    """Exact W1 between point clouds x (n, d) and y (m, d), Euclidean ground cost."""
    x, y = _pair(x, y)
    from scipy.spatial.distance import cdist

    return _emd2(x, y, cdist(x, y, "euclidean"))


def wasserstein2(x, y) -> float:
    """Exact W2 between point clouds: sqrt of the OT cost with squared-Euclidean ground cost."""
    x, y = _pair(x, y)
    return float(np.sqrt(max(_emd2(x, y, _sqdist(x, y)), 0.0)))


def median_bandwidth(y) -> float:
    """Median heuristic: the median distance between distinct points of y (1.0 if that is 0)."""
    from scipy.spatial.distance import pdist

    d = pdist(_points(y), "euclidean")
    h = float(np.median(d)) if d.size else 0.0
    return h if h > 0 else 1.0


def mmd(x, y, bandwidths: float | Sequence[float] | None = None) -> float:
    """Biased MMD² with a mixture of RBF kernels of the given bandwidths (None: median of y × MMD_SCALES)."""
    x, y = _pair(x, y)
    if bandwidths is None:
        h0 = median_bandwidth(y)
        bandwidths = [c * h0 for c in MMD_SCALES]
    hs = np.atleast_1d(np.asarray(bandwidths, dtype=np.float64))
    if np.any(hs <= 0):
        raise ValueError(f"bandwidths must be > 0, got {hs.tolist()}")

    def kmean(a, b):
        d = _sqdist(a, b)
        return float(np.mean([np.exp(-d / (2.0 * h * h)).mean() for h in hs]))

    return max(kmean(x, x) + kmean(y, y) - 2.0 * kmean(x, y), 0.0)


def energy_distance(x, y) -> float:
    """Energy distance sqrt(2 E|X−Y| − E|X−X'| − E|Y−Y'|) over all pairs (V-statistic)."""
    x, y = _pair(x, y)
    from scipy.spatial.distance import cdist

    exy = cdist(x, y).mean()
    exx = cdist(x, x).mean()
    eyy = cdist(y, y).mean()
    return float(np.sqrt(max(2.0 * exy - exx - eyy, 0.0)))


def _subsample(a: np.ndarray, max_points: int | None, rng: np.random.Generator) -> np.ndarray:
    if max_points is None or a.shape[0] <= max_points:
        return a
    return a[rng.choice(a.shape[0], size=max_points, replace=False)]


def distribution_metrics(
    pred, obs, *, bandwidths: float | Sequence[float] | None = None, max_points: int | None = 5000, seed: int = 0
) -> dict[str, float]:
    """{"w1", "w2", "mmd", "energy"} between predicted (n, d) and observed (m, d) particles.

    ``bandwidths``: RBF bandwidths for the MMD (None: median distance within obs × MMD_SCALES);
    ``max_points``: subsample (seeded) larger clouds to this many points (None: never).
    """
    x, y = _pair(pred, obs)
    rng = np.random.default_rng(seed)
    x, y = _subsample(x, max_points, rng), _subsample(y, max_points, rng)
    return {
        "w1": wasserstein1(x, y),
        "w2": wasserstein2(x, y),
        "mmd": mmd(x, y, bandwidths),
        "energy": energy_distance(x, y),
    }
