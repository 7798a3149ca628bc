"""SR prior: EDM preconditioning identities, U-Net shapes, data split and checks, training, load_prior."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from scorebridge import options
from scorebridge.core.seed import step_generator
from scorebridge.core.train import TrainOptions, fit
from scorebridge.errors import ConfigError, InputError
from scorebridge.sr.data import (
    Normalisation,
    load_fields,
    normalisation_of,
    open_era5,
    resolve_channels,
    split_times,
    write_toy_era5,
)
from scorebridge.sr.edm import EDMPrecond, edm_coefficients, edm_loss, edm_sigmas, loss_weight, sample_sigma
from scorebridge.sr.loader import FieldBatcher
from scorebridge.sr.options import SplitOptions, resolve_spec
from scorebridge.sr.prior import load_prior
from scorebridge.sr.train import train_prior
from scorebridge.sr.unet import UNet, count_parameters


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_era5(
        tmp_path_factory.mktemp("era5") / "toy.zarr", ntime=16, nlat=12, nlon=16, single=("t2m",), seed=1
    )


# --- EDM ---------------------------------------------------------------------------------


@pytest.mark.parametrize("sd", [0.5, 1.0, 2.0])
def test_edm_coefficients_closed_form(sd):
    s = torch.tensor([sd])  # at σ = σ_data
    c_skip, c_out, c_in, c_noise = edm_coefficients(s, sd)
    assert c_skip.item() == pytest.approx(0.5)
    assert c_out.item() == pytest.approx(sd / math.sqrt(2))
    assert c_in.item() == pytest.approx(1 / (sd * math.sqrt(2)))
    assert c_noise.item() == pytest.approx(math.log(sd) / 4)
    sig = torch.logspace(-3, 2, 50, dtype=torch.float64)
    c_skip, c_out, c_in, _ = edm_coefficients(sig, sd)
    # unit-variance network input: c_in² (σ_d² + σ²) = 1
    torch.testing.assert_close(c_in**2 * (sd**2 + sig**2), torch.ones_like(sig))
    # λ(σ) c_out² = 1: the effective training target of F has unit weight (Karras et al. Eq. 8)
    torch.testing.assert_close(loss_weight(sig, sd) * c_out**2, torch.ones_like(sig))
    # unit-variance effective target: (1 - c_skip)² σ_d² + c_skip² σ² = c_out²
    torch.testing.assert_close((1 - c_skip) ** 2 * sd**2 + c_skip**2 * sig**2, c_out**2)
    # limits: σ -> 0 gives identity, σ -> ∞ gives no skip
    lo = edm_coefficients(torch.tensor([1e-6], dtype=torch.float64), sd)
    assert lo[0].item() == pytest.approx(1.0) and lo[1].item() == pytest.approx(0.0, abs=1e-5)
    hi = edm_coefficients(torch.tensor([1e6], dtype=torch.float64), sd)
    assert hi[0].item() == pytest.approx(0.0, abs=1e-9) and hi[1].item() == pytest.approx(sd, rel=1e-6)


def test_edm_sigmas():
    s = edm_sigmas(18, 0.002, 80.0, 7)
    assert s.shape == (19,) and s[-1] == 0
    assert s[0].item() == pytest.approx(80.0) and s[-2].item() == pytest.approx(0.002)
    assert torch.all(s[1:] < s[:-1])
    i = 5
    expected = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    assert s[i].item() == pytest.approx(expected)
    assert edm_sigmas(1, 0.1, 10.0, 7.0, append_zero=False).tolist() == [10.0]
    with pytest.raises(ValueError):
        edm_sigmas(0, 0.002, 80.0, 7.0)


def test_sigma_sampling_lognormal():
    g = torch.Generator().manual_seed(0)
    ln = torch.log(sample_sigma(20000, -1.2, 1.2, generator=g))
    assert ln.mean().item() == pytest.approx(-1.2, abs=0.03)
    assert ln.std().item() == pytest.approx(1.2, abs=0.03)


def test_untrained_denoiser_is_skip_and_loss_is_one():
    """Zero-initialised output: D(x; σ) = c_skip x; then E[loss] = 1 at every σ for unit-variance data."""
    torch.manual_seed(0)
    d = EDMPrecond(UNet(3, base=8, mults=(1, 2)), sigma_data=1.0)
    x = torch.randn(4, 3, 8, 8)
    sig = torch.tensor([0.1, 1.0, 3.0, 10.0])
    c_skip = edm_coefficients(sig)[0].view(-1, 1, 1, 1)
    torch.testing.assert_close(d(x, sig), c_skip * x)
    y = torch.randn(256, 3, 8, 8)
    for s in (0.05, 1.0, 20.0):
        loss = edm_loss(d, y, torch.full((256,), s), torch.randn_like(y))
        assert loss.item() == pytest.approx(1.0, abs=0.03)


@pytest.mark.parametrize("shape", [(16, 16), (12, 20), (13, 7), (1, 5)])
def test_unet_any_grid(shape):
    net = UNet(5, base=8, mults=(1, 2, 2))
    with torch.no_grad():
        for p in net.conv_out.parameters():
            p.normal_()
    x = torch.randn(2, 5, *shape, requires_grad=True)
    y = net(x, torch.randn(2))
    assert y.shape == x.shape
    y.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_unet_default_size():
    n = count_parameters(UNet(6, base=24, mults=(1, 2, 2)))
    assert 2e5 <= n <= 5e5
    assert count_parameters(UNet(6, base=8, mults=(1, 2), attention=True)) > 0


def test_training_lowers_the_denoising_loss(toy):
    """The EDM loss of a tiny prior falls well below 1 (the loss of the untrained skip-only denoiser)."""
    ds = open_era5(toy)
    ch = resolve_channels(ds, ["t"], [850])
    norm = normalisation_of(ds, ch)
    batcher = FieldBatcher(ds, ch, np.arange(12), norm, crop=8, max_memory_mb=2048)
    torch.manual_seed(0)
    den = EDMPrecond(UNet(len(ch), base=8, mults=(1, 2)))

    def loss_fn(m, step, part):
        g = step_generator(0, step)
        y = batcher.batch(g, 16)
        return edm_loss(m, y[part], sample_sigma(16, generator=g)[part], torch.randn(y.shape, generator=g)[part])

    _, ema, res = fit(
        den,
        loss_fn,
        options.build(
            TrainOptions, {"steps": 120, "batch_size": 16, "lr": 5e-3, "lr_warmup": 10, "ema": {"decay": 0.95}}
        ),
        device=torch.device("cpu"),
        identity={},
    )
    losses = np.array([v for _, v in res.losses])
    assert losses[:10].mean() > 0.8
    assert losses[-30:].mean() < 0.85 * losses[:10].mean()
    # and on held-out times at a mid noise level, with the EMA weights
    y = torch.from_numpy(load_fields(ds, ch, np.arange(12, 16), norm))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        held = edm_loss(ema.module, y, torch.full((4,), 0.5), torch.randn(y.shape, generator=g))
        untrained = edm_loss(
            EDMPrecond(UNet(len(ch), base=8, mults=(1, 2))), y, torch.full((4,), 0.5), torch.randn(y.shape, generator=g)
        )
    assert held.item() < 0.7 * untrained.item()


# --- data --------------------------------------------------------------------------------


def test_channels_and_normalisation(toy):
    ds = open_era5(toy)
    ch = resolve_channels(ds, ["t", "t2m"], [500])
    assert ch == [("t", 500.0), ("t2m", None)]
    norm = normalisation_of(ds, ch)
    stats = json.loads(ds.attrs["normalisation"])
    assert norm.mean.tolist() == pytest.approx([stats["t"]["mean"][1], stats["t2m"]["mean"]])
    x = load_fields(ds, ch, [0, 1])
    z = load_fields(ds, ch, [0, 1], norm)
    np.testing.assert_allclose(norm.denormalise(z), x, rtol=1e-6)
    assert isinstance(Normalisation.from_dict(norm.to_dict()).normalise(torch.zeros(2, 2, 3, 3)), torch.Tensor)
    with pytest.raises(ConfigError, match=r"\['q'\] not in"):
        resolve_channels(ds, ["q"])
    with pytest.raises(ConfigError, match="levels \\[700\\] hPa not in"):
        resolve_channels(ds, ["t"], [700])
    assert len(resolve_channels(ds)) == 5


def _split(section: dict) -> SplitOptions:
    return options.build(SplitOptions, section)


def test_split_times(toy):
    ds = open_era5(toy)
    tr, te = split_times(ds, _split({}))
    assert tr.tolist() == list(range(12)) and te.tolist() == [12, 13, 14, 15]
    tr, te = split_times(ds, _split({"train_fraction": 0.5, "gap": 2}))
    assert tr.tolist() == list(range(8)) and te.tolist() == list(range(10, 16))
    tr, te = split_times(ds, _split({"train_start": "2020-01-01", "train_end": "2020-01-02"}))
    assert tr.tolist() == list(range(8)) and te.tolist() == list(range(8, 16))
    tr, te = split_times(ds, _split({"train_end": "2020-01-02T06:00", "test_start": "2020-01-03T12:00"}))
    assert tr.tolist() == list(range(6)) and te.tolist() == list(range(10, 16))
    with pytest.raises(ConfigError, match="both in training and held out"):
        split_times(ds, _split({"train_end": "2020-01-03", "test_start": "2020-01-02"}))
    with pytest.raises(ConfigError, match="no training times"):
        split_times(ds, _split({"train_start": "2021-01-01"}))


def test_split_times_validation_block(toy):
    """`validation` takes the end of the training period out of training (and `gap` steps before it)."""
    ds = open_era5(toy)
    tr, va, te = split_times(ds, _split({"validation": 2}), validation=True)
    assert tr.tolist() == list(range(10)) and va.tolist() == [10, 11] and te.tolist() == [12, 13, 14, 15]
    tr, va, te = split_times(ds, _split({"validation": 3, "gap": 1}), validation=True)
    assert tr.tolist() == list(range(8)) and va.tolist() == [9, 10, 11] and te.tolist() == [13, 14, 15]
    tr, te = split_times(ds, _split({"validation": 3, "gap": 1}))  # two-array form: training without validation
    assert tr.tolist() == list(range(8))
    assert len(split_times(ds, _split({}), validation=True)[1]) == 0
    with pytest.raises(ConfigError, match="validation"):
        split_times(ds, _split({"validation": 12}))
    with pytest.raises(ConfigError, match="not a date"):
        split_times(ds, _split({"train_start": "yesterday"}))


def test_nan_in_training_fields_is_named(tmp_path):
    import xarray as xr

    path = write_toy_era5(tmp_path / "nan.zarr", ntime=8, nlat=8, nlon=8)
    ds = xr.open_zarr(path, consolidated=False).load()
    ds["u"][3, 1, 2, 2] = np.nan
    ds.to_zarr(tmp_path / "nan2.zarr", consolidated=False)
    ds = open_era5(tmp_path / "nan2.zarr")
    ch = resolve_channels(ds)
    with pytest.raises(
        InputError, match=r"nan2.zarr: NaN in training field 'u' at 500 hPa at time 2020-01-01T18:00:00"
    ):
        FieldBatcher(ds, ch, np.arange(6), normalisation_of(ds, ch), max_memory_mb=2048)
    # the NaN outside the training times is not an error
    FieldBatcher(ds, ch, [0, 1, 2], normalisation_of(ds, ch), max_memory_mb=2048)
    # read per batch (over the memory limit): the same error when a batch reaches it
    lazy = FieldBatcher(ds, ch, [3], normalisation_of(ds, ch), max_memory_mb=1e-6)
    assert not lazy.in_memory
    with pytest.raises(InputError, match="NaN in training field 'u'"):
        lazy.batch(torch.Generator().manual_seed(0), 2)


def test_batches_crops_and_members(tmp_path):
    path = write_toy_era5(tmp_path / "ens.zarr", ntime=6, nlat=10, nlon=12, members=3)
    ds = open_era5(path)
    ch = resolve_channels(ds)
    norm = normalisation_of(ds, ch)
    mem = FieldBatcher(ds, ch, [0, 1, 2, 3], norm, crop=[4, 6], max_memory_mb=2048)
    lazy = FieldBatcher(ds, ch, [0, 1, 2, 3], norm, crop=[4, 6], max_memory_mb=1e-6)
    assert mem.in_memory and not lazy.in_memory and mem.members == 3
    a = mem.batch(torch.Generator().manual_seed(5), 7)
    b = lazy.batch(torch.Generator().manual_seed(5), 7)
    assert a.shape == (7, 4, 4, 6)
    torch.testing.assert_close(a, b)
    # every sample is a window of some (time, member)
    full = load_fields(ds, ch, [0, 1, 2, 3], norm)  # (T, M, C, H, W)
    x = a[0].numpy()
    hits = [
        (t, m)
        for t in range(4)
        for m in range(3)
        for i in range(7)
        for j in range(7)
        if np.array_equal(full[t, m, :, i : i + 4, j : j + 6], x)
    ]
    assert hits
    with pytest.raises(ConfigError, match="crop 11x4 does not fit"):
        FieldBatcher(ds, ch, [0], norm, crop=[11, 4], max_memory_mb=2048)


# --- train_prior + load_prior ------------------------------------------------------------


def _spec(**train):
    base = {
        "steps": 12,
        "batch_size": 4,
        "checkpoint_every": 5,
        "model": {"base": 8, "mults": [1, 2]},
        "log_every": 4,
        "threads": 1,
    }
    base.update(train)
    return {"era5": "toy", "seed": 3, "train": base}


def test_train_and_load_prior(toy, tmp_path):
    out = tmp_path / "checkpoint.pt"
    summary = train_prior(resolve_spec(_spec(variables=["t", "u"], crop=8)), toy, tmp_path / "ck", out)
    assert summary["steps"] == 12 and len(summary["losses"]) == 12 and summary["val_loss"]
    prior = load_prior(out, "cpu")
    assert prior.channels == [("t", 850.0), ("t", 500.0), ("u", 850.0), ("u", 500.0)]
    assert prior.channel_names == ["t/850", "t/500", "u/850", "u/500"]
    assert prior.sigma_max == 80.0 and prior.sigma_min == 0.002 and prior.sigma_data == 1.0
    assert prior.config["train"]["crop"] == 8 and prior.normalisation.mean.shape == (4,)
    assert len(prior.info["train_times"]) == 12 and len(prior.info["test_times"]) == 4
    x = torch.randn(3, 4, 12, 16, requires_grad=True)  # whole grid, larger than the crop
    d = prior.denoise(x, torch.tensor([0.1, 1.0, 10.0]))
    assert d.shape == x.shape and prior.nfe == 1
    d.square().sum().backward()  # differentiable in x, weights frozen
    assert x.grad is not None and all(p.grad is None for p in prior.denoiser.parameters())
    s = prior.score(x.detach(), 2.0)
    torch.testing.assert_close(s, (prior.denoise(x.detach(), 2.0) - x.detach()) / 4.0)
    with pytest.raises(ValueError, match="expects"):
        prior.denoise(torch.randn(1, 3, 8, 8), 1.0)
    # the same experiment asks for other channels -> clear error
    with pytest.raises(
        ConfigError, match=r"trained on channels \['t/850', 't/500', 'u/850', 'u/500'\].*asks for \['t/850'\]"
    ):
        load_prior(out, "cpu", channels=[("t", 850)])
    load_prior(out, "cpu", channels=[("t", 850), ("t", 500), ("u", 850), ("u", 500)])
    with pytest.raises(InputError, match="not an SR prior checkpoint"):
        load_prior(next((tmp_path / "ck").rglob("step_*.pt")), "cpu")
    with pytest.raises(InputError, match="not found"):
        load_prior(tmp_path / "missing.pt", "cpu")


def test_changed_config_trains_afresh_same_config_resumes(toy, tmp_path):
    a = train_prior(resolve_spec(_spec(variables=["t"])), toy, tmp_path / "ck", tmp_path / "a.pt")
    assert a["resumed_from"] is None
    again = train_prior(resolve_spec(_spec(variables=["t"], steps=15)), toy, tmp_path / "ck", tmp_path / "b.pt")
    assert again["resumed_from"] == 12  # longer training continues the same run
    other = train_prior(resolve_spec(_spec(variables=["u"])), toy, tmp_path / "ck", tmp_path / "c.pt")
    assert other["resumed_from"] is None  # another config: its own folder, fresh start
    assert len(list((tmp_path / "ck").iterdir())) == 2


def test_bad_input_errors(toy, tmp_path):
    from conftest import run_cli

    # through the CLI: a clean one-line error naming the key, exit 1, no output
    proc = run_cli(
        "sr-train",
        "--spec",
        json.dumps(_spec(variables=["nope"])),
        "--experiment",
        "x",
        "--era5",
        str(toy),
        "--out",
        str(tmp_path / "o.pt"),
        check=False,
    )
    assert proc.returncode == 1 and "sr.train.variables" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o.pt").exists()
    with pytest.raises(ConfigError, match="train.lr"):
        resolve_spec({"era5": "toy", "train": {"lr": -1}})
    with pytest.raises(ConfigError, match="train.crop"):
        resolve_spec({"era5": "toy", "train": {"crop": [8]}})
    with pytest.raises(InputError, match="not found"):
        train_prior(resolve_spec(_spec()), tmp_path / "none.zarr", None, tmp_path / "o.pt")
    with pytest.raises(ConfigError, match="batch_size"):
        train_prior(resolve_spec(_spec(batch_size=0)), toy, None, tmp_path / "o.pt")


@pytest.mark.slow
def test_real_era5_ensemble_smoke(shared, tmp_path):
    """The real path: ERA5 EDA GRIB (10 members, 61x120 global grid) -> ingest -> train on crops
    with random members -> denoise the whole grid (not divisible by 4: padded inside the U-Net)."""
    from scorebridge.data.era5.ingest import ingest

    grib = shared("era5", "era5-levels-members.grib")
    store = ingest(
        {"source": "local", "variables": ["t", "z"], "levels": [850, 500], "hours": [0, 12]},
        tmp_path / "real.zarr",
        [grib],
    )
    spec = _spec(crop=[24, 32], steps=6, checkpoint_every=0, split={"train_fraction": 0.5})
    summary = train_prior(resolve_spec(spec), store, None, tmp_path / "real.pt")
    assert np.isfinite(summary["final_loss"]) and summary["val_loss"]
    prior = load_prior(tmp_path / "real.pt", "cpu")
    assert prior.channel_names == ["t/850", "t/500", "z/850", "z/500"]
    ds = open_era5(store)
    x = torch.from_numpy(load_fields(ds, prior.channels, [3], prior.normalisation, member=0))
    assert x.shape == (1, 4, 61, 120)
    with torch.no_grad():
        d = prior.denoise(x + 0.5 * torch.randn_like(x), 0.5)
    assert d.shape == x.shape and torch.isfinite(d).all()
