"""Grad-CAM: the formula by hand, and the same maps as the grad-cam package (pytorch_grad_cam)."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

import cnnlab
from cnnlab.inspect import inside
from cnnlab.inspect.cam import grad_cam
from cnnlab.errors import UsageError
from test_inside import blank_at_the_last_maps

pytorch_grad_cam = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402


def package_cam(model: nn.Module, x: torch.Tensor, layer: str, targets: list[int] | None) -> torch.Tensor:
    """pytorch_grad_cam.GradCAM's maps (N, H, W) for the module named `layer`."""
    module = dict(model.named_modules())[layer]
    with pytorch_grad_cam.GradCAM(model=model, target_layers=[module]) as cam:
        wanted = None if targets is None else [ClassifierOutputTarget(t) for t in targets]
        return torch.from_numpy(cam(input_tensor=x, targets=wanted))


def cases():
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(num_classes=10)  # batch norm, ReLU(inplace=True), residual additions
    return {
        "seed-cnn 1x28x28": (cnnlab.get_model("seed-cnn", (1, 28, 28)), "3", torch.randn(4, 1, 28, 28)),
        "largenet 3x32x32": (cnnlab.get_model("largenet", (3, 32, 32)), "conv2", torch.randn(4, 3, 32, 32)),
        "resnet18 layer4": (resnet, "layer4", torch.randn(3, 3, 64, 64)),
        "resnet18 layer3.1.conv2": (resnet, "layer3.1.conv2", torch.randn(3, 3, 64, 64)),
    }


@pytest.mark.parametrize("name", list(cases()))
@pytest.mark.parametrize("targets", [None, [3]])
def test_same_maps_as_the_grad_cam_package(name, targets):
    model, layer, x = cases()[name]
    model.eval()
    ours = grad_cam(model, x, layer, None if targets is None else targets[0])
    theirs = package_cam(model, x, layer, None if targets is None else targets * len(x))
    assert ours.maps.shape == theirs.shape == (len(x), *x.shape[-2:])
    # The package scales at the layer's size, resizes with OpenCV and scales again; scaling commutes with
    # bilinear resizing, so only float rounding separates the two.
    torch.testing.assert_close(ours.maps, theirs, atol=2e-5, rtol=0)
    assert ours.maps.amax(dim=(1, 2)).tolist() == pytest.approx([1.0] * len(x), abs=1e-6)
    if targets is None:
        assert ours.classes.tolist() == model(x).argmax(1).tolist()
    else:
        assert ours.classes.tolist() == targets * len(x)


def test_the_default_layer_is_the_last_one_with_feature_maps():
    """After the last convolution's pooling and ReLU, as Grad-CAM is meant to be used."""
    torch.manual_seed(2)
    seed_cnn = cnnlab.get_model("seed-cnn", (1, 28, 28)).eval()
    x = torch.randn(3, 1, 28, 28)
    cam = grad_cam(seed_cnn, x)
    assert cam.layer == "5" and cam.raw.shape == (3, 5, 5)  # ReLU after the second max-pool, 128x5x5
    torch.testing.assert_close(cam.maps, package_cam(seed_cnn, x, "5", None), atol=2e-5, rtol=0)
    resnet = torchvision.models.resnet18(num_classes=10).eval()
    assert grad_cam(resnet, torch.randn(1, 3, 64, 64)).layer == "layer4"  # what the package's README picks
    small = cnnlab.get_model("small-cnn-28", (1, 28, 28)).eval()  # global average pooling (1x1) is passed over
    small_cam = grad_cam(small, torch.randn(2, 1, 28, 28))
    assert small_cam.layer == "11" and small_cam.raw.shape[1:] == (3, 3)  # the last max-pool, before the 1x1
    largenet = cnnlab.get_model("largenet", (3, 32, 32)).eval()  # `pool` runs twice: its last call, 10x5x5
    cam = grad_cam(largenet, torch.randn(2, 3, 32, 32))
    assert cam.layer == "pool" and cam.raw.shape == (2, 5, 5)
    with pytest.raises(UsageError, match="larger than 1x1, and no layer of this model gives them"):
        grad_cam(cnnlab.get_model("seed-mlp", (1, 28, 28)), x)
    whole = cnnlab.build("conv(16,28) relu flatten linear(10)", "1x28x28")  # a convolution over the whole image
    with pytest.raises(UsageError, match="larger than 1x1"):
        grad_cam(whole, x)
    with pytest.raises(UsageError, match="no layer 'conv9'"):
        grad_cam(seed_cnn, x, "conv9")


def test_raw_map_is_the_formula():
    """ReLU(sum_k alpha_k A_k) with alpha_k the mean over (h, w) of dScore/dA_k, split by hand at the layer."""
    torch.manual_seed(1)
    model = cnnlab.get_model("seed-cnn", (1, 28, 28)).eval()
    x = torch.randn(2, 1, 28, 28)
    cam = grad_cam(model, x, "3", target=torch.tensor([7, 2]))
    features, head = model[:4], model[4:]
    for i, c in enumerate([7, 2]):
        a = features(x[i: i + 1]).detach().requires_grad_(True)  # (1, 128, 11, 11)
        (g,) = torch.autograd.grad(head(a)[0, c], a)
        expected = torch.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(1))[0]  # (11, 11)
        torch.testing.assert_close(cam.raw[i], expected.detach(), atol=1e-6, rtol=1e-5)
    assert cam.classes.tolist() == [7, 2]
    torch.testing.assert_close(cam.probabilities, model(x).softmax(1).detach())


def test_frozen_weights_training_mode_and_wrong_layers():
    model = cnnlab.get_model("largenet", (3, 32, 32))
    for p in model.parameters():
        p.requires_grad_(False)  # a frozen network (transfer learning) still has gradients at its layers
    model.train()
    cam = grad_cam(model, torch.randn(2, 3, 32, 32), "conv1")
    assert cam.maps.shape == (2, 32, 32) and cam.raw.shape == (2, 28, 28)
    assert model.training  # restored after the eval-mode pass
    with pytest.raises(UsageError, match=r"'fc1' gives \(2, 32\): choose a convolution layer"):
        grad_cam(model, torch.randn(2, 3, 32, 32), "fc1")


class Pair(nn.Module):
    """A block that returns a tuple, as attention and recurrent layers do."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x):
        y = self.conv(x)
        return y, y.mean()


class TupleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pair = Pair()
        self.head = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        maps, _ = self.pair(x)
        return self.head(torch.relu(maps).flatten(1))


def test_a_layer_that_returns_a_tuple_is_explained_at_its_first_tensor():
    torch.manual_seed(3)
    model = TupleNet()
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(grad_cam(model, x, "pair").raw, grad_cam(model, x, "pair.conv").raw)


def test_a_map_with_no_positive_evidence_is_zero():
    """All-negative weighted sums: ReLU leaves nothing, and the map is 0, not 0/0."""
    model = nn.Sequential(nn.Conv2d(1, 1, 3), nn.Flatten(), nn.Linear(36, 2))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[0].bias.zero_()
        model[2].weight.fill_(-1.0)
        model[2].weight[1].fill_(1.0)  # class 1: every weight +1, every weighted sum > 0
    cam = grad_cam(model, torch.ones(1, 1, 8, 8), "0", target=0)
    assert torch.equal(cam.maps, torch.zeros(1, 8, 8)) and torch.equal(cam.raw, torch.zeros(1, 6, 6))
    assert cam.empty.tolist() == [True]
    assert grad_cam(model, torch.ones(1, 1, 8, 8), "0", target=1).empty.tolist() == [False]


def test_blank_maps_are_flagged_and_an_earlier_convolution_shows_the_evidence():
    torch.manual_seed(4)
    model, x = blank_at_the_last_maps(), torch.randn(3, 1, 8, 8)  # each image has pixels of both signs
    last = grad_cam(model, x)
    assert last.layer == "1" and last.empty.tolist() == [True, True, True]
    torch.testing.assert_close(last.maps, package_cam(model, x, "1", None), atol=2e-5, rtol=0)  # both blank
    conv = grad_cam(model, x, "0")
    assert conv.empty.tolist() == [False, False, False]
    share = (x > 0).float().mean(dim=(1, 2, 3))  # (N,)
    torch.testing.assert_close(conv.raw, share[:, None, None] * torch.relu(-x[:, 0]))
    default, shown = inside.evident_cam(model, x)
    assert default.layer == "1" and shown.layer == "0" and not shown.empty.any()
    fig = inside.cam_figure(model, default, x.sigmoid(), ["a", "b"])
    maps = fig.axes[3:]  # the bottom row
    assert [ax.get_xlabel() for ax in maps] == ["no positive evidence at 1:\nevery weighted sum ≤ 0"] * 3
    assert all(len(ax.images) == 1 for ax in maps)  # the image alone: no heat map laid over it
    fig = inside.cam_figure(model, shown, x.sigmoid(), ["a", "b"])
    assert [ax.get_xlabel() for ax in fig.axes[3:]] == [""] * 3 and all(len(ax.images) == 2 for ax in fig.axes[3:])


def test_evident_cam_keeps_the_last_maps_where_most_show_evidence():
    torch.manual_seed(0)
    model, x = cnnlab.get_model("seed-cnn", (1, 28, 28)).eval(), torch.randn(4, 1, 28, 28)
    default, shown = inside.evident_cam(model, x)
    assert shown is default and default.layer == "5" and not default.empty.any()
    no_conv = nn.Sequential(nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(16, 2))  # nothing earlier to try
    with torch.no_grad():
        no_conv[3].weight.fill_(-1.0)
    default, shown = inside.evident_cam(no_conv, x[:, :, :8, :8])
    assert shown is default and default.layer == "1" and default.empty.all()
