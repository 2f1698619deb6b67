"""The tour's example inputs, and CNNLAB_SUBSET, the README test's way to cut training short."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnlab.teach import steps
from cnnlab.cli.main import main
from cnnlab.data import load_dataset
from cnnlab.errors import UsageError
from cnnlab.data.examples import LECTURE_A, LECTURE_B, write_examples
from cnnlab.data.images import read
from cnnlab.settings import subset_cap

REPO = Path(__file__).resolve().parents[1]


def test_write_examples_writes_the_sample_images_and_lecture_matrices(tmp_path):
    paths = write_examples(tmp_path / "ex")
    assert [p.name for p in paths] == ["sneaker.png", "bag.png", "shoe.png", "photo.jpg", "A.csv", "B.csv"]
    test = load_dataset("sample").test
    for name, index, label in (("sneaker.png", 61, 7), ("bag.png", 31, 8), ("shoe.png", 0, 9)):
        pixels = read(tmp_path / "ex" / name)  # (28, 28, 1) uint8, as the file holds it
        np.testing.assert_array_equal(pixels[..., 0], test.x[index, 0].numpy())  # the very test image, lossless
        assert int(test.y[index]) == label
    assert read(tmp_path / "ex" / "photo.jpg").shape == (300, 451, 3)
    np.testing.assert_array_equal(steps.parse_matrix(tmp_path / "ex" / "A.csv"), LECTURE_A)
    np.testing.assert_array_equal(steps.parse_matrix(tmp_path / "ex" / "B.csv"), LECTURE_B)
    assert LECTURE_A[0, 2] == 29 and LECTURE_A.shape == (7, 7)  # lecture 001's exercise


def test_sample_images_command_names_each_file(tmp_path, capsys):
    assert main(["sample-images", str(tmp_path / "ex")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"wrote {tmp_path / 'ex' / 'sneaker.png'}  (Fashion-MNIST test image 61 of the shipped sample: Sneaker)"
    assert len(out) == 6
    (tmp_path / "file").write_text("x")
    assert main(["sample-images", str(tmp_path / "file")]) == 2
    assert main(["sample-images", str(tmp_path / "ex")]) == 0  # again: the same files, nothing lost
    (tmp_path / "ex" / "photo.jpg").write_bytes(b"my own photo")
    capsys.readouterr()
    assert main(["sample-images", str(tmp_path / "ex")]) == 2  # a user's file is never replaced unasked
    assert "photo.jpg already exist(s) with other contents" in capsys.readouterr().err
    assert (tmp_path / "ex" / "photo.jpg").read_bytes() == b"my own photo"
    assert main(["sample-images", str(tmp_path / "ex"), "--overwrite"]) == 0
    assert (tmp_path / "ex" / "photo.jpg").read_bytes()[:2] == b"\xff\xd8"  # a JPEG again


def test_subset_cap_reads_cnnlab_subset(monkeypatch):
    monkeypatch.delenv("CNNLAB_SUBSET", raising=False)
    assert subset_cap(None, 8000) is None and subset_cap(500, 8000) == 500
    monkeypatch.setenv("CNNLAB_SUBSET", "1000")
    assert subset_cap(None, 8000) == 1000
    assert subset_cap(500, 8000) == 500  # a smaller --subset stays
    assert subset_cap(None, 300) is None  # nothing to cut: the run is as it would be without
    assert subset_cap(9000, 8000) == 9000  # left for split_for_training to refuse, as without the cap
    for bad in ("many", "1", "-5", "²"):
        monkeypatch.setenv("CNNLAB_SUBSET", bad)
        with pytest.raises(UsageError, match="CNNLAB_SUBSET"):
            subset_cap(None, 8000)


def test_cnnlab_subset_is_stored_in_the_run(tmp_path, monkeypatch):
    import cnnlab

    monkeypatch.setenv("CNNLAB_SUBSET", "200")
    run = cnnlab.train("largenet", "sample", epochs=1, out=tmp_path / "run", verbose=False, report=False)
    assert run.config.train.subset == 200  # so --resume trains on the same images
    assert run.config.data.train_images + run.config.data.val_images == 200


def test_a_checkout_in_a_folder_named_cnnlab_does_not_shadow_the_package(tmp_path):
    """From the folder above a checkout called cnnlab, `import cnnlab` is still the installed package."""
    (tmp_path / "cnnlab").symlink_to(REPO)
    done = subprocess.run([sys.executable, "-c", "import cnnlab; from cnnlab.runs.folder import atomic_write; "
                           "print(cnnlab.__file__)"], cwd=tmp_path, capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(str(Path("cnnlab") / "__init__.py"))
