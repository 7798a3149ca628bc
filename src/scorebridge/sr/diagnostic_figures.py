"""The diagnostic figures of the super-resolution stage (:mod:`scorebridge.sr.figures` writes
them with the maps and spectra): the rank histogram, the spread-skill diagram
(:func:`binned_spread_error`), the RMSE per pressure level (:func:`rmse_table`), the RMSE at
the withheld radiosondes, and the training loss curve of ``sr-train`` (:func:`training_loss`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["binned_spread_error", "rmse_table", "training_loss"]

METHOD_STYLE = {  # method -> (label, matplotlib format)
    "posterior_mean": ("posterior mean", "C3o-"),
    "coarse_only": ("coarse-only posterior mean", "C1s--"),
    "bicubic": ("bicubic", "C0^-"),
    "bilinear": ("bilinear", "C0v:"),
    "nearest_radiosonde": ("nearest radiosonde", "C2d:"),
}


def _split(name: str) -> tuple[str, float | None]:
    v, _, lv = name.partition("/")
    return v, (float(lv) if lv else None)


def binned_spread_error(
    ens: np.ndarray, truth: np.ndarray, lat: np.ndarray | None = None, bins: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spread-skill diagram of one channel: ``ens[T, N, H, W]`` and ``truth[T, H, W]`` pooled
    into up to `bins` bins of equal population by the ensemble variance; per bin
    ``(spread, rmse, weight)``: ``sqrt((N+1)/N * mean variance)`` (unbiased over members),
    the RMSE of the ensemble mean, and the bin's share of the latitude weights. Pooling all
    bins gives the spread/skill ratio of :func:`scorebridge.sr.metrics.spread_skill`."""
    ens = np.asarray(ens, np.float64)
    n = ens.shape[1]
    if n < 2:
        raise ValueError(f"a spread needs at least 2 members, got {n}")
    var = ens.var(axis=1, ddof=1)
    err2 = (ens.mean(axis=1) - np.asarray(truth, np.float64)) ** 2
    w = np.ones(var.shape[-2]) if lat is None else np.cos(np.deg2rad(np.asarray(lat, np.float64))).clip(0.0)
    w = np.broadcast_to(w[:, None], var.shape).ravel()
    var, err2 = var.ravel(), err2.ravel()
    ok = np.isfinite(var) & np.isfinite(err2) & (w > 0)
    var, err2, w = var[ok], err2[ok], w[ok]
    if not len(var):
        return np.zeros(0), np.zeros(0), np.zeros(0)
    edges = np.unique(np.quantile(var, np.linspace(0, 1, max(1, min(bins, len(var))) + 1)))
    idx = np.clip(np.searchsorted(edges, var, side="right") - 1, 0, max(len(edges) - 2, 0))
    spread, rmse, share = [], [], []
    for b in range(max(len(edges) - 1, 1)):
        sel = idx == b
        if not sel.any():
            continue
        ws = w[sel].sum()
        spread.append(np.sqrt((n + 1) / n * np.sum(w[sel] * var[sel]) / ws))
        rmse.append(np.sqrt(np.sum(w[sel] * err2[sel]) / ws))
        share.append(ws / w.sum())
    return np.asarray(spread), np.asarray(rmse), np.asarray(share)


def rmse_table(metrics: dict, names: Sequence[str]) -> dict[str, dict[str, float]]:
    """``{channel: {method: RMSE}}`` from the metrics' ``rmse/<channel>`` (the posterior mean)
    and ``rmse/<channel>/<method>`` (baselines, the coarse-only ensemble) keys."""
    out: dict[str, dict[str, float]] = {}
    for c in names:
        row = {}
        if metrics.get(f"rmse/{c}") is not None:
            row["posterior_mean"] = float(metrics[f"rmse/{c}"])
        prefix = f"rmse/{c}/"
        for k, v in metrics.items():
            if k.startswith(prefix) and "/" not in k[len(prefix) :] and v is not None and np.isfinite(v):
                row[k[len(prefix) :]] = float(v)
        out[c] = row
    return out


def _rank_histogram(fig_dir, names, hist, metrics, run):
    from ..plots import new_figure, save_figure

    fig, axes = new_figure(1, len(names), width=2.6, height=2.4, squeeze=False)
    for i, c in enumerate(names):
        h = np.asarray(hist[i], float)
        axes[0, i].bar(np.arange(len(h)), h / h.sum(), color="C1")
        axes[0, i].axhline(1 / len(h), color="k", lw=0.8)
        axes[0, i].set_title(f"{c} (ssr {metrics[f'spread_skill/{c}']:.2f})", fontsize=9)
        axes[0, i].set_xlabel("rank of truth")
    save_figure(fig, fig_dir / "rank_histogram.png", run=run)


def _by_variable(names: Sequence[str]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, c in enumerate(names):
        out.setdefault(_split(c)[0], []).append(i)
    return out


def _spread_skill(fig_dir, ens, truth, names, lat, metrics, run):
    from ..plots import new_figure, save_figure

    groups = _by_variable(names)
    fig, axes = new_figure(1, len(groups), width=3.0, height=2.9, squeeze=False)
    for a, (v, idx) in enumerate(groups.items()):
        ax = axes[0, a]
        top = 0.0
        for j, i in enumerate(idx):
            sp, er, _ = binned_spread_error(ens[:, :, i], truth[:, i], lat)
            lv = _split(names[i])[1]
            ax.plot(
                sp,
                er,
                "o-",
                ms=3,
                color=f"C{j}",
                label=(f"{lv:g} hPa" if lv is not None else v) + f" (ratio {metrics[f'spread_skill/{names[i]}']:.2f})",
            )
            top = max(top, float(np.nanmax(np.r_[sp, er, 0.0])))
        ax.plot([0, top * 1.05], [0, top * 1.05], "k--", lw=0.8, label="spread = error")
        ax.set_xlim(0, top * 1.05 or 1)
        ax.set_ylim(0, top * 1.05 or 1)
        ax.set_title(v, fontsize=9)
        ax.set_xlabel("ensemble spread (binned)", fontsize=8)
        ax.set_ylabel("RMSE of the ensemble mean", fontsize=8)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=6)
    save_figure(fig, fig_dir / "spread_skill.png", run=run)


def _rmse_by_level(fig_dir, names, metrics, run):
    from ..plots import new_figure, save_figure

    table = rmse_table(metrics, names)
    groups = _by_variable(names)
    fig, axes = new_figure(1, len(groups), width=3.0, height=3.0, squeeze=False)
    for a, (v, idx) in enumerate(groups.items()):
        ax = axes[0, a]
        chans = [names[i] for i in idx]
        methods = [m for m in METHOD_STYLE if any(m in table[c] for c in chans)]
        methods += sorted({m for c in chans for m in table[c]} - set(methods))
        levels = [_split(c)[1] for c in chans]
        if levels[0] is None:  # a single-level variable: one bar per method
            vals = [table[chans[0]].get(m, np.nan) for m in methods]
            ax.barh(range(len(methods)), vals, color=[METHOD_STYLE.get(m, ("", "C7"))[1][:2] for m in methods])
            ax.set_yticks(range(len(methods)), [METHOD_STYLE.get(m, (m,))[0] for m in methods], fontsize=7)
        else:
            for m in methods:
                label, style = METHOD_STYLE.get(m, (m, "C7x-"))
                ax.plot(
                    [table[c].get(m, np.nan) for c in chans],
                    levels,
                    style,
                    ms=4,
                    lw=2 if m == "posterior_mean" else 1,
                    label=label,
                )
            ax.set_ylim(
                max(levels) * 1.05 if len(levels) > 1 else max(levels) + 50,
                min(levels) * 0.95 if len(levels) > 1 else min(levels) - 50,
            )
            ax.set_ylabel("pressure (hPa)", fontsize=8)
            ax.legend(fontsize=6)
        ax.set_title(v, fontsize=9)
        ax.set_xlabel("RMSE (latitude-weighted, variable's units)", fontsize=7)
        ax.tick_params(labelsize=6)
    save_figure(fig, fig_dir / "rmse_by_level.png", run=run)


def _withheld(fig_dir, metrics, why_none: str, run):
    from ..plots import new_figure, save_figure

    keys = sorted({kk.split("/")[-1] for kk in metrics if kk.startswith("withheld_rmse/all_normalised/")})
    fig, ax = new_figure(width=5.0, height=3.0)
    if keys:
        vals = [metrics[f"withheld_rmse/all_normalised/{kk}"] for kk in keys]
        ax.bar(range(len(keys)), vals, color="C2")
        ax.set_xticks(range(len(keys)), keys, rotation=20, fontsize=7)
        ax.set_ylabel("RMSE at withheld radiosondes\n(units of each variable's std)")
    else:
        ax.text(
            0.5,
            0.5,
            f"no withheld radiosondes to score:\n{why_none}",
            ha="center",
            va="center",
            wrap=True,
            fontsize=9,
            transform=ax.transAxes,
        )
        ax.set_axis_off()
    save_figure(fig, fig_dir / "withheld_radiosondes.png", run=run)


def training_loss(losses: Sequence[tuple[int, float]], path, run=None) -> Path:
    """The training loss curve (per step and a running mean) as a PNG at `path`."""
    from ..plots import new_figure, save_figure

    fig, ax = new_figure(width=5.0, height=3.2)
    steps = np.array([s for s, _ in losses], dtype=np.int64) + 1
    vals = np.array([v for _, v in losses], dtype=np.float64)
    if len(vals):
        k = max(1, len(vals) // 50)
        if k > 1:
            ax.plot(steps, vals, lw=0.6, alpha=0.4, label="per step")
            ax.plot(
                steps[k - 1 :],
                np.convolve(vals, np.ones(k) / k, mode="valid"),
                lw=1.5,
                label=f"running mean of {k} steps",
            )
        else:
            ax.plot(steps, vals, "o-", ms=2.5, lw=1.0, label="per step")
        if np.all(vals > 0):
            ax.set_yscale("log")
        ax.legend()
    else:
        ax.text(
            0.5,
            0.5,
            "no training step was run (resumed from a finished checkpoint?)",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    ax.set_xlabel("step")
    ax.set_ylabel("EDM loss")
    return save_figure(fig, path, run=run)
