"""What each --augment item costs per epoch of CIFAR-10's 50,000 training images (3x32x32).

    python benchmarks/augment_cost.py [--data-dir DIR] [--limit N] [--repeats R] [--write]

The loader's own path, in this one process: each epoch indexes the uint8 training tensor in shuffled
batches of 256 (the fast CIFAR-10 recipe's), augments each batch from its (seed, epoch, step)
generator and converts it to the model's input. For each spec it times the augmentation alone over an
epoch's batches, and gives it in seconds per epoch and as a multiple of an unaugmented epoch's data time
(the same batches indexed and converted, without augmentation). For scale, a last column gives it as a
share of one training epoch of the fast recipe's model (small-cnn-32, fp32, channels-last: forward,
backward and SGD step, timed over a few steps). --limit N measures on the first N images and scales to
50,000 (the costs are per image). CIFAR-10 comes from --data-dir, else $CNNLAB_TEST_DATA or $CNNLAB_DATA,
else ../shared/datasets (an unpacked cifar10-jpeg/ or cifar-10-batches-py/ there). --write puts the
table into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

import cnnlab
from cnnlab.data import BatchLoader
from cnnlab.data.augment import augment
from cnnlab.data.dataset import Split
from cnnlab.data.preprocess import Preprocess

from common import data_dir, machine, write_section

EPOCH = 50_000  # CIFAR-10's training images
BATCH = 256
SPECS = [  # the old names first (the loader's batched paths), then each new item alone, then them all at once
    "flip", "crop", "crop+flip", "vflip", "crop(4)", "grayscale(0.1)", "rotation(15)", "scale(0.2)",
    "jitter(0.2, 0.2, 0.2)", "jitter(0, 0, 0, 0.05)", "jitter(0.2, 0.2, 0.2, 0.05)",
    "flip, rotation(15), scale(0.2), jitter(0.2, 0.2, 0.2), grayscale(0.1), crop(4)",
]


def epoch_of_augmentation(x: torch.Tensor, spec: str) -> float:
    """Seconds that augment() takes over one epoch's batches of `x`, drawn as the loader draws them."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    spent = 0.0
    for step, start in enumerate(range(0, len(x), BATCH)):
        batch = x[order[start : start + BATCH]]  # (B, 3, 32, 32) uint8
        generator = torch.Generator().manual_seed(step)
        began = time.perf_counter()
        augment(batch, spec, generator)
        spent += time.perf_counter() - began
    return spent


def epoch_of_data(split: Split, preprocess: Preprocess) -> float:
    """Seconds of one unaugmented epoch of the loader: index, convert, normalize."""
    began = time.perf_counter()
    for _ in BatchLoader(split, BATCH, preprocess, shuffle=True, augmentation="none"):
        pass
    return time.perf_counter() - began


def training_step_seconds(steps: int = 6) -> float:
    """Seconds of one training step of small-cnn-32 at batch 256 (fp32, channels-last, SGD), the best of `steps`."""
    model = cnnlab.get_model("small-cnn-32", (3, 32, 32), 10).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    x = torch.randn(BATCH, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (BATCH,))
    times = []
    for _ in range(steps + 1):  # the first step warms up
        began = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        times.append(time.perf_counter() - began)
    return min(times[1:])


def best(repeats: int, job) -> float:
    return min(job() for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--limit", type=int, default=EPOCH, help="measure on the first N training images and "
                        f"scale to {EPOCH:,} (default: all)")
    parser.add_argument("--repeats", type=int, default=2, help="timed epochs per spec; the fastest counts (default 2)")
    parser.add_argument("--write", action="store_true", help="write the table into docs/benchmarks.md")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    root = data_dir(args.data_dir or os.environ.get("CNNLAB_TEST_DATA"))
    data = cnnlab.load_dataset("cifar10", data_dir=root)
    split = Split(data.train.x[: args.limit], data.train.y[: args.limit])
    scale = EPOCH / len(split)
    preprocess = Preprocess((3, 32, 32), mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26), channels_last=True)
    augment(split.x[:BATCH], SPECS[-1], torch.Generator())  # warm-up: torchvision's import, first calls
    base = best(args.repeats, lambda: epoch_of_data(split, preprocess)) * scale
    train_epoch = training_step_seconds() * -(-EPOCH // BATCH)
    lines = ["| --augment | s per epoch | x unaugmented data time | share of a training epoch |",
             "|---|---:|---:|---:|",
             f"| none (the data itself: index, convert, normalize) | {base:.2f} | 1.0 | {base / train_epoch:.1%} |"]
    for spec in SPECS:
        cost = best(args.repeats, lambda: epoch_of_augmentation(split.x, spec)) * scale
        lines.append(f"| `{spec}` | {cost:.2f} | {cost / base:.1f} | {cost / train_epoch:.1%} |")
        print(lines[-1], flush=True)
    table = "\n".join(lines)
    note = (f"Machine: {machine()}. Command: `python benchmarks/augment_cost.py"
            f"{f' --limit {args.limit}' if args.limit < EPOCH else ''}` ({len(split):,} images timed"
            f"{f', scaled to {EPOCH:,}' if scale != 1 else ''}; the fastest of {args.repeats} epochs). "
            f"Batches of {BATCH}; a training epoch of small-cnn-32 (fp32, channels-last, SGD) takes "
            f"{train_epoch:.1f} s here. Load average when it started: {load:.2f} (other processes on the "
            "cores slow PyTorch's threaded ops many times over).")
    print(f"\n{note}\n\n{table}")
    if args.write:
        write_section("augment-cost", f"{note}\n\n{table}")


if __name__ == "__main__":
    main()
