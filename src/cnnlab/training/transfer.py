"""Transfer learning, lecture 003's way: keep a trained network's features, train a new head on top.

    features    --freeze backbone       the backbone (everything before the head, its last Linear layer) is
                                        frozen throughout: each image's features are computed once, cached in
                                        memory and on disk, and the head trains on them in seconds an epoch
    fine-tune   --unfreeze-after N      the head alone for N epochs (the backbone frozen, its batch norm in
                                        eval mode so that its statistics stay those it learnt), then all of
                                        it, the backbone at --backbone-lr times the rate (fastai's fine_tune)
    whole       (neither)               every parameter trains from the start, from the weights or from scratch

The trainer (trainer.py) asks this module which parameters train in an epoch and, for `features`,
trains the head on FeatureLoader batches instead of images; what it saves is the whole network.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.data import Split
from cnnlab.data.cache import cache_dir
from cnnlab.data.loader import mix_seed
from cnnlab.data.preprocess import Preprocess
from cnnlab.errors import UsageError
from cnnlab.models.famous import famous
from cnnlab.models.pretrained import apply_weights, weights_for
from cnnlab.models.shapes import evaluating
from cnnlab.settings import Settings

FEATURE_BATCH = 64  # images per batch through a frozen backbone (see docs/benchmarks.md, feature extraction)
_MEMORY: dict[str, torch.Tensor] = {}  # this process's features by cache key: compare and benchmarks reuse them
_MEMORY_LIMIT = 2**31  # bytes of features kept in memory


def imagenet_input(model: str, s: Settings) -> bool:
    """Whether the run trains a famous network from ImageNet weights (its own or a file's), so that it reads
    images as ImageNet's were read (models/pretrained.py's preprocessing), not with the data's statistics."""
    return famous(model) is not None and (s.pretrained or s.weights is not None)


def start_weights(net: nn.Module, model: str, s: Settings) -> list[str]:
    """Lay the weights the settings ask for (--pretrained, --weights FILE) onto a freshly built network;
    notes on what was done (empty: it starts from its random initialization)."""
    weights = weights_for(model, s.pretrained, s.weights)
    return apply_weights(net, weights, model) if weights is not None else []


def check_run(s: Settings, processes: int) -> None:
    """Refuse what transfer learning cannot do: torchrun's processes (DDP fixes the trainable parameters
    when it wraps the model, and freezing changes them)."""
    if s.transfer != "whole" and processes > 1:
        raise UsageError(f"--freeze and --unfreeze-after train on one process; start it without torchrun "
                         f"(it has {processes})")


@contextlib.contextmanager
def headless(net: nn.Module, head: str) -> Iterator[nn.Module]:
    """The network with its head replaced by the identity: it outputs the features the head reads."""
    parent_name, _, attr = head.rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    original = getattr(parent, attr)
    setattr(parent, attr, nn.Identity())
    try:
        yield net
    finally:
        setattr(parent, attr, original)


def set_frozen(net: nn.Module, head: str, frozen: bool) -> None:
    """Freeze (or unfreeze) every parameter outside the head. Call after net.train(): a frozen backbone's
    batch norm layers go to eval mode, so they normalize with the statistics they learnt and do not
    drift towards the new data's while nothing else in the backbone may change."""
    for name, p in net.named_parameters():
        if not name.startswith(head + "."):
            p.requires_grad_(not frozen)
    if frozen:
        for name, module in net.named_modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and not name.startswith(head):
                module.eval()


def frozen_in(s: Settings, epoch: int) -> bool:
    """Whether the backbone is frozen in `epoch` (from 0)."""
    return s.transfer == "features" or (s.transfer == "fine-tune" and epoch < s.unfreeze_after)


def describe(s: Settings, head: str | None, notes: list[str]) -> dict[str, Any]:
    """The run's "transfer" section of config.json: mode, weights, head and each group's learning rate."""
    backbone = {"features": 0.0, "fine-tune": s.lr * s.backbone_lr, "whole": s.lr}[s.transfer]
    groups = {"head": s.lr, "backbone": backbone}
    frozen = {"features": s.epochs, "fine-tune": s.unfreeze_after, "whole": 0}[s.transfer]
    return {"mode": s.transfer, "head": head, "weights": notes, "lr": groups, "frozen_epochs": frozen}


# ------------------------------------------------------------------------------------------- features

class FeatureLoader:
    """Batches (features, labels) of a cached split, in BatchLoader's order for the same seed and epoch."""

    def __init__(self, features: torch.Tensor, split: Split, batch_size: int, shuffle: bool = False, seed: int = 0,
                 device: torch.device | str = "cpu") -> None:
        self.features, self.split, self.batch_size = features, split, batch_size  # features (N, D)
        self.shuffle, self.seed, self.device = shuffle, seed, torch.device(device)
        self.epoch, self.start_step = 0, 0

    def __len__(self) -> int:
        return -(-len(self.split) // self.batch_size)

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.split)
        order = (torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(self.seed, self.epoch)))
                 if self.shuffle else torch.arange(n))
        for step in range(self.start_step, len(self)):
            batch = order[step * self.batch_size : (step + 1) * self.batch_size]
            yield self.features[batch].to(self.device), self.split.y[batch].to(self.device)  # (B, D), (B,)


def extract(net: nn.Module, head: str, split: Split, preprocess: Preprocess, device: torch.device,
            bf16: bool = False) -> torch.Tensor:
    """The features (N, D) the head reads, for every image of `split`, on the CPU in float32: the network
    without its head, in eval mode, without autograd; in bf16 where the run trains in bf16."""
    out = []
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    with headless(net, head), evaluating(net), torch.inference_mode(), autocast:
        for start in range(0, len(split), FEATURE_BATCH):
            x = preprocess.from_uint8(split.x[start : start + FEATURE_BATCH], device)  # (B, C, H, W)
            out.append(net(x).float().flatten(1).cpu())  # (B, D)
    return torch.cat(out) if out else torch.zeros(0, 0)


def _key(backbone_digest: str, preprocess: Preprocess, bf16: bool, split: Split) -> str:
    """A cache key of everything the features depend on: the backbone's weights, the preprocessing, the
    precision and the images themselves (so a changed file or another subset is another key)."""
    h = hashlib.sha256(backbone_digest.encode())
    h.update(json.dumps({**preprocess.to_dict(), "channels_last": None, "bf16": bf16}, sort_keys=True).encode())
    h.update(str(tuple(split.x.shape)).encode())
    h.update(split.x.contiguous().numpy().tobytes())
    return h.hexdigest()[:32]


def backbone_digest(net: nn.Module, head: str) -> str:
    """A digest of the network's state outside the head (its weights and batch norm statistics)."""
    h = hashlib.sha256()
    for name, tensor in net.state_dict().items():
        if not name.startswith(head + ".") and tensor.numel():
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cached_features(net: nn.Module, head: str, preprocess: Preprocess, splits: dict[str, Split],
                    device: torch.device, bf16: bool, say: Callable[[str], None] = print) -> dict[str, torch.Tensor]:
    """Each split's features, from this process's memory, the disk cache, or computed (and then kept in both)."""
    from safetensors.torch import load_file, save_file

    digest = backbone_digest(net, head)
    folder = cache_dir() / "features"
    result = {}
    for name, split in splits.items():
        key = _key(digest, preprocess, bf16, split)
        path = folder / f"{key}.safetensors"
        if key in _MEMORY:
            result[name] = _MEMORY[key]
            say(f"features of the {len(split):,} {name} images: in memory, computed earlier in this process")
            continue
        if path.exists():
            try:
                result[name] = load_file(str(path))["features"]
                say(f"features of the {len(split):,} {name} images: from the cache {path}")
            except Exception:  # noqa: BLE001  (a damaged cache file is computed again and replaced)
                pass
        if name not in result:
            started = time.perf_counter()
            result[name] = extract(net, head, split, preprocess, device, bf16)
            seconds = time.perf_counter() - started
            say(f"features of the {len(split):,} {name} images: {seconds:.1f} s ({len(split) / max(seconds, 1e-9):,.0f} "
                f"images/s), {tuple(result[name].shape[1:])} each; cached in {folder}")
            _save(result[name], path, save_file)
        _remember(key, result[name])
    return result


def _save(features: torch.Tensor, path: Path, save_file: Callable[..., None]) -> None:
    """Write atomically: a cache file is whole or absent. A cache that cannot be written is only slower."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.partial")
        save_file({"features": features.contiguous()}, str(partial))
        os.replace(partial, path)
    except OSError:
        pass


def _remember(key: str, features: torch.Tensor) -> None:
    _MEMORY[key] = features
    while sum(t.numel() * t.element_size() for t in _MEMORY.values()) > _MEMORY_LIMIT and len(_MEMORY) > 1:
        _MEMORY.pop(next(iter(_MEMORY)))  # the oldest first
