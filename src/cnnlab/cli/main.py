"""The `cnnlab` command: each subcommand parses its flags and calls one library function."""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

from cnnlab.version import __version__
from cnnlab.cli import data as cli_data, inspect as cli_inspect, serve as cli_serve, teach as cli_teach

# Each command imports what it needs inside its function, and the parser is built from torch-free
# modules (settings.py, recipes.py): `cnnlab --help` and the NumPy teaching commands must not pay for
# torch (tests/test_startup.py).

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _data_flags(p: argparse.ArgumentParser, dataset: bool = True) -> None:
    if dataset:
        p.add_argument("--dataset", default="sample", help="mnist, fashion-mnist, cifar10, patterns, sample "
                       "(the default, shipped with cnnlab) or folder:PATH")
    p.add_argument("--data-dir", help="folder holding the datasets (default: $CNNLAB_DATA, then ~/.cache/cnnlab)")
    p.add_argument("--download", action="store_true", help="download mnist, fashion-mnist or cifar10 with "
                   "torchvision if not found (needs internet)")
    if dataset:
        p.add_argument("--image-size", type=int, help="resize images to N x N (default: as they are; a network "
                       "with --pretrained / --weights: its input, default 224)")
        p.add_argument("--channels", type=int, choices=(1, 3), help="force grayscale (1) or RGB (3)")
        p.add_argument("--skip-bad-images", action="store_true", help="leave out unreadable files of a folder")


def _train_flags(p: argparse.ArgumentParser) -> None:
    from cnnlab.training.recipes import RECIPES
    from cnnlab.settings import AUGMENTS, OPTIMIZERS, PRECISIONS, SCHEDULES, Settings

    d = Settings()  # the lecture's recipe; flags left out keep the --recipe's values (None here)
    _data_flags(p)
    p.add_argument("--recipe", choices=tuple(RECIPES), help="a named set of settings and model per dataset: "
                   "lecture (the default: lecture 001's), fast, fast-long; the flags below override it")
    p.add_argument("--epochs", type=int, help=f"passes over the training data (default {d.epochs}; with "
                   "--resume: train on up to this many)")
    p.add_argument("--batch-size", type=int, help=f"images per step, over all processes (default {d.batch_size})")
    p.add_argument("--lr", type=float, help=f"(peak) learning rate (default {d.lr:g})")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help=f"default {d.optimizer}")
    p.add_argument("--momentum", type=float, help=f"SGD momentum (default {d.momentum})")
    p.add_argument("--nesterov", action=argparse.BooleanOptionalAction, help="Nesterov momentum (SGD)")
    p.add_argument("--weight-decay", type=float, help="L2 penalty (default 0, also for adamw; decoupled there)")
    p.add_argument("--schedule", choices=SCHEDULES, help="learning rate over the run (default constant)")
    p.add_argument("--warmup", type=float, help="share of the steps the rate rises over, from lr/10 (default 0)")
    p.add_argument("--label-smoothing", type=float, help="share of the target spread over all classes (default 0)")
    p.add_argument("--augment", metavar="SPEC", help="augmentation: none (the default), or items applied in turn, "
                   f"each image with its own draw: {', '.join(AUGMENTS)}; e.g. 'flip, rotation(15), crop(4)' "
                   "(crop+flip means crop, flip)")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, help="test-time augmentation: validate, test "
                   "and predict on each image and its mirror image, averaged (for data where a mirror image is "
                   "the same class)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                   help="NHWC memory layout (default on: the same arithmetic, faster convolutions)")
    p.add_argument("--precision", choices=PRECISIONS, help="bf16: autocast to bfloat16 (CPUs with AVX-512 BF16 "
                   "or AMX, GPUs); auto: bf16 where the hardware runs it natively, else fp32 (the fast recipes' "
                   "choice; `cnnlab info` shows what it picks here); default fp32")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, help="torch.compile the model (a pause first)")
    p.add_argument("--threads", type=int, help="CPU threads per process (default: the cores, shared out under "
                   "torchrun)")
    p.add_argument("--seed", type=int, help="seed of weights, split, order and augmentation (default 0)")
    p.add_argument("--val-fraction", type=float,
                   help=f"share of the training images held out for validation (default {d.val_fraction})")
    p.add_argument("--subset", type=int, help="train on the first N training images only")
    p.add_argument("--watch-test", action=argparse.BooleanOptionalAction, help="also measure test accuracy after "
                   "every epoch (a history column; the best epoch is still chosen on validation)")
    p.add_argument("--patience", type=int, help="stop after N epochs without a better validation loss")
    p.add_argument("--no-normalize", dest="normalize", action="store_false", default=None,
                   help="only scale pixels to [0, 1], as the lectures do (default: also standardize)")
    p.add_argument("--checkpoint-steps", type=int, help="also save a checkpoint every N steps within an epoch "
                   "(default: only by time)")
    p.add_argument("--checkpoint-seconds", type=float, help="save a checkpoint within an epoch every S seconds "
                   f"(default {d.checkpoint_seconds:g}; the end of every epoch always saves one)")
    p.add_argument("--out", help="run folder (default runs/<model>-<dataset>-<time>)")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--no-report", dest="report", action="store_false", help="do not write report.html at the end")
    _transfer_flags(p)
    _device_flag(p)
    p.add_argument("--quiet", action="store_true", help="print nothing while training")


def _transfer_flags(p: argparse.ArgumentParser) -> None:
    """Transfer learning (lecture 003): Settings' pretrained, weights, freeze, unfreeze_after, backbone_lr."""
    from cnnlab.settings import FREEZES, Settings

    d = Settings()
    g = p.add_argument_group("transfer learning", "start a famous network (alexnet, vgg11, vgg16, resnet18, "
                             "resnet50, mobilenet-v3-small, efficientnet-lite0) from trained weights; its head (the "
                             "last Linear layer) is replaced for the dataset's classes, and its images are read as "
                             "ImageNet's were (--image-size, default 224)")
    weights = g.add_mutually_exclusive_group()
    weights.add_argument("--pretrained", action="store_true", default=None, help="start from the network's ImageNet "
                         "weights (torchvision's from the torch hub cache, downloaded there when online; "
                         "efficientnet-lite0's from cnnlab[pretrained])")
    weights.add_argument("--weights", metavar="FILE", help="start from the weights in FILE (safetensors, or a state "
                         "dict saved with torch.save; no code is unpickled); a head of another class count is "
                         "replaced")
    g.add_argument("--freeze", choices=FREEZES, help="backbone: train only the head on features computed once per "
                   "image and cached (no augmentation); none (the default): every layer trains")
    g.add_argument("--unfreeze-after", type=int, metavar="N", help="fine-tune: the head alone for N epochs with the "
                   "backbone frozen (batch norm in eval mode), then everything, the backbone at --backbone-lr times "
                   "the rate")
    g.add_argument("--backbone-lr", type=float, metavar="F", help="with --unfreeze-after: the backbone's learning "
                   f"rate as a share of --lr (default {d.backbone_lr:g})")


def _trust_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trust-code", action="store_true", help="let a run folder whose model is package.module:attr "
                   "import and run that code; only for folders you made or trust (a folder is data, and by "
                   "default cnnlab refuses code it names)")


def _open(path: str, args: argparse.Namespace):
    from cnnlab.runs.folder import open_run

    return open_run(path, trust_code=args.trust_code)


def _device_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")


def _format_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", choices=("table", "markdown", "json"), default="table", help="output format")


def _settings(args: argparse.Namespace) -> dict:
    from cnnlab.settings import Settings

    keys = [f.name for f in fields(Settings)]  # every setting has a flag of the same name
    return {k: getattr(args, k) for k in keys if getattr(args, k) is not None}  # None: Settings' default


def _data_kwargs(args: argparse.Namespace) -> dict:
    return {"data_dir": args.data_dir, "download": args.download, "image_size": args.image_size,
            "channels": args.channels, "skip_bad_images": args.skip_bad_images}


def cmd_train(args: argparse.Namespace) -> None:
    from cnnlab.errors import UsageError
    from cnnlab.training.loop import resume, train

    if args.resume:
        given = sorted(set(_settings(args)) - {"epochs"})
        if given:
            raise UsageError(f"--resume continues a run with its own settings; leave out "
                             f"{', '.join('--' + k.replace('_', '-') for k in given)} (only --epochs may change)")
        resume(args.resume, epochs=args.epochs, device=args.device, verbose=not args.quiet, report=args.report,
               trust_code=args.trust_code)
        return
    train(args.model, args.dataset, **_data_kwargs(args), out=args.out, overwrite=args.overwrite,
          device=args.device, verbose=not args.quiet, report=args.report, **_settings(args))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from cnnlab.views import formatting
    from cnnlab.inspect.evaluate import evaluate

    ev = evaluate(_open(args.run, args), split=args.split, data_dir=args.data_dir, download=args.download, device=args.device,
                  dataset=args.dataset)
    print(formatting.evaluation(ev, args.format))


def cmd_export(args: argparse.Namespace) -> None:
    from cnnlab.export import export

    result = export(_open(args.run, args), out=args.out, format=args.format, data_dir=args.data_dir,
                    folder=args.folder, device=args.device, check=args.check)
    print("\n".join(result.lines()))


def cmd_compare(args: argparse.Namespace) -> None:
    from cnnlab.views import formatting
    from cnnlab.training.compare import compare

    comp = compare(args.models, args.dataset, **_data_kwargs(args), out=args.out, overwrite=args.overwrite,
                   device=args.device, verbose=not args.quiet, report=args.report, **_settings(args))
    if comp is None:  # a rank other than 0 under torchrun: rank 0 prints
        return
    print(formatting.comparison(comp, args.format))
    if comp.report and args.format == "table":
        print(f"\nside by side: {comp.report}")


def cmd_report(args: argparse.Namespace) -> None:
    from cnnlab.report.page import compare_report, report

    data = {"device": args.device, "data_dir": args.data_dir, "dataset": args.dataset, "download": args.download}
    if len(args.runs) == 1:
        path = report(_open(args.runs[0], args), out=args.out, **data)
    else:
        path = compare_report([_open(run, args) for run in args.runs], args.out or "report.html", **data)
    print(f"wrote {path}")


def cmd_demo(args: argparse.Namespace) -> None:
    from cnnlab.views import formatting
    from cnnlab.training.compare import DEMO_SETTINGS, demo

    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 alone prints
        print(f"cnnlab demo: lecture 001's MLP vs CNN on the Fashion-MNIST sample shipped with cnnlab "
              f"(Adam, lr {DEMO_SETTINGS['lr']:g}, batch {DEMO_SETTINGS['batch_size']}, {DEMO_SETTINGS['epochs']} "
              "epochs)\n")
    comp = demo(args.out, device=args.device)
    if comp is None:  # a rank other than 0 under torchrun
        return
    print(formatting.comparison(comp))
    cnn = Path(comp.out) / "seed-cnn"
    tips = [
        (f"cnnlab evaluate {cnn}", "per-class accuracy and confusion matrix"),
        ("cnnlab sample-images examples", "pictures to try: a sneaker, a bag, a shoe, a photo; lecture 001's A and B"),
        (f"cnnlab predict {cnn} examples/sneaker.png", "classify a picture (yours too; --invert if dark on light)"),
        (f"cnnlab cam {cnn} examples/shoe.png", "where in the picture the model sees its class (Grad-CAM)"),
        ("cnnlab compare seed-mlp seed-cnn --dataset fashion-mnist --data-dir DIR", "the full dataset"),
        ("cnnlab train --model small-cnn-28", "a batch-normalized CNN with 1/8 of the weights"),
        ("cnnlab train --recipe fast", "a small CNN, one-cycle schedule, bf16 where the CPU has it: the fastest way "
         "to a good model"),
        ("cnnlab models", "every registered network"),
        ("cnnlab summary seed-cnn --explain", "every shape and parameter count as a formula"),
        ('cnnlab conv --input "1 2 3; 4 5 6; 7 8 9" --kernel "1 0; 0 -1"', "a convolution by hand, window by window"),
        ("cnnlab filter --grid --out filters.png", "Sobel, blur, sharpen, edge on a real photo"),
    ]
    width = max(len(command) for command, _ in tips)
    print(f"\nRun folders: {comp.out}/seed-mlp and {cnn} "
          "(config.json, history.csv, metrics.json, model.safetensors, report.html)")
    print(f"Open {comp.report} in a browser: both models side by side, curves, confusion, filters, feature maps, "
          "Grad-CAM\n\nTry next:")
    for command, what in tips:
        print(f"  {command:<{width}}   # {what}")


def cmd_sample_images(args: argparse.Namespace) -> None:
    from cnnlab.data.examples import describe, write_examples

    for path in write_examples(args.dir, overwrite=args.overwrite):
        print(f"wrote {path}  ({describe(path)})")


def cmd_models(args: argparse.Namespace) -> None:
    import torch

    from cnnlab.errors import ModelError
    from cnnlab.views import formatting
    from cnnlab.models import get_model, list_models, model_info
    from cnnlab.models.famous import famous

    rows = []
    for name in list_models():
        info = model_info(name)
        counts = {}
        for key, shape in (("params_1x28x28", (1, 28, 28)), ("params_3x32x32", (3, 32, 32))):
            try:
                # A famous network is built on the meta device: only its parameters' shapes are counted, and
                # initializing VGG16's 138 M weights takes seconds.
                with torch.device("meta") if famous(name) else torch.device("cpu"):
                    counts[key] = sum(p.numel() for p in get_model(name, shape, 10).parameters())
            except ModelError:  # e.g. a colour network on 1x28x28, or AlexNet's pooling on 32x32: "-"
                counts[key] = None
        rows.append({"model": name, "source": info.source, **counts, "description": info.description})
    if args.format == "json":
        print(formatting.to_json(rows))
        return
    columns = [("model", "model", formatting.plain), ("source", "from", formatting.plain),
               ("params_1x28x28", "params 1x28x28", formatting.integer),
               ("params_3x32x32", "params 3x32x32", formatting.integer),
               ("description", "description", formatting.plain)]
    print(formatting.table(rows, columns, args.format, title="registered models (10 classes)"))


def cmd_info(args: argparse.Namespace) -> None:
    from cnnlab.views import formatting
    from cnnlab.training import machine
    from cnnlab.inspect.evaluate import resolve_device

    print(formatting.machine_info(machine.info(resolve_device(args.device), measure=args.measure), args.format))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnnlab", description="A workbench for convolutional neural networks: train, evaluate, compare.",
    )
    parser.add_argument("--version", action="version", version=f"cnnlab {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help: str, func) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(func=func)
        return p

    p = command("demo", "lecture 001's MLP vs CNN on the Fashion-MNIST sample shipped with cnnlab", cmd_demo)
    p.add_argument("--out", default="runs/demo", help="where the two run folders go (default runs/demo)")
    _device_flag(p)

    p = command("train", "train a model and write a run folder", cmd_train)
    p.add_argument("--model", help="a registered name (see `cnnlab models`), a spec such as \"conv(32,3) relu "
                   "maxpool(2) flatten linear(10)\", a .json/.toml spec file, or package.module:attr (default: the "
                   "recipe's; seed-cnn for the lecture's)")
    _train_flags(p)
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run from its last checkpoint, with "
                   "the run's own settings (only --epochs, --device, --quiet and --trust-code apply)")
    _trust_flag(p)

    p = command("evaluate", "test accuracy, per-class accuracy and confusion matrix of a run", cmd_evaluate)
    p.add_argument("run", help="run folder")
    _trust_flag(p)
    p.add_argument("--split", default="test", help="test (default), train, or an extra split (test-shifted)")
    p.add_argument("--dataset", help="read this dataset instead of the run's own, e.g. folder:NEW_PLACE")
    _data_flags(p, dataset=False)
    _device_flag(p)
    _format_flag(p)

    cli_inspect.add_commands(command, _device_flag, _format_flag)  # predict, features, featuremaps, filters, cam

    p = command("export", "write a run's model as one file that runs without cnnlab (ONNX or .pt2), with its "
                "class names and preprocessing, checked against PyTorch on the test split", cmd_export)
    p.add_argument("run", help="run folder")
    _trust_flag(p)
    p.add_argument("--format", choices=("onnx", "pt2"), default="onnx", help="onnx (onnxruntime and others; needs "
                   "pip install 'cnnlab[export]') or pt2 (torch.export.load); default onnx")
    p.add_argument("--out", help="the file to write (default RUN/model.onnx or RUN/model.pt2; a JSON with the "
                   "classes and preprocessing goes beside it)")
    p.add_argument("--folder", metavar="DIR", help="check on these image files instead of the test split")
    p.add_argument("--no-check", dest="check", action="store_false", help="write the file without comparing it "
                   "with PyTorch")
    p.add_argument("--data-dir", help="folder holding the datasets (default: $CNNLAB_DATA, then ~/.cache/cnnlab)")
    p.add_argument("--device", default="cpu", help="where PyTorch computes the reference logits: cpu (default), "
                   "cuda or auto; the file is always exported from the CPU")

    p = command("compare", "train several models with the same settings and compare them", cmd_compare)
    p.add_argument("models", nargs="+", metavar="MODEL", help="registered names or specs, e.g. seed-mlp seed-cnn")
    _train_flags(p)
    _format_flag(p)

    p = command("report", "write a run's report.html: summary, curves, per-class accuracy, confusion, top losses, "
                "augmentation, filters, feature maps, Grad-CAM; several runs give one page side by side", cmd_report)
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folder(s)")
    _trust_flag(p)
    p.add_argument("--out", help="the page to write (default RUN/report.html; report.html for several runs)")
    p.add_argument("--dataset", help="read this dataset instead of the run's own, e.g. folder:NEW_PLACE")
    _data_flags(p, dataset=False)
    _device_flag(p)

    p = command("sample-images", "write the example inputs the README's tour uses: a sneaker, a bag, a shoe "
                "(Fashion-MNIST test images from the shipped sample), a photo (CC0 cat), and lecture 001's "
                "matrices A and B as CSV", cmd_sample_images)
    p.add_argument("dir", metavar="DIR", help="the folder to write them into (made if missing)")
    p.add_argument("--overwrite", action="store_true", help="replace files of the same names with other contents")

    p = command("models", "list the registered models with their parameter counts", cmd_models)
    _format_flag(p)

    cli_inspect.add_summary(command, _format_flag)

    cli_teach.add_commands(command)
    cli_serve.add_command(command)

    p = command("info", "versions, device, CPU capability, threads, the precision the recipes choose here and "
                "the fast recipe's speed: paste it into a bug report", cmd_info)
    p.add_argument("--no-measure", dest="measure", action="store_false", help="skip the speed measurement (2 s)")
    _device_flag(p)
    _format_flag(p)

    cli_data.add_command(command, lambda p: _data_flags(p, dataset=False), _format_flag)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from cnnlab.errors import Error, Interrupted

    for stream in (sys.stdout, sys.stderr):  # paths given on Linux may hold bytes that are not UTF-8
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        args.func(args)
    except Interrupted as exc:
        print(f"\n{exc}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Error as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `cnnlab evaluate RUN | head`: the reader left, nothing to report
        sys.stderr.close()
        return 0
    return 0
