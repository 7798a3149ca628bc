"""Reference SDEs of the multi-marginal Schrödinger bridge (arXiv 2408.06277, Sec. 3).

A reference is `dX = f_θ(X) dt + g(X) dW` with diagonal noise, `g(x) = σ` (additive) or
`g(x) = σ ⊙ |x|` (multiplicative, as in the Lotka-Volterra and repressilator
simulators). Classes (config `reference.class`):

- `brownian`:   f = 0
- `linear`:     f(x) = A x + b  (Ornstein-Uhlenbeck; closed-form Gaussian transition)
- `potential`:  f(x) = -∇U_θ(x) with U_θ an MLP
- `parametric`: f(x) = user_drift(x, params) with named parameters; built in:
  `lotka_volterra` (α, β, γ, δ) and `repressilator` (beta, n, k, gamma); any other
  function by import path `module:function` taking (x (n, d) tensor, params dict of
  scalar tensors) and returning (n, d).

Every reference gives Gaussian transition moments over an interval (`moments`): exact for
`brownian` and `linear` (matrix exponential and Van Loan's block exponential), the
linear-noise approximation (LNA: mean along the drift's flow, covariance from the
Lyapunov equation along it, van Kampen 1961) for nonlinear drifts. These moments give
the static SB cost -log p_ref(y|x), the bridge's conditional law at interior times, and
the likelihood the refit maximises.
"""

from __future__ import annotations

import importlib
import math
from typing import Callable

import torch
from torch import nn

from ..core.sde import rk4
from ..errors import ConfigError

__all__ = [
    "Reference",
    "Brownian",
    "Linear",
    "Potential",
    "Parametric",
    "BUILTIN_DRIFTS",
    "lotka_volterra",
    "repressilator",
    "make_reference",
    "resolve_drift",
    "REFERENCE_CLASSES",
]

DTYPE = torch.float64
_EPS_MULT = 1e-2  # multiplicative noise floor: g(x) = σ sqrt(x² + ε²), keeps g > 0 near 0


def lotka_volterra(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    """Lotka-Volterra: dx = (αx − βxy) dt, dy = (δxy − γy) dt. x: (n, 2) -> (n, 2)."""
    a, b = x[..., 0], x[..., 1]
    return torch.stack([p["alpha"] * a - p["beta"] * a * b, p["delta"] * a * b - p["gamma"] * b], dim=-1)


def repressilator(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    """Repressilator mRNA Hill kinetics: dm_i = [β / (1 + (m_{i-1}/k)^n) − γ m_i] dt. x: (n, d)."""
    prev = torch.roll(x, shifts=1, dims=-1).clamp(min=0.0)
    return p["beta"] / (1.0 + (prev / p["k"]) ** p["n"]) - p["gamma"] * x


def lotka_volterra_jacobian(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    """∂f/∂x of `lotka_volterra`: [[α − βy, −βx], [δy, δx − γ]]. (n, 2) -> (n, 2, 2)."""
    a, b = x[..., 0], x[..., 1]
    row0 = torch.stack([p["alpha"] - p["beta"] * b, -p["beta"] * a], dim=-1)
    row1 = torch.stack([p["delta"] * b, p["delta"] * a - p["gamma"]], dim=-1)
    return torch.stack([row0, row1], dim=-2)


def repressilator_jacobian(x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    """∂f/∂x of `repressilator`: −γ on the diagonal, ∂f_i/∂m_{i−1} = −β n u^{n−1} / (k (1 + u^n)²)
    with u = max(m_{i−1}, 0)/k (zero where m_{i−1} <= 0). (n, d) -> (n, d, d)."""
    n_, d = x.shape
    prev = torch.roll(x, shifts=1, dims=-1)
    u = prev.clamp(min=0.0) / p["k"]
    un1 = torch.where(prev > 0, u.clamp_min(1e-300) ** (p["n"] - 1), torch.zeros_like(u))
    dprev = -p["beta"] * p["n"] * un1 / (p["k"] * (1.0 + u * un1) ** 2)  # u^n = u · u^{n−1}
    J = -p["gamma"] * torch.eye(d, dtype=x.dtype).expand(n_, d, d)
    idx = torch.arange(d)
    sub = torch.zeros(n_, d, d, dtype=x.dtype)
    sub[:, idx, (idx - 1) % d] = dprev
    return J + sub


# name -> analytic Jacobian (faster than finite differences in the LNA's inner loop)
BUILTIN_JACOBIANS: dict[str, Callable] = {"lotka_volterra": lotka_volterra_jacobian, "repressilator": repressilator_jacobian}

BUILTIN_DRIFTS: dict[str, tuple[Callable, dict[str, float]]] = {
    # name -> (function, default initial parameters: deliberately not the truth)
    "lotka_volterra": (lotka_volterra, {"alpha": 0.5, "beta": 0.2, "gamma": 0.2, "delta": 0.05}),
    "repressilator": (repressilator, {"beta": 5.0, "n": 2.0, "k": 2.0, "gamma": 0.5}),
}


def resolve_drift(name: str, key: str = "reference.drift") -> Callable:
    """A built-in drift by name, or a user function by import path `module:function`."""
    if name in BUILTIN_DRIFTS:
        return BUILTIN_DRIFTS[name][0]
    if ":" not in name:
        raise ConfigError(key, f"unknown drift '{name}': expected one of {sorted(BUILTIN_DRIFTS)} or an import path 'module:function'")
    module, _, func = name.partition(":")
    try:
        mod = importlib.import_module(module)
    except ImportError as err:
        raise ConfigError(key, f"cannot import module '{module}' of drift '{name}': {err}") from None
    fn = getattr(mod, func, None)
    if fn is None or not callable(fn):
        raise ConfigError(key, f"module '{module}' has no callable '{func}' (drift '{name}')")
    return fn


class Reference(nn.Module):
    """Base class: diagonal noise `g(x)`, Gaussian transition moments, parameter reporting.

    sigma: initial noise scale (float, or a list of per-coordinate values);
    learn_sigma: refit σ by maximum likelihood too; noise: "additive" or "multiplicative".
    """

    kind = "reference"
    linear_exact = False  # moments are exact (no LNA approximation)

    def __init__(self, dim: int, sigma: float | list[float] = 1.0, learn_sigma: bool = True, noise: str = "additive", sigma_per_dim: bool = False):
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
            steps = max(2, int(math.ceil(substeps * (t - t_prev) / max(times[-1], 1e-12))))  # ~substeps over [0, times[-1]]
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
            return w * self.drift(m), w[:, :, None] * (JP + JP.transpose(1, 2) + torch.diag_embed(self.diffusion(m) ** 2))

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
            raise ConfigError("reference.params", f"drift '{drift}' needs initial parameter values (reference.params: {{name: value}})")
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
            raise ConfigError("reference.drift", f"drift '{drift}' failed on a ({3}, {dim}) input: {type(err).__name__}: {err}") from None
        if tuple(out.shape) != (3, dim):
            raise ConfigError("reference.drift", f"drift '{drift}' returned shape {tuple(out.shape)} for input (3, {dim})")

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


def make_reference(spec: dict, dim: int, key: str = "reference") -> Reference:
    """Build a reference from its config entry (see config/README.md, `bridge.<name>.reference`)."""
    spec = dict(spec or {})
    cls = spec.get("class", "linear")
    if cls not in REFERENCE_CLASSES:
        raise ConfigError(f"{key}.class", f"unknown reference class '{cls}'; expected one of {sorted(REFERENCE_CLASSES)}")
    sigma = spec.get("sigma", {}) or {}
    common = dict(
        sigma=sigma.get("init", 1.0),
        learn_sigma=bool(sigma.get("learn", True)),
        sigma_per_dim=bool(sigma.get("per_dim", False)),
        noise=spec.get("noise", "additive"),
    )
    try:
        if cls == "brownian":
            return Brownian(dim, **common)
        if cls == "linear":
            # absent key = full A: model files saved before `symmetric` existed load as fitted
            # (fit_bridge fills in the default, true, before it gets here)
            return Linear(dim, symmetric=bool(spec.get("symmetric", False)), **common)
        if cls == "potential":
            return Potential(dim, hidden=spec.get("hidden", [32, 32]), seed=int(spec.get("seed", 0) or 0), **common)
        drift = spec.get("drift")
        if not drift:
            raise ConfigError(f"{key}.drift", "the parametric class needs a drift: a built-in name or 'module:function'")
        return Parametric(dim, drift=drift, params=spec.get("params") or {}, positive=spec.get("positive", True), **common)
    except ConfigError as err:
        # re-key relative names under the experiment's key
        if not err.key.startswith(key) and err.key.startswith("reference"):
            raise ConfigError(key + err.key[len("reference"):], str(err).split("': ", 1)[-1]) from None
        raise
