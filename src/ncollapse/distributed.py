"""Several processes (``torchrun``): process-group setup, rank helpers, exact reductions.

Under ``torchrun --nproc_per_node N`` the environment carries ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; :func:`setup` joins the group (``nccl`` on CUDA, ``gloo`` on CPU). In a plain
process everything here degrades to the single-process case.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: rank, number of processes, its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool  # True when :func:`setup` created the process group (and must destroy it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; ``cuda`` without a GPU is an error."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but no CUDA GPU is available; "
                             "use --device cpu or --device auto")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    if device == "cpu":
        return torch.device("cpu")
    raise ValueError(f"unknown device {device!r}; valid choices: auto, cpu, cuda")


def setup(device: str = "auto") -> DistInfo:
    """Join the process group when launched by ``torchrun`` (WORLD_SIZE > 1), else run alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(0, 1, 0, resolve_device(device), owns_group=False)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    owns = False
    if not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        owns = True
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev, owns_group=owns)


def teardown(info: DistInfo) -> None:
    """Leave the process group if :func:`setup` created it."""
    if info.owns_group and dist.is_initialized():
        # DistributedDataParallel wrappers hold the group through reference cycles: free them
        # first, and let every rank arrive, or gloo may abort at exit.
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``tensor`` over all ranks in place (no-op alone) and return it."""
    if info.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def gather_to_main(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor | None:
    """Concatenate every rank's ``tensor`` (first dims may differ) on rank 0; None elsewhere."""
    if not info.distributed:
        return tensor
    parts = [None] * info.world_size if info.is_main else None
    dist.gather_object(tensor.cpu(), parts, dst=0)
    return torch.cat(parts) if info.is_main else None


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def broadcast_buffers(module: torch.nn.Module, info: DistInfo) -> None:
    """Copy rank 0's buffers (e.g. BatchNorm running statistics) to every rank, so that all
    ranks evaluate the same model rank 0 checkpoints."""
    if info.distributed:
        for buf in module.buffers():
            dist.broadcast(buf, src=0)
