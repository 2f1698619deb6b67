"""Convolution and pooling step by step, as lectures 001 and 003 do them on the board.

`run(matrix, "maxpool(2, stride=2); pad(2); conv; conv(stride=3)", kernel=B)` applies each step
in turn; every `Trace` can list, for each output value, the window it came from and the
arithmetic that made it (`1x1 + 2x2 + 5x3 + 6x4 = 44`). With `grad`, the gradient of the last
output is carried back through every step (backpropagation by hand). The numbers come from
`cnnlab.reference`, so a trace is the tested reference computation, written out.

Steps: conv (cross-correlation, what nn.Conv2d does), convolve (kernel flipped first), maxpool,
avgpool, pad, relu. Matrices are written inline ("1 2; 3 4") or read from CSV/text files.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np

from cnnlab.teach import reference
from cnnlab.teach.arithmetic import Step, conv_size, pool_size
from cnnlab.teach.calls import Call, parse_call
from cnnlab.errors import UsageError

Args = dict[str, int | bool | None]
# Arguments each step takes, in positional order, with their defaults (a pooling stride of
# None means "the window size", as nn.MaxPool2d has it).
STEPS: dict[str, Args] = {
    "conv": {"stride": 1, "padding": 0, "dilation": 1},
    "convolve": {"stride": 1, "padding": 0, "dilation": 1},
    "maxpool": {"kernel": 2, "stride": None, "padding": 0, "dilation": 1, "ceil_mode": False},
    "avgpool": {"kernel": 2, "stride": None, "padding": 0, "ceil_mode": False},
    "pad": {"padding": 1},
    "relu": {},
}
EXAMPLE = "maxpool(2, stride=2); pad(2); conv; conv(stride=3)"
MAX_PADDING = 1_000  # more is a typo, and would ask for gigabytes of zeros
MAX_SIZE = 10_000  # kernel, stride and dilation
MAX_CELLS = 4_000_000  # values in any matrix of a chain (a 2,000 x 2,000 image)


# ----------------------------------------------------------------------------------- reading input

def _numbers(rows: list[list[str]], what: str) -> np.ndarray:
    widths = {len(row) for row in rows}
    if not rows or 0 in widths:
        raise UsageError(f"{what} is not a matrix; write rows separated by ';', e.g. \"1 2; 3 4\"")
    if len(widths) > 1:
        raise UsageError(f"the rows of {what} have different lengths ({sorted(widths)}); every row needs "
                         "as many values as the first")
    try:
        values = np.array([[float(v) for v in row] for row in rows], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{what} holds something that is not a number ({exc})") from exc
    if not np.isfinite(values).all():
        raise UsageError(f"{what} holds inf or NaN; steps need finite numbers")
    return values


def is_file(text: str | Path) -> bool:
    """Whether text names an existing file; False for text no file name could be (too long, NUL)."""
    try:
        return "\n" not in str(text) and Path(text).is_file()
    except (OSError, ValueError):
        return False


def parse_matrix(text: str | Path, files: bool = True) -> np.ndarray:
    """A float64 matrix from inline text ("1 2; 3 4", "1,2;3,4", "[[1,2],[3,4]]") or a CSV/text file.

    In a file, rows are lines and values are separated by commas, semicolons or spaces. files=False
    reads text only (the web page's: a visitor's text must not open the server's files).
    """
    source = str(text)
    path = Path(source)
    if files and is_file(source):
        try:
            content = path.read_text(encoding="utf-8-sig")  # -sig: a spreadsheet's byte-order mark
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read {path} as a text file of numbers ({exc})") from exc
        # Empty fields (a trailing comma) are dropped, as spreadsheets write them.
        rows = [[v for v in re.split(r"[\s,;]+", line.strip()) if v] for line in content.splitlines() if line.strip()]
        return _numbers(rows, str(path))
    source = source.strip()
    if source.startswith("["):
        try:
            nested = json.loads(source)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise UsageError(f"cannot read the matrix {text!r} as a nested list: {exc}") from exc
        if not isinstance(nested, list) or not all(isinstance(row, list) for row in nested):
            raise UsageError(f"{text!r} is not a list of rows, e.g. [[1, 2], [3, 4]]")
        return _numbers(nested, repr(source))
    if files and source and not re.search(r"[\s;,]", source) and re.search(r"[/\\]|\.[A-Za-z]{2,4}$", source):
        raise UsageError(f"{source} is not a file that exists (and not a matrix like \"1 2; 3 4\")")
    rows = [[v for v in re.split(r"[\s,]+", line.strip()) if v] for line in re.split(r"[;\n]", source) if line.strip()]
    return _numbers(rows, repr(source))


def _checked_int(name: str, key: str, word: str) -> int:
    low, high = (0, MAX_PADDING) if key == "padding" else (1, MAX_SIZE)
    if not re.fullmatch(r"[+-]?[0-9]+", word):
        raise UsageError(f"{name}: {key} must be a whole number, not {word[:20]!r}")
    if len(word.lstrip("+-")) > 6 or not low <= int(word) <= high:  # the length first: int() of 5,000 digits fails
        raise UsageError(f"{name}: {key} must be from {low} to {high:,}, not {word[:20]}")
    return int(word)


def parse_steps(text: str) -> list[tuple[str, Args]]:
    """'maxpool(2, stride=2); pad(2); conv' -> [(name, arguments), ...], every value checked."""
    steps = []
    for part in [p.strip() for p in re.split(r"[;\n]", text) if p.strip()]:
        try:
            call = parse_call(part.lower())
        except UsageError:  # not name(...): the message below also lists the steps there are
            call = Call("")
        if call.name not in STEPS:
            raise UsageError(f"cannot read the step {part!r}; steps are {', '.join(STEPS)}, separated by ';', "
                             f"e.g. {EXAMPLE!r}")
        name, defaults = call.name, STEPS[call.name]
        args: Args = dict(defaults)
        seen: set[str] = set()
        named = False
        for position, arg in enumerate(call.args):
            # Checked as written, not read by arg.value: digits are counted before int(); 1/0 are true/false.
            key, word = arg.key, arg.text
            named = named or key is not None
            if key is None:
                if named:
                    raise UsageError(f"{name}: a value without a name ({arg.source!r}) after named ones")
                key = list(defaults)[position] if position < len(defaults) else ""
            if key not in defaults:
                raise UsageError(f"{name} takes {', '.join(defaults) or 'no arguments'}, not {arg.source!r}")
            if key in seen:
                raise UsageError(f"{name}: {key} is given twice")
            seen.add(key)
            if isinstance(STEPS[name][key], bool):
                if word not in ("true", "false", "1", "0"):
                    raise UsageError(f"{name}: {key} is true or false, not {word!r}")
                args[key] = word in ("true", "1")
            else:
                args[key] = _checked_int(name, key, word)
        steps.append((name, args))
    if not steps:
        raise UsageError(f"no steps given; e.g. {EXAMPLE!r}")
    return steps


# --------------------------------------------------------------------------------------- printing

def number(value: float) -> str:
    """A value as a person writes it: 44, -2, 0.5, 10.25, -inf."""
    if np.isfinite(value) and float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    if np.isfinite(value) and abs(value) >= 1:  # four decimals, so 1001.75 is not shown as 1002
        return np.format_float_positional(value, precision=4, trim="-")
    return f"{value:.4g}"


def matrix_text(m: np.ndarray, indent: str = "  ") -> str:
    """Rows of right-aligned numbers."""
    cells = [[number(v) for v in row] for row in m]
    width = max(len(c) for row in cells for c in row)
    return "\n".join(indent + " ".join(c.rjust(width) for c in row) for row in cells)


def inline(m: np.ndarray) -> str:
    """A small matrix on one line, in the syntax the command reads: [1 2; 5 6]."""
    return "[" + "; ".join(" ".join(number(v) for v in row) for row in m) + "]"


# ----------------------------------------------------------------------------------------- traces

@dataclass
class Window:
    """One output value: where it is, the input values it saw, and how they were combined."""

    row: int
    col: int
    values: np.ndarray  # the window of the padded input (cut short where ceil_mode overhangs)
    arithmetic: str  # "1x1 + 2x2 + 5x3 + 6x4", "max(12, 2, 5, 21)", "(1 + 2 + 5 + 6) / 4"
    result: float
    source: tuple[int, int] | None = None  # max pooling: the input position of the maximum


@dataclass
class Trace:
    """One step: its input and output, how the size came about, and gradients when asked for."""

    name: str  # a key of STEPS
    args: Args
    input: np.ndarray
    output: np.ndarray
    kernel: np.ndarray | None = None  # as applied: already flipped for convolve
    sizes: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    indices: np.ndarray | None = None  # max pooling: flat index of each maximum in the input
    grad_output: np.ndarray | None = None
    grad_input: np.ndarray | None = None
    grad_kernel: np.ndarray | None = None  # for the kernel as given (unflipped)

    @property
    def label(self) -> str:
        """The step as written, with the arguments that differ from the defaults: maxpool(2, stride=2)."""
        first = next(iter(self.args), None) if self.name in ("maxpool", "avgpool", "pad") else None
        shown = [str(self.args[first])] if first else []
        shown += [f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in self.args.items()
                  if k != first and v != STEPS[self.name][k]]
        return f"{self.name}({', '.join(shown)})" if shown else self.name

    @property
    def stride(self) -> int:
        return int(self.args.get("stride") or self.args.get("kernel") or 1)

    @property
    def dilation(self) -> int:
        return int(self.args.get("dilation") or 1)

    @property
    def window(self) -> tuple[int, int]:
        """(KH, KW): the kernel's shape, or the pooling window's."""
        return self.kernel.shape if self.kernel is not None else (int(self.args["kernel"]),) * 2

    @property
    def padded(self) -> np.ndarray:
        """The input with its padding: zeros, or -inf for max pooling (which never wins a max)."""
        p = int(self.args.get("padding") or 0) if self.name != "pad" else 0
        return np.pad(self.input, p, constant_values=-np.inf if self.name == "maxpool" else 0.0)

    def windows(self, limit: int | None = None) -> list[Window]:
        """The first `limit` windows (all with None), in row-major order of the output."""
        if self.name not in ("conv", "convolve", "maxpool", "avgpool"):
            return []
        padded, stride, dilation = self.padded, self.stride, self.dilation
        kh, kw = self.window
        out = []
        for r, c in islice(np.ndindex(*self.output.shape), limit):
            top, left = r * stride, c * stride
            # Slicing stops at the padded input's edge, so a ceil_mode window holds only what
            # PyTorch counts.
            rows = slice(top, top + dilation * (kh - 1) + 1, dilation)
            cols = slice(left, left + dilation * (kw - 1) + 1, dilation)
            values = padded[rows, cols]
            result = self.output[r, c]
            if self.kernel is not None:
                words = " + ".join(f"{number(a)}x{number(b) if b >= 0 else '(' + number(b) + ')'}"
                                   for a, b in zip(values.ravel(), self.kernel.ravel()))
                out.append(Window(r, c, values, words, result))
            elif self.name == "maxpool":
                real = values[values > -np.inf]  # the padding's -inf is not a candidate
                words = f"max({', '.join(number(v) for v in (real if real.size else values).ravel())})"
                out.append(Window(r, c, values, words, result, divmod(int(self.indices[r, c]), self.input.shape[1])))
            else:
                words = f"({' + '.join(number(v) for v in values.ravel())}) / {values.size}"
                out.append(Window(r, c, values, words, result))
        return out


def _uncovered(trace: Trace) -> list[str]:
    """A note when the last rows or columns of the input fall in no window (padding aside)."""
    kernel, dilation, padding = trace.window, trace.dilation, int(trace.args.get("padding") or 0)
    parts = []
    for axis, name in enumerate(("row", "column")):
        reach = (trace.output.shape[axis] - 1) * trace.stride + dilation * (kernel[axis] - 1) + 1 - padding
        last = trace.input.shape[axis] - 1  # in input coordinates; only real input counts
        if reach <= last:
            parts.append(f"{name} {reach}" if reach == last else f"{name}s {reach}..{last}")
    if not parts:
        return []
    verb = "is" if len(parts) == 1 and ".." not in parts[0] else "are"
    why = ("the stride steps past them" if trace.args.get("ceil_mode")
           else "the last window would not fit, and the size formula rounds down")
    return [f"{' and '.join(parts)} of the input {verb} in no window: {why}"]


def _forward(name: str, args: Args, a: np.ndarray, kernel: np.ndarray | None) -> Trace:
    if name in ("conv", "convolve"):
        if kernel is None:
            raise UsageError(f"the step {name} needs a kernel: give --kernel, e.g. --kernel \"1 2; 3 4\"")
        used = kernel[::-1, ::-1] if name == "convolve" else kernel
        s, p, d = int(args["stride"]), int(args["padding"]), int(args["dilation"])
        trace = Trace(name, args, a, reference.correlate(a, used, s, p, d), used,
                      [conv_size(a.shape[i], used.shape[i], s, p, d, n) for i, n in enumerate(("H_out", "W_out"))])
        if name == "convolve":
            trace.notes.append("the kernel is flipped in both axes first (true convolution):\n" + matrix_text(used))
    elif name in ("maxpool", "avgpool"):
        k, p, ceil = int(args["kernel"]), int(args["padding"]), bool(args["ceil_mode"])
        s, d = int(args["stride"] or k), int(args.get("dilation") or 1)
        x = a[None, None]  # (1, 1, H, W)
        if name == "maxpool":
            values, indices = reference.max_pool2d(x, k, s, p, d, ceil)
            trace = Trace(name, args, a, values[0, 0], indices=indices[0, 0])
        else:
            trace = Trace(name, args, a, reference.avg_pool2d(x, k, s, p, ceil)[0, 0])
            if p or ceil:
                trace.notes.append("zero padding counts in the average (PyTorch's default); positions past "
                                   "the padding, where ceil_mode's last window hangs over, do not")
        trace.sizes = [pool_size(a.shape[i], k, s, p, d, ceil, n) for i, n in enumerate(("H_out", "W_out"))]
    elif name == "pad":
        p = int(args["padding"])
        frame = f"a frame of {p} zero{'s' if p != 1 else ''} around the matrix"
        trace = Trace(name, args, a, np.pad(a, p), notes=[frame])
    else:
        trace = Trace(name, args, a, np.maximum(a, 0), notes=["every negative value becomes 0"])
    if trace.sizes:
        trace.notes += _uncovered(trace)
    return trace


def _backward(trace: Trace, grad: np.ndarray) -> np.ndarray:
    """Record the gradients of one step given dL/d(its output); return dL/d(its input)."""
    trace.grad_output = grad
    a, args = trace.input, trace.args
    if trace.name in ("conv", "convolve"):
        grads = reference.conv2d_backward(grad[None, None], a[None, None], trace.kernel[None, None],
                                          int(args["stride"]), int(args["padding"]), int(args["dilation"]))
        trace.grad_input = grads.input[0, 0]
        trace.grad_kernel = grads.weight[0, 0][::-1, ::-1] if trace.name == "convolve" else grads.weight[0, 0]
    elif trace.name == "maxpool":
        trace.grad_input = reference.max_pool2d_backward(grad[None, None], trace.indices[None, None],
                                                         (1, 1, *a.shape))[0, 0]
        trace.notes.append("each window's gradient goes to the position of its maximum, all others get 0; on a tie "
                           "the first maximum in row-major order gets it (as PyTorch on the CPU); an input that is "
                           "the maximum of several windows adds up their gradients")
    elif trace.name == "avgpool":
        k = int(args["kernel"])
        trace.grad_input = reference.avg_pool2d_backward(grad[None, None], (1, 1, *a.shape), k,
                                                         int(args["stride"] or k), int(args["padding"]),
                                                         bool(args["ceil_mode"]))[0, 0]
        trace.notes.append("each window's gradient is shared equally by the positions it averaged")
    elif trace.name == "pad":
        p = int(args["padding"])
        trace.grad_input = grad[p: p + a.shape[0], p: p + a.shape[1]]
        trace.notes.append("the gradient of the padding is dropped; the rest passes back unchanged")
    else:
        trace.grad_input = grad * (a > 0)
        trace.notes.append("the gradient passes where the input was positive, and is 0 elsewhere")
    return trace.grad_input


def run(a: np.ndarray, steps: str, kernel: np.ndarray | None = None,
        grad: np.ndarray | str | None = None) -> list[Trace]:
    """Apply each step of `steps` to matrix `a` in turn.

    grad: the gradient arriving at the last output, 'ones' (the gradient of its sum) or a
    matrix of its shape; it is carried back through every step.
    """
    current = np.asarray(a, dtype=np.float64)
    if current.ndim != 2 or current.size > MAX_CELLS:
        raise UsageError(f"steps work on one matrix (2-D) of at most {MAX_CELLS:,} values, not shape {current.shape}")
    kernel = None if kernel is None else np.asarray(kernel, dtype=np.float64)
    traces: list[Trace] = []
    for name, args in parse_steps(steps):
        traces.append(_forward(name, args, current, kernel))
        current = traces[-1].output
        if current.size > MAX_CELLS:
            raise UsageError(f"after step {len(traces)} ({traces[-1].label}) the matrix is "
                             f"{current.shape[0]:,}x{current.shape[1]:,}, more than {MAX_CELLS:,} values to trace; "
                             "use less padding")
    if grad is not None:
        if isinstance(grad, str):
            if grad != "ones":
                raise UsageError(f"--grad takes 'ones' or a matrix, not {grad!r}")
            g = np.ones_like(current)
        else:
            g = np.asarray(grad, dtype=np.float64)
            if g.shape != current.shape:
                raise UsageError(f"--grad must have the output's shape {current.shape}, not {g.shape}; "
                                 "or give 'ones' for the gradient of the output's sum")
        for trace in reversed(traces):
            g = _backward(trace, g)
    return traces


def text(traces: list[Trace], limit: int = 100) -> str:
    """The whole chain as readable text: every step's windows, sums and output matrix."""
    if limit < 0:
        raise UsageError(f"the window limit must be 0 or more, not {limit}")
    lines: list[str] = []
    for index, trace in enumerate(traces, 1):
        lines.append(f"step {index}: {trace.label} on a {'x'.join(map(str, trace.input.shape))} matrix")
        shown = trace.windows(limit)
        padded = trace.padded
        if padded.shape != trace.input.shape:
            fill = "-inf, which never wins a max" if trace.name == "maxpool" else "zeros"
            lines += [f"padded with {fill}:", matrix_text(padded)]
        if trace.sizes:
            lines.append("output size: " + "; ".join(f"{s.name} = {s.formula} = {s.value}" for s in trace.sizes))
        lines += ["note: " + note for note in trace.notes]
        for w in shown:
            where = f" <- input[{w.source[0]},{w.source[1]}]" if w.source is not None else ""
            lines.append(f"  out[{w.row},{w.col}]  {inline(w.values)}  {w.arithmetic} = {number(w.result)}{where}")
        hidden = trace.output.size - len(shown) if trace.name in ("conv", "convolve", "maxpool", "avgpool") else 0
        if hidden:
            lines.append(f"  ... {hidden} more windows (--limit to see them)")
        lines += ["output:", matrix_text(trace.output)]
        if trace.grad_input is not None:
            lines += ["gradient arriving at the output (dL/dout):", matrix_text(trace.grad_output),
                      "gradient passed back to the input (dL/din):", matrix_text(trace.grad_input)]
            if trace.grad_kernel is not None:
                lines += ["gradient for the kernel (dL/dkernel):", matrix_text(trace.grad_kernel)]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
