"""Baselines beside the posterior: interpolation of the coarse field, and the nearest radiosonde.

- :func:`upsample`: bicubic / bilinear interpolation of the block-averaged coarse field
  back to the fine grid (cell-centred, ``align_corners=False``, so coarse cell ``I`` sits
  at the mean of its fine cells); a grid padded for a non-dividing factor is cropped back.
- :func:`nearest_station_field`: every grid cell takes the value of the nearest station
  (great-circle distance) that observed that variable at that level and time.
- :func:`nearest_station_at`: the same prediction at given (withheld) observation points:
  the nearest other station with a value of the same variable at the same pressure.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["upsample", "haversine", "nearest_station_field", "nearest_station_at"]


def upsample(coarse: np.ndarray, factor: int, shape: tuple[int, int], mode: str = "bicubic") -> np.ndarray:
    """Interpolate ``coarse[..., h, w]`` by ``factor`` (``mode``: bicubic, bilinear) and crop to ``shape``."""
    c = torch.as_tensor(np.asarray(coarse, np.float32))
    lead = c.shape[:-2]
    c = c.reshape(-1, 1, *c.shape[-2:])
    up = torch.nn.functional.interpolate(c, scale_factor=factor, mode=mode, align_corners=False)
    H, W = shape
    return up[..., :H, :W].reshape(*lead, H, W).numpy()


def haversine(lat1, lon1, lat2, lon2) -> np.ndarray:
    """Great-circle distance in km (broadcasting)."""
    p1, p2 = np.deg2rad(lat1), np.deg2rad(lat2)
    dphi = p2 - p1
    dl = np.deg2rad(np.asarray(lon2) - np.asarray(lon1))
    a = np.sin(dphi / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * 6371.0 * np.arcsin(np.sqrt(np.clip(a, 0, 1)))


def nearest_station_field(table, times: np.ndarray, channels, lat: np.ndarray, lon: np.ndarray, tol_pa: float) -> np.ndarray:
    """``[T, C, H, W]`` field of the nearest reporting station's value (NaN where none reported).

    ``table``: an :class:`~scorebridge.sr.observations.ObsTable` of the conditioning stations.
    Single-level channels are left NaN (radiosondes do not observe them).
    """
    T, C, H, W = len(times), len(channels), len(lat), len(lon)
    out = np.full((T, C, H, W), np.nan, np.float32)
    glat, glon = np.meshgrid(lat, lon, indexing="ij")
    for ti, t in enumerate(np.asarray(times).astype("datetime64[ns]")):
        at = table.time == t
        for c, (v, lev) in enumerate(channels):
            if lev is None:
                continue
            sel = at & (table.variable == v) & (np.abs(table.pressure - lev * 100.0) <= tol_pa) & np.isfinite(table.value)
            if not sel.any():
                continue
            d = haversine(glat[..., None], glon[..., None], table.latitude[sel][None, None], table.longitude[sel][None, None])
            out[ti, c] = table.value[sel][np.argmin(d, axis=-1)]
    return out


def nearest_station_at(target, source, tol_pa: float) -> np.ndarray:
    """For each row of ``target`` (withheld observations), the value of the nearest station in
    ``source`` with a finite value of the same variable at the same time and pressure (NaN if none)."""
    pred = np.full(len(target.value), np.nan)
    for i in range(len(target.value)):
        sel = (source.time == target.time[i]) & (source.variable == target.variable[i]) & (np.abs(source.pressure - target.pressure[i]) <= tol_pa) & np.isfinite(source.value) & (source.station != target.station[i])
        if sel.any():
            d = haversine(target.latitude[i], target.longitude[i], source.latitude[sel], source.longitude[sel])
            pred[i] = source.value[sel][np.argmin(d)]
    return pred
