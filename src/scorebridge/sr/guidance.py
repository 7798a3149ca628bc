"""Likelihood guidance of an EDM denoiser: the posterior denoiser ``D(x; sigma | y)``.

By Tweedie's formula the denoiser is the posterior mean ``D(x; s) = E[x0 | x_s = x]``
and the score is ``grad log p_s(x) = (D(x; s) - x) / s^2``. Conditioning on
observations adds the likelihood score, so the guided denoiser is

    D(x; s | y) = D(x; s) + s^2 * grad_x log p(y | x_s = x).                 (1)

**SDA** (Rozet & Louppe 2023, "Score-based data assimilation", eq. 12): the
likelihood of modality ``k`` is approximated by a Gaussian around the denoised
estimate,

    log p(y_k | x_s) ~ -1/2 || y_k - A_k D(x; s) ||^2 / (sigma_y,k^2 + gamma_k * (a_k s)^2),

where ``a_k = sqrt((A_k o A_k) std^2)`` is the std of ``A_k`` applied to white noise of
unit normalised variance, so ``(a_k s)^2`` is the variance the diffusion noise ``s`` puts on
the observation (a block average of k^2 cells: ``std^2 / k^2``; a point: ``sum_i w_i^2 std_i^2``)
and ``gamma`` means the same for every modality; the gradient goes through the denoiser by autograd
(one backward pass per evaluation).

**DPS** (Chung et al. 2023, "Diffusion posterior sampling", Alg. 1): a step
``x <- x - zeta * grad_x ||r|| `` with ``r = (y - A D(x; s)) / sigma_y`` after each
sampler step (``zeta_i = zeta / ||r||`` times ``grad ||r||^2 / 2``), not a score term.

The denoiser acts on NORMALISED fields ``x = (x_phys - mean) / std`` (per channel);
operators act on PHYSICAL fields, so ``A D`` means ``A (mean + std * D)``.

:class:`GaussianPrior` is the exact denoiser of a Gaussian prior with known
covariance; its posterior is closed form, which makes it the reference test of the
guidance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import torch

from .operators import Observation

__all__ = ["Denoiser", "GuidedDenoiser", "GaussianPrior", "Cost"]


class Denoiser(Protocol):
    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:  # x[B,C,H,W], sigma[B]
        ...


@dataclass
class Cost:
    """Network passes per batch element (a member of one case), and wall time."""

    forward: int = 0
    backward: int = 0
    seconds: float = 0.0


class GuidedDenoiser:
    """``D(x; s | y)`` of eq. (1) for a batch ``x[B, C, H, W]`` (normalised).

    ``observations`` have batch ``B`` (or 1); ``mean``/``std`` are per channel ``[C]``.
    ``mode``: ``"sda"`` (guidance inside the denoiser), ``"dps"`` (separate step,
    see :meth:`dps_step`), or ``"none"`` (the prior).
    """

    def __init__(self, prior: Denoiser, observations: Sequence[Observation], mean: torch.Tensor, std: torch.Tensor, mode: str = "sda"):
        if mode not in ("sda", "dps", "none"):
            raise ValueError(f"guidance must be 'sda', 'dps' or 'none', got {mode!r}")
        self.prior = prior
        self.observations = list(observations)
        self.mean = mean.reshape(1, -1, 1, 1)
        self.std = std.reshape(1, -1, 1, 1)
        self.mode = mode if self.observations else "none"
        self.cost = Cost()
        self._scale: list[torch.Tensor] = []  # a_k per modality, [1, ...]
        self.last_dps_grad: torch.Tensor | None = None

    def _prepare(self, shape: Sequence[int]) -> None:
        if len(self._scale) == len(self.observations):
            return
        var_field = (self.std**2).expand(1, -1, *shape[-2:])
        with torch.no_grad():  # a_k = sqrt((A o A) std^2): std of A_k applied to white normalised noise
            self._scale = [ob.operator.forward_squared(var_field).clamp_min(0).sqrt().detach() for ob in self.observations]

    def physical(self, x0: torch.Tensor) -> torch.Tensor:
        return self.mean + self.std * x0

    def log_likelihood(self, x0: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """SDA Gaussian log-likelihood per batch element, ``[B]``, of the denoised ``x0``."""
        self._prepare(x0.shape)
        xp = self.physical(x0)
        total = x0.new_zeros(x0.shape[0])
        for ob, a in zip(self.observations, self._scale):
            y = ob.y
            pred = ob.operator(xp)
            mask = ob.mask()
            if y.shape[0] == 1 and pred.shape[0] != 1:
                y, mask = y.expand_as(pred), mask.expand_as(pred)
            s = sigma.reshape(-1, *([1] * (pred.dim() - 1)))
            var = ob.sigma_y**2 + ob.gamma * (a * s) ** 2
            r2 = torch.where(mask, (torch.nan_to_num(y) - pred) ** 2 / var, torch.zeros_like(pred))
            total = total - 0.5 * r2.flatten(1).sum(1)
        return total

    def dps_residual_norm(self, x0: torch.Tensor) -> torch.Tensor:
        """``zeta_k ||(y_k - A_k x0)/sigma_y,k||`` summed over modalities, ``[B]``."""
        xp = self.physical(x0)
        total = x0.new_zeros(x0.shape[0])
        for ob in self.observations:
            pred = ob.operator(xp)
            y, mask = ob.y, ob.mask()
            if y.shape[0] == 1 and pred.shape[0] != 1:
                y, mask = y.expand_as(pred), mask.expand_as(pred)
            r2 = torch.where(mask, (torch.nan_to_num(y) - pred) ** 2 / ob.sigma_y**2, torch.zeros_like(pred))
            total = total + ob.zeta * r2.flatten(1).sum(1).clamp_min(1e-12).sqrt()
        return total

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, guide: bool = True) -> torch.Tensor:
        """The guided denoiser at ``x`` (normalised), ``sigma[B]``.

        For ``mode="dps"`` returns the prior denoiser and keeps the DPS gradient of
        this evaluation in ``last_dps_grad`` (when ``guide``).
        """
        self.cost.forward += 1
        if self.mode == "none" or not guide:
            with torch.no_grad():
                return self.prior.denoise(x, sigma).detach()
        self.cost.backward += 1
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            x0 = self.prior.denoise(xg, sigma)
            if self.mode == "sda":
                ll = self.log_likelihood(x0, sigma)
                (g,) = torch.autograd.grad(ll.sum(), xg)
                s2 = (sigma**2).reshape(-1, 1, 1, 1)
                return (x0 + s2 * g).detach()
            norm = self.dps_residual_norm(x0)
            (g,) = torch.autograd.grad(norm.sum(), xg)
            self.last_dps_grad = g.detach()
            return x0.detach()


class GaussianPrior:
    """Exact denoiser of a zero-mean Gaussian prior ``x ~ N(0, Sigma)`` on ``[C, H, W]`` fields.

    ``D(x; s) = Sigma (Sigma + s^2 I)^{-1} x`` (computed in Sigma's eigenbasis). The
    posterior given ``y = A x + e``, ``e ~ N(0, R)`` is ``N(m, P)`` with
    ``m = Sigma A^T (A Sigma A^T + R)^{-1} y`` and ``P = Sigma - Sigma A^T (A Sigma A^T + R)^{-1} A Sigma``.
    """

    def __init__(self, cov: torch.Tensor, shape: tuple[int, int, int], sigma_min: float = 0.002, sigma_max: float = 80.0):
        self.cov = cov.double()
        self.shape = tuple(shape)
        self.evals, self.evecs = torch.linalg.eigh(self.cov)
        self.evals = self.evals.clamp_min(0)
        self.sigma_min, self.sigma_max, self.sigma_data = sigma_min, sigma_max, float(self.evals.mean().sqrt())
        self.channels = [(f"c{c}", None) for c in range(shape[0])]

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        z = x.reshape(B, -1).double() @ self.evecs
        f = self.evals / (self.evals + sigma.double().reshape(-1, 1) ** 2)
        return ((z * f) @ self.evecs.T).reshape(x.shape).to(x.dtype)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        z = torch.randn(n, self.cov.shape[0], generator=generator, dtype=torch.float64)
        return ((z * self.evals.sqrt()) @ self.evecs.T).reshape(n, *self.shape).float()

    def posterior(self, A: torch.Tensor, y: torch.Tensor, R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Closed-form posterior mean ``[d]`` and covariance ``[d, d]`` for a dense ``A[m, d]``."""
        A, y, R = A.double(), y.double(), R.double()
        S = A @ self.cov @ A.T + R
        K = self.cov @ A.T @ torch.linalg.inv(S)
        return K @ y, self.cov - K @ A @ self.cov
