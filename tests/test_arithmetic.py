"""Layer arithmetic: each formula's text and value, checked against what PyTorch's layers do."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from cnnlab.teach.arithmetic import (
    conv_params, conv_size, conv_transpose_size, layer_math, linear_params, padding_answer, pool_answer, pool_size,
    receptive_field, same_padding, size_answer,
)
from cnnlab.errors import ArchitectureError


def test_conv_formula_text_and_value():
    assert str(conv_size(28, 3)) == "H_out = floor((28 + 2*0 - 1*(3-1) - 1)/1) + 1 = 26"
    assert str(conv_params(64, 1, (3, 3))) == "params = 64*(1*3*3) + 64 = 640"
    assert str(conv_params(128, 64, (3, 3))) == "params = 128*(64*3*3) + 128 = 73,856"
    assert str(linear_params(3200, 200)) == "params = 3200*200 + 200 = 640,200"
    assert str(conv_params(64, 32, (3, 3), groups=4, bias=False)) == "params = 64*(32/4*3*3) = 4,608"


@pytest.mark.parametrize("size", [1, 5, 7, 28, 33])
@pytest.mark.parametrize("kernel,stride,padding,dilation", [(1, 1, 0, 1), (3, 1, 1, 1), (3, 2, 1, 1), (5, 3, 2, 1),
                                                           (3, 1, 2, 2), (2, 2, 0, 1), (4, 3, 0, 1)])
def test_sizes_match_torch(size, kernel, stride, padding, dilation):
    x = torch.zeros(1, 1, size, size)
    extent = dilation * (kernel - 1) + 1
    if size + 2 * padding >= extent:
        conv = nn.Conv2d(1, 1, kernel, stride, padding, dilation)
        assert conv_size(size, kernel, stride, padding, dilation).value == conv(x).shape[-1]
        tconv = nn.ConvTranspose2d(1, 1, kernel, stride, padding, dilation=dilation)
        assert conv_transpose_size(size, kernel, stride, padding, 0, dilation).value == tconv(x).shape[-1]
    if padding <= kernel // 2:  # PyTorch refuses more pooling padding
        for ceil in (False, True):
            if size + 2 * padding >= extent:
                pool = nn.MaxPool2d(kernel, stride, padding, dilation, ceil_mode=ceil)
                assert pool_size(size, kernel, stride, padding, dilation, ceil).value == pool(x).shape[-1]


def test_ceil_mode_drops_a_window_that_starts_in_the_padding():
    # 5 + 2*1 with kernel 2 stride 2: ceil gives 4 windows, but the 4th would start at 6 (padding).
    step = pool_size(5, 2, 2, 1, ceil_mode=True)
    assert step.value == nn.MaxPool2d(2, 2, 1, ceil_mode=True)(torch.zeros(1, 1, 5, 5)).shape[-1] == 3
    assert step.formula.startswith("ceil(") and step.formula.endswith(" - 1") and "padding" in step.note


def test_same_padding():
    assert same_padding(7)[:2] == (3, 3) and same_padding(3, dilation=2)[:2] == (2, 2)
    before, after, why = same_padding(4)  # an even kernel has no centre
    assert (before, after) == (1, 2) and "before" in why
    before, after, _ = same_padding(3, stride=2, size=28)
    x = nn.functional.pad(torch.zeros(1, 1, 28, 28), (before, after, before, after))
    assert nn.functional.conv2d(x, torch.zeros(1, 1, 3, 3), stride=2).shape[-1] == 14


def test_answers():
    assert padding_answer(7)[0] == "padding = (7 - 1)/2 = 3"
    lines = size_answer(130, 3, stride=2)
    assert lines[0].endswith("= 64") and "64.5, rounded down to 64" in lines[1] and "never covered" in lines[2]
    lines = pool_answer(4, 130)
    assert lines[0].startswith("maxpool(4)") and lines[1].endswith("the last 2 row(s) are dropped")
    assert "= 32" in lines[1] and any(line.startswith("not maxpool(2,4)") for line in lines)
    assert any("never seen" in line for line in size_answer(28, 2, stride=4, pool=True))
    with pytest.raises(ArchitectureError, match="depends on the input size"):
        padding_answer(3, stride=2)
    with pytest.raises(ArchitectureError, match="more than half the window 3"):
        size_answer(28, 3, padding=5, pool=True)
    assert "no output" in pool_answer(4, 3)[1]
    assert not any(line.startswith("not maxpool") for line in pool_answer(2))
    assert "dilation=2" in padding_answer(3, dilation=2)[1]
    assert not any("never seen" in line for line in size_answer(28, 1, stride=2))  # 1x1: a projection


def test_batchnorm_parameters_and_buffers():
    bn = nn.BatchNorm2d(64)
    math = layer_math(bn, (64, 8, 8))
    steps = {s.name: s for s in math.steps}
    assert steps["params"].value == 128 == sum(p.numel() for p in bn.parameters())
    assert steps["buffers"].value == 129 == sum(b.numel() for b in bn.buffers())
    assert "not parameters" in steps["buffers"].note


def test_flatten_and_linear():
    assert str(layer_math(nn.Flatten(), (128, 5, 5)).steps[0]) == "features = 128*5*5 = 3,200"
    assert layer_math(nn.Flatten(), (128, 5, 5)).out_shape == (3200,)
    assert layer_math(nn.Flatten(0, 1), (128, 5, 5)).out_shape == (5, 5)  # the batch dimension counts
    assert layer_math(nn.Linear(3200, 200), (3200,)).mult_adds == 640_200


def _no_filters() -> nn.Conv2d:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch warns that it cannot initialize an empty weight
        return nn.Conv2d(1, 0, 3)


@pytest.mark.parametrize("module,shape,expected", [
    (nn.Conv2d(1, 8, 5), (1, 4, 4), r"H_out = floor\(\(4 \+ 2\*0 - 1\*\(5-1\) - 1\)/1\) \+ 1 = 0[\s\S]*Fix: use padding=1"),
    (nn.Conv2d(1, 8, 3, stride=0), (1, 28, 28), r"stride 0 is not allowed[\s\S]*Fix"),
    (nn.Conv2d(3, 8, 3), (1, 28, 28), r"expects 3 input channels but its input 1x28x28 has 1[\s\S]*in_channels=1"),
    (nn.Linear(3000, 200), (3200,), r"in_features=3000 but its input has 3200 features[\s\S]*Linear\(3200, 200\)"),
    (nn.Linear(7, 2), (128, 5, 5), r"put flatten before it; flattened, 128x5x5 gives 3200 features"),
    (nn.MaxPool2d(2, padding=2), (1, 8, 8), r"padding 2 is more than half the window 2"),
    (nn.MaxPool2d(3), (4, 2, 2), r"spans 3 rows, more than the padded input 2 \+ 2\*0 = 2"),
    (nn.BatchNorm2d(16), (8, 4, 4), r"BatchNorm2d\(8\)"),
    (nn.Conv2d(1, 8, 3), (784,), r"needs a \(C, H, W\) input but gets 784"),
    (nn.Conv2d(1, 8, 3, dilation=0), (1, 28, 28), r"dilation 0 is not allowed"),
    (nn.MaxPool2d(2, dilation=(1, 0)), (1, 28, 28), r"dilation 1x0 is not allowed"),
    (_no_filters(), (1, 28, 28), r"0 output channels"),
    (nn.AdaptiveAvgPool2d(0), (1, 28, 28), r"adaptive pooling to 0x0 gives no output"),
    (nn.ConvTranspose2d(1, 1, (3, 1), padding=(0, 1)), (1, 1, 1), r"W_out = \(1 - 1\)\*1 - 2\*1"),
])
def test_impossible_layers(module, shape, expected):
    with pytest.raises(ArchitectureError, match=expected):
        layer_math(module, shape)


def test_stride_larger_than_window_warns():
    assert "never seen" in layer_math(nn.MaxPool2d(2, 4), (1, 28, 28)).warnings[0]
    assert layer_math(nn.MaxPool2d(4, 4), (1, 28, 28)).warnings == []
    assert layer_math(nn.Conv2d(1, 1, 1, stride=2), (1, 28, 28)).warnings == []  # a 1x1 projection, by design
    linear = layer_math(nn.Linear(5, 2), (128, 5, 5))  # channels-last use (ConvNeXt): a 1x1 convolution
    assert linear.out_shape == (128, 5, 2) and linear.warnings == [] and linear.mult_adds == 12 * 128 * 5
    # non-square: the axis that skips is named, with its own numbers
    warning = layer_math(nn.Conv2d(1, 1, (1, 3), stride=(2, 1)), (1, 28, 28)).warnings[0]
    assert warning.startswith("stride 2 is larger than the convolution window 1: 1 of every 2 input rows")
    assert layer_math(nn.MaxPool2d((1, 3), stride=(1, 3)), (1, 28, 28)).warnings == []


def test_same_padding_conv_module():
    math = layer_math(nn.Conv2d(1, 4, 4, padding="same"), (1, 9, 9))  # even kernel: 1 before, 2 after
    assert math.out_shape == (4, 9, 9) and "9 + 1 + 2" in math.steps[0].formula


def test_window_text_shows_both_paddings():
    assert layer_math(nn.Conv2d(1, 8, 3, padding=(0, 1)), (1, 9, 9)).window == "3x3 /1 p0x1"
    assert layer_math(nn.Conv2d(1, 8, 3, stride=(1, 2), dilation=2), (1, 9, 9)).window == "3x3 /1x2 p0 d2"


def test_receptive_field_of_upsampling():
    # avgpool(2) twice: rf 4, jump 4; a 2x2 transposed convolution at stride 2 reaches 1 input each
    rf, jump = receptive_field((4, 4), (4, 4), (2, 2), (2, 2), transposed=True)
    assert rf == (4, 4) and jump == (2, 2)
    rf, jump = receptive_field((4, 4), (4, 4), (3, 3), (2, 2), transposed=True)  # ceil(3/2) = 2 inputs
    assert rf == (8, 8) and jump == (2, 2)


def test_receptive_field_chain():
    rf, jump = (1.0, 1.0), (1.0, 1.0)
    for kernel, stride in [(3, 1), (2, 2), (3, 1), (2, 2)]:  # lecture 001's CNN
        rf, jump = receptive_field(rf, jump, (kernel, kernel), (stride, stride))
    assert rf == (10, 10) and jump == (4, 4)
