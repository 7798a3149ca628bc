"""Baselines: previous snapshot, McCann interpolation of the exact OT coupling, OT-CFM."""

from __future__ import annotations

import time

import numpy as np
import pytest

from conftest import ROOT
from scorebridge import options
from scorebridge.bridge.baselines import (
    BASELINES,
    OTCFM,
    McCann,
    Previous,
    interval_position,
    make_baseline,
    predict_previous,
)
from scorebridge.bridge.metrics import wasserstein1, wasserstein2
from scorebridge.bridge.options import McCannOptions, OTCFMOptions
from scorebridge.config import load_schema


def _snaps(rng, counts=(50, 60, 70), d=2):
    return [rng.normal(size=(n, d)) + k for k, n in enumerate(counts)]


def test_previous_snapshot():
    rng = np.random.default_rng(0)
    snaps, times = _snaps(rng), [0.0, 2.0, 5.0]
    assert np.array_equal(predict_previous(snaps, times, 1.0), snaps[0])
    assert np.array_equal(predict_previous(snaps, times, 2.0), snaps[1])
    assert np.array_equal(predict_previous(snaps, times, 4.9), snaps[1])
    assert np.array_equal(predict_previous(snaps, times, 9.0), snaps[2])
    assert np.array_equal(predict_previous(snaps, times, -1.0), snaps[0])
    assert np.array_equal(Previous().fit(snaps, times).predict(3.0), snaps[1])
    with pytest.raises(ValueError, match="strictly increasing"):
        predict_previous(snaps, [0, 2, 2], 1.0)
    with pytest.raises(ValueError, match="differ in dimension"):
        predict_previous([snaps[0], snaps[1][:, :1]], [0, 1], 0.5)


def test_interval_position():
    times = np.array([0.0, 1.0, 3.0])
    assert [interval_position(times, t) for t in (0, 0.5, 1, 2, 3, 4, -1)] == [0, 0.5, 1, 1.5, 2, 2.5, -1]


def test_mccann_translation_is_exact():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 3))
    c = np.array([2.0, -1.0, 0.5])
    y = (x + c)[rng.permutation(40)]
    m = McCann().fit([x, y], [0.0, 4.0])
    assert np.allclose(m.predict(1.0), x + 0.25 * c)
    assert np.allclose(m.predict(0.0), x) and np.allclose(m.predict(4.0), y)
    assert m.predict(2.0, n=10).shape == (10, 3)


def test_mccann_1d_is_the_quantile_interpolation():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(30, 1)), rng.exponential(size=(30, 1)) + 3
    out = McCann().fit([a, b], [1.0, 2.0]).predict(1.3)
    assert np.allclose(np.sort(out[:, 0]), 0.7 * np.sort(a[:, 0]) + 0.3 * np.sort(b[:, 0]))


def test_mccann_unequal_counts_samples_from_the_plan():
    a = np.array([[0.0], [10.0]])
    b = np.array([[1.0], [2.0], [11.0], [12.0]])
    m = McCann(seed=3).fit([a, b], [0.0, 1.0])
    plan = m.plan(0)
    assert np.allclose(plan.sum(1), 0.5) and np.allclose(plan.sum(0), 0.25)
    for seed in range(5):
        out = McCann(seed=seed).fit([a, b], [0.0, 1.0]).predict(0.5)[:, 0]
        assert out.shape == (2,)
        assert out[0] in (0.5, 1.0) and out[1] in (10.5, 11.0)  # partners only where the plan puts mass


def test_mccann_eb_reference(shared):
    X = np.load(shared("cells", "eb_5x300x5.npy"))
    m = McCann().fit([X[0], X[2], X[4]], [0, 2, 4])
    w1 = [wasserstein1(m.predict(t), X[t]) for t in (1, 3)]
    # reference figures measured with the paper's split: 0.847 / 1.023
    assert w1 == pytest.approx([0.847, 1.023], abs=0.005)
    prev = [wasserstein1(predict_previous([X[0], X[2], X[4]], [0, 2, 4], t), X[t]) for t in (1, 3)]
    assert prev == pytest.approx([1.700, 0.980], abs=0.005)


def _moving_gaussians(rng, times, n=200):
    """Gaussian populations moving on a line with growing spread: N((2t, t), (0.3 + 0.1 t)² I)."""
    return [np.array([2 * t, t]) + (0.3 + 0.1 * t) * rng.normal(size=(n, 2)) for t in times]


def test_otcfm_recovers_a_held_out_marginal_and_is_seeded():
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    rng = np.random.default_rng(4)
    times = [0.0, 1.0, 3.0]
    train = _moving_gaussians(rng, times)
    truth = _moving_gaussians(rng, [2.0], n=400)[0]
    cfg = dict(steps=400, batch=64, hidden=64, seed=5)
    model = OTCFM(**cfg).fit(train, times)
    pred = model.predict(2.0)
    assert pred.shape == (200, 2) and np.all(np.isfinite(pred))
    w2 = wasserstein2(pred, truth)
    assert w2 < 0.25, w2  # two samples of the truth differ by ~0.16
    assert w2 < 0.2 * wasserstein2(predict_previous(train, times, 2.0), truth)
    assert np.allclose(pred.mean(0), [4.0, 2.0], atol=0.12)
    small = dict(cfg, steps=20)
    assert np.array_equal(OTCFM(**small).fit(train, times).predict(2.0), OTCFM(**small).fit(train, times).predict(2.0))
    assert not np.array_equal(
        OTCFM(**small).fit(train, times).predict(2.0), OTCFM(**dict(small, seed=6)).fit(train, times).predict(2.0)
    )
    # from explicit particles and backward in time
    back = model.predict(0.0, x0=train[1], t0=1.0)
    assert wasserstein2(back, train[0]) < 0.3
    assert model.velocity(train[0][:5], 0.5).shape == (5, 2)
    assert np.mean(model.losses[-30:]) < np.mean(model.losses[:30])


@pytest.mark.slow
def test_otcfm_eb_reference_and_speed(shared):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    X = np.load(shared("cells", "eb_5x300x5.npy"))
    cpu = time.process_time()
    model = OTCFM(seed=0).fit([X[0], X[2], X[4]], [0, 2, 4])  # the schema's defaults
    cpu = time.process_time() - cpu
    w1 = [wasserstein1(model.predict(t), X[t]) for t in (1, 3)]
    # reference figures 0.843 / 1.034; the previous snapshot scores 1.700 at t = 1
    assert w1[0] < 0.95 and w1[1] < 1.12, w1
    assert cpu < 60, f"OT-CFM fit took {cpu:.0f} s of CPU"  # ~10 s on an idle core; a loose guard only


def test_make_baseline_and_schema_defaults_agree():
    import yaml

    schema = yaml.safe_load((ROOT / "src" / "scorebridge" / "schemas" / "bridge_baselines.schema.yaml").read_text())
    assert set(schema["properties"]["methods"]["default"]) == set(BASELINES)
    defaults = {k: v["default"] for k, v in schema["properties"]["otcfm"]["properties"].items()}
    model = make_baseline("otcfm", options.build(OTCFMOptions, defaults), seed=11)
    assert model.seed == 11 and model.steps == defaults["steps"] and model.batch == defaults["batch"]
    sig = OTCFM()
    for key in ("hidden", "layers", "steps", "lr", "batch", "sigma", "ode_steps", "time_input"):
        assert getattr(sig, key) == defaults[key], key
    assert isinstance(make_baseline("mccann", options.build(McCannOptions, {"seed": None}), seed=3), McCann)
    assert make_baseline("mccann", options.build(McCannOptions, {"seed": None}), seed=3).seed == 3
    with pytest.raises(KeyError, match="unknown baseline"):
        make_baseline("sinkhorn")
    assert load_schema()["properties"]["bridge"]["additionalProperties"]["properties"]["baselines"]["properties"][
        "otcfm"
    ]
