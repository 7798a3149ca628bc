"""The fair scorecard of a samples store: like compared with like, per channel and pooled.

- The coarse-only posterior against bicubic interpolation of the same coarse field
  (``rmse_ratio/{ch}``, pooled ``summary/rmse_ratio``);
- the posterior that also saw radiosondes against the coarse-only posterior
  (``rmse_ratio_radiosondes/{ch}``, pooled ``summary/rmse_ratio_radiosondes``);
- spread-skill of the raw ensembles (before the inflation that calibration may apply) and
  of the calibrated ones, per channel and pooled, for both ensembles.

Pooled numbers are in normalised units (each channel divided by the prior's climatological
std, :func:`scorebridge.sr.metrics.pooled`): a ratio of pooled RMSEs, not a mean of
per-channel ratios, so a channel with a tiny error cannot pull the headline down.
"""

from __future__ import annotations

import numpy as np

from . import metrics as M

__all__ = ["deflate", "scorecard"]


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


def scorecard(
    main: tuple[np.ndarray, np.ndarray],
    coarse_only: tuple[np.ndarray, np.ndarray] | None,
    bicubic: np.ndarray,
    truth: np.ndarray,
    std: np.ndarray,
    lat: np.ndarray,
    names: list[str],
    conditioning: list[str],
) -> tuple[dict, dict]:
    """Metrics (flat, for metrics.json and MLflow) and the scorecard table.

    ``main`` and ``coarse_only`` are ``(calibrated, raw)`` ensembles ``[T, N, C, H, W]``
    (``coarse_only`` None when the conditioning has no coarse field; the main ensemble
    itself when the conditioning is the coarse field alone); ``std[C]`` the prior's
    normalisation std.
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
