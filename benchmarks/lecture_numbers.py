"""Lectures 000-002's numbers, reproduced: MLP vs CNN on the full Fashion-MNIST, and on patterns.

    python benchmarks/lecture_numbers.py [--data-dir DIR] [--only fashion-mnist|patterns] [--write]

Part 1 trains seed-mlp and seed-cnn with the lectures' own settings (Adam, lr 1e-3, batch 32,
5 epochs, pixels scaled to [0, 1] and not standardized) on the full Fashion-MNIST and checks
the targets (seed-cnn >= 90.5%, seed-mlp >= 87.0% test accuracy). Part 2 trains the same
models and cnnlab's small CNN on the zebra-vs-checkerboard patterns (inputs standardized: the
MLP does not learn them at all from raw [0, 1] pixels in 5 epochs) and measures accuracy on
test images shifted further than any seen in training. --write puts the tables into
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import tempfile

import cnnlab
from cnnlab.views import formatting

from common import data_dir, machine, write_section

LECTURE = {"epochs": 5, "batch_size": 32, "lr": 1e-3, "optimizer": "adam", "normalize": False}
TARGETS = {"seed-cnn": 0.905, "seed-mlp": 0.870}


def fashion_mnist(data: str, out: str) -> str:
    """Part 1: the lecture's MLP vs CNN on the full Fashion-MNIST, with the lecture's settings."""
    comp = cnnlab.compare(["seed-mlp", "seed-cnn"], "fashion-mnist", data_dir=data, out=f"{out}/fmnist", **LECTURE)
    rows = comp.rows()
    for row in rows:
        row["seconds_per_epoch"] = row["train_seconds"] / row["epochs"]
        met = row["test_accuracy"] >= TARGETS[row["model"]]
        row["target"] = f">= {TARGETS[row['model']]:.1%}: " + ("met" if met else "MISSED")
    columns = [
        ("model", "model", formatting.plain), ("parameters", "parameters", formatting.integer),
        ("train_seconds", "train time", formatting.seconds), ("seconds_per_epoch", "per epoch", formatting.seconds),
        ("best_epoch", "best epoch", formatting.integer), ("test_accuracy", "test acc", formatting.percent),
        ("target", "target", formatting.plain),
    ]
    return (
        f"Machine: {machine()}.\n"
        "Settings: the lectures' own (Adam, lr 1e-3, batch 32, 5 epochs, pixels / 255 without standardizing); "
        "10% of the 60,000 training images held out for validation, the best-validation-loss epoch's weights "
        "evaluated once on the 10,000 test images. Lecture 001 reports MLP 88.1% (43.6 s of training) and CNN 91.2% "
        "(53 s) on its own machine. Command: `python benchmarks/lecture_numbers.py --write`.\n\n"
        + formatting.table(rows, columns, "markdown")
    )


def patterns(out: str) -> str:
    """Part 2: the zebra-vs-checkerboard toy, with test images shifted further than in training."""
    settings = {**LECTURE, "normalize": True}
    comp = cnnlab.compare(["seed-mlp", "seed-cnn", "small-cnn-28"], "patterns", out=f"{out}/patterns", **settings)
    columns = [
        ("model", "model", formatting.plain), ("parameters", "parameters", formatting.integer),
        ("train_seconds", "train time", formatting.seconds), ("test_accuracy", "test acc", formatting.percent),
        ("test-shifted_accuracy", "shifted test acc", formatting.percent),
    ]
    return (
        f"Machine: {machine()}.\n"
        "Patterns: 3x28x28, 5,400 training / 600 validation / 1,000 test / 1,000 shifted test images; the "
        "12x12 patch lies within 3 pixels of the centre in training and test, and 4 to 8 pixels away in the "
        "shifted test. Settings: Adam, lr 1e-3, batch 32, 5 epochs, standardized inputs (cnnlab's default). "
        "Command: `python benchmarks/lecture_numbers.py --only patterns --write`.\n\n"
        + formatting.table(comp.rows(), columns, "markdown")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--only", choices=("fashion-mnist", "patterns"), help="run one part only")
    parser.add_argument("--write", action="store_true", help="write the tables into docs/benchmarks.md")
    args = parser.parse_args()
    out = tempfile.mkdtemp(prefix="cnnlab-bench-")
    parts = {
        "fashion-mnist": lambda: fashion_mnist(str(data_dir(args.data_dir)), out),
        "patterns": lambda: patterns(out),
    }
    for name, run in parts.items():
        if args.only in (None, name):
            report = run()
            print("\n" + report + "\n")
            if args.write:
                write_section(f"lecture-{name}", report)


if __name__ == "__main__":
    main()
