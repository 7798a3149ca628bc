"""Exponential moving average of model weights, with a warm-up of the decay.

    ema_t = β_t · ema_{t-1} + (1 - β_t) · θ_t,   β_t = min(β, (1 + n) / (10 + n)),  n = t - start

(the warm-up of Tensorflow's `ExponentialMovingAverage(num_updates=...)`). Before
`start` the EMA simply copies the weights. Why the warm-up: with a constant β = 0.999
an EMA started from the random initial weights still carries β^t of them, 9% after
2,400 steps (0.999^2400 = 0.091), which ruins early checkpoints. With the warm-up the
weight left on the initial parameters is Π β_t = 9!·n!/(n+9)! (≈ 3.6e5 / n^9), below
1e-20 after 2,400 updates. `initial_weight()` returns that product so it can be checked.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["EMA", "ema_decay"]


def ema_decay(step: int, decay: float, start: int = 0, warmup: bool = True) -> float:
    """β_t for update number `step` (0-based): 0 before `start` (copy), then the warmed-up decay."""
    if step < start:
        return 0.0
    if not warmup:
        return decay
    n = step - start
    return min(decay, (1.0 + n) / (10.0 + n))


class EMA:
    """EMA of the floating-point parameters and buffers of `model` (a detached copy).

    `update(model)` after each optimiser step; `module` is the averaged copy (eval
    mode, no gradients); `state_dict()` / `load_state_dict()` for checkpoints.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, start: int = 0, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.start = int(start)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self._initial_weight = 1.0  # Π β_t: weight the EMA still gives the initial parameters
        self.module = copy.deepcopy(_unwrap(model)).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> float:
        """Fold the current weights of `model` in; returns the β used."""
        beta = ema_decay(self.num_updates, self.decay, self.start, self.warmup)
        src = _unwrap(model).state_dict()
        for name, value in self.module.state_dict().items():
            new = src[name].detach()
            if value.dtype.is_floating_point:
                value.mul_(beta).add_(new.to(value.dtype), alpha=1.0 - beta)
            else:
                value.copy_(new)
        self.num_updates += 1
        self._initial_weight *= beta
        return beta

    def initial_weight(self) -> float:
        """Π β_t over the updates so far: the share of the EMA still made of the initial weights."""
        return self._initial_weight

    def state_dict(self) -> dict:
        return {
            "module": self.module.state_dict(),
            "decay": self.decay,
            "start": self.start,
            "warmup": self.warmup,
            "num_updates": self.num_updates,
            "initial_weight": self._initial_weight,
        }

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.decay = float(state["decay"])
        self.start = int(state["start"])
        self.warmup = bool(state["warmup"])
        self.num_updates = int(state["num_updates"])
        self._initial_weight = float(state["initial_weight"])


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper."""
    return (
        getattr(model, "module", model)
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel))
        else model
    )
