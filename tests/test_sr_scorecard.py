"""The fair scorecard (issue 13): pooled scores, wrapped baselines, windowed spectra, MMPS,
the calibration gap, radiosonde surface records. Tiny grids, no training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from scorebridge.sr import metrics
from scorebridge.sr.baselines import upsample
from scorebridge.sr.calibrate import inflate
from scorebridge.sr.operators import coarse_grain
from scorebridge.sr.scorecard import deflate, scorecard


def test_pooled_scores_by_hand():
    std = np.array([1.0, 10.0])
    assert metrics.pooled([0.5, 5.0], std) == pytest.approx(0.5)
    assert metrics.pooled([0.0, 10.0], std) == pytest.approx(np.sqrt(0.5))
    # a reliable ensemble in two channels of very different scales: pooled ssr ~ 1
    rng = np.random.default_rng(0)
    T, N = 2000, 4
    centre = rng.standard_normal((T, 1, 2, 1, 1)) * std.reshape(1, 1, 2, 1, 1)
    ens = centre + rng.standard_normal((T, N, 2, 1, 1)) * std.reshape(1, 1, 2, 1, 1)
    truth = centre[:, 0] + rng.standard_normal((T, 2, 1, 1)) * std.reshape(1, 2, 1, 1)
    assert metrics.pooled_spread_skill(ens, truth, std) == pytest.approx(1.0, abs=0.05)
    # deflate undoes inflate (per channel)
    assert np.allclose(deflate(inflate(ens, [0.5, 2.0]), [0.5, 2.0]), ens, atol=1e-9)


def test_scorecard_compares_like_with_like():
    rng = np.random.default_rng(1)
    T, N, C, H, W = 3, 4, 2, 4, 4
    std = np.array([1.0, 100.0])
    truth = rng.standard_normal((T, C, H, W)) * std.reshape(1, C, 1, 1)
    noise = lambda a: rng.standard_normal((T, N, C, H, W)) * std.reshape(1, 1, C, 1, 1) * a  # noqa: E731
    coarse_only = truth[:, None] + noise(0.5)
    main = truth[:, None] + noise(0.25)
    bicubic = truth + rng.standard_normal((T, C, H, W)) * std.reshape(1, C, 1, 1)
    names = ["a", "b"]
    out, card = scorecard(
        (main, main), (coarse_only, coarse_only), bicubic, truth, std, None, names, ["coarse", "radiosondes"]
    )
    r_co, r_main, r_bi = (metrics.rmse(x, truth) for x in (coarse_only.mean(1), main.mean(1), bicubic))
    # the headline ratio is coarse-only against bicubic, pooled in normalised units
    assert out["summary/rmse_ratio"] == pytest.approx(metrics.pooled(r_co, std) / metrics.pooled(r_bi, std))
    assert out["summary/rmse_ratio_radiosondes"] == pytest.approx(
        metrics.pooled(r_main, std) / metrics.pooled(r_co, std)
    )
    assert out["rmse_ratio/b"] == pytest.approx(r_co[1] / r_bi[1]) and out["rmse_ratio_radiosondes/a"] == pytest.approx(
        r_main[0] / r_co[0]
    )
    assert out["summary/rmse_ratio"] != pytest.approx(
        np.mean(r_main / r_bi)
    )  # not the old mean of per-channel ratios of the main posterior
    assert set(card["channels"]["a"]) >= {
        "bicubic",
        "coarse",
        "coarse / bicubic",
        "coarse+radiosondes / coarse",
        "spread_skill_raw",
        "spread_skill",
    }
    # the coarse field alone: the main ensemble is the coarse-only one
    out1, _ = scorecard(
        (coarse_only, coarse_only), (coarse_only, coarse_only), bicubic, truth, std, None, names, ["coarse"]
    )
    assert (
        out1["summary/rmse_ratio"] == pytest.approx(out["summary/rmse_ratio"])
        and "summary/rmse_ratio_radiosondes" not in out1
    )


def test_scorecard_gaussian_baseline_and_bootstrap_intervals():
    rng = np.random.default_rng(2)
    T, N, C, H, W = 12, 4, 2, 4, 4
    std = np.array([1.0, 10.0])
    truth = rng.standard_normal((T, C, H, W)) * std.reshape(1, C, 1, 1)
    ens = truth[:, None] + 0.3 * rng.standard_normal((T, N, C, H, W)) * std.reshape(1, 1, C, 1, 1)
    bicubic = truth + rng.standard_normal((T, C, H, W)) * std.reshape(1, C, 1, 1)
    better = truth + 0.05 * rng.standard_normal((T, C, H, W)) * std.reshape(1, C, 1, 1)  # a baseline it loses to
    out, card = scorecard((ens, ens), (ens, ens), bicubic, truth, std, None, ["a", "b"], ["coarse"], gaussian=better)
    r_co, r_g = metrics.rmse(ens.mean(1), truth), metrics.rmse(better, truth)
    assert out["summary/rmse_ratio_gaussian"] == pytest.approx(metrics.pooled(r_co, std) / metrics.pooled(r_g, std))
    assert out["rmse_ratio_gaussian/b"] == pytest.approx(r_co[1] / r_g[1])
    assert card["channels"]["a"]["coarse / gaussian"] == out["rmse_ratio_gaussian/a"]
    # intervals bracket the point estimates; the loss to the better baseline is clear, the win over bicubic too
    lo, hi = out["summary/rmse_ratio_ci_low"], out["summary/rmse_ratio_ci_high"]
    assert lo <= out["summary/rmse_ratio"] <= hi < 1
    lo_g, hi_g = out["summary/rmse_ratio_gaussian_ci_low"], out["summary/rmse_ratio_gaussian_ci_high"]
    assert 1 < lo_g <= out["summary/rmse_ratio_gaussian"] <= hi_g
    # no baseline given: no gaussian keys
    out2, _ = scorecard((ens, ens), (ens, ens), bicubic, truth, std, None, ["a", "b"], ["coarse"])
    assert "summary/rmse_ratio_gaussian" not in out2 and "summary/rmse_ratio_ci_low" in out2


def test_baselines_wrap_on_periodic_axes():
    n, k = 32, 4
    rng = np.random.default_rng(0)
    c = rng.standard_normal((2, n // k, n // k))
    up = lambda a, p: upsample(a, k, (n, n), "bicubic", p)  # noqa: E731
    # wrapped along longitude: interpolation commutes with a circular shift along it (no edge there) ...
    wrapped = up(np.roll(c, 3, axis=-1), (False, True))
    assert np.allclose(wrapped, np.roll(up(c, (False, True)), 3 * k, axis=-1), atol=1e-5)
    # ... which clamped edges do not
    assert not np.allclose(
        up(np.roll(c, 3, axis=-1), (False, False)), np.roll(up(c, (False, False)), 3 * k, axis=-1), atol=1e-2
    )
    # latitude is left alone: the same as clamped along it, and the interior away from the seams unchanged
    assert np.allclose(up(c, (False, True))[..., :, 8:24], up(c, (False, False))[..., :, 8:24], atol=1e-5)
    # a smooth periodic field is recovered better at the seam
    j = np.arange(n)
    f = np.tile(np.sin(2 * np.pi * j / n) + 0.5 * np.cos(2 * np.pi * 2 * j / n), (n, 1))
    cf = coarse_grain(torch.tensor(f)[None], k).numpy()
    err = {p: np.abs(up(cf, p)[0] - f).max(axis=0) for p in [(False, False), (False, True)]}
    assert err[(False, True)][[0, n - 1]].max() < 0.5 * err[(False, False)][[0, n - 1]].max()


def test_spectrum_windowed_on_non_periodic_axes():
    n = 64
    i = np.arange(n)[:, None]
    j = np.arange(n)[None, :]
    # a north-south gradient (not periodic) plus a small wave of 10 cycles
    f = 5.0 * i / n + 0.1 * np.sin(2 * np.pi * 10 * j / n)
    k, p_raw = metrics.power_spectrum(f[None], (True, True))
    _, p_win = metrics.power_spectrum(f[None], (False, False))
    # unwindowed, the edge jump of the gradient leaks into every wavenumber (~k^-2): at k = 20..32
    # it outweighs the wave; detrended and windowed, the wave stands out and the tail is gone
    hi = k >= 20
    assert p_raw[hi].sum() > 0.5 * p_raw[k == 10].sum()
    assert p_win[hi].sum() < 1e-3 * p_win[k == 10].sum()
    assert k[np.argmax(p_win)] == 10
    # the window keeps the variance of a stationary field (power divided by the window's mean square)
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((200, n, n))
    _, pn = metrics.power_spectrum(noise, (False, False))
    assert pn.sum() == pytest.approx(
        noise.var() * np.pi / 4, rel=0.1
    )  # the corner wavenumbers > n/2 are cut off (disc / square)


def test_conjugate_gradient_solves_in_n_steps():
    from scorebridge.sr.guidance.mmps import conjugate_gradient

    rng = np.random.default_rng(0)
    a = rng.standard_normal((2, 5, 5))
    m = torch.tensor(a @ a.transpose(0, 2, 1) + 5 * np.eye(5))
    b = torch.tensor(rng.standard_normal((2, 5)))
    u = conjugate_gradient(lambda vs: [torch.einsum("bij,bj->bi", m, vs[0])], [b], 5)[0]
    assert torch.allclose(u, torch.linalg.solve(m, b), atol=1e-8)


def test_gap_between_calibration_and_held_out_times():
    from scorebridge.sr.sample import _apart, _gap_steps

    ds = xr.Dataset(coords={"time": np.datetime64("2020-01-01") + np.arange(20) * np.timedelta64(6, "h")})
    assert _gap_steps(ds, 24) == 4 and _gap_steps(ds, 25) == 5 and _gap_steps(ds, 0) == 0
    hourly = xr.Dataset(coords={"time": np.datetime64("2020-01-01") + np.arange(30) * np.timedelta64(1, "h")})
    assert _gap_steps(hourly, 24) == 24
    test = np.arange(12, 20)
    assert list(_apart(test, np.array([8, 11]), 4)) == [16, 17, 18, 19]  # 4 steps (12..15) left out after 11
    assert list(_apart(test, np.array([8, 11]), 0)) == list(range(12, 20))


def test_surface_records_observe_single_level_channels(tmp_path):
    from scorebridge.data.igra.collocate import collocate, era5_grid
    from scorebridge.sr.baselines import nearest_station_field
    from scorebridge.sr.observations import read_obs
    from scorebridge.sr.point_obs import build_point_obs

    times = np.datetime64("2020-01-01") + np.arange(2) * np.timedelta64(6, "h")
    era5 = xr.Dataset(
        coords={
            "time": times,
            "level": [850.0, 500.0],
            "latitude": np.linspace(40, 43, 4),
            "longitude": np.linspace(0, 3, 4),
        }
    )
    # one sounding: the surface record at 1013 hPa (outside the levels), 850 and 500 hPa
    n = 3
    igra = xr.Dataset(
        {
            "station": ("obs", np.array(["S1"] * n, dtype=object)),
            "time": ("obs", np.array([times[0]] * n)),
            "latitude": ("obs", np.full(n, 41.5)),
            "longitude": ("obs", np.full(n, 1.5)),
            "pressure": ("obs", np.array([101300.0, 85000.0, 50000.0])),
            "temperature": ("obs", np.array([288.0, 280.0, 255.0])),
            "u": ("obs", np.array([2.0, 5.0, 15.0])),
            "v": ("obs", np.array([-1.0, 0.0, 1.0])),
            "gph": ("obs", np.array([10.0, 1500.0, 5600.0])),
            "lvltyp2": ("obs", np.array([1, 0, 0])),
        }
    )
    col = collocate(igra, era5_grid(era5), 3.0)
    assert list(col["surface"].values) == [True, False, False] and col.sizes["obs"] == 3  # the surface record is kept
    col.to_zarr(tmp_path / "obs.zarr", consolidated=False)
    channels = [("t2m", None), ("u10", None), ("t", 850.0), ("t", 500.0)]
    table = read_obs(tmp_path / "obs.zarr", sorted({v for v, _ in channels}))
    got = {(v, None if np.isnan(p) else float(p)): x for v, p, x in zip(table.variable, table.pressure, table.value)}
    assert got == {("t2m", None): 288.0, ("u10", None): 2.0, ("t", 85000.0): 280.0, ("t", 50000.0): 255.0}
    op, y, kept, rep = build_point_obs(
        channels,
        era5.latitude.values,
        era5.longitude.values,
        table.latitude,
        table.longitude,
        table.pressure,
        table.variable,
        table.value,
    )
    assert rep.n_used == 4 and rep.n_outside_vertical == 0
    field = torch.zeros(1, 4, 4, 4)
    field[0, 0] = 288.0  # t2m everywhere: the surface t observes channel 0
    assert op(field)[0, list(table.variable[kept]).index("t2m")] == pytest.approx(288.0)
    # without single-level channels the surface record observes nothing (not t at 1013 hPa)
    t_only = read_obs(tmp_path / "obs.zarr", ["t"])
    assert sorted(t_only.pressure.tolist()) == [50000.0, 85000.0]
    # the nearest-radiosonde baseline fills the single-level channel from the surface record
    near = nearest_station_field(table, times[:1], channels, era5.latitude.values, era5.longitude.values, 50.0)
    assert np.all(near[0, 0] == 288.0) and np.all(near[0, 1] == 2.0) and np.all(near[0, 2] == 280.0)
