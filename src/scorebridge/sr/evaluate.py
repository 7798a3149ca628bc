"""Evaluation of super-resolved ensembles on held-out times: metrics.json, figures, MLflow.

Scores (see :mod:`scorebridge.sr.metrics` for the formulas), per channel ``{var}/{level}``:

- ``rmse|mae|bias/{ch}`` of the posterior mean and ``.../{ch}/{baseline}`` for the
  baselines ``bicubic``, ``bilinear`` (of the coarse field; periodic axes wrap, as in the
  U-Net) and ``nearest_radiosonde``;
- the fair scorecard (:mod:`scorebridge.sr.scorecard`): ``rmse_ratio/{ch}`` = coarse-only
  posterior-mean RMSE / bicubic RMSE (the same input), ``rmse_ratio_radiosondes/{ch}`` =
  coarse + radiosondes / coarse-only, ``.../{ch}/coarse_only`` scores of the coarse-only
  ensemble, pooled ``summary/*`` in normalised units, and the ``scorecard`` table;
- ``spread/{ch}``, ``spread_skill/{ch}`` (after the calibration's inflation) and
  ``spread_skill_raw/{ch}`` (before), ``crps/{ch}`` (fair CRPS), the rank histogram
  (in metrics.json), ``crps/{ch}/bicubic`` (the deterministic baseline's CRPS = its MAE);
- power spectra (metrics.json; of the anomalies from the prior's mean field when it models
  anomalies; detrended and Hann-windowed along non-periodic axes) and
  ``spectral_ratio/{ch}[/baseline]``: power at the upper half of the wavenumbers relative
  to the truth's (1 = right amount of small-scale structure; interpolation is far below 1);
- ``withheld_rmse/{var}/{conditioning}``: RMSE at the radiosondes hidden from
  conditioning, for the main conditioning set, each comparison set, bicubic and the
  nearest conditioning radiosonde;
- ``cost/*``: network passes and seconds per sample (from the sampler).

Summary keys for the targets: ``summary/rmse_ratio`` (pooled coarse-only / bicubic),
``summary/rmse_ratio_radiosondes`` (pooled coarse + radiosondes / coarse-only),
``summary/spread_skill[_raw][/coarse_only]`` (pooled), ``summary/withheld_rmse_gain``
(relative RMSE reduction at withheld radiosondes from adding radiosondes to the coarse field).
"""

from __future__ import annotations

import logging

import numpy as np

from ..errors import InputError
from . import metrics as M
from .baselines import nearest_station_at, nearest_station_field, upsample
from .observations import ObsTable, read_obs
from .options import EvaluateOptions
from .scorecard import deflate, scorecard
from .store import open_samples, vars_to_fields

__all__ = ["evaluate", "log_summary"]

log = logging.getLogger(__name__)


def _name(ch) -> str:
    v, lv = ch
    return v if lv is None else f"{v}/{lv:g}"


def _withheld(
    obs_path, sampling, channels, times, lat, lon, pred_fields: dict[str, np.ndarray], tol_pa: float
) -> tuple[dict, dict]:
    """RMSE at withheld stations for each prediction field ``[T, C, H, W]`` (and the nearest radiosonde)."""
    import warnings

    from .point_obs import build_point_obs

    withheld = sampling.get("withheld_stations") or []
    table = read_obs(obs_path, sorted({v for v, _ in channels}))
    t64 = np.asarray(times).astype("datetime64[ns]")
    in_times = np.isin(table.time, t64)
    target = table.select(in_times & np.isin(table.station, withheld))
    source = table.select(in_times & ~np.isin(table.station, withheld))
    out: dict = {}
    counts: dict = {}
    if not withheld or len(target.value) == 0:
        return out, {"n_withheld_obs": 0, "withheld_stations": withheld}
    preds: dict[str, list] = {k: [] for k in pred_fields}
    obs_vals, obs_vars = [], []
    for ti, t in enumerate(t64):
        sub = target.select(target.time == t)
        if len(sub.value) == 0:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            op, y, kept, _ = build_point_obs(
                channels, lat, lon, sub.latitude, sub.longitude, sub.pressure, sub.variable, sub.value, sub.station
            )
        if len(kept) == 0:
            continue
        import torch

        for k, f in pred_fields.items():
            preds[k].append(op(torch.as_tensor(f[ti : ti + 1], dtype=torch.float64)).numpy()[0])
        obs_vals.append(y.numpy()[0])
        obs_vars.append(sub.variable[kept])
        preds.setdefault("_rows", []).append(sub.select(kept))
    if not obs_vals:
        return out, {"n_withheld_obs": 0, "withheld_stations": withheld}
    yv = np.concatenate(obs_vals)
    vv = np.concatenate(obs_vars)
    cat = ObsTable.concat(preds.pop("_rows"))
    pv = {k: np.concatenate(v) for k, v in preds.items()}
    pv["nearest_radiosonde"] = nearest_station_at(cat, source, tol_pa)
    for v in sorted(set(vv)):
        sel = vv == v
        for k, p in pv.items():
            out[f"withheld_rmse/{v}/{k}"] = M.point_rmse(p[sel], yv[sel])
        counts[v] = int(sel.sum())
    # all variables together, in units of each variable's observed std (comparable across variables)
    scale = {v: np.nanstd(yv[vv == v]) or 1.0 for v in set(vv)}
    s = np.array([scale[v] for v in vv])
    for k, p in pv.items():
        out[f"withheld_rmse/all_normalised/{k}"] = M.point_rmse(p / s, yv / s)
    return out, {"n_withheld_obs": int(len(yv)), "per_variable": counts, "withheld_stations": withheld}


def _interpolated(
    sds, channels, coarse: np.ndarray, k: int, shape, periodic, truth: np.ndarray, lat: np.ndarray
) -> tuple[dict[str, np.ndarray], dict]:
    """Bicubic and bilinear interpolation of the coarse field, boundaries treated as the prior
    treats them: wrapped on its periodic axes. For a prior that models anomalies from its
    training-time mean field (`{v}_climatology` in the store) the interpolation of those
    anomalies (the field added back; a mean gradient across a periodic seam is then not
    wrapped) is the other candidate, and each channel takes whichever of the two is closer to
    the truth: the stronger baseline, so the ratio against it can only be conservative.
    Returns the fields and, per channel, which interpolation was used."""
    import torch

    from .operators import coarse_grain

    raw = {m: upsample(coarse, k, shape, m, periodic) for m in ("bicubic", "bilinear")}
    names = [_name(c) for c in channels]
    if not channels or f"{channels[0][0]}_climatology" not in sds.variables:
        return raw, {c: "field" for c in names}
    clim = vars_to_fields(sds, channels, "_climatology").astype(np.float64)
    anom = coarse - coarse_grain(torch.as_tensor(clim), k).numpy()
    out, used = {}, {}
    for m in ("bicubic", "bilinear"):
        an = upsample(anom, k, shape, m, periodic) + clim
        better = M.rmse(an, truth, lat) < M.rmse(raw[m], truth, lat)
        out[m] = np.where(better.reshape(1, -1, 1, 1), an, raw[m])
        if m == "bicubic":
            used = {c: "anomalies" if b else "field" for c, b in zip(names, better)}
    return out, used


def evaluate(samples_path, era5_path, obs_path=None, *, options: EvaluateOptions, figures=None, run=None) -> dict:
    """Score a samples store against the ERA5 truth; returns the metrics dict (``options``: `sr.<name>.evaluate`)."""
    tol = float(options.station_pressure_tolerance_pa)
    from .data import load_fields, open_era5

    sds, sampling, channels = open_samples(samples_path)
    ds = open_era5(era5_path)
    tidx = np.asarray(sds["time_index"].values, np.int64)
    if tidx.max() >= ds.sizes["time"] or not np.array_equal(
        np.asarray(ds["time"].values)[tidx], np.asarray(sds["time"].values)
    ):
        raise InputError(
            f"the samples' times do not match the ERA5 store {era5_path} (sampled from another dataset?)", samples_path
        )
    truth = load_fields(ds, channels, tidx, member=0 if "number" in ds.dims else None, check_nan=False).astype(
        np.float64
    )
    ens = vars_to_fields(sds, channels).astype(np.float64)  # [T, N, C, H, W]
    mean = vars_to_fields(sds, channels, "_mean").astype(np.float64)
    coarse = vars_to_fields(sds, channels, "_coarse").astype(np.float64)
    lat = np.asarray(sds["latitude"].values, np.float64)
    lon = np.asarray(sds["longitude"].values, np.float64)
    H, W = len(lat), len(lon)
    k = int(sampling["coarse_factor"])
    periodic = ("latitude" in sampling["periodic"], "longitude" in sampling["periodic"])
    base, interpolated = _interpolated(sds, channels, coarse, k, (H, W), periodic, truth, lat)
    table = None
    if obs_path:
        full = read_obs(obs_path, sorted({v for v, _ in channels}))
        table = full.select(~np.isin(full.station, sampling.get("withheld_stations") or []))
        base["nearest_radiosonde"] = nearest_station_field(
            table, np.asarray(sds["time"].values), channels, lat, lon, tol
        )

    out: dict = {}
    names = [_name(c) for c in channels]
    for fn in ("rmse", "mae", "bias"):
        f = getattr(M, fn)
        for c, v in zip(names, f(mean, truth, lat)):
            out[f"{fn}/{c}"] = float(v)
        for b, fld in base.items():
            for c, v in zip(names, f(fld, truth, lat)):
                out[f"{fn}/{c}/{b}"] = float(v)
    main = (ens, deflate(ens, sampling["inflation"]))
    coarse_only = None
    if sampling["reference"] is not None:
        ref = vars_to_fields(sds, channels, "_coarse_only").astype(np.float64)
        coarse_only = (ref, deflate(ref, sampling["reference"]["inflation"]))
    elif list(sampling["conditioning"]) == ["coarse"]:
        coarse_only = main
    card_metrics, card = scorecard(
        main,
        coarse_only,
        base["bicubic"],
        truth,
        np.asarray(sampling["normalisation"]["std"], np.float64),
        lat,
        names,
        list(sampling["conditioning"]),
        vars_to_fields(sds, channels, "_gaussian").astype(np.float64)
        if f"{channels[0][0]}_gaussian" in sds.variables
        else None,
    )
    out.update(card_metrics)
    ssr = M.spread_skill(ens, truth, lat)
    sp = M.spread(ens, lat)
    crps = M.fair_crps(ens, truth, lat)
    for i, c in enumerate(names):
        out[f"spread/{c}"] = float(sp[i])
        out[f"spread_skill/{c}"] = float(ssr[i])
        out[f"crps/{c}"] = float(crps[i])
        out[f"crps/{c}/bicubic"] = out[f"mae/{c}/bicubic"]  # CRPS of a point forecast = its absolute error
    hist = M.rank_histogram(ens, truth)
    spectra: dict = {}
    # spectra of the anomalies from the prior's mean field when it models them: what is periodic
    # for the prior (a mean gradient across a periodic seam is not) and the same offset for all
    clim = (
        vars_to_fields(sds, channels, "_climatology").astype(np.float64)
        if f"{channels[0][0]}_climatology" in sds.variables
        else np.zeros(truth.shape[1:])
    )

    def spectrum(fields: np.ndarray, i: int) -> np.ndarray:
        return M.power_spectrum(fields - clim[i], periodic)[1]

    for i, c in enumerate(names):
        kk, pt = M.power_spectrum(truth[:, i] - clim[i], periodic)
        entry = {
            "k": kk.tolist(),
            "truth": pt.tolist(),
            "posterior_mean": spectrum(mean[:, i], i).tolist(),
            "members": spectrum(ens[:, :, i], i).tolist(),
        }
        if coarse_only is not None and coarse_only[0] is not ens:
            entry["coarse_only"] = spectrum(coarse_only[0][:, :, i], i).tolist()
        for b, fld in base.items():
            if np.isfinite(fld[:, i]).all():
                entry[b] = spectrum(fld[:, i], i).tolist()
        hi = kk > kk.max() / 2
        for key, vals in entry.items():
            if key in ("k", "truth"):
                continue
            ratio = float(np.sum(np.asarray(vals)[hi]) / np.sum(pt[hi])) if np.sum(pt[hi]) > 0 else float("nan")
            out[f"spectral_ratio/{c}" + ("" if key == "members" else f"/{key}")] = ratio
        spectra[c] = entry
    # withheld radiosondes
    wh_info: dict = {}
    if obs_path:
        fields = {"+".join(sampling["conditioning"]) or "prior": mean, "bicubic": base["bicubic"]}
        if "conditioning" in sds.coords:
            for j, name in enumerate(str(x) for x in np.asarray(sds["conditioning"].values, dtype=object)):
                fields[name] = vars_to_fields(sds, channels, "_mean_compare", conditioning=j).astype(np.float64)
        wh, wh_info = _withheld(obs_path, sampling, channels, np.asarray(sds["time"].values), lat, lon, fields, tol)
        out.update(wh)
    cost = sampling.get("cost", {})
    out["cost/forward_per_sample"] = cost.get("forward_per_sample")
    out["cost/backward_per_sample"] = cost.get("backward_per_sample")
    out["cost/seconds_per_sample"] = cost.get("seconds_per_sample")
    a = out.get("withheld_rmse/all_normalised/coarse")
    b = out.get("withheld_rmse/all_normalised/coarse+radiosondes")
    if a is not None and b is not None and np.isfinite(a) and a > 0:
        out["summary/withheld_rmse_gain"] = float((a - b) / a)
    result = {
        "metrics": out,
        "scorecard": {**card, "bicubic_of": interpolated, "periodic": sampling["periodic"]},
        "rank_histogram": {c: hist[i].tolist() for i, c in enumerate(names)},
        "spectra": spectra,
        "spectra_windowed_axes": [
            a for a, p in zip(("latitude", "longitude"), periodic) if not p
        ],  # detrended + Hann-windowed
        "withheld": wh_info,
        "sampling": sampling,
        "n_times": int(len(tidx)),
        "members": int(ens.shape[1]),
    }
    if figures is not None:
        from .figures import write_figures

        write_figures(
            figures,
            truth=truth,
            coarse=coarse,
            mean=mean,
            ens=ens,
            base=base,
            names=names,
            lat=lat,
            lon=lon,
            factor=k,
            hist=hist,
            spectra=spectra,
            metrics=out,
            sampling=sampling,
            times=np.asarray(sds["time"].values),
            obs_path=obs_path,
            run=run,
            map_time=int(options.map_time),
            map_channels=int(options.map_channels),
        )
    return result


def log_summary(result: dict) -> None:
    """One log line of the headline scores of :func:`evaluate`'s result."""
    m = result["metrics"]
    log.info(
        "pooled posterior-mean RMSE: coarse-only / bicubic %s (95 %% interval %s..%s), coarse-only / Gaussian baseline %s, "
        "+ radiosondes / coarse-only %s; spread-skill %.3f (raw %.3f; channels %.3f..%.3f); "
        "withheld gain %s; %s forward + %s backward passes per sample",
        m.get("summary/rmse_ratio"),
        m.get("summary/rmse_ratio_ci_low"),
        m.get("summary/rmse_ratio_ci_high"),
        m.get("summary/rmse_ratio_gaussian"),
        m.get("summary/rmse_ratio_radiosondes"),
        m["summary/spread_skill"],
        m["summary/spread_skill_raw"],
        m["summary/spread_skill_min"],
        m["summary/spread_skill_max"],
        m.get("summary/withheld_rmse_gain"),
        m["cost/forward_per_sample"],
        m["cost/backward_per_sample"],
    )
