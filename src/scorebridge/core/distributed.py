"""torch.distributed set-up for training under torchrun (DDP).

Under `torchrun` the environment holds WORLD_SIZE, RANK and LOCAL_RANK; `init_distributed`
then starts the process group (NCCL on CUDA, gloo on CPU) and returns a `DistInfo`.
Without torchrun (or WORLD_SIZE=1) it is a no-op and training runs in one process.

Conventions used by the training loop (scorebridge.core.train):
- every rank draws the same *global* batch for a step from a generator seeded by
  (seed, step) and keeps its shard `shard(n, rank, world)`: the DistributedSampler idea
  without a sampler, and exactly the same data as a single-process run;
- gradients are averaged by DDP, so with equal shards the update equals the
  single-process update with the same global batch;
- checkpoints, logs and MLflow only on rank 0 (`is_main`).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "shutdown", "shard", "barrier", "all_mean", "broadcast_object"]


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device: torch.device, timeout_s: int = 600) -> DistInfo:
    """Start the process group when WORLD_SIZE > 1 (NCCL for CUDA, gloo otherwise)."""
    world = env_world_size()
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        kwargs = {}
        if device.type == "cuda":
            torch.cuda.set_device(device)
            kwargs["device_id"] = device
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, backend=backend)


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def shard(n: int, rank: int, world: int) -> slice:
    """The slice of a global batch of `n` items that rank `rank` of `world` handles.

    `n` must divide evenly so that the DDP-averaged gradient equals the global-batch gradient.
    """
    if n % world:
        raise ValueError(f"global batch {n} does not divide evenly over {world} processes")
    per = n // world
    return slice(rank * per, (rank + 1) * per)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of a tensor over ranks (a copy; identity in one process)."""
    if not info.enabled:
        return value.detach().clone()
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / info.world_size


def broadcast_object(obj, info: DistInfo, src: int = 0):
    """`obj` from rank `src` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
