"""Training on several processes with torchrun: PyTorch's own DistributedDataParallel.

    torchrun --nproc-per-node=2 -m cnnlab train --dataset fashion-mnist --recipe fast

torchrun starts the processes and sets RANK, WORLD_SIZE and LOCAL_RANK; `setup` joins them into
one process group (gloo on CPUs, nccl on GPUs). Every rank builds the same model from the same
seed, takes its share of each global batch (BatchLoader), and DistributedDataParallel averages
the gradients, so all ranks keep identical weights. Only rank 0 prints and writes the run folder.

A rank that waits in a collective for a peer that died or hangs gives up after $CNNLAB_DIST_TIMEOUT
seconds (default 300) and raises a TrainingError; torchrun then stops the remaining ranks.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from cnnlab.errors import TrainingError, UsageError

TIMEOUT_ENV = "CNNLAB_DIST_TIMEOUT"
# Long enough for rank 0 to validate and write a checkpoint on a CPU while the others wait in a
# barrier; PyTorch's own default (30 min for gloo) leaves a run stuck for half an hour.
DEFAULT_TIMEOUT = 300.0


@dataclass(frozen=True)
class Context:
    """Where this process stands: rank r of world_size (1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    owns_group: bool = False  # this setup joined the process group, so its teardown leaves it

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: torch.device) -> Context:
    """Join torchrun's process group when started by torchrun (WORLD_SIZE > 1), else a single process.

    Inside another setup's group (compare's, around each model's training) it joins nothing, and its
    teardown leaves the group to the outer one: a group left and joined again under one torchrun can
    deadlock (it gets the first one's name, and finds that one's stale addresses in torchrun's store)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Context()
    ctx = Context(
        int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")),
        int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size))), owns_group=not dist.is_initialized(),
    )
    if ctx.owns_group:
        if device.type == "cuda":
            if ctx.local_rank >= torch.cuda.device_count():
                raise UsageError(
                    f"{ctx.local_world_size} processes per node but {torch.cuda.device_count()} GPUs; "
                    "use --nproc-per-node at most the number of GPUs"
                )
            torch.cuda.set_device(ctx.local_rank)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout()))
    return ctx


def timeout() -> float:
    """Seconds a rank waits for the others in a collective: $CNNLAB_DIST_TIMEOUT, else DEFAULT_TIMEOUT."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:  # also NaN
        raise UsageError(f"{TIMEOUT_ENV}={text!r} is not a number of seconds; set it to e.g. {DEFAULT_TIMEOUT:g}")
    return seconds


def raise_if_peer_stopped(exc: RuntimeError, ctx: Context) -> None:
    """Raise a TrainingError from `exc` when a collective raised it: another rank failed, was killed or
    hangs. Any other error is left to the caller to re-raise."""
    # The backends raise a DistError for some of these and a bare RuntimeError for others: gloo's
    # "Connection reset by peer" or "Timed out waiting ... for recv" from DDP's all-reduce in backward().
    if ctx.world_size == 1 or not (isinstance(exc, dist.DistError) or "gloo" in str(exc) or "NCCL" in str(exc)):
        return
    # gloo's messages start with its source file: "[.../gloo/transport/tcp/pair.cc:545] Read error ..."
    said = re.sub(r"^\[[^\]]*\]\s*", "", (str(exc).strip().splitlines() or [type(exc).__name__])[0])
    raise TrainingError(
        f"rank {ctx.rank} of {ctx.world_size}: another process of this torchrun run stopped answering (it failed, "
        f"was killed or hangs; its own error, if any, is above). Fix that and start the run again; ranks that "
        f"only need longer (a slow disk, a long validation on rank 0) can wait more than {timeout():g} s with "
        f"{TIMEOUT_ENV}=SECONDS. PyTorch said: {said}"
    ) from exc


@contextmanager
def session(device: torch.device) -> Iterator[Context]:
    """`setup` ... `teardown` around a block; a collective that fails there because another rank
    died or hangs becomes a TrainingError that says so (raise_if_peer_stopped)."""
    ctx = setup(device)
    try:
        yield ctx
    except RuntimeError as exc:
        raise_if_peer_stopped(exc, ctx)
        raise
    finally:
        teardown(ctx)


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
    """Leave the process group that `setup` joined."""
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()
