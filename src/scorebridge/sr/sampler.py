"""The EDM Heun sampler (Karras et al. 2022, Algorithm 2), the DPM-Solver++(2M) multistep
sampler (one evaluation per noise level), and posterior sampling with them.

:func:`heun` integrates the probability-flow ODE ``dx/ds = (x - D(x; s)) / s`` with
Heun's 2nd-order method (optional stochastic churn) over the noise levels of
:func:`scorebridge.sr.edm.edm_sigmas`. ``steps`` noise levels cost ``2 * steps - 1``
denoiser evaluations per sample (the last step is an Euler step to ``s = 0``).

:func:`posterior_sample` runs it on the guided denoiser of :mod:`scorebridge.sr.guidance`:
SDA guidance is a denoiser (one backward pass per evaluation), MMPS too (``cg_iterations + 1``
backward passes per evaluation), DPS a correction applied inside each step (one backward
pass per step).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..errors import ConfigError
from .edm import edm_sigmas
from .guidance import Denoiser, DPSCorrection, Units, guide
from .operators import Observation

__all__ = ["Cost", "Metered", "heun", "multistep", "posterior_sample"]


@dataclass
class Cost:
    """Network passes per batch element (a member of one case), and wall time."""

    forward: int = 0
    backward: int = 0
    seconds: float = 0.0


class Metered:
    """The prior, counting its passes per batch element in ``cost``: every call is a forward
    pass; every gradient that flows back through a call's output (a hook on it) is a
    backward pass (SDA and DPS: one per evaluation; MMPS: one per conjugate-gradient step
    plus one)."""

    def __init__(self, prior: Denoiser):
        self.prior = prior
        self.sigma_min, self.sigma_max = prior.sigma_min, prior.sigma_max
        self.cost = Cost()

    def _backward(self, grad: torch.Tensor) -> None:
        self.cost.backward += 1

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.cost.forward += 1
        out = self.prior.denoise(x, sigma)
        if out.requires_grad:
            out.register_hook(self._backward)
        return out


def heun(
    denoiser: Denoiser,
    sigmas: Sequence[float],
    noise: Callable[[], torch.Tensor],
    *,
    churn: float,
    s_tmin: float,
    s_tmax: float,
    s_noise: float,
    correction: DPSCorrection | None = None,
) -> torch.Tensor:
    """Karras et al. Algorithm 2 from ``x = noise() * sigmas[0]`` down the decreasing
    ``sigmas`` (ending in 0). ``noise()`` draws a standard normal batch ``[B, C, H, W]``;
    ``churn`` is ``S_churn`` (0: the deterministic ODE sampler) applied where
    ``s_tmin <= s <= s_tmax``. ``correction(x, s) -> (D(x; s), delta)`` replaces the first
    evaluation of each step and ``delta`` is subtracted from the step's result (DPS)."""
    steps = len(sigmas) - 1
    with torch.no_grad():
        x = noise() * sigmas[0]
        B = x.shape[0]
        for i in range(steps):
            s_cur, s_next = sigmas[i], sigmas[i + 1]
            gamma = min(churn / steps, math.sqrt(2.0) - 1.0) if (churn > 0 and s_tmin <= s_cur <= s_tmax) else 0.0
            s_hat = s_cur * (1.0 + gamma)
            if gamma > 0:
                x = x + math.sqrt(s_hat**2 - s_cur**2) * s_noise * noise()
            sv = torch.full((B,), s_hat, device=x.device)
            if correction is not None:
                x0, delta = correction(x, sv)
            else:
                x0, delta = denoiser.denoise(x, sv), None
            d_cur = (x - x0) / s_hat
            x_next = x + (s_next - s_hat) * d_cur
            if s_next > 0:
                sv2 = torch.full((B,), s_next, device=x.device)
                d_next = (x_next - denoiser.denoise(x_next, sv2)) / s_next
                x_next = x + (s_next - s_hat) * 0.5 * (d_cur + d_next)
            if delta is not None:
                x_next = x_next - delta  # zeta * grad ||r|| (Chung et al. 2023, Alg. 1)
            x = x_next
    return x


def multistep(
    denoiser: Denoiser,
    sigmas: Sequence[float],
    noise: Callable[[], torch.Tensor],
    *,
    correction: DPSCorrection | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2, for ``x_s = x0 + s eps``): ONE denoiser
    evaluation per noise level, second order by reusing the previous level's evaluation,

        x <- (s'/s) x + (1 - s'/s) D~,   D~ = (1 + 1/(2r)) D_i - 1/(2r) D_{i-1},
        r = ln(s_{i-1}/s_i) / ln(s_i/s'),

    first order (an Euler step) at the first level and into ``s' = 0`` (the output is then
    the last evaluation). ``steps`` noise levels cost ``steps`` network evaluations, against
    Heun's ``2 steps - 1``. ``correction`` as in :func:`heun`."""
    steps = len(sigmas) - 1
    with torch.no_grad():
        x = noise() * sigmas[0]
        B = x.shape[0]
        prev, h_prev = None, None
        for i in range(steps):
            s_cur, s_next = sigmas[i], sigmas[i + 1]
            sv = torch.full((B,), s_cur, device=x.device)
            if correction is not None:
                x0, delta = correction(x, sv)
            else:
                x0, delta = denoiser.denoise(x, sv), None
            if s_next <= 0:
                x_next = x0
            else:
                h = math.log(s_cur / s_next)
                d = x0
                if prev is not None:
                    r = h_prev / h
                    d = (1.0 + 0.5 / r) * x0 - (0.5 / r) * prev
                x_next = (s_next / s_cur) * x + (1.0 - s_next / s_cur) * d
                prev, h_prev = x0, h
            if delta is not None:
                x_next = x_next - delta
            x = x_next
    return x


def prior_wiener(prior):
    """The prior's Wiener skip (:mod:`scorebridge.sr.wiener`), or None."""
    return getattr(getattr(prior, "denoiser", None), "wiener", None)


def resolve_covariance(prior, covariance: str) -> str:
    """`sample.covariance` for this prior: "auto" is "wiener" when it has a Wiener skip, else
    "jacobian"; "wiener" without one is a ConfigError."""
    if covariance not in ("auto", "jacobian", "wiener"):
        raise ValueError(f"covariance must be 'auto', 'jacobian' or 'wiener', got {covariance!r}")
    has = prior_wiener(prior) is not None
    if covariance == "wiener" and not has:
        raise ConfigError(
            "sr.sample.covariance",
            "'wiener' needs a prior with a Wiener skip (sr.train.model.skip: wiener); use 'auto'",
        )
    return covariance if covariance != "auto" else ("wiener" if has else "jacobian")


def posterior_sample(
    prior: Denoiser,
    observations: Sequence[Observation],
    n_members: int,
    steps: int,
    *,
    shape: Sequence[int],
    mean: torch.Tensor,
    std: torch.Tensor,
    guidance: str,
    n_cases: int | None = None,
    churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
    rho: float = 7.0,
    sigma_min: float | None = None,
    solver: str = "heun",
    cg_iterations: int = 1,
    covariance: str = "auto",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, Cost]:
    """Draw ``n_members`` posterior samples for each of ``n_cases`` observation sets.

    Parameters
    ----------
    prior : a :class:`~scorebridge.sr.guidance.Denoiser` on normalised fields; its
        ``sigma_min``/``sigma_max`` bound the noise levels.
    observations : modalities whose ``y`` has batch ``n_cases`` (or 1 = shared); each
        carries its own SDA ``gamma`` and DPS ``zeta``.
    shape : ``(C, H, W)`` of one field; ``mean``/``std``: per-channel ``[C]`` normalisation.
    guidance : ``"sda"``, ``"dps"``, ``"mmps"`` or ``"none"`` (unconditional prior samples);
        ``cg_iterations``: MMPS's conjugate-gradient steps per evaluation; ``covariance``:
        its covariance model, ``"jacobian"`` (the network's), ``"wiener"`` (the prior's
        Wiener skip, :mod:`scorebridge.sr.wiener`) or ``"auto"`` (wiener when the prior has one).
    churn, s_tmin, s_tmax, s_noise, rho : Karras' sampler settings (the keyword defaults
        are the deterministic sampler; the workflow passes `sr.<name>.sample`'s).
    sigma_min : the last noise level before the final step to 0 (the output is the
        denoiser's estimate there); None: the prior's ``sigma_min``.
    solver : ``"heun"`` (:func:`heun`, ``2 steps - 1`` evaluations) or ``"dpm2m"``
        (:func:`multistep`, ``steps`` evaluations; deterministic: ``churn`` must be 0).

    Returns
    -------
    ``x[n_cases, n_members, C, H, W]`` in physical units, and the per-sample :class:`Cost`.
    """
    device = torch.device(device or "cpu")
    if n_cases is None:
        n_cases = max([ob.y.shape[0] for ob in observations], default=1)
    obs = [ob.to(device).repeat_interleave(n_members) for ob in observations]
    units = Units.of(mean, std, device)
    net = Metered(prior)
    wiener = prior_wiener(prior) if resolve_covariance(prior, covariance) == "wiener" else None
    denoiser, correction = guide(net, obs, units, guidance, cg_iterations, wiener)
    sig = edm_sigmas(
        steps, float(prior.sigma_min if sigma_min is None else sigma_min), float(prior.sigma_max), rho
    ).tolist()
    B = n_cases * n_members
    C, H, W = shape

    def noise() -> torch.Tensor:  # a CPU generator: the same draws on any device
        return torch.randn(B, C, H, W, generator=generator, device="cpu").to(device)

    start = time.perf_counter()
    if solver == "dpm2m":
        if churn > 0:
            raise ValueError("solver dpm2m is deterministic: set churn to 0 (or use solver heun)")
        x = multistep(denoiser, sig, noise, correction=correction)
    elif solver == "heun":
        x = heun(
            denoiser, sig, noise, churn=churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise, correction=correction
        )
    else:
        raise ValueError(f"solver must be 'heun' or 'dpm2m', got {solver!r}")
    out = units.physical(x).reshape(n_cases, n_members, C, H, W)
    net.cost.seconds = (time.perf_counter() - start) / max(B, 1)
    return out.detach(), net.cost
