"""Classic image filters (lectures 002 and 004): named kernels, edge handling, display scaling.

A filter here is exactly one `nn.Conv2d` with a hand-made weight: `apply` pads the image the way
the chosen edge mode says and runs `F.conv2d`, which computes cross-correlation (the kernel is
not flipped, as in OpenCV's filter2D and scipy.ndimage.correlate). Colour images become
grayscale with the ITU-R 601 luma weights first, as OpenCV's cvtColor does in lecture 002,
unless `color=True` filters each channel on its own.

Edge modes (lecture 002's "edge handling"), with their names elsewhere:

| cnnlab  | what the border sees             | scipy.ndimage | OpenCV               | torch F.pad |
|---------|----------------------------------|---------------|----------------------|-------------|
| zero    | zeros ("padding")                | constant      | BORDER_CONSTANT      | constant    |
| extend  | the nearest border pixel         | nearest       | BORDER_REPLICATE     | replicate   |
| reflect | mirrored, edge pixel not repeated | mirror        | BORDER_REFLECT_101   | reflect     |
| wrap    | the opposite side                | wrap          | BORDER_WRAP          | circular    |
| crop    | nothing: the output shrinks      | (valid part)  | -                    | no padding  |
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from math import comb
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from cnnlab.data import images
from cnnlab.errors import UsageError
from cnnlab.teach.steps import is_file, parse_matrix

EDGE_MODES = {"zero": "constant", "extend": "replicate", "reflect": "reflect", "wrap": "circular", "crop": None}
SCALES = ("auto", "clip", "minmax", "abs")


@dataclass(frozen=True)
class Kernel:
    """A named filter: its weights and what it is for."""

    name: str
    weights: tuple[tuple[float, ...], ...]
    about: str

    @property
    def matrix(self) -> np.ndarray:
        return np.array(self.weights, dtype=np.float64)


def _k(name: str, rows: list[list[float]], about: str, scale: float = 1.0) -> Kernel:
    return Kernel(name, tuple(tuple(v * scale for v in row) for row in rows), about)


SOBEL_X = [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]
SOBEL_Y = [[-1, -2, -1], [0, 0, 0], [1, 2, 1]]
EDGE = [[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]]
KERNELS = {k.name: k for k in [
    _k("sobel-x", SOBEL_X, "Sobel S_x: change from left to right, so vertical edges (lecture 002)"),
    _k("sobel-y", SOBEL_Y, "Sobel S_y: change from top to bottom, so horizontal edges (lecture 002)"),
    _k("box", [[1] * 3] * 3, "box blur: the mean of the 3x3 neighbourhood (box:N for NxN)", 1 / 9),
    _k("gaussian", [[1, 2, 1], [2, 4, 2], [1, 2, 1]], "Gaussian blur, lecture 004's first kernel "
       "(gaussian:N for the NxN binomial approximation)", 1 / 16),
    _k("sharpen", [[0, -1, 0], [-1, 5, -1], [0, -1, 0]], "sharpen: the pixel plus its difference from its neighbours"),
    _k("high-pass", [[0, -1, 0], [-1, 4, -1], [0, -1, 0]], "high-pass: keeps only fast changes (lecture 002)"),
    _k("laplacian", [[0, 1, 0], [1, -4, 1], [0, 1, 0]], "Laplacian: the second derivative, zero on flat "
       "and linear ramps"),
    _k("edge", EDGE, "edge detection, -1 all round and 8 in the centre (lectures 002 and 004)"),
    _k("emboss", [[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], "emboss: lecture 004's second kernel, light from the "
       "bottom right"),
    _k("quiz-a", EDGE, "lecture 002 quiz (a): all-direction edges, not horizontal ones"),
    _k("quiz-b", SOBEL_X, "lecture 002 quiz (b): Sobel S_x, vertical edges"),
    _k("quiz-c", [[0, -1, 0], [-2, 6, -2], [0, -1, 0]], "lecture 002 quiz (c): weighs left-right change "
       "more, so mostly vertical edges"),
    _k("quiz-d", SOBEL_Y, "lecture 002 quiz (d), the answer: Sobel S_y, horizontal edges"),
]}
# Not a single kernel: sqrt(S_x^2 + S_y^2), the gradient magnitude.
SOBEL = "sobel"
GRID_DEFAULT = ("sobel-x", "sobel-y", "sobel", "gaussian:5", "sharpen", "edge", "emboss")


def kernel_names() -> list[str]:
    return [*KERNELS, SOBEL]


def _binomial(n: int) -> np.ndarray:
    row = np.array([comb(n - 1, k) for k in range(n)], dtype=np.float64)
    return np.outer(row, row) / row.sum() ** 2


def resolve(kernel: str | np.ndarray, files: bool = True) -> tuple[str, np.ndarray | None]:
    """A kernel name ('sobel-x', 'box:7', 'gaussian:5'), matrix text ('1 0; 0 -1') or array ->
    (label, weights); weights is None for 'sobel', the gradient magnitude. files=False: never a file's
    matrix (see steps.parse_matrix)."""
    if isinstance(kernel, np.ndarray):
        return "custom", _checked(kernel.astype(np.float64))
    name = kernel.strip().lower()
    if name == SOBEL:
        return SOBEL, None
    if name in KERNELS:
        return name, KERNELS[name].matrix
    m = re.fullmatch(r"(box|gaussian):(-?\d+)", name)
    if m:
        n = int(m.group(2))
        if not 1 <= n <= 255:
            raise UsageError(f"{name}: the size must be 1 to 255")
        weights = np.full((n, n), 1.0 / n**2) if m.group(1) == "box" else _binomial(n)
        return name, weights
    if re.search(r"\d", name) or (files and is_file(kernel)):
        return "custom", _checked(parse_matrix(kernel, files).astype(np.float64))
    raise UsageError(f"unknown kernel {kernel!r}; named kernels: {', '.join(kernel_names())}, box:N, "
                     "gaussian:N; or write the matrix, e.g. \"1 0 -1; 2 0 -2; 1 0 -1\"")


# The most that a kernel's largest weight times its size may be: pixels are in [0, 1], so every output stays far inside float32.
MAX_WEIGHT_SUM = 1e9


def _checked(weights: np.ndarray) -> np.ndarray:
    """A custom kernel whose outputs can be computed and shown: finite weights of a sane size."""
    total = float(np.abs(weights).max(initial=0.0)) * weights.size  # an upper bound that cannot overflow as a sum can
    if not np.isfinite(weights).all() or total > MAX_WEIGHT_SUM:
        raise UsageError(f"the kernel's weights are too large (up to {total:.3g} in absolute value, summed over the "
                         f"window; at most {MAX_WEIGHT_SUM:.0e}): the filtered values would overflow. Use smaller weights")
    return weights


def _padding(kernel: tuple[int, int]) -> tuple[int, int, int, int]:
    """F.pad's (left, right, top, bottom) that keep the size; the kernel's centre is at k // 2,
    as in scipy.ndimage and OpenCV, which matters for even sizes."""
    (kh, kw) = kernel
    return kw // 2, kw - 1 - kw // 2, kh // 2, kh - 1 - kh // 2


def correlate(image: torch.Tensor, weights: np.ndarray, edge: str = "zero", stride: int = 1) -> torch.Tensor:
    """One kernel over every channel of image (C, H, W) with an edge mode -> (C, H', W')."""
    if edge not in EDGE_MODES:
        raise UsageError(f"unknown edge mode {edge!r}; choose one of {', '.join(EDGE_MODES)}")
    if weights.ndim != 2:
        raise UsageError(f"a filter kernel is a matrix, not shape {weights.shape}")
    if not 1 <= stride <= 10_000:
        raise UsageError(f"the stride must be from 1 to 10,000, not {stride}")
    channels, height, width = image.shape
    kh, kw = weights.shape
    x = image[:, None]  # (C, 1, H, W): each channel filtered on its own
    mode = EDGE_MODES[edge]
    if mode is not None:
        if mode in ("reflect", "circular") and (kh > height or kw > width):
            # Mirroring or wrapping more than once around the image has no agreed meaning.
            raise UsageError(f"{edge} needs a kernel no larger than the image ({kh}x{kw} > {height}x{width}); "
                             "use edge=zero or extend")
        x = F.pad(x, _padding((kh, kw)), mode=mode)
    if x.shape[-2] < kh or x.shape[-1] < kw:
        raise UsageError(f"the {kh}x{kw} kernel does not fit the {height}x{width} image with edge={edge}")
    weight = torch.as_tensor(weights, dtype=image.dtype)[None, None]  # (1, 1, KH, KW)
    return F.conv2d(x, weight, stride=stride)[:, 0]  # (C, H', W')


def apply(image: torch.Tensor, kernel: str | np.ndarray, edge: str = "zero", stride: int = 1,
          color: bool = False) -> torch.Tensor:
    """Filter image (C, H, W) in [0, 1]; returns the raw result (1 or C, H', W'), not yet scaled."""
    return _filtered(image, resolve(kernel)[1], edge, stride, color)


def _filtered(image: torch.Tensor, weights: np.ndarray | None, edge: str, stride: int, color: bool) -> torch.Tensor:
    """`apply` with the kernel already resolved; weights None is the Sobel gradient magnitude."""
    if not color:
        image = images.grayscale(image)  # (1, H, W)
    if weights is None:
        gx = correlate(image, KERNELS["sobel-x"].matrix, edge, stride)
        gy = correlate(image, KERNELS["sobel-y"].matrix, edge, stride)
        return torch.sqrt(gx**2 + gy**2)
    return correlate(image, weights, edge, stride)


def display(result: torch.Tensor, weights: np.ndarray | None, scale: str = "auto") -> tuple[torch.Tensor, str]:
    """Scale a raw filter output into [0, 1] for viewing; returns it and the rule used.

    auto: a kernel whose weights sum to 1 (blur, sharpen, emboss) keeps brightness, so values
    are clipped to [0, 1]; anything else (edge detectors, sum 0) is stretched min to max, as
    lecture 003 does by hand and matplotlib's imshow does by default.
    """
    if scale not in SCALES:
        raise UsageError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    if scale == "auto":
        scale = "clip" if weights is not None and abs(weights.sum() - 1.0) < 1e-6 else "minmax"
    if scale == "clip":
        return result.clamp(0, 1), scale
    values = result.abs() if scale == "abs" else result
    low = values.amin() if scale == "minmax" else values.new_zeros(())
    span = values.amax() - low
    return ((values - low) / span if span > 0 else torch.zeros_like(values)), scale


@dataclass
class Filtered:
    """What `filter_file` did, for the command to report."""

    kernel: str
    weights: np.ndarray | None
    edge: str
    input_size: tuple[int, int]
    output: torch.Tensor  # (1 or 3, H', W') the raw result
    shown: torch.Tensor  # (1 or 3, H', W') scaled into [0, 1]
    scale: str
    path: Path | None


def filter_file(path: str | Path, kernel: str | np.ndarray = "sobel", edge: str = "zero", out: str | Path | None = None,
                stride: int = 1, color: bool = False, scale: str = "auto") -> Filtered:
    """Load an image, filter it, scale it for display and (if out is given) write it."""
    image = images.load(path, channels=3 if color else None)  # (C, H, W)
    label, weights = resolve(kernel)
    raw = _filtered(image, weights, edge, stride, color)
    shown, used = display(raw, weights, scale)
    if out is not None:
        images.save(shown, out)
    return Filtered(label, weights, edge, tuple(image.shape[1:]), raw, shown, used, Path(out) if out else None)


def grid(path: str | Path, kernels: list[str] | tuple[str, ...] = GRID_DEFAULT, edge: str = "zero",
         out: str | Path = "filters.png", color: bool = False, scale: str = "auto", columns: int = 4) -> Path:
    """The image beside several filtered versions of it, each captioned, in one image file."""
    image = images.load(path, channels=3 if color else None)  # (C, H, W)
    tiles = [("original" + ("" if color else " (luma)"), image if color else images.grayscale(image))]
    for name in kernels:
        label, weights = resolve(name)
        raw = _filtered(image, weights, edge, 1, color)
        tiles.append((label, display(raw, weights, scale)[0]))
    height, width = image.shape[1:]
    caption = max(14, width // 20)
    font = ImageFont.load_default(size=caption)
    rows = -(-len(tiles) // columns)
    gap = 4
    canvas = Image.new("RGB", (columns * (width + gap) + gap, rows * (height + caption + 2 * gap) + gap), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (label, tile) in enumerate(tiles):
        left = gap + (i % columns) * (width + gap)
        top = gap + (i // columns) * (height + caption + 2 * gap)
        draw.text((left, top), f"{label}, edge={edge}" if i else label, fill="black", font=font)
        canvas.paste(images.to_pil(tile).convert("RGB"), (left, top + caption + gap))
    images.write(canvas, out)
    return Path(out)
