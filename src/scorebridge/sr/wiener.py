"""The spectral Wiener skip of the denoiser (`sr.train.model.skip: wiener`).

EDM's skip term ``c_skip(σ) x`` is the best linear denoiser of white data of variance
``σ_d²``. On a doubly periodic domain whose statistics do not depend on position, the
best linear denoiser of the data themselves is diagonal in Fourier space, one ``C x C``
matrix per wavenumber ``k``:

    D_lin(x; σ)^(k) = S(k) (S(k) + σ² I)^{-1} x^(k)

with ``S(k)`` the channels' cross-spectral matrix (the mean of ``x^(k) x^(k)^H / (H W)``
over the training fields; white noise of variance σ² has spectrum σ² I in this
normalisation). It carries the cross-channel relations of the data (winds and
temperature from one streamfunction, say) and every channel's own spectrum, which a
small U-Net learns slowly: on the default synthetic experiment the EDM skip plus the
network denoised validation fields 1.1-4x worse than ``D_lin`` alone on the winds, and
up to 650x on t's smooth anomalies (benchmarks/README.md "Wiener skip"). With this skip the
network learns only the residual ``D - D_lin`` (``D = D_lin + c_out F``), the data's
non-Gaussian part. ``S`` is estimated once before training (:func:`spectral_moments`)
and kept as eigenpairs ``S = V diag(λ) V^H`` (buffers of the denoiser; plain tensors in
the checkpoint), so ``D_lin`` at any σ is two FFTs and two ``C x C`` products per
wavenumber.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["SpectralWiener", "spectral_moments"]


def spectral_moments(fields: Iterable[np.ndarray], offset: np.ndarray | None) -> np.ndarray:
    """The mean cross-spectral matrix ``S[H, W, C, C]`` (complex128, Hermitian per wavenumber)
    of fields ``[n, C, H, W]`` (an iterable of chunks; normalised units) less `offset`
    ``[C, H, W]`` (the anomalies' mean field; None: the fields themselves)."""
    total, count = None, 0
    for chunk in fields:
        x = np.asarray(chunk, np.float64)
        x = x.reshape(-1, *x.shape[-3:])
        if offset is not None:
            x = x - offset[None]
        f = np.fft.fft2(x)  # [n, C, H, W]
        part = np.einsum("ncij,ndij->ijcd", f, f.conj())
        total = part if total is None else total + part
        count += x.shape[0]
    if not count:
        raise ValueError("spectral_moments needs at least one field")
    H, W = total.shape[:2]
    return total / (count * H * W)


class SpectralWiener(nn.Module):
    """``D_lin(a; σ)`` for anomalies ``a[B, C, H, W]`` on the ``H x W`` grid it was built for."""

    def __init__(self, shape: tuple[int, int, int]):
        super().__init__()
        C, H, W = (int(s) for s in shape)
        self.register_buffer("evals", torch.zeros(H, W, C, dtype=torch.float64))
        self.register_buffer("evecs", torch.zeros(H, W, C, C, 2, dtype=torch.float64))  # real, imag

    @property
    def grid(self) -> tuple[int, int]:
        return int(self.evals.shape[0]), int(self.evals.shape[1])

    def set_moments(self, moments: np.ndarray) -> None:
        """Store the eigenpairs of ``S`` from :func:`spectral_moments`."""
        s = torch.from_numpy(np.asarray(moments, np.complex128))
        s = 0.5 * (s + s.conj().transpose(-1, -2))
        lam, vec = torch.linalg.eigh(s)
        self.evals.copy_(lam.clamp_min(0.0))
        self.evecs.copy_(torch.view_as_real(vec))

    def forward(self, a: Tensor, sigma: Tensor) -> Tensor:
        if tuple(a.shape[-2:]) != self.grid:
            raise ValueError(
                f"this prior's Wiener skip is defined on the {self.grid} grid; got fields of {tuple(a.shape[-2:])} "
                "(windowed sampling needs a prior trained with sr.train.model.skip: scalar)"
            )
        vec = torch.view_as_complex(self.evecs.float().contiguous())  # [H, W, C, C]
        lam = self.evals.float()  # [H, W, C]
        f = torch.fft.fft2(a.float()).permute(2, 3, 1, 0)  # [H, W, C, B]
        z = vec.conj().transpose(-1, -2) @ f
        s2 = (sigma.float().reshape(1, 1, 1, -1)) ** 2
        z = z * (lam[..., None] / (lam[..., None] + s2))
        out = torch.fft.ifft2((vec @ z).permute(3, 2, 0, 1)).real
        return out.to(a.dtype)
