"""Process groups for multi-GPU / multi-node training under ``torchrun`` (DDP).

``torchrun --nproc-per-node N -m hassod train ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; each process drives one GPU (NCCL) or, on
CPU, one gloo process. Without those variables training runs in a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    enabled: bool = False  # a process group was initialised (DDP wrapping)
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_type: str, enable: bool | None = None) -> DistInfo:
    """Join the process group that torchrun describes in the environment.

    ``enable=None`` joins when ``WORLD_SIZE`` > 1; ``True`` joins even with one process (the
    DDP code path, e.g. in tests; needs ``MASTER_ADDR``/``MASTER_PORT``, defaulting to
    localhost and a free port), ``False`` never joins.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if enable is None:
        enable = world_size > 1
    if not enable:
        if world_size > 1:
            raise ValueError("WORLD_SIZE > 1 but distributed training was disabled")
        return DistInfo()
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, True, False)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    backend = "nccl" if device_type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistInfo(rank, world_size, local_rank, True, True)


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_mean(values: dict, info: DistInfo, device) -> dict:
    """Mean of scalar metrics over the processes (for logging)."""
    if not info.enabled or info.world_size == 1 or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([float(values[key]) for key in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    tensor /= info.world_size
    return dict(zip(keys, tensor.tolist()))


def all_true(flag: bool, info: DistInfo, device) -> bool:
    """Whether ``flag`` holds in every process: decisions that change the model (skipping a
    step) must be the same everywhere, or the replicas drift apart."""
    if not info.enabled or info.world_size == 1:
        return flag
    tensor = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return bool(tensor.item())


def all_gather_objects(value, info: DistInfo) -> list:
    """``value`` of every process, in rank order (``[value]`` without a process group)."""
    if not info.enabled or info.world_size == 1:
        return [value]
    gathered = [None] * info.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def shutdown(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()
