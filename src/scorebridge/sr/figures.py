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
  (:func:`scorebridge.sr.diagnostic_figures.binned_spread_error`), per variable, one line per level;
- ``rmse_by_level``: RMSE per pressure level for the posterior mean and every baseline;
- ``withheld_radiosondes``: RMSE at the radiosondes withheld from conditioning.

``sr-train`` writes :data:`TRAINING_FIGURE` (the loss curve,
:func:`scorebridge.sr.diagnostic_figures.training_loss`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .diagnostic_figures import _rank_histogram, _rmse_by_level, _split, _spread_skill, _withheld

__all__ = [
    "EVALUATE_FIGURES",
    "TRAINING_FIGURE",
    "station_positions",
    "write_figures",
]

EVALUATE_FIGURES = ("maps", "spectra", "rank_histogram", "spread_skill", "rmse_by_level", "withheld_radiosondes")
TRAINING_FIGURE = "training_loss"


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
