"""The spec language: parsing, printing back, files, building, and every number the lectures print."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from cnnlab import build
from cnnlab.errors import ArchitectureError, ArchitectureWarning, UsageError
from cnnlab.models.spec import KINDS, load, parse, parse_shape, walk
from cnnlab.inspect.summary import summary

LECTURE_CNN = "conv(64,3) maxpool(2) relu conv(128,3) maxpool(2) relu flatten linear(200) relu linear(10)"


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("text", [
    LECTURE_CNN,
    "conv(20,5,padding=2) maxpool(2,stride=1,ceil_mode=true) avgpool(3,padding=1) adaptiveavgpool(2)",
    "conv(8,3x5,stride=2,padding=same,bias=false) batchnorm dropout2d(0.25) leakyrelu(0.2) softplus(2.0,10.0)",
    "conv(16,3,groups=1,in=3) convtranspose(8,2,stride=2) gelu flatten dropout linear(3200,200) tanh linear(10) softmax",
])
def test_spec_prints_back_the_same_text(text):
    spec = parse(text)
    assert str(spec) == text
    assert parse(str(spec)) == spec


def test_equal_specs_compare_equal():
    assert parse("conv(64,3) maxpool(2)") == parse("conv(64,kernel=3) maxpool(2,stride=2)")
    assert parse("conv(64,3)") != parse("conv(64,5)")
    assert parse("conv2d(64,3) fc(10)") == parse("conv(64,3) linear(10)")  # aliases


def test_lecture_001_cnn():
    model = build(LECTURE_CNN, "1x28x28")
    assert params(model) == 716_706
    rows = [params(m) for m in model if params(m)]
    assert rows == [640, 73_856, 640_200, 2_010]
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert list(dict(model.named_children())) == ["conv1", "maxpool1", "relu1", "conv2", "maxpool2", "relu2",
                                                  "flatten1", "linear1", "relu3", "linear2"]


def test_lecture_001_mlp():
    assert params(build("flatten linear(1000) relu linear(10)", "1x28x28")) == 795_010


def test_lecture_004_numbers():
    assert params(build("conv(3,3,padding=1) relu conv(2,3,padding=1) relu flatten linear(1)", "1x100x100")) == 20_087
    pooled = "conv(3,3,padding=1) relu maxpool(2) conv(2,3,padding=1) relu maxpool(2) flatten linear(1)"
    assert params(build(pooled, "1x100x100")) == 1_337
    mlp = "linear(256) relu linear(128) relu linear(64) relu linear(16) relu linear(1)"
    assert params(build(mlp, "16384")) == params(build("flatten " + mlp, "1x128x128")) == 4_236_769
    cnn = " ".join(["conv(3,3,padding=1) relu"] * 5) + " flatten linear(1)"
    assert params(build(cnn, "1x128x128")) == 49_519


def test_lecture_002_question_130():
    built = walk("conv(10,3) maxpool(4) conv(20,5,padding=2) maxpool(2)", "3x130x130")
    assert [b.math.out_shape for b in built] == [(10, 128, 128), (10, 32, 32), (20, 32, 32), (20, 16, 16)]


def test_largenet_features():
    s = summary("largenet", "3x32x32")
    fc1 = next(r for r in s.rows if r.name == "fc1")
    assert fc1.in_shape == (250,) and fc1.params == 250 * 32 + 32  # 10 channels x 5 x 5 features


def test_spec_files(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"input": "1x28x28", "layers": LECTURE_CNN}))
    (tmp_path / "b.toml").write_text('input = "1x28x28"\nlayers = [\n  "conv(64,3)", "maxpool(2)", "relu",\n'
                                     '  { type = "conv", out = 128, kernel = 3 }, "maxpool(2)", "relu", "flatten",\n'
                                     '  "linear(200)", "relu", "linear(10)",\n]\n')
    (tmp_path / "c.json").write_text(json.dumps([{"type": "flatten"}, {"type": "linear", "out": 10}]))
    a, b = load(tmp_path / "a.json"), load(tmp_path / "b.toml")
    assert a == b and a.input_shape == (1, 28, 28) and str(b) == LECTURE_CNN.replace("conv(128,3)", "conv(out=128,kernel=3)")
    assert params(build(str(tmp_path / "b.toml"))) == 716_706
    assert params(build(str(tmp_path / "c.json"), "1x28x28")) == 7_850
    (tmp_path / "bad.toml").write_text("layers = [")
    with pytest.raises(UsageError, match="not valid TOML"):
        load(tmp_path / "bad.toml")
    with pytest.raises(UsageError, match="needs an input shape"):
        build(str(tmp_path / "c.json"))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_layer_kind_builds(kind):
    example = {"conv": "conv(4,3)", "convtranspose": "convtranspose(4,2,stride=2)", "maxpool": "maxpool(2)",
               "avgpool": "avgpool(2)", "linear": "flatten linear(5)"}.get(kind, kind)
    shape = (3, 8, 8)
    model = build(example, shape)
    out = model(torch.zeros(2, *shape))
    assert out.shape[0] == 2 and summary(model, shape).output_shape == tuple(out.shape[1:])


@pytest.mark.parametrize("text,message", [
    ("cnv(3,3)", "unknown layer 'cnv'. Did you mean conv"),
    ("conv(3)", "conv needs kernel, e.g. conv(64,3)"),
    ("conv(3,3,foo=1)", "conv has no argument 'foo'"),
    ("conv(3,3,stride=1,stride=2)", "stride is given twice"),
    ("conv(3,3,1,1,1,1,true,3,9)", "at most 8 positional arguments"),
    ("conv(3,$)", "cannot read the value '$'"),
    ("conv(3,3) ) relu", "cannot read the spec"),
    ("", "the spec is empty"),
])
def test_spec_errors(text, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)").replace("$", r"\$")):
        parse(text)


@pytest.mark.parametrize("text,message", [
    ("conv(64,3) maxpool(2) relu conv(128,3) maxpool(2) relu flatten linear(3000,200) relu linear(10)",
     r"layer 8 linear1 linear\(3000,200\) on input 3200: .*expects 3000 input features but its input has 3200\n"
     r"  Fix: linear\(3200,200\)"),
    ("conv(64,3,in=3)", r"layer 1 .*expects 3 input channels but its input has 1\n  Fix: conv\(64,3,in=1\)"),
    ("conv(8,30)", r"H_out = floor\(\(28 \+ 2\*0 - 1\*\(30-1\) - 1\)/1\) \+ 1 = -1\n  Fix: use padding=1"),
    ("conv(8,3,stride=0)", r"stride 0 is not allowed"),
    ("maxpool(2,stride=0)", r"stride 0 is not allowed"),
    ("conv(8,3) linear(10)", r"linear needs a flat input but gets 8x26x26\n  Fix: put flatten before it "
                             r"\(it gives 8\*26\*26 = 5408 features\)"),
    ("flatten conv(8,3)", r"conv needs a CxHxW input but gets 1-D 784"),
    ("conv(8,3,stride=2,padding=same)", r"Fix: use padding=1"),
    ("conv(6,3,groups=4)", r"layer 1 conv1"),
])
def test_impossible_specs(text, message):
    with pytest.raises(ArchitectureError, match=message):
        build(text, "1x28x28")


def test_stride_larger_than_kernel_warns():
    with pytest.warns(ArchitectureWarning, match="layer 1 maxpool1 maxpool\\(2,4\\).*never seen"):
        build("maxpool(2,4)", "1x28x28")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build("maxpool(4)", "1x28x28")


@pytest.mark.parametrize("text,shape", [("1x28x28", (1, 28, 28)), ("3,32,32", (3, 32, 32)), ("784", (784,)),
                                        ("(3, 224, 224)", (3, 224, 224))])
def test_parse_shape(text, shape):
    assert parse_shape(text) == shape


@pytest.mark.parametrize("text", ["28x28", "1x0x28", "ax28x28", ""])
def test_bad_shapes(text):
    with pytest.raises(UsageError):
        parse_shape(text)


@pytest.mark.parametrize("text,message", [
    ("conv(64.0,3)", "conv: out must be a whole number, not 64.0"),
    ("conv(8,3,bias=1)", "conv: bias must be true or false, not 1"),
    ("conv(8,3,padding=wide)", "padding must be a whole number or a pair like 3x5, same or valid, not wide"),
    ("conv(0,3)", "conv: out must be 1 or more, not 0"),
    ("adaptiveavgpool(0)", "size must be 1 or more"),
    ("conv(8,3,padding=-1)", "padding must be 0 or more"),
    ("dropout(1.5)", "between 0 and 1"),
])
def test_values_must_fit_their_argument(text, message):
    with pytest.raises(UsageError, match=message):
        parse(text)


def test_words_and_file_values_are_normalized(tmp_path):
    assert str(parse("conv(8,3,padding=SAME)")) == "conv(8,3,padding=same)"
    assert parse("dropout(1)").layers[0].values["p"] == 1.0  # a number where a float is wanted
    path = tmp_path / "net.json"
    path.write_text(json.dumps({"input": 784, "layers": [{"type": "linear", "out": 10, "in": None}]}))
    spec = load(path)
    assert spec.input_shape == (784,) and str(spec) == "linear(out=10)"  # null means the default
    pooled = tmp_path / "pool.json"
    pooled.write_text(json.dumps({"input": "1x8x8", "layers": [{"type": "maxpool", "kernel": [2, 2], "stride": None}]}))
    assert str(load(pooled)) == "maxpool(kernel=2x2)" and build(str(pooled))[0].stride == (2, 2)


@pytest.mark.parametrize("text,message", [
    ("conv(8,3,dilation=0)", "dilation 0 is not allowed"),
    ("softmax(dim=5)", r"softmax over dim 5, but its input has 4 dims"),
])
def test_more_impossible_layers(text, message):
    with pytest.raises(ArchitectureError, match=message):
        build(text, "1x28x28")


def test_registered_models_name_the_layer_that_cannot_work():
    from cnnlab.models import get_model

    with pytest.raises(ArchitectureError, match=r"model 'seed-cnn' cannot take 3x6x6 inputs: layer 3 \(Conv2d\) "
                                                r"on input 64x2x2[\s\S]*H_out = floor\(\(2 \+ 2\*0"):
        get_model("seed-cnn", (3, 6, 6))
