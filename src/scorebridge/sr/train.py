"""Training of the score-based prior: `scorebridge sr-train` (rule sr_train).

    scorebridge sr-train --spec JSON --experiment NAME --era5 ZARR --experiments JSON \
        --checkpoint-dir DIR --out checkpoint.pt

Trains an EDM-preconditioned U-Net (scorebridge.sr.edm, .unet) on the normalised ERA5
fields of the training times (scorebridge.sr.data.split_times), on random crops and
random ensemble members, with the shared loop of scorebridge.core.train (AdamW, EMA
with warm-up, bf16 autocast on GPU, checkpoints, resume, DDP under torchrun).

Step checkpoints go to DIR/<identity hash>/step_*.pt: a rerun with the same config
resumes from the newest one; a changed config trains afresh in its own folder. The
output (`--out`) holds the EMA weights and everything `scorebridge.sr.prior.load_prior`
needs; it is written atomically by rank 0, and logged with the loss curve through
scorebridge.tracking.job_run (kind "sr", rule "sr_train").
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
import torch

from ..core.checkpoint import identity_hash, save_checkpoint
from ..core.device import select_device
from ..core.distributed import init_distributed, shard, shutdown
from ..core.seed import derive_seed, seed_everything, step_generator
from ..core.train import fit
from ..data.era5.finite import check_finite
from ..errors import ConfigError
from ..provenance import package_versions
from .data import channel_names, load_fields, normalisation_of, open_era5, resolve_channels, split_times
from .edm import edm_loss, sample_sigma
from .loader import FieldBatcher, Prefetcher
from .options import Experiment, ModelOptions
from .prior import FORMAT, build_denoiser
from .unet import count_parameters
from .wiener import spectral_moments

__all__ = ["train_prior", "resolve_periodic", "report_training", "VAL_SIGMAS"]

log = logging.getLogger(__name__)

# noise levels of the held-out denoising loss reported after training
VAL_SIGMAS = (0.05, 0.2, 0.5, 1.0, 2.0, 5.0)


# keys of `train` that do not change what is learned (excluded from the checkpoint identity)
_NOT_IDENTITY = (
    "steps",
    "checkpoint_every",
    "keep_checkpoints",
    "log_every",
    "device",
    "precision",
    "threads",
    "nproc",
    "max_memory_mb",
    "prefetch",
    "channels_last",
    "compile",
)


def resolve_periodic(ds, model: ModelOptions, crop) -> list[str]:
    """The axes the U-Net wraps around (`train.model.periodic`), as a list of axis names.

    "auto": longitude when the grid closes the circle (n * spacing = 360 degrees, the
    global ERA5 grid), latitude never. An explicit list is taken as given (e.g. both axes
    for the doubly periodic synthetic turbulence of scorebridge.data.era5.synthetic).
    A periodic axis must be trained whole: a crop narrower than the grid along it has
    edges, so "auto" then leaves that axis non-periodic and an explicit list is an error.
    """
    from .point_obs import is_global_longitude

    H, W = int(ds.sizes["latitude"]), int(ds.sizes["longitude"])
    ch, cw = (H, W) if crop is None else ((int(crop), int(crop)) if np.isscalar(crop) else (int(crop[0]), int(crop[1])))
    cropped = {"latitude": ch < H, "longitude": cw < W}
    want = model.periodic
    if want == "auto":
        lon = np.asarray(ds["longitude"].values, dtype=np.float64)
        axes = ["longitude"] if is_global_longitude(lon) else []
        dropped = [a for a in axes if cropped[a]]
        if dropped:
            log.info(
                "periodic %s not used: training crops (%dx%d) are narrower than the %dx%d grid", dropped, ch, cw, H, W
            )
        return [a for a in axes if not cropped[a]]
    axes = [str(a) for a in want]
    bad = [a for a in axes if a not in ("latitude", "longitude")]
    if bad:
        raise ConfigError(
            "sr.train.model.periodic", f"unknown axes {bad}; expected 'auto' or a subset of [latitude, longitude]"
        )
    bad = [a for a in axes if cropped[a]]
    if bad:
        raise ConfigError(
            "sr.train.model.periodic",
            f"{bad} declared periodic but sr.train.crop ({ch}x{cw}) is narrower than the {H}x{W} grid along it; "
            "train periodic axes whole (crop = full size there) or drop them from periodic",
        )
    return sorted(set(axes), key=["latitude", "longitude"].index)


def _mean_field(batcher: FieldBatcher) -> np.ndarray:
    """Time (and member) mean of the normalised training fields, (C, H, W) float32."""
    if batcher.in_memory:
        data = batcher.data
        return data.reshape(-1, *data.shape[-3:]).mean(0).astype(np.float32)
    total = None
    for t in batcher.time_idx:
        x = load_fields(batcher.ds, batcher.channels, [t], batcher.norm)
        x = x.reshape(-1, *x.shape[-3:]).mean(0)
        total = x if total is None else total + x
    return (total / len(batcher.time_idx)).astype(np.float32)


def resolve_skip(model: ModelOptions, batcher: FieldBatcher) -> str:
    """`train.model.skip` resolved: "auto" is "wiener" when the model wraps both axes (a
    doubly periodic domain) and trains on the whole grid, else "scalar". An explicit "wiener"
    needs whole-grid training (the filter is built for one grid); on axes the model does not
    wrap it acts on the mirror-extended field (a cosine-transform filter, no wrap-around edge)."""
    whole = batcher.crop == (batcher.H, batcher.W)
    both = set(model.periodic) == {"latitude", "longitude"}
    if model.skip == "auto":
        return "wiener" if whole and both else "scalar"
    if model.skip == "wiener" and not whole:
        raise ConfigError(
            "sr.train.model.skip",
            f"the Wiener skip needs whole-grid training (no crop); got crop {batcher.crop} on the "
            f"{batcher.H}x{batcher.W} grid",
        )
    return model.skip


def _field_chunks(batcher: FieldBatcher, limit: int = 1024):
    """The normalised training fields in chunks (at most `limit` times, evenly spaced)."""
    n = len(batcher.time_idx)
    pick = np.unique(np.linspace(0, n - 1, min(n, limit)).round().astype(np.int64))
    for i in range(0, len(pick), 64):
        sel = pick[i : i + 64]
        if batcher.in_memory:
            yield batcher.data[sel]
        else:
            yield load_fields(batcher.ds, batcher.channels, [batcher.time_idx[j] for j in sel], batcher.norm)


def _step_inputs(
    batcher: FieldBatcher, seed: int, step: int, n: int, edm, part: slice, pin: bool = False
) -> tuple[torch.Tensor, ...]:
    """(fields, sigma, noise) of this rank's `part` of step `step`'s global batch of `n`: the
    same draws on every rank and in every run (a generator seeded by the step); only the
    part's fields are read."""
    g = step_generator(seed, step, "sr_batch")
    y = batcher.batch(g, n, part)
    sigma = sample_sigma(n, edm.p_mean, edm.p_std, generator=g)
    noise = torch.randn((n, *y.shape[1:]), generator=g)
    out = (y, sigma[part], noise[part])
    return tuple(t.pin_memory() for t in out) if pin else out


def held_out_loss(denoiser, fields: np.ndarray, sigmas, sigma_data: float, seed: int, device) -> dict[float, float]:
    """EDM loss of `denoiser` on fields (N, C, H, W) at fixed σ, fixed noise (seeded)."""
    out = {}
    x = torch.from_numpy(fields).to(device)
    g = torch.Generator().manual_seed(derive_seed(seed, "val"))
    noise = torch.randn(x.shape, generator=g).to(device)
    with torch.no_grad():
        for s in sigmas:
            sig = torch.full((x.shape[0],), float(s), device=device)
            out[float(s)] = float(edm_loss(denoiser, x, sig, noise, sigma_data))
    return out


def train_prior(
    exp: Experiment,
    era5: str | Path,
    checkpoint_dir: str | Path | None,
    out: str | Path,
    run=None,
    experiment: str = "sr",
) -> dict:
    """Train the prior of experiment `exp` (:func:`scorebridge.sr.options.resolve_spec`) and
    write `out`; returns the training summary."""
    train = exp.train
    seed = exp.run_seed
    if train.threads:
        torch.set_num_threads(int(train.threads))
    device = select_device(train.device, key="sr.train.device")
    info = init_distributed(device)
    try:
        seed_everything(derive_seed(seed, "sr_train", info.rank), deterministic=True)
        ds = open_era5(era5)
        channels = resolve_channels(ds, train.variables, train.levels)
        norm = normalisation_of(ds, channels)
        train_idx, test_idx = split_times(ds, train.split)
        for what, idx in (
            ("training", train_idx),
            ("held-out", test_idx),
        ):  # NaN/inf fail here, not after the last step
            check_finite(ds, idx, what, channels)
        model = dataclasses.replace(train.model, periodic=resolve_periodic(ds, train.model, train.crop))
        if train.random_shift and not model.periodic:
            raise ConfigError(
                "sr.train.random_shift", "random circular shifts need a periodic axis (sr.train.model.periodic)"
            )
        batcher = FieldBatcher(
            ds,
            channels,
            train_idx,
            norm,
            train.crop,
            max_memory_mb=train.max_memory_mb,
            shift=model.periodic if train.random_shift else (),
        )
        edm = train.edm
        torch.manual_seed(derive_seed(seed, "init"))  # same initial weights on every rank
        offset = None
        if train.anomalies:  # the network models anomalies from the training-period time-mean field
            if batcher.crop != (batcher.H, batcher.W):
                raise ConfigError(
                    "sr.train.anomalies",
                    f"a mean field needs whole-grid training; crop is {batcher.crop} on the {batcher.H}x{batcher.W} grid",
                )
            offset = _mean_field(batcher)
        model = dataclasses.replace(model, skip=resolve_skip(model, batcher))
        denoiser = build_denoiser(
            len(channels), model, edm.sigma_data, offset.shape if offset is not None else None, (batcher.H, batcher.W)
        )
        if offset is not None:
            denoiser.offset.copy_(torch.from_numpy(offset))
        if denoiser.wiener is not None:  # the data's linear denoiser from the training fields' cross-spectra
            denoiser.wiener.set_moments(spectral_moments(_field_chunks(batcher), offset, denoiser.wiener.extend))
        denoiser = denoiser.to(device)
        opts = train  # the shared loop's TrainOptions
        if opts.batch_size % info.world_size:
            raise ConfigError(
                "sr.train.batch_size", f"{opts.batch_size} does not divide over {info.world_size} processes"
            )
        times = ds["time"].values[train_idx]
        identity = {
            "channels": [[v, lv] for v, lv in channels],
            "normalisation": norm.to_dict(),
            "train": {k: v for k, v in dataclasses.asdict(train).items() if k not in _NOT_IDENTITY},
            "seed": seed,
            "train_times": [str(times[0]), str(times[-1]), int(len(times))],
            "grid": [int(ds.sizes["latitude"]), int(ds.sizes["longitude"])],
        }
        ihash = identity_hash(identity)
        ckdir = Path(checkpoint_dir) / ihash if checkpoint_dir else None
        n_params = count_parameters(denoiser)
        if info.is_main:
            log.info(
                "channels %s; %d training / %d held-out times; crop %s; periodic %s; %d parameters; device %s; %d process(es)",
                channel_names(channels),
                len(train_idx),
                len(test_idx),
                batcher.crop,
                model.periodic or "none",
                n_params,
                device,
                info.world_size,
            )

        part = shard(opts.batch_size, info.rank, info.world_size)
        feed = Prefetcher(
            lambda step: _step_inputs(batcher, seed, step, opts.batch_size, edm, part, pin=device.type == "cuda"),
            opts.steps,
            0 if batcher.in_memory else int(train.prefetch),
        )
        fmt = torch.channels_last if train.channels_last else torch.contiguous_format

        def loss_fn(net, step: int, part: slice) -> torch.Tensor:
            y, sigma, noise = feed.get(step)  # this rank's shard of the step's global batch
            y, noise = (t.to(device, non_blocking=True, memory_format=fmt) for t in (y, noise))
            return edm_loss(net, y, sigma.to(device, non_blocking=True), noise, edm.sigma_data)

        def log_fn(step: int, metrics: dict) -> None:
            if run is not None:
                run.log_metrics(metrics, step=step + 1)

        with feed:
            denoiser, ema, result = fit(
                denoiser,
                loss_fn,
                opts,
                device=device,
                identity=identity,
                checkpoint_dir=ckdir,
                dist_info=info,
                log_fn=log_fn,
                desc=f"sr-train {experiment}",
            )
        summary: dict = {}
        if info.is_main:
            losses = [v for _, v in result.losses]
            tail = losses[-max(1, len(losses) // 10) :]
            summary = {
                "steps": result.step,
                "seconds": result.seconds,
                "resumed_from": result.resumed_from,
                "params": n_params,
                "world_size": info.world_size,
                "device": str(device),
                "final_loss": float(np.mean(tail)) if tail else None,
                "data": {
                    "streamed": not batcher.in_memory,
                    "fields_mb": batcher.nbytes / 2**20,
                    "prefetch": feed.depth,
                    "wait_s": feed.wait_s,
                    "wait_share": feed.wait_s / result.seconds if result.seconds > 0 else 0.0,
                },
                "train_times": [str(t) for t in ds["time"].values[train_idx]],
                "test_times": [str(t) for t in ds["time"].values[test_idx]],
                "identity_hash": ihash,
                "losses": result.losses,
            }
            # the held-out loss that choices are made on: validation times (never the test times
            # that are scored) when the split has a validation block
            block = split_times(ds, train.split, validation=True)[1]
            summary["val_loss_on"] = "validation" if len(block) else "test"
            block = block if len(block) else test_idx
            if len(block):
                val_idx = block[np.linspace(0, len(block) - 1, min(16, len(block))).astype(int)]
                vfields = load_fields(ds, channels, val_idx, norm)
                if vfields.ndim == 5:
                    vfields = vfields[:, 0]
                val = held_out_loss(ema.module, vfields, VAL_SIGMAS, edm.sigma_data, seed, device)
                summary["val_loss"] = {f"{k:g}": v for k, v in val.items()}
                summary["val_loss_mean"] = float(np.mean(list(val.values())))
            state = {
                "format": FORMAT,
                "model_kwargs": dataclasses.asdict(model),
                "ema": ema.module.state_dict(),
                "model": denoiser.state_dict(),
                "channels": [(v, lv) for v, lv in channels],
                "normalisation": norm.to_dict(),
                "edm": dataclasses.asdict(edm),
                "config": dataclasses.asdict(exp),
                "identity": identity,
                "losses": result.losses,
                "info": {k: v for k, v in summary.items() if k != "losses"},
                "era5": str(era5),
                "versions": package_versions(),
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            save_checkpoint(out, state)
        return summary
    finally:
        shutdown(info)


def report_training(summary: dict, out: str | Path, run) -> None:
    """Log the summary's numbers and the prior `out` to `run` (the loss curve is
    :func:`scorebridge.sr.diagnostic_figures.training_loss`, a declared output of sr_train)."""
    flat = {f"train/{k}": v for k, v in summary.items() if isinstance(v, (int, float)) and v is not None}
    flat.update({f"val/loss/sigma_{k}": v for k, v in summary.get("val_loss", {}).items()})
    flat.update({f"train/data_{k}": float(v) for k, v in summary.get("data", {}).items()})
    run.log_metrics(flat)
    run.log_artifact(out)
