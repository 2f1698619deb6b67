"""A trained model you can hold: network + preprocessing + class names + test-time augmentation.

    model = cnnlab.load("runs/seed-cnn-fashion-mnist-...")
    model.predict(["shoe.png"], top=3)             # [Prediction("shoe.png", [("Sneaker", 0.91), ...])]
    model.logits(images)                           # images: float (N, C, H, W) in [0, 1]
    torch.onnx.export(model.as_module(), ...)      # a plain nn.Module with the preprocessing inside

Every command that runs a trained network (evaluate, predict, compare, the report, feature maps,
filters, CAM, export) goes through this object, so an image becomes a prediction the same way
everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cnnlab.data.dataset import Split
from cnnlab.data.loader import BatchLoader
from cnnlab.data.images import Blob
from cnnlab.data.preprocess import Preprocess
from cnnlab.errors import UsageError
from cnnlab.models.pretrained import pretrained_model
from cnnlab.models.shapes import evaluating
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
    """The network as validation, testing and prediction use it: with flip TTA when the run asks for it."""
    return FlipAverage(model).train(model.training) if tta else model  # a new module starts in training mode


class Classifier(nn.Module):
    """[0, 1] images (N, C, H, W) -> logits (N, classes): normalization, then the network (judged)."""

    def __init__(self, preprocess: Preprocess, net: nn.Module) -> None:
        super().__init__()
        self.normalize = preprocess.as_module()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(images))


@dataclass
class Prediction:
    path: str
    top: list[tuple[str, float]]  # (class, probability), most likely first


class TrainedModel:
    """A network with what it needs to classify an image: its preprocessing, class names and TTA."""

    def __init__(self, net: nn.Module, preprocess: Preprocess, classes: Sequence[str], tta: bool = False,
                 run: Run | None = None, device: str | torch.device = "cpu") -> None:
        self.net = net.eval()
        self.preprocess = preprocess
        self.classes = list(classes)
        self.tta = tta
        self.run = run  # the run folder it came from, if any
        self.device = torch.device(device)
        self.net.to(self.device)
        if preprocess.channels_last:
            self.net.to(memory_format=torch.channels_last)

    @classmethod
    def from_run(cls, run: Run, device: str | torch.device = "cpu", net: nn.Module | None = None) -> TrainedModel:
        """The run's best weights (or `net`, the run's network already built) with its preprocessing."""
        return cls(net if net is not None else run.build_model(), run.preprocess, run.classes, run.config.train.tta,
                   run, device)

    @classmethod
    def pretrained(cls, name: str, device: str | torch.device = "cpu", weights: str | Path | None = None,
                   size: int = 224) -> TrainedModel:
        """Famous network `name` with its ImageNet weights (or those of a `weights` file for its 1,000-class
        head), ImageNet's preprocessing at `size` and class names: usable without training."""
        net, preprocess, classes, _ = pretrained_model(name, size, weights)
        return cls(net, preprocess, classes, device=device)

    @property
    def judged(self) -> nn.Module:
        """The network on normalized inputs, with flip TTA when the run uses it."""
        return judged(self.net, self.tta)

    def as_module(self) -> nn.Module:
        """A plain nn.Module: float images in [0, 1] (N, C, H, W) -> logits (N, classes), with the
        normalization and the flip-averaging (when the run uses it) inside; what export writes."""
        return Classifier(self.preprocess, self.judged).eval()

    def loader(self, split: Split, batch_size: int = EVAL_BATCH) -> BatchLoader:
        """Batches of a split of uint8 images, preprocessed for this model on its device."""
        return BatchLoader(split, batch_size, self.preprocess, device=self.device)

    def inputs(self, images: torch.Tensor | Sequence[str | Path | Blob], invert: bool = False) -> torch.Tensor:
        """Image files, or float images in [0, 1] (N, C, H, W), as the network's input on its device."""
        if isinstance(images, torch.Tensor):
            if images.dim() != 4 or tuple(images.shape[1:]) != self.preprocess.input_shape:
                raise UsageError(f"images must be (N, {', '.join(map(str, self.preprocess.input_shape))}) in [0, 1], "
                                 f"got {tuple(images.shape)}")
            pixels = 1.0 - images if invert else images
        else:
            pixels = self.preprocess.load(list(images), invert)
        return self.preprocess.normalize(pixels.to(self.device))

    @torch.no_grad()
    def logits(self, images: torch.Tensor | Sequence[str | Path | Blob], invert: bool = False) -> torch.Tensor:
        """Logits (N, classes) on the CPU for image files or [0, 1] images, TTA included."""
        with evaluating(self.net):
            return self.judged(self.inputs(images, invert)).float().cpu()

    def predict(self, images: torch.Tensor | Sequence[str | Path | Blob], top: int = 3, invert: bool = False
                ) -> list[Prediction]:
        """The `top` most likely classes of each image, with probabilities."""
        if top < 1:
            raise UsageError(f"--top-k {top}: show 1 or more classes per image")
        probabilities = self.logits(images, invert).softmax(1)  # (N, classes)
        values, indices = probabilities.topk(min(top, len(self.classes)), dim=1)
        names = [str(p) for p in images] if not isinstance(images, torch.Tensor) else \
            [f"image {i}" for i in range(len(images))]
        return [Prediction(name, [(self.classes[i], v) for v, i in zip(vs.tolist(), ix.tolist())])
                for name, vs, ix in zip(names, values, indices)]


def load(run: str | Path | Run, device: str | torch.device = "auto", trust_code: bool = False,
         pretrained: bool = False, weights: str | Path | None = None) -> TrainedModel:
    """The trained model of a run folder: best weights, preprocessing, class names, TTA. With `pretrained`
    (or a `weights` file), `run` names a famous network instead: `cnnlab.load("resnet18", pretrained=True)`.

    device: "auto" (cuda when available, else cpu), "cpu", "cuda", ...; trust_code: see runs.open_run.
    """
    device = resolve_device(device) if isinstance(device, str) else device
    if pretrained or weights is not None:
        if isinstance(run, Run) or Path(run).is_dir():
            raise UsageError(f"{run} is a run folder, which has its own weights: leave out --pretrained / --weights, "
                             "or name a model (e.g. resnet18)")
        return TrainedModel.pretrained(str(run), device, weights)
    run = run if isinstance(run, Run) else open_run(run, trust_code=trust_code)
    return TrainedModel.from_run(run, device)
