"""Figures of the bridge stage (matplotlib, headless), saved through `scorebridge.plots.save_figure`.

- `trajectories`: bridge trajectories over the snapshots in the first two principal
  components of all cells (snapshots as coloured clouds, paths as thin lines).
- `marginals`: predicted vs observed particles at each held-out time, one panel per method,
  shared axes along each held-out time, every observed cell in the background.
- `w1`: W1 per held-out time and method with bootstrap intervals, and the model's paired
  margin over each baseline.
- `parameters`: the reference's parameters (and the objective) across outer iterations.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["pca_basis", "plot_trajectories", "plot_marginals", "plot_w1_intervals", "plot_parameters"]


def pca_basis(snapshots: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(mean (d,), components (d, 2)) of all cells pooled; identity axes in 2-D (or 1-D padded)."""
    allx = np.concatenate(snapshots)
    mu = allx.mean(0)
    d = allx.shape[1]
    if d <= 2:
        comp = np.eye(d, 2)
        return mu * 0, comp
    _, _, vt = np.linalg.svd(allx - mu, full_matrices=False)
    return mu, vt[:2].T


def _proj(x, basis):
    mu, comp = basis
    return (np.asarray(x) - mu) @ comp


def plot_trajectories(snapshots, times, traj_times, paths, title: str = "", axis_names=None):
    basis = pca_basis(snapshots)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    cmap = plt.get_cmap("viridis")
    tmin, tmax = min(times), max(times)
    for p in paths[: min(len(paths), 150)]:
        z = _proj(p, basis)
        ax.plot(z[:, 0], z[:, 1], color="0.3", lw=0.5, alpha=0.35)
    for t, x in zip(times, snapshots):
        z = _proj(x, basis)
        ax.scatter(
            z[:, 0], z[:, 1], s=6, color=cmap((t - tmin) / max(tmax - tmin, 1e-12)), label=f"t = {t:g}", alpha=0.8
        )
    names = axis_names or (["PC 1", "PC 2"] if snapshots[0].shape[1] > 2 else ["x1", "x2"])
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    ax.set_title(title or "bridge trajectories over the snapshots")
    ax.legend(fontsize=7, markerscale=2, loc="best")
    fig.tight_layout()
    return fig


def _limits(clouds: list[np.ndarray], pad: float = 0.08) -> tuple[tuple[float, float], tuple[float, float]]:
    """Axis limits holding the 0.5-99.5 % range of every cloud (2-D), padded."""
    z = np.concatenate([c for c in clouds if len(c)])
    lo, hi = np.quantile(z, 0.005, axis=0), np.quantile(z, 0.995, axis=0)
    span = np.maximum(hi - lo, 1e-9)
    lo, hi = lo - pad * span, hi + pad * span
    return (float(lo[0]), float(hi[0])), (float(lo[1]), float(hi[1]))


def plot_marginals(predictions, snapshots, times, metrics: dict | None = None):
    """predictions: list of (method, time, split, array); one row per held-out time, one
    panel per method, every panel of a row on the same axes (the held-out cells and every
    prediction at that time fit), every observed cell in light grey behind, the held-out
    cells in dark grey, the prediction in colour."""
    from .evaluate import METHOD_ORDER, time_label

    basis = pca_basis(snapshots)
    held = sorted({t for _, t, _, _ in predictions})
    methods = [m for m in METHOD_ORDER if any(p[0] == m for p in predictions)]
    methods += sorted({p[0] for p in predictions} - set(methods))
    background = _proj(np.concatenate(snapshots), basis)
    fig, axes = plt.subplots(len(held), len(methods), figsize=(2.3 * len(methods), 2.4 * len(held)), squeeze=False)
    names = ["PC 1", "PC 2"] if snapshots[0].shape[1] > 2 else ["x1", "x2"]
    for r, t in enumerate(held):
        k = [float(x) for x in times].index(float(t))
        obs = _proj(snapshots[k], basis)
        preds = {
            m: _proj(np.concatenate([p for mm, tt, _, p in predictions if mm == m and tt == t]), basis)
            for m in methods
            if any(mm == m and tt == t for mm, tt, _, _ in predictions)
        }
        xlim, ylim = _limits([obs, *preds.values()])
        for c, m in enumerate(methods):
            ax = axes[r, c]
            ax.scatter(background[:, 0], background[:, 1], s=2, color="0.88", label="all observed", rasterized=True)
            ax.scatter(obs[:, 0], obs[:, 1], s=3, color="0.45", label=f"observed t = {t:g}", rasterized=True)
            if m in preds:
                ax.scatter(
                    preds[m][:, 0], preds[m][:, 1], s=3, color="C3", alpha=0.55, label="predicted", rasterized=True
                )
            ax.set_xlim(*xlim)
            ax.set_ylim(*ylim)
            w1 = (metrics or {}).get(f"w1/{m}/{time_label(t)}")
            ax.set_title(f"{m}, t = {t:g}" + (f"\nW1 = {w1:.3f}" if w1 is not None else ""), fontsize=8)
            ax.tick_params(labelsize=6)
            if c:
                ax.set_yticklabels([])
            else:
                ax.set_ylabel(names[1], fontsize=7)
            if r == len(held) - 1:
                ax.set_xlabel(names[0], fontsize=7)
    axes[0, 0].legend(fontsize=6, markerscale=2, loc="best")
    fig.tight_layout()
    return fig


def plot_w1_intervals(metrics: dict, comparison: dict | None = None):
    """Left: W1 per held-out time (and their mean) for every method, with its bootstrap
    interval; right: the model minus each baseline, with the paired bootstrap interval (below
    zero: the model is better). Without replicates, points only."""
    from .evaluate import METHOD_ORDER

    labels = sorted({k.split("/")[2] for k in metrics if k.startswith("w1/model/t")}, key=lambda s: float(s[1:])) + [
        "mean"
    ]
    methods = [m for m in METHOD_ORDER if f"w1/{m}/mean" in metrics]
    intervals = comparison["w1"] if comparison else {}
    diffs = comparison["times"] if comparison else {}
    compared = next(iter(diffs.values()))["baselines"] if diffs else {}
    baselines = [m for m in methods if m in compared]
    fig, axes = plt.subplots(1, 2 if baselines else 1, figsize=(11 if baselines else 6, 3.8), squeeze=False)
    x = np.arange(len(labels))
    width = 0.8 / max(len(methods), 1)
    ax = axes[0, 0]
    for i, m in enumerate(methods):
        v = np.array([metrics.get(f"w1/{m}/{lab}", np.nan) for lab in labels])
        pos = x - 0.4 + width * (i + 0.5)
        iv = [intervals.get(lab, {}).get(m) for lab in labels]
        if all(r is not None for r in iv) and intervals:
            lo, hi = np.array([r["low"] for r in iv]), np.array([r["high"] for r in iv])
            ax.errorbar(
                pos,
                v,
                yerr=[np.maximum(v - lo, 0), np.maximum(hi - v, 0)],
                fmt="o",
                ms=3,
                capsize=2,
                color=f"C{i}",
                label=m,
            )
        else:
            ax.plot(pos, v, "o", ms=3, color=f"C{i}", label=m)
    ax.set_xticks(x, labels, fontsize=7)
    ax.set_ylabel("W1 (held-out)", fontsize=8)
    level = comparison["level"] if comparison else None
    reps = comparison["replicates"] if comparison else 0
    ax.set_title(
        f"W1 per held-out time ({level:.0%} bootstrap intervals, {reps} replicates)"
        if reps
        else "W1 per held-out time (no bootstrap)",
        fontsize=8,
    )
    ax.legend(fontsize=6, ncol=2)
    ax.tick_params(labelsize=6)
    if baselines:
        ax = axes[0, 1]
        width = 0.8 / len(baselines)
        for i, b in enumerate(baselines):
            rows = [diffs[lab]["baselines"][b] for lab in labels]
            d = np.array([r["difference"] for r in rows])
            lo, hi = np.array([r["low"] for r in rows]), np.array([r["high"] for r in rows])
            pos = x - 0.4 + width * (i + 0.5)
            if np.isfinite(lo).all():
                ax.errorbar(
                    pos,
                    d,
                    yerr=[np.maximum(d - lo, 0), np.maximum(hi - d, 0)],
                    fmt="s",
                    ms=3,
                    capsize=2,
                    color=f"C{methods.index(b)}",
                    label=f"model − {b}",
                )
            else:
                ax.plot(pos, d, "s", ms=3, color=f"C{methods.index(b)}", label=f"model − {b}")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(x, labels, fontsize=7)
        ax.set_ylabel("W1 difference (< 0: model better)", fontsize=8)
        ax.set_title("model minus each baseline, paired bootstrap", fontsize=8)
        ax.legend(fontsize=6, ncol=2)
        ax.tick_params(labelsize=6)
    fig.tight_layout()
    return fig


def plot_parameters(history: list[dict], truth: dict | None = None, max_panels: int = 12):
    names = list(history[0]["params"]) if history else []
    names = names[:max_panels]
    n = len(names) + 1
    cols = min(4, n)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.4 * rows), squeeze=False)
    its = [h["iteration"] for h in history]
    for i, name in enumerate(names):
        ax = axes.flat[i]
        ax.plot(its, [h["params"].get(name, np.nan) for h in history], "o-", ms=3)
        if truth and name in truth and np.size(truth[name]) == 1:
            ax.axhline(float(truth[name]), color="C3", ls="--", lw=1, label="truth")
            ax.legend(fontsize=6)
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=6)
    ax = axes.flat[len(names)]
    ax.plot(its, [h["objective"] for h in history], "o-", ms=3, color="k")
    ax.set_title("objective Σ KL(π ‖ μ ⊗ p_ref) + const", fontsize=8)
    ax.set_xlabel("outer iteration", fontsize=7)
    ax.tick_params(labelsize=6)
    for j in range(len(names) + 1, rows * cols):
        axes.flat[j].axis("off")
    fig.tight_layout()
    return fig
