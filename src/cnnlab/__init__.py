"""cnnlab: a workbench for convolutional neural networks, built on PyTorch.

    import cnnlab
    run = cnnlab.train("seed-cnn", "fashion-mnist", data_dir="data", epochs=5)
    print(cnnlab.evaluate(run).accuracy)
    print(cnnlab.summary("conv(64,3) maxpool(2) relu flatten linear(10)", "1x28x28"))
"""

__version__ = "0.1.0"

# The functions are bound after their modules: `cnnlab.train` is the function, not train.py.
from .compare import compare, demo  # noqa: E402
from .data import load_dataset  # noqa: E402
from .errors import (  # noqa: E402
    ArchitectureError, DataError, Error, ImageError, ModelError, RunError, TrainingError, UsageError,
)
from .evaluate import evaluate, predict  # noqa: E402
from .models import get_model, list_models, register_model  # noqa: E402
from .runs import open_run  # noqa: E402
from .spec import build  # noqa: E402
from .summary import summary  # noqa: E402
from .train import resume, train  # noqa: E402

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
    "get_model",
    "list_models",
    "load_dataset",
    "open_run",
    "predict",
    "register_model",
    "resume",
    "summary",
    "train",
]
