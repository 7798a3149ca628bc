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

__all__ = ["SpectralWiener", "spectral_moments", "gaussian_posterior_mean"]


def mirror(x, extend: tuple[bool, bool]):
    """``x[..., H, W]`` extended by its mirror image along the axes flagged in `extend`
    (latitude, longitude): ``[x, flip(x)]``, so the extended field is periodic and even, and a
    convolution on it is a cosine-transform (DCT-II) filter of ``x`` with no wrap-around edge.
    NumPy arrays or tensors."""
    cat, flip = (torch.cat, torch.flip) if isinstance(x, Tensor) else (np.concatenate, np.flip)
    if extend[0]:
        x = cat([x, flip(x, (-2,) if isinstance(x, Tensor) else -2)], -2)
    if extend[1]:
        x = cat([x, flip(x, (-1,) if isinstance(x, Tensor) else -1)], -1)
    return x


def spectral_moments(
    fields: Iterable[np.ndarray], offset: np.ndarray | None, extend: tuple[bool, bool] = (False, False)
) -> np.ndarray:
    """The mean cross-spectral matrix ``S[H, W, C, C]`` (complex128, Hermitian per wavenumber)
    of fields ``[n, C, H, W]`` (an iterable of chunks; normalised units) less `offset`
    ``[C, H, W]`` (the anomalies' mean field; None: the fields themselves), mirror-extended
    along the `extend` axes (then ``S`` is on the ``2H`` and/or ``2W`` grid)."""
    total, count = None, 0
    for chunk in fields:
        x = np.asarray(chunk, np.float64)
        x = x.reshape(-1, *x.shape[-3:])
        if offset is not None:
            x = x - offset[None]
        f = np.fft.fft2(mirror(x, extend))  # [n, C, H, W]
        part = np.einsum("ncij,ndij->ijcd", f, f.conj())
        total = part if total is None else total + part
        count += x.shape[0]
    if not count:
        raise ValueError("spectral_moments needs at least one field")
    H, W = total.shape[:2]
    return total / (count * H * W)


class SpectralWiener(nn.Module):
    """``D_lin(a; σ)`` for anomalies ``a[B, C, H, W]`` on the ``H x W`` grid it was built for.
    `extend` (latitude, longitude): axes that are not periodic, where the filter acts on the
    mirror-extended field (:func:`mirror`) and the result is cut back: symmetric positive
    semi-definite all the same (a cosine-transform filter)."""

    def __init__(self, shape: tuple[int, int, int], extend: tuple[bool, bool] = (False, False)):
        super().__init__()
        C, H, W = (int(s) for s in shape)
        self.extend = (bool(extend[0]), bool(extend[1]))
        He, We = H * (1 + self.extend[0]), W * (1 + self.extend[1])
        self.register_buffer("evals", torch.zeros(He, We, C, dtype=torch.float64))
        self.register_buffer("evecs", torch.zeros(He, We, C, C, 2, dtype=torch.float64))  # real, imag

    @property
    def grid(self) -> tuple[int, int]:
        H, W = int(self.evals.shape[0]), int(self.evals.shape[1])
        return H // (1 + self.extend[0]), W // (1 + self.extend[1])

    @property
    def periodic(self) -> bool:
        """True when the filter is a circular convolution on the grid itself (no mirror axis)."""
        return not any(self.extend)

    def _cut(self, out: Tensor) -> Tensor:
        H, W = self.grid
        return out[..., :H, :W]

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
        f = torch.fft.fft2(mirror(a.float(), self.extend)).permute(2, 3, 1, 0)  # [H, W, C, B]
        z = vec.conj().transpose(-1, -2) @ f
        s2 = (sigma.float().reshape(1, 1, 1, -1)) ** 2
        z = z * (lam[..., None] / (lam[..., None] + s2))
        out = torch.fft.ifft2((vec @ z).permute(3, 2, 0, 1)).real
        return self._cut(out).to(a.dtype)

    def covariance(self, a: Tensor) -> Tensor:
        """``S a``: the covariance the filter was built from applied to fields ``a[B, C, H, W]``
        (a circular convolution: ``S(k) a^(k)`` per wavenumber)."""
        vec = torch.view_as_complex(self.evecs.double().contiguous())
        f = torch.fft.fft2(mirror(a.double(), self.extend)).permute(2, 3, 1, 0)
        z = (vec.conj().transpose(-1, -2) @ f) * self.evals[..., None]
        return self._cut(torch.fft.ifft2((vec @ z).permute(3, 2, 0, 1)).real)


def gaussian_posterior_mean(
    wiener: SpectralWiener, offset: Tensor | None, observations, units, iterations: int = 300
) -> Tensor:
    """The posterior mean of the Gaussian prior ``N(offset, S)`` (normalised units) given linear
    observations with Gaussian noise ``sigma_y``: ``m + S A'^T u``, ``(A' S A'^T + Sigma_y) u =
    y - A' m``, solved by `iterations` preconditioned conjugate-gradient steps (in float64;
    each a few FFTs, no network pass; a complete coarse field on a grid its factor divides is
    solved exactly in Fourier space, other modalities Jacobi-preconditioned). ``A'`` is each operator on normalised fields. Returns
    ``[B, C, H, W]`` normalised, B the observations' batch. The baseline a diffusion posterior
    mean must beat to claim anything beyond the data's second-order statistics."""
    from .guidance.base import Units, noise_scales, residuals
    from .guidance.mmps import coarse_block_inverse, conjugate_gradient

    units = Units(units.mean.double().cpu(), units.std.double().cpu())

    C, (H, W) = int(wiener.evals.shape[-1]), wiener.grid
    B = max(int(ob.y.shape[0]) for ob in observations)
    m = (offset if offset is not None else torch.zeros(C, H, W)).double().expand(B, C, H, W)
    std = units.std
    shape = (B, C, H, W)
    obs = [ob.to("cpu", torch.float64) for ob in observations]
    rows = list(residuals(obs, units.physical(m)))
    masks = [mk for _, _, _, mk in rows]
    b = [torch.where(mk, torch.nan_to_num(y) - pred, torch.zeros_like(pred)) for (_, y, pred, mk) in rows]
    var = [
        torch.where(mk, (ob.sigma_y.double() ** 2).expand_as(pred), torch.ones_like(pred)) for ob, _, pred, mk in rows
    ]

    def adjoint(vs):  # A'^T v
        out = torch.zeros(shape, dtype=torch.float64)
        for ob, v, mk in zip(obs, vs, masks):
            out = out + ob.operator.adjoint(torch.where(mk, v, torch.zeros_like(v)), shape)
        return out * std

    def matvec(vs):
        w = std * wiener.covariance(adjoint(vs))
        return [
            torch.where(mk, sv * v + ob.operator(w), torch.zeros_like(v)) for ob, v, sv, mk in zip(obs, vs, var, masks)
        ]

    scales = noise_scales(obs, units, shape)
    pre = [torch.where(mk, 1.0 / (sv + a.double() ** 2), torch.ones_like(sv)) for a, sv, mk in zip(scales, var, masks)]
    with torch.enable_grad():  # the operators' adjoints are vector-Jacobian products
        for i, (ob, sv, mk) in enumerate(zip(obs, var, masks)):
            exact = coarse_block_inverse(ob, wiener.covariance, std, sv, mk, shape) if wiener.periodic else None
            pre[i] = exact if exact is not None else pre[i]  # the coarse block exactly, in Fourier space
        u = conjugate_gradient(matvec, b, iterations, pre)
        return (m + wiener.covariance(adjoint(u))).detach()
