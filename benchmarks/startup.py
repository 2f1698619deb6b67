"""How long `cnnlab` takes to start: the whole command, as a user waits for it, beside `import torch`.

    python benchmarks/startup.py [--repeats 7] [--src PATH] [--write]

Each command runs in a fresh process (the venv's `cnnlab` script, or `python -c` for the
comparison). Warm: the median of --repeats runs after one untimed run. Cold: the first run after
dropping the OS page cache (`echo 3 > /proc/sys/vm/drop_caches`, as root), so that Python, torch's
shared libraries and the .pyc files are read from disk again; without root, cold is the first run
with an empty PYTHONPYCACHEPREFIX (every module compiled from source, files possibly still cached).
--src PATH measures another checkout's src/ folder (put first on PYTHONPATH), e.g. the commit before
a change: `git worktree add /tmp/before HEAD~1` and --src /tmp/before/src.
--write puts the table into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine, write_section

CNNLAB = str(Path(sys.executable).with_name("cnnlab"))
COMMANDS = [
    ("cnnlab --version", [CNNLAB, "--version"]),
    ("cnnlab --help", [CNNLAB, "--help"]),
    ("cnnlab arith padding --kernel 7", [CNNLAB, "arith", "padding", "--kernel", "7"]),
    ('cnnlab conv --input "1 2; 3 4" --kernel "1 0; 0 1"',
     [CNNLAB, "conv", "--input", "1 2; 3 4", "--kernel", "1 0; 0 1"]),
    ('cnnlab pool --input "1 2; 3 4"', [CNNLAB, "pool", "--input", "1 2; 3 4"]),
    ("cnnlab summary seed-cnn --input 1x28x28", [CNNLAB, "summary", "seed-cnn", "--input", "1x28x28"]),
    ('python -c "import torch"', [sys.executable, "-c", "import torch"]),
]
TORCH = 'python -c "import torch"'


def can_drop_caches() -> bool:
    return os.access("/proc/sys/vm/drop_caches", os.W_OK)


def run_once(argv: list[str], env: dict[str, str], cold: bool) -> float:
    """Seconds one process takes from start to exit; cold drops the page cache (or the .pyc files) first."""
    env = dict(env)
    with tempfile.TemporaryDirectory() as empty:
        if cold and can_drop_caches():
            subprocess.run(["sync"], check=True)
            Path("/proc/sys/vm/drop_caches").write_text("3\n")
        elif cold:  # no root: at least no .pyc is reused
            env.update(PYTHONDONTWRITEBYTECODE="1", PYTHONPYCACHEPREFIX=empty)
        start = time.perf_counter()
        subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--src", help="measure this src/ folder instead of the installed cnnlab")
    parser.add_argument("--no-cold", dest="cold", action="store_false", help="skip the cold runs")
    parser.add_argument("--write", action="store_true", help="write the table into docs/benchmarks.md")
    args = parser.parse_args()

    env = dict(os.environ)
    if args.src:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [args.src, env.get("PYTHONPATH")]))
    cold_means = ("first run after dropping the page cache" if can_drop_caches()
                  else "first run with an empty PYTHONPYCACHEPREFIX (no root to drop the page cache)")
    results = {}
    for name, argv in COMMANDS:
        cold = run_once(argv, env, cold=True) if args.cold else float("nan")
        run_once(argv, env, cold=False)  # untimed: the cold run may have rewritten .pyc files
        warm = statistics.median(run_once(argv, env, cold=False) for _ in range(args.repeats))
        results[name] = cold, warm
        print(f"{name}: cold {cold:.2f} s, warm {warm:.3f} s", flush=True)

    torch_cold, torch_warm = results[TORCH]
    lines = ["| command | cold | warm (median) | warm / `import torch` |", "|---|---:|---:|---:|"]
    for name, (cold, warm) in results.items():
        lines.append(f"| `{name}` | {cold:.2f} s | {warm:.3f} s | {warm / torch_warm:.0%} |")
    table = "\n".join(lines)
    print(f"\ncold: {cold_means}; warm: median of {args.repeats} runs after one untimed run\n\n{table}")
    if args.write:
        write_section("startup", "\n".join([
            f"Machine: {machine()}.",
            f"Each command in a fresh process, as a user runs it (the venv's `cnnlab` script). Cold: the "
            f"{cold_means}; warm: the median of {args.repeats} runs. Command: `python benchmarks/startup.py "
            "--write`.",
            "",
            table,
        ]))


if __name__ == "__main__":
    main()
