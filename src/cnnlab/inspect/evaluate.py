"""How good is a trained model: accuracy, per-class accuracy, confusion matrix, predictions."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.data import images
from cnnlab.data import BatchLoader, ImageData, Split, load_dataset
from cnnlab.errors import RunError, UsageError
from cnnlab.runs.folder import Run, open_run

# Images per evaluation batch: on a CPU, 128 ran fastest for seed-cnn and fast-cnn-28 (larger batches
# fall out of the cache: 500 was 25-35% slower).
EVAL_BATCH = 128


def resolve_device(device: str = "auto") -> torch.device:
    """"auto" -> cuda when available, else cpu; otherwise the named device, if it is there."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    available = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise UsageError(f"unknown device {device!r}; use auto, cpu or cuda") from exc
    if not available.get(resolved.type, False):
        raise UsageError(f"--device {device} was asked for but PyTorch cannot use it here; use --device cpu")
    return resolved


class FlipAverage(nn.Module):
    """Test-time augmentation: the mean of the model's probabilities for an image and its mirror
    image, returned as log-probabilities, so that cross-entropy, argmax and softmax work unchanged."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        both = torch.stack([self.model(x).float().log_softmax(1), self.model(x.flip(-1)).float().log_softmax(1)])
        return both.logsumexp(0) - math.log(2)  # (N, classes): log of the mean of the two probabilities


def judged(model: nn.Module, tta: bool) -> nn.Module:
    """The model as validation, testing and prediction use it: with flip TTA when the run asks for it."""
    return FlipAverage(model).train(model.training) if tta else model  # a new module starts in training mode


def run_model(run: Run, device: torch.device, model: nn.Module | None = None) -> nn.Module:
    """A run's best weights on `device`, laid out and judged as the run was trained (channels_last, TTA).

    model: the run's network already built (`run.build_model()`), to be moved and laid out in place.
    """
    model = (model if model is not None else run.build_model()).to(device)
    if run.config["train"].get("channels_last", False):
        model.to(memory_format=torch.channels_last)
    return judged(model, run.config["train"].get("tta", False))


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
    was_training = model.training
    model.eval()
    outputs, labels = [], []
    for x, y in loader:
        outputs.append(model(x).float().cpu())  # (B, classes)
        labels.append(y.cpu())
    model.train(was_training)
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


def evaluate_model(
    model: nn.Module,
    split: Split,
    classes: list[str],
    mean: list[float],
    std: list[float],
    split_name: str = "test",
    device: str | torch.device = "cpu",
    channels_last: bool = False,
) -> Evaluation:
    """Evaluate `model` on `split` normalized with (mean, std); `channels_last` batches for such a model."""
    loader = BatchLoader(split, EVAL_BATCH, mean, std, device=device, channels_last=channels_last)
    return evaluation_of(*collect_logits(model, loader), classes, split_name)


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
    data = run.config["data"]
    c, h, w = run.input_shape
    loaded = load_dataset(
        dataset or data["dataset"],
        data_dir=data_dir if data_dir is not None else data.get("data_dir"),
        download=download,
        image_size=(h, w),
        channels=c,
        skip_bad_images=data.get("skip_bad_images", False),
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
    target = resolve_device(device)
    channels_last = run.config["train"].get("channels_last", False)
    return evaluate_model(run_model(run, target), data.split(split), run.classes, run.mean, run.std, split, target,
                          channels_last)


@dataclass
class Prediction:
    path: str
    top: list[tuple[str, float]]  # (class, probability), most likely first


def prepare_images(run: Run, paths: list[str | Path], invert: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Image files converted as in training: (images in [0, 1], the same normalized), each (N, C, H, W).

    Alpha dropped, grayscale when the model takes one channel, resized to the model's input size,
    scaled to [0, 1] and normalized. `invert` turns dark-on-light images into the light-on-dark
    look of (Fashion-)MNIST.
    """
    if not paths:
        raise UsageError("give at least one image file")
    c, h, w = run.input_shape
    batch = torch.stack([images.load(p, channels=c, size=(h, w)) for p in paths])  # (N, C, H, W)
    if invert:
        batch = 1.0 - batch
    mean = torch.tensor(run.mean).view(1, -1, 1, 1)
    std = torch.tensor(run.std).view(1, -1, 1, 1)
    return batch, (batch - mean) / std


@torch.no_grad()
def predict(
    run: str | Path | Run,
    paths: list[str | Path],
    topk: int = 3,
    invert: bool = False,
    device: str = "auto",
) -> list[Prediction]:
    """Classify image files of any size and mode with a run's model (converted by `prepare_images`)."""
    if topk < 1:
        raise UsageError(f"--top-k {topk}: show 1 or more classes per image")
    run = run if isinstance(run, Run) else open_run(run)
    target = resolve_device(device)
    model = run_model(run, target)
    _, x = prepare_images(run, paths, invert)
    probabilities = model(x.to(target)).float().softmax(1).cpu()  # (N, classes)
    k = min(topk, len(run.classes))
    values, indices = probabilities.topk(k, dim=1)
    return [
        Prediction(str(p), [(run.classes[i], v) for v, i in zip(vs.tolist(), ix.tolist())])
        for p, vs, ix in zip(paths, values, indices)
    ]
