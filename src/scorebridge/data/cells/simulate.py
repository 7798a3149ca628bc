"""Seeded Euler-Maruyama simulators of snapshot time courses with known dynamics.

Three systems, each an SDE ``dX = f(X; θ) dt + g(X) dW`` with diagonal noise:

``lotka_volterra`` (2 species, prey ``x`` and predator ``y``; multiplicative noise)
    dx = (α x − β x y) dt + σ x dW₁,   dy = (δ x y − γ y) dt + σ y dW₂
    θ = {alpha: 1, beta: 0.4, gamma: 0.4, delta: 0.1}
``repressilator`` (3 mRNAs, each repressed by the previous one; multiplicative noise)
    dm_i = [β / (1 + (m_{i−1}/k)^n) − γ m_i] dt + σ m_i dW_i   (m_0 ≡ m_3)
    θ = {beta: 10, n: 3, k: 1, gamma: 1}
``ou`` (linear / Ornstein-Uhlenbeck, 2-D rotation with decay; additive noise)
    dX = (A X + b) dt + σ dW
    θ = {A: [[-0.1, -1], [1, -0.1]], b: [0, 0]}

Four 2-D regimes for the bridge's generalisation benchmark (additive noise):

``bifurcation`` (a pitchfork: one population splits into two fates x₁ = ±1 while it moves on)
    dx₁ = a x₁ (1 − x₁²) dt + σ dW₁,   dx₂ = v dt + σ dW₂,   θ = {a: 1, v: 1}
``cycle`` (a limit cycle of radius √μ, Hopf normal form; the population circles it)
    dx = [(μ − |x|²) x + ω J x] dt + σ dW,   J = [[0, −1], [1, 0]],   θ = {mu: 1, omega: 1.2}
``decelerate`` (moves fast, then slows and lingers: x₁ = L log(1 + v t / L) without noise)
    dx₁ = v exp(−x₁ / L) dt + σ dW₁,   dx₂ = (c x₁ − x₂) dt + σ dW₂,   θ = {v: 3, L: 1, c: 0.5}
``proliferation`` (drift along x₁, OU in x₂; cells divide at rate λ(x) = rate (1 + tanh(x₂ / s)),
    so the population shifts to x₂ > 0 and grows: a snapshot holds every descendant of its
    batch's `n_cells` founders, and the counts increase with time)
    dx₁ = v dt + σ dW₁,   dx₂ = −theta x₂ dt + σ dW₂,   θ = {v: 1, theta: 0, rate: 0.3, s: 0.5}

Every snapshot is an independent draw of the population: for time point k a fresh
set of cells is started from the initial distribution and integrated to t_k, so no
cell is seen twice (as in single-cell sequencing, which destroys what it measures).

Interface for the bridge model (which fits these drifts as reference classes)::

    DRIFTS[name](x, params) -> dx/dt      x: (n, d) numpy array or torch tensor
    DEFAULT_PARAMS[name]                   dict of the true default θ (floats, lists)
    NOISE[name]                            "multiplicative" (g = σ x) or "additive" (g = σ)
    diffusion(name, x, sigma) -> g(x)      same shape as x

The drifts use only operations shared by numpy and torch, so ``params`` values may be
python floats, numpy arrays or torch tensors with ``requires_grad`` (for maximum
likelihood fitting); the result has the type of ``x``. This module never imports
torch itself (the data commands stay light).

Output file (``scorebridge cells-simulate --spec JSON --out X.npz``, `write_snapshots_npz`): an ``.npz`` with
one array per time point, ``t0 .. t{K-1}`` of shape (n_k, d) float64, ``times`` (K,),
``features`` (d,) names, and ``true_parameters``: a JSON string
``{"system", "drift": θ, "sigma", "noise", "initial", "dt", "seed"}``, which
``cells-ingest`` carries into the zarr attrs as ``true_parameters``.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from typing import Any, Callable, Mapping

import numpy as np

from ...errors import ConfigError
from ...io import atomic_path
from .options import SimulateOptions, simulate_options

__all__ = [
    "DRIFTS",
    "DEFAULT_PARAMS",
    "NOISE",
    "FEATURES",
    "SYSTEM_DEFAULTS",
    "lotka_volterra_drift",
    "repressilator_drift",
    "ou_drift",
    "bifurcation_drift",
    "cycle_drift",
    "decelerate_drift",
    "proliferation_drift",
    "proliferation_rate",
    "GROWTH",
    "diffusion",
    "resolve_simulation",
    "simulate",
    "write_snapshots_npz",
]

log = logging.getLogger(__name__)


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")


def _stack(cols: list, like: Any):
    """Stack columns (n,) into (n, d) with the array library of `like`."""
    if _is_torch(like):
        import torch

        return torch.stack(cols, dim=-1)
    return np.stack(cols, axis=-1)


def _as_array(value: Any, like: Any):
    """`value` (list, float, array or tensor) as an array of `like`'s library, dtype and device."""
    if _is_torch(like):
        import torch

        return torch.as_tensor(value, dtype=like.dtype, device=like.device)
    return np.asarray(value, dtype=like.dtype)


def lotka_volterra_drift(x, params: dict):
    """Lotka-Volterra drift: (α x − β x y, δ x y − γ y).  x: (..., 2) -> (..., 2)."""
    prey, pred = x[..., 0], x[..., 1]
    a, b, g, d = params["alpha"], params["beta"], params["gamma"], params["delta"]
    return _stack([a * prey - b * prey * pred, d * prey * pred - g * pred], x)


def repressilator_drift(x, params: dict):
    """Repressilator mRNA drift: β / (1 + (m_{i−1}/k)^n) − γ m_i, cyclic.  x: (..., d) -> (..., d).

    Written for any number d ≥ 2 of genes in a ring (the classic circuit has d = 3).
    Negative values (possible only through noise) are clipped at 0 inside the Hill term,
    plus 1e-12 so that gradients with respect to n stay finite at m = 0.
    """
    d = x.shape[-1]
    b, n, k, g = params["beta"], params["n"], params["k"], params["gamma"]
    cols = []
    for i in range(d):
        prev = x[..., (i - 1) % d]
        ratio = (prev * (prev > 0) + 1e-12) / k  # Hill term of a non-negative concentration
        cols.append(b / (1 + ratio**n) - g * x[..., i])
    return _stack(cols, x)


def ou_drift(x, params: dict):
    """Linear drift A x + b.  x: (..., d), A: (d, d), b: (d,) -> (..., d)."""
    a = _as_array(params["A"], x)
    out = x @ a.T
    if params.get("b") is not None:
        out = out + _as_array(params["b"], x)
    return out


def bifurcation_drift(x, params: dict):
    """Pitchfork in x₁ (fates ±1), constant speed v in x₂."""
    return _stack([params["a"] * x[..., 0] * (1 - x[..., 0] ** 2), x[..., 1] * 0 + params["v"]], x)


def cycle_drift(x, params: dict):
    """Hopf normal form: attracted to the circle |x|² = μ, rotating at ω."""
    r2 = x[..., 0] ** 2 + x[..., 1] ** 2
    mu, om = params["mu"], params["omega"]
    return _stack([(mu - r2) * x[..., 0] - om * x[..., 1], (mu - r2) * x[..., 1] + om * x[..., 0]], x)


def decelerate_drift(x, params: dict):
    """Speed v exp(−x₁/L) along x₁ (decelerating), x₂ relaxing to c x₁."""
    return _stack([params["v"] * math.e ** (-x[..., 0] / params["L"]), params["c"] * x[..., 0] - x[..., 1]], x)


def proliferation_drift(x, params: dict):
    """Constant speed v along x₁, OU (rate theta) in x₂."""
    return _stack([x[..., 0] * 0 + params["v"], -params["theta"] * x[..., 1]], x)


def proliferation_rate(x, params: dict):
    """Division rate λ(x) = rate (1 + tanh(x₂ / s)) per unit time."""
    return params["rate"] * (2 - 2 / (1 + math.e ** (2 * x[..., 1] / params["s"])))


DRIFTS: dict[str, Callable] = {
    "lotka_volterra": lotka_volterra_drift,
    "repressilator": repressilator_drift,
    "ou": ou_drift,
    "bifurcation": bifurcation_drift,
    "cycle": cycle_drift,
    "decelerate": decelerate_drift,
    "proliferation": proliferation_drift,
}

GROWTH: dict[str, Callable] = {"proliferation": proliferation_rate}  # division rate λ(x, θ); others do not divide

DEFAULT_PARAMS: dict[str, dict] = {
    "lotka_volterra": {"alpha": 1.0, "beta": 0.4, "gamma": 0.4, "delta": 0.1},
    "repressilator": {"beta": 10.0, "n": 3.0, "k": 1.0, "gamma": 1.0},
    "ou": {"A": [[-0.1, -1.0], [1.0, -0.1]], "b": [0.0, 0.0]},
    "bifurcation": {"a": 1.0, "v": 1.0},
    "cycle": {"mu": 1.0, "omega": 1.2},
    "decelerate": {"v": 3.0, "L": 1.0, "c": 0.5},
    "proliferation": {"v": 1.0, "theta": 0.0, "rate": 0.3, "s": 0.5},
}

NOISE: dict[str, str] = {
    "lotka_volterra": "multiplicative",
    "repressilator": "multiplicative",
    "ou": "additive",
    "bifurcation": "additive",
    "cycle": "additive",
    "decelerate": "additive",
    "proliferation": "additive",
}

FEATURES: dict[str, list[str]] = {
    "lotka_volterra": ["prey", "predator"],
    "repressilator": ["m1", "m2", "m3"],
    "ou": ["x1", "x2"],
    "bifurcation": ["fate", "progress"],
    "cycle": ["x1", "x2"],
    "decelerate": ["progress", "x2"],
    "proliferation": ["progress", "state"],
}

# Per-system defaults of what the config leaves null: snapshot times, noise level and
# initial distribution (log-normal with median `mean` and log-sd `std` for the positive
# systems, normal with mean `mean` and sd `std` for ou). The LV start (8, 1.5) lies on a
# wide orbit around the equilibrium (γ/δ, α/β) = (4, 2.5); the times cover ~2/3 of a cycle.
SYSTEM_DEFAULTS: dict[str, dict] = {
    "lotka_volterra": {
        "times": [0, 1, 2, 3, 4, 5, 6],
        "sigma": 0.1,
        "initial": {"mean": [8.0, 1.5], "std": [0.1, 0.1]},
    },
    "repressilator": {
        "times": [0, 1, 2, 3, 4, 5, 6],
        "sigma": 0.1,
        "initial": {"mean": [1.0, 2.0, 4.0], "std": [0.1, 0.1, 0.1]},
    },
    "ou": {"times": [0, 1, 2, 3, 4], "sigma": 0.1, "initial": {"mean": [2.0, 0.0], "std": [0.2, 0.2]}},
    "bifurcation": {"times": [0, 1, 2, 3, 4, 5], "sigma": 0.15, "initial": {"mean": [0.0, 0.0], "std": [0.1, 0.1]}},
    "cycle": {"times": [0, 1, 2, 3, 4, 5], "sigma": 0.1, "initial": {"mean": [1.0, 0.0], "std": [0.1, 0.1]}},
    "decelerate": {"times": [0, 1, 2, 3, 4, 5], "sigma": 0.15, "initial": {"mean": [0.0, 0.0], "std": [0.2, 0.2]}},
    "proliferation": {"times": [0, 1, 2, 3, 4, 5], "sigma": 0.2, "initial": {"mean": [0.0, 0.0], "std": [0.2, 0.6]}},
}


def diffusion(name: str, x, sigma: float):
    """Diagonal diffusion g(x) of system `name`: σ x (multiplicative) or σ (additive), shape of x."""
    if NOISE[name] == "multiplicative":
        return sigma * x
    return sigma * (x * 0 + 1)


def _key(*parts: str) -> str:
    return ".".join(("simulate",) + parts)


def resolve_simulation(sim: SimulateOptions | Mapping) -> dict:
    """The simulation settings (the `simulate` block: options, or a dict the schema fills)
    with the system's defaults in place of nulls, checked; ConfigError names the key.

    Returns {system, drift (θ), sigma, noise, initial {mean, std}, times, n_cells (list per time),
    dt, seed, features}.
    """
    opts = simulate_options(sim)
    system = opts.system
    if system not in DRIFTS:
        raise ConfigError(_key("system"), f"unknown system '{system}'; known: {sorted(DRIFTS)}")
    defaults = SYSTEM_DEFAULTS[system]
    params = copy.deepcopy(DEFAULT_PARAMS[system])
    for name, value in opts.params.items():
        if name not in params:
            raise ConfigError(_key("params", name), f"unknown parameter of '{system}'; known: {sorted(params)}")
        params[name] = value
    d = len(FEATURES[system]) if system != "ou" else int(np.asarray(params["A"]).shape[0])
    if system == "ou":
        a = np.asarray(params["A"], dtype=float)
        if a.ndim != 2 or a.shape[0] != a.shape[1]:
            raise ConfigError(_key("params", "A"), f"expected a square matrix, got shape {a.shape}")
        if params.get("b") is None:
            params["b"] = [0.0] * d
        if np.asarray(params["b"]).shape != (d,):
            raise ConfigError(_key("params", "b"), f"expected {d} values to match A ({d}x{d})")
    times = list(defaults["times"] if opts.times is None else opts.times)
    if len(times) < 2:
        raise ConfigError(_key("times"), "need at least two snapshot times")
    if any(not math.isfinite(t) for t in times) or any(b <= a for a, b in zip(times, times[1:])):
        raise ConfigError(_key("times"), f"times must be finite and strictly increasing, got {times}")
    if times[0] < 0:
        raise ConfigError(_key("times"), f"times start at the initial distribution (t = 0); got {times[0]} < 0")
    n_cells = opts.n_cells
    n_cells = [int(n_cells)] * len(times) if np.isscalar(n_cells) else [int(n) for n in n_cells]
    if len(n_cells) != len(times):
        raise ConfigError(_key("n_cells"), f"{len(n_cells)} counts for {len(times)} times")
    if min(n_cells) < 1:
        raise ConfigError(_key("n_cells"), "every snapshot needs at least one cell")
    sigma = float(defaults["sigma"] if opts.sigma is None else opts.sigma)
    if sigma < 0:
        raise ConfigError(_key("sigma"), f"must be >= 0, got {sigma}")
    initial = dict(defaults["initial"])
    for k, v in opts.initial.items():
        if v is not None:
            initial[k] = v
    for k in ("mean", "std"):
        initial[k] = (
            [float(v) for v in np.broadcast_to(np.asarray(initial[k], dtype=float), (d,))]
            if np.size(initial[k]) in (1, d)
            else None
        )
        if initial[k] is None:
            raise ConfigError(_key("initial", k), f"expected 1 or {d} values")
    if NOISE[system] == "multiplicative" and min(initial["mean"]) <= 0:
        raise ConfigError(_key("initial", "mean"), f"'{system}' needs positive initial populations")
    dt = float(opts.dt)
    if dt <= 0:
        raise ConfigError(_key("dt"), f"must be > 0, got {dt}")
    features = FEATURES[system] if system != "ou" else [f"x{i + 1}" for i in range(d)]
    return {
        "system": system,
        "drift": params,
        "sigma": sigma,
        "noise": NOISE[system],
        "initial": initial,
        "times": [float(t) for t in times],
        "n_cells": n_cells,
        "dt": dt,
        "seed": int(opts.seed),
        "features": features,
    }


def _initial(setting: dict, n: int, rng: np.random.Generator) -> np.ndarray:
    mean, std = np.asarray(setting["initial"]["mean"]), np.asarray(setting["initial"]["std"])
    z = rng.standard_normal((n, mean.size))
    if setting["noise"] == "multiplicative":  # positive populations: log-normal around `mean`
        return mean * np.exp(std * z)
    return mean + std * z


def simulate(sim: SimulateOptions | Mapping) -> tuple[list[np.ndarray], np.ndarray, dict]:
    """Simulate independent snapshots of the `simulate` block `sim` (options, or a dict the
    schema fills); returns (snapshots [(n_k, d)], times (K,), resolved settings).

    Euler-Maruyama, X_{j+1} = X_j + f(X_j) h + g(X_j) √h ξ_j, with step h = dt (shortened to
    land exactly on each snapshot time). Snapshot k's cells form their own batch, started
    at t = 0 and read off at t_k, so snapshots share no cell. Systems in `GROWTH` divide: a
    cell splits with probability λ(x) h per step, its copy joining the same batch.
    """
    s = resolve_simulation(sim)
    rng = np.random.default_rng(s["seed"])
    times, counts = s["times"], s["n_cells"]
    drift, params, sigma, system = DRIFTS[s["system"]], s["drift"], s["sigma"], s["system"]
    growth = GROWTH.get(system)
    x = _initial(s, sum(counts), rng)
    owner = np.repeat(np.arange(len(times)), counts)  # snapshot each cell belongs to
    snaps: list[np.ndarray | None] = [None] * len(times)
    t = 0.0
    for k, t_k in enumerate(times):
        while t_k - t > 1e-12:  # integrate every still-unobserved cell to t_k
            h = min(s["dt"], t_k - t)
            alive = owner >= k
            xa = x[alive]
            noise = rng.standard_normal(xa.shape)
            x[alive] = xa + drift(xa, params) * h + diffusion(system, xa, sigma) * math.sqrt(h) * noise
            if growth is not None:  # division: each dividing cell's copy joins its own batch
                split = np.flatnonzero(alive)[rng.random(xa.shape[0]) < growth(x[alive], params) * h]
                x, owner = np.concatenate([x, x[split]]), np.concatenate([owner, owner[split]])
            t += h
        snaps[k] = x[owner == k].copy()
        if not np.all(np.isfinite(snaps[k])):
            raise ConfigError(_key("dt"), f"the simulation diverged by t = {t_k}; use a smaller dt or sigma")
    return snaps, np.asarray(times, dtype=float), s


def write_snapshots_npz(
    path, snaps: list[np.ndarray], times, true_parameters: dict | None = None, features: list[str] | None = None
) -> None:
    """Write snapshots in the ragged npz format `cells-ingest` reads (atomically)."""
    arrays: dict[str, np.ndarray] = {f"t{k}": np.asarray(s, dtype=np.float64) for k, s in enumerate(snaps)}
    arrays["times"] = np.asarray(times, dtype=np.float64)
    if features is not None:
        arrays["features"] = np.asarray(features, dtype=str)
    if true_parameters is not None:
        arrays["true_parameters"] = np.asarray(json.dumps(true_parameters, sort_keys=True))
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # a file object: np.savez would otherwise append ".npz"
            np.savez(f, **arrays)
