"""Time to accuracy on a CPU: the lectures' recipe, cnnlab with the same settings, and --recipe fast.

    python benchmarks/time_to_accuracy.py [--data-dir DIR] [--only fashion-mnist|mnist|cifar10] [--no-long]
                                          [--write]

On the full Fashion-MNIST (target 91.2%) and MNIST (target 99.0%), in one process, one after another:
  (a) lecture 001's recipe exactly as written: a per-item Dataset whose __getitem__ moves each image
      to the device, DataLoader(batch_size=32, shuffle=True), Adam(lr=1e-3), CrossEntropyLoss, the
      lecture's CNN (seed-cnn, the same layers), 5 epochs, pixels / 255;
  (b) `cnnlab train --model seed-cnn` with the same optimizer, batch size, epochs and pixels;
  (c) `cnnlab train --recipe fast`, as a user runs it: the whole process, in a process of its own.
(a) and (b) train on all 60,000 training images (no validation split) and are tested on the 10,000
test images after every epoch, outside their timed training; their times are training seconds only
(for (a) the lecture's second pass over the training data for a training accuracy is left out, in
its favour). (c) is `python -m cnnlab train --recipe fast --val-fraction 0 --no-report` (all
60,000 images trained on, as (a) does, so no validation pass; no report.html, which is not
training), timed from launch to exit: Python's start, the imports, reading the data, training, the
final test and writing the run folder; it reaches the target when that final test does. Being
short, (c) runs 3 times (the same accuracies: it is seeded), once before (a) and twice after (b),
after one untimed run that writes Python's bytecode caches (as a first run after installing does),
and reports the median and the ratio of the slowest run. Since this machine's speed drifts over
minutes, (a) and (b) also train on 6,400 images in alternating rounds for a fair img/s ratio.
Then the longer recipe, `--recipe fast-long`, against its targets: Fashion-MNIST >= 94.0% within
300 s, MNIST >= 99.5% within 120 s. For each: FLOPs per image from the model summary, and the
training FLOP/s as a share of this CPU's measured matmul peak.

CIFAR-10 (the JPEG folder, read from cnnlab's decoded-image cache, which is filled first; about 35
minutes, so `--only cifar10` runs it alone; a run without --only includes it): (a) the lecture's
recipe on the lecture's CNN, then `--recipe fast` and `--recipe fast-long` (not with --no-long) as
whole processes tested after every epoch (--watch-test: their test passes count in their wall
time), against the targets >= 85% within 10 minutes and the best within 30 minutes.
--write puts the tables into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import cnnlab
from cnnlab.data import ImageData, load_dataset
from cnnlab.inspect.evaluate import evaluate_model
from cnnlab.models import get_model
from cnnlab.inspect.summary import summarize
from cnnlab.runs.folder import Run, open_run

from common import cifar10, data_dir, machine, write_section

TARGETS = {"fashion-mnist": 0.912, "mnist": 0.990, "cifar10": 0.85}
CIFAR_BUDGETS = {"fast": 600.0, "fast-long": 1800.0}  # whole-process seconds
LONG_TARGETS = {"fashion-mnist": (0.940, 300.0), "mnist": (0.995, 120.0)}
LECTURE = {"epochs": 5, "batch_size": 32, "lr": 1e-3, "optimizer": "adam", "normalize": False}


class FMNISTDataset(Dataset):
    """Lecture 001's Dataset, as written: every item is moved to the device on its own."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> None:
        x = x.view(-1, *x.shape[1:])  # the lecture's view(-1, 1, 28, 28), for any image shape
        x = x.float() / 255
        self.x, self.y, self.device = x, y, device

    def __getitem__(self, ix: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[ix].to(self.device), self.y[ix].to(self.device)

    def __len__(self) -> int:
        return len(self.x)


@torch.no_grad()
def test_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Accuracy over (x, y) in batches of 1,000 (the same for every recipe; not timed)."""
    model.eval()
    correct = sum((model(x[i : i + 1000]).argmax(1) == y[i : i + 1000]).sum().item() for i in range(0, len(x), 1000))
    model.train()
    return correct / len(x)


def lecture_run(x: torch.Tensor, y: torch.Tensor, epochs: int, test: tuple[torch.Tensor, torch.Tensor] | None) -> dict:
    """Lecture 001's loop over (x, y), as written; the test accuracy after each epoch when `test` is given."""
    device = torch.device("cpu")
    torch.manual_seed(0)
    train_dl = DataLoader(FMNISTDataset(x, y, device), batch_size=32, shuffle=True)
    model = get_model("seed-cnn", tuple(x.shape[1:]), 10).to(device)
    loss_fn = nn.CrossEntropyLoss()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def train_batch(x: torch.Tensor, y: torch.Tensor) -> float:
        model.train()
        opt.zero_grad()
        batch_loss = loss_fn(model(x), y)
        batch_loss.backward()
        opt.step()
        return batch_loss.detach().cpu().numpy()

    seconds, accuracies = [], []
    for _ in range(epochs):
        started = time.perf_counter()
        for xb, yb in train_dl:
            train_batch(xb, yb)
        seconds.append(time.perf_counter() - started)
        if test is not None:
            accuracies.append(test_accuracy(model, *test))
    return {"model": model, "seconds": seconds, "accuracies": accuracies}


@functools.lru_cache(maxsize=None)  # read once a benchmark, not once a run
def dataset(name: str, root: str) -> ImageData:
    """The dataset `name` as the runs read it (CIFAR-10 through the decoded-image cache, unpacked first)."""
    return cifar10(Path(root)) if name == "cifar10" else load_dataset(name, data_dir=root)


def lecture_recipe(name: str, root: str) -> dict:
    """(a): lecture 001's recipe on the full dataset. Per-epoch seconds and test accuracies, and img/s."""
    data = dataset(name, root)
    run = lecture_run(data.train.x, data.train.y, LECTURE["epochs"], (data.test.x.float() / 255, data.test.y))
    # Inference the lecture's way: its test DataLoader, batch 32, one forward per batch.
    model = run["model"].eval()
    test_dl = DataLoader(FMNISTDataset(data.test.x, data.test.y, torch.device("cpu")), batch_size=32)
    started = time.perf_counter()
    with torch.no_grad():
        for x, _ in test_dl:
            model(x)
    infer = len(data.test) / (time.perf_counter() - started)
    return {"model": "seed-cnn", "seconds": run["seconds"], "accuracies": run["accuracies"],
            "final": run["accuracies"][-1], "train_images": len(data.train), "infer_per_s": infer,
            "input_shape": tuple(data.input_shape)}


def cnnlab_recipe(name: str, root: str, out: str, model: str | None, recipe: str, **settings) -> dict:
    """(b), (c) and the long recipe: cnnlab.train, tested after every epoch (--watch-test)."""
    run = cnnlab.train(model, name, recipe=recipe, data_dir=root, out=out, overwrite=True, device="cpu",
                       verbose=False, val_fraction=0.0, watch_test=True, **settings)
    return run_result(run, dataset(name, root))


def run_result(run: Run, data: ImageData, watch_test: bool = True) -> dict:
    """A finished run's seconds and accuracies per epoch, and its model's test images per second as
    `cnnlab evaluate` runs it (its layout, its TTA), best after a warm-up pass."""
    model = cnnlab.load(run, device="cpu")
    evaluate_model(model, data.test)  # warm-up
    started = time.perf_counter()
    evaluate_model(model, data.test)
    infer = len(data.test) / (time.perf_counter() - started)
    return {"model": run.config.model, "seconds": [row["seconds"] for row in run.history],
            "accuracies": [row["test_accuracy"] for row in run.history] if watch_test else [],
            "final": run.metrics["test_accuracy"], "train_images": run.config.data.train_images,
            "infer_per_s": infer, "input_shape": tuple(run.config.data.input_shape),
            "precision": run.config.train.precision}


def process_recipe(name: str, root: str, out: str, recipe: str, watch_test: bool = False,
                   env: dict[str, str] | None = None) -> dict:
    """`cnnlab train --recipe RECIPE` as a user runs it, in a process of its own, timed from launch to
    exit ("wall"): start-up, imports, reading the data, training, the final test, the run folder
    (no report.html). With `watch_test`, the test accuracy after every epoch too (its test passes in
    the wall time)."""
    command = [sys.executable, "-m", "cnnlab", "train", "--recipe", recipe, "--dataset", name, "--data-dir", root,
               "--val-fraction", "0", "--no-report", "--quiet", "--device", "cpu", "--out", out, "--overwrite"]
    started = time.perf_counter()
    done = subprocess.run(command + (["--watch-test"] if watch_test else []), env={**os.environ, **(env or {})},
                          capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")
    return {**run_result(open_run(out), dataset(name, root), watch_test), "wall": wall}


def repeated(results: list[dict]) -> dict:
    """Runs of one seeded recipe merged: the median seconds of each epoch, the median whole-process seconds
    (each run's in "walls"), and the lowest final accuracy (a seeded run repeats its accuracy on one CPU;
    should one not, the worst counts)."""
    per_epoch = [statistics.median(r["seconds"][i] for r in results) for i in range(len(results[0]["seconds"]))]
    walls = [r["wall"] for r in results]
    worst = min(results, key=lambda r: r["final"])
    return {**worst, "seconds": per_epoch, "wall": statistics.median(walls), "walls": walls,
            "finals": [r["final"] for r in results]}


def verdict(lecture_seconds: float, fast: dict, target: float, goal: float = 10.0) -> str:
    """The ratio (a) / (c) for the median run and for the slowest, and whether every run met `goal`."""
    if min(fast["finals"]) < target:
        return f"(c) MISSED {target:.1%} in a run (final accuracies {', '.join(f'{a:.2%}' for a in fast['finals'])})"
    median, worst = lecture_seconds / fast["wall"], lecture_seconds / max(fast["walls"])
    met = "met" if worst >= goal else "MISSED"
    return (f"(c) reaches {target:.1%} {median:.2f}x sooner than (a) (median run; the slowest run {worst:.2f}x): "
            f"target {goal:.0f}x in every run {met}")


def side_by_side(name: str, root: str, out: str, images: int = 6400, rounds: int = 3) -> tuple[float, float]:
    """Training img/s of (a) and (b) on the first `images` images, in alternating rounds, best of each:
    the machine's speed drifts over minutes, so two long runs one after the other compare it, not the code."""
    data = dataset(name, root)
    x, y = data.train.x[:images], data.train.y[:images]
    lecture, ours = [], []
    for _ in range(rounds):
        lecture.append(images / lecture_run(x, y, 1, None)["seconds"][0])
        run = cnnlab.train("seed-cnn", name, data_dir=root, out=f"{out}/side", overwrite=True, device="cpu",
                           verbose=False, val_fraction=0.0, subset=images, **{**LECTURE, "epochs": 1})
        ours.append(images / run.history[0]["seconds"])
    return max(lecture), max(ours)


def to_target(result: dict, target: float) -> tuple[float, int | None]:
    """(seconds, epoch) when the test accuracy first reached `target`; (nan, None) if never. A whole
    process ("wall") is timed to its exit, and reaches the target when its final test does."""
    if "wall" in result:
        epochs = len(result["seconds"])
        return (result["wall"], epochs) if result["final"] >= target else (math.nan, None)
    elapsed = 0.0
    for epoch, (seconds, accuracy) in enumerate(zip(result["seconds"], result["accuracies"]), start=1):
        elapsed += seconds
        if accuracy >= target:
            return elapsed, epoch
    return math.nan, None


def matmul_peak(dtype: torch.dtype) -> float:
    """FLOP/s of a 2048 x 2048 matmul on this CPU, best of 5: the arithmetic peak in practice."""
    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(5))
    return 2 * 2048**3 / best


def _timed(job) -> float:
    started = time.perf_counter()
    job()
    return time.perf_counter() - started


def train_flops_per_image(model: str, shape: tuple[int, int, int]) -> float:
    """Forward mult-adds x 2 FLOPs x 3 (forward, and a backward of about twice the forward)."""
    return summarize(get_model(model, shape, 10), shape).mult_adds * 2 * 3


def row(label: str, result: dict, target: float, peaks: dict[str, float], bf16: bool) -> dict:
    seconds, epoch = to_target(result, target)
    images_per_s = result["train_images"] * len(result["seconds"]) / sum(result["seconds"])
    flops = train_flops_per_image(result["model"], result["input_shape"])
    peak = peaks["bf16" if bf16 else "fp32"]
    return {"label": label, "model": result["model"], "to_target": seconds, "epoch": epoch,
            "epochs": len(result["seconds"]), "total": sum(result["seconds"]), "final": result["final"],
            "train_per_s": images_per_s,
            "infer_per_s": result["infer_per_s"],
            "per_epoch": [f"{a:.2%}" for a in result["accuracies"]] or [f"final {result['final']:.2%}"],
            "gflops": images_per_s * flops / 1e9, "peak_share": images_per_s * flops / peak}


def table(rows: list[dict], target: float) -> str:
    lines = [f"| recipe | model | seconds to {target:.1%} (epoch) | final test acc | test acc per epoch | "
             "train img/s | infer img/s | train GFLOP/s (share of peak) |",
             "|---|---|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        reach = f"{r['to_target']:.1f} s ({r['epoch']})" if r["epoch"] else f"not in {r['epochs']} epochs"
        lines.append(
            f"| {r['label']} | {r['model']} | {reach} | {r['final']:.2%} | {', '.join(r['per_epoch'])} | "
            f"{r['train_per_s']:,.0f} | {r['infer_per_s']:,.0f} | {r['gflops']:.1f} ({r['peak_share']:.1%}) |"
        )
    return "\n".join(lines)


def compare(name: str, root: str, out: str, peaks: dict[str, float]) -> str:
    target = TARGETS[name]

    def fast_run() -> dict:
        return process_recipe(name, root, f"{out}/{name}-c", "fast")

    # (c) once before (a) and twice after (b): the machine drifts over minutes, and (c) should meet it all.
    # One untimed run first writes Python's bytecode caches, as a first run after installing does once.
    print(f"== {name}: (c) cnnlab --recipe fast, the whole process, once untimed, then once before (a)", flush=True)
    fast_run()
    fast_runs = [fast_run()]
    print(f"== {name}: (a) the lecture's recipe", flush=True)
    a = row("(a) lecture 001, as written", lecture_recipe(name, root), target, peaks, False)
    print(f"== {name}: (b) cnnlab, the lecture's settings", flush=True)
    b = row("(b) cnnlab, same settings", cnnlab_recipe(name, root, f"{out}/{name}-b", "seed-cnn", "lecture",
                                                       **LECTURE), target, peaks, False)
    print(f"== {name}: (c) twice more", flush=True)
    fast = repeated(fast_runs + [fast_run(), fast_run()])
    c = row("(c) `cnnlab train --recipe fast`, whole process (median of 3)", fast, target, peaks,
            fast["precision"] == "bf16")
    print(f"== {name}: (a) and (b) side by side, alternating", flush=True)
    lecture_speed, cnnlab_speed = side_by_side(name, root, out)
    summary = (
        f"{verdict(a['to_target'], fast, target)}; 12x is the next mark. (c) is counted as its whole process "
        f"({', '.join(f'{w:.1f}' for w in fast['walls'])} s; {sum(fast['seconds']):.1f} s of it training, in "
        f"{fast['precision']}), (a) as its training seconds. (b) trains "
        f"{b['train_per_s'] / a['train_per_s']:.2f}x the images per second of (a) over the whole runs above, and "
        f"{cnnlab_speed / lecture_speed:.2f}x ({cnnlab_speed:,.0f} against {lecture_speed:,.0f} img/s) in "
        "alternating rounds of 6,400 images, best of 3 each (target 1.5x at batch 32)"
    )
    print(table([a, b, c], target) + "\n" + summary, flush=True)
    return f"### {name}\n\n{table([a, b, c], target)}\n\n{summary}.\n"


def long_recipe(name: str, root: str, out: str, peaks: dict[str, float]) -> str:
    target, budget = LONG_TARGETS[name]
    print(f"== {name}: cnnlab --recipe fast-long", flush=True)
    r = row("cnnlab --recipe fast-long", cnnlab_recipe(name, root, f"{out}/{name}-long", None, "fast-long"),
            target, peaks, True)
    met = r["epoch"] is not None and r["to_target"] <= budget
    verdict = (f"{name}: {target:.1%} within {budget:.0f} s of training: "
               + ("met" if met else "MISSED") + f" (final {r['final']:.2%} after {r['total']:.1f} s)")
    print(table([r], target) + "\n" + verdict, flush=True)
    return f"{table([r], target)}\n\n{verdict}.\n"


def cifar_section(root: str, out: str, peaks: dict[str, float], long: bool = True) -> str:
    """CIFAR-10: (a) the lecture's recipe, then --recipe fast (and fast-long with `long`) as whole processes
    tested after every epoch, against >= 85% within 10 minutes and the best within 30 minutes."""
    target = TARGETS["cifar10"]
    print("== cifar10: filling the decoded-image cache, so that no run below decodes the JPEGs", flush=True)
    dataset("cifar10", root)
    print("== cifar10: (a) the lecture's recipe", flush=True)
    rows = [row("(a) lecture 001, as written", lecture_recipe("cifar10", root), target, peaks, False)]
    verdicts = [f"(a) ends at {rows[0]['final']:.2%} after {rows[0]['total']:.1f} s of training"]
    for recipe, budget in list(CIFAR_BUDGETS.items())[: 2 if long else 1]:
        print(f"== cifar10: cnnlab --recipe {recipe}, the whole process", flush=True)
        result = process_recipe("cifar10", root, f"{out}/cifar10-{recipe}", recipe, watch_test=True)
        rows.append(row(f"`cnnlab train --recipe {recipe}`, whole process", result, target, peaks,
                        result["precision"] == "bf16"))
        first = next((i for i, a in enumerate(result["accuracies"], 1) if a >= target), None)
        reached = (f"first at or above {target:.0%} after epoch {first} ({sum(result['seconds'][:first]):.0f} s of "
                   f"training)" if first else f"never at {target:.0%}")
        within = result["wall"] <= budget  # then every epoch's test came within the budget
        met = result["final"] >= target and within
        best = (f"the best test accuracy within {budget / 60:.0f} minutes {max(result['accuracies']):.2%}" if within
                else f"the process ran past {budget / 60:.0f} minutes")
        verdicts.append(
            f"{recipe}: {result['final']:.2%} at the end of a {result['wall']:.0f} s process ({target:.0%} within "
            f"{budget / 60:.0f} minutes: {'met' if met else 'MISSED'}), {reached}; {best}")
    text = table(rows, target) + "\n\n" + "\n".join(f"- {v}." for v in verdicts)
    print(text, flush=True)
    return f"### cifar10\n\n{text}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--only", choices=tuple(TARGETS))
    parser.add_argument("--no-long", action="store_true", help="leave out the fast-long recipes")
    parser.add_argument("--write", action="store_true", help="write the tables into docs/benchmarks.md")
    args = parser.parse_args()
    root = str(data_dir(args.data_dir))
    names = [args.only] if args.only else list(TARGETS)
    images = [name for name in names if name != "cifar10"]
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(f"matmul peak: fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s", flush=True)
    with tempfile.TemporaryDirectory() as out:
        sections = [compare(name, root, out, peaks) for name in images]
        longs = [] if args.no_long else [long_recipe(name, root, out, peaks) for name in images]
        sections += [cifar_section(root, out, peaks, long=not args.no_long)] if "cifar10" in names else []
    text = (
        f"Machine: {machine()}. Measured matmul peak (2048 x 2048): fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, "
        f"bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s; a training step is counted as 3 x 2 x the forward "
        f"mult-adds per image. Command: `python benchmarks/time_to_accuracy.py {' '.join(sys.argv[1:])}`.\n\n"
        + "\n".join(sections)
        + ("\n### Longer recipe: --recipe fast-long\n\n" + "\n".join(longs) if longs else "")
    )
    if args.write:
        write_section("time-to-accuracy" + ("-" + args.only if args.only else ""), text)


if __name__ == "__main__":
    main()
