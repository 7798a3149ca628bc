"""Posterior sampling of one experiment's held-out times: `scorebridge sr-sample` (rule sr_sample).

:func:`run_sampling` checks the prior against the ERA5 store, selects the held-out times
(`sr.train.split`, at most `sample.max_times`), reads the collocated radiosondes and
withholds some stations, calibrates ``gamma`` and the spread inflation on the validation
block (:mod:`.calibrate`), samples the ensembles (:mod:`.sampler`, guided by
:mod:`.guidance`), the comparison conditioning sets, and writes the samples store
(:mod:`.store`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, InputError
from .calibrate import Conditioner, calibrate, inflate, sample_times
from .observations import MODALITIES, choose_withheld, read_obs, sigma_for
from .operators import CoarseGrain, coarse_grain
from .options import Experiment, SampleOptions
from .patches import patched
from .store import channel_layout, samples_dataset, write_samples

log = logging.getLogger(__name__)

__all__ = ["run_sampling"]


def _channels(prior, ds, checkpoint) -> list:
    """The prior's channels; InputError when the ERA5 store lacks any of them."""
    channels = [(v, None if lv is None else float(lv)) for v, lv in prior.channels]
    missing = [f"{v}/{lv:g}" if lv is not None else v for v, lv in channels
               if v not in ds.data_vars or (lv is not None and ("level" not in ds[v].dims or not np.isclose(ds["level"].values, lv).any()))]
    if missing:
        raise InputError(f"the prior's channels {missing} are not in this ERA5 store: checkpoint {checkpoint} was trained on another configuration", ds.attrs.get("source_path"))
    return channels


def _evenly(idx: np.ndarray, n: int | None) -> np.ndarray:
    """At most ``n`` evenly spaced entries of ``idx`` (None: all)."""
    if n and len(idx) > n:
        return idx[np.unique(np.linspace(0, len(idx) - 1, int(n)).round().astype(int))]
    return idx


def _radiosondes(opts: SampleOptions, obs_path, channels, seed: int):
    """(conditioning table, withheld stations), both None without radiosondes."""
    compare = opts.compare
    wanted = "radiosondes" in opts.conditioning or compare is None or any("radiosondes" in c for c in compare)
    if obs_path and wanted:
        full = read_obs(obs_path, sorted({v for v, _ in channels}))
        withheld = choose_withheld(full.station, opts.radiosondes, seed)
        log.info("radiosondes: %d values from %d stations; withheld %s", len(full.value), len(set(full.station)), withheld)
        return full.select(~np.isin(full.station, withheld)), withheld
    if "radiosondes" in opts.conditioning:
        raise ConfigError("sr.sample.conditioning", "'radiosondes' needs collocated observations: set the experiment's `igra` (the rule then passes --obs)")
    return None, None


def _compare_sets(opts: SampleOptions, have_radiosondes: bool) -> list[list[str]]:
    """`compare`, or (null) the other non-empty conditioning sets when radiosondes exist."""
    if opts.compare is not None:
        return [list(c) for c in opts.compare]
    if not have_radiosondes or not ("coarse" in opts.conditioning or "radiosondes" in opts.conditioning):
        return []
    return [c for c in (["coarse"], ["coarse", "radiosondes"], ["radiosondes"]) if sorted(c) != sorted(opts.conditioning)]


def _log_calibration(run, calib: dict, channels) -> None:
    if run is None:
        return
    gamma, alphas = calib["gamma"], np.atleast_1d(np.asarray(calib["inflation"], dtype=np.float64))
    per = {f"calibration/inflation/{v if lv is None else f'{v}/{lv:g}'}": float(a) for (v, lv), a in zip(channels, alphas)} if len(alphas) == len(channels) else {}
    run.log_metrics({"calibration/gamma": gamma if gamma is not None else float("nan"), "calibration/inflation_mean": float(alphas.mean()), **per})


def _sampling_record(opts: SampleOptions, channels, std, *, compare, gamma, inflation, raw_spread, calib, cost, obs_info, withheld, seed) -> dict:
    variables, _ = channel_layout(channels)
    return {
        "conditioning": list(opts.conditioning),
        "compare": ["+".join(c) for c in compare],
        "guidance": opts.guidance,
        "steps": int(opts.steps),
        "churn": float(opts.churn),
        "members": int(opts.members),
        "coarse_factor": int(opts.coarse.factor),
        "coarse_pad": opts.coarse.pad,
        "sigma_y": {
            "coarse": {f"{v}/{lv:g}" if lv is not None else v: sigma_for(v, s, opts.coarse) for (v, lv), s in zip(channels, std)},
            "radiosondes": {v: opts.radiosondes.sigma_y[v] if v in opts.radiosondes.sigma_y else f"{opts.radiosondes.sigma_y_relative} x std" for v in variables},
        },
        "gamma": gamma if gamma is not None else {m: getattr(opts, m).gamma for m in MODALITIES},
        "inflation": inflation,
        "raw_spread_normalised": raw_spread,
        "calibration": calib,
        "cost": {"forward_per_sample": cost.forward, "backward_per_sample": cost.backward, "seconds_per_sample": cost.seconds},
        "observations": obs_info,
        "withheld_stations": withheld or [],
        "seed": seed,
    }


def run_sampling(prior, ds, exp: Experiment, obs_path: str | None, *, device, out: str | Path, checkpoint: str | None = None, run=None) -> dict:
    """Sample the held-out times of one experiment and write ``samples.zarr`` to ``out``."""
    from ..provenance import package_versions
    from .data import split_times

    opts, seed = exp.sample, exp.run_seed
    channels = _channels(prior, ds, checkpoint)
    mean = np.asarray(prior.normalisation.mean, np.float32)
    std = np.asarray(prior.normalisation.std, np.float32)
    # sample.patch: the prior on overlapping windows, blended at every step (else itself)
    prior = patched(prior, opts.patch, (ds.sizes["latitude"], ds.sizes["longitude"]), int(opts.batch_size))
    k = int(opts.coarse.factor)
    if "coarse" in opts.conditioning or (opts.compare and any("coarse" in c for c in opts.compare)):
        CoarseGrain(k, (ds.sizes["latitude"], ds.sizes["longitude"]), pad=opts.coarse.pad)  # warns (pad) or raises (error)
    train_idx, val_idx, test_idx = split_times(ds, exp.train.split, validation=True)
    test_idx = _evenly(test_idx, opts.max_times)
    table, withheld = _radiosondes(opts, obs_path, channels, seed)
    compare = _compare_sets(opts, table is not None)
    cond = Conditioner(ds, channels, mean, std, opts, table)

    calib, gamma, inflation = None, None, 1.0
    if opts.calibrate.enabled and opts.conditioning:
        # calibrate on times the prior never saw when there are any (a prior that memorised its
        # training fields is over-confident there); else on training times
        cal_idx, cal_on = (val_idx, "validation") if len(val_idx) else (train_idx, "training")
        calib = calibrate(prior, cond, cal_idx, opts.conditioning, seed=seed, device=device)
        calib["on"] = cal_on
        gamma, inflation = calib["gamma"], calib["inflation"]
        _log_calibration(run, calib, channels)
        cond = cond.with_gamma(gamma)

    truth = cond.truth(test_idx)
    ens, cost, obs_info = sample_times(prior, cond, test_idx, truth, opts.conditioning, int(opts.members), seed=seed, device=device)
    raw_spread = float(np.mean(np.std(ens, axis=1, ddof=1) / std.reshape(1, -1, 1, 1)))
    ens = inflate(ens, inflation)
    compare_means = [sample_times(prior, cond, test_idx, truth, cset, int(opts.compare_members), seed=seed + 1000 * (j + 1), device=device)[0].mean(1)
                     for j, cset in enumerate(compare)]

    coarse = coarse_grain(torch.as_tensor(truth), k, pad="edge").numpy()
    out_ds = samples_dataset(ens, coarse, channels, times=np.asarray(ds["time"].values)[test_idx], time_index=test_idx, lat=cond.lat, lon=cond.lon,
                             factor=k, compare=compare, compare_means=compare_means, attrs_from=ds)
    sampling = _sampling_record(opts, channels, std, compare=compare, gamma=gamma, inflation=inflation, raw_spread=raw_spread, calib=calib,
                                cost=cost, obs_info=obs_info, withheld=withheld, seed=seed)
    provenance = {"checkpoint": str(checkpoint), "era5": ds.attrs.get("source_path"), "obs": str(obs_path) if obs_path else None,
                  "packages": package_versions(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_samples(out, out_ds, sampling=sampling, channels=channels, provenance=provenance)
    if run is not None:
        run.log_metrics({"cost/forward_per_sample": cost.forward, "cost/backward_per_sample": cost.backward, "cost/seconds_per_sample": cost.seconds})
    log.info("wrote %s: %d times x %d members; %d forward + %d backward network passes per sample, %.3f s per sample",
             out, len(test_idx), opts.members, cost.forward, cost.backward, cost.seconds)
    return sampling
