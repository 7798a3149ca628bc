"""The reference SDE interface: `dX = f_θ(X) dt + g(X) dW` with diagonal noise.

`Reference` holds the noise `g(x) = σ` (additive) or `g(x) = σ ⊙ |x|` (multiplicative)
and the Gaussian transition moments of any drift by the linear-noise approximation (LNA:
mean along the drift's flow, covariance from the Lyapunov equation along it, van Kampen
1961); subclasses (`scorebridge.bridge.reference.classes`) give the drift and, where they
exist, exact moments.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ...core.sde import rk4
from ...errors import ConfigError

__all__ = ["DTYPE", "Reference"]

DTYPE = torch.float64
_EPS_MULT = 1e-2  # multiplicative noise floor: g(x) = σ sqrt(x² + ε²), keeps g > 0 near 0


class Reference(nn.Module):
    """Base class: diagonal noise `g(x)`, Gaussian transition moments, parameter reporting.

    sigma: initial noise scale (float, or a list of per-coordinate values);
    learn_sigma: refit σ by maximum likelihood too; noise: "additive" or "multiplicative".
    """

    kind = "reference"
    linear_exact = False  # moments are exact (no LNA approximation)

    def __init__(
        self,
        dim: int,
        sigma: float | list[float] = 1.0,
        learn_sigma: bool = True,
        noise: str = "additive",
        sigma_per_dim: bool = False,
    ):
        super().__init__()
        if noise not in ("additive", "multiplicative"):
            raise ConfigError("reference.noise", f"expected 'additive' or 'multiplicative', got {noise!r}")
        self.dim = int(dim)
        self.noise = noise
        s = torch.as_tensor(sigma, dtype=DTYPE).flatten()
        if s.numel() == 1 and sigma_per_dim:
            s = s.expand(dim).clone()
        if s.numel() not in (1, dim) or bool((s <= 0).any()):
            raise ConfigError("reference.sigma", f"expected a positive number or {dim} positive numbers, got {sigma!r}")
        self.log_sigma = nn.Parameter(s.log(), requires_grad=learn_sigma)

    # -- the SDE ----------------------------------------------------------------------
    @property
    def sigma(self) -> torch.Tensor:
        return self.log_sigma.exp()

    def drift(self, x: torch.Tensor) -> torch.Tensor:  # (n, d) -> (n, d)
        raise NotImplementedError

    def drift_jacobian(self, x: torch.Tensor) -> torch.Tensor:
        """∂f/∂x: (n, d) -> (n, d, d), by forward-mode autodiff (vmap), else by autograd rows."""
        try:
            return torch.func.vmap(torch.func.jacfwd(lambda xi: self.drift(xi[None])[0]))(x)
        except Exception:  # user drifts that vmap cannot trace
            with torch.enable_grad():
                xg = x.detach().requires_grad_(True) if not x.requires_grad else x
                f = self.drift(xg)
                rows = [torch.autograd.grad(f[:, i].sum(), xg, create_graph=True)[0] for i in range(self.dim)]
            return torch.stack(rows, dim=1)

    def diffusion(self, x: torch.Tensor) -> torch.Tensor:
        """g(x): (n, d), the per-coordinate noise scale."""
        s = self.sigma.expand(self.dim)
        if self.noise == "additive":
            return s.expand(x.shape)
        return s * torch.sqrt(x * x + _EPS_MULT**2)

    # -- Gaussian transition moments ---------------------------------------------------
    def moments(self, x: torch.Tensor, times: list[float], substeps: int = 10):
        """Moments of X_t given X_0 = x at each t in `times` (increasing, > 0).

        Returns (means (T, n, d), covs (T, n, d, d), Phis (T, n, d, d)) where Phi(t) is the
        state-transition matrix of the linearised flow (Cov(X_s, X_t) = P(s) Phi(t)^T Phi(s)^-T).
        LNA: dm = f(m) dt, dP = (J P + P J^T + diag g(m)^2) dt, dPhi = J Phi dt, integrated by
        RK4 with about `substeps` steps over [0, times[-1]] (at least 2 between requested times).
        """
        n, d = x.shape
        eye = torch.eye(d, dtype=x.dtype).expand(n, d, d)
        state = (x, torch.zeros(n, d, d, dtype=x.dtype), eye)

        def field(_t, y):
            m, P, Phi = y
            J = self.drift_jacobian(m)
            g2 = self.diffusion(m) ** 2
            JP = J @ P
            return self.drift(m), JP + JP.transpose(1, 2) + torch.diag_embed(g2), J @ Phi

        out_m, out_P, out_Phi = [], [], []
        t_prev = 0.0
        for t in times:
            steps = max(
                2, int(math.ceil(substeps * (t - t_prev) / max(times[-1], 1e-12)))
            )  # ~substeps over [0, times[-1]]
            if t > t_prev:
                state = rk4(field, state, t_prev, t, steps)
            m, P, Phi = state
            out_m.append(m)
            out_P.append(0.5 * (P + P.transpose(1, 2)))
            out_Phi.append(Phi)
            t_prev = t
        return torch.stack(out_m), torch.stack(out_P), torch.stack(out_Phi)

    def transition(self, x: torch.Tensor, dt: float, substeps: int = 10):
        """Mean (n, d) and covariance (n, d, d) of X_dt | X_0 = x."""
        m, P, _ = self.moments(x, [float(dt)], substeps)
        return m[0], P[0]

    def transition_rows(self, x: torch.Tensor, dts: torch.Tensor, substeps: int = 10):
        """Transition moments with a step dts[i] per row (all intervals in one integration).

        Exact classes group rows by step; LNA classes integrate dy/dτ = dt_i F(y), τ ∈ [0, 1].
        """
        if self.linear_exact or type(self).moments is not Reference.moments:
            ms = torch.empty_like(x)
            Ps = torch.empty(*x.shape, x.shape[1], dtype=x.dtype)
            outs_m, outs_P, order = [], [], []
            for dt in torch.unique(dts).tolist():
                rows = torch.nonzero(dts == dt)[:, 0]
                m, P = self.transition(x[rows], dt, substeps)
                outs_m.append(m)
                outs_P.append(P)
                order.append(rows)
            rows = torch.cat(order)
            ms = torch.zeros_like(x).index_copy(0, rows, torch.cat(outs_m))
            Ps = Ps.new_zeros(Ps.shape).index_copy(0, rows, torch.cat(outs_P))
            return ms, Ps
        n, d = x.shape
        w = dts.to(x.dtype)[:, None]
        eye = torch.eye(d, dtype=x.dtype).expand(n, d, d)

        def field(_t, y):
            m, P = y
            J = self.drift_jacobian(m)
            JP = J @ P
            return w * self.drift(m), w[:, :, None] * (
                JP + JP.transpose(1, 2) + torch.diag_embed(self.diffusion(m) ** 2)
            )

        m, P = rk4(field, (x, torch.zeros_like(eye)), 0.0, 1.0, max(2, int(substeps)))
        return m, 0.5 * (P + P.transpose(1, 2))

    # -- reporting -----------------------------------------------------------------------
    def drift_parameters(self) -> dict[str, torch.Tensor]:
        """Named drift parameters in their natural units (for logging and recovery errors)."""
        return {}

    def describe(self) -> dict[str, float]:
        """Flat {name: value} of every scalar parameter worth logging (σ included)."""
        out: dict[str, float] = {}
        for name, val in self.drift_parameters().items():
            v = val.detach().flatten()
            if v.numel() == 1:
                out[name] = float(v)
            else:
                for i, vi in enumerate(v.tolist()):
                    out[f"{name}[{i}]"] = float(vi)
        s = self.sigma.detach().flatten().tolist()
        if len(s) == 1:
            out["sigma"] = s[0]
        else:
            for i, si in enumerate(s):
                out[f"sigma[{i}]"] = si
        return out

    def parameter_vector(self) -> torch.Tensor:
        """Every refitted parameter, flattened (for the relative-change convergence test)."""
        ps = [p.detach().flatten() for p in self.parameters() if p.requires_grad]
        return torch.cat(ps) if ps else torch.zeros(0, dtype=DTYPE)
