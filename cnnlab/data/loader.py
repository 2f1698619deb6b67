"""Batches from an in-memory Split: index a tensor, convert, normalize. No per-image Python.

The lectures wrap tensors in a `Dataset` whose `__getitem__` returns one image at a time,
and a `DataLoader` collates 32 of them back into a batch; slicing the uint8 tensor directly
gives the same batches for a fraction of the work. The order of each epoch depends only on
(seed, epoch), so a resumed run sees the same batches as an uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from .dataset import Split


class BatchLoader:
    """Iterate over (images, labels) batches of a Split, normalized as float32 on `device`."""

    def __init__(
        self,
        split: Split,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        shuffle: bool = False,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0
        self.device = torch.device(device)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)

    def __len__(self) -> int:
        return -(-len(self.split) // self.batch_size)  # ceil: the last batch may be smaller

    def set_epoch(self, epoch: int) -> None:
        """Choose the shuffled order of this epoch (as DistributedSampler.set_epoch does)."""
        self.epoch = epoch

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) -> float32 (N, C, H, W), (x / 255 - mean) / std."""
        return (x.to(self.device, non_blocking=True).float().div_(255.0) - self.mean).div_(self.std)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.split)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        else:
            order = torch.arange(n)
        for start in range(0, n, self.batch_size):
            index = order[start : start + self.batch_size]
            x, y = self.split.x[index], self.split.y[index]  # (B, C, H, W) uint8, (B,)
            yield self.normalize(x), y.to(self.device, non_blocking=True)
