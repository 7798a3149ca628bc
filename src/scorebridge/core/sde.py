"""Integrators for SDEs and ODEs, batched in torch (shared by the bridge and SR models).

An Itô SDE `dX = f(X, t) dt + g(X, t) dW` with diagonal noise: `drift(x, t) -> (n, d)`,
`diffusion(x, t) -> (n, d)` or a broadcastable tensor/float (the per-coordinate standard
deviation rate). Time runs forward (t1 > t0) or backward (t1 < t0; the step is negative
and the noise scale uses |dt|). Every function takes an explicit `torch.Generator` so
that results depend only on the seed.
"""

from __future__ import annotations

from typing import Callable, Union

import torch

__all__ = ["time_grid", "euler_maruyama", "rk4", "Drift", "Diffusion"]

Drift = Callable[[torch.Tensor, float], torch.Tensor]
Diffusion = Union[Callable[[torch.Tensor, float], torch.Tensor], torch.Tensor, float]


def time_grid(t0: float, t1: float, n_steps: int) -> torch.Tensor:
    """`n_steps + 1` equally spaced times from t0 to t1 (float64)."""
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    return torch.linspace(float(t0), float(t1), n_steps + 1, dtype=torch.float64)


def _g(diffusion: Diffusion, x: torch.Tensor, t: float) -> torch.Tensor | float:
    return diffusion(x, t) if callable(diffusion) else diffusion


def euler_maruyama(
    drift: Drift,
    diffusion: Diffusion,
    x0: torch.Tensor,
    t0: float,
    t1: float,
    n_steps: int,
    generator: torch.Generator | None = None,
    record: bool = False,
) -> torch.Tensor:
    """Euler-Maruyama: `X_{k+1} = X_k + f(X_k, t_k) h + g(X_k, t_k) sqrt(|h|) xi_k`.

    x0: (n, d). Returns X(t1) (n, d), or the whole path (n_steps + 1, n, d) with `record`.
    """
    h = (float(t1) - float(t0)) / n_steps
    x = x0
    path = [x] if record else None
    for k in range(n_steps):
        t = float(t0) + k * h
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x = x + drift(x, t) * h + _g(diffusion, x, t) * (abs(h) ** 0.5) * noise
        if record:
            path.append(x)
    return torch.stack(path) if record else x


def rk4(
    field: Callable[[float, object], object],
    y0: object,
    t0: float,
    t1: float,
    n_steps: int,
    record: bool = False,
):
    """Classical Runge-Kutta for `dy/dt = field(t, y)` where y is a tensor or a tuple of tensors.

    Returns y(t1), or the list of states at the n_steps + 1 grid times with `record`.
    Differentiable (autograd flows through every stage).
    """
    h = (float(t1) - float(t0)) / n_steps

    def axpy(y, a, k):
        if isinstance(y, tuple):
            return tuple(yi + a * ki for yi, ki in zip(y, k))
        return y + a * k

    def combine(y, k1, k2, k3, k4):
        if isinstance(y, tuple):
            return tuple(yi + h / 6 * (a + 2 * b + 2 * c + d) for yi, a, b, c, d in zip(y, k1, k2, k3, k4))
        return y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)

    y = y0
    states = [y] if record else None
    for k in range(n_steps):
        t = float(t0) + k * h
        k1 = field(t, y)
        k2 = field(t + h / 2, axpy(y, h / 2, k1))
        k3 = field(t + h / 2, axpy(y, h / 2, k2))
        k4 = field(t + h, axpy(y, h, k3))
        y = combine(y, k1, k2, k3, k4)
        if record:
            states.append(y)
    return states if record else y
