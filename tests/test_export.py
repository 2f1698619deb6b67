"""cnnlab export: ONNX and .pt2 files that compute what PyTorch computes, carry their classes and
preprocessing, take any batch size, and are never left half-written or unchecked at the target."""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import cnnlab
from cnnlab.cli.main import main
from cnnlab.data.examples import write_examples
from cnnlab.errors import ExportError, RunError, UsageError
from cnnlab.inspect.evaluate import load_run_data
from cnnlab.runs.trained import load

export_module = importlib.import_module("cnnlab.export")  # `cnnlab.export` is the function


@pytest.fixture(scope="module")
def seed_run(tmp_path_factory: pytest.TempPathFactory):
    """seed-cnn, 1 epoch on 300 images of the shipped sample (its test split: 2,000 images)."""
    out = tmp_path_factory.mktemp("runs") / "seed-cnn"
    return cnnlab.train("seed-cnn", "sample", subset=300, epochs=1, out=out, device="cpu", verbose=False, report=False)


@pytest.fixture(scope="module")
def fast_run(tmp_path_factory: pytest.TempPathFactory):
    """The fast recipe's network (batch norm, channels_last) with flip TTA, 1 epoch on 300 images."""
    out = tmp_path_factory.mktemp("runs") / "fast"
    run = cnnlab.train(None, "sample", recipe="fast", subset=300, epochs=1, out=out, device="cpu", verbose=False,
                       report=False)
    assert run.config.train.tta
    return run


def session(path: Path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("which", ["seed_run", "fast_run"])
def test_onnx_agrees_with_pytorch_carries_its_classes_and_takes_any_batch(
        which: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    run = request.getfixturevalue(which)
    result = cnnlab.export(run, out=tmp_path / "model.onnx")
    print(f"{which}: " + "; ".join(result.lines()))
    assert result.path == tmp_path / "model.onnx" and result.size == result.path.stat().st_size > 0
    assert result.format == "onnx" and result.images == 2000 and result.checked_on == "test split"
    assert result.agreement >= 0.999 and result.max_abs_diff < 1e-4

    # The file alone, in onnxruntime, classifies the test split as `cnnlab evaluate` does.
    test = load_run_data(run).test
    logits = session(result.path).run(None, {"images": (test.x.float() / 255).numpy()})[0]  # (2000, 10)
    correct = int((logits.argmax(1) == test.y.numpy()).sum())
    evaluation = cnnlab.evaluate(run.path, device="cpu")
    assert correct == round(evaluation.accuracy * 2000) == round(result.accuracy * 2000)

    import onnx

    props = {p.key: p.value for p in onnx.load(str(result.path)).metadata_props}
    assert json.loads(props["classes"]) == run.classes and props["layout"] == "NCHW"
    assert json.loads(props["input_shape"]) == [1, 28, 28] and json.loads(props["mean"]) == list(run.preprocess.mean)
    beside = json.loads((tmp_path / "model.onnx.json").read_text())
    assert beside["classes"] == run.classes and beside["input"]["shape"] == ["batch", 1, 28, 28]
    assert beside["input"]["value_range"] == [0.0, 1.0] and beside["input"]["layout"] == "NCHW"
    assert beside["normalization"]["std"] == list(run.preprocess.std) and beside["tta"] == run.config.train.tta
    assert beside["cnnlab_version"] == cnnlab.__version__ and beside["format"] == "onnx"
    assert sorted(os.listdir(tmp_path)) == ["model.onnx", "model.onnx.json"]  # no temporary file left

    module = load(run, "cpu").as_module()
    for n in (1, 7):  # the batch axis is dynamic: the example batch of 2 was not baked in
        x = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(n))
        got = session(result.path).run(None, {"images": x.numpy()})[0]
        assert got.shape == (n, 10)
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(got), module(x), rtol=1e-3, atol=1e-5)


def test_pt2_round_trip_with_tta(fast_run, tmp_path: Path) -> None:
    result = cnnlab.export(fast_run, format="pt2")  # the default place: RUN/model.pt2
    assert result.path == fast_run.path / "model.pt2" and result.agreement >= 0.999 and result.max_abs_diff < 1e-4
    extra = {"cnnlab.json": ""}
    loaded = torch.export.load(str(result.path), extra_files=extra).module()
    assert json.loads(extra["cnnlab.json"])["classes"] == fast_run.classes
    assert json.loads((fast_run.path / "model.pt2.json").read_text())["output"]["values"].startswith("log-prob")
    module = load(fast_run, "cpu").as_module()
    for n in (1, 7):
        x = torch.rand(n, 1, 28, 28)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), module(x), rtol=1e-3, atol=1e-5)


def test_cli_checks_on_a_folder_of_images(seed_run, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_examples(tmp_path / "examples")  # three PNGs, a JPEG and two CSV files
    out = tmp_path / "out" / "seed.pt2"
    assert main(["export", str(seed_run.path), "--format", "pt2", "--out", str(out),
                 "--folder", str(tmp_path / "examples")]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "seed.pt2.json" in printed
    assert "on 4 images" in printed and "top-1 agreement 100.00%" in printed
    assert out.is_file() and (tmp_path / "out" / "seed.pt2.json").is_file()


def nothing_left(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def test_not_a_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(RunError, match="is not a run folder"):
        cnnlab.export(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match="config.json"):
        cnnlab.export(tmp_path / "empty")
    assert main(["export", str(tmp_path / "missing")]) == 2
    assert "is not a run folder" in capsys.readouterr().err
    assert nothing_left(tmp_path) == ["empty"] and nothing_left(tmp_path / "empty") == []


def test_unknown_format(seed_run, tmp_path: Path) -> None:
    before = nothing_left(seed_run.path)
    with pytest.raises(UsageError, match="unknown export format 'tflite'; use onnx or pt2"):
        cnnlab.export(seed_run, format="tflite")
    assert nothing_left(seed_run.path) == before


def test_unwritable_paths(seed_run, tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("not a folder")
    with pytest.raises(ExportError, match="afile is a file, not a folder"):
        cnnlab.export(seed_run, out=tmp_path / "afile" / "model.onnx", check=False)
    with pytest.raises(ExportError, match="is a folder; give the file to write"):
        cnnlab.export(seed_run, out=tmp_path, check=False)
    assert nothing_left(tmp_path) == ["afile"]
    if os.geteuid() == 0:
        pytest.skip("root writes into a read-only folder; the other paths were checked")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(ExportError, match="Permission denied"):
        cnnlab.export(seed_run, out=locked / "model.onnx", check=False)
    assert nothing_left(locked) == []


def test_missing_onnxruntime_names_the_extra(seed_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    with pytest.raises(ExportError, match=r"onnxruntime package, which is not installed: pip install 'cnnlab\[export\]'"):
        cnnlab.export(seed_run, out=tmp_path / "model.onnx")
    assert nothing_left(tmp_path) == []


class Tampered(nn.Module):
    """The model with a small bias on one class: what a wrong conversion of one op could do."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.module(images)
        return logits + torch.nn.functional.one_hot(torch.tensor(3), logits.shape[1]) * 0.01


def test_a_file_that_differs_is_not_kept(seed_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_onnx = export_module._write_onnx
    monkeypatch.setattr(export_module, "_write_onnx", lambda module, *args: write_onnx(Tampered(module).eval(), *args))
    write_examples(tmp_path / "examples")
    target = tmp_path / "out" / "model.onnx"
    with pytest.raises(ExportError, match=r"differs from PyTorch's on 4 images: 4 of 40 logits beyond rtol 0\.001 / "
                                          r"atol 1e-05 \(max \|difference\| 0\.01\).*nothing was written to"):
        cnnlab.export(seed_run, out=target, folder=tmp_path / "examples")
    assert nothing_left(tmp_path / "out") == []


def test_the_torchscript_exporter_when_the_dynamo_one_fails(fast_run, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    onnx_export = torch.onnx.export

    def no_dynamo(*args, dynamo: bool = True, **kwargs):
        if dynamo:
            raise RuntimeError("an op the dynamo exporter cannot convert")
        return onnx_export(*args, dynamo=False, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", no_dynamo)
    write_examples(tmp_path / "examples")
    result = cnnlab.export(fast_run, out=tmp_path / "m.onnx", folder=tmp_path / "examples")  # flip TTA inside
    assert result.exporter == ("torch.onnx TorchScript exporter (the dynamo exporter failed: RuntimeError: an op the "
                               "dynamo exporter cannot convert)")
    assert result.images == 4 and result.agreement == 1.0 and result.max_abs_diff < 1e-4
    got = session(result.path).run(None, {"images": np.zeros((7, 1, 28, 28), np.float32)})[0]
    assert got.shape == (7, 10)
