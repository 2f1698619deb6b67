"""The summary: shapes equal a real forward pass, totals equal torchinfo's, and printed tables are golden."""

from __future__ import annotations

import sys
import textwrap
import warnings

import pytest
import torch
import torchinfo
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from cnnlab import build, list_models
from cnnlab.errors import ArchitectureError, ArchitectureWarning, ModelError, UsageError
from cnnlab.views.formatting import nbytes, summary_table
from cnnlab.models import model_info
from cnnlab.models.famous import famous
from cnnlab.inspect.summary import summarize, summary

LECTURE_CNN = "conv(64,3) maxpool(2) relu conv(128,3) maxpool(2) relu flatten linear(200) relu linear(10)"


def real_shapes(model: nn.Module, shape: tuple[int, ...]) -> list[tuple[str, tuple[int, ...]]]:
    """(name, output shape) of every leaf module call in a real forward pass."""
    seen: list[tuple[str, tuple[int, ...]]] = []
    names = {m: n for n, m in model.named_modules()}
    hooks = [m.register_forward_hook(lambda m, a, o: seen.append((names[m], tuple(o.shape[1:]))))
             for m in model.modules() if not list(m.children())]
    model.eval()
    with torch.no_grad():
        model(torch.randn(2, *shape))
    for h in hooks:
        h.remove()
    return seen


def check_parity(model: nn.Module, shape: tuple[int, ...], mult_adds: bool = True) -> None:
    s = summarize(model, shape)
    assert [(r.name, r.out_shape) for r in s.rows if r.leaf and r.module] == real_shapes(model, shape)
    info = torchinfo.summary(model, input_size=(1, *shape), verbose=0)
    assert (s.total_params, s.trainable_params) == (info.total_params, info.trainable_params)
    if mult_adds:
        # torchinfo adds up leaf modules only; cnnlab also counts a module's own work beside its children
        # (timm's BatchNormAct2d: a batch norm that calls its activation module)
        own = sum(r.mult_adds - sum(c.mult_adds for c in r.children) for r in s.rows if not r.leaf)
        assert s.mult_adds == info.total_mult_adds + own


# The famous ImageNet networks are checked in test_famous.py, each built once.
@pytest.mark.parametrize("name", [n for n in list_models() if famous(n) is None])
def test_every_registered_model_matches_a_forward_pass_and_torchinfo(name):
    shape = model_info(name).input_shape
    check_parity(build_registered(name, shape), shape)


def build_registered(name: str, shape: tuple[int, ...]) -> nn.Module:
    from cnnlab.models import get_model

    return get_model(name, shape, 10)


def test_resnet_parity_and_receptive_field():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(num_classes=10)
    check_parity(model, (3, 64, 64))
    s = summarize(model, (3, 64, 64))
    last_conv = [r for r in s.rows if r.kind == "Conv2d"][-1]
    assert last_conv.name == "layer4.1.conv2" and (last_conv.receptive, last_conv.jump) == ("435", "32")


@st.composite
def layer_text(draw: st.DrawFn, channels: int) -> str:
    kind = draw(st.sampled_from(["conv", "conv", "maxpool", "avgpool", "batchnorm", "relu", "convtranspose",
                                 "dropout2d", "adaptiveavgpool", "leakyrelu"]))
    if kind in ("conv", "convtranspose"):
        groups = draw(st.sampled_from([g for g in (1, 2, 3) if channels % g == 0]))
        args = [groups * draw(st.integers(1, 6)), draw(st.integers(1, 5))]
        args += [f"stride={draw(st.integers(1, 3))}", f"padding={draw(st.integers(0, 2))}",
                 f"dilation={draw(st.integers(1, 2))}", f"groups={groups}", f"bias={str(draw(st.booleans())).lower()}"]
        return f"{kind}({','.join(map(str, args))})"
    if kind in ("maxpool", "avgpool"):
        k = draw(st.integers(1, 4))
        return (f"{kind}({k},stride={draw(st.integers(1, 4))},padding={draw(st.integers(0, k // 2))},"
                f"ceil_mode={str(draw(st.booleans())).lower()})")
    if kind == "adaptiveavgpool":
        return f"adaptiveavgpool({draw(st.integers(1, 3))})"
    return kind


@st.composite
def valid_specs(draw: st.DrawFn) -> tuple[str, tuple[int, int, int]]:
    """A random spec that works on a random input shape: layers that cannot work are drawn again."""
    from cnnlab.models.spec import walk

    input_shape = (draw(st.sampled_from([1, 3])), draw(st.integers(6, 40)), draw(st.integers(6, 40)))
    layers: list[str] = []
    shape = input_shape
    for _ in range(draw(st.integers(1, 6))):
        candidate = draw(layer_text(shape[0]))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ArchitectureWarning)
                new = walk(" ".join([*layers, candidate]), input_shape)[-1].math.out_shape
        except ArchitectureError:
            continue
        if max(new[1:]) <= 64:  # transposed convolutions grow the input; keep the test fast
            layers.append(candidate)
            shape = new
    layers += ["flatten", f"linear({draw(st.integers(1, 20))})"]
    if draw(st.booleans()):
        layers += ["relu", "dropout", "linear(3)"]
    return " ".join(layers), input_shape


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_specs())
def test_random_specs_match_a_forward_pass_and_torchinfo(case):
    text, shape = case
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ArchitectureWarning)
        model = build(text, shape)
    # torchinfo counts a transposed convolution's mult-adds per output position; cnnlab per input position
    check_parity(model, shape, mult_adds="convtranspose" not in text)


def test_lecture_cnn_rows_formulas_and_receptive_field():
    s = summary(LECTURE_CNN, "1x28x28")
    assert s.total_params == 716_706 and s.frozen_params == 0
    assert [r.params for r in s.rows if r.params and r.depth == 1] == [640, 73_856, 640_200, 2_010]
    assert [(r.receptive, r.jump) for r in s.rows if r.kind == "MaxPool2d"] == [("4", "2"), ("10", "4")]
    assert s.rows[-1].receptive == "all"
    conv1 = s.rows[1]
    assert [str(step) for step in conv1.math.steps] == [
        "H_out = floor((28 + 2*0 - 1*(3-1) - 1)/1) + 1 = 26", "W_out = floor((28 + 2*0 - 1*(3-1) - 1)/1) + 1 = 26",
        "params = 64*(1*3*3) + 64 = 640"]
    assert s.param_bytes == 716_706 * 4 and s.input_bytes == 28 * 28 * 4


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 1, 3, padding=1), nn.Conv2d(1, 1, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.b(self.relu(self.a(x))) + x)  # relu called twice; a functional add


def test_receptive_field_through_a_residual_add_and_a_reused_module():
    s = summarize(Residual(), (1, 16, 16))
    rows = {(r.name, r.call): r for r in s.rows}
    assert rows[("b", 1)].receptive == "5" and rows[("relu", 2)].receptive == "5"  # the widest branch
    assert rows[("relu", 2)].params == 0 and s.total_params == 20
    assert "relu (call 2)" in summary_table(s)
    add = rows[("+ residual", 1)]  # the addition in the model's own forward, between b and relu's second call
    assert [r.name for r in s.rows][3:6] == ["b", "+ residual", "relu"]
    assert (add.kind, add.module, add.depth, add.out_shape) == ("add", False, 1, (1, 16, 16))
    assert add.params == add.mult_adds == 0
    assert (add.receptive, add.branch_receptive, add.out_bytes) == ("5", ["5", "1"], 16 * 16 * 4)
    explained = summary_table(s, explain=True)
    assert ("+ residual  add  1x16x16 + 1x16x16 -> 1x16x16\n    elementwise sum of two 1x16x16 tensors: 256 additions "
            "per image, no multiplications (no mult-adds), no parameters\n    RF = max(5, 1) = 5") in explained
    assert "relu (call 2)  ReLU()" in explained


class Offsets(nn.Module):
    """Sums that are no residual: a constant, a parameter, a broadcast; and one inside a leaf module's forward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.shift = nn.Conv2d(1, 2, 3, padding=1), nn.Parameter(torch.zeros(2, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)  # (N, 2, H, W)
        return (y + 1) + self.shift + y.mean(dim=1, keepdim=True)


def test_only_sums_of_two_same_shape_branches_are_residual_rows():
    assert [r.kind for r in summarize(Offsets(), (1, 8, 8)).rows] == ["Offsets", "Conv2d"]
    assert all(r.module for r in summary(LECTURE_CNN, "1x28x28").rows)


class Functional(nn.Module):
    """A LeNet-style model that pools with torch.nn.functional."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.fc = nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3), nn.Linear(4 * 5 * 5, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(nn.functional.relu(self.c1(x)), 2)
        x = nn.functional.max_pool2d(nn.functional.relu(self.c2(x)), 2)
        return self.fc(x.flatten(1))


def test_receptive_field_through_functional_pooling_and_upsampling():
    s = summarize(Functional(), (1, 28, 28))
    rows = {r.name: r for r in s.rows}
    assert (rows["c2"].receptive, rows["c2"].jump) == ("8", "2") and rows["fc"].receptive == "all"
    up = summary("avgpool(2) avgpool(2) convtranspose(4,2,stride=2) convtranspose(4,2,stride=2)", "1x64x64")
    assert [(r.receptive, r.jump) for r in up.rows[1:]] == [("2", "2"), ("4", "4"), ("4", "2"), ("4", "1")]
    mobilenet = summarize(pytest.importorskip("torchvision").models.mobilenet_v2(), (3, 64, 64))
    assert next(r for r in mobilenet.rows if r.name == "classifier.1").receptive == "all"  # after F.adaptive_avg_pool2d


def test_models_in_other_precisions():
    model = build("conv(4,3) relu flatten linear(10)", "1x8x8").double()
    s = summarize(model, (1, 8, 8))
    assert s.input_bytes == 64 * 8 and s.param_bytes == s.total_params * 8 and s.output_shape == (10,)


def test_layers_without_formulas_count_mult_adds_as_torchinfo_does():
    model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.GroupNorm(2, 4), nn.Flatten(), nn.Linear(4 * 14, 3))
    s = summarize(model, (2, 16))
    info = torchinfo.summary(model, input_size=(1, 2, 16), verbose=0)
    assert (s.total_params, s.mult_adds) == (info.total_params, info.total_mult_adds)


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encode, self.decode, self.unused = nn.Linear(8, 4, bias=False), nn.Linear(4, 8, bias=False), nn.Linear(2, 2)
        self.decode.weight = nn.Parameter(self.encode.weight.t())  # replaced below by the very same tensor
        self.decode.weight = self.encode.weight  # (4, 8) used as (8, 4)^T in forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(self.encode(x), self.decode.weight.t())


def test_shared_and_unused_parameters_are_counted_once_with_a_note():
    s = summarize(Tied(), (8,))
    assert s.total_params == 32 + 6  # the tied weight once, plus the unused layer
    text = summary_table(s)
    assert "encode.weight = decode.weight: one tensor of 32 values, counted once" in text
    assert "6 parameters belong to modules the forward pass does not call" in text


def test_frozen_parameters():
    model = build(LECTURE_CNN, "1x28x28")
    for p in model.conv1.parameters():
        p.requires_grad = False
    s = summarize(model, (1, 28, 28))
    assert (s.frozen_params, s.trainable_params) == (640, 716_066)
    lines = summary_table(s).splitlines()
    assert "trainable" in lines[2]
    assert lines[4].split()[-7:-5] == ["640", "no"] and lines[7].split()[-7:-5] == ["73,856", "yes"]
    assert "Parameters: 716,706 (716.71 k): trainable 716,066, frozen 640" in lines
    model.conv2.bias.requires_grad = False
    assert "73,728 of 73,856" in summary_table(summarize(model, (1, 28, 28)))


def test_batchnorm_buffers_are_not_parameters():
    s = summary("conv(8,3) batchnorm relu flatten linear(10)", "1x8x8")
    assert s.total_params == 80 + 16 + 8 * 6 * 6 * 10 + 10 and s.buffers == 17 and s.buffer_bytes == 16 * 4 + 8


def test_depth_collapses_nested_modules():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18()
    s = summarize(model, (3, 64, 64))
    shallow = s.shown(1)
    assert [r.name for r in shallow][:5] == ["conv1", "bn1", "relu", "maxpool", "layer1"]
    assert sum(r.params for r in shallow) == s.total_params
    assert sum(r.mult_adds for r in shallow) == s.mult_adds


@pytest.mark.parametrize("module,message", [
    (nn.Sequential(nn.Conv2d(1, 8, 3), nn.Flatten(), nn.Linear(3000, 10)),
     r"layer 2 \(Linear\) on input 5408: Linear expects in_features=3000 but its input has 5408 features\n"
     r"  Fix: Linear\(5408, 10\)"),
    (nn.Sequential(nn.Conv2d(3, 8, 3)), r"(?s)layer 0 \(Conv2d\).*in_channels=1"),
    (nn.Sequential(nn.Conv2d(1, 8, 3), nn.MaxPool2d(2), nn.Conv2d(8, 8, 20)),
     r"(?s)layer 2 \(Conv2d\) on input 8x13x13.*H_out = floor\(\(13 \+ 2\*0 - 1\*\(20-1\) - 1\)/1\) \+ 1 = -6"),
])
def test_impossible_user_modules(module, message):
    with pytest.raises(ArchitectureError, match=message):
        summarize(module, (1, 28, 28))


class Broken(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x).reshape(7, -1, 3)


def test_a_failing_forward_says_where():
    with pytest.raises(ModelError, match="cannot take 1x4x4 inputs: the forward pass failed in Broken"):
        summarize(Broken(), (1, 4, 4))


def test_module_attr_reference(tmp_path, monkeypatch):
    (tmp_path / "mynet.py").write_text(textwrap.dedent("""
        from torch import nn
        class Net(nn.Module):
            def __init__(self, num_classes=10):
                super().__init__()
                self.body = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, num_classes))
            def forward(self, x):
                return self.body(x)
        instance = Net(3)
        number = 5
    """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    assert summary("mynet:Net", "1x28x28").output_shape == (10,)
    assert summary("mynet:Net", "1x28x28", num_classes=4).output_shape == (4,)
    assert summary("mynet:instance", "1x28x28").total_params == 40 + 2704 * 3 + 3
    with pytest.raises(ModelError, match="is a int"):
        summary("mynet:number", "1x28x28")
    with pytest.raises(ModelError, match="has no attribute 'Nope'"):
        summary("mynet:Nope", "1x28x28")
    with pytest.raises(ModelError, match="cannot import 'nomodule'"):
        summary("nomodule:Net", "1x28x28")


def test_summary_needs_an_input_shape_for_specs():
    with pytest.raises(UsageError, match="--input"):
        summary("flatten linear(10)")
    assert summary("small-cnn-32").input_shape == (3, 32, 32)


def test_units():
    assert [nbytes(n) for n in (0, 1023, 1024, 3 * 2**20 + 2**19, 2**30)] == ["0 B", "1023 B", "1.00 KiB", "3.50 MiB",
                                                                              "1.00 GiB"]


@pytest.mark.parametrize("name,make", [
    ("seed-cnn.txt", lambda: summary_table(summary("seed-cnn"))),
    ("lecture-cnn-explain.txt", lambda: summary_table(summary(LECTURE_CNN, "1x28x28"), explain=True)),
    ("largenet.md", lambda: summary_table(summary("largenet"), "markdown")),
    ("small-cnn-28-depth1.txt", lambda: summary_table(summary("small-cnn-28"), depth=1)),
    ("lecture-004-pooled.json", lambda: summary_table(summary(
        "conv(3,3,padding=1) relu maxpool(2) conv(2,3,padding=1) relu maxpool(2) flatten linear(1)", "1x100x100"), "json")),
])
def test_golden(golden, name, make):
    golden(name, make() + "\n")


@pytest.mark.parametrize("name, shape", [("seed-cnn", (1, 28, 28)), ("small-cnn-32", (3, 32, 32)),
                                         ("fast-cnn-28", (1, 28, 28))])
def test_a_small_model_is_traced_for_real_and_both_passes_agree(name, shape):
    from cnnlab import get_model
    from cnnlab.inspect.summary import _trace
    from cnnlab.models.shapes import small_enough as _small

    model = get_model(name, input_shape=shape, num_classes=10).eval()
    assert _small(model, shape, 1)  # the cheap real pass, not the meta device's first use
    fields = lambda rows: [(r.name, r.out_shape, r.params, r.mult_adds, r.out_bytes, r.reach) for r in rows]  # noqa: E731
    with torch.no_grad():
        assert fields(_trace(model, shape, 2, meta=False)[0]) == fields(_trace(model, shape, 2, meta=True)[0])


def test_a_large_model_is_traced_on_the_meta_device():
    import torchvision

    from cnnlab.models.shapes import small_enough as _small

    assert not _small(torchvision.models.resnet18(), (3, 224, 224), 1)


def test_the_real_pass_leaves_no_trace():
    """A forward pass that updates a buffer and draws random numbers: both as before the summary."""
    from cnnlab.models.shapes import small_enough as _small

    class Counting(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.register_buffer("calls", torch.zeros(()))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            return self.conv(x) + torch.randn_like(x[:, :1, 2:, 2:])

    model = Counting()
    assert _small(model, (1, 8, 8), 1)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    assert summarize(model, (1, 8, 8)).total_params == 20
    assert model.calls.item() == 0
    assert torch.equal(torch.rand(3), expected)


def test_a_large_input_or_a_model_without_parameters_is_traced_on_the_meta_device():
    from cnnlab.models.shapes import small_enough as _small

    assert not _small(build("conv(8,3)", "3x4000x4000"), (3, 4000, 4000), 1)
    assert not _small(build("maxpool(2) relu", "3x32x32"), (3, 32, 32), 1)
    assert not _small(build("conv(8,3)", "3x32x32"), (3, 32, 32), 1000)  # the batch counts too
