"""Baselines for predicting a population at an unobserved time from training snapshots.

Each takes training snapshots ``snaps`` (list of (n_k, d) arrays; counts may differ) at
strictly increasing ``times`` (K,), and predicts particles (n, d) at a time ``t``:

- ``Previous``: the training snapshot at the latest training time <= t, unchanged (the
  first snapshot when t precedes every training time).
- ``McCann``: displacement (McCann) interpolation of the exact W2-optimal coupling between
  the neighbouring training snapshots t_a <= t <= t_b: x = (1 − s) x_a + s y, s = (t − t_a)/(t_b − t_a),
  with y drawn for each source cell x_a from its row of the exact OT plan (``ot.emd``,
  squared-Euclidean cost); with equal counts the plan is a permutation, y = T(x_a).
  Outside [t_0, t_{K−1}] the nearest snapshot is returned (no extrapolation).
- ``OTCFM``: minibatch-OT conditional flow matching (Tong et al. 2024, "Improving and
  generalizing flow-based generative models with minibatch optimal transport", §3.2).
  An MLP v(x, τ) is regressed onto u = x₁ − x₀ at x_τ = (1 − s) x₀ + s x₁ + σ ε, where
  (x₀, x₁) are drawn from the exact OT plan between minibatches of adjacent training
  snapshots k, k+1 and τ = k + s (time rescaled per interval, so each interval has unit
  length). The network sees the time as (s, k) (``time_input="interval"``, default: the
  velocity may jump at a snapshot, where the conditional targets do) or as τ alone
  (``"tau"``, as in torchcfm's multi-marginal examples). Prediction integrates
  dx/dτ = v(x, τ) (RK4, never across a snapshot within one step) from the previous training
  snapshot to τ(t), the piecewise-linear map of t onto the interval index (linear beyond
  the ends, where the end intervals' fields are extrapolated).

Common interface::

    predict_previous(snaps, times, t) -> (n, d)
    Previous().fit(snaps, times).predict(t) -> (n, d)
    McCann(seed=0).fit(snaps, times).predict(t, n=None) -> (n, d)
    OTCFM(**cfg).fit(snaps, times).predict(t, x0=None, t0=None) -> (n, d)
    make_baseline(name, opts, seed)  # name in BASELINES, opts = BaselinesOptions.<name> (bridge.options)

Inputs are numpy arrays (or tensors, converted); outputs are float64 numpy arrays.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time as _time
from typing import Any, Sequence

import numpy as np

from ..progress import progress

__all__ = [
    "BASELINES",
    "Previous",
    "McCann",
    "OTCFM",
    "predict_previous",
    "make_baseline",
    "check_snapshots",
    "interval_position",
]

log = logging.getLogger(__name__)


def check_snapshots(snaps: Sequence, times: Sequence[float]) -> tuple[list[np.ndarray], np.ndarray]:
    """Snapshots as float64 (n_k, d) arrays and times (K,); ValueError when they do not fit together."""
    out = []
    for k, s in enumerate(snaps):
        if hasattr(s, "detach"):
            s = s.detach().cpu().numpy()
        a = np.asarray(s, dtype=np.float64)
        if a.ndim != 2 or a.shape[0] == 0:
            raise ValueError(f"snapshot {k} has shape {a.shape}; expected (cells, features) with cells >= 1")
        out.append(a)
    t = np.asarray(times, dtype=np.float64).ravel()
    if len(out) != t.size:
        raise ValueError(f"{len(out)} snapshots but {t.size} times")
    if len(out) < 1:
        raise ValueError("need at least one training snapshot")
    if not np.all(np.isfinite(t)) or np.any(np.diff(t) <= 0):
        raise ValueError(f"times must be finite and strictly increasing, got {t.tolist()}")
    dims = {a.shape[1] for a in out}
    if len(dims) > 1:
        raise ValueError(f"snapshots differ in dimension: {[a.shape[1] for a in out]}")
    return out, t


def interval_position(times: np.ndarray, t: float) -> float:
    """τ(t): the time as a position on the interval index (t_k -> k), linear beyond the ends."""
    times = np.asarray(times, dtype=np.float64)
    K = times.size
    if K == 1:
        return 0.0
    if t <= times[0]:
        return float((t - times[0]) / (times[1] - times[0]))
    if t >= times[-1]:
        return float(K - 1 + (t - times[-1]) / (times[-1] - times[-2]))
    return float(np.interp(t, times, np.arange(K)))


def _previous_index(times: np.ndarray, t: float) -> int:
    """Index of the latest time <= t (0 when t precedes them all)."""
    return max(int(np.searchsorted(times, t + 1e-12 * max(1.0, abs(t)), side="right")) - 1, 0)


def predict_previous(train_snapshots: Sequence, train_times: Sequence[float], t_target: float) -> np.ndarray:
    """The training snapshot at the latest training time <= t_target (the first one before them all)."""
    snaps, times = check_snapshots(train_snapshots, train_times)
    return snaps[_previous_index(times, float(t_target))].copy()


class Previous:
    """The previous snapshot unchanged, behind the common fit/predict interface."""

    def __init__(self, **_: Any):
        self.snaps: list[np.ndarray] | None = None

    def fit(self, snaps: Sequence, times: Sequence[float]) -> "Previous":
        self.snaps, self.times = check_snapshots(snaps, times)
        return self

    def predict(self, t_target: float, **_: Any) -> np.ndarray:
        if self.snaps is None:
            raise RuntimeError("call fit() first")
        return predict_previous(self.snaps, self.times, t_target)


def _ot_plan(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Exact OT plan (n, m) between uniform clouds with squared-Euclidean cost."""
    import ot
    from scipy.spatial.distance import cdist

    a = np.full(x.shape[0], 1.0 / x.shape[0])
    b = np.full(y.shape[0], 1.0 / y.shape[0])
    return ot.emd(a, b, cdist(x, y, "sqeuclidean"), numItermax=10_000_000)


def _minibatch_pairs(
    a: np.ndarray, b: np.ndarray, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i, j) coupled by the exact OT plan between minibatches a (n, d) and b (m, d).

    Equal counts: the plan is a permutation (Birkhoff), found exactly and fast by
    `scipy.optimize.linear_sum_assignment`, and every pair is used. Otherwise `size`
    pairs are drawn from the `ot.emd` plan.
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    if a.shape[0] == b.shape[0]:
        i, j = linear_sum_assignment(cdist(a, b, "sqeuclidean"))
        return i, j
    plan = _ot_plan(a, b)
    p = plan.ravel() / plan.sum()
    idx = rng.choice(p.size, size=size, p=p)
    return np.divmod(idx, plan.shape[1])


def _sample_rows(plan: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """For each row i, a column j drawn with probability plan[i, j] / Σ_j plan[i, j]."""
    rows = plan / plan.sum(axis=1, keepdims=True)
    cum = np.cumsum(rows, axis=1)
    u = rng.random(plan.shape[0])[:, None] * cum[:, -1:]
    return np.minimum((cum <= u).sum(axis=1), plan.shape[1] - 1)


class McCann:
    """Displacement interpolation of the exact OT coupling between neighbouring snapshots."""

    def __init__(self, seed: int = 0, **_: Any):
        self.seed = int(seed)
        self.snaps: list[np.ndarray] | None = None
        self._plans: dict[int, np.ndarray] = {}

    def fit(self, snaps: Sequence, times: Sequence[float]) -> "McCann":
        self.snaps, self.times = check_snapshots(snaps, times)
        self._plans = {}
        return self

    def plan(self, k: int) -> np.ndarray:
        """Exact OT plan between training snapshots k and k+1 (cached)."""
        if k not in self._plans:
            self._plans[k] = _ot_plan(self.snaps[k], self.snaps[k + 1])
        return self._plans[k]

    def predict(self, t_target: float, n: int | None = None, **_: Any) -> np.ndarray:
        """Particles at t_target: one per cell of the earlier neighbour (or `n` drawn from them)."""
        if self.snaps is None:
            raise RuntimeError("call fit() first")
        t, times = float(t_target), self.times
        rng = np.random.default_rng(self.seed)
        if times.size == 1 or t <= times[0] or t >= times[-1]:
            out = self.snaps[0 if t <= times[0] else -1].copy()
        else:
            a = _previous_index(times, t)
            s = (t - times[a]) / (times[a + 1] - times[a])
            x0 = self.snaps[a]
            x1 = self.snaps[a + 1][_sample_rows(self.plan(a), rng)]
            out = (1.0 - s) * x0 + s * x1  # McCann interpolant of the coupling
        if n is not None and n != out.shape[0]:
            out = out[rng.choice(out.shape[0], size=n, replace=n > out.shape[0])]
        return out


class OTCFM:
    """Minibatch-OT conditional flow matching between adjacent training snapshots.

    Parameters: ``hidden`` MLP width, ``layers`` hidden layers, ``steps`` optimiser steps,
    ``lr`` Adam learning rate, ``batch`` cells drawn per snapshot per interval per step,
    ``sigma`` noise of the conditional path, ``ode_steps`` RK4 steps per unit interval,
    ``time_input`` ("interval" or "tau", see the module docstring), ``seed``, ``device``. Data are standardised (per-feature mean/sd of all training cells)
    inside; predictions are mapped back.
    """

    def __init__(
        self,
        hidden: int = 64,
        layers: int = 3,
        steps: int = 1000,
        lr: float = 1e-3,
        batch: int = 128,
        sigma: float = 0.1,
        ode_steps: int = 20,
        time_input: str = "interval",
        seed: int = 0,
        device: str = "cpu",
        **_: Any,
    ):
        if time_input not in ("interval", "tau"):
            raise ValueError(f"time_input must be 'interval' or 'tau', got {time_input!r}")
        self.time_input = time_input
        self.hidden, self.layers, self.steps, self.lr = int(hidden), int(layers), int(steps), float(lr)
        self.batch, self.sigma, self.ode_steps, self.seed, self.device = (
            int(batch),
            float(sigma),
            int(ode_steps),
            int(seed),
            device,
        )
        self.net = None
        self.losses: list[float] = []
        self.fit_seconds = float("nan")

    def _make_net(self, d: int):
        import torch

        mods: list[torch.nn.Module] = []
        width = d + 2
        for _ in range(self.layers):
            mods += [torch.nn.Linear(width, self.hidden), torch.nn.SELU()]
            width = self.hidden
        mods.append(torch.nn.Linear(width, d))
        return torch.nn.Sequential(*mods)

    def fit(self, snaps: Sequence, times: Sequence[float]) -> "OTCFM":
        import torch

        snaps, self.times = check_snapshots(snaps, times)
        if len(snaps) < 2:
            raise ValueError("OT-CFM needs at least two training snapshots")
        start = _time.perf_counter()
        allx = np.concatenate(snaps)
        self.mean, self.scale = allx.mean(0), np.where(allx.std(0) > 0, allx.std(0), 1.0)
        self.snaps = snaps
        z = [(s - self.mean) / self.scale for s in snaps]
        d = allx.shape[1]
        rng = np.random.default_rng(self.seed)
        dev = torch.device(self.device)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.net = self._make_net(d).to(dev)
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        opt = torch.optim.Adam(self.net.parameters(), lr=self.lr)
        self.losses = []
        with progress(total=self.steps, desc="OT-CFM") as bar:
            for step in range(self.steps):
                x0s, x1s, taus = [], [], []
                for k in range(len(z) - 1):
                    m = min(self.batch, z[k].shape[0], z[k + 1].shape[0])  # equal sizes: the plan is a permutation
                    a = z[k][rng.choice(z[k].shape[0], size=m, replace=False)]
                    b = z[k + 1][rng.choice(z[k + 1].shape[0], size=m, replace=False)]
                    i, j = _minibatch_pairs(a, b, self.batch, rng)
                    x0s.append(a[i])
                    x1s.append(b[j])
                    taus.append(np.full(i.size, float(k)))
                x0 = torch.as_tensor(np.concatenate(x0s), dtype=torch.float32, device=dev)
                x1 = torch.as_tensor(np.concatenate(x1s), dtype=torch.float32, device=dev)
                k0 = torch.as_tensor(np.concatenate(taus), dtype=torch.float32, device=dev)[:, None]
                s = torch.rand(x0.shape[0], 1, generator=gen).to(dev)
                eps = torch.randn(x0.shape, generator=gen).to(dev)
                xt = (1 - s) * x0 + s * x1 + self.sigma * eps  # conditional path N((1−s)x₀ + s x₁, σ²)
                ut = x1 - x0  # its conditional velocity (σ constant)
                v = self.net(self._inputs(xt, k0, s))
                loss = ((v - ut) ** 2).sum(1).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                self.losses.append(loss.item())
                bar.update(1)
        self.fit_seconds = _time.perf_counter() - start
        log.info(
            "OT-CFM: %d steps on %d intervals in %.1f s, final loss %.4f",
            self.steps,
            len(z) - 1,
            self.fit_seconds,
            np.mean(self.losses[-50:]),
        )
        return self

    def _inputs(self, z, k, s):
        """Network input [z, time]: (s, k) with the interval index k apart from the position s in it
        ("interval", lets the velocity jump at snapshots), or (τ = k + s, 0) ("tau", continuous in time)."""
        import torch

        if self.time_input == "tau":
            return torch.cat([z, k + s, torch.zeros_like(s)], dim=1)
        return torch.cat([z, s, k], dim=1)

    def _field(self, z, tau: float, k: int):
        import torch

        col = torch.full((z.shape[0], 1), 1.0, dtype=z.dtype, device=z.device)
        return self.net(self._inputs(z, col * float(k), col * float(tau - k)))

    def _interval(self, tau: float, direction: float = 1.0) -> int:
        """Interval index of τ; at a snapshot the interval being entered in `direction`."""
        k = math.floor(tau) if direction >= 0 else math.ceil(tau) - 1
        return min(max(k, 0), self.times.size - 2)

    def velocity(self, x: np.ndarray, t: float) -> np.ndarray:
        """dx/dt at time t for particles x (n, d), in data units."""
        import torch

        tau = interval_position(self.times, t)
        k = self._interval(tau)
        dtau_dt = 1.0 / (self.times[k + 1] - self.times[k])
        dev = next(self.net.parameters()).device
        z = torch.as_tensor((np.asarray(x) - self.mean) / self.scale, dtype=torch.float32, device=dev)
        with torch.no_grad():
            v = self._field(z, tau, k).double().cpu().numpy()
        return v * self.scale * dtau_dt

    def predict(self, t_target: float, x0=None, t0: float | None = None, **_: Any) -> np.ndarray:
        """Integrate the learned flow from particles `x0` at `t0` (default: the previous training snapshot) to `t_target`."""
        import torch

        if self.net is None:
            raise RuntimeError("call fit() first")
        t_target = float(t_target)
        if t0 is None:
            t0 = float(self.times[_previous_index(self.times, t_target)])
        if x0 is None:
            if not np.any(np.isclose(self.times, t0)):
                raise ValueError(f"t0 = {t0} is not a training time {self.times.tolist()}; pass x0")
            x0 = self.snaps[int(np.argmin(np.abs(self.times - t0)))]
        if hasattr(x0, "detach"):
            x0 = x0.detach().cpu().numpy()
        tau0, tau1 = interval_position(self.times, float(t0)), interval_position(self.times, t_target)
        direction = 1.0 if tau1 >= tau0 else -1.0
        # segments between snapshot positions, so that no RK4 step straddles two intervals
        inner = [float(b) for b in range(1, self.times.size - 1) if min(tau0, tau1) < b < max(tau0, tau1)]
        cuts = [tau0, *(inner if direction > 0 else inner[::-1]), tau1]
        dev = next(self.net.parameters()).device
        z = torch.as_tensor(
            (np.asarray(x0, dtype=np.float64) - self.mean) / self.scale, dtype=torch.float32, device=dev
        )
        with torch.no_grad():
            for a, b in zip(cuts, cuts[1:]):
                k = self._interval(a, direction)
                n = max(int(math.ceil(abs(b - a) * self.ode_steps)), 1)
                h = (b - a) / n
                tau = a
                for _ in range(n):  # classical RK4 in τ
                    k1 = self._field(z, tau, k)
                    k2 = self._field(z + 0.5 * h * k1, tau + 0.5 * h, k)
                    k3 = self._field(z + 0.5 * h * k2, tau + 0.5 * h, k)
                    k4 = self._field(z + h * k3, tau + h, k)
                    z = z + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
                    tau += h
        return z.double().cpu().numpy() * self.scale + self.mean


BASELINES: dict[str, type] = {"previous": Previous, "mccann": McCann, "otcfm": OTCFM}


def make_baseline(name: str, opts=None, seed: int | None = None):
    """A baseline by name with its options (`BaselinesOptions.mccann`, `.otcfm`; None for
    `previous`, which has none); `seed` is used where the options leave the seed null."""
    if name not in BASELINES:
        raise KeyError(f"unknown baseline '{name}'; known: {sorted(BASELINES)}")
    kwargs = dataclasses.asdict(opts) if opts is not None else {}
    if kwargs.get("seed") is None:
        kwargs.pop("seed", None)
        if seed is not None:
            kwargs["seed"] = seed
    return BASELINES[name](**kwargs)
