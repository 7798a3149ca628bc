"""Multi-marginal SB with iterative reference refinement (arXiv 2408.06277, Alg. 1).

Alternate until the reference's parameters stop changing:

1. bridge:  for each pair of adjacent snapshots, the static SB under the current
   reference (`sb.static_bridge`: entropic OT on the cost −log p_θ(y|x), ε = 1);
2. refit:   θ ← argmax_θ E_{paths ~ bridge} Σ_k log p_θ(X_{t_{k+1}} | X_{t_k}), maximum
   likelihood of the reference on trajectories drawn from the bridges. The Markov
   chain of couplings makes the expectation a sum over intervals of Σ_ij π^k_ij log p_θ(·),
   computed exactly from the plans (no Monte Carlo error), with p_θ the reference's
   Gaussian transition (closed form for linear/OU, LNA otherwise), by L-BFGS in torch.

Both steps decrease the same objective Σ_k KL(π^k ‖ μ_k ⊗ p_θ), so the iteration is a
coordinate descent; it stops when the relative parameter change is below `tol`, or
after `max_iter` bridge steps. With `max_iter: 1` (no refit) and a Brownian reference,
this is the paper's "vanilla" SB baseline.

σ's ML estimate is biased high (independent snapshots: even the true reference's bridge
pairs each particle with a spread of partners). `reference.sigma.debias: bootstrap`
corrects it by a parametric bootstrap (`_debias_sigma`) and refits the drift with σ fixed.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..errors import ConfigError, InputError
from .reference import DTYPE, Reference, make_reference
from ..core.sde import euler_maruyama
from .sb import Coupling, PiecewiseBridge, _stratified, gaussian_nll, static_bridge, transition_nll

__all__ = ["DEFAULTS", "resolve_spec", "check_snapshots", "refit_reference", "fit_bridge", "simulate_reference", "FitResult", "save_model", "load_model"]

log = logging.getLogger(__name__)

DEFAULTS: dict = {
    # the defaults are the real-snapshot recipe measured in benchmarks/README.md (EB, EMT):
    # a symmetric linear reference, sigma fixed at a quarter of the data's own scale, and
    # predictions from the bridge's small-noise limit
    "reference": {"class": "linear", "symmetric": True, "noise": "additive", "sigma": {"init": "auto", "auto_scale": 0.25, "learn": False, "per_dim": False, "debias": "none"}},
    "max_iter": 20,
    "tol": 1e-3,
    "substeps": 5,
    "sinkhorn_tol": 1e-3,
    "refit": {"max_iter": 20, "weight_decay": 0.0},
    "predict": {"coupling": "ot", "noise": 0.0},
}


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def resolve_spec(model_spec: dict | None) -> dict:
    """The `model` entry of an experiment's config with every default filled in."""
    model = _merge(DEFAULTS, model_spec or {})
    if int(model["max_iter"]) < 1:
        raise ConfigError("model.max_iter", f"must be >= 1, got {model['max_iter']}")
    if model["predict"]["coupling"] not in ("plan", "ot"):
        raise ConfigError("model.predict.coupling", f"expected 'plan' or 'ot', got {model['predict']['coupling']!r}")
    if not float(model["predict"]["noise"]) >= 0:
        raise ConfigError("model.predict.noise", f"must be >= 0, got {model['predict']['noise']!r}")
    return model


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


def _costs(reference: Reference, X: list[torch.Tensor], times: list[float], substeps: int) -> list[torch.Tensor]:
    """Cost matrices −log p_θ(X_{k+1, j} | X_{k, i}) of every interval, from one batched integration."""
    src = torch.cat(X[:-1])
    dts = torch.cat([torch.full((X[k].shape[0],), times[k + 1] - times[k], dtype=DTYPE) for k in range(len(X) - 1)])
    mean, cov = reference.transition_rows(src, dts, substeps)
    out, start = [], 0
    for k in range(len(X) - 1):
        n = X[k].shape[0]
        out.append(gaussian_nll(mean[start : start + n], cov[start : start + n], X[k + 1]))
        start += n
    return out


def coupling_statistics(X: list[torch.Tensor], couplings: list[Coupling]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per interval and source particle i: row mass w_i = Σ_j π_ij, conditional mean
    ȳ_i = Σ_j π_ij y_j / w_i and second moment S_i = Σ_j π_ij (y_j − ȳ_i)(y_j − ȳ_i)^T / w_i.

    The Gaussian transition NLL is quadratic in y, so Σ_j π_ij (−log N(y_j; m_i, P_i)) =
    w_i [½ tr(P_i^{-1}(S_i + (ȳ_i − m_i)(ȳ_i − m_i)^T)) + ½ log|2π P_i|]: the refit's loss
    needs these O(n d²) statistics, not the n × m pair table (computed once per refit).
    """
    out = []
    for k, c in enumerate(couplings):
        P, y = c.plan, X[k + 1]
        w = P.sum(1).clamp_min(1e-300)
        ybar = (P @ y) / w[:, None]
        second = torch.einsum("ij,jk,jl->ikl", P, y, y) / w[:, None, None]
        S = second - ybar[:, :, None] * ybar[:, None, :]
        out.append((w, ybar, 0.5 * (S + S.transpose(1, 2))))
    return out


def _objective(reference: Reference, X: list[torch.Tensor], times: list[float], couplings: list[Coupling], substeps: int, stats=None) -> torch.Tensor:
    """Mean over intervals of E_{π^k}[−log p_θ(X_{k+1} | X_k)] (the refit's loss).

    Transition moments of every interval's sources come from one batched integration; the
    expectation over each plan row is taken in closed form (`coupling_statistics`).
    """
    stats = coupling_statistics(X, couplings) if stats is None else stats
    src = torch.cat(X[:-1])
    dts = torch.cat([torch.full((X[k].shape[0],), times[k + 1] - times[k], dtype=DTYPE) for k in range(len(X) - 1)])
    mean, cov = reference.transition_rows(src, dts, substeps)
    w = torch.cat([s[0] for s in stats])
    ybar = torch.cat([s[1] for s in stats])
    S = torch.cat([s[2] for s in stats])
    d = src.shape[1]
    L = torch.linalg.cholesky(cov + 1e-10 * torch.eye(d, dtype=cov.dtype))
    r = (ybar - mean)[:, :, None]
    M = S + r @ r.transpose(1, 2)
    # tr(P^{-1} M) = ||L^{-1} M^{1/2}||² computed as tr(L^{-T} L^{-1} M) via two triangular solves
    Z = torch.linalg.solve_triangular(L, M, upper=False)
    Z = torch.linalg.solve_triangular(L.transpose(1, 2), Z, upper=True)
    tr = torch.diagonal(Z, dim1=1, dim2=2).sum(-1)
    logdet = 2 * torch.log(torch.diagonal(L, dim1=1, dim2=2)).sum(-1)
    nll = 0.5 * tr + 0.5 * logdet + 0.5 * d * math.log(2 * math.pi)
    return (w * nll).sum() / len(couplings)


def refit_reference(reference: Reference, X: list[torch.Tensor], times: list[float], couplings: list[Coupling], substeps: int = 10, max_iter: int = 20, weight_decay: float = 0.0) -> float:
    """Maximum likelihood of the reference on the bridges' trajectories (in place, L-BFGS).

    Returns the mean negative log-likelihood per transition after the refit. A step that
    makes the likelihood non-finite is undone.
    """
    params = [p for p in reference.parameters() if p.requires_grad]
    stats = coupling_statistics(X, couplings)
    if not params:
        with torch.no_grad():
            return float(_objective(reference, X, times, couplings, substeps, stats))
    backup = copy.deepcopy(reference.state_dict())
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe", tolerance_grad=1e-8, tolerance_change=1e-11)

    def closure():
        opt.zero_grad()
        loss = _objective(reference, X, times, couplings, substeps, stats)
        if weight_decay > 0:
            loss = loss + weight_decay * sum((p**2).sum() for n, p in reference.named_parameters() if p.requires_grad and "log_sigma" not in n)
        if torch.isfinite(loss):
            loss.backward()
        return loss

    with torch.no_grad():
        before = float(_objective(reference, X, times, couplings, substeps, stats))
    try:
        opt.step(closure)
        with torch.no_grad():
            after = float(_objective(reference, X, times, couplings, substeps, stats))
    except (RuntimeError, ValueError) as err:  # e.g. a singular covariance mid line search
        log.warning("refit step failed (%s); keeping the previous reference", err)
        after = float("nan")
    if not math.isfinite(after) or after > before + 1e-9 * abs(before):
        reference.load_state_dict(backup)
        after = before
    return after


@dataclass
class FitResult:
    bridge: PiecewiseBridge
    history: list[dict] = field(default_factory=list)
    converged: bool = False
    seconds: float = 0.0
    spec: dict = field(default_factory=dict)

    @property
    def reference(self) -> Reference:
        return self.bridge.reference


def fit_bridge(
    snapshots: list,
    times,
    spec: dict | None = None,
    callback: Callable[[int, dict], None] | None = None,
    progress: bool = False,
    where: object = "snapshots",
    seed: int = 0,
) -> FitResult:
    """Fit the multi-marginal SB with iterative reference refinement.

    snapshots: list of (n_k, d) arrays at increasing `times`; spec: the model config
    (`resolve_spec`). `callback(iteration, record)` sees every iteration's record
    (objective, parameters, relative change, stage) -- e.g. to log to MLflow. `seed` seeds
    the parametric bootstrap of `reference.sigma.debias: bootstrap` (the only random step).
    """
    t_start = time.perf_counter()
    model = resolve_spec(spec)
    arrays, times = check_snapshots(snapshots, times, where)
    X = [torch.as_tensor(a, dtype=DTYPE) for a in arrays]
    sigma_spec = model["reference"].setdefault("sigma", {})
    scale = float(sigma_spec.get("auto_scale", 0.25))
    if not scale > 0:
        raise ConfigError("model.reference.sigma.auto_scale", f"must be > 0, got {sigma_spec.get('auto_scale')!r}")
    if sigma_spec.get("init", "auto") == "auto" or sigma_spec.get("init_from") == "auto":
        # recomputed on THESE snapshots: a saved spec refitted on a training split must not
        # carry a sigma measured with the held-out snapshot in it
        sigma_spec["init_from"] = "auto"
        sigma_spec["auto"] = auto_sigma(arrays, times, model["reference"].get("noise", "additive"))
        sigma_spec["init"] = sigma_spec["auto"] * scale
        log.info("sigma.init auto: %.4g (all displacement read as noise) x auto_scale %g = %.4g", sigma_spec["auto"], scale, sigma_spec["init"])
    reference = make_reference(model["reference"], X[0].shape[1], key="model.reference")
    debias = str((model["reference"].get("sigma") or {}).get("debias", "none") or "none")
    if debias not in ("none", "bootstrap"):
        raise ConfigError("model.reference.sigma.debias", f"expected 'none' or 'bootstrap', got {debias!r}")
    history: list[dict] = []
    show = progress and os.environ.get("SCOREBRIDGE_NO_PROGRESS") != "1"
    bar = None
    if show:
        from tqdm import tqdm

        bar = tqdm(total=int(model["max_iter"]), desc="bridge fit", unit="iter")
    couplings, converged = _alternate(reference, X, times, model, None, history, callback, bar, t_start, "fit")
    if debias == "bootstrap" and reference.log_sigma.requires_grad:
        couplings, converged = _debias_sigma(reference, X, times, model, couplings, history, callback, bar, t_start, seed)
    if bar is not None:
        bar.close()
    bridge = PiecewiseBridge(X, times, couplings, reference, int(model["substeps"]))
    return FitResult(bridge, history, converged, time.perf_counter() - t_start, model)


def auto_sigma(snapshots: list[np.ndarray], times: list[float], noise: str = "additive", max_cells: int = 1000, seed: int = 0) -> float:
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
        raise InputError(f"cannot choose sigma.init automatically: the snapshots do not move (W2 rate {value}); set model.reference.sigma.init")
    return value


def _alternate(reference: Reference, X: list[torch.Tensor], times: list[float], model: dict, couplings, history: list[dict], callback, bar, t_start: float, stage: str, max_iter: int | None = None):
    """The SBIRR loop (bridge, refit) on `reference` in place until the relative parameter change
    is below `model.tol` or `max_iter` bridge steps; appends one record per iteration to `history`."""
    substeps = int(model["substeps"])
    couplings = list(couplings) if couplings is not None else [None] * (len(X) - 1)
    converged = False
    rel = float("nan")
    nll = float("nan")
    n_iter = int(model["max_iter"] if max_iter is None else max_iter)
    for it in range(n_iter):
        with torch.no_grad():
            costs = _costs(reference, X, times, substeps)
        couplings = [
            static_bridge(reference, X[k], X[k + 1], times[k + 1] - times[k], substeps, float(model["sinkhorn_tol"]), warm=couplings[k], cost=costs[k])
            for k in range(len(X) - 1)
        ]
        record = {
            "iteration": len(history),
            "stage": stage,
            "objective": sum(c.objective for c in couplings),
            "nll": nll,
            "rel_change": rel,
            "sinkhorn_iterations": sum(c.iterations for c in couplings),
            "seconds": time.perf_counter() - t_start,
            "params": reference.describe(),
        }
        history.append(record)
        if callback is not None:
            callback(record["iteration"], record)
        if bar is not None:
            if bar.n >= bar.total:
                bar.total += 1
            bar.update(1)
            bar.set_postfix(stage=stage, objective=f"{record['objective']:.4g}", change=f"{rel:.2g}")
        if converged or it == n_iter - 1:
            break
        old = reference.parameter_vector().clone()
        nll = refit_reference(reference, X, times, couplings, substeps, int(model["refit"]["max_iter"]), float(model["refit"]["weight_decay"]))
        new = reference.parameter_vector()
        rel = float((new - old).norm() / max(float(old.norm()), float(new.norm()), 1e-8)) if new.numel() else 0.0
        converged = rel < float(model["tol"])
    return couplings, converged


def simulate_reference(reference: Reference, x0: torch.Tensor, times: list[float], counts: list[int], generator: torch.Generator | None = None, steps_per_unit: int = 50) -> list[torch.Tensor]:
    """Independent snapshots of the reference SDE (the data-generating process SBIRR assumes):
    snapshot 0 is `x0` itself; every later snapshot k is its own batch of `counts[k]` particles
    drawn from x0 (stratified), integrated by Euler-Maruyama from times[0] to times[k]
    (about `steps_per_unit` steps per unit time), so no particle is seen twice."""
    out = [x0.clone()]
    n0 = x0.shape[0]
    with torch.no_grad():
        for k in range(1, len(times)):
            idx = _stratified(int(counts[k]), n0, generator)
            steps = max(4, int(math.ceil((times[k] - times[0]) * steps_per_unit)))
            y = euler_maruyama(lambda z, _t: reference.drift(z), lambda z, _t: reference.diffusion(z), x0[idx], times[0], times[k], steps, generator)
            out.append(y)
    return out


def _debias_sigma(reference: Reference, X: list[torch.Tensor], times: list[float], model: dict, couplings, history: list[dict], callback, bar, t_start: float, seed: int):
    """Parametric-bootstrap bias correction of σ (then the drift refitted with σ fixed).

    The snapshots are independent draws, so even the true reference's bridge couples each
    particle with a spread of partners, which the ML refit reads as extra noise: σ̂² ≈ σ² + b².
    Simulate independent snapshots from the fitted reference (σ̂ known), refit them from the
    fitted state to get σ̂_b² ≈ σ̂² + b², and take σ² = σ̂² − (σ̂_b² − σ̂²) (floored at
    σ̂²/100). With σ fixed there, the bridge and the drift refit alternate to convergence again.
    """
    gen = torch.Generator().manual_seed(int(seed))
    sigma_hat = reference.sigma.detach().clone()
    for _ in range(2):  # a diverged simulation (rare, far from the data) gets one more draw
        Y = simulate_reference(reference, X[0], times, [x.shape[0] for x in X], gen)
        if all(bool(torch.isfinite(y).all()) for y in Y):
            break
    else:
        log.warning("sigma debias: the fitted reference's simulation diverged; keeping sigma = %s", sigma_hat.tolist())
        return couplings, bool(history and history[-1]["rel_change"] < float(model["tol"]))
    boot = copy.deepcopy(reference)
    _alternate(boot, Y, times, model, couplings, [], None, None, t_start, "bootstrap")
    sigma_b = boot.sigma.detach()
    var = (2 * sigma_hat**2 - sigma_b**2).clamp_min(sigma_hat**2 / 100)  # σ̂² − b², b² = σ̂_b² − σ̂²
    log.info("sigma debias: fitted %s, bootstrap refit %s -> %s", sigma_hat.tolist(), sigma_b.tolist(), var.sqrt().tolist())
    with torch.no_grad():
        reference.log_sigma.copy_(0.5 * var.log())
    reference.log_sigma.requires_grad_(False)
    try:
        couplings, converged = _alternate(reference, X, times, model, couplings, history, callback, bar, t_start, "debiased")
    finally:
        reference.log_sigma.requires_grad_(True)
    if history:
        history[-1]["sigma_fitted"] = sigma_hat.tolist()
        history[-1]["sigma_bootstrap"] = sigma_b.tolist()
    return couplings, converged


def save_model(result: FitResult, path, extra: dict | None = None) -> None:
    """Write the fitted bridge (snapshots, times, plans, reference state, spec, history) to `path`."""
    from ..io import atomic_path

    b = result.bridge
    obj = {
        "format": "scorebridge.bridge/1",
        "spec": result.spec,
        "dim": b.dim,
        "times": b.times,
        "snapshots": [x.numpy() for x in b.snapshots],
        "plans": [c.plan.numpy() for c in b.couplings],
        "duals": [(c.duals[0].numpy(), c.duals[1].numpy()) for c in b.couplings],
        "objectives": [c.objective for c in b.couplings],
        "reference_state": {k: v.detach().clone() for k, v in b.reference.state_dict().items()},
        "history": result.history,
        "converged": result.converged,
        "seconds": result.seconds,
        **(extra or {}),
    }
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_model(path) -> tuple[FitResult, dict]:
    """Read what `save_model` wrote; returns (FitResult, the raw dict for extra keys)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise InputError(f"not a readable bridge model: {err}", path) from None
    if not isinstance(obj, dict) or obj.get("format") != "scorebridge.bridge/1":
        raise InputError("not a scorebridge bridge model (format 'scorebridge.bridge/1' expected)", path)
    spec = obj["spec"]
    reference = make_reference(spec["reference"], int(obj["dim"]), key="model.reference")
    reference.load_state_dict(obj["reference_state"])
    X = [torch.as_tensor(x, dtype=DTYPE) for x in obj["snapshots"]]
    couplings = [
        Coupling(torch.as_tensor(p, dtype=DTYPE), (torch.as_tensor(f), torch.as_tensor(g)), float(o), 0)
        for p, (f, g), o in zip(obj["plans"], obj["duals"], obj["objectives"])
    ]
    bridge = PiecewiseBridge(X, obj["times"], couplings, reference, int(spec["substeps"]))
    return FitResult(bridge, obj["history"], bool(obj["converged"]), float(obj["seconds"]), spec), obj
