"""The fair scorecard of a samples store: like compared with like, per channel and pooled.

- The coarse-only posterior against bicubic interpolation of the same coarse field
  (``rmse_ratio/{ch}``, pooled ``summary/rmse_ratio``);
- the posterior that also saw radiosondes against the coarse-only posterior
  (``rmse_ratio_radiosondes/{ch}``, pooled ``summary/rmse_ratio_radiosondes``);
- spread-skill of the raw ensembles (before the inflation that calibration may apply) and
  of the calibrated ones, per channel and pooled, for both ensembles;
- for a prior with a Wiener skip, the coarse-only posterior mean against the posterior mean
  of the prior's Gaussian part given the same coarse field (``rmse_ratio_gaussian/{ch}``,
  pooled ``summary/rmse_ratio_gaussian``): the data's second-order statistics alone;
- 95 % intervals of the pooled ratios from a paired bootstrap over the held-out times
  (``summary/<ratio>_ci_low`` / ``_ci_high``; 1,000 resamples, seeded): a ratio is "below 1"
  only when its interval is.

Pooled numbers are in normalised units (each channel divided by the prior's climatological
std, :func:`scorebridge.sr.metrics.pooled`): a ratio of pooled RMSEs, not a mean of
per-channel ratios, so a channel with a tiny error cannot pull the headline down.
"""

from __future__ import annotations

import numpy as np

from . import metrics as M

__all__ = ["deflate", "scorecard", "bootstrap_ratio", "per_time_mse"]


def deflate(ens: np.ndarray, factor) -> np.ndarray:
    """The raw ensemble behind ``ens[T, N, C, H, W]`` inflated by ``factor`` (a number or one
    per channel) about its mean (the inverse of :func:`scorebridge.sr.calibrate.inflate`)."""
    f = np.asarray(factor, dtype=np.float64)
    if f.ndim == 1:
        f = f.reshape(1, 1, -1, 1, 1)
    m = ens.mean(axis=1, keepdims=True)
    return m + (ens - m) / f


def _ensemble_scores(
    tag: str, ens: np.ndarray, raw: np.ndarray, truth: np.ndarray, std: np.ndarray, lat: np.ndarray, names: list[str]
) -> dict:
    """Per-channel and pooled scores of one ensemble; keys end in ``tag`` ("" or "/coarse_only")."""
    out: dict = {}
    rmse = M.rmse(ens.mean(1), truth, lat)
    ssr, ssr_raw = M.spread_skill(ens, truth, lat), M.spread_skill(raw, truth, lat)
    crps = M.fair_crps(ens, truth, lat)
    for i, c in enumerate(names):
        out[f"spread_skill_raw/{c}{tag}"] = float(ssr_raw[i])
        if tag:
            out[f"rmse/{c}{tag}"] = float(rmse[i])
            out[f"spread_skill/{c}{tag}"] = float(ssr[i])
            out[f"crps/{c}{tag}"] = float(crps[i])
    out[f"summary/rmse_normalised{tag}"] = M.pooled(rmse, std)
    out[f"summary/spread_skill{tag}"] = M.pooled_spread_skill(ens, truth, std, lat)
    out[f"summary/spread_skill_raw{tag}"] = M.pooled_spread_skill(raw, truth, std, lat)
    out[f"summary/spread_skill_min{tag}"] = float(np.min(ssr))
    out[f"summary/spread_skill_max{tag}"] = float(np.max(ssr))
    out[f"summary/crps_normalised{tag}"] = float(np.mean(crps / std))
    return out


def per_time_mse(pred: np.ndarray, truth: np.ndarray, lat: np.ndarray) -> np.ndarray:
    """``[T, C]`` latitude-weighted mean squared errors of each time's fields."""
    return np.stack([M.rmse(pred[t : t + 1], truth[t : t + 1], lat) ** 2 for t in range(len(truth))])


def bootstrap_ratio(num: np.ndarray, den: np.ndarray, std: np.ndarray, draws: int = 1000, seed: int = 0) -> list[float]:
    """95 % percentile interval of the pooled-RMSE ratio ``num / den`` from per-time squared
    errors ``[T, C]``, the same times resampled for both (paired)."""
    T = len(num)
    idx = np.random.default_rng(seed).integers(0, T, size=(draws, T))
    ratios = [M.pooled(np.sqrt(num[i].mean(0)), std) / M.pooled(np.sqrt(den[i].mean(0)), std) for i in idx]
    return [float(v) for v in np.percentile(ratios, [2.5, 97.5])]


def scorecard(
    main: tuple[np.ndarray, np.ndarray],
    coarse_only: tuple[np.ndarray, np.ndarray] | None,
    bicubic: np.ndarray,
    truth: np.ndarray,
    std: np.ndarray,
    lat: np.ndarray,
    names: list[str],
    conditioning: list[str],
    gaussian: np.ndarray | None = None,
) -> tuple[dict, dict]:
    """Metrics (flat, for metrics.json and MLflow) and the scorecard table.

    ``main`` and ``coarse_only`` are ``(calibrated, raw)`` ensembles ``[T, N, C, H, W]``
    (``coarse_only`` None when the conditioning has no coarse field; the main ensemble
    itself when the conditioning is the coarse field alone); ``std[C]`` the prior's
    normalisation std; ``gaussian[T, C, H, W]`` the Gaussian baseline's coarse-only posterior
    mean, or None.
    """
    std = np.asarray(std, np.float64)
    out = _ensemble_scores("", main[0], main[1], truth, std, lat, names)
    rmse_bicubic = M.rmse(bicubic, truth, lat)
    rmse_main = M.rmse(main[0].mean(1), truth, lat)
    out["summary/rmse_normalised/bicubic"] = M.pooled(rmse_bicubic, std)
    main_tag = "+".join(conditioning) or "prior"
    rows = {c: {"bicubic": float(rmse_bicubic[i]), main_tag: float(rmse_main[i])} for i, c in enumerate(names)}
    card: dict = {
        "units": "RMSE of the posterior mean (physical units per channel; pooled: normalised units)",
        "main": main_tag,
    }
    if coarse_only is not None:
        is_main = coarse_only[0] is main[0]
        if not is_main:
            out.update(_ensemble_scores("/coarse_only", coarse_only[0], coarse_only[1], truth, std, lat, names))
        rmse_co = M.rmse(coarse_only[0].mean(1), truth, lat)
        for i, c in enumerate(names):
            out[f"rmse_ratio/{c}"] = float(rmse_co[i] / rmse_bicubic[i])
            rows[c]["coarse"] = float(rmse_co[i])
            rows[c]["coarse / bicubic"] = out[f"rmse_ratio/{c}"]
            if not is_main:
                out[f"rmse_ratio_radiosondes/{c}"] = float(rmse_main[i] / rmse_co[i])
                rows[c][f"{main_tag} / coarse"] = out[f"rmse_ratio_radiosondes/{c}"]
        out["summary/rmse_ratio"] = M.pooled(rmse_co, std) / M.pooled(rmse_bicubic, std)
        card["pooled"] = {"coarse / bicubic": out["summary/rmse_ratio"]}
        mse_co = per_time_mse(coarse_only[0].mean(1), truth, lat)
        lo, hi = bootstrap_ratio(mse_co, per_time_mse(bicubic, truth, lat), std)
        out["summary/rmse_ratio_ci_low"], out["summary/rmse_ratio_ci_high"] = lo, hi
        card["pooled"]["coarse / bicubic: 95 % interval"] = [lo, hi]
        if gaussian is not None:
            rmse_g = M.rmse(gaussian, truth, lat)
            for i, c in enumerate(names):
                out[f"rmse/{c}/gaussian"] = float(rmse_g[i])
                out[f"rmse_ratio_gaussian/{c}"] = float(rmse_co[i] / rmse_g[i])
                rows[c]["gaussian"] = float(rmse_g[i])
                rows[c]["coarse / gaussian"] = out[f"rmse_ratio_gaussian/{c}"]
            out["summary/rmse_ratio_gaussian"] = M.pooled(rmse_co, std) / M.pooled(rmse_g, std)
            lo, hi = bootstrap_ratio(mse_co, per_time_mse(gaussian, truth, lat), std)
            out["summary/rmse_ratio_gaussian_ci_low"], out["summary/rmse_ratio_gaussian_ci_high"] = lo, hi
            card["pooled"]["coarse / gaussian"] = out["summary/rmse_ratio_gaussian"]
            card["pooled"]["coarse / gaussian: 95 % interval"] = [lo, hi]
        if not is_main:
            out["summary/rmse_ratio_radiosondes"] = M.pooled(rmse_main, std) / M.pooled(rmse_co, std)
            card["pooled"][f"{main_tag} / coarse"] = out["summary/rmse_ratio_radiosondes"]
    for i, c in enumerate(names):
        rows[c]["spread_skill_raw"] = out[f"spread_skill_raw/{c}"]
        rows[c]["spread_skill"] = float(M.spread_skill(main[0][:, :, i : i + 1], truth[:, i : i + 1], lat)[0])
        if coarse_only is not None and f"spread_skill_raw/{c}/coarse_only" in out:
            rows[c]["coarse: spread_skill_raw"] = out[f"spread_skill_raw/{c}/coarse_only"]
            rows[c]["coarse: spread_skill"] = out[f"spread_skill/{c}/coarse_only"]
    pooled = card.setdefault("pooled", {})
    for key in ("spread_skill_raw", "spread_skill", "rmse_normalised", "crps_normalised"):
        pooled[key] = out[f"summary/{key}"]
        if f"summary/{key}/coarse_only" in out:
            pooled[f"coarse: {key}"] = out[f"summary/{key}/coarse_only"]
    pooled["bicubic: rmse_normalised"] = out["summary/rmse_normalised/bicubic"]
    card["channels"] = rows
    return out, card
