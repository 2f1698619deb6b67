"""A run's model as one file that runs without cnnlab: ONNX (onnxruntime, any language) or .pt2 (torch.export).

    result = cnnlab.export("runs/demo/seed-cnn")            # runs/demo/seed-cnn/model.onnx + model.onnx.json
    result = cnnlab.export(run, format="pt2")               # model.pt2, loaded by torch.export.load

The graph is `TrainedModel.as_module()`: float images in [0, 1] (N, C, H, W) -> logits, with the
normalization and flip TTA inside, and a dynamic batch axis. The class names and preprocessing go with
it: in the file (ONNX metadata_props, the .pt2's extra files) and in a JSON file beside it. Before the
file takes its place, it is run on the run's test split (or a folder of images) next to PyTorch, and
kept only if the two agree; the run's model.safetensors is left as it is.
"""

from __future__ import annotations

import copy
import importlib
import json
import os
import secrets
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.data.images import IMAGE_EXTENSIONS
from cnnlab.errors import ExportError, UsageError
from cnnlab.inspect.evaluate import load_run_data
from cnnlab.runs.folder import Run, open_run, why_not_written
from cnnlab.runs.trained import EVAL_BATCH, TrainedModel, load, resolve_device
from cnnlab.version import __version__
from cnnlab.views.formatting import nbytes, percent

FORMATS = ("onnx", "pt2")
INPUT, OUTPUT = "images", "logits"  # the graph's input and output names
# What "the same model" means: fp32 logits equal element-wise within these (torch.isclose), and the same
# top-1 class for nearly every image (a near-tie may flip under another library's summation order).
RTOL, ATOL = 1e-3, 1e-5
MIN_AGREEMENT = 0.999
INSTALL = "pip install 'cnnlab[export]'"


@dataclass
class ExportResult:
    """What export wrote and how the file compared with PyTorch; accuracies are fractions."""

    path: Path
    metadata_path: Path  # the JSON beside it
    format: str
    exporter: str  # which exporter wrote the file
    size: int  # bytes
    checked_on: str  # "test split", a folder, or "" with check=False
    images: int  # images compared
    max_abs_diff: float | None  # largest |exported - PyTorch| over all logits
    agreement: float | None  # share of images with the same top-1 class
    accuracy: float | None  # the exported file's top-1 accuracy, when the images have labels
    export_seconds: float
    check_seconds: float

    @property
    def seconds(self) -> float:
        return self.export_seconds + self.check_seconds

    def lines(self) -> list[str]:
        """The result in words, as the CLI prints it."""
        out = [f"wrote {self.path} ({nbytes(self.size)}, {self.format}, {self.exporter}) and {self.metadata_path.name}"]
        if self.images:
            out.append(f"checked against PyTorch on {self.images:,} images ({self.checked_on}): top-1 agreement "
                       f"{percent(self.agreement)}, max |logit difference| {self.max_abs_diff:.2g} "
                       f"(tolerance rtol {RTOL:g}, atol {ATOL:g})")
        else:
            out.append("not checked (--no-check)")
        if self.accuracy is not None:
            out.append(f"exported model's accuracy: {percent(self.accuracy)}")
        out.append(f"{self.export_seconds:.1f} s to export, {self.check_seconds:.1f} s to check")
        return out


def export(run: str | Path | Run, out: str | Path | None = None, format: str = "onnx",
           data_dir: str | Path | None = None, folder: str | Path | None = None, device: str = "cpu",
           check: bool = True) -> ExportResult:
    """Write a run's model as ONNX or .pt2 (default RUN/model.onnx or RUN/model.pt2), with a JSON beside
    it, after checking it against PyTorch on the run's test split (or the images of `folder`)."""
    if format not in FORMATS:
        raise UsageError(f"unknown export format {format!r}; use {' or '.join(FORMATS)}")
    if format == "onnx":  # before any work: a missing package is the user's to fix first
        _optional("onnx")
        if check:
            _optional("onnxruntime")
    run = run if isinstance(run, Run) else open_run(run)
    target = Path(out) if out is not None else run.path / f"model.{format}"
    if target.is_dir():
        raise ExportError(f"{target} is a folder; give the file to write, e.g. {target / f'model.{format}'}")
    images, labels, checked_on = _check_images(run, data_dir, folder) if check else (None, None, "")
    model = load(run, "cpu")  # the file is exported from the CPU, so that it runs anywhere
    reference = model if resolve_device(device).type == "cpu" else load(run, device)
    meta_path = target.with_name(target.name + ".json")
    comparison = _Comparison()
    tmp, meta_tmp = _temporary(target, format), None
    try:
        start = time.perf_counter()
        exporter = _write(model, tmp, format)
        export_seconds = time.perf_counter() - start
        if images is not None:
            comparison.run(_runner(tmp, format), reference, images, labels)
            comparison.verify(target)
        check_seconds = time.perf_counter() - start - export_seconds
        meta_tmp = _temporary(meta_path, "json")
        Path(meta_tmp).write_text(json.dumps(metadata(model, format, exporter), indent=2) + "\n", encoding="utf-8")
        os.replace(meta_tmp, meta_path)
        os.replace(tmp, target)
    except OSError as exc:
        raise ExportError(f"cannot write {target}: {why_not_written(target, exc)}") from exc
    finally:
        for path in (tmp, meta_tmp):
            if path:
                Path(path).unlink(missing_ok=True)
    return ExportResult(target, meta_path, format, exporter, target.stat().st_size, checked_on, comparison.images,
                        comparison.max_abs_diff, comparison.agreement, comparison.accuracy, export_seconds,
                        check_seconds)


def metadata(model: TrainedModel, format: str, exporter: str) -> dict[str, Any]:
    """What a program without cnnlab needs to use the file: input, preprocessing, classes, output."""
    p = model.preprocess
    c, h, w = p.input_shape
    return {
        "format": format,
        "exporter": exporter,
        "cnnlab_version": __version__,
        "torch_version": torch.__version__,
        "model": model.run.config.model if model.run else None,
        "classes": model.classes,
        "input": {"name": INPUT, "shape": ["batch", c, h, w], "dtype": "float32", "layout": "NCHW",
                  "value_range": [0.0, 1.0], "channels": "grayscale (ITU-R 601 luma)" if c == 1 else "RGB",
                  "resize": f"{p.resize}: the whole image resized to {h}x{w} (bilinear, antialiased)"},
        "normalization": {"mean": list(p.mean), "std": list(p.std), "applied": "inside the graph: give it [0, 1] "
                          "pixels, not (x - mean) / std"},
        "output": {"name": OUTPUT, "shape": ["batch", len(model.classes)],
                   "values": "log-probabilities, the mean of the image's and its mirror image's (flip TTA)"
                   if model.tta else "logits", "use": "argmax is the class; softmax gives the probabilities"},
        "tta": model.tta,
        # cnnlab's own record of it; without channels_last, PyTorch's layout of its weights: the file's are NCHW
        "preprocess": {k: v for k, v in p.to_dict().items() if k != "channels_last"},
    }


def _optional(name: str) -> Any:
    """onnx / onnxruntime: optional heavy dependencies (the `export` extra), imported only when exporting."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ExportError(f"exporting to ONNX needs the {name} package, which is not installed: {INSTALL}") from exc


def _temporary(target: Path, suffix: str) -> str:
    """A new empty file in the target's folder, so that os.replace moves it in one step."""
    # torch.export.save wants a name ending in .pt2; the leading dot keeps it out of listings. Not mkstemp:
    # its files are private (0600), and this one is for others to use (0666 less the umask).
    tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp.{suffix}"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    except OSError as exc:
        raise ExportError(f"cannot write {target}: {why_not_written(target, exc)}") from exc
    return str(tmp)


def _check_images(run: Run, data_dir: str | Path | None, folder: str | Path | None
                  ) -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """Float images in [0, 1] (N, C, H, W) to compare on, their labels if known, and where they came from."""
    if folder is None:
        test = load_run_data(run, data_dir).test
        if len(test) == 0:
            raise ExportError(f"{run.path}'s dataset has no test images to check the export on; give --folder DIR "
                              "or --no-check")
        return test.x.float() / 255, test.y, "test split"
    root = Path(folder)
    if not root.is_dir():
        raise UsageError(f"--folder {root}: not a folder of images")
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                   and not p.name.startswith("."))
    if not paths:
        raise UsageError(f"--folder {root} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return run.preprocess.load(paths), None, str(root)


def _write(model: TrainedModel, path: str, format: str) -> str:
    """Export the model's graph with a dynamic batch axis to `path`; returns which exporter wrote it."""
    # A copy with the weights in the plain NCHW layout: channels_last is PyTorch's speed-up on this machine,
    # and .pt2 keeps strides (loading channels_last weights warns, and other runtimes may not take them).
    module = copy.deepcopy(model.as_module()).to(memory_format=torch.contiguous_format)
    example = torch.zeros(2, *model.preprocess.input_shape)  # batch 2: torch.export specializes a batch of 1
    batch = torch.export.Dim("batch", min=1)
    if format == "pt2":
        program = torch.export.export(module, (example,), dynamic_shapes={INPUT: {0: batch}})
        torch.export.save(program, path, extra_files={"cnnlab.json": json.dumps(metadata(model, format,
                                                                                          "torch.export"))})
        return "torch.export"
    exporter = _write_onnx(module, example, batch, path)
    _add_onnx_metadata(path, metadata(model, format, exporter))
    return exporter


def _write_onnx(module: nn.Module, example: torch.Tensor, batch: Any, path: str) -> str:
    """torch.onnx's dynamo-based exporter, or the TorchScript one where it fails (an op it cannot convert,
    onnxscript missing); returns which one wrote the file."""
    names = {"input_names": [INPUT], "output_names": [OUTPUT]}
    try:
        torch.onnx.export(module, (example,), path, dynamo=True, dynamic_shapes={INPUT: {0: batch}},
                          external_data=False, verbose=False, **names)
        return "torch.onnx dynamo exporter"
    except Exception as exc:  # the dynamo exporter raises many types; the fallback says why it was used
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter's notice: this is on purpose
        torch.onnx.export(module, (example,), path, dynamo=False, dynamic_axes={INPUT: {0: "batch"},
                                                                                OUTPUT: {0: "batch"}}, **names)
    return f"torch.onnx TorchScript exporter (the dynamo exporter failed: {reason})"


def _add_onnx_metadata(path: str, meta: dict[str, Any]) -> None:
    """The classes and preprocessing as the ONNX file's metadata_props (onnxruntime: custom_metadata_map)."""
    onnx = _optional("onnx")
    proto = onnx.load(path)
    c, h, w = meta["input"]["shape"][1:]
    props = {"cnnlab": json.dumps(meta), "classes": json.dumps(meta["classes"]), "input_shape": json.dumps([c, h, w]),
             "layout": "NCHW", "value_range": "[0.0, 1.0]", "mean": json.dumps(meta["normalization"]["mean"]),
             "std": json.dumps(meta["normalization"]["std"]), "normalization": "inside the graph"}
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, path)


def _runner(path: str, format: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The exported file as a function: float images (N, C, H, W) on the CPU -> logits (N, classes)."""
    if format == "pt2":
        module = torch.export.load(path).module()
        return lambda x: module(x).detach()
    ort = _optional("onnxruntime")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: its notes on graph optimizations are not the user's business
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run([OUTPUT], {INPUT: x.numpy()})[0])


class _Comparison:
    """The exported file's logits next to PyTorch's, batch by batch."""

    def __init__(self) -> None:
        self.images = self.same_class = self.correct = self.outside = self.values = 0
        self.max_abs_diff: float | None = None  # None: nothing compared (check=False)
        self.labeled = False

    @torch.no_grad()
    def run(self, exported: Callable[[torch.Tensor], torch.Tensor], reference: TrainedModel, images: torch.Tensor,
            labels: torch.Tensor | None) -> None:
        module = reference.as_module()
        self.labeled = labels is not None
        for start in range(0, len(images), EVAL_BATCH):
            x = images[start:start + EVAL_BATCH].contiguous()  # (B, C, H, W) in [0, 1]
            want = module(x.to(reference.device)).float().cpu()  # (B, classes)
            got = exported(x).float()
            self.max_abs_diff = max(self.max_abs_diff or 0.0, (got - want).abs().max().item())
            self.outside += (~torch.isclose(got, want, rtol=RTOL, atol=ATOL)).sum().item()
            self.values += want.numel()
            self.same_class += (got.argmax(1) == want.argmax(1)).sum().item()
            if labels is not None:
                self.correct += (got.argmax(1) == labels[start:start + EVAL_BATCH]).sum().item()
            self.images += len(x)

    @property
    def agreement(self) -> float | None:
        return self.same_class / self.images if self.images else None

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.images if self.images and self.labeled else None

    def verify(self, target: Path) -> None:
        """ExportError unless the logits agree within tolerance and the top-1 classes nearly always."""
        if self.outside or self.agreement < MIN_AGREEMENT:
            raise ExportError(
                f"the exported model differs from PyTorch's on {self.images:,} images: {self.outside:,} of "
                f"{self.values:,} logits beyond rtol {RTOL:g} / atol {ATOL:g} (max |difference| "
                f"{self.max_abs_diff:.3g}), top-1 agreement {percent(self.agreement)} (needs "
                f"{percent(MIN_AGREEMENT)}); nothing was written to {target}. Try the other --format, or "
                "report it with `cnnlab info`")
