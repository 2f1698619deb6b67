"""Image files <-> tensors, the way lecture 000 does it with Pillow, made safe.

`read` decodes a file into a uint8 array (H, W, C); `load` gives the float tensor (C, H, W)
in [0, 1] that a network takes. Both drop alpha, turn palette and 16-bit images into 8-bit
grayscale or RGB, honour the EXIF orientation, and turn every decoding failure (corrupt,
truncated, empty, not an image, a decompression bomb) into an `ImageError` that names the file.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from cnnlab.errors import ImageError

# File endings treated as images when scanning folders (as torchvision's ImageFolder does).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")

# Refuse images with more pixels than this before decoding them: a 40,000 x 40,000 PNG of
# a few kilobytes would otherwise take gigabytes of memory. 100 megapixels fits any camera.
# Pillow's own check (a warning from 89.5 Mpx, made an error here) usually fires first; this
# cap still holds where a program has raised or removed Pillow's Image.MAX_IMAGE_PIXELS.
MAX_PIXELS = 100_000_000

Size = tuple[int, int]  # (height, width)

# The formats a `Blob` (bytes from elsewhere: an upload) may be: those IMAGE_EXTENSIONS name. Pillow would
# otherwise also try EPS, which hands the bytes to Ghostscript.
BLOB_FORMATS = ("JPEG", "PNG", "PPM", "BMP", "TIFF", "WEBP", "GIF")

# A real photograph shipped with cnnlab (CC0, see data/sample/README.md), for trying filters.
SAMPLE_IMAGE = Path(__file__).parent / "sample" / "chelsea.jpg"


@dataclass(frozen=True)
class Blob:
    """An image file's bytes held in memory (an upload to the web page), with a name for messages.
    `read`, `load` and `Preprocess.load` take one wherever they take a path, with the same checks."""

    name: str
    data: bytes

    def __str__(self) -> str:
        return self.name


def _open(path: Path | Blob) -> Image.Image:
    """Open and fully decode `path`, turning Pillow's many failure modes into ImageError."""
    blob = isinstance(path, Blob)
    try:
        if not blob and path.exists() and not path.is_file() and not path.is_dir():
            # A FIFO or a device would block or never end; only regular files are read.
            raise ImageError(f"{path} is not a regular file (a pipe or a device?); give an image file")
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; treat it as an error.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with (Image.open(io.BytesIO(path.data), formats=BLOB_FORMATS) if blob else Image.open(path)) as img:
                width, height = img.size
                if width * height > MAX_PIXELS:
                    raise ImageError(
                        f"{path} is {width}x{height} pixels, more than cnnlab's limit of "
                        f"{MAX_PIXELS:,}; shrink it first (possibly a decompression bomb)"
                    )
                img.load()
                return ImageOps.exif_transpose(img)
    except ImageError:
        raise
    except FileNotFoundError as exc:
        raise ImageError(f"{path} does not exist") from exc
    except IsADirectoryError as exc:
        raise ImageError(f"{path} is a folder, not an image file") from exc
    except UnidentifiedImageError as exc:
        size = len(path.data) if blob else path.stat().st_size if path.exists() else 0
        what = "is empty" if size == 0 else "is not an image Pillow can read (PNG, JPEG, BMP, ...), or is damaged"
        if blob and size:
            what = f"is not an image in a format cnnlab takes ({', '.join(BLOB_FORMATS)}), or is damaged"
        raise ImageError(f"{path} {what}") from exc
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageError(f"{path} is refused as a possible decompression bomb: {exc}") from exc
    except OSError as exc:
        if exc.errno is not None:  # the system refused (a name too long, no permission), not the decoder
            raise ImageError(f"cannot open {str(path)[:80]}: {exc.strerror}") from exc
        raise ImageError(f"{path} is corrupt or truncated ({exc}); re-save or remove it") from exc
    except (SyntaxError, ValueError) as exc:
        raise ImageError(f"{path} is corrupt or truncated ({exc}); re-save or remove it") from exc


def _to_8bit(img: Image.Image) -> Image.Image:
    """Palette, 16-bit, 32-bit and alpha modes -> 'L' (grayscale) or 'RGB'."""
    if img.mode in ("L", "RGB"):
        return img
    if img.mode in ("1", "LA", "La"):
        return img.convert("L")
    if img.mode.startswith("I") or img.mode == "F":
        # 16-bit PNG/TIFF: scale to 0..255 rather than clip, which Pillow's convert does.
        # Floating-point TIFFs usually hold 0..1.
        values = np.asarray(img, dtype=np.float64)
        top = values.max(initial=0)
        if img.mode.startswith("I;16") or top > 255:
            top = 65535.0
        else:
            top = 1.0 if img.mode == "F" and top <= 1.0 else 255.0
        return Image.fromarray(np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    return img.convert("RGB")  # RGBA drops alpha; CMYK, YCbCr, LAB convert


def read(path: str | Path | Blob, channels: int | None = None, size: Size | None = None) -> np.ndarray:
    """Decode an image file (or a `Blob` of its bytes) into uint8 (H, W, C).

    channels: 1 (grayscale, ITU-R 601 luma as Pillow and OpenCV compute it), 3 (RGB), or None
    to keep what the file has (1 for grayscale files, 3 otherwise).
    size: (height, width) to resize to, bilinear with antialiasing; None keeps the file's size.
    """
    path = path if isinstance(path, Blob) else Path(path)
    img = _to_8bit(_open(path))
    if channels == 1 and img.mode != "L":
        img = img.convert("L")
    elif channels == 3 and img.mode != "RGB":
        img = img.convert("RGB")
    elif channels not in (None, 1, 3):
        raise ImageError(f"cannot give {channels} channels; images have 1 (grayscale) or 3 (RGB)")
    if size is not None and (img.height, img.width) != tuple(size):
        img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    array = np.asarray(img, dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array  # (H, W, C)


def load(path: str | Path | Blob, channels: int | None = None, size: Size | None = None) -> torch.Tensor:
    """Load an image file as a float tensor (C, H, W) with values in [0, 1]."""
    array = read(path, channels, size)  # (H, W, C) uint8
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)  # (C, H, W)


def save(tensor: torch.Tensor, path: str | Path) -> None:
    """Write a (C, H, W) or (H, W) tensor with values in [0, 1] to an image file."""
    if tensor.dim() == 2:
        tensor = tensor[None]
    if tensor.dim() != 3 or tensor.shape[0] not in (1, 3):
        raise ImageError(f"can only save (1|3, H, W) or (H, W) tensors, not {tuple(tensor.shape)}")
    write(to_pil(tensor), path)


def to_pil(tensor: torch.Tensor) -> Image.Image:
    """A (1|3, H, W) tensor, uint8 or with values in [0, 1], as an 8-bit Pillow image, 'L' or 'RGB'.

    Values in [0, 1] are rounded to the nearest level (0.5 -> 128); torchvision's to_pil_image truncates
    them (0.5 -> 127), which would change the pictures cnnlab has always written.
    """
    if tensor.dtype != torch.uint8:
        tensor = (tensor.detach().cpu().clamp(0, 1) * 255 + 0.5).to(torch.uint8)
    array = tensor.cpu().permute(1, 2, 0).numpy()  # (H, W, C)
    return Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)


def write(img: Image.Image, path: str | Path) -> None:
    """Save a Pillow image, its format chosen by the file ending, with a clear error if it cannot be."""
    try:
        img.save(path)
    except ValueError as exc:  # Pillow: "unknown file extension"
        raise ImageError(f"cannot tell the image format of {path}; end it with .png or .jpg") from exc
    except KeyError as exc:  # a format Pillow reads but cannot write (.psd, .fits, ...)
        what = Path(path).suffix or "such"
        raise ImageError(f"Pillow cannot write {what} files; end {path} with .png or .jpg") from exc
    except OSError as exc:
        raise ImageError(f"cannot write {path}: {exc.strerror or exc}") from exc


# ITU-R BT.601 luma weights: what Pillow's convert("L") and OpenCV's cvtColor(RGB2GRAY) use.
LUMA_601 = (0.299, 0.587, 0.114)


def grayscale(tensor: torch.Tensor) -> torch.Tensor:
    """RGB (…, 3, H, W) -> luma (…, 1, H, W) with the ITU-R 601 weights; 1-channel input is kept.

    Unlike Pillow's convert("L") this stays in floating point, so nothing is rounded to 8 bits.
    """
    if tensor.shape[-3] == 1:
        return tensor
    if tensor.shape[-3] != 3:
        raise ImageError(f"grayscale needs 1 or 3 channels, not {tensor.shape[-3]} (shape {tuple(tensor.shape)})")
    weights = torch.tensor(LUMA_601, dtype=tensor.dtype, device=tensor.device).view(3, 1, 1)
    return (tensor * weights).sum(dim=-3, keepdim=True)  # (…, 1, H, W)


def batch(paths: list[str | Path], channels: int | None = None, size: Size | None = None) -> torch.Tensor:
    """Load several image files into one float batch (N, C, H, W) in [0, 1].

    channels: as in `load`; None gives 3 if any file is in colour, else 1.
    size: (height, width) to resize every image to; needed when the files differ in size.
    """
    if not paths:
        raise ImageError("no image files given")
    arrays = [read(p, channels, size) for p in paths]  # each (H, W, C) uint8
    if channels is None and len({a.shape[2] for a in arrays}) > 1:
        arrays = [np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a for a in arrays]
    sizes = {a.shape[:2] for a in arrays}
    if len(sizes) > 1:
        shown = ", ".join(f"{Path(p).name}: {a.shape[0]}x{a.shape[1]}" for p, a in zip(paths[:4], arrays[:4]))
        raise ImageError(f"the images differ in size ({shown}, ...); pass size=(height, width) to resize them")
    stacked = torch.from_numpy(np.stack(arrays))  # (N, H, W, C) uint8
    return stacked.permute(0, 3, 1, 2).float().div_(255.0)  # (N, C, H, W)
