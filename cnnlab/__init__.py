"""cnnlab: a workbench for convolutional neural networks, built on PyTorch.

    import cnnlab
    run = cnnlab.train("seed-cnn", "fashion-mnist", data_dir="data", epochs=5)
    print(cnnlab.evaluate(run).accuracy)
"""

__version__ = "0.1.0"

# The functions are bound after their modules: `cnnlab.train` is the function, not train.py.
from .compare import compare, demo  # noqa: E402
from .data import load_dataset  # noqa: E402
from .errors import DataError, Error, ImageError, ModelError, RunError, TrainingError, UsageError  # noqa: E402
from .evaluate import evaluate, predict  # noqa: E402
from .models import get_model, list_models, register_model  # noqa: E402
from .runs import open_run  # noqa: E402
from .train import resume, train  # noqa: E402

__all__ = [
    "DataError",
    "Error",
    "ImageError",
    "ModelError",
    "RunError",
    "TrainingError",
    "UsageError",
    "__version__",
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
    "train",
]
