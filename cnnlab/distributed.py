"""Training on several processes with torchrun: PyTorch's own DistributedDataParallel.

    torchrun --nproc-per-node=2 -m cnnlab train --dataset fashion-mnist --recipe fast

torchrun starts the processes and sets RANK, WORLD_SIZE and LOCAL_RANK; `setup` joins them into
one process group (gloo on CPUs, nccl on GPUs). Every rank builds the same model from the same
seed, takes its share of each global batch (BatchLoader), and DistributedDataParallel averages
the gradients, so all ranks keep identical weights. Only rank 0 prints and writes the run folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .errors import UsageError


@dataclass(frozen=True)
class Context:
    """Where this process stands: rank r of world_size (1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: torch.device) -> Context:
    """Join torchrun's process group when started by torchrun (WORLD_SIZE > 1), else a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Context()
    ctx = Context(
        int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")),
        int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size))),
    )
    if not dist.is_initialized():
        if device.type == "cuda":
            if ctx.local_rank >= torch.cuda.device_count():
                raise UsageError(
                    f"{ctx.local_world_size} processes per node but {torch.cuda.device_count()} GPUs; "
                    "use --nproc-per-node at most the number of GPUs"
                )
            torch.cuda.set_device(ctx.local_rank)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return ctx


def rank_device(device: torch.device, ctx: Context) -> torch.device:
    """Each rank's own GPU; CPU ranks share the CPU."""
    return torch.device("cuda", ctx.local_rank) if device.type == "cuda" and ctx.world_size > 1 else device


def default_threads(ctx: Context) -> int:
    """CPU threads per process: the cores shared out between the processes on this node."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // ctx.local_world_size)


def wrap(net: nn.Module, ctx: Context, device: torch.device) -> nn.Module:
    """`net` in DistributedDataParallel under torchrun (gradients averaged over ranks), else itself."""
    if ctx.world_size == 1:
        return net
    return nn.parallel.DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)


def barrier(ctx: Context) -> None:
    if ctx.world_size > 1:
        dist.barrier()


def all_sum(tensor: torch.Tensor, ctx: Context) -> torch.Tensor:
    """`tensor` summed over the ranks (itself in a single process)."""
    if ctx.world_size > 1:
        dist.all_reduce(tensor)
    return tensor


def from_main(value: Any, ctx: Context) -> Any:
    """Rank 0's `value` on every rank (e.g. a run folder named from the clock)."""
    if ctx.world_size == 1:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def teardown(ctx: Context) -> None:
    if ctx.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()
