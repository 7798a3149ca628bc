"""The refit step of the bridge: maximum likelihood of the reference on the bridges.

θ ← argmax_θ E_{paths ~ bridge} Σ_k log p_θ(X_{t_{k+1}} | X_{t_k}) (arXiv 2408.06277, Alg. 1).
The Markov chain of couplings makes the expectation a sum over intervals of
Σ_ij π^k_ij log p_θ(·), computed exactly from the plans (no Monte Carlo error) with p_θ the
reference's Gaussian transition (closed form for linear/OU, LNA otherwise), by L-BFGS in
torch. `interval_costs` gives the same transitions as the bridge step's cost matrices.

The loss needs only per-row moments of each plan (`RowStats`): row mass w_i, conditional
mean ȳ_i, and the conditional spread, per row (S_i, when the transition covariance depends
on the start point) or summed (S̄ = Σ_i w_i S_i, when it does not: `costs.shared_covariance`).
With a shared covariance the loss is O(n d) per evaluation and its gradient never builds
per-row d × d matrices.
"""

from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass

import torch

from .costs import IntervalCost, shared_covariance, transition_moments
from .reference import DTYPE, Reference

__all__ = ["interval_costs", "RowStats", "plan_statistics", "coupling_statistics", "expected_nll", "refit_reference"]

log = logging.getLogger(__name__)


def interval_costs(
    reference: Reference, X: list[torch.Tensor], times: list[float], substeps: int
) -> list[torch.Tensor]:
    """Cost matrices −log p_θ(X_{k+1, j} | X_{k, i}) of every interval (dense n_k × n_{k+1})."""
    return [
        IntervalCost(reference, X[k], X[k + 1], times[k + 1] - times[k], substeps).block() for k in range(len(X) - 1)
    ]


@dataclass
class RowStats:
    """Moments of a plan's rows: w (n,), ȳ (n, d), Sbar (d, d) = Σ_i w_i S_i, and S (n, d, d)
    (the per-row conditional covariances) when asked for, else None."""

    w: torch.Tensor
    ybar: torch.Tensor
    Sbar: torch.Tensor
    S: torch.Tensor | None = None


def plan_statistics(P: torch.Tensor, y: torch.Tensor, per_row: bool = True) -> RowStats:
    """`RowStats` of a dense plan block P (n, m) over targets y (m, d).

    Σ_j π_ij (−log N(y_j; m_i, P_i)) = w_i [½ tr(P_i⁻¹ (S_i + (ȳ_i − m_i)(ȳ_i − m_i)ᵀ)) + ½ log|2π P_i|],
    so the refit's loss needs these O(n d²) statistics, not the n × m pair table.
    """
    w = P.sum(1).clamp_min(1e-300)
    ybar = (P @ y) / w[:, None]
    col = P.sum(0)
    Sbar = (y * col[:, None]).T @ y - (ybar * w[:, None]).T @ ybar
    S = None
    if per_row:
        second = torch.einsum("ij,jk,jl->ikl", P, y, y) / w[:, None, None]
        S = second - ybar[:, :, None] * ybar[:, None, :]
        S = 0.5 * (S + S.transpose(1, 2))
    return RowStats(w, ybar, 0.5 * (Sbar + Sbar.T), S)


def coupling_statistics(X: list[torch.Tensor], couplings: list, per_row: bool = True) -> list[RowStats]:
    """`RowStats` of every interval's coupling (each coupling computes its own; a minibatch
    coupling keeps those of its last solve)."""
    return [c.statistics(X[k + 1], per_row) for k, c in enumerate(couplings)]


def _dts(X, times):
    return torch.cat([torch.full((X[k].shape[0],), times[k + 1] - times[k], dtype=DTYPE) for k in range(len(X) - 1)])


def _nll_shared(reference: Reference, X, times, stats: list[RowStats], substeps: int) -> torch.Tensor:
    """Σ_k over intervals of ½ tr(P_k⁻¹ (S̄_k + Rᵀ W R)) + ½ W log|2π P_k|, R = ȳ − m."""
    d = X[0].shape[1]
    total = 0.0
    by_dt: dict[float, list[int]] = {}
    for k in range(len(stats)):
        by_dt.setdefault(times[k + 1] - times[k], []).append(k)
    for dt, ks in by_dt.items():  # one transition (one matrix exponential) per distinct step
        mean, cov = transition_moments(reference, torch.cat([X[k] for k in ks]), dt, substeps, shared=True)
        L = torch.linalg.cholesky(cov + 1e-10 * torch.eye(d, dtype=cov.dtype))
        logdet = torch.log(torch.diagonal(L)).sum() + 0.5 * d * math.log(2 * math.pi)
        start = 0
        for k in ks:
            st = stats[k]
            R = st.ybar - mean[start : start + X[k].shape[0]]
            start += X[k].shape[0]
            M = st.Sbar + (R * st.w[:, None]).T @ R
            tr = torch.diagonal(torch.cholesky_solve(M, L)).sum()
            total = total + 0.5 * tr + st.w.sum() * logdet
    return total


def _nll_rows(reference: Reference, X, times, stats: list[RowStats], substeps: int) -> torch.Tensor:
    """The same sum with a covariance per row (LNA moments): one batched integration."""
    src = torch.cat(X[:-1])
    mean, cov = reference.transition_rows(src, _dts(X, times), substeps)
    w = torch.cat([s.w for s in stats])
    ybar = torch.cat([s.ybar for s in stats])
    S = torch.cat([s.S for s in stats])
    d = src.shape[1]
    L = torch.linalg.cholesky(cov + 1e-10 * torch.eye(d, dtype=cov.dtype))
    r = (ybar - mean)[:, :, None]
    M = S + r @ r.transpose(1, 2)
    # tr(P^{-1} M) = tr(L^{-T} L^{-1} M) via two triangular solves
    Z = torch.linalg.solve_triangular(L, M, upper=False)
    Z = torch.linalg.solve_triangular(L.transpose(1, 2), Z, upper=True)
    tr = torch.diagonal(Z, dim1=1, dim2=2).sum(-1)
    logdet = 2 * torch.log(torch.diagonal(L, dim1=1, dim2=2)).sum(-1)
    nll = 0.5 * tr + 0.5 * logdet + 0.5 * d * math.log(2 * math.pi)
    return (w * nll).sum()


def expected_nll(
    reference: Reference,
    X: list[torch.Tensor],
    times: list[float],
    couplings: list,
    substeps: int,
    stats: list[RowStats] | None = None,
) -> torch.Tensor:
    """Mean over intervals of E_{π^k}[−log p_θ(X_{k+1} | X_k)] (the refit's loss).

    The expectation over each plan row is taken in closed form from `RowStats`; with a
    shared transition covariance per interval, from their sums (`_nll_shared`).
    """
    shared = shared_covariance(reference)
    stats = coupling_statistics(X, couplings, per_row=not shared) if stats is None else stats
    if shared:
        return _nll_shared(reference, X, times, stats, substeps) / len(couplings)
    if any(s.S is None for s in stats):
        stats = coupling_statistics(X, couplings, per_row=True)
    return _nll_rows(reference, X, times, stats, substeps) / len(couplings)


def refit_reference(
    reference: Reference,
    X: list[torch.Tensor],
    times: list[float],
    couplings: list,
    substeps: int = 10,
    max_iter: int = 20,
    weight_decay: float = 0.0,
) -> float:
    """Maximum likelihood of the reference on the bridges' trajectories (in place, L-BFGS).

    Returns the mean negative log-likelihood per transition after the refit. A step that
    makes the likelihood non-finite is undone.
    """
    params = [p for p in reference.parameters() if p.requires_grad]
    stats = coupling_statistics(X, couplings, per_row=not shared_covariance(reference))
    if not params:
        with torch.no_grad():
            return float(expected_nll(reference, X, times, couplings, substeps, stats))
    backup = copy.deepcopy(reference.state_dict())
    opt = torch.optim.LBFGS(
        params,
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-8,
        tolerance_change=1e-11,
    )

    def closure():
        opt.zero_grad()
        loss = expected_nll(reference, X, times, couplings, substeps, stats)
        if weight_decay > 0:
            loss = loss + weight_decay * sum(
                (p**2).sum() for n, p in reference.named_parameters() if p.requires_grad and "log_sigma" not in n
            )
        if torch.isfinite(loss):
            loss.backward()
        return loss

    with torch.no_grad():
        before = float(expected_nll(reference, X, times, couplings, substeps, stats))
    try:
        opt.step(closure)
        with torch.no_grad():
            after = float(expected_nll(reference, X, times, couplings, substeps, stats))
    except (RuntimeError, ValueError) as err:  # e.g. a singular covariance mid line search
        log.warning("refit step failed (%s); keeping the previous reference", err)
        after = float("nan")
    if not math.isfinite(after) or after > before + 1e-9 * abs(before):
        reference.load_state_dict(backup)
        after = before
    return after
