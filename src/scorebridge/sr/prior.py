"""The trained score-based prior: what posterior sampling loads and calls.

Interface (stable; used by scorebridge.sr.sample / evaluate)::

    from scorebridge.sr.prior import load_prior
    prior = load_prior("results/sr/default/checkpoint.pt", device="auto",
                       channels=None)         # optional expected channels -> ConfigError if different
    prior.denoise(x, sigma)  # EDM D(x; σ): x (B, C, H, W) normalised fields, sigma (B,) or float
                             # -> (B, C, H, W) float32 estimate of E[y | x]. Differentiable in x
                             # (weights are frozen); any H, W (padded inside the U-Net).
    prior.score(x, sigma)    # ∇_x log p_σ(x) = (D(x; σ) - x) / σ²
    prior.channels           # [(variable, level or None), ...] e.g. [("t", 850.0), ("t2m", None)]
    prior.channel_names      # ["t/850", "t2m", ...]
    prior.normalisation      # Normalisation: .mean, .std (np.float32 arrays, length C),
                             #   .normalise(x) / .denormalise(x) on (..., C, H, W) arrays or tensors
    prior.sigma_min, prior.sigma_max, prior.sigma_data   # floats (EDM schedule defaults)
    prior.config             # the experiment's config entry the prior was trained with
    prior.device, prior.nfe  # device; number of denoiser forward calls (batched calls count once;
                             #   reset with prior.nfe = 0)
    prior.info               # training summary: steps, seconds, params, final loss, train times

    from scorebridge.sr.edm import edm_sigmas
    sigmas = edm_sigmas(n, prior.sigma_min, prior.sigma_max, rho=7)   # n levels + final 0

The denoiser uses the EMA weights. `precision="auto"` (default "fp32") would run the
network in bf16 autocast on CUDA.

:class:`GaussianPrior` is the exact denoiser of a Gaussian prior with known covariance;
its posterior is closed form, which makes it the reference test of the guidance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from .. import options
from ..core.checkpoint import load_checkpoint
from ..core.device import autocast, select_device
from ..errors import ConfigError, InputError
from .data import Channel, Normalisation, channel_names
from .edm import EDMPrecond
from .options import ModelOptions
from .unet import UNet

__all__ = ["Prior", "GaussianPrior", "load_prior", "build_denoiser", "FORMAT"]

FORMAT = "scorebridge-sr-prior/1"


AXES = ("latitude", "longitude")


def periodic_flags(periodic) -> tuple[bool, bool]:
    """(latitude, longitude) wrap flags from a resolved `train.model.periodic` list of axis names."""
    if periodic in (None, "auto"):  # unresolved (e.g. a model built without data): no wrap
        return (False, False)
    unknown = [a for a in periodic if a not in AXES]
    if unknown:
        raise ConfigError(
            "sr.train.model.periodic", f"unknown axes {unknown}; expected a subset of {list(AXES)} or 'auto'"
        )
    return ("latitude" in periodic, "longitude" in periodic)


def build_denoiser(
    n_channels: int,
    model: ModelOptions,
    sigma_data: float,
    offset_shape: tuple[int, ...] | None = None,
    grid: tuple[int, int] | None = None,
) -> EDMPrecond:
    """EDMPrecond(UNet) from the `train.model` options (`periodic` resolved to axis names,
    `skip` to "wiener" or "scalar"); `offset_shape` (C, H, W): the denoiser models anomalies
    from a mean field (`train.anomalies`); `grid` (H, W): the grid of a Wiener skip."""
    wiener, extend = None, (False, False)
    if model.skip == "wiener":
        lat_p, lon_p = periodic_flags(model.periodic)
        extend = (not lat_p, not lon_p)  # mirror-extended along the axes that do not wrap
        if grid is None:
            raise ConfigError("sr.train.model.skip", "a Wiener skip needs the grid it is built for")
        wiener = (n_channels, int(grid[0]), int(grid[1]))
    elif model.skip not in ("scalar", "auto"):  # unresolved "auto" (a model built without data): scalar
        raise ConfigError("sr.train.model.skip", f"expected 'auto', 'wiener' or 'scalar', got {model.skip!r}")
    net = UNet(
        n_channels,
        base=int(model.base),
        mults=tuple(model.mults),
        blocks=int(model.blocks),
        attention=bool(model.attention),
        dropout=float(model.dropout),
        periodic=periodic_flags(model.periodic),
        padding=str(model.padding),
    )
    return EDMPrecond(net, sigma_data, offset_shape, wiener, extend)


@dataclass
class Prior:
    denoiser: EDMPrecond
    channels: list[Channel]
    normalisation: Normalisation
    sigma_min: float
    sigma_max: float
    sigma_data: float
    config: dict
    device: torch.device
    precision: str = "fp32"
    info: dict = field(default_factory=dict)
    nfe: int = 0
    channels_last: bool = False

    @property
    def channel_names(self) -> list[str]:
        return channel_names(self.channels)

    @property
    def n_channels(self) -> int:
        return len(self.channels)

    def denoise(self, x: Tensor, sigma: Tensor | float, offset: Tensor | None = None) -> Tensor:
        """D(x; σ) on normalised fields (B, C, H, W); sigma (B,) or a scalar. `offset`: the
        mean field of windows of the grid (patch sampling of a prior of anomalies)."""
        if x.ndim != 4 or x.shape[1] != self.n_channels:
            raise ValueError(
                f"prior.denoise expects (B, {self.n_channels}, H, W) for channels {self.channel_names}, got {tuple(x.shape)}"
            )
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        self.nfe += 1
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.device, self.precision):
            return self.denoiser(x, sigma, offset)

    __call__ = denoise

    def score(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """∇_x log p(x; σ) = (D(x; σ) - x) / σ² (Karras et al. Eq. 3)."""
        s = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1, 1, 1, 1)
        return (self.denoise(x, sigma) - x.float()) / s**2

    def check_channels(self, channels: Sequence[Channel], what: str = "config") -> None:
        _check_channels(self.channels, channels, self.info.get("path") or "checkpoint", what)


def _norm_channels(channels) -> list[Channel]:
    return [(str(v), None if lv is None else float(lv)) for v, lv in channels]


def _check_channels(have, want, path, what="config") -> None:
    have, want = _norm_channels(have), _norm_channels(want)
    if have != want:
        raise ConfigError(
            "sr.train.variables",
            f"checkpoint {path} was trained on channels {channel_names(have)}, but the {what} asks for "
            f"{channel_names(want)}; retrain the prior (delete the checkpoint) or use the matching experiment",
        )


def load_prior(
    checkpoint_path: str | Path,
    device: str | torch.device | None = "auto",
    channels: Sequence[Channel] | None = None,
    precision: str = "fp32",
    channels_last: bool = False,
) -> Prior:
    """Load the prior written by `scorebridge sr-train --out`; see the module docstring.
    `precision` "auto" or "bf16": the network in bf16 autocast on CUDA; `channels_last`:
    weights and inputs in the NHWC memory format."""
    dev = device if isinstance(device, torch.device) else select_device(device)
    state = load_checkpoint(checkpoint_path, map_location="cpu")
    if state.get("format") != FORMAT:
        raise InputError(
            f"not an SR prior checkpoint (format {state.get('format')!r}, expected {FORMAT!r}); pass the file `sr-train --out` wrote",
            checkpoint_path,
        )
    chans = _norm_channels(state["channels"])
    if channels is not None:
        _check_channels(chans, channels, checkpoint_path)
    edm = state["edm"]
    off = state["ema"].get("offset")
    kwargs = dict(state["model_kwargs"])
    kwargs.setdefault("skip", "scalar")  # priors written before the skip option
    model = options.build(ModelOptions, kwargs, where=f"{checkpoint_path}: model_kwargs")
    lam = state["ema"].get("wiener.evals")
    grid = None
    if lam is not None:  # the filter's grid, halved along mirror-extended (non-periodic) axes
        lat_p, lon_p = periodic_flags(model.periodic)
        grid = (int(lam.shape[0]) // (1 + (not lat_p)), int(lam.shape[1]) // (1 + (not lon_p)))
    try:
        den = build_denoiser(len(chans), model, edm["sigma_data"], tuple(off.shape) if off is not None else None, grid)
    except ConfigError as err:
        raise InputError(
            f"model_kwargs do not describe a prior this version can build ({err})", checkpoint_path
        ) from None
    try:
        den.load_state_dict(state["ema"])
    except RuntimeError as err:
        raise InputError(f"weights do not fit the recorded architecture ({err})", checkpoint_path) from None
    den.to(dev).eval()
    if channels_last:
        den.to(memory_format=torch.channels_last)
    for p in den.parameters():
        p.requires_grad_(False)
    info: dict[str, Any] = dict(state.get("info", {}))
    info["path"] = str(checkpoint_path)
    return Prior(
        denoiser=den,
        channels=chans,
        normalisation=Normalisation.from_dict(state["normalisation"]),
        sigma_min=float(edm["sigma_min"]),
        sigma_max=float(edm["sigma_max"]),
        sigma_data=float(edm["sigma_data"]),
        config=state.get("config", {}),
        device=dev,
        precision=precision,
        info=info,
        channels_last=channels_last,
    )


class GaussianPrior:
    """Exact denoiser of a zero-mean Gaussian prior ``x ~ N(0, Sigma)`` on ``[C, H, W]`` fields.

    ``D(x; s) = Sigma (Sigma + s^2 I)^{-1} x`` (computed in Sigma's eigenbasis). The
    posterior given ``y = A x + e``, ``e ~ N(0, R)`` is ``N(m, P)`` with
    ``m = Sigma A^T (A Sigma A^T + R)^{-1} y`` and ``P = Sigma - Sigma A^T (A Sigma A^T + R)^{-1} A Sigma``.
    """

    def __init__(
        self, cov: torch.Tensor, shape: tuple[int, int, int], sigma_min: float = 0.002, sigma_max: float = 80.0
    ):
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
