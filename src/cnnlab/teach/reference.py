"""Convolution and pooling in NumPy, forward and backward: the readable definition of what
`nn.Conv2d`, `nn.MaxPool2d` and `nn.AvgPool2d` compute.

Arrays are NCHW like PyTorch's: inputs (N, C, H, W), weights (O, C, KH, KW).

Two words that lectures (and lecture 001's formula) mix up:

- **cross-correlation** slides the kernel as it is: out[i, j] = sum_k,l A[i+k, j+l] * B[k, l].
  This is what `nn.Conv2d` computes and what lecture 001's worked example (1x1 + 2x2 + 5x3 + 6x4
  = 44) does. `conv2d` and `correlate` here compute it.
- **convolution** in the mathematical sense flips the kernel first:
  out[i, j] = sum_k,l A[i-k, j-l] * B[k, l]. `convolve` computes it. For a symmetric kernel (a
  box blur, a Gaussian) the two agree; for Sobel they differ in sign.

How it is vectorized, with no Python loop over pixels: `_windows` views the padded input as one
(KH, KW) window per output position (NumPy's sliding_window_view: no copy), and the forward pass
is one dot product of every window with every filter (np.tensordot), which is the picture in
the lectures. The backward pass for the input runs the other way, one kernel position ("tap")
at a time: tap (i, j) touched one strided slice of the input, and that slice gets the output
gradient times the kernel value at (i, j) added back, so the loop has KH*KW turns.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from cnnlab.teach.arithmetic import as_pair, conv_size, pool_size
from cnnlab.errors import UsageError

Pair = tuple[int, int]
IntOrPair = int | tuple[int, int]


class ConvGrads(NamedTuple):
    """Gradients of a loss with respect to a convolution's input, weight and bias."""

    input: np.ndarray  # (N, C, H, W)
    weight: np.ndarray  # (O, C, KH, KW)
    bias: np.ndarray  # (O,)


def _tap(padded: np.ndarray, i: int, j: int, out_hw: Pair, stride: Pair, dilation: Pair) -> np.ndarray:
    """The input values kernel position (i, j) meets at every output position: (N, C, OH, OW).

    Output pixel (oh, ow) sees padded[oh*sh + i*dh, ow*sw + j*dw] at kernel position (i, j).
    """
    top, left = i * dilation[0], j * dilation[1]
    return padded[:, :, top: top + stride[0] * (out_hw[0] - 1) + 1: stride[0],
                  left: left + stride[1] * (out_hw[1] - 1) + 1: stride[1]]


def _windows(padded: np.ndarray, kernel: Pair, out_hw: Pair, stride: Pair, dilation: Pair) -> np.ndarray:
    """Every window the kernel covers, as a view: (N, C, OH, OW, KH, KW)."""
    extent = tuple(dilation[a] * (kernel[a] - 1) + 1 for a in range(2))
    view = sliding_window_view(padded, extent, axis=(2, 3))  # (N, C, H', W', extent_h, extent_w)
    return view[:, :, : stride[0] * (out_hw[0] - 1) + 1: stride[0], : stride[1] * (out_hw[1] - 1) + 1: stride[1],
                ::dilation[0], ::dilation[1]]


def _check_4d(name: str, array: np.ndarray) -> None:
    if array.ndim != 4:
        raise UsageError(f"{name} must be 4-D (N, C, H, W), got shape {array.shape}; "
                         "for one matrix use correlate()/convolve() or add the axes with a[None, None]")


def _conv_geometry(x_shape: tuple[int, ...], w_shape: tuple[int, ...], stride: Pair, padding: Pair,
                   dilation: Pair) -> Pair:
    """Output (OH, OW) of a convolution, with the errors nn.Conv2d would raise, in words."""
    if x_shape[1] != w_shape[1]:
        raise UsageError(f"the input has {x_shape[1]} channels but the weight expects {w_shape[1]} "
                         f"(weight shape {w_shape} is (out, in, KH, KW))")
    if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        raise UsageError(f"stride and dilation must be >= 1 and padding >= 0, got stride={stride}, "
                         f"dilation={dilation}, padding={padding}")
    out = tuple(conv_size(x_shape[2 + a], w_shape[2 + a], stride[a], padding[a], dilation[a]).value
                for a in range(2))
    if min(out) < 1:
        raise UsageError(f"a {w_shape[2]}x{w_shape[3]} kernel (dilation {dilation}) does not fit the "
                         f"{x_shape[2]}x{x_shape[3]} input with padding {padding}; pad more or use a smaller kernel")
    return out  # type: ignore[return-value]


def _pad(x: np.ndarray, before: Pair, after: Pair | None = None, value: float = 0.0) -> np.ndarray:
    after = before if after is None else after
    return np.pad(x, ((0, 0), (0, 0), (before[0], after[0]), (before[1], after[1])), constant_values=value)


def conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None, stride: IntOrPair = 1,
           padding: IntOrPair = 0, dilation: IntOrPair = 1) -> np.ndarray:
    """Cross-correlation with zero padding, exactly as `torch.nn.functional.conv2d` (groups=1).

    x (N, C, H, W), weight (O, C, KH, KW), bias (O,) -> (N, O, OH, OW).
    """
    _check_4d("x", x)
    _check_4d("weight", weight)
    stride, padding, dilation = as_pair(stride), as_pair(padding), as_pair(dilation)
    out_hw = _conv_geometry(x.shape, weight.shape, stride, padding, dilation)
    padded = _pad(x, padding)  # (N, C, H + 2p, W + 2p)
    windows = _windows(padded, weight.shape[2:], out_hw, stride, dilation)  # (N, C, OH, OW, KH, KW)
    # out[n, o, oh, ow] = sum over c, i, j of windows[n, c, oh, ow, i, j] * weight[o, c, i, j]
    out = np.tensordot(weight, windows, axes=([1, 2, 3], [1, 4, 5]))  # (O, N, OH, OW)
    out = out.transpose(1, 0, 2, 3)  # (N, O, OH, OW)
    if bias is not None:
        out = out + bias[None, :, None, None]
    return out


def conv2d_backward(grad_out: np.ndarray, x: np.ndarray, weight: np.ndarray, stride: IntOrPair = 1,
                    padding: IntOrPair = 0, dilation: IntOrPair = 1) -> ConvGrads:
    """Gradients of `conv2d` given dL/d(output) (N, O, OH, OW).

    dL/dweight[o, c, i, j] = sum over n, oh, ow of grad_out[n, o, oh, ow] * (tap (i, j) of x)
    dL/dx: each output gradient flows back to every input pixel it was computed from,
           weighted by the kernel value that multiplied it (a "full" correlation with the
           flipped kernel, written here as the tap loop run backwards).
    dL/dbias[o] = sum of grad_out over n, oh, ow.
    """
    stride, padding, dilation = as_pair(stride), as_pair(padding), as_pair(dilation)
    out_hw = grad_out.shape[2:]
    padded = _pad(x, padding)  # (N, C, H + 2p, W + 2p)
    grad_padded = np.zeros_like(padded, dtype=np.result_type(grad_out, x))
    windows = _windows(padded, weight.shape[2:], out_hw, stride, dilation)  # (N, C, OH, OW, KH, KW)
    grad_weight = np.tensordot(grad_out, windows, axes=([0, 2, 3], [0, 2, 3]))  # (O, C, KH, KW)
    for i in range(weight.shape[2]):
        for j in range(weight.shape[3]):
            # The slice is a view into grad_padded: += adds into the right input pixels.
            share = np.tensordot(grad_out, weight[:, :, i, j], axes=([1], [0]))  # (N, OH, OW, C)
            _tap(grad_padded, i, j, out_hw, stride, dilation)[...] += share.transpose(0, 3, 1, 2)
    height, width = x.shape[2:]
    grad_input = grad_padded[:, :, padding[0]: padding[0] + height, padding[1]: padding[1] + width]
    return ConvGrads(grad_input, grad_weight, grad_out.sum(axis=(0, 2, 3)))


def correlate(a: np.ndarray, b: np.ndarray, stride: IntOrPair = 1, padding: IntOrPair = 0,
              dilation: IntOrPair = 1) -> np.ndarray:
    """Cross-correlation of two matrices (what nn.Conv2d and lecture 001's example compute)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim != 2 or b.ndim != 2:
        raise UsageError(f"correlate takes two matrices, got shapes {a.shape} and {b.shape}")
    return conv2d(a[None, None], b[None, None], None, stride, padding, dilation)[0, 0]


def convolve(a: np.ndarray, b: np.ndarray, stride: IntOrPair = 1, padding: IntOrPair = 0,
             dilation: IntOrPair = 1) -> np.ndarray:
    """True convolution of two matrices: the kernel flipped in both axes, then correlated."""
    return correlate(a, np.asarray(b)[::-1, ::-1], stride, padding, dilation)


# ----------------------------------------------------------------------------------------- pooling

def _pool_geometry(shape: tuple[int, ...], kernel: Pair, stride: Pair, padding: Pair, dilation: Pair,
                   ceil_mode: bool) -> tuple[Pair, Pair]:
    """Output (OH, OW), and the extra bottom/right padding ceil_mode's last window needs."""
    if min(kernel) < 1 or min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        raise UsageError(f"pooling needs kernel, stride, dilation >= 1 and padding >= 0, got "
                         f"kernel={kernel}, stride={stride}, dilation={dilation}, padding={padding}")
    if any(2 * p > k for p, k in zip(padding, kernel)):
        raise UsageError(f"padding {padding} is more than half the pooling window {kernel}; "
                         "PyTorch refuses it, since a window could then hold only padding")
    out = tuple(pool_size(shape[2 + a], kernel[a], stride[a], padding[a], dilation[a], ceil_mode).value
                for a in range(2))
    if min(out) < 1:
        raise UsageError(f"a {kernel[0]}x{kernel[1]} pooling window does not fit the "
                         f"{shape[2]}x{shape[3]} input; pad it or pool less")
    for a in range(2):
        # With dilation, a window's taps can all land in the padding (PyTorch then returns -inf
        # and an index outside the input); refuse that instead.
        taps = np.arange(out[a])[:, None] * stride[a] + dilation[a] * np.arange(kernel[a])  # padded coordinates
        inside = (taps >= padding[a]) & (taps < padding[a] + shape[2 + a])
        if not inside.any(axis=1).all():
            raise UsageError(f"with dilation {dilation[a]} and padding {padding[a]}, a {kernel[a]}-wide pooling "
                             f"window sees only padding along {'HW'[a]}; use less padding or less dilation")
    extra = tuple(max(0, (out[a] - 1) * stride[a] + dilation[a] * (kernel[a] - 1) + 1
                      - (shape[2 + a] + 2 * padding[a])) for a in range(2))
    return out, extra  # type: ignore[return-value]


def max_pool2d(x: np.ndarray, kernel_size: IntOrPair, stride: IntOrPair | None = None,
               padding: IntOrPair = 0, dilation: IntOrPair = 1,
               ceil_mode: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Max pooling as `F.max_pool2d(..., return_indices=True)`: (values, indices), both (N, C, OH, OW).

    indices are flat positions h * W + w in each input channel, as PyTorch returns them.
    Ties: the first maximum in row-major order inside the window wins (np.argmax), which is
    what PyTorch's CPU kernel does. A NaN counts as the maximum, and of several NaNs the last
    wins, as on PyTorch's CPU. Padding is never chosen, even where every input is -inf.
    """
    _check_4d("x", x)
    kernel = as_pair(kernel_size)
    stride = kernel if stride is None else as_pair(stride)
    padding, dilation = as_pair(padding), as_pair(dilation)
    out_hw, extra = _pool_geometry(x.shape, kernel, stride, padding, dilation, ceil_mode)
    # Padding with -inf never wins a window, so padded positions are never chosen.
    padded = _pad(x.astype(np.result_type(x, np.float32)), padding,
                  (padding[0] + extra[0], padding[1] + extra[1]), -np.inf)
    windows = _windows(padded, kernel, out_hw, stride, dilation)  # (N, C, OH, OW, KH, KW)
    windows = windows.reshape(*windows.shape[:4], -1)  # (N, C, OH, OW, KH*KW), row-major in the window
    best = windows.argmax(axis=-1)  # (N, C, OH, OW), index of the tap
    if max(padding) > 0 and np.isneginf(x).any():
        # Padding can only win where every real value of a window is -inf too; PyTorch then
        # keeps the window's first real position. Which taps are real input: (OH, OW, KH*KW).
        inside = _pad(np.ones((1, 1, *x.shape[2:]), dtype=bool), padding,
                      (padding[0] + extra[0], padding[1] + extra[1]), False)
        inside = _windows(inside, kernel, out_hw, stride, dilation).reshape(*out_hw, -1)
        best = np.where(np.take_along_axis(inside[None, None], best[..., None], axis=-1)[..., 0],
                        best, inside.argmax(axis=-1))
    if np.isnan(x).any():
        nan = np.isnan(windows)
        last_nan = nan.shape[-1] - 1 - nan[..., ::-1].argmax(axis=-1)
        best = np.where(nan.any(axis=-1), last_nan, best)
    values = np.take_along_axis(windows, best[..., None], axis=-1)[..., 0]
    tap_row, tap_col = np.divmod(best, kernel[1])
    rows = np.arange(out_hw[0])[:, None] * stride[0] - padding[0] + tap_row * dilation[0]
    cols = np.arange(out_hw[1])[None, :] * stride[1] - padding[1] + tap_col * dilation[1]
    return values.astype(x.dtype, copy=False), rows * x.shape[3] + cols


def max_pool2d_backward(grad_out: np.ndarray, indices: np.ndarray, input_shape: tuple[int, ...]) -> np.ndarray:
    """dL/dx of max pooling: each output's gradient goes to the one input that was the maximum.

    Every other input in the window gets 0. Where windows overlap (stride < kernel), an input
    that is the maximum of several windows receives the sum of their gradients.
    """
    n, c, h, w = input_shape
    grad_input = np.zeros((n, c, h * w), dtype=grad_out.dtype)
    batch = np.arange(n)[:, None, None, None]
    channel = np.arange(c)[None, :, None, None]
    # add.at, unlike +=, adds repeated indices once per occurrence.
    np.add.at(grad_input, (batch, channel, indices), grad_out)
    return grad_input.reshape(n, c, h, w)


def _avg_divisors(shape: tuple[int, ...], kernel: Pair, stride: Pair, padding: Pair, extra: Pair,
                  out_hw: Pair, count_include_pad: bool) -> np.ndarray:
    """How many positions each window averages over: (OH, OW).

    PyTorch counts zero padding (if count_include_pad) but never the extra positions that
    ceil_mode's last window hangs over; a mask of ones counted like the input gives exactly that.
    """
    h, w = shape[2:]
    if count_include_pad:
        mask = np.ones((1, 1, h + 2 * padding[0], w + 2 * padding[1]))
        mask = _pad(mask, (0, 0), extra)
    else:
        mask = _pad(np.ones((1, 1, h, w)), padding, (padding[0] + extra[0], padding[1] + extra[1]))
    return _windows(mask, kernel, out_hw, stride, (1, 1)).sum(axis=(-2, -1))[0, 0]  # (OH, OW)


def avg_pool2d(x: np.ndarray, kernel_size: IntOrPair, stride: IntOrPair | None = None,
               padding: IntOrPair = 0, ceil_mode: bool = False, count_include_pad: bool = True) -> np.ndarray:
    """Average pooling as `F.avg_pool2d` (its defaults: zero padding counts in the average)."""
    _check_4d("x", x)
    kernel = as_pair(kernel_size)
    stride = kernel if stride is None else as_pair(stride)
    padding = as_pair(padding)
    out_hw, extra = _pool_geometry(x.shape, kernel, stride, padding, (1, 1), ceil_mode)
    padded = _pad(x, padding, (padding[0] + extra[0], padding[1] + extra[1]))
    total = _windows(padded, kernel, out_hw, stride, (1, 1)).sum(axis=(-2, -1))  # (N, C, OH, OW)
    return total / _avg_divisors(x.shape, kernel, stride, padding, extra, out_hw, count_include_pad)


def avg_pool2d_backward(grad_out: np.ndarray, input_shape: tuple[int, ...], kernel_size: IntOrPair,
                        stride: IntOrPair | None = None, padding: IntOrPair = 0, ceil_mode: bool = False,
                        count_include_pad: bool = True) -> np.ndarray:
    """dL/dx of average pooling: each output's gradient is shared equally by its window."""
    kernel = as_pair(kernel_size)
    stride = kernel if stride is None else as_pair(stride)
    padding = as_pair(padding)
    out_hw, extra = _pool_geometry(input_shape, kernel, stride, padding, (1, 1), ceil_mode)
    share = grad_out / _avg_divisors(input_shape, kernel, stride, padding, extra, out_hw, count_include_pad)
    n, c, h, w = input_shape
    grad_padded = np.zeros((n, c, h + 2 * padding[0] + extra[0], w + 2 * padding[1] + extra[1]), dtype=share.dtype)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            _tap(grad_padded, i, j, out_hw, stride, (1, 1))[...] += share
    return grad_padded[:, :, padding[0]: padding[0] + h, padding[1]: padding[1] + w]
