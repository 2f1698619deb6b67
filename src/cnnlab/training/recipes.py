"""Recipes: named sets of training settings (and a model) chosen per dataset.

`lecture` is lecture 001's recipe, unchanged: seed-cnn, Adam at 1e-3, batch 32, 5 epochs.
`fast` is the quickest honest way to a good CNN on a CPU: a small batch-normalized CNN, SGD
with Nesterov momentum on a one-cycle schedule, label smoothing, weight decay, bf16 autocast
where the hardware runs bf16 natively (precision "auto", machine.py; fp32 elsewhere), and flips where they make sense (clothes, photos; not digits), in training and at test time.
`fast-long` trains the same way for longer, with a wider network and random crops, for the
best accuracy in a few minutes.

The Fashion-MNIST, MNIST and CIFAR-10 settings were chosen by measuring time to accuracy on 2 CPU
cores (benchmarks/time_to_accuracy.py, docs/benchmarks.md): strided-cnn-28 for 28x28 images, and
airbench's network scaled down (fast-cnn-32) for CIFAR-10. Any other dataset (small-cnn-28, flips)
gets settings that work, not tuned by measurement.
Flags given override a recipe's values.
"""

from __future__ import annotations

from typing import Any

from cnnlab.errors import UsageError
from cnnlab.settings import Settings

_FAST = {
    "optimizer": "sgd", "momentum": 0.9, "nesterov": True, "schedule": "onecycle", "warmup": 0.2,
    "label_smoothing": 0.1, "weight_decay": 5e-4, "precision": "auto",
}

# recipe -> dataset -> (model, settings); "*" is any other dataset (a folder, the patterns).
RECIPES: dict[str, dict[str, tuple[str, dict[str, Any]]]] = {
    "lecture": {"*": ("seed-cnn", {})},
    "fast": {
        "fashion-mnist": ("strided-cnn-28", {**_FAST, "epochs": 2, "batch_size": 128, "lr": 0.15, "augment": "flip",
                                             "tta": True}),
        "mnist": ("strided-cnn-28", {**_FAST, "epochs": 2, "batch_size": 128, "lr": 0.15}),
        "cifar10": ("fast-cnn-32", {**_FAST, "epochs": 12, "batch_size": 256, "lr": 0.2, "label_smoothing": 0.2,
                                    "augment": "crop+flip", "tta": True}),
        "*": ("small-cnn-28", {**_FAST, "epochs": 10, "batch_size": 128, "lr": 0.2, "augment": "flip"}),
    },
    "fast-long": {
        "fashion-mnist": ("fast-cnn-28-wide", {**_FAST, "epochs": 12, "batch_size": 256, "lr": 0.2,
                                               "augment": "crop+flip", "tta": True}),
        "mnist": ("fast-cnn-28-wide", {**_FAST, "epochs": 5, "batch_size": 256, "lr": 0.2, "augment": "crop"}),
        "cifar10": ("fast-cnn-32-wide", {**_FAST, "epochs": 25, "batch_size": 256, "lr": 0.2, "label_smoothing": 0.2,
                                         "augment": "crop+flip", "tta": True}),
        "*": ("small-cnn-28", {**_FAST, "epochs": 30, "batch_size": 128, "lr": 0.2, "augment": "flip"}),
    },
}
# The shipped sample is Fashion-MNIST.
ALIASES = {"sample": "fashion-mnist"}


def recipe(name: str, dataset: str) -> tuple[str, dict[str, Any]]:
    """(model, settings) of recipe `name` for the dataset reference `dataset`."""
    if name not in RECIPES:
        raise UsageError(f"unknown recipe {name!r}; use one of {', '.join(RECIPES)}")
    table = RECIPES[name]
    model, settings = table.get(ALIASES.get(dataset, dataset), table["*"])
    return model, {**settings, "recipe": name}


def settings_for(name: str, dataset: str, overrides: dict[str, Any]) -> tuple[str, Settings]:
    """(model, checked Settings): recipe `name` for `dataset`, with `overrides` (flags given) on top."""
    model, values = recipe(name, dataset)
    if "nesterov" not in overrides and ({"optimizer", "momentum"} & overrides.keys()):
        # Nesterov belongs to the recipe's SGD; another optimizer or momentum given alone should just work.
        values["nesterov"] = False
    s = Settings(**{**values, **overrides})
    s.check()
    return model, s
