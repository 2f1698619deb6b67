"""A folder dataset decoded once: CIFAR-10's 60,000 JPEGs decoded and cached, read back from the cache, decoded
with the cache off.

    python benchmarks/folder_cache.py [--data-dir ~/.cache/cnnlab]

`load_dataset("cifar10")` on the unpacked JPEG copy (DIR/cifar10-jpeg/{train,test}/, as `cnnlab datasets` finds
it), each load in its own process so that nothing is kept in memory between them, with a fresh temporary
CNNLAB_CACHE:

    first      decodes every file and writes the cache entry (data/cache.py)
    second     lists and stats every file, reads the entry (safetensors, CRC-32 of each tensor)
    cache off  load_folder(..., cache=False): decoding, as before the cache

"load" is the call itself (the note it returns below the table); "process" is the whole
`python -c "import cnnlab ...; load_dataset(...)"`, interpreter and imports included, as a user waits for it.
For the second load, `load_folder` is timed apart from the rest of `load_dataset`, and within it the entry's
read apart from the listing and stat-ing of the files.
The files are read from the page cache (the first load reads them once before it is timed). Prints the
machine and a markdown table; writes nothing into docs/.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import data_dir, machine

from cnnlab.data.sources import locate

# Run in a fresh interpreter: {how} is "cached" (load_dataset; load_folder and the entry's read timed apart)
# or "off".
CHILD = """
import json, sys, time
started = time.perf_counter()
from cnnlab.data import cache, load_dataset, sources
from cnnlab.data.folder import load_folder
imported = time.perf_counter()
spent = {{"read": 0.0, "folder": 0.0}}
def timed(name, function):
    def call(*args, **kwargs):
        t = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent[name] += time.perf_counter() - t
    return call
cache.load = timed("read", cache.load)
sources.load_folder = timed("folder", sources.load_folder)
t = time.perf_counter()
if {how!r} == "off":
    data = load_folder({root!r}, cache=False)
else:
    data = load_dataset("cifar10", data_dir={data_dir!r})
load = time.perf_counter() - t
images = len(data.train) + len(data.test)
print(json.dumps({{"import": imported - started, "load": load, **spent, "images": images, "note": data.note}}))
"""


def run(how: str, root: Path, datasets: Path, env: dict[str, str]) -> dict:
    """One load in a fresh process: its timings, and the process's own seconds as "process"."""
    code = CHILD.format(how=how, root=str(root), data_dir=str(datasets))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"the {how} load failed:\n{done.stderr}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "process": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="where cifar10 is looked for (default: $CNNLAB_DATA, else "
                        "../shared/datasets, then ~/.cache/cnnlab)")
    args = parser.parse_args()

    datasets = data_dir(args.data_dir).expanduser()
    found = locate("cifar10", datasets)
    if found is None or not (Path(found) / "train").is_dir():
        sys.exit(f"no unpacked CIFAR-10 JPEG copy (cifar10-jpeg/train/) found from {datasets} (found: {found}); "
                 "unpack ../shared/datasets/cifar10-jpeg/cifar10-jpeg.tar.gz into ~/.cache/cnnlab")
    root = Path(found)
    with tempfile.TemporaryDirectory(prefix="cnnlab-cache-") as cache_root:
        env = {**os.environ, "CNNLAB_CACHE": cache_root}
        for path in root.rglob("*"):  # the JPEGs into the page cache, so the first load is not a disk benchmark
            if path.is_file():
                path.read_bytes()
        rows = {}
        for name, how in (("first (decode + write the cache)", "cached"), ("second (list + stat + read the cache)",
                          "cached"), ("cache off (decode only)", "off")):
            rows[name] = run(how, root, datasets, env)
            print(f"{name}: {rows[name]['load']:.2f} s; {rows[name]['note']}", flush=True)
        entries = list((Path(cache_root) / "decoded").glob("*.safetensors"))
        size = sum(p.stat().st_size for p in entries)

    second = rows["second (list + stat + read the cache)"]
    lines = [f"Machine: {machine()}.", "",
             f"CIFAR-10 as JPEGs ({root}): {second['images']:,} images; the cache entry: {len(entries)} file, "
             f"{size / 2**20:,.1f} MiB.", "",
             "| load | the call | whole process | imports |", "|---|---:|---:|---:|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['load']:.2f} s | {r['process']:.2f} s | {r['import']:.2f} s |")
    folder, read = second["folder"], second["read"]
    lines += ["", f"Of the second load's {second['load']:.2f} s: `load_folder` {folder:.2f} s (reading the entry "
              f"{read:.2f} s, listing and stat-ing the {second['images']:,} files and the rest {folder - read:.2f} s); "
              f"`load_dataset` around it {second['load'] - folder:.2f} s."]
    print("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
