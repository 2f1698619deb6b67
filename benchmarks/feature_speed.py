"""Features of a frozen EfficientNet-Lite0 on a CPU: which way of running it is fastest, and at what resolution.

    python benchmarks/feature_speed.py [--data-dir DIR] [--sizes 96,128,160,192,224] [--batch 32]
                                       [--variants a,b,...] [--threads 2] [--compile] [--sweep-size 160]
                                       [--no-accuracy] [--goal SIZE [--goal-variant NAME]]

Transfer learning's feature extraction (issue 19, item 7): EfficientNet-Lite0 with its ImageNet weights, its head
replaced by the identity, computes each CIFAR-10 image's 1,280 features once (32x32 images resized by the
network's preprocessing: shorter side to size / 0.875, centre crop); a linear head trains on them. All ways
run side by side in one process, taking turns batch by batch, preprocessing (Preprocess.from_uint8) included:

    eager NCHW fp32          the network as pretrained_model returns it (the baseline and the reference)
    eager CL fp32 / bf16     channels_last, bf16 under torch.autocast
    folded CL fp32 / bf16    every BatchNorm folded into the convolution before it
    fused CL fp32 / bf16     folded, and each convolution with its ReLU6 one oneDNN call
                             (torch.ops.mkldnn._convolution_pointwise, what torch.compile emits on CPUs);
                             bf16 weights and input, no autocast
    jit fp32 / bf16          torch.jit.trace + freeze with the oneDNN Graph fuser (TorchScript: deprecated)
    onnxruntime fp32         torch.onnx.export, CPUExecutionProvider (its threads told not to spin)
    compile fp32 / bf16      (--compile) torch.compile with inductor's freezing; build seconds include compiling

Speeds: "per core" is images per CPU-second of this thread with torch (and onnxruntime) on 1 thread, the best
batch: other processes on a shared machine barely move it; "wall" is images/s on --threads threads, the best
batch, which they do move (the load average is printed). Correctness against the baseline on --check-images
test images: the largest feature difference relative to the largest feature, the smallest cosine similarity,
and how often the 1,000-class top-1 (the ImageNet head on the features) agrees; and the top-1 for the sample
photo of a tabby cat. bf16 rows are measured everywhere but chosen only where cnnlab.training.machine's
choose_precision("auto") picks bf16 (native bf16 instructions); run with ATEN_CPU_CAPABILITY=avx2
ONEDNN_MAX_CPU_ISA=AVX2 to see a CPU without them. On a machine that other processes keep busy, torch's OpenMP
threads spin-wait for each other and 2 threads can run several times slower than 1; OMP_WAIT_POLICY=PASSIVE
(set before Python starts) avoids that.

Accuracy: a linear probe (nn.Linear, LBFGS, L2 weight decay chosen on a fifth of the training features) on
1,000 training images (100 per class, seeded) and 2,000 test images (200 per class, seeded), per resolution,
with ImageNet's mean/std and with mean = std = 0.5. --goal SIZE runs issue 19's benchmark: 1,000 training and all
10,000 test images through the fastest correct way at SIZE, and the head, timed.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.data.preprocess import Preprocess
from cnnlab.models.pretrained import IMAGENET_MEAN, IMAGENET_STD, pretrained_model
from cnnlab.training.machine import choose_precision, cpu_has_bf16, onednn_isa

from common import cifar10, data_dir, machine

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "cnnlab" / "data" / "sample" / "chelsea.jpg"
CATS = ("tabby", "tiger cat", "Egyptian cat")
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
ALL = ("eager NCHW fp32", "eager CL fp32", "eager CL bf16", "folded CL fp32", "folded CL bf16", "fused CL fp32",
       "fused CL bf16", "jit fp32", "jit bf16", "onnxruntime fp32")
Fn = Callable[[torch.Tensor], torch.Tensor]  # model input (N, 3, S, S) -> features (N, 1280) float32


# ------------------------------------------------------------------------------------------- data

def per_class(y: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Indices of the first `n` images of every class after a seeded permutation, in that permutation's order
    (classes mixed: the linear probe holds out the last fifth)."""
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    rank = F.one_hot(y[order]).cumsum(0).gather(1, y[order].view(-1, 1)).view(-1)  # 1 for a class's first image
    return order[rank <= n]


def preprocess(size: int, channels_last: bool, stats: tuple = (IMAGENET_MEAN, IMAGENET_STD)) -> Preprocess:
    return Preprocess((3, size, size), stats[0], stats[1], resize="center-crop", channels_last=channels_last)


# ------------------------------------------------------------------------------------------- ways to run it

def headless(net: nn.Module) -> nn.Module:
    net = copy.deepcopy(net).eval()
    net.classifier = nn.Identity()
    return net


def fold_bn(net: nn.Module) -> nn.Module:
    """A copy with every BatchNorm2d (timm's BatchNormAct2d: BN + activation) folded into the Conv2d before
    it; the activation stays. In timm's EfficientNet a module's children are registered in forward order."""
    net = copy.deepcopy(net)
    for parent in list(net.modules()):
        names = [k for k, m in parent.named_children() if not isinstance(m, nn.Identity)]
        for a, b in zip(names, names[1:]):
            conv, bn = getattr(parent, a), getattr(parent, b)
            if type(conv) is nn.Conv2d and isinstance(bn, nn.BatchNorm2d):
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C,)
                folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                                   conv.dilation, conv.groups, bias=True)
                with torch.no_grad():
                    folded.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
                    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
                    folded.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
                setattr(parent, a, folded)
                setattr(parent, b, getattr(bn, "act", nn.Identity()))  # BatchNormAct2d's drop is Identity in eval
    return net.eval()


class FusedConv(nn.Module):
    """A Conv2d and the activation after it as one oneDNN convolution with a post-op."""

    def __init__(self, conv: nn.Conv2d, act: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.args = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
        self.register_buffer("weight", conv.weight.detach().to(dtype))
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().to(dtype))
        self.attr, self.scalars = (("hardtanh", [0.0, 6.0]) if isinstance(act, nn.ReLU6) else
                                   ("relu", []) if isinstance(act, nn.ReLU) else ("none", []))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._convolution_pointwise(x, self.weight, self.bias, *self.args, self.attr,
                                                       self.scalars, "")


def fuse(folded: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A BN-folded network with each Conv2d and the ReLU/ReLU6 right after it (if any) as one FusedConv."""
    net = copy.deepcopy(folded)
    for parent in list(net.modules()):
        names = [k for k, m in parent.named_children() if not isinstance(m, nn.Identity)]
        for i, name in enumerate(names):
            conv = getattr(parent, name)
            if type(conv) is nn.Conv2d and conv.padding_mode == "zeros":
                nxt = names[i + 1] if i + 1 < len(names) else None
                act = getattr(parent, nxt) if nxt and isinstance(getattr(parent, nxt), (nn.ReLU, nn.ReLU6)) else None
                setattr(parent, name, FusedConv(conv, act, dtype))
                if act is not None:
                    setattr(parent, nxt, nn.Identity())
    return net.to(dtype).eval()


def eager(net: nn.Module, bf16: bool) -> Fn:
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return net(x).float()
    return run


def in_dtype(net: nn.Module, dtype: torch.dtype) -> Fn:
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return net(x.to(dtype)).float()
    return run


def jit(net: nn.Module, x: torch.Tensor, bf16: bool) -> Fn:
    torch.jit.enable_onednn_fusion(True)
    with warnings.catch_warnings(), torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        warnings.simplefilter("ignore")
        frozen = torch.jit.freeze(torch.jit.trace(net, x, check_trace=False))
        frozen(x), frozen(x)  # the profiling executor fuses on the second call
    return eager(frozen, bf16)


def onnxruntime_fn(net: nn.Module, size: int, folder: str, threads: int) -> Fn:
    import onnxruntime as ort

    path = os.path.join(folder, f"lite0-{size}.onnx")
    if not os.path.exists(path):
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(copy.deepcopy(net), (torch.zeros(2, 3, size, size),), path, input_names=["x"],
                              output_names=["f"], dynamic_axes={"x": {0: "n"}, "f": {0: "n"}}, dynamo=False,
                              opset_version=17)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # spinning threads starve torch's
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"x": x.contiguous().numpy()})[0])


def compiled(net: nn.Module, x: torch.Tensor, bf16: bool) -> Fn:
    import torch._inductor.config as inductor

    inductor.freezing = True
    torch._dynamo.reset()  # each build compiles afresh (one shape each; dynamo's recompile limit is 8)
    run = eager(torch.compile(copy.deepcopy(net), dynamic=False), bf16)
    run(x)
    return run


@dataclass
class Way:
    name: str
    fn: Fn  # on torch's current threads
    fn1: Fn  # on 1 thread (differs only for onnxruntime, whose threads are fixed per session)
    channels_last: bool
    bf16: bool
    build_s: float


def build(name: str, base: nn.Module, size: int, batch: int, folder: str, threads: int) -> Way:
    """One way of computing `base`'s features (base: the headless fp32 eager network)."""
    started = time.perf_counter()
    bf16 = name.endswith("bf16")
    cl = name != "eager NCHW fp32" and not name.startswith("onnxruntime")
    x = preprocess(size, cl).from_uint8(torch.zeros(batch, 3, 32, 32, dtype=torch.uint8))
    layout = torch.channels_last if cl else torch.contiguous_format
    net = base.to(memory_format=layout)
    if name.startswith("eager"):
        fn = eager(copy.deepcopy(net).to(memory_format=layout), bf16)
    elif name.startswith("folded"):
        fn = eager(fold_bn(net).to(memory_format=layout), bf16)
    elif name.startswith("fused"):
        dtype = torch.bfloat16 if bf16 else torch.float32
        fn = in_dtype(fuse(fold_bn(net), dtype), dtype)
    elif name.startswith("jit"):
        fn = jit(copy.deepcopy(net).to(memory_format=layout), x, bf16)
    elif name.startswith("compile"):
        fn = compiled(net, x, bf16)
    elif name.startswith("onnxruntime"):
        fn = onnxruntime_fn(net, size, folder, threads)
        return Way(name, fn, onnxruntime_fn(net, size, folder, 1), cl, bf16, time.perf_counter() - started)
    else:
        raise SystemExit(f"unknown variant {name!r}; choose from {', '.join(ALL)}, compile fp32, compile bf16")
    fn(x)
    return Way(name, fn, fn, cl, bf16, time.perf_counter() - started)


# ------------------------------------------------------------------------------------------- measuring

def features(fn: Fn, pre: Preprocess, x8: torch.Tensor, batch: int) -> torch.Tensor:
    """(N, 1280) features of uint8 images (N, 3, 32, 32), the last batch padded to `batch` (traced and
    compiled graphs keep one input shape)."""
    out = []
    for start in range(0, len(x8), batch):
        xb = x8[start : start + batch]
        n = len(xb)
        if n < batch:
            xb = torch.cat([xb, xb[-1:].expand(batch - n, -1, -1, -1)])
        out.append(fn(pre.from_uint8(xb))[:n])
    return torch.cat(out)


def speeds(ways: list[Way], pres: dict[bool, Preprocess], x8: torch.Tensor, batch: int, threads: int,
           rounds: int) -> dict[str, tuple[float, float]]:
    """name -> (images per CPU-second on 1 thread, images/s wall on `threads`): the best batch of each, the
    ways taking turns batch by batch (a busy machine slows them alike), preprocessing included."""
    result = {}
    for one in (True, False):
        torch.set_num_threads(1 if one else threads)
        clock = time.thread_time if one else time.perf_counter
        times: dict[str, list[float]] = {w.name: [] for w in ways}
        for w in ways:  # warm-up: traced graphs fuse again for another thread count
            for _ in range(2):
                (w.fn1 if one else w.fn)(pres[w.channels_last].from_uint8(x8[:batch]))
        for r in range(rounds):
            for w in ways:
                for i in range(2):
                    start = ((2 * r + i) * batch) % (len(x8) - batch + 1)
                    xb = x8[start : start + batch]
                    began = clock()
                    (w.fn1 if one else w.fn)(pres[w.channels_last].from_uint8(xb))
                    times[w.name].append(clock() - began)
        for name, ts in times.items():
            result.setdefault(name, []).append(batch / min(ts))
    torch.set_num_threads(threads)
    return {k: (v[0], v[1]) for k, v in result.items()}


def preprocess_speed(size: int, x8: torch.Tensor, batch: int) -> float:
    """Images per CPU-second on 1 thread of Preprocess.from_uint8 alone (channels_last)."""
    pre = preprocess(size, True)
    torch.set_num_threads(1)
    pre.from_uint8(x8[:batch])
    best = min(_timed(lambda: pre.from_uint8(x8[i * batch : (i + 1) * batch])) for i in range(3))
    return batch / best


def _timed(job: Callable[[], object]) -> float:
    began = time.thread_time()
    job()
    return time.thread_time() - began


def linear_probe(ftr: torch.Tensor, ytr: torch.Tensor, fte: torch.Tensor, yte: torch.Tensor) -> tuple[float, float]:
    """Test accuracy of logistic regression on standardized features (nn.Linear, LBFGS), the L2 weight decay
    chosen on the last fifth of the training features; (accuracy, weight decay)."""
    mu, sd = ftr.mean(0), ftr.std(0) + 1e-6
    ftr, fte = (ftr - mu) / sd, (fte - mu) / sd
    k = len(ftr) * 4 // 5

    def fit(x: torch.Tensor, y: torch.Tensor, wd: float) -> nn.Linear:
        torch.manual_seed(0)
        head = nn.Linear(x.shape[1], int(y.max()) + 1)
        opt = torch.optim.LBFGS(head.parameters(), max_iter=100, history_size=20, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(head(x), y) + wd * head.weight.square().sum()
            loss.backward()
            return loss

        opt.step(closure)
        return head

    def accuracy(head: nn.Linear, x: torch.Tensor, y: torch.Tensor) -> float:
        with torch.no_grad():
            return (head(x).argmax(1) == y).float().mean().item()

    wd = max((1e-4, 1e-3, 1e-2, 1e-1), key=lambda wd: accuracy(fit(ftr[:k], ytr[:k], wd), ftr[k:], ytr[k:]))
    return accuracy(fit(ftr, ytr, wd), fte, yte), wd


# ------------------------------------------------------------------------------------------- sections

def speed_table(args, model, classes, x8, folder) -> tuple[str, dict]:
    """Per resolution: every way's speed and its correctness against the baseline."""
    lines = ["| size | variant | build s | img/s per core | ×baseline | img/s wall | rel. max err | min cos | "
             "top-1 agree | photo top-1 |", "|---|---|---|---|---|---|---|---|---|---|"]
    head = model.classifier
    base = headless(model)
    check = x8[: args.check_images]
    best: dict = {}
    print("\n".join(lines), flush=True)
    for size in args.sizes:
        pres = {cl: preprocess(size, cl) for cl in (False, True)}
        ways = []
        for name in args.variants:
            try:
                ways.append(build(name, base, size, args.batch, folder, args.threads))
            except RuntimeError as exc:  # e.g. oneDNN's bf16 convolution where the CPU has no bf16 or AVX-512
                lines.append(f"| {size} | {name} | fails: {' '.join(str(exc).split())[:90]} |||||||")
                print(lines[-1], flush=True)
        ref = ways[0]
        ref_f = features(ref.fn, pres[ref.channels_last], check, args.batch)
        ref_top = head(ref_f).argmax(1)
        measured = speeds(ways, pres, x8, args.batch, args.threads, args.rounds)
        per_core0 = measured[ways[0].name][0]
        for w in ways:
            f = features(w.fn, pres[w.channels_last], check, args.batch)
            with torch.no_grad():
                rel = ((f - ref_f).abs().max() / ref_f.abs().max()).item()
                cos = F.cosine_similarity(f, ref_f).min().item()
                agree = (head(f).argmax(1) == ref_top).float().mean().item()
                photo = pres[w.channels_last].normalize(pres[w.channels_last].load([SAMPLE]))
                photo_f = w.fn(torch.cat([photo] * args.batch))[:1]  # traced graphs keep their batch size
                photo_top = classes[head(photo_f).argmax(1).item()]
            per_core, wall = measured[w.name]
            lines.append(f"| {size} | {w.name} | {w.build_s:.1f} | {per_core:,.0f} | {per_core / per_core0:.1f} | "
                         f"{wall:,.0f} | {rel:.1e} | {cos:.4f} | {agree:.1%} | {photo_top}"
                         f"{'' if photo_top in CATS else ' (wrong)'} |")
            best.setdefault(size, {})[w.name] = (per_core, wall, rel, agree)
        print("\n".join(lines[-len(ways):]) + f"   (load average {os.getloadavg()[0]:.1f})", flush=True)
    return "\n".join(lines), best


def batch_table(args, model, x8, folder, names) -> str:
    lines = [f"| variant | " + " | ".join(f"batch {b}: per core / wall" for b in args.batches) + " |",
             "|---|" + "---|" * len(args.batches)]
    base = headless(model)
    size = args.sweep_size
    pres = {cl: preprocess(size, cl) for cl in (False, True)}
    cells: dict[str, list[str]] = {n: [] for n in names}
    for b in args.batches:
        ways = [build(n, base, size, b, folder, args.threads) for n in names]
        measured = speeds(ways, pres, x8, b, args.threads, args.rounds)
        for n in names:
            cells[n].append(f"{measured[n][0]:,.0f} / {measured[n][1]:,.0f}")
    lines += [f"| {n} | " + " | ".join(c) + " |" for n, c in cells.items()]
    return f"Batch size at {size}x{size} (images/s per core / wall on {args.threads} threads):\n\n" + "\n".join(lines)


def accuracy_table(args, model, data, folder, way_names: dict[str, str]) -> str:
    """Linear-probe accuracy per resolution with ImageNet's statistics and with 0.5, through the chosen way
    (and in fp32 too when the chosen way is bf16)."""
    itr, ite = per_class(data.train.y, 100, 0), per_class(data.test.y, 200, 1)
    xtr, ytr, xte, yte = data.train.x[itr], data.train.y[itr], data.test.x[ite], data.test.y[ite]
    base = headless(model)
    columns = [("ImageNet mean/std", (IMAGENET_MEAN, IMAGENET_STD), way_names["auto"]),
               ("mean = std = 0.5", HALF, way_names["auto"])]
    if way_names["auto"] != way_names["fp32"]:
        columns.append(("mean = std = 0.5", HALF, way_names["fp32"]))
    lines = ["| size | " + " | ".join(f"{label}, {way}" for label, _, way in columns) + " | seconds (features of 3,000 "
             "images, chosen way) |", "|---|" + "---|" * (len(columns) + 1)]
    print("\n".join(lines), flush=True)
    for size in args.accuracy_sizes:
        cells, seconds = [], 0.0
        for i, (label, stats, name) in enumerate(columns):
            w = build(name, base, size, args.batch, folder, args.threads)
            pre = preprocess(size, w.channels_last, stats)
            began = time.perf_counter()
            ftr, fte = features(w.fn, pre, xtr, args.batch), features(w.fn, pre, xte, args.batch)
            seconds = seconds or time.perf_counter() - began
            acc, wd = linear_probe(ftr, ytr, fte, yte)
            cells.append(f"{acc:.1%} (wd {wd:g})")
        lines.append(f"| {size} | " + " | ".join(cells) + f" | {seconds:.1f} |")
        print(lines[-1], flush=True)
    return ("Linear probe: 1,000 training images (100 per class), 2,000 test images (200 per class), seeded:\n\n"
            + "\n".join(lines))


def goal(args, model, data, folder, name: str) -> str:
    """Issue 19's benchmark: 1,000 training + 10,000 test images through the backbone and the head, timed."""
    size = args.goal
    itr = per_class(data.train.y, 100, 0)
    began = time.perf_counter()
    w = build(name, headless(model), size, args.batch, folder, args.threads)
    pre = preprocess(size, w.channels_last, HALF)
    ftr = features(w.fn, pre, data.train.x[itr], args.batch)
    fte = features(w.fn, pre, data.test.x, args.batch)
    extracted = time.perf_counter() - began
    acc, wd = linear_probe(ftr, data.train.y[itr], fte, data.test.y)
    total = time.perf_counter() - began
    return (f"Goal at {size}x{size}, {name}, mean = std = 0.5: 11,000 images' features in {extracted:.1f} s "
            f"({11000 / extracted:,.0f} images/s with building it), head {total - extracted:.1f} s; {total:.1f} s in "
            f"all (goal: under 300 s); test accuracy on all 10,000: {acc:.1%} (wd {wd:g}; goal >= 65%). "
            f"Load average {os.getloadavg()[0]:.1f}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=os.environ.get("CNNLAB_TEST_DATA"))
    parser.add_argument("--sizes", default="96,128,160,192,224")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--variants", default=",".join(ALL), help="comma-separated; the first is the baseline")
    parser.add_argument("--compile", action="store_true", help="add torch.compile (freezing) fp32 and bf16")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="turns of 2 batches per way")
    parser.add_argument("--check-images", type=int, default=256)
    parser.add_argument("--sweep-size", type=int, default=160, help="resolution of the batch-size sweep (0: none)")
    parser.add_argument("--batches", default="16,32,64,128")
    parser.add_argument("--accuracy-sizes", default="96,128,160,224")
    parser.add_argument("--no-accuracy", action="store_true")
    parser.add_argument("--goal", type=int, default=0, help="run issue 19's benchmark at this resolution")
    parser.add_argument("--goal-variant", help="the way the goal runs (default: the fastest correct one measured; "
                                               "with --sizes '' only the goal runs)")
    args = parser.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",") if s]
    args.batches = [int(s) for s in args.batches.split(",") if s]
    args.accuracy_sizes = [int(s) for s in args.accuracy_sizes.split(",") if s]
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if args.compile:
        args.variants += ["compile fp32", "compile bf16"]
    torch.set_num_threads(args.threads)

    choice = choose_precision("auto", torch.device("cpu"))
    print(f"Machine: {machine()}; oneDNN ISA: {onednn_isa()}; native bf16: {cpu_has_bf16()}; precision 'auto': "
          f"{choice.precision} ({choice.why}); OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}; load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    began = time.perf_counter()
    data = cifar10(data_dir(args.data_dir))
    print(f"CIFAR-10 loaded in {time.perf_counter() - began:.1f} s", flush=True)
    model, _, classes, _ = pretrained_model("efficientnet-lite0", size=224)
    x8 = data.test.x[per_class(data.test.y, 100, 2)]  # 1,000 test images, all classes, for speed and checks
    x8 = x8[torch.randperm(len(x8), generator=torch.Generator().manual_seed(3))]
    with tempfile.TemporaryDirectory() as folder:
        if not args.sizes:  # --sizes "" --goal-variant NAME: the goal alone
            print("\n## Goal\n\n" + goal(args, model, data, folder, args.goal_variant), flush=True)
            return
        print("\n## Speed and correctness per resolution\n", flush=True)
        speed, best = speed_table(args, model, classes, x8, folder)
        print(f"\npreprocessing alone (from_uint8, images per CPU-second on 1 thread): "
              + ", ".join(f"{s}: {preprocess_speed(s, x8, args.batch):,.0f}" for s in args.sizes), flush=True)
        # The fastest correct way per precision (bf16 only where the precision rule picks it), by the geometric
        # mean of per-core and wall speed (both matter: the first is robust, the second shows thread scaling),
        # TorchScript left out (deprecated; its speed also swings from run to run) and torch.compile too (compiling
        # takes 10-60 s here, as long as extracting the 11,000 images of the goal).
        correct = lambda name: all(name in best[s] and (best[s][name][2] < 1e-3 or name.endswith("bf16"))  # noqa: E731
                                   for s in best)
        fastest = {}
        for precision in ("fp32", "bf16"):
            names = [n for n in args.variants if n.endswith(precision) and correct(n) and not n.startswith(("jit", "compile"))]
            if names:
                fastest[precision] = max(names, key=lambda n: statistics.geometric_mean(
                    [best[s][n][0] * best[s][n][1] for s in best]))
        fastest["auto"] = fastest.get(choice.precision, fastest["fp32"])
        print(f"\nfastest: {fastest} (precision 'auto' picks {choice.precision})", flush=True)
        for size in best:
            row = best[size]
            if fastest["auto"] not in row:
                continue
            print(f"{size}: {fastest['auto']} {row[fastest['auto']][0] / row[args.variants[0]][0]:.1f}x the baseline "
                  f"per core; fp32 {fastest['fp32']} {row[fastest['fp32']][0] / row[args.variants[0]][0]:.1f}x", flush=True)
        if args.sweep_size:
            print("\n## Batch size\n", flush=True)
            names = list(dict.fromkeys([fastest["auto"], fastest["fp32"], "eager CL fp32"]))
            print(batch_table(args, model, x8, folder, names), flush=True)
        if not args.no_accuracy:
            print("\n## Linear-probe accuracy per resolution\n", flush=True)
            accuracy_table(args, model, data, folder, fastest)
        if args.goal:
            print("\n## Goal\n\n" + goal(args, model, data, folder, args.goal_variant or fastest["auto"]), flush=True)


if __name__ == "__main__":
    main()
