"""Partition pictures: colours per region, boundaries, panels."""

from __future__ import annotations

import numpy as np
import pytest

import hassod
from hassod.testing import structured_features
from hassod.visualize import label_overlay, partition_figure, region_colours


def test_region_colours_are_distinct():
    colours = region_colours(64)
    assert colours.shape == (64, 3) and colours.dtype == np.uint8
    assert len({tuple(c) for c in colours}) == 64


def test_overlay_colours_each_region_and_marks_boundaries():
    image = np.zeros((40, 60, 3), dtype=np.uint8)
    labels = np.zeros((4, 6), dtype=np.int32)
    labels[:, 3:] = 1  # left half region 0, right half region 1
    overlay = label_overlay(image, labels, alpha=1.0)
    colours = region_colours(2)
    assert (overlay[5, 5] == colours[0]).all()
    assert (overlay[5, 55] == colours[1]).all()
    assert (overlay[:, 30] == 255).all()  # the boundary column (first column of region 1)
    assert not (overlay[:, 29] == 255).all()


def test_overlay_rejects_bad_shapes():
    with pytest.raises(ValueError, match="uint8"):
        label_overlay(np.zeros((4, 4, 3), dtype=np.float32), np.zeros((2, 2), dtype=int))
    with pytest.raises(ValueError, match="2-D"):
        label_overlay(np.zeros((4, 4, 3), dtype=np.uint8), np.zeros((2, 2, 2), dtype=int))


def test_partition_figure_has_one_panel_per_threshold_plus_input():
    features = structured_features(12, 12, 16, (2, 2, 2), seed=3)
    result = hassod.fast_cluster(features, (0.4, 0.2))
    image = np.full((90, 120, 3), 128, dtype=np.uint8)
    figure = partition_figure(image, result, panel_height=60)
    assert figure.size == (3 * 80, 60 + 22)


def test_level_figure_of_an_image_without_masks():
    """discover keeps images with no masks (tiny or empty ones): show and report draw them."""
    from hassod.visualize import level_figure

    image = np.full((1, 1, 3), 200, np.uint8)
    figure = level_figure(image, np.zeros((0, 1, 1), bool), np.zeros(0, np.int64), legend=[])
    assert figure.size[0] > 0 and figure.size[1] > 0
