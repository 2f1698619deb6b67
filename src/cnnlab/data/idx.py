"""Read and check IDX files, the format of MNIST and Fashion-MNIST (plain or gzipped).

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions),
one big-endian uint32 per dimension, then the values in C order. Images are magic 2051
(uint8, 3 dimensions: count, rows, columns); labels are magic 2049 (uint8, 1 dimension).

Every check raises `DataError` (never `assert`, so the checks hold under `python -O`).
"""

from __future__ import annotations

import gzip
import io
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from cnnlab.errors import DataError

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049

# IDX type codes -> big-endian numpy dtypes.
_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

MAX_BYTES = 4 * 2**30  # decompressed; MNIST's training images are 47 MB
_REDOWNLOAD = "download it again (or pass --download), or point --data-dir at a good copy"


def _read_bytes(path: Path) -> bytes:
    """The decompressed bytes of `path`; gzip is recognised by its magic bytes, not the name."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if raw[:2] != b"\x1f\x8b":
        return raw
    data = bytearray()
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as f:
            while chunk := f.read(1 << 24):  # in pieces: a small damaged or hostile file can inflate without end
                data += chunk
                if len(data) > MAX_BYTES:
                    raise DataError(f"{path} inflates to more than {MAX_BYTES / 2**30:.0f} GiB, far more than any IDX "
                                    f"dataset; it is damaged or not a dataset; {_REDOWNLOAD}")
        return bytes(data)
    except (EOFError, OSError, zlib.error) as exc:
        raise DataError(
            f"{path} is a damaged or truncated gzip file ({exc}); {_REDOWNLOAD}"
        ) from exc


def read_idx(path: str | Path, expected_magic: int | None = None) -> np.ndarray:
    """Read one IDX file into a numpy array with the file's shape and dtype."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path} is too short to be an IDX file ({len(data)} bytes); {_REDOWNLOAD}")
    (magic,) = struct.unpack(">I", data[:4])
    zeros, type_code, ndim = magic >> 16, (magic >> 8) & 0xFF, magic & 0xFF
    if expected_magic is not None and magic != expected_magic:
        kinds = {IMAGES_MAGIC: "images", LABELS_MAGIC: "labels"}
        hint = ""
        if magic in kinds:
            hint = f" It is an IDX {kinds[magic]} file: are the images and labels files swapped?"
        raise DataError(
            f"{path} has magic number {magic}, expected {expected_magic} "
            f"(IDX {kinds.get(expected_magic, 'data')}).{hint} Check the file names, or {_REDOWNLOAD}."
        )
    if zeros != 0 or type_code not in _DTYPES or ndim == 0:
        raise DataError(f"{path} is not an IDX file (magic number {magic}); {_REDOWNLOAD}")
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise DataError(f"{path} is truncated inside its header; {_REDOWNLOAD}")
    shape = struct.unpack(f">{ndim}I", data[4:header_size])
    dtype = _DTYPES[type_code]
    # Python integers: a damaged header can promise more values than int64 holds (np.prod would wrap).
    expected_bytes = math.prod(shape) * dtype.itemsize
    body = len(data) - header_size
    dims = " x ".join(str(d) for d in shape)
    if body < expected_bytes:
        raise DataError(
            f"{path} is truncated: its header promises {dims} values ({expected_bytes:,} bytes) "
            f"but only {body:,} bytes follow; {_REDOWNLOAD}"
        )
    if body > expected_bytes:
        raise DataError(
            f"{path} has {body - expected_bytes:,} bytes after the {dims} values its header "
            f"declares; the file is damaged or not what its header says; {_REDOWNLOAD}"
        )
    values = np.frombuffer(data, dtype=dtype, count=expected_bytes // dtype.itemsize, offset=header_size)
    return values.reshape(shape).astype(dtype.newbyteorder("="), copy=False)


def read_idx_pair(
    images_path: str | Path, labels_path: str | Path, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Read and cross-check an images file and its labels file.

    Returns images as uint8 (N, H, W) and labels as int64 (N,).
    """
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(
            f"{images_path} holds {images.dtype} values of shape {images.shape}; "
            "expected uint8 images of shape (count, rows, columns)"
        )
    if labels.ndim != 1:
        raise DataError(f"{labels_path} holds labels of shape {labels.shape}; expected one label per image")
    if 0 in images.shape:
        raise DataError(f"{images_path} holds no images (its header says {' x '.join(map(str, images.shape))}); "
                        f"{_REDOWNLOAD}")
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} has {len(images):,} images but {labels_path} has {len(labels):,} labels; "
            "the two files must come from the same split (train with train, t10k with t10k)"
        )
    labels = labels.astype(np.int64)
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise DataError(
            f"{labels_path} has {bad.size:,} labels outside 0..{num_classes - 1} "
            f"(the first is {labels[bad[0]]} at index {bad[0]}); {_REDOWNLOAD}"
        )
    return images, labels


def write_idx(path: str | Path, array: np.ndarray, compress: bool | None = None) -> None:
    """Write `array` as an IDX file (gzipped when `compress`, or when the name ends in .gz)."""
    path = Path(path)
    codes = {dtype.newbyteorder("="): code for code, dtype in _DTYPES.items()}
    native = array.dtype.newbyteorder("=")
    if native not in codes:
        raise DataError(f"IDX cannot store {array.dtype} values")
    header = struct.pack(">I", (codes[native] << 8) | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + np.ascontiguousarray(array, dtype=_DTYPES[codes[native]]).tobytes()
    if compress if compress is not None else path.suffix == ".gz":
        data = gzip.compress(data, compresslevel=9, mtime=0)
    path.write_bytes(data)
