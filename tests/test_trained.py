"""The trained-model seam: RunConfig, Preprocess and TrainedModel."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

import cnnlab
from cnnlab.data import BatchLoader, Split, load_dataset
from cnnlab.data.preprocess import Preprocess
from cnnlab.errors import RunError, UsageError
from cnnlab.runs.config import FORMAT_VERSION, RunConfig
from cnnlab.runs.trained import FlipAverage, TrainedModel

FORMAT_1 = Path(__file__).parent / "data" / "run-format-1"  # written by cnnlab before RunConfig existed


def test_a_format_1_run_folder_loads_and_evaluates_as_it_did():
    run = cnnlab.open_run(FORMAT_1)
    assert run.config.format == 1 and run.config.model == "conv(4,3) relu maxpool(2) flatten linear(10)"
    assert run.config.train.subset == 300 and run.config.processes == 1 and run.config.device == "cpu"
    # Format 1 has no preprocess section: the data's statistics, in the layout the run trained in.
    assert run.preprocess == Preprocess((1, 28, 28), (0.27527737020734216,), (0.34719046543145116,),
                                        channels_last=True)
    assert cnnlab.evaluate(FORMAT_1, device="cpu").accuracy == pytest.approx(run.metrics["test_accuracy"])
    assert run.metrics["test_accuracy"] == pytest.approx(0.388)


def test_the_config_round_trips_and_records_its_preprocessing(trained_run):
    raw = json.loads((trained_run.path / "config.json").read_text())
    assert raw["format"] == FORMAT_VERSION == 2
    assert raw["preprocess"] == {"input_shape": [1, 28, 28], "mean": raw["data"]["mean"], "std": raw["data"]["std"],
                                 "resize": "stretch", "channels_last": True, "value_range": [0.0, 1.0]}
    config = RunConfig.from_dict(raw)
    assert config.to_dict() == raw
    assert config.train.lr == 1e-3 and config.data.train_images == 1800 and config.precision.asked == "fp32"


def _edited(tmp_path: Path, edit) -> Path:
    run = tmp_path / "run"
    shutil.copytree(FORMAT_1, run)
    config = json.loads((run / "config.json").read_text())
    edit(config)
    (run / "config.json").write_text(json.dumps(config))
    return run


@pytest.mark.parametrize("edit, field", [
    (lambda c: c["train"].update(lr="fast"), "'train.lr' holds text \"fast\""),
    (lambda c: c["data"].update(std=[0.0]), r"'data.std' holds a list \[0.0\], but cnnlab expects 1 positive number"),
    (lambda c: c.update(format=2), "lacks the field 'preprocess'"),
    (lambda c: c.update(format=2, preprocess={"input_shape": [1, 28, 28], "mean": [0.5], "std": [0.5],
                                              "resize": "squash", "channels_last": False}), "'preprocess.resize'"),
    (lambda c: c.update(format=2, preprocess={"input_shape": [1, 28, 28], "mean": [0.5, 1], "std": [0.5],
                                              "resize": "stretch", "channels_last": False}), "'preprocess.mean'"),
    (lambda c: c.update(precision={"asked": 3}), "'precision.asked' holds a whole number 3"),
    (lambda c: c.update(format=7), "incompatible cnnlab \\(run format 7; this cnnlab reads 1 and 2\\)"),
    (lambda c: c.pop("model"), "lacks the field 'model'"),
])
def test_a_damaged_config_names_its_field(tmp_path, edit, field):
    with pytest.raises(RunError, match=field):
        cnnlab.open_run(_edited(tmp_path, edit))


def test_fields_of_a_newer_cnnlab_outside_train_are_kept(tmp_path):
    run = _edited(tmp_path, lambda c: (c.update(notes="from the future"), c["data"].update(hue="blue")))
    config = cnnlab.open_run(run).config
    assert config.extra == {"notes": "from the future"} and config.to_dict()["notes"] == "from the future"


def test_the_loaders_batched_path_equals_normalize():
    """Training's uint8 path (from_uint8, in place) gives bit for bit what normalize gives on x / 255."""
    x = torch.randint(0, 256, (10, 3, 5, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    pre = Preprocess((3, 5, 4), (0.49, 0.48, 0.45), (0.25, 0.24, 0.26), channels_last=True)
    batched, labels = next(iter(BatchLoader(Split(x, torch.arange(10)), 10, pre)))
    assert torch.equal(batched, pre.normalize(x.float() / 255))
    assert batched.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(pre.as_module()(x.float() / 255), pre.normalize(x.float() / 255))
    assert batched[0, 1, 0, 0].item() == pytest.approx((x[0, 1, 0, 0].item() / 255 - 0.48) / 0.24, rel=1e-6)


def test_preprocess_checks_its_statistics():
    assert Preprocess((3, 8, 8)).mean == (0.0, 0.0, 0.0) and Preprocess((3, 8, 8)).std == (1.0, 1.0, 1.0)
    with pytest.raises(UsageError, match="need 3 value"):
        Preprocess((3, 8, 8), (0.5,), (0.5,))


def _tta_model() -> TrainedModel:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    return TrainedModel(net, Preprocess((1, 28, 28), (0.3,), (0.35,), channels_last=True), [str(i) for i in range(10)],
                        tta=True)


def test_as_module_is_the_preprocessing_and_the_judged_network():
    model = _tta_model()
    images = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(1))  # [0, 1]
    x = (images - 0.3) / 0.35
    expected = FlipAverage(model.net)(x)  # (5, 10): the flip-averaged log-probabilities
    module = model.as_module()
    assert isinstance(module, nn.Module) and not module.training
    torch.testing.assert_close(module(images), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.logits(images), expected, rtol=1e-5, atol=1e-6)
    plain = TrainedModel(model.net, model.preprocess, model.classes, tta=False).as_module()
    torch.testing.assert_close(plain(images), model.net(x), rtol=1e-5, atol=1e-6)


def test_predict_on_images_and_files(trained_run, tmp_path):
    model = cnnlab.load(trained_run.path, device="cpu")
    data = load_dataset("sample")
    images = data.test.x[:4].float() / 255  # (4, 1, 28, 28) in [0, 1]
    predictions = model.predict(images, top=3)
    expected = model.logits(images).softmax(1)
    for p, probs in zip(predictions, expected):
        assert [c for c, _ in p.top] == [model.classes[i] for i in probs.topk(3).indices.tolist()]
        assert p.top[0][1] == pytest.approx(probs.max().item(), abs=1e-6)
    evaluated = cnnlab.evaluate(trained_run.path, device="cpu")
    judged = model.logits(data.test.x.float() / 255).argmax(1)
    assert (judged == data.test.y).float().mean().item() == pytest.approx(evaluated.accuracy)
    with pytest.raises(UsageError, match=r"images must be \(N, 1, 28, 28\)"):
        model.logits(torch.rand(2, 3, 28, 28))
    with pytest.raises(UsageError, match="1 or more classes"):
        model.predict(images, top=0)
