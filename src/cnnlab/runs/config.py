"""RunConfig: everything a run folder's config.json records, typed, with its defaults in one place.

    {"format": 2, "model": ..., "parameters": ..., "data": {...}, "train": {Settings..., "device", "processes"},
     "precision": {"asked", "why"}, "preprocess": {input_shape, mean, std, resize, channels_last, value_range, [resize_size]},
     "cnnlab_version", "torch_version", "created"}

`format` is the schema version. Format 1 (cnnlab before the trained-model seam) had no "preprocess":
its preprocessing is the data's mean and std, in the layout the run trained in, and such folders still
load. Reading checks every field cnnlab uses and names the one that is wrong: a config.json is data a
user can edit or damage, and a wrong value must not surface later as a traceback.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from cnnlab.data.images import MAX_PIXELS
from cnnlab.data.preprocess import RESIZE_POLICIES, Preprocess
from cnnlab.errors import RunError, UsageError
from cnnlab.settings import Settings

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)


@dataclass
class DataConfig:
    """The dataset a run trained on and how it was read."""

    dataset: str  # the reference, e.g. "fashion-mnist" or "folder:/path"
    classes: list[str]
    input_shape: tuple[int, int, int]  # (C, H, W)
    mean: list[float]  # per channel, of the training part (0 with --no-normalize)
    std: list[float]
    train_images: int
    val_images: int
    test_images: int
    source: str = ""  # where the files were found
    data_dir: str | None = None
    image_size: int | list[int] | None = None  # --image-size as given
    channels: int | None = None  # --channels as given
    skip_bad_images: bool = False


@dataclass
class Precision:
    asked: str  # auto, fp32 or bf16
    why: str  # why the run's precision was chosen


@dataclass
class RunConfig:
    """A run's config.json as Python values; `RunConfig.read(path)` checks it, `to_dict()` writes it."""

    model: str  # the model reference as stored (a spec file is kept as its text)
    parameters: int
    data: DataConfig
    train: Settings
    preprocess: Preprocess
    device: str = "auto"  # as asked for (auto, cpu, cuda)
    processes: int = 1  # torchrun processes that trained it
    precision: Precision | None = None
    format: int = FORMAT_VERSION
    cnnlab_version: str = ""
    torch_version: str = ""
    created: str = ""  # ISO time
    # Transfer learning (training/transfer.py): mode, head, where the weights came from, rate per group.
    transfer: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # top-level fields of a newer cnnlab, kept as they are

    @property
    def classes(self) -> list[str]:
        return self.data.classes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.data.input_shape

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of config.json."""
        return {
            "format": self.format, "cnnlab_version": self.cnnlab_version, "torch_version": self.torch_version,
            "created": self.created, "model": self.model, "parameters": self.parameters,
            "data": {**vars(self.data), "input_shape": list(self.data.input_shape)},
            "train": {**vars(self.train), "device": self.device, "processes": self.processes},
            "precision": vars(self.precision) if self.precision else None,
            "preprocess": self.preprocess.to_dict(),
            **({"transfer": self.transfer} if self.transfer is not None else {}),
            **self.extra,
        }

    @classmethod
    def from_dict(cls, config: dict[str, Any], path: str | Path = "config.json") -> RunConfig:
        """A checked RunConfig from config.json's object; RunError naming the field that is wrong."""
        path = Path(path)
        if config.get("format") not in READABLE_FORMATS:
            raise RunError(f"{path} was written by an incompatible cnnlab (run format {config.get('format')!r}; "
                           f"this cnnlab reads {' and '.join(map(str, READABLE_FORMATS))})")
        check_config(config, path)
        known_data = {f.name for f in fields(DataConfig)}
        data = {k: v for k, v in config["data"].items() if k in known_data}  # a newer cnnlab's extra facts are left
        data["input_shape"] = tuple(data["input_shape"])
        train = dict(config["train"])
        device, processes = train.pop("device", "auto"), train.pop("processes", 1)
        settings = Settings(**train)
        if "preprocess" in config:  # format 2
            pre = config["preprocess"]
            preprocess = Preprocess(tuple(pre["input_shape"]), tuple(pre["mean"]), tuple(pre["std"]), pre["resize"],
                                    pre["channels_last"], pre.get("resize_size"))
        else:  # format 1: the data's statistics, in the layout the run trained in
            preprocess = Preprocess(data["input_shape"], tuple(data["mean"]), tuple(data["std"]),
                                    channels_last=settings.channels_last)
        precision = config.get("precision")
        known = {"format", "cnnlab_version", "torch_version", "created", "model", "parameters", "data", "train",
                 "precision", "preprocess", "transfer"}
        return cls(
            model=config["model"], parameters=config["parameters"], data=DataConfig(**data), train=settings,
            preprocess=preprocess, device=device, processes=processes,
            precision=Precision(precision["asked"], precision["why"]) if precision else None,
            format=config["format"], cnnlab_version=str(config.get("cnnlab_version", "")),
            torch_version=str(config.get("torch_version", "")), created=str(config.get("created", "")),
            transfer=config.get("transfer"),
            extra={k: v for k, v in config.items() if k not in known},
        )

    @classmethod
    def read(cls, path: str | Path) -> RunConfig:
        """Read and check a config.json file."""
        return cls.from_dict(read_json(Path(path)), path)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from `path`, or a RunError that says what is wrong with the file."""
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


# ------------------------------------------------------------------- what config.json must hold
# The fields cnnlab reads and the JSON types each must have.

NoneType = type(None)
NUMBER = (int, float)
CONFIG_FIELDS: dict[str, tuple[type, ...]] = {
    "format": (int,), "model": (str,), "parameters": (int,), "data": (dict,), "train": (dict,),
    "precision": (dict, NoneType), "preprocess": (dict,), "cnnlab_version": (str,), "torch_version": (str,),
    "created": (str,), "transfer": (dict,),
}
CONFIG_OPTIONAL = {"precision", "preprocess", "cnnlab_version", "torch_version", "created", "transfer"}
DATA_FIELDS: dict[str, tuple[type, ...]] = {
    "dataset": (str,), "classes": (list,), "input_shape": (list,), "mean": (list,), "std": (list,),
    "train_images": (int,), "val_images": (int,), "test_images": (int,),
    "source": (str,), "data_dir": (str, NoneType), "image_size": (int, list, NoneType), "channels": (int, NoneType),
    "skip_bad_images": (bool,),
}
DATA_OPTIONAL = {"source", "data_dir", "image_size", "channels", "skip_bad_images"}  # older runs lack them
PREPROCESS_FIELDS: dict[str, tuple[type, ...]] = {
    "input_shape": (list,), "mean": (list,), "std": (list,), "resize": (str,), "channels_last": (bool,),
    "value_range": (list,), "resize_size": (int, NoneType),
}
PRECISION_FIELDS: dict[str, tuple[type, ...]] = {"asked": (str,), "why": (str,)}
# "train" holds the Settings (types from their annotations, all optional: an older run gets the default) and:
TRAIN_EXTRA: dict[str, tuple[type, ...]] = {"device": (str,), "processes": (int,)}
_ANNOTATIONS: dict[str, tuple[type, ...]] = {
    "int": (int,), "float": NUMBER, "str": (str,), "bool": (bool,), "int | None": (int, NoneType),
    "float | None": (*NUMBER, NoneType), "str | None": (str, NoneType),
}
_WORDS = {bool: "true or false", int: "a whole number", float: "a number", str: "text", list: "a list",
          dict: "an object", NoneType: "null"}


def is_a(value: Any, types: tuple[type, ...]) -> bool:
    """isinstance, except that true and false are not numbers (JSON keeps them apart, Python does not)."""
    return bool in types if isinstance(value, bool) else isinstance(value, types)


def _found(value: Any) -> str:
    text = json.dumps(value)
    if value is None or isinstance(value, bool):
        return text
    kind = next(word for t, word in _WORDS.items() if is_a(value, (t,)))
    return f"{kind} {text if len(text) <= 60 else text[:57] + '...'}"


def _expected(types: tuple[type, ...]) -> str:
    return " or ".join(_WORDS[t] for t in types if not (t is int and float in types))  # a number covers both


def damaged(path: Path, field_name: str, value: Any, expected: str) -> RunError:
    return RunError(f"{path}: the field {field_name!r} holds {_found(value)}, but cnnlab expects {expected}. The "
                    "file was edited or damaged: put back the value cnnlab wrote, or train the run again")


def check_fields(path: Path, prefix: str, obj: dict[str, Any], table: dict[str, tuple[type, ...]],
                 optional: set[str] = frozenset()) -> None:  # type: ignore[assignment]
    for key, types in table.items():
        if key not in obj:
            if key not in optional:
                raise RunError(f"{path} lacks the field {prefix + key!r}; the run folder is damaged or was written "
                               "by another program: train the run again")
        elif not is_a(obj[key], types):
            raise damaged(path, prefix + key, obj[key], _expected(types))


def _check_stats(path: Path, prefix: str, obj: dict[str, Any], channels: int) -> None:
    for key in ("mean", "std"):
        values = obj[key]
        if len(values) != channels or not all(is_a(v, NUMBER) and math.isfinite(v) for v in values) \
                or (key == "std" and min(values) <= 0):
            sign = "positive" if key == "std" else "finite"
            raise damaged(path, f"{prefix}{key}", values, f"{channels} {sign} number(s), one per input channel")


def _check_shape(path: Path, name: str, shape: list[Any]) -> None:
    if len(shape) != 3 or not all(is_a(v, (int,)) and v >= 1 for v in shape) or shape[1] * shape[2] > MAX_PIXELS:
        raise damaged(path, name, shape, f"[channels, height, width], each 1 or more and at most {MAX_PIXELS:,} pixels")


def check_config(config: dict[str, Any], path: Path) -> None:
    """Refuse a config.json whose fields have the wrong JSON type or an impossible value, naming the field."""
    check_fields(path, "", config, CONFIG_FIELDS, CONFIG_OPTIONAL)
    if config["parameters"] < 0:
        raise damaged(path, "parameters", config["parameters"], "a count of 0 or more")
    data = config["data"]
    check_fields(path, "data.", data, DATA_FIELDS, DATA_OPTIONAL)
    classes, shape = data["classes"], data["input_shape"]
    if len(classes) < 2 or not all(is_a(c, (str,)) and c for c in classes) or len(set(classes)) < len(classes):
        raise damaged(path, "data.classes", classes, "a list of 2 or more different class names")
    _check_shape(path, "data.input_shape", shape)
    _check_stats(path, "data.", data, shape[0])
    for key in ("train_images", "val_images", "test_images"):
        if data[key] < 0:
            raise damaged(path, f"data.{key}", data[key], "a count of 0 or more")
    if config.get("precision") is not None:
        check_fields(path, "precision.", config["precision"], PRECISION_FIELDS)
    if "preprocess" in config:
        pre = config["preprocess"]
        check_fields(path, "preprocess.", pre, PREPROCESS_FIELDS, {"value_range", "resize_size"})
        _check_shape(path, "preprocess.input_shape", pre["input_shape"])
        _check_stats(path, "preprocess.", pre, pre["input_shape"][0])
        if pre["resize"] not in RESIZE_POLICIES:
            raise damaged(path, "preprocess.resize", pre["resize"], f"one of {', '.join(RESIZE_POLICIES)}")
    elif config["format"] >= 2:
        raise RunError(f"{path} lacks the field 'preprocess'; the run folder is damaged or was written by another "
                       "program: train the run again")
    _check_train(config["train"], path)


def _check_train(train: dict[str, Any], path: Path) -> None:
    types = {f.name: _ANNOTATIONS[str(f.type)] for f in fields(Settings)} | TRAIN_EXTRA
    for key, value in train.items():
        if key not in types:
            raise RunError(f"{path}: 'train.{key}' is no setting this cnnlab knows (written by a newer version, or "
                           "edited?); remove the field, or use the cnnlab that trained the run")
        if not is_a(value, types[key]):
            raise damaged(path, f"train.{key}", value, _expected(types[key]))
    if train.get("processes", 1) < 1:
        raise damaged(path, "train.processes", train["processes"], "1 or more")
    try:
        Settings(**{k: v for k, v in train.items() if k not in TRAIN_EXTRA}).check()
    except UsageError as exc:  # its message names the flag; the field has the flag's name
        raise RunError(f"{path}: the training settings in its 'train' fields are impossible: {exc}. The file "
                       "was edited or damaged: put back the values cnnlab wrote, or train the run again") from exc
