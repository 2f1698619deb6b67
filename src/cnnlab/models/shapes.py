"""A model's output shape for one input shape, every layer checked on the way: what the registry and
`load_model` run on each new model, without the summary (which stands above the models).

Before each layer runs, `arithmetic.layer_math` checks that it can take its input, so an impossible
architecture is reported with the layer's name, formula and a fix. A small model runs on real zeros
(see `small_enough`), a larger one on the meta device (shapes, no arithmetic).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from cnnlab.errors import ArchitectureError, ModelError
from cnnlab.teach.arithmetic import Shape, layer_math, shape_text

# PyTorch runs many meta kernels (relu, add, ...) as Python references whose first call imports
# torch._dynamo, about 1 s, so for a small model a real pass over zeros is the quicker one. Small:
# at most 2**16 input values (3x128x128) and 4e9 parameters x input positions, a bound on the
# mult-adds (a convolution uses each weight once per output position, at most one per input
# position), about 0.2 s and a few hundred MB at the very most; seed-cnn on 1x28x28 takes under 10 ms.
REAL_PASS_VALUES = 2**16
REAL_PASS_BUDGET = 4e9


def small_enough(model: nn.Module, input_shape: Shape, batch_size: int = 1) -> bool:
    """Whether a pass over real zeros costs less than the meta device's first use."""
    params = sum(p.numel() for p in model.parameters())
    positions = math.prod(input_shape[1:]) if len(input_shape) >= 2 else 1
    return (0 < params and batch_size * math.prod(input_shape) <= REAL_PASS_VALUES
            and params * positions * batch_size <= REAL_PASS_BUDGET)


@contextlib.contextmanager
def untouched(model: nn.Module, device: torch.device) -> Iterator[None]:
    """A real pass leaves no trace: the parameters, buffers and random number generators as they were
    (a forward pass may update a buffer or draw random numbers, and a resumed run must not see it)."""
    saved = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in model.state_dict().items()}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        try:
            yield
        finally:
            model.load_state_dict(saved)


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """`model` in eval mode for the block, then every module back in the mode it was in (also on error)."""
    modes = {m: m.training for m in model.modules()}
    try:
        yield model.eval()
    finally:
        for m, training in modes.items():
            m.training = training


def zeros_input(model: nn.Module, input_shape: Shape, batch_size: int, meta: bool) -> torch.Tensor:
    """A batch of zeros (N, *input_shape) in the model's own dtype (a .double() or .half() model takes its
    own), on the meta device or on the model's device."""
    first = next((p for p in model.parameters() if p.is_floating_point()), None)
    device = "meta" if meta else (first.device if first is not None else torch.device("cpu"))
    dtype = first.dtype if first is not None else torch.float32
    return torch.zeros(batch_size, *input_shape, device=device, dtype=dtype)


def probe_pass(model: nn.Module, probe: torch.Tensor, meta: bool) -> Any:
    """model(probe) without gradients: on the meta device, with stand-ins for its parameters and buffers
    (its own modules and hooks run, its weights are never touched), or for real, leaving no trace."""
    with torch.no_grad():
        if meta:
            weights = {n: torch.empty_like(t, device="meta")
                       for n, t in [*model.named_parameters(), *model.named_buffers()]}
            return torch.func.functional_call(model, weights, (probe,))
        with untouched(model, probe.device):
            return model(probe)


def first_shape(value: Any) -> Shape | None:
    """The shape of one sample (no batch dimension) of the first tensor in `value`."""
    tensors = [t for t in tree_flatten(value)[0] if isinstance(t, torch.Tensor)]
    return tuple(tensors[0].shape[1:]) if tensors else None


def output_shape(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The output shape for one input of `input_shape` (no batch dimension); each leaf layer is checked
    against its input first, so a size that cannot work names its layer."""
    input_shape = tuple(input_shape)
    names = {id(m): n for n, m in model.named_modules(remove_duplicate=False)}
    stack: list[str] = []

    def pre(module: nn.Module, args: tuple) -> None:
        path = names[id(module)] or type(module).__name__
        stack.append(path)
        shape = first_shape(args)
        if shape is not None and not any(True for _ in module.children()):
            try:
                layer_math(module, shape)
            except ArchitectureError as exc:
                raise ArchitectureError(f"layer {path} ({type(module).__name__}) on input "
                                        f"{shape_text(shape)}: {exc}") from None

    def post(module: nn.Module, args: tuple, output: Any) -> None:
        stack.pop()

    def run(meta: bool) -> Any:
        stack.clear()
        try:
            return probe_pass(model, zeros_input(model, input_shape, 1, meta), meta)
        except ArchitectureError:
            raise
        except Exception as exc:
            if meta:
                raise
            where = f" in {stack[-1]}" if stack else ""
            raise ModelError(f"the model cannot take {shape_text(input_shape)} inputs: the forward pass "
                             f"failed{where}: {exc}") from exc

    handles = []
    for module in dict.fromkeys(m for _, m in model.named_modules(remove_duplicate=False)):
        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    try:
        with evaluating(model):  # batch norm on one sample only works in eval mode
            if small_enough(model, input_shape):
                output = run(meta=False)
            else:
                try:
                    output = run(meta=True)
                except (ArchitectureError, ModelError):
                    raise
                except Exception:  # noqa: BLE001  (a model the meta device cannot run, e.g. one reading values)
                    output = run(meta=False)
    finally:
        for h in handles:
            h.remove()
    return first_shape(output) or ()
