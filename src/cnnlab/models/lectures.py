"""The lectures' networks, layer for layer.

For the lectures' own inputs they are exactly the lectures' models (same layers, same
parameter counts: seed-mlp 795,010 and seed-cnn 716,706 on 1x28x28 with 10 classes). For
other inputs the first linear layer takes whatever the convolutions produce, and the last
layer has one output per class.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import nn

from cnnlab.models.registry import register_model
from cnnlab.models.shapes import output_shape


def flat_features(features: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """How many numbers `features` produces per image: the in_features of the next linear layer."""
    return math.prod(output_shape(features, input_shape))


@register_model("seed-mlp", "lecture 001's MLP: flatten, 1000 hidden units, ReLU", source="lecture 001")
def seed_mlp(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    c, h, w = input_shape
    return nn.Sequential(
        nn.Flatten(),  # (N, C*H*W): the lecture flattens in its Dataset instead
        nn.Linear(c * h * w, 1000),
        nn.ReLU(),
        nn.Linear(1000, num_classes),
    )


@register_model("seed-cnn", "lecture 001's CNN: conv 64 and 128 (3x3), max-pool, 200 hidden", source="lecture 001")
def seed_cnn(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    features = nn.Sequential(
        nn.Conv2d(input_shape[0], 64, kernel_size=3),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Conv2d(64, 128, kernel_size=3),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Flatten(),
    )
    return nn.Sequential(
        *features,
        nn.Linear(flat_features(features, input_shape), 200),  # 3200 = 128 x 5 x 5 for 1x28x28
        nn.ReLU(),
        nn.Linear(200, num_classes),
    )


class LargeNet(nn.Module):
    """Lecture 003's CIFAR-10 network (its assignment 2), with one output per class.

    The lecture's version ends in a single output for a yes/no task (fc2 = Linear(32, 1),
    9,705 parameters); with 10 classes fc2 has 10 outputs and the network 10,002.
    """

    def __init__(self, input_shape: tuple[int, int, int] = (3, 32, 32), num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(input_shape[0], 5, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(5, 10, 5)
        features = nn.Sequential(self.conv1, self.pool, self.conv2, self.pool)
        self.fc1 = nn.Linear(flat_features(features, input_shape), 32)  # 10 * 5 * 5 = 250 for 3x32x32
        self.fc2 = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))  # (N, 5, 14, 14) for 3x32x32
        x = self.pool(F.relu(self.conv2(x)))  # (N, 10, 5, 5)
        x = x.flatten(1)  # (N, 250); the lecture's x.view(-1, 250) hides a wrong shape as a wrong batch size
        x = F.relu(self.fc1(x))
        return self.fc2(x)


@register_model("largenet", "lecture 003's LargeNet: conv 5 and 10 (5x5), max-pool, 32 hidden", source="lecture 003",
                input_shape=(3, 32, 32))
def largenet(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    return LargeNet(input_shape, num_classes)
