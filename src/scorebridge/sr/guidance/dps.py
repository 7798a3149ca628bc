"""DPS guidance (Chung et al. 2023, "Diffusion posterior sampling", Alg. 1): a correction.

Not a score term: after each sampler step ``x <- x - zeta * grad_x ||r||`` with
``r = (y - A D(x; s)) / sigma_y`` evaluated at the step's starting point (``zeta_i =
zeta / ||r||`` times ``grad ||r||^2 / 2``; ``zeta`` is each observation's own).

:class:`DPSCorrection` is what the sampler calls for the first denoiser evaluation of a
step: it returns that evaluation, ``D(x; s)``, together with the correction to subtract
from the step's result, so the prior runs once (forward and backward) for both and no
state passes between the sampler and the guidance.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..operators import Observation
from .base import Denoiser, Units, residuals

__all__ = ["DPSCorrection"]


class DPSCorrection:
    """``(D(x; s), zeta * grad_x ||(y - A D(x; s)) / sigma_y||)`` for ``x[B, C, H, W]``
    (normalised); ``observations`` have batch ``B`` (or 1)."""

    def __init__(self, prior: Denoiser, observations: Sequence[Observation], units: Units):
        self.prior = prior
        self.observations = list(observations)
        self.units = units

    def residual_norm(self, x0: torch.Tensor) -> torch.Tensor:
        """``zeta_k ||(y_k - A_k x0)/sigma_y,k||`` summed over modalities, ``[B]``."""
        total = x0.new_zeros(x0.shape[0])
        for ob, y, pred, mask in residuals(self.observations, self.units.physical(x0)):
            r2 = torch.where(mask, (torch.nan_to_num(y) - pred) ** 2 / ob.sigma_y**2, torch.zeros_like(pred))
            total = total + ob.zeta * r2.flatten(1).sum(1).clamp_min(1e-12).sqrt()
        return total

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            x0 = self.prior.denoise(xg, sigma)
            (g,) = torch.autograd.grad(self.residual_norm(x0).sum(), xg)
        return x0.detach(), g.detach()
