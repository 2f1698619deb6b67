"""Every layer's output for one image, and how any one output value came from the layer's input: CNN
Explainer's central view (Wang et al., 2020) for any PyTorch network.

    records = layer_outputs(net, x)                       # a LayerOutput per leaf module call, in run order
    explain(net.get_submodule("0"), records[0], (5, 0, 0))  # the windows, kernels, products and sums

The arithmetic is redone in float64 from the recorded input and the module's own settings (stride, padding,
dilation, groups, ...), so `computed` checks `value`: the two agree within float32 rounding.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import UsageError
from cnnlab.inspect.inside import first_tensor
from cnnlab.models.shapes import evaluating
from cnnlab.runs.folder import no_nan
from cnnlab.teach.steps import number

MAX_LISTED = 16  # a sum or a window of more values is told by its count and its largest terms
LARGEST = 5
Make = Callable[..., "Explanation"]  # an Explanation with the layer, kind, position and value filled in

# Elementwise activations, by the name of their function in torch.nn.functional. Looked up along the class's
# MRO: ReLU6 is a Hardtanh, and must be called relu6.
ACTIVATIONS: dict[type[nn.Module], str] = {
    nn.ReLU: "relu", nn.ReLU6: "relu6", nn.LeakyReLU: "leaky_relu", nn.GELU: "gelu", nn.SiLU: "silu",
    nn.Sigmoid: "sigmoid", nn.Tanh: "tanh", nn.Hardswish: "hardswish", nn.Hardsigmoid: "hardsigmoid",
    nn.ELU: "elu", nn.SELU: "selu", nn.CELU: "celu", nn.Mish: "mish", nn.Softplus: "softplus",
    nn.Hardtanh: "hardtanh", nn.Identity: "identity", nn.Dropout: "dropout", nn.Dropout1d: "dropout",
    nn.Dropout2d: "dropout", nn.Dropout3d: "dropout", nn.AlphaDropout: "dropout", nn.FeatureAlphaDropout: "dropout",
}


@dataclass
class LayerOutput:
    """One call of a leaf module on image 0 of the batch: what went in and what came out."""

    name: str  # named_modules()'s name; "#2", "#3" added for a module's later calls
    kind: str  # type(module).__name__
    input: torch.Tensor  # float32, CPU, contiguous: (C, H, W) or (F,)
    output: torch.Tensor  # float32, CPU, contiguous: (C, H, W) or (F,)


@dataclass
class Term:
    """One input channel's share of a convolution output, or the single term of a linear unit."""

    channel: int  # across all groups
    patch: list[list[float]]  # the input window as the kernel sees it: padding included, dilation applied
    kernel: list[list[float]]
    products: list[list[float]]  # patch * kernel
    sum: float


@dataclass
class Explanation:
    """How one output value of a layer was computed from the layer's input."""

    layer: str
    kind: str
    position: tuple[int, ...]  # (channel, row, col) in feature maps, (unit,) in a vector
    value: float  # the recorded output
    computed: float  # the arithmetic below, in float64
    how: str  # convolution, max pooling, average pooling, activation, batch norm, linear, flatten, other
    formula: str  # one line, the numbers filled in
    terms: list[Term] = field(default_factory=list)
    bias: float | None = None
    window: list[list[float]] | None = None  # pooling: -inf where max pooling pads; activation, batch norm: [[x]]
    source: tuple[int, ...] | None = None  # the input position read (max pooling: of the maximum)

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and numbers for JSON; NaN and infinities (max pooling's padding) become None."""
        return no_nan(asdict(self))


def _image0(tensor: torch.Tensor | None) -> torch.Tensor | None:
    """Image 0 of a batch in a tensor of its own: copied, so a later in-place op (ReLU(inplace=True)) cannot
    change it, and float32 and contiguous whatever the model's precision (bf16) or layout (channels_last)."""
    if tensor is None or tensor.dim() == 0:
        return None
    return tensor.detach()[0].to("cpu", torch.float32, memory_format=torch.contiguous_format, copy=True)


@torch.no_grad()
def layer_outputs(net: nn.Module, x: torch.Tensor) -> list[LayerOutput]:
    """The input and output of every leaf module (one without children) for image 0 of a normalized batch x
    (N, C, H, W), from one forward pass in eval mode (the net's mode is restored after), in the order the
    modules run. A module called more than once is recorded at each call, as `pool`, `pool#2`, ...; one that
    takes or gives no tensor is left out."""
    records: list[LayerOutput] = []
    inputs: dict[int, torch.Tensor | None] = {}  # id(module) -> its input, kept before an in-place op changes it
    calls: dict[int, int] = {}

    def before(module: nn.Module, args: tuple, kwargs: dict) -> None:
        inputs[id(module)] = _image0(first_tensor((*args, *kwargs.values())))

    def after(name: str, module: nn.Module, _args: tuple, output: object) -> None:
        calls[id(module)] = count = calls.get(id(module), 0) + 1
        given, made = inputs.pop(id(module), None), _image0(first_tensor(output))
        if given is not None and made is not None:
            records.append(LayerOutput(name if count == 1 else f"{name}#{count}", type(module).__name__, given, made))

    handles = []
    for name, module in net.named_modules():
        if next(module.children(), None) is None:
            handles.append(module.register_forward_pre_hook(before, with_kwargs=True))
            handles.append(module.register_forward_hook(functools.partial(after, name)))
    try:
        with evaluating(net):
            net(x)
    finally:
        for handle in handles:
            handle.remove()
    return records


@torch.no_grad()
def explain(module: nn.Module, record: LayerOutput, position: Sequence[int]) -> Explanation:
    """How record.output[position] came from record.input; `module` is the one that made the record."""
    if type(module).__name__ != record.kind:
        raise UsageError(f"{record.name} was recorded from a {record.kind}, not from the {type(module).__name__} "
                         "given; pass the module of that name")
    at = _checked(record, position)
    x = record.input.double()  # (C, H, W) or (F,)
    make = functools.partial(Explanation, record.name, record.kind, at, float(record.output[at]))
    if isinstance(module, nn.Conv2d):
        return _convolution(module, x, at, make)
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        return _pooling(module, x, at, make)
    if isinstance(module, (nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d)):
        return _adaptive_pooling(module, x, tuple(record.output.shape), at, make)
    if isinstance(module, nn.Linear):
        return _linear(module, x, at, make)
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
        return _batch_norm(module, x, at, make)
    function = next((ACTIVATIONS[t] for t in type(module).__mro__ if t in ACTIVATIONS), None)
    if function is not None:
        return _activation(module, function, float(x[at]), at, make)
    if isinstance(module, nn.Flatten):
        flat = int(np.ravel_multi_index(at, tuple(record.output.shape)))
        source = tuple(int(i) for i in np.unravel_index(flat, tuple(x.shape)))
        strides = [math.prod(x.shape[i + 1:]) for i in range(x.dim())]
        index = " + ".join(f"{i}x{s}" for i, s in zip(source, strides))
        return make(float(x[source]), "flatten", f"output {flat} = input {source} ({index} = {flat}): "
                    f"{number(float(x[source]))}", source=source)
    value = float(record.output[at])
    return make(value, "other", f"{record.kind} is not explained step by step here; its output is {number(value)}")


def _checked(record: LayerOutput, position: Sequence[int]) -> tuple[int, ...]:
    """The position as a tuple of ints inside the output, or an error naming the valid ranges."""
    shape = tuple(record.output.shape)
    names = {3: ("channel", "row", "col"), 1: ("unit",)}.get(len(shape))
    if names is None:
        raise UsageError(f"{record.name} ({record.kind}) gives {'x'.join(map(str, shape)) or 'a scalar'} per image: "
                         "neither feature maps (channel, row, col) nor a vector (unit), so no value is explained")
    ranges = ", ".join(f"{n} 0-{s - 1}" for n, s in zip(names, shape))
    try:
        at = tuple(operator.index(p) for p in position)
    except TypeError:
        at = ()
    if len(at) != len(shape) or not all(0 <= p < s for p, s in zip(at, shape)):
        raise UsageError(f"position {at or position} is not in the output of {record.name} "
                         f"({'x'.join(map(str, shape))}); give ({', '.join(names)}) with {ranges}")
    return at


def _listed(sizes: np.ndarray, label: Callable[[int], str]) -> str:
    """The items added up ("a + b + c"), or for many, the largest by magnitude ("largest: b, a")."""
    if len(sizes) <= MAX_LISTED:
        return " + ".join(label(i) for i in range(len(sizes)))
    largest = np.argsort(-np.abs(sizes), kind="stable")[:LARGEST]
    return "largest: " + ", ".join(label(int(i)) for i in largest)


def _products(inputs: np.ndarray, weights: np.ndarray) -> str:
    """"1x1 + 2x2 + 5x3 + 6x4", or for many, "sum of 800 products (largest: 0.31x1.2, 0.2x(-3), ...)"."""
    # A negative weight in brackets, as teach/steps.py writes it: 0.5x(-2), not 0.5x-2.
    text = _listed(inputs * weights, lambda i: f"{number(inputs[i])}x{_factor(weights[i])}")
    return text if len(inputs) <= MAX_LISTED else f"sum of {len(inputs)} products ({text})"


def _factor(value: float) -> str:
    return number(value) if value >= 0 else f"({number(value)})"


def _with_bias(text: str, bias: float | None, computed: float) -> str:
    return f"{text}{f' + bias {number(bias)}' if bias is not None else ''} = {number(computed)}"


def _convolution(m: nn.Conv2d, x: torch.Tensor, at: tuple[int, ...], make: Make) -> Explanation:
    out, row, col = at
    (kh, kw), (sh, sw), (dh, dw) = m.kernel_size, m.stride, m.dilation
    if m.padding == "same":  # an odd total puts the extra row or column last, as PyTorch does
        th, tw = dh * (kh - 1), dw * (kw - 1)
        pads = (tw // 2, tw - tw // 2, th // 2, th - th // 2)
    else:
        ph, pw = (0, 0) if m.padding == "valid" else m.padding
        pads = (pw, pw, ph, ph)
    per_group = m.in_channels // m.groups
    first = out // (m.out_channels // m.groups) * per_group  # the group's first input channel
    mode = "constant" if m.padding_mode == "zeros" else m.padding_mode
    padded = F.pad(x[None, first:first + per_group], pads, mode=mode)[0]  # (C/g, H + pads, W + pads)
    r, c = row * sh, col * sw
    patches = padded[:, r:r + dh * (kh - 1) + 1:dh, c:c + dw * (kw - 1) + 1:dw]  # (C/g, kh, kw)
    kernels = m.weight.detach()[out].to("cpu", torch.float64)  # (C/g, kh, kw)
    products = patches * kernels
    sums = products.sum((1, 2))  # (C/g,)
    terms = [Term(first + i, patches[i].tolist(), kernels[i].tolist(), products[i].tolist(), float(sums[i]))
             for i in range(per_group)]
    bias = float(m.bias[out]) if m.bias is not None else None
    computed = float(sums.sum()) + (bias or 0.0)
    if per_group == 1:
        text = _products(patches[0].flatten().numpy(), kernels[0].flatten().numpy())
    else:
        text = f"sum over {per_group} channels ({_listed(sums.numpy(), lambda i: number(terms[i].sum))})"
    return make(computed, "convolution", _with_bias(text, bias, computed), terms=terms, bias=bias)


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (value[0], value[1])


def _pooling(m: nn.MaxPool2d | nn.AvgPool2d, x: torch.Tensor, at: tuple[int, ...], make: Make) -> Explanation:
    c, row, col = at
    (kh, kw), (sh, sw), (ph, pw) = _pair(m.kernel_size), _pair(m.stride), _pair(m.padding)
    dh, dw = _pair(getattr(m, "dilation", 1))  # average pooling has none
    _, height, width = x.shape
    rows = [row * sh - ph + i * dh for i in range(kh)]
    cols = [col * sw - pw + j * dw for j in range(kw)]
    spots = [(r, q) for r in rows for q in cols]
    inside = [(r, q) for r, q in spots if 0 <= r < height and 0 <= q < width]
    # A window ceil_mode lets hang past the padding reads nothing there, and average pooling does not count it.
    padded = [(r, q) for r, q in spots if -ph <= r < height + ph and -pw <= q < width + pw]
    is_max = isinstance(m, nn.MaxPool2d)

    def cell(r: int, q: int) -> float:
        if 0 <= r < height and 0 <= q < width:
            return float(x[c, r, q])
        return -math.inf if is_max else 0.0 if (r, q) in padded else math.nan

    window = [[cell(r, q) for q in cols] for r in rows]
    if is_max:
        return _maximum(x, c, inside, window, make)
    counted = padded if m.count_include_pad else inside
    values = [cell(r, q) for r, q in counted]
    return _average(values, m.divisor_override or len(values), window, make)


def _adaptive_pooling(m: nn.AdaptiveMaxPool2d | nn.AdaptiveAvgPool2d, x: torch.Tensor, shape: tuple[int, ...],
                      at: tuple[int, ...], make: Make) -> Explanation:
    c, row, col = at
    (_, height, width), (_, rows, cols) = x.shape, shape
    r0, r1 = row * height // rows, -(-(row + 1) * height // rows)  # floor(i*H/out), ceil((i+1)*H/out)
    c0, c1 = col * width // cols, -(-(col + 1) * width // cols)
    inside = [(r, q) for r in range(r0, r1) for q in range(c0, c1)]
    window = x[c, r0:r1, c0:c1].tolist()
    if isinstance(m, nn.AdaptiveMaxPool2d):
        return _maximum(x, c, inside, window, make)
    return _average([float(x[c, r, q]) for r, q in inside], len(inside), window, make)


def _maximum(x: torch.Tensor, c: int, inside: list[tuple[int, int]], window: list[list[float]],
             make: Make) -> Explanation:
    values = [float(x[c, r, q]) for r, q in inside]
    best = max(range(len(values)), key=values.__getitem__)  # the first of equal maxima, as PyTorch's index
    listed = f"max({', '.join(map(number, values))})" if len(values) <= MAX_LISTED else f"max of {len(values)} values"
    return make(values[best], "max pooling", f"{listed} = {number(values[best])}", window=window,
                source=(c, *inside[best]))


def _average(values: list[float], divisor: int, window: list[list[float]], make: Make) -> Explanation:
    total = math.fsum(values)
    listed = " + ".join(map(number, values)) if len(values) <= MAX_LISTED else \
        f"sum of {len(values)} values: {number(total)}"
    computed = total / divisor
    return make(computed, "average pooling", f"({listed}) / {divisor} = {number(computed)}", window=window)


def _linear(m: nn.Linear, x: torch.Tensor, at: tuple[int, ...], make: Make) -> Explanation:
    unit = at[-1]
    inputs = x[at[:-1]].numpy()  # (F,)
    weights = m.weight.detach()[unit].to("cpu", torch.float64).numpy()  # (F,)
    products = inputs * weights
    term = Term(0, [inputs.tolist()], [weights.tolist()], [products.tolist()], float(products.sum()))
    bias = float(m.bias[unit]) if m.bias is not None else None
    computed = term.sum + (bias or 0.0)
    return make(computed, "linear", _with_bias(_products(inputs, weights), bias, computed), terms=[term], bias=bias)


def _batch_norm(m: nn.modules.batchnorm._BatchNorm, x: torch.Tensor, at: tuple[int, ...], make: Make) -> Explanation:
    c, value = at[0], float(x[at])
    mean, var = float(m.running_mean[c]), float(m.running_var[c])
    weight, bias = (float(m.weight[c]), float(m.bias[c])) if m.affine else (1.0, 0.0)
    computed = (value - mean) / math.sqrt(var + m.eps) * weight + bias
    text = f"({number(value)} - mean {number(mean)}) / sqrt(var {number(var)} + eps {number(m.eps)})"
    if m.affine:
        text += f" * weight {number(weight)} + bias {number(bias)}"
    return make(computed, "batch norm", f"{text} = {number(computed)}", bias=bias if m.affine else None,
                window=[[value]], source=at)


def _activation(m: nn.Module, function: str, value: float, at: tuple[int, ...], make: Make) -> Explanation:
    # Dropout is the identity in eval mode, in which the value was recorded.
    computed = value if function in ("identity", "dropout") else float(m(torch.tensor([value], dtype=torch.float64)))
    settings = [s for s in m.extra_repr().split(", ") if s and not s.startswith(("inplace", "p="))]
    text = f"{function}({', '.join([number(value), *settings])}) = {number(computed)}"
    if function == "dropout":
        text += " (in eval mode dropout passes every value on)"
    return make(computed, "activation", text, window=[[value]], source=at)
