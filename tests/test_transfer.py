"""Transfer learning (training/transfer.py): feature extraction on cached features, fine-tuning with a
frozen then unfrozen backbone, the weights it starts from, and its errors. EfficientNet-Lite0's real
ImageNet weights (cnnlab[pretrained]) on the shipped Fashion-MNIST sample, at a small input size."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import cnnlab
from cnnlab.data import ImageData, load_dataset
from cnnlab.errors import UsageError, WeightsError
from cnnlab.inspect.evaluate import evaluate_model
from cnnlab.runs.trained import TrainedModel
from cnnlab.models.pretrained import pretrained_weights
from cnnlab.settings import Settings, make_optimizer
from cnnlab.training import transfer

SMALL = {"image_size": 32, "report": False, "verbose": False, "seed": 0}


@pytest.fixture(scope="module")
def sample() -> ImageData:
    """The shipped sample in colour, cut to 300 training and 300 test images: each run stays a few seconds."""
    data = load_dataset("sample", channels=3)
    return ImageData("sample", data.classes, data.train.take(slice(0, 300)), data.test.take(slice(0, 300)))


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """A feature cache of this test's own, and none in memory from another test."""
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    transfer._MEMORY.clear()
    return tmp_path / "cache"


def backbone_of(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith("classifier.")}


def test_feature_extraction_trains_only_the_head_and_tests_as_the_whole_network(sample, tmp_path, cache, capsys):
    run = cnnlab.train("efficientnet-lite0", sample, pretrained=True, freeze="backbone", epochs=3, lr=1e-3,
                       batch_size=64, out=tmp_path / "r", **{**SMALL, "verbose": True})
    printed = capsys.readouterr().out
    assert "features of the 270 fit images" in printed and "trainable 12,810, frozen" in printed
    assert run.config.transfer["mode"] == "features" and run.config.transfer["lr"] == {"head": 1e-3, "backbone": 0.0}
    assert run.config.preprocess.input_shape == (3, 32, 32) and run.config.preprocess.resize == "center-crop"
    assert run.config.data.input_shape == (3, 28, 28)  # the data keeps its size; the preprocessing fits it
    saved = load_file(str(tmp_path / "r" / "model.safetensors"))
    imagenet = pretrained_weights("efficientnet-lite0").state
    for key, value in backbone_of(saved).items():  # every backbone tensor as ImageNet left it
        assert torch.equal(value, imagenet[key]), key
    # The test on cached features is the whole network's test on the images.
    again = evaluate_model(TrainedModel.from_run(run), sample.test)
    assert again.accuracy == pytest.approx(run.metrics["test_accuracy"], abs=1 / 300)
    assert list(cache.glob("features/*.safetensors"))  # fit, val and test, kept for the next run
    from cnnlab.report.page import report

    page = Path(report(run, sample, device="cpu")).read_text(encoding="utf-8")
    assert "Transfer learning, feature extraction: the backbone frozen throughout" in page
    assert "learning rate per group: head 0.001, backbone 0." in page
    assert "a new head classifier for 10 classes starts from random weights" in page


def test_features_come_from_the_cache_the_second_time(sample, tmp_path, capsys):
    options = dict(pretrained=True, freeze="backbone", epochs=1, batch_size=64, **{**SMALL, "verbose": True})
    first = cnnlab.train("efficientnet-lite0", sample, out=tmp_path / "a", **options)
    transfer._MEMORY.clear()
    capsys.readouterr()
    second = cnnlab.train("efficientnet-lite0", sample, out=tmp_path / "b", **options)
    assert capsys.readouterr().out.count("from the cache") == 3
    assert second.metrics["test_accuracy"] == first.metrics["test_accuracy"]
    capsys.readouterr()
    cnnlab.train("efficientnet-lite0", sample, out=tmp_path / "c", **{**options, "subset": 200})
    printed = capsys.readouterr().out  # other training images: other keys; the test images' are kept
    assert "features of the 300 test images: in memory" in printed and "features of the 180 fit images: 0" in printed


def test_fine_tuning_freezes_then_trains_the_backbone_at_its_own_rate(sample, tmp_path, monkeypatch):
    calls = []
    real = transfer.set_frozen

    def spy(net, head, frozen):
        calls.append(frozen)
        if not frozen:  # the frozen epoch left every backbone tensor, statistics included, as ImageNet's
            assert all(torch.equal(v, imagenet[k]) for k, v in backbone_of(net.state_dict()).items())
        real(net, head, frozen)

    imagenet = pretrained_weights("efficientnet-lite0").state
    monkeypatch.setattr(transfer, "set_frozen", spy)
    run = cnnlab.train("efficientnet-lite0", sample, pretrained=True, unfreeze_after=1, epochs=2, lr=1e-3,
                       backbone_lr=0.1, batch_size=32, out=tmp_path / "f", **SMALL)
    assert calls == [True, True, False]  # before the summary, epoch 1, epoch 2
    assert run.config.transfer["mode"] == "fine-tune" and run.config.transfer["frozen_epochs"] == 1
    assert run.config.transfer["lr"] == {"head": 1e-3, "backbone": pytest.approx(1e-4)}
    checkpoint = torch.load(tmp_path / "f" / "checkpoint.pt", weights_only=True)
    assert [g["name"] for g in checkpoint["optimizer"]["param_groups"]] == ["head", "backbone"]  # no weight decay
    after = backbone_of(checkpoint["model"])
    changed = [k for k, v in after.items() if not torch.equal(v, imagenet[k])]
    assert any("running_mean" in k for k in changed) and any(k.endswith("conv_dw.weight") for k in changed)


def test_the_optimizer_gives_the_backbone_a_share_of_the_rate():
    net = cnnlab.get_model("mobilenet-v3-small", (3, 64, 64), 5)
    groups = make_optimizer(net, Settings(lr=0.01, backbone_lr=0.25, weight_decay=1e-4), head="classifier.3")
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in groups.param_groups] == [
        ("head", 0.01, 1e-4), ("head", 0.01, 0.0), ("backbone", 0.0025, 1e-4), ("backbone", 0.0025, 0.0)]
    assert sum(p.numel() for g in groups.param_groups[:2] for p in g["params"]) == 1024 * 5 + 5


def test_a_weights_file_of_the_same_network_starts_training(sample, tmp_path):
    state = pretrained_weights("efficientnet-lite0").state
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "lite0.safetensors"))
    run = cnnlab.train("efficientnet-lite0", sample, weights=str(tmp_path / "lite0.safetensors"), freeze="backbone",
                       epochs=1, batch_size=64, out=tmp_path / "w", **SMALL)
    assert run.config.transfer["weights"][0].startswith(f"weights from {tmp_path / 'lite0.safetensors'}: 294 of 296")
    assert run.config.preprocess.mean == (0.5, 0.5, 0.5)  # a famous network's file: its weights' own reading


def test_from_scratch_is_the_same_architecture_with_random_weights(sample, tmp_path):
    run = cnnlab.train("mobilenet-v3-small", sample, epochs=1, batch_size=64, out=tmp_path / "s",
                       **{**SMALL, "image_size": None})
    assert run.config.transfer is None and run.config.preprocess.input_shape == (3, 28, 28)
    assert run.config.preprocess.mean not in ((0.5, 0.5, 0.5), (0.485, 0.456, 0.406))  # the data's own statistics


def test_weights_for_another_network_are_refused_before_a_run_folder_exists(sample, tmp_path):
    state = pretrained_weights("efficientnet-lite0").state
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "lite0.safetensors"))
    with pytest.raises(WeightsError, match=r"do not fit mobilenet-v3-small \(\d+ missing: .*use the model they"):
        cnnlab.train("mobilenet-v3-small", sample, weights=str(tmp_path / "lite0.safetensors"), epochs=1,
                     out=tmp_path / "x", **SMALL)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(("options", "message"), [
    ({"freeze": "backbone", "augment": "flip"}, "images are never augmented"),
    ({"freeze": "backbone", "tta": True}, "leave out --augment and --tta"),
    ({"unfreeze_after": 3, "epochs": 3}, "fewer than the 3 --epochs"),
    ({"freeze": "everything"}, "unknown --freeze 'everything'"),
    ({"backbone_lr": 2.0, "unfreeze_after": 1, "epochs": 2}, "--backbone-lr must be in"),
])
def test_impossible_transfer_settings_are_said(sample, tmp_path, options, message):
    with pytest.raises(UsageError, match=message):
        cnnlab.train("efficientnet-lite0", sample, pretrained=True, out=tmp_path / "x", **{**SMALL, **options})
    assert not (tmp_path / "x").exists()


def test_pretrained_on_a_model_without_weights_is_said(sample, tmp_path):
    with pytest.raises(UsageError, match="no pretrained weights for 'seed-cnn'.*--weights FILE"):
        cnnlab.train("seed-cnn", sample, pretrained=True, epochs=1, out=tmp_path / "x", **SMALL)


def test_set_frozen_keeps_batch_norm_statistics_and_weights():
    net = cnnlab.get_model("mobilenet-v3-small", (3, 64, 64), 3).train()
    transfer.set_frozen(net, "classifier.3", True)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net(torch.randn(4, 3, 64, 64))
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items() if "running" in k)
    assert {n for n, p in net.named_parameters() if p.requires_grad} == {"classifier.3.weight", "classifier.3.bias"}
    transfer.set_frozen(net, "classifier.3", False)
    assert all(p.requires_grad for p in net.parameters())
