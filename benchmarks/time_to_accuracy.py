"""Time to accuracy on a CPU: the lectures' recipe, cnnlab with the same settings, and --recipe fast.

    python benchmarks/time_to_accuracy.py [--data-dir DIR] [--only fashion-mnist|mnist] [--no-long] [--write]

On the full Fashion-MNIST (target 91.2%) and MNIST (target 99.0%), in one process, one after another:
  (a) lecture 001's recipe exactly as written: a per-item Dataset whose __getitem__ moves each image
      to the device, DataLoader(batch_size=32, shuffle=True), Adam(lr=1e-3), CrossEntropyLoss, the
      lecture's CNN (seed-cnn, the same layers), 5 epochs, pixels / 255;
  (b) `cnnlab train --model seed-cnn` with the same optimizer, batch size, epochs and pixels;
  (c) `cnnlab train --recipe fast`.
All three train on all 60,000 training images (no validation split) and are tested on the 10,000
test images after every epoch, outside the timed training; (c), being short, runs 3 times (the
same accuracies: it is seeded) and reports the median seconds. Since this machine's speed drifts
over minutes, (a) and (b) also train on 6,400 images in alternating rounds for a fair img/s ratio.
Times are training seconds only; for (a) the lecture's second pass over the training data for a
training accuracy is left out, in its favour.
Then the longer recipe, `--recipe fast-long`, against its targets: Fashion-MNIST >= 94.0% within
300 s, MNIST >= 99.5% within 120 s. For each: FLOPs per image from the model summary, and the
training FLOP/s as a share of this CPU's measured matmul peak. --write puts the tables into
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import cnnlab
from cnnlab.data import load_dataset
from cnnlab.inspect.evaluate import evaluate_model
from cnnlab.models import get_model
from cnnlab.inspect.summary import summarize

from common import data_dir, machine, write_section

TARGETS = {"fashion-mnist": 0.912, "mnist": 0.990}
LONG_TARGETS = {"fashion-mnist": (0.940, 300.0), "mnist": (0.995, 120.0)}
LECTURE = {"epochs": 5, "batch_size": 32, "lr": 1e-3, "optimizer": "adam", "normalize": False}


class FMNISTDataset(Dataset):
    """Lecture 001's Dataset, as written: every item is moved to the device on its own."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> None:
        x = x.view(-1, 1, 28, 28)
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
    model = get_model("seed-cnn", (1, 28, 28), 10).to(device)
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


def lecture_recipe(name: str, root: str) -> dict:
    """(a): lecture 001's recipe on the full dataset. Per-epoch seconds and test accuracies, and img/s."""
    data = load_dataset(name, data_dir=root)
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
            "final": run["accuracies"][-1], "train_images": len(data.train), "infer_per_s": infer}


def cnnlab_recipe(name: str, root: str, out: str, model: str | None, recipe: str, **settings) -> dict:
    """(b), (c) and the long recipe: cnnlab.train, tested after every epoch (--watch-test)."""
    run = cnnlab.train(model, name, recipe=recipe, data_dir=root, out=out, overwrite=True, device="cpu",
                       verbose=False, val_fraction=0.0, watch_test=True, **settings)
    data = load_dataset(name, data_dir=root)
    model = cnnlab.load(run, device="cpu")  # as `cnnlab evaluate` runs it: its layout, its TTA
    evaluate_model(model, data.test)  # warm-up
    started = time.perf_counter()
    evaluate_model(model, data.test)
    infer = len(data.test) / (time.perf_counter() - started)
    return {"model": run.config.model, "seconds": [row["seconds"] for row in run.history],
            "accuracies": [row["test_accuracy"] for row in run.history], "final": run.metrics["test_accuracy"],
            "train_images": run.config.data.train_images, "infer_per_s": infer}


def repeated(times: int, job) -> dict:
    """job() `times` times: the same accuracies every time (seeded), the median seconds of each epoch."""
    results = [job() for _ in range(times)]
    per_epoch = [statistics.median(r["seconds"][i] for r in results) for i in range(len(results[0]["seconds"]))]
    return {**results[0], "seconds": per_epoch}


def side_by_side(name: str, root: str, out: str, images: int = 6400, rounds: int = 3) -> tuple[float, float]:
    """Training img/s of (a) and (b) on the first `images` images, in alternating rounds, best of each:
    the machine's speed drifts over minutes, so two long runs one after the other compare it, not the code."""
    data = load_dataset(name, data_dir=root)
    x, y = data.train.x[:images], data.train.y[:images]
    lecture, ours = [], []
    for _ in range(rounds):
        lecture.append(images / lecture_run(x, y, 1, None)["seconds"][0])
        run = cnnlab.train("seed-cnn", name, data_dir=root, out=f"{out}/side", overwrite=True, device="cpu",
                           verbose=False, val_fraction=0.0, subset=images, **{**LECTURE, "epochs": 1})
        ours.append(images / run.history[0]["seconds"])
    return max(lecture), max(ours)


def to_target(result: dict, target: float) -> tuple[float, int | None]:
    """(training seconds, epoch) when the test accuracy first reached `target`; (nan, None) if never."""
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


def train_flops_per_image(model: str) -> float:
    """Forward mult-adds x 2 FLOPs x 3 (forward, and a backward of about twice the forward)."""
    return summarize(get_model(model, (1, 28, 28), 10), (1, 28, 28)).mult_adds * 2 * 3


def row(label: str, result: dict, target: float, peaks: dict[str, float], bf16: bool) -> dict:
    seconds, epoch = to_target(result, target)
    images_per_s = result["train_images"] * len(result["seconds"]) / sum(result["seconds"])
    flops = train_flops_per_image(result["model"])
    peak = peaks["bf16" if bf16 else "fp32"]
    return {"label": label, "model": result["model"], "to_target": seconds, "epoch": epoch,
            "epochs": len(result["seconds"]), "total": sum(result["seconds"]), "final": result["final"],
            "train_per_s": images_per_s,
            "infer_per_s": result["infer_per_s"], "per_epoch": [f"{a:.2%}" for a in result["accuracies"]],
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
    print(f"== {name}: (a) the lecture's recipe", flush=True)
    a = row("(a) lecture 001, as written", lecture_recipe(name, root), target, peaks, False)
    print(f"== {name}: (b) cnnlab, the lecture's settings", flush=True)
    b = row("(b) cnnlab, same settings", cnnlab_recipe(name, root, f"{out}/{name}-b", "seed-cnn", "lecture",
                                                       **LECTURE), target, peaks, False)
    print(f"== {name}: (c) cnnlab --recipe fast, 3 times", flush=True)
    c = row("(c) cnnlab --recipe fast (median of 3)",
            repeated(3, lambda: cnnlab_recipe(name, root, f"{out}/{name}-c", None, "fast")), target, peaks, True)
    print(f"== {name}: (a) and (b) side by side, alternating", flush=True)
    lecture_speed, cnnlab_speed = side_by_side(name, root, out)
    ratio_time = a["to_target"] / c["to_target"]
    summary = (
        f"(c) reaches {target:.1%} {ratio_time:.1f}x sooner than (a) (target 10x). (b) trains "
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--only", choices=tuple(TARGETS))
    parser.add_argument("--no-long", action="store_true", help="leave out the fast-long recipe")
    parser.add_argument("--write", action="store_true", help="write the tables into docs/benchmarks.md")
    args = parser.parse_args()
    root = str(data_dir(args.data_dir))
    names = [args.only] if args.only else list(TARGETS)
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(f"matmul peak: fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s", flush=True)
    with tempfile.TemporaryDirectory() as out:
        sections = [compare(name, root, out, peaks) for name in names]
        longs = [] if args.no_long else [long_recipe(name, root, out, peaks) for name in names]
    text = (
        f"Machine: {machine()}. Measured matmul peak (2048 x 2048): fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, "
        f"bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s; a training step is counted as 3 x 2 x the forward "
        "mult-adds per image. Command: `python benchmarks/time_to_accuracy.py --write`.\n\n"
        + "\n".join(sections)
        + ("\n### Longer recipe: --recipe fast-long\n\n" + "\n".join(longs) if longs else "")
    )
    if args.write:
        write_section("time-to-accuracy" + ("-" + args.only if args.only else ""), text)


if __name__ == "__main__":
    main()
