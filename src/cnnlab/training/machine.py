"""What this machine can do, and the precision a run takes on it.

bf16 halves the bytes every layer moves and runs on the CPU's bf16 units where there are some
(AVX-512 BF16 or AMX on x86, the BF16 extension on ARM) and on most GPUs. Without them PyTorch
and oneDNN emulate it, and a step costs several times an fp32 one (fast-cnn-28 training on 2
cores: 14,868 images/s in bf16 and 10,271 in fp32 with AMX; 887 and 7,981 with AVX2 only,
benchmarks/dispatch_levels.py). So a recipe asks for precision "auto": bf16 only where the
hardware runs it natively, decided from the CPU's flags, and by timing one small step of each
where the flags cannot settle it.

`info()` gathers what `cnnlab info` prints: the first thing to paste into a bug report.
"""

from __future__ import annotations

import functools
import os
import platform
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.models import get_model
from cnnlab.version import __version__

# oneDNN's ONEDNN_MAX_CPU_ISA values that include bf16 instructions (oneDNN's own names); any of the
# older ones (SSE41, AVX, AVX2, AVX2_VNNI, AVX512_CORE, AVX512_CORE_VNNI) keeps its kernels off them.
ONEDNN_BF16_ISAS = {
    "AVX2_VNNI_2", "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16",
    "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2", "ALL", "DEFAULT",
}
# A timed bf16 step must beat fp32 by this factor to be chosen: a tie is not worth the rounding.
BF16_MARGIN = 1.15


@dataclass(frozen=True)
class Choice:
    """A precision picked for a run, and why (printed in the run's header, kept in config.json)."""

    precision: str  # "fp32" or "bf16"
    why: str


def is_x86() -> bool:
    """Whether this is an x86 CPU (where PyTorch can say whether it has AVX-512 BF16 or AMX)."""
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686", "x86")


def cpu_has_bf16() -> bool | None:
    """Whether the CPU has native bf16 instructions: True, False, or None when it cannot be told."""
    machine = platform.machine().lower()
    if is_x86():
        check_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
        check_amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
        if check_bf16 is None or check_amx is None:  # older PyTorch: no way to ask
            return None
        return bool(check_bf16() or check_amx())
    if machine in ("aarch64", "arm64"):
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                features = {word for line in f if line.lower().startswith("features") for word in line.split()}
            return "bf16" in features
        except OSError:  # macOS and others have no /proc/cpuinfo
            return None
    return None


def onednn_isa_limit() -> str | None:
    """The ONEDNN_MAX_CPU_ISA (or its older name DNNL_MAX_CPU_ISA) set for this process, if any."""
    value = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    return value.strip().upper() if value else None


def onednn_version() -> str | None:
    """oneDNN's version as PyTorch's build configuration names it (e.g. "3.12.0")."""
    found = re.search(r"MKL-DNN v([\w.]+)", torch.__config__.show())
    return found.group(1) if found else None


@functools.lru_cache(maxsize=None)  # oneDNN prints its header once a process
def onednn_isa() -> str | None:
    """The instruction set oneDNN dispatches here, as its verbose header names it (e.g. "Intel AVX2"):
    a convolution large enough for PyTorch to hand it to oneDNN, its standard output caught at the
    file descriptor (oneDNN writes there from C++). None if oneDNN is missing or said it already."""
    if not torch.backends.mkldnn.is_available():
        return None
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON), torch.no_grad():
                F.conv2d(torch.zeros(8, 32, 28, 28), torch.zeros(64, 32, 3, 3))
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        caught.seek(0)
        text = caught.read().decode("utf-8", errors="replace")
    found = re.search(r",isa:([^\n]+)", text)
    return found.group(1).strip() if found else None


def _probe_net() -> nn.Module:
    """A small conv-BN-ReLU-pool network with the op mix of the fast recipes' models."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )


def _train_step(net: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                precision: str) -> float:
    """One training step (forward, backward, optimizer) as train.py takes it; its seconds."""
    device = x.device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss = F.cross_entropy(net(x).float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def time_steps(device: torch.device, batch: int = 32, repeats: int = 3) -> dict[str, float]:
    """Seconds of one training step (forward, backward, SGD) of a small CNN in fp32 and in bf16: the
    best of `repeats`, after one step of each to warm up (the first builds the kernels). The two
    precisions take turns, so that a busy machine slows both alike."""
    torch_state = torch.get_rng_state()  # the probe must not move the run's random numbers
    try:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(batch, 1, 28, 28, generator=generator).to(device, memory_format=torch.channels_last)
        y = torch.randint(0, 10, (batch,), generator=generator).to(device)
        nets = {p: _probe_net().to(device, memory_format=torch.channels_last) for p in ("fp32", "bf16")}
        optimizers = {p: torch.optim.SGD(net.parameters(), lr=0.01) for p, net in nets.items()}
        best = {p: float("inf") for p in nets}
        for i in range(repeats + 1):
            for precision, net in nets.items():
                took = _train_step(net, optimizers[precision], x, y, precision)
                if i:
                    best[precision] = min(best[precision], took)
        return best
    finally:
        torch.set_rng_state(torch_state)


@functools.lru_cache(maxsize=None)  # once a process: every model of a comparison trains in the same precision
def _timed_choice(device: torch.device, reason: str) -> Choice:
    took = time_steps(device)
    measured = f"one step of a small CNN took {took['bf16'] * 1e3:.1f} ms in bf16 and {took['fp32'] * 1e3:.1f} ms in fp32"
    if took["bf16"] * BF16_MARGIN < took["fp32"]:
        return Choice("bf16", f"{reason}; {measured}")
    return Choice("fp32", f"{reason}; {measured}")


def choose_precision(asked: str, device: torch.device) -> Choice:
    """The precision to train with: `asked` itself unless it is "auto", which takes bf16 only where
    the hardware runs it natively (decided by its flags, or else by timing one small step of each)."""
    if asked != "auto":
        return Choice(asked, "asked for with --precision" if asked == "bf16" else "asked for")
    if device.type == "cuda":
        try:
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # PyTorch before 2.5 has no including_emulation and reports the native kind
            native = torch.cuda.is_bf16_supported()
        name = torch.cuda.get_device_name(device)
        return Choice("bf16", f"{name} has bf16 arithmetic") if native else Choice(
            "fp32", f"{name} has no native bf16 arithmetic")
    if device.type != "cpu":
        return Choice("fp32", f"bf16 is not measured on {device.type} devices")
    has = cpu_has_bf16()
    if has is False:
        return Choice("fp32", "this CPU has no native bf16 instructions (bf16 would be emulated, several times "
                              "slower)")
    limit = onednn_isa_limit()
    if has and limit is not None and limit not in ONEDNN_BF16_ISAS:
        return Choice("fp32", f"oneDNN is limited to {limit} (ONEDNN_MAX_CPU_ISA), which has no bf16 instructions")
    capability = torch.backends.cpu.get_cpu_capability()
    if has and capability.upper().startswith("AVX512"):
        return Choice("bf16", "this CPU has native bf16 instructions (AVX-512 BF16 or AMX)")
    # Flags that cannot settle it: an ARM or other CPU that does not say, or bf16 units that PyTorch's
    # own kernels are told not to use (ATEN_CPU_CAPABILITY). A step of each is quicker than a guess.
    reason = (f"this CPU has bf16 instructions but PyTorch dispatches {capability} kernels" if has
              else "this CPU does not say whether it has bf16 instructions")
    return _timed_choice(device, reason)


def images_per_second(precision: str, device: torch.device, seconds: float = 1.5, channels_last: bool = True,
                      model: str = "fast-cnn-28", batch: int = 256) -> float:
    """Training images per second of `model` on 28x28 images at `batch`: by default fast-cnn-28 at batch 256,
    `cnnlab info`'s probe of a machine (the fast recipe's network until issue 21), comparable across versions."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    torch_state = torch.get_rng_state()
    try:
        torch.manual_seed(0)
        net = get_model(model, (1, 28, 28), 10).to(device, memory_format=layout)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, nesterov=True)
        x = torch.randn(batch, 1, 28, 28).to(device, memory_format=layout)
        y = torch.randint(0, 10, (batch,), device=device)
        _train_step(net, optimizer, x, y, precision)  # the first step builds the kernels; count from the second
        images, elapsed = 0, 0.0
        while elapsed < seconds:
            elapsed += _train_step(net, optimizer, x, y, precision)
            images += len(x)
        return images / elapsed
    finally:
        torch.set_rng_state(torch_state)


def info(device: torch.device, measure: bool = True) -> dict[str, Any]:
    """Versions, device, CPU capability, threads, the precision recipes would choose and why, and
    (with `measure`) the fast recipe's training speed here."""
    versions = {"cnnlab": __version__, "python": sys.version.split()[0], "torch": torch.__version__}
    for package in ("torchvision", "numpy", "PIL", "safetensors"):
        try:
            versions[package] = __import__(package).__version__
        except ImportError:
            versions[package] = None
    choice = choose_precision("auto", device)
    facts: dict[str, Any] = {
        "versions": versions,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "device": str(device),
        "cuda": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available() else [],
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_bf16": cpu_has_bf16(),
        "onednn": {"version": onednn_version(), "isa": onednn_isa(), "max_cpu_isa": onednn_isa_limit()},
        "env": {name: os.environ.get(name) for name in (
            "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "OMP_NUM_THREADS", "MKL_NUM_THREADS") if os.environ.get(name)},
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "precision": {"auto": choice.precision, "why": choice.why},
    }
    if measure:
        facts["fast_cnn_28_images_per_second"] = {
            p: round(images_per_second(p, device)) for p in dict.fromkeys((choice.precision, "fp32"))
        }
    return facts
