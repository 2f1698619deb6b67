"""Dataset references -> ImageData: where each dataset's files are looked for, and how read.

    mnist, fashion-mnist   the IDX files (.gz or raw), as published
    cifar10                torchvision's CIFAR-10 format (cifar-10-batches-py)
    patterns               lecture 000's zebra vs checkerboard, generated
    sample                 the Fashion-MNIST sample shipped inside cnnlab (no download needed)
    folder:PATH            a folder with one sub-folder of images per class

Files are looked for under --data-dir, else $CNNLAB_DATA, and then cnnlab's cache folder
(where --download puts them), in the layouts of ../shared/datasets and of torchvision.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from cnnlab.errors import DataError, UsageError
from cnnlab.data.dataset import ImageData, Split, check_resize
from cnnlab.data.folder import load_folder
from cnnlab.data.idx import read_idx_pair
from cnnlab.data.patterns import load_patterns

FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SAMPLE_DIR = Path(__file__).parent / "sample"

DATASETS = {
    "mnist": "MNIST handwritten digits, 60,000 + 10,000 images 1x28x28 (IDX files)",
    "fashion-mnist": "Fashion-MNIST clothing, 60,000 + 10,000 images 1x28x28 (IDX files)",
    "cifar10": "CIFAR-10 objects, 50,000 + 10,000 images 3x32x32 (torchvision's format)",
    "patterns": "lecture 000's zebra vs checkerboard, 6,000 + 1,000 generated images 3x28x28",
    "sample": "8,000 + 2,000 Fashion-MNIST images shipped with cnnlab (the offline default)",
    "folder:PATH": "your images: PATH/<class>/<image> or PATH/train|test/<class>/<image>",
}

# Sub-folders of a data root that may hold each dataset's files: ours first, then torchvision's.
_IDX_FOLDERS = {
    "mnist": ["mnist", "MNIST/raw"],
    "fashion-mnist": ["fashion-mnist", "FashionMNIST/raw", "fashion_mnist"],
}
_TORCHVISION_NAMES = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST", "cifar10": "CIFAR10"}


def download_dir() -> Path:
    """Where --download puts datasets: $XDG_CACHE_HOME/cnnlab, else ~/.cache/cnnlab (data/cache.py's
    cache_dir, where computed results go, also honours $CNNLAB_CACHE)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cnnlab"


def data_roots(data_dir: str | Path | None = None) -> list[Path]:
    """The folders searched for dataset files, in order."""
    roots = []
    if data_dir is not None:
        roots.append(Path(data_dir).expanduser())
    elif os.environ.get("CNNLAB_DATA"):
        roots.append(Path(os.environ["CNNLAB_DATA"]).expanduser())
    roots.append(download_dir())
    return roots


def _idx_path(folder: Path, stem: str) -> Path:
    """folder/stem.gz if present, else folder/stem (uncompressed)."""
    gz = folder / f"{stem}.gz"
    return gz if gz.exists() else folder / stem


def _find_idx_folder(name: str, roots: list[Path]) -> tuple[Path | None, list[Path]]:
    """The first folder holding `name`'s training images, and every folder looked at."""
    looked = []
    for root in roots:
        # The root itself counts only when its name says which dataset it is (--data-dir ~/data/mnist).
        names = {sub.split("/")[0].lower() for sub in _IDX_FOLDERS[name]}
        itself = ["."] if root.name.lower() in names or (root.name == "raw" and root.parent.name.lower() in names) else []
        for sub in _IDX_FOLDERS[name] + itself:
            folder = root if sub == "." else root / sub
            looked.append(folder)
            if _idx_path(folder, "train-images-idx3-ubyte").exists():
                return folder, looked
    return None, looked


def load_idx_folder(folder: Path, name: str, classes: list[str]) -> ImageData:
    """Read the four IDX files of an MNIST-style dataset from `folder`."""
    splits = []
    for prefix in ("train", "t10k"):
        images = _idx_path(folder, f"{prefix}-images-idx3-ubyte")
        labels = _idx_path(folder, f"{prefix}-labels-idx1-ubyte")
        for path in (images, labels):
            if not path.exists():
                raise DataError(f"{path}(.gz) is missing: {name} needs all four IDX files in {folder}")
        x, y = read_idx_pair(images, labels, len(classes))
        splits.append(Split(torch.from_numpy(x.copy())[:, None], torch.from_numpy(y)))  # (N, 1, H, W)
    return ImageData(name=name, classes=list(classes), train=splits[0], test=splits[1], source=str(folder))


def _download(name: str, root: Path) -> None:
    """Fetch a dataset with torchvision into `root` (needs internet)."""
    import torchvision.datasets as tvd

    try:
        for train in (True, False):
            getattr(tvd, _TORCHVISION_NAMES[name])(str(root), train=train, download=True)
    except Exception as exc:  # torchvision raises URLError, RuntimeError, OSError, ...
        raise DataError(
            f"downloading {name} into {root} failed ({exc}). Without internet, copy the files "
            f"there by hand, or pass --data-dir pointing at a copy."
        ) from exc


def _not_found(name: str, looked: list[Path], what: str, hint: str = "") -> DataError:
    places = "\n  ".join(str(p) for p in looked)
    return DataError(
        f"{name} was not found: cnnlab looked for {what} in\n  {places}\n"
        f"Pass --data-dir DIR (or set CNNLAB_DATA=DIR) where DIR/{name}/ holds the files, "
        f"add --download to fetch them with torchvision (needs internet), "
        f"or try --dataset sample (Fashion-MNIST images shipped with cnnlab).{hint}"
    )


def _find_cifar10(roots: list[Path]) -> tuple[str | None, Path | None, list[Path]]:
    """("batches" | "jpeg", folder) of the first CIFAR-10 copy found, and every folder looked at."""
    looked = []
    for root in roots:
        for base in (root, root / "cifar10"):
            looked.append(base / "cifar-10-batches-py")
            if looked[-1].is_dir():
                return "batches", base, looked
        for candidate in (root / "cifar10-jpeg", root / "cifar10-jpeg" / "cifar10-jpeg"):
            looked.append(candidate / "train")
            if looked[-1].is_dir():
                return "jpeg", candidate, looked
    return None, None, looked


def _load_cifar10(roots: list[Path], download: bool, skip_bad: bool) -> ImageData:
    kind, base, looked = _find_cifar10(roots)
    if kind is None and download:
        _download("cifar10", roots[-1])
        kind, base, looked = _find_cifar10(roots[-1:])
    if kind == "jpeg":
        return replace(load_folder(base, skip_bad=skip_bad), name="cifar10")
    if kind == "batches":
        import torchvision.datasets as tvd  # 1.2 s to import: not for the JPEG copy

        try:
            parts = [tvd.CIFAR10(str(base), train=t, download=False) for t in (True, False)]
        except RuntimeError as exc:
            raise DataError(f"{base / 'cifar-10-batches-py'} is incomplete or damaged ({exc}); download it again") from exc
        splits = [
            Split(torch.from_numpy(p.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(p.targets))
            for p in parts
        ]  # (N, 32, 32, 3) -> (N, 3, 32, 32)
        return ImageData("cifar10", list(CIFAR10_CLASSES), splits[0], splits[1], source=str(base))
    hint = ""
    for root in roots:
        tarball = root / "cifar10-jpeg" / "cifar10-jpeg.tar.gz"
        if tarball.exists():
            hint = (
                f"\nA JPEG copy is at {tarball}: unpack it outside the project, "
                f"e.g. `tar xzf {tarball} -C /tmp`, then use --dataset folder:/tmp/cifar10-jpeg"
            )
    raise _not_found("cifar10", looked, "torchvision's cifar-10-batches-py folder", hint)


def locate(name: str, data_dir: str | Path | None = None) -> str | None:
    """Where `name`'s files would be read from, or None when they are not found."""
    if name in ("sample", "patterns"):
        return {"sample": "shipped with cnnlab", "patterns": "generated on the fly"}[name]
    roots = data_roots(data_dir)
    if name == "cifar10":
        folder = _find_cifar10(roots)[1]
    elif name in _IDX_FOLDERS:
        folder = _find_idx_folder(name, roots)[0]
    else:
        folder = None
    return str(folder) if folder else None


def adapt(data: ImageData, image_size: int | tuple[int, int] | None = None, channels: int | None = None) -> ImageData:
    """Resize every split to image_size (N, or (height, width)) and/or convert to 1 or 3 channels."""
    size = (image_size, image_size) if isinstance(image_size, int) else image_size
    if size is not None and min(size) < 1:
        raise UsageError(f"--image-size must be at least 1, got {min(size)}")
    if size is not None:
        splits = [data.train, data.test, *data.extra.values()]
        check_resize(sum(len(s) for s in splits), channels or data.train.x.shape[1], tuple(size))

    def convert(split: Split) -> Split:
        x = split.x  # (N, C, H, W) uint8
        if channels is not None and channels != x.shape[1]:
            if channels == 3 and x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            elif channels == 1 and x.shape[1] == 3:
                luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)  # ITU-R 601, as Pillow's "L"
                x = ((x.float() * luma).sum(dim=1, keepdim=True) + 0.5).clamp(0, 255).to(torch.uint8)
            else:
                raise UsageError(f"cannot convert {x.shape[1]}-channel images to {channels} channels")
        if size is not None and tuple(x.shape[2:]) != tuple(size):
            # In chunks: a float copy of a whole split would take 4 bytes for each byte of it, twice.
            parts = [F.interpolate(part.float(), size=tuple(size), mode="bilinear", antialias=True)
                     .round().clamp(0, 255).to(torch.uint8) for part in x.split(1024)]
            x = torch.cat(parts) if parts else x.new_zeros((0, x.shape[1], *size))
        return Split(x.contiguous(), split.y)

    if image_size is None and channels is None:
        return data
    return replace(
        data,
        train=convert(data.train),
        test=convert(data.test),
        extra={k: convert(v) for k, v in data.extra.items()},
    )


def load_dataset(
    ref: str,
    data_dir: str | Path | None = None,
    download: bool = False,
    image_size: int | tuple[int, int] | None = None,
    channels: int | None = None,
    seed: int = 0,
    skip_bad_images: bool = False,
) -> ImageData:
    """Load a dataset by reference ("fashion-mnist", "folder:PATH", ...) into memory.

    seed: of the data itself (the generated patterns, the test split of a folder without
    test/), not of training, so that runs with different training seeds share a test set.
    """
    roots = data_roots(data_dir)
    if ref.startswith("folder:"):
        return load_folder(ref[len("folder:"):], image_size, channels, seed=seed, skip_bad=skip_bad_images)
    if ref == "sample":
        data = replace(load_idx_folder(SAMPLE_DIR, "sample", FASHION_CLASSES), source="shipped with cnnlab")
    elif ref == "patterns":
        data = load_patterns(seed=seed)
    elif ref == "cifar10":
        data = _load_cifar10(roots, download, skip_bad_images)
    elif ref in _IDX_FOLDERS:
        classes = FASHION_CLASSES if ref == "fashion-mnist" else [str(i) for i in range(10)]
        folder, looked = _find_idx_folder(ref, roots)
        if folder is None and download:
            _download(ref, roots[-1])
            folder, looked = _find_idx_folder(ref, roots[-1:])
        if folder is None:
            raise _not_found(ref, looked, "train-images-idx3-ubyte(.gz) and the other IDX files")
        data = load_idx_folder(folder, ref, classes)
    else:
        raise UsageError(
            f"unknown dataset {ref!r}; use one of {', '.join(DATASETS)} "
            "(folder:PATH for a folder of images with one sub-folder per class)"
        )
    return adapt(data, image_size, channels)
