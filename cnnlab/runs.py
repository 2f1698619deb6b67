"""The run folder: what training writes and every later command reads.

    config.json        everything needed to rebuild the model and the data transform
    history.csv        one row per epoch: epoch, seconds, train/val loss and accuracy, lr (the rate of
                       the epoch's last step; and test accuracy with --watch-test)
    metrics.json       test accuracy (a fraction), per-class accuracy, confusion matrix, seconds
    model.safetensors  the best weights (lowest validation loss)
    checkpoint.pt      last epoch's weights, optimizer and RNG state, for --resume

Every file is written atomically (a temporary file, then os.replace), so an interrupted
write never leaves a half file behind. Weights load without pickle.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model as load_safetensors, save_model
from torch import nn

from .errors import RunError
from .models import load_model

FORMAT_VERSION = 1
HISTORY_FIELDS = [
    "epoch", "seconds", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "test_accuracy",
]


def atomic_write(path: str | Path, write: Any) -> None:
    """Call write(temporary_path), then move the result onto `path` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def why_not_written(path: Path, exc: OSError) -> str:
    """Why writing `path` failed, in words: a folder on the way that is a file is named as such
    (mkdir says only "File exists")."""
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                return f"{parent} is a file, not a folder"
            break
    return exc.strerror or str(exc)


def write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _no_nan(obj: Any) -> Any:
    """NaN and infinities -> None, so that the file is valid JSON (json.dumps writes bare NaN)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _no_nan(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_no_nan(v) for v in obj]
    return obj


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(_no_nan(obj), indent=2, allow_nan=False) + "\n")


def write_history(path: str | Path, rows: list[dict[str, float]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def save_weights(model: nn.Module, path: str | Path) -> None:
    """Save a model's parameters and buffers as safetensors (shared tensors stored once)."""
    atomic_write(path, lambda tmp: save_model(model, tmp))


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Save tensors, numbers and strings; loadable with torch.load(weights_only=True)."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged file raises RuntimeError, EOFError, UnpicklingError, ...
        raise RunError(f"{path} cannot be read as a cnnlab checkpoint ({exc})") from exc


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise RunError(f"{path} is missing") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunError(f"{path} is not valid JSON ({exc}); the run folder is damaged") from exc
    if not isinstance(value, dict):
        raise RunError(f"{path} does not hold a JSON object; the run folder is damaged")
    return value


@dataclass
class Run:
    """A run folder read back: its config, history and metrics, and its model on demand."""

    path: Path
    config: dict[str, Any]
    history: list[dict[str, float]]
    metrics: dict[str, Any] | None

    @property
    def classes(self) -> list[str]:
        return self.config["data"]["classes"]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.config["data"]["input_shape"])  # type: ignore[return-value]

    @property
    def mean(self) -> list[float]:
        return self.config["data"]["mean"]

    @property
    def std(self) -> list[float]:
        return self.config["data"]["std"]

    def build_model(self, weights: bool = True) -> nn.Module:
        """The run's model in eval mode, with its best weights unless `weights` is False."""
        model = load_model(self.config["model"], self.input_shape, len(self.classes))
        if weights:
            path = self.path / "model.safetensors"
            if not path.exists():
                raise RunError(f"{path} is missing: the run has no saved weights (did training finish an epoch?)")
            try:
                load_safetensors(model, path)
            except Exception as exc:  # safetensors raises several types for damaged files
                raise RunError(f"{path} does not fit model {self.config['model']!r} ({exc})") from exc
        return model.eval()


def read_history(path: Path) -> list[dict[str, float]]:
    if not path.exists():
        return []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]
        for row in rows:
            row["epoch"] = int(row["epoch"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise RunError(f"{path} is damaged ({exc}); it should be the per-epoch table cnnlab writes") from exc
    return rows


def open_run(path: str | Path) -> Run:
    """Read a run folder written by `cnnlab train`."""
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"{path} is not a run folder (it does not exist); `cnnlab train --out {path}` makes one")
    config = _read_json(path / "config.json")
    if config.get("format") != FORMAT_VERSION:
        raise RunError(f"{path} was written by an incompatible cnnlab (run format {config.get('format')!r})")
    metrics_path = path / "metrics.json"
    metrics = _read_json(metrics_path) if metrics_path.exists() else None
    return Run(path, config, read_history(path / "history.csv"), metrics)
