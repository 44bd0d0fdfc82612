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


def mask_overlay(
    image: np.ndarray, masks: np.ndarray, colours: np.ndarray, alpha: float = 0.45
) -> np.ndarray:
    """Blend (possibly overlapping) masks over an image, each outlined in its own colour.

    Args:
        image: (H, W, 3) uint8 RGB.
        masks: (M, H, W) bool, painted in order (later masks on top).
        colours: (M, 3) uint8, one per mask.
        alpha: weight of the fill colour.

    Returns:
        (H, W, 3) uint8.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3 or masks.shape[1:] != image.shape[:2]:
        raise ValueError(f"masks must be (M, H, W) matching the image, got {masks.shape}")
    blended = image.astype(np.float32)
    for mask, colour in zip(masks, np.asarray(colours, dtype=np.float32)):
        blended[mask] = (1 - alpha) * blended[mask] + alpha * colour
        blended[_outline(mask)] = colour
    return blended.astype(np.uint8)


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it (the image border counts as outside)."""
    padded = np.pad(mask, 1, constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:] & mask
    return mask & ~interior


def level_figure(
    image: np.ndarray, masks: np.ndarray, levels: np.ndarray, panel_height: int = 320
) -> Image.Image:
    """Input | whole objects | whole + parts | whole + parts + subparts, side by side.

    Args:
        image: (H, W, 3) uint8 RGB.
        masks: (M, H, W) bool pseudo-label masks at the image's size.
        levels: (M,) int hierarchy levels, 0 whole, 1 part, 2 subpart (deeper counts as 2).
        panel_height: height of each panel in pixels.

    Each mask keeps one colour in every panel; within a panel, coarser levels and larger masks
    are painted first so parts stay visible on top of their wholes.
    """
    image = np.asarray(image)
    masks = np.asarray(masks, dtype=bool)
    levels = np.minimum(np.asarray(levels, dtype=np.int64).reshape(-1), 2)
    if masks.ndim != 3 or masks.shape[1:] != image.shape[:2] or len(levels) != len(masks):
        raise ValueError(
            f"masks must be (M, H, W) matching the image {image.shape[:2]} with M levels, got "
            f"masks {masks.shape} and {len(levels)} levels"
        )
    colours = region_colours(len(masks))
    areas = masks.reshape(len(masks), -1).sum(axis=1)
    order = np.lexsort((-areas, levels))  # by level, then largest first
    panels, captions = [image], ["input"]
    for depth, name in enumerate(("whole", "whole+part", "whole+part+subpart")):
        shown = order[levels[order] <= depth]
        panels.append(mask_overlay(image, masks[shown], colours[shown]))
        captions.append(f"{name}: {len(shown)} masks")
    height, width = image.shape[:2]
    panel_width = max(1, round(width * panel_height / height))
    caption_height = 22
    figure = Image.new("RGB", (panel_width * len(panels), panel_height + caption_height), "white")
    draw = ImageDraw.Draw(figure)
    for index, (panel, caption) in enumerate(zip(panels, captions)):
        resized = Image.fromarray(panel).resize((panel_width, panel_height), Image.BILINEAR)
        figure.paste(resized, (index * panel_width, caption_height))
        draw.text((index * panel_width + 6, 5), caption, fill="black")
    return figure
