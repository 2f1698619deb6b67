"""Kill -9 a training run at random steps, resume it, and compare its weights with an uninterrupted run.

    python benchmarks/kill_resume.py --kills 10

Each round starts `cnnlab train` in a subprocess, waits until its checkpoint has passed a random
step, sends SIGKILL (the process may be mid-step, mid-write or validating), checks that every file
of the run folder still parses, and then `cnnlab train --resume`s it to the end. The resumed run's
final weights must equal the uninterrupted run's bit for bit. tests/test_kill.py runs two rounds;
this script runs as many as asked and prints a table.
"""

from __future__ import annotations

import argparse
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

# A recipe with every source of randomness a run has: shuffling, flips, one-cycle SGD, TTA; in fp32 on
# every machine, since where the CPU's flags cannot settle `auto`, two processes could time it apart.
FLAGS = [
    "--recipe", "fast", "--precision", "fp32", "--model", "small-cnn-28", "--dataset", "sample", "--subset", "600",
    "--epochs", "2",
    "--batch-size", "64", "--checkpoint-steps", "1", "--no-report", "--quiet",
]
STEPS = 2 * 9  # 540 training images in batches of 64 (the last one of 28), two epochs


def cnnlab(*args: str) -> list[str]:
    return [sys.executable, "-m", "cnnlab", *args]


def train_whole(out: Path) -> dict[str, torch.Tensor]:
    """The uninterrupted run's final weights."""
    subprocess.run(cnnlab("train", *FLAGS, "--out", str(out)), check=True, capture_output=True)
    return load_file(out / "model.safetensors")


def steps_done(out: Path) -> int:
    """Steps the run's last checkpoint has behind it (0 before the first)."""
    try:
        state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    except (FileNotFoundError, RuntimeError, EOFError):  # not written yet
        return 0
    return state["epoch"] * STEPS // 2 + state.get("step", 0)


def kill_after(out: Path, step: int, delay: float = 0.0, timeout: float = 300) -> int:
    """Start a run into `out`, SIGKILL it `delay` seconds after its checkpoint has passed `step` (so that
    the kill lands anywhere: in a step, in a write, in validation); the steps its checkpoint had then."""
    process = subprocess.Popen(cnnlab("train", *FLAGS, "--out", str(out)), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while (done := steps_done(out)) < step:
            if process.poll() is not None:
                raise RuntimeError(f"the run ended before step {step}: {process.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no checkpoint past step {step} within {timeout} s")
            time.sleep(0.005)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
    finally:
        process.wait()
        process.stderr.close()
    return done


def every_file_parses(out: Path) -> None:
    """What a killed run leaves must read back: the run folder and its checkpoint."""
    from cnnlab.runs.folder import load_checkpoint, open_run

    open_run(out)
    if (out / "checkpoint.pt").exists():
        load_checkpoint(out / "checkpoint.pt")


def resume(out: Path) -> dict[str, torch.Tensor]:
    subprocess.run(cnnlab("train", "--resume", str(out), "--quiet", "--no-report"), check=True, capture_output=True)
    return load_file(out / "model.safetensors")


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, help="of the random steps (default: a new draw)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        whole = train_whole(Path(tmp) / "whole")
        for i in range(args.kills):
            out = Path(tmp) / f"killed-{i}"
            step, delay = rng.randint(1, STEPS), rng.uniform(0, 0.3)
            done = kill_after(out, step, delay)
            every_file_parses(out)
            leftovers = sorted(p.name for p in out.glob(".*.tmp"))
            rows.append((f"{step} + {delay:.2f} s", done, leftovers, same(resume(out), whole)))
            print(f"kill {i + 1}: {rows[-1][0]} (checkpoint at {done}), half-written files {leftovers or 'none'}, "
                  f"resumed bit-identical: {rows[-1][3]}", flush=True)
    print("\n| kill | after step | checkpoint then | half-written files left | bit-identical after --resume |")
    print("|---:|---:|---:|---|---|")
    for i, (step, done, leftovers, equal) in enumerate(rows, 1):
        print(f"| {i} | {step} | {done} | {', '.join(leftovers) or '-'} | {'yes' if equal else 'NO'} |")
    if not all(row[3] for row in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
