"""Likelihood guidance of an EDM denoiser, as composable wrappers (in the style of azula):
one method per module.

- :mod:`.sda`: :class:`SDADenoiser`, the SDA posterior denoiser ``D(x; s | y)``; it is
  itself a denoiser, so the sampler runs it as it runs the prior.
- :mod:`.dps`: :class:`DPSCorrection`, the DPS step ``x <- x - zeta grad ||r||`` that the
  sampler applies inside each step.
- :mod:`.mmps`: :class:`MMPSDenoiser`, moment matching posterior sampling: the SDA
  likelihood with the observation covariance taken through the denoiser's Jacobian
  (a few conjugate-gradient steps, one backward pass each); a denoiser like SDA.

:func:`guide` picks the pair ``(denoiser, correction)`` the sampler runs for a method name.
"""

from __future__ import annotations

from typing import Sequence

from ..operators import Observation
from .base import Denoiser, Units
from .dps import DPSCorrection
from .mmps import MMPSDenoiser
from .sda import SDADenoiser

__all__ = ["Denoiser", "Units", "SDADenoiser", "DPSCorrection", "MMPSDenoiser", "guide", "METHODS"]

METHODS = ("sda", "dps", "mmps", "none")


def guide(
    prior: Denoiser,
    observations: Sequence[Observation],
    units: Units,
    method: str,
    cg_iterations: int = 1,
    wiener=None,
) -> tuple[Denoiser, DPSCorrection | None]:
    """The denoiser and the in-step correction (or None) of guidance ``method``:
    ``"sda"``, ``"dps"``, ``"mmps"`` (``cg_iterations`` conjugate-gradient steps per
    evaluation; ``wiener``: the prior's linear denoiser as its covariance model, else the
    network's Jacobian) or ``"none"`` (the prior: unconditional samples, also when there
    are no observations)."""
    if method not in METHODS:
        raise ValueError(f"guidance must be one of {list(METHODS)}, got {method!r}")
    if method == "none" or not observations:
        return prior, None
    if method == "sda":
        return SDADenoiser(prior, observations, units), None
    if method == "mmps":
        return MMPSDenoiser(prior, observations, units, cg_iterations, wiener), None
    return prior, DPSCorrection(prior, observations, units)
