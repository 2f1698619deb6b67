"""Every layer's output for one image, and each output value explained: the arithmetic redone from the
recorded input equals what PyTorch computed, for convolutions, pooling, activations, batch norm, linear and
flatten layers, with padding, strides, dilation and groups."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from torch import nn

import cnnlab
from cnnlab.errors import UsageError
from cnnlab.inspect.explain import LayerOutput, explain, layer_outputs
from cnnlab.teach.steps import number


def recorded(module: nn.Module, shape: tuple[int, ...], seed: int = 0, scale: float = 1.0) -> LayerOutput:
    """The record of `module` alone in an nn.Sequential, on a seeded random batch of `shape`."""
    torch.manual_seed(seed)
    for p in module.parameters():  # random weights and biases, not the initializer's small ones
        nn.init.normal_(p, std=0.5)
    (record,) = layer_outputs(nn.Sequential(module), torch.randn(shape) * scale)
    return record


def positions(record: LayerOutput):
    return itertools.product(*(range(s) for s in record.output.shape))


def assert_all_explained(module: nn.Module, record: LayerOutput, tolerance: float = 1e-4) -> None:
    """Every output value equals the arithmetic that explains it, within float32 rounding."""
    for at in positions(record):
        e = explain(module, record, at)
        assert e.value == float(record.output[at])
        assert e.computed == pytest.approx(e.value, rel=tolerance, abs=tolerance), (at, e.formula)


def test_the_lecture_exercise():
    conv = nn.Conv2d(1, 1, 2, bias=False)
    with torch.no_grad():
        conv.weight[:] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    (record,) = layer_outputs(nn.Sequential(conv), torch.arange(1.0, 17.0).reshape(1, 1, 4, 4))
    first = explain(conv, record, (0, 0, 0))
    assert (first.value, first.computed, first.how, first.bias) == (44.0, 44.0, "convolution", None)
    (term,) = first.terms
    assert term.channel == 0 and term.sum == 44.0
    assert term.patch == [[1, 2], [5, 6]] and term.kernel == [[1, 2], [3, 4]] and term.products == [[1, 4], [15, 24]]
    assert first.formula == "1x1 + 2x2 + 5x3 + 6x4 = 44"
    last = explain(conv, record, (0, 2, 2))
    assert (last.value, last.computed) == (144.0, 144.0)
    assert last.terms[0].patch == [[11, 12], [15, 16]] and last.formula == "11x1 + 12x2 + 15x3 + 16x4 = 144"


@pytest.mark.parametrize("conv", [
    nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2),
    pytest.param(nn.Conv2d(2, 3, 4, padding="same", bias=False),  # an even kernel: the extra padding goes last
                 marks=pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")),
    nn.Conv2d(2, 3, (2, 3), padding="valid", dilation=(2, 1)),
    nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect"),
    nn.Conv2d(2, 2, 3, padding=2, padding_mode="circular"),
    nn.Conv2d(20, 2, 1, padding_mode="replicate"),  # many channels: the formula names the largest
], ids=["groups", "same", "valid-dilated", "reflect", "circular", "many-channels"])
def test_convolutions_equal_pytorch(conv):
    record = recorded(conv, (1, conv.in_channels, 7, 5))
    assert_all_explained(conv, record)
    e = explain(conv, record, (conv.out_channels - 1, 0, 0))
    per_group = conv.in_channels // conv.groups
    assert len(e.terms) == per_group
    assert [t.channel for t in e.terms] == list(range(conv.in_channels - per_group, conv.in_channels))  # last group
    assert all(torch.tensor(t.patch).shape == conv.kernel_size == torch.tensor(t.kernel).shape for t in e.terms)
    assert e.computed == pytest.approx(sum(t.sum for t in e.terms) + (e.bias or 0.0))
    if conv.in_channels == 20:
        assert e.formula.startswith("sum over 20 channels (largest: ")


def test_depthwise_convolution_with_stride_dilation_and_padding():
    conv = nn.Conv2d(3, 3, 3, stride=2, dilation=2, padding=2, groups=3)
    record = recorded(conv, (1, 3, 8, 8))
    assert record.output.shape == (3, 4, 4)
    assert_all_explained(conv, record)
    corner = explain(conv, record, (1, 0, 0))
    (term,) = corner.terms
    assert term.channel == 1 and term.kernel == conv.weight[1, 0].tolist()
    # Rows and columns -2, 0, 2 of the input: the first row and column of the window are padding.
    x = record.input[1]
    assert term.patch[0] == [0, 0, 0] and [row[0] for row in term.patch] == [0, 0, 0]
    assert [row[1:] for row in term.patch[1:]] == x[0:3:2, 0:3:2].tolist()
    assert term.products[0] == [0, 0, 0]
    inner = explain(conv, record, (2, 2, 3)).terms[0]  # rows 2, 4, 6 and columns 4, 6, 8 (8: padding)
    assert inner.patch == [[0.0 if q == 8 else record.input[2, r, q].item() for q in (4, 6, 8)] for r in (2, 4, 6)]


def test_max_pooling_with_padding_and_ceil_mode():
    pool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
    record = recorded(pool, (1, 2, 6, 6))
    assert record.output.shape == (2, 4, 4)
    assert_all_explained(pool, record, tolerance=0)
    for at in positions(record):
        e = explain(pool, record, at)
        assert e.how == "max pooling" and record.input[e.source].item() == e.value
    corner = explain(pool, record, (0, 0, 0))  # rows and columns -1, 0, 1: padding first
    assert corner.window[0] == [float("-inf")] * 3 and corner.to_dict()["window"][0] == [None] * 3
    x = record.input[0]
    assert corner.formula == f"max({', '.join(map(number, x[:2, :2].flatten().tolist()))}) = {number(corner.value)}"
    # The last window starts at 5: row 6 is padding, row 7 past it (ceil_mode); it still has 3x3 cells.
    edge = explain(pool, record, (1, 3, 3))
    inf = float("-inf")
    assert edge.window == [[record.input[1, 5, 5].item(), inf, inf], [inf] * 3, [inf] * 3]
    assert edge.source == (1, 5, 5) and edge.to_dict()["window"][2] == [None] * 3
    dilated = nn.MaxPool2d(3, stride=2, padding=1, dilation=2)
    assert_all_explained(dilated, recorded(dilated, (1, 2, 7, 7)), tolerance=0)


def test_average_pooling_counts_padding_as_asked():
    pool = nn.AvgPool2d(2, stride=2, padding=1, count_include_pad=False, ceil_mode=True)
    record = recorded(pool, (1, 2, 5, 5))
    assert record.output.shape == (2, 3, 3)
    assert_all_explained(pool, record)
    corner = explain(pool, record, (0, 0, 0))
    value = record.input[0, 0, 0].item()
    assert corner.window == [[0.0, 0.0], [0.0, value]] and corner.how == "average pooling"
    assert corner.computed == pytest.approx(value) and corner.formula == f"({number(value)}) / 1 = {number(value)}"
    counted = nn.AvgPool2d(2, stride=2, padding=1)
    e = explain(counted, recorded(counted, (1, 2, 5, 5)), (0, 0, 0))
    assert e.formula == f"(0 + 0 + 0 + {number(value)}) / 4 = {number(value / 4)}"
    assert e.computed == pytest.approx(value / 4)
    overhanging = nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True)
    record = recorded(overhanging, (1, 2, 6, 6))
    assert_all_explained(overhanging, record)
    # The last window reads rows and columns 5 (input), 6 (padding, counted) and 7 (past the padding, not counted).
    e = explain(overhanging, record, (0, 3, 3))
    value = record.input[0, 5, 5].item()
    assert e.to_dict()["window"] == [[value, 0, None], [0, 0, None], [None, None, None]]
    assert e.formula == f"({number(value)} + 0 + 0 + 0) / 4 = {number(value / 4)}"
    divided = nn.AvgPool2d(2, padding=1, divisor_override=3)
    record = recorded(divided, (1, 2, 6, 6))
    assert_all_explained(divided, record)
    assert explain(divided, record, (0, 1, 1)).formula.split(" = ")[0].endswith(") / 3")


@pytest.mark.parametrize("pool", [nn.AdaptiveAvgPool2d((3, 2)), nn.AdaptiveMaxPool2d((4, 3))])
def test_adaptive_pooling_windows(pool):
    record = recorded(pool, (1, 2, 5, 7))
    assert_all_explained(pool, record)
    e = explain(pool, record, (1, 1, 1))
    rows, cols = (slice(1, 4), slice(3, 7)) if isinstance(pool, nn.AdaptiveAvgPool2d) else (slice(1, 3), slice(2, 5))
    assert e.window == record.input[1, rows, cols].tolist()  # floor(i*H/out) to ceil((i+1)*H/out)


@pytest.mark.parametrize("activation", [
    nn.ReLU(), nn.ReLU6(), nn.LeakyReLU(0.2), nn.GELU(), nn.SiLU(), nn.Sigmoid(), nn.Tanh(), nn.Hardswish(),
    nn.Hardsigmoid(), nn.ELU(), nn.Dropout(0.5), nn.Identity()], ids=lambda m: type(m).__name__)
def test_activations(activation):
    record = recorded(activation, (1, 2, 3, 4), scale=4)
    assert_all_explained(activation, record)
    e = explain(activation, record, (1, 2, 3))
    assert e.how == "activation" and e.window == [[record.input[1, 2, 3].item()]] and e.source == (1, 2, 3)
    name = {"ReLU6": "relu6", "LeakyReLU": "leaky_relu", "Dropout": "dropout"}.get(e.kind, e.kind.lower())
    assert e.formula.startswith(f"{name}(")


def test_relu_formula():
    relu = nn.ReLU(inplace=True)
    (record,) = layer_outputs(nn.Sequential(relu), torch.tensor([[-0.3, 0.5]]))
    assert explain(relu, record, (0,)).formula == "relu(-0.3) = 0"
    assert explain(relu, record, (1,)).formula == "relu(0.5) = 0.5"


def test_batch_norm_in_eval_mode():
    norm = nn.BatchNorm2d(3, eps=1e-3)
    with torch.no_grad():
        norm.running_mean[:] = torch.tensor([0.5, -1.0, 2.0])
        norm.running_var[:] = torch.tensor([4.0, 0.25, 1.0])
        norm.weight[:] = torch.tensor([1.5, -2.0, 0.5])
        norm.bias[:] = torch.tensor([0.1, 0.2, -0.3])
    x = torch.randn(1, 3, 4, 4)
    x[0, 1, 2, 3] = 1.0
    (record,) = layer_outputs(nn.Sequential(norm), x)
    assert_all_explained(norm, record)
    e = explain(norm, record, (1, 2, 3))
    expected = (1.0 + 1.0) / (0.25 + 1e-3) ** 0.5 * -2.0 + 0.2
    assert e.how == "batch norm" and e.computed == pytest.approx(expected) and e.bias == pytest.approx(0.2)
    assert e.formula == f"(1 - mean -1) / sqrt(var 0.25 + eps 0.001) * weight -2 + bias 0.2 = {number(expected)}"


def test_linear():
    linear = nn.Linear(40, 3)
    record = recorded(linear, (1, 40))
    assert_all_explained(linear, record)
    e = explain(linear, record, (2,))
    (term,) = e.terms
    x, w = record.input, linear.weight[2].detach()
    assert term.patch == [x.tolist()] and term.kernel == [w.tolist()]
    assert term.products[0] == pytest.approx((x.double() * w.double()).tolist())
    assert e.bias == pytest.approx(linear.bias[2].item()) and e.computed == pytest.approx(term.sum + e.bias)
    biggest = (x * w).abs().argmax().item()
    weight = w[biggest].item()
    largest = f"{number(x[biggest].item())}x{number(weight) if weight >= 0 else '(' + number(weight) + ')'}"
    assert e.formula.startswith(f"sum of 40 products (largest: {largest}, ")
    small = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        small.weight[:] = torch.tensor([[0.5, -2.0]])
    (record,) = layer_outputs(nn.Sequential(small), torch.tensor([[3.0, 0.25]]))
    assert explain(small, record, (0,)).formula == "3x0.5 + 0.25x(-2) = 1"


def test_flatten_and_other_layers():
    flatten, softmax = nn.Flatten(), nn.Softmax(dim=1)
    records = layer_outputs(nn.Sequential(flatten, softmax), torch.randn(1, 2, 3, 5))
    e = explain(flatten, records[0], (23,))  # 23 = 1x15 + 1x5 + 3
    assert e.how == "flatten" and e.source == (1, 1, 3) and e.computed == records[0].input[1, 1, 3].item() == e.value
    assert e.formula.startswith("output 23 = input (1, 1, 3) (1x15 + 1x5 + 3x1 = 23)")
    other = explain(softmax, records[1], (4,))
    assert (other.how, other.computed, other.terms) == ("other", other.value, [])
    assert "Softmax is not explained step by step" in other.formula


def test_layer_outputs_of_seed_cnn():
    net = cnnlab.get_model("seed-cnn", input_shape=(1, 28, 28), num_classes=10).train()
    torch.manual_seed(0)
    x = torch.randn(2, 1, 28, 28)
    records = layer_outputs(net, x)
    assert net.training  # the mode is restored
    assert [(r.name, r.kind, tuple(r.output.shape)) for r in records] == [
        ("0", "Conv2d", (64, 26, 26)), ("1", "MaxPool2d", (64, 13, 13)), ("2", "ReLU", (64, 13, 13)),
        ("3", "Conv2d", (128, 11, 11)), ("4", "MaxPool2d", (128, 5, 5)), ("5", "ReLU", (128, 5, 5)),
        ("6", "Flatten", (3200,)), ("7", "Linear", (200,)), ("8", "ReLU", (200,)), ("9", "Linear", (10,))]
    assert torch.equal(records[0].input, x[0]) and all(a.output.equal(b.input) for a, b in zip(records, records[1:]))
    with torch.no_grad():
        assert torch.allclose(records[-1].output, net.eval()(x)[0], atol=1e-5)
    modules = dict(net.named_modules())
    for record, at in zip(records, [(5, 0, 25), (63, 12, 0), (1, 1, 1), (127, 10, 10), (3, 4, 4), (0, 0, 0), (3199,),
                                    (199,), (7,), (9,)]):
        e = explain(modules[record.name], record, at)
        assert e.computed == pytest.approx(e.value, rel=1e-4, abs=1e-4), record.name
        json.dumps(e.to_dict(), allow_nan=False)


def test_an_inplace_relu_does_not_change_what_was_recorded():
    conv = nn.Conv2d(1, 4, 3)
    records = layer_outputs(nn.Sequential(conv, nn.ReLU(inplace=True)), torch.randn(1, 1, 8, 8))
    assert records[0].output.min() < 0 and torch.equal(records[1].input, records[0].output)
    assert torch.equal(records[1].output, records[0].output.clamp_min(0))


def test_a_module_called_twice_is_recorded_at_each_call():
    records = layer_outputs(cnnlab.get_model("largenet", input_shape=(3, 32, 32)), torch.randn(1, 3, 32, 32))
    assert [(r.name, tuple(r.output.shape)) for r in records] == [
        ("conv1", (5, 28, 28)), ("pool", (5, 14, 14)), ("conv2", (10, 10, 10)), ("pool#2", (10, 5, 5)),
        ("fc1", (32,)), ("fc2", (10,))]
    assert torch.equal(records[3].input, records[2].output.clamp_min(0))  # the forward's F.relu came between


def test_bfloat16_and_channels_last_are_recorded_as_float32():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    net = nn.Sequential(conv, nn.ReLU()).to(memory_format=torch.channels_last)
    x = torch.randn(1, 3, 6, 6).contiguous(memory_format=torch.channels_last)
    records = layer_outputs(net, x)
    assert all(t.dtype == torch.float32 and t.is_contiguous() for r in records for t in (r.input, r.output))
    assert_all_explained(conv, records[0])
    records = layer_outputs(net.to(torch.bfloat16), x.to(torch.bfloat16))
    assert all(t.dtype == torch.float32 and t.is_contiguous() for r in records for t in (r.input, r.output))
    e = explain(conv, records[0], (2, 0, 5))
    assert e.computed == pytest.approx(e.value, rel=2e-2, abs=2e-2)  # bf16 keeps 8 bits of each value


def test_bad_positions_and_modules():
    conv = nn.Conv2d(2, 3, 3)
    record = recorded(conv, (1, 2, 5, 6))
    message = r"position \(%s\) is not in the output of 0 \(3x3x4\); give \(channel, row, col\) with channel 0-2, " \
              r"row 0-2, col 0-3"
    with pytest.raises(UsageError, match=message % "0, 0"):
        explain(conv, record, (0, 0))
    with pytest.raises(UsageError, match=message % "3, 0, 0"):
        explain(conv, record, (3, 0, 0))
    with pytest.raises(UsageError, match=message % "0, -1, 0"):
        explain(conv, record, (0, -1, 0))
    with pytest.raises(UsageError, match=r"give \(unit\) with unit 0-4"):
        explain(nn.Identity(), recorded(nn.Identity(), (1, 5)), (5,))
    with pytest.raises(UsageError, match="0 was recorded from a Conv2d, not from the ReLU given"):
        explain(nn.ReLU(), record, (0, 0, 0))
    flat = nn.Flatten(2)
    with pytest.raises(UsageError, match=r"0 \(Flatten\) gives 2x30 per image: neither feature maps"):
        explain(flat, recorded(flat, (1, 2, 5, 6)), (0, 0))
