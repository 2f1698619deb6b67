"""`cnnlab datasets`: where each dataset's files are found, and the decoded-image cache (shown, or cleared with
--clear-cache); added to main.py's parser."""

from __future__ import annotations

import argparse
from collections.abc import Callable

Command = Callable[[str, str, Callable[[argparse.Namespace], None]], argparse.ArgumentParser]

# The function imports what it needs when called: `cnnlab datasets --help` must not import torch
# (tests/test_startup.py).


def cmd_datasets(args: argparse.Namespace) -> None:
    from cnnlab.data import cache
    from cnnlab.errors import printable
    from cnnlab.views import formatting
    from cnnlab.data.sources import DATASETS, data_roots, locate

    if args.clear_cache:
        removed = cache.clear()
        size = formatting.nbytes(sum(e.size for e in removed))
        print(f"removed {len(removed)} decoded-image cache entries ({size}) from {cache.decoded_dir()}")
        for entry in removed:
            print(f"  {entry.path.name}  {formatting.nbytes(entry.size)}  {printable(entry.source)}")
        return
    rows = [{"dataset": name, "found": locate(name, args.data_dir) or ("-" if ":" in name else "not found"),
             "description": text} for name, text in DATASETS.items()]
    if args.format == "json":
        print(formatting.to_json(rows))
        return
    columns = [("dataset", "dataset", formatting.plain), ("found", "found at", formatting.plain),
               ("description", "description", formatting.plain)]
    print(formatting.table(rows, columns, args.format))
    print("\nsearched: " + ", ".join(str(p) for p in data_roots(args.data_dir)))

    entries = cache.entries()
    size = formatting.nbytes(sum(e.size for e in entries))
    print(f"\ndecoded-image cache (folder datasets decoded once): {cache.decoded_dir()}, {len(entries)} entries, {size}"
          + ("; `cnnlab datasets --clear-cache` removes them" if entries else ""))
    if entries:
        rows = [{"folder": e.source, "images": e.images, "size": e.size, "file": e.path.name} for e in entries]
        columns = [("folder", "decoded from", formatting.plain), ("images", "images", formatting.integer),
                   ("size", "size", formatting.nbytes), ("file", "file", formatting.plain)]
        print(formatting.table(rows, columns, args.format))


def add_command(command: Command, data_flags: Callable[[argparse.ArgumentParser], None],
                format_flag: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add datasets through main.py's `command(name, help, func)`, with its --data-dir and --format flags."""
    p = command("datasets", "list the datasets and where cnnlab finds their files, and the cache of decoded "
                            "folder datasets", cmd_datasets)
    data_flags(p)
    format_flag(p)
    p.add_argument("--clear-cache", action="store_true", help="remove the decoded-image cache (folder datasets are "
                   "decoded again when next used) and say what was removed")
