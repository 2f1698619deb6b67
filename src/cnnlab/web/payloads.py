"""What the page's JavaScript receives: cnnlab's results as JSON-ready values.

Pictures travel as PNG data URIs: a feature map is drawn with one colour scale for its whole layer
(so a quiet channel looks quiet), at the map's own size; the browser enlarges it with square pixels.
Numbers the page computes with (the value under a click, the sums) always come from the server.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image

from cnnlab.data import images
from cnnlab.errors import UsageError
from cnnlab.inspect.explain import LayerOutput
from cnnlab.inspect.inside import evident_cam
from cnnlab.inspect.summary import Summary
from cnnlab.runs.folder import no_nan
from cnnlab.runs.trained import TrainedModel
from cnnlab.teach import steps
from cnnlab.teach.filters import KERNELS, resolve

MAX_CHANNELS = 64  # feature maps sent per layer (the page says how many more there are)
MAX_BARS = 1024  # values of a vector layer drawn as bars
MAX_WINDOWS = 400  # windows of the playground listed with their sums
MAX_PLAYGROUND = 64  # rows and columns of the playground's matrix
TOP = 5
_VIRIDIS = (colormaps["viridis"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)  # (256, 3)
_JET = colormaps["jet"](np.linspace(0, 1, 256))[:, :3].astype(np.float32)  # (256, 3)


def png_uri(array: np.ndarray) -> str:
    """uint8 (H, W) or (H, W, 3) as a PNG data URI."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def picture_uri(image: torch.Tensor) -> str:
    """A (C, H, W) image in [0, 1] as a PNG data URI."""
    return png_uri(np.asarray(images.to_pil(image)))


def top_classes(probabilities: torch.Tensor, classes: list[str], k: int = TOP) -> list[dict[str, Any]]:
    """The k most likely classes of one image's probabilities (classes,), most likely first."""
    values, indices = probabilities.topk(min(k, len(classes)))
    return [{"class": classes[i], "index": i, "probability": v} for v, i in zip(values.tolist(), indices.tolist())]


def layer_view(record: LayerOutput, max_channels: int = MAX_CHANNELS) -> dict[str, Any]:
    """One layer's output for the page: feature maps (C, H, W) as pictures on the layer's colour scale,
    a vector (F,) as bars, anything else as its shape."""
    out = record.output
    view: dict[str, Any] = {"name": record.name, "kind": record.kind, "shape": list(out.shape),
                            "in_shape": list(record.input.shape)}
    finite = out[torch.isfinite(out)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.numel() else (0.0, 0.0)
    view["range"] = [lo, hi]
    if out.dim() == 3:
        shown = out[:max_channels]  # (c, H, W)
        scaled = ((shown - lo) / (hi - lo if hi > lo else 1.0) * 255).nan_to_num(0).clamp(0, 255)
        levels = scaled.round().to(torch.uint8).numpy()  # (c, H, W)
        view["view"] = "maps"
        view["maps"] = [png_uri(_VIRIDIS[m]) for m in levels]
        view["hidden"] = out.shape[0] - len(shown)
    elif out.dim() == 1:
        view["view"] = "bars"
        view["bars"] = no_nan(out[:MAX_BARS].tolist())
        view["hidden"] = max(0, out.shape[0] - MAX_BARS)
    else:
        view["view"] = "shape"
    return view


def cam_view(model: TrainedModel, shown: torch.Tensor, x: torch.Tensor) -> dict[str, Any]:
    """Grad-CAM for the predicted class over the picture: shown (1, C, H, W) in [0, 1], x the network's input.
    A network without feature maps (an MLP) has none: {"error": why}."""
    try:
        _, cam = evident_cam(model.net, x)
    except UsageError as exc:
        return {"error": str(exc)}
    heat = _JET[(cam.maps[0].clamp(0, 1) * 255).round().long().numpy()]  # (H, W, 3)
    image = shown[0].float()
    base = image.expand(3, -1, -1) if image.shape[0] == 1 else image  # (3, H, W)
    blended = 0.5 * base.permute(1, 2, 0).numpy() + 0.5 * heat  # (H, W, 3)
    c = int(cam.classes[0])
    return {"layer": cam.layer, "class": model.classes[c], "probability": float(cam.probabilities[0, c]),
            "empty": bool(cam.empty[0]), "picture": png_uri((blended * 255 + 0.5).clip(0, 255).astype(np.uint8)),
            "size": list(cam.raw.shape[1:])}


def diagram(s: Summary, depth: int = 3) -> list[dict[str, Any]]:
    """The network layer by layer: shapes in and out, parameters and each formula with its numbers."""
    rows = []
    for r in s.shown(depth):
        rows.append({
            "name": r.name or s.model, "kind": r.kind, "depth": r.depth, "detail": r.detail,
            "in_shape": list(r.in_shape) if r.in_shape is not None else None,
            "out_shape": list(r.out_shape) if r.out_shape is not None else None,
            "params": r.params if r.leaf or not r.children else None, "mult_adds": r.mult_adds,
            "receptive_field": r.receptive, "formulas": [str(step) for step in r.math.steps] if r.math else [],
            "call": r.call, "residual": not r.module,
        })
    return rows


# --- the convolution playground ----------------------------------------------------------------

OPERATIONS = ("conv", "convolve", "maxpool", "avgpool")


def kernels() -> list[dict[str, Any]]:
    """The named filters the playground offers, with their weights."""
    return [{"name": k.name, "about": k.about, "weights": [list(row) for row in k.weights]} for k in KERNELS.values()]


def _checked_int(value: Any, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UsageError(f"{name} must be a whole number from {low} to {high}, not {value!r}")
    return value


def playground(request: dict[str, Any]) -> dict[str, Any]:
    """One convolution or pooling of a matrix, every window's arithmetic and the output-size formula,
    from cnnlab's reference ops (teach/steps.py). The matrix and kernel are text; never file names."""
    op = request.get("op", "conv")
    if op not in OPERATIONS:
        raise UsageError(f"unknown operation {op!r}; use one of {', '.join(OPERATIONS)}")
    matrix = steps.parse_matrix(str(request.get("matrix", "")), files=False)
    if max(matrix.shape) > MAX_PLAYGROUND:
        raise UsageError(f"the playground takes matrices of up to {MAX_PLAYGROUND}x{MAX_PLAYGROUND}, "
                               f"not {matrix.shape[0]}x{matrix.shape[1]}; `cnnlab conv` takes larger ones")
    stride = _checked_int(request.get("stride", 1), "stride", 1, MAX_PLAYGROUND)
    padding = _checked_int(request.get("padding", 0), "padding", 0, MAX_PLAYGROUND)
    dilation = _checked_int(request.get("dilation", 1), "dilation", 1, MAX_PLAYGROUND)
    kernel = None
    if op in ("conv", "convolve"):
        label, kernel = resolve(str(request.get("kernel", "")), files=False)
        if kernel is None:
            raise UsageError("sobel is two kernels (the gradient magnitude); pick sobel-x or sobel-y here")
        if max(kernel.shape) > MAX_PLAYGROUND:
            raise UsageError(f"the kernel may be up to {MAX_PLAYGROUND}x{MAX_PLAYGROUND}")
        text = f"{op}(stride={stride}, padding={padding}, dilation={dilation})"
    else:
        size = _checked_int(request.get("size", 2), "the pooling window", 1, MAX_PLAYGROUND)
        ceil = bool(request.get("ceil_mode", False))
        extra = f", dilation={dilation}" if op == "maxpool" else ""
        text = f"{op}({size}, stride={stride}, padding={padding}{extra}, ceil_mode={str(ceil).lower()})"
    trace = steps.run(matrix, text, kernel)[0]
    windows = trace.windows(MAX_WINDOWS)
    return {
        "step": trace.label, "input": trace.input.tolist(), "padded": no_nan(trace.padded.tolist()),
        "kernel": trace.kernel.tolist() if trace.kernel is not None else None,
        "output": trace.output.tolist(), "notes": trace.notes,
        "sizes": [{"name": s.name, "formula": s.formula, "value": s.value} for s in trace.sizes],
        "windows": [{"row": w.row, "col": w.col, "values": no_nan(w.values.tolist()), "arithmetic": w.arithmetic,
                     "result": no_nan(float(w.result)), "source": list(w.source) if w.source else None} for w in windows],
        "hidden": trace.output.size - len(windows),
    }


def matrix_from_picture(blob: images.Blob, rows: int) -> dict[str, Any]:
    """An uploaded picture as a small grayscale matrix of 0..255 values, `rows` high (width to scale)."""
    rows = _checked_int(rows, "rows", 2, MAX_PLAYGROUND)
    full = Image.fromarray(images.read(blob, channels=1)[:, :, 0])  # decoded once, (H, W) grayscale
    cols = max(2, min(MAX_PLAYGROUND, round(rows * full.width / full.height)))
    small = np.asarray(full.resize((cols, rows), Image.Resampling.BILINEAR))  # (rows, cols), as images.read resizes
    return {"matrix": "; ".join(" ".join(str(int(v)) for v in row) for row in small), "rows": rows, "cols": cols}
