"""Augmentation of whole batches in torch: random crops with padding and horizontal flips.

torchvision's transforms draw one random crop per call, so a per-image pipeline calls them
once per image. Here one call moves every image of a uint8 batch by its own random offset
(an index gather) and mirrors a random half: a few tensor operations per batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad each side by `padding`, then crop every image back to its size at its own random
    offset, as torchvision's RandomCrop(size, padding) does one image at a time."""
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))  # (N, C, H+2p, W+2p)
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]  # (N, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]  # (N, 1, 1, W)
    images = torch.arange(n)[:, None, None, None]
    channels = torch.arange(c)[None, :, None, None]
    return padded[images, channels, rows, cols]  # (N, C, H, W)


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror a random half of the batch left to right."""
    flip = torch.rand(len(x), generator=generator) < 0.5  # (N,)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def augment(x: torch.Tensor, name: str, generator: torch.Generator, padding: int = 2) -> torch.Tensor:
    """Apply augmentation `name` ("none", "flip", "crop" or "crop+flip") to a batch (N, C, H, W)."""
    if "crop" in name:
        x = random_crop(x, padding, generator)
    if "flip" in name:
        x = random_flip(x, generator)
    return x
