"""cnnlab's recommended small CNNs: the lecture's recipe book with batch normalization added.

Blocks of 3x3 convolutions, each followed by batch normalization and ReLU, and a 2x2
max-pool that halves the size while the channels double (lecture 003's pattern). A global
average pool ends the features, so the classifier has few weights and the network accepts
any input of at least 8x8. Batch normalization lets them train at higher learning rates
than the lectures' networks, with fewer parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from cnnlab.models.registry import register_model


def conv_bn(in_channels: int, out_channels: int) -> list[nn.Module]:
    """3x3 convolution keeping the size, batch norm, ReLU (no conv bias: BN has its own shift)."""
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


def small_cnn(in_channels: int, num_classes: int, widths: Sequence[int], convs_per_block: int) -> nn.Sequential:
    """One block per width: `convs_per_block` conv-BN-ReLU, then a 2x2 max-pool."""
    layers: list[nn.Module] = []
    channels = in_channels
    for width in widths:
        for _ in range(convs_per_block):
            layers += conv_bn(channels, width)
            channels = width
        layers.append(nn.MaxPool2d(2))
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)]
    return nn.Sequential(*layers)


@register_model("small-cnn-28", "3 conv-BN-ReLU-pool blocks (32-64-128), global average pool; for 28x28")
def small_cnn_28(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    return small_cnn(input_shape[0], num_classes, widths=(32, 64, 128), convs_per_block=1)


@register_model("small-cnn-32", "3 blocks of two conv-BN-ReLU and a pool (32-64-128); for 32x32 colour",
                input_shape=(3, 32, 32))
def small_cnn_32(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    return small_cnn(input_shape[0], num_classes, widths=(32, 64, 128), convs_per_block=2)


def fast_cnn(in_channels: int, num_classes: int, widths: Sequence[int], convs_per_block: int = 1) -> nn.Sequential:
    """Per width: 3x3 convolution, 2x2 max-pool, batch norm, ReLU, then `convs_per_block - 1` more
    conv-BN-ReLU at the pooled size. Pooling first (as airbench does) gives batch norm and ReLU a
    quarter of the pixels, and on a CPU those memory-bound ops, not the convolutions, take most of a step."""
    layers: list[nn.Module] = []
    channels = in_channels
    for width in widths:
        layers += [
            nn.Conv2d(channels, width, kernel_size=3, padding=1, bias=False),
            nn.MaxPool2d(2),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
        for _ in range(convs_per_block - 1):
            layers += conv_bn(width, width)
        channels = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)]
    return nn.Sequential(*layers)


@register_model("fast-cnn-28", "3 conv-pool-BN-ReLU blocks (16-32-64): `--recipe fast`'s network for 28x28")
def fast_cnn_28(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    return fast_cnn(input_shape[0], num_classes, widths=(16, 32, 64))


@register_model("fast-cnn-28-wide", "3 blocks (32-64-128) of conv-pool-BN-ReLU and conv-BN-ReLU: `--recipe "
                "fast-long`'s for 28x28")
def fast_cnn_28_wide(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    return fast_cnn(input_shape[0], num_classes, widths=(32, 64, 128), convs_per_block=2)
