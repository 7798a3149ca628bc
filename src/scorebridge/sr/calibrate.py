"""Conditioning and calibration: observation sets of ERA5 times, their ensembles, and the
choice of each modality's guidance ``gamma`` and the spread inflation on calibration times.

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

__all__ = ["Conditioner", "sample_times", "inflate", "calibrate", "calibration_times"]


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

    def with_gamma(self, gamma: float | dict | None) -> "Conditioner":
        """This conditioner with the modalities' ``gamma`` replaced: one number for every
        modality, ``{modality: gamma}`` for some, None: unchanged."""
        return dataclasses.replace(self, options=self.options.with_gamma(gamma))

    def truth(self, idx: np.ndarray) -> np.ndarray:
        """Physical fields ``[T, C, H, W]`` (member 0 of an ensemble store)."""
        from .data import load_fields

        return load_fields(self.ds, self.channels, idx, member=0 if "number" in self.ds.dims else None, check_nan=False)

    def observations(
        self, idx: np.ndarray, truth: np.ndarray, conditioning: Sequence[str]
    ) -> tuple[list[Observation], dict]:
        obs: list[Observation] = []
        info: dict = {}
        if "coarse" in conditioning:
            obs.append(coarse_observation(torch.as_tensor(truth), self.channels, self.std, self.options.coarse))
        if "radiosondes" in conditioning:
            if self.table is None:
                raise ConfigError(
                    "sr.sample.conditioning",
                    "'radiosondes' needs collocated observations (set the experiment's `igra` and pass --obs)",
                )
            times = np.asarray(self.ds["time"].values)[idx]
            ob, info = radiosonde_observation(
                self.table, times, self.channels, self.lat, self.lon, self.std, self.options.radiosondes
            )
            obs.append(ob)
        return obs, info


def _sampler_settings(opts: SampleOptions) -> dict:
    return {
        "guidance": opts.guidance,
        "cg_iterations": int(opts.cg_iterations),
        "covariance": opts.covariance,
        "solver": opts.solver,
        "sigma_min": opts.sigma_min,
        "churn": float(opts.churn),
        "s_tmin": float(opts.s_tmin),
        "s_tmax": float(opts.s_tmax) if opts.s_tmax is not None else float("inf"),
        "s_noise": float(opts.s_noise),
        "rho": float(opts.rho),
    }


# grid cells per network call on a CPU for `batch_size: auto`: beyond ~2.6e5 cells (16 fields
# of 256 x 256 are 1M) the activations and the guidance's autograd graph fall out of cache and
# the cost per pixel rises 1.6x (benchmarks/README.md, "SR scale")
CPU_CELLS_PER_CALL = 262_144
MAX_FIELDS_PER_CALL = 64


def fields_per_call(batch_size: int | str, cells: int, device) -> int:
    """Fields per network call: ``sample.batch_size``, or for ``auto`` 64 on a GPU and on a
    CPU as many fields of ``cells`` grid cells as fit in ``CPU_CELLS_PER_CALL`` (1 to 64)."""
    if batch_size != "auto":
        return max(1, int(batch_size))
    if torch.device(device).type != "cpu":
        return MAX_FIELDS_PER_CALL
    return int(min(MAX_FIELDS_PER_CALL, max(1, CPU_CELLS_PER_CALL // max(1, int(cells)))))


def sample_times(
    prior,
    cond: Conditioner,
    idx: np.ndarray,
    truth: np.ndarray,
    conditioning: Sequence[str],
    members: int,
    *,
    seed: int,
    device,
) -> tuple[np.ndarray, Cost, dict]:
    """Ensembles ``[T, N, C, H, W]`` (physical) for ERA5 times ``idx``, in chunks of ``batch_size``
    fields (whole ensembles of several times, or parts of one time's ensemble when
    ``batch_size`` is below ``members``: memory grows with ``batch_size``)."""
    opts = cond.options
    C, H, W = truth.shape[1:]
    batch = fields_per_call(opts.batch_size, H * W, device)
    per = max(1, batch // members)
    chunk = min(members, batch)  # members per sampler call
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
                prior,
                obs,
                min(chunk, members - m0),
                int(opts.steps),
                shape=(C, H, W),
                mean=torch.as_tensor(cond.mean),
                std=torch.as_tensor(cond.std),
                n_cases=len(idx[sl]),
                generator=gen,
                device=device,
                **_sampler_settings(opts),
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
    """Pooled (normalised units) and per-channel spread-skill, RMSE and fair CRPS."""
    with np.errstate(all="ignore"):
        ssr_c = metrics.spread_skill(ens, truth, lat)
        rmse_c = metrics.rmse(ens.mean(1), truth, lat)
        crps_c = metrics.fair_crps(ens, truth, lat)
        return {
            "ssr": metrics.pooled_spread_skill(ens, truth, std, lat),
            "rmse": metrics.pooled(rmse_c, std),
            "crps": float(np.mean(crps_c / std)),
            "ssr_channels": [float(r) for r in ssr_c],
        }


def _inflation(scores: dict, opts) -> float | list[float]:
    """``alpha = 1 / ssr`` clipped to ``inflation_range`` (one per channel with ``per_channel``);
    1 when inflation is off or the ratio is not usable."""
    lo, hi = opts.inflation_range
    ssr = scores["ssr"]
    if not (opts.inflation and np.isfinite(ssr) and ssr > 0):
        return 1.0
    if not opts.per_channel:
        return float(np.clip(1.0 / ssr, lo, hi))
    return [float(np.clip(1.0 / r, lo, hi)) if np.isfinite(r) and r > 0 else 1.0 for r in scores["ssr_channels"]]


def calibration_times(idx: np.ndarray, n: int) -> np.ndarray:
    """At most ``n`` evenly spaced entries of ``idx`` (the calibration times)."""
    n = min(int(n), len(idx))
    return idx[np.unique(np.linspace(0, len(idx) - 1, n).round().astype(int))]


def _steps(conditioning: Sequence[str]) -> list[tuple[str, list[str]]]:
    """The calibration steps: ``(modality, conditioning set)``, one per modality in turn
    (the coarse field alone first, then the radiosondes with the coarse field's gamma fixed)."""
    order = [m for m in ("coarse", "radiosondes") if m in conditioning]
    return [(m, order[: i + 1]) for i, m in enumerate(order)]


def calibrate(
    prior, cond: Conditioner, train_idx: np.ndarray, conditioning: Sequence[str], *, seed: int, device
) -> dict:
    """Pick each modality's SDA/MMPS ``gamma`` and the anomaly-inflation factors on calibration
    times drawn from ``train_idx`` (the validation block of the training period, or training
    times when there is none).

    The modalities are calibrated in turn: first the coarse field alone, over the candidate
    ``gammas``; then the radiosondes with the coarse field (its gamma fixed at the choice),
    over the same candidates. For each candidate the calibration times are sampled and
    scored in normalised units (latitude-weighted, pooled over channels): the spread-skill
    ratio ``ssr`` of the RAW ensemble and its fair CRPS. The candidate with the lowest raw
    CRPS wins (the guidance strength is the calibration lever, not a post-hoc stretch); the
    inflation ``alpha = 1 / ssr`` (per channel, clipped to ``inflation_range``; 1 when
    inflation is off) is then the last, reported correction of that step's ensemble.

    Returns the chosen ``gamma`` per modality, the inflation of the full conditioning set
    (``inflation``) and of the coarse field alone (``inflation_coarse``, when the coarse
    field is conditioned on), and the whole table (recorded in the samples' attributes
    and in MLflow).
    """
    copts = cond.options.calibrate
    pick = calibration_times(train_idx, copts.times)
    truth = cond.truth(pick)
    members = int(copts.members or cond.options.members)
    chosen: dict[str, float] = {}
    inflation: dict[str, float | list[float]] = {}
    table = []
    for modality, cset in _steps(conditioning):
        rows = []
        for g in copts.gammas:
            trial = cond.with_gamma({**chosen, modality: g})
            ens, _, _ = sample_times(prior, trial, pick, truth, cset, members, seed=seed + 7919, device=device)
            raw = _pooled_scores(ens, truth, cond.std, cond.lat)
            alpha = _inflation(raw, copts)
            cal = _pooled_scores(inflate(ens, alpha), truth, cond.std, cond.lat)
            row = {
                "modality": modality,
                "conditioning": "+".join(cset),
                "gamma": float(g),
                "ssr_raw": raw["ssr"],
                "ssr_raw_channels": raw["ssr_channels"],
                "rmse": raw["rmse"],
                "crps_raw": raw["crps"],
                "inflation": alpha,
                "ssr": cal["ssr"],
                "ssr_channels": cal["ssr_channels"],
                "crps": cal["crps"],
            }
            log.info("calibration: %s", row)
            rows.append(row)

        def score(r):  # a diverged candidate (non-finite scores) never wins
            ok = np.isfinite(r["crps_raw"]) and np.isfinite(r["ssr_raw"]) and r["ssr_raw"] > 0
            return (r["crps_raw"], abs(np.log(r["ssr_raw"]))) if ok else (np.inf, np.inf)

        best = min(rows, key=score)
        if not np.isfinite(score(best)[0]):
            raise InputError(
                f"posterior sampling diverged for every calibration gamma {list(copts.gammas)} of the {modality} modality; "
                "raise sr.sample.calibrate.gammas or sigma_y"
            )
        best["chosen"] = True
        chosen[modality] = best["gamma"]
        inflation["+".join(cset)] = best["inflation"]
        table.extend(rows)
    times = np.asarray(cond.ds["time"].values)[pick].astype("datetime64[s]")
    full = "+".join(_steps(conditioning)[-1][1]) if conditioning else ""
    return {
        "times": [str(t) for t in times],
        "time_index": [int(i) for i in pick],
        "members": members,
        "gamma": chosen,
        "inflation": inflation.get(full, 1.0),
        "inflation_coarse": inflation.get("coarse"),
        "table": table,
    }
