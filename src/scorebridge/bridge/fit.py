"""Multi-marginal SB with iterative reference refinement (arXiv 2408.06277, Alg. 1).

Alternate until the reference's parameters stop changing:

1. bridge:  for each pair of adjacent snapshots, the static SB under the current
   reference (`sb.static_bridge`: entropic OT on the cost −log p_θ(y|x), ε = 1; above
   `model.minibatch.auto_above` cells a minibatch coupling, `minibatch.minibatch_bridge`,
   whose memory does not grow with the square of the cell count);
2. refit:   θ ← argmax_θ E_{paths ~ bridge} Σ_k log p_θ(X_{t_{k+1}} | X_{t_k}), maximum
   likelihood of the reference on trajectories drawn from the bridges, computed exactly
   from the plans (`refit.refit_reference`).

Both steps decrease the same objective Σ_k KL(π^k ‖ μ_k ⊗ p_θ), so the iteration is a
coordinate descent; it stops when the relative parameter change is below `tol`, or
after `max_iter` bridge steps. With `max_iter: 1` (no refit) and a Brownian reference,
this is the paper's "vanilla" SB baseline. `BridgeFitter` holds the fixed inputs (the
snapshots, their times, the model options, who sees each iteration) and runs the phases.

σ's ML estimate is biased high (independent snapshots: even the true reference's bridge
pairs each particle with a spread of partners). `reference.sigma.debias: bootstrap`
corrects it by a parametric bootstrap (`BridgeFitter.debias_sigma`) and refits the drift
with σ fixed.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..core.device import select_device
from ..core.sde import euler_maruyama
from ..errors import InputError
from ..progress import progress as progress_bar
from ..progress import progress_enabled
from .costs import IntervalCost
from .minibatch import MinibatchCoupling, minibatch_bridge
from .options import ModelOptions, ReferenceOptions, as_section
from .reference import DTYPE, Reference, make_reference
from .refit import refit_reference
from .sb import Coupling, PiecewiseBridge, static_bridge, stratified_indices

__all__ = [
    "check_snapshots",
    "auto_sigma",
    "initial_sigma",
    "simulate_reference",
    "coupling_solver",
    "BridgeFitter",
    "fit_bridge",
    "FitResult",
]

log = logging.getLogger(__name__)


def check_snapshots(snapshots: list, times, where: object = "snapshots") -> tuple[list[np.ndarray], list[float]]:
    """Validate a snapshot time course: >= 2 times, sorted, finite, one feature dimension."""
    times = [float(t) for t in times]
    if len(snapshots) != len(times):
        raise InputError(f"{len(snapshots)} snapshots but {len(times)} time labels", where)
    if len(times) < 2:
        raise InputError(f"a bridge needs at least 2 time points, got {len(times)} ({times})", where)
    if any(not math.isfinite(t) for t in times):
        raise InputError(f"time labels must be finite, got {times}", where)
    if any(b <= a for a, b in zip(times, times[1:])):
        raise InputError(f"time points must be strictly increasing, got {times}", where)
    out = []
    dim = None
    for t, s in zip(times, snapshots):
        a = np.asarray(s, dtype=np.float64)
        if a.ndim != 2 or a.shape[0] < 1:
            raise InputError(f"snapshot at time {t}: expected (cells, features), got shape {a.shape}", where)
        if dim is None:
            dim = a.shape[1]
        elif a.shape[1] != dim:
            raise InputError(f"snapshot at time {t} has {a.shape[1]} features, the first has {dim}", where)
        if not np.isfinite(a).all():
            raise InputError(f"snapshot at time {t} has NaN or infinite features", where)
        out.append(a)
    return out, times


def auto_sigma(
    snapshots: list[np.ndarray], times: list[float], noise: str = "additive", max_cells: int = 1000, seed: int = 0
) -> float:
    """A starting sigma on the data's own scale: the sigma of a driftless reference that
    would explain all of the transport between adjacent snapshots by noise,
    sqrt(mean_k W2^2(X_k, X_k+1) / (d * dt_k)) for additive noise (g = sigma), and the same
    on displacements relative to |x| for multiplicative noise (g = sigma * |x|). W2 by
    exact OT on at most `max_cells` cells per snapshot (seeded subsample). Scale-equivariant:
    multiplying the features by c multiplies it by c (additive)."""
    import ot

    rng = np.random.default_rng(seed)

    def sub(a):
        return a if a.shape[0] <= max_cells else a[rng.choice(a.shape[0], max_cells, replace=False)]

    rates = []
    for a, b, t0, t1 in zip(snapshots[:-1], snapshots[1:], times[:-1], times[1:]):
        a, b = sub(np.asarray(a, np.float64)), sub(np.asarray(b, np.float64))
        w2sq = float(ot.emd2(ot.unif(a.shape[0]), ot.unif(b.shape[0]), ot.dist(a, b), numItermax=1_000_000))
        scale = a.shape[1] if noise == "additive" else float(np.mean(np.sum(a**2 + 1e-4, axis=1)))
        rates.append(w2sq / (scale * (t1 - t0)))
    value = float(np.sqrt(np.mean(rates)))
    if not np.isfinite(value) or value <= 0:
        raise InputError(
            f"cannot choose sigma.init automatically: the snapshots do not move (W2 rate {value}); set model.reference.sigma.init"
        )
    return value


def initial_sigma(
    reference: ReferenceOptions, snapshots: list[np.ndarray], times: list[float]
) -> tuple[float | list[float], dict]:
    """The reference's initial σ for these snapshots, and what to record beside the options.

    `sigma.init: auto` is measured on THESE snapshots (a model refitted on a training split
    must not carry a σ measured with the held-out snapshot in it) and scaled by
    `sigma.auto_scale`; the record is then `{init: the value, init_from: auto, auto: the
    measured scale}`. A number is used as given (empty record).
    """
    sig = reference.sigma
    if sig.init != "auto":
        return sig.init, {}
    auto = auto_sigma(snapshots, times, reference.noise)
    init = auto * float(sig.auto_scale)
    log.info(
        "sigma.init auto: %.4g (all displacement read as noise) x auto_scale %g = %.4g", auto, sig.auto_scale, init
    )
    return init, {"init": init, "init_from": "auto", "auto": auto}


def simulate_reference(
    reference: Reference,
    x0: torch.Tensor,
    times: list[float],
    counts: list[int],
    generator: torch.Generator | None = None,
    steps_per_unit: int = 50,
) -> list[torch.Tensor]:
    """Independent snapshots of the reference SDE (the data-generating process SBIRR assumes):
    snapshot 0 is `x0` itself; every later snapshot k is its own batch of `counts[k]` particles
    drawn from x0 (stratified), integrated by Euler-Maruyama from times[0] to times[k]
    (about `steps_per_unit` steps per unit time), so no particle is seen twice."""
    out = [x0.clone()]
    n0 = x0.shape[0]
    with torch.no_grad():
        for k in range(1, len(times)):
            idx = stratified_indices(int(counts[k]), n0, generator)
            steps = max(4, int(math.ceil((times[k] - times[0]) * steps_per_unit)))
            y = euler_maruyama(
                lambda z, _t: reference.drift(z),
                lambda z, _t: reference.diffusion(z),
                x0[idx],
                times[0],
                times[k],
                steps,
                generator,
            )
            out.append(y)
    return out


def coupling_solver(options: ModelOptions, sizes: list[int]) -> str:
    """'dense' or 'minibatch' for snapshots of these sizes (`model.coupling_solver`; auto:
    minibatch when a snapshot has more than `model.minibatch.auto_above` cells)."""
    solver = options.coupling_solver
    if solver == "auto":
        return "minibatch" if max(sizes) > int(options.minibatch.auto_above) else "dense"
    return solver


class BridgeFitter:
    """The SBIRR alternation on fixed snapshots.

    X: (n_k, d) float64 tensors at increasing `times`; options: the model's options;
    callback(iteration, record) and bar (a progress bar, or None) see every bridge step;
    t_start: the clock the records' `seconds` count from. `history` collects one record
    per bridge step (objective, refit NLL, relative parameter change, stage, parameters).
    """

    def __init__(
        self,
        X: list[torch.Tensor],
        times: list[float],
        options: ModelOptions,
        callback: Callable[[int, dict], None] | None = None,
        bar=None,
        t_start: float | None = None,
        seed: int = 0,
    ):
        self.X = X
        self.times = times
        self.options = options
        self.callback = callback
        self.bar = bar
        self.t_start = time.perf_counter() if t_start is None else t_start
        self.history: list[dict] = []
        self.solver = coupling_solver(options, [x.shape[0] for x in X])
        self.generator = torch.Generator().manual_seed(int(seed))  # the minibatch partitions

    @property
    def substeps(self) -> int:
        return int(self.options.substeps)

    def bridge_step(self, reference: Reference, couplings: list) -> list:
        """The static SB of every interval under `reference` (warm-started from `couplings`):
        dense plans (`Coupling`) or minibatch ones (`MinibatchCoupling`), as `self.solver` says."""
        X, times = self.X, self.times
        tol = float(self.options.sinkhorn_tol)
        out = []
        for k in range(len(X) - 1):
            dt = times[k + 1] - times[k]
            cost = IntervalCost(reference, X[k], X[k + 1], dt, self.substeps)
            if self.solver == "dense":
                out.append(
                    static_bridge(
                        reference, X[k], X[k + 1], dt, self.substeps, tol, warm=couplings[k], cost=cost.block()
                    )
                )
            else:
                mb = self.options.minibatch
                warm = couplings[k] if isinstance(couplings[k], MinibatchCoupling) else None
                device = select_device(mb.device, key="model.minibatch.device")
                out.append(
                    minibatch_bridge(
                        cost, int(mb.batch_size), self.generator, tol, warm, per_row=not cost.shared, device=device
                    )
                )
        return out

    def refit_step(self, reference: Reference, couplings: list[Coupling]) -> tuple[float, float]:
        """Refit `reference` on the bridges in place; (NLL per transition, relative parameter change)."""
        old = reference.parameter_vector().clone()
        refit = self.options.refit
        nll = refit_reference(
            reference, self.X, self.times, couplings, self.substeps, int(refit.max_iter), float(refit.weight_decay)
        )
        new = reference.parameter_vector()
        rel = float((new - old).norm() / max(float(old.norm()), float(new.norm()), 1e-8)) if new.numel() else 0.0
        return nll, rel

    def _record(self, reference: Reference, couplings: list[Coupling], stage: str, nll: float, rel: float) -> None:
        record = {
            "iteration": len(self.history),
            "stage": stage,
            "objective": sum(c.objective for c in couplings),
            "nll": nll,
            "rel_change": rel,
            "sinkhorn_iterations": sum(c.iterations for c in couplings),
            "seconds": time.perf_counter() - self.t_start,
            "params": reference.describe(),
        }
        self.history.append(record)
        if self.callback is not None:
            self.callback(record["iteration"], record)
        bar = self.bar
        if bar is not None:
            if bar.n >= bar.total:
                bar.total += 1
            bar.update(1)
            bar.set_postfix(stage=stage, objective=f"{record['objective']:.4g}", change=f"{rel:.2g}")

    def alternate(
        self, reference: Reference, couplings: list[Coupling] | None = None, stage: str = "fit"
    ) -> tuple[list[Coupling], bool]:
        """Bridge and refit `reference` in place until the relative parameter change is below
        `tol` or after `max_iter` bridge steps; returns (couplings, converged)."""
        couplings = list(couplings) if couplings is not None else [None] * (len(self.X) - 1)
        converged = False
        rel = nll = float("nan")
        n_iter = int(self.options.max_iter)
        for it in range(n_iter):
            couplings = self.bridge_step(reference, couplings)
            self._record(reference, couplings, stage, nll, rel)
            if converged or it == n_iter - 1:
                break
            nll, rel = self.refit_step(reference, couplings)
            converged = rel < float(self.options.tol)
        return couplings, converged

    def debias_sigma(self, reference: Reference, couplings: list[Coupling], seed: int) -> tuple[list[Coupling], bool]:
        """Parametric-bootstrap bias correction of σ (then the drift refitted with σ fixed).

        The snapshots are independent draws, so even the true reference's bridge couples each
        particle with a spread of partners, which the ML refit reads as extra noise: σ̂² ≈ σ² + b².
        Simulate independent snapshots from the fitted reference (σ̂ known), refit them from the
        fitted state to get σ̂_b² ≈ σ̂² + b², and take σ² = σ̂² − (σ̂_b² − σ̂²) (floored at
        σ̂²/100). With σ fixed there, the bridge and the drift refit alternate to convergence again.
        """
        X, history = self.X, self.history
        gen = torch.Generator().manual_seed(int(seed))
        sigma_hat = reference.sigma.detach().clone()
        for _ in range(2):  # a diverged simulation (rare, far from the data) gets one more draw
            Y = simulate_reference(reference, X[0], self.times, [x.shape[0] for x in X], gen)
            if all(bool(torch.isfinite(y).all()) for y in Y):
                break
        else:
            log.warning(
                "sigma debias: the fitted reference's simulation diverged; keeping sigma = %s", sigma_hat.tolist()
            )
            return couplings, bool(history and history[-1]["rel_change"] < float(self.options.tol))
        boot = copy.deepcopy(reference)
        BridgeFitter(Y, self.times, self.options, t_start=self.t_start, seed=seed).alternate(
            boot, couplings, "bootstrap"
        )
        sigma_b = boot.sigma.detach()
        var = (2 * sigma_hat**2 - sigma_b**2).clamp_min(sigma_hat**2 / 100)  # σ̂² − b², b² = σ̂_b² − σ̂²
        log.info(
            "sigma debias: fitted %s, bootstrap refit %s -> %s",
            sigma_hat.tolist(),
            sigma_b.tolist(),
            var.sqrt().tolist(),
        )
        with torch.no_grad():
            reference.log_sigma.copy_(0.5 * var.log())
        reference.log_sigma.requires_grad_(False)
        try:
            couplings, converged = self.alternate(reference, couplings, "debiased")
        finally:
            reference.log_sigma.requires_grad_(True)
        if history:
            history[-1]["sigma_fitted"] = sigma_hat.tolist()
            history[-1]["sigma_bootstrap"] = sigma_b.tolist()
        return couplings, converged


@dataclass
class FitResult:
    """A fitted bridge. `options`: the model options it was fitted with (refit it on other
    snapshots with these); `spec`: the same as a config section, with the σ actually used
    recorded under `reference.sigma` (`init`, and `init_from`/`auto` when it was measured)."""

    bridge: PiecewiseBridge
    history: list[dict] = field(default_factory=list)
    converged: bool = False
    seconds: float = 0.0
    spec: dict = field(default_factory=dict)
    options: ModelOptions | None = None

    @property
    def reference(self) -> Reference:
        return self.bridge.reference


def fit_bridge(
    snapshots: list,
    times,
    options: ModelOptions,
    callback: Callable[[int, dict], None] | None = None,
    progress: bool = False,
    where: object = "snapshots",
    seed: int = 0,
) -> FitResult:
    """Fit the multi-marginal SB with iterative reference refinement.

    snapshots: list of (n_k, d) arrays at increasing `times`; options: the model's options
    (`options.build(ModelOptions, section)`; never modified). `callback(iteration, record)`
    sees every iteration's record (objective, parameters, relative change, stage) -- e.g. to
    log to MLflow. `seed` seeds the parametric bootstrap of `reference.sigma.debias:
    bootstrap` (the only random step).
    """
    t_start = time.perf_counter()
    arrays, times = check_snapshots(snapshots, times, where)
    X = [torch.as_tensor(a, dtype=DTYPE) for a in arrays]
    sigma, sigma_record = initial_sigma(options.reference, arrays, times)
    reference = make_reference(options.reference, X[0].shape[1], key="model.reference", sigma=sigma)
    bar = (
        progress_bar(total=int(options.max_iter), desc="bridge fit", unit="iter")
        if progress and progress_enabled()
        else None
    )
    fitter = BridgeFitter(X, times, options, callback, bar, t_start, seed)
    couplings, converged = fitter.alternate(reference)
    if options.reference.sigma.debias == "bootstrap" and reference.log_sigma.requires_grad:
        couplings, converged = fitter.debias_sigma(reference, couplings, seed)
    if bar is not None:
        bar.close()
    bridge = PiecewiseBridge(X, times, couplings, reference, int(options.substeps))
    spec = as_section(options)
    spec["reference"]["sigma"].update(sigma_record)
    return FitResult(bridge, fitter.history, converged, time.perf_counter() - t_start, spec, options)
