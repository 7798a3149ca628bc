"""The static SB's cost C_ij = −log p_ref(y_j | x_i, Δt) of one interval, by blocks.

The reference's transition is Gaussian, N(m_i, P_i), so

    C_ij = ½ (y_j − m_i)ᵀ P_i⁻¹ (y_j − m_i) + ½ log|P_i| + (d/2) log 2π.

When P_i does not depend on x_i (`shared_covariance`: Brownian, linear and potential
references with additive noise) one Cholesky factor L of P whitens both clouds,
u_i = L⁻¹ m_i and v_j = L⁻¹ y_j, and C_ij = ½ |u_i − v_j|² + const: one GEMM of n × d by
d × m per block, O((n + m) d) memory to hold. Otherwise (LNA moments, multiplicative noise)
each row keeps its precision matrix (O(n d²)) and a block is one GEMM over d² features.
Either way a block of any rows and columns is computed on demand, so a solver that works
by blocks never forms the n × m table.
"""

from __future__ import annotations

import copy
import math

import torch

from .reference import Reference

__all__ = ["shared_covariance", "transition_moments", "IntervalCost", "gaussian_nll", "ROW_CHUNK"]

ROW_CHUNK = 8192  # rows per transition call (bounds the (rows, d, d) temporaries)


def shared_covariance(reference: Reference) -> bool:
    """True when the transition covariance does not depend on the start point."""
    return reference.noise == "additive" and reference.kind in ("brownian", "linear", "potential")


def transition_moments(reference: Reference, x: torch.Tensor, dt: float, substeps: int, shared: bool | None = None):
    """Transition moments of the rows x over dt, in chunks of `ROW_CHUNK` rows: (mean (n, d),
    cov (d, d) when `shared` (default: `shared_covariance(reference)`), else cov (n, d, d))."""
    shared = shared_covariance(reference) if shared is None else shared
    if shared and reference.kind in ("linear", "brownian"):
        return _closed_form(reference, x, dt)
    means, covs, cov0 = [], [], None
    for start in range(0, x.shape[0], ROW_CHUNK):
        rows = x[start : start + ROW_CHUNK]
        if shared:  # exact classes: transition_rows would call this too
            m, P = reference.transition(rows, dt, substeps)
        else:  # the refit's batched LNA integration (max(2, substeps) RK4 steps over dt)
            m, P = reference.transition_rows(rows, torch.full((rows.shape[0],), float(dt), dtype=rows.dtype), substeps)
        means.append(m)
        if shared:
            cov0 = P[0] if cov0 is None else cov0
        else:
            covs.append(P)
    mean = torch.cat(means) if means else x.new_zeros(x.shape)
    if shared:
        if cov0 is None:
            cov0 = reference.transition(x.new_zeros(1, x.shape[1]), dt, substeps)[1][0]
        return mean, cov0
    return mean, torch.cat(covs)


def _closed_form(reference: Reference, x: torch.Tensor, dt: float):
    """Linear and Brownian references, additive noise: the same mean and covariance as their
    `moments`, without the (n, d, d) stack of one shared matrix."""
    if reference.kind == "brownian":
        d = x.shape[1]
        return x, torch.diag((reference.sigma**2).expand(d) * float(dt))
    F, c, Q = reference.closed_form(float(dt))
    return x @ F.T + c, Q


def _cholesky(cov: torch.Tensor) -> torch.Tensor:
    d = cov.shape[-1]
    return torch.linalg.cholesky(cov + 1e-10 * torch.eye(d, dtype=cov.dtype, device=cov.device))


def gaussian_nll(mean: torch.Tensor, cov: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """−log N(y_j; mean_i, cov_i) for all pairs: (n, d), (n, d, d), (m, d) -> (n, m).

    Quadratic form through one GEMM: y^T P_i^{-1} y − 2 m_i^T P_i^{-1} y + m_i^T P_i^{-1} m_i.
    """
    n, d = mean.shape
    L = _cholesky(cov)
    prec = torch.cholesky_inverse(L)  # (n, d, d)
    logdet = 2 * torch.log(torch.diagonal(L, dim1=1, dim2=2)).sum(-1)
    yy = (y[:, :, None] * y[:, None, :]).reshape(y.shape[0], d * d)  # (m, d²)
    quad = prec.reshape(n, d * d) @ yy.T  # (n, m)
    pm = (prec @ mean[:, :, None])[:, :, 0]  # (n, d)
    cross = pm @ y.T
    mpm = (pm * mean).sum(-1)
    maha = quad - 2 * cross + mpm[:, None]
    return 0.5 * maha + 0.5 * logdet[:, None] + 0.5 * d * math.log(2 * math.pi)


class IntervalCost:
    """−log p_ref(y_j | x_i, dt) for the sources x (n, d) and targets y (m, d) of one interval.

    `block(rows, cols)` gives the cost of any rows and columns (index tensors, or None for
    all); `blocks(rows, cols)` a batch of blocks (G, r, c) from index tensors (G, r) and
    (G, c). Built without gradients (the bridge step's cost; the refit has its own).
    """

    def __init__(self, reference: Reference, x: torch.Tensor, y: torch.Tensor, dt: float, substeps: int = 10):
        self.n, self.m = x.shape[0], y.shape[0]
        self.dim = x.shape[1]
        self.y = y
        self.shared = shared_covariance(reference)
        with torch.no_grad():
            mean, cov = transition_moments(reference, x, dt, substeps, self.shared)
            mean, cov = mean.detach(), cov.detach()
            if self.shared:
                L = _cholesky(cov)
                self.u = torch.linalg.solve_triangular(L, mean.T, upper=False).T.contiguous()
                self.v = torch.linalg.solve_triangular(L, y.T, upper=False).T.contiguous()
                self.uu = 0.5 * (self.u * self.u).sum(1)
                self.vv = 0.5 * (self.v * self.v).sum(1)
                self.const = float(torch.log(torch.diagonal(L)).sum()) + 0.5 * self.dim * math.log(2 * math.pi)
            else:
                self.mean, self.cov = mean, cov

    def to(self, device: torch.device) -> "IntervalCost":
        """A copy of this cost with its tensors on `device` (for a GPU solver)."""
        out = copy.copy(self)
        for name in ("u", "v", "uu", "vv", "mean", "cov", "y"):
            if hasattr(out, name):
                setattr(out, name, getattr(out, name).to(device))
        return out

    def block(self, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> torch.Tensor:
        """C[rows][:, cols] (all rows / columns for None)."""
        if self.shared:
            u = self.u if rows is None else self.u[rows]
            v = self.v if cols is None else self.v[cols]
            uu = self.uu if rows is None else self.uu[rows]
            vv = self.vv if cols is None else self.vv[cols]
            return torch.addmm(uu[:, None] + vv[None, :], u, v.T, alpha=-1.0).clamp_min_(0.0) + self.const
        mean = self.mean if rows is None else self.mean[rows]
        cov = self.cov if rows is None else self.cov[rows]
        y = self.y if cols is None else self.y[cols]
        return gaussian_nll(mean, cov, y)

    def blocks(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """A batch of blocks: rows (G, r), cols (G, c) index tensors -> (G, r, c)."""
        if self.shared:
            u, v = self.u[rows], self.v[cols]
            base = self.uu[rows][:, :, None] + self.vv[cols][:, None, :]
            return torch.baddbmm(base, u, v.transpose(1, 2), alpha=-1.0).clamp_min_(0.0) + self.const
        return torch.stack([self.block(r, c) for r, c in zip(rows, cols)])
