"""The summary of any nn.Module: one row per layer call, from forward hooks on a shape-only pass.

The forward pass runs on the meta device (shapes, no arithmetic), so a ResNet-50 summary costs
milliseconds and the model's own weights are never touched; a small model's pass runs on real zeros,
which costs less than the meta device's first use (see `models.shapes.small_enough`). Parameters are counted on the real
model, each tensor once. Before each layer runs, `arithmetic.layer_math` checks that it can take its
input, so an impossible architecture is reported with the layer's name, formula and a fix. The
receptive field follows tensors through every torch function (inspect/fields.py), so it is right
for branches and residual additions, and each residual addition (a tensor op no hook sees) is a row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from cnnlab.teach.arithmetic import LayerMath, Shape, layer_math, shape_text
from cnnlab.errors import ArchitectureError, ModelError, UsageError
from cnnlab.inspect.fields import Field, FieldTracker, field_text, jump_text
from cnnlab.models import load_model, model_info, short_name
from cnnlab.models.famous import famous
from cnnlab.models.refs import kind_of
from cnnlab.models.shapes import evaluating, first_shape, probe_pass, small_enough, zeros_input
from cnnlab.models.spec import load, parse_shape
from cnnlab.views.formatting import summary_table


@dataclass
class Row:
    """One call of one module, or one residual addition between modules (`module` False, kind "add")."""

    name: str  # dotted path, as in model.named_modules(); "" for the model itself; "layer1.0 + residual"
    kind: str  # class name; "add" for a residual addition
    depth: int
    in_shape: Shape | None = None
    out_shape: Shape | None = None  # one sample (no batch dimension); the first tensor of a tuple
    math: LayerMath | None = None
    params: int = 0  # of the subtree, counted at its first call only
    frozen: int = 0  # of those, not trainable
    mult_adds: int = 0  # of the subtree, this call
    out_bytes: int = 0
    reach: Field | None = None  # receptive field and jump of the output
    call: int = 1  # the n-th call of this module in the forward pass
    detail: str = ""  # the module's extra_repr, e.g. "1, 64, kernel_size=(3, 3), stride=(1, 1)"
    leaf: bool = True
    children: list[Row] = field(default_factory=list, repr=False)
    module: bool = True  # False for a residual addition: a tensor op in its block's forward, not a module
    branches: list[Field] = field(default_factory=list)  # an addition's operands' receptive fields

    @property
    def window(self) -> str:
        return self.math.window if self.math else ""

    @property
    def receptive(self) -> str:
        return field_text(self.reach)

    @property
    def jump(self) -> str:
        return jump_text(self.reach)

    @property
    def branch_receptive(self) -> list[str]:
        """An addition's operands' receptive fields as the table shows them: ["27", "11"]."""
        return [field_text(b) for b in self.branches]


@dataclass
class Summary:
    """Everything `cnnlab summary` prints, as data."""

    model: str
    input_shape: Shape
    batch_size: int
    rows: list[Row]  # every call, in execution order; `shown(depth)` picks the table's rows
    total_params: int
    trainable_params: int
    buffers: int  # values in buffers (batch-norm running statistics): state, not parameters
    param_bytes: int
    buffer_bytes: int
    input_bytes: int
    activation_bytes: int  # outputs of every leaf layer in one forward pass of the batch
    mult_adds: int
    shared: list[str] = field(default_factory=list)  # notes on parameters used by more than one module
    warnings: list[str] = field(default_factory=list)
    output_shape: Shape | None = None

    @property
    def frozen_params(self) -> int:
        return self.total_params - self.trainable_params

    def shown(self, depth: int) -> list[Row]:
        """Rows down to `depth`; a module at the last depth stands for all it contains."""
        return [r for r in self.rows if 1 <= r.depth <= depth] or [r for r in self.rows if r.depth == 0]

    def __str__(self) -> str:
        return summary_table(self)


def _input_itemsize(model: nn.Module) -> int:
    first = next((p for p in model.parameters() if p.is_floating_point()), None)
    return first.element_size() if first is not None else 4


def _nbytes(value: Any) -> int:
    return sum(t.numel() * t.element_size() for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor))


def _count(params: Any, seen: set[int]) -> tuple[int, int]:
    """Numbers of values in `params` (all, frozen), skipping tensors already in `seen`."""
    total = frozen = 0
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
            frozen += 0 if p.requires_grad else p.numel()
    return total, frozen


def summarize(model: nn.Module, input_shape: Shape, batch_size: int = 1, name: str = "") -> Summary:
    """Trace `model` on a batch of `input_shape` inputs and summarize every layer call.

    The pass runs on the meta device; a small model, or one that the meta device cannot run (one
    that reads tensor values, say), is traced with real zeros on its own device, in eval mode and
    without gradients, and its parameters, buffers and the random state are restored after.
    """
    input_shape = tuple(input_shape)
    with evaluating(model):  # batch norm on one sample only works in eval mode
        try:
            if small_enough(model, input_shape, batch_size):
                rows, output, gates = _trace(model, input_shape, batch_size, meta=False)
            else:
                rows, output, gates = _trace(model, input_shape, batch_size, meta=True)
        except (ArchitectureError, ModelError):
            raise
        except Exception:  # noqa: BLE001  (retried for real; a real failure is reported from there)
            rows, output, gates = _trace(model, input_shape, batch_size, meta=False)

    notes = _shared_notes(model)
    params = list({id(p): p for p in model.parameters()}.values())
    unused = sum(p.numel() for p in params) - rows[0].params  # rows[0] is the model itself
    if unused > 0:
        notes.append(f"{unused:,} parameters belong to modules the forward pass does not call; they count in the totals")
    if gates:
        notes.append(f"RF is each feature map's own window: {gates} squeeze-and-excitation "
                     f"gate{'s' if gates > 1 else ''} also scale channels by weights pooled from the whole image")
    buffers = list(model.buffers())
    leaves = [r for r in rows if r.leaf]
    warnings = [f"{r.name} ({r.kind}): {w}" for r in rows for w in (r.math.warnings if r.math else [])]
    return Summary(
        model=name or type(model).__name__, input_shape=input_shape, batch_size=batch_size, rows=rows,
        total_params=sum(p.numel() for p in params),
        trainable_params=sum(p.numel() for p in params if p.requires_grad),
        buffers=sum(b.numel() for b in buffers),
        param_bytes=sum(p.numel() * p.element_size() for p in params),
        buffer_bytes=sum(b.numel() * b.element_size() for b in buffers),
        input_bytes=batch_size * math.prod(input_shape) * _input_itemsize(model),
        activation_bytes=sum(r.out_bytes for r in leaves),
        # each row's own work: a leaf's, or what a module with its own weights and children does itself
        # (timm's BatchNormAct2d normalizes, then calls its activation)
        mult_adds=sum(r.mult_adds - sum(c.mult_adds for c in r.children) for r in rows),
        shared=notes, warnings=list(dict.fromkeys(warnings)), output_shape=first_shape(output),
    )


def _trace(model: nn.Module, input_shape: Shape, batch_size: int, meta: bool) -> tuple[list[Row], Any, int]:
    """(every row in execution order, the output, the number of channel gates left out of the fields)."""
    names = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
    # Each module's own parameters, read now: during functional_call the modules hold meta stand-ins.
    own = {id(m): list(m.parameters(recurse=False)) for _, m in model.named_modules(remove_duplicate=False)}
    rows: list[Row] = []
    stack: list[Row] = []
    calls: dict[int | str, int] = {}  # a module's calls by id, an addition's by its row name
    counted: set[int] = set()  # parameters already counted in a row

    def pre(module: nn.Module, args: tuple) -> None:
        path = names[id(module)]
        calls[id(module)] = calls.get(id(module), 0) + 1
        row = Row(path, type(module).__name__, 0 if path == "" else path.count(".") + 1,
                  in_shape=first_shape(args), call=calls[id(module)], leaf=not any(True for _ in module.children()),
                  detail=module.extra_repr())
        if stack:
            stack[-1].children.append(row)
        stack.append(row)
        rows.append(row)
        # A module with children and weights of its own (timm's BatchNormAct2d) has its own arithmetic too.
        if (row.leaf or own[id(module)]) and row.in_shape is not None:
            try:
                row.math = layer_math(module, row.in_shape)
            except ArchitectureError as exc:
                raise ArchitectureError(f"layer {path or type(module).__name__} ({row.kind}) on input "
                                        f"{shape_text(row.in_shape)}: {exc}") from None

    def post(module: nn.Module, args: tuple, output: Any) -> None:
        row = stack.pop()
        row.out_shape = first_shape(output)
        if row.call == 1:  # a module called again shows its parameters at its first call only
            row.params, row.frozen = _count(own[id(module)], counted)
        row.reach = tracker.get(output)
        if row.leaf:
            row.out_bytes = _nbytes(output)
            row.mult_adds = row.math.mult_adds * batch_size if row.math else _other_mult_adds(module, output)
        else:  # a container: the sums of what it contains, and its own arithmetic if it has any
            row.params += sum(c.params for c in row.children)
            row.frozen += sum(c.frozen for c in row.children)
            own_work = row.math.mult_adds * batch_size if row.math else 0
            row.mult_adds = own_work + sum(c.mult_adds for c in row.children)
            row.out_bytes = sum(c.out_bytes for c in row.children)

    def residual(operands: tuple[torch.Tensor, torch.Tensor], output: Any, branches: list[Field]) -> None:
        """A row for a sum of two branches in a block's own forward (inside a leaf module it is that layer's)."""
        if not stack or stack[-1].leaf:
            return
        block = stack[-1]
        name = f"{block.name} + residual" if block.name else "+ residual"
        calls[name] = calls.get(name, 0) + 1
        row = Row(name, "add", block.depth + 1, in_shape=first_shape(operands[0]), out_shape=first_shape(output),
                  out_bytes=_nbytes(output), reach=tracker.get(output), call=calls[name], module=False,
                  branches=branches)  # no parameters; additions are no mult-adds (nor are they in torchinfo's)
        block.children.append(row)
        rows.append(row)

    tracker = FieldTracker(on_sum=residual)
    handles = []
    for module in dict.fromkeys(m for _, m in model.named_modules(remove_duplicate=False)):
        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    probe = zeros_input(model, input_shape, batch_size, meta)  # (N, C, H, W)
    tracker.set(probe, ((1.0, 1.0), (1.0, 1.0), len(input_shape) != 3))
    try:
        with tracker:
            output = probe_pass(model, probe, meta)
    except ArchitectureError:
        raise
    except Exception as exc:
        if meta:
            raise
        where = (f" in {stack[-1].name or stack[-1].kind} ({stack[-1].kind}) on input "
                 f"{shape_text(stack[-1].in_shape or ())}") if stack else ""
        raise ModelError(f"the model cannot take {shape_text(input_shape)} inputs: the forward pass "
                         f"failed{where}: {exc}") from exc
    finally:
        for h in handles:
            h.remove()
    return rows, output, tracker.gates


def _other_mult_adds(module: nn.Module, output: Any) -> int:
    """Mult-adds of a layer cnnlab has no formula for, counted as torchinfo counts them: each weight
    and bias once per output position for a convolution (Conv1d, Conv3d), once per sample otherwise."""
    out = next((t for t in tree_flatten(output)[0] if isinstance(t, torch.Tensor)), None)
    params = sum(p.numel() for p in module.parameters(recurse=False))
    if out is None or not params:
        return 0
    per = math.prod(out.shape[:1] + out.shape[2:]) if "Conv" in type(module).__name__ else out.shape[0]
    return params * per


def _shared_notes(model: nn.Module) -> list[str]:
    """A note for each parameter tensor that more than one module holds (tied weights)."""
    notes = []
    holders: dict[int, list[str]] = {}
    sizes: dict[int, int] = {}
    for mod_name, module in model.named_modules(remove_duplicate=False):
        for p_name, p in module.named_parameters(recurse=False):
            path = f"{mod_name}.{p_name}" if mod_name else p_name
            if path not in holders.setdefault(id(p), []):
                holders[id(p)].append(path)
            sizes[id(p)] = p.numel()
    for key, paths in holders.items():
        if len(paths) > 1:
            notes.append(f"{' = '.join(paths)}: one tensor of {sizes[key]:,} values, counted once")
    return notes


def summary(model: str | nn.Module, input_shape: str | Shape | None = None, num_classes: int | None = None,
            batch_size: int = 1) -> Summary:
    """The summary of a model reference (name, spec, spec file, package.module:attr) or an nn.Module.

    input_shape defaults to a registered model's own, or to the one a spec file names.
    """
    if input_shape is None:
        if isinstance(model, str) and kind_of(model) == "registered":
            input_shape = model_info(model).input_shape
        elif isinstance(model, str) and model.endswith((".json", ".toml")) and load(model).input_shape:
            input_shape = load(model).input_shape
        else:
            raise UsageError("give the input shape, e.g. --input 1x28x28 (CxHxW) or --input 784 (features)")
    shape = parse_shape(input_shape)
    if not 1 <= batch_size <= 1_000_000:  # counts scale with N; a real-zeros trace would need N inputs' memory
        raise UsageError(f"--batch-size must be from 1 to 1,000,000, got {batch_size:,}")
    if isinstance(model, str) and famous(model) is not None:
        # Built on the meta device: initializing VGG16's 138 M weights takes seconds, and a summary reads none.
        with torch.device("meta"):
            net = load_model(model, shape, num_classes)
    else:
        net = load_model(model, shape, num_classes)
    name = short_name(model) if isinstance(model, str) else type(model).__name__
    return summarize(net, shape, batch_size, name)
