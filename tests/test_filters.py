"""Classic filters on a real photo: every edge mode against scipy.ndimage, luma, scaling, the grid."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage as ndi
import scipy.signal
import torch
from PIL import Image

from cnnlab.teach import filters
from cnnlab.data import images
from cnnlab.cli.main import main
from cnnlab.errors import UsageError

SCIPY_MODE = {"zero": "constant", "extend": "nearest", "reflect": "mirror", "wrap": "wrap"}


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    """The shipped photo in float64, RGB (3, 300, 451)."""
    return images.load(images.SAMPLE_IMAGE).double()


@pytest.mark.parametrize("edge", ["zero", "extend", "reflect", "wrap"])
@pytest.mark.parametrize("kernel", ["sobel-x", "emboss", "gaussian:5", "1 2; 3 -4", "1 0 2 -1"])
def test_edge_modes_agree_with_scipy_ndimage(photo, edge, kernel):
    _, weights = filters.resolve(kernel)
    gray = images.grayscale(photo)  # (1, H, W)
    ours = filters.apply(photo, kernel, edge)[0].numpy()
    expected = ndi.correlate(gray[0].numpy(), weights, mode=SCIPY_MODE[edge], cval=0.0)
    assert ours.shape == gray.shape[1:]
    np.testing.assert_allclose(ours, expected, atol=1e-12)


@pytest.mark.parametrize("kernel", ["sobel-y", "1 2; 3 -4", "box:4"])
def test_crop_is_the_valid_part(photo, kernel):
    _, weights = filters.resolve(kernel)
    gray = images.grayscale(photo)[0].numpy()
    ours = filters.apply(photo, kernel, "crop")[0].numpy()
    np.testing.assert_allclose(ours, scipy.signal.correlate2d(gray, weights, mode="valid"), atol=1e-12)
    assert ours.shape == (300 - weights.shape[0] + 1, 451 - weights.shape[1] + 1)


def test_sobel_is_the_gradient_magnitude(photo):
    gray = images.grayscale(photo)[0].numpy()
    expected = np.hypot(ndi.sobel(gray, axis=0, mode="constant"), ndi.sobel(gray, axis=1, mode="constant"))
    np.testing.assert_allclose(filters.apply(photo, "sobel")[0].numpy(), expected, atol=1e-12)


def test_stride_keeps_every_second_value(photo):
    full = filters.apply(photo, "edge", "extend")
    np.testing.assert_allclose(filters.apply(photo, "edge", "extend", stride=2), full[:, ::2, ::2], atol=1e-12)


def test_color_filters_each_channel(photo):
    out = filters.apply(photo, "sharpen", "reflect", color=True)
    assert out.shape == photo.shape
    for c in range(3):
        expected = ndi.correlate(photo[c].numpy(), filters.KERNELS["sharpen"].matrix, mode="mirror")
        np.testing.assert_allclose(out[c].numpy(), expected, atol=1e-12)


def test_luma_uses_itu_601_and_agrees_with_pillow(photo):
    pixel = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    assert images.grayscale(pixel).item() == pytest.approx(0.299)
    ours = images.grayscale(photo)[0].numpy() * 255
    pillow = np.asarray(Image.open(images.SAMPLE_IMAGE).convert("L"), dtype=np.float64)
    assert np.abs(ours - pillow).max() <= 0.5 + 1e-6  # Pillow rounds to 8 bits; the weights are the same


def test_named_kernels_are_the_lectures():
    assert filters.resolve("quiz-d")[1].tolist() == [[-1, -2, -1], [0, 0, 0], [1, 2, 1]]  # lecture 002's answer
    assert filters.resolve("quiz-d")[1].tolist() == filters.resolve("sobel-y")[1].tolist()
    np.testing.assert_allclose(filters.resolve("gaussian")[1],
                               [[0.0625, 0.125, 0.0625], [0.125, 0.25, 0.125], [0.0625, 0.125, 0.0625]])  # lecture 004
    np.testing.assert_allclose(filters.resolve("gaussian:3")[1], filters.resolve("gaussian")[1])
    np.testing.assert_allclose(filters.resolve("box:3")[1], filters.resolve("box")[1])
    assert filters.resolve("edge")[1].sum() == 0 and filters.resolve("edge")[1][1, 1] == 8
    assert filters.resolve("gaussian:7")[1].sum() == pytest.approx(1.0)


def test_display_scaling():
    blurred = torch.tensor([[[-0.1, 0.5, 1.2]]])
    shown, rule = filters.display(blurred, filters.resolve("box")[1])
    assert rule == "clip" and shown.tolist() == [[[0.0, 0.5, 1.0]]]
    edges = torch.tensor([[[-2.0, 0.0, 2.0]]])
    shown, rule = filters.display(edges, filters.resolve("edge")[1])
    assert rule == "minmax" and shown.tolist() == [[[0.0, 0.5, 1.0]]]
    assert filters.display(edges, None, "abs")[0].tolist() == [[[1.0, 0.0, 1.0]]]
    assert filters.display(torch.zeros(1, 2, 2), None, "minmax")[0].sum() == 0  # flat output: no division by 0


def test_filter_command_writes_the_scaled_image(tmp_path, capsys):
    out = tmp_path / "edges.png"
    args = ["filter", str(images.SAMPLE_IMAGE), "--kernel", "sobel-x", "--edge", "reflect", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "grayscale by ITU-R 601 luma" in printed and "scale=minmax" in printed
    written = np.asarray(Image.open(out))
    assert written.shape == (300, 451) and written.min() == 0 and written.max() == 255


def test_grid_shows_the_original_and_each_filter(tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["filter", "--grid", "sobel,gaussian,edge", "--edge", "extend", "--out", str(out)]) == 0
    assert "using the photo shipped with cnnlab" in capsys.readouterr().out
    grid = Image.open(out)
    assert grid.width > 4 * 451 and grid.height > 300  # 4 tiles in one row, captions above
    pixels = np.asarray(grid.convert("L"))
    assert pixels.std() > 10  # pictures, not a blank canvas


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--kernel", "blurry"], "unknown kernel 'blurry'"), (["--kernel", "1 2; 3"], "different lengths"),
     (["--kernel", "box:0"], "size must be"), (["--kernel", "box:11", "--edge", "reflect"], "no larger than"),
     (["--kernel", "box:11", "--edge", "crop"], "does not fit the 10x10 image"),
     (["--kernel", "box:11", "--edge", "wrap"], "no larger than"), (["--stride", "0"], "stride must be from 1"),
     (["--grid", "sobel", "--kernel", "edge"], "--grid takes its kernels as a list"),
     (["--out", "x.unknown"], "cannot tell the image format"), (["--out", "no/such/dir/x.png"], "cannot write"),
     (["--kernel", "kernel.csv"], "different lengths"), (["--out", "x.psd"], "Pillow cannot write .psd"),
     (["--grid", "", "--out", "x.psd"], "Pillow cannot write .psd")],
)
def test_filter_errors(tmp_path, capsys, args, message):
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(small)
    (tmp_path / "kernel.csv").write_text("1,2\n3\n")
    out = ["--out", str(tmp_path / "x.png")] if "--out" not in args else []
    args = [str(tmp_path / a) if a.endswith((".csv", ".unknown", ".psd")) or a.startswith("no/") else a for a in args]
    assert main(["filter", str(small), *args, *out]) == 2
    assert message in capsys.readouterr().err


def test_library_errors_name_the_choices(photo):
    with pytest.raises(UsageError, match="choose one of zero, extend, reflect, wrap, crop"):
        filters.apply(photo, "sobel", edge="mirror")
    with pytest.raises(UsageError, match="choose one of auto, clip, minmax, abs"):
        filters.display(photo, None, "log")
    with pytest.raises(UsageError, match="a filter kernel is a matrix"):
        filters.correlate(photo, np.ones(3))


def test_a_long_kernel_matrix_typed_out(photo):
    typed = "; ".join(" ".join(f"{v:.6f}" for v in row) for row in filters.resolve("gaussian:7")[1])
    assert len(typed) > 255
    # Typed to 6 decimals, so the weights differ by up to 5e-7 each.
    torch.testing.assert_close(filters.apply(photo, typed), filters.apply(photo, "gaussian:7"), atol=1e-5, rtol=0)


def test_kernel_from_a_file(tmp_path, photo):
    (tmp_path / "k.csv").write_text("-1,0,1\n-2,0,2\n-1,0,1\n")
    torch.testing.assert_close(filters.apply(photo, str(tmp_path / "k.csv")), filters.apply(photo, "sobel-x"))


def test_wrap_agrees_with_scipy_for_a_kernel_as_large_as_the_image():
    image = torch.rand(1, 5, 6, dtype=torch.float64)
    weights = np.random.default_rng(0).standard_normal((5, 6))
    expected = ndi.correlate(image[0].numpy(), weights, mode="wrap")
    np.testing.assert_allclose(filters.correlate(image, weights, "wrap")[0].numpy(), expected, atol=1e-12)


def test_filter_on_a_broken_file(tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    assert main(["filter", str(bad), "--out", str(tmp_path / "x.png")]) == 2
    assert "is not an image" in capsys.readouterr().err
