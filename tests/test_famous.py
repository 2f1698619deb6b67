"""The famous ImageNet networks in the summary: exact totals, their heads, residual additions as rows,
VGG's and AlexNet's stages, frozen backbones, and the colour-only error.

Every network is built on the meta device (shapes, no weights), so the file takes seconds: VGG16's
138 M weights would take that long just to initialize.
"""

from __future__ import annotations

import re

import pytest
import torch
import torchinfo
from torch import nn

from cnnlab.cli.main import main
from cnnlab.errors import ArchitectureError
from cnnlab.inspect.summary import Summary, summarize, summary
from cnnlab.models import get_model
from cnnlab.models.famous import FAMOUS
from cnnlab.views.formatting import summary_rows, summary_table

IMAGENET = {  # parameters with ImageNet's 1,000-class head, as the papers' torchvision/timm builds count them
    "alexnet": 61_100_840, "vgg11": 132_863_336, "vgg16": 138_357_544, "resnet18": 11_689_512,
    "resnet50": 25_557_032, "mobilenet-v3-small": 2_542_856, "efficientnet-lite0": 4_652_008,
}
RESIDUALS = {"alexnet": 0, "vgg11": 0, "vgg16": 0, "resnet18": 8, "resnet50": 16, "mobilenet-v3-small": 6,
             "efficientnet-lite0": 9}
SHAPE = (3, 224, 224)


def needs(name: str) -> None:
    if name == "efficientnet-lite0":
        pytest.importorskip("timm")  # cnnlab[pretrained]


def meta_model(name: str, classes: int = 1000) -> nn.Module:
    """get_model's network with no weights in memory: parameters on the meta device."""
    needs(name)
    with torch.device("meta"):
        return get_model(name, SHAPE, classes)


_SUMMARIES: dict[str, Summary] = {}


def imagenet_summary(name: str) -> Summary:
    """summary(name) with ImageNet's head, made once per network for the tests below."""
    needs(name)
    if name not in _SUMMARIES:
        _SUMMARIES[name] = summary(name, num_classes=1000)
    return _SUMMARIES[name]


@pytest.mark.parametrize("name", IMAGENET)
def test_imagenet_totals_are_exact(name):
    assert sum(p.numel() for p in meta_model(name).parameters()) == IMAGENET[name]
    s = imagenet_summary(name)
    assert (s.total_params, s.trainable_params, s.frozen_params) == (IMAGENET[name], IMAGENET[name], 0)
    assert s.input_shape == SHAPE and s.output_shape == (1000,)
    for depth in (1, 2, 3, 4):  # the params column adds up to the total however deep the table goes
        assert sum(row["params"] or 0 for row in summary_rows(s, depth)) == IMAGENET[name]
    assert f"Parameters: {IMAGENET[name]:,}" in summary_table(s)


@pytest.mark.parametrize("name", IMAGENET)
def test_a_dataset_replaces_the_imagenet_head(name):
    model = meta_model(name, 10)
    head = model.get_submodule(FAMOUS[name].head)
    assert isinstance(head, nn.Linear) and head.out_features == 10
    imagenet_head = head.in_features * 1000 + 1000
    assert sum(p.numel() for p in model.parameters()) == IMAGENET[name] - imagenet_head + head.in_features * 10 + 10
    assert summary(name).output_shape == (10,)  # the CLI's default: 10 classes


def test_resnet18_with_ten_classes():
    assert summary("resnet18", num_classes=10).total_params == 11_689_512 - 513_000 + 5_130 == 11_181_642


@pytest.mark.parametrize("name", IMAGENET)
def test_residual_additions_are_rows(name):
    s = imagenet_summary(name)
    adds = [r for r in s.rows if not r.module]
    assert len(adds) == RESIDUALS[name]
    for r in adds:  # a sum of two branches of one shape: no parameters, its field the wider branch's
        assert r.kind == "add" and r.name.endswith(" + residual") and r.params == r.mult_adds == 0
        assert r.out_shape == r.in_shape and r.receptive == max(r.branch_receptive, key=float)


def test_resnet18_residual_rows_shapes_and_receptive_fields():
    s = imagenet_summary("resnet18")
    adds = [(r.name, r.out_shape, r.receptive, r.jump) for r in s.rows if r.kind == "add"]
    assert adds == [
        ("layer1.0 + residual", (64, 56, 56), "27", "4"), ("layer1.1 + residual", (64, 56, 56), "43", "4"),
        ("layer2.0 + residual", (128, 28, 28), "67", "8"), ("layer2.1 + residual", (128, 28, 28), "99", "8"),
        ("layer3.0 + residual", (256, 14, 14), "147", "16"), ("layer3.1 + residual", (256, 14, 14), "211", "16"),
        ("layer4.0 + residual", (512, 7, 7), "307", "32"), ("layer4.1 + residual", (512, 7, 7), "435", "32"),
    ]
    names = [r.name for r in s.rows]
    at = names.index("layer1.0 + residual")  # after the block's last batch norm, before its second ReLU
    assert names[at - 1:at + 2] == ["layer1.0.bn2", "layer1.0 + residual", "layer1.0.relu"]
    assert [r.branch_receptive for r in s.rows if r.kind == "add"][:3] == [["27", "11"], ["43", "27"], ["67", "43"]]
    text = summary_table(s)
    assert re.search(r"\n +12 +layer1\.0 \+ residual +add +64x56x56 +- +- +27 +4 +784\.00 KiB\n", text)
    assert "layer1.0 + residual" not in summary_table(s, depth=2)  # folded into its block with the block's layers
    explained = summary_table(s, explain=True)
    assert ("layer1.0 + residual  add  64x56x56 + 64x56x56 -> 64x56x56\n"
            "    elementwise sum of two 64x56x56 tensors: 200,704 additions per image, no multiplications "
            "(no mult-adds), no parameters\n    RF = max(27, 11) = 27  (the wider of the two branches)") in explained
    assert "layer1.0.relu (call 2)  ReLU(inplace=True)" in explained


def test_mobile_networks_skip_connections_and_gates():
    s = imagenet_summary("mobilenet-v3-small")  # torchvision's InvertedResidual: result += input
    assert [r.name for r in s.rows if r.kind == "add"][:2] == ["features.3 + residual", "features.5 + residual"]
    # squeeze-and-excitation scales channels by weights pooled from the whole image; the field stays the maps'
    assert [r.receptive for r in s.shown(2) if r.name in ("features.1", "features.11")] == ["7", "639"]
    assert any("9 squeeze-and-excitation gates" in note for note in s.shared)
    lite = imagenet_summary("efficientnet-lite0")  # timm's blocks: x = drop_path(x) + shortcut
    assert [(r.name, r.out_shape) for r in lite.rows if r.kind == "add"][0] == ("blocks.1.1 + residual", (24, 56, 56))
    bn = next(r for r in lite.shown(1) if r.name == "bn1")  # timm's BatchNormAct2d: its own weights, shown
    assert (bn.kind, bn.params) == ("BatchNormAct2d", 64)
    assert re.search(r"\n +2 +bn1 +BatchNormAct2d +32x112x112 +64 +64 ", summary_table(lite, depth=3))


def test_alexnet_features_and_vgg_blocks():
    alexnet = imagenet_summary("alexnet")
    features = next(r for r in alexnet.rows if r.name == "features")
    assert features.out_shape == (256, 6, 6) and (features.receptive, features.jump) == ("195", "32")
    assert re.search(r"\n +1 +features +Sequential +256x6x6 ", summary_table(alexnet))
    vgg = imagenet_summary("vgg16")  # five blocks of 3x3 convolutions, each closed by a 2x2 max pooling
    pools = [(r.out_shape, r.jump) for r in vgg.rows if r.kind == "MaxPool2d"]
    assert pools == [((64, 112, 112), "2"), ((128, 56, 56), "4"), ((256, 28, 28), "8"), ((512, 14, 14), "16"),
                     ((512, 7, 7), "32")]
    assert sum(r.kind == "Conv2d" for r in vgg.rows) == 13 and vgg.mult_adds == 15_483_821_032


@pytest.mark.parametrize("name", ["alexnet", "resnet18", "resnet50", "mobilenet-v3-small", "efficientnet-lite0"])
def test_shapes_and_counts_match_a_real_pass_and_torchinfo(name):
    """On 3x64x64, weights allocated and zeroed, not initialized (VGG's plain chain adds nothing here but
    seconds: test_summary checks sequential models)."""
    model = meta_model(name, 10).to_empty(device="cpu")
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            t.zero_()
    s = summarize(model, (3, 64, 64))
    info = torchinfo.summary(model, input_size=(1, 3, 64, 64), verbose=0)  # a real pass, every layer's output
    names = {m: n for n, m in model.named_modules()}
    real = [(names[layer.module], tuple(layer.output_size[1:])) for layer in info.summary_list if layer.is_leaf_layer]
    assert [(r.name, r.out_shape) for r in s.rows if r.leaf and r.module] == real
    # torchinfo adds up leaf modules only, cnnlab also what a module does beside its children (BatchNormAct2d)
    own = sum(r.mult_adds - sum(c.mult_adds for c in r.children) for r in s.rows if not r.leaf)
    assert (s.total_params, s.mult_adds) == (info.total_params, info.total_mult_adds + own)


def test_a_frozen_backbone_is_marked_and_counted():
    model = meta_model("resnet18", 10)
    for name, p in model.named_parameters():
        p.requires_grad = name.startswith("fc.")  # the head trains, the backbone is frozen
    s = summarize(model, SHAPE, name="resnet18")
    assert (s.trainable_params, s.frozen_params) == (5_130, 11_176_512)
    assert s.trainable_params == sum(p.numel() for p in model.fc.parameters())
    rows = {r.name: r for r in s.rows if r.module}
    assert rows["fc"].frozen == 0 and rows["conv1"].frozen == rows["conv1"].params == 9_408
    text = summary_table(s, depth=1)
    assert "trainable" in text.splitlines()[2].split()  # the column appears when something is frozen
    for row in (r"conv1 +Conv2d +64x112x112 +7x7 /2 p3 +9,408 +no ", r"layer4 +Sequential +512x7x7 +8,393,728 +no ",
                r"relu +ReLU +64x112x112 +- +- ", r"fc +Linear +10 +5,130 +yes +5,130 "):
        assert re.search(rf"\n +\d+ +{row}", text), row
    assert "Parameters: 11,181,642 (11.18 M): trainable 5,130, frozen 11,176,512" in text.splitlines()
    assert "trainable" not in summary_table(imagenet_summary("resnet18")).splitlines()[2]  # nothing frozen: no column


def test_one_channel_input_is_refused_clearly(capsys):
    with pytest.raises(ArchitectureError, match=r"takes 3-channel \(colour\) images, not 1"):
        summary("resnet18", "1x224x224")
    assert main(["summary", "vgg16", "--input", "1x224x224"]) == 2
    err = capsys.readouterr().err
    assert "vgg16 takes 3-channel (colour) images, not 1" in err and "Traceback" not in err
