"""cnnlab: a workbench for convolutional neural networks, built on PyTorch.

    import cnnlab
    run = cnnlab.train("seed-cnn", "fashion-mnist", data_dir="data", epochs=5)
    print(cnnlab.evaluate(run).accuracy)
    print(cnnlab.summary("conv(64,3) maxpool(2) relu flatten linear(10)", "1x28x28"))
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from cnnlab.errors import (
    ArchitectureError, DataError, Error, ImageError, ModelError, RunError, TrainingError, UsageError,
)

from cnnlab.version import __version__

# The functions are imported on first use (PEP 562), so that `import cnnlab` and `cnnlab --help`
# do not pay for torch: public name -> the submodule that defines it.
_LAZY = {
    "build": "models.spec",
    "compare": "training.compare",
    "demo": "training.compare",
    "evaluate": "inspect.evaluate",
    "export": "export",
    "get_model": "models",
    "list_models": "models",
    "load": "runs.trained",
    "load_dataset": "data",
    "open_run": "runs.folder",
    "predict": "inspect.evaluate",
    "register_model": "models",
    "resume": "training.loop",
    "summary": "inspect.summary",
    "train": "training.loop",
}

if TYPE_CHECKING:
    from cnnlab.training.compare import compare, demo
    from cnnlab.data import load_dataset
    from cnnlab.inspect.evaluate import evaluate, predict
    from cnnlab.export import export
    from cnnlab.models import get_model, list_models, register_model
    from cnnlab.runs.trained import load
    from cnnlab.runs.folder import open_run
    from cnnlab.models.spec import build
    from cnnlab.inspect.summary import summary
    from cnnlab.training.loop import resume, train

__all__ = [
    "ArchitectureError",
    "DataError",
    "Error",
    "ImageError",
    "ModelError",
    "RunError",
    "TrainingError",
    "UsageError",
    "__version__",
    "build",
    "compare",
    "demo",
    "evaluate",
    "export",
    "get_model",
    "list_models",
    "load",
    "load_dataset",
    "open_run",
    "predict",
    "register_model",
    "resume",
    "summary",
    "train",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value  # later lookups find it without calling __getattr__
    return value


def __dir__() -> list[str]:
    # The public names, bound or not yet, and the submodules imported so far; not this file's helpers.
    return sorted({*__all__, *(n for n, v in globals().items() if isinstance(v, types.ModuleType) and n not in
                                ("importlib", "sys", "types"))})


class _Package(types.ModuleType):
    """Keeps `cnnlab.train` (and compare, evaluate, summary) the function when its submodule is imported.

    Importing a submodule sets it as an attribute of the package; for these names that would put
    the module where the function belongs, so the function is bound instead. The module stays in
    sys.modules: importlib.import_module("cnnlab.train") and `from cnnlab.train import ...` reach it.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _LAZY.get(name) == name and value.__name__ == f"{__name__}.{name}":
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
