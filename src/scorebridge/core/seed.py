"""Seeding, determinism and the random-number-generator state of a training run.

`seed_everything` seeds Python, NumPy and torch (all devices) and, on request, makes
torch use deterministic kernels. `rng_state` / `set_rng_state` capture and restore
every generator so that a run resumed from a checkpoint draws the same numbers as an
uninterrupted one. `step_generator` gives a torch generator that depends only on
(seed, step, stream): per-step randomness that does not depend on history at all,
the simplest way to make resumption exact and data sharding across ranks consistent.
"""

from __future__ import annotations

import hashlib
import os
import random
from typing import Any

import numpy as np
import torch

__all__ = ["seed_everything", "rng_state", "set_rng_state", "step_generator", "derive_seed"]


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed derived from `parts` by hashing (stable across runs and machines)."""
    text = "/".join(map(str, parts)).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") & ((1 << 63) - 1)


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch; with `deterministic`, ask torch for deterministic kernels.

    `torch.use_deterministic_algorithms(True, warn_only=True)` makes ops without a
    deterministic implementation warn instead of fail; cuDNN autotuning is turned off.
    On CUDA the cuBLAS workspace setting is needed for determinism of matmuls.
    """
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def rng_state() -> dict:
    """The state of every generator (python, numpy, torch CPU, torch CUDA if present)."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` captured (CUDA states only where CUDA is present)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu() if hasattr(state["torch"], "cpu") else state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def step_generator(seed: int, step: int, stream: str = "", device: str | torch.device = "cpu") -> torch.Generator:
    """A torch generator seeded by (seed, step, stream) alone."""
    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(seed, step, stream))
    return gen
