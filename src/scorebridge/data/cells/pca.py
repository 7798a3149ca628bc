"""Principal components of a matrix read in row blocks (out of core).

Two solvers over the centred matrix A = Y - 1 μᵀ (cells x genes), neither holding Y whole:

- ``covariance``: one pass accumulates the gene means and the covariance C (genes x genes,
  Chan et al.'s pairwise update per block), eigh(C) gives the components; exact (the same
  subspace as a full SVD), memory 8 g² bytes (32 MB for 2,000 genes);
- ``randomized``: Halko, Martinsson & Tropp (2011), Algorithm 4.4 with `n_iter` power
  iterations (QR-normalised), each product with A or Aᵀ one pass over the blocks; memory
  cells x (k + 10) and genes x (k + 10); for many genes (`auto` picks it over 4,096 genes).

Signs as scikit-learn's PCA (svd_flip on the components): the largest |loading| of each
component is positive. `blocks()` is called once per pass and must yield (start, stop,
block) with the rows in order, dense or sparse, float64.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

__all__ = ["BlockPCA", "MeanVar", "block_pca", "mean_var_blocks", "COVARIANCE_MAX_GENES"]

COVARIANCE_MAX_GENES = 4096  # `auto`: covariance solver up to this many genes (C: 134 MB), randomized above
OVERSAMPLE = 10


class BlockPCA:
    """components (k, g), mean (g,), explained variance (k,) and its ratio, solver used."""

    def __init__(self, components, mean, explained_variance, total_variance, solver):
        self.components_, self.mean_ = components, mean
        self.explained_variance_ = explained_variance
        self.explained_variance_ratio_ = (
            explained_variance / total_variance if total_variance > 0 else np.zeros_like(explained_variance)
        )
        self.solver = solver

    def transform_blocks(self, blocks: Callable[[], Iterator], n: int) -> np.ndarray:
        """Scores (n, k) = (Y - μ) Vᵀ, one block at a time."""
        out = np.empty((n, self.components_.shape[0]))
        for a, b, Y in blocks():
            out[a:b] = _dense(Y) @ self.components_.T - self.mean_ @ self.components_.T
        return out


def _dense(Y) -> np.ndarray:
    return Y.toarray() if hasattr(Y, "toarray") else np.asarray(Y)


def _flip(V: np.ndarray) -> np.ndarray:
    """svd_flip (u_based_decision=False): the largest |entry| of each row of V positive."""
    idx = np.argmax(np.abs(V), axis=1)
    return V * np.sign(V[np.arange(V.shape[0]), idx])[:, None]


class MeanVar:
    """Per-column mean and variance (ddof=1) of rows given in blocks (Chan et al.'s update)."""

    def __init__(self, g: int):
        self.n, self.mean, self.m2 = 0, np.zeros(g), np.zeros(g)

    def update(self, Y) -> None:
        nb = Y.shape[0]
        if nb == 0:
            return
        mb = np.asarray(Y.mean(axis=0)).ravel()
        if hasattr(Y, "multiply"):  # sparse: sum of squares less the mean's part
            m2b = np.maximum(np.asarray(Y.multiply(Y).sum(axis=0)).ravel() - nb * mb**2, 0.0)
        else:
            m2b = ((Y - mb) ** 2).sum(axis=0)
        tot = self.n + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * (nb / tot)
        self.m2 = self.m2 + m2b + delta**2 * (self.n * nb / tot)
        self.n = tot

    @property
    def var(self) -> np.ndarray:
        return self.m2 / max(self.n - 1, 1)


def mean_var_blocks(blocks: Callable[[], Iterator], g: int) -> tuple[int, np.ndarray, np.ndarray]:
    """(n, mean, variance with ddof=1) per column in one pass."""
    acc = MeanVar(g)
    for _, _, Y in blocks():
        acc.update(Y)
    return acc.n, acc.mean, acc.var


def _covariance(blocks, g) -> tuple[int, np.ndarray, np.ndarray]:
    n, mean, m2 = 0, np.zeros(g), np.zeros((g, g))
    for _, _, Y in blocks():
        Y = _dense(Y)
        nb = Y.shape[0]
        mb = Y.mean(axis=0)
        Yc = Y - mb
        tot = n + nb
        delta = mb - mean
        mean = mean + delta * (nb / tot)
        m2 += Yc.T @ Yc + np.outer(delta, delta) * (n * nb / tot)
        n = tot
    return n, mean, m2 / max(n - 1, 1)


def _times(blocks, M: np.ndarray, mean: np.ndarray, n: int) -> np.ndarray:
    """A M (n, l) for the centred A, one pass."""
    out = np.empty((n, M.shape[1]))
    shift = mean @ M
    for a, b, Y in blocks():
        out[a:b] = Y @ M - shift
    return out


def _t_times(blocks, Q: np.ndarray, mean: np.ndarray, g: int) -> np.ndarray:
    """Aᵀ Q (g, l) for the centred A, one pass."""
    out = np.zeros((g, Q.shape[1]))
    for a, b, Y in blocks():
        out += np.asarray(Y.T @ Q[a:b])
    return out - np.outer(mean, Q.sum(axis=0))


def block_pca(
    blocks: Callable[[], Iterator], n: int, g: int, k: int, solver: str, seed: int, n_iter: int | None = None
) -> BlockPCA:
    """The first `k` principal components of the (n, g) matrix `blocks()` yields."""
    if solver == "auto":
        solver = "covariance" if g <= COVARIANCE_MAX_GENES else "randomized"
    if solver == "covariance":
        from scipy.linalg import eigh

        n, mean, C = _covariance(blocks, g)
        w, V = eigh(C, subset_by_index=[g - k, g - 1])  # the k largest eigenvalues only
        order = np.argsort(w)[::-1]
        return BlockPCA(_flip(V[:, order].T), mean, np.maximum(w[order], 0.0), float(np.trace(C)), "covariance")
    if solver != "randomized":
        raise ValueError(f"unknown PCA solver '{solver}'; expected auto, covariance or randomized")
    n, mean, var = mean_var_blocks(blocks, g)
    rng = np.random.default_rng(seed)
    l_ = min(k + OVERSAMPLE, g, n)
    q = (7 if k < 0.1 * min(n, g) else 4) if n_iter is None else n_iter  # as scikit-learn's randomized_svd
    Q, _ = np.linalg.qr(_times(blocks, rng.standard_normal((g, l_)), mean, n))
    for _ in range(q):
        Z, _ = np.linalg.qr(_t_times(blocks, Q, mean, g))
        Q, _ = np.linalg.qr(_times(blocks, Z, mean, n))
    B = _t_times(blocks, Q, mean, g).T  # Qᵀ A (l, g)
    _, s, Vt = np.linalg.svd(B, full_matrices=False)
    return BlockPCA(_flip(Vt[:k]), mean, s[:k] ** 2 / max(n - 1, 1), float(var.sum()), "randomized")
