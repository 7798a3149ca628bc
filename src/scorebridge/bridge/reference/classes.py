"""The reference classes (config `reference.class`): `brownian`, `linear` (exact Gaussian
moments), `potential` (an MLP potential's gradient field) and `parametric` (named drift
parameters, LNA moments)."""

from __future__ import annotations

import math

import torch
from torch import nn

from ...core.sde import rk4
from ...errors import ConfigError
from .base import DTYPE, Reference
from .drifts import BUILTIN_DRIFTS, BUILTIN_JACOBIANS, resolve_drift

__all__ = ["Brownian", "Linear", "Potential", "Parametric", "REFERENCE_CLASSES"]


class Brownian(Reference):
    """dX = σ dW (the 'vanilla' SB reference). Exact: m = x, P = σ² t I, Phi = I."""

    kind = "brownian"
    linear_exact = True

    def drift(self, x):
        return torch.zeros_like(x)

    def drift_jacobian(self, x):
        return torch.zeros(*x.shape, x.shape[-1], dtype=x.dtype)

    def moments(self, x, times, substeps=10):
        if self.noise != "additive":
            return super().moments(x, times, substeps)
        n, d = x.shape
        s2 = (self.sigma**2).expand(d)
        m = torch.stack([x for _ in times])
        P = torch.stack([torch.diag(s2 * t).expand(n, d, d) for t in times])
        Phi = torch.eye(d, dtype=x.dtype).expand(len(times), n, d, d)
        return m, P, Phi


class Linear(Reference):
    """dX = (A X + b) dt + σ dW (Ornstein-Uhlenbeck).

    Exact moments (additive noise): with the augmented generator M = [[A, b], [0, 0]],
    expm(M t) = [[e^{At}, c(t)], [0, 1]] gives the mean e^{At} x + c(t); Van Loan's block
    exponential of [[-A, S], [0, A^T]] t (S = diag σ²) gives P(t) = F2^T G2 with
    F2 = e^{A^T t}, G2 the upper-right block (Van Loan 1978, Thm. 1).
    """

    kind = "linear"
    linear_exact = True

    def __init__(self, dim, A=None, b=None, symmetric: bool = False, **kw):
        super().__init__(dim, **kw)
        # symmetric: A = A^T, i.e. the drift is -grad U of a quadratic potential U (no rotation)
        self.symmetric = bool(symmetric)
        A0 = torch.zeros(dim, dim, dtype=DTYPE) if A is None else torch.as_tensor(A, dtype=DTYPE)
        b0 = torch.zeros(dim, dtype=DTYPE) if b is None else torch.as_tensor(b, dtype=DTYPE)
        if A0.shape != (dim, dim) or b0.shape != (dim,):
            raise ConfigError("reference.A", f"expected A of shape ({dim}, {dim}) and b of length {dim}")
        if self.symmetric:
            A0 = 0.5 * (A0 + A0.T)
        self.A = nn.Parameter(A0.clone())
        self.b = nn.Parameter(b0.clone())

    def matrix(self) -> torch.Tensor:
        """The drift matrix: A, or its symmetric part when the class is `symmetric`."""
        return 0.5 * (self.A + self.A.T) if self.symmetric else self.A

    def drift(self, x):
        return x @ self.matrix().T + self.b

    def drift_jacobian(self, x):
        return self.matrix().expand(x.shape[0], self.dim, self.dim)

    def closed_form(self, t: float):
        """(F = e^{At} (d, d), c (d,), Q (d, d)): X_t = F X_0 + c + N(0, Q) (additive noise)."""
        d = self.dim
        A = self.matrix()
        M = torch.zeros(d + 1, d + 1, dtype=DTYPE)
        M[:d, :d] = A
        M[:d, d] = self.b
        E = torch.linalg.matrix_exp(M * t)
        F, c = E[:d, :d], E[:d, d]
        S = torch.diag((self.sigma**2).expand(d))
        V = torch.zeros(2 * d, 2 * d, dtype=DTYPE)
        V[:d, :d] = -A
        V[:d, d:] = S
        V[d:, d:] = A.T
        W = torch.linalg.matrix_exp(V * t)
        Q = W[d:, d:].T @ W[:d, d:]
        return F, c, 0.5 * (Q + Q.T)

    def moments(self, x, times, substeps=10):
        if self.noise != "additive":
            return super().moments(x, times, substeps)
        n, d = x.shape
        ms, Ps, Phis = [], [], []
        for t in times:
            F, c, Q = self.closed_form(float(t))
            ms.append(x @ F.T + c)
            Ps.append(Q.expand(n, d, d))
            Phis.append(F.expand(n, d, d))
        return torch.stack(ms), torch.stack(Ps), torch.stack(Phis)

    def drift_parameters(self):
        return {"A": self.matrix(), "b": self.b}


class Potential(Reference):
    """dX = -∇U_θ(X) dt + g dW with U_θ an MLP (softplus activations, so ∇U is smooth)."""

    kind = "potential"

    def __init__(self, dim, hidden: list[int] | None = None, seed: int = 0, **kw):
        super().__init__(dim, **kw)
        hidden = [32, 32] if hidden is None else list(hidden)
        gen = torch.Generator().manual_seed(int(seed))
        layers: list[nn.Module] = []
        width = dim
        for h in hidden:
            lin = nn.Linear(width, h, dtype=DTYPE)
            layers += [lin, nn.Softplus()]
            width = h
        layers.append(nn.Linear(width, 1, dtype=DTYPE))
        self.net = nn.Sequential(*layers)
        with torch.no_grad():
            for m in self.net:
                if isinstance(m, nn.Linear):
                    bound = 1.0 / math.sqrt(m.in_features)
                    m.weight.copy_((torch.rand(m.weight.shape, generator=gen, dtype=DTYPE) * 2 - 1) * bound)
                    m.bias.copy_((torch.rand(m.bias.shape, generator=gen, dtype=DTYPE) * 2 - 1) * bound)
            self.net[-1].weight.mul_(1e-3)  # start near the Brownian reference

    def _params(self):
        return {k: v for k, v in self.net.named_parameters()}

    def _u(self, params, xi):
        return torch.func.functional_call(self.net, params, (xi[None],))[0, 0]

    def potential(self, x):
        return self.net(x)[:, 0]

    def drift(self, x):
        return -torch.func.vmap(torch.func.grad(self._u, argnums=1), in_dims=(None, 0))(self._params(), x)

    def drift_jacobian(self, x):
        return -torch.func.vmap(torch.func.hessian(self._u, argnums=1), in_dims=(None, 0))(self._params(), x)

    def moments(self, x, times, substeps=10):
        """Mean along the drift's flow (RK4), covariance of the driving noise alone (g² t, Φ = I):
        the LNA's Hessian terms are dropped, which keeps an MLP refit fast (small-noise limit)."""
        n, d = x.shape
        ms, t_prev, m = [], 0.0, x
        for t in times:
            steps = max(2, int(math.ceil(substeps * (t - t_prev) / max(times[-1], 1e-12))))
            m = rk4(lambda _t, z: self.drift(z), m, t_prev, t, steps) if t > t_prev else m
            ms.append(m)
            t_prev = t
        g2 = self.diffusion(x) ** 2
        P = torch.stack([torch.diag_embed(g2 * t) for t in times])
        Phi = torch.eye(d, dtype=x.dtype).expand(len(times), n, d, d)
        return torch.stack(ms), P, Phi


class Parametric(Reference):
    """dX = f(X; params) dt + g dW with named scalar parameters (positive ones stored as logs)."""

    kind = "parametric"

    def __init__(self, dim, drift: str, params: dict[str, float] | None = None, positive: bool = True, **kw):
        super().__init__(dim, **kw)
        self.drift_name = drift
        self.fn = resolve_drift(drift)
        init = dict(BUILTIN_DRIFTS[drift][1]) if drift in BUILTIN_DRIFTS else {}
        init.update(params or {})
        if not init:
            raise ConfigError(
                "reference.params",
                f"drift '{drift}' needs initial parameter values (reference.params: {{name: value}})",
            )
        self.positive = bool(positive)
        self.names = sorted(init)
        vals = []
        for k in self.names:
            v = float(init[k])
            if self.positive and v <= 0:
                raise ConfigError(f"reference.params.{k}", f"must be > 0 with reference.positive: true, got {v}")
            vals.append(math.log(v) if self.positive else v)
        self.raw = nn.Parameter(torch.tensor(vals, dtype=DTYPE))
        # fail early, with the key, if the function does not fit the data's dimension
        try:
            out = self.drift(torch.ones(3, dim, dtype=DTYPE))
        except Exception as err:  # the user's function raised
            raise ConfigError(
                "reference.drift", f"drift '{drift}' failed on a ({3}, {dim}) input: {type(err).__name__}: {err}"
            ) from None
        if tuple(out.shape) != (3, dim):
            raise ConfigError(
                "reference.drift", f"drift '{drift}' returned shape {tuple(out.shape)} for input (3, {dim})"
            )

    def drift_jacobian(self, x):
        """Analytic for the built-in drifts; otherwise central finite differences (below)."""
        jac = BUILTIN_JACOBIANS.get(self.drift_name)
        if jac is not None:
            return jac(x, self.drift_parameters())
        return self._fd_jacobian(x)

    def _fd_jacobian(self, x):
        """Central finite differences, 2d drift calls (error O(h²) ~ 1e-10, far below the LNA's
        own approximation; 25x faster than vmap(jacfwd) here) -- differentiable in θ."""
        h = 1e-5 * (1.0 + x.detach().abs())
        cols = []
        for j in range(self.dim):
            e = torch.zeros_like(x)
            e[:, j] = h[:, j]
            cols.append((self.drift(x + e) - self.drift(x - e)) / (2 * h[:, j : j + 1]))
        return torch.stack(cols, dim=-1)

    def drift_parameters(self):
        vals = self.raw.exp() if self.positive else self.raw
        return {k: vals[i] for i, k in enumerate(self.names)}

    def drift(self, x):
        return self.fn(x, self.drift_parameters())


REFERENCE_CLASSES = {"brownian": Brownian, "linear": Linear, "potential": Potential, "parametric": Parametric}
