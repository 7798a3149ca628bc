"""Calibration: an over-confident sampler (prior too narrow) is made honest on training times."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from scorebridge import options
from scorebridge.sr import metrics
from scorebridge.sr.calibrate import Conditioner, calibrate, inflate, sample_times
from scorebridge.sr.options import SampleOptions
from scorebridge.sr.prior import GaussianPrior

N = 8


def _cov(scale: float) -> torch.Tensor:
    g = np.stack(np.meshgrid(np.arange(N), np.arange(N), indexing="ij"), -1).reshape(-1, 2)
    d2 = ((g[:, None] - g[None]) ** 2).sum(-1)
    return torch.tensor(scale * (np.exp(-d2 / (2 * 1.5**2)) + 0.05 * np.eye(N * N)))


@pytest.fixture(scope="module")
def setup():
    torch.set_num_threads(1)
    truth_prior = GaussianPrior(_cov(1.0), (1, N, N))
    fields = 280.0 + 3.0 * truth_prior.sample(40, torch.Generator().manual_seed(0)).numpy()[:, 0]
    ds = xr.Dataset(
        {"t2m": (("time", "latitude", "longitude"), fields.astype(np.float32))},
        coords={
            "time": np.datetime64("2020-01-01") + np.arange(40) * np.timedelta64(6, "h"),
            "latitude": np.linspace(40, 47, N),
            "longitude": np.linspace(0, 7, N),
        },
    )
    cfg = {
        "members": 8,
        "steps": 12,
        "batch_size": 256,
        "coarse": {"factor": 2, "sigma_y": {"t2m": 0.05}, "gamma": 0.5},
        "calibrate": {"times": 16, "gammas": [0.3, 1.0], "inflation": True, "inflation_range": [0.5, 4.0]},
    }
    narrow = GaussianPrior(_cov(0.25), (1, N, N))  # a misspecified, too narrow prior: over-confident posteriors
    cond = Conditioner(
        ds,
        [("t2m", None)],
        np.array([280.0], np.float32),
        np.array([3.0], np.float32),
        options.build(SampleOptions, cfg),
    )
    return narrow, cond


def test_inflation_calibrated_on_training_times_holds_on_held_out(setup):
    prior, cond = setup
    train, test = np.arange(0, 20), np.arange(20, 40)
    cal = calibrate(prior, cond, train, ["coarse"], seed=0, device="cpu")
    assert cal["gamma"]["coarse"] in (0.3, 1.0) and len(cal["table"]) == 2
    row = next(r for r in cal["table"] if r.get("chosen"))
    assert row["ssr_raw"] < 0.8 and np.min(cal["inflation"]) > 1.2  # the failure mode is there
    assert row["ssr"] == pytest.approx(1.0, abs=0.02)  # by construction on the calibration times
    truth = cond.truth(test)
    ens, _, _ = sample_times(prior, cond.with_gamma(cal["gamma"]), test, truth, ["coarse"], 8, seed=3, device="cpu")
    lat = cond.lat
    raw = metrics.spread_skill(ens, truth, lat)[0]
    fixed = metrics.spread_skill(inflate(ens, cal["inflation"]), truth, lat)[0]
    assert raw < 0.8 and 0.75 < fixed < 1.33, (raw, fixed)
    # the mean is untouched, the CRPS improves
    assert np.allclose(inflate(ens, 2.0).mean(1), ens.mean(1), atol=1e-4)
    assert metrics.fair_crps(inflate(ens, cal["inflation"]), truth, lat)[0] < metrics.fair_crps(ens, truth, lat)[0]
