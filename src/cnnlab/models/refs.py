"""Model references: a registered name, a spec (text or a .json/.toml file), or `package.module:attr`.

Every command that takes `--model` goes through `load_model`, so a spec or a user's own module
trains, evaluates and summarizes like a registered model.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import warnings
from typing import Any

from torch import nn

from cnnlab.teach.arithmetic import shape_text
from cnnlab.errors import ArchitectureWarning, ModelError, UsageError
from cnnlab.models.shapes import output_shape
from cnnlab.models.spec import build, is_spec, spec_text
from cnnlab.models.registry import _REGISTRY, get_model, model_info


def kind_of(ref: str) -> str:
    """'registered', 'spec' or 'module' for a model reference."""
    if ref in _REGISTRY:
        return "registered"
    if is_spec(ref):
        return "spec"
    if ":" in ref:
        return "module"
    model_info(ref)  # raises "unknown model" with the closest names
    return "registered"


def stored_ref(ref: str) -> str:
    """The reference as a run folder keeps it: a spec file is read into its text, so runs stand alone."""
    return spec_text(ref) if kind_of(ref) == "spec" else ref


def short_name(ref: str) -> str:
    """A name for folders and titles: the registered name, 'spec', or the attribute's name."""
    kind = kind_of(ref)
    return {"registered": ref, "spec": "spec"}.get(kind) or ref.rsplit(":", 1)[-1].split(".")[-1]


def import_model(ref: str, num_classes: int | None = None) -> nn.Module:
    """`package.module:attr`: a module instance, an nn.Module class, or a function returning one.

    Classes and functions are called without arguments, or with `num_classes` when they take it
    (torchvision's builders do: `torchvision.models:resnet18`).
    """
    module_name, _, attr = ref.partition(":")
    if os.getcwd() not in sys.path:  # as `python -m` does, so a user's model.py beside them imports
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(f"cannot import {module_name!r} for --model {ref}: {exc}. Is it on PYTHONPATH?") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ModelError(f"{module_name} has no attribute {attr!r} (from --model {ref})")
        obj = getattr(obj, part)
    if isinstance(obj, nn.Module):
        return obj
    if not callable(obj):
        raise ModelError(f"{ref} is a {type(obj).__name__}; give an nn.Module, its class, or a function returning one")
    try:
        params = inspect.signature(obj).parameters
        # torchvision's builders take num_classes through **kwargs
        takes = "num_classes" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    except (TypeError, ValueError):
        takes = False
    try:
        made = obj(num_classes=num_classes) if takes and num_classes is not None else obj()
    except TypeError as exc:
        raise ModelError(f"cannot call {ref}() without arguments: {exc}") from exc
    if not isinstance(made, nn.Module):
        raise ModelError(f"{ref}() returned a {type(made).__name__}, not an nn.Module")
    return made


def is_torchvision_builder(ref: str) -> bool:
    """`torchvision.models:NAME` for one of torchvision's registered model builders."""
    module_name, _, attr = ref.partition(":")
    if module_name != "torchvision.models":
        return False
    import torchvision.models

    return attr in torchvision.models.list_models()


def load_model(
    ref: str | nn.Module, input_shape: tuple[int, ...], num_classes: int | None = None, *,
    trust_code: bool = True, source: str | os.PathLike | None = None,
) -> nn.Module:
    """The model a reference names, for inputs of `input_shape`.

    With `num_classes`, the model must give (1, num_classes) outputs for one input, as a classifier
    for that dataset; registered models are built for it.

    trust_code: False when the reference comes from a file someone else may have written (`source`,
    a run folder's config.json): then a `package.module:attr` reference, which imports and runs
    Python code, is refused, unless it is one of torchvision's own model builders.
    """
    if isinstance(ref, nn.Module):
        model = ref
    else:
        kind = kind_of(ref)
        if kind == "registered":
            if len(input_shape) != 3:
                raise UsageError(f"{ref} takes CxHxW inputs, not {shape_text(input_shape)}")
            return get_model(ref, input_shape, 10 if num_classes is None else num_classes)  # type: ignore[arg-type]
        if kind == "spec":
            with warnings.catch_warnings():  # the summary lists them, with the layer names
                warnings.simplefilter("ignore", ArchitectureWarning)
                model = build(ref, input_shape)
        else:
            if not (trust_code or is_torchvision_builder(ref)):
                raise ModelError(
                    f"{source or 'this reference'} names Python code as its model, {ref!r}, which would be imported "
                    "and run. A run folder is data, and cnnlab runs code that one names only when told to: add "
                    "--trust-code (from Python: open_run(path, trust_code=True)) if you made this folder or trust "
                    "whoever did, since that code can do anything your user can"
                )
            model = import_model(ref, num_classes)
    if num_classes is not None:
        out = output_shape(model, input_shape)  # names the layer if the model cannot take the input
        if out != (num_classes,):
            shape = shape_text(out or ())
            raise ModelError(f"the model gives {shape} outputs per image but the data has {num_classes} classes; "
                             f"end it with a linear layer of {num_classes} outputs (in a spec: linear({num_classes}))")
    return model


__all__ = ["import_model", "is_torchvision_builder", "kind_of", "load_model", "short_name", "stored_ref"]
