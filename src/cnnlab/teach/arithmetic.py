"""The arithmetic of CNN layers: each number together with the formula that gives it.

Lectures 001, 002 and 004 compute output sizes (`1 + (W - F + 2P)/S`) and parameter counts
(`K*F*F*D_in + K`) by hand. Here every size and count is a `Step`: its value and its formula
with the numbers filled in, in the notation of PyTorch's own docs (nn.Conv2d, nn.MaxPool2d), e.g.
`H_out = floor((28 + 2*0 - 1*(3-1) - 1)/1) + 1 = 26`.

`layer_math(module, in_shape)` applies them to one layer, checks that it can work on that shape
and raises `ArchitectureError` with the formula and a fix when it cannot, before anything runs.
The small helpers at the end answer the lectures' questions directly (`cnnlab arith`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cnnlab.errors import ArchitectureError

if TYPE_CHECKING:
    from torch import nn

Shape = tuple[int, ...]  # one sample, without the batch dimension: (C, H, W) or (F,)


@dataclass(frozen=True)
class Step:
    """One computed number: `name = formula = value`."""

    name: str
    formula: str
    value: int
    note: str = ""

    def __str__(self) -> str:
        text = f"{self.name} = {self.formula} = {self.value:,}"
        return f"{text}  ({self.note})" if self.note else text


@dataclass
class LayerMath:
    """What one layer does to the shape of a sample, and the formulas that say so."""

    out_shape: Shape
    steps: list[Step] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    window: str = ""  # kernel/stride/padding for the summary table, e.g. "3x3 /1 p0"
    mult_adds: int = 0


def as_pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[-1]))


def _pads(before: int, after: int) -> str:
    return f"2*{before}" if before == after else f"{before} + {after}"


def conv_size(size: int, kernel: int, stride: int = 1, padding: int | tuple[int, int] = 0, dilation: int = 1,
              name: str = "H_out") -> Step:
    """Output size of a convolution along one axis (nn.Conv2d's formula)."""
    before, after = (padding, padding) if isinstance(padding, int) else padding
    value = (size + before + after - dilation * (kernel - 1) - 1) // stride + 1
    formula = f"floor(({size} + {_pads(before, after)} - {dilation}*({kernel}-1) - 1)/{stride}) + 1"
    return Step(name, formula, value)


def pool_size(size: int, kernel: int, stride: int, padding: int = 0, dilation: int = 1, ceil_mode: bool = False,
              name: str = "H_out") -> Step:
    """Output size of max or average pooling along one axis, with PyTorch's ceil_mode rule."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    rounding = "ceil" if ceil_mode else "floor"
    value = (math.ceil(span / stride) if ceil_mode else span // stride) + 1
    formula = f"{rounding}(({size} + 2*{padding} - {dilation}*({kernel}-1) - 1)/{stride}) + 1"
    if ceil_mode and (value - 1) * stride >= size + padding:
        # PyTorch drops a last window that would start in the right padding.
        return Step(name, formula + " - 1", value - 1, "the last window would start in the padding")
    return Step(name, formula, value)


def conv_transpose_size(size: int, kernel: int, stride: int = 1, padding: int = 0, output_padding: int = 0,
                        dilation: int = 1, name: str = "H_out") -> Step:
    """Output size of a transposed convolution along one axis (nn.ConvTranspose2d's formula)."""
    value = (size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1
    formula = f"({size} - 1)*{stride} - 2*{padding} + {dilation}*({kernel}-1) + {output_padding} + 1"
    return Step(name, formula, value)


def conv_params(out_channels: int, in_channels: int, kernel: tuple[int, int], groups: int = 1,
                bias: bool = True) -> Step:
    """K*(D_in/groups*F_h*F_w) weights, plus K biases."""
    per_filter = f"{in_channels}/{groups}*{kernel[0]}*{kernel[1]}" if groups > 1 else f"{in_channels}*{kernel[0]}*{kernel[1]}"
    value = out_channels * (in_channels // groups) * kernel[0] * kernel[1] + (out_channels if bias else 0)
    return Step("params", f"{out_channels}*({per_filter})" + (f" + {out_channels}" if bias else ""), value)


def linear_params(in_features: int, out_features: int, bias: bool = True) -> Step:
    value = in_features * out_features + (out_features if bias else 0)
    return Step("params", f"{in_features}*{out_features}" + (f" + {out_features}" if bias else ""), value)


def _fail(what: str, step: Step | None, fix: str) -> ArchitectureError:
    lines = [what] + ([f"  {step}"] if step else []) + [f"  Fix: {fix}"]
    return ArchitectureError("\n".join(lines))


def _check_positive(stride: tuple[int, int], dilation: tuple[int, int] = (1, 1)) -> None:
    if min(stride) < 1:
        raise _fail(f"stride {_pair_text(stride)} is not allowed: the window must move at least 1 pixel per step",
                    None, "use stride=1 or more")
    if min(dilation) < 1:
        raise _fail(f"dilation {_pair_text(dilation)} is not allowed: 1 means neighbouring pixels", None,
                    "use dilation=1 or more")


def _pair_text(pair: tuple[int, int]) -> str:
    return str(pair[0]) if pair[0] == pair[1] else f"{pair[0]}x{pair[1]}"


def _check_size(step: Step, size: int, padding: int, extent: int, axis: str) -> None:
    if step.value < 1:
        need = math.ceil((extent - size) / 2)
        raise _fail(
            f"the window spans {extent} {axis}, more than the padded input {size} + 2*{padding} = "
            f"{size + 2 * padding}, so there is no output", step,
            f"use padding={max(need, padding + 1)} or a smaller kernel, remove a pooling layer before this one, "
            "or give a larger input",
        )


def _skip_warning(kind: str, kernel: tuple[int, int], stride: tuple[int, int]) -> list[str]:
    """Lecture 000's warning, for the axis that skips the most: a stride larger than the window."""
    skips = [(stride[i] - kernel[i], i) for i in range(2) if stride[i] > kernel[i]]
    if not skips:
        return []
    _, i = max(skips)
    axis = "rows" if i == 0 else "columns"
    return [f"stride {stride[i]} is larger than the {kind} window {kernel[i]}: {stride[i] - kernel[i]} of every "
            f"{stride[i]} input {axis} are never seen (lecture 000). Use a window at least as large as the stride, "
            f"e.g. kernel {stride[i]}."]


def _spatial(module: nn.Module, in_shape: Shape) -> tuple[int, int, int]:
    if len(in_shape) != 3:
        raise _fail(f"{type(module).__name__} needs a (C, H, W) input but gets {shape_text(in_shape)}", None,
                    "do not flatten before this layer, or give --input as CxHxW")
    return in_shape  # type: ignore[return-value]


def shape_text(shape: Shape) -> str:
    """(1, 28, 28) -> '1x28x28', as shapes are written on the command line."""
    return "x".join(str(n) for n in shape) if shape else "a scalar"


def _conv(m: nn.Conv2d, in_shape: Shape) -> LayerMath:
    c, h, w = _spatial(m, in_shape)
    if c != m.in_channels:
        raise _fail(f"Conv2d expects {m.in_channels} input channels but its input {shape_text(in_shape)} has {c}", None,
                    f"set in_channels={c} (or let a spec infer it)")
    if m.out_channels < 1:
        raise _fail("Conv2d with 0 output channels gives nothing", None, "use 1 or more filters")
    k, s, d = as_pair(m.kernel_size), as_pair(m.stride), as_pair(m.dilation)
    _check_positive(s, d)
    if isinstance(m.padding, str):  # 'same' pads d*(k-1) in total, the extra pixel after; 'valid' pads nothing
        total = [0, 0] if m.padding == "valid" else [d[i] * (k[i] - 1) for i in range(2)]
        pads = [(t // 2, t - t // 2) for t in total]
    else:
        pads = [(p, p) for p in as_pair(m.padding)]
        if min(as_pair(m.padding)) < 0:
            raise _fail(f"padding {m.padding} is negative", None, "use padding=0 or more")
    steps = [conv_size(n, k[i], s[i], pads[i], d[i], name) for i, (n, name) in enumerate([(h, "H_out"), (w, "W_out")])]
    for i, (n, axis) in enumerate([(h, "rows"), (w, "columns")]):
        _check_size(steps[i], n, pads[i][0], d[i] * (k[i] - 1) + 1, axis)
    params = conv_params(m.out_channels, m.in_channels, k, m.groups, m.bias is not None)
    out_hw = steps[0].value * steps[1].value
    pad_text = m.padding if isinstance(m.padding, str) else as_pair(m.padding)
    return LayerMath(
        (m.out_channels, steps[0].value, steps[1].value), [*steps, params], _conv_skip_warning(k, s),
        window=_window(k, s, pad_text, d),
        mult_adds=params.value * out_hw,  # weights and biases once per output position, as torchinfo counts
    )


def _conv_skip_warning(kernel: tuple[int, int], stride: tuple[int, int]) -> list[str]:
    # A 1x1 convolution with stride 2 is a deliberate subsampling projection (ResNet's shortcuts): no warning.
    return _skip_warning("convolution", kernel, stride) if max(kernel) > 1 else []


def _conv_transpose(m: nn.ConvTranspose2d, in_shape: Shape) -> LayerMath:
    c, h, w = _spatial(m, in_shape)
    if c != m.in_channels:
        raise _fail(f"ConvTranspose2d expects {m.in_channels} input channels but its input {shape_text(in_shape)} has {c}",
                    None, f"set in_channels={c}")
    k, s, d, p, op = (as_pair(v) for v in (m.kernel_size, m.stride, m.dilation, m.padding, m.output_padding))
    _check_positive(s, d)
    steps = [conv_transpose_size(n, k[i], s[i], p[i], op[i], d[i], name)
             for i, (n, name) in enumerate([(h, "H_out"), (w, "W_out")])]
    for step in steps:
        if step.value < 1:
            raise _fail("the padding removes more than the transposed convolution makes", step, "use less padding")
    groups = m.groups
    weights = m.in_channels * (m.out_channels // groups) * k[0] * k[1]
    bias = m.out_channels if m.bias is not None else 0
    per = f"{m.out_channels}/{groups}*{k[0]}*{k[1]}" if groups > 1 else f"{m.out_channels}*{k[0]}*{k[1]}"
    params = Step("params", f"{m.in_channels}*({per})" + (f" + {bias}" if bias else ""), weights + bias)
    return LayerMath(
        (m.out_channels, steps[0].value, steps[1].value), [*steps, params],
        window=_window(k, s, p, d) + " (transposed)",
        # each input position scatters one kernel's weights; each output position gets its bias
        mult_adds=weights * h * w + bias * steps[0].value * steps[1].value,
    )


def _pool(m: nn.MaxPool2d | nn.AvgPool2d, in_shape: Shape, kind: str) -> LayerMath:
    c, h, w = _spatial(m, in_shape)
    k, s, p = as_pair(m.kernel_size), as_pair(m.stride if m.stride is not None else m.kernel_size), as_pair(m.padding)
    d = as_pair(getattr(m, "dilation", 1))
    _check_positive(s, d)
    for i in range(2):
        if p[i] > k[i] // 2:  # PyTorch's rule, on the kernel size before dilation
            raise _fail(f"{kind} padding {p[i]} is more than half the window {k[i]}", None,
                        f"use padding={k[i] // 2} or less")
    steps = [pool_size(n, k[i], s[i], p[i], d[i], m.ceil_mode, name) for i, (n, name) in enumerate([(h, "H_out"), (w, "W_out")])]
    for i, (n, axis) in enumerate([(h, "rows"), (w, "columns")]):
        _check_size(steps[i], n, p[i], d[i] * (k[i] - 1) + 1, axis)
    return LayerMath(
        (c, steps[0].value, steps[1].value), steps, _skip_warning(kind, k, s),
        window=_window(k, s, p, d) + (" ceil" if m.ceil_mode else ""),
    )


def _adaptive(m: nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d, in_shape: Shape) -> LayerMath:
    c, h, w = _spatial(m, in_shape)
    size = m.output_size if isinstance(m.output_size, tuple) else (m.output_size, m.output_size)
    oh, ow = (h if size[0] is None else size[0]), (w if size[1] is None else size[1])
    if min(oh, ow) < 1:
        raise _fail(f"adaptive pooling to {oh}x{ow} gives no output", None, "use an output size of 1 or more")
    steps = [Step("H_out", f"output_size {oh}", oh, f"from any input height ({h} here)"),
             Step("W_out", f"output_size {ow}", ow, f"from any input width ({w} here)")]
    return LayerMath((c, oh, ow), steps, window="global" if (oh, ow) == (1, 1) else f"adaptive {oh}x{ow}")


def _batchnorm(m: nn.modules.batchnorm._BatchNorm, in_shape: Shape) -> LayerMath:
    c = in_shape[0]
    if c != m.num_features:
        raise _fail(f"{type(m).__name__} expects {m.num_features} channels but its input {shape_text(in_shape)} has {c}",
                    None, f"use {type(m).__name__}({c})")
    steps = [Step("params", f"2*{c}", 2 * c if m.affine else 0, "a scale γ and a shift β per channel"
                  if m.affine else "affine=False: no parameters")]
    if m.track_running_stats:
        steps.append(Step("buffers", f"2*{c} + 1", 2 * c + 1,
                          "running mean and variance per channel and a batch counter: state, not parameters"))
    return LayerMath(in_shape, steps, mult_adds=2 * c if m.affine else 0)


def _flatten(m: nn.Flatten, in_shape: Shape) -> LayerMath:
    full = (1, *in_shape)  # the batch dimension counts in start_dim/end_dim
    start, end = m.start_dim % len(full), m.end_dim % len(full)
    if start > end:
        return LayerMath(in_shape)
    merged = full[start:end + 1]
    out = full[:start] + (math.prod(merged),) + full[end + 1:]
    return LayerMath(out[1:], [Step("features", "*".join(map(str, merged)), math.prod(merged))])


def _linear(m: nn.Linear, in_shape: Shape) -> LayerMath:
    n = in_shape[-1] if in_shape else 0
    if n != m.in_features:
        got = f"{n} features" if len(in_shape) == 1 else f"{shape_text(in_shape)}, whose last dimension is {n}"
        hint = f"Linear({n}, {m.out_features})" if len(in_shape) == 1 else \
            f"put flatten before it; flattened, {shape_text(in_shape)} gives {math.prod(in_shape)} features"
        raise _fail(f"Linear expects in_features={m.in_features} but its input has {got}", None, hint)
    params = linear_params(m.in_features, m.out_features, m.bias is not None)
    # On (H, W, C) inputs (ConvNeXt's channels-last blocks) it acts at every position: a 1x1 convolution.
    return LayerMath((*in_shape[:-1], m.out_features), [params], mult_adds=params.value * math.prod(in_shape[:-1]))


def _window(k: tuple[int, int], s: tuple[int, int], p: tuple[int, int] | str, d: tuple[int, int]) -> str:
    padding = p if isinstance(p, str) else f"p{_pair_text(p)}"
    return f"{k[0]}x{k[1]} /{_pair_text(s)} {padding}" + (f" d{_pair_text(d)}" if max(d) > 1 else "")


def layer_math(module: nn.Module, in_shape: Shape) -> LayerMath | None:
    """The arithmetic of `module` on one sample of `in_shape`; None for layers it does not know.

    Raises ArchitectureError when the layer cannot work on that shape.
    """
    # torch is imported here, not at the top: `cnnlab arith` and steps.py use the formulas above without torch
    from torch import nn

    if isinstance(module, nn.Conv2d):
        return _conv(module, in_shape)
    if isinstance(module, nn.ConvTranspose2d):
        return _conv_transpose(module, in_shape)
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        return _pool(module, in_shape, "max pooling" if isinstance(module, nn.MaxPool2d) else "average pooling")
    if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        return _adaptive(module, in_shape)
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return _batchnorm(module, in_shape)
    if isinstance(module, nn.Flatten):
        return _flatten(module, in_shape)
    if isinstance(module, nn.Linear):
        return _linear(module, in_shape)
    if isinstance(module, (nn.ReLU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.GELU, nn.Softmax, nn.ELU,
                           nn.SiLU, nn.Dropout, nn.Dropout2d, nn.Identity)):  # activations and dropout keep the shape
        return LayerMath(in_shape)
    return None


# The lectures' questions, answered directly.

def same_padding(kernel: int, stride: int = 1, dilation: int = 1, size: int | None = None) -> tuple[int, int, str]:
    """Padding (before, after) that keeps the size (stride 1) or gives ceil(size/stride) outputs, and why."""
    extent = dilation * (kernel - 1) + 1
    if stride == 1:
        total = extent - 1
        why = f"padding = ({extent} - 1)/2 = {total / 2:g}" if total % 2 == 0 else (
            f"padding = ({extent} - 1) = {total} in total: {total // 2} before and {total - total // 2} after, "
            "since an even kernel has no centre (nn.Conv2d(padding='same') does this)")
        return total // 2, total - total // 2, why
    if size is None:
        raise ValueError("with stride > 1 the padding depends on the input size; give the size")
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + extent - size, 0)
    why = (f"H_out = ceil({size}/{stride}) = {out} needs padding = ({out}-1)*{stride} + {extent} - {size} = {total} "
           f"in total: {total // 2} before and {total - total // 2} after")
    return total // 2, total - total // 2, why


def receptive_field(rf: tuple[float, float], jump: tuple[float, float], kernel: tuple[int, int],
                    stride: tuple[int, int], transposed: bool = False) -> tuple[tuple[float, float], tuple[float, float]]:
    """One layer's effect on the receptive field and the jump (the distance, in input pixels, between outputs).

    A window of k at stride s adds (k-1) input steps. A transposed convolution upsamples: each
    output reaches ceil(k/s) inputs, and outputs lie s times closer together.
    """
    if transposed:
        return ((rf[0] + (math.ceil(kernel[0] / stride[0]) - 1) * jump[0],
                 rf[1] + (math.ceil(kernel[1] / stride[1]) - 1) * jump[1]),
                (jump[0] / stride[0], jump[1] / stride[1]))
    return (rf[0] + (kernel[0] - 1) * jump[0], rf[1] + (kernel[1] - 1) * jump[1]), (jump[0] * stride[0], jump[1] * stride[1])


def size_answer(size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1,
                pool: bool = False, ceil_mode: bool = False) -> list[str]:
    """The output size of one convolution or pooling layer, worked out, with what to watch for."""
    if min(size, kernel, stride, dilation) < 1 or padding < 0:
        raise ArchitectureError("size, kernel, stride and dilation must be 1 or more, and padding 0 or more")
    if pool and padding > kernel // 2:
        raise ArchitectureError(f"pooling padding {padding} is more than half the window {kernel}; PyTorch refuses it."
                                f"\n  Fix: use --padding {kernel // 2} or less")
    step = pool_size(size, kernel, stride, padding, dilation, ceil_mode) if pool else \
        conv_size(size, kernel, stride, padding, dilation)
    lines = [str(step)]
    extent = dilation * (kernel - 1) + 1
    span = size + 2 * padding - extent
    if step.value < 1:
        lines.append(f"no output: the window spans {extent}, more than the padded input {size + 2 * padding}")
        return lines
    if dilation == 1 and not ceil_mode:
        exact = f"{1 + span / stride:g}"
        lines.append(f"the lectures' form: 1 + ({size} - {kernel} + 2*{padding})/{stride} = {exact}"
                     + ("" if span % stride == 0 else f", rounded down to {step.value}"))
    if span % stride and not ceil_mode:
        lines.append(f"the stride does not fit: the last {span % stride} row(s) and column(s) of the padded input "
                     "are never covered")
    window, strides = (extent, extent), (stride, stride)
    lines += _skip_warning("pooling", window, strides) if pool else _conv_skip_warning(window, strides)
    return lines


def padding_answer(kernel: int, stride: int = 1, dilation: int = 1, size: int | None = None) -> list[str]:
    """The padding that keeps the size (stride 1) or gives ceil(size/stride), checked on `size`."""
    if min(kernel, stride, dilation, 1 if size is None else size) < 1:
        raise ArchitectureError("kernel, stride, dilation and size must be 1 or more")
    try:
        before, after, why = same_padding(kernel, stride, dilation, size)
    except ValueError as exc:
        raise ArchitectureError(f"{exc}, e.g. --size 28") from None
    lines = [why]
    if size is not None:
        lines.append(f"check: {conv_size(size, kernel, stride, (before, after), dilation)}")
    elif before == after:
        dilated = f", dilation={dilation}" if dilation > 1 else ""
        lines.append(f"for any input W: W + 2*{before} - {dilation * (kernel - 1) + 1} + 1 = W "
                     f"(nn.Conv2d(..., {kernel}, padding={before}{dilated}) or padding='same')")
    return lines


def pool_answer(factor: int, size: int | None = None) -> list[str]:
    """A pooling that downsamples by `factor`, and the tempting one that does not."""
    if factor < 2:
        raise ArchitectureError("a downsampling factor is 2 or more")
    if size is not None and size < 1:
        raise ArchitectureError(f"--size {size}: an input is 1 pixel or more")
    lines = [f"maxpool({factor}): kernel {factor}, stride {factor} (the default stride is the kernel): windows "
             f"tile the input without gaps or overlap, so each side is divided by {factor}, rounded down"]
    if size is not None:
        step = pool_size(size, factor, factor)
        if step.value < 1:
            lines.append(f"on {size}: {step}: no output, the input is smaller than one window")
        else:
            lines.append(f"on {size}: {step}" + (f"; the last {size % factor} row(s) are dropped" if size % factor else ""))
    if factor > 2 and factor & (factor - 1) == 0:  # a power of two
        lines.append(f"or maxpool(2) {int(math.log2(factor))} times, usually with convolutions between")
    if factor > 2:
        lines.append(f"not maxpool(2,{factor}): its stride {factor} is larger than its window 2, so {factor - 2} of "
                     f"every {factor} rows and columns are never looked at")
    return lines
