"""The fast recipe against the lecture's on Fashion-MNIST, at two CPU dispatch levels, side by side.

    python benchmarks/dispatch_levels.py [--data-dir DIR] [--write]

Most CPUs have no bf16 units. This runs, for this machine as it is and again with PyTorch and
oneDNN limited to AVX2 (ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2: no bf16 instructions,
as on most laptops), each level in its own subprocess:
  - the precision `--precision auto` chooses there, and why;
  - training images/s of the fast recipe's strided-cnn-28 (batch 128) in bf16 and in fp32;
  - (a) lecture 001's recipe as written (time_to_accuracy.py's): training seconds to 91.2% test accuracy;
  - (c) `cnnlab train --recipe fast` as a user runs it, the whole process (start-up, reading the data,
    training, the final test; time_to_accuracy.py's process_recipe), twice before (a) and twice after
    it (the machine drifts over minutes; (c) is seeded, so only its time moves), after one untimed run
    that writes Python's bytecode caches, and the ratio (a) / (c) for (c)'s median and slowest run.
--write puts the table into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import math
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
    from time_to_accuracy import lecture_recipe, process_recipe, to_target

    cpu = torch.device("cpu")
    choice = cnnlab_machine.choose_precision("auto", cpu)
    # Each precision and memory layout of the fast recipe's step: what auto and the default layout rest on.
    speeds = {f"{p} {layout}": cnnlab_machine.images_per_second(p, cpu, seconds=4, channels_last=layout == "NHWC",
                                                                model="strided-cnn-28", batch=128)
              for p in ("bf16", "fp32") for layout in ("NHWC", "NCHW")}
    with tempfile.TemporaryDirectory() as out:
        process_recipe("fashion-mnist", root, f"{out}/c", "fast")  # untimed: Python's bytecode caches written
        fast = [process_recipe("fashion-mnist", root, f"{out}/c", "fast") for _ in range(2)]
        lecture = lecture_recipe("fashion-mnist", root)
        fast += [process_recipe("fashion-mnist", root, f"{out}/c", "fast") for _ in range(2)]
    fast_seconds = [to_target(r, TARGET)[0] for r in fast]
    return {
        "machine": machine(), "precision": choice.precision, "why": choice.why, "images_per_s": speeds,
        "fast_seconds": fast_seconds, "fast_accuracy": min(r["final"] for r in fast),
        "fast_train": sum(fast[0]["seconds"]),
        "lecture_seconds": to_target(lecture, TARGET)[0], "lecture_accuracies": lecture["accuracies"],
    }


def run_level(name: str, root: str) -> dict:
    env = {**os.environ, **LEVELS[name]}
    done = subprocess.run([sys.executable, __file__, "--worker", "--data-dir", root], env=env, check=True,
                          capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(results: dict[str, dict]) -> str:
    lines = [
        "| dispatch | auto precision | strided-cnn-28 train img/s (batch 128): bf16 NHWC, NCHW / fp32 NHWC, NCHW | "
        "(a) lecture: s to 91.2% | (c) fast, whole process: s to 91.2% (median; each run) | (c) of it training | "
        "(c) final acc | (a) / (c): median, slowest run |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    verdicts = []
    for name, r in results.items():
        s = r["images_per_s"]
        level = re.search(r"torch threads \((\w+)\)", r["machine"]).group(1)  # PyTorch's capability level
        # A run that missed 91.2% has no time to it (nan): it fails the level, it is not a slow run.
        missed = any(math.isnan(t) for t in r["fast_seconds"]) or math.isnan(r["lecture_seconds"])
        fast = statistics.median(r["fast_seconds"])
        median, worst = r["lecture_seconds"] / fast, r["lecture_seconds"] / max(r["fast_seconds"])
        ratios = "a run missed 91.2%" if missed else f"{median:.2f}x, {worst:.2f}x"
        lines.append(
            f"| {name} ({level}) | {r['precision']} | "
            f"{s['bf16 NHWC']:,.0f}, {s['bf16 NCHW']:,.0f} / {s['fp32 NHWC']:,.0f}, {s['fp32 NCHW']:,.0f} | "
            f"{r['lecture_seconds']:.1f} | "
            f"{fast:.1f} ({', '.join(f'{t:.1f}' for t in r['fast_seconds'])}) | {r['fast_train']:.1f} | "
            f"{r['fast_accuracy']:.2%} | {ratios} |"
        )
        verdicts.append(f"- {name}: 10x in every run {'met' if not missed and worst >= 10 else 'MISSED'}")
    whys = "\n".join(f"- {name}: {r['why']}" for name, r in results.items())
    first = next(iter(results.values()))
    return (f"Machine: {first['machine']}. Command: `python benchmarks/dispatch_levels.py --write`.\n\n"
            + "\n".join(lines) + "\n\n" + "\n".join(verdicts)
            + f"\n\nWhy `--precision auto` chose as it did:\n{whys}\n")


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
