"""SDA guidance (Rozet & Louppe 2023, "Score-based data assimilation", eq. 12): a denoiser.

By Tweedie's formula the denoiser is the posterior mean ``D(x; s) = E[x0 | x_s = x]``
and the score is ``grad log p_s(x) = (D(x; s) - x) / s^2``. Conditioning on
observations adds the likelihood score, so the guided denoiser is

    D(x; s | y) = D(x; s) + s^2 * grad_x log p(y | x_s = x).                 (1)

The likelihood of modality ``k`` is approximated by a Gaussian around the denoised
estimate,

    log p(y_k | x_s) ~ -1/2 || y_k - A_k D(x; s) ||^2 / (sigma_y,k^2 + gamma_k * (a_k s)^2),

where ``a_k = sqrt((A_k o A_k) std^2)`` is the std of ``A_k`` applied to white noise of
unit normalised variance, so ``(a_k s)^2`` is the variance the diffusion noise ``s`` puts on
the observation (a block average of k^2 cells: ``std^2 / k^2``; a point: ``sum_i w_i^2 std_i^2``)
and ``gamma`` (each observation's own) means the same for every modality; the gradient goes
through the denoiser by autograd (one backward pass per evaluation).

:class:`SDADenoiser` wraps a denoiser and is itself one (``denoise(x, sigma)``), so any
sampler runs it unchanged.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..operators import Observation
from .base import Denoiser, Units, noise_scales, residuals

__all__ = ["SDADenoiser"]


class SDADenoiser:
    """``D(x; s | y)`` of eq. (1) for a batch ``x[B, C, H, W]`` (normalised).

    ``observations`` have batch ``B`` (or 1); ``units`` converts to the physical fields the
    operators act on.
    """

    def __init__(self, prior: Denoiser, observations: Sequence[Observation], units: Units):
        self.prior = prior
        self.observations = list(observations)
        self.units = units
        self.sigma_min, self.sigma_max = prior.sigma_min, prior.sigma_max
        self._scale: list[torch.Tensor] | None = None  # a_k per modality, [1, ...] (cached per field shape)
        self._shape: tuple[int, ...] | None = None

    def _scales(self, shape: Sequence[int]) -> list[torch.Tensor]:
        if self._scale is None or self._shape != tuple(shape[-2:]):
            self._scale = noise_scales(self.observations, self.units, shape)
            self._shape = tuple(shape[-2:])
        return self._scale

    def log_likelihood(self, x0: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """SDA Gaussian log-likelihood per batch element, ``[B]``, of the denoised ``x0``."""
        scales = self._scales(x0.shape)
        total = x0.new_zeros(x0.shape[0])
        for (ob, y, pred, mask), a in zip(residuals(self.observations, self.units.physical(x0)), scales):
            s = sigma.reshape(-1, *([1] * (pred.dim() - 1)))
            var = ob.sigma_y**2 + ob.gamma * (a * s) ** 2
            r2 = torch.where(mask, (torch.nan_to_num(y) - pred) ** 2 / var, torch.zeros_like(pred))
            total = total - 0.5 * r2.flatten(1).sum(1)
        return total

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The guided denoiser at ``x`` (normalised), ``sigma[B]``: one forward and one
        backward pass of the prior."""
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            x0 = self.prior.denoise(xg, sigma)
            ll = self.log_likelihood(x0, sigma)
            (g,) = torch.autograd.grad(ll.sum(), xg)
            s2 = (sigma**2).reshape(-1, 1, 1, 1)
            return (x0 + s2 * g).detach()
