"""Pictures of partitions: each region in its own colour over the photo, outlined."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from hassod._text import counted
from hassod.cluster import ClusterResult


def save_stamped_png(figure: Image.Image, target, software: str) -> None:
    """Save ``figure`` as a PNG to ``target`` (a path or binary file) with a ``Software`` text
    chunk naming the hassod command, by which a later run knows the file is its own
    (:func:`is_hassod_png`) and may replace it."""
    from PIL.PngImagePlugin import PngInfo

    stamp = PngInfo()
    stamp.add_text("Software", software)
    figure.save(target, format="PNG", pnginfo=stamp)


def is_hassod_png(head: bytes, software: str = "hassod") -> bool:
    """Whether a file's first bytes are a PNG of :func:`save_stamped_png` whose software
    starts with ``software``: the PNG signature and IHDR chunk (33 bytes), then the stamp's
    tEXt chunk (length, type, keyword, NUL, text)."""
    stamp = b"tEXtSoftware\x00" + software.encode()
    return head.startswith(b"\x89PNG\r\n\x1a\n") and head[37 : 37 + len(stamp)] == stamp


#: Largest side in pixels of a figure's row of panels and of a panel: an image of extreme aspect
#: ratio (1 x 3000) would otherwise make panels millions of pixels wide at the asked height;
#: such figures are scaled down until they fit (panel_height is then lower than asked).
MAX_FIGURE_SIDE = 8192


def _image_array(image, name: str = "image") -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"{name} must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if min(image.shape[:2]) < 1:
        raise ValueError(f"{name} must be at least 1x1 pixels, got {image.shape[:2]}")
    return image


def _panel_size(height: int, width: int, panel_height: int, count: int) -> tuple[int, int]:
    """(panel height, panel width) keeping the image's aspect ratio, ``count`` panels side by
    side within :data:`MAX_FIGURE_SIDE`."""
    if isinstance(panel_height, bool) or not isinstance(panel_height, (int, np.integer)):
        raise ValueError(f"panel_height must be an integer, got {panel_height!r}")
    if panel_height < 1:
        raise ValueError(f"panel_height must be >= 1, got {panel_height}")
    panel_height = min(int(panel_height), MAX_FIGURE_SIDE)
    panel_width = max(1, round(width * panel_height / height))
    limit = max(1, MAX_FIGURE_SIDE // count)
    if panel_width > limit:
        panel_width = limit
        panel_height = max(1, round(height * panel_width / width))
    return panel_height, panel_width


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
    image = _image_array(image)
    labels = np.asarray(labels)
    if labels.ndim != 2 or min(labels.shape) < 1:
        raise ValueError(f"labels must be a non-empty 2-D array, got shape {labels.shape}")
    # Ids index the colour table: a float or negative id would fail or take another's colour.
    if labels.dtype.kind not in "iu" or labels.min() < 0:
        raise ValueError(
            f"labels must be integer region ids >= 0, got {labels.dtype} with minimum "
            f"{labels.min()}"
        )
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
    """Input | partition at each threshold, side by side, with captions (scaled down to fit
    :data:`MAX_FIGURE_SIDE`).

    Partitions are drawn at the panel's size, so their 1 px boundaries stay visible however
    large the photo. A region keeps the colour of the largest region it holds from the panel
    before it (the merges can be followed from panel to panel); a region that holds none
    (partitions that are not nested) gets a colour of its own.
    """
    image = _image_array(image)
    height, width = image.shape[:2]
    panel_height, panel_width = _panel_size(height, width, panel_height, 1 + len(result.thresholds))
    photo = _resized_photo(image, panel_width, panel_height)
    colour_ids = _followed_colour_ids([np.asarray(labels) for labels in result.labels])
    panels = [photo] + [
        label_overlay(photo, colour_ids[t][np.asarray(result.labels[t])])
        for t in range(len(result.thresholds))
    ]
    captions = [["input"]] + [
        [f"theta {theta:g}: {counted(int(count), 'region')}", f"{theta:g}: {int(count)}"]
        for theta, count in zip(result.thresholds, result.num_regions)
    ]
    caption_height = 22
    figure = Image.new("RGB", (panel_width * len(panels), panel_height + caption_height), "white")
    draw = ImageDraw.Draw(figure)
    font = _legend_font(CAPTION_FONT_SIZE)
    for index, (panel, choices) in enumerate(zip(panels, captions)):
        figure.paste(Image.fromarray(panel), (index * panel_width, caption_height))
        caption = _fitted(draw, choices, panel_width - 8, font)
        draw.text((index * panel_width + 6, 5), caption, fill="black", font=font)
    return figure


def _resized_photo(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """``image`` at ``width`` x ``height`` for a panel (itself when already that size).

    Enlarged twice or more (a tiny photo), pixels are repeated, not blurred: each photo pixel
    becomes the same block of panel pixels as the mask pixel over it.
    """
    if image.shape[:2] == (height, width):
        return image
    enlarged = height >= 2 * image.shape[0] and width >= 2 * image.shape[1]
    resample = Image.NEAREST if enlarged else Image.BILINEAR
    return np.asarray(Image.fromarray(image).resize((width, height), resample))


def _followed_colour_ids(partitions: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per partition, the colour index (into :func:`region_colours`) of each region id.

    The first partition's region ``r`` gets colour ``r``. Later, overlaps with the previous
    partition are taken largest first, each region taking the colour of the largest previous
    region it overlaps whose colour no larger overlap took; the others get new colours. For
    nested partitions (fewer regions at each lower threshold) a merged region keeps the colour
    of its largest member, and colours stay distinct within every partition.
    """
    followed: list[np.ndarray] = []
    next_colour = 0
    previous: np.ndarray | None = None
    for partition in partitions:
        count = int(partition.max()) + 1 if partition.size else 0
        colours = np.full(count, -1, dtype=np.int64)
        if previous is not None and previous.shape == partition.shape and count:
            previous_colours = followed[-1]
            width = len(previous_colours)
            pairs, sizes = np.unique(
                partition.ravel().astype(np.int64) * width + previous.ravel(), return_counts=True
            )
            taken: set[int] = set()
            for pair in pairs[np.argsort(-sizes, kind="stable")]:
                region, before = divmod(int(pair), width)
                colour = int(previous_colours[before])
                if colours[region] < 0 and colour not in taken:
                    colours[region] = colour
                    taken.add(colour)
        fresh = colours < 0
        colours[fresh] = next_colour + np.arange(int(fresh.sum()))
        next_colour = max(next_colour + int(fresh.sum()), int(colours.max(initial=-1)) + 1)
        followed.append(colours)
        previous = partition
    return followed


def mask_overlay(
    image: np.ndarray,
    masks: np.ndarray,
    colours: np.ndarray,
    alpha: float = 0.45,
    outline_widths: int | Sequence[int] = 1,
) -> np.ndarray:
    """Blend (possibly overlapping) masks over an image, each outlined in its own colour.

    Args:
        image: (H, W, 3) uint8 RGB.
        masks: (M, H, W) bool, painted in order (later masks on top).
        colours: (M, 3) uint8, one per mask.
        alpha: weight of the fill colour.
        outline_widths: outline width in pixels (inside the mask), one for all or one per mask;
            0 draws no outline.

    Returns:
        (H, W, 3) uint8.
    """
    image = _image_array(image)
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3 or masks.shape[1:] != image.shape[:2]:
        raise ValueError(f"masks must be (M, H, W) matching the image, got {masks.shape}")
    # zip() below would silently paint only as many masks as there are colours.
    if np.shape(colours) != (len(masks), 3):
        raise ValueError(
            f"colours must be ({len(masks)}, 3), one per mask, got {np.shape(colours)}"
        )
    outline_widths = np.asarray(outline_widths, dtype=np.int64)
    if outline_widths.ndim > 1 or outline_widths.size not in (1, len(masks)):
        raise ValueError(
            f"outline_widths must be one width or one per mask ({len(masks)}), got "
            f"{outline_widths.size}"
        )
    widths = np.broadcast_to(outline_widths.reshape(-1), (len(masks),))
    blended = image.astype(np.float32)
    for mask, colour, width in zip(masks, np.asarray(colours, dtype=np.float32), widths):
        blended[mask] = (1 - alpha) * blended[mask] + alpha * colour
        blended[_outline(mask, int(width))] = colour
    return blended.astype(np.uint8)


def _outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Pixels of ``mask`` within ``width`` 4-neighbour steps of its outside (border = outside)."""
    interior = mask
    for _ in range(width):
        padded = np.pad(interior, 1, constant_values=False)
        interior = (
            padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:] & interior
        )
    return mask & ~interior


LEVEL_PANEL_NAMES = ("whole", "whole+part", "whole+part+subpart")
CAPTION_HEIGHT = 22
#: Caption text size in pixels: Pillow's default 10 px drops the colon and squeezes spaces.
CAPTION_FONT_SIZE = 12


def level_figure(
    image: np.ndarray,
    masks: np.ndarray,
    levels: np.ndarray,
    panel_height: int = 320,
    *,
    panels: Sequence[int] = (0, 1, 2),
    colours: np.ndarray | None = None,
    outline_widths: Sequence[int] = (1, 1, 1),
    legend: Sequence[str] | None = None,
    legend_rows: int = 6,
) -> Image.Image:
    """Input | whole objects | whole + parts | whole + parts + subparts, side by side.

    The layout of the paper's Figures 1 and 5.

    Args:
        image: (H, W, 3) uint8 RGB.
        masks: (M, H, W) bool pseudo-label masks at the image's size.
        levels: (M,) int hierarchy levels, 0 whole, 1 part, 2 subpart (deeper counts as 2).
        panel_height: height of each panel in pixels; panels keep the image's aspect ratio,
            scaled down where the row of panels would be wider than :data:`MAX_FIGURE_SIDE`.
        panels: after the input, one panel per entry: the masks of that level and coarser
            (0: wholes, 1: wholes and parts, 2: all), in the order given.
        colours: (M, 3) uint8 colour of each mask (default :func:`region_colours`).
        outline_widths: outline width in panel pixels of wholes, parts and subparts (three).
        legend: None, or one caption per mask: adds a legend under the panels (outline width
            per level, then each shown mask's colour and caption, in painting order; at most
            ``legend_rows`` rows, the rest counted).

    Each mask keeps one colour in every panel; within a panel, coarser levels and larger masks
    are filled first so parts stay visible on top of their wholes, and outlines are drawn after
    all fills, subparts first and wholes last, so a whole keeps its whole outline around its
    parts. Masks are painted at the panel's resolution (nearest-neighbour resampled) so outlines
    stay sharp.
    """
    image = _image_array(image)
    masks = np.asarray(masks, dtype=bool)
    levels = np.minimum(np.asarray(levels, dtype=np.int64).reshape(-1), 2)
    if masks.ndim != 3 or masks.shape[1:] != image.shape[:2] or len(levels) != len(masks):
        raise ValueError(
            f"masks must be (M, H, W) matching the image {image.shape[:2]} with M levels, got "
            f"masks {masks.shape} and {len(levels)} levels"
        )
    panels = [int(depth) for depth in panels]
    if not panels or any(depth not in (0, 1, 2) for depth in panels):
        raise ValueError(f"panels must be levels among 0, 1, 2, got {panels}")
    colours = region_colours(len(masks)) if colours is None else np.asarray(colours, np.uint8)
    if colours.shape != (len(masks), 3):
        raise ValueError(f"colours must be ({len(masks)}, 3), got {colours.shape}")
    if legend is not None and len(legend) != len(masks):
        raise ValueError(f"legend needs one caption per mask ({len(masks)}), got {len(legend)}")
    if len(outline_widths) != 3:
        raise ValueError(
            f"outline_widths needs 3 widths (whole, part, subpart), got {list(outline_widths)}"
        )
    widths = np.asarray(outline_widths, dtype=np.int64)[levels]

    height, width = image.shape[:2]
    panel_height, panel_width = _panel_size(height, width, panel_height, 1 + len(panels))
    if (panel_height, panel_width) != (height, width):
        rows = ((np.arange(panel_height) + 0.5) * height / panel_height).astype(np.int64)
        cols = ((np.arange(panel_width) + 0.5) * width / panel_width).astype(np.int64)
        masks = masks[:, rows[:, None], cols[None, :]]
        image = _resized_photo(image, panel_width, panel_height)
    areas = masks.sum(axis=(1, 2))  # (0,) for an image without masks
    order = np.lexsort((-areas, levels))  # by level, then largest first
    pictures, captions = [image], [["input"]]
    for depth in panels:
        shown = order[levels[order] <= depth]
        picture = mask_overlay(image, masks[shown], colours[shown], 0.45, 0)
        # Outlines after every fill, subparts first and wholes last: a part painted after its
        # whole would otherwise cover the whole's outline where their edges meet.
        for index in shown[np.argsort(-levels[shown], kind="stable")]:
            picture[_outline(masks[index], int(widths[index]))] = colours[index]
        pictures.append(picture)
        captions.append(_level_captions(depth, levels[shown]))

    legend_entries = []
    if legend is not None:
        shown = order[levels[order] <= max(panels)]
        legend_entries = [(colours[i], int(widths[i]), legend[i]) for i in shown]
    figure_width = panel_width * len(pictures)
    legend_height = (
        0 if legend is None else _legend_height(figure_width, legend_entries, legend_rows)
    )
    figure = Image.new(
        "RGB", (figure_width, panel_height + CAPTION_HEIGHT + legend_height), "white"
    )
    draw = ImageDraw.Draw(figure)
    font = _legend_font(CAPTION_FONT_SIZE)
    for index, (picture, choices) in enumerate(zip(pictures, captions)):
        figure.paste(Image.fromarray(picture), (index * panel_width, CAPTION_HEIGHT))
        caption = _fitted(draw, choices, panel_width - 8, font)
        draw.text((index * panel_width + 6, 5), caption, fill="black", font=font)
    if legend is not None:
        _draw_legend(
            draw,
            (0, panel_height + CAPTION_HEIGHT),
            figure_width,
            legend_entries,
            outline_widths,
            legend_rows,
        )
    return figure


def _level_captions(depth: int, shown_levels: np.ndarray) -> list[str]:
    """A level panel's caption, then shorter ones for a narrow panel: the masks shown and, in
    the part and subpart panels, how many of them the panel adds ("no subparts" says that a
    panel equal to the one before it is so because the image has none)."""
    total = counted(len(shown_levels), "mask")
    if depth == 0:
        return [f"{LEVEL_PANEL_NAMES[0]}: {total}", total]
    name = ("part", "subpart")[depth - 1]
    added = int((shown_levels == depth).sum())
    added_text = f"no {name}s" if added == 0 else counted(added, name)
    return [
        f"{LEVEL_PANEL_NAMES[depth]}: {total} ({added_text})",
        f"+{name}: {total} ({added_text})",
        f"+{name}: {added_text}",
    ]


def _fitted(draw, choices: Sequence[str], room: int, font=None) -> str:
    """The first of ``choices`` at most ``room`` pixels wide, else the last cut short with an
    ellipsis (a caption must not run into the next panel)."""
    for text in choices:
        if draw.textlength(text, font=font) <= room:
            return text
    text = choices[-1]
    while text and draw.textlength(text, font=font) > room:
        text = text[:-2] + "…" if len(text) > 2 else ""
    return text


_LEGEND_ENTRY_WIDTH = 170
_LEGEND_LINE = 20
_SWATCH = 14


def _legend_font(size: int = 12):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _legend_columns(figure_width: int) -> int:
    return max(1, (figure_width - 8) // _LEGEND_ENTRY_WIDTH)


def _legend_height(figure_width: int, entries: Sequence, max_rows: int) -> int:
    # At least one row: an image without masks still says "no masks" there.
    rows = max(1, min(max_rows, -(-len(entries) // _legend_columns(figure_width))))
    return 8 + _LEGEND_LINE * (1 + rows) + 4


def _draw_legend(draw, origin, figure_width, entries, outline_widths, max_rows) -> None:
    """Outline width per level on one line, then one swatch + caption per mask in a grid."""
    font = _legend_font()
    left, top = origin[0] + 8, origin[1] + 8
    x = left
    draw.text((x, top), "outline:", fill="black", font=font)
    x += int(draw.textlength("outline:", font=font)) + 8
    for name, width in zip(("whole", "part", "subpart"), outline_widths):
        draw.rectangle(
            (x, top, x + _SWATCH, top + _SWATCH), fill=(235, 235, 235), outline="black", width=width
        )
        label = f"{name} ({width} px)"
        draw.text((x + _SWATCH + 4, top), label, fill="black", font=font)
        x += _SWATCH + 16 + int(draw.textlength(label, font=font))
    columns = _legend_columns(figure_width)
    capacity = columns * max_rows
    if not entries:
        draw.text((left, top + _LEGEND_LINE), "no masks", fill="black", font=font)
    for index, (colour, width, caption) in enumerate(entries[:capacity]):
        row, column = divmod(index, columns)
        x = left + column * _LEGEND_ENTRY_WIDTH
        y = top + _LEGEND_LINE * (1 + row)
        if index == capacity - 1 and len(entries) > capacity:
            draw.text((x, y), f"+ {len(entries) - index} more", fill="black", font=font)
            break
        colour = tuple(int(c) for c in colour)
        fill = tuple(int(0.55 * 255 + 0.45 * c) for c in colour)
        draw.rectangle((x, y, x + _SWATCH, y + _SWATCH), fill=fill, outline=colour, width=width)
        text = str(caption)
        room = _LEGEND_ENTRY_WIDTH - _SWATCH - 12
        while text and draw.textlength(text, font=font) > room:
            text = text[:-2] + "…" if len(text) > 2 else ""
        draw.text((x + _SWATCH + 4, y), text, fill="black", font=font)
