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
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as parse_safetensors, save_model
from torch import nn

from cnnlab.errors import RunError, UsageError
from cnnlab.data.images import MAX_PIXELS
from cnnlab.models import load_model
from cnnlab.settings import Settings

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
        if key not in state and key != "scheduler" or key in state and not _is(state[key], types):
            raise RunError(f"{path} lacks a valid {key!r} (found {type(state.get(key)).__name__}); {again}")
    if not all(isinstance(v, torch.Tensor) for v in state["model"].values()) or min(
            state["epoch"], state["best_epoch"], state["bad_epochs"]) < 0:
        raise RunError(f"{path} holds impossible weights or epoch counts; {again}")
    if "step" in state and not (  # a checkpoint within an epoch: where in it, and the epoch's sums so far
        _is(state["step"], (int,)) and state["step"] >= 1 and isinstance(state.get("totals"), torch.Tensor)
        and state["totals"].shape == (3,) and state["totals"].is_floating_point()
        and _is(state.get("epoch_seconds"), (float, int)) and math.isfinite(state["epoch_seconds"])
    ):
        raise RunError(f"{path} holds an impossible position within an epoch (step, totals, epoch_seconds); {again}")
    if state["rng"].dtype != torch.uint8:
        raise RunError(f"{path} holds a random number generator state that is not one; {again}")
    return state


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise RunError(f"{path} is missing") from exc
    except OSError as exc:  # a folder of that name, no permission
        raise RunError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except (ValueError, RecursionError) as exc:  # not UTF-8, not JSON, or nested too deep to parse
        raise RunError(f"{path} is not valid JSON ({str(exc)[:200]}); the run folder is damaged") from exc
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
    trust_code: bool = False  # may build a `package.module:attr` model named in config.json (open_run)

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
        model = load_model(self.config["model"], self.input_shape, len(self.classes), trust_code=self.trust_code,
                           source=self.path / "config.json")
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
    config = _read_json(path / "config.json")
    if config.get("format") != FORMAT_VERSION:
        raise RunError(f"{path} was written by an incompatible cnnlab (run format {config.get('format')!r})")
    check_config(config, path / "config.json")
    metrics_path = path / "metrics.json"
    metrics = _read_json(metrics_path) if metrics_path.exists() else None
    if metrics is not None:
        _check_fields(metrics_path, "", metrics, METRICS_FIELDS, optional=set(METRICS_FIELDS))
    return Run(path, config, read_history(path / "history.csv"), metrics, trust_code)


# ------------------------------------------------------------------- what config.json must hold
# The fields cnnlab reads and the JSON types each must have; a later version may make this a dataclass.

NoneType = type(None)
NUMBER = (int, float)
CONFIG_FIELDS: dict[str, tuple[type, ...]] = {
    "format": (int,), "model": (str,), "parameters": (int,), "data": (dict,), "train": (dict,),
}
DATA_FIELDS: dict[str, tuple[type, ...]] = {
    "dataset": (str,), "classes": (list,), "input_shape": (list,), "mean": (list,), "std": (list,),
    "train_images": (int,), "val_images": (int,), "test_images": (int,),
    "source": (str,), "data_dir": (str, NoneType), "image_size": (int, list, NoneType), "channels": (int, NoneType),
    "skip_bad_images": (bool,),
}
DATA_OPTIONAL = {"source", "data_dir", "image_size", "channels", "skip_bad_images"}  # older runs lack them
# "train" holds the Settings (types from their annotations, all optional: an older run gets the default) and:
TRAIN_EXTRA: dict[str, tuple[type, ...]] = {"device": (str,), "processes": (int,)}
_ANNOTATIONS: dict[str, tuple[type, ...]] = {
    "int": (int,), "float": NUMBER, "str": (str,), "bool": (bool,), "int | None": (int, NoneType),
    "float | None": (*NUMBER, NoneType), "str | None": (str, NoneType),
}
# metrics.json: every field optional (compare and the report use what is there); NaN is written as null.
METRICS_FIELDS: dict[str, tuple[type, ...]] = {
    "test_accuracy": (*NUMBER, NoneType), "best_epoch": (int, NoneType), "epochs_run": (int,),
    "train_seconds": (*NUMBER, NoneType), "extra_accuracy": (dict,), "parameters": (int,), "classes": (list,),
    "per_class_accuracy": (list,), "confusion": (list,), "count": (int,), "loss": (*NUMBER, NoneType),
    "accuracy": (*NUMBER, NoneType), "split": (str,),
}
_WORDS = {bool: "true or false", int: "a whole number", float: "a number", str: "text", list: "a list",
          dict: "an object", NoneType: "null"}


def _is(value: Any, types: tuple[type, ...]) -> bool:
    """isinstance, except that true and false are not numbers (JSON keeps them apart, Python does not)."""
    return bool in types if isinstance(value, bool) else isinstance(value, types)


def _found(value: Any) -> str:
    text = json.dumps(value)
    if value is None or isinstance(value, bool):
        return text
    kind = next(word for t, word in _WORDS.items() if _is(value, (t,)))
    return f"{kind} {text if len(text) <= 60 else text[:57] + '...'}"


def _expected(types: tuple[type, ...]) -> str:
    return " or ".join(_WORDS[t] for t in types if not (t is int and float in types))  # a number covers both


def _damaged(path: Path, field: str, value: Any, expected: str) -> RunError:
    return RunError(f"{path}: the field {field!r} holds {_found(value)}, but cnnlab expects {expected}. The file "
                    "was edited or damaged: put back the value cnnlab wrote, or train the run again")


def _check_fields(path: Path, prefix: str, obj: dict[str, Any], table: dict[str, tuple[type, ...]],
                  optional: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    for key, types in table.items():
        if key not in obj:
            if key not in optional:
                raise RunError(f"{path} lacks the field {prefix + key!r}; the run folder is damaged or was written "
                               "by another program: train the run again")
        elif not _is(obj[key], types):
            raise _damaged(path, prefix + key, obj[key], _expected(types))


def check_config(config: dict[str, Any], path: Path) -> None:
    """Refuse a config.json whose fields have the wrong JSON type or an impossible value, naming the field."""
    _check_fields(path, "", config, CONFIG_FIELDS)
    if config["parameters"] < 0:
        raise _damaged(path, "parameters", config["parameters"], "a count of 0 or more")
    data = config["data"]
    _check_fields(path, "data.", data, DATA_FIELDS, DATA_OPTIONAL)
    classes, shape = data["classes"], data["input_shape"]
    if len(classes) < 2 or not all(_is(c, (str,)) and c for c in classes) or len(set(classes)) < len(classes):
        raise _damaged(path, "data.classes", classes, "a list of 2 or more different class names")
    if len(shape) != 3 or not all(_is(v, (int,)) and v >= 1 for v in shape) or shape[1] * shape[2] > MAX_PIXELS:
        raise _damaged(path, "data.input_shape", shape,
                       f"[channels, height, width], each 1 or more and at most {MAX_PIXELS:,} pixels")
    for key in ("mean", "std"):
        values = data[key]
        if len(values) != shape[0] or not all(_is(v, NUMBER) and math.isfinite(v) for v in values) \
                or (key == "std" and min(values) <= 0):
            sign = "positive" if key == "std" else "finite"
            raise _damaged(path, f"data.{key}", values, f"{shape[0]} {sign} number(s), one per input channel")
    for key in ("train_images", "val_images", "test_images"):
        if data[key] < 0:
            raise _damaged(path, f"data.{key}", data[key], "a count of 0 or more")
    _check_train(config["train"], path)


def _check_train(train: dict[str, Any], path: Path) -> None:
    types = {f.name: _ANNOTATIONS[str(f.type)] for f in fields(Settings)} | TRAIN_EXTRA
    for key, value in train.items():
        if key not in types:
            raise RunError(f"{path}: 'train.{key}' is no setting this cnnlab knows (written by a newer version, or "
                           "edited?); remove the field, or use the cnnlab that trained the run")
        if not _is(value, types[key]):
            raise _damaged(path, f"train.{key}", value, _expected(types[key]))
    if train.get("processes", 1) < 1:
        raise _damaged(path, "train.processes", train["processes"], "1 or more")
    try:
        Settings(**{k: v for k, v in train.items() if k not in TRAIN_EXTRA}).check()
    except UsageError as exc:  # its message names the flag; the field has the flag's name
        raise RunError(f"{path}: the training settings in its 'train' fields are impossible: {exc}. The file "
                       "was edited or damaged: put back the values cnnlab wrote, or train the run again") from exc
