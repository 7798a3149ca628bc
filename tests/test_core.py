"""Shared training core: EMA warm-up, checkpoints, identity checks, device choice, seeding, the loop."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from scorebridge.core.checkpoint import (
    check_identity,
    checkpoint_name,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from scorebridge.core.device import amp_dtype, autocast, select_device
from scorebridge.core.distributed import DistInfo, shard
from scorebridge.core.ema import EMA, ema_decay
from scorebridge.core.seed import derive_seed, rng_state, seed_everything, set_rng_state, step_generator
from scorebridge.core.train import TrainOptions, fit, lr_factor
from scorebridge.errors import ConfigError, InputError
from scorebridge.options import build

# --- EMA ---------------------------------------------------------------------------------


def test_ema_decay_warmup_formula():
    assert ema_decay(0, 0.999) == pytest.approx(0.1)
    assert ema_decay(10, 0.999) == pytest.approx(11 / 20)
    assert ema_decay(10**6, 0.999) == 0.999
    assert ema_decay(5, 0.999, start=10) == 0.0  # before start: copy
    assert ema_decay(10, 0.999, start=10) == pytest.approx(0.1)
    assert ema_decay(3, 0.9, warmup=False) == 0.9


def test_ema_tracks_closed_form_recursion():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    ema = EMA(model, decay=0.99)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    for t in range(50):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        beta = ema.update(model)
        b = min(0.99, (1 + t) / (10 + t))
        assert beta == pytest.approx(b)
        for k, v in model.state_dict().items():
            expected[k] = b * expected[k] + (1 - b) * v
    for k, v in ema.module.state_dict().items():
        torch.testing.assert_close(v, expected[k])


def test_ema_initial_weights_forgotten_after_2400_steps():
    """The reported failure: constant decay 0.999 from random init keeps 0.999**2400 = 9%."""
    model = nn.Linear(4, 4)
    init = model.weight.detach().clone()
    with torch.no_grad():  # the trained weights: zero from the first step on
        model.weight.zero_()
        model.bias.zero_()
    warm, plain = EMA(model, decay=0.999), EMA(model, decay=0.999, warmup=False)
    with torch.no_grad():
        warm.module.weight.copy_(init)
        plain.module.weight.copy_(init)
    for _ in range(2400):
        warm.update(model)
        plain.update(model)
    assert plain.initial_weight() == pytest.approx(0.999**2400)
    assert plain.initial_weight() > 0.09
    # Π (1+n)/(10+n) = 9! n! / (n+9)!
    closed = math.exp(math.lgamma(10) + math.lgamma(2401) - math.lgamma(2410))
    assert warm.initial_weight() == pytest.approx(closed, rel=1e-6)
    assert warm.initial_weight() < 1e-20
    assert warm.module.weight.abs().max() < 1e-12 * init.abs().max()
    assert torch.allclose(plain.module.weight, init * 0.999**2400, rtol=1e-3)


def test_ema_state_roundtrip():
    model = nn.Linear(2, 2)
    ema = EMA(model, decay=0.9, start=3)
    for _ in range(5):
        ema.update(model)
    other = EMA(nn.Linear(2, 2), decay=0.5)
    other.load_state_dict(ema.state_dict())
    assert other.num_updates == 5 and other.start == 3 and other.decay == 0.9
    assert other.initial_weight() == ema.initial_weight()
    for a, b in zip(other.module.parameters(), ema.module.parameters()):
        assert torch.equal(a, b)


# --- checkpoints -------------------------------------------------------------------------


def test_checkpoint_roundtrip_and_latest(tmp_path):
    for step in (5, 10, 15):
        save_checkpoint(tmp_path / checkpoint_name(step), {"step": step, "w": torch.full((3,), float(step))})
    assert [s for s, _ in list_checkpoints(tmp_path)] == [5, 10, 15]
    path, state = latest_checkpoint(tmp_path)
    assert state["step"] == 15 and torch.equal(state["w"], torch.full((3,), 15.0))
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]
    # a truncated newest file (e.g. copied in by hand) is skipped, not taken as complete
    (tmp_path / checkpoint_name(20)).write_bytes(b"PK\x03\x04garbage")
    path, state = latest_checkpoint(tmp_path)
    assert state["step"] == 15
    with pytest.raises(InputError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / checkpoint_name(20))
    prune_checkpoints(tmp_path, keep=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [15, 20]


def test_save_is_atomic_on_failure(tmp_path):
    class Boom:
        def __reduce__(self):
            raise RuntimeError("cannot pickle")

    target = tmp_path / checkpoint_name(1)
    with pytest.raises(Exception):
        save_checkpoint(target, {"x": Boom()})
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_identity_mismatch_is_clear():
    ident = {"channels": [["t", 850.0], ["u", 850.0]], "train": {"lr": 1e-3}}
    check_identity({"identity": ident}, ident, "ck.pt")
    other = {"channels": [["t", 850.0]], "train": {"lr": 2e-3}}
    with pytest.raises(ConfigError, match=r"checkpoint channels .*t.*850.*u.*!= config channels") as err:
        check_identity({"identity": ident}, other, "ck.pt")
    assert "train.lr" in str(err.value) and "ck.pt" in str(err.value)
    with pytest.raises(InputError, match="no identity"):
        check_identity({}, ident, "ck.pt")


# --- device, seeds, distributed helpers --------------------------------------------------


def test_select_device():
    auto = select_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert select_device("cpu") == torch.device("cpu")
    assert select_device(None).type == auto.type
    with pytest.raises(ConfigError, match="not a torch device"):
        select_device("gpu-please")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            select_device("cuda")
    assert amp_dtype(torch.device("cpu"), "bf16") is None
    assert amp_dtype(torch.device("cuda"), "auto") == torch.bfloat16
    assert amp_dtype(torch.device("cuda"), "fp32") is None
    with pytest.raises(ConfigError):
        amp_dtype(torch.device("cpu"), "int8")
    with autocast(torch.device("cpu"), "auto"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_select_device_on_accelerator(device):
    dev = select_device(device)
    x = torch.ones(3, device=dev)
    assert x.device.type == dev.type


def test_seeding_and_rng_state_roundtrip():
    seed_everything(3)
    a = (np.random.rand(), torch.rand(1).item())
    state = rng_state()
    b = (np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (np.random.rand(), torch.rand(1).item()) == b
    seed_everything(3)
    assert (np.random.rand(), torch.rand(1).item()) == a
    g1, g2 = step_generator(1, 7, "x"), step_generator(1, 7, "x")
    assert torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))
    assert not torch.equal(
        torch.rand(4, generator=step_generator(1, 8, "x")), torch.rand(4, generator=step_generator(1, 7, "x"))
    )
    assert derive_seed(1, "a") != derive_seed(1, "b")


def test_shard_covers_batch():
    parts = [shard(12, r, 3) for r in range(3)]
    assert [list(range(12))[p] for p in parts] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    with pytest.raises(ValueError, match="does not divide"):
        shard(10, 0, 3)
    assert DistInfo().is_main and not DistInfo().enabled


def test_lr_schedule():
    opts = build(TrainOptions, {"steps": 100, "lr_warmup": 10})  # cosine to LR_MIN_FACTOR = 0.1
    assert lr_factor(0, opts) == pytest.approx(0.1)
    assert lr_factor(9, opts) == pytest.approx(1.0)
    assert lr_factor(10, opts) == pytest.approx(1.0)
    assert lr_factor(100, opts) == pytest.approx(0.1)
    assert lr_factor(55, opts) == pytest.approx(0.55)


# --- the loop ----------------------------------------------------------------------------


def _regression(seed=0):
    torch.manual_seed(seed)
    w_true = torch.randn(4, 1)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1))

    def loss_fn(m, step, part):
        g = step_generator(seed, step, "data")
        x = torch.randn(8, 4, generator=g)[part]
        return ((m(x) - x @ w_true) ** 2).mean()

    return model, loss_fn


def test_fit_decreases_loss_and_resumes_exactly(tmp_path):
    opts = build(
        TrainOptions,
        {
            "steps": 60,
            "batch_size": 8,
            "lr": 1e-2,
            "lr_warmup": 5,
            "checkpoint_every": 20,
            "log_every": 10,
            "ema": {"decay": 0.9},
        },
    )
    ident = {"what": "regression"}
    seen = []
    model, loss_fn = _regression()
    model, ema, res = fit(
        model,
        loss_fn,
        opts,
        device=torch.device("cpu"),
        identity=ident,
        checkpoint_dir=tmp_path / "a",
        log_fn=lambda s, m: seen.append((s, m["train/loss"])),
    )
    losses = [v for _, v in res.losses]
    assert len(losses) == 60 and np.mean(losses[-10:]) < 0.3 * np.mean(losses[:10])
    assert [s for s, _ in seen] == [9, 19, 29, 39, 49, 59]
    assert [s for s, _ in list_checkpoints(tmp_path / "a")] == [40, 60]

    # the same run again, keeping every checkpoint; then forget everything after step 20 and resume
    m3, lf3 = _regression()
    torch.manual_seed(123)  # the global RNG state must not matter
    fit(
        m3,
        lf3,
        dataclasses.replace(opts, keep_checkpoints=0),
        device=torch.device("cpu"),
        identity=ident,
        checkpoint_dir=tmp_path / "b",
    )
    for s, p in list_checkpoints(tmp_path / "b"):
        if s > 20:
            p.unlink()
    m4, lf4 = _regression()
    with torch.no_grad():
        for p in m4.parameters():
            p.add_(1.0)  # different starting weights: the checkpoint must override them
    m4, ema4, r4 = fit(m4, lf4, opts, device=torch.device("cpu"), identity=ident, checkpoint_dir=tmp_path / "b")
    assert r4.resumed_from == 20
    for a, b in zip(model.state_dict().values(), m4.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(ema.module.state_dict().values(), ema4.module.state_dict().values()):
        assert torch.equal(a, b)
    assert [v for _, v in r4.losses] == losses

    # another identity -> clear error, nothing overwritten
    m5, lf5 = _regression()
    with pytest.raises(ConfigError, match="another config"):
        fit(m5, lf5, opts, device=torch.device("cpu"), identity={"what": "else"}, checkpoint_dir=tmp_path / "b")


def test_fit_rejects_nonfinite_loss():
    model = nn.Linear(2, 1)

    def loss_fn(m, step, part):
        return m(torch.full((2, 2), float("nan"))).mean()

    with pytest.raises(FloatingPointError, match="step 0"):
        fit(model, loss_fn, build(TrainOptions, {"steps": 3, "batch_size": 2}), device=torch.device("cpu"), identity={})
