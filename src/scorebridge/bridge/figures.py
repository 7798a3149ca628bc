"""Figures of the bridge stage (matplotlib, headless), saved through `scorebridge.plots.save_figure`.

- `trajectories`: bridge trajectories over the snapshots in the first two principal
  components of all cells (snapshots as coloured clouds, paths as thin lines).
- `marginals`: predicted vs observed particles at each held-out time, one panel per method.
- `parameters`: the reference's parameters (and the objective) across outer iterations.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["pca_basis", "plot_trajectories", "plot_marginals", "plot_parameters"]


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
        ax.scatter(z[:, 0], z[:, 1], s=6, color=cmap((t - tmin) / max(tmax - tmin, 1e-12)), label=f"t = {t:g}", alpha=0.8)
    names = axis_names or (["PC 1", "PC 2"] if snapshots[0].shape[1] > 2 else ["x1", "x2"])
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    ax.set_title(title or "bridge trajectories over the snapshots")
    ax.legend(fontsize=7, markerscale=2, loc="best")
    fig.tight_layout()
    return fig


def plot_marginals(predictions, snapshots, times, metrics: dict | None = None):
    """predictions: list of (method, time, split, array); one row per held-out time."""
    from .evaluate import METHOD_ORDER, time_label

    basis = pca_basis(snapshots)
    held = sorted({t for _, t, _, _ in predictions})
    methods = [m for m in METHOD_ORDER if any(p[0] == m for p in predictions)]
    methods += sorted({p[0] for p in predictions} - set(methods))
    fig, axes = plt.subplots(len(held), len(methods), figsize=(2.6 * len(methods), 2.5 * len(held)), squeeze=False)
    for r, t in enumerate(held):
        k = [float(x) for x in times].index(float(t))
        obs = _proj(snapshots[k], basis)
        for c, m in enumerate(methods):
            ax = axes[r, c]
            ax.scatter(obs[:, 0], obs[:, 1], s=4, color="0.6", label="observed")
            for method, tt, _, pred in predictions:
                if method == m and tt == t:
                    z = _proj(pred, basis)
                    ax.scatter(z[:, 0], z[:, 1], s=4, color="C3", alpha=0.6, label="predicted")
            w1 = (metrics or {}).get(f"w1/{m}/{time_label(t)}")
            ax.set_title(f"{m}, t = {t:g}" + (f"\nW1 = {w1:.3f}" if w1 is not None else ""), fontsize=8)
            ax.tick_params(labelsize=6)
    axes[0, 0].legend(fontsize=6, markerscale=2)
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
