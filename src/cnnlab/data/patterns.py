"""Lecture 000's toy problem: is a patch of two colours a zebra (stripes) or a checkerboard?

Each image is a square patch of the pattern on a plain, noisy background. Stripe width, stripe
direction, phase, the two colours and the background colour vary at random. In the train and
test splits the patch sits within `train_shift` pixels of the centre; the extra split
"test-shifted" puts it further away than any training image, which measures the lecture's
argument that a CNN's shared local filters carry over to new positions where an MLP's
position-specific weights do not.
"""

from __future__ import annotations

import torch

from cnnlab.data.dataset import ImageData, Split

CLASSES = ["zebra", "checkerboard"]


def _offsets(n: int, low: int, high: int, train_shift: int, shifted: bool, g: torch.Generator) -> torch.Tensor:
    """(n, 2) top-left corners: within `train_shift` of the centre, or (shifted) beyond it."""
    centre = (low + high) // 2
    if not shifted:
        return torch.randint(centre - train_shift, centre + train_shift + 1, (n, 2), generator=g)
    corners = torch.randint(low, high + 1, (n, 2), generator=g)
    for i in range(n):  # redraw until at least one coordinate lies outside the training range
        while (corners[i] - centre).abs().max() <= train_shift:
            corners[i] = torch.randint(low, high + 1, (2,), generator=g)
    return corners


def generate(
    n: int, size: int = 28, patch: int = 12, train_shift: int = 3, shifted: bool = False, seed: int = 0
) -> Split:
    """`n` RGB pattern images (n, 3, size, size) uint8 and labels (0 zebra, 1 checkerboard)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (n,), generator=g)
    width = torch.randint(1, 4, (n, 1, 1), generator=g)  # stripe / square width in pixels
    vertical = torch.randint(0, 2, (n, 1, 1), generator=g).bool()
    phase = torch.randint(0, 2, (n, 1, 1), generator=g)
    rows = torch.arange(patch).view(1, patch, 1) // width  # (n, P, 1)
    cols = torch.arange(patch).view(1, 1, patch) // width  # (n, 1, P)
    zebra = (torch.where(vertical, cols.expand(-1, patch, -1), rows.expand(-1, -1, patch)) + phase) % 2
    checker = (rows + cols + phase) % 2  # (n, P, P)
    bit = torch.where(labels.view(n, 1, 1) == 0, zebra, checker).bool()  # (n, P, P)

    # Two colours far enough apart to tell the stripes apart, and a background colour.
    colour_a = torch.rand(n, 3, 1, 1, generator=g)
    colour_b = torch.rand(n, 3, 1, 1, generator=g)
    too_close = (colour_a - colour_b).abs().amax(dim=1, keepdim=True) < 0.35
    colour_b = torch.where(too_close, 1.0 - colour_a, colour_b)
    background = torch.rand(n, 3, 1, 1, generator=g)
    pattern = torch.where(bit[:, None], colour_b, colour_a)  # (n, 3, P, P)

    images = background.expand(n, 3, size, size).clone()  # (n, 3, S, S)
    corners = _offsets(n, 0, size - patch, train_shift, shifted, g)
    for i, (top, left) in enumerate(corners.tolist()):
        images[i, :, top : top + patch, left : left + patch] = pattern[i]
    images += 0.04 * torch.randn(images.shape, generator=g)
    return Split((images.clamp(0, 1) * 255 + 0.5).to(torch.uint8), labels)


def load_patterns(n_train: int = 6000, n_test: int = 1000, size: int = 28, seed: int = 0) -> ImageData:
    """The patterns dataset: train, test, and the extra split "test-shifted"."""
    return ImageData(
        name="patterns",
        classes=list(CLASSES),
        train=generate(n_train, size=size, seed=seed),
        test=generate(n_test, size=size, seed=seed + 1),
        extra={"test-shifted": generate(n_test, size=size, shifted=True, seed=seed + 2)},
        source="generated (cnnlab.data.patterns)",
    )
