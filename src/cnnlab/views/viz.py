"""Figures with matplotlib: training curves, the confusion matrix, mosaics of feature maps and
filters, class-activation maps. Each function returns a `Figure`; `png` and `save` write it.

Figures are made with `matplotlib.figure.Figure` and the Agg canvas, never pyplot: no window,
no global state, nothing left open after a report.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cnnlab.errors import printable, ImageError
from cnnlab.runs.folder import atomic_write, why_not_written

DPI = 100


def text(value: object) -> str:
    """Text for a figure, shown as it is: matplotlib reads $...$ as mathematics (a class called US$_5$),
    and cannot draw the bytes of a file name that are not UTF-8 (`printable` replaces them)."""
    return printable(value).replace("$", r"\$")


def png(fig: Figure, dpi: int = DPI) -> bytes:
    """The figure as PNG bytes."""
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def save(fig: Figure, path: str | Path) -> Path:
    """Write the figure to a PNG file atomically."""
    path = Path(path)
    if path.suffix.lower() != ".png":  # the bytes are PNG: another ending would mislabel them
        raise ImageError(f"{path}: figures are written as PNG files; end the name with .png")
    data = png(fig)
    try:
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    except OSError as exc:
        raise ImageError(f"cannot write {path}: {why_not_written(path, exc)}") from exc
    return path


def curves(histories: Mapping[str, Sequence[Mapping[str, float]]]) -> Figure:
    """Loss and accuracy per epoch: training dashed, validation solid, test dotted (--watch-test).

    histories: label -> the rows of history.csv; several labels share the axes (a comparison).
    """
    fig = Figure(figsize=(10, 3.6))
    loss_ax, acc_ax = fig.subplots(1, 2)
    colours = colormaps["tab10"].colors
    several = len(histories) > 1
    for i, (label, rows) in enumerate(histories.items()):
        epochs = [r["epoch"] for r in rows]
        for j, (key, style, what) in enumerate((("train", "--", "train"), ("val", "-", "validation"),
                                                ("test", ":", "test"))):
            colour = colours[(i if several else j) % len(colours)]  # a colour per run, or per split for one run
            for ax, metric, factor in ((loss_ax, "loss", 1), (acc_ax, "accuracy", 100)):
                values = [factor * r.get(f"{key}_{metric}", math.nan) for r in rows]
                if all(math.isnan(v) for v in values):
                    continue
                ax.plot(epochs, values, style, color=colour, marker="o", markersize=3,
                        label=text(f"{label} {what}" if several else what))
    for ax, title in ((loss_ax, "loss (cross-entropy)"), (acc_ax, "accuracy (%)")):
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def confusion(matrix: Sequence[Sequence[int]], classes: Sequence[str]) -> Figure:
    """The confusion matrix: each cell's colour is its share of the true class (the row), its number the count."""
    counts = np.asarray(matrix, dtype=float)  # (true, predicted)
    totals = counts.sum(1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
    k = len(classes)
    side = min(12.0, 2.5 + 0.55 * k)
    fig = Figure(figsize=(side, side * 0.85))
    ax = fig.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    names = [text(c) for c in classes]
    ax.set_xticks(range(k), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), names, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if k <= 20:  # beyond that the numbers no longer fit in their cells
        for t in range(k):
            for p in range(k):  # every count, 0 too (in gray): a cell without a number looks like one left out
                colour = "white" if shares[t, p] > 0.5 else "black" if counts[t, p] else "#999999"
                ax.text(p, t, f"{counts[t, p]:,.0f}", ha="center", va="center", fontsize=7, color=colour)
    fig.tight_layout()
    return fig


def tile(maps: np.ndarray, columns: int, gap: int = 1) -> np.ndarray:
    """(N, h, w) or (N, h, w, 3) -> one array of tiles in rows of `columns`, NaN in the gaps."""
    n, h, w = maps.shape[:3]
    rows = math.ceil(n / columns)
    out = np.full((rows * (h + gap) - gap, columns * (w + gap) - gap, *maps.shape[3:]), np.nan)
    for i, m in enumerate(maps):
        r, c = divmod(i, columns)
        out[r * (h + gap): r * (h + gap) + h, c * (w + gap): c * (w + gap) + w] = m
    return out


def scale_each(maps: torch.Tensor, symmetric: bool = False) -> np.ndarray:
    """Scale each map of (N, ...) to [0, 1] by its own range (symmetric: -max|v|..max|v|, so 0 is the middle)."""
    flat = maps.detach().float().cpu().reshape(len(maps), -1)
    if symmetric:
        top = flat.abs().amax(1, keepdim=True).clamp_min(1e-12)
        low = -top
    else:
        low, top = flat.amin(1, keepdim=True), flat.amax(1, keepdim=True)
    span = (top - low).clamp_min(1e-12)
    return ((flat - low) / span).reshape(maps.shape).numpy()


def mosaic(maps: np.ndarray, title: str, cmap: str = "viridis", columns: int | None = None,
           tile_inches: float = 0.75) -> Figure:
    """Maps already scaled to [0, 1], (N, h, w) through a colour map or (N, h, w, 3) as RGB, in one grid."""
    n = len(maps)
    columns = columns or min(n, 16)
    grid = tile(maps, columns, gap=max(1, maps.shape[1] // 12))
    rows = math.ceil(n / columns)
    fig = Figure(figsize=(max(3.0, columns * tile_inches), rows * tile_inches * maps.shape[1] / maps.shape[2] + 0.5))
    ax = fig.subplots()
    if grid.ndim == 3:  # RGB: white gaps
        ax.imshow(np.nan_to_num(grid, nan=1.0), interpolation="nearest")
    else:
        colour_map = colormaps[cmap].with_extremes(bad="white")
        ax.imshow(np.ma.masked_invalid(grid), cmap=colour_map, vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(text(title), fontsize=9)
    ax.axis("off")
    fig.set_label(title)  # the title as given, e.g. for an <img alt>
    return fig


def _show(ax, image: torch.Tensor) -> None:
    """An image (C, H, W) in [0, 1] on an axes, grayscale for one channel."""
    array = image.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy()
    if array.shape[2] == 1:
        ax.imshow(array[:, :, 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(array, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def cam_grid(images: torch.Tensor, maps: torch.Tensor, captions: Sequence[str], title: str,
             blank: Sequence[str] = ()) -> Figure:
    """Each image (N, C, H, W in [0, 1]) above its class-activation map (N, H, W in [0, 1]) laid over it.

    blank: for each map, "" or why it is blank; a blank map is left off its image (all 0, it would tint
    the whole image one colour and look like a broken picture) and the reason is written under it."""
    n = len(images)
    fig = Figure(figsize=(max(2.2 * n, 3.0), 5.0))
    axes = np.asarray(fig.subplots(2, n, squeeze=False))
    for i in range(n):
        _show(axes[0, i], images[i])
        axes[0, i].set_title(text(captions[i]), fontsize=8)
        _show(axes[1, i], images[i].mean(0, keepdim=True))  # the heat map reads best over a gray image
        if i < len(blank) and blank[i]:
            axes[1, i].set_xlabel(text(blank[i]), fontsize=8, color="#b00020")
        else:
            axes[1, i].imshow(maps[i].numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1, interpolation="bilinear")
    axes[0, 0].set_ylabel("image", fontsize=8)
    axes[1, 0].set_ylabel("Grad-CAM", fontsize=8)
    fig.suptitle(text(title), fontsize=9)
    fig.set_label(title)
    fig.tight_layout()
    return fig
