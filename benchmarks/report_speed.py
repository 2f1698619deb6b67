"""How long a report takes for a finished Fashion-MNIST run, part by part, against the 20 s target.

    python benchmarks/report_speed.py [--data-dir DIR] [--runs RUN ...] [--write]

Trains seed-cnn (lecture 001's settings) and fast-cnn-28 (--recipe fast, with flip TTA, so its
test pass runs twice) for one epoch on the full Fashion-MNIST, without a report (the report's
cost does not depend on the epochs), or takes the given run folders. Then, in this one process,
it times each part of the report side by side: reading the data again, the test pass, each
section; and `cnnlab report RUN` as a user runs it, Python's start and imports included.
The issue's target: under 20 s on 2 cores. --write puts the table into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cnnlab
from cnnlab.inspect.evaluate import load_run_data
from cnnlab.report.page import SECTIONS, findings, report

from common import data_dir, machine, write_section

TARGET_SECONDS = 20.0
TRAINED = [("seed-cnn", {"model": "seed-cnn"}), ("fast-cnn-28", {"recipe": "fast"})]


def timed(job):
    start = time.perf_counter()
    value = job()
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--runs", nargs="*", help="finished run folders to report on instead of training two")
    parser.add_argument("--write", action="store_true", help="write the table into docs/benchmarks.md")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="report-speed-"))
    runs = [cnnlab.open_run(r) for r in args.runs or []]
    for name, settings in ([] if args.runs else TRAINED):
        print(f"training {name} for 1 epoch on Fashion-MNIST ...", flush=True)
        runs.append(cnnlab.train(dataset="fashion-mnist", data_dir=data_dir(args.data_dir), epochs=1,
                                 out=scratch / name, verbose=False, report=False, **settings))

    columns = ["read data", "test pass"] + [heading for _, heading, _ in SECTIONS]
    lines = ["| model | test images | " + " | ".join(columns) + " | report() | `cnnlab report` | target / command |",
             "|---|---:|" + "---:|" * (len(columns) + 3)]
    for run in runs:
        name = run.config.model
        report(run, out=scratch / "warm-up.html")  # the first call pays for importing matplotlib
        data, read = timed(lambda: load_run_data(run))
        f, test_pass = timed(lambda: findings(run, data, device="cpu"))
        parts = [read, test_pass] + [timed(lambda: section(f))[1] for _, _, section in SECTIONS]
        _, whole = timed(lambda: report(run, out=scratch / f"{name}.html", device="cpu"))
        command = [sys.executable, "-m", "cnnlab", "report", str(run.path), "--out", str(scratch / "cli.html"),
                   "--device", "cpu"]
        _, cli = timed(lambda: subprocess.run(command, check=True, capture_output=True))
        verdict = "met" if cli < TARGET_SECONDS else "MISSED"
        print(f"{name}: report() {whole:.2f} s, `cnnlab report` {cli:.2f} s; target {TARGET_SECONDS:.0f} s {verdict}")
        lines.append(f"| {name} | {len(data.test):,} | " + " | ".join(f"{t:.2f} s" for t in parts)
                     + f" | {whole:.2f} s | {cli:.2f} s | {TARGET_SECONDS / cli:.1f}x |")

    table = "\n".join(lines)
    print("\n" + table)
    if args.write:
        write_section("report-speed", "\n".join([
            f"Machine: {machine()}.",
            "One process; each part timed once after a warm-up report. `report()` is the whole page from the "
            "run folder (reading the data again included); `cnnlab report` adds Python's start and the imports, "
            "as a user waits for it. Runs: one epoch on the full Fashion-MNIST (60,000 / 10,000 images). "
            f"Target: under {TARGET_SECONDS:.0f} s. Command: `python benchmarks/report_speed.py --write`.",
            "",
            table,
        ]))


if __name__ == "__main__":
    main()
