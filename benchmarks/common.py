"""What every benchmark needs: the machine it ran on, and a section of docs/benchmarks.md to fill."""

from __future__ import annotations

import os
import platform
import re
import tarfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch

from cnnlab.data import ImageData, load_dataset
from cnnlab.errors import DataError

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def data_dir(given: str | None) -> Path:
    """--data-dir, else $CNNLAB_DATA, else ../shared/datasets beside the checkout."""
    return Path(given or os.environ.get("CNNLAB_DATA") or DEFAULT_DATA)


def machine() -> str:
    """One line naming the CPU (or GPU), the cores PyTorch uses, and the versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (
        f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads "
        f"({torch.backends.cpu.get_cpu_capability()}){gpu}; torch {torch.__version__}, "
        f"Python {platform.python_version()}; {date.today().isoformat()}"
    )


def best_of(repeats: int, job: Callable[[], object]) -> float:
    """The fastest of `repeats` timed runs of job(), after one untimed warm-up run."""
    job()  # warm-up: first calls pay for lazy imports and allocator growth
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        job()
        times.append(time.perf_counter() - start)
    return min(times)


def write_section(name: str, markdown: str, path: Path = DOCS) -> None:
    """Replace the text between <!-- name:start --> and <!-- name:end --> (appended if absent)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{markdown.strip()}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def cifar10(datasets: Path) -> ImageData:
    """CIFAR-10 as cnnlab finds it; the shared JPEG tarball unpacked into cnnlab's cache folder first, where
    `cifar10` looks (~/.cache/cnnlab/cifar10-jpeg), when it is nowhere yet."""
    try:
        return load_dataset("cifar10", data_dir=datasets)
    except DataError:
        tarball = datasets / "cifar10-jpeg" / "cifar10-jpeg.tar.gz"
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cnnlab"
        cache.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tarball) as tar:
            tar.extractall(cache, filter="data")
        return load_dataset("cifar10", data_dir=datasets)
