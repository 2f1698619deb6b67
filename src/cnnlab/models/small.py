"""cnnlab's recommended small CNNs: the lecture's recipe book with batch normalization added.

Blocks of 3x3 convolutions, each followed by batch normalization and ReLU, and a 2x2
max-pool that halves the size while the channels double (lecture 003's pattern). A global
average (or max) pool ends the features of most, so the classifier has few weights and the
network accepts any input of at least 8x8; `strided-cnn-28`, the fast recipe's network for
28x28, reads its whole last map instead. Batch normalization lets them train at higher learning
rates than the lectures' networks, with fewer parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from cnnlab.errors import ModelError
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


def fast_cnn(in_channels: int, num_classes: int, widths: Sequence[int], convs_per_block: int = 1,
             stem: int | None = None, head_pool: str = "avg") -> nn.Sequential:
    """Per width: 3x3 convolution, 2x2 max-pool, batch norm, ReLU, then `convs_per_block - 1` more
    conv-BN-ReLU at the pooled size. Pooling first (as airbench does) gives batch norm and ReLU a
    quarter of the pixels, and on a CPU those memory-bound ops, not the convolutions, take most of a step.
    `stem`: a conv-BN-ReLU of that width at full size first (airbench's first layer, there a fixed
    whitening filter); `head_pool`: "avg" or "max" over the last map (airbench takes the max)."""
    if head_pool not in ("avg", "max"):
        raise ModelError(f"head_pool must be 'avg' or 'max', got {head_pool!r}")
    layers: list[nn.Module] = []
    channels = in_channels
    if stem is not None:
        layers += conv_bn(channels, stem)
        channels = stem
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
    pool = nn.AdaptiveMaxPool2d(1) if head_pool == "max" else nn.AdaptiveAvgPool2d(1)
    layers += [pool, nn.Flatten(), nn.Linear(channels, num_classes)]
    return nn.Sequential(*layers)


@register_model("fast-cnn-28", "3 conv-pool-BN-ReLU blocks (16-32-64), global average pool; for 28x28")
def fast_cnn_28(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    return fast_cnn(input_shape[0], num_classes, widths=(16, 32, 64))


@register_model("fast-cnn-28-wide", "3 blocks (32-64-128) of conv-pool-BN-ReLU and conv-BN-ReLU: `--recipe "
                "fast-long`'s for 28x28")
def fast_cnn_28_wide(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    return fast_cnn(input_shape[0], num_classes, widths=(32, 64, 128), convs_per_block=2)


def strided_cnn(input_shape: tuple[int, int, int], num_classes: int,
                widths: Sequence[int] = (16, 32, 96)) -> nn.Sequential:
    """A 3x3 convolution with stride 2 (no full-size feature map to pool), a conv-pool-BN-ReLU block,
    a 3x3 convolution with stride 2, and a linear layer over the whole last map, not its average.

    The first layer of a pooled network writes, pools and back-propagates a full-size map: on a CPU that
    memory traffic, not arithmetic, took 40% of fast-cnn-28's step. A stride-2 convolution still sees
    every pixel (its 3x3 windows overlap). Flattening the last map keeps where things are, which the
    global average throws away; it gained 0.3-0.4% on Fashion-MNIST after 2 epochs (docs/benchmarks.md)."""
    first, middle, last = widths
    channels, height, width = input_shape
    # The last map's size: stride 2 (padding 1), pool 2, stride 2 (padding 1); 28 -> 14 -> 7 -> 4.
    out_h, out_w = (((side + 1) // 2 // 2 + 1) // 2 for side in (height, width))
    if out_h < 1 or out_w < 1:
        raise ModelError(f"needs images of at least 3x3 (its layers halve the size three times), got "
                         f"{height}x{width}")
    return nn.Sequential(
        nn.Conv2d(channels, first, kernel_size=3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(first),
        nn.ReLU(inplace=True),
        nn.Conv2d(first, middle, kernel_size=3, padding=1, bias=False),
        nn.MaxPool2d(2),
        nn.BatchNorm2d(middle),
        nn.ReLU(inplace=True),
        nn.Conv2d(middle, last, kernel_size=3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(last),
        nn.ReLU(inplace=True),
        nn.Flatten(),
        nn.Linear(last * out_h * out_w, num_classes),
    )


@register_model("strided-cnn-28", "stride-2 conv, conv-pool, stride-2 conv (16-32-96), linear: `--recipe fast`'s "
                "network for 28x28", input_shape=(1, 28, 28))
def strided_cnn_28(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    return strided_cnn(input_shape, num_classes)


# airbench94's network (a stem, then per width conv-pool-BN-ReLU and conv-BN-ReLU, a max over the last map),
# scaled down for 2 CPU cores: airbench's widths are 64-256-256 with a 24-channel whitening stem.
@register_model("fast-cnn-32", "stem 24, 3 blocks (32-64-128) of conv-pool-BN-ReLU, conv-BN-ReLU, max: `--recipe "
                "fast`'s for 32x32", input_shape=(3, 32, 32))
def fast_cnn_32(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    return fast_cnn(input_shape[0], num_classes, widths=(32, 64, 128), convs_per_block=2, stem=24, head_pool="max")


@register_model("fast-cnn-32-wide", "fast-cnn-32 with stem 32 and blocks 64-128-256: `--recipe fast-long`'s for "
                "32x32", input_shape=(3, 32, 32))
def fast_cnn_32_wide(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    return fast_cnn(input_shape[0], num_classes, widths=(64, 128, 256), convs_per_block=2, stem=32, head_pool="max")
