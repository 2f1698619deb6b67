"""The NumPy reference ops against PyTorch, forward and backward, in float64.

Tolerance: float64 with the same arithmetic in a different order, so values and gradients
agree to 1e-9 relative (1e-10 absolute); max-pool indices and tie-breaking agree exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnlab.teach import reference
from cnnlab.errors import UsageError

TOL = {"rtol": 1e-9, "atol": 1e-10}


@st.composite
def conv_cases(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    # The input is at least as large as the dilated kernel minus the padding, so the output is not empty.
    low_h, low_w = max(1, dh * (kh - 1) + 1 - 2 * ph), max(1, dw * (kw - 1) + 1 - 2 * pw)
    h, w = draw(st.integers(low_h, low_h + 6)), draw(st.integers(low_w, low_w + 6))
    n, c, o = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**31))
    return (n, c, h, w), (o, c, kh, kw), (sh, sw), (ph, pw), (dh, dw), seed


@settings(max_examples=150, deadline=None)
@given(conv_cases(), st.booleans())
def test_conv2d_forward_and_backward_match_torch(case, with_bias):
    x_shape, w_shape, stride, padding, dilation, seed = case
    rng = np.random.default_rng(seed)
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[0]) if with_bias else None
    out = reference.conv2d(x, w, b, stride, padding, dilation)

    xt, wt = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    bt = torch.tensor(b, requires_grad=True) if with_bias else None
    expected = F.conv2d(xt, wt, bt, stride, padding, dilation)
    np.testing.assert_allclose(out, expected.detach().numpy(), **TOL)

    grad_out = rng.standard_normal(expected.shape)
    expected.backward(torch.tensor(grad_out))
    grads = reference.conv2d_backward(grad_out, x, w, stride, padding, dilation)
    np.testing.assert_allclose(grads.input, xt.grad.numpy(), **TOL)
    np.testing.assert_allclose(grads.weight, wt.grad.numpy(), **TOL)
    if with_bias:
        np.testing.assert_allclose(grads.bias, bt.grad.numpy(), **TOL)


@st.composite
def pool_cases(draw, dilated: bool):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    dh, dw = (draw(st.integers(1, 2)), draw(st.integers(1, 2))) if dilated else (1, 1)
    h = draw(st.integers(max(1, dh * (kh - 1) + 1 - 2 * ph), 9))
    w = draw(st.integers(max(1, dw * (kw - 1) + 1 - 2 * pw), 9))
    return (draw(st.integers(1, 2)), draw(st.integers(1, 2)), h, w), (kh, kw), (sh, sw), (ph, pw), (dh, dw), \
        draw(st.booleans()), draw(st.integers(0, 2**31))


@settings(max_examples=150, deadline=None)
@given(pool_cases(dilated=True), st.booleans())
def test_max_pool_values_indices_and_gradient_match_torch(case, few_values):
    shape, kernel, stride, padding, dilation, ceil_mode, seed = case
    rng = np.random.default_rng(seed)
    # Few distinct values make ties common, which checks the tie-breaking rule too.
    x = rng.integers(0, 3, shape).astype(np.float64) if few_values else rng.standard_normal(shape)
    xt = torch.tensor(x, requires_grad=True)
    expected, expected_indices = F.max_pool2d(xt, kernel, stride, padding, dilation, ceil_mode, return_indices=True)
    try:
        values, indices = reference.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode)
    except UsageError as exc:
        # Refused only where a dilated window holds nothing but padding, where PyTorch gives -inf.
        assert "only padding" in str(exc) and torch.isneginf(expected).any()
        return
    np.testing.assert_array_equal(values, expected.detach().numpy())
    np.testing.assert_array_equal(indices, expected_indices.numpy())

    grad_out = rng.standard_normal(expected.shape)
    expected.backward(torch.tensor(grad_out))
    np.testing.assert_allclose(reference.max_pool2d_backward(grad_out, indices, x.shape), xt.grad.numpy(), **TOL)


@settings(max_examples=150, deadline=None)
@given(pool_cases(dilated=False), st.booleans())
def test_avg_pool_forward_and_backward_match_torch(case, count_include_pad):
    shape, kernel, stride, padding, _, ceil_mode, seed = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    out = reference.avg_pool2d(x, kernel, stride, padding, ceil_mode, count_include_pad)
    xt = torch.tensor(x, requires_grad=True)
    expected = F.avg_pool2d(xt, kernel, stride, padding, ceil_mode, count_include_pad)
    np.testing.assert_allclose(out, expected.detach().numpy(), **TOL)
    grad_out = rng.standard_normal(expected.shape)
    expected.backward(torch.tensor(grad_out))
    grad = reference.avg_pool2d_backward(grad_out, shape, kernel, stride, padding, ceil_mode, count_include_pad)
    np.testing.assert_allclose(grad, xt.grad.numpy(), **TOL)


def test_lecture_001_example_is_cross_correlation():
    a = np.arange(1, 17).reshape(4, 4)
    b = np.array([[1, 2], [3, 4]])
    assert reference.correlate(a, b).tolist() == [[44, 54, 64], [84, 94, 104], [124, 134, 144]]
    # The flipped-kernel convolution the lecture's formula describes gives other numbers.
    assert reference.convolve(a, b).tolist() == [[26, 36, 46], [66, 76, 86], [106, 116, 126]]
    np.testing.assert_array_equal(reference.convolve(a, b), scipy.signal.convolve2d(a, b, mode="valid"))
    np.testing.assert_array_equal(reference.correlate(a, b), scipy.signal.correlate2d(a, b, mode="valid"))


def test_convolve_and_correlate_agree_for_symmetric_kernels_and_differ_for_sobel():
    a = np.random.default_rng(1).standard_normal((6, 7))
    blur = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16
    np.testing.assert_allclose(reference.convolve(a, blur), reference.correlate(a, blur))
    sobel_x = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]])
    np.testing.assert_allclose(reference.convolve(a, sobel_x), -reference.correlate(a, sobel_x))


def test_overlapping_max_pool_windows_add_their_gradients():
    x = np.array([[[[1.0, 9.0, 2.0], [3.0, 4.0, 5.0]]]])  # 9 is the maximum of both 2x2 windows
    values, indices = reference.max_pool2d(x, 2, stride=1)
    assert values.tolist() == [[[[9.0, 9.0]]]]
    grad = reference.max_pool2d_backward(np.array([[[[1.0, 10.0]]]]), indices, x.shape)
    assert grad.tolist() == [[[[0.0, 11.0, 0.0], [0.0, 0.0, 0.0]]]]


def test_max_pool_tie_goes_to_first_in_row_major_order():
    x = np.array([[[[7.0, 7.0], [7.0, 7.0]]]])
    _, indices = reference.max_pool2d(x, 2)
    assert indices.tolist() == [[[[0]]]]


def test_integer_matrices_stay_integers():
    out = reference.correlate(np.arange(9).reshape(3, 3), np.ones((2, 2), dtype=np.int64))
    assert out.dtype.kind == "i" and out.tolist() == [[8, 12], [20, 24]]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: reference.conv2d(np.ones((1, 2, 5, 5)), np.ones((1, 3, 3, 3))), "2 channels but the weight expects 3"),
        (lambda: reference.conv2d(np.ones((1, 1, 2, 2)), np.ones((1, 1, 3, 3))), "does not fit"),
        (lambda: reference.conv2d(np.ones((5, 5)), np.ones((3, 3))), "must be 4-D"),
        (lambda: reference.conv2d(np.ones((1, 1, 5, 5)), np.ones((1, 1, 3, 3)), stride=0), "stride and dilation"),
        (lambda: reference.max_pool2d(np.ones((1, 1, 5, 5)), 2, padding=2), "more than half"),
        (lambda: reference.avg_pool2d(np.ones((1, 1, 2, 2)), 3), "does not fit"),
        (lambda: reference.correlate(np.ones(3), np.ones((2, 2))), "two matrices"),
    ],
)
def test_clear_errors(call, message):
    with pytest.raises(UsageError, match=message):
        call()


@pytest.mark.parametrize(
    "x",
    [[[1.0, np.nan], [np.nan, 3.0]], [[np.nan, 1.0, np.nan], [2.0, np.nan, 3.0]],
     [[-np.inf, -np.inf], [-np.inf, -np.inf]],
     [[-np.inf, 5.0, -np.inf], [np.nan, -np.inf, 2.0], [1.0, 1.0, -np.inf]]],
)
@pytest.mark.parametrize(("kernel", "stride", "padding"), [(2, 1, 1), (2, 1, 0), (2, 2, 1), (3, 1, 1)])
def test_max_pool_nan_and_minus_infinity_as_torch(x, kernel, stride, padding):
    x = np.array(x)[None, None]
    if min(x.shape[2:]) + 2 * padding < kernel:
        pytest.skip("window larger than the padded input")
    values, indices = reference.max_pool2d(x, kernel, stride, padding)
    expected, expected_indices = F.max_pool2d(torch.tensor(x), kernel, stride, padding, return_indices=True)
    np.testing.assert_array_equal(values, expected.numpy())  # NaN equals NaN here
    np.testing.assert_array_equal(indices, expected_indices.numpy())
    assert (indices >= 0).all() and (indices < x.size).all()
