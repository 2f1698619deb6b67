"""How good is a trained model: accuracy, per-class accuracy, confusion matrix, predictions; and the one
way the inspection commands get their model (`trained_model`): a run folder, a `TrainedModel`, or a
famous network's name with its ImageNet weights (--pretrained) or a weights file (--weights FILE)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.data import BatchLoader, ImageData, Split, load_dataset
from cnnlab.errors import RunError, UsageError
from cnnlab.runs.folder import Run, open_run
from cnnlab.models.famous import FAMOUS, famous
from cnnlab.models.registry import list_models
from cnnlab.models.shapes import evaluating
from cnnlab.runs.trained import Prediction, TrainedModel, load, resolve_device

ModelLike = str | Path | Run | TrainedModel  # what predict, features, featuremaps, filters and cam take


def trained_model(model: ModelLike, device: str | torch.device = "auto", pretrained: bool = False,
                  weights: str | Path | None = None, image_size: int | None = None, trust_code: bool = False
                  ) -> TrainedModel:
    """The model an inspection command looks at: a TrainedModel as given; a run folder's best weights; or,
    with `pretrained` (or a `weights` file), famous network `model` with ImageNet's 1,000-class head,
    preprocessing at `image_size` (default 224) and class names, usable without training."""
    if isinstance(model, TrainedModel):
        if pretrained or weights is not None or image_size is not None:
            raise UsageError("a TrainedModel has its weights and preprocessing already; leave out pretrained, "
                             "weights and image_size")
        return model
    device = resolve_device(device) if isinstance(device, str) else device
    if pretrained and weights is not None:
        raise UsageError("give --pretrained or --weights FILE, not both")
    is_folder = isinstance(model, Run) or Path(model).is_dir()
    if not (pretrained or weights is not None):
        if image_size is not None:
            raise UsageError("--image-size is for a famous network named with --pretrained or --weights FILE; a "
                             "run folder keeps the input size it was trained at")
        if not is_folder and not Path(model).exists() and str(model) in list_models():
            # The user named a model where a run folder was expected: say which of the two they may mean.
            hint = ("add --pretrained for its ImageNet weights (or --weights FILE)" if famous(str(model))
                    else f"train it first: cnnlab train --model {model} --out DIR, then give DIR")
            raise UsageError(f"{model} is a model name, not a run folder: {hint}")
        return load(model, device, trust_code=trust_code)
    if is_folder:
        raise UsageError(f"{model} is a run folder, which has its own weights: leave out --pretrained / --weights, "
                         "or name a model (e.g. resnet18)")
    if famous(str(model)) is None:
        flag = "--pretrained" if pretrained else "--weights FILE"
        raise UsageError(f"{flag} works with a famous network's name ({', '.join(FAMOUS)}), not {str(model)!r}; "
                         "a network cnnlab trained is used through its run folder")
    if image_size is not None and not 32 <= image_size <= 1024:
        raise UsageError(f"--image-size {image_size}: give 32 to 1024 pixels (ImageNet's networks take 224)")
    return TrainedModel.pretrained(str(model), device, weights, image_size or 224)


@torch.no_grad()
def loss_and_accuracy(model: nn.Module, loader: BatchLoader) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of `model` over `loader` (eval mode)."""
    logits, labels = collect_logits(model, loader)
    if len(labels) == 0:
        return math.nan, math.nan
    return F.cross_entropy(logits, labels).item(), (logits.argmax(1) == labels).float().mean().item()


@torch.no_grad()
def collect_logits(model: nn.Module, loader: BatchLoader) -> tuple[torch.Tensor, torch.Tensor]:
    """All logits (N, classes) and labels (N,) of a loader, on the CPU."""
    outputs, labels = [], []
    with evaluating(model):
        for x, y in loader:
            outputs.append(model(x).float().cpu())  # (B, classes)
            labels.append(y.cpu())
    if not outputs:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.int64)
    return torch.cat(outputs), torch.cat(labels)


@dataclass
class Evaluation:
    """A model's results on one split; accuracies are fractions in [0, 1]."""

    split: str
    classes: list[str]
    count: int
    loss: float
    accuracy: float
    per_class_accuracy: list[float | None]  # None for a class with no images in the split
    confusion: list[list[int]]  # confusion[true][predicted]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_model(model: TrainedModel, split: Split, split_name: str = "test") -> Evaluation:
    """Evaluate a trained model on `split` (TTA included when its run uses it)."""
    return evaluation_of(*collect_logits(model.judged, model.loader(split)), model.classes, split_name)


def evaluation_of(logits: torch.Tensor, labels: torch.Tensor, classes: list[str], split_name: str = "test"
                  ) -> Evaluation:
    """The Evaluation of logits (N, classes) against labels (N,)."""
    k = len(classes)
    if len(labels) == 0:
        return Evaluation(split_name, classes, 0, math.nan, math.nan, [None] * k, [[0] * k for _ in range(k)])
    predicted = logits.argmax(1)
    confusion = torch.bincount(labels * k + predicted, minlength=k * k).view(k, k)  # (true, predicted)
    totals = confusion.sum(1)
    per_class = [(confusion[i, i] / totals[i]).item() if totals[i] else None for i in range(k)]
    return Evaluation(
        split=split_name,
        classes=list(classes),
        count=len(labels),
        loss=F.cross_entropy(logits, labels).item(),
        accuracy=(predicted == labels).float().mean().item(),
        per_class_accuracy=per_class,
        confusion=confusion.tolist(),
    )


def load_run_data(
    run: Run, data_dir: str | Path | None = None, download: bool = False, dataset: str | None = None
) -> ImageData:
    """The dataset a run was trained on, read again as the run read it (or `dataset` instead,
    e.g. the folder's new place), and checked to still fit the run's model."""
    data = run.config.data
    c, h, w = run.input_shape
    loaded = load_dataset(
        dataset or data.dataset,
        data_dir=data_dir if data_dir is not None else data.data_dir,
        download=download,
        image_size=(h, w),
        channels=c,
        skip_bad_images=data.skip_bad_images,
    )
    if loaded.classes != run.classes:
        raise RunError(
            f"{loaded.name} now has the classes {', '.join(loaded.classes)}, but the run was trained on "
            f"{', '.join(run.classes)}; restore the data as it was, or train a new run"
        )
    return loaded


def evaluate(
    run: str | Path | Run,
    split: str = "test",
    data_dir: str | Path | None = None,
    download: bool = False,
    device: str = "auto",
    dataset: str | None = None,
) -> Evaluation:
    """Evaluate a run's best weights on a split of its dataset ("test" unless told otherwise).

    dataset: another reference to read instead of the run's own (same classes), e.g. a moved folder.
    """
    run = run if isinstance(run, Run) else open_run(run)
    data = load_run_data(run, data_dir, download, dataset)
    return evaluate_model(TrainedModel.from_run(run, resolve_device(device)), data.split(split), split)


def predict(
    model: ModelLike,
    paths: list[str | Path],
    topk: int = 3,
    invert: bool = False,
    device: str = "auto",
    *,
    pretrained: bool = False,
    weights: str | Path | None = None,
    image_size: int | None = None,
    trust_code: bool = False,
) -> list[Prediction]:
    """Classify image files of any size and mode with a model's own preprocessing: a run folder's model, or a
    famous network with ImageNet's weights and class names (`predict("efficientnet-lite0", [photo],
    pretrained=True)`); see `trained_model`."""
    if topk < 1:
        raise UsageError(f"--top-k {topk}: show 1 or more classes per image")
    return trained_model(model, device, pretrained, weights, image_size, trust_code).predict(paths, top=topk,
                                                                                            invert=invert)
