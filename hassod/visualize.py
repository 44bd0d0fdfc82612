"""Pictures of partitions: each region in its own colour over the photo, outlined."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from hassod.cluster import ClusterResult


def region_colours(count: int, seed: int = 0) -> np.ndarray:
    """(count, 3) uint8 distinct-looking colours (golden-ratio hues, fixed saturation)."""
    import colorsys

    hues = (np.arange(count) * 0.618033988749895 + seed * 0.1) % 1.0
    rgb = [colorsys.hsv_to_rgb(hue, 0.75, 0.95) for hue in hues]
    return (np.asarray(rgb).reshape(count, 3) * 255).astype(np.uint8)


def label_overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Blend a label map over an image.

    Args:
        image: (H, W, 3) uint8 RGB.
        labels: (h, w) int region ids (any grid; nearest-neighbour upsampled to H x W).
        alpha: weight of the colours.

    Returns:
        (H, W, 3) uint8 with region boundaries drawn in white.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D, got shape {labels.shape}")
    height, width = image.shape[:2]
    rows = np.arange(height) * labels.shape[0] // height
    cols = np.arange(width) * labels.shape[1] // width
    full = labels[rows[:, None], cols[None, :]]
    colours = region_colours(int(full.max()) + 1)[full]
    blended = (1 - alpha) * image.astype(np.float32) + alpha * colours.astype(np.float32)
    boundary = np.zeros((height, width), dtype=bool)
    boundary[:, 1:] |= full[:, 1:] != full[:, :-1]
    boundary[1:, :] |= full[1:, :] != full[:-1, :]
    blended[boundary] = 255
    return blended.astype(np.uint8)


def partition_figure(
    image: np.ndarray, result: ClusterResult, panel_height: int = 320
) -> Image.Image:
    """Input | partition at each threshold, side by side, with captions."""
    height, width = image.shape[:2]
    panel_width = max(1, round(width * panel_height / height))
    panels = [image] + [
        label_overlay(image, result.labels[t]) for t in range(len(result.thresholds))
    ]
    captions = ["input"] + [
        f"theta {theta:g}: {count} regions"
        for theta, count in zip(result.thresholds, result.num_regions)
    ]
    caption_height = 22
    figure = Image.new("RGB", (panel_width * len(panels), panel_height + caption_height), "white")
    draw = ImageDraw.Draw(figure)
    for index, (panel, caption) in enumerate(zip(panels, captions)):
        resized = Image.fromarray(panel).resize((panel_width, panel_height), Image.BILINEAR)
        figure.paste(resized, (index * panel_width, caption_height))
        draw.text((index * panel_width + 6, 5), caption, fill="black")
    return figure
