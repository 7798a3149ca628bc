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

Modules: `base` (the `Reference` interface and LNA moments), `classes` (the four classes),
`drifts` (built-in parametric drifts, user drifts by import path); `make_reference` here.
"""

from __future__ import annotations

from ...errors import ConfigError
from ..options import ReferenceOptions
from .base import DTYPE, Reference
from .classes import REFERENCE_CLASSES, Brownian, Linear, Parametric, Potential
from .drifts import BUILTIN_DRIFTS, lotka_volterra, repressilator, resolve_drift

__all__ = [
    "DTYPE",
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


def make_reference(
    opts: ReferenceOptions, dim: int, key: str = "reference", sigma: float | list[float] | None = None
) -> Reference:
    """Build a reference from its typed config entry (config/README.md, `bridge.<name>.model.reference`).

    `sigma`: the initial noise scale when `opts.sigma.init` is `auto` (measured on the
    snapshots by `fit_bridge`), or to override it; `key` names the entry in errors.
    """
    sigma = opts.sigma.init if sigma is None else sigma
    if sigma == "auto":
        raise ConfigError(
            f"{key}.sigma.init", "'auto' is measured on the snapshots (fit_bridge); pass the value as sigma="
        )
    common = dict(
        sigma=sigma, learn_sigma=bool(opts.sigma.learn), sigma_per_dim=bool(opts.sigma.per_dim), noise=opts.noise
    )
    cls = opts.class_
    if cls not in REFERENCE_CLASSES:
        raise ConfigError(
            f"{key}.class", f"unknown reference class '{cls}'; expected one of {sorted(REFERENCE_CLASSES)}"
        )
    try:
        if cls == "brownian":
            return Brownian(dim, **common)
        if cls == "linear":
            return Linear(dim, symmetric=bool(opts.symmetric), **common)
        if cls == "potential":
            return Potential(dim, hidden=list(opts.hidden), **common)
        if not opts.drift:
            raise ConfigError(
                f"{key}.drift", "the parametric class needs a drift: a built-in name or 'module:function'"
            )
        return Parametric(dim, drift=opts.drift, params=dict(opts.params), positive=opts.positive, **common)
    except ConfigError as err:
        # re-key relative names under the experiment's key
        if not err.key.startswith(key) and err.key.startswith("reference"):
            raise ConfigError(key + err.key[len("reference") :], str(err).split("': ", 1)[-1]) from None
        raise
