"""Inside a trained network: its layers by name, the feature maps an image makes, the learned
filters, and Grad-CAM heat maps — as figures, and as the PNG files that `cnnlab featuremaps`,
`cnnlab filters` and `cnnlab cam` write.

Layer names are the summary's (`named_modules()`): `conv1` in a spec, `0`, `3` in seed-cnn's
`nn.Sequential`, `layer4.1.conv2` in a ResNet.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch import nn

from cnnlab.views import viz
from cnnlab.inspect.cam import Cam, grad_cam
from cnnlab.errors import UsageError
from cnnlab.runs.folder import Run
from cnnlab.runs.trained import TrainedModel, load

REPORT_CHANNELS = 32  # feature maps shown per layer in a report; the command shows 64 by default


def conv_layers(model: nn.Module) -> list[str]:
    """The names of the model's 2-D convolutions, in the order they were defined."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def find_layer(model: nn.Module, name: str) -> nn.Module:
    """The module called `name`, or an error listing the names there are."""
    modules = dict(model.named_modules())
    if name not in modules or name == "":
        convs = conv_layers(model)
        known = f"its convolutions are {', '.join(convs)}" if convs else "it has no convolution layers"
        raise UsageError(f"the model has no layer {name!r}; {known} (every layer name: `cnnlab summary`)")
    return modules[name]


def first_tensor(output: object) -> torch.Tensor | None:
    """A module's output, or the first tensor of a tuple or list (as the summary shows it)."""
    if isinstance(output, (tuple, list)):
        output = next((o for o in output if isinstance(o, torch.Tensor)), None)
    return output if isinstance(output, torch.Tensor) else None


@torch.no_grad()
def feature_maps(model: nn.Module, x: torch.Tensor, layers: list[str]) -> dict[str, torch.Tensor]:
    """The output of each named layer for a normalized batch x (N, C, H, W), from one forward pass.

    A layer the forward pass does not call, or that gives no tensor, has no entry; a module called
    more than once gives its last call, as Grad-CAM takes it."""
    maps: dict[str, torch.Tensor] = {}
    handles = []
    for name in layers:
        def keep(_m: nn.Module, _a: tuple, output: object, name: str = name) -> None:
            tensor = first_tensor(output)
            if tensor is not None:
                maps[name] = tensor.detach().float().cpu().clone()  # clone: an in-place ReLU may come next
        handles.append(find_layer(model, name).register_forward_hook(keep))
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return maps


def featuremap_figure(output: torch.Tensor, layer: str, kind: str, image_name: str,
                      max_channels: int = 64) -> Figure:
    """One image's output of one layer (K, h, w): a tile per channel, each scaled to its own range."""
    if output.dim() != 3:  # a linear layer's (features,): one row of values
        output = output.reshape(1, 1, -1)
    shown = output[:max_channels]
    size = "x".join(map(str, output.shape[1:]))
    which = f"channels 1-{len(shown)} of {len(output)}" if len(shown) < len(output) else f"{len(output)} channels"
    title = f"{layer} ({kind}) on {image_name}: {which}, {size} each, each scaled to its own range"
    return viz.mosaic(viz.scale_each(shown), title, columns=min(len(shown), 16))


def layer_weights(model: nn.Module, input_shape: tuple[int, int, int], layer: str | None = None
                  ) -> tuple[str, torch.Tensor] | None:
    """(name, weight) of the layer whose filters to show: `layer`, else the first convolution, else
    (an MLP) a first linear layer on the whole flattened image; None when there is neither."""
    pixels = math.prod(input_shape)
    if layer is not None:
        module = find_layer(model, layer)
        weight = getattr(module, "weight", None)
        if isinstance(module, nn.Linear) and module.in_features != pixels:
            raise UsageError(f"layer {layer!r} is a linear layer on {module.in_features} features, not on the "
                             f"{pixels} pixels of the image, so its weights are no pictures; name a convolution")
        if not isinstance(weight, torch.Tensor) or weight.dim() not in (2, 4):
            raise UsageError(f"layer {layer!r} has no convolution or linear weights to show; name a Conv2d")
        return layer, weight.detach().float().cpu()
    modules = list(model.named_modules())
    for name, m in modules:
        if isinstance(m, nn.Conv2d):
            return name, m.weight.detach().float().cpu()
    first_linear = next(((name, m) for name, m in modules if isinstance(m, nn.Linear)), None)
    if first_linear is not None and first_linear[1].in_features == pixels:
        return first_linear[0], first_linear[1].weight.detach().float().cpu()
    return None


def filter_figure(name: str, weight: torch.Tensor, input_shape: tuple[int, int, int], max_filters: int = 64) -> Figure:
    """Learned weights as pictures. A convolution on RGB: each filter in colour (scaled by its own range);
    on one channel: each kernel red for positive, blue for negative weights; on more channels: a row per
    filter, a column per input channel. A linear layer on the flat image: each unit's weights as an image."""
    if weight.dim() == 2:  # (units, C*H*W): what each hidden unit of an MLP looks for
        weight = weight[:max_filters].reshape(-1, *input_shape)
        what = f"{name}: the weights of hidden units 1-{len(weight)} as {'x'.join(map(str, input_shape))} images"
    else:
        weight = weight[:max_filters]
        what = f"{name}: {len(weight)} filters of {weight.shape[1]}x{weight.shape[2]}x{weight.shape[3]}"
    out_channels, in_channels = weight.shape[:2]
    if in_channels == 3:
        tiles = viz.scale_each(weight).transpose(0, 2, 3, 1)  # (O, kh, kw, 3)
        return viz.mosaic(tiles, what + ", in colour, each scaled to its own range", columns=min(out_channels, 16))
    if in_channels == 1:
        return viz.mosaic(viz.scale_each(weight[:, 0], symmetric=True), what + "; red > 0 > blue",
                          cmap="RdBu_r", columns=min(out_channels, 16))
    kept = weight[:16, :8]  # (O', C', kh, kw)
    tiles = viz.scale_each(kept.reshape(-1, *kept.shape[2:]), symmetric=True)
    return viz.mosaic(tiles, what + f"; rows: filters 1-{kept.shape[0]}, columns: input channels 1-{kept.shape[1]}; "
                      "red > 0 > blue", cmap="RdBu_r", columns=kept.shape[1])


CAM_SEARCH = 4  # convolutions tried before the last feature maps when those show no evidence


def evident_cam(model: nn.Module, x: torch.Tensor, target: int | None = None) -> tuple[Cam, Cam]:
    """Grad-CAM at the last feature maps, and the one to show: the same, unless it finds no positive
    evidence for most images; then the latest of the last `CAM_SEARCH` earlier convolutions that finds it
    for all of them, else for the most (the last feature maps if none does better).

    Grad-CAM weighs each channel by its gradient averaged over the positions. When a linear layer weighs
    each position on its own (a small CNN that flattens its last maps), that average can be negative for
    every channel that fires, and the map is blank; an earlier layer, before a ReLU, can still show where
    the evidence lies."""
    last = best = grad_cam(model, x, None, target)
    if 2 * int(last.empty.sum()) <= len(x):
        return last, last
    # Each try is a forward and backward pass: a ResNet-50 has 53 convolutions, and evidence in a
    # very early layer says little about the class anyway.
    for name in [n for n in reversed(conv_layers(model)) if n != last.layer][:CAM_SEARCH]:
        try:
            cam = grad_cam(model, x, name, target)
        except UsageError:  # a convolution the forward pass does not call
            continue
        if cam.raw.shape[1] * cam.raw.shape[2] > 1 and int(cam.empty.sum()) < int(best.empty.sum()):
            best = cam
            if not best.empty.any():
                break
    return last, best


def cam_figure(model: nn.Module, cam: Cam, shown: torch.Tensor, classes: list[str], true: list[int] | None = None,
               names: list[str] | None = None, note: str = "") -> Figure:
    """The Grad-CAM maps `cam` over the images `shown` (N, C, H, W in [0, 1]); a blank map says why under it.

    note: a line added to the title."""
    captions, blank = [], []
    for i in range(len(shown)):
        c = int(cam.classes[i])
        predicted = int(cam.probabilities[i].argmax())
        caption = f"{classes[predicted]} {cam.probabilities[i, predicted]:.0%}"
        caption = (f"true {classes[true[i]]}\npredicted " if true is not None else "predicted ") + caption
        if c != predicted:
            caption += f"\nmap for {classes[c]} {cam.probabilities[i, c]:.0%}"
        captions.append((names[i] + "\n" if names else "") + caption)
        blank.append(f"no positive evidence at {cam.layer}:\nevery weighted sum ≤ 0" if cam.empty[i] else "")
    kind = type(dict(model.named_modules())[cam.layer]).__name__
    title = f"Grad-CAM at {cam.layer} ({kind}, {cam.raw.shape[1]}x{cam.raw.shape[2]}): where the evidence lies"
    return viz.cam_grid(shown, cam.maps, captions, title + (f"\n{note}" if note else ""), blank)


def _model_and_images(run: str | Path | Run, paths: list[str | Path], invert: bool
                      ) -> tuple[TrainedModel, torch.Tensor, torch.Tensor]:
    """The run's trained model on the CPU (hooks and gradients for the pictures), image files as shown
    (N, C, H, W in [0, 1]) and as the network takes them."""
    model = load(run, device="cpu")
    shown = model.preprocess.load(paths, invert)
    return model, shown, model.preprocess.normalize(shown)


def featuremaps(run: str | Path | Run, image: str | Path, layer: str | None = None, out: str | Path = "featuremaps",
                max_channels: int = 64, invert: bool = False) -> list[Path]:
    """Write the feature maps of `image` at `layer` (default: every convolution) as PNG files in `out`."""
    if max_channels < 1:
        raise UsageError(f"--channels {max_channels}: show at least 1 channel per layer")
    trained, _, x = _model_and_images(run, [image], invert)
    model = trained.net
    layers = [layer] if layer is not None else conv_layers(model)
    if not layers:
        raise UsageError("the model has no convolution layers; name a layer with --layer (see `cnnlab summary`)")
    maps = feature_maps(model, x, layers)
    if not maps:
        which = f"layer {layer!r}" if layer is not None else "none of the convolution layers"
        raise UsageError(f"{which} gives a tensor in the model's forward pass (not called, or not a tensor), so "
                         "there are no feature maps to show")
    out, modules = Path(out), dict(model.named_modules())
    written = []
    for name in maps:  # a convolution the forward pass never calls has none, and is left out
        fig = featuremap_figure(maps[name][0], name, type(modules[name]).__name__, Path(image).name, max_channels)
        written.append(viz.save(fig, out / f"{Path(image).stem}-{name}.png"))
    return written


def filters(run: str | Path | Run, layer: str | None = None, out: str | Path = "filters.png") -> Path:
    """Write the learned filters of `layer` (default: the first convolution) as a PNG file."""
    shape = (model := load(run, device="cpu")).preprocess.input_shape
    found = layer_weights(model.net, shape, layer)
    if found is None:
        raise UsageError("the model has no convolution layer, nor a first linear layer on the whole image, "
                         "to show; name a layer with --layer")
    return viz.save(filter_figure(*found, shape), out)


def cam(run: str | Path | Run, images: list[str | Path], layer: str | None = None, target: str | None = None,
        out: str | Path = "cam.png", invert: bool = False) -> Path:
    """Write Grad-CAM heat maps of image files (default: at the last feature maps, for the predicted class)."""
    trained, shown, x = _model_and_images(run, images, invert)
    model, classes = trained.net, trained.classes
    if layer is not None:
        find_layer(model, layer)
    index = None
    if target is not None:
        if target not in classes:
            raise UsageError(f"unknown class {target!r}; the run's classes are {', '.join(classes)}")
        index = classes.index(target)
    names = [Path(p).name for p in images]
    if layer is not None:
        return viz.save(cam_figure(model, grad_cam(model, x, layer, index), shown, classes, names=names), out)
    # The command keeps to the last feature maps, as documented; where they are blank, it names a layer that is not.
    last, better = evident_cam(model, x, index)
    note = "" if better is last else (f"no positive evidence here for {int(last.empty.sum())} of {len(x)}; "
                                      f"--layer {better.layer} finds it for {int((~better.empty).sum())}")
    return viz.save(cam_figure(model, last, shown, classes, names=names, note=note), out)
