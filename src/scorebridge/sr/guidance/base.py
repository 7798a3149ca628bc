"""What the guidance methods share: the denoiser interface, the unit conversion, the residuals.

The denoiser acts on NORMALISED fields ``x = (x_phys - mean) / std`` (per channel);
operators act on PHYSICAL fields, so ``A D`` means ``A (mean + std * D)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol, Sequence

import torch

from ..operators import Observation

__all__ = ["Denoiser", "Units", "residuals", "noise_scales"]


class Denoiser(Protocol):
    """``denoise(x[B, C, H, W], sigma[B])``: the posterior mean ``E[x0 | x_s = x]`` on
    normalised fields; ``sigma_min``/``sigma_max``: the noise range it was trained for."""

    sigma_min: float
    sigma_max: float

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class Units:
    """Per-channel normalisation ``x_phys = mean + std * x`` (``mean``/``std``: ``[C]``)."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def of(cls, mean, std, device) -> "Units":
        """Float32 tensors on ``device``, shaped ``[1, C, 1, 1]`` to broadcast over fields."""
        as_t = lambda a: torch.as_tensor(a, dtype=torch.float32, device=device).reshape(1, -1, 1, 1)  # noqa: E731
        return cls(as_t(mean), as_t(std))

    def physical(self, x0: torch.Tensor) -> torch.Tensor:
        return self.mean + self.std * x0


def residuals(
    observations: Sequence[Observation], xp: torch.Tensor
) -> Iterator[tuple[Observation, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(observation, y, A xp, mask)`` per modality for physical fields ``xp[B, ...]``;
    observations shared by the batch (batch 1) are expanded to it."""
    for ob in observations:
        pred = ob.operator(xp)
        y, mask = ob.y, ob.mask()
        if y.shape[0] == 1 and pred.shape[0] != 1:
            y, mask = y.expand_as(pred), mask.expand_as(pred)
        yield ob, y, pred, mask


def noise_scales(observations: Sequence[Observation], units: Units, shape: Sequence[int]) -> list[torch.Tensor]:
    """``a_k = sqrt((A_k o A_k) std^2)`` per modality, ``[1, ...]``: the std of ``A_k`` applied
    to white noise of unit normalised variance on fields of ``shape`` (``[..., H, W]``), so
    ``(a_k s)^2`` is the variance the diffusion noise ``s`` puts on observation ``k``."""
    var_field = (units.std**2).expand(1, -1, *shape[-2:])
    with torch.no_grad():
        return [ob.operator.forward_squared(var_field).clamp_min(0).sqrt().detach() for ob in observations]
