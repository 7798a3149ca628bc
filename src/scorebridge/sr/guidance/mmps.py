"""MMPS guidance (Rozet et al. 2024, "Learning diffusion priors from observations by
expectation maximization", moment matching posterior sampling): a denoiser.

Where SDA replaces the covariance of ``x0`` given ``x_s`` by a scaled identity, MMPS takes
it from the denoiser itself: by Tweedie's second-order formula

    V[x0 | x_s = x] = s^2 * dD(x; s)/dx          (the denoiser's Jacobian J, normalised units)

and the Gaussian posterior mean of ``x0`` given ``x_s`` and ``y = A x0 + noise`` is

    D(x; s | y) = D(x; s) + s^2 J^T A'^T u,   (Sigma_y + s^2 A' J A'^T) u = y - A' D(x; s),

with ``A' = A o (mean + std *)`` the operator on normalised fields (so ``A'^T v =
std * A^T v``). Each product with ``J^T`` is one vector-Jacobian product, i.e. one backward
pass through the network; the linear system is solved by ``iterations`` conjugate-gradient
steps from ``u = 0`` (one backward pass each), preconditioned by the diagonal that a white
prior of unit variance gives, ``sigma_y^2 + gamma (a s)^2 + (a s)^2 / (1 + s^2)`` (so
modalities whose noise differs by orders of magnitude converge together), and the final ``J^T`` product is one more: a denoiser
evaluation costs one forward and ``iterations + 1`` backward passes. The modalities share
one system (stacked observations, block-diagonal ``Sigma_y``).

``Sigma_y`` is each observation's ``sigma_y^2`` plus ``gamma * (a s)^2`` (SDA's term, with
``a`` as in :mod:`.sda`); ``gamma = 0`` is MMPS as published, ``gamma > 0`` loosens the fit
at large noise levels (a knob the calibration can turn).

``covariance="wiener"`` takes ``J`` from the prior's Wiener skip (:mod:`scorebridge.sr.wiener`,
``sr.train.model.skip: wiener``) instead of the network: ``J_lin = S (S + s^2 I)^{-1}`` per
wavenumber, the exact Jacobian for Gaussian data with the training fields' cross-spectra.
It is symmetric positive semi-definite, so the conjugate-gradient system is always
well posed (a learned Jacobian need not be: one of 256 held-out members diverged with it on
the default experiment), and it costs two FFTs instead of a backward pass: an evaluation is
one forward pass and no backward pass. The mean still comes from the full denoiser.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..operators import CoarseGrain, Observation
from .base import Denoiser, Units, noise_scales, residuals

__all__ = ["MMPSDenoiser", "conjugate_gradient"]

Vectors = list[torch.Tensor]


def _dot(a: Vectors, b: Vectors) -> torch.Tensor:
    """Per-batch-element inner product of two stacked observation vectors, ``[B]``."""
    return sum((x * y).flatten(1).sum(1) for x, y in zip(a, b))


def conjugate_gradient(
    matvec: Callable[[Vectors], Vectors], b: Vectors, iterations: int, precondition: Vectors | None = None
) -> Vectors:
    """``iterations`` (preconditioned) CG steps from 0 for ``M u = b`` (``M`` symmetric positive
    definite), one system per batch element; ``matvec`` is called ``iterations`` times.
    ``precondition``: per modality the inverse of a diagonal approximation of ``M`` (Jacobi),
    or a function applying a symmetric positive definite approximation of the inverse of
    its diagonal block; or None."""

    def apply(r: Vectors) -> Vectors:
        if precondition is None:
            return [x.clone() for x in r]
        return [pc(x) if callable(pc) else pc * x for pc, x in zip(precondition, r)]

    u = [torch.zeros_like(x) for x in b]
    r = [x.clone() for x in b]
    z = apply(r)
    p = [x.clone() for x in z]
    rz = _dot(r, z)
    for _ in range(iterations):
        mp = matvec(p)
        pmp = _dot(p, mp)
        alpha = torch.where(pmp > 0, rz / pmp.clamp_min(1e-30), torch.zeros_like(rz))
        u = [x + _bc(alpha, x) * y for x, y in zip(u, p)]
        r = [x - _bc(alpha, x) * y for x, y in zip(r, mp)]
        z = apply(r)
        rz_new = _dot(r, z)
        beta = torch.where(rz > 0, rz_new / rz.clamp_min(1e-30), torch.zeros_like(rz))
        p = [x + _bc(beta, x) * y for x, y in zip(z, p)]
        rz = rz_new
    return u


def coarse_block_inverse(
    ob: Observation,
    cov: Callable[[torch.Tensor], torch.Tensor],
    std: torch.Tensor,
    var: torch.Tensor,
    mask: torch.Tensor,
    shape,
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """``r -> M^{-1} r`` for ``M = var + A' K A'^T``, the coarse field's block of an MMPS (or
    Gaussian posterior) system, when ``K`` (``cov``, on normalised fields ``[n, C, H, W]``) is
    stationary on a periodic grid and the block average ``A`` divides it: then ``M`` is
    circulant on the coarse grid, diagonal in Fourier space with one ``C x C`` matrix per
    coarse wavenumber, read off by applying ``M`` to one delta per channel. Exact for a
    complete coarse field (conjugate gradients then converge at once); cells outside `mask`
    are left out (passed through unchanged). None where it does not apply (another operator, a padded grid, a noise variance
    ``var`` that differs over the batch or the cells)."""
    op = ob.operator
    H, W = shape[-2:]
    if not isinstance(op, CoarseGrain) or H % op.factor or W % op.factor:
        return None
    v = var.detach()
    if not bool((v == v[:1, :, :1, :1]).all()):
        return None
    co, hc, wc = v.shape[1:]
    probes = torch.zeros(co, co, hc, wc, dtype=v.dtype, device=v.device)
    probes[torch.arange(co), torch.arange(co), 0, 0] = 1.0
    fine = op.adjoint(probes, (co, shape[1], H, W)) * std
    resp = op(std * cov(fine)).detach() + probes * v[0, :, 0, 0].reshape(1, -1, 1, 1)
    spec = torch.fft.fft2(resp.double()).permute(2, 3, 1, 0)  # [hc, wc, channel c, probe c']
    spec = 0.5 * (spec + spec.conj().transpose(-1, -2))
    inv = torch.linalg.inv(spec)

    def apply(r: torch.Tensor) -> torch.Tensor:
        f = torch.fft.fft2(torch.where(mask, r, torch.zeros_like(r)).double()).permute(2, 3, 1, 0)  # [hc, wc, C, B]
        return torch.where(mask, torch.fft.ifft2((inv @ f).permute(3, 2, 0, 1)).real.to(r.dtype), r)

    return apply


def _bc(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1)))


class MMPSDenoiser:
    """``D(x; s | y)`` of MMPS for a batch ``x[B, C, H, W]`` (normalised); ``observations``
    have batch ``B`` (or 1); ``iterations`` conjugate-gradient steps per evaluation."""

    def __init__(
        self,
        prior: Denoiser,
        observations: Sequence[Observation],
        units: Units,
        iterations: int = 1,
        wiener: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ):
        """`wiener`: the prior's linear denoiser ``D_lin(a; s)`` (its Jacobian is the covariance
        model, ``covariance="wiener"``), or None: the network's Jacobian."""
        if iterations < 1:
            raise ValueError(f"MMPS needs at least one conjugate-gradient iteration, got {iterations}")
        self.prior = prior
        self.observations = list(observations)
        self.units = units
        self.iterations = int(iterations)
        self.wiener = wiener
        self.sigma_min, self.sigma_max = prior.sigma_min, prior.sigma_max

    def denoise(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The guided denoiser at ``x`` (normalised), ``sigma[B]``: one forward and
        ``iterations + 1`` backward passes of the prior."""
        shape = tuple(x.shape)
        s2 = (sigma**2).reshape(-1, 1, 1, 1)
        scales = noise_scales(self.observations, self.units, shape)
        linear = self.wiener is not None
        with torch.enable_grad():
            xg = x.detach().requires_grad_(not linear)
            x0 = self.prior.denoise(xg, sigma)
            rows = list(residuals(self.observations, self.units.physical(x0.detach())))
            masks = [m for _, _, _, m in rows]
            var = []
            for (ob, _, pred, mask), a in zip(rows, scales):
                s = sigma.reshape(-1, *([1] * (pred.dim() - 1)))
                v = (ob.sigma_y**2 + ob.gamma * (a * s) ** 2).expand_as(pred)
                var.append(torch.where(mask, v, torch.ones_like(v)))
            b = [torch.where(m, torch.nan_to_num(y) - pred, torch.zeros_like(pred)) for (_, y, pred, m) in rows]

            def adjoint(vs: Vectors) -> torch.Tensor:  # A'^T v on normalised fields (no network pass)
                out = torch.zeros(shape, dtype=x0.dtype, device=x0.device)
                for ob, v, m in zip(self.observations, vs, masks):
                    out = out + ob.operator.adjoint(torch.where(m, v, torch.zeros_like(v)), shape)
                return out * self.units.std

            def jt(field: torch.Tensor, last: bool = False) -> torch.Tensor:  # J^T field: one backward pass
                if linear:  # J_lin is symmetric: J_lin^T field = D_lin(field; s), no network pass
                    return self.wiener(field, sigma)
                (g,) = torch.autograd.grad(x0, xg, field, retain_graph=not last)
                return g

            def matvec(vs: Vectors) -> Vectors:  # (Sigma_y + s^2 A' J A'^T) v
                w = self.units.std * (s2 * jt(adjoint(vs)))
                return [
                    torch.where(m, sv * v + ob.operator(w), torch.zeros_like(v))
                    for ob, v, sv, m in zip(self.observations, vs, var, masks)
                ]

            # Jacobi preconditioner: Sigma_y plus the diagonal of s^2 A' J A'^T for a white prior of
            # unit variance (J = I / (1 + s^2)), i.e. var + (a s)^2 / (1 + s^2): modalities whose noise
            # differs by orders of magnitude (coarse field, radiosondes) are solved on one footing
            pre = []
            for (_, _, pred, mask), a, sv in zip(rows, scales, var):
                s_ = sigma.reshape(-1, *([1] * (pred.dim() - 1)))
                d = sv + (a * s_) ** 2 / (1.0 + s_**2)
                pre.append(torch.where(mask, 1.0 / d, torch.ones_like(d)))
            if linear and getattr(self.wiener, "periodic", False) and bool((sigma == sigma[0]).all()):
                cov = lambda f: s2[:1] * self.wiener(f, sigma[:1].expand(f.shape[0]))  # noqa: E731
                for i, (ob, sv, mask) in enumerate(zip(self.observations, var, masks)):
                    exact = coarse_block_inverse(ob, cov, self.units.std, sv, mask, shape)  # the coarse block, exactly
                    pre[i] = exact if exact is not None else pre[i]
            u = conjugate_gradient(matvec, b, self.iterations, pre)
            g = jt(adjoint(u), last=True)
        return (x0 + s2 * g).detach()
