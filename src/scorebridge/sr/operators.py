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
  per observation. Each batch element may have its own observation set (padded to
  the largest, with a mask).

The :class:`Observation` bundles an operator with its data ``y`` (physical units),
its noise ``sigma_y`` (physical units, broadcastable to ``y``) and the SDA
inflation ``gamma`` (``Var = sigma_y^2 + gamma * (a * sigma_t)^2``, where
``a = sqrt((A o A) std^2)`` is the std of the operator applied to white noise of unit
normalised variance, see :meth:`Operator.forward_squared`).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from ..errors import ConfigError, InputError

__all__ = [
    "Operator",
    "CoarseGrain",
    "PointObs",
    "Observation",
    "coarse_grain",
    "coarse_coords",
    "build_point_obs",
    "PointObsReport",
]

log = logging.getLogger(__name__)

Channel = tuple[str, "float | None"]


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
        x = torch.nn.functional.pad(x.reshape(-1, 1, H, W), (0, pw, 0, ph), mode="replicate").reshape(*lead, H + ph, W + pw)
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

    def __init__(self, factor: int, shape: tuple[int, int], pad: str = "edge", channels: Sequence[int] | None = None):
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
        return torch.zeros(*lead, (H + ph) // k, (W + pw) // k, dtype=v.dtype, device=v.device).index_add(v.dim() - 1, cj, tmp)


class PointObs(Operator):
    """Sparse point observations: ``y[b, m] = sum_k weight[b, m, k] * x[b].flatten()[index[b, m, k]]``.

    ``index``/``weight`` are ``[B or 1, M, K]`` (flat indices into ``C*H*W``), ``valid``
    ``[B or 1, M]`` marks real observations (False = padding or missing value).
    """

    name = "radiosondes"

    def __init__(self, index: torch.Tensor, weight: torch.Tensor, valid: torch.Tensor, field_shape: tuple[int, int, int]):
        if index.shape != weight.shape or index.shape[:2] != valid.shape:
            raise ValueError(f"index {tuple(index.shape)}, weight {tuple(weight.shape)}, valid {tuple(valid.shape)} do not agree")
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
        return PointObs(self.index.repeat_interleave(n, 0), self.weight.repeat_interleave(n, 0), self.valid.repeat_interleave(n, 0), self.field_shape)

    def to(self, device, dtype=None) -> "PointObs":
        return PointObs(self.index.to(device), self.weight.to(device=device, dtype=dtype or self.weight.dtype), self.valid.to(device), self.field_shape)

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


@dataclass
class PointObsReport:
    """What happened to each observation when the operator was built."""

    n_total: int = 0
    n_used: int = 0
    n_missing: int = 0  # NaN value
    n_outside_horizontal: int = 0
    n_outside_vertical: int = 0
    n_unobservable: int = 0  # variable not among the prior's channels
    outside_stations: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


def _bracket(coord: np.ndarray, q: np.ndarray, periodic: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices ``i0, i1`` and weight ``f`` of ``i1`` with ``q = (1-f) c[i0] + f c[i1]``; i0 = -1 outside.

    ``coord`` ascending. ``periodic`` (longitude of a global grid): wraps between the
    last and the first point (+360).
    """
    n = len(coord)
    q = np.asarray(q, dtype=np.float64)
    i0 = np.full(q.shape, -1, dtype=np.int64)
    i1 = np.zeros(q.shape, dtype=np.int64)
    f = np.zeros(q.shape, dtype=np.float64)
    if n == 1:
        hit = np.isclose(q, coord[0], atol=1e-9)
        i0[hit] = 0
        return i0, i1, f
    j = np.searchsorted(coord, q, side="right") - 1
    inside = (q >= coord[0]) & (q <= coord[-1])
    jj = np.clip(j, 0, n - 2)
    lo, hi = coord[jj], coord[jj + 1]
    fi = np.where(hi > lo, (q - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0)
    i0[inside], i1[inside], f[inside] = jj[inside], jj[inside] + 1, np.clip(fi[inside], 0.0, 1.0)
    if periodic:
        gap = (q > coord[-1]) | (q < coord[0])
        qq = np.where(q < coord[0], q + 360.0, q)
        span = coord[0] + 360.0 - coord[-1]
        fw = (qq - coord[-1]) / span
        ok = gap & (fw >= 0) & (fw <= 1)
        i0[ok], i1[ok], f[ok] = n - 1, 0, fw[ok]
    return i0, i1, f


def _wrap_longitude(lon: np.ndarray, grid_lon: np.ndarray) -> np.ndarray:
    """Observation longitudes in the grid's convention (-180..180, or 0..360 when the grid uses it)."""
    lon = np.asarray(lon, dtype=np.float64)
    if grid_lon.max() > 180.0:
        return np.mod(lon, 360.0)
    return np.where(lon > 180.0, lon - 360.0, lon)


def _is_global(grid_lon: np.ndarray) -> bool:
    if len(grid_lon) < 2:
        return False
    d = np.median(np.diff(grid_lon))
    return abs(grid_lon[-1] - grid_lon[0] + d - 360.0) < 0.5 * d


def build_point_obs(
    channels: Sequence[Channel],
    grid_lat: np.ndarray,
    grid_lon: np.ndarray,
    latitude: np.ndarray,
    longitude: np.ndarray,
    pressure_pa: np.ndarray,
    variable: Sequence[str],
    values: np.ndarray,
    station: Sequence[str] | None = None,
    outside: str = "drop",
    source: object = None,
) -> tuple[PointObs, np.ndarray, np.ndarray, PointObsReport]:
    """Build a single-element :class:`PointObs` from a flat list of observations.

    Each observation ``m`` is the value ``values[m]`` of ``variable[m]`` at
    (``latitude``, ``longitude``, ``pressure_pa``). Observations whose value is NaN
    are masked; those of a variable that is not a channel of the prior are skipped;
    those outside the grid horizontally or outside the model levels' pressure range
    (no extrapolation) are dropped with a warning (``outside="drop"``) or raise an
    :class:`InputError` naming the stations (``outside="error"``). For a
    single-level variable (one level, or ``level is None``) only the horizontal
    interpolation applies (``None``) or the pressure must equal the level.

    Returns ``(operator, y, kept, report)``: ``y[1, M]`` the used values (float32),
    ``kept`` the indices of the input observations that made it in.
    """
    grid_lat = np.asarray(grid_lat, dtype=np.float64)
    grid_lon = np.asarray(grid_lon, dtype=np.float64)
    if np.any(np.diff(grid_lat) <= 0) or np.any(np.diff(grid_lon) <= 0):
        raise InputError("grid latitude and longitude must be strictly ascending", source)
    H, W, C = len(grid_lat), len(grid_lon), len(channels)
    lat = np.asarray(latitude, dtype=np.float64)
    lon = _wrap_longitude(np.asarray(longitude, dtype=np.float64), grid_lon)
    p = np.asarray(pressure_pa, dtype=np.float64) / 100.0  # hPa
    vals = np.asarray(values, dtype=np.float64)
    variable = np.array([str(x) for x in np.asarray(variable, dtype=object)])
    n = len(vals)
    station = np.array([str(x) for x in np.asarray(station if station is not None else [""] * n, dtype=object)])
    report = PointObsReport(n_total=n)

    # Channels per variable, by ascending log-pressure.
    by_var: dict[str, list[tuple[float | None, int]]] = {}
    for c, (v, lev) in enumerate(channels):
        by_var.setdefault(v, []).append((None if lev is None else float(lev), c))

    ii0, ii1, fi = _bracket(grid_lat, lat)
    jj0, jj1, fj = _bracket(grid_lon, lon, periodic=_is_global(grid_lon))
    finite_pos = np.isfinite(lat) & np.isfinite(lon)
    horiz_ok = (ii0 >= 0) & (jj0 >= 0) & finite_pos

    rows_idx, rows_w, kept = [], [], []
    outside_h, outside_v = [], []
    for m in range(n):
        v = variable[m]
        if v not in by_var:
            report.n_unobservable += 1
            continue
        if not np.isfinite(vals[m]):
            report.n_missing += 1
            continue
        if not horiz_ok[m]:
            outside_h.append(m)
            continue
        levels = by_var[v]
        if len(levels) == 1 and levels[0][0] is None:
            vert = [(levels[0][1], 1.0)]
        else:
            if not np.isfinite(p[m]) or any(lev is None for lev, _ in levels):
                outside_v.append(m)
                continue
            order = sorted(levels, key=lambda t: np.log(t[0]))
            logl = np.log(np.array([t[0] for t in order]))
            k0, k1, fk = _bracket(logl, np.array([np.log(p[m])]))
            if k0[0] < 0:
                outside_v.append(m)
                continue
            vert = [(order[k0[0]][1], 1.0 - fk[0])] + ([(order[k1[0]][1], fk[0])] if fk[0] > 0 else [])
        horiz = [
            (ii0[m], jj0[m], (1 - fi[m]) * (1 - fj[m])),
            (ii0[m], jj1[m], (1 - fi[m]) * fj[m]),
            (ii1[m], jj0[m], fi[m] * (1 - fj[m])),
            (ii1[m], jj1[m], fi[m] * fj[m]),
        ]
        idx, w = [], []
        for c, wv in vert:
            for i, j, wh in horiz:
                if wv * wh > 0:
                    idx.append((c * H + i) * W + j)
                    w.append(wv * wh)
        rows_idx.append(idx)
        rows_w.append(w)
        kept.append(m)

    report.n_outside_horizontal = len(outside_h)
    report.n_outside_vertical = len(outside_v)
    if outside_h:
        names = sorted({str(x) for x in station[outside_h]})
        report.outside_stations = names
        msg = (
            f"{len(outside_h)} observation(s) from station(s) {names[:10]}{'...' if len(names) > 10 else ''} lie outside the "
            f"grid (lat {grid_lat[0]:.2f}..{grid_lat[-1]:.2f}, lon {grid_lon[0]:.2f}..{grid_lon[-1]:.2f})"
        )
        if outside == "error":
            raise InputError(msg + "; set sample.radiosondes.outside: drop to drop them", source)
        warnings.warn(msg + "; dropped", stacklevel=2)
    if outside_v:
        msg = f"{len(outside_v)} observation(s) lie outside the model levels' pressure range (no extrapolation in log-pressure)"
        if outside == "error":
            raise InputError(msg, source)
        log.info("%s; dropped", msg)
    report.n_used = len(kept)

    M = len(kept)
    K = max([len(r) for r in rows_idx], default=1)
    index = torch.zeros(1, M, K, dtype=torch.long)
    weight = torch.zeros(1, M, K, dtype=torch.float64)
    for r, (idx, w) in enumerate(zip(rows_idx, rows_w)):
        index[0, r, : len(idx)] = torch.tensor(idx)
        weight[0, r, : len(w)] = torch.tensor(w)
    op = PointObs(index, weight, torch.ones(1, M, dtype=torch.bool), (C, H, W))
    y = torch.tensor(vals[kept] if kept else np.zeros(0), dtype=torch.float32).reshape(1, M)
    return op, y, np.asarray(kept, dtype=np.int64), report


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
        return Observation(self.name, self.operator.to(device, dtype), self.y.to(device, dtype), self.sigma_y.to(device, dtype), self.gamma, self.zeta)

    def mask(self) -> torch.Tensor:
        m = self.operator.mask
        valid = torch.isfinite(self.y)
        return valid if m is None else (valid & m)
