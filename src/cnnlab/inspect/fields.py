"""Receptive fields through a forward pass: a TorchFunctionMode that follows every tensor.

Hooks see modules; this sees torch functions, so the field is right for branches, residual
additions, concatenations and functional pooling, not only for a plain chain of layers. It also
reports each sum of two feature tensors (ResNet's `out += identity`, MobileNet's `result += input`,
timm's `x + shortcut`), which no module hook sees, so the summary can show it as a row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from cnnlab.teach.arithmetic import as_pair, receptive_field

Field = tuple[tuple[float, float], tuple[float, float], bool]  # (receptive field, jump, global) on the input
OnSum = Callable[[tuple[torch.Tensor, torch.Tensor], Any, list[Field]], None]  # (operands, output, their fields)

# Functions with a window, and where their arguments sit: (kernel from the weight?, kernel, stride,
# dilation) positions after the input. Their module forms (nn.Conv2d, nn.MaxPool2d, ...) call them.
_WINDOWED = {
    "conv2d": ("weight", 1, 3, 5), "conv_transpose2d": ("weight", 1, 3, 7),
    "max_pool2d": ("size", 1, 2, 4), "_max_pool2d": ("size", 1, 2, 4), "max_pool2d_with_indices": ("size", 1, 2, 4),
    "avg_pool2d": ("size", 1, 2, None),
}
_ADAPTIVE = ("adaptive_avg_pool2d", "adaptive_max_pool2d", "_adaptive_max_pool2d", "adaptive_max_pool2d_with_indices")
_REDUCTIONS = ("mean", "sum", "amax", "amin", "max", "min", "logsumexp")
_SUMS = ("add", "add_", "__add__", "__iadd__", "__radd__")  # `x + y` and `x += y` arrive as add / add_


def field_text(fld: Field | None) -> str:
    """A receptive field as the table shows it: "27", "27x19", "all" (the whole input), "" (unknown)."""
    if fld is None:
        return ""
    (rh, rw), _, is_global = fld
    if is_global:
        return "all"
    return f"{rh:g}" if rh == rw else f"{rh:g}x{rw:g}"


def jump_text(fld: Field | None) -> str:
    """The distance between neighbouring outputs in input pixels: "4", "4x2"; "" when global or unknown."""
    if fld is None or fld[2]:
        return ""
    jh, jw = fld[1]
    return f"{jh:g}" if jh == jw else f"{jh:g}x{jw:g}"


def _arg(args: tuple, kwargs: dict, index: int | None, name: str, default: Any) -> Any:
    if index is not None and index < len(args):
        return args[index]
    return kwargs.get(name, default)


def _is_gate(t: torch.Tensor, fld: Field) -> bool:
    """A per-channel value computed from the whole image, broadcast over positions (N, C, 1, 1)."""
    return fld[2] and t.dim() == 4 and tuple(t.shape[-2:]) == (1, 1)


class FieldTracker(TorchFunctionMode):
    """Carries each tensor's receptive field and jump through every torch function.

    Convolutions and pooling (module or functional) grow it by their window; global pooling,
    a spatial mean and a linear layer on flat features make it "all"; any other op takes the
    widest of its inputs, which is right for activations, additions and concatenations. A channel
    gate (squeeze-and-excitation: `scale * x`, scale from global pooling) is left out, so the field
    stays the feature map's own window; `gates` counts them for the summary's note.
    """

    def __init__(self, on_sum: OnSum | None = None) -> None:
        super().__init__()
        self.known: dict[int, Field] = {}
        self.keep: list[torch.Tensor] = []  # ids stay unique only while the tensors live
        self.on_sum = on_sum
        self.gates = 0

    def _found(self, value: Any) -> list[tuple[torch.Tensor, Field]]:
        return [(t, self.known[id(t)]) for t in tree_flatten(value)[0]
                if isinstance(t, torch.Tensor) and id(t) in self.known]

    def get(self, value: Any) -> Field | None:
        """The widest field of the tensors in `value`, channel gates left out; None if none is known."""
        return self._merge(self._found(value))[0]

    @staticmethod
    def _merge(found: list[tuple[torch.Tensor, Field]]) -> tuple[Field | None, bool]:
        """(the widest field, whether a channel gate was left out of it)."""
        local = [f for t, f in found if not f[2]]
        gated = bool(local) and all(_is_gate(t, f) for t, f in found if f[2]) and len(local) < len(found)
        fields = local if gated else [f for _, f in found]
        if not fields:
            return None, False
        rf = (max(f[0][0] for f in fields), max(f[0][1] for f in fields))
        jump = (max(f[1][0] for f in fields), max(f[1][1] for f in fields))
        return (rf, jump, any(f[2] for f in fields)), gated

    def set(self, value: Any, fld: Field | None) -> None:
        if fld is None:
            return
        for t in tree_flatten(value)[0]:
            if isinstance(t, torch.Tensor):
                self.known[id(t)] = fld
                self.keep.append(t)

    def _summands(self, name: str, args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The two operands of a sum of two traced tensors of one shape (a residual addition), else None.

        A bias, a constant or a broadcast value is no branch: its operand is untraced or of another shape.
        """
        if name not in _SUMS or not args:
            return None
        a, b = args[0], _arg(args, kwargs, 1, "other", None)
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.shape != b.shape:
            return None
        return (a, b) if id(a) in self.known and id(b) in self.known else None

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        operands = self._summands(name, args, kwargs) if self.on_sum is not None else None
        branches = [self.known[id(t)] for t in operands] if operands else []  # before x += y replaces x's
        out = func(*args, **kwargs)
        if isinstance(out, (torch.Tensor, tuple, list)):
            fld, gated = self._merge(self._found((args, kwargs)))  # in place (x += y) merges into x's own field
            self.gates += gated
            if fld is not None and args and isinstance(args[0], torch.Tensor):
                fld = self._through(name, args, kwargs, fld)
            self.set(out, fld)
        if operands and self.on_sum is not None:
            self.on_sum(operands, out, branches)
        return out

    @staticmethod
    def _through(name: str, args: tuple, kwargs: dict, fld: Field) -> Field:
        rf, jump, is_global = fld
        x = args[0]
        if is_global or x.dim() != 4:
            return (rf, jump, True) if name == "linear" and x.dim() == 2 else fld
        if name in _ADAPTIVE:
            size = _arg(args, kwargs, 1, "output_size", 1)
            return (rf, jump, True) if size in (1, (1, 1), [1, 1]) else fld
        if name in _REDUCTIONS:
            dims = _arg(args, kwargs, 1, "dim", None)
            dims = {d % 4 for d in ((dims,) if isinstance(dims, int) else dims)} if dims is not None else {2, 3}
            return (rf, jump, True) if {2, 3} <= dims else fld
        if name not in _WINDOWED:
            return fld
        source, k_at, s_at, d_at = _WINDOWED[name]
        if source == "weight":
            kernel = tuple(args[1].shape[-2:]) if len(args) > 1 else tuple(kwargs["weight"].shape[-2:])
        else:
            kernel = _arg(args, kwargs, k_at, "kernel_size", 1)
        stride = _arg(args, kwargs, s_at, "stride", None if source == "size" else 1)
        stride = stride if stride not in (None, (), []) else kernel  # pooling: the stride defaults to the kernel
        dilation = as_pair(_arg(args, kwargs, d_at, "dilation", 1)) if d_at is not None else (1, 1)
        k = as_pair(kernel)
        extent = (dilation[0] * (k[0] - 1) + 1, dilation[1] * (k[1] - 1) + 1)
        rf, jump = receptive_field(rf, jump, extent, as_pair(stride), transposed=name == "conv_transpose2d")
        return rf, jump, False
