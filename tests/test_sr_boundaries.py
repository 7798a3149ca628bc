"""SR prior boundaries: circular padding on periodic axes, its resolution from the grid, shift augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from scorebridge import options
from scorebridge.errors import ConfigError
from scorebridge.sr.data import normalisation_of, open_era5, resolve_channels, write_toy_era5
from scorebridge.sr.loader import FieldBatcher
from scorebridge.sr.options import ModelOptions, resolve_spec
from scorebridge.sr.prior import build_denoiser
from scorebridge.sr.train import resolve_periodic
from scorebridge.sr.unet import UNet


def _net(periodic, padding="zeros", mults=(1,)):
    torch.manual_seed(0)
    net = UNet(2, base=8, mults=mults, periodic=periodic, padding=padding)
    torch.nn.init.normal_(net.conv_out.weight, std=0.1)  # the zero-initialised output layer would hide everything
    return net.eval()


def _response(net, row: int, col: int, H: int = 12, W: int = 32) -> torch.Tensor:
    """|F(x + bump at (row, col)) - F(x)| per pixel (max over channels)."""
    x = torch.zeros(1, 2, H, W)
    x2 = x.clone()
    x2[0, :, row, col] = 5.0
    with torch.no_grad():
        return (net(x2, torch.zeros(1)) - net(x, torch.zeros(1))).abs().amax(1)[0]


@pytest.mark.parametrize("padding", ["zeros", "reflect", "replicate"])
def test_circular_padding_wraps_longitude(padding):
    """A bump at the western edge acts across the seam exactly as a bump in the interior acts on its
    neighbours (the response is the interior response rolled), and differently without wrapping.
    (GroupNorm couples every pixel weakly, so compare whole responses rather than look for zeros.)"""
    wrap = _net((False, True), padding)
    edge, interior = _response(wrap, 6, 0), _response(wrap, 6, 16)
    torch.testing.assert_close(edge, torch.roll(interior, -16, -1), atol=1e-5, rtol=1e-4)
    assert edge[6, -1] > 0.05 * edge[6, 0]  # the eastern edge feels the western bump
    flat = _net((False, False), padding)
    diff = (_response(flat, 6, 0) - torch.roll(_response(flat, 6, 16), -16, -1)).abs()
    assert diff.max() > 1e-2
    # latitude is not declared periodic: the same test across the poles fails
    top, mid = _response(wrap, 0, 8, H=32, W=16), _response(wrap, 16, 8, H=32, W=16)
    assert (top - torch.roll(mid, -16, -2)).abs().max() > 1e-2


def test_doubly_periodic_unet_is_shift_equivariant():
    """Circular padding on both axes: F(roll(x)) = roll(F(x)) for shifts by multiples of 2^(levels-1)."""
    x = torch.randn(2, 2, 16, 24, generator=torch.Generator().manual_seed(1))
    c = torch.tensor([0.1, -0.3])
    for periodic, exact in (((True, True), True), ((False, False), False)):
        net = _net(periodic, mults=(1, 2, 2))
        with torch.no_grad():
            y = net(x, c)
            ys = net(torch.roll(x, (4, 8), (-2, -1)), c)
        err = float((torch.roll(y, (4, 8), (-2, -1)) - ys).abs().max())
        assert (err < 1e-5) if exact else (err > 1e-3), (periodic, err)


def test_non_multiple_size_wraps_and_crops_back():
    net = _net((True, True), mults=(1, 2, 2))
    x = torch.randn(1, 2, 13, 18)
    with torch.no_grad():
        y = net(x, torch.zeros(1))
    assert y.shape == x.shape and torch.isfinite(y).all()


def test_zeros_padding_matches_plain_conv2d_weights():
    """The default (zeros) keeps the state-dict layout of nn.Conv2d(padding=1): old checkpoints load."""
    net = _net((False, False))
    conv = net.conv_in
    plain = torch.nn.Conv2d(conv.in_channels, conv.out_channels, 3, padding=1)
    plain.load_state_dict(conv.state_dict())
    x = torch.randn(1, conv.in_channels, 9, 11)
    torch.testing.assert_close(conv(x), plain(x))


def _model(section: dict) -> ModelOptions:
    return options.build(ModelOptions, section)


def _with_lon(path, lon):
    ds = xr.open_zarr(path, consolidated=False).load()
    ds = ds.assign_coords(longitude=lon)
    out = path.parent / f"lon{len(lon)}_{lon[0]:g}.zarr"
    ds.to_zarr(out, mode="w", consolidated=False)
    return open_era5(out)


def test_resolve_periodic(tmp_path):
    path = write_toy_era5(tmp_path / "toy.zarr", ntime=4, nlat=8, nlon=16, seed=0)
    regional = open_era5(path)
    assert resolve_periodic(regional, _model({"periodic": "auto"}), None) == []
    glob = _with_lon(path, np.arange(16) * 22.5 - 180.0)  # 16 x 22.5 degrees = the whole circle
    assert resolve_periodic(glob, _model({"periodic": "auto"}), None) == ["longitude"]
    assert (
        resolve_periodic(glob, _model({"periodic": "auto"}), [4, 8]) == []
    )  # crops narrower than the circle have edges
    assert resolve_periodic(glob, _model({"periodic": "auto"}), [4, 16]) == ["longitude"]
    assert resolve_periodic(regional, _model({"periodic": ["longitude", "latitude"]}), None) == [
        "latitude",
        "longitude",
    ]
    with pytest.raises(ConfigError, match="periodic"):
        resolve_periodic(regional, _model({"periodic": ["latitude"]}), [4, 16])
    den = build_denoiser(2, _model({"base": 8, "mults": [1], "periodic": ["longitude"]}), 1.0)
    assert den.net.periodic == (False, True)
    with pytest.raises(ConfigError, match="periodic"):
        build_denoiser(2, _model({"base": 8, "periodic": ["height"]}), 1.0)


def test_random_shift_rolls_whole_samples(tmp_path):
    ds = open_era5(write_toy_era5(tmp_path / "toy.zarr", ntime=6, nlat=8, nlon=12, seed=2))
    ch = resolve_channels(ds)
    norm = normalisation_of(ds, ch)
    plain = (
        FieldBatcher(ds, ch, np.arange(6), norm, max_memory_mb=2048).batch(torch.Generator().manual_seed(3), 8).numpy()
    )
    rolled = (
        FieldBatcher(ds, ch, np.arange(6), norm, shift=("latitude", "longitude"), max_memory_mb=2048)
        .batch(torch.Generator().manual_seed(3), 8)
        .numpy()
    )
    moved = 0
    for a, b in zip(plain, rolled):
        hits = [(i, j) for i in range(8) for j in range(12) if np.array_equal(np.roll(a, (i, j), (-2, -1)), b)]
        assert hits, "a shifted sample is a circular roll of the unshifted one"
        moved += hits[0] != (0, 0)
    assert moved >= 6


def test_anomaly_offset_is_exact_shift_of_the_denoiser():
    """D(x; σ) = m + D_a(x - m; σ): the prior of y = m + a from the prior of a."""
    from scorebridge.sr.edm import EDMPrecond

    torch.manual_seed(0)
    plain = EDMPrecond(UNet(2, base=8, mults=(1, 2)))
    torch.nn.init.normal_(plain.net.conv_out.weight, std=0.1)
    shifted = EDMPrecond(UNet(2, base=8, mults=(1, 2)), offset_shape=(2, 8, 12))
    shifted.load_state_dict({**plain.state_dict(), "offset": torch.randn(2, 8, 12)})
    m = shifted.offset
    x, s = torch.randn(3, 2, 8, 12), torch.tensor([0.1, 1.0, 10.0])
    with torch.no_grad():
        torch.testing.assert_close(shifted(x + m, s), m + plain(x, s))
    with pytest.raises(ValueError, match="mean field"):
        shifted(torch.randn(1, 2, 8, 8), 1.0)


def test_anomalies_training_stores_the_time_mean_field(tmp_path):
    from scorebridge.sr.data import load_fields, split_times
    from scorebridge.sr.prior import load_prior
    from scorebridge.sr.train import train_prior

    path = write_toy_era5(tmp_path / "toy.zarr", ntime=8, nlat=8, nlon=12, seed=4)
    spec = {
        "era5": "toy",
        "seed": 0,
        "train": {
            "steps": 2,
            "batch_size": 2,
            "checkpoint_every": 0,
            "threads": 1,
            "anomalies": True,
            "model": {"base": 8, "mults": [1, 2]},
        },
    }
    train_prior(resolve_spec(spec), path, None, tmp_path / "ck.pt")
    prior = load_prior(tmp_path / "ck.pt", "cpu")
    ds = open_era5(path)
    ch = resolve_channels(ds)
    tr, _ = split_times(ds, resolve_spec(spec).train.split)
    want = load_fields(ds, ch, tr, normalisation_of(ds, ch)).mean(0)
    np.testing.assert_allclose(prior.denoiser.offset.numpy(), want, atol=1e-5)
    assert np.abs(want).max() > 0.1  # a non-trivial mean field
    with pytest.raises(ConfigError, match="anomalies"):
        train_prior(resolve_spec({**spec, "train": {**spec["train"], "crop": 4}}), path, None, tmp_path / "ck2.pt")
