"""Step-by-step traces: lecture 001's worked example and exercise, pooling and its gradient."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnlab.teach import steps
from cnnlab.cli.main import main
from cnnlab.errors import UsageError

A16 = "1 2 3 4; 5 6 7 8; 9 10 11 12; 13 14 15 16"
# Lecture 001's exercise: matrix A (7x7) and kernel B (3x3).
EXERCISE_A = """12 2 29 4 1 2 3
5 21 7 8 36 6 7
9 10 11 12 9 10 11
13 14 15 16 13 14 15
7 5 10 4 28 20 3
25 19 12 8 5 20 32
9 10 11 12 21 10 11"""
EXERCISE_B = "1 1 1; 1 -2 1; 1 1 1"
EXERCISE = "maxpool(2, stride=2); pad(2); conv; conv(stride=3)"


def test_lecture_001_example_prints_each_window_and_the_output(capsys, golden):
    assert main(["conv", "--input", A16, "--kernel", "1 2; 3 4"]) == 0
    out = capsys.readouterr().out
    assert "out[0,0]  [1 2; 5 6]  1x1 + 2x2 + 5x3 + 6x4 = 44" in out
    assert "out[1,1]  [6 7; 10 11]  6x1 + 7x2 + 10x3 + 11x4 = 94" in out  # the lecture's second line
    assert out.rstrip().endswith("output:\n   44  54  64\n   84  94 104\n  124 134 144")
    golden("conv-lecture-001.txt", out)


def test_lecture_001_exercise_chain_matches_torch(tmp_path, capsys, golden):
    a_file = tmp_path / "A.csv"
    a_file.write_text(EXERCISE_A.replace(" ", ",") + "\n")
    traces = steps.run(steps.parse_matrix(a_file), EXERCISE, steps.parse_matrix(EXERCISE_B))
    a = torch.tensor(steps.parse_matrix(EXERCISE_A), dtype=torch.float64)[None, None]
    b = torch.tensor(steps.parse_matrix(EXERCISE_B), dtype=torch.float64)[None, None]
    c = F.max_pool2d(a, 2, 2)
    d = F.conv2d(F.pad(c, (2, 2, 2, 2)), b)
    e = F.conv2d(d, b, stride=3)
    assert [t.output.shape for t in traces] == [(3, 3), (7, 7), (5, 5), (1, 1)]
    np.testing.assert_array_equal(traces[0].output, c[0, 0].numpy())
    np.testing.assert_array_equal(traces[2].output, d[0, 0].numpy())
    np.testing.assert_array_equal(traces[3].output, e[0, 0].numpy())
    assert traces[0].output.tolist() == [[21, 29, 36], [14, 16, 14], [25, 12, 28]]
    assert traces[3].output.tolist() == [[483]]

    assert main(["conv", "--input", str(a_file), "--kernel", EXERCISE_B, "--chain", EXERCISE]) == 0
    out = capsys.readouterr().out
    for heading in ["step 1: maxpool(2, stride=2) on a 7x7 matrix", "step 2: pad(2) on a 3x3 matrix",
                    "step 3: conv on a 7x7 matrix", "step 4: conv(stride=3) on a 5x5 matrix"]:
        assert heading in out
    assert "max(12, 2, 5, 21) = 21 <- input[1,1]" in out
    golden("conv-lecture-001-exercise.txt", out)


def test_max_pool_gradient_goes_to_the_maximum(capsys):
    assert main(["pool", "--input", "1 3 2 4; 5 5 1 0; 0 2 7 7; 1 1 7 3", "--grad", "1 2; 3 4"]) == 0
    out = capsys.readouterr().out
    assert "max(1, 3, 5, 5) = 5 <- input[1,0]" in out  # a tie: the first 5 in row-major order
    assert "gradient passed back to the input (dL/din):\n  0 0 0 2\n  1 0 0 0\n  0 3 4 0\n  0 0 0 0" in out


def test_pool_gradients_match_torch_with_overlap_and_average():
    a = steps.parse_matrix("1 3 2; 5 5 1; 0 2 7")
    g = np.array([[1.0, 2.0], [3.0, 4.0]])
    for step, torch_pool in [("maxpool(2, stride=1)", F.max_pool2d), ("avgpool(2, stride=1)", F.avg_pool2d)]:
        (trace,) = steps.run(a, step, grad=g)
        x = torch.tensor(a, dtype=torch.float64, requires_grad=True)
        out = torch_pool(x[None, None], 2, 1)
        out.backward(torch.tensor(g)[None, None])
        np.testing.assert_allclose(trace.output, out[0, 0].detach().numpy())
        np.testing.assert_allclose(trace.grad_input, x.grad.numpy())
    assert steps.run(a, "maxpool(2, stride=1)", grad=g)[0].grad_input.tolist() == [[0, 0, 0], [4, 2, 0], [0, 0, 4]]


@pytest.mark.parametrize("name", ["conv", "convolve"])
def test_conv_gradients_match_torch(name):
    a = steps.parse_matrix("1 2 3; 4 5 6; 7 8 10")
    k = steps.parse_matrix("1 0; 2 -1")
    (trace,) = steps.run(a, f"{name}(padding=1)", k, grad="ones")
    x = torch.tensor(a, dtype=torch.float64, requires_grad=True)
    w = torch.tensor(k, dtype=torch.float64, requires_grad=True)
    used = torch.flip(w, (0, 1)) if name == "convolve" else w
    out = F.conv2d(x[None, None], used[None, None], padding=1)
    out.sum().backward()
    np.testing.assert_allclose(trace.output, out[0, 0].detach().numpy())
    np.testing.assert_allclose(trace.grad_input, x.grad.numpy())
    np.testing.assert_allclose(trace.grad_kernel, w.grad.numpy())


def test_gradient_runs_back_through_the_whole_chain():
    a = steps.parse_matrix(EXERCISE_A)
    b = steps.parse_matrix(EXERCISE_B)
    chain = "maxpool(2, stride=2); pad(1); relu; conv(stride=2); avgpool(1)"
    traces = steps.run(a - 12, chain, b, grad="ones")
    x = torch.tensor(a - 12, requires_grad=True)
    w = torch.tensor(b)[None, None]
    y = F.avg_pool2d(F.conv2d(F.relu(F.pad(F.max_pool2d(x[None, None], 2, 2), (1, 1, 1, 1))), w, stride=2), 1)
    y.sum().backward()
    np.testing.assert_allclose(traces[-1].output, y[0, 0].detach().numpy())
    np.testing.assert_allclose(traces[0].grad_input, x.grad.numpy())
    for earlier, later in zip(traces, traces[1:]):
        np.testing.assert_array_equal(earlier.grad_output, later.grad_input)


def _evaluate(arithmetic: str) -> float:
    """Compute a window's printed arithmetic: "1x2 + 3x(-4)", "max(1, 2)", "(1 + 2) / 2"."""
    return eval(re.sub(r"(?<=\d)x", "*", arithmetic), {"max": max})  # noqa: S307 (our own printed numbers)


@pytest.mark.parametrize(
    ("step", "matrix"),
    [("conv(stride=2, padding=1, dilation=2)", A16), ("convolve(padding=2)", "1 -2.5; 3 4"),
     ("avgpool(3, stride=2, ceil_mode=true)", A16), ("avgpool(3, stride=2, padding=1, ceil_mode=true)", A16),
     ("maxpool(3, stride=2, padding=1, ceil_mode=true)", "-1 -2 -3; -4 -5 -6; -7 -8 -9"),
     ("maxpool(2, stride=1, dilation=2)", A16)],
)
def test_printed_arithmetic_equals_each_result(step, matrix):
    (trace,) = steps.run(steps.parse_matrix(matrix), step, steps.parse_matrix("1 2 -1; 0 3 1; 2 -2 1"))
    windows = trace.windows()
    assert len(windows) == trace.output.size
    for w in windows:
        assert _evaluate(w.arithmetic) == pytest.approx(w.result), (w.row, w.col, w.arithmetic)


def test_large_values_are_not_wrapped_around():
    (trace,) = steps.run(steps.parse_matrix("1e20 1"), "conv", steps.parse_matrix("1"))
    assert trace.output.tolist() == [[1e20, 1.0]]
    (trace,) = steps.run(steps.parse_matrix("1e19 1e19; 1 1"), "avgpool(2)")
    assert trace.output[0, 0] > 0


def test_a_large_input_prints_only_the_windows_it_shows(tmp_path):
    big = steps.parse_matrix("; ".join(" ".join(["1"] * 400) for _ in range(400)))
    (trace,) = steps.run(big, "conv", steps.parse_matrix("1 0 -1; 2 0 -2; 1 0 -1"))
    out = steps.text([trace], limit=3)
    assert out.count("out[") == 3 and "... 158401 more windows" in out


def test_negative_kernel_values_are_bracketed_and_padding_shown(capsys):
    assert main(["conv", "--input", "1 2; 3 4", "--kernel", "-1 1; 0.5 2", "--padding", "1", "--limit", "2"]) == 0
    out = capsys.readouterr().out
    assert "padded with zeros:" in out
    assert "0x(-1) + 0x1 + 0x0.5 + 1x2 = 2" in out
    assert "... 7 more windows" in out
    assert main(["conv", "--input", "1 2; 3 4", "--kernel", "1", "--limit", "-2"]) == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1 2; 3 4", [[1, 2], [3, 4]]), ("1,2;3,4", [[1, 2], [3, 4]]), ("[[1, 2], [3, 4.5]]", [[1, 2], [3, 4.5]]),
     ("1\t2\n3\t4\n", [[1, 2], [3, 4]]), ("-1 0.25", [[-1, 0.25]])],
)
def test_parse_matrix_inline(text, expected):
    assert steps.parse_matrix(text).tolist() == expected


def test_parse_matrix_from_files(tmp_path):
    (tmp_path / "b.csv").write_text("\ufeff1,2\n3,4\n")  # with a spreadsheet's byte-order mark
    (tmp_path / "b.txt").write_text("1 2\n3 4\n")
    (tmp_path / "semicolons").write_text("1;2\n3;4\n")
    (tmp_path / "trailing.csv").write_text("1,2,\n3,4,\n")
    assert steps.parse_matrix(tmp_path / "trailing.csv").tolist() == [[1, 2], [3, 4]]
    assert steps.parse_matrix(tmp_path / "semicolons").tolist() == [[1, 2], [3, 4]]
    (tmp_path / "photo.jpg").write_bytes(b"\xff\xd8\xff\xe0 not text")
    with pytest.raises(UsageError, match="as a text file"):
        steps.parse_matrix(tmp_path / "photo.jpg")
    assert steps.parse_matrix(tmp_path / "b.csv").tolist() == [[1, 2], [3, 4]]
    assert steps.parse_matrix(str(tmp_path / "b.txt")).tolist() == [[1, 2], [3, 4]]


@pytest.mark.parametrize(
    ("text", "message"),
    [("1 2; 3", "different lengths"), ("1 x; 3 4", "not a number"), ("", "not a matrix"), ("1 nan", "NaN"),
     ("[[1, 2], [3", "nested list"), ("missing.csv", "not a file that exists"), ("[1, 2]", "list of rows"),
     ("[" * 5000 + "]" * 5000, "nested list")],
)
def test_parse_matrix_errors(text, message):
    with pytest.raises(UsageError, match=message):
        steps.parse_matrix(text)


@pytest.mark.parametrize(
    ("chain", "message"),
    [("blur(3)", "cannot read the step"), ("maxpool(2, size=3)", "maxpool takes kernel"),
     ("conv(stride=-1)", "from 1 to 10,000, not -1"), ("", "no steps"), ("relu(1)", "no arguments"),
     ("maxpool(2, ceil_mode=maybe)", "true or false"), ("conv(stride=2, stride=3)", "given twice"),
     ("maxpool(kernel=3, 2)", "after named ones"), ("pad(99999)", "from 0 to 1,000"),
     ("maxpool(2, stride=0)", "from 1 to 10,000"), ("conv(stride=99999999999999999999)", "from 1 to 10,000, not 9999"),
     ("conv(stride=\u00b2)", "whole number")],
)
def test_parse_steps_errors(chain, message):
    with pytest.raises(UsageError, match=message):
        steps.parse_steps(chain)


def test_cli_errors_are_clear(capsys):
    assert main(["conv", "--input", "1 2; 3 4", "--kernel", "1 2 3; 4 5 6; 7 8 9"]) == 2
    assert "does not fit the 2x2 input" in capsys.readouterr().err
    assert main(["conv", "--input", "1 2; 3 4", "--chain", "conv"]) == 2
    assert "needs a kernel" in capsys.readouterr().err
    assert main(["pool", "--input", "1 2; 3 4", "--grad", "1 2"]) == 2
    assert "output's shape (1, 1)" in capsys.readouterr().err
    assert main(["conv", "--input", "1 2; 3 4", "--kernel", "1", "--chain", "conv", "--stride", "2"]) == 2
    assert "with --chain, write the settings into the steps" in capsys.readouterr().err
    assert main(["pool", "--input", "1 2; 3 4", "--avg", "--dilation", "2"]) == 2
    assert "average pooling has no dilation" in capsys.readouterr().err
    assert main(["pool", "--input", "1 2; 3 4", "--stride", "0"]) == 2
    assert "stride must be from 1" in capsys.readouterr().err


def test_a_long_inline_matrix_is_not_taken_for_a_file_name():
    text = "; ".join(" ".join(str(100 + i * 10 + j) for j in range(10)) for i in range(10))
    assert len(text) > 255  # longer than any file name may be
    assert steps.parse_matrix(text).shape == (10, 10)


def test_fractions_are_not_hidden_by_rounding():
    (trace,) = steps.run(steps.parse_matrix("1000 1001; 1002 1004"), "avgpool(2)")
    assert steps.number(trace.output[0, 0]) == "1001.75"
    assert steps.number(1 / 3) == "0.3333" and steps.number(-2.5) == "-2.5" and steps.number(44.0) == "44"


def test_uncovered_rows_are_noted_only_for_real_input():
    a = steps.parse_matrix("; ".join(["1 2 3 4 5"] * 5))
    (floor,) = steps.run(a, "maxpool(2)")
    assert floor.notes == ["row 4 and column 4 of the input are in no window: the last window would not fit, "
                           "and the size formula rounds down"]
    (ceil,) = steps.run(a, "maxpool(2, padding=1, ceil_mode=true)")
    assert ceil.notes == []  # only padding is left out, and no input value is lost
    (skipping,) = steps.run(a, "maxpool(1, stride=3, ceil_mode=true)")
    assert skipping.notes == ["row 4 and column 4 of the input are in no window: the stride steps past them"]


def test_a_chain_cannot_grow_without_bound():
    with pytest.raises(UsageError, match="more than 4,000,000 values"):
        steps.run(steps.parse_matrix("1"), "pad(1000); pad(1000)")
