"""Batches from an in-memory Split: index a tensor, convert, normalize. No per-image Python.

The lectures wrap tensors in a `Dataset` whose `__getitem__` returns one image at a time,
and a `DataLoader` collates 32 of them back into a batch; slicing the uint8 tensor directly
gives the same batches for a fraction of the work. The order of each epoch depends only on
(seed, epoch), and each batch's augmentation only on (seed, epoch, step), so a run resumed at any
step sees the same batches as an uninterrupted one.

Under torchrun every rank draws the same order and takes its own share of each global batch
(rank r of W takes the r-th of W equal parts), so W processes see together exactly the batches
one process would: the sharding that DistributedSampler does, at the level of batches.

On a GPU the uint8 split is copied to the device once (`resident`), when it takes at most a quarter
of the device's free memory: batches are then gathered, augmented and normalized there, with no
copy from the host per batch (CIFAR-10's 50,000 images are 154 MB as uint8).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from cnnlab.errors import UsageError
from cnnlab.settings import check_augment
from cnnlab.data.augment import augment
from cnnlab.data.dataset import Split
from cnnlab.data.preprocess import Preprocess


class BatchLoader:
    """Iterate over (images, labels) batches of a Split, turned into model inputs by `preprocess` on `device`."""

    def __init__(
        self,
        split: Split,
        batch_size: int,
        preprocess: Preprocess,
        shuffle: bool = False,
        seed: int = 0,
        device: str | torch.device = "cpu",
        augmentation: str = "none",
        rank: int = 0,
        world_size: int = 1,
        resident: bool | None = None,
    ) -> None:
        """`resident`: keep the split on `device` (None: on a GPU where it fits, see `fits_on`)."""
        check_augment(augmentation)
        if not 0 <= rank < world_size:
            raise UsageError(f"rank {rank} is not one of the {world_size} processes (0 to {world_size - 1})")
        if batch_size % world_size:
            raise UsageError(
                f"the batch size {batch_size} does not split evenly over {world_size} processes; "
                f"use a multiple of {world_size}"
            )
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch, self.start_step = 0, 0
        self.augmentation = augmentation
        self.preprocess = preprocess
        self.rank, self.world_size = rank, world_size
        self.device = torch.device(device)
        if resident is None:
            resident = self.device.type != "cpu" and fits_on(self.device, split.x.nbytes + split.y.nbytes)
        # The images and labels batches are gathered from: on the device, copied once, or the host's.
        self.x, self.y = (split.x.to(self.device), split.y.to(self.device)) if resident else (split.x, split.y)

    def __len__(self) -> int:
        full, rest = divmod(len(self.split), self.batch_size)
        # The last batch may be smaller; under torchrun one too small to give every rank an image is dropped.
        return full + (rest >= self.world_size)

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Choose the shuffled order of this epoch (as DistributedSampler.set_epoch does), and the
        step to start from (a run resumed within an epoch)."""
        self.epoch, self.start_step = epoch, start_step

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.split)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(self.seed, self.epoch)))
        else:
            order = torch.arange(n)
        order = order.to(self.x.device)  # once an epoch, not per batch
        for step in range(self.start_step, len(self)):
            batch = order[step * self.batch_size : (step + 1) * self.batch_size]
            x, y = self.x[batch], self.y[batch]  # (B, C, H, W) uint8, (B,)
            if self.augmentation != "none":
                # Each batch draws from a generator of its own (seed, epoch, step), not the stream of any
                # epoch's order, so that a run resumed at this step draws the same. The whole global batch
                # is augmented, so that W ranks draw what one process would: uint8 work, cheap.
                generator = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, step) ^ 0x5DEECE66D)
                x = augment(x, self.augmentation, generator)
            if self.world_size > 1:
                x, y = x.tensor_split(self.world_size)[self.rank], y.tensor_split(self.world_size)[self.rank]
            yield self.preprocess.from_uint8(x, self.device), y.to(self.device, non_blocking=True)


def fits_on(device: torch.device, nbytes: int) -> bool:
    """Whether `nbytes` of data may stay on `device`: at most a quarter of a GPU's free memory, leaving
    the rest to the model's activations."""
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= free // 4


def mix_seed(seed: int, *parts: int) -> int:
    """A generator seed from a run's seed and counters, below 2**63 whatever the seed."""
    for part in parts:
        seed = (seed * 100_003 + part) % 2**63
    return seed
