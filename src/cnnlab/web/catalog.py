"""What the web page serves from: the run folders under one directory, each model loaded once, the test
images of a run read once, and the pictures a visitor uploaded.

Run names come from URLs, so a name is only ever looked up among the run folders found by walking the
directory (symlinks not followed), and the folder it names must lie inside the directory once resolved:
`..`, absolute paths, encoded slashes and symlinks reach nothing else. Run folders are data: a model
named as `package.module:attr` is never imported here, and weights are read from safetensors.

Every method may be called from many request threads at once: the tables are guarded by one lock, a
run's model by its own (hooks and Grad-CAM's backward pass change the network while they run).
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cnnlab.data.images import Blob
from cnnlab.errors import Error, RunError, UsageError
from cnnlab.inspect.evaluate import collect_logits, load_run_data
from cnnlab.inspect.summary import Summary, summarize
from cnnlab.runs.folder import Run, open_run
from cnnlab.runs.trained import TrainedModel
from cnnlab.training.lock import is_held

MAX_DEPTH = 4  # run folders are looked for this many folders deep (runs/demo/seed-cnn is 2)
KEPT_IMAGES = 64  # uploaded pictures remembered (for "how was this value computed"), the oldest dropped first
KEPT_MODELS = 8  # runs whose model (and test split) stay loaded, the least recently used dropped first


class NotFound(Error):
    """A run or picture the page asked for is not there (HTTP 404)."""


def find_runs(root: Path) -> dict[str, Path]:
    """Every run folder (one holding config.json) under `root`, by its name relative to it ("demo/seed-cnn"),
    without following symlinks and without looking inside a run folder."""
    runs: dict[str, Path] = {}
    for folder, subfolders, files in os.walk(root, followlinks=False):
        here = Path(folder)
        depth = len(here.relative_to(root).parts)
        if here != root and _is_run(here):
            runs[here.relative_to(root).as_posix()] = here
            subfolders.clear()
            continue
        subfolders[:] = sorted(d for d in subfolders if not d.startswith(".") and depth < MAX_DEPTH
                               and not (here / d).is_symlink())
    return runs


def _is_run(folder: Path) -> bool:
    config = folder / "config.json"
    return config.is_file() and not config.is_symlink()


def run_folder(root: Path, name: str) -> Path | None:
    """The run folder `name` names, if `find_runs` would list it under that name, found without walking the
    tree: no part hidden or a symlink, at most MAX_DEPTH deep, no run folder above it, inside root resolved."""
    parts = checked_name(name).split("/")
    if len(parts) > MAX_DEPTH or any(part.startswith(".") for part in parts):
        return None
    here = root
    for part in parts:
        if here != root and _is_run(here):
            return None  # find_runs does not look inside a run folder
        here = here / part
        if here.is_symlink() or not here.is_dir():
            return None
    return here if _is_run(here) and here.resolve().is_relative_to(root) else None


def checked_name(name: str) -> str:
    """A run name as the page may give it: relative, forward slashes, no `..`, no empty part."""
    parts = name.split("/")
    if (not name or "\\" in name or "\x00" in name or name.startswith("/") or ":" in parts[0]
            or any(p in ("", ".", "..") for p in parts)):
        raise NotFound(f"there is no run {name!r} here: a run is named by its folder under the runs directory")
    return name


@dataclass
class Loaded:
    """A run's trained model, loaded once, with what is computed once from it."""

    run: Run
    model: TrainedModel
    stamp: tuple[int, int]  # model.safetensors' (mtime_ns, size) when loaded: new best weights mean a reload
    lock: threading.Lock = field(default_factory=threading.Lock)  # for work that hooks or differentiates the net
    summary: Summary | None = None
    test: dict[str, Any] | None = None  # test images (uint8), labels, predictions, probabilities


class Catalog:
    """The runs under `root`, their models and test images, and the uploaded pictures."""

    def __init__(self, root: str | Path, data_dir: str | Path | None = None) -> None:
        self.root = Path(root).resolve()
        if not self.root.is_dir():
            raise UsageError(f"{root} is not a folder; give the folder your runs are in (cnnlab train --out RUNS/NAME)")
        self.data_dir = data_dir
        self._lock = threading.Lock()
        self._loaded: OrderedDict[str, Loaded] = OrderedDict()
        self._loading: dict[str, threading.Lock] = {}
        self._images: OrderedDict[tuple[str, str], tuple[torch.Tensor, str]] = OrderedDict()
        self.loads = 0  # models loaded so far (the tests check that a model is loaded once)

    # --- run folders ---------------------------------------------------------------------------

    def path(self, name: str) -> Path:
        """The folder of run `name`, refused unless it is one of the runs found inside the root."""
        path = run_folder(self.root, name)
        if path is None:
            raise NotFound(f"there is no run {name!r} here: a run is named by its folder under the runs directory")
        return path

    def run(self, name: str) -> Run:
        return open_run(self.path(name))  # trust_code stays False: the page imports no code a folder names

    def running(self, name: str) -> bool:
        """Whether training is writing the run now: no metrics.json yet, and its lock is held."""
        return _running(self.path(name))

    def table(self) -> list[dict[str, Any]]:
        """One row per run for the runs page; a damaged run gets a row that says what is wrong."""
        rows = []
        for name, path in find_runs(self.root).items():
            try:
                run = open_run(path)
            except Error as exc:
                rows.append({"name": name, "error": str(exc)})
                continue
            metrics = run.metrics or {}
            accuracy = metrics.get("test_accuracy")
            rows.append({
                "name": name, "model": run.config.model if len(run.config.model) <= 60 else "(a model spec)",
                "dataset": run.config.data.dataset, "parameters": run.config.parameters,
                "test_accuracy": accuracy, "epochs": len(run.history), "created": run.config.created[:16],
                "status": "running" if _running(path) else "finished" if run.metrics else "stopped",
            })
        return rows

    # --- models --------------------------------------------------------------------------------

    def loaded(self, name: str) -> Loaded:
        """Run `name`'s model, loaded on first use and reused; loaded again only when training has since
        written new weights. Two first requests at once load it once."""
        path = self.path(name)
        weights = path / "model.safetensors"
        if not weights.exists():
            raise RunError(f"run {name} has no weights yet (model.safetensors is written after its first epoch)")
        stat = weights.stat()
        stamp = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            current = self._loaded.get(name)
            if current is not None and current.stamp == stamp:
                self._loaded.move_to_end(name)
                return current
            loading = self._loading.setdefault(name, threading.Lock())
        with loading:
            with self._lock:
                current = self._loaded.get(name)
                if current is not None and current.stamp == stamp:
                    return current  # another request loaded it while this one waited
            run = open_run(path)
            loaded = Loaded(run, TrainedModel.from_run(run, "cpu"), stamp)
            with self._lock:
                self._loaded[name] = loaded
                self._loaded.move_to_end(name)
                while len(self._loaded) > KEPT_MODELS:  # a sweep's hundred runs must not stay in memory
                    self._loaded.popitem(last=False)
                self.loads += 1
        return loaded

    def summary(self, loaded: Loaded) -> Summary:
        if loaded.summary is None:
            with loaded.lock:  # summarize hooks the network
                # the network's input: a pretrained network's preprocessing may resize the data's images
                loaded.summary = summarize(loaded.model.net, loaded.run.preprocess.input_shape, 1,
                                           loaded.run.config.model)
        return loaded.summary

    def test_images(self, loaded: Loaded) -> dict[str, Any]:
        """The run's test split, read again once from where the run found it, with the model's predictions."""
        with loaded.lock:
            if loaded.test is None:
                data = load_run_data(loaded.run, self.data_dir)
                logits, _ = collect_logits(loaded.model.judged, loaded.model.loader(data.test))
                probabilities = logits.softmax(1)  # (N, classes)
                loaded.test = {"x": data.test.x, "y": data.test.y, "probabilities": probabilities,
                               "predicted": probabilities.argmax(1)}
        return loaded.test

    # --- pictures ------------------------------------------------------------------------------

    def keep(self, name: str, blob: Blob, shown: torch.Tensor) -> str:
        """Remember a picture uploaded to run `name`, decoded once as its model sees it: shown (1, C, H, W) in
        [0, 1]. Its id is a digest of the file's bytes, so the same file gets the same id."""
        key = hashlib.sha256(blob.data).hexdigest()[:20]
        with self._lock:
            self._images[(name, key)] = (shown, blob.name)
            self._images.move_to_end((name, key))
            while len(self._images) > KEPT_IMAGES:
                self._images.popitem(last=False)
        return key

    def picture(self, name: str, loaded: Loaded, image: str) -> tuple[torch.Tensor, str]:
        """Picture `image` as run `name`'s model sees it, (1, C, H, W) in [0, 1], and its name: the id of an
        upload to that run, or "test:N" for the run's N-th test image."""
        if image.startswith("test:"):
            index = image[5:]
            test = self.test_images(loaded)
            # ASCII digits only: str.isdigit takes "²" and "١", which int() refuses or reads.
            if not re.fullmatch(r"[0-9]{1,9}", index) or int(index) >= len(test["y"]):
                raise NotFound(f"there is no test image {index[:20]!r}: the run's test split has "
                               f"{len(test['y']):,} images, numbered from 0")
            return test["x"][int(index)][None].float().div(255), f"test image {int(index)}"  # (1, C, H, W)
        with self._lock:
            kept = self._images.get((name, image))
        if kept is None:
            raise NotFound("that picture is no longer kept by the server (it remembers the last "
                           f"{KEPT_IMAGES}); upload it again")
        return kept


def _running(path: Path) -> bool:
    """Whether training is writing the run folder now: no metrics.json yet, and its lock is held."""
    return not (path / "metrics.json").exists() and is_held(path)
