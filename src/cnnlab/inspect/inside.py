"""Inside a network: its layers by name, the feature maps an image makes, the learned filters, what it
makes of an image on the way to its classes, and Grad-CAM heat maps — as figures, and as the files and
text that `cnnlab featuremaps`, `filters`, `features` and `cam` write.

Each view takes a run folder, a `TrainedModel`, or a famous network's name with `pretrained=True` (or a
`weights` file): `featuremaps("efficientnet-lite0", photo, "conv_stem", pretrained=True, untrained=True)`.
Layer names are the summary's (`named_modules()`): `conv1` in a spec, `0`, `3` in seed-cnn's
`nn.Sequential`, `layer4.1.conv2` in a ResNet.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from torch import nn

from cnnlab.views import viz
from cnnlab.inspect.cam import Cam, grad_cam
from cnnlab.inspect.evaluate import ModelLike, trained_model
from cnnlab.errors import UsageError
from cnnlab.runs.folder import Run
from cnnlab.runs.trained import TrainedModel

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


def _model_and_images(model: ModelLike, paths: list[str | Path], invert: bool, how: dict[str, Any]
                      ) -> tuple[TrainedModel, torch.Tensor, torch.Tensor]:
    """The model (on the CPU unless a TrainedModel comes on another device: hooks and gradients for the pictures),
    image files as shown (N, C, H, W in [0, 1]) and as the network takes them. how: trained_model's options."""
    trained = trained_model(model, "cpu", **how)
    shown = trained.preprocess.load(paths, invert)
    return trained, shown, trained.preprocess.normalize(shown.to(trained.device))


def untrained_copy(net: nn.Module, seed: int = 0) -> nn.Module:
    """The same network untrained: a copy with every layer back to PyTorch's default initialization (each
    module's reset_parameters, seeded; batch norm's statistics to mean 0, variance 1), as lecture 003's
    untrained nn.Conv2d was. The network given is left as it is."""
    twin = copy.deepcopy(net)
    with torch.random.fork_rng(devices=[]):  # the caller's random state is not consumed
        torch.manual_seed(seed)
        for module in twin.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
    return twin.eval()


def featuremap_pair_figure(trained: torch.Tensor, untrained: torch.Tensor, layer: str, kind: str, image_name: str,
                           max_channels: int = 64) -> Figure:
    """One image's output of one layer (K, h, w) in the trained network beside the untrained one's, a tile per
    channel in a square grid (8 x 8 for 64), each channel scaled to its own range."""
    panels = []
    for label, output in (("trained", trained), ("untrained (random initialization)", untrained)):
        output = output if output.dim() == 3 else output.reshape(1, 1, -1)  # a linear layer's (features,)
        panels.append((label, output[:max_channels]))
    n, h, w = panels[0][1].shape
    columns = math.ceil(math.sqrt(n)) if h > 1 else 1
    rows = math.ceil(n / columns)
    which = f"channels 1-{n} of {len(trained)}" if n < len(trained) else f"{n} channels"
    title = f"{layer} ({kind}) on {image_name}: {which}, {h}x{w} each, each scaled to its own range"
    tile_inches = min(0.75, 6.0 / columns)
    height = rows * tile_inches * h / w + 0.8
    fig = Figure(figsize=(max(6.0, 2 * columns * tile_inches + 0.6), height))
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.65 / height, wspace=0.05)
    colour_map = colormaps["viridis"].with_extremes(bad="white")
    for ax, (label, maps) in zip(fig.subplots(1, 2), panels):
        grid = viz.tile(viz.scale_each(maps), columns, gap=max(1, h // 12))
        ax.imshow(np.ma.masked_invalid(grid), cmap=colour_map, vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(viz.text(label), fontsize=9)
        ax.axis("off")
    fig.suptitle(viz.text(title), fontsize=9)
    fig.set_label(title)
    return fig


def featuremaps(model: ModelLike, image: str | Path, layer: str | None = None, out: str | Path = "featuremaps",
                max_channels: int = 64, invert: bool = False, *, untrained: bool = False, pretrained: bool = False,
                weights: str | Path | None = None, image_size: int | None = None, trust_code: bool = False
                ) -> list[Path]:
    """Write the feature maps of `image` at `layer` (default: every convolution) as PNG files in `out`.

    untrained: each file shows the maps beside those of the same network untrained (`untrained_copy`), as
    lecture 003 contrasts AlexNet's first trained convolution with a random one. model, pretrained, weights,
    image_size, trust_code: see `trained_model`."""
    if max_channels < 1:
        raise UsageError(f"--channels {max_channels}: show at least 1 channel per layer")
    how = {"pretrained": pretrained, "weights": weights, "image_size": image_size, "trust_code": trust_code}
    trained, _, x = _model_and_images(model, [image], invert, how)
    net = trained.net
    layers = [layer] if layer is not None else conv_layers(net)
    if not layers:
        raise UsageError("the model has no convolution layers; name a layer with --layer (see `cnnlab summary`)")
    maps = feature_maps(net, x, layers)
    if not maps:
        which = f"layer {layer!r}" if layer is not None else "none of the convolution layers"
        raise UsageError(f"{which} gives a tensor in the model's forward pass (not called, or not a tensor), so "
                         "there are no feature maps to show")
    random_maps = feature_maps(untrained_copy(net), x, list(maps)) if untrained else {}
    out, modules, stem = Path(out), dict(net.named_modules()), Path(image).stem
    written = []
    for name in maps:  # a convolution the forward pass never calls has none, and is left out
        kind = type(modules[name]).__name__
        if untrained:
            fig = featuremap_pair_figure(maps[name][0], random_maps[name][0], name, kind, Path(image).name,
                                         max_channels)
            written.append(viz.save(fig, out / f"{stem}-{name}-trained-vs-untrained.png"))
        else:
            fig = featuremap_figure(maps[name][0], name, kind, Path(image).name, max_channels)
            written.append(viz.save(fig, out / f"{stem}-{name}.png"))
    return written


@dataclass
class Features:
    """What a network makes of one image on the way to its classes: lecture 003's `alexNet.features(x)`."""

    model: str
    image: str
    input_shape: tuple[int, ...]  # (C, H, W) after the model's preprocessing
    maps_layer: str | None  # the last top-level module whose output is still feature maps (not a pooling layer)
    maps_shape: tuple[int, ...] | None  # its output (C, h, w)
    head: str | None  # the head: the last Linear layer
    head_input: tuple[int, ...] | None  # what the head reads per image: what --freeze backbone computes and caches
    classes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        """The shapes in words, a line per stage."""
        shape = lambda s: "x".join(map(str, s))  # noqa: E731
        rows = []
        if self.maps_layer is not None:
            count = math.prod(self.maps_shape)
            rows.append((self.maps_layer, shape(self.maps_shape), f"the last feature maps ({count:,} numbers): what "
                         "the convolutions make of the image"))
        if self.head is not None:
            rows.append((f"{self.head} input", shape(self.head_input), "the features the head reads: what "
                         "--freeze backbone computes once per image and trains a new head on"))
            rows.append((f"{self.head} output", str(self.classes), f"one score per class ({self.classes:,})"))
        width = max((len(r[0]) for r in rows), default=0)
        shapes = max((len(r[1]) for r in rows), default=0)
        head = f"{self.model} on {self.image}: input {shape(self.input_shape)}"
        return [head] + [f"  {name:<{width}}  {size:<{shapes}}  {what}" for name, size, what in rows]


@torch.no_grad()
def features(model: ModelLike, image: str | Path | None = None, invert: bool = False, *, pretrained: bool = False,
             weights: str | Path | None = None, image_size: int | None = None, trust_code: bool = False) -> Features:
    """The shapes of what the network makes of `image` (default: the sample photo): its last feature maps
    (AlexNet's `features`: 256x6x6 at 224x224) and the head's input (AlexNet's 4,096, EfficientNet-Lite0's
    pooled 1,280), from one forward pass. model, pretrained, ...: see `trained_model`."""
    from cnnlab.data.images import SAMPLE_IMAGE

    image = SAMPLE_IMAGE if image is None else image
    how = {"pretrained": pretrained, "weights": weights, "image_size": image_size, "trust_code": trust_code}
    trained, _, x = _model_and_images(model, [image], invert, how)
    net = trained.net
    outputs: dict[str, tuple[int, ...]] = {}
    head_input: list[tuple[int, ...]] = []
    handles = []
    for name, child in net.named_children():
        # Pooling layers are left out: the feature maps are what the convolutions give before the pooling that
        # leads to the head (AlexNet's `features`, not its `avgpool` of the same shape; a ResNet's `layer4`).
        if "Pool" not in type(child).__name__:
            def keep(_m: nn.Module, _a: tuple, output: object, name: str = name) -> None:
                tensor = first_tensor(output)
                if tensor is not None:
                    outputs[name] = tuple(tensor.shape[1:])
            handles.append(child.register_forward_hook(keep))
    linear = [name for name, m in net.named_modules() if isinstance(m, nn.Linear)]
    head = linear[-1] if linear else None
    if head is not None:
        handles.append(net.get_submodule(head).register_forward_pre_hook(
            lambda _m, args: head_input.append(tuple(args[0].shape[1:]))))
    try:
        logits = net.eval()(x)
    finally:
        for handle in handles:
            handle.remove()
    maps = [(name, s) for name, s in outputs.items() if len(s) == 3 and s[1] * s[2] > 1]
    name = (str(model) if isinstance(model, (str, Path)) else str(model.path) if isinstance(model, Run)
            else type(net).__name__)
    return Features(name, Path(image).name, tuple(x.shape[1:]), maps[-1][0] if maps else None,
                    maps[-1][1] if maps else None, head, head_input[-1] if head_input else None,
                    int(first_tensor(logits).shape[1]))


def filters(model: ModelLike, layer: str | None = None, out: str | Path = "filters.png", *, pretrained: bool = False,
            weights: str | Path | None = None, image_size: int | None = None, trust_code: bool = False) -> Path:
    """Write the learned filters of `layer` (default: the first convolution) as a PNG file. model, pretrained,
    ...: see `trained_model`."""
    trained = trained_model(model, "cpu", pretrained, weights, image_size, trust_code)
    shape = trained.preprocess.input_shape
    found = layer_weights(trained.net, shape, layer)
    if found is None:
        raise UsageError("the model has no convolution layer, nor a first linear layer on the whole image, "
                         "to show; name a layer with --layer")
    return viz.save(filter_figure(*found, shape), out)


def cam(model: ModelLike, images: list[str | Path], layer: str | None = None, target: str | None = None,
        out: str | Path = "cam.png", invert: bool = False, *, pretrained: bool = False,
        weights: str | Path | None = None, image_size: int | None = None, trust_code: bool = False) -> Path:
    """Write Grad-CAM heat maps of image files (default: at the last feature maps, for the predicted class).
    model, pretrained, ...: see `trained_model`."""
    how = {"pretrained": pretrained, "weights": weights, "image_size": image_size, "trust_code": trust_code}
    trained, shown, x = _model_and_images(model, images, invert, how)
    net, classes = trained.net, trained.classes
    if layer is not None:
        find_layer(net, layer)
    index = None
    if target is not None:
        if target not in classes:
            listed = ", ".join(classes) if len(classes) <= 20 else \
                f"{', '.join(classes[:5])}, ... ({len(classes):,} classes; `cnnlab predict` shows the likely ones)"
            whose = "the run's" if trained.run is not None else "the model's"
            raise UsageError(f"unknown class {target!r}; {whose} classes are {listed}")
        index = classes.index(target)
    names = [Path(p).name for p in images]
    if layer is not None:
        return viz.save(cam_figure(net, grad_cam(net, x, layer, index), shown, classes, names=names), out)
    # The command keeps to the last feature maps, as documented; where they are blank, it names a layer that is not.
    last, better = evident_cam(net, x, index)
    note = "" if better is last else (f"no positive evidence here for {int(last.empty.sum())} of {len(x)}; "
                                      f"--layer {better.layer} finds it for {int((~better.empty).sum())}")
    return viz.save(cam_figure(net, last, shown, classes, names=names, note=note), out)
