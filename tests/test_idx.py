"""IDX reading: the real files, and each way a file can be malformed."""

from __future__ import annotations

import gzip
import struct
import subprocess
import sys

import numpy as np
import pytest

from cnnlab.data.idx import IMAGES_MAGIC, LABELS_MAGIC, read_idx, read_idx_pair, write_idx
from cnnlab.errors import DataError


def _images(n: int = 5) -> np.ndarray:
    return np.arange(n * 28 * 28, dtype=np.uint64).reshape(n, 28, 28).astype(np.uint8)


def _write_pair(tmp_path, images, labels, gz=True):
    suffix = ".gz" if gz else ""
    write_idx(tmp_path / f"img{suffix}", images)
    write_idx(tmp_path / f"lbl{suffix}", labels)
    return tmp_path / f"img{suffix}", tmp_path / f"lbl{suffix}"


@pytest.mark.parametrize("gz", [True, False])
def test_round_trip(tmp_path, gz):
    images, labels = _images(), np.array([0, 1, 2, 9, 3], dtype=np.uint8)
    img, lbl = _write_pair(tmp_path, images, labels, gz)
    x, y = read_idx_pair(img, lbl, 10)
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, [0, 1, 2, 9, 3])
    assert y.dtype == np.int64
    (magic,) = struct.unpack(">I", (gzip.decompress(img.read_bytes()) if gz else img.read_bytes())[:4])
    assert magic == IMAGES_MAGIC


def test_real_mnist_and_fashion_mnist(datasets_dir):
    x, y = read_idx_pair(
        datasets_dir / "mnist/train-images-idx3-ubyte.gz", datasets_dir / "mnist/train-labels-idx1-ubyte.gz", 10
    )
    assert x.shape == (60000, 28, 28)
    assert y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert x.mean() / 255 == pytest.approx(0.1307, abs=1e-4)
    x, y = read_idx_pair(
        datasets_dir / "fashion-mnist/t10k-images-idx3-ubyte.gz",
        datasets_dir / "fashion-mnist/t10k-labels-idx1-ubyte.gz",
        10,
    )
    assert x.shape == (10000, 28, 28)
    assert np.bincount(y).tolist() == [1000] * 10


def test_wrong_magic_says_files_are_swapped(tmp_path):
    img, lbl = _write_pair(tmp_path, _images(), np.zeros(5, np.uint8))
    with pytest.raises(DataError, match=r"magic number 2049, expected 2051.*swapped"):
        read_idx(lbl, IMAGES_MAGIC)
    with pytest.raises(DataError, match=r"magic number 2051, expected 2049"):
        read_idx(img, LABELS_MAGIC)


def test_not_an_idx_file(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(path)
    path.write_bytes(b"\x00\x00")
    with pytest.raises(DataError, match="too short"):
        read_idx(path)


def test_truncated_data(tmp_path):
    path = tmp_path / "img"
    write_idx(path, _images())
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"truncated: its header promises 5 x 28 x 28 values \(3,920 bytes\) but only 3,820"):
        read_idx(path, IMAGES_MAGIC)


def test_truncated_header(tmp_path):
    path = tmp_path / "img"
    path.write_bytes(struct.pack(">II", IMAGES_MAGIC, 5))
    with pytest.raises(DataError, match="truncated inside its header"):
        read_idx(path)


def test_trailing_bytes(tmp_path):
    path = tmp_path / "img"
    write_idx(path, _images())
    path.write_bytes(path.read_bytes() + b"\x00" * 7)
    with pytest.raises(DataError, match="has 7 bytes after the 5 x 28 x 28 values"):
        read_idx(path)


def test_damaged_gzip(tmp_path):
    path = tmp_path / "img.gz"
    write_idx(path, _images(50))
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DataError, match="damaged or truncated gzip"):
        read_idx(path)


def test_count_mismatch(tmp_path):
    img, lbl = _write_pair(tmp_path, _images(5), np.zeros(4, np.uint8))
    with pytest.raises(DataError, match="has 5 images but .* has 4 labels"):
        read_idx_pair(img, lbl, 10)


def test_labels_out_of_range(tmp_path):
    img, lbl = _write_pair(tmp_path, _images(5), np.array([0, 1, 12, 3, 10], np.uint8))
    with pytest.raises(DataError, match=r"2 labels outside 0..9 \(the first is 12 at index 2\)"):
        read_idx_pair(img, lbl, 10)


def test_checks_hold_under_python_O(tmp_path):
    """The checks raise errors, not asserts, so `python -O` does not remove them."""
    path = tmp_path / "img"
    write_idx(path, _images())
    path.write_bytes(path.read_bytes()[:-1])
    code = f"from cnnlab.data.idx import read_idx\nread_idx({str(path)!r})"
    result = subprocess.run([sys.executable, "-O", "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    assert "truncated" in result.stderr
