"""Figures of the super-resolution stage, one PNG each (headless matplotlib), saved through
:func:`scorebridge.plots.save_figure` (the rule's declared output and the MLflow run).

``sr-evaluate`` writes :data:`EVALUATE_FIGURES` into its figures folder, every one of them
always (a figure with nothing to show says why), so that each is a declared output of the
rule ``sr_evaluate`` with its own caption (``workflow/report/sr/<name>.rst``):

- ``maps``: truth, coarse input, bicubic, posterior mean, one member and the ensemble
  spread for one time and the first channels, with coastlines (:mod:`scorebridge.coastlines`)
  and the radiosondes (used for conditioning: black triangles; withheld: white circles);
- ``spectra``: radially averaged power spectra per channel;
- ``rank_histogram``: rank of the truth in the ensemble per channel;
- ``spread_skill``: binned spread against the RMSE of the ensemble mean
  (:func:`binned_spread_error`), per variable, one line per level;
- ``rmse_by_level``: RMSE per pressure level for the posterior mean and every baseline;
- ``withheld_radiosondes``: RMSE at the radiosondes withheld from conditioning.

``sr-train`` writes :data:`TRAINING_FIGURE` (the loss curve, :func:`training_loss`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = [
    "EVALUATE_FIGURES",
    "TRAINING_FIGURE",
    "binned_spread_error",
    "rmse_table",
    "station_positions",
    "write_figures",
    "training_loss",
]

EVALUATE_FIGURES = ("maps", "spectra", "rank_histogram", "spread_skill", "rmse_by_level", "withheld_radiosondes")
TRAINING_FIGURE = "training_loss"

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


def station_positions(
    obs_path, variables: Sequence[str], time, withheld: Sequence[str], lon: np.ndarray
) -> dict[str, np.ndarray]:
    """Positions ``{'used' | 'withheld': (n, 2) lon/lat}`` of the radiosondes observed at
    `time`, their longitudes in the grid's convention (`lon`: 0..360 or -180..180)."""
    from .observations import read_obs

    empty = {"used": np.zeros((0, 2)), "withheld": np.zeros((0, 2))}
    if obs_path is None:
        return empty
    table = read_obs(obs_path, sorted(set(variables)))
    at = table.select(table.time == np.datetime64(time, "ns"))
    out = dict(empty)
    lon0 = float(np.min(lon))
    for key, keep in (
        ("withheld", np.isin(at.station, list(withheld))),
        ("used", ~np.isin(at.station, list(withheld))),
    ):
        sub = at.select(keep)
        _, first = np.unique(sub.station, return_index=True)
        x = lon0 + np.mod(np.asarray(sub.longitude[first], np.float64) - lon0, 360.0)
        out[key] = np.column_stack([x, np.asarray(sub.latitude[first], np.float64)])
    return out


def _extent(lon: np.ndarray, lat: np.ndarray) -> list[float]:
    dx = (lon[-1] - lon[0]) / max(len(lon) - 1, 1)
    dy = (lat[-1] - lat[0]) / max(len(lat) - 1, 1)
    return [lon[0] - dx / 2, lon[-1] + dx / 2, lat[0] - dy / 2, lat[-1] + dy / 2]


def _map_panel(ax, field, ext, lon, lat, stations, with_stations: bool, **kw):
    from ..coastlines import draw_coastlines

    im = ax.imshow(field, origin="lower", extent=ext, aspect="auto", **kw)
    ax.set_xlim(min(ext[:2]), max(ext[:2]))
    ax.set_ylim(min(ext[2:]), max(ext[2:]))  # north up whatever the stored latitude order
    draw_coastlines(ax, lon, lat)
    if with_stations:
        used, held = stations["used"], stations["withheld"]
        if len(used):
            ax.scatter(
                used[:, 0],
                used[:, 1],
                marker="^",
                s=22,
                c="k",
                edgecolors="w",
                linewidths=0.5,
                zorder=4,
                label=stations["used_label"],
            )
        if len(held):
            ax.scatter(
                held[:, 0],
                held[:, 1],
                marker="o",
                s=26,
                c="w",
                edgecolors="k",
                linewidths=1.0,
                zorder=4,
                label="withheld radiosondes (scored)",
            )
    return im


def _maps(fig_dir, truth, coarse, mean, ens, base, names, lat, lon, k, stations, t, map_channels, run, title):
    from ..plots import new_figure, save_figure

    show = list(range(min(len(names), map_channels)))
    cols = ["truth", "coarse", "bicubic", "posterior mean", "member 0", "ensemble spread"]
    fig, axes = new_figure(len(show), len(cols), width=2.6, height=2.3, squeeze=False)
    ext = _extent(lon, lat)
    for r, i in enumerate(show):
        vmin, vmax = np.nanpercentile(truth[t, i], [1, 99])
        panels = [
            truth[t, i],
            np.repeat(np.repeat(coarse[t, i], k, 0), k, 1)[: len(lat), : len(lon)],
            base["bicubic"][t, i],
            mean[t, i],
            ens[t, 0, i],
        ]
        for c, p in enumerate(panels):
            im = _map_panel(axes[r, c], p, ext, lon, lat, stations, c == 0, vmin=vmin, vmax=vmax, cmap="RdBu_r")
        fig.colorbar(im, ax=axes[r, 4], shrink=0.8)
        im2 = _map_panel(axes[r, 5], ens[t, :, i].std(0, ddof=1), ext, lon, lat, stations, True, cmap="viridis")
        fig.colorbar(im2, ax=axes[r, 5], shrink=0.8)
        axes[r, 0].set_ylabel(names[i])
        for c in range(len(cols)):
            if r == 0:
                axes[r, c].set_title(cols[c], fontsize=9)
            axes[r, c].tick_params(labelsize=6)
    handles, labels = axes[0, 5].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=len(handles), fontsize=7)
    fig.suptitle(title, fontsize=9)
    save_figure(fig, fig_dir / "maps.png", run=run)


def _spectra(fig_dir, names, spectra, run):
    from ..plots import new_figure, save_figure

    fig, axes = new_figure(1, len(names), width=3.2, height=2.8, squeeze=False)
    styles = [
        ("truth", "k-"),
        ("members", "C3-"),
        ("posterior_mean", "C3--"),
        ("coarse_only", "C1-"),
        ("bicubic", "C0-"),
        ("bilinear", "C0:"),
        ("nearest_radiosonde", "C2:"),
    ]
    for i, c in enumerate(names):
        s = spectra[c]
        ax = axes[0, i]
        for key, style in styles:
            if key in s:
                ax.loglog(s["k"], s[key], style, label=key.replace("_", " "))
        ax.set_title(c, fontsize=9)
        ax.set_xlabel("wavenumber (cycles per domain)")
    axes[0, 0].set_ylabel("power")
    axes[0, 0].legend(fontsize=6)
    save_figure(fig, fig_dir / "spectra.png", run=run)


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


def write_figures(
    fig_dir,
    *,
    truth,
    coarse,
    mean,
    ens,
    base,
    names,
    lat,
    lon,
    factor: int,
    hist,
    spectra,
    metrics: dict,
    sampling: dict,
    times,
    obs_path,
    map_time: int,
    map_channels: int,
    run=None,
) -> list[Path]:
    """Write every figure of :data:`EVALUATE_FIGURES` into `fig_dir`; returns their paths.

    Fields are physical: ``truth, mean[T, C, H, W]``, ``ens[T, N, C, H, W]``, ``coarse[T, C, h, w]``,
    ``base[name][T, C, H, W]`` (the baselines); `metrics` the scores of ``sr-evaluate``."""
    fig_dir = Path(fig_dir)
    fig_dir.mkdir(parents=True, exist_ok=True)
    lat = np.asarray(lat, np.float64)
    lon = np.asarray(lon, np.float64)
    t = min(int(map_time), truth.shape[0] - 1)
    withheld = list(sampling.get("withheld_stations") or [])
    stations = station_positions(obs_path, sorted({_split(c)[0] for c in names}), np.asarray(times)[t], withheld, lon)
    conditioned = "radiosondes" in (sampling.get("conditioning") or [])
    stations["used_label"] = (
        "radiosondes used for conditioning" if conditioned else "radiosondes (not in this conditioning)"
    )
    when = np.datetime_as_string(np.asarray(times)[t].astype("datetime64[m]"))
    _maps(
        fig_dir,
        truth,
        coarse,
        mean,
        ens,
        base,
        names,
        lat,
        lon,
        int(factor),
        stations,
        t,
        int(map_channels),
        run,
        f"{when}, conditioned on {' + '.join(sampling.get('conditioning') or ['nothing'])}",
    )
    _spectra(fig_dir, names, spectra, run)
    _rank_histogram(fig_dir, names, hist, metrics, run)
    _spread_skill(fig_dir, ens, truth, names, lat, metrics, run)
    _rmse_by_level(fig_dir, names, metrics, run)
    why = (
        "no collocated radiosondes were given to sr-evaluate"
        if obs_path is None
        else "no station was withheld (sample.radiosondes.withheld_fraction / withheld_stations)"
        if not withheld
        else f"the withheld stations {withheld} have no observation at the sampled times"
    )
    _withheld(fig_dir, metrics, why, run)
    return [fig_dir / f"{name}.png" for name in EVALUATE_FIGURES]


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
