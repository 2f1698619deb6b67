"""A pretrained network is usable without training (issue 19, items 5 and 6): predict, features, featuremaps,
filters, cam and summary on a famous network's name with --pretrained or --weights FILE, lecture 003's
walkthrough as commands, train's transfer flags, and every bad input said clearly (exit 2, no traceback).

Offline, only efficientnet-lite0 has ImageNet weights here (cnnlab[pretrained]); a torchvision network's
"pretrained" file is made by saving a randomly initialized network under its torch hub cache name."""

from __future__ import annotations

from pathlib import Path
from urllib.error import URLError

import pytest
import torch
from PIL import Image

import cnnlab
from cnnlab.cli.main import build_parser, main
from cnnlab.data.images import SAMPLE_IMAGE
from cnnlab.errors import UsageError
from cnnlab.inspect.evaluate import predict, trained_model
from cnnlab.inspect.inside import cam, features, untrained_copy
from cnnlab.models.pretrained import hub_file, imagenet_preprocess

pytest.importorskip("timm")  # efficientnet-lite0 and its weights: cnnlab[pretrained]

LITE0 = "efficientnet-lite0"
CATS = {"tabby", "tiger cat", "Egyptian cat"}


def cli(capsys: pytest.CaptureFixture, *argv: object) -> tuple[int, str, str]:
    """Run the command in this process: (exit status, stdout, stderr)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse refusing a flag
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_error(result: tuple[int, str, str], *words: str) -> str:
    code, _, err = result
    assert code == 2 and "Traceback" not in err, err
    assert err.startswith("error: ") or (err.startswith("usage: ") and ": error: " in err), err
    for word in words:
        assert word in err, err
    return err


@pytest.fixture(scope="module")
def lite0() -> cnnlab.TrainedModel:
    return cnnlab.load(LITE0, device="cpu", pretrained=True)


@pytest.fixture(scope="module")
def lite0_logits(lite0) -> torch.Tensor:
    return lite0.logits([SAMPLE_IMAGE])  # (1, 1000)


@pytest.fixture(scope="module")
def lite0_file(lite0, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """EfficientNet-Lite0's ImageNet weights as a safetensors file."""
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("weights") / "lite0.safetensors"
    save_file({k: v.contiguous() for k, v in lite0.net.state_dict().items()}, str(path))
    return path


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache; a download from it fails at once, as offline."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(url: str, *args: object, **kwargs: object) -> None:
        raise URLError("no network in the tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return tmp_path / "torch"


def cache_random(name: str, seed: int) -> tuple[Path, dict[str, torch.Tensor]]:
    """Save a randomly initialized torchvision network where --pretrained looks for `name`'s file."""
    import torchvision.models as tvm

    torch.manual_seed(seed)
    state = getattr(tvm, name)().state_dict()
    file = hub_file(name)
    file.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, file)
    return file, state


# --------------------------------------------------------------------------------------- predict

def test_the_sample_photo_is_a_cat_through_python_and_the_cli(capsys, lite0, lite0_logits):
    """Chelsea, a tabby: ImageNet's three cats of her kind come first, together 90% or more."""
    probabilities = lite0_logits[0].softmax(0)
    top3 = [lite0.classes[i] for i in probabilities.topk(3).indices]
    assert set(top3) == CATS and probabilities.topk(3).values.sum() > 0.9
    (pred,) = predict(lite0, [SAMPLE_IMAGE], topk=3)  # a TrainedModel as it is
    assert [name for name, _ in pred.top] == top3

    code, out, err = cli(capsys, "predict", LITE0, "--pretrained", SAMPLE_IMAGE, "--format", "json")
    assert code == 0, err
    assert out.index(f'"{top3[0]}"') < out.index(f'"{top3[1]}"') < out.index(f'"{top3[2]}"')


def test_a_weights_file_gives_the_same_logits(lite0, lite0_logits, lite0_file):
    from_file = trained_model(LITE0, "cpu", weights=lite0_file)
    assert torch.equal(from_file.logits([SAMPLE_IMAGE]), lite0_logits)
    assert from_file.classes == lite0.classes


def test_a_cached_torchvision_file_is_what_pretrained_uses(torch_home):
    import torchvision.models as tvm

    _, state = cache_random("resnet18", seed=1)
    model = trained_model("resnet18", "cpu", pretrained=True)
    reference = tvm.resnet18().eval()
    reference.load_state_dict(state)
    x = imagenet_preprocess(224).load([SAMPLE_IMAGE])
    with torch.no_grad():
        expected = reference(imagenet_preprocess(224).normalize(x))
    torch.testing.assert_close(model.logits([SAMPLE_IMAGE]), expected, rtol=1e-4, atol=1e-4)


def test_offline_without_the_cached_file_names_the_file_and_folder(capsys, torch_home):
    file = hub_file("resnet18")
    assert str(torch_home) in str(file)
    assert_error(cli(capsys, "predict", "resnet18", "--pretrained", SAMPLE_IMAGE), "not on this machine", str(file),
                 "TORCH_HOME", "--weights FILE")


# ------------------------------------------------------------------------ lecture 003 as commands

@pytest.fixture(scope="module")
def alexnet_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialized AlexNet's state dict (61 M weights: made once)."""
    import torchvision.models as tvm

    torch.manual_seed(2)
    path = tmp_path_factory.mktemp("alexnet") / "alexnet.pt"
    torch.save(tvm.alexnet().state_dict(), path)
    return path


def test_features_shape_of_alexnet_and_efficientnet_lite0(capsys, alexnet_file, lite0):
    code, out, err = cli(capsys, "features", "alexnet", "--weights", alexnet_file, SAMPLE_IMAGE)
    assert code == 0, err
    assert out.splitlines()[0] == "alexnet on chelsea.jpg: input 3x224x224"
    assert out.splitlines()[1].split()[:2] == ["features", "256x6x6"]  # lecture 003's alexNet.features(x).shape
    assert "classifier.6 input   4096" in out

    found = features(lite0, SAMPLE_IMAGE)
    assert (found.maps_layer, found.maps_shape) == ("bn2", (1280, 7, 7))
    assert (found.head, found.head_input, found.classes) == ("classifier", (1280,), 1000)
    assert found.to_dict()["maps_shape"] == (1280, 7, 7)  # --format json


def test_featuremaps_trained_beside_untrained(capsys, tmp_path, alexnet_file):
    code, out, err = cli(capsys, "featuremaps", "alexnet", "--weights", alexnet_file, SAMPLE_IMAGE, "--layer",
                         "features.0", "--untrained", "--out", tmp_path)
    png = tmp_path / "chelsea-features.0-trained-vs-untrained.png"
    assert code == 0 and out == f"wrote 1 file(s): {png}\n", err
    assert Image.open(png).size[0] > Image.open(png).size[1]  # two 8 x 8 grids side by side


def test_the_untrained_copy_is_reinitialized_and_the_network_left_alone(lite0):
    before = lite0.net.conv_stem.weight.clone()
    twin = untrained_copy(lite0.net)
    assert torch.equal(lite0.net.conv_stem.weight, before)
    assert not torch.equal(twin.conv_stem.weight, before)
    assert torch.equal(twin.bn1.running_var, torch.ones_like(twin.bn1.running_var))
    assert torch.equal(untrained_copy(lite0.net).conv_stem.weight, twin.conv_stem.weight)  # seeded


def test_filters_cam_and_summary_of_a_pretrained_network(capsys, tmp_path, lite0):
    code, out, err = cli(capsys, "filters", LITE0, "--pretrained", "--out", tmp_path / "f.png")
    assert code == 0 and (tmp_path / "f.png").is_file(), err
    assert cam(lite0, [SAMPLE_IMAGE], target="tabby", out=tmp_path / "cam.png") == tmp_path / "cam.png"
    with pytest.raises(UsageError, match=r"unknown class 'Cat'; the model's classes are tench, .*\(1,000 classes"):
        cam(lite0, [SAMPLE_IMAGE], target="Cat")
    code, out, err = cli(capsys, "summary", LITE0, "--pretrained", "--depth", "1")
    assert code == 0 and "Parameters: 4,652,008" in out and "Output: 1000" in out, err


# ------------------------------------------------------------------------------------- train's flags

def test_train_passes_the_transfer_flags_as_settings(capsys, monkeypatch):
    import cnnlab.training.loop as loop

    calls = []
    monkeypatch.setattr(loop, "train", lambda *args, **kwargs: calls.append((args, kwargs)))
    assert main(["train", "--model", LITE0, "--pretrained", "--unfreeze-after", "2", "--backbone-lr", "0.05",
                 "--epochs", "4", "--image-size", "160"]) == 0
    (args, kwargs), = calls
    assert args == (LITE0, "sample") and kwargs["image_size"] == 160
    assert {k: kwargs[k] for k in ("pretrained", "unfreeze_after", "backbone_lr")} == \
        {"pretrained": True, "unfreeze_after": 2, "backbone_lr": 0.05}
    assert "weights" not in kwargs and "freeze" not in kwargs  # left out: Settings' defaults

    parse = build_parser().parse_args
    assert parse(["train", "--weights", "w.safetensors", "--freeze", "backbone"]).weights == "w.safetensors"
    assert parse(["compare", "resnet18", "alexnet", "--pretrained", "--freeze", "backbone"]).freeze == "backbone"
    assert_error(cli(capsys, "train", "--freeze", "all"), "invalid choice: 'all'")
    assert_error(cli(capsys, "train", "--pretrained", "--weights", "w.pt"), "not allowed with argument")


# --------------------------------------------------------------------------------------- bad input

def test_pretrained_on_a_model_without_weights(capsys):
    assert_error(cli(capsys, "predict", "seed-cnn", "--pretrained", SAMPLE_IMAGE),
                 "--pretrained works with a famous network's name (alexnet,", "not 'seed-cnn'")
    assert_error(cli(capsys, "features", "seed-cnn", "--weights", SAMPLE_IMAGE, SAMPLE_IMAGE),
                 "--weights FILE works with")


def test_a_model_name_without_weights_is_no_run_folder(capsys):
    assert_error(cli(capsys, "predict", LITE0, SAMPLE_IMAGE), "efficientnet-lite0 is a model name, not a run "
                 "folder: add --pretrained")
    assert_error(cli(capsys, "filters", "seed-cnn"), "train it first: cnnlab train --model seed-cnn")


def test_weights_of_another_architecture(capsys, tmp_path, alexnet_file):
    assert_error(cli(capsys, "predict", LITE0, "--weights", alexnet_file, SAMPLE_IMAGE),
                 "do not fit efficientnet-lite0", "missing", "unexpected")


def test_truncated_weights_file(capsys, tmp_path, lite0_file):
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(lite0_file.read_bytes()[:5000])
    assert_error(cli(capsys, "predict", LITE0, "--weights", cut, SAMPLE_IMAGE), "cannot be read as weights",
                 "truncated")


def test_a_pickle_that_needs_code_is_not_run(capsys, tmp_path):
    path = tmp_path / "whole-model.pt"
    torch.save(torch.nn.Linear(2, 2), path)  # a module, not a state dict: unpickling it would import code
    assert_error(cli(capsys, "featuremaps", LITE0, "--weights", path, SAMPLE_IMAGE), "a pickle that needs code",
                 "model.state_dict()")


def test_a_run_folder_with_pretrained(capsys, tmp_path):
    (tmp_path / "run").mkdir()
    assert_error(cli(capsys, "predict", tmp_path / "run", "--pretrained", SAMPLE_IMAGE),
                 "is a run folder, which has its own weights")
    assert_error(cli(capsys, "cam", tmp_path / "run", SAMPLE_IMAGE, "--image-size", "160"),
                 "--image-size is for a famous network")
    with pytest.raises(UsageError, match="not both"):
        trained_model(LITE0, "cpu", pretrained=True, weights="w.pt")
    assert_error(cli(capsys, "predict", LITE0, "--pretrained", "--weights", "w.pt", SAMPLE_IMAGE),
                 "not allowed with argument")
