"""The spec language: a CNN in one line, built into an nn.Sequential.

    conv(64,3) maxpool(2) relu conv(128,3) maxpool(2) relu flatten linear(200) relu linear(10)

Layers are separated by spaces; arguments are positional (in the order of `KINDS`) or `key=value`.
Values are integers, floats, `true`/`false`, words (`padding=same`) or pairs (`kernel=3x5`).
`in_channels` and `in_features` are inferred from the input shape; when a spec states them
(`conv(64,3,in=1)`, `linear(3200,200)`) they are checked. A spec prints back to its own text.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import tomllib
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from cnnlab.teach.arithmetic import LayerMath, Shape, layer_math, same_padding, shape_text
from cnnlab.teach.calls import Value, parse_call
from cnnlab.errors import ArchitectureError, ArchitectureWarning, ModelError, UsageError


@dataclass(frozen=True)
class Kind:
    """A layer kind: its arguments in positional order, their defaults, and the required ones."""

    name: str
    args: tuple[str, ...] = ()
    defaults: tuple[tuple[str, Value | None], ...] = ()
    required: int = 0  # the first `required` arguments have no default

    def resolve(self, given: list[tuple[str | None, Value]]) -> dict[str, Any]:
        values: dict[str, Any] = dict(self.defaults)
        seen: set[str] = set()
        order = ("in", "out") if self.name == "linear" and sum(k is None for k, _ in given) == 2 else self.args
        for i, (key, value) in enumerate(given):
            if key is None:
                if i >= len(order):
                    raise UsageError(f"{self.name} takes at most {len(order)} positional arguments ({', '.join(order)})")
                key = order[i]
            elif key not in self.args:
                close = difflib.get_close_matches(key, self.args, n=1)
                hint = f" (did you mean {close[0]}?)" if close else ""
                raise UsageError(f"{self.name} has no argument {key!r}{hint}; it takes {', '.join(self.args) or 'none'}")
            if key in seen:
                raise UsageError(f"{self.name}: {key} is given twice")
            seen.add(key)
            values[key] = _checked(self.name, key, value)
        missing = [a for a in self.args[: self.required] if a not in values]
        if missing:
            raise UsageError(f"{self.name} needs {', '.join(missing)}, e.g. {EXAMPLES[self.name]}")
        if values.get("stride", 1) is None:  # pooling: the stride defaults to the kernel, as in PyTorch
            values["stride"] = values["kernel"]
        return values


_BOOLS = {"bias", "ceil_mode", "affine", "count_include_pad"}
_INTS = {"out", "kernel", "stride", "padding", "dilation", "groups", "in", "output_padding", "size", "dim"}
_PAIRS = {"kernel", "stride", "padding", "dilation", "output_padding", "size"}  # may be written 3x5
_AT_LEAST_1 = {"out", "groups", "size", "in"}  # kernel, stride, dilation 0 are architecture errors, with a fix


def _checked(kind: str, key: str, value: Value) -> Value:
    """The value if its type fits the argument (an int where PyTorch needs one), else a UsageError."""
    if key in _BOOLS:
        ok, what = isinstance(value, bool), "true or false"
    elif key in _INTS:
        ok = (isinstance(value, int) and not isinstance(value, bool)) or (key in _PAIRS and isinstance(value, tuple))
        ok = ok or (key == "padding" and value in ("same", "valid"))
        what = "a whole number" + (" or a pair like 3x5" if key in _PAIRS else "") + \
            (", same or valid" if key == "padding" else "")
    else:
        ok, what = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
        value = float(value) if ok else value
    if not ok:
        raise UsageError(f"{kind}: {key} must be {what}, not {_format(value)}")
    numbers = value if isinstance(value, tuple) else (value,)
    if key in _AT_LEAST_1 and min(numbers) < 1:  # type: ignore[type-var]
        raise UsageError(f"{kind}: {key} must be 1 or more, not {_format(value)}")
    if key in ("padding", "output_padding") and not isinstance(value, str) and min(numbers) < 0:  # type: ignore[type-var]
        raise UsageError(f"{kind}: {key} must be 0 or more, not {_format(value)}")
    if key == "p" and not 0 <= value <= 1:  # type: ignore[operator]
        raise UsageError(f"{kind}: the dropout probability p must be between 0 and 1, not {_format(value)}")
    return value


_CONV = ("out", "kernel", "stride", "padding", "dilation", "groups", "bias", "in")
KINDS = {k.name: k for k in [
    Kind("conv", _CONV, (("stride", 1), ("padding", 0), ("dilation", 1), ("groups", 1), ("bias", True), ("in", None)), 2),
    Kind("convtranspose", ("out", "kernel", "stride", "padding", "output_padding", "dilation", "groups", "bias", "in"),
         (("stride", 1), ("padding", 0), ("output_padding", 0), ("dilation", 1), ("groups", 1), ("bias", True),
          ("in", None)), 2),
    Kind("maxpool", ("kernel", "stride", "padding", "dilation", "ceil_mode"),
         (("stride", None), ("padding", 0), ("dilation", 1), ("ceil_mode", False)), 1),
    Kind("avgpool", ("kernel", "stride", "padding", "ceil_mode", "count_include_pad"),
         (("stride", None), ("padding", 0), ("ceil_mode", False), ("count_include_pad", True)), 1),
    Kind("adaptiveavgpool", ("size",), (("size", 1),)),
    Kind("adaptivemaxpool", ("size",), (("size", 1),)),
    Kind("batchnorm", ("eps", "momentum", "affine", "in"), (("eps", 1e-5), ("momentum", 0.1), ("affine", True), ("in", None))),
    Kind("dropout", ("p",), (("p", 0.5),)),
    Kind("dropout2d", ("p",), (("p", 0.5),)),
    Kind("flatten"),
    Kind("linear", ("out", "bias", "in"), (("bias", True), ("in", None)), 1),
    Kind("relu"), Kind("sigmoid"), Kind("tanh"), Kind("gelu"),
    Kind("leakyrelu", ("slope",), (("slope", 0.01),)),
    Kind("softplus", ("beta", "threshold"), (("beta", 1.0), ("threshold", 20.0))),
    Kind("softmax", ("dim",), (("dim", 1),)),
]}
ALIASES = {"conv2d": "conv", "maxpool2d": "maxpool", "avgpool2d": "avgpool", "bn": "batchnorm", "fc": "linear",
           "convtranspose2d": "convtranspose", "deconv": "convtranspose", "gap": "adaptiveavgpool"}
EXAMPLES = {"conv": "conv(64,3)", "convtranspose": "convtranspose(32,2,stride=2)", "maxpool": "maxpool(2)",
            "avgpool": "avgpool(2)", "linear": "linear(10)"}


def _format(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return f"{value[0]}x{value[1]}"
    return str(value)


@dataclass(frozen=True, eq=False)
class Layer:
    """One layer of a spec, its arguments kept as written so that it prints back the same."""

    kind: str
    given: tuple[tuple[str | None, Value], ...] = ()

    @property
    def values(self) -> dict[str, Any]:
        return KINDS[self.kind].resolve(list(self.given))

    def __str__(self) -> str:
        if not self.given:
            return self.kind
        args = [_format(v) if k is None else f"{k}={_format(v)}" for k, v in self.given]
        return f"{self.kind}({','.join(args)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Layer) and (self.kind, self.values) == (other.kind, other.values)

    def __hash__(self) -> int:
        return hash((self.kind, tuple(sorted((k, str(v)) for k, v in self.values.items()))))


@dataclass(frozen=True)
class Spec:
    layers: tuple[Layer, ...]
    input_shape: Shape | None = None  # when the spec file names one

    def __str__(self) -> str:
        return " ".join(str(layer) for layer in self.layers)


def parse_layer(text: str, given: list[tuple[str | None, Value]] | None = None) -> Layer:
    """One layer from `name(args)` text, or from a name and already-read arguments."""
    call = parse_call(text, "layer", "conv(64,3)")
    name = call.name
    kind = ALIASES.get(name, name)
    if kind not in KINDS:
        close = difflib.get_close_matches(kind, [*KINDS, *ALIASES], n=2)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        raise UsageError(f"unknown layer {name!r}.{hint} Layers: {', '.join(KINDS)}")
    if given is None:
        given = [(arg.key, arg.value) for arg in call.args]
    layer = Layer(kind, tuple(given))
    layer.values  # noqa: B018  (resolving checks the arguments now, with the layer's text in view)
    return layer


def parse(text: str) -> Spec:
    """A spec from its one-line text."""
    parts = re.findall(r"[A-Za-z_][A-Za-z0-9_]*\s*(?:\([^()]*\))?", text)
    if "".join(parts).replace(" ", "") != re.sub(r"\s+", "", text):
        raise UsageError(f"cannot read the spec {text!r}: write layers as name or name(arguments) separated by "
                         "spaces, e.g. \"conv(64,3) relu maxpool(2) flatten linear(10)\"")
    if not parts:
        raise UsageError("the spec is empty; give at least one layer, e.g. \"flatten linear(10)\"")
    layers = []
    for i, part in enumerate(parts, 1):
        try:
            layers.append(parse_layer(part))
        except UsageError as exc:
            raise UsageError(f"layer {i} {part.strip()!r}: {exc}") from None
    return Spec(tuple(layers))


def parse_shape(text: str | Shape) -> Shape:
    """`1x28x28` -> (1, 28, 28); a single number is a flat input of that many features."""
    if isinstance(text, int) and not isinstance(text, bool):
        shape: Shape = (text,)  # a JSON spec file may write "input": 784
    elif not isinstance(text, str):
        try:
            shape = tuple(int(n) for n in text)
        except (TypeError, ValueError):
            raise UsageError(f"cannot read the input shape {text!r}: write it as CxHxW, e.g. 1x28x28") from None
    else:
        try:
            shape = tuple(int(n) for n in re.split(r"[x,]", text.strip("() ").replace(" ", "")))
        except ValueError:
            raise UsageError(f"cannot read the input shape {text!r}: write it as CxHxW, e.g. 1x28x28 or 3x32x32") from None
    if len(shape) not in (1, 3) or min(shape) < 1:
        raise UsageError(f"input shape {text!r} must be CxHxW (e.g. 1x28x28) or a number of features (e.g. 784)")
    return shape


def load(path: str | Path) -> Spec:
    """A spec from a .json or .toml file: {"input": "1x28x28", "layers": "conv(64,3) ..." or a list}.

    Each layer in a list is a string or a table such as {"type": "conv", "out": 64, "kernel": 3}.
    """
    path = Path(path)
    try:
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except OSError as exc:
        raise UsageError(f"cannot read the spec file {path}: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path} is not valid {path.suffix.lstrip('.').upper()}: {exc}") from exc
    if isinstance(data, dict):
        layers, shape = data.get("layers"), data.get("input")
    else:
        layers, shape = data, None
    if isinstance(layers, str):
        spec = parse(layers)
    elif isinstance(layers, list) and layers:
        spec = Spec(tuple(_layer_from(item, path) for item in layers))
    else:
        raise UsageError(f"{path} needs \"layers\": a spec string or a list of layers")
    return Spec(spec.layers, parse_shape(shape) if shape is not None else None)


def _layer_from(item: Any, path: Path) -> Layer:
    if isinstance(item, str):
        return parse_layer(item)
    if isinstance(item, dict) and isinstance(item.get("type"), str):
        given = []
        for key, value in item.items():
            if key == "type" or value is None:  # null: the default
                continue
            if isinstance(value, list):
                if len(value) != 2:
                    raise UsageError(f"{path}: {item['type']} {key} {value} must be one number or two")
                value = tuple(value)
            given.append((key, value.lower() if isinstance(value, str) else value))
        return parse_layer(item["type"], given)
    raise UsageError(f"{path}: each layer is a string like \"conv(64,3)\" or a table with a \"type\", not {item!r}")


def _with_in(layer: Layer, n: int) -> Layer:
    """The layer with its stated input size replaced by `n` (for linear(3200,200) the first argument)."""
    positional = sum(k is None for k, _ in layer.given)
    return Layer(layer.kind, tuple(
        (k, n) if k == "in" or (k is None and i == 0 and layer.kind == "linear" and positional == 2) else (k, v)
        for i, (k, v) in enumerate(layer.given)
    ))


def _module(layer: Layer, shape: Shape) -> nn.Module:
    """The nn.Module for one layer on inputs of `shape`, with in_channels / in_features inferred."""
    v, kind = layer.values, layer.kind
    spatial = kind in ("conv", "convtranspose", "maxpool", "avgpool", "adaptiveavgpool", "adaptivemaxpool", "dropout2d")
    if spatial and len(shape) != 3:
        raise ArchitectureError(f"{kind} needs a CxHxW input but gets {len(shape)}-D {shape_text(shape)}\n"
                                "  Fix: move flatten after the convolution and pooling layers")
    if kind == "linear" and len(shape) != 1:
        raise ArchitectureError(f"linear needs a flat input but gets {shape_text(shape)}\n"
                                f"  Fix: put flatten before it (it gives {'*'.join(map(str, shape))} = "
                                f"{math.prod(shape)} features)")
    stated = v.get("in")
    if stated is not None and stated != shape[0]:
        what = "features" if kind == "linear" else "channels"
        raise ArchitectureError(f"{layer} expects {stated} input {what} but its input has {shape[0]}\n"
                                f"  Fix: {_with_in(layer, shape[0])}, or leave the number out to infer it")
    for key in ("stride", "kernel", "dilation"):
        if key in v and min(v[key] if isinstance(v[key], tuple) else (v[key],)) < 1:
            raise ArchitectureError(f"{key} {_format(v[key])} is not allowed: it must be 1 or more\n"
                                    f"  Fix: use {key}=1 or more")
    if kind == "softmax" and not -len(shape) - 1 <= v["dim"] <= len(shape):
        raise ArchitectureError(f"softmax over dim {v['dim']}, but its input has {len(shape) + 1} dims "
                                f"(the batch and {shape_text(shape)})\n  Fix: softmax(dim=1), over the classes")
    if kind == "conv" and v["padding"] == "same" and v["stride"] != 1:
        s = v["stride"] if isinstance(v["stride"], int) else max(v["stride"])
        k = v["kernel"] if isinstance(v["kernel"], int) else max(v["kernel"])
        before, after, why = same_padding(k, s, v["dilation"], max(shape[1:]))
        raise ArchitectureError(f"padding=same keeps the size only at stride 1 (PyTorch refuses it at stride {s})\n"
                                f"  {why}\n  Fix: use padding={after}")
    c = shape[0]
    if kind == "conv":
        return nn.Conv2d(c, v["out"], v["kernel"], v["stride"], v["padding"], v["dilation"], v["groups"], v["bias"])
    if kind == "convtranspose":
        return nn.ConvTranspose2d(c, v["out"], v["kernel"], v["stride"], v["padding"], v["output_padding"],
                                  v["groups"], v["bias"], v["dilation"])
    if kind == "maxpool":
        return nn.MaxPool2d(v["kernel"], v["stride"], v["padding"], v["dilation"], ceil_mode=v["ceil_mode"])
    if kind == "avgpool":
        return nn.AvgPool2d(v["kernel"], v["stride"], v["padding"], v["ceil_mode"], v["count_include_pad"])
    if kind in ("adaptiveavgpool", "adaptivemaxpool"):
        return (nn.AdaptiveAvgPool2d if kind == "adaptiveavgpool" else nn.AdaptiveMaxPool2d)(v["size"])
    if kind == "batchnorm":
        norm = nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d
        return norm(c, eps=v["eps"], momentum=v["momentum"], affine=v["affine"])
    if kind == "linear":
        return nn.Linear(c, v["out"], v["bias"])
    simple = {"flatten": nn.Flatten, "relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "gelu": nn.GELU}
    if kind in simple:
        return simple[kind]()
    if kind in ("dropout", "dropout2d"):
        return (nn.Dropout if kind == "dropout" else nn.Dropout2d)(v["p"])
    if kind == "leakyrelu":
        return nn.LeakyReLU(v["slope"])
    if kind == "softplus":
        return nn.Softplus(v["beta"], v["threshold"])
    return nn.Softmax(dim=v["dim"])


@dataclass
class Built:
    """One layer of a built spec: its module name, the module, its input shape and its arithmetic."""

    name: str
    layer: Layer
    module: nn.Module
    in_shape: Shape
    math: LayerMath


def walk(spec: str | Spec, input_shape: str | Shape | None = None) -> list[Built]:
    """Make each layer's module for the shape it gets, and check it can work, without a forward pass."""
    if isinstance(spec, str):
        spec = load(spec) if spec.endswith((".json", ".toml")) else parse(spec)
    if input_shape is None and spec.input_shape is None:
        raise UsageError("the spec needs an input shape, e.g. --input 1x28x28")
    shape = parse_shape(input_shape) if input_shape is not None else spec.input_shape
    built: list[Built] = []
    counts: dict[str, int] = {}
    for i, layer in enumerate(spec.layers, 1):
        counts[layer.kind] = counts.get(layer.kind, 0) + 1
        name = f"{layer.kind}{counts[layer.kind]}"
        try:
            module = _module(layer, shape)
            arith = layer_math(module, shape)
        except (ArchitectureError, ValueError, RuntimeError, TypeError) as exc:
            source = f"\n  its input comes from {built[-1].name}: {built[-1].math.steps[0]}" \
                if built and built[-1].math.steps else ""
            raise ArchitectureError(
                f"layer {i} {name} {layer} on input {shape_text(shape)}: {exc}{source}") from None
        built.append(Built(name, layer, module, shape, arith))
        shape = arith.out_shape
    return built


def build(spec: str | Spec, input_shape: str | Shape | None = None) -> nn.Sequential:
    """Build an nn.Sequential from a spec for inputs of `input_shape` (CxHxW, or a number of features).

    Every layer's shape is worked out first, so an architecture that cannot work raises
    ArchitectureError naming the layer, its formula and a fix, before any forward pass.
    Layers that work but skip input pixels give an ArchitectureWarning.
    """
    built = walk(spec, input_shape)
    for i, b in enumerate(built, 1):
        for warning in b.math.warnings:
            warnings.warn(f"layer {i} {b.name} {b.layer}: {warning}", ArchitectureWarning, stacklevel=2)
    return nn.Sequential(OrderedDict((b.name, b.module) for b in built))


def is_spec(ref: str) -> bool:
    """Whether a model reference is spec text (or a spec file) rather than a name or module:attr."""
    return "(" in ref or " " in ref.strip() or ref.endswith((".json", ".toml"))


def spec_text(ref: str) -> str:
    """The spec text of a spec reference; a file's spec is read, so that runs do not depend on the file."""
    if ref.endswith((".json", ".toml")):
        if not Path(ref).exists():
            raise ModelError(f"spec file {ref} not found")
        return str(load(ref))
    return str(parse(ref))
