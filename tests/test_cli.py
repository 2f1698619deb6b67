"""The command line: help, each command's output, and errors without tracebacks."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.training import machine
from cnnlab.cli.main import build_parser, main

COMMANDS = ["demo", "train", "evaluate", "predict", "features", "export", "compare", "report", "featuremaps", "filters", "cam", "summary",
            "arith", "conv", "pool", "filter", "serve", "models", "datasets", "info", "sample-images"]


@pytest.mark.parametrize("launcher", [[str(Path(sys.executable).parent / "cnnlab")], [sys.executable, "-m", "cnnlab"]])
def test_help_lists_every_command(launcher):
    result = subprocess.run([*launcher, "--help"], capture_output=True, text=True, check=True)
    for command in COMMANDS:
        assert re.search(rf"\n    {command}\s", result.stdout), command
    subcommands = build_parser()._subparsers._group_actions[0].choices
    assert sorted(subcommands) == sorted(COMMANDS)


def test_sample_images_names_each_file(tmp_path, capsys):
    assert main(["sample-images", str(tmp_path / "tour")]) == 0
    paths = [tmp_path / "tour" / name for name in ("sneaker.png", "bag.png", "shoe.png", "photo.jpg", "A.csv", "B.csv")]
    assert [line.split()[:2] for line in capsys.readouterr().out.splitlines()] == [["wrote", str(p)] for p in paths]
    assert all(p.is_file() for p in paths)


def test_error_exits_2_without_traceback(capsys):
    assert main(["train", "--model", "nope", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown model 'nope'") and "Traceback" not in err


def test_missing_dataset_error(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert main(["train", "--dataset", "mnist", "--data-dir", str(tmp_path), "--quiet"]) == 2
    assert "mnist was not found" in capsys.readouterr().err


def test_debug_shows_traceback(capsys):
    assert main(["--debug", "evaluate", "/nonexistent/run"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_train_evaluate_predict(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "seed-mlp", "--subset", "1000", "--epochs", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "seed-mlp on sample: 795,010 parameters, 900 training / 100 validation images" in printed
    assert "test accuracy" in printed
    assert (out / "model.safetensors").exists()
    assert f"report: {out / 'report.html'}" in printed
    page = (out / "report.html").read_text()
    assert "This model has no convolution layers, so it makes no feature maps." in page  # an MLP: said, not failed

    assert main(["evaluate", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("test accuracy: ") and "Ankle boot" in printed and "confusion matrix" in printed

    assert main(["evaluate", str(out), "--format", "json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["count"] == 2000 and len(ev["confusion"]) == 10

    image = tmp_path / "shoe.png"
    Image.fromarray(np.zeros((40, 30, 3), np.uint8)).save(image)
    assert main(["predict", str(out), str(image), "--top-k", "2", "--format", "json"]) == 0
    (pred,) = json.loads(capsys.readouterr().out)
    assert pred["path"] == str(image) and len(pred["top"]) == 2

    assert main(["train", "--resume", str(out), "--lr", "0.1", "--batch-size", "8"]) == 2
    assert "leave out --batch-size, --lr (only --epochs may change)" in capsys.readouterr().err
    assert main(["train", "--resume", str(out), "--epochs", "2", "--quiet"]) == 0
    assert len((out / "history.csv").read_text().splitlines()) == 3  # header + 2 epochs


def test_recipe_values_stay_unless_a_flag_is_given(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--recipe", "fast", "--subset", "600", "--epochs", "1", "--no-tta", "--lr", "0.1",
            "--watch-test", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "strided-cnn-28 on sample: 48,058 parameters" in printed
    assert "sgd nesterov lr 0.1 onecycle (warmup 0.2), batch 128, 1 epochs" in printed
    train = json.loads((out / "config.json").read_text())["train"]
    assert (train["recipe"], train["batch_size"], train["lr"], train["epochs"]) == ("fast", 128, 0.1, 1)
    auto = machine.choose_precision("auto", torch.device("cpu")).precision  # bf16 with AMX, fp32 limited to AVX2
    assert (train["tta"], train["precision"], train["augment"], train["channels_last"]) == (False, auto, "flip", True)
    header, row = (out / "history.csv").read_text().splitlines()
    assert header.endswith(",test_accuracy") and not row.endswith(",")  # --watch-test filled the column


def test_compare_markdown(tmp_path, capsys):
    args = ["compare", "seed-mlp", "largenet", "--dataset", "patterns", "--subset", "600", "--epochs", "1",
            "--out", str(tmp_path), "--quiet", "--format", "markdown"]
    assert main(args) == 0
    table = capsys.readouterr().out.strip().splitlines()
    assert table[2] == "| model | parameters | train time | epochs | best epoch | val acc | test acc | test-shifted acc |"
    assert table[4].startswith("| seed-mlp | 2,355,002 |") and table[5].startswith("| largenet | 6,858 |")
    page = (tmp_path / "report.html").read_text()  # the two runs side by side, and each run's own page
    assert "<h1>seed-mlp vs largenet on patterns</h1>" in page and page.count("<h3>largenet</h3>") == 9  # a column in each section
    assert (tmp_path / "seed-mlp" / "report.html").exists() and (tmp_path / "largenet" / "report.html").exists()


def test_models_and_datasets(capsys, monkeypatch, tmp_path):
    assert main(["models", "--format", "json"]) == 0
    rows = {row["model"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["seed-cnn"]["params_1x28x28"] == 716_706 and rows["seed-mlp"]["source"] == "lecture 001"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert main(["datasets", "--data-dir", str(tmp_path), "--format", "json"]) == 0
    found = {row["dataset"]: row["found"] for row in json.loads(capsys.readouterr().out)}
    assert found["sample"] == "shipped with cnnlab" and found["mnist"] == "not found"


def test_summary_command(capsys):
    spec = "conv(64,3) maxpool(2) relu conv(128,3) maxpool(2) relu flatten linear(200) relu linear(10)"
    assert main(["summary", spec, "--input", "1x28x28", "--explain"]) == 0
    out = capsys.readouterr().out
    assert "Parameters: 716,706" in out and "H_out = floor((28 + 2*0 - 1*(3-1) - 1)/1) + 1 = 26" in out
    assert "params = 64*(1*3*3) + 64 = 640" in out and "features = 128*5*5 = 3,200" in out
    assert main(["summary", "seed-mlp", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["total_params"] == 795_010
    assert main(["summary", "torchvision.models:resnet18", "--input", "3x64x64", "--classes", "7", "--depth", "1"]) == 0
    out = capsys.readouterr().out
    assert "layer4" in out and "layer4.0" not in out and "Output: 7" in out


def test_summary_of_an_impossible_spec_exits_2_with_the_fix(capsys):
    bad = "conv(64,3) maxpool(2) relu conv(128,3) maxpool(2) relu flatten linear(3000,200) relu linear(10)"
    assert main(["summary", bad, "--input", "1x28x28"]) == 2
    err = capsys.readouterr().err
    assert "layer 8 linear1" in err and "Fix: linear(3200,200)" in err and "Traceback" not in err
    assert main(["summary", "maxpool(2,4) flatten linear(10)", "--input", "1x28x28"]) == 0
    assert "Warning: maxpool1 (MaxPool2d): stride 4 is larger than the max pooling window 2" in capsys.readouterr().out


def test_arith_command(capsys):
    assert main(["arith", "shape", "conv(10,3) maxpool(4) conv(20,5,padding=2) maxpool(2)", "--input", "3x130x130"]) == 0
    out = capsys.readouterr().out
    assert "4. maxpool(2): 20x32x32 -> 20x16x16" in out and "output: 20x16x16 = 5,120 values per image" in out
    assert main(["arith", "padding", "--kernel", "7"]) == 0
    assert capsys.readouterr().out.startswith("padding = (7 - 1)/2 = 3")
    assert main(["arith", "pool", "--factor", "4"]) == 0
    assert capsys.readouterr().out.startswith("maxpool(4): kernel 4, stride 4")
    assert main(["arith", "size", "28", "--kernel", "3", "--stride", "2", "--padding", "1"]) == 0
    assert capsys.readouterr().out.startswith("H_out = floor((28 + 2*1 - 1*(3-1) - 1)/2) + 1 = 14")
    assert main(["arith", "size", "28", "--kernel", "3", "--stride", "0"]) == 2


def test_arith_shape_takes_the_input_of_a_spec_file(tmp_path, capsys):
    path = tmp_path / "q.toml"
    path.write_text('input = "3x130x130"\nlayers = "conv(10,3) maxpool(4) conv(20,5,padding=2) maxpool(2)"\n')
    assert main(["arith", "shape", str(path)]) == 0
    assert "output: 20x16x16" in capsys.readouterr().out
