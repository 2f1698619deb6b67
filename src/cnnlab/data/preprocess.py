"""How images become a model's input: the one place in cnnlab that does it.

    image file ──load──> float (N, C, H, W) in [0, 1] ──normalize──> (x - mean) / std, laid out for the model
    uint8 batch (N, C, H, W) ──from_uint8──> the same, on a device (the training loader's batched path)

A run keeps its `Preprocess` in config.json, and a trained model carries it (runs/trained.py), so
prediction, evaluation, the report, export and a pretrained network's own ImageNet statistics all
go through the same arithmetic. `as_module()` puts the normalization inside a plain nn.Module, for
graphs that take [0, 1] images (export).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.data import images
from cnnlab.errors import UsageError

# How an image of another size is fitted to the input: "stretch" resizes the whole image to H x W
# (bilinear, antialiased), as the datasets' images were read; "center-crop" resizes its shorter side
# to `resize_size` and keeps the centre H x W, as ImageNet networks were evaluated (torchvision's
# ImageClassification: 256, then 224).
RESIZE_POLICIES = ("stretch", "center-crop")
CROP_FRACTION = 0.875  # 224 of 256: the share of the shorter side that ImageNet evaluation keeps


@dataclass(frozen=True)
class Preprocess:
    """Input shape (C, H, W), resize policy, per-channel mean and std, and the memory layout."""

    input_shape: tuple[int, int, int]
    mean: tuple[float, ...] = field(default=())  # () means 0 per channel: only / 255
    std: tuple[float, ...] = field(default=())  # () means 1 per channel
    resize: str = "stretch"
    channels_last: bool = False
    resize_size: int | None = None  # "center-crop": the shorter side before the crop (None: size / 0.875)

    def __post_init__(self) -> None:
        c = self.input_shape[0]
        object.__setattr__(self, "input_shape", tuple(int(v) for v in self.input_shape))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean) or (0.0,) * c)
        object.__setattr__(self, "std", tuple(float(v) for v in self.std) or (1.0,) * c)
        if len(self.mean) != c or len(self.std) != c:
            raise UsageError(f"mean and std need {c} value(s), one per input channel; got {list(self.mean)} and "
                             f"{list(self.std)}")
        if self.resize not in RESIZE_POLICIES:
            raise UsageError(f"unknown resize policy {self.resize!r}; use one of {', '.join(RESIZE_POLICIES)}")
        if self.resize == "center-crop" and self.resize_size is None:
            object.__setattr__(self, "resize_size", round(min(self.size) / CROP_FRACTION))
        if self.resize == "stretch":
            object.__setattr__(self, "resize_size", None)
        elif self.resize_size < min(self.size):
            raise UsageError(f"resize_size {self.resize_size} is smaller than the {min(self.size)}-pixel crop")

    @property
    def channels(self) -> int:
        return self.input_shape[0]

    @property
    def size(self) -> tuple[int, int]:
        return self.input_shape[1], self.input_shape[2]

    def load(self, paths: Sequence[str | Path | images.Blob], invert: bool = False) -> torch.Tensor:
        """Image files of any size and mode as float (N, C, H, W) in [0, 1]: alpha dropped, grayscale
        for a one-channel model, resized to the input size. `invert` turns dark-on-light images into
        the light-on-dark look of (Fashion-)MNIST."""
        if not paths:
            raise UsageError("give at least one image file")
        if self.resize == "stretch":
            batch = torch.stack([images.load(p, channels=self.channels, size=self.size) for p in paths])  # (N, C, H, W)
        else:  # each at its own size, then fitted: the files may differ in size
            batch = torch.cat([self.fit(images.load(p, channels=self.channels)[None]) for p in paths])
        return 1.0 - batch if invert else batch

    def fit(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, C, h, w), uint8 or float, at the input size H x W by the resize policy (unchanged
        when they have it already and the policy crops nothing)."""
        if self.resize == "stretch" and tuple(x.shape[-2:]) == self.size:
            return x
        import torchvision.transforms.v2.functional as TF  # about a second to import: only when images are fitted

        if self.resize == "stretch":
            return TF.resize(x, list(self.size), antialias=True)  # (N, C, H, W)
        x = TF.resize(x, self.resize_size, antialias=True)  # shorter side to resize_size
        return TF.center_crop(x, list(self.size))  # (N, C, H, W)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """float (N, C, H, W) in [0, 1] -> the model's input: (x - mean) / std, in its memory layout."""
        mean, std = self._stats(x.device)
        x = (x.float() - mean).div_(std)  # (N, C, H, W)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def from_uint8(self, x: torch.Tensor, device: str | torch.device = "cpu") -> torch.Tensor:
        """uint8 (N, C, h, w) -> the model's input on `device`: the same arithmetic as
        `normalize(fit(x / 255))`, in place on one float copy (the training loader's path)."""
        x = x.to(device, non_blocking=True).float().div_(255.0)  # (N, C, H, W) in [0, 1]
        x = self.fit(x)  # a dataset stored at another size than the model's input (a pretrained network's)
        mean, std = self._stats(x.device)
        x = x.sub_(mean).div_(std)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def as_module(self) -> nn.Module:
        """The normalization as a layer, for a graph that takes [0, 1] images (export)."""
        return Normalize(self.mean, self.std)

    def _stats(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        return _stats_on(self.mean, self.std, device)

    def to_dict(self) -> dict[str, Any]:
        return {"input_shape": list(self.input_shape), "mean": list(self.mean), "std": list(self.std),
                "resize": self.resize, "channels_last": self.channels_last, "value_range": [0.0, 1.0],
                **({"resize_size": self.resize_size} if self.resize_size is not None else {})}


@functools.lru_cache(maxsize=16)  # made once per device: on a GPU each would be a copy from the host per batch
def _stats_on(mean: tuple[float, ...], std: tuple[float, ...],
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) as (1, C, 1, 1) tensors on `device`."""
    # Normal tensors even when first asked for under inference mode: a later call with gradients saves std.
    with torch.inference_mode(False):
        return (torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1),
                torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1))


class Normalize(nn.Module):
    """(x - mean) / std per channel, with mean and std as buffers (they travel with the module)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std  # (N, C, H, W)
