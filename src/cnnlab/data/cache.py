"""cnnlab's cache folder, and in it the decoded images of folder datasets, so a folder is decoded once.

    <cache root>/decoded/<group>-<key>.safetensors     one entry per folder and decoding policy

An entry holds a folder's train and test splits as uint8 tensors (N, C, H, W) with their int64 labels, and
as JSON metadata the class names, the dataset's name and source, the files left out as unreadable
(--skip-bad-images) and a CRC-32 of each tensor. Its key is a sha256 over the format, the folder, the
decoding policy and every image file's path, size and modification time: a changed, added or removed
file makes another key, and the entry written for it replaces the folder's older one (same group). Files
changed in the last SETTLE_NS are decoded but not cached yet (see Key). Safetensors, not pickle: an entry
is data, never code. A damaged entry is decoded again and replaced; a cache that cannot be written only
costs speed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import PIL
import torch

from cnnlab.data.dataset import ImageData, Split
from cnnlab.errors import DataError

# Bump when what an entry holds, or how images are decoded into it (data/images.py), changes.
FORMAT = 1
_TENSORS = ("train_x", "train_y", "test_x", "test_y")
SETTLE_NS = 2 * 10**9  # an entry is written only for files unchanged this long (see Key.settled)


def cache_dir() -> Path:
    """Where cnnlab keeps what it computed once (decoded images, transfer learning's features):
    $CNNLAB_CACHE, else $XDG_CACHE_HOME/cnnlab, else ~/.cache/cnnlab."""
    if os.environ.get("CNNLAB_CACHE"):
        return Path(os.environ["CNNLAB_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cnnlab"


def decoded_dir() -> Path:
    """The folder of the decoded-image entries."""
    return cache_dir() / "decoded"


@dataclass(frozen=True)
class Entry:
    """One file in the decoded-image cache, as `cnnlab datasets` lists it."""

    path: Path
    size: int  # bytes on disk
    source: str  # the image folder it was decoded from, or why that is unknown
    images: int | None  # train + test images, None when unreadable


@dataclass(frozen=True)
class Key:
    """Where the entry for a folder's files and policy is, and whether it may be written."""

    path: Path
    # Every file was last changed over SETTLE_NS before it was listed. A file rewritten within the same tick
    # of a coarse clock (or FAT's 2 s) keeps its mtime, so an entry of such a fresh file could go stale
    # unseen; once settled, any change gives it another mtime.
    settled: bool


def key(root: Path, files: Sequence[tuple[int, int, Path]], classes: Sequence[str],
        policy: dict[str, Any]) -> Key | None:
    """The entry for decoding `files` ((split, label, path) in decoding order, every path under `root`) with
    `policy`; None when a file cannot be stat-ed (it vanished: decoding says so, or leaves it out)."""
    group = hashlib.sha256(json.dumps([str(root), policy], sort_keys=True).encode()).hexdigest()[:16]
    # Pillow's version too: another libjpeg may decode a pixel differently.
    h = hashlib.sha256(json.dumps([FORMAT, PIL.__version__, group, list(classes)]).encode())
    newest = 0
    now = time.time_ns()
    skip = len(os.path.join(os.fsencode(root), b""))  # root and its separator: what path.relative_to(root) drops
    try:
        for split, label, path in files:
            name = os.fsencode(path)  # bytes and slicing, not pathlib: this runs for every file on every load
            stat = os.stat(name)
            newest = max(newest, stat.st_mtime_ns)
            # NUL cannot occur in a path, so no two file lists give the same bytes.
            h.update(b"%d\0%d\0%s\0%d\0%d\0" % (split, label, name[skip:], stat.st_size, stat.st_mtime_ns))
    except OSError:
        return None
    return Key(decoded_dir() / f"{group}-{h.hexdigest()[:32]}.safetensors", newest < now - SETTLE_NS)


def _crc(tensor: torch.Tensor) -> int:
    return zlib.crc32(tensor.contiguous().view(torch.uint8).numpy())  # its bytes, whatever the dtype


def load(path: Path) -> tuple[ImageData, list[str]] | None:
    """The dataset kept in `path` and the files left out when it was decoded; None when the entry is
    missing, unreadable, damaged or of another format (then the caller decodes again and replaces it)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["cnnlab"])
            if meta["format"] != FORMAT or meta["key"] != path.stem or set(f.keys()) != set(_TENSORS):
                return None
            t = {name: f.get_tensor(name) for name in _TENSORS}
        if any(_crc(t[name]) != meta["crc32"][name] for name in _TENSORS):
            return None
        splits = [Split(t[f"{s}_x"], t[f"{s}_y"]) for s in ("train", "test")]  # checks uint8 (N, C, H, W)
        classes = [str(c) for c in meta["classes"]]
        for split in splits:
            labels = split.y  # (N,)
            if labels.dtype != torch.int64 or len(labels) == 0:
                return None
            if not 0 <= int(labels.min()) <= int(labels.max()) < len(classes):
                return None
        data = ImageData(name=str(meta["name"]), classes=classes, train=splits[0], test=splits[1],
                         source=str(meta["source"]))
        return data, [str(s) for s in meta["skipped"]]
    except Exception:  # noqa: BLE001  (whatever a damaged file raises: it is decoded again and replaced)
        return None


def save(path: Path, data: ImageData, skipped: list[str]) -> bool:
    """Write `data` to `path` atomically (whole or absent), then remove the older entries of its group
    (the same folder and policy). False when it cannot be written: the cache is only slower then."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    tensors = {"train_x": data.train.x, "train_y": data.train.y, "test_x": data.test.x, "test_y": data.test.y}
    tensors = {name: t.contiguous() for name, t in tensors.items()}
    meta = {"format": FORMAT, "key": path.stem, "name": data.name, "source": data.source, "classes": data.classes,
            "skipped": skipped, "images": len(data.train) + len(data.test),
            "crc32": {name: _crc(t) for name, t in tensors.items()}}
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(partial), metadata={"cnnlab": json.dumps(meta)})
        os.replace(partial, path)
    except (OSError, SafetensorError):  # read-only, full disk, or cleared by another process meanwhile
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        return False
    group = path.name.split("-")[0]
    for old in path.parent.glob(f"{group}-*.safetensors"):
        if old != path:
            with contextlib.suppress(OSError):  # another process removed it first
                old.unlink()
    return True


def _entry(path: Path) -> Entry:
    """An entry's size and, from its header only, what it holds."""
    from safetensors import safe_open

    size = path.stat().st_size
    if path.name.endswith(".partial"):
        return Entry(path, size, "(an unfinished write)", None)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["cnnlab"])
        return Entry(path, size, str(meta["source"]), int(meta["images"]))
    except Exception:  # noqa: BLE001  (a damaged entry is listed as such, and decoded again when next used)
        return Entry(path, size, "(unreadable: decoded again when next used)", None)


def entries() -> list[Entry]:
    """Every file of the decoded-image cache, entries and unfinished writes, sorted by name."""
    folder = decoded_dir()
    try:
        paths = sorted([*folder.glob("*.safetensors"), *folder.glob("*.partial")]) if folder.is_dir() else []
    except OSError as exc:
        raise DataError(f"cannot list the cache folder {folder}: {exc.strerror or exc}") from exc
    found = []
    for path in paths:
        try:
            found.append(_entry(path))
        except OSError:  # removed meanwhile
            pass
    return found


def clear() -> list[Entry]:
    """Remove every file of the decoded-image cache; the entries removed."""
    removed = []
    for entry in entries():
        try:
            entry.path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise DataError(f"cannot remove {entry.path}: {exc.strerror or exc}; remove the folder "
                            f"{decoded_dir()} by hand") from exc
        removed.append(entry)
    return removed
