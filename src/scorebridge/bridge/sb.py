"""Piecewise Schrödinger bridges between adjacent snapshots under a reference SDE.

Static SB (Léonard 2014, Prop. 2.3; arXiv 2408.06277 Sec. 3.1): between empirical
snapshots μ_k and μ_{k+1} the bridge's endpoint coupling is

    π* = argmin_{π ∈ Π(μ_k, μ_{k+1})} KL(π ‖ μ_k ⊗ p_ref(y | x))
       = argmin_π  <π, C> − H(π),      C_ij = −log p_ref(x^{k+1}_j | x^k_i, Δt_k),

i.e. entropic OT with regularisation 1 on the cost −log p_ref (for a Brownian reference
C = |y − x|² / (2σ²Δt): ε = 2σ²Δt on the squared distance). The dynamic bridge is that
coupling mixed with the reference's own bridges. For a Markov reference the
multi-marginal SB factorises into these pairwise ones, chained by conditional sampling.

`sinkhorn` (`scorebridge.bridge.sinkhorn`) is a stabilised, over-relaxed scaling Sinkhorn,
warm-startable from the previous outer iteration's potentials; `Coupling` holds a dense plan.
Above a few thousand cells per snapshot the couplings are mini-batch OT plans
(`scorebridge.bridge.minibatch`); `PiecewiseBridge` samples either kind.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..core.sde import euler_maruyama
from .costs import ROW_CHUNK, IntervalCost, gaussian_nll
from .reference import DTYPE, Reference
from .refit import RowStats, plan_statistics
from .sinkhorn import sinkhorn

__all__ = [
    "gaussian_nll",
    "transition_nll",
    "sinkhorn",
    "Coupling",
    "static_bridge",
    "bridge_sample",
    "stratified_indices",
    "PiecewiseBridge",
]


def transition_nll(
    reference: Reference, x: torch.Tensor, y: torch.Tensor, dt: float, substeps: int = 10
) -> torch.Tensor:
    """−log p_ref(y_j | x_i, dt) for all pairs: (n, d), (m, d) -> (n, m) (Gaussian moments)."""
    return IntervalCost(reference, x, y, dt, substeps).block()


@dataclass
class Coupling:
    """The static SB between snapshot k (rows) and k+1 (columns): plan sums to 1."""

    plan: torch.Tensor  # (n_k, n_{k+1})
    duals: tuple[torch.Tensor, torch.Tensor]
    objective: float  # <π, C> − H(π): KL(π ‖ μ_k ⊗ p_ref) up to a constant
    iterations: int

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.plan.shape)

    def statistics(self, y: torch.Tensor, per_row: bool = True) -> RowStats:
        """Row moments of the plan over the targets y (the refit's input; `refit.RowStats`)."""
        return plan_statistics(self.plan, y, per_row)


def static_bridge(
    reference: Reference,
    x: torch.Tensor,
    y: torch.Tensor,
    dt: float,
    substeps: int = 10,
    tol: float = 1e-5,
    warm: Coupling | None = None,
    max_iter: int = 20000,
    cost: torch.Tensor | None = None,
) -> Coupling:
    """Entropic coupling with cost −log p_ref(y|x) (or the given `cost`) and ε = 1 (uniform weights)."""
    with torch.no_grad():
        C = transition_nll(reference, x, y, dt, substeps) if cost is None else cost
        a = torch.full((x.shape[0],), 1.0 / x.shape[0], dtype=DTYPE)
        b = torch.full((y.shape[0],), 1.0 / y.shape[0], dtype=DTYPE)
        init = warm.duals if isinstance(warm, Coupling) and warm.plan.shape == C.shape else None
        try:
            P, duals, its = sinkhorn(C, a, b, 1.0, tol=tol, init=init, max_iter=max_iter)
            ok = bool(torch.isfinite(P).all())
        except FloatingPointError:
            ok = False
        if init is not None and not ok:
            P, duals, its = sinkhorn(C, a, b, 1.0, tol=tol, max_iter=max_iter)
        Pc = P.clamp_min(1e-300)
        obj = float((P * C).sum() + (P * Pc.log()).sum())
    return Coupling(P, duals, obj, its)


def _chol(S: torch.Tensor) -> torch.Tensor:
    d = S.shape[-1]
    S = 0.5 * (S + S.transpose(-1, -2))
    jitter = 1e-12 * torch.diagonal(S, dim1=-2, dim2=-1).abs().mean().clamp_min(1e-12)
    for _ in range(8):
        L, info = torch.linalg.cholesky_ex(S + jitter * torch.eye(d, dtype=S.dtype))
        if int(info.max()) == 0:
            return L
        jitter *= 100
    # fall back to the PSD part
    w, V = torch.linalg.eigh(S)
    return V * w.clamp_min(0).sqrt()[..., None, :]


def bridge_sample(
    reference: Reference,
    x: torch.Tensor,
    y: torch.Tensor,
    dt: float,
    s: float,
    generator: torch.Generator | None = None,
    substeps: int = 10,
    noise: float = 1.0,
) -> torch.Tensor:
    """X_s | X_0 = x, X_dt = y under the reference (Gaussian conditioning; exact for linear).

    `noise` scales the conditional draw: 1 samples the bridge, 0 returns its mean path.

    With m, P, Φ from `Reference.moments`: Φ(s→dt) = Φ_dt Φ_s^{-1}, K = P_s Φ(s→dt)^T P_dt^{-1},
    X_s ~ N(m_s + K (y − m_dt), P_s − K Φ(s→dt) P_s). x, y: (n, d) -> (n, d).
    """
    if s <= 0:
        return x.clone()
    if s >= dt:
        return y.clone()
    z = torch.randn(x.shape, generator=generator, dtype=x.dtype) if noise != 0 else None
    # rows in chunks: the (rows, d, d) moments of 100,000 particles would not fit otherwise
    return torch.cat(
        [
            _bridge_rows(
                reference,
                x[i : i + ROW_CHUNK],
                y[i : i + ROW_CHUNK],
                dt,
                s,
                substeps,
                noise,
                None if z is None else z[i : i + ROW_CHUNK],
            )
            for i in range(0, x.shape[0], ROW_CHUNK)
        ]
    )


def _bridge_rows(reference, x, y, dt, s, substeps, noise, z):
    with torch.no_grad():
        m, P, Phi = reference.moments(x, [float(s), float(dt)], substeps)
        Phi_sd = torch.linalg.solve(Phi[0].transpose(1, 2), Phi[1].transpose(1, 2)).transpose(1, 2)
        cross = P[0] @ Phi_sd.transpose(1, 2)  # Cov(X_s, X_dt)
        Pd = P[1] + 1e-12 * torch.eye(x.shape[1], dtype=x.dtype)
        K = torch.linalg.solve(Pd, cross.transpose(1, 2)).transpose(1, 2)
        mean = m[0] + (K @ (y - m[1])[:, :, None])[:, :, 0]
        if z is None:
            return mean
        cov = P[0] - K @ cross.transpose(1, 2)
        L = _chol(cov)
        return mean + noise * (L @ z[:, :, None])[:, :, 0]


def stratified_indices(n: int, n_k: int, gen: torch.Generator | None) -> torch.Tensor:
    """n indices into n_k particles, each used n // n_k times, the remainder without repeats."""
    return torch.cat([torch.arange(n - n % n_k) % n_k, torch.randperm(n_k, generator=gen)[: n % n_k]])


class PiecewiseBridge:
    """The fitted multi-marginal bridge: snapshots, times, pairwise couplings, reference.

    snapshots: list of (n_k, d) float64 tensors at increasing `times`; couplings[k] joins k, k+1.
    """

    def __init__(
        self,
        snapshots: list[torch.Tensor],
        times: list[float],
        couplings: list[Coupling],
        reference: Reference,
        substeps: int = 10,
    ):
        self.snapshots = snapshots
        self.times = [float(t) for t in times]
        self.couplings = couplings
        self.reference = reference
        self.substeps = substeps
        self._ot_plans: dict[int, torch.Tensor] = {}

    @property
    def dim(self) -> int:
        return self.snapshots[0].shape[1]

    # -- index chains through the couplings ----------------------------------------------
    def plan(self, k: int, coupling: str = "plan") -> torch.Tensor:
        """Coupling k's plan: the fitted static SB ("plan"), or its small-noise limit ("ot"):
        the exact OT plan (POT network simplex) for the same cost −log p_ref(y|x), i.e. the
        ε → 0 limit of the entropic problem the SB solves (cached)."""
        if coupling not in ("plan", "ot"):
            raise ValueError(f"coupling must be 'plan' or 'ot', got {coupling!r}")
        if not isinstance(self.couplings[k], Coupling):
            raise ValueError(
                f"coupling {k} is a minibatch coupling of {self.couplings[k].shape} cells: it has no dense plan (sample it with chain / sample_pairs)"
            )
        if coupling == "plan":
            return self.couplings[k].plan
        if k not in self._ot_plans:
            import ot

            x, y = self.snapshots[k], self.snapshots[k + 1]
            with torch.no_grad():
                C = transition_nll(self.reference, x, y, self.times[k + 1] - self.times[k], self.substeps)
            a = np.full(x.shape[0], 1.0 / x.shape[0])
            b = np.full(y.shape[0], 1.0 / y.shape[0])
            self._ot_plans[k] = torch.as_tensor(ot.emd(a, b, C.detach().numpy(), numItermax=10_000_000), dtype=x.dtype)
        return self._ot_plans[k]

    def interval_cost(self, k: int) -> IntervalCost:
        """The cost of interval k under the fitted reference (kept by the coupling, else computed once)."""
        c = self.couplings[k]
        if getattr(c, "cost", None) is None:
            c.cost = IntervalCost(
                self.reference,
                self.snapshots[k],
                self.snapshots[k + 1],
                self.times[k + 1] - self.times[k],
                self.substeps,
            )
        return c.cost

    def _step(
        self, k: int, idx: torch.Tensor, forward: bool, gen: torch.Generator | None, coupling: str = "plan"
    ) -> torch.Tensor:
        c = self.couplings[k]
        if not isinstance(c, Coupling):
            if coupling not in ("plan", "ot"):
                raise ValueError(f"coupling must be 'plan' or 'ot', got {coupling!r}")
            return c.sample(idx, forward, gen, self.interval_cost(k), coupling)
        P = self.plan(k, coupling)
        rows = P[idx] if forward else P[:, idx].T
        rows = rows / rows.sum(1, keepdim=True)
        return torch.multinomial(rows, 1, generator=gen)[:, 0]

    def chain(
        self, start: int, idx: torch.Tensor, stop: int, gen: torch.Generator | None = None, coupling: str = "plan"
    ) -> dict[int, torch.Tensor]:
        """Indices into every snapshot between `start` and `stop` reached from snapshot `start`'s
        particles `idx`, by conditional sampling of the couplings (forward or backward)."""
        out = {start: idx}
        k = start
        while k < stop:
            out[k + 1] = self._step(k, out[k], True, gen, coupling)
            k += 1
        while k > stop:
            out[k - 1] = self._step(k - 1, out[k], False, gen, coupling)
            k -= 1
        return out

    def sample_pairs(
        self, k: int, n: int, gen: torch.Generator | None = None, coupling: str = "plan"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """n index pairs (i, j) from coupling k, stratified over the source snapshot: every
        source particle is used n // n_k or n // n_k + 1 times (i ~ μ_k without multinomial
        noise), then j ~ π(· | i). A low-variance draw of the same law as i.i.d. pairs."""
        n_k = self.snapshots[k].shape[0]
        i = stratified_indices(n, n_k, gen)
        j = self._step(k, i, True, gen, coupling)
        return i, j

    # -- prediction ------------------------------------------------------------------------
    def interval(self, t: float) -> int:
        """k with times[k] <= t <= times[k+1]; -1 before the first time, K-1 after the last."""
        if t < self.times[0]:
            return -1
        for k in range(len(self.times) - 1):
            if t <= self.times[k + 1]:
                return k
        return len(self.times) - 1

    def sample_at(
        self,
        t: float,
        n: int,
        gen: torch.Generator | None = None,
        from_snapshot: int | None = None,
        noise: float = 1.0,
        coupling: str = "plan",
    ) -> torch.Tensor:
        """n particles of the bridge's marginal at time t (any t).

        `coupling` ("plan" or "ot", see `plan`) and `noise` (scale of the reference bridge's
        conditional draw; 0: its mean path) choose between the fitted bridge (plan, 1) and its
        small-noise limit (ot, 0) inside the observed time range.

        Inside [t_k, t_{k+1}]: endpoint pairs from coupling k (or, from `from_snapshot`, the
        chain from that snapshot's particles), then the reference bridge at t. Beyond the last
        time: the fitted reference SDE simulated forward from the last snapshot (Euler-Maruyama);
        before the first: its drift integrated backward in time with the same noise (an
        approximation: the exact time reversal needs the marginal's score).
        """
        K = len(self.times)
        k = self.interval(t)
        if from_snapshot is None:
            if 0 <= k < K - 1:
                i, j = self.sample_pairs(k, n, gen, coupling)
                x0, x1 = self.snapshots[k][i], self.snapshots[k + 1][j]
                return bridge_sample(
                    self.reference,
                    x0,
                    x1,
                    self.times[k + 1] - self.times[k],
                    t - self.times[k],
                    gen,
                    self.substeps,
                    noise,
                )
            src = 0 if k < 0 else K - 1
            n_s = self.snapshots[src].shape[0]
            idx = stratified_indices(n, n_s, gen)
            return self._extrapolate(self.snapshots[src][idx], self.times[src], t, gen)
        start = int(from_snapshot)
        n_s = self.snapshots[start].shape[0]
        idx = stratified_indices(n, n_s, gen)
        if k < 0 or k == K - 1:
            end = 0 if k < 0 else K - 1
            ids = self.chain(start, idx, end, gen, coupling)
            return self._extrapolate(self.snapshots[end][ids[end]], self.times[end], t, gen)
        if start <= k:
            ids = self.chain(start, idx, k + 1, gen, coupling)
        else:
            ids = self.chain(start, idx, k, gen, coupling)
        x0, x1 = self.snapshots[k][ids[k]], self.snapshots[k + 1][ids[k + 1]]
        return bridge_sample(
            self.reference, x0, x1, self.times[k + 1] - self.times[k], t - self.times[k], gen, self.substeps, noise
        )

    def _extrapolate(self, x: torch.Tensor, t0: float, t1: float, gen) -> torch.Tensor:
        if t1 == t0:
            return x.clone()
        steps = max(4, int(math.ceil(abs(t1 - t0) / max(self._typical_dt(), 1e-9) * self.substeps)))
        ref = self.reference
        with torch.no_grad():
            return euler_maruyama(lambda z, _t: ref.drift(z), lambda z, _t: ref.diffusion(z), x, t0, t1, steps, gen)

    def _typical_dt(self) -> float:
        return float(np.median(np.diff(self.times))) if len(self.times) > 1 else 1.0

    def push(self, k: int, t: float, n: int | None = None, gen: torch.Generator | None = None) -> torch.Tensor:
        """Push snapshot k's population forward or backward to time t (`sample_at` from it)."""
        n = self.snapshots[k].shape[0] if n is None else n
        return self.sample_at(t, n, gen, from_snapshot=k)

    def trajectories(
        self, n: int, per_interval: int = 8, gen: torch.Generator | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """n trajectories over all snapshots: (times (T,), paths (n, T, d)).

        Snapshot points by chaining the couplings from snapshot 0; `per_interval` − 1 interior
        points per interval filled sequentially from the reference bridge to the next snapshot.
        """
        idx0 = torch.randint(self.snapshots[0].shape[0], (n,), generator=gen)
        ids = self.chain(0, idx0, len(self.times) - 1, gen)
        times = [self.times[0]]
        pts = [self.snapshots[0][ids[0]]]
        for k in range(len(self.times) - 1):
            t0, t1 = self.times[k], self.times[k + 1]
            end = self.snapshots[k + 1][ids[k + 1]]
            x, tx = pts[-1], t0
            for j in range(1, per_interval):
                s = t0 + (t1 - t0) * j / per_interval
                x = bridge_sample(self.reference, x, end, t1 - tx, s - tx, gen, max(2, self.substeps // 2))
                tx = s
                times.append(s)
                pts.append(x)
            times.append(t1)
            pts.append(end)
        return np.asarray(times), torch.stack(pts, 1).numpy()
