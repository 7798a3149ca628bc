"""Patch-wise denoising for domains larger than memory or than one device.

A prior trained on patches (`sr.<name>.train.crop`) samples the full domain as it is,
as any denoiser on any grid; activation memory then grows with the domain. With
`sr.<name>.sample.patch: {size, overlap}` the sampler instead evaluates the denoiser on
overlapping square windows of the domain and blends the window outputs at every
denoiser evaluation (so at every sampler step), :class:`PatchDenoiser`:

    D(x; s) = sum_p W_p * D(x[window p]; s),   sum_p W_p = 1 at every cell,

with per-window weights that rise linearly across the cells a window shares with its
neighbour (blend weights normalised to sum to one), one on the cells only it covers.
The windows tile each axis with a stride of at most `size - overlap`; on an axis the
prior wraps around (`periodic`) they wrap too, so the domain's own seam is blended like
any other. The observations, the guidance and the noise stay on the full domain: only
the prior sees windows. Windows are evaluated in chunks of `chunk`; under autograd
(guidance) each chunk is checkpointed, so the network's activations are held for one
chunk at a time (one more forward pass per guided evaluation, recomputed in backward).

The seam error (the difference from full-domain sampling with the same seed, near and
away from the blended cells) is measured by `benchmarks/sr_scale.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .. import options
from ..errors import ConfigError

__all__ = ["PatchOptions", "Tiling", "axis_tiling", "PatchDenoiser", "patched"]


@options.register
@dataclass(frozen=True)
class PatchOptions:
    """`sample.patch`: window size (cells, square or [lat, lon]) and the overlap of neighbours."""

    SCHEMA_PATH = ("sr", "*", "sample", "patch")
    size: int | list[int]
    overlap: int

    @classmethod
    def from_section(cls, section: dict | None) -> "PatchOptions | None":
        """None (full-domain sampling) for a null section."""
        if section is None:
            return None
        return cls(size=section["size"], overlap=section["overlap"])


@dataclass(frozen=True)
class Tiling:
    """Windows along one axis: `index[p]` the cells of window p (wrapped on a periodic axis),
    `weight[p]` their blend weights (summing to one over windows at every cell)."""

    length: int
    index: np.ndarray  # (n, size) int64
    weight: np.ndarray  # (n, size) float64

    @property
    def count(self) -> np.ndarray:
        """Windows covering each cell."""
        return np.bincount(self.index.ravel(), minlength=self.length)


def _rise(k: int) -> np.ndarray:
    """k weights rising from near 0 to near 1: sin^2 of a quarter period at cell centres, so
    two windows sharing k cells weigh sin^2 + cos^2 = 1 and a window's edge cells almost 0."""
    return np.sin(0.5 * np.pi * (np.arange(k) + 0.5) / k) ** 2


def axis_tiling(length: int, size: int, overlap: int, periodic: bool = False) -> Tiling:
    """Windows of `size` cells over an axis of `length` cells, neighbours sharing at least
    `overlap` cells; one window of the whole axis when `size >= length`."""
    if size >= length:
        idx = np.arange(length)[None]
        return Tiling(length, idx, np.ones((1, length)))
    if not 0 <= overlap < size:
        raise ConfigError("sr.sample.patch.overlap", f"{overlap} must be at least 0 and below the window size {size}")
    stride = size - overlap
    if periodic:
        n = math.ceil(length / stride)
        starts = np.round(np.arange(n) * length / n).astype(np.int64)
    else:
        n = math.ceil((length - size) / stride) + 1
        starts = np.round(np.linspace(0, length - size, n)).astype(np.int64)
    index = (starts[:, None] + np.arange(size)[None]) % length
    count = np.bincount(index.ravel(), minlength=length)
    ramp = np.ones((n, size))
    for p in range(n):  # linear ramps across the cells a window shares at its two ends
        shared = count[index[p]] > 1
        lo = size if shared.all() else int(np.argmin(shared))
        hi = size if shared.all() else int(np.argmin(shared[::-1]))
        if lo:
            ramp[p, :lo] = np.minimum(ramp[p, :lo], _rise(lo))
        if hi:
            ramp[p, size - hi :] = np.minimum(ramp[p, size - hi :], _rise(hi)[::-1])
    total = np.zeros(length)
    np.add.at(total, index, ramp)
    return Tiling(length, index, ramp / total[index])


def as_pair(size: int | Sequence[int]) -> tuple[int, int]:
    """A window size (an int for a square, or [lat, lon]) as (height, width)."""
    return (int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1]))


class PatchDenoiser:
    """The denoiser `prior` evaluated on overlapping windows of (H, W) fields and blended.

    `prior.denoise(x, sigma)` (any H, W); when the prior models anomalies from a mean
    field (`prior.denoiser.offset`), each window gets its part of the mean field. `periodic`:
    the (latitude, longitude) axes the windows wrap around. `chunk`: windows per network call.
    """

    def __init__(
        self,
        prior,
        shape: Sequence[int],
        size: int | Sequence[int],
        overlap: int,
        periodic: Sequence[bool] = (False, False),
        chunk: int = 64,
    ):
        self.prior = prior
        self.sigma_min, self.sigma_max = prior.sigma_min, prior.sigma_max
        self.H, self.W = int(shape[-2]), int(shape[-1])
        sh, sw = as_pair(size)
        self.rows = axis_tiling(self.H, sh, overlap, bool(periodic[0]))
        self.cols = axis_tiling(self.W, sw, overlap, bool(periodic[1]))
        self.chunk = max(1, int(chunk))
        # flat cell indices (npos, h*w) and blend weights (npos, h*w) of every window
        r, c = self.rows, self.cols
        idx = (r.index[:, None, :, None] * self.W + c.index[None, :, None, :]).reshape(len(r.index) * len(c.index), -1)
        wgt = (r.weight[:, None, :, None] * c.weight[None, :, None, :]).reshape(idx.shape)
        self.size = (r.index.shape[1], c.index.shape[1])
        self._index = torch.from_numpy(idx)
        self._weight = torch.from_numpy(wgt).float()
        self.windows = idx.shape[0]

    def weights(self) -> np.ndarray:
        """Blend weights of every window on the grid, (windows, H, W) (zero outside a window)."""
        out = np.zeros((self.windows, self.H * self.W))
        for p in range(self.windows):
            out[p, self._index[p].numpy()] = self._weight[p].numpy()
        return out.reshape(self.windows, self.H, self.W)

    def _offset(self) -> Tensor | None:
        den = getattr(self.prior, "denoiser", None)
        return getattr(den, "offset", None)

    def denoise(self, x: Tensor, sigma: Tensor) -> Tensor:
        """D(x; s) of fields x (B, C, H, W), sigma (B,): windows, prior, blend."""
        B, C, H, W = x.shape
        if (H, W) != (self.H, self.W):
            raise ValueError(f"patch sampling was set up for {self.H}x{self.W} fields, got {H}x{W}")
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).reshape(-1).expand(B)
        index = self._index.to(x.device)
        weight = self._weight.to(x.device)
        h, w = self.size
        npos = self.windows
        flat = x.reshape(B, C, H * W)
        windows = (
            flat.index_select(2, index.reshape(-1))
            .reshape(B, C, npos, h, w)
            .permute(2, 0, 1, 3, 4)
            .reshape(npos * B, C, h, w)
        )
        sig = sigma.repeat(npos)
        offset = self._offset()
        if offset is not None:
            off = offset.reshape(C, H * W).index_select(1, index.reshape(-1)).reshape(C, npos, h, w).permute(1, 0, 2, 3)
            off = off.repeat_interleave(B, dim=0)
        outs = []
        many = windows.shape[0] > self.chunk
        for a in range(0, windows.shape[0], self.chunk):
            part = slice(a, a + self.chunk)
            args = (windows[part], sig[part]) + ((off[part],) if offset is not None else ())
            if many and torch.is_grad_enabled() and windows.requires_grad:
                outs.append(checkpoint(self._call, *args, use_reentrant=False))
            else:
                outs.append(self._call(*args))
        den = torch.cat(outs).float().reshape(npos, B, C, h * w) * weight[:, None, None, :]
        out = torch.zeros(B, C, H * W, device=x.device, dtype=den.dtype)
        out = out.index_add(2, index.reshape(-1), den.permute(1, 2, 0, 3).reshape(B, C, npos * h * w))
        return out.reshape(B, C, H, W)

    def _call(self, xw: Tensor, sw: Tensor, off: Tensor | None = None) -> Tensor:
        if off is None:
            return self.prior.denoise(xw, sw)
        return self.prior.denoise(xw, sw, offset=off)


def patched(prior, patch: PatchOptions | None, shape: Sequence[int], chunk: int):
    """`prior` itself for full-domain sampling (`patch` None), else its :class:`PatchDenoiser`
    on fields of `shape`, wrapping the axes the prior's network wraps."""
    if patch is None:
        return prior
    if getattr(getattr(prior, "denoiser", None), "wiener", None) is not None:
        raise ConfigError(
            "sr.sample.patch",
            "this prior's Wiener skip is a filter on the whole training grid, not on windows; "
            "train it with sr.train.model.skip: scalar for windowed sampling, or set sample.patch: null",
        )
    net = getattr(getattr(prior, "denoiser", None), "net", None)
    periodic = getattr(net, "periodic", (False, False))
    return PatchDenoiser(prior, shape, patch.size, int(patch.overlap), periodic, chunk)
