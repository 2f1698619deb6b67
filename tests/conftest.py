"""Shared fixtures: the real datasets beside the checkout, a few CIFAR-10 JPEGs, a trained run."""

from __future__ import annotations

import os
import re
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).resolve().parent / "golden"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-golden", action="store_true", help="rewrite tests/golden/ from the current output")


@pytest.fixture
def golden(request: pytest.FixtureRequest):
    """Compare text with tests/golden/NAME; only `pytest --update-golden` writes the files."""

    def check(name: str, text: str) -> None:
        path = GOLDEN / name
        if request.config.getoption("--update-golden"):
            path.parent.mkdir(exist_ok=True)
            path.write_text(text)
            return
        assert path.exists(), f"{path} is missing; write it with pytest --update-golden and review the diff"
        assert text == path.read_text(), f"output differs from {path}; if the change is intended, run pytest --update-golden"

    return check


@pytest.fixture(autouse=True, scope="session")
def _feature_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Transfer learning's feature cache (and that of the commands the tests start) in the session's temporary
    folder, not the developer's ~/.cache/cnnlab."""
    os.environ["CNNLAB_CACHE"] = str(tmp_path_factory.mktemp("cnnlab-cache"))


@pytest.fixture(autouse=True)
def _no_subset_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CNNLAB_SUBSET a developer exported for smoke tests must not change the tests' runs."""
    monkeypatch.delenv("CNNLAB_SUBSET", raising=False)


def _datasets_dir() -> Path:
    return Path(os.environ.get("CNNLAB_TEST_DATA") or REPO.parent / "shared" / "datasets")


@pytest.fixture(scope="session")
def datasets_dir() -> Path:
    """The real MNIST / Fashion-MNIST / CIFAR-10 copies (../shared/datasets or $CNNLAB_TEST_DATA)."""
    path = _datasets_dir()
    if not (path / "fashion-mnist").is_dir():
        pytest.skip(f"real datasets not found at {path}; set CNNLAB_TEST_DATA")
    return path


@pytest.fixture(scope="session")
def cifar_jpegs(datasets_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small CIFAR-10 JPEG tree: the first 20 train and 5 test images of each class."""
    out = tmp_path_factory.mktemp("cifar")
    keep = re.compile(r"cifar10-jpeg/(train/[a-z]+/00(0\d|1\d)|test/[a-z]+/000[0-4])\.jpg$")
    with tarfile.open(datasets_dir / "cifar10-jpeg" / "cifar10-jpeg.tar.gz") as tar:
        for member in tar:
            if member.isfile() and keep.match(member.name):
                target = out / member.name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())
    return out / "cifar10-jpeg"


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory):
    """seed-cnn trained briefly on 2,000 images of the shipped sample."""
    import cnnlab

    out = tmp_path_factory.mktemp("runs") / "seed-cnn"
    return cnnlab.train("seed-cnn", "sample", subset=2000, epochs=3, out=out, verbose=False)


# --- the web page (tests/test_web*.py) --------------------------------------------------------------

@pytest.fixture(scope="module")
def web_runs(trained_run, tmp_path_factory) -> Path:
    """A runs directory holding a copy of the session's trained seed-cnn run as "fashion/seed-cnn" (webserver.RUN),
    and a run beside it, outside (for the tests of names that try to leave the directory)."""
    import shutil

    from webserver import RUN

    root = tmp_path_factory.mktemp("web") / "runs"
    shutil.copytree(trained_run.path, root / RUN)
    shutil.copytree(trained_run.path, root.parent / "outside")
    return root


@pytest.fixture(scope="module")
def web_client(web_runs):
    """FastAPI's test client for the page over web_runs, with a small upload limit (webserver.LIMIT)."""
    pytest.importorskip("fastapi", reason="the web extra is missing: pip install -e '.[test]'")
    from fastapi.testclient import TestClient

    from cnnlab.web.app import create_app
    from webserver import LIMIT

    return TestClient(create_app(web_runs, max_upload=LIMIT))


@pytest.fixture(scope="module")
def web_png(trained_run):
    """Test image 0 of the run's data as a PNG file's bytes, and its pixels (28, 28) uint8."""
    import cnnlab
    from cnnlab.inspect.evaluate import load_run_data
    from webserver import png_bytes

    pixels = load_run_data(cnnlab.open_run(trained_run.path)).test.x[0, 0].numpy()
    return png_bytes(pixels), pixels
