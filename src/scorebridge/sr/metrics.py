"""Scores of super-resolved fields and ensembles (numpy; fields ``[..., H, W]``, latitude on H).

Conventions (WeatherBench-style):

- latitude weights ``w_i = cos(lat_i) / mean_i cos(lat_i)`` (mean 1 over the grid rows);
- ``rmse = sqrt( sum_{t,i,j} w_i (p - o)^2 / sum w )`` over time and space (one number per
  channel), likewise ``mae`` and ``bias = mean(p - o)`` (weighted);
- ensemble ``spread = sqrt( weighted mean of the unbiased member variance )``;
- spread-skill ratio ``ssr = sqrt((N + 1) / N) * spread / rmse(ensemble mean)``, the
  finite-ensemble correction of Fortin et al. (2014), so that a perfectly reliable
  ensemble of N members has ssr = 1 in expectation;
- fair CRPS (Ferro 2014): ``mean_i |x_i - o| - sum_{i,j} |x_i - x_j| / (2 N (N - 1))``;
- rank histogram: rank of the truth among the N members (ties broken at random), N + 1 bins;
- radially averaged power spectrum: ``|FFT2(f)|^2 / (H W)^2`` summed over rings of integer
  wavenumber ``|k| = round(sqrt(kx^2 + ky^2))`` (cycles per domain), averaged over fields;
  along a NON-periodic axis the field is first detrended (least-squares line) and
  Hann-windowed (power divided by the window's mean square), so the jump between the two
  edges does not leak power into every wavenumber;
- pooled scores over channels in normalised units (each channel divided by its
  climatological std): ``pooled_rmse = sqrt(mean_c rmse_c^2 / std_c^2)``, the pooled
  spread likewise, the pooled spread-skill ratio from those two, and the pooled RMSE ratio
  of two predictions as the ratio of their pooled RMSEs (not a mean of per-channel ratios).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "lat_weights",
    "rmse",
    "mae",
    "bias",
    "spread",
    "spread_skill",
    "fair_crps",
    "rank_histogram",
    "power_spectrum",
    "point_rmse",
    "pooled",
    "pooled_spread_skill",
]


def lat_weights(lat: np.ndarray) -> np.ndarray:
    """``cos(lat) / mean(cos(lat))``, shape ``[H]`` (mean 1)."""
    w = np.cos(np.deg2rad(np.asarray(lat, dtype=np.float64)))
    w = np.clip(w, 0.0, None)
    if w.sum() <= 0:
        return np.ones_like(w)
    return w / w.mean()


def _wmean(a: np.ndarray, lat: np.ndarray | None, axes: tuple[int, ...]) -> np.ndarray:
    """Latitude-weighted mean of ``a[..., H, W]`` over ``axes`` (which include -2 and -1), NaN-aware."""
    a = np.asarray(a, dtype=np.float64)
    w = np.ones(a.shape[-2]) if lat is None else lat_weights(lat)
    W = np.broadcast_to(w[:, None], a.shape[-2:])
    W = np.broadcast_to(W, a.shape).copy()
    W[~np.isfinite(a)] = 0.0
    num = np.nansum(np.where(np.isfinite(a), a, 0.0) * W, axis=axes)
    den = W.sum(axis=axes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den


def _axes_except_channel(ndim: int, channel_axis: int | None) -> tuple[int, ...]:
    ax = list(range(ndim))
    if channel_axis is not None:
        ax.remove(channel_axis % ndim)
    return tuple(ax)


def rmse(
    pred: np.ndarray, truth: np.ndarray, lat: np.ndarray | None = None, channel_axis: int | None = -3
) -> np.ndarray:
    """Latitude-weighted RMSE over all axes but ``channel_axis`` (``[T, C, H, W]`` -> ``[C]``)."""
    d = np.asarray(pred, np.float64) - np.asarray(truth, np.float64)
    return np.sqrt(_wmean(d**2, lat, _axes_except_channel(d.ndim, channel_axis)))


def mae(
    pred: np.ndarray, truth: np.ndarray, lat: np.ndarray | None = None, channel_axis: int | None = -3
) -> np.ndarray:
    d = np.asarray(pred, np.float64) - np.asarray(truth, np.float64)
    return _wmean(np.abs(d), lat, _axes_except_channel(d.ndim, channel_axis))


def bias(
    pred: np.ndarray, truth: np.ndarray, lat: np.ndarray | None = None, channel_axis: int | None = -3
) -> np.ndarray:
    d = np.asarray(pred, np.float64) - np.asarray(truth, np.float64)
    return _wmean(d, lat, _axes_except_channel(d.ndim, channel_axis))


def spread(
    ens: np.ndarray, lat: np.ndarray | None = None, member_axis: int = 1, channel_axis: int | None = -3
) -> np.ndarray:
    """``sqrt(weighted mean of the unbiased variance over members)``; ``ens[T, N, C, H, W]`` -> ``[C]``."""
    var = np.var(np.asarray(ens, np.float64), axis=member_axis, ddof=1)
    return np.sqrt(_wmean(var, lat, _axes_except_channel(var.ndim, channel_axis)))


def spread_skill(
    ens: np.ndarray,
    truth: np.ndarray,
    lat: np.ndarray | None = None,
    member_axis: int = 1,
    channel_axis: int | None = -3,
) -> np.ndarray:
    """``sqrt((N+1)/N) * spread / rmse(ensemble mean)`` per channel (``ens[T, N, C, H, W]``, ``truth[T, C, H, W]``)."""
    ens = np.asarray(ens, np.float64)
    n = ens.shape[member_axis]
    sk = rmse(ens.mean(axis=member_axis), truth, lat, channel_axis)
    sp = spread(ens, lat, member_axis, channel_axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt((n + 1) / n) * sp / sk


def _fair_crps_points(ens: np.ndarray, truth: np.ndarray, member_axis: int) -> np.ndarray:
    """Pointwise fair CRPS (members moved to the last axis, sorted: sum|xi-xj| = 2 sum_i (2i-N+1) x_(i))."""
    x = np.moveaxis(np.asarray(ens, np.float64), member_axis, -1)
    n = x.shape[-1]
    if n < 2:
        raise ValueError("the fair CRPS needs at least 2 members")
    skill = np.abs(x - np.asarray(truth, np.float64)[..., None]).mean(-1)
    xs = np.sort(x, axis=-1)
    coef = 2 * np.arange(n) - n + 1
    pair = 2.0 * (xs * coef).sum(-1)  # sum over ordered pairs i != j of |xi - xj|
    return skill - pair / (2.0 * n * (n - 1))


def fair_crps(
    ens: np.ndarray,
    truth: np.ndarray,
    lat: np.ndarray | None = None,
    member_axis: int = 1,
    channel_axis: int | None = -3,
) -> np.ndarray:
    """Latitude-weighted mean fair CRPS per channel (``ens[T, N, C, H, W]`` -> ``[C]``)."""
    c = _fair_crps_points(ens, truth, member_axis)
    return _wmean(c, lat, _axes_except_channel(c.ndim, channel_axis))


def rank_histogram(
    ens: np.ndarray, truth: np.ndarray, member_axis: int = 1, channel_axis: int | None = -3, seed: int = 0
) -> np.ndarray:
    """Counts of the truth's rank among the members, ``[C, N + 1]`` (``[N + 1]`` if no channel axis).

    Ties (truth equal to members) are broken uniformly at random (seeded).
    """
    x = np.moveaxis(np.asarray(ens, np.float64), member_axis, -1)
    t = np.asarray(truth, np.float64)[..., None]
    n = x.shape[-1]
    below = (x < t).sum(-1)
    ties = (x == t).sum(-1)
    rng = np.random.default_rng(seed)
    rank = below + np.floor(rng.random(below.shape) * (ties + 1)).astype(np.int64)
    ok = np.isfinite(t[..., 0]) & np.isfinite(x).all(-1)
    if channel_axis is None:
        return np.bincount(rank[ok].ravel(), minlength=n + 1)
    ca = channel_axis % t[..., 0].ndim
    rank = np.moveaxis(rank, ca, 0)
    ok = np.moveaxis(ok, ca, 0)
    return np.stack([np.bincount(rank[c][ok[c]].ravel(), minlength=n + 1) for c in range(rank.shape[0])])


def _taper(f: np.ndarray, axis: int) -> tuple[np.ndarray, float]:
    """``f`` detrended along ``axis`` (the least-squares slope of each line along that axis removed;
    a pattern constant along it is kept) and multiplied by a Hann window there; and the
    window's mean square (the power it removes)."""
    n = f.shape[axis]
    if n < 3:
        return f, 1.0
    s = np.linspace(-1.0, 1.0, n)
    shape = [1] * f.ndim
    shape[axis] = n
    s = s.reshape(shape)
    slope = (f * s).sum(axis=axis, keepdims=True) / (s**2).sum()  # s has mean 0
    f = f - slope * s
    f = f - f.mean(axis=(-2, -1), keepdims=True)
    w = np.hanning(n)
    return f * w.reshape(shape), float(np.mean(w**2))


def power_spectrum(fields: np.ndarray, periodic: tuple[bool, bool] = (True, True)) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged power spectrum of ``fields[..., H, W]`` (averaged over leading axes).

    Returns ``(k, P)`` for integer wavenumbers ``k = 1 .. min(H, W) // 2`` (cycles per
    domain): ``P(k) = mean over fields of sum_{|kvec| rounds to k} |FFT2(f)|^2 / (H W)^2``.
    The field mean (k = 0) is left out. A sine of ``k0`` cycles across the domain
    peaks at ``k0``; ``sum_k P(k)`` ~ the field variance (Parseval, up to the corners).
    ``periodic`` = (latitude, longitude): along an axis that is not periodic the fields are
    detrended and Hann-windowed first (the power then divided by the window's mean square,
    so a stationary field keeps its variance).
    """
    f = np.asarray(fields, np.float64)
    H, W = f.shape[-2:]
    f = f.reshape(-1, H, W)
    f = f - f.mean(axis=(-2, -1), keepdims=True)
    norm = 1.0
    for axis, wraps in ((-2, periodic[0]), (-1, periodic[1])):
        if not wraps:
            f, ms = _taper(f, axis)
            norm *= ms
    F = np.fft.fft2(f)
    p = (np.abs(F) ** 2).mean(0) / (H * W) ** 2 / norm
    ky = np.fft.fftfreq(H) * H
    kx = np.fft.fftfreq(W) * W
    kr = np.rint(np.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)).astype(np.int64)
    kmax = min(H, W) // 2
    k = np.arange(1, kmax + 1)
    P = np.bincount(kr.ravel(), weights=p.ravel(), minlength=kmax + 1)[1 : kmax + 1]
    return k, P


def point_rmse(pred: np.ndarray, obs: np.ndarray) -> float:
    """RMSE over the finite pairs of two flat arrays (NaN if none)."""
    pred, obs = np.asarray(pred, np.float64), np.asarray(obs, np.float64)
    ok = np.isfinite(pred) & np.isfinite(obs)
    return float(np.sqrt(np.mean((pred[ok] - obs[ok]) ** 2))) if ok.any() else float("nan")


def pooled(per_channel: np.ndarray, std: np.ndarray) -> float:
    """``sqrt(mean_c (x_c / std_c)^2)``: RMSE-like scores ``x[C]`` (rmse, spread) pooled over
    channels in normalised units (``std[C]``: each channel's climatological std)."""
    x = np.asarray(per_channel, np.float64) / np.asarray(std, np.float64)
    return float(np.sqrt(np.mean(x**2)))


def pooled_spread_skill(
    ens: np.ndarray, truth: np.ndarray, std: np.ndarray, lat: np.ndarray | None = None, member_axis: int = 1
) -> float:
    """Spread-skill ratio of all channels together in normalised units:
    ``sqrt((N+1)/N) * pooled(spread) / pooled(rmse of the ensemble mean)``."""
    ens = np.asarray(ens, np.float64)
    n = ens.shape[member_axis]
    sk = pooled(rmse(ens.mean(axis=member_axis), truth, lat), std)
    sp = pooled(spread(ens, lat, member_axis), std)
    return float(np.sqrt((n + 1) / n) * sp / sk) if sk > 0 else float("nan")
