"""EDM preconditioning, training loss and time discretisation (Karras et al. 2022, "Elucidating
the Design Space of Diffusion-Based Generative Models", Table 1 and Eq. 5, 7, 8).

Noise model: x = y + σ n, n ~ N(0, I), with y a (normalised) field of std `sigma_data`.
Denoiser (Eq. 7):

    D(x; σ) = c_skip(σ) x + c_out(σ) F(c_in(σ) x; c_noise(σ))
    (with `sr.train.model.skip: wiener` the data's own linear denoiser replaces c_skip x:
    :mod:`scorebridge.sr.wiener`)
    c_skip = σ_d² / (σ² + σ_d²)       c_out = σ σ_d / sqrt(σ² + σ_d²)
    c_in   = 1 / sqrt(σ² + σ_d²)      c_noise = ln(σ) / 4

Training loss (Eq. 8): E_{σ,y,n} λ(σ) ||D(y + σn; σ) - y||², λ(σ) = (σ² + σ_d²)/(σ σ_d)²,
ln σ ~ N(P_mean, P_std²) with P_mean = -1.2, P_std = 1.2. With this λ the effective
target of F has unit variance at every σ.

Sampling steps (Eq. 5): σ_i = (σ_max^{1/ρ} + i/(n-1) (σ_min^{1/ρ} - σ_max^{1/ρ}))^ρ,
i = 0..n-1, then σ_n = 0; see `edm_sigmas`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .wiener import SpectralWiener

__all__ = ["EDMPrecond", "edm_coefficients", "edm_loss", "edm_sigmas", "sample_sigma", "loss_weight"]


def edm_coefficients(sigma: Tensor, sigma_data: float = 1.0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(c_skip, c_out, c_in, c_noise) at noise level `sigma` (any shape) (Karras et al. Table 1)."""
    sd2 = sigma_data**2
    s2 = sigma**2
    c_skip = sd2 / (s2 + sd2)
    c_out = sigma * sigma_data / torch.sqrt(s2 + sd2)
    c_in = 1.0 / torch.sqrt(s2 + sd2)
    c_noise = torch.log(sigma) / 4.0
    return c_skip, c_out, c_in, c_noise


def loss_weight(sigma: Tensor, sigma_data: float = 1.0) -> Tensor:
    """λ(σ) = (σ² + σ_d²) / (σ σ_d)² (Karras et al. Eq. 8 with Table 1)."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def sample_sigma(
    n: int, p_mean: float = -1.2, p_std: float = 1.2, generator: torch.Generator | None = None, device=None
) -> Tensor:
    """n noise levels with ln σ ~ N(p_mean, p_std²)."""
    z = torch.randn(n, generator=generator, device=generator.device if generator is not None else device)
    return torch.exp(p_mean + p_std * z).to(device) if device is not None else torch.exp(p_mean + p_std * z)


def edm_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float, append_zero: bool = True, device=None) -> Tensor:
    """The EDM time discretisation: n decreasing noise levels from σ_max to σ_min (Eq. 5).

    Returns a float64 tensor of length n + 1 ending in 0 (`append_zero`), else length n.
    n = 1 gives [σ_max] (+ 0).
    """
    if n < 1:
        raise ValueError(f"edm_sigmas needs n >= 1, got {n}")
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"need 0 < sigma_min <= sigma_max, got {sigma_min}, {sigma_max}")
    i = torch.arange(n, dtype=torch.float64)
    frac = i / (n - 1) if n > 1 else torch.zeros(1, dtype=torch.float64)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    sig = (hi + frac * (lo - hi)) ** rho
    sig[0] = sigma_max  # exact end points (no round-off through the 1/ρ powers)
    if n > 1:
        sig[-1] = sigma_min
    if append_zero:
        sig = torch.cat([sig, torch.zeros(1, dtype=torch.float64)])
    return sig.to(device) if device is not None else sig


class EDMPrecond(nn.Module):
    """D(x; σ) around a network F(x_in, c_noise) -> same shape as x_in.

    x: (B, C, H, W) normalised fields; sigma: (B,) or scalar. Output: (B, C, H, W).
    The network runs in the autocast dtype if any; the skip connection and the
    scalings are in float32.
    """

    def __init__(
        self,
        net: nn.Module,
        sigma_data: float = 1.0,
        offset_shape: tuple[int, ...] | None = None,
        wiener_shape: tuple[int, int, int] | None = None,
        wiener_extend: tuple[bool, bool] = (False, False),
    ):
        super().__init__()
        self.net = net
        self.sigma_data = float(sigma_data)
        if offset_shape is not None:  # a fixed mean field m[C, H, W] (state-dict buffer "offset")
            self.register_buffer("offset", torch.zeros(offset_shape))
        else:
            self.offset = None
        # the spectral Wiener skip (sr.wiener) in place of c_skip x: D = D_lin + c_out F
        self.wiener = SpectralWiener(wiener_shape, wiener_extend) if wiener_shape is not None else None

    def forward(self, x: Tensor, sigma: Tensor | float, offset: Tensor | None = None) -> Tensor:
        """With an ``offset`` m the network models the anomalies y - m of the data:
        D(x; σ) = m + D_a(x - m; σ), exact because E[m + a | m + a + σn = x] = m + E[a | a + σn = x - m].
        `offset` (B, C, h, w): the mean field of fields that are windows of the grid (patch
        sampling), in place of the whole-grid buffer."""
        x = x.float()
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        sigma = sigma.reshape(-1).float()
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, self.sigma_data)
        b = (-1,) + (1,) * (x.ndim - 1)
        m = self.offset if offset is None else offset.float()
        if m is not None:
            if tuple(x.shape[-2:]) != tuple(m.shape[-2:]):
                raise ValueError(
                    f"this prior models anomalies from a {tuple(m.shape[-2:])} mean field; got fields of {tuple(x.shape[-2:])}"
                )
            x = x - m
        f = self.net(c_in.view(b) * x, c_noise)
        skip = self.wiener(x, sigma) if self.wiener is not None else c_skip.view(b) * x
        out = skip + c_out.view(b) * f.float()
        return out + m if m is not None else out


def edm_loss(denoiser: nn.Module, y: Tensor, sigma: Tensor, noise: Tensor, sigma_data: float = 1.0) -> Tensor:
    """Mean over the batch of λ(σ) · mean over pixels/channels of (D(y + σn; σ) - y)²."""
    b = (-1,) + (1,) * (y.ndim - 1)
    x = y + sigma.view(b) * noise
    d = denoiser(x, sigma)
    per = ((d - y) ** 2).flatten(1).mean(1)
    return (loss_weight(sigma, sigma_data) * per).mean()
