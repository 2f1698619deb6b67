"""The run folder: what training writes and every later command reads.

    config.json        everything needed to rebuild the model and the data transform
    history.csv        one row per epoch: epoch, seconds, train/val loss and accuracy, lr (the rate of
                       the epoch's last step; and test accuracy with --watch-test)
    metrics.json       test accuracy (a fraction), per-class accuracy, confusion matrix, seconds
    model.safetensors  the best weights (lowest validation loss)
    checkpoint.pt      the latest weights, optimizer, schedule and RNG state, for --resume: at the end of
                       every epoch, and within one (the step, the epoch's running sums and seconds)
    .lock              one writer at a time (lock.py)

Every file is written atomically (a temporary file, then os.replace), so an interrupted
write never leaves a half file behind. Weights load without pickle.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as parse_safetensors, save_model
from torch import nn

from cnnlab.data.preprocess import Preprocess
from cnnlab.errors import RunError
from cnnlab.models import load_model
from cnnlab.runs.config import NUMBER, NoneType, RunConfig, check_fields, is_a, read_json

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


def no_nan(obj: Any) -> Any:
    """NaN and infinities -> None in numbers, lists and dicts, so that they make valid JSON (json.dumps writes
    bare NaN; the web page's JSON refuses it)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: no_nan(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [no_nan(v) for v in obj]
    return obj


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(no_nan(obj), indent=2, allow_nan=False) + "\n")


def write_history(path: str | Path, rows: list[dict[str, float]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def save_weights(model: nn.Module, path: str | Path) -> None:
    """Save a model's parameters and buffers as safetensors (shared tensors stored once)."""
    atomic_write(path, lambda tmp: save_model(model, tmp))


def load_safetensors(model: nn.Module, path: str | Path, device: str = "cpu") -> None:
    """safetensors' load_model (every name and shape must fit; tensors saved once for several names
    fill them all), from bytes that Python reads: safetensors cannot open a path that is not UTF-8."""
    state = parse_safetensors(Path(path).read_bytes())
    own = model.state_dict()
    loaded = {own[k].data_ptr() for k in state if k in own}
    missing = [k for k in own if k not in state and own[k].data_ptr() not in loaded]  # a tied tensor was filled
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise RunError(f"{path} does not hold the model's weights: missing {', '.join(missing) or 'none'}, "
                       f"unexpected {', '.join(unexpected) or 'none'}")
    model.load_state_dict(state, strict=False)  # shapes are checked here; the device is the model's


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Save tensors, numbers and strings; loadable with torch.load(weights_only=True)."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


# What a checkpoint holds (save_checkpoint's caller writes it); "scheduler" is missing in older runs.
CHECKPOINT_FIELDS: dict[str, tuple[type, ...]] = {
    "model": (dict,), "optimizer": (dict,), "scheduler": (dict,), "rng": (torch.Tensor,), "epoch": (int,),
    "best_val_loss": (float, int), "best_epoch": (int,), "bad_epochs": (int,),
}


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint's state, read without running any code it may hold (weights_only), its fields checked."""
    path = Path(path)
    again = "resume from a copy cnnlab wrote, or start the run again with --overwrite"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:
        raise RunError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except pickle.UnpicklingError as exc:  # torch's own text would suggest loading it unsafely: not shown
        raise RunError(f"{path} is not a checkpoint cnnlab wrote: it holds Python objects other than tensors, "
                       f"numbers and text (cnnlab never runs code from a checkpoint), or it is damaged; {again}"
                       ) from exc
    except Exception as exc:  # a damaged file raises RuntimeError, EOFError, ValueError, ...
        raise RunError(f"{path} is damaged or truncated ({type(exc).__name__}); {again}") from exc
    if not isinstance(state, dict):
        raise RunError(f"{path} holds a {type(state).__name__}, not the state cnnlab saves; {again}")
    for key, types in CHECKPOINT_FIELDS.items():
        if key not in state and key != "scheduler" or key in state and not is_a(state[key], types):
            raise RunError(f"{path} lacks a valid {key!r} (found {type(state.get(key)).__name__}); {again}")
    if not all(isinstance(v, torch.Tensor) for v in state["model"].values()) or min(
            state["epoch"], state["best_epoch"], state["bad_epochs"]) < 0:
        raise RunError(f"{path} holds impossible weights or epoch counts; {again}")
    if "step" in state and not (  # a checkpoint within an epoch: where in it, and the epoch's sums so far
        is_a(state["step"], (int,)) and state["step"] >= 1 and isinstance(state.get("totals"), torch.Tensor)
        and state["totals"].shape == (3,) and state["totals"].is_floating_point()
        and is_a(state.get("epoch_seconds"), (float, int)) and math.isfinite(state["epoch_seconds"])
    ):
        raise RunError(f"{path} holds an impossible position within an epoch (step, totals, epoch_seconds); {again}")
    if state["rng"].dtype != torch.uint8:
        raise RunError(f"{path} holds a random number generator state that is not one; {again}")
    return state


@dataclass
class Run:
    """A run folder read back: its config, history and metrics, and its model on demand."""

    path: Path
    config: RunConfig
    history: list[dict[str, float]]
    metrics: dict[str, Any] | None
    trust_code: bool = False  # may build a `package.module:attr` model named in config.json (open_run)

    @property
    def classes(self) -> list[str]:
        return self.config.data.classes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.config.data.input_shape

    @property
    def preprocess(self) -> Preprocess:
        return self.config.preprocess

    def build_model(self, weights: bool = True) -> nn.Module:
        """The run's model in eval mode, with its best weights unless `weights` is False."""
        # The model's input, which a pretrained network's preprocessing may resize the data's images to.
        model = load_model(self.config.model, self.config.preprocess.input_shape, len(self.classes),
                           trust_code=self.trust_code, source=self.path / "config.json")
        if weights:
            path = self.path / "model.safetensors"
            if not path.exists():
                raise RunError(f"{path} is missing: the run has no saved weights (did training finish an epoch?)")
            try:
                load_safetensors(model, path)
            except Exception as exc:  # safetensors raises several types for damaged files
                raise RunError(f"{path} does not fit model {self.config.model!r} ({exc})") from exc
        return model.eval()


def read_history(path: Path) -> list[dict[str, float]]:
    """history.csv's rows; each has a whole epoch number of 1 or more and its seconds."""
    if not path.exists():
        return []
    damaged = f"{path} is damaged ({{}}); it should be the per-epoch table cnnlab writes: train the run again"
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]
    except OSError as exc:
        raise RunError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except (ValueError, TypeError, csv.Error) as exc:  # not UTF-8, not numbers, more values than columns
        raise RunError(damaged.format(str(exc)[:200])) from exc
    for line, row in enumerate(rows, 2):
        epoch, seconds = row.get("epoch", math.nan), row.get("seconds", math.nan)
        if not (math.isfinite(epoch) and epoch == int(epoch) and epoch >= 1 and math.isfinite(seconds)):
            raise RunError(damaged.format(f"line {line} needs a whole epoch of 1 or more and its seconds"))
        row["epoch"] = int(epoch)
    return rows


def open_run(path: str | Path, trust_code: bool = False) -> Run:
    """Read a run folder written by `cnnlab train`, every field cnnlab reads checked.

    A run folder is data: a model it names as `package.module:attr` is imported and run only with
    `trust_code=True` (the CLI's --trust-code), since whoever wrote the folder chose that code.
    Registered names, specs and torchvision's own builders need no trust.
    """
    path = Path(path)
    if not path.is_dir():
        what = "it is a file" if path.exists() else "it does not exist"
        raise RunError(f"{path} is not a run folder ({what}); `cnnlab train --out DIR` makes one")
    config = RunConfig.read(path / "config.json")
    metrics_path = path / "metrics.json"
    metrics = read_json(metrics_path) if metrics_path.exists() else None
    if metrics is not None:
        check_fields(metrics_path, "", metrics, METRICS_FIELDS, optional=set(METRICS_FIELDS))
    return Run(path, config, read_history(path / "history.csv"), metrics, trust_code)


# metrics.json: every field optional (compare and the report use what is there); NaN is written as null.
METRICS_FIELDS: dict[str, tuple[type, ...]] = {
    "test_accuracy": (*NUMBER, NoneType), "best_epoch": (int, NoneType), "epochs_run": (int,),
    "train_seconds": (*NUMBER, NoneType), "extra_accuracy": (dict,), "parameters": (int,), "classes": (list,),
    "per_class_accuracy": (list,), "confusion": (list,), "count": (int,), "loss": (*NUMBER, NoneType),
    "accuracy": (*NUMBER, NoneType), "split": (str,),
}
