"""Partition pictures: colours per region, boundaries, panels."""

from __future__ import annotations

from types import SimpleNamespace

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


def test_figures_of_extreme_aspect_ratios_stay_within_the_pixel_budget():
    """A 1 x 3000 image made a 3,840,000-pixel-wide figure (52 s, 11 GB)."""
    from hassod.visualize import MAX_FIGURE_SIDE, level_figure

    image = np.zeros((1, 3000, 3), dtype=np.uint8)
    masks = np.zeros((1, 1, 3000), dtype=bool)
    masks[0, 0, :100] = True
    figure = level_figure(image, masks, np.zeros(1), panel_height=320, legend=["#1"])
    assert figure.size[0] <= MAX_FIGURE_SIDE
    tall = level_figure(np.zeros((3000, 1, 3), np.uint8), np.zeros((0, 3000, 1)), [], 10**6)
    assert tall.size[1] <= MAX_FIGURE_SIDE + 200
    result = SimpleNamespace(labels=np.zeros((1, 1, 3000), int), thresholds=[0.4], num_regions=[1])
    assert partition_figure(image, result).size[0] <= MAX_FIGURE_SIDE


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: label_overlay(np.zeros((4, 4, 3), np.uint8), -np.ones((2, 2), int)), ">= 0"),
        (lambda: label_overlay(np.zeros((4, 4, 3), np.uint8), np.zeros((2, 2))), "integer"),
        (lambda: label_overlay([[0]], np.zeros((2, 2), int)), r"image must be \(H, W, 3\)"),
        (
            lambda: partition_figure(
                np.zeros((0, 4, 3), np.uint8),
                SimpleNamespace(labels=np.zeros((1, 1, 1), int), thresholds=[0.4], num_regions=[1]),
            ),
            "at least 1x1",
        ),
        (lambda: _level([0, 0, 0, 3]), "at least 1x1"),
        (lambda: _level([4, 4, 1, 1], outline_widths=(1, 2)), "needs 3 widths"),
        (lambda: _overlay(colours=np.zeros((1, 3), np.uint8)), r"colours must be \(2, 3\)"),
        (lambda: _overlay(outline_widths=[1, 2, 3]), "one width or one per mask"),
    ],
)
def test_bad_arguments_are_clear_value_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def _level(shape, **options):
    from hassod.visualize import level_figure

    masks_count, _, height, width = shape
    image = np.zeros((height, width, 3), np.uint8)
    masks = np.zeros((masks_count, height, width), bool)
    return level_figure(image, masks, np.zeros(masks_count), **options)


def _overlay(**options):
    from hassod.visualize import mask_overlay

    options.setdefault("colours", np.zeros((2, 3), np.uint8))
    return mask_overlay(np.zeros((4, 4, 3), np.uint8), np.ones((2, 4, 4), bool), **options)


def test_captions_count_one_mask_and_one_region_in_the_singular(monkeypatch):
    from PIL import ImageDraw

    from hassod.visualize import level_figure

    drawn = []
    original = ImageDraw.ImageDraw.text

    def text(self, xy, words, *args, **kwargs):
        drawn.append(words)
        return original(self, xy, words, *args, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", text)
    image = np.full((40, 300, 3), 128, dtype=np.uint8)  # panels wide enough for the captions
    masks = np.zeros((3, 40, 300), dtype=bool)
    masks[:, 5:20, 5:20] = True
    level_figure(image, masks, np.array([0, 1, 1]), panel_height=40)
    assert drawn[1:] == [
        "whole: 1 mask",
        "whole+part: 3 masks (2 parts)",
        "whole+part+subpart: 3 masks (no subparts)",
    ]
    drawn.clear()
    one = SimpleNamespace(
        labels=np.zeros((1, 4, 6), dtype=np.int32), thresholds=[0.4], num_regions=[1]
    )
    partition_figure(image, one, panel_height=40)
    assert drawn == ["input", "theta 0.4: 1 region"]


def test_partition_boundaries_stay_visible_when_a_large_photo_is_scaled_down():
    """Boundaries were drawn 1 px wide at the photo's size, then the panel was scaled down:
    on a 4200 x 2800 photo they blurred into the colours and could not be seen."""
    image = np.full((2800, 4200, 3), 90, dtype=np.uint8)
    labels = np.zeros((1, 4, 6), dtype=np.int32)
    labels[0, :, 3:] = 1  # left and right halves
    result = SimpleNamespace(labels=labels, thresholds=[0.4], num_regions=[2])
    figure = np.asarray(partition_figure(image, result, panel_height=60))
    panel = figure[22:, 90:]  # 90 x 60 panels
    white = (panel == 255).all(axis=2)
    assert white[:, 45].all() and white.sum() == 60  # one full white column, nothing else


def test_a_region_keeps_its_colour_across_thresholds():
    """Region ids are renumbered at each threshold, and colours used to follow the ids: the
    same untouched region changed colour from panel to panel. Now a region keeps the colour of
    its largest member of the panel before it."""
    fine = np.array([[0, 0, 1, 2, 2, 2]] * 4, dtype=np.int32)  # three regions
    # At the lower threshold regions 1 and 2 merge (2 is the larger); region 0, untouched, is
    # renumbered 1.
    coarse = np.array([[1, 1, 0, 0, 0, 0]] * 4, dtype=np.int32)
    result = SimpleNamespace(
        labels=np.stack([fine, coarse]), thresholds=[0.4, 0.2], num_regions=[3, 2]
    )
    image = np.zeros((4, 6, 3), dtype=np.uint8)
    figure = np.asarray(partition_figure(image, result, panel_height=4))
    first, second = figure[22:, 6:12], figure[22:, 12:18]
    blend = (0.55 * region_colours(3).astype(np.float32)).astype(np.uint8)
    assert (first[1, 0] == blend[0]).all() and (second[1, 0] == blend[0]).all()
    assert (second[1, 4] == blend[2]).all()  # the merged region: its larger member's colour


def test_a_tiny_photo_is_enlarged_with_sharp_pixels_aligned_with_its_masks():
    """A 6 x 4 photo was blurred (bilinear) to the panel's height while its masks were
    enlarged as sharp blocks: the photo's edges smeared over several panel pixels beside the
    mask's edge."""
    from hassod.visualize import CAPTION_HEIGHT, level_figure

    image = np.zeros((4, 6, 3), dtype=np.uint8)
    image[:, 3:] = 255
    masks = np.zeros((1, 4, 6), dtype=bool)
    masks[0, :, 3:] = True
    figure = np.asarray(level_figure(image, masks, [0], 40, panels=(0,), outline_widths=(0,) * 3))
    photo, whole = figure[CAPTION_HEIGHT:, :60], figure[CAPTION_HEIGHT:, 60:]
    assert set(np.unique(photo)) == {0, 255}
    assert (photo[:, :30] == 0).all() and (photo[:, 30:] == 255).all()
    changed = (whole != photo).any(axis=2)
    assert changed[:, 30:].all() and not changed[:, :30].any()


def test_captions_say_what_a_panel_adds_and_fit_a_narrow_panel(monkeypatch):
    """The subpart panel of an image without subparts was captioned with the same count as the
    part panel, leaving a user to wonder why the two panels are equal; and on a narrow (portrait)
    panel a caption ran on into the next panel."""
    from PIL import ImageDraw

    from hassod.visualize import level_figure

    drawn = []
    original = ImageDraw.ImageDraw.text

    def text(self, xy, words, *args, **kwargs):
        drawn.append((xy[0], self.textlength(words, font=kwargs.get("font"))))
        return original(self, xy, words, *args, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", text)
    image = np.full((1000, 300, 3), 128, dtype=np.uint8)  # panels 96 px wide at height 320
    masks = np.zeros((12, 1000, 300), dtype=bool)
    for index in range(12):
        masks[index, 50 * index : 50 * index + 40, 10:200] = True
    level_figure(image, masks, np.array([0, 1, 2] * 4), panel_height=320)
    for index, (left, width) in enumerate(drawn):
        assert left + width <= 96 * (index + 1), drawn


def test_captions_are_drawn_large_enough_to_keep_their_punctuation(monkeypatch):
    """Captions used Pillow's default 10 px font, at which 'whole+part: 8 masks (no subparts)'
    rendered as 'whole+part 8 masks (nosubparts)': the colon vanished, spaces squeezed."""
    from PIL import ImageDraw, ImageFont

    try:
        ImageFont.load_default(size=12)
    except TypeError:
        pytest.skip("Pillow < 10.1 has only its fixed bitmap font")

    from hassod.visualize import level_figure

    sizes = []
    original = ImageDraw.ImageDraw.text

    def text(self, xy, words, *args, **kwargs):
        sizes.append(getattr(kwargs.get("font"), "size", 0))
        return original(self, xy, words, *args, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "text", text)
    image = np.full((40, 300, 3), 128, dtype=np.uint8)
    level_figure(image, np.ones((1, 40, 300), dtype=bool), [0], panel_height=40)
    one = SimpleNamespace(labels=np.zeros((1, 4, 6), np.int32), thresholds=[0.4], num_regions=[1])
    partition_figure(image, one, panel_height=40)
    assert len(sizes) == 6 and min(sizes) >= 12
