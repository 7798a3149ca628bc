"""The shared training loop: AdamW, EMA, mixed precision, checkpoints, resume, DDP.

One mechanism used by both model families. The model-specific part is a loss function

    loss_fn(model, step, part) -> scalar tensor

that computes the mean loss over this rank's `part` (a slice of the step's global
batch, see `scorebridge.core.distributed`). Its randomness should come from
`scorebridge.core.seed.step_generator(seed, step, ...)`, which depends only on the
step: then a run resumed from a checkpoint, and a DDP run over several processes,
see exactly the data of an uninterrupted single-process run.

`fit` resumes from the newest checkpoint in `checkpoint_dir` (after checking that it
was made with the same `identity`), trains to `steps`, writes a checkpoint every
`checkpoint_every` steps and at the end (rank 0, atomically), and returns the final
state. On CPU with the same seed a killed-and-resumed run ends with bitwise the same
weights as an uninterrupted one (tests/test_resume.py).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .. import options
from ..progress import progress_enabled
from .checkpoint import (
    check_identity,
    checkpoint_name,
    identity_hash,
    latest_checkpoint,
    prune_checkpoints,
    remove_partials,
    save_checkpoint,
)
from .device import autocast
from .distributed import DistInfo, all_mean, barrier, shard
from .ema import EMA
from .seed import rng_state, set_rng_state

__all__ = ["EMAOptions", "TrainOptions", "TrainResult", "fit", "compiled", "lr_factor", "LR_MIN_FACTOR"]

log = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, int, slice], torch.Tensor]
LogFn = Callable[[int, dict], None]

# the cosine schedule decays to this fraction of `lr` at the last step (not a config key)
LR_MIN_FACTOR = 0.1


@options.register
@dataclass(frozen=True)
class EMAOptions:
    """The weight average (`train.ema`): decay after warm-up, start step, warm-up on/off."""

    SCHEMA_PATH = ("sr", "*", "train", "ema")
    decay: float
    start: int
    warmup: bool


@options.register
@dataclass(frozen=True)
class TrainOptions:
    """Options of the optimisation: the keys of a `train` section this loop reads (the SR
    prior's `sr.<name>.train`; `scorebridge.sr.options.SRTrainOptions` adds the rest).
    No field has a default: build it with `scorebridge.options.build(TrainOptions, section)`.

    `batch_size` is the global batch (over all ranks); `lr_decay` "cosine" (to
    `LR_MIN_FACTOR` x lr at `steps`) or "constant"; `grad_clip` the max global gradient
    norm (<= 0: off); `precision` "auto" (bf16 autocast on CUDA), "bf16" or "fp32";
    `channels_last`: the model's weights (and the inputs the loss function makes) in the
    NHWC memory format (faster convolutions on GPUs with tensor cores); `compile`: the
    training forward through `torch.compile` (the unwrapped model is what is saved).
    """

    SCHEMA_PATH = ("sr", "*", "train")
    steps: int
    batch_size: int
    lr: float
    lr_warmup: int
    lr_decay: str
    weight_decay: float
    grad_clip: float
    ema: EMAOptions
    checkpoint_every: int
    keep_checkpoints: int
    log_every: int
    precision: str
    channels_last: bool
    compile: bool

    @classmethod
    def from_section(cls, section: dict) -> "TrainOptions":
        """From a validated, default-filled section (`ema` becomes :class:`EMAOptions`)."""
        kwargs = {f.name: section[f.name] for f in fields(cls)}
        kwargs["ema"] = EMAOptions(**section["ema"])
        return cls(**kwargs)


@dataclass
class TrainResult:
    step: int
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, mean loss over the global batch)
    seconds: float = 0.0
    resumed_from: int | None = None
    checkpoint: Path | None = None


def compiled(model: nn.Module, enabled: bool, backend: str = "inductor") -> nn.Module:
    """`torch.compile(model, backend=backend)` when `enabled`, else `model` itself. The
    compiled wrapper shares the parameters; save and average the unwrapped `model`."""
    if not enabled:
        return model
    return torch.compile(model, backend=backend)


def lr_factor(step: int, opts: TrainOptions) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine decay (or constant)."""
    if opts.lr_warmup > 0 and step < opts.lr_warmup:
        return (step + 1) / opts.lr_warmup
    if opts.lr_decay == "constant":
        return 1.0
    span = max(1, opts.steps - opts.lr_warmup)
    frac = min(1.0, (step - opts.lr_warmup) / span)
    return LR_MIN_FACTOR + (1 - LR_MIN_FACTOR) * 0.5 * (1 + math.cos(math.pi * frac))


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    opts: TrainOptions,
    *,
    device: torch.device,
    identity: dict,
    checkpoint_dir: str | Path | None = None,
    dist_info: DistInfo | None = None,
    log_fn: LogFn | None = None,
    extra_state: dict | None = None,
    desc: str = "train",
) -> tuple[nn.Module, EMA, TrainResult]:
    """Train `model` (already on `device`) with `loss_fn`; see the module docstring.

    Returns (model, ema, result); `model` is the unwrapped module. `identity` is stored
    in every checkpoint and must match for a resume. `extra_state` is saved alongside.
    """
    info = dist_info or DistInfo()
    ckdir = Path(checkpoint_dir) if checkpoint_dir else None
    if opts.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, opts))
    ema = EMA(model, opts.ema.decay, opts.ema.start, opts.ema.warmup)
    result = TrainResult(step=0)

    if ckdir is not None:
        if info.is_main and remove_partials(ckdir):
            log.info("removed the temp file of an interrupted checkpoint write in %s", ckdir)
        found = latest_checkpoint(ckdir, map_location=device)
        if found is not None:
            path, state = found
            check_identity(state, identity, path)
            model.load_state_dict(state["model"])
            ema.load_state_dict(state["ema"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            set_rng_state(state["rng"])
            result.step = int(state["step"])
            result.losses = [tuple(x) for x in state.get("losses", [])]
            result.resumed_from = result.step
            if info.is_main:
                log.info("resumed from %s (step %d)", path, result.step)

    train_model: nn.Module = model
    if info.enabled:
        ids = [device.index] if device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=ids, output_device=ids[0] if ids else None)
    train_model = compiled(train_model, opts.compile)
    part = shard(opts.batch_size, info.rank, info.world_size)

    def save(step: int) -> Path | None:
        if ckdir is None or not info.is_main:
            return None
        state = {
            "model": model.state_dict(),
            "ema": ema.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "rng": rng_state(),
            "step": step,
            "losses": result.losses,
            "identity": identity,
            "identity_hash": identity_hash(identity),
            "options": asdict(opts),
            **(extra_state or {}),
        }
        path = save_checkpoint(ckdir / checkpoint_name(step), state)
        prune_checkpoints(ckdir, opts.keep_checkpoints)
        return path

    bar = None
    if info.is_main and progress_enabled() and result.step < opts.steps:
        from tqdm import tqdm

        bar = tqdm(total=opts.steps, initial=result.step, desc=desc, unit="step", dynamic_ncols=True)

    t0 = time.perf_counter()
    model.train()
    window: list[float] = []
    for step in range(result.step, opts.steps):
        opt.zero_grad(set_to_none=True)
        with autocast(device, opts.precision):
            loss = loss_fn(train_model, step, part)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss.item()} at step {step}; lower train.lr or check the data")
        loss.backward()
        if opts.grad_clip and opts.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), opts.grad_clip)
        opt.step()
        sched.step()
        ema.update(model)
        value = float(all_mean(loss.float(), info))
        result.losses.append((step, value))
        window.append(value)
        done = step + 1
        if bar is not None:
            bar.update(1)
            if done % max(1, opts.log_every) == 0:
                bar.set_postfix(loss=f"{sum(window) / len(window):.4f}")
        if log_fn is not None and info.is_main and (done % max(1, opts.log_every) == 0 or done == opts.steps):
            log_fn(
                step,
                {
                    "train/loss": sum(window) / len(window),
                    "train/lr": sched.get_last_lr()[0],
                    "train/ema_initial_weight": ema.initial_weight(),
                },
            )
            window = []
        if opts.checkpoint_every > 0 and done % opts.checkpoint_every == 0 and done < opts.steps:
            save(done)
            barrier(info)
    if bar is not None:
        bar.close()
    result.seconds = time.perf_counter() - t0
    if result.step < opts.steps or (ckdir is not None and not (ckdir / checkpoint_name(opts.steps)).exists()):
        result.checkpoint = save(opts.steps)
    elif ckdir is not None:
        result.checkpoint = ckdir / checkpoint_name(opts.steps)
    barrier(info)
    result.step = max(result.step, opts.steps)
    model.eval()
    return model, ema, result
