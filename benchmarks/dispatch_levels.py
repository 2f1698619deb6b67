"""The fast recipe against the lecture's on Fashion-MNIST, at two CPU dispatch levels, side by side.

    python benchmarks/dispatch_levels.py [--data-dir DIR] [--write]

Most CPUs have no bf16 units. This runs, for this machine as it is and again with PyTorch and
oneDNN limited to AVX2 (ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2: no bf16 instructions,
as on most laptops), each level in its own subprocess:
  - the precision `--precision auto` chooses there, and why;
  - training images/s of fast-cnn-28 (batch 256) in bf16 and in fp32;
  - (a) lecture 001's recipe as written (time_to_accuracy.py's), and (c) `cnnlab train --recipe fast`
    before and after it (the machine drifts over minutes; (c) is seeded, so only its time moves):
    training seconds to 91.2% test accuracy and the ratio (a) / (c).
--write puts the table into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile

import torch

from common import data_dir, machine, write_section

LEVELS = {"as it is": {}, "AVX2 only": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}
TARGET = 0.912


def worker(root: str) -> dict:
    """One dispatch level, in this process: the precision choice, step speeds, (c), (a), (c)."""
    from cnnlab.training import machine as cnnlab_machine
    from time_to_accuracy import cnnlab_recipe, lecture_recipe, to_target

    cpu = torch.device("cpu")
    choice = cnnlab_machine.choose_precision("auto", cpu)
    # Each precision and memory layout of the fast recipe's step: what auto and the default layout rest on.
    speeds = {f"{p} {layout}": cnnlab_machine.images_per_second(p, cpu, seconds=4, channels_last=layout == "NHWC")
              for p in ("bf16", "fp32") for layout in ("NHWC", "NCHW")}
    with tempfile.TemporaryDirectory() as out:
        fast = [cnnlab_recipe("fashion-mnist", root, f"{out}/c", None, "fast")]
        lecture = lecture_recipe("fashion-mnist", root)
        fast.append(cnnlab_recipe("fashion-mnist", root, f"{out}/c", None, "fast"))
    fast_seconds = [to_target(r, TARGET)[0] for r in fast]
    return {
        "machine": machine(), "precision": choice.precision, "why": choice.why, "images_per_s": speeds,
        "fast_seconds": fast_seconds, "fast_accuracies": fast[0]["accuracies"],
        "lecture_seconds": to_target(lecture, TARGET)[0], "lecture_accuracies": lecture["accuracies"],
    }


def run_level(name: str, root: str) -> dict:
    env = {**os.environ, **LEVELS[name]}
    done = subprocess.run([sys.executable, __file__, "--worker", "--data-dir", root], env=env, check=True,
                          capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(results: dict[str, dict]) -> str:
    lines = [
        "| dispatch | auto precision | fast-cnn-28 train img/s: bf16 NHWC, NCHW / fp32 NHWC, NCHW | "
        "(a) lecture: s to 91.2% | (c) fast: s to 91.2% (two runs) | (c) final acc | (a) / (c) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        fast, s = statistics.median(r["fast_seconds"]), r["images_per_s"]
        level = re.search(r"torch threads \((\w+)\)", r["machine"]).group(1)  # PyTorch's capability level
        lines.append(
            f"| {name} ({level}) | {r['precision']} | "
            f"{s['bf16 NHWC']:,.0f}, {s['bf16 NCHW']:,.0f} / {s['fp32 NHWC']:,.0f}, {s['fp32 NCHW']:,.0f} | "
            f"{r['lecture_seconds']:.1f} | "
            f"{fast:.1f} ({', '.join(f'{s:.1f}' for s in r['fast_seconds'])}) | {r['fast_accuracies'][-1]:.2%} | "
            f"{r['lecture_seconds'] / fast:.1f}x |"
        )
    whys = "\n".join(f"- {name}: {r['why']}" for name, r in results.items())
    first = next(iter(results.values()))
    return (f"Machine: {first['machine']}. Command: `python benchmarks/dispatch_levels.py --write`.\n\n"
            + "\n".join(lines) + f"\n\nWhy `--precision auto` chose as it did:\n{whys}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--write", action="store_true", help="write the table into docs/benchmarks.md")
    args = parser.parse_args()
    root = str(data_dir(args.data_dir))
    if args.worker:
        print(json.dumps(worker(root)))
        return
    results = {}
    for name in LEVELS:
        results[name] = run_level(name, root)
        print(f"{name}: {json.dumps(results[name])}", flush=True)
    text = table(results)
    print(text)
    if args.write:
        write_section("dispatch-levels", text)


if __name__ == "__main__":
    main()
