"""Augmentation of whole uint8 batches (N, C, H, W), every image with its own random draw.

A spec (cnnlab/augment_spec.py: "flip, rotation(15), jitter(0.2, 0.2, 0.2), crop(4)") lists items; each
item here first draws its parameters for every image of the batch, then applies them:

- The draws are ours, from the `generator` the loader seeds with (seed, epoch, step). torchvision's
  transforms draw from the global RNG, so a resumed run would not repeat its batches nor a seed its run;
  and a v2 transform called on a whole batch draws one set of parameters for all of it.
- crop, flip, vflip and grayscale act on the whole batch at once: an index gather, a `where` between
  the batch and its transformed self (crop and flip are the loader's original paths, bit for bit).
- rotation, scale and jitter call torchvision.transforms.v2.functional once per image with that
  image's draw (it takes one angle or factor per call), on one thread: about 0.06 ms an image for a
  3x32x32 rotation, more for jitter's hue; benchmarks/augment_cost.py measures each item per epoch.
"""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType

import torch
import torch.nn.functional as F

from cnnlab.augment_spec import Augmentation, Item, parse_augment


def v2() -> ModuleType:
    """torchvision.transforms.v2.functional, imported on first use: importing torchvision costs about
    0.9 s (it loads torch._dynamo), which only runs with rotation, scale, jitter or grayscale pay."""
    import torchvision.transforms.v2.functional as tvf

    return tvf


# --- crop and flips: whole batches -------------------------------------------------------------------

def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad each side by `padding`, then crop every image back to its size at its own random
    offset, as torchvision's RandomCrop(size, padding) does one image at a time."""
    return _crop(x, padding, _draw_crop(len(x), padding, generator))


def random_flip(x: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Mirror a random share `p` of the batch left to right."""
    return _where(_draw_coin(len(x), p, generator), x.flip(-1), x)


def _draw_crop(n: int, padding: int, generator: torch.Generator) -> torch.Tensor:
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    return torch.stack([dy, dx], 1)  # (N, 2): each image's window in the padded batch


def _crop(x: torch.Tensor, padding: int, offsets: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))  # (N, C, H+2p, W+2p)
    offsets = offsets.to(x.device)  # drawn on the CPU; the batch may be on a GPU
    rows = (offsets[:, 0, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (N, 1, H, 1)
    cols = (offsets[:, 1, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (N, 1, 1, W)
    images = torch.arange(n, device=x.device)[:, None, None, None]
    channels = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[images, channels, rows, cols]  # (N, C, H, W)


def _draw_coin(n: int, p: float, generator: torch.Generator) -> torch.Tensor:
    return torch.rand(n, generator=generator) < p  # (N,) which images the item changes


def _where(chosen: torch.Tensor, changed: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # The draws are the CPU generator's; a batch kept on a GPU (the loader's resident data) is chosen there.
    return torch.where(chosen.to(x.device)[:, None, None, None], changed, x)  # (N, C, H, W)


def _grey(x: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    # One call on the whole batch: there is nothing to draw per image but whether. One channel stays as it is.
    return _where(chosen, v2().rgb_to_grayscale(x, num_output_channels=x.shape[1]), x)


# --- rotation, scale, jitter: v2.functional image by image --------------------------------------------

def _draw_uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)  # (N,)


def _each(x: torch.Tensor, params: torch.Tensor, one: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
          ) -> torch.Tensor:
    """`one(image, its parameters)` on each image of a batch, on one thread."""
    if not len(x):
        return x
    # One 32x32 image is too little work to share out: on 2 threads each call took 1.3-2x as long as on one
    # on an idle CPU, and 10-100x where another process held a core (every op waits for the other thread).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.stack([one(image, p) for image, p in zip(x, params)])  # (N, C, H, W)
    finally:
        torch.set_num_threads(threads)


def _rotate(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    # Bilinear rather than RandomRotation's default nearest: at 28 or 32 pixels nearest turns thin strokes
    # into stairs, and both cost the same here.
    tvf = v2()
    return _each(x, angles, lambda image, a: tvf.rotate(image, float(a), interpolation=tvf.InterpolationMode.BILINEAR))


def _scale(x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    # Resize about the centre and keep the size (a factor above 1 crops, below 1 pads with 0): Resize
    # as an augmentation, one affine map of each image.
    tvf = v2()
    return _each(x, factors, lambda image, s: tvf.affine(image, angle=0.0, translate=[0, 0], scale=float(s),
                                                         shear=[0.0, 0.0],
                                                         interpolation=tvf.InterpolationMode.BILINEAR))


def _draw_jitter(item: Item, n: int, generator: torch.Generator) -> torch.Tensor:
    """ColorJitter's draw for each image: brightness, contrast, saturation factors and a hue shift, and the
    order to apply them in (ColorJitter shuffles it per call, so here per image)."""
    amounts = [item[k] for k in ("brightness", "contrast", "saturation")]
    factors = [_draw_uniform(n, max(0.0, 1 - a), 1 + a, generator) for a in amounts]
    hue = _draw_uniform(n, -item["hue"], item["hue"], generator)
    order = torch.rand(n, 4, generator=generator).argsort(1).double()  # (N, 4) a random permutation each
    return torch.stack([torch.stack([*factors, hue], 1), order], 1)  # (N, 2, 4)


def _jitter(x: torch.Tensor, item: Item, params: torch.Tensor) -> torch.Tensor:
    tvf = v2()
    adjust = [tvf.adjust_brightness, tvf.adjust_contrast, tvf.adjust_saturation, tvf.adjust_hue]
    active = [a > 0 for a in item.args]  # as ColorJitter, an amount of 0 skips its step (and its cost)

    def one(image: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        for k in p[1].long().tolist():
            if active[k]:
                image = adjust[k](image, float(p[0, k]))
        return image

    return _each(x, params, one)


# --- the items -----------------------------------------------------------------------------------------

def draw(item: Item, n: int, generator: torch.Generator) -> torch.Tensor:
    """The random parameters of `item` for each of `n` images: (N, ...), row i for image i."""
    if item.name in ("flip", "vflip", "grayscale"):
        return _draw_coin(n, item["p"], generator)  # (N,) bool
    if item.name == "crop":
        return _draw_crop(n, int(item["padding"]), generator)  # (N, 2)
    if item.name == "rotation":
        return _draw_uniform(n, -item["degrees"], item["degrees"], generator)  # (N,) degrees
    if item.name == "scale":
        return _draw_uniform(n, 1 - item["amount"], 1 + item["amount"], generator)  # (N,) factors
    return _draw_jitter(item, n, generator)  # (N, 2, 4)


def apply(x: torch.Tensor, item: Item, params: torch.Tensor) -> torch.Tensor:
    """`item` on a uint8 batch (N, C, H, W) with `draw`'s parameters; a uint8 batch of the same shape."""
    if item.name == "flip":
        return _where(params, x.flip(-1), x)
    if item.name == "vflip":
        return _where(params, x.flip(-2), x)
    if item.name == "grayscale":
        return _grey(x, params)
    if item.name == "crop":
        return _crop(x, int(item["padding"]), params)
    if item.name == "rotation":
        return _rotate(x, params)
    if item.name == "scale":
        return _scale(x, params)
    return _jitter(x, item, params)


def describe(item: Item, params: torch.Tensor) -> str:
    """One image's draw in words, for the report's captions: "+12.5°", "x1.13", "shift x +1, y -2"."""
    if item.name in ("flip", "vflip", "grayscale"):
        changed = {"flip": "mirrored", "vflip": "upside down", "grayscale": "grey"}[item.name]
        return changed if bool(params) else "as it was"
    if item.name == "crop":
        p = int(item["padding"])
        return f"shift x {p - int(params[1]):+d}, y {p - int(params[0]):+d}"
    if item.name == "rotation":
        return f"{float(params):+.1f}°"
    if item.name == "scale":
        return f"x{float(params):.2f}"
    names = ("brightness", "contrast", "saturation", "hue")
    return ", ".join(f"{n} {float(v):+.2f}" if n == "hue" else f"{n} x{float(v):.2f}"
                     for n, v, a in zip(names, params[0], item.args) if a > 0)


def augment(x: torch.Tensor, spec: str | Augmentation, generator: torch.Generator) -> torch.Tensor:
    """Apply augmentation `spec` ("none", "flip", "crop+flip", "flip, rotation(15), crop(4)", ...) to a
    uint8 batch (N, C, H, W), each item in turn, each image drawn from `generator` on its own."""
    items = (parse_augment(spec) if isinstance(spec, str) else spec).items
    for item in items:
        x = apply(x, item, draw(item, len(x), generator))
    return x
