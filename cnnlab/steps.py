"""Convolution and pooling step by step, as lectures 001 and 003 do them on the board.

`run(matrix, "maxpool(2, stride=2); pad(2); conv; conv(stride=3)", kernel=B)` applies each step
in turn and keeps, for every output value, the window it came from and the arithmetic that made
it (`1x1 + 2x2 + 5x3 + 6x4 = 44`). The numbers come from `cnnlab.reference`, so a trace is the
same computation as the tested reference ops, written out. `text(traces)` prints it.

Steps: conv (cross-correlation, what nn.Conv2d does), convolve (kernel flipped first), maxpool,
avgpool, pad, relu. Matrices are written inline ("1 2; 3 4") or read from CSV/text files.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import reference
from .arithmetic import Step, conv_size, pool_size
from .errors import UsageError

# Arguments each step takes, in positional order, with their defaults.
STEPS: dict[str, dict[str, int | bool]] = {
    "conv": {"stride": 1, "padding": 0, "dilation": 1},
    "convolve": {"stride": 1, "padding": 0, "dilation": 1},
    "maxpool": {"kernel": 2, "stride": 0, "padding": 0, "dilation": 1, "ceil_mode": False},
    "avgpool": {"kernel": 2, "stride": 0, "padding": 0, "ceil_mode": False},
    "pad": {"padding": 1},
    "relu": {},
}
EXAMPLE = "maxpool(2, stride=2); pad(2); conv; conv(stride=3)"


def parse_matrix(text: str | Path) -> np.ndarray:
    """A matrix from inline text ("1 2; 3 4", "1,2;3,4", "[[1,2],[3,4]]") or a CSV/text file."""
    source = str(text)
    path = Path(source)
    if "\n" not in source and ";" not in source and path.suffix and path.is_file():
        source = path.read_text()
    source = source.strip()
    if source.startswith("["):
        try:
            rows = json.loads(source)
        except json.JSONDecodeError as exc:
            raise UsageError(f"cannot read the matrix {text!r} as a nested list: {exc}") from exc
    else:
        rows = [re.split(r"[\s,]+", line.strip()) for line in re.split(r"[;\n]", source) if line.strip()]
    if not rows or not all(isinstance(row, list) and row for row in rows):
        raise UsageError(f"{text!r} is not a matrix; write rows separated by ';', e.g. \"1 2; 3 4\"")
    widths = {len(row) for row in rows}
    if len(widths) > 1:
        raise UsageError(f"the rows of {text!r} have different lengths ({sorted(widths)}); every row needs "
                         "as many values as the first")
    try:
        values = np.array([[float(v) for v in row] for row in rows])
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{text!r} holds something that is not a number ({exc})") from exc
    if not np.isfinite(values).all():
        raise UsageError(f"{text!r} holds inf or NaN; steps need finite numbers")
    return values.astype(np.int64) if np.all(values == np.round(values)) else values


def number(value: float) -> str:
    """A value as a person writes it: 44, -2, 0.5, 10.25."""
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.4g}"


def matrix_text(m: np.ndarray, indent: str = "  ") -> str:
    """Rows of right-aligned numbers."""
    cells = [[number(v) for v in row] for row in m]
    width = max(len(c) for row in cells for c in row)
    return "\n".join(indent + " ".join(c.rjust(width) for c in row) for row in cells)


def inline(m: np.ndarray) -> str:
    """A small matrix on one line, in the syntax the command reads: [1 2; 5 6]."""
    return "[" + "; ".join(" ".join(number(v) for v in row) for row in m) + "]"


@dataclass
class Window:
    """One output value: where it is, the input values it saw, and how they were combined."""

    row: int
    col: int
    values: np.ndarray  # (KH, KW) the window of the (padded) input
    arithmetic: str  # "1x1 + 2x2 + 5x3 + 6x4" or "max(...)"
    result: float
    source: tuple[int, int] | None = None  # max pooling: the input position of the maximum


@dataclass
class Trace:
    """One step: its input, every window, its output, and the gradient if one was asked for."""

    step: str  # e.g. "conv(stride=3)"
    input: np.ndarray
    padded: np.ndarray  # the input after zero padding (the same array when there is none)
    sizes: list[Step]  # how the output height and width come about
    windows: list[Window]
    output: np.ndarray
    notes: list[str] = field(default_factory=list)
    grad_output: np.ndarray | None = None
    grad_input: np.ndarray | None = None
    grad_kernel: np.ndarray | None = None


def parse_steps(text: str) -> list[tuple[str, dict[str, int | bool]]]:
    """'maxpool(2, stride=2); pad(2); conv' -> [(name, arguments), ...]."""
    steps = []
    for part in [p for p in re.split(r"[;\n]|\s*->\s*", text) if p.strip()]:
        m = re.fullmatch(r"\s*([a-z_]+)\s*(?:\((.*)\))?\s*", part.strip().lower())
        if not m or m.group(1) not in STEPS:
            raise UsageError(f"cannot read the step {part.strip()!r}; steps are {', '.join(STEPS)}, "
                             f"separated by ';', e.g. {EXAMPLE!r}")
        name, defaults = m.group(1), STEPS[m.group(1)]
        args: dict[str, int | bool] = dict(defaults)
        body = (m.group(2) or "").strip()
        for position, item in enumerate(body.split(",") if body else []):
            key, eq, value = item.partition("=")
            key = key.strip() if eq else (list(defaults)[position] if position < len(defaults) else "")
            if key not in defaults:
                raise UsageError(f"{name} takes {', '.join(defaults) or 'no arguments'}, not {item.strip()!r}")
            word = (value if eq else item).strip()
            if isinstance(defaults[key], bool):
                args[key] = word in ("true", "1", "yes")
            elif word.isdigit():
                args[key] = int(word)
            else:
                raise UsageError(f"{name}: {key} must be a whole number >= 0, not {word!r}")
        steps.append((name, args))
    if not steps:
        raise UsageError(f"no steps given; e.g. {EXAMPLE!r}")
    return steps


def _label(name: str, args: dict[str, int | bool]) -> str:
    # A pooling window or a padding width reads best first and always shown: maxpool(2, stride=2), pad(2).
    first = next(iter(args), None) if name in ("maxpool", "avgpool", "pad") else None
    changed = [f"{k}={v}" for k, v in args.items() if v != STEPS[name][k] and k != first]
    if first is not None:
        changed.insert(0, str(args[first]))
    return f"{name}({', '.join(changed)})" if changed else name


def _sizes(kind: str, shape: tuple[int, int], kernel: tuple[int, int], stride: int, padding: int,
           dilation: int, ceil_mode: bool = False) -> list[Step]:
    if kind == "pool":
        return [pool_size(shape[a], kernel[a], stride, padding, dilation, ceil_mode, name)
                for a, name in enumerate(("H_out", "W_out"))]
    return [conv_size(shape[a], kernel[a], stride, padding, dilation, name)
            for a, name in enumerate(("H_out", "W_out"))]


def _uncovered(padded_shape: tuple[int, int], output_shape: tuple[int, int], kernel: tuple[int, int],
               stride: int, dilation: int, padded: bool) -> list[str]:
    """A note when the last rows or columns of the (padded) input fall in no window."""
    words = []
    for axis, name in enumerate(("row", "column")):
        reach = (output_shape[axis] - 1) * stride + dilation * (kernel[axis] - 1) + 1
        last = padded_shape[axis] - 1
        if reach <= last:
            words.append(f"{name} {reach}" if reach == last else f"{name}s {reach}..{last}")
    if not words:
        return []
    return [f"{' and '.join(words)} of the {'padded ' if padded else ''}input are in no window: the last window "
            "would not fit, and the size formula rounds down"]


def _products(values: np.ndarray, kernel: np.ndarray) -> str:
    return " + ".join(f"{number(a)}x{number(b) if b >= 0 else '(' + number(b) + ')'}"
                      for a, b in zip(values.ravel(), kernel.ravel()))


def _window_values(padded: np.ndarray, row: int, col: int, kernel: tuple[int, int], stride: int,
                   dilation: int) -> np.ndarray:
    top, left = row * stride, col * stride
    return padded[top: top + dilation * (kernel[0] - 1) + 1: dilation,
                  left: left + dilation * (kernel[1] - 1) + 1: dilation]


def conv(a: np.ndarray, kernel: np.ndarray, stride: int = 1, padding: int = 0, dilation: int = 1,
         flip: bool = False, grad: np.ndarray | None = None) -> Trace:
    """Trace a cross-correlation (or, with flip, a true convolution) of matrix a with kernel."""
    used = kernel[::-1, ::-1] if flip else kernel
    output = reference.correlate(a, used, stride, padding, dilation)
    padded = np.pad(a, padding)
    windows = []
    for r, c in np.ndindex(*output.shape):
        values = _window_values(padded, r, c, used.shape, stride, dilation)
        windows.append(Window(r, c, values, _products(values, used), output[r, c]))
    label = _label("convolve" if flip else "conv", {"stride": stride, "padding": padding, "dilation": dilation})
    notes = ["the kernel is flipped in both axes first (true convolution):\n" + matrix_text(used)] if flip else []
    notes += _uncovered(padded.shape, output.shape, used.shape, stride, dilation, padding > 0)
    trace = Trace(label, a, padded, _sizes("conv", a.shape, kernel.shape, stride, padding, dilation),
                  windows, output, notes)
    if grad is not None:
        grads = reference.conv2d_backward(_grad_for(grad, output)[None, None].astype(float), a[None, None].astype(float),
                                          used[None, None].astype(float), stride, padding, dilation)
        trace.grad_output = _grad_for(grad, output)
        trace.grad_input = grads.input[0, 0]
        trace.grad_kernel = grads.weight[0, 0][::-1, ::-1] if flip else grads.weight[0, 0]
    return trace


def pool(a: np.ndarray, kernel: int = 2, stride: int | None = None, padding: int = 0, dilation: int = 1,
         ceil_mode: bool = False, mode: str = "max", grad: np.ndarray | None = None) -> Trace:
    """Trace max or average pooling of matrix a; with grad, show where the gradient goes."""
    stride = stride or kernel
    size = (kernel, kernel)
    x = a[None, None].astype(float)
    if mode == "max":
        out, indices = reference.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode)
        fill = -np.inf
    else:
        out = reference.avg_pool2d(x, kernel, stride, padding, ceil_mode)
        fill = 0.0
    output = out[0, 0]
    # Pad far enough for ceil_mode's last window; those positions are never counted.
    padded = np.pad(a.astype(float), ((padding, padding + kernel * dilation), (padding, padding + kernel * dilation)),
                    constant_values=fill)
    windows = []
    for r, c in np.ndindex(*output.shape):
        values = _window_values(padded, r, c, size, stride, dilation)
        shown = values[np.isfinite(values)] if mode == "max" else values
        if mode == "max":
            source = divmod(int(indices[0, 0, r, c]), a.shape[1])
            words = f"max({', '.join(number(v) for v in shown.ravel())})"
            windows.append(Window(r, c, values, words, output[r, c], source))
        else:
            words = f"({' + '.join(number(v) for v in values.ravel())}) / {number(values.size)}"
            windows.append(Window(r, c, values, words, output[r, c]))
    name = "maxpool" if mode == "max" else "avgpool"
    args = {"kernel": kernel, "stride": stride, "padding": padding, "ceil_mode": ceil_mode}
    if mode == "max":
        args["dilation"] = dilation
    notes = _uncovered((a.shape[0] + 2 * padding, a.shape[1] + 2 * padding), output.shape, size, stride, dilation,
                       padding > 0)
    if mode == "avg" and (padding or ceil_mode):
        notes.append("windows that reach into the padding divide by the positions counted as PyTorch does "
                     "(zero padding counts, ceil_mode's overhang does not); the numbers are reference.avg_pool2d's")
    trace = Trace(_label(name, args), a, padded[: a.shape[0] + 2 * padding, : a.shape[1] + 2 * padding],
                  _sizes("pool", a.shape, size, stride, padding, dilation, ceil_mode), windows, output, notes)
    if grad is not None:
        g = _grad_for(grad, output).astype(float)
        trace.grad_output = g
        if mode == "max":
            trace.grad_input = reference.max_pool2d_backward(g[None, None], indices, x.shape)[0, 0]
            trace.notes.append("each window's gradient goes to the position of its maximum, all others get 0; "
                               "on a tie the first maximum in row-major order gets it (as PyTorch on the CPU); "
                               "an input that is the maximum of several windows adds up their gradients")
        else:
            trace.grad_input = reference.avg_pool2d_backward(g[None, None], x.shape, kernel, stride, padding,
                                                             ceil_mode)[0, 0]
            trace.notes.append("each window's gradient is shared equally by the positions it averaged")
    return trace


def _grad_for(grad: np.ndarray | str, output: np.ndarray) -> np.ndarray:
    """The upstream gradient: 'ones' (the gradient of sum(output)) or a matrix of the output's shape."""
    if isinstance(grad, str):
        return np.ones_like(output, dtype=np.int64)
    if grad.shape != output.shape:
        raise UsageError(f"--grad must have the output's shape {output.shape}, not {grad.shape}; "
                         "or give 'ones' for the gradient of the output's sum")
    return grad


def run(a: np.ndarray, steps: str, kernel: np.ndarray | None = None,
        grad: np.ndarray | str | None = None) -> list[Trace]:
    """Apply each step of `steps` to matrix `a` in turn; grad traces the gradient of the last step."""
    parsed = parse_steps(steps)
    traces: list[Trace] = []
    current = np.asarray(a)
    if current.ndim != 2:
        raise UsageError(f"steps work on one matrix (2-D), not shape {current.shape}")
    for index, (name, args) in enumerate(parsed):
        last_grad = grad if index == len(parsed) - 1 else None
        if name in ("conv", "convolve"):
            if kernel is None:
                raise UsageError(f"the step {name} needs a kernel: give --kernel, e.g. --kernel \"1 2; 3 4\"")
            trace = conv(current, kernel, int(args["stride"]), int(args["padding"]), int(args["dilation"]),
                         flip=name == "convolve", grad=last_grad)
        elif name in ("maxpool", "avgpool"):
            trace = pool(current, int(args["kernel"]), int(args["stride"]) or None, int(args["padding"]),
                         int(args.get("dilation", 1)), bool(args["ceil_mode"]), name[:3], last_grad)
        elif name == "pad":
            p = int(args["padding"])
            padded = np.pad(current, p)
            trace = Trace(_label(name, args), current, padded, [], [], padded,
                          [f"a frame of {p} zero{'s' if p != 1 else ''} around the matrix"])
        else:
            out = np.maximum(current, 0)
            trace = Trace(name, current, current, [], [], out, ["every negative value becomes 0"])
        traces.append(trace)
        current = trace.output
    return traces


def _size_line(trace: Trace) -> str:
    return "; ".join(f"{s.name} = {s.formula} = {s.value}" for s in trace.sizes)


def text(traces: list[Trace], limit: int = 100) -> str:
    """The whole chain as readable text: every step's windows, sums and output matrix."""
    lines: list[str] = []
    for number_, trace in enumerate(traces, 1):
        shape = "x".join(map(str, trace.input.shape))
        lines.append(f"step {number_}: {trace.step} on a {shape} matrix")
        if trace.padded.shape != trace.input.shape and trace.windows:
            fill = "-inf, which never wins a max" if np.isneginf(trace.padded).any() else "zeros"
            lines += [f"padded with {fill}:", matrix_text(trace.padded)]
        if trace.sizes:
            lines.append("output size: " + _size_line(trace))
        for note in trace.notes:
            lines.append("note: " + note)
        for w in trace.windows[:limit]:
            where = f" <- input[{w.source[0]},{w.source[1]}]" if w.source is not None else ""
            lines.append(f"  out[{w.row},{w.col}]  {inline(w.values)}  "
                         f"{w.arithmetic} = {number(w.result)}{where}")
        if len(trace.windows) > limit:
            lines.append(f"  ... {len(trace.windows) - limit} more windows (raise the limit to see them)")
        lines += ["output:", matrix_text(trace.output)]
        if trace.grad_input is not None:
            lines += ["gradient arriving at the output (dL/dout):", matrix_text(trace.grad_output),
                      "gradient passed back to the input (dL/din):", matrix_text(trace.grad_input)]
            if trace.grad_kernel is not None:
                lines += ["gradient for the kernel (dL/dkernel):", matrix_text(trace.grad_kernel)]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
