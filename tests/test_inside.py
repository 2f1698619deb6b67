"""Inside a network: layer names, feature maps equal to the layers' outputs, filters, and the
featuremaps / filters / cam commands on a trained run."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

import cnnlab
from cnnlab.inspect import inside
from cnnlab.inspect.cam import grad_cam
from cnnlab.cli.main import main
from cnnlab.errors import UsageError
from cnnlab.data.images import SAMPLE_IMAGE


def test_conv_layers_and_layer_errors():
    assert inside.conv_layers(cnnlab.get_model("seed-cnn")) == ["0", "3"]
    assert inside.conv_layers(cnnlab.build("conv(8,3) relu conv(4,3) flatten linear(10)", "1x28x28")) == [
        "conv1", "conv2"]
    assert inside.conv_layers(cnnlab.get_model("seed-mlp")) == []
    with pytest.raises(UsageError, match=r"no layer 'conv9'; its convolutions are 0, 3 \(every layer name"):
        inside.find_layer(cnnlab.get_model("seed-cnn"), "conv9")
    with pytest.raises(UsageError, match="no layer ''"):  # the model itself is not a layer
        inside.find_layer(cnnlab.get_model("seed-cnn"), "")


def test_feature_maps_are_the_layers_outputs():
    torch.manual_seed(0)
    model = cnnlab.get_model("seed-cnn").eval()
    x = torch.randn(2, 1, 28, 28)
    maps = inside.feature_maps(model, x, ["0", "3", "7"])
    with torch.no_grad():
        torch.testing.assert_close(maps["0"], model[0](x))
        torch.testing.assert_close(maps["3"], model[:4](x))
        torch.testing.assert_close(maps["7"], model[:8](x))
    assert maps["3"].shape == (2, 128, 11, 11)


def test_feature_maps_survive_in_place_relu_and_repeated_modules():
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    maps = inside.feature_maps(resnet, x, ["bn1"])
    with torch.no_grad():
        expected = resnet.bn1(resnet.conv1(x))
    torch.testing.assert_close(maps["bn1"], expected)  # ReLU(inplace=True) comes next; the copy keeps the negatives
    assert maps["bn1"].min() < 0
    largenet = cnnlab.get_model("largenet", (3, 32, 32))  # its `pool` runs twice: the last call is kept
    assert inside.feature_maps(largenet, torch.randn(1, 3, 32, 32), ["pool"])["pool"].shape == (1, 10, 5, 5)


def test_layer_weights_pick_the_first_convolution_or_an_mlps_first_layer():
    name, w = inside.layer_weights(cnnlab.get_model("seed-cnn"), (1, 28, 28))
    assert name == "0" and w.shape == (64, 1, 3, 3)
    name, w = inside.layer_weights(cnnlab.get_model("seed-mlp"), (1, 28, 28))
    assert name == "1" and w.shape == (1000, 784)
    pooled = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 10))
    assert inside.layer_weights(pooled, (1, 28, 28)) is None  # its linear layer does not see the image

    class HeadFirst(nn.Module):  # defines its classifier before its convolution
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 10)
            self.conv = nn.Conv2d(1, 8, 3)

        def forward(self, x):
            return self.fc(self.conv(x).mean((2, 3)))

    assert inside.layer_weights(HeadFirst(), (1, 28, 28))[0] == "conv"
    name, w = inside.layer_weights(cnnlab.get_model("seed-cnn"), (1, 28, 28), "3")
    assert w.shape == (128, 64, 3, 3)
    with pytest.raises(UsageError, match="'2' has no convolution or linear weights"):
        inside.layer_weights(cnnlab.get_model("seed-cnn"), (1, 28, 28), "2")


def test_featuremaps_leaves_out_a_convolution_the_forward_pass_never_calls(tmp_path):
    class Unused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.spare = nn.Conv2d(4, 4, 3)  # defined, never called
            self.fc = nn.Linear(4 * 26 * 26, 10)

        def forward(self, x):
            return self.fc(self.conv(x).flatten(1))

    model = Unused()
    x = torch.randn(1, 1, 28, 28)
    assert set(inside.feature_maps(model, x, ["conv", "spare"])) == {"conv"}


def test_filter_figures_draw_the_weights():
    torch.manual_seed(0)
    w = torch.randn(6, 1, 3, 3)
    fig = inside.filter_figure("conv1", w, (1, 28, 28))
    drawn = fig.axes[0].images[0].get_array()
    top = w[0, 0].abs().max()
    np.testing.assert_allclose(drawn[0:3, 0:3], ((w[0, 0] + top) / (2 * top)).numpy(), rtol=1e-6)
    rgb = inside.filter_figure("conv1", torch.randn(4, 3, 5, 5), (3, 32, 32))
    assert rgb.axes[0].images[0].get_array().shape[-1] == 3  # colour filters drawn in colour
    deep = inside.filter_figure("conv2", torch.randn(20, 10, 3, 3), (3, 32, 32))
    assert "rows: filters 1-16, columns: input channels 1-8" in deep.axes[0].get_title()
    units = inside.filter_figure("1", torch.randn(1000, 784), (1, 28, 28))
    assert units.axes[0].images[0].get_array().shape == (4 * 28 + 3 * 2, 16 * 28 + 15 * 2)  # 64 units as images
    assert "hidden units 1-64 as 1x28x28 images" in units.axes[0].get_title()


def png_size(path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


def test_featuremaps_filters_cam_commands(trained_run, tmp_path, capsys):
    run = str(trained_run.path)
    assert main(["featuremaps", run, str(SAMPLE_IMAGE), "--out", str(tmp_path / "fm"), "--channels", "16"]) == 0
    assert sorted(p.name for p in (tmp_path / "fm").iterdir()) == ["chelsea-0.png", "chelsea-3.png"]
    assert min(png_size(tmp_path / "fm" / "chelsea-0.png")) > 50
    assert main(["featuremaps", run, str(SAMPLE_IMAGE), "--out", str(tmp_path / "fm"), "--layer", "2"]) == 0
    assert (tmp_path / "fm" / "chelsea-2.png").exists()
    assert main(["filters", run, "--out", str(tmp_path / "f.png")]) == 0
    assert main(["cam", run, str(SAMPLE_IMAGE), str(SAMPLE_IMAGE), "--class", "Bag", "--out",
                 str(tmp_path / "c.png")]) == 0
    width, height = png_size(tmp_path / "c.png")
    assert width > height / 3 and min(width, height) > 100
    printed = capsys.readouterr().out
    assert f"wrote {tmp_path / 'c.png'}" in printed and f"wrote {tmp_path / 'f.png'}" in printed

    assert main(["featuremaps", run, str(SAMPLE_IMAGE), "--layer", "conv1"]) == 2
    assert "the model has no layer 'conv1'; its convolutions are 0, 3" in capsys.readouterr().err
    assert main(["cam", run, str(SAMPLE_IMAGE), "--class", "Cat"]) == 2
    assert "unknown class 'Cat'; the run's classes are T-shirt/top, Trouser" in capsys.readouterr().err
    assert main(["cam", run, str(SAMPLE_IMAGE), "--layer", "7"]) == 2
    assert "'7' gives (1, 200): choose a convolution layer" in capsys.readouterr().err
    assert main(["cam", run, str(tmp_path / "none.png")]) == 2
    assert "none.png does not exist" in capsys.readouterr().err
    assert main(["featuremaps", run, str(SAMPLE_IMAGE), "--channels", "0"]) == 2
    assert "--channels 0: show at least 1 channel per layer" in capsys.readouterr().err
    assert main(["filters", run, "--out", str(tmp_path / "f.png" / "g.png")]) == 2  # f.png is a file
    assert f"cannot write {tmp_path / 'f.png' / 'g.png'}: {tmp_path / 'f.png'} is a file, not a folder" in (
        capsys.readouterr().err)


def test_cam_for_the_predicted_class_matches_predict(trained_run, tmp_path):
    """The class a map explains by default is the one `predict` puts first."""
    image = tmp_path / "cat.png"
    Image.fromarray(np.asarray(Image.open(SAMPLE_IMAGE).convert("L").resize((28, 28)))).save(image)
    pre = trained_run.preprocess
    x = pre.normalize(pre.load([image]))  # (1, 1, 28, 28)
    cam = grad_cam(trained_run.build_model(), x, "3")
    (prediction,) = cnnlab.predict(trained_run.path, [image], topk=1)
    assert trained_run.classes[int(cam.classes[0])] == prediction.top[0][0]
    assert float(cam.probabilities[0].max()) == pytest.approx(prediction.top[0][1], abs=1e-5)


def test_views_of_an_mlp_run(tmp_path, capsys):
    run = cnnlab.train("seed-mlp", "sample", subset=300, epochs=1, out=tmp_path / "mlp", verbose=False,
                       report=False)
    assert inside.filters(run, out=tmp_path / "units.png").exists()  # the hidden units' weights as images
    assert main(["featuremaps", str(run.path), str(SAMPLE_IMAGE)]) == 2
    assert "the model has no convolution layers; name a layer with --layer" in capsys.readouterr().err
    assert main(["cam", str(run.path), str(SAMPLE_IMAGE)]) == 2
    assert "Grad-CAM needs feature maps (N, channels, height, width) larger than 1x1" in capsys.readouterr().err
    assert main(["filters", str(run.path), "--layer", "3"]) == 2  # the output layer: 1000 features, not pixels
    assert "'3' is a linear layer on 1000 features, not on the 784 pixels of the image" in capsys.readouterr().err


def blank_at_the_last_maps(pixels: int = 64, classes: int = 2) -> nn.Module:
    """conv 1x1 (identity), ReLU, a linear layer with every weight -1 on the flattened maps. At the ReLU,
    alpha = -1 and A >= 0: every weighted sum is <= 0, so the map is blank. At the convolution, before
    the ReLU, the gradient is -1 only where A > 0: alpha = -(share of positive pixels) < 0, and
    alpha * A > 0 where A < 0: evidence there."""
    model = nn.Sequential(nn.Conv2d(1, 1, 1), nn.ReLU(), nn.Flatten(), nn.Linear(pixels, classes))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[0].bias.zero_()
        model[3].weight.fill_(-1.0)
        model[3].bias.zero_()
    return model


def test_cam_command_says_where_its_maps_are_blank(tmp_path, monkeypatch):
    """Each blank tile says so, and the title names the layer that shows the evidence."""
    torch.manual_seed(4)
    x = torch.randn(2, 1, 8, 8)
    trained = SimpleNamespace(classes=["a", "b"], net=blank_at_the_last_maps())
    monkeypatch.setattr(inside, "_model_and_images", lambda *args: (trained, x.sigmoid(), x))
    drawn = []
    monkeypatch.setattr(inside.viz, "save", lambda fig, out: drawn.append(fig) or Path(out))
    inside.cam("run", ["p.png", "q.png"], out=tmp_path / "c.png")
    inside.cam("run", ["p.png", "q.png"], layer="0", out=tmp_path / "c0.png")
    default, at_conv = drawn
    assert default.texts[0].get_text() == ("Grad-CAM at 1 (ReLU, 8x8): where the evidence lies\n"
                                          "no positive evidence here for 2 of 2; --layer 0 finds it for 2")
    why = "no positive evidence at 1:\nevery weighted sum ≤ 0"
    assert [ax.get_xlabel() for ax in default.axes[2:]] == [why, why]
    assert at_conv.texts[0].get_text() == "Grad-CAM at 0 (Conv2d, 8x8): where the evidence lies"
    assert [ax.get_xlabel() for ax in at_conv.axes[2:]] == ["", ""]
