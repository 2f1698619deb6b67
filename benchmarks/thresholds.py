"""What the tests' accuracy thresholds stand on: each one's training, over seeds and dispatch levels.

    python benchmarks/thresholds.py [--seeds 0-5] [--only CASE ...] [--levels default avx2] [--write]

A test that asserts "accuracy >= x" after a short training run depends on the seed and on the
CPU's arithmetic: PyTorch picks AVX-512 or AVX2 kernels at start-up, oneDNN picks AMX, AVX-512
or AVX2, and each sums in its own order, so the same seed lands on different weights. This
script trains each threshold test's configuration with every seed, twice: with the dispatch
this machine chooses, and with PyTorch and oneDNN limited to AVX2 (ATEN_CPU_CAPABILITY=avx2
ONEDNN_MAX_CPU_ISA=AVX2, the common CPU that `make test`'s second run stands in for). Each level
runs in its own Python process, since both variables are read once at start-up, and the two run
side by side: their numbers do not depend on the timing, only on the kernels and thread count.
It prints a markdown table of min / mean / max per level; --write puts it into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from common import machine, write_section

AVX2 = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
LEVELS = {"default": {}, "avx2": AVX2}
SAMPLE_TEST_IMAGES = 2000


def lecture_cnn(seed: int, out: Path) -> dict[str, float]:
    import cnnlab

    run = cnnlab.train("seed-cnn", "sample", subset=2000, epochs=3, seed=seed, out=out, verbose=False, report=False)
    return {"val accuracy (200)": run.history[-1]["val_accuracy"], "test accuracy": run.metrics["test_accuracy"]}


def fast_recipe(precision: str):
    def case(seed: int, out: Path) -> dict[str, float]:
        import cnnlab

        run = cnnlab.train(None, "sample", recipe="fast", subset=2000, epochs=3, batch_size=64, seed=seed,
                           precision=precision, out=out, verbose=False, report=False)
        return {"test accuracy": run.metrics["test_accuracy"]}

    return case


def mlp_sgd_raw_pixels(seed: int, out: Path) -> dict[str, float]:
    import cnnlab

    run = cnnlab.train("seed-mlp", "sample", subset=1000, epochs=1, optimizer="sgd", lr=0.05, normalize=False,
                       seed=seed, out=out, verbose=False, report=False)
    return {"test accuracy": run.metrics["test_accuracy"]}


def mlp_200_images(seed: int, out: Path) -> dict[str, float]:
    import cnnlab

    run = cnnlab.train("seed-mlp", "sample", subset=200, epochs=1, seed=seed, out=out, verbose=False, report=False)
    return {"test accuracy": run.metrics["test_accuracy"]}


def mlp_overfits(seed: int, out: Path) -> dict[str, float]:
    import cnnlab

    run = cnnlab.train("seed-mlp", "sample", subset=300, epochs=12, lr=3e-3, seed=seed, out=out, verbose=False,
                       report=False)
    return {"best epoch of 12": run.metrics["best_epoch"]}


def mlp_stops_early(seed: int, out: Path) -> dict[str, float]:
    import cnnlab

    run = cnnlab.train("seed-mlp", "sample", subset=300, epochs=40, lr=3e-3, patience=2, seed=seed, out=out,
                       verbose=False, report=False)
    return {"epochs run of 40": len(run.history)}


def torchrun_fast(precision: str):
    def case(seed: int, out: Path) -> dict[str, float]:
        import cnnlab

        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                   "-m", "cnnlab", "train", "--dataset", "sample", "--device", "cpu", "--recipe", "fast",
                   "--model", "fast-cnn-28", "--subset", "400", "--epochs", "4", "--batch-size", "64", "--patience", "1",
                   "--precision", precision, "--seed", str(seed), "--out", str(out), "--no-report"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if done.returncode:
            raise RuntimeError(done.stderr[-3000:])
        run = cnnlab.open_run(out)
        return {"test accuracy": run.metrics["test_accuracy"], "epochs run of 4": len(run.history)}

    return case


# name -> (the test it measures, its configuration in words, the training)
CASES = {
    "seed-cnn": ("test_train.py::test_seed_cnn_learns_2000_fashion_mnist_images (conftest's trained_run)",
                 "seed-cnn, Adam 1e-3, 1,800 train / 200 val images, 3 epochs", lecture_cnn),
    "fast-fp32": ("test_train.py::test_fast_path_learns_and_records_its_settings",
                  "--recipe fast (strided-cnn-28), 1,800 train images, batch 64, 3 epochs, fp32", fast_recipe("fp32")),
    "fast-bf16": ("test_train.py::test_fast_path_learns_and_records_its_settings",
                  "the same in bf16 autocast", fast_recipe("bf16")),
    "mlp-sgd": ("test_train.py::test_sgd_and_no_normalization",
                "seed-mlp, SGD 0.05, raw pixels, 900 train images, 1 epoch", mlp_sgd_raw_pixels),
    "mlp-200": ("test_report.py::test_training_keeps_its_run_when_the_report_fails",
                "seed-mlp, Adam 1e-3, 180 train images, 1 epoch", mlp_200_images),
    "mlp-overfit": ("test_train.py::test_best_weights_are_kept",
                    "seed-mlp, Adam 3e-3, 270 train images, 12 epochs", mlp_overfits),
    "mlp-patience": ("test_train.py::test_early_stopping",
                     "seed-mlp, Adam 3e-3, 270 train images, up to 40 epochs, patience 2", mlp_stops_early),
    "torchrun-fp32": ("test_distributed.py::test_torchrun_batch_norm_network_with_early_stopping",
                      "torchrun, 2 processes: --recipe fast with fast-cnn-28, 360 train images, batch 64, 4 epochs, "
                      "patience 1, fp32",
                      torchrun_fast("fp32")),
    "torchrun-bf16": ("test_distributed.py::test_torchrun_batch_norm_network_with_early_stopping",
                      "the same in bf16 autocast", torchrun_fast("bf16")),
}


def seed_list(text: str) -> list[int]:
    """'0-9' or '0,3,7'."""
    if "-" in text:
        first, last = text.split("-")
        return list(range(int(first), int(last) + 1))
    return [int(part) for part in text.split(",")]


def worker(cases: list[str], seeds: list[int]) -> None:
    """Train each case with each seed in this process; one JSON line per run on stdout."""
    import torch

    print(json.dumps({"machine": machine(), "capability": torch.backends.cpu.get_cpu_capability()}), flush=True)
    with tempfile.TemporaryDirectory(prefix="thresholds-") as scratch:
        for name in cases:
            for seed in seeds:
                start = time.perf_counter()
                values = CASES[name][2](seed, Path(scratch) / f"{name}-{seed}")
                print(json.dumps({"case": name, "seed": seed, "values": values,
                                  "seconds": time.perf_counter() - start}), flush=True)


def measure(level: str, cases: list[str], seeds: list[int]) -> tuple[dict, list[dict]]:
    """Run the worker at one dispatch level; its header and its rows, echoed as they come."""
    command = [sys.executable, __file__, "--worker", "--seeds", ",".join(map(str, seeds)), "--only", *cases]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env={**os.environ, **LEVELS[level]}) as child:
        lines = []
        for line in child.stdout:
            lines.append(json.loads(line))
            print(f"{level}: {line.strip()}", file=sys.stderr, flush=True)
    if child.returncode:
        sys.exit(f"the {level} worker failed (exit status {child.returncode})")
    return lines[0], lines[1:]


def table(results: dict[str, list[dict]], cases: list[str]) -> str:
    def spread(rows: list[dict], case: str, metric: str) -> str:
        values = [row["values"][metric] for row in rows if row["case"] == case]
        fmt = "{:.3f}" if all(isinstance(v, float) for v in values) else "{:.0f}"
        return " / ".join(fmt.format(v) for v in (min(values), statistics.fmean(values), max(values)))

    levels = list(results)
    heads = " | ".join(f"{level}: min / mean / max" for level in levels)
    lines = [f"| case | configuration | measured | {heads} |", "|---|---|---|" + "---:|" * len(levels)]
    for case in cases:
        metrics = next(row["values"] for row in results[levels[0]] if row["case"] == case)
        for i, metric in enumerate(metrics):
            cells = [spread(results[level], case, metric) for level in levels]
            lines.append(f"| {case if i == 0 else ''} | {CASES[case][1] if i == 0 else ''} | {metric} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0-5", help="e.g. 0-9 or 0,3,7 (default 0-5)")
    parser.add_argument("--only", nargs="+", choices=tuple(CASES), default=list(CASES))
    parser.add_argument("--levels", nargs="+", choices=tuple(LEVELS), default=list(LEVELS))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--write", action="store_true", help="write the table into docs/benchmarks.md")
    args = parser.parse_args()
    seeds = seed_list(args.seeds)
    if args.worker:
        worker(args.only, seeds)
        return

    with ThreadPoolExecutor(len(args.levels)) as pool:
        done = dict(zip(args.levels, pool.map(lambda level: measure(level, args.only, seeds), args.levels)))
    headers = {level: header for level, (header, _) in done.items()}
    results = {level: rows for level, (_, rows) in done.items()}
    minutes = {level: sum(row["seconds"] for row in rows) / 60 for level, rows in results.items()}
    notes = "; ".join(f"{level}: PyTorch {headers[level]['capability']}, {minutes[level]:.1f} min"
                      for level in args.levels)
    text = (
        f"Machine: {headers[args.levels[0]]['machine']}.\n"
        f"Seeds {args.seeds}, each a fresh run (the seed also draws the validation split); dispatch levels "
        f"{notes}. The test split is the sample's {SAMPLE_TEST_IMAGES:,} images. "
        f"Command: `python benchmarks/thresholds.py --seeds {args.seeds} --write`.\n\n"
        + table(results, args.only)
    )
    print(text)
    if args.write:
        write_section("thresholds", text)


if __name__ == "__main__":
    main()
