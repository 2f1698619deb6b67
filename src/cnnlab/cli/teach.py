"""The teaching commands of `cnnlab`: arith, conv, pool and filter, each a thin call into
arithmetic.py, steps.py or filters.py. cli.py adds them to its parser."""

from __future__ import annotations

import argparse
from collections.abc import Callable

Command = Callable[[str, str, Callable[[argparse.Namespace], None]], argparse.ArgumentParser]


def cmd_arith(args: argparse.Namespace) -> None:
    from cnnlab.teach import arithmetic

    if args.question == "size":
        lines = arithmetic.size_answer(args.size, args.kernel, args.stride, args.padding, args.dilation,
                                       args.pool, args.ceil)
    elif args.question == "padding":
        lines = arithmetic.padding_answer(args.kernel, args.stride, args.dilation, args.size)
    elif args.question == "pool":
        lines = arithmetic.pool_answer(args.factor, args.size)
    else:
        lines = _shape_lines(args.spec, args.input)
    print("\n".join(lines))


def _shape_lines(spec: str, input_shape: str | None) -> list[str]:
    import math

    from cnnlab.teach.arithmetic import shape_text
    from cnnlab.models.spec import walk

    built = walk(spec, input_shape)
    lines = []
    for i, b in enumerate(built, 1):
        shown = shape_text(b.in_shape), shape_text(b.math.out_shape)
        lines.append(f"{i}. {b.layer}: {shown[0]} -> {shown[1]}")
        lines += [f"     {step}" for step in b.math.steps] + [f"     warning: {w}" for w in b.math.warnings]
    out = built[-1].math.out_shape
    params = sum(p.numel() for b in built for p in b.module.parameters())
    lines.append(f"output: {shape_text(out)} = {math.prod(out):,} values per image "
                 f"(values, not parameters: the layers have {params:,} parameters)")
    return lines


def _check_flags(**flags: tuple[int | None, int, int]) -> None:
    """Refuse a flag outside [low, high], naming the flag (steps.py would name the step's argument)."""
    from cnnlab.errors import UsageError

    for name, (value, low, high) in flags.items():
        if value is not None and not low <= value <= high:
            raise UsageError(f"--{name} must be from {low} to {high:,}, not {value:,}")


def _step_flags(args: argparse.Namespace, **sizes: int | None) -> None:
    """The window flags of conv and pool, and --limit, in the ranges steps.py accepts."""
    from cnnlab.teach.steps import MAX_PADDING, MAX_SIZE

    _check_flags(**{k: (v, 1, MAX_SIZE) for k, v in sizes.items()}, padding=(args.padding, 0, MAX_PADDING),
                 limit=(args.limit, 0, 10**9))


def _grad(value: str | None):
    from cnnlab.teach.steps import parse_matrix

    return value if value in (None, "ones") else parse_matrix(value)


def cmd_conv(args: argparse.Namespace) -> None:
    from cnnlab.teach import steps
    from cnnlab.errors import UsageError

    _step_flags(args, stride=args.stride, dilation=args.dilation)
    kernel = steps.parse_matrix(args.kernel) if args.kernel else None
    given = {"stride": args.stride, "padding": args.padding, "dilation": args.dilation}
    if args.chain:
        if args.flip or any(v is not None for v in given.values()):
            raise UsageError("with --chain, write the settings into the steps, e.g. "
                             "\"convolve(stride=2, padding=1)\", not as --flip/--stride/--padding/--dilation")
        chain = args.chain
    else:
        chain = ("convolve" if args.flip else "conv") + "(" + ", ".join(
            f"{k}={v}" for k, v in given.items() if v is not None) + ")"
    print(steps.text(steps.run(steps.parse_matrix(args.input), chain, kernel, _grad(args.grad)), args.limit), end="")


def cmd_pool(args: argparse.Namespace) -> None:
    from cnnlab.teach import steps
    from cnnlab.errors import UsageError

    _step_flags(args, size=args.size, stride=args.stride, dilation=args.dilation)
    if args.avg and args.dilation is not None:
        raise UsageError("average pooling has no dilation (nn.AvgPool2d has none); drop --dilation or --avg")
    settings = [str(args.size), f"padding={args.padding}", f"ceil_mode={str(args.ceil).lower()}"]
    settings += [f"{k}={v}" for k, v in (("stride", args.stride), ("dilation", args.dilation)) if v is not None]
    step = f"{'avgpool' if args.avg else 'maxpool'}({', '.join(settings)})"
    print(steps.text(steps.run(steps.parse_matrix(args.input), step, None, _grad(args.grad)), args.limit), end="")


def cmd_filter(args: argparse.Namespace) -> None:
    from cnnlab.teach import filters

    if args.list:
        for name, kernel in filters.KERNELS.items():
            print(f"{name:10} {kernel.about}")
        print(f"{filters.SOBEL:10} the gradient magnitude sqrt(S_x^2 + S_y^2)")
        return
    if not args.image:
        from cnnlab.data.images import SAMPLE_IMAGE

        args.image = str(SAMPLE_IMAGE)
        print(f"no image given: using the photo shipped with cnnlab, {SAMPLE_IMAGE.name}")
    if args.grid is not None:
        if args.kernel is not None or args.stride != 1:
            from cnnlab.errors import UsageError

            raise UsageError("--grid takes its kernels as a list, --grid sobel-x,gaussian:5,edge, and has no --kernel "
                             "or --stride")
        kernels = [k.strip() for k in args.grid.split(",") if k.strip()] or list(filters.GRID_DEFAULT)
        out = filters.grid(args.image, kernels, args.edge, args.out or "filters.png", args.color, args.scale)
        print(f"wrote {out}: the image and {len(kernels)} filtered versions ({', '.join(kernels)}), edge={args.edge}")
        return
    result = filters.filter_file(args.image, args.kernel or "sobel", args.edge, args.out or "filtered.png", args.stride,
                                 args.color, args.scale)
    low, high = float(result.output.min()), float(result.output.max())
    size = "x".join(map(str, result.output.shape[1:]))
    print(f"{result.kernel} on {args.image} ({'x'.join(map(str, result.input_size))}, "
          f"{'each colour channel' if args.color else 'grayscale by ITU-R 601 luma'}), edge={args.edge}, "
          f"stride={args.stride}")
    if result.weights is not None:
        from cnnlab.teach.steps import matrix_text

        print(f"kernel (weights sum to {result.weights.sum():.4g}):\n{matrix_text(result.weights)}")
    print(f"output {size}, values {low:.4g} to {high:.4g}, shown with scale={result.scale} -> {result.path}")


def add_commands(command: Command) -> None:
    """Add arith, conv, pool and filter through cli.py's `command(name, help, func)`."""
    p = command("arith", "the lectures' arithmetic: an output size, the padding that keeps a size, a pooling "
                "that downsamples, the shape after a stack of layers", cmd_arith)
    questions = p.add_subparsers(dest="question", metavar="QUESTION", required=True)
    q = questions.add_parser("size", help="output size of one convolution or pooling layer")
    q.add_argument("size", type=int, help="input height or width")
    q.add_argument("--kernel", type=int, required=True)
    q.add_argument("--stride", type=int, default=1)
    q.add_argument("--padding", type=int, default=0)
    q.add_argument("--dilation", type=int, default=1)
    q.add_argument("--pool", action="store_true", help="a pooling layer (stride defaults to 1 here too)")
    q.add_argument("--ceil", action="store_true", help="pooling with ceil_mode=True")
    q = questions.add_parser("padding", help="the padding that keeps the size for a kernel and stride")
    q.add_argument("--kernel", type=int, required=True)
    q.add_argument("--stride", type=int, default=1)
    q.add_argument("--dilation", type=int, default=1)
    q.add_argument("--size", type=int, help="input size (needed for stride > 1)")
    q = questions.add_parser("pool", help="a pooling that downsamples by a factor")
    q.add_argument("--factor", type=int, required=True)
    q.add_argument("--size", type=int, help="input size to check it on")
    q = questions.add_parser("shape", help="the shape after each layer of a spec, with its formulas")
    q.add_argument("spec", help="e.g. \"conv(10,3) maxpool(4) conv(20,5,padding=2) maxpool(2)\"")
    q.add_argument("--input", help="input shape, e.g. 3x130x130 (default: the spec file's)")

    matrix_help = "a matrix inline, rows separated by ';' (\"1 2 3; 4 5 6\"), or a CSV/text file"
    grad_help = ("show the backward pass, carried back through every step: the gradient arriving at the last "
                 "output, 'ones' (the gradient of the output's sum) or a matrix of the output's shape")
    p = command("conv", "a convolution step by step: every window, its products and sum, the output matrix; "
                "--chain runs several steps (pooling, padding, convolutions) in a row", cmd_conv)
    p.add_argument("--input", required=True, metavar="A", help=matrix_help)
    p.add_argument("--kernel", metavar="B", help="the kernel, " + matrix_help)
    p.add_argument("--stride", type=int, help="default 1")
    p.add_argument("--padding", type=int, help="zeros around the input (default 0)")
    p.add_argument("--dilation", type=int, help="default 1")
    p.add_argument("--flip", action="store_true", help="true convolution: flip the kernel first (nn.Conv2d "
                   "does not; it computes cross-correlation)")
    p.add_argument("--chain", metavar="STEPS", help="steps separated by ';' instead of one convolution, e.g. "
                   "\"maxpool(2, stride=2); pad(2); conv; conv(stride=3)\" (conv uses --kernel; also convolve, "
                   "avgpool, relu)")
    p.add_argument("--grad", metavar="G", help=grad_help)
    p.add_argument("--limit", type=int, default=100, help="windows shown per step (default 100)")

    p = command("pool", "max or average pooling step by step; --grad shows where the gradient goes", cmd_pool)
    p.add_argument("--input", required=True, metavar="A", help=matrix_help)
    p.add_argument("--size", type=int, default=2, help="window size (default 2)")
    p.add_argument("--stride", type=int, help="default: the window size, as nn.MaxPool2d")
    p.add_argument("--padding", type=int, default=0)
    p.add_argument("--dilation", type=int, help="max pooling only (default 1)")
    p.add_argument("--ceil", action="store_true", help="ceil_mode=True: keep a last partial window")
    p.add_argument("--avg", action="store_true", help="average instead of max pooling")
    p.add_argument("--grad", metavar="G", help=grad_help)
    p.add_argument("--limit", type=int, default=100, help="windows shown (default 100)")

    p = command("filter", "run a classic filter (Sobel, blur, sharpen, edge, ...) over an image file; --grid "
                "shows several side by side", cmd_filter)
    p.add_argument("image", nargs="?", help="PNG, JPEG, ... (colour images become grayscale by ITU-R 601 luma); "
                   "default: a photo shipped with cnnlab")
    p.add_argument("--kernel", help="a name (see --list), box:N, gaussian:N, or a matrix "
                   "\"1 0 -1; 2 0 -2; 1 0 -1\" (default sobel: the gradient magnitude)")
    p.add_argument("--edge", default="zero", choices=["zero", "extend", "reflect", "wrap", "crop"],
                   help="what the kernel sees beyond the border (default zero); crop shrinks the output")
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--scale", default="auto", choices=["auto", "clip", "minmax", "abs"], help="how values become "
                   "gray levels: auto clips kernels that sum to 1 (blurs) and stretches others min..max")
    p.add_argument("--color", action="store_true", help="filter each colour channel instead of the luma")
    p.add_argument("--grid", nargs="?", const="", metavar="K1,K2,...", help="write the image beside several "
                   "filtered versions (default: " + ",".join(("sobel-x", "sobel-y", "sobel", "gaussian:5",
                                                                "sharpen", "edge", "emboss")) + ")")
    p.add_argument("--out", help="output image (default filtered.png, or filters.png with --grid)")
    p.add_argument("--list", action="store_true", help="list the named kernels")
