"""Built-in drifts of the parametric reference class, their analytic Jacobians, and user
drifts by import path (`reference.drift: module:function`).

A drift takes (x (n, d) tensor, params dict of scalar tensors) and returns (n, d).
"""

from __future__ import annotations

import importlib
from typing import Callable

import torch

from ...errors import ConfigError

__all__ = [
    "lotka_volterra",
    "repressilator",
    "lotka_volterra_jacobian",
    "repressilator_jacobian",
    "BUILTIN_DRIFTS",
    "BUILTIN_JACOBIANS",
    "resolve_drift",
]


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
BUILTIN_JACOBIANS: dict[str, Callable] = {
    "lotka_volterra": lotka_volterra_jacobian,
    "repressilator": repressilator_jacobian,
}

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
        raise ConfigError(
            key, f"unknown drift '{name}': expected one of {sorted(BUILTIN_DRIFTS)} or an import path 'module:function'"
        )
    module, _, func = name.partition(":")
    try:
        mod = importlib.import_module(module)
    except ImportError as err:
        raise ConfigError(key, f"cannot import module '{module}' of drift '{name}': {err}") from None
    fn = getattr(mod, func, None)
    if fn is None or not callable(fn):
        raise ConfigError(key, f"module '{module}' has no callable '{func}' (drift '{name}')")
    return fn
