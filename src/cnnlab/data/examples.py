"""The example inputs of the README's tour, written from what cnnlab ships (`cnnlab sample-images DIR`).

Nothing is downloaded: the pictures are Fashion-MNIST test images from the shipped sample
(MIT licence) and the CC0 cat photo, and the matrices are lecture 001's exercise, so every
command of the tour runs on a fresh machine. The licences are in `data/sample/README.md`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cnnlab.data.idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx
from cnnlab.data.sources import FASHION_CLASSES, SAMPLE_DIR
from cnnlab.errors import UsageError

# Lecture 001's exercise ("In pairs"): the 7x7 matrix A and the 3x3 kernel B.
LECTURE_A = np.array([
    [12, 2, 29, 4, 1, 2, 3],
    [5, 21, 7, 8, 36, 6, 7],
    [9, 10, 11, 12, 9, 10, 11],
    [13, 14, 15, 16, 13, 14, 15],
    [7, 5, 10, 4, 28, 20, 3],
    [25, 19, 12, 8, 5, 20, 32],
    [9, 10, 11, 12, 21, 10, 11],
])
LECTURE_B = np.array([[1, 1, 1], [1, -2, 1], [1, 1, 1]])


@dataclass(frozen=True)
class Picture:
    """A test image of the shipped sample, by its index in the test split."""

    name: str
    index: int
    label: int


# Typical images of their class: both of the demo's models classify them right with a wide margin.
PICTURES = (
    Picture("sneaker.png", 61, 7),
    Picture("bag.png", 31, 8),
    Picture("shoe.png", 0, 9),  # an ankle boot, the first test image of Fashion-MNIST
)


def _contents() -> dict[str, bytes]:
    """File name -> the bytes of each example file."""
    images = read_idx(SAMPLE_DIR / "t10k-images-idx3-ubyte.gz", IMAGES_MAGIC)  # (2000, 28, 28) uint8
    labels = read_idx(SAMPLE_DIR / "t10k-labels-idx1-ubyte.gz", LABELS_MAGIC)  # (2000,)
    files = {}
    for picture in PICTURES:
        # A changed sample would silently turn the tour's sneaker into something else.
        if labels[picture.index] != picture.label:
            raise UsageError(f"the shipped sample's test image {picture.index} is not a "
                             f"{FASHION_CLASSES[picture.label]}; reinstall cnnlab")
        png = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(images[picture.index])).save(png, "PNG")  # light on black, as the data
        files[picture.name] = png.getvalue()
    files["photo.jpg"] = (SAMPLE_DIR / "chelsea.jpg").read_bytes()
    for name, matrix in (("A.csv", LECTURE_A), ("B.csv", LECTURE_B)):
        files[name] = "".join(",".join(str(v) for v in row) + "\n" for row in matrix).encode()
    return files


def write_examples(out: str | Path, overwrite: bool = False) -> list[Path]:
    """Write sneaker.png, bag.png, shoe.png, photo.jpg, A.csv and B.csv into `out`; return their paths.

    A file of the same name with other contents (a photo.jpg of the user's) is kept: the call
    refuses before writing anything, unless `overwrite`.
    """
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise UsageError(f"{out} is a file; give a folder for the example inputs")
    files = _contents()
    taken = [out / name for name, data in files.items()
             if (out / name).exists() and ((out / name).is_dir() or (out / name).read_bytes() != data)]
    if taken and not overwrite:
        raise UsageError(f"{', '.join(map(str, taken))} already exist(s) with other contents; give another "
                         "folder, or --overwrite to replace them")
    out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (out / name).write_bytes(data)
    return [out / name for name in files]


def describe(path: Path) -> str:
    """What an example file is, for the command's output."""
    for picture in PICTURES:
        if path.name == picture.name:
            return f"Fashion-MNIST test image {picture.index} of the shipped sample: {FASHION_CLASSES[picture.label]}"
    return {"photo.jpg": "a photo of a cat (CC0, scikit-image's chelsea)",
            "A.csv": "lecture 001's exercise: the 7x7 matrix A",
            "B.csv": "lecture 001's exercise: the 3x3 kernel B"}[path.name]
