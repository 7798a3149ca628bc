"""SR at scale (issue 13, "Scale"): streamed and prefetched training batches, DDP shards read
alone, channels-last / bf16-autocast / torch.compile paths on CPU, patch-wise sampling
(blend weights, closeness to full-domain sampling away from the seams, memory-bounded
chunks under guidance), member chunks, and the fast synthetic source."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from scorebridge import options
from scorebridge.core.seed import step_generator
from scorebridge.core.train import TrainOptions, compiled, fit
from scorebridge.sr.data import normalisation_of, open_era5, resolve_channels, write_toy_era5
from scorebridge.sr.edm import EDMPrecond, edm_loss, sample_sigma
from scorebridge.sr.loader import FieldBatcher, Prefetcher
from scorebridge.sr.observations import coarse_observation
from scorebridge.sr.options import CoarseOptions, ModelOptions, SampleOptions, resolve_spec
from scorebridge.sr.patches import PatchDenoiser, PatchOptions, axis_tiling, patched
from scorebridge.sr.prior import Prior, build_denoiser
from scorebridge.sr.sampler import posterior_sample
from scorebridge.sr.train import train_prior
from scorebridge.sr.unet import UNet


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_era5(tmp_path_factory.mktemp("era5") / "toy.zarr", ntime=16, nlat=12, nlon=16, members=2, seed=2)


# --- data: streamed, prefetched, sharded -------------------------------------------------


def test_streamed_batches_equal_in_memory_and_parts_are_slices(toy):
    ds = open_era5(toy)
    ch = resolve_channels(ds, ["t", "u"], [850])
    norm = normalisation_of(ds, ch)
    mem = FieldBatcher(ds, ch, np.arange(12), norm, crop=[8, 10], shift=("longitude",), max_memory_mb=2048)
    lazy = FieldBatcher(ds, ch, np.arange(12), norm, crop=[8, 10], max_memory_mb=1e-6, shift=("longitude",))
    assert mem.in_memory and not lazy.in_memory
    full = mem.batch(torch.Generator().manual_seed(4), 6)
    torch.testing.assert_close(lazy.batch(torch.Generator().manual_seed(4), 6), full, rtol=0, atol=0)
    for part in (slice(0, 3), slice(3, 6)):  # a DDP rank reads its shard only, after the same draws
        g = torch.Generator().manual_seed(4)
        torch.testing.assert_close(lazy.batch(g, 6, part), full[part], rtol=0, atol=0)
        g2 = torch.Generator().manual_seed(4)
        mem.batch(g2, 6)
        assert torch.equal(torch.randn(3, generator=g), torch.randn(3, generator=g2))  # the generator moved on alike


def test_prefetcher_gives_the_same_values_in_order_restarts_and_raises():
    made = []

    def make(step):
        made.append(step)
        if step == 7:
            raise ValueError("bad step 7")
        g = step_generator(0, step)
        return torch.randn(3, generator=g)

    direct = [make(s) for s in range(0, 6)]
    made.clear()
    with Prefetcher(make, 10, depth=2) as feed:
        got = [feed.get(s) for s in range(0, 6)]
        assert all(torch.equal(a, b) for a, b in zip(got, direct))
        assert feed.get(2) is not None  # a jump back restarts the reader there
        with pytest.raises(ValueError, match="bad step 7"):
            for s in range(3, 10):
                feed.get(s)
    assert feed.calls == 6 + 1 + 5 and feed.wait_s >= 0
    with Prefetcher(make, 10, depth=0) as inline:  # depth 0: computed by the caller
        assert torch.equal(inline.get(1), direct[1])


def test_streamed_prefetched_training_equals_in_memory(toy, tmp_path):
    spec = {
        "era5": "toy",
        "seed": 1,
        "train": {
            "steps": 6,
            "batch_size": 4,
            "checkpoint_every": 0,
            "model": {"base": 8, "mults": [1, 2]},
            "threads": 1,
            "variables": ["t"],
            "crop": 8,
        },
    }
    a = train_prior(resolve_spec(spec), toy, None, tmp_path / "a.pt")
    spec["train"]["max_memory_mb"] = 1e-6
    b = train_prior(resolve_spec(spec), toy, None, tmp_path / "b.pt")
    assert not a["data"]["streamed"] and b["data"]["streamed"] and b["data"]["prefetch"] == 2
    assert a["losses"] == b["losses"]
    assert 0 <= b["data"]["wait_share"] <= 1 and b["data"]["wait_s"] >= 0
    assert a["identity_hash"] == b["identity_hash"]  # max_memory_mb and prefetch do not change what is learned


# --- GPU options, exercised on CPU -------------------------------------------------------


def _fit(opts_over: dict, steps: int = 8):
    torch.manual_seed(0)
    den = EDMPrecond(UNet(2, base=8, mults=(1, 2)))
    y_all = torch.randn(32, 2, 8, 8)

    def loss_fn(m, step, part):
        g = step_generator(0, step)
        idx = torch.randint(32, (4,), generator=g)
        y = y_all[idx].contiguous(memory_format=torch.channels_last) if opts_over.get("channels_last") else y_all[idx]
        return edm_loss(m, y, sample_sigma(4, generator=g), torch.randn(y.shape, generator=g))

    opts = options.build(TrainOptions, {"steps": steps, "batch_size": 4, "lr": 2e-3, "lr_warmup": 2, **opts_over})
    return fit(den, loss_fn, opts, device=torch.device("cpu"), identity={})


def test_gpu_options_default_off_and_channels_last_same_training():
    defaults = options.build(TrainOptions, {})
    assert defaults.compile is False and defaults.channels_last is False and defaults.precision == "auto"
    sample = resolve_spec({"era5": "x"}).sample
    assert sample.patch is None and sample.precision == "fp32" and sample.channels_last is False
    _, _, plain = _fit({})
    model, _, nhwc = _fit({"channels_last": True})
    np.testing.assert_allclose([v for _, v in nhwc.losses], [v for _, v in plain.losses], rtol=1e-4)
    assert model.net.conv_in.weight.is_contiguous(memory_format=torch.channels_last)


def test_training_under_bf16_autocast_on_cpu():
    """What `precision: bf16` does on a GPU, on CPU: the U-Net in bf16, the EDM scalings and
    the loss in float32, finite and falling."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, ema, res = _fit({"lr": 5e-3}, steps=30)
    losses = np.array([v for _, v in res.losses])
    assert np.isfinite(losses).all() and losses[-5:].mean() < losses[:5].mean()
    x = torch.randn(2, 2, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d = ema.module(x, torch.tensor([0.5, 1.0]))
    assert d.dtype == torch.float32
    torch.testing.assert_close(d, ema.module(x, torch.tensor([0.5, 1.0])), rtol=0.05, atol=0.05)


def test_compile_wraps_and_matches_eager():
    net = EDMPrecond(UNet(2, base=8, mults=(1, 2))).eval()
    assert compiled(net, False) is net
    fast = compiled(net, True, backend="eager")  # torch.compile's graph capture without code generation
    x, s = torch.randn(2, 2, 8, 8), torch.tensor([0.3, 2.0])
    with torch.no_grad():
        torch.testing.assert_close(fast(x, s), net(x, s))
    assert set(fast.state_dict()) == {f"_orig_mod.{k}" for k in net.state_dict()}  # save the unwrapped module


# --- patch-wise sampling -----------------------------------------------------------------


class StationaryGaussian:
    """Exact denoiser of a stationary Gaussian field of unit variance with a Gaussian correlation
    of `ell` cells, on a periodic grid of any size (a Wiener filter in Fourier space)."""

    sigma_min, sigma_max = 0.002, 80.0

    def __init__(self, ell: float):
        self.ell = ell

    def denoise(self, x, sigma):
        H, W = x.shape[-2:]
        ky = torch.fft.fftfreq(H, dtype=torch.float64)[:, None]
        kx = torch.fft.fftfreq(W, dtype=torch.float64)[None, :]
        spec = 2 * math.pi * self.ell**2 * torch.exp(-2 * math.pi**2 * self.ell**2 * (kx**2 + ky**2))
        f = spec / (spec + (torch.as_tensor(sigma).double() ** 2).reshape(-1, 1, 1, 1))
        return torch.fft.ifft2(torch.fft.fft2(x.double()) * f).real.to(x.dtype)


@pytest.mark.parametrize(
    "length,size,overlap,periodic",
    [
        (32, 16, 4, False),
        (48, 20, 8, True),
        (30, 12, 5, False),
        (30, 12, 5, True),
        (10, 16, 4, False),
        (20, 12, 4, True),
    ],
)
def test_blend_weights_sum_to_one(length, size, overlap, periodic):
    t = axis_tiling(length, size, overlap, periodic)
    total = np.zeros(length)
    np.add.at(total, t.index, t.weight)
    np.testing.assert_allclose(total, 1.0, atol=1e-12)
    assert (t.weight > 0).all() and t.count.min() >= 1
    if size < length:  # neighbours share at least `overlap` cells
        starts = t.index[:, 0]
        gaps = np.diff(np.r_[starts, starts[0] + length]) if periodic else np.diff(starts)
        assert (gaps <= size - overlap).all()
    pd = PatchDenoiser(StationaryGaussian(1.0), (length, length + 3), size, overlap, (periodic, periodic))
    np.testing.assert_allclose(pd.weights().sum(0), 1.0, atol=1e-6)


def test_patch_sampling_close_to_full_domain_away_from_seams():
    H = W = 48
    prior = StationaryGaussian(1.0)
    pd = PatchDenoiser(prior, (H, W), 20, 8, (True, True), chunk=5)
    kw = dict(shape=(2, H, W), mean=torch.zeros(2), std=torch.ones(2), guidance="none", n_cases=1)
    full, _ = posterior_sample(prior, [], 3, 12, generator=torch.Generator().manual_seed(0), **kw)
    patch, cost = posterior_sample(pd, [], 3, 12, generator=torch.Generator().manual_seed(0), **kw)
    assert cost.forward == 23  # passes per sample count the blended evaluation once
    single = (pd.weights() > 0).sum(0) == 1  # cells one window covers: away from the seams
    assert single.any() and not single.all()
    d = (full - patch)[0].numpy()
    scale = float(full.std())
    assert np.sqrt((d[..., single] ** 2).mean()) < 0.03 * scale
    assert np.sqrt((d[..., ~single] ** 2).mean()) < 0.05 * scale
    # one window the size of the domain is the full-domain denoiser
    one = PatchDenoiser(prior, (H, W), 64, 8, (True, True))
    x, s = torch.randn(2, 2, H, W), torch.tensor([0.5, 3.0])
    torch.testing.assert_close(one.denoise(x, s), prior.denoise(x, s))


def test_guided_patch_sampling_checkpoints_chunks_and_follows_the_observation():
    """SDA through the blended windows: gradients pass the checkpointed chunks, and the
    samples match the coarse observation about as well as full-domain sampling does."""
    H = W = 32
    prior = StationaryGaussian(1.0)
    truth = (
        prior.denoise(torch.randn(1, 2, H, W, generator=torch.Generator().manual_seed(3)), torch.tensor([0.0])) * 1.0
    )
    copts = options.build(CoarseOptions, {"factor": 4, "sigma_y_relative": 0.05})
    ob = coarse_observation(truth, [("a", None), ("b", None)], np.ones(2, np.float32), copts)
    kw = dict(shape=(2, H, W), mean=torch.zeros(2), std=torch.ones(2), guidance="sda", n_cases=1)
    pd = PatchDenoiser(prior, (H, W), 16, 6, (True, True), chunk=3)  # 9 windows x 2 members: 6 chunks
    assert pd.windows * 2 > pd.chunk
    full, _ = posterior_sample(prior, [ob], 2, 10, generator=torch.Generator().manual_seed(1), **kw)
    patch, cost = posterior_sample(pd, [ob], 2, 10, generator=torch.Generator().manual_seed(1), **kw)
    assert cost.backward == cost.forward == 19

    def err(x):
        return float((ob.operator(x[0]) - ob.y).pow(2).mean().sqrt())

    assert err(patch) < 1.5 * err(full) + 0.05
    assert float((full - patch).pow(2).mean().sqrt()) < 0.1 * float(full.std())


def test_patch_windows_of_a_prior_of_anomalies_get_their_part_of_the_mean_field():
    """An untrained denoiser of anomalies is D(x; s) = m + c_skip(s) (x - m) cell by cell: the
    blended windows equal it exactly only if every window got its own part of m."""
    H, W = 12, 16
    den = build_denoiser(2, options.build(ModelOptions, {"base": 8, "mults": [1, 2]}), 1.0, (2, H, W))
    torch.manual_seed(0)
    den.offset.copy_(torch.randn(2, H, W) * 3)
    prior = Prior(den.eval(), [("a", None), ("b", None)], None, 0.002, 80.0, 1.0, {}, torch.device("cpu"))
    x, s = torch.randn(3, 2, H, W), torch.tensor([0.1, 1.0, 10.0])
    with torch.no_grad():
        ref = prior.denoise(x, s)
        assert not torch.allclose(ref, x, atol=0.1)
        for patch in ({"size": 32}, {"size": 8, "overlap": 4}, {"size": [6, 10], "overlap": 3}):
            windows = patched(prior, options.build(PatchOptions, patch), (H, W), 4)
            torch.testing.assert_close(windows.denoise(x, s), ref)
        assert patched(prior, None, (H, W), 4) is prior


def test_patch_option_schema():
    exp = resolve_spec({"era5": "x", "sample": {"patch": {"size": [32, 48]}}})
    assert exp.sample.patch.size == [32, 48] and exp.sample.patch.overlap == 16
    with pytest.raises(Exception, match="size"):
        resolve_spec({"era5": "x", "sample": {"patch": {"overlap": 4}}})


# --- synthetic source --------------------------------------------------------------------


def test_stochastic_synthetic_source_in_blocks():
    import xarray as xr

    from scorebridge.data.era5.options import SyntheticOptions
    from scorebridge.data.era5.synthetic import SCALE_TIMES, synthetic_blocks, synthetic_era5

    grid = options.build(SyntheticOptions, {"nlat": 16, "nlon": 24, "ntime": SCALE_TIMES + 9, "dynamics": "stochastic"})
    whole = synthetic_era5(["t", "u", "v", "t2m"], [850, 500], grid)
    parts = list(synthetic_blocks(["t", "u", "v", "t2m"], [850, 500], grid, 4))
    assert [p.sizes["valid_time"] for p in parts] == [SCALE_TIMES, 4, 4, 1]
    xr.testing.assert_identical(xr.concat(parts, dim="valid_time"), whole)
    u = whole["u"].values
    assert 5 < float(np.std(u - u.mean(0))) < 12  # the RMS eddy wind (10 m/s barotropic) at some level mix
    a = u - u.mean(0)
    lag1 = float((a[1:] * a[:-1]).mean() / (a * a).mean())
    assert 0.8 < lag1 < 0.98  # 6-hourly steps about as correlated as the turbulence's (0.91-0.93)
    with pytest.raises(Exception, match="stochastic"):
        next(synthetic_blocks(["t"], [850], dataclasses.replace(grid, dynamics="turbulence"), 4))


# --- the benchmarks' Python, at tiny sizes ----------------------------------------------


@pytest.mark.slow
def test_gpu_check_dry_run_writes_its_json(tmp_path):
    """benchmarks/gpu_check.sh --dry-run: every step of the GPU check (and of
    benchmarks/sr_scale.py) on CPU at tiny sizes, the CPU reference figures beside them."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(out), "SCOREBRIDGE_NO_PROGRESS": "1"}
    proc = subprocess.run(
        ["bash", str(root / "benchmarks" / "gpu_check.sh"), "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert set(r["sizes"]) == {"16x16", "16x32"} and r["cpu_reference"]["sizes"]["256x256"]["sample"]["members"] == 16
    for entry in r["sizes"].values():
        assert entry["train_streamed"]["data"]["streamed"] and entry["train_streamed"]["samples_per_s"] > 0
        assert entry["sample"]["forward"] >= 1 and entry["sample"]["peak_rss_mb"] > 0
    assert r["settings"]["channels_last"] and r["seam"]["windows"] > 1 and "cost_per_pixel_ok" in r["targets"]


def test_fields_per_call_auto_keeps_cpu_calls_near_a_cell_budget():
    from scorebridge.sr.calibrate import CPU_CELLS_PER_CALL, fields_per_call

    assert fields_per_call(7, 256 * 256, "cpu") == 7  # an integer is taken as given
    assert fields_per_call("auto", 32 * 32, "cpu") == 64  # small grids: the cap
    assert fields_per_call("auto", 256 * 256, "cpu") == 4
    assert fields_per_call("auto", 256 * 512, "cpu") == 2
    assert fields_per_call("auto", 1024 * 1024, "cpu") == 1  # never 0
    assert fields_per_call("auto", 256 * 256, "cuda") == 64
    assert 4 * 256 * 256 <= CPU_CELLS_PER_CALL
    opts = options.build(SampleOptions, {})
    assert opts.batch_size == "auto"
