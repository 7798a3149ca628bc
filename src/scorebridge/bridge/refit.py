"""The refit step of the bridge: maximum likelihood of the reference on the bridges.

θ ← argmax_θ E_{paths ~ bridge} Σ_k log p_θ(X_{t_{k+1}} | X_{t_k}) (arXiv 2408.06277, Alg. 1).
The Markov chain of couplings makes the expectation a sum over intervals of
Σ_ij π^k_ij log p_θ(·), computed exactly from the plans (no Monte Carlo error) with p_θ the
reference's Gaussian transition (closed form for linear/OU, LNA otherwise), by L-BFGS in
torch. `interval_costs` gives the same transitions as the bridge step's cost matrices.
"""

from __future__ import annotations

import copy
import logging
import math

import torch

from .reference import DTYPE, Reference
from .sb import Coupling, gaussian_nll

__all__ = ["interval_costs", "coupling_statistics", "expected_nll", "refit_reference"]

log = logging.getLogger(__name__)


def interval_costs(reference: Reference, X: list[torch.Tensor], times: list[float], substeps: int) -> list[torch.Tensor]:
    """Cost matrices −log p_θ(X_{k+1, j} | X_{k, i}) of every interval, from one batched integration."""
    src = torch.cat(X[:-1])
    dts = torch.cat([torch.full((X[k].shape[0],), times[k + 1] - times[k], dtype=DTYPE) for k in range(len(X) - 1)])
    mean, cov = reference.transition_rows(src, dts, substeps)
    out, start = [], 0
    for k in range(len(X) - 1):
        n = X[k].shape[0]
        out.append(gaussian_nll(mean[start : start + n], cov[start : start + n], X[k + 1]))
        start += n
    return out


def coupling_statistics(X: list[torch.Tensor], couplings: list[Coupling]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per interval and source particle i: row mass w_i = Σ_j π_ij, conditional mean
    ȳ_i = Σ_j π_ij y_j / w_i and second moment S_i = Σ_j π_ij (y_j − ȳ_i)(y_j − ȳ_i)^T / w_i.

    The Gaussian transition NLL is quadratic in y, so Σ_j π_ij (−log N(y_j; m_i, P_i)) =
    w_i [½ tr(P_i^{-1}(S_i + (ȳ_i − m_i)(ȳ_i − m_i)^T)) + ½ log|2π P_i|]: the refit's loss
    needs these O(n d²) statistics, not the n × m pair table (computed once per refit).
    """
    out = []
    for k, c in enumerate(couplings):
        P, y = c.plan, X[k + 1]
        w = P.sum(1).clamp_min(1e-300)
        ybar = (P @ y) / w[:, None]
        second = torch.einsum("ij,jk,jl->ikl", P, y, y) / w[:, None, None]
        S = second - ybar[:, :, None] * ybar[:, None, :]
        out.append((w, ybar, 0.5 * (S + S.transpose(1, 2))))
    return out


def expected_nll(reference: Reference, X: list[torch.Tensor], times: list[float], couplings: list[Coupling], substeps: int, stats=None) -> torch.Tensor:
    """Mean over intervals of E_{π^k}[−log p_θ(X_{k+1} | X_k)] (the refit's loss).

    Transition moments of every interval's sources come from one batched integration; the
    expectation over each plan row is taken in closed form (`coupling_statistics`).
    """
    stats = coupling_statistics(X, couplings) if stats is None else stats
    src = torch.cat(X[:-1])
    dts = torch.cat([torch.full((X[k].shape[0],), times[k + 1] - times[k], dtype=DTYPE) for k in range(len(X) - 1)])
    mean, cov = reference.transition_rows(src, dts, substeps)
    w = torch.cat([s[0] for s in stats])
    ybar = torch.cat([s[1] for s in stats])
    S = torch.cat([s[2] for s in stats])
    d = src.shape[1]
    L = torch.linalg.cholesky(cov + 1e-10 * torch.eye(d, dtype=cov.dtype))
    r = (ybar - mean)[:, :, None]
    M = S + r @ r.transpose(1, 2)
    # tr(P^{-1} M) = ||L^{-1} M^{1/2}||² computed as tr(L^{-T} L^{-1} M) via two triangular solves
    Z = torch.linalg.solve_triangular(L, M, upper=False)
    Z = torch.linalg.solve_triangular(L.transpose(1, 2), Z, upper=True)
    tr = torch.diagonal(Z, dim1=1, dim2=2).sum(-1)
    logdet = 2 * torch.log(torch.diagonal(L, dim1=1, dim2=2)).sum(-1)
    nll = 0.5 * tr + 0.5 * logdet + 0.5 * d * math.log(2 * math.pi)
    return (w * nll).sum() / len(couplings)


def refit_reference(reference: Reference, X: list[torch.Tensor], times: list[float], couplings: list[Coupling], substeps: int = 10, max_iter: int = 20, weight_decay: float = 0.0) -> float:
    """Maximum likelihood of the reference on the bridges' trajectories (in place, L-BFGS).

    Returns the mean negative log-likelihood per transition after the refit. A step that
    makes the likelihood non-finite is undone.
    """
    params = [p for p in reference.parameters() if p.requires_grad]
    stats = coupling_statistics(X, couplings)
    if not params:
        with torch.no_grad():
            return float(expected_nll(reference, X, times, couplings, substeps, stats))
    backup = copy.deepcopy(reference.state_dict())
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe", tolerance_grad=1e-8, tolerance_change=1e-11)

    def closure():
        opt.zero_grad()
        loss = expected_nll(reference, X, times, couplings, substeps, stats)
        if weight_decay > 0:
            loss = loss + weight_decay * sum((p**2).sum() for n, p in reference.named_parameters() if p.requires_grad and "log_sigma" not in n)
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
