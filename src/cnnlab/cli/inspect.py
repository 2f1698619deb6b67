"""The inspection commands of `cnnlab`: predict, features, featuremaps, filters, cam and summary, each a thin
call into inspect/evaluate.py, inspect/inside.py or inspect/summary.py. main.py adds them to its parser.

Each takes a MODEL: a run folder, or a famous network's name with --pretrained (its ImageNet weights) or
--weights FILE, so a pretrained network is usable without training:

    cnnlab predict efficientnet-lite0 --pretrained photo.jpg
    cnnlab features alexnet --pretrained photo.jpg               # lecture 003: alexNet.features(x).shape
    cnnlab featuremaps alexnet --pretrained photo.jpg --layer features.0 --untrained
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

Command = Callable[[str, str, Callable[[argparse.Namespace], None]], argparse.ArgumentParser]

# Each command imports what it needs inside its function: `cnnlab COMMAND --help` must not import torch
# (tests/test_startup.py).

MODEL_HELP = ("a run folder, or a famous network's name with --pretrained or --weights FILE: alexnet, vgg11, vgg16, "
              "resnet18, resnet50, mobilenet-v3-small, efficientnet-lite0")


def model_flags(p: argparse.ArgumentParser, positional: bool = True) -> None:
    """MODEL (positional: a run folder or a name) and the flags that choose its weights: a run folder's own,
    --pretrained or --weights FILE."""
    if positional:
        p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--pretrained", action="store_true", help="MODEL names a famous network: use its ImageNet "
                         "weights, preprocessing and 1,000 class names (torchvision's from the torch hub cache, "
                         "downloaded there when online; efficientnet-lite0's from cnnlab[pretrained])")
    weights.add_argument("--weights", metavar="FILE", help="MODEL names a famous network: use the weights in FILE "
                         "(safetensors, or a state dict saved with torch.save; no code is unpickled)")
    if positional:  # a run folder may name code to import
        p.add_argument("--trust-code", action="store_true", help="let a run folder whose model is "
                       "package.module:attr import and run that code; only for folders you made or trust")


def _image_size_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image-size", type=int, metavar="N", help="with --pretrained / --weights: the network's input "
                   "N x N (default 224, as ImageNet's networks were trained)")


def how(args: argparse.Namespace) -> dict[str, Any]:
    """The options of inspect.evaluate.trained_model that the flags give."""
    return {"pretrained": args.pretrained, "weights": args.weights, "trust_code": getattr(args, "trust_code", False),
            "image_size": getattr(args, "image_size", None)}


def cmd_predict(args: argparse.Namespace) -> None:
    from cnnlab.views import formatting
    from cnnlab.inspect.evaluate import predict

    preds = predict(args.model, args.images, topk=args.top_k, invert=args.invert, device=args.device, **how(args))
    print(formatting.predictions(preds, args.format))


def cmd_features(args: argparse.Namespace) -> None:
    from cnnlab.views import formatting
    from cnnlab.inspect.inside import features

    found = features(args.model, args.image, args.invert, **how(args))
    print(formatting.to_json(found.to_dict()) if args.format == "json" else "\n".join(found.lines()))


def cmd_featuremaps(args: argparse.Namespace) -> None:
    from cnnlab.inspect.inside import featuremaps

    paths = featuremaps(args.model, args.image, args.layer, args.out, args.channels, args.invert,
                        untrained=args.untrained, **how(args))
    print(f"wrote {len(paths)} file(s): " + ", ".join(map(str, paths)))


def cmd_filters(args: argparse.Namespace) -> None:
    from cnnlab.inspect.inside import filters

    print(f"wrote {filters(args.model, args.layer, args.out, **how(args))}")


def cmd_cam(args: argparse.Namespace) -> None:
    from cnnlab.inspect.inside import cam

    print(f"wrote {cam(args.model, args.images, args.layer, args.target, args.out, args.invert, **how(args))}")


def cmd_summary(args: argparse.Namespace) -> None:
    from cnnlab.views.formatting import summary_table
    from cnnlab.inspect.summary import summary

    if args.pretrained or args.weights is not None:  # the 1,000-class network with its weights laid on, checked
        from cnnlab.errors import UsageError
        from cnnlab.inspect.evaluate import trained_model

        if args.classes is not None:
            raise UsageError("--pretrained / --weights summarize the network with its ImageNet head of 1,000 "
                             "classes; leave out --classes")
        trained = trained_model(args.model, "cpu", args.pretrained, args.weights)
        shape = args.input or "x".join(map(str, trained.preprocess.input_shape))
        result = summary(trained.net, shape, None, args.batch_size)
    else:
        result = summary(args.model, args.input, args.classes, args.batch_size)
    print(summary_table(result, args.format, args.depth, args.explain))


def add_commands(command: Command, device_flag: Callable[[argparse.ArgumentParser], None],
                 format_flag: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add predict, features, featuremaps, filters and cam through main.py's `command(name, help, func)`."""
    invert_help = "invert dark-on-light images (MNIST-style data)"
    layer_help = "a layer name as `cnnlab summary` shows it (e.g. conv1, 3, layer4.1.conv2, conv_stem)"

    p = command("predict", "classify image files with a run's model, or a pretrained network's ImageNet classes "
                "(top-k with probabilities)", cmd_predict)
    model_flags(p)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="PNG, JPEG, ... of any size and mode")
    p.add_argument("--top-k", type=int, default=3, help="how many classes to show (default 3)")
    p.add_argument("--invert", action="store_true", help=invert_help)
    _image_size_flag(p)
    device_flag(p)
    format_flag(p)

    p = command("features", "what the network makes of a photo on the way to its classes (lecture 003's "
                "alexNet.features(x).shape): the last feature maps (AlexNet's `features`: 256x6x6 at 224x224; "
                "efficientnet-lite0's bn2: 1280x7x7) and the head's input (AlexNet's 4096; efficientnet-lite0's "
                "pooled 1280), the features that --freeze backbone trains a new head on", cmd_features)
    model_flags(p)
    p.add_argument("image", metavar="IMAGE", help="PNG, JPEG, ... (`cnnlab sample-images DIR` writes a photo)")
    p.add_argument("--invert", action="store_true", help=invert_help)
    _image_size_flag(p)
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format")

    p = command("featuremaps", "the feature maps an image makes in each convolution layer (PNG files); "
                "--untrained shows them beside the same network's untrained, as lecture 003 contrasts AlexNet's "
                "first trained convolution with a random one", cmd_featuremaps)
    model_flags(p)
    p.add_argument("image", metavar="IMAGE", help="PNG, JPEG, ... (converted as predict converts it)")
    p.add_argument("--layer", help=layer_help + " (default: every convolution)")
    p.add_argument("--untrained", action="store_true", help="beside each layer's maps, those of the same network "
                   "untrained (every layer at PyTorch's default random initialization), in one PNG per layer: "
                   "IMAGE-LAYER-trained-vs-untrained.png")
    p.add_argument("--out", default="featuremaps", help="folder for the PNG files (default featuremaps/)")
    p.add_argument("--channels", type=int, default=64, help="channels shown per layer (default 64)")
    p.add_argument("--invert", action="store_true", help=invert_help)
    _image_size_flag(p)

    p = command("filters", "the learned filters of a layer as pictures (PNG)", cmd_filters)
    model_flags(p)
    p.add_argument("--layer", help=layer_help + " (default: the first convolution)")
    p.add_argument("--out", default="filters.png", help="the PNG file (default filters.png)")

    p = command("cam", "Grad-CAM: where in each image the model found the evidence for its class (PNG)", cmd_cam)
    model_flags(p)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="PNG, JPEG, ... (converted as predict converts it)")
    p.add_argument("--layer", help=layer_help + " (default: the last feature maps, after the last convolution's "
                   "pooling and ReLU)")
    p.add_argument("--class", dest="target", metavar="NAME", help="explain this class (default: the predicted one; "
                   "a pretrained network's are ImageNet's, e.g. tabby)")
    p.add_argument("--out", default="cam.png", help="the PNG file (default cam.png)")
    p.add_argument("--invert", action="store_true", help=invert_help)
    _image_size_flag(p)


def add_summary(command: Command, format_flag: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add summary through main.py's `command(name, help, func)`."""
    p = command("summary", "each layer's output shape, parameters, mult-adds and receptive field; --explain "
                "shows how each number comes about", cmd_summary)
    p.add_argument("model", help="a registered name, a spec in quotes (\"conv(64,3) relu ... linear(10)\"), "
                   "a .json/.toml spec file, or package.module:attr (e.g. torchvision.models:resnet50)")
    p.add_argument("--input", help="input shape CxHxW (1x28x28) or a number of features (784); default: a "
                   "registered model's own, or the spec file's")
    p.add_argument("--classes", type=int, help="classes of a registered model or a builder taking num_classes "
                   "(default 10)")
    p.add_argument("--depth", type=int, default=3, help="how deep into nested modules to show rows (default 3)")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass, for mult-adds and memory")
    p.add_argument("--explain", action="store_true", help="each layer's output size and parameters as formulas")
    model_flags(p, positional=False)
    format_flag(p)
