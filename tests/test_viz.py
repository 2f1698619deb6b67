"""Figures: the numbers drawn are the numbers given (curves, confusion shares, tiles, scaling)."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.views import viz

HISTORY = [
    {"epoch": 1, "train_loss": 0.9, "train_accuracy": 0.60, "val_loss": 0.7, "val_accuracy": 0.70},
    {"epoch": 2, "train_loss": 0.5, "train_accuracy": 0.80, "val_loss": 0.6, "val_accuracy": 0.75},
]


def test_curves_draw_the_history():
    fig = viz.curves({"seed-cnn": HISTORY})
    loss_ax, acc_ax = fig.axes
    lines = {line.get_label(): line for line in loss_ax.lines}
    assert set(lines) == {"train", "validation"}  # no test line without --watch-test
    assert list(lines["validation"].get_xdata()) == [1, 2] and list(lines["validation"].get_ydata()) == [0.7, 0.6]
    acc = {line.get_label(): list(line.get_ydata()) for line in acc_ax.lines}
    assert acc["train"] == pytest.approx([60.0, 80.0])
    assert lines["train"].get_linestyle() == "--" and lines["validation"].get_linestyle() == "-"


def test_curves_of_several_runs_and_a_test_column():
    watched = [dict(row, test_accuracy=0.5 + row["epoch"] / 10) for row in HISTORY]
    fig = viz.curves({"a": HISTORY, "b": watched})
    labels = [line.get_label() for line in fig.axes[1].lines]
    assert labels == ["a train", "a validation", "b train", "b validation", "b test"]
    colours = {line.get_label(): line.get_color() for line in fig.axes[1].lines}
    assert colours["a train"] == colours["a validation"] != colours["b validation"]  # a colour per run


def test_confusion_shows_row_shares():
    matrix = [[8, 2, 0], [1, 3, 0], [0, 0, 0]]  # the last class has no images: a row of zeros, not NaN
    fig = viz.confusion(matrix, ["a", "b", "c"])
    shares = fig.axes[0].images[0].get_array()
    np.testing.assert_allclose(shares, [[0.8, 0.2, 0], [0.25, 0.75, 0], [0, 0, 0]])
    texts = {tuple(t.get_position()): t.get_text() for t in fig.axes[0].texts}  # (predicted, true): text
    assert len(fig.axes[0].texts) == len(texts) == 9  # every cell, zeros included
    assert texts == {(p, t): str(n) for t, row in enumerate(matrix) for p, n in enumerate(row)}  # its count
    assert viz.confusion([[1000, 0], [0, 1]], ["a", "b"]).axes[0].texts[0].get_text() == "1,000"


def test_tile_places_maps_in_rows_with_gaps():
    maps = np.arange(5 * 2 * 3, dtype=float).reshape(5, 2, 3)
    grid = viz.tile(maps, columns=3, gap=1)
    assert grid.shape == (2 * 2 + 1, 3 * 3 + 2)
    np.testing.assert_array_equal(grid[0:2, 4:7], maps[1])
    np.testing.assert_array_equal(grid[3:5, 4:7], maps[4])
    assert np.isnan(grid[2]).all() and np.isnan(grid[:, 3]).all() and np.isnan(grid[3:5, 8:]).all()


def test_scale_each_uses_each_maps_own_range():
    maps = torch.tensor([[[-2.0, 0.0], [1.0, 2.0]], [[5.0, 5.0], [5.0, 5.0]]])
    np.testing.assert_allclose(viz.scale_each(maps)[0], [[0, 0.5], [0.75, 1]])
    np.testing.assert_allclose(viz.scale_each(maps)[1], 0)  # a constant map: 0, not 0/0
    np.testing.assert_allclose(viz.scale_each(maps, symmetric=True)[0], [[0, 0.5], [0.75, 1]])
    np.testing.assert_allclose(viz.scale_each(torch.tensor([[1.0, 0.5]]), symmetric=True), [[1.0, 0.75]])


def test_mosaic_and_png():
    maps = viz.scale_each(torch.randn(20, 5, 5))
    fig = viz.mosaic(maps, "title", columns=8)
    drawn = fig.axes[0].images[0].get_array()
    assert drawn.shape == (3 * 5 + 2, 8 * 5 + 7)
    np.testing.assert_allclose(drawn[0:5, 0:5], maps[0])
    data = viz.png(fig)
    image = Image.open(io.BytesIO(data))
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and image.width > 300 and image.height > 50


def test_cam_grid_lays_each_map_over_its_image():
    images = torch.rand(3, 3, 16, 16)
    maps = torch.rand(3, 16, 16)
    fig = viz.cam_grid(images, maps, ["a", "b", "c"], "title")
    assert len(fig.axes) == 6 and [ax.get_title() for ax in fig.axes[:3]] == ["a", "b", "c"]
    overlay = fig.axes[4].images[1]
    np.testing.assert_allclose(overlay.get_array(), maps[1].numpy())
    assert math.isclose(overlay.get_alpha(), 0.5)


def test_cam_grid_leaves_a_blank_map_off_its_image_and_says_why():
    images, maps = torch.rand(2, 1, 16, 16), torch.rand(2, 16, 16)
    maps[1] = 0
    why = "no positive evidence at 5:\nevery weighted sum ≤ 0"
    fig = viz.cam_grid(images, maps, ["a", "b"], "title", blank=["", why])
    assert [len(ax.images) for ax in fig.axes[2:]] == [2, 1]  # a heat map over the first image only
    assert [ax.get_xlabel() for ax in fig.axes[2:]] == ["", why]
