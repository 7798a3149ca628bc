"""Conditioning and calibration: observation sets of ERA5 times, their ensembles, and the
choice of the SDA ``gamma`` and the spread inflation on calibration times.

A :class:`Conditioner` builds the truth and the observations of given time indices from
its `sr.<name>.sample` options; each observation owns the ``gamma`` of its modality, so
calibrating replaces ``gamma`` in the options (:meth:`Conditioner.with_gamma`) rather
than passing an override down the calls.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..errors import ConfigError, InputError
from ..progress import progress
from . import metrics
from .observations import ObsTable, coarse_observation, radiosonde_observation
from .operators import Observation
from .options import SampleOptions
from .sampler import Cost, posterior_sample

log = logging.getLogger(__name__)

__all__ = ["Conditioner", "sample_times", "inflate", "calibrate"]


@dataclass(frozen=True)
class Conditioner:
    """Builds the truth and the observation sets of given ERA5 time indices."""

    ds: object
    channels: list
    mean: np.ndarray
    std: np.ndarray
    options: SampleOptions  # the experiment's `sample` options
    table: ObsTable | None = None  # conditioning stations only

    @property
    def lat(self) -> np.ndarray:
        return np.asarray(self.ds["latitude"].values, dtype=np.float64)

    @property
    def lon(self) -> np.ndarray:
        return np.asarray(self.ds["longitude"].values, dtype=np.float64)

    def with_gamma(self, gamma: float | None) -> "Conditioner":
        """This conditioner with every modality's SDA ``gamma`` replaced (None: unchanged)."""
        return dataclasses.replace(self, options=self.options.with_gamma(gamma))

    def truth(self, idx: np.ndarray) -> np.ndarray:
        """Physical fields ``[T, C, H, W]`` (member 0 of an ensemble store)."""
        from .data import load_fields

        return load_fields(self.ds, self.channels, idx, member=0 if "number" in self.ds.dims else None, check_nan=False)

    def observations(self, idx: np.ndarray, truth: np.ndarray, conditioning: Sequence[str]) -> tuple[list[Observation], dict]:
        obs: list[Observation] = []
        info: dict = {}
        if "coarse" in conditioning:
            obs.append(coarse_observation(torch.as_tensor(truth), self.channels, self.std, self.options.coarse))
        if "radiosondes" in conditioning:
            if self.table is None:
                raise ConfigError("sr.sample.conditioning", "'radiosondes' needs collocated observations (set the experiment's `igra` and pass --obs)")
            times = np.asarray(self.ds["time"].values)[idx]
            ob, info = radiosonde_observation(self.table, times, self.channels, self.lat, self.lon, self.std, self.options.radiosondes)
            obs.append(ob)
        return obs, info


def _sampler_settings(opts: SampleOptions) -> dict:
    return {
        "guidance": opts.guidance,
        "churn": float(opts.churn),
        "s_tmin": float(opts.s_tmin),
        "s_tmax": float(opts.s_tmax) if opts.s_tmax is not None else float("inf"),
        "s_noise": float(opts.s_noise),
        "rho": float(opts.rho),
    }


def sample_times(prior, cond: Conditioner, idx: np.ndarray, truth: np.ndarray, conditioning: Sequence[str], members: int, *, seed: int, device) -> tuple[np.ndarray, Cost, dict]:
    """Ensembles ``[T, N, C, H, W]`` (physical) for ERA5 times ``idx``, in chunks of ``batch_size``
    fields (whole ensembles of several times, or parts of one time's ensemble when
    ``batch_size`` is below ``members``: memory grows with ``batch_size``)."""
    opts = cond.options
    C, H, W = truth.shape[1:]
    per = max(1, int(opts.batch_size) // members)
    chunk = min(members, max(1, int(opts.batch_size)))  # members per sampler call
    out = np.empty((len(idx), members, C, H, W), np.float32)
    total = Cost()
    info_all: dict = {}
    gen = torch.Generator().manual_seed(int(seed))
    for a in progress(range(0, len(idx), per), desc=f"sampling {'+'.join(conditioning) or 'prior'}"):
        sl = slice(a, a + per)
        obs, info = cond.observations(idx[sl], truth[sl], conditioning)
        for k, v in info.items():
            info_all[k] = info_all.get(k, 0) + v
        for m0 in range(0, members, chunk):
            x, cost = posterior_sample(
                prior, obs, min(chunk, members - m0), int(opts.steps), shape=(C, H, W), mean=torch.as_tensor(cond.mean), std=torch.as_tensor(cond.std),
                n_cases=len(idx[sl]), generator=gen, device=device, **_sampler_settings(opts),
            )
            out[sl, m0 : m0 + x.shape[1]] = x.cpu().numpy()
            total.forward, total.backward = cost.forward, cost.backward
            total.seconds += cost.seconds * x.shape[0] * x.shape[1]
    total.seconds /= max(1, len(idx) * members)
    return out, total, info_all


def inflate(ens: np.ndarray, factor) -> np.ndarray:
    """Multiplicative inflation of the anomalies about the ensemble mean (axis 1) of
    ``ens[T, N, C, H, W]``; ``factor`` a number or one per channel ``[C]``."""
    m = ens.mean(axis=1, keepdims=True)
    f = np.asarray(factor, dtype=np.float64)
    if f.ndim == 1:
        f = f.reshape(1, 1, -1, 1, 1)
    return (m + f * (ens - m)).astype(ens.dtype)


def _pooled_scores(ens: np.ndarray, truth: np.ndarray, std: np.ndarray, lat: np.ndarray) -> dict:
    s = std.reshape(1, 1, -1, 1, 1)
    e, t = ens / s, truth / s[0]
    n = ens.shape[1]
    sp2 = float(np.mean(metrics.spread(e, lat) ** 2))
    mse = float(np.mean(metrics.rmse(e.mean(1), t, lat) ** 2))
    return {"ssr": float(np.sqrt((n + 1) / n * sp2 / mse)) if mse > 0 else float("nan"), "rmse": float(np.sqrt(mse)), "crps": float(np.mean(metrics.fair_crps(e, t, lat)))}


def _inflation(ens: np.ndarray, truth: np.ndarray, lat: np.ndarray, ssr: float, opts) -> float | list[float]:
    """``alpha = 1 / ssr`` clipped to ``inflation_range`` (one per channel with ``per_channel``);
    1 when inflation is off or the ratio is not usable."""
    lo, hi = opts.inflation_range
    ok = np.isfinite(ssr) and ssr > 0
    if not (opts.inflation and ok):
        return 1.0
    if not opts.per_channel:
        return float(np.clip(1.0 / ssr, lo, hi))
    with np.errstate(all="ignore"):
        ssr_c = metrics.spread_skill(ens, truth, lat)
    return [float(np.clip(1.0 / r, lo, hi)) if np.isfinite(r) and r > 0 else 1.0 for r in ssr_c]


def calibrate(prior, cond: Conditioner, train_idx: np.ndarray, conditioning: Sequence[str], *, seed: int, device) -> dict:
    """Pick the SDA ``gamma`` and an anomaly-inflation factor on calibration times ``train_idx``
    (the validation block of the training period, or training times when there is none).

    For each candidate ``gamma`` (shared by the conditioning modalities) sample the
    calibration times, compute the pooled spread-skill ratio ``ssr`` (normalised units,
    latitude-weighted, finite-ensemble corrected), set the inflation ``alpha = 1 / ssr``
    (clipped to ``inflation_range``; 1 when inflation is off), and score the fair CRPS of
    the inflated ensemble; the candidate with the lowest CRPS wins. Returns the choice and
    the whole table (recorded in the samples' attributes and in MLflow).
    """
    copts = cond.options.calibrate
    n = min(int(copts.times), len(train_idx))
    pick = train_idx[np.unique(np.linspace(0, len(train_idx) - 1, n).round().astype(int))]
    truth = cond.truth(pick)
    members = int(copts.members or cond.options.members)
    gammas = copts.gammas or [None]
    table = []
    for g in gammas:
        ens, _, _ = sample_times(prior, cond.with_gamma(g), pick, truth, conditioning, members, seed=seed + 7919, device=device)
        with np.errstate(all="ignore"):
            raw = _pooled_scores(ens, truth, cond.std, cond.lat)
        alpha = _inflation(ens, truth, cond.lat, raw["ssr"], copts)
        with np.errstate(all="ignore"):
            cal = _pooled_scores(inflate(ens, alpha), truth, cond.std, cond.lat)
        row = {"gamma": g, "inflation": alpha, "ssr_raw": raw["ssr"], "ssr": cal["ssr"], "rmse": raw["rmse"], "crps_raw": raw["crps"], "crps": cal["crps"]}
        log.info("calibration: %s", row)
        table.append(row)

    def score(r):  # a diverged candidate (non-finite scores) never wins
        ok = np.isfinite(r["crps"]) and np.isfinite(r["ssr"]) and r["ssr"] > 0
        return (r["crps"], abs(np.log(r["ssr"]))) if ok else (np.inf, np.inf)

    best = min(table, key=score)
    if not np.isfinite(score(best)[0]):
        raise InputError(f"posterior sampling diverged for every calibration gamma {gammas}; raise sr.sample.calibrate.gammas or sigma_y")
    times = np.asarray(cond.ds["time"].values)[pick].astype("datetime64[s]")
    return {"times": [str(t) for t in times], "members": members, "gamma": best["gamma"], "inflation": best["inflation"], "table": table}
