"""A registry of named models, as torchvision's register_model / get_model / list_models.

A builder takes the input shape (C, H, W) and the number of classes and returns an
nn.Module, so one name works for MNIST, CIFAR-10 or a user's folder of images.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from cnnlab.teach.arithmetic import shape_text
from cnnlab.errors import ArchitectureError, ModelError
from cnnlab.models.shapes import output_shape

Builder = Callable[[tuple[int, int, int], int], nn.Module]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    builder: Builder
    description: str
    source: str  # where the architecture comes from, e.g. "lecture 001"
    input_shape: tuple[int, int, int] = (1, 28, 28)  # the inputs it was designed for (the default of `summary`)


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    name: str, description: str = "", source: str = "cnnlab", input_shape: tuple[int, int, int] = (1, 28, 28),
) -> Callable[[Builder], Builder]:
    """Decorator that registers a builder under `name`; a name can be registered only once."""

    def wrap(builder: Builder) -> Builder:
        if name in _REGISTRY:
            raise ModelError(f"a model named {name!r} is already registered ({_REGISTRY[name].builder.__qualname__})")
        _REGISTRY[name] = ModelInfo(name, builder, description or (builder.__doc__ or "").strip(), source, input_shape)
        return builder

    return wrap


def list_models() -> list[str]:
    """The registered model names, sorted."""
    return sorted(_REGISTRY)


def model_info(name: str) -> ModelInfo:
    """The registry entry for `name`; unknown names raise ModelError with the closest names."""
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        raise ModelError(f"unknown model {name!r}.{hint} Registered models: {', '.join(list_models())}")
    return _REGISTRY[name]


def get_model(name: str, input_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10) -> nn.Module:
    """Build the registered model `name` for inputs (C, H, W) and `num_classes` outputs."""
    info = model_info(name)
    if num_classes < 2:
        raise ModelError(f"a classifier needs at least 2 classes, got {num_classes}")
    try:
        model = info.builder(tuple(input_shape), num_classes)
        shape = output_shape(model, input_shape)
    except (ModelError, RuntimeError, ValueError, MemoryError) as exc:
        if isinstance(exc, MemoryError) or "can't allocate memory" in str(exc):  # torch says so in a RuntimeError
            raise ModelError(f"model {name!r} for {shape_text(input_shape)} inputs and {num_classes:,} classes needs "
                             "more memory than this machine has; use a smaller --input or --classes") from exc
        kind = ArchitectureError if isinstance(exc, ArchitectureError) else ModelError
        raise kind(f"model {name!r} cannot take {shape_text(input_shape)} inputs: {exc}") from exc
    if shape != (num_classes,):
        raise ModelError(f"model {name!r} gives outputs of shape {shape}, expected ({num_classes},)")
    return model
