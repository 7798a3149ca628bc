"""Linear observation operators for zero-shot conditioning of the SR prior.

Every operator maps a batch of PHYSICAL fields ``x[B, C, H, W]`` (channels are the
prior's ``(variable, level)`` pairs, ``H`` = latitude ascending, ``W`` = longitude
ascending) to observations ``y = A x`` of its own shape ``[B, ...]``, and carries a
boolean ``mask`` broadcastable to ``y`` (True = an observation exists). Operators are
linear, so the adjoint is the vector-Jacobian product ``A^T v = d<A x, v>/dx``
(:meth:`Operator.adjoint`, via autograd).

- :class:`CoarseGrain`: block average over ``k x k`` cells (the coarse ERA5 field).
  A grid that ``k`` does not divide is padded at the northern/eastern edge by
  repeating the last row/column (``pad="edge"``, with a warning), or refused
  (``pad="error"``).
- :class:`PointObs`: point observations (collocated IGRA soundings): horizontal
  bilinear weights between the four surrounding grid points, and linear
  interpolation in log-pressure between the two bracketing model levels, i.e.
  ``y = sum_{i,j,l} w_i w_j w_l x[c(v, l), i, j]`` with at most 8 non-zero weights
  per observation (built from soundings by :func:`scorebridge.sr.point_obs.build_point_obs`).
  Each batch element may have its own observation set (padded to the largest, with a mask).

The :class:`Observation` bundles an operator with its data ``y`` (physical units),
its noise ``sigma_y`` (physical units, broadcastable to ``y``) and the SDA
inflation ``gamma`` (``Var = sigma_y^2 + gamma * (a * sigma_t)^2``, where
``a = sqrt((A o A) std^2)`` is the std of the operator applied to white noise of unit
normalised variance, see :meth:`Operator.forward_squared`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..errors import ConfigError

__all__ = [
    "Operator",
    "CoarseGrain",
    "PointObs",
    "Observation",
    "coarse_grain",
    "coarse_coords",
]


class Operator:
    """A linear map ``x[B, C, H, W] -> y[B, ...]`` with a mask of valid observations."""

    name = "operator"

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x)

    @property
    def mask(self) -> torch.Tensor | None:
        """Bool tensor broadcastable to ``y`` (True where observed); None = all observed."""
        return None

    def adjoint(self, v: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
        """``A^T v`` for fields of ``shape`` ([B, C, H, W]), by autograd (A is linear)."""
        x = torch.zeros(tuple(shape), dtype=v.dtype, device=v.device, requires_grad=True)
        (g,) = torch.autograd.grad((self.forward(x) * v).sum(), x)
        return g

    def repeat_interleave(self, n: int) -> "Operator":
        """The operator for a batch where every element is repeated ``n`` times."""
        return self

    def forward_squared(self, v: torch.Tensor) -> torch.Tensor:
        """``(A o A) v`` (element-wise squared weights): the variance of ``A e`` for independent
        ``e`` with variances ``v[B, C, H, W]``."""
        raise NotImplementedError

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "Operator":
        return self


# ---------------------------------------------------------------------------------------
# Coarse-graining.


def _pad_amount(n: int, k: int) -> int:
    return (-n) % k


def coarse_grain(x: torch.Tensor, k: int, pad: str = "edge") -> torch.Tensor:
    """Block average of ``x[..., H, W]`` over ``k x k`` blocks -> ``[..., ceil(H/k), ceil(W/k)]``.

    ``pad="edge"`` repeats the last row/column so that ``k`` divides the padded grid
    (the last coarse cell then averages fewer distinct cells); ``pad="error"`` raises.
    """
    if k < 1:
        raise ConfigError("sr.sample.coarse.factor", f"must be >= 1, got {k}")
    H, W = x.shape[-2:]
    ph, pw = _pad_amount(H, k), _pad_amount(W, k)
    if ph or pw:
        if pad == "error":
            raise ConfigError(
                "sr.sample.coarse.factor",
                f"coarsening factor {k} does not divide the {H}x{W} grid; "
                "use a dividing factor or set sr.<experiment>.sample.coarse.pad: edge",
            )
        lead = x.shape[:-2]
        x = torch.nn.functional.pad(x.reshape(-1, 1, H, W), (0, pw, 0, ph), mode="replicate").reshape(
            *lead, H + ph, W + pw
        )
    H2, W2 = x.shape[-2:]
    return x.reshape(*x.shape[:-2], H2 // k, k, W2 // k, k).mean(dim=(-3, -1))


def coarse_coords(coord: np.ndarray, k: int) -> np.ndarray:
    """Coordinates of the coarse cells: block means of the (edge-padded) fine coordinates."""
    c = np.asarray(coord, dtype=np.float64)
    p = _pad_amount(len(c), k)
    if p:
        c = np.concatenate([c, np.repeat(c[-1:], p)])
    return c.reshape(-1, k).mean(axis=1)


class CoarseGrain(Operator):
    """Block-average coarse-graining by ``factor`` (see :func:`coarse_grain`).

    ``y[b, c, I, J] = mean_{i in block I, j in block J} x[b, c, i, j]``; ``channels``
    (indices) restricts the observed channels (default: all). Missing coarse values
    (NaN in the data ``y``) are masked by :meth:`Observation.mask`.
    """

    name = "coarse"

    def __init__(self, factor: int, shape: tuple[int, int], pad: str, channels: Sequence[int] | None = None):
        self.factor = int(factor)
        self.shape = tuple(shape)
        self.pad = pad
        self.channels = None if channels is None else list(channels)
        H, W = self.shape
        if _pad_amount(H, self.factor) or _pad_amount(W, self.factor):
            if pad == "error":
                coarse_grain(torch.zeros(1, 1, H, W), self.factor, pad="error")  # raises
            warnings.warn(
                f"coarsening factor {self.factor} does not divide the {H}x{W} grid: the grid is padded "
                f"by repeating its last row/column to {H + _pad_amount(H, self.factor)}x{W + _pad_amount(W, self.factor)} "
                "(the last coarse row/column averages fewer distinct cells)",
                stacklevel=2,
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels is not None:
            x = x[:, self.channels]
        return coarse_grain(x, self.factor, pad="edge")

    def forward_squared(self, v: torch.Tensor) -> torch.Tensor:
        # weight of a fine cell in its block: m / k^2, m = how often edge padding repeats it
        if self.channels is not None:
            v = v[:, self.channels]
        H, W = v.shape[-2:]
        k = self.factor
        ph, pw = _pad_amount(H, k), _pad_amount(W, k)
        mh = torch.ones(H, dtype=v.dtype, device=v.device)
        mw = torch.ones(W, dtype=v.dtype, device=v.device)
        mh[-1] += ph
        mw[-1] += pw
        contrib = v * (mh[:, None] * mw[None, :] / k**2) ** 2
        ci = torch.arange(H, device=v.device) // k
        cj = torch.arange(W, device=v.device) // k
        lead = v.shape[:-2]
        tmp = torch.zeros(*lead, (H + ph) // k, W, dtype=v.dtype, device=v.device).index_add(v.dim() - 2, ci, contrib)
        return torch.zeros(*lead, (H + ph) // k, (W + pw) // k, dtype=v.dtype, device=v.device).index_add(
            v.dim() - 1, cj, tmp
        )


class PointObs(Operator):
    """Sparse point observations: ``y[b, m] = sum_k weight[b, m, k] * x[b].flatten()[index[b, m, k]]``.

    ``index``/``weight`` are ``[B or 1, M, K]`` (flat indices into ``C*H*W``), ``valid``
    ``[B or 1, M]`` marks real observations (False = padding or missing value).
    """

    name = "radiosondes"

    def __init__(
        self, index: torch.Tensor, weight: torch.Tensor, valid: torch.Tensor, field_shape: tuple[int, int, int]
    ):
        if index.shape != weight.shape or index.shape[:2] != valid.shape:
            raise ValueError(
                f"index {tuple(index.shape)}, weight {tuple(weight.shape)}, valid {tuple(valid.shape)} do not agree"
            )
        self.index = index.long()
        self.weight = weight
        self.valid = valid.bool()
        self.field_shape = tuple(field_shape)

    @property
    def mask(self) -> torch.Tensor:
        return self.valid

    @property
    def n_obs(self) -> int:
        return int(self.valid.sum())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        flat = x.reshape(B, -1)
        idx, w = self.index, self.weight.to(x.dtype)
        if idx.shape[0] == 1 and B != 1:
            idx, w = idx.expand(B, -1, -1), w.expand(B, -1, -1)
        elif B == 1 and idx.shape[0] != 1:
            B = idx.shape[0]
            flat = flat.expand(B, -1)
        elif idx.shape[0] != B:
            raise ValueError(f"operator batch {idx.shape[0]} does not match field batch {B}")
        M, K = idx.shape[1:]
        vals = torch.gather(flat, 1, idx.reshape(B, M * K)).reshape(B, M, K)
        return (vals * w).sum(-1)

    def forward_squared(self, v: torch.Tensor) -> torch.Tensor:
        return PointObs(self.index, self.weight**2, self.valid, self.field_shape).forward(v)

    def repeat_interleave(self, n: int) -> "PointObs":
        if self.index.shape[0] == 1:
            return self
        return PointObs(
            self.index.repeat_interleave(n, 0),
            self.weight.repeat_interleave(n, 0),
            self.valid.repeat_interleave(n, 0),
            self.field_shape,
        )

    def to(self, device, dtype=None) -> "PointObs":
        return PointObs(
            self.index.to(device),
            self.weight.to(device=device, dtype=dtype or self.weight.dtype),
            self.valid.to(device),
            self.field_shape,
        )

    @staticmethod
    def stack(ops: Sequence["PointObs"]) -> "PointObs":
        """One operator whose batch element ``b`` is ``ops[b]`` (padded to the largest M)."""
        if not ops:
            raise ValueError("nothing to stack")
        shape = ops[0].field_shape
        M = max(1, max(op.index.shape[1] for op in ops))
        K = max(op.index.shape[2] for op in ops)
        B = len(ops)
        index = torch.zeros(B, M, K, dtype=torch.long)
        weight = torch.zeros(B, M, K, dtype=ops[0].weight.dtype)
        valid = torch.zeros(B, M, dtype=torch.bool)
        for b, op in enumerate(ops):
            if op.index.shape[0] != 1:
                raise ValueError("stack expects single-element operators")
            m, k = op.index.shape[1:]
            index[b, :m, :k] = op.index[0]
            weight[b, :m, :k] = op.weight[0]
            valid[b, :m] = op.valid[0]
        return PointObs(index, weight, valid, shape)


# ---------------------------------------------------------------------------------------
# Observation = operator + data + noise model.


@dataclass
class Observation:
    """One conditioning modality: ``y ~ N(A x, sigma_y^2 + gamma (s sigma_t)^2)`` (SDA).

    ``y``: observations in physical units, ``[B or 1, ...]`` (masked entries ignored);
    ``sigma_y``: physical noise std, broadcastable to ``y``; ``gamma``: the SDA
    variance inflation; ``zeta``: the DPS step size (used by ``guidance="dps"``).
    """

    name: str
    operator: Operator
    y: torch.Tensor
    sigma_y: torch.Tensor
    gamma: float = 0.0
    zeta: float = 1.0

    def repeat_interleave(self, n: int) -> "Observation":
        rep = lambda t: t if t.shape[0] == 1 else t.repeat_interleave(n, 0)  # noqa: E731
        sy = self.sigma_y if self.sigma_y.dim() == 0 else rep(self.sigma_y)
        return Observation(self.name, self.operator.repeat_interleave(n), rep(self.y), sy, self.gamma, self.zeta)

    def to(self, device, dtype=torch.float32) -> "Observation":
        return Observation(
            self.name,
            self.operator.to(device, dtype),
            self.y.to(device, dtype),
            self.sigma_y.to(device, dtype),
            self.gamma,
            self.zeta,
        )

    def mask(self) -> torch.Tensor:
        m = self.operator.mask
        valid = torch.isfinite(self.y)
        return valid if m is None else (valid & m)
