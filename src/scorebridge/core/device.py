"""Device choice and mixed precision.

`select_device("auto")` is CUDA when torch sees a GPU, else CPU; any torch device
string ("cpu", "cuda", "cuda:1", "mps") overrides. Under torchrun the local rank
picks the GPU. `autocast(device, precision)` is bf16 autocast on CUDA when asked
("auto" or "bf16"), a no-op on CPU and for "fp32". (fp16 is not offered: it would need
loss scaling, and bf16 has fp32's range.)
"""

from __future__ import annotations

import contextlib
import os

import torch

from ..errors import ConfigError

__all__ = ["select_device", "autocast", "amp_dtype"]


def select_device(spec: str | None = "auto", key: str = "device") -> torch.device:
    """The torch device for `spec` ("auto", "cpu", "cuda", "cuda:N", ...); clear error if absent."""
    spec = (spec or "auto").strip().lower()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError as err:
        raise ConfigError(key, f"'{spec}' is not a torch device ({err}); use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(key, f"'{spec}' asked for, but torch sees no CUDA device here; use auto or cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
        elif device.index >= torch.cuda.device_count():
            raise ConfigError(key, f"'{spec}': only {torch.cuda.device_count()} CUDA device(s) visible")
    if device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError(key, f"'{spec}' asked for, but MPS is not available here")
    return device


def amp_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype: bf16 on CUDA for "auto"/"bf16", else None (fp32)."""
    precision = (precision or "auto").lower()
    if precision not in ("auto", "bf16", "fp32"):
        raise ConfigError("precision", f"'{precision}' is not one of auto, bf16, fp32")
    if device.type != "cuda" or precision == "fp32":
        return None
    return torch.bfloat16


def autocast(device: torch.device, precision: str = "auto"):
    """Autocast context for the forward pass (a no-op where `amp_dtype` is None)."""
    dtype = amp_dtype(device, precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
