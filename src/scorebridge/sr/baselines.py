"""Baselines beside the posterior: interpolation of the coarse field, and the nearest radiosonde.

- :func:`upsample`: bicubic / bilinear interpolation of the block-averaged coarse field
  back to the fine grid (cell-centred, ``align_corners=False``, so coarse cell ``I`` sits
  at the mean of its fine cells); a grid padded for a non-dividing factor is cropped back.
  Boundaries are handled as the U-Net handles them: a periodic axis (``periodic``) wraps
  around (the coarse field is padded circularly before interpolating), the other axes
  replicate their edge cells (torch's clamped border).
- :func:`nearest_station_field`: every grid cell takes the value of the nearest station
  (great-circle distance) that observed that variable at that level and time.
- :func:`nearest_station_at`: the same prediction at given (withheld) observation points:
  the nearest other station with a value of the same variable at the same pressure.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["upsample", "haversine", "nearest_station_field", "nearest_station_at"]


def upsample(
    coarse: np.ndarray,
    factor: int,
    shape: tuple[int, int],
    mode: str = "bicubic",
    periodic: tuple[bool, bool] = (False, False),
) -> np.ndarray:
    """Interpolate ``coarse[..., h, w]`` by ``factor`` (``mode``: bicubic, bilinear) and crop to
    ``shape``; ``periodic`` = (latitude, longitude) axes that wrap around."""
    c = torch.as_tensor(np.asarray(coarse, np.float32))
    lead = c.shape[:-2]
    c = c.reshape(-1, 1, *c.shape[-2:])
    pad = 2  # the bicubic kernel reaches two coarse cells
    ph, pw = (pad if periodic[0] else 0), (pad if periodic[1] else 0)
    if ph or pw:
        c = torch.nn.functional.pad(c, (pw, pw, ph, ph), mode="circular")
    up = torch.nn.functional.interpolate(c, scale_factor=factor, mode=mode, align_corners=False)
    H, W = shape
    i0, j0 = ph * factor, pw * factor
    return up[..., i0 : i0 + H, j0 : j0 + W].reshape(*lead, H, W).numpy()


def haversine(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Great-circle distance in km (broadcasting)."""
    p1, p2 = np.deg2rad(lat1), np.deg2rad(lat2)
    dphi = p2 - p1
    dl = np.deg2rad(np.asarray(lon2) - np.asarray(lon1))
    a = np.sin(dphi / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * 6371.0 * np.arcsin(np.sqrt(np.clip(a, 0, 1)))


def nearest_station_field(
    table, times: np.ndarray, channels, lat: np.ndarray, lon: np.ndarray, tol_pa: float
) -> np.ndarray:
    """``[T, C, H, W]`` field of the nearest reporting station's value (NaN where none reported).

    ``table``: an :class:`~scorebridge.sr.observations.ObsTable` of the conditioning stations.
    Single-level channels take the soundings' surface records (variables t2m, u10, v10,
    any pressure); NaN where no station reported.
    """
    T, C, H, W = len(times), len(channels), len(lat), len(lon)
    out = np.full((T, C, H, W), np.nan, np.float32)
    glat, glon = np.meshgrid(lat, lon, indexing="ij")
    for ti, t in enumerate(np.asarray(times).astype("datetime64[ns]")):
        at = table.time == t
        for c, (v, lev) in enumerate(channels):
            level = True if lev is None else (np.abs(table.pressure - lev * 100.0) <= tol_pa)
            sel = at & (table.variable == v) & level & np.isfinite(table.value)
            if not sel.any():
                continue
            d = haversine(
                glat[..., None], glon[..., None], table.latitude[sel][None, None], table.longitude[sel][None, None]
            )
            out[ti, c] = table.value[sel][np.argmin(d, axis=-1)]
    return out


def nearest_station_at(target, source, tol_pa: float) -> np.ndarray:
    """For each row of ``target`` (withheld observations), the value of the nearest station in
    ``source`` with a finite value of the same variable at the same time and pressure (NaN if none;
    surface records, pressure NaN, match each other)."""
    pred = np.full(len(target.value), np.nan)
    for i in range(len(target.value)):
        p = target.pressure[i]
        level = np.isnan(source.pressure) if np.isnan(p) else (np.abs(source.pressure - p) <= tol_pa)
        sel = (
            (source.time == target.time[i])
            & (source.variable == target.variable[i])
            & level
            & np.isfinite(source.value)
            & (source.station != target.station[i])
        )
        if sel.any():
            d = haversine(target.latitude[i], target.longitude[i], source.latitude[sel], source.longitude[sel])
            pred[i] = source.value[sel][np.argmin(d)]
    return pred
