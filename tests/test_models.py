"""The model registry: exact parameter counts of the lectures' networks, and a smoke test of all."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlab.errors import ModelError
from cnnlab.models import get_model, list_models, register_model
from cnnlab.models import registry
from cnnlab.models.famous import famous


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_seed_mlp_is_lecture_001s():
    model = get_model("seed-mlp", (1, 28, 28), 10)
    assert count(model) == 795_010
    assert [count(m) for m in model if isinstance(m, nn.Linear)] == [785_000, 10_010]


def test_seed_cnn_is_lecture_001s_row_by_row():
    model = get_model("seed-cnn", (1, 28, 28), 10)
    assert count(model) == 716_706
    assert [count(m) for m in model if count(m)] == [640, 73_856, 640_200, 2_010]
    shapes = []
    x = torch.zeros(1, 1, 28, 28)
    for layer in model:
        x = layer(x)
        shapes.append(tuple(x.shape[1:]))
    assert shapes == [
        (64, 26, 26), (64, 13, 13), (64, 13, 13), (128, 11, 11), (128, 5, 5), (128, 5, 5),
        (3200,), (200,), (200,), (10,),
    ]


def test_largenet_is_lecture_003s():
    model = get_model("largenet", (3, 32, 32), 10)
    assert model.fc1.in_features == 10 * 5 * 5
    assert count(model) == 380 + 1_260 + 8_032 + 330  # conv1, conv2, fc1, fc2 with 10 outputs
    assert count(get_model("largenet", (3, 32, 32), 2)) == 9_705 - 33 + 66  # the lecture's 9,705 had 1 output


def test_models_adapt_to_other_inputs():
    assert get_model("seed-cnn", (3, 32, 32), 10)[7].in_features == 128 * 6 * 6
    assert count(get_model("seed-mlp", (3, 32, 32), 2)) == 3072 * 1000 + 1000 + 1000 * 2 + 2


def test_small_cnns_are_small():
    assert count(get_model("small-cnn-28", (1, 28, 28), 10)) == 94_186
    assert count(get_model("small-cnn-32", (3, 32, 32), 10)) == 288_746
    # convs 1*16*9 + 16*32*9 + 32*64*9, batch norms 2 * (16 + 32 + 64), linear 64*10 + 10
    assert count(get_model("fast-cnn-28", (1, 28, 28), 10)) == 144 + 4608 + 18432 + 224 + 650 == 24_058
    # small-cnn-28's layers plus a second conv-BN per block: 32*32*9 + 64*64*9 + 128*128*9 + 2 * (32 + 64 + 128)
    assert count(get_model("fast-cnn-28-wide", (1, 28, 28), 10)) == 94_186 + 193_536 + 448 == 288_170
    assert count(get_model("small-cnn-28")) < count(get_model("seed-cnn")) / 7
    # convs 1*16*9 + 16*32*9 + 32*96*9, batch norms 2 * (16 + 32 + 96), linear over the 4x4 map 96*16*10 + 10
    assert count(get_model("strided-cnn-28", (1, 28, 28), 10)) == 144 + 4608 + 27648 + 288 + 15370 == 48_058
    # a stem conv-BN (3*24*9 + 48) before fast-cnn-28-wide's blocks, whose first conv takes 24 channels, not 1
    assert count(get_model("fast-cnn-32", (3, 32, 32), 10)) == 648 + 48 + 288_170 + 23 * 32 * 9 == 295_490
    # stem 3*32*9 + 64; per block conv-BN twice (32->64->64, 64->128->128, 128->256->256); linear 256*10 + 10
    wide = 864 + 64 + (18_432 + 36_864 + 256) + (73_728 + 147_456 + 512) + (294_912 + 589_824 + 1024) + 2570
    assert count(get_model("fast-cnn-32-wide", (3, 32, 32), 10)) == wide == 1_166_506


FAMOUS_SHAPE = (3, 64, 64)  # colour, and large enough for AlexNet's strides (63 or more)


def _smoke_cases() -> list[tuple[str, tuple[int, int, int]]]:
    """Every registered model on MNIST's and CIFAR-10's shapes; the famous colour networks on colour inputs."""
    return [(name, shape) for name in list_models()
            for shape in ([FAMOUS_SHAPE] if famous(name) else [(1, 28, 28), (3, 32, 32)])]


@pytest.mark.parametrize(("name", "shape"), _smoke_cases())
def test_every_registered_model(name, shape):
    """Output shape, finite values, and a gradient that reaches every parameter."""
    torch.manual_seed(0)
    model = get_model(name, shape, num_classes=7)
    x = torch.randn(4, *shape)
    y = model(x)
    assert y.shape == (4, 7)
    assert torch.isfinite(y).all()
    nn.functional.cross_entropy(y, torch.arange(4)).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches {pname}"


def test_too_small_input_is_a_clear_error():
    with pytest.raises(ModelError, match=r"'seed-cnn' cannot take 1x8x8 inputs"):
        get_model("seed-cnn", (1, 8, 8), 10)


def test_unknown_model_suggests_close_names():
    with pytest.raises(ModelError, match=r"unknown model 'seed_cnn'\. Did you mean seed-cnn"):
        get_model("seed_cnn")


def test_duplicate_registration_raises(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_model("test-only-net")
    def net(input_shape, num_classes):
        return nn.Sequential(nn.Flatten(), nn.Linear(784, num_classes))

    assert "test-only-net" in list_models()
    with pytest.raises(ModelError, match="already registered"):
        register_model("test-only-net")(net)
    with pytest.raises(ModelError, match="already registered"):
        register_model("seed-cnn")(net)


def test_wrong_output_size_is_caught(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    register_model("test-bad-head")(lambda shape, k: nn.Sequential(nn.Flatten(), nn.Linear(784, k + 1)))
    with pytest.raises(ModelError, match=r"outputs of shape \(11,\), expected \(10,\)"):
        get_model("test-bad-head")


@pytest.mark.parametrize("argv", [["--classes", "99999999999"], ["--input", "1x99999x99999"]])
def test_a_model_too_large_for_memory_is_a_clear_error(capsys, argv):
    from cnnlab.cli.main import main

    assert main(["summary", "seed-cnn", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model 'seed-cnn' for ") and "needs more memory than this machine has" in err
