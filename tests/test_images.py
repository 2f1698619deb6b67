"""Image files to tensors: modes, sizes and every way decoding can fail."""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.data import images
from cnnlab.errors import ImageError


def test_png_with_alpha_drops_alpha(tmp_path):
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 200, 100, 50, 0  # fully transparent
    path = tmp_path / "a.png"
    Image.fromarray(rgba, "RGBA").save(path)
    x = images.load(path)
    assert x.shape == (3, 4, 6)
    assert x[:, 0, 0].tolist() == pytest.approx([200 / 255, 100 / 255, 50 / 255])


def test_grayscale_jpeg_stays_one_channel_and_converts_to_rgb(tmp_path):
    path = tmp_path / "g.jpg"
    Image.fromarray(np.full((10, 10), 128, np.uint8), "L").save(path, quality=100)
    assert images.load(path).shape == (1, 10, 10)
    rgb = images.load(path, channels=3)
    assert rgb.shape == (3, 10, 10)
    assert torch.equal(rgb[0], rgb[2])


def test_rgb_to_grayscale_uses_itu_601_luma(tmp_path):
    path = tmp_path / "c.png"
    Image.fromarray(np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]]], np.uint8), "RGB").save(path)
    gray = images.read(path, channels=1)[0, :, 0]
    assert gray.tolist() == [76, 150, 29]  # 0.299, 0.587, 0.114 of 255, rounded


def test_resize_and_value_range(tmp_path):
    path = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 200, 3), dtype=np.uint8)).save(path)
    x = images.load(path, channels=1, size=(28, 28))
    assert x.shape == (1, 28, 28)
    assert x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0


def test_palette_and_16_bit(tmp_path):
    palette = Image.new("P", (3, 3))
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.putpixel((1, 1), 1)
    palette.save(tmp_path / "p.png")
    x = images.read(tmp_path / "p.png")
    assert x.shape == (3, 3, 3) and x[1, 1].tolist() == [255, 0, 0]
    sixteen = Image.fromarray(np.array([[0, 65535, 32768]], np.uint16))
    sixteen.save(tmp_path / "16.png")
    assert images.read(tmp_path / "16.png")[0, :, 0].tolist() == [0, 255, 128]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"hello, not an image", "is not an image"),
    ],
)
def test_not_images(tmp_path, content, message):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=message):
        images.load(path)


def test_truncated_jpeg(tmp_path):
    path = tmp_path / "t.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:600])
    with pytest.raises(ImageError, match="corrupt or truncated"):
        images.load(path)


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="does not exist"):
        images.load(tmp_path / "nope.png")


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (a decompression bomb's shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00")) + chunk(b"IEND", b"")


def test_decompression_bomb_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_claiming(50_000, 50_000))
    with pytest.raises(ImageError, match="decompression bomb"):
        images.load(path)


def test_save_round_trip(tmp_path):
    x = torch.rand(3, 5, 7)
    images.save(x, tmp_path / "x.png")
    back = images.load(tmp_path / "x.png")
    assert torch.allclose(back, x, atol=1 / 255)


def test_to_pil_rounds_to_the_nearest_level():
    gray = images.to_pil(torch.tensor([[[0.5, 0.999, 0.2, -1.0, 2.0]]]))
    assert gray.mode == "L" and np.asarray(gray).tolist() == [[128, 255, 51, 0, 255]]  # to_pil_image: 127, 254
    rgb = images.to_pil(torch.tensor([0.0, 0.5, 1.0])[:, None, None])
    assert rgb.mode == "RGB" and np.asarray(rgb).tolist() == [[[0, 128, 255]]]


def test_exif_orientation_is_applied(tmp_path):
    wide = np.zeros((2, 4, 3), np.uint8)  # stored 2 high, 4 wide
    wide[0, 0] = 255  # top-left pixel red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to view"
    path = tmp_path / "rotated.jpg"
    Image.fromarray(wide).save(path, exif=exif, quality=100)
    x = images.load(path)
    assert x.shape == (3, 4, 2)  # shown upright: 4 high, 2 wide
    assert x[0, 0, 1] > 0.9 and x[0, 0, 0] < 0.1  # the red corner moved to the top right


def test_pillows_bomb_warning_is_an_error(tmp_path):
    # 9,500 x 9,500 = 90 Mpx: under cnnlab's cap, over Pillow's warning threshold (89.5 Mpx).
    path = tmp_path / "big.png"
    path.write_bytes(_png_claiming(9_500, 9_500))
    with pytest.raises(ImageError, match="decompression bomb"):
        images.load(path)


def test_a_folder_is_not_an_image(tmp_path):
    with pytest.raises(ImageError, match="is a folder"):
        images.load(tmp_path)


def test_batch_stacks_and_converts(tmp_path):
    Image.fromarray(np.full((6, 5), 100, np.uint8), "L").save(tmp_path / "g.png")
    Image.fromarray(np.full((6, 5, 3), 200, np.uint8), "RGB").save(tmp_path / "c.png")
    x = images.batch([tmp_path / "g.png", tmp_path / "c.png"])
    assert x.shape == (2, 3, 6, 5) and x.dtype == torch.float32
    assert x[0].unique().tolist() == [pytest.approx(100 / 255)]
    assert images.batch([tmp_path / "c.png"], channels=1).shape == (1, 1, 6, 5)


def test_batch_needs_one_size(tmp_path):
    Image.fromarray(np.zeros((6, 5), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((7, 5), np.uint8)).save(tmp_path / "b.png")
    with pytest.raises(ImageError, match="differ in size"):
        images.batch([tmp_path / "a.png", tmp_path / "b.png"])
    assert images.batch([tmp_path / "a.png", tmp_path / "b.png"], size=(8, 8)).shape == (2, 1, 8, 8)
    with pytest.raises(ImageError, match="no image files"):
        images.batch([])


def test_grayscale_of_a_batch_keeps_the_batch_axis():
    x = torch.rand(4, 3, 5, 6)
    gray = images.grayscale(x)
    assert gray.shape == (4, 1, 5, 6)
    torch.testing.assert_close(gray[:, 0], 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])
    with pytest.raises(ImageError, match="1 or 3 channels"):
        images.grayscale(torch.rand(2, 5, 5))


def test_a_pipe_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "x.png"
    os.mkfifo(fifo)
    with pytest.raises(ImageError, match="not a regular file"):
        images.load(fifo)


def test_floating_point_tiff_in_0_1(tmp_path):
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32), "F").save(tmp_path / "f.tif")
    assert images.read(tmp_path / "f.tif")[0, :, 0].tolist() == [0, 128, 255]


def test_a_path_too_long_for_the_system(tmp_path):
    with pytest.raises(ImageError, match="cannot open .*File name too long"):
        images.load(tmp_path / ("a" * 300 + ".png"))
