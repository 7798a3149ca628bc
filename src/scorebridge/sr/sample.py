"""Posterior sampling of one experiment's held-out times: `scorebridge sr-sample` (rule sr_sample).

:func:`run_sampling` checks the prior against the ERA5 store, selects the held-out times
(`sr.train.split`, those more than `sample.calibrate.gap_hours` from the calibration
times, at most `sample.max_times`), reads the collocated radiosondes and withholds some
stations, calibrates each modality's ``gamma`` and the spread inflation on the validation
block (:mod:`.calibrate`), samples the ensembles (:mod:`.sampler`, guided by
:mod:`.guidance`): the conditioning set, the coarse field alone beside it when it adds
radiosondes (the like-with-like reference of the scorecard), the means of the other
comparison sets; and writes the samples store (:mod:`.store`).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, InputError
from .calibrate import Conditioner, calibrate, calibration_times, fields_per_call, inflate, sample_times
from .observations import MODALITIES, choose_withheld, read_obs, sigma_for
from .operators import CoarseGrain, coarse_grain
from .options import Experiment, SampleOptions
from .patches import as_pair, patched
from .sampler import prior_wiener, resolve_covariance
from .store import channel_layout, samples_dataset, write_samples

log = logging.getLogger(__name__)

__all__ = ["run_sampling"]


def _channels(prior, ds, checkpoint) -> list:
    """The prior's channels; InputError when the ERA5 store lacks any of them."""
    channels = [(v, None if lv is None else float(lv)) for v, lv in prior.channels]
    missing = [
        f"{v}/{lv:g}" if lv is not None else v
        for v, lv in channels
        if v not in ds.data_vars
        or (lv is not None and ("level" not in ds[v].dims or not np.isclose(ds["level"].values, lv).any()))
    ]
    if missing:
        raise InputError(
            f"the prior's channels {missing} are not in this ERA5 store: checkpoint {checkpoint} was trained on another configuration",
            ds.attrs.get("source_path"),
        )
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
        log.info(
            "radiosondes: %d values from %d stations; withheld %s", len(full.value), len(set(full.station)), withheld
        )
        return full.select(~np.isin(full.station, withheld)), withheld
    if "radiosondes" in opts.conditioning:
        raise ConfigError(
            "sr.sample.conditioning",
            "'radiosondes' needs collocated observations: set the experiment's `igra` (the rule then passes --obs)",
        )
    return None, None


def _compare_sets(opts: SampleOptions, have_radiosondes: bool) -> list[list[str]]:
    """`compare`, or (null) the other non-empty conditioning sets when radiosondes exist."""
    if opts.compare is not None:
        return [list(c) for c in opts.compare]
    if not have_radiosondes or not ("coarse" in opts.conditioning or "radiosondes" in opts.conditioning):
        return []
    return [
        c for c in (["coarse"], ["coarse", "radiosondes"], ["radiosondes"]) if sorted(c) != sorted(opts.conditioning)
    ]


def _reference(conditioning) -> list[str] | None:
    """The coarse-only set sampled in full beside a conditioning set that adds other modalities
    to the coarse field: the like-with-like comparison with bicubic (same input), and the
    baseline the added modalities are scored against. None when not needed."""
    return ["coarse"] if "coarse" in conditioning and len(conditioning) > 1 else None


def _gap_steps(ds, hours: float) -> int:
    """``hours`` in whole time steps of the store (rounded up; its median step)."""
    t = np.asarray(ds["time"].values).astype("datetime64[s]").astype(np.int64)
    step_h = float(np.median(np.diff(t))) / 3600.0 if len(t) > 1 else 1.0
    return int(np.ceil(hours / step_h - 1e-9)) if hours > 0 else 0


def _apart(test_idx: np.ndarray, cal_idx: np.ndarray, gap: int) -> np.ndarray:
    """The held-out times more than ``gap`` time steps from every calibration time."""
    if not len(cal_idx) or not len(test_idx):
        return test_idx
    dist = np.abs(test_idx[:, None] - np.asarray(cal_idx)[None, :]).min(axis=1)
    return test_idx[dist > gap]


def _climatology(prior, mean: np.ndarray, std: np.ndarray) -> np.ndarray | None:
    """The prior's training-time mean field in physical units ``[C, H, W]`` (`train.anomalies`),
    else None: the baselines interpolate the anomalies from it, as the prior models them."""
    offset = getattr(getattr(prior, "denoiser", None), "offset", None)
    if offset is None:
        return None
    return mean.reshape(-1, 1, 1) + std.reshape(-1, 1, 1) * offset.detach().cpu().numpy()


def _gaussian_baseline(prior, cond: Conditioner, idx: np.ndarray, truth: np.ndarray, mean, std) -> np.ndarray | None:
    """For a prior with a Wiener skip (and a coarse field to condition on): the posterior mean
    of its Gaussian part given the coarse field alone, ``[T, C, H, W]`` physical -- the
    baseline the scorecard sets beside the coarse-only posterior mean; else None."""
    den = getattr(prior, "denoiser", None)
    wiener = prior_wiener(prior)
    if wiener is None or "coarse" not in cond.options.conditioning:
        return None
    from .guidance import Units
    from .wiener import gaussian_posterior_mean

    units = Units.of(mean, std, "cpu")
    offset = den.offset.detach().cpu() if den.offset is not None else None
    wiener = copy.deepcopy(wiener).cpu()  # a CPU copy: the prior may live on a GPU
    out = np.empty(truth.shape, np.float32)
    for a in range(0, len(idx), 8):
        obs, _ = cond.observations(idx[a : a + 8], truth[a : a + 8], ["coarse"])
        x = gaussian_posterior_mean(wiener, offset, obs, units)
        out[a : a + 8] = units.physical(x.float()).numpy()
    return out


def _periodic(ds, exp: Experiment) -> list[str]:
    """The domain's periodic axes as the experiment states them (`train.model.periodic`,
    "auto" resolved on the grid): the baselines and the spectra treat boundaries as the
    U-Net does."""
    from .train import resolve_periodic

    return resolve_periodic(ds, exp.train.model, None)


def _log_calibration(run, calib: dict, channels) -> None:
    if run is None:
        return
    alphas = np.atleast_1d(np.asarray(calib["inflation"], dtype=np.float64))
    names = [v if lv is None else f"{v}/{lv:g}" for v, lv in channels]
    per = (
        {f"calibration/inflation/{c}": float(a) for c, a in zip(names, alphas)} if len(alphas) == len(channels) else {}
    )
    gammas = {f"calibration/gamma/{m}": float(g) for m, g in calib["gamma"].items()}
    chosen = {}
    for row in calib["table"]:
        if row.get("chosen"):
            tag = row["conditioning"]
            chosen[f"calibration/{tag}/spread_skill_raw"] = row["ssr_raw"]
            chosen[f"calibration/{tag}/spread_skill"] = row["ssr"]
            chosen.update(
                {f"calibration/{tag}/spread_skill_raw/{c}": r for c, r in zip(names, row["ssr_raw_channels"])}
            )
    run.log_metrics({**gammas, "calibration/inflation_mean": float(alphas.mean()), **per, **chosen})


def _sampling_record(
    opts: SampleOptions,
    channels,
    mean,
    std,
    *,
    compare,
    reference,
    gamma,
    inflation,
    raw_spread,
    calib,
    cost,
    obs_info,
    withheld,
    seed,
    periodic,
    gap,
) -> dict:
    variables, _ = channel_layout(channels)
    return {
        "conditioning": list(opts.conditioning),
        "compare": ["+".join(c) for c in compare],
        "reference": reference,
        "guidance": opts.guidance,
        "cg_iterations": int(opts.cg_iterations),
        "covariance": opts.covariance,
        "steps": int(opts.steps),
        "solver": opts.solver,
        "sigma_min": opts.sigma_min,
        "churn": float(opts.churn),
        "members": int(opts.members),
        "coarse_factor": int(opts.coarse.factor),
        "coarse_pad": opts.coarse.pad,
        "periodic": list(periodic),
        "normalisation": {"mean": [float(m) for m in mean], "std": [float(v) for v in std]},
        "sigma_y": {
            "coarse": {
                f"{v}/{lv:g}" if lv is not None else v: sigma_for(v, s, opts.coarse)
                for (v, lv), s in zip(channels, std)
            },
            "radiosondes": {
                v: opts.radiosondes.sigma_y[v]
                if v in opts.radiosondes.sigma_y
                else f"{opts.radiosondes.sigma_y_relative} x std"
                for v in variables
            },
        },
        "gamma": gamma if gamma is not None else {m: getattr(opts, m).gamma for m in MODALITIES},
        "inflation": inflation,
        "raw_spread_normalised": raw_spread,
        "calibration": calib,
        "gap": gap,
        "cost": {
            "forward_per_sample": cost.forward,
            "backward_per_sample": cost.backward,
            "seconds_per_sample": cost.seconds,
        },
        "observations": obs_info,
        "withheld_stations": withheld or [],
        "seed": seed,
    }


def _raw_spread(ens: np.ndarray, std: np.ndarray) -> float:
    return float(np.mean(np.std(ens, axis=1, ddof=1) / std.reshape(1, -1, 1, 1)))


def run_sampling(
    prior,
    ds,
    exp: Experiment,
    obs_path: str | None,
    *,
    device,
    out: str | Path,
    checkpoint: str | None = None,
    run=None,
) -> dict:
    """Sample the held-out times of one experiment and write ``samples.zarr`` to ``out``."""
    from ..provenance import package_versions
    from .data import split_times

    opts, seed = exp.sample, exp.run_seed
    channels = _channels(prior, ds, checkpoint)
    mean = np.asarray(prior.normalisation.mean, np.float32)
    std = np.asarray(prior.normalisation.std, np.float32)
    # sample.patch: the prior on overlapping windows, blended at every step (else itself)
    grid = (ds.sizes["latitude"], ds.sizes["longitude"])
    cells = int(np.prod(as_pair(opts.patch.size) if opts.patch is not None else grid))  # per network field
    prior = patched(prior, opts.patch, grid, fields_per_call(opts.batch_size, cells, device))
    k = int(opts.coarse.factor)
    if "coarse" in opts.conditioning or (opts.compare and any("coarse" in c for c in opts.compare)):
        CoarseGrain(
            k, (ds.sizes["latitude"], ds.sizes["longitude"]), pad=opts.coarse.pad
        )  # warns (pad) or raises (error)
    train_idx, val_idx, test_idx = split_times(ds, exp.train.split, validation=True)
    table, withheld = _radiosondes(opts, obs_path, channels, seed)
    compare = _compare_sets(opts, table is not None)
    reference = _reference(opts.conditioning)
    cond = Conditioner(ds, channels, mean, std, opts, table)

    calib, gamma, inflation, inflation_ref = None, None, 1.0, 1.0
    gap = {"hours": float(opts.calibrate.gap_hours), "steps": 0, "held_out_times": int(len(test_idx)), "dropped": 0}
    if opts.calibrate.enabled and opts.conditioning:
        # calibrate on times the prior never saw when there are any (a prior that memorised its
        # training fields is over-confident there); else on training times; and score only
        # held-out times at least `gap_hours` away from them
        cal_idx, cal_on = (val_idx, "validation") if len(val_idx) else (train_idx, "training")
        gap["steps"] = _gap_steps(ds, float(opts.calibrate.gap_hours))
        kept = _apart(test_idx, calibration_times(cal_idx, opts.calibrate.times), gap["steps"])
        if not len(kept):
            raise ConfigError(
                "sr.sample.calibrate.gap_hours",
                f"no held-out time lies more than {gap['steps']} time steps ({opts.calibrate.gap_hours:g} h) "
                f"from the calibration times; lower it or hold out more times (sr.train.split)",
            )
        gap["dropped"] = int(len(test_idx) - len(kept))
        test_idx = kept
        calib = calibrate(prior, cond, cal_idx, opts.conditioning, seed=seed, device=device)
        calib["on"] = cal_on
        gamma, inflation = calib["gamma"], calib["inflation"]
        inflation_ref = calib["inflation_coarse"] if calib["inflation_coarse"] is not None else 1.0
        _log_calibration(run, calib, channels)
        cond = cond.with_gamma(gamma)
    test_idx = _evenly(test_idx, opts.max_times)

    truth = cond.truth(test_idx)
    members = int(opts.members)
    ens, cost, obs_info = sample_times(
        prior, cond, test_idx, truth, opts.conditioning, members, seed=seed, device=device
    )
    raw_spread = _raw_spread(ens, std)
    ens = inflate(ens, inflation)
    ref_record, ref_ens = None, None
    if reference is not None:
        ref_ens = sample_times(prior, cond, test_idx, truth, reference, members, seed=seed + 500, device=device)[0]
        ref_record = {
            "conditioning": list(reference),
            "inflation": inflation_ref,
            "raw_spread_normalised": _raw_spread(ref_ens, std),
        }
        ref_ens = inflate(ref_ens, inflation_ref)
    compare_means = []
    for j, cset in enumerate(compare):
        if reference is not None and sorted(cset) == sorted(reference):
            compare_means.append(ref_ens.mean(1))  # the full coarse-only ensemble's mean
        else:
            compare_means.append(
                sample_times(
                    prior,
                    cond,
                    test_idx,
                    truth,
                    cset,
                    int(opts.compare_members),
                    seed=seed + 1000 * (j + 1),
                    device=device,
                )[0].mean(1)
            )

    gaussian = _gaussian_baseline(prior, cond, test_idx, truth, mean, std)
    coarse = coarse_grain(torch.as_tensor(truth), k, pad="edge").numpy()
    out_ds = samples_dataset(
        ens,
        coarse,
        channels,
        times=np.asarray(ds["time"].values)[test_idx],
        time_index=test_idx,
        lat=cond.lat,
        lon=cond.lon,
        factor=k,
        compare=compare,
        compare_means=compare_means,
        reference=ref_ens,
        climatology=_climatology(prior, mean, std),
        gaussian=gaussian,
        attrs_from=ds,
    )
    opts = dataclasses.replace(opts, covariance=resolve_covariance(prior, opts.covariance))  # the record: which one
    sampling = _sampling_record(
        opts,
        channels,
        mean,
        std,
        compare=compare,
        reference=ref_record,
        gamma=gamma,
        inflation=inflation,
        raw_spread=raw_spread,
        calib=calib,
        cost=cost,
        obs_info=obs_info,
        withheld=withheld,
        seed=seed,
        periodic=_periodic(ds, exp),
        gap=gap,
    )
    provenance = {
        "checkpoint": str(checkpoint),
        "era5": ds.attrs.get("source_path"),
        "obs": str(obs_path) if obs_path else None,
        "packages": package_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_samples(out, out_ds, sampling=sampling, channels=channels, provenance=provenance)
    if run is not None:
        run.log_metrics(
            {
                "cost/forward_per_sample": cost.forward,
                "cost/backward_per_sample": cost.backward,
                "cost/seconds_per_sample": cost.seconds,
            }
        )
    log.info(
        "wrote %s: %d times x %d members%s; %d forward + %d backward network passes per sample, %.3f s per sample",
        out,
        len(test_idx),
        members,
        " (+ the coarse-only ensemble)" if reference else "",
        cost.forward,
        cost.backward,
        cost.seconds,
    )
    return sampling
