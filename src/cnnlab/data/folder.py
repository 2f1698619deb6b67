"""A folder of images with one sub-folder per class (torchvision's ImageFolder layout).

    PATH/<class>/<image>              split into train and test by a seeded draw, or
    PATH/train/<class>/<image> and PATH/test/<class>/<image>

Images are decoded once into one uint8 tensor (N, C, H, W), in parallel threads (Pillow
releases the GIL while decoding), resized to one size, and grayscale when every image is.
The result is kept in cnnlab's cache folder (data/cache.py) and read from there by later
loads while the files and the options are unchanged.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from cnnlab.data import cache as disk_cache, images
from cnnlab.errors import printable, DataError, ImageError, UsageError
from cnnlab.data.dataset import ImageData, Split, check_resize


# Without --image-size, images keep the first image's size, up to this many pixels a side.
MAX_DEFAULT_SIDE = 512


def _image_files(folder: Path) -> list[Path]:
    """Image files under `folder`, any depth, sorted; hidden files and other files are skipped."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        base = Path(root)  # once per folder: listing runs on every load, the cache's included
        found += [
            base / f for f in sorted(files)
            if not f.startswith(".") and f.lower().endswith(images.IMAGE_EXTENSIONS)
        ]
    return found


def _class_folders(root: Path) -> dict[str, list[Path]]:
    """{class name: image files} for each sub-folder of `root` (hidden ones skipped).

    A sub-folder without images is an error, not left out: the classes would change unseen. Class
    names are the folder names made printable (bytes that are not UTF-8 become U+FFFD), so they can
    be shown, drawn and written to config.json; the files keep their real paths."""
    try:
        subs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as exc:
        raise DataError(f"cannot list the class folders in {root}: {exc.strerror or exc}") from exc
    classes: dict[str, list[Path]] = {}
    folders: dict[str, Path] = {}
    for sub in subs:
        files = _image_files(sub)
        if not files:
            raise DataError(
                f"the class folder {sub} holds no image files ({', '.join(images.IMAGE_EXTENSIONS)}); put the "
                f"class's images in it, or move it out of {root} (a name starting with '.' is skipped too)"
            )
        name = printable(sub.name)
        if name in classes:
            raise DataError(f"the class folders {folders[name]} and {sub} differ only in bytes that are not "
                            f"UTF-8 and would both be class {name!r}; rename one")
        classes[name], folders[name] = files, sub
    return classes


def _seeded_split(
    classes: dict[str, list[Path]], test_fraction: float, seed: int
) -> tuple[dict[str, list[Path]], dict[str, list[Path]]]:
    """Split each class's files into train and test, so both keep the class balance."""
    g = torch.Generator().manual_seed(seed)
    train, test = {}, {}
    for name, files in classes.items():
        order = torch.randperm(len(files), generator=g).tolist()
        n_test = int(round(len(files) * test_fraction))
        if test_fraction > 0 and len(files) >= 2:
            n_test = min(max(n_test, 1), len(files) - 1)  # every class in both splits
        test[name] = [files[i] for i in order[:n_test]]
        train[name] = [files[i] for i in order[n_test:]]
    return train, test


def _decode_all(
    files: list[Path], size: tuple[int, int], channels: int | None, skip_bad: bool
) -> list[np.ndarray | None]:
    """Decode `files` in threads; None for each unreadable file when `skip_bad`, else DataError."""
    def decode(path: Path) -> np.ndarray | str:
        try:
            return images.read(path, channels=channels, size=size)  # (H, W, C)
        except ImageError as exc:
            return str(exc)

    pool = ThreadPoolExecutor(max_workers=min(8, (os.cpu_count() or 1) + 2))
    try:
        results = list(pool.map(decode, files))
    finally:
        pool.shutdown(cancel_futures=True)  # on Ctrl-C, do not wait for the images still queued
    errors = [r for r in results if isinstance(r, str)]
    if errors and not skip_bad:
        shown = "\n  ".join(errors[:10])
        more = f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else ""
        raise DataError(
            f"{len(errors)} of {len(files)} image files cannot be read:\n  {shown}{more}\n"
            "Remove or re-save them, or pass --skip-bad-images to leave them out."
        )
    return [None if isinstance(r, str) else r for r in results]


def _stack(items: list[tuple[np.ndarray, int]], channels: int, size: tuple[int, int]) -> Split:
    """One Split from decoded images, grayscale ones repeated to `channels` where needed."""
    if not items:
        return Split(torch.zeros((0, channels, *size), dtype=torch.uint8), torch.zeros(0, dtype=torch.int64))
    stacked = np.stack([np.repeat(a, channels // a.shape[2], axis=2) for a, _ in items])  # (N, H, W, C)
    x = torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous()  # (N, C, H, W)
    return Split(x, torch.tensor([y for _, y in items], dtype=torch.int64))


def load_folder(
    path: str | Path,
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    skip_bad: bool = False,
    cache: bool = True,
) -> ImageData:
    """Read a class-per-sub-folder image tree into memory.

    image_size: side (or (height, width)) every image is resized to; None takes the first
    image's size. channels: 1 or 3 to force grayscale or RGB; None is 1 only if every image is
    grayscale. test_fraction and seed split the images when there is no train/ and test/ (the
    seed of the split, not of training: every run on a folder is tested on the same images).
    cache: keep the decoded images in cnnlab's cache folder and read them from there while the files and
    these options are unchanged (data/cache.py); the result's `note` says which happened.
    """
    started = time.perf_counter()
    root = Path(path).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"folder dataset {root} does not exist or is not a folder")
    if (root / "train").is_dir():
        train_classes = _class_folders(root / "train")
        test_classes = _class_folders(root / "test") if (root / "test").is_dir() else None
        if test_classes is not None and set(test_classes) - set(train_classes):
            extra = sorted(set(test_classes) - set(train_classes))
            raise DataError(f"{root}/test has classes that {root}/train lacks: {', '.join(extra)}")
    else:
        train_classes, test_classes = _class_folders(root), None
    if len(train_classes) < 2:
        raise DataError(
            f"{root} needs at least two class sub-folders holding images, found "
            f"{len(train_classes)}; lay it out as {root}/<class>/<image>.jpg "
            f"(or with train/ and test/ folders above the class folders)"
        )
    if test_classes is None:
        train_classes, test_classes = _seeded_split(train_classes, test_fraction, seed)
    names = sorted(train_classes)
    given = _given_size(image_size)
    files = [(s, label, f) for s, classes in enumerate((train_classes, test_classes))
             for label, name in enumerate(names) for f in classes.get(name, [])]  # (split, label, path)

    policy = {"image_size": given, "channels": channels, "skip_bad": skip_bad, "test_fraction": test_fraction,
              "seed": seed}
    key = disk_cache.key(root, files, names, policy) if cache else None
    kept = disk_cache.load(key.path) if key is not None else None
    if kept is not None:
        data, skipped = kept
        seconds = time.perf_counter() - started
        return replace(data, note=f"{len(data.train) + len(data.test):,} decoded images read from the cache "
                                  f"{key.path} in {seconds:.1f} s{_skipped_note(skipped)}")

    size = given or _first_size([f for files in train_classes.values() for f in files], skip_bad)
    data, skipped = _decode_folder(root, names, files, size, channels, skip_bad)
    note = f"decoded {len(data.train) + len(data.test):,} images in {time.perf_counter() - started:.1f} s"
    if key is not None and not key.settled:
        note += f"; not cached, as some files changed in the last {disk_cache.SETTLE_NS // 10**9} s"
    elif key is not None:
        wrote = disk_cache.save(key.path, data, skipped)
        note += f"; cached in {key.path}" if wrote else f"; the cache folder {key.path.parent} cannot be written"
    return replace(data, note=note + _skipped_note(skipped))


def _decode_folder(root: Path, names: list[str], files: list[tuple[int, int, Path]], size: tuple[int, int],
                   channels: int | None, skip_bad: bool) -> tuple[ImageData, list[str]]:
    """Decode every file ((split, label, path)) into the dataset, and the files left out as unreadable
    (relative to `root`)."""
    check_resize(len(files), channels or 3, size)
    arrays = _decode_all([f for _, _, f in files], size, channels, skip_bad)  # each (H, W, C), None if unreadable
    train = [(a, label) for a, (s, label, _) in zip(arrays, files) if a is not None and s == 0]
    test = [(a, label) for a, (s, label, _) in zip(arrays, files) if a is not None and s == 1]
    skipped = [str(f.relative_to(root)) for a, (_, _, f) in zip(arrays, files) if a is None]
    unseen = sorted(set(names) - {names[label] for _, label in train})
    if unseen:  # every file of these classes was unreadable and left out (--skip-bad-images)
        raise DataError(f"the classes {', '.join(unseen)} of {root} have no readable training images (every one "
                        "was left out by --skip-bad-images); add readable images, or remove those class folders")
    if not test:
        raise DataError(
            f"{root} gives no test images: give each class at least 2 images (a share is held out "
            f"for testing), or put test images in {root}/test/<class>/"
        )
    width = max(a.shape[2] for a, _ in train + test)  # 3 if any image is in colour
    train_split = _stack(train, width, size)
    # Files come sorted by class; a fixed shuffle makes "the first N images" (--subset) a mix of classes.
    train_split = train_split.take(torch.randperm(len(train_split), generator=torch.Generator().manual_seed(0)))
    data = ImageData(name=f"folder:{root}", classes=names, train=train_split, test=_stack(test, width, size),
                     source=str(root))
    return data, skipped


def _skipped_note(skipped: list[str]) -> str:
    """What --skip-bad-images left out, for the note."""
    if not skipped:
        return ""
    shown = ", ".join(printable(p) for p in skipped[:3]) + (", ..." if len(skipped) > 3 else "")
    return f"; {len(skipped):,} unreadable files left out (--skip-bad-images): {shown}"


def _given_size(image_size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """image_size as (height, width), checked; None when it is to be the first image's."""
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    if image_size is not None and min(image_size) < 1:
        raise UsageError(f"--image-size must be at least 1, got {image_size[0]}")
    return None if image_size is None else (int(image_size[0]), int(image_size[1]))


def _first_size(files: list[Path], skip_bad: bool) -> tuple[int, int]:
    """(height, width) of the first readable image, the size every image is resized to without --image-size."""
    for path in files:
        try:
            first = images.read(path)
        except ImageError:
            if skip_bad:
                continue
            raise
        height, width = first.shape[:2]
        if max(height, width) > MAX_DEFAULT_SIDE:
            raise UsageError(
                f"the images are large ({path.name} is {width}x{height}); pass --image-size N to resize "
                f"them all to N x N (e.g. 32, 64 or 224), or memory will run out"
            )
        return height, width
    raise DataError("no readable images to take the image size from")
