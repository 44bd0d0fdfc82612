"""Pictures of labelled images and a static HTML report of a pseudo-label or prediction set.

``image_figure`` draws one image's masks level by level (:func:`hassod.visualize.level_figure`
with a legend); ``write_report`` writes a folder with ``index.html`` (no server, relative links
only), a gallery of such figures, the evaluation tables (with ground truth), histograms of
levels and of masks per image, and per image the tree of masks, whose entries show their mask
over the photo on hover (one transparent PNG overlay per mask, toggled by a few lines of JS).

Labels are read by :mod:`hassod.labels` (levels, scores, parents, defaults there). The tree
follows ``parent_id`` where the labels have it (pseudo-labels); otherwise it is the coverage
forest of the shown masks with the teacher-prediction threshold 0.75 (DESIGN.md section 4).
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import numpy as np
from PIL import Image

from hassod._io import atomic_write, foreign_file, is_leftover, not_a_folder
from hassod._text import counted
from hassod.labels import (
    HASHED_IDS_HINT,
    LEVEL_NAMES,
    InputError,
    Labels,
    decode_masks,
    level_of,
    load_labels,
    mask_tree,
    read_json,
    score_of,
    select,
    threshold_of,
    to_rle,
)

OUTLINE_WIDTHS = (3, 2, 1)  # whole, part, subpart: the hierarchy reads from line weight
DISPLAY_SIDE = 512  # longest side of the photo and overlays in the report's mask viewer
PANEL_HEIGHT = 320
# What `hassod show` / `hassod report` draw of a results list without --score-threshold:
# `hassod predict` keeps every detection (down to score 0, as AR@1000 needs), dozens per
# image, most near 0, which would bury the few confident ones (Detectron2's demo also draws
# >= 0.5). Pseudo-labels are drawn whole.
PREDICTIONS_SCORE_THRESHOLD = 0.5


def display_threshold(labels: Labels, score_threshold: float | None) -> float | None:
    """The score threshold the pictures use: ``score_threshold`` when given, else
    :data:`PREDICTIONS_SCORE_THRESHOLD` for a results list and none for a dataset JSON."""
    if score_threshold is not None:
        return score_threshold
    return PREDICTIONS_SCORE_THRESHOLD if labels.is_results_list else None


def parse_levels(text: str) -> tuple[int, ...]:
    """ "whole,part,subpart" (names or 0/1/2, any order, no repeats) -> level numbers."""
    levels = []
    for item in (part.strip().lower() for part in text.split(",")):
        if item in LEVEL_NAMES:
            level = LEVEL_NAMES.index(item)
        elif item in ("0", "1", "2"):
            level = int(item)
        else:
            raise ValueError(f"levels must be among {', '.join(LEVEL_NAMES)}, got {item!r}")
        if level in levels:
            raise ValueError(f"level {item!r} is given twice")
        levels.append(level)
    return tuple(levels)


def predict_records(names: Sequence[str]) -> list[dict]:
    """Image records with the ids ``hassod predict`` gives files when it is not handed a
    dataset JSON: :func:`hassod.coco.image_id_for` of each path relative to its folder."""
    from hassod.coco import image_id_for

    return [{"id": image_id_for(name), "file_name": name} for name in names]


def _path_endings(path: str | os.PathLike) -> list[str]:
    """The names a file has in the folders above it, longest first: "a/b/x.jpg", "b/x.jpg",
    "x.jpg" for /a/b/x.jpg (the one `hassod predict` numbered it by depends on where it ran)."""
    parts = Path(os.path.abspath(path)).parts[1:]
    return ["/".join(parts[-count:]) for count in range(len(parts), 0, -1)]


def record_by_predict_id(labels: Labels, image: str | os.PathLike) -> dict | None:
    """The record of ``image`` in a results list that ``hassod predict`` numbered by file
    name: the id of one of its path's endings ("x.jpg", "sub/x.jpg", ...) has results, the
    longest such ending (with both x.jpg and sub/x.jpg in the folder predict ran on, the image
    sub/x.jpg is "sub/x.jpg" there, as match_image prefers the longest record). None when no
    ending has results."""
    return _predict_record(labels.by_image().keys(), image)


def _predict_record(ids, image: str | os.PathLike) -> dict | None:
    """:func:`record_by_predict_id` given the ids that have results."""
    found = [r for r in predict_records(_path_endings(image)) if r["id"] in ids]
    return found[0] if found else None


def neighbours_have_predict_results(labels: Labels, image: str | os.PathLike) -> bool:
    """Whether another image file in ``image``'s folder has results in ``labels`` under an id
    ``hassod predict`` gives it (:func:`record_by_predict_id`): the list is numbered as
    predict numbers files, so an ``image`` without results is one predict found nothing in
    (not one whose results carry ids of another numbering). False when the folder cannot be
    listed."""
    from hassod.image_folder import IMAGE_EXTENSIONS

    image = Path(os.path.abspath(image))
    try:
        with os.scandir(image.parent) as entries:
            names = [
                entry.name
                for entry in entries
                if entry.name != image.name
                and not entry.name.startswith(".")
                and os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS
            ]
    except OSError:
        return False
    ids = labels.by_image().keys()  # grouped once, not once per neighbour
    return any(_predict_record(ids, image.parent / name) for name in names)


#: In the head of every page ``write_report`` writes (:func:`is_report_page`): a later run
#: replaces only a folder holding such a page, or an empty one.
REPORT_GENERATOR = '<meta name="generator" content="hassod report">'


def is_report_page(head: bytes) -> bool:
    """Whether a file's first bytes are an ``index.html`` of ``hassod report``: an HTML page
    with :data:`REPORT_GENERATOR` in its first lines (for :func:`hassod._io.foreign_file`)."""
    return head.startswith(b"<!DOCTYPE html>") and REPORT_GENERATOR.encode() in head[:512]


def check_report_folder(out_dir: str | os.PathLike, images_dir: str | os.PathLike) -> None:
    """Refuse a report folder ``write_report`` must not write into: the images folder or one
    inside it (a later ``hassod discover`` of it would take the report's pictures for
    images), or an existing non-empty folder that is not an earlier report (no
    ``index.html``, or one that :func:`is_report_page` does not recognise).

    Raises:
        InputError: saying which, and that another folder is wanted.
    """
    out_dir, images_dir = Path(out_dir), Path(images_dir)
    out_real, images_real = out_dir.resolve(), images_dir.resolve()
    if out_real == images_real or images_real in out_real.parents:
        where = "the images folder" if out_real == images_real else "inside the images folder"
        raise InputError(
            f"report folder {out_dir} is {where} {images_dir}: its figures and photos would be "
            "taken for images there (e.g. by a later hassod discover); choose a folder outside "
            "it (--out)"
        )
    if not out_dir.is_dir():
        return
    index = out_dir / "index.html"
    if index.is_file():
        if foreign_file(index, is_report_page):
            raise InputError(
                f"report folder {out_dir} holds an index.html that hassod report did not "
                "write; refusing to replace it and write beside it: choose another folder "
                "(--out), a new or empty one"
            )
    elif any(not is_leftover(entry.name) for entry in out_dir.iterdir()):
        raise InputError(
            f"report folder {out_dir} is not empty and holds no report (no index.html of "
            "hassod report); refusing to write into it: choose another folder (--out), a new "
            "or empty one"
        )


# What write_report writes in its folder (besides index.html): an earlier report's copies go
# first, so that none outlives the run that replaces it (a metrics.json of an earlier --gt, the
# figures of images no longer in the gallery).
_REPORT_FILES = ("metrics.json", "levels.png", "masks_per_image.png", "scores.png")
_REPORT_FOLDERS = ("figures", "overlays", "photos")


def _clear_earlier_report(out_dir: Path) -> None:
    """Remove an earlier report's files from ``out_dir`` (checked by
    :func:`check_report_folder` to be a report folder); its index.html is replaced later."""
    import shutil

    if not (out_dir / "index.html").is_file():
        return
    for name in _REPORT_FILES:
        (out_dir / name).unlink(missing_ok=True)
    for name in _REPORT_FOLDERS:
        if (out_dir / name).is_dir():
            shutil.rmtree(out_dir / name)


def image_names(labels: Labels, images: Sequence[dict] | None = None) -> list[dict]:
    """The image records that name the labels' images: the labels' own, else ``images``.

    Raises:
        InputError: a results list without ``images`` (it names no files).
    """
    if labels.images is not None:
        return labels.images
    if images is None:
        raise InputError(
            f"labels {labels.source} are a results list, which names no image files: give the "
            "dataset JSON its image_ids refer to (--images, or --gt)"
        )
    return list(images)


def mask_caption(annotation: dict, index: int) -> str:
    """'#id level score' for a legend or a tree entry (index when there is no id)."""
    name = annotation.get("id", index)
    text = f"#{name} {LEVEL_NAMES[level_of(annotation)]}"
    if annotation.get("score") is not None:
        text += f" {score_of(annotation):.2f}"
    return text


@dataclass
class ImageMasks:
    """One image with its selected masks.

    Attributes:
        pixels: (H, W, 3) uint8 RGB.
        annotations: the selected annotations (score threshold, best ``max_masks``), file order.
        masks: (M, H, W) bool, one per selected annotation.
        levels: (M,) int64 levels (0 whole, 1 part, 2 subpart).
        total: the image's annotations before selection.
    """

    pixels: np.ndarray
    annotations: list[dict]
    masks: np.ndarray
    levels: np.ndarray
    total: int


def image_masks(
    pixels: np.ndarray,
    annotations: Sequence[dict],
    score_threshold: float | None = None,
    max_masks: int | None = None,
) -> ImageMasks:
    """Select an image's annotations and decode their masks at the image's size."""
    height, width = pixels.shape[:2]
    chosen = select(annotations, score_threshold, max_masks)
    masks = decode_masks(chosen, height, width)
    levels = np.asarray([level_of(a) for a in chosen], dtype=np.int64)
    return ImageMasks(pixels, chosen, masks, levels, len(annotations))


def image_figure(
    item: ImageMasks, panels: Sequence[int] = (0, 1, 2), panel_height: int = PANEL_HEIGHT
) -> Image.Image:
    """Input | one panel per level in ``panels``, distinct colours, outlines and a legend."""
    from hassod.visualize import level_figure, region_colours

    return level_figure(
        item.pixels,
        item.masks,
        item.levels,
        panel_height,
        panels=panels,
        colours=region_colours(len(item.masks)),
        outline_widths=OUTLINE_WIDTHS,
        legend=[mask_caption(a, i) for i, a in enumerate(item.annotations)],
    )


class ImageDecodeError(InputError):
    """An image file that cannot be decoded (``write_report`` leaves its picture out).

    Attributes:
        reason: why, as the decoder says.
    """

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"cannot read image {path}: {reason}")
        self.reason = reason


def read_labelled_image(path: Path, record: dict, annotations: Sequence[dict]) -> np.ndarray:
    """Decode an image and check its size against its record and its masks.

    Raises:
        ImageDecodeError: the file cannot be decoded.
        InputError: its size differs from its record's or its masks'.
    """
    from hassod.discover import UnreadableImage, read_image

    try:
        pixels = read_image(path, None)
    except UnreadableImage as error:
        raise ImageDecodeError(path, str(error)) from None
    height, width = pixels.shape[:2]
    expected = (record.get("height", height), record.get("width", width))
    if expected != (height, width):
        raise InputError(
            f"image {path} is {width}x{height} but its labels are for "
            f"{expected[1]}x{expected[0]} (file {record.get('file_name')!r})"
        )
    for annotation in annotations:  # the masks' own size, when they are RLEs
        segmentation = annotation.get("segmentation")
        if isinstance(segmentation, dict) and list(segmentation.get("size", ())) != [
            height,
            width,
        ]:
            raise InputError(
                f"image {path} is {width}x{height} but a mask of it is "
                f"{segmentation.get('size')} (height, width)"
            )
    return pixels


def save_png(image: Image.Image, path: Path) -> None:
    atomic_write(path, lambda temporary: image.save(temporary, format="PNG"), parents=True)


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


@dataclass
class ReportSummary:
    index: Path
    images: int  # images of the labels
    shown: int  # images in the gallery
    missing: list[str]  # gallery images not found under the images folder
    masks: int
    evaluated: bool
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (file name, why)


def write_report(
    images_dir: str | os.PathLike,
    labels,
    out_dir: str | os.PathLike,
    *,
    gt=None,
    images=None,
    things_only: bool = False,
    only_gt_images: bool = False,
    score_threshold: float | None = None,
    max_masks: int | None = 100,
    limit: int | None = 50,
    panels: Sequence[int] = (0, 1, 2),
    progress: bool = False,
) -> ReportSummary:
    """Write ``out_dir/index.html`` and its files (figures/, photos/, overlays/, *.png).

    Args:
        images_dir: folder the labels' ``file_name``s are relative to (a base name found
            directly in it also counts).
        labels: pseudo-labels / COCO dict / results list, or a path to one.
        out_dir: report folder: new, empty or an earlier report, replaced wholly (its files
            are removed first; created; refused when it is or is inside ``images_dir``, or
            holds anything else: :func:`check_report_folder`).
        gt: ground truth (path or dict) for the evaluation tables (all images, all
            predictions: the score threshold and mask limit only affect the pictures).
        images: for a results list: the dataset JSON (path or dict) naming its images;
            default ``gt``, else the images of ``images_dir`` with the ids ``hassod predict``
            gives them (:func:`predict_records`).
        things_only: evaluation without stuff categories (see :func:`hassod.evaluate.evaluate`).
        only_gt_images: evaluation without the labels of images the ground truth lacks (see
            :func:`hassod.evaluate.evaluate`; the pictures and statistics keep them).
        score_threshold: show masks with score >= this; None: 0.5 for a results list
            (:data:`PREDICTIONS_SCORE_THRESHOLD`, as :func:`display_threshold`), every mask of
            pseudo-labels or a COCO JSON; 0: every result.
        max_masks: show at most this many masks per image (the best scores).
        limit: the gallery shows the first ``limit`` images by file name (None: all); the
            histograms and evaluation cover all images.
        panels: levels with a panel in the figures.
        progress: a progress bar (stderr) over the gallery's images.

    Returns:
        A :class:`ReportSummary`: gallery images missing from ``images_dir`` or that cannot be
        decoded are left out of the gallery, listed there and on the page.

    Raises:
        InputError: unusable labels, images JSON or ground truth, a refused ``out_dir``, or
            none of the gallery's images in ``images_dir`` (checked before anything is
            written).

    Every file is written through a temporary file and a rename: first an ``index.html``
    saying the report is not finished (so that a run stopped half-way leaves a folder a
    rerun recognises as its own), the full page last.
    """
    from hassod.visualize import LEVEL_PANEL_NAMES, region_colours

    # Checked before any work: records[:-1] would silently leave out the last image.
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 (None: all), got {limit}")
    select((), score_threshold, max_masks)  # the same checks for these two
    images_dir, out_dir = Path(images_dir), Path(out_dir)
    if not images_dir.is_dir():
        raise InputError(not_a_folder(images_dir, "images folder"))
    check_report_folder(out_dir, images_dir)
    labels = labels if isinstance(labels, Labels) else load_labels(labels, "labels")
    score_threshold = display_threshold(labels, score_threshold)  # as `hassod report` does
    named, from_folder = images, False
    if named is None and labels.images is None:
        named = gt
    if isinstance(named, (str, os.PathLike)):
        named = read_json(named, "images")
    if named is not None:
        if not isinstance(named, dict) or not isinstance(named.get("images"), list):
            raise InputError("the images JSON must be a COCO dict with an 'images' list")
        named = named["images"]
    elif labels.images is None:  # `hassod predict IMAGES_DIR`'s results: ids from file names
        from hassod.image_folder import list_images

        named = predict_records(list_images(images_dir))
        from_folder = True
    records = sorted(image_names(labels, named), key=lambda r: str(r.get("file_name", "")))
    by_image = labels.by_image()
    if labels.images is None:
        known = {record["id"] for record in records}
        unknown = [image_id for image_id in by_image if image_id not in known]
        are = "is" if len(unknown) == 1 else "are"
        if unknown and from_folder:
            raise InputError(
                f"labels {labels.source}: {counted(len(unknown), 'image id')} {are} not in "
                f"{images_dir} as `hassod predict` numbers its images (by their path in it), "
                f"e.g. {unknown[0]!r}: give the folder predict ran on, or the dataset JSON the "
                "results are numbered by (--images or --gt)"
            )
        if unknown:
            raise InputError(
                f"labels {labels.source}: {counted(len(unknown), 'image id')} {are} not in the "
                f"images JSON, e.g. {unknown[0]!r}. {HASHED_IDS_HINT}"
            )
    shown = records[:limit] if limit is not None else records
    names = [str(record.get("file_name", record["id"])) for record in shown]
    paths = [_find_image(images_dir, name) for name in names]
    if names and not any(paths):  # the wrong folder, most likely: as `hassod show` refuses it
        if len(shown) < len(records):
            which = "one image" if len(names) == 1 else f"{len(names)} images"
            what = f"none of the gallery's {which} (the first of {len(records)} by file name) is"
        elif len(names) == 1:
            what = "the one image they list is not"
        else:
            what = f"none of the {len(names)} images they list is"
        raise InputError(
            f"labels {labels.source}: {what} in {images_dir} (looked for {names[0]!r}, also "
            "by its base name): give the folder their file names are relative to"
        )
    _clear_earlier_report(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # Stamped at once: a run stopped half-way leaves a folder that the next run recognises.
    title = f"hassod report: {html.escape(Path(labels.source).name)}"
    index = out_dir / "index.html"
    unfinished = (
        f"{_page_head(title)}<body>\n<h1>{title}</h1>\n<p>This report is not finished: its "
        "run is still going, or stopped before the end (run it again).</p>\n</body>\n</html>\n"
    )
    atomic_write(index, lambda path: path.write_text(unfinished, encoding="utf-8"))

    evaluation = None
    if gt is not None:
        import json

        from hassod.evaluate import evaluate

        evaluation = evaluate(
            labels,
            gt,
            things_only=things_only,
            breakdown=True,
            only_gt_images=only_gt_images,
            masks_when_available=True,  # a box-only ground truth still gives box recall
        )
        text = json.dumps(evaluation, indent=2)
        atomic_write(
            out_dir / "metrics.json", lambda path: path.write_text(text, "utf-8"), parents=True
        )

    counts = [len(select(by_image.get(r["id"], ()), score_threshold)) for r in records]
    level_counts = np.zeros(3, dtype=np.int64)
    for record in records:
        for annotation in select(by_image.get(record["id"], ()), score_threshold):
            level_counts[level_of(annotation)] += 1
    _histograms(out_dir, level_counts, counts)
    scored = [a for a in labels.annotations if a.get("score") is not None]
    if scored:
        _score_histogram(out_dir, scored, score_threshold)

    gallery, missing, unreadable = [], [], []
    items = list(zip(shown, names, paths))
    if progress:
        from hassod._progress import progress_bar

        items = progress_bar(items, desc="report", unit="img")
    for number, (record, file_name, path) in enumerate(items):
        if path is None:
            missing.append(file_name)
            continue
        annotations = by_image.get(record["id"], [])
        try:
            pixels = read_labelled_image(path, record, annotations)
        except ImageDecodeError as error:  # one damaged file does not cost the whole report
            unreadable.append((file_name, error.reason))
            continue
        item = image_masks(pixels, annotations, score_threshold, max_masks)
        slug = f"{number + 1:04d}-{_safe(Path(file_name).stem)}"
        colours = region_colours(len(item.masks))
        save_png(image_figure(item, panels), out_dir / "figures" / f"{slug}.png")
        overlays = _write_viewer_files(out_dir, slug, item, colours)
        gallery.append(
            _image_section(slug, file_name, item, colours, overlays, _parents(item, annotations))
        )

    page = _page(
        labels=labels,
        num_images=len(records),
        level_counts=level_counts,
        counts=counts,
        evaluation=evaluation,
        gallery=gallery,
        missing=missing,
        unreadable=unreadable,
        settings={
            "score threshold": score_threshold,
            "masks per image shown": max_masks,
            "gallery limit": limit,
            "panels": ", ".join(LEVEL_NAMES[p] for p in panels),
        },
        panels=" | ".join(["input", *(LEVEL_PANEL_NAMES[p] for p in panels)]),
        scored=bool(scored),
    )
    atomic_write(index, lambda path: path.write_text(page, encoding="utf-8"), parents=True)
    return ReportSummary(
        index=index,
        images=len(records),
        shown=len(gallery),
        missing=missing,
        masks=int(sum(counts)),
        evaluated=evaluation is not None,
        unreadable=unreadable,
    )


def _find_image(images_dir: Path, file_name: str) -> Path | None:
    for candidate in (images_dir / file_name, images_dir / Path(file_name).name):
        if candidate.is_file():
            return candidate
    return None


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:60] or "image"


def _parents(item: ImageMasks, image_annotations: Sequence[dict]) -> list[int]:
    """Parent index of each shown mask, -1 for roots (module docstring)."""
    if not item.annotations:
        return []
    if any("parent_id" in a for a in item.annotations):
        return mask_tree(item.annotations, image_annotations)
    from hassod.hierarchy import TEACHER_COVER, build_hierarchy

    height, width = item.pixels.shape[:2]
    rles = [to_rle(a, height, width) for a in item.annotations]
    return [int(p) for p in build_hierarchy(rles, cover=TEACHER_COVER).parent]


def _histograms(out_dir: Path, level_counts: np.ndarray, counts: Sequence[int]) -> None:
    """levels.png (masks per level) and masks_per_image.png, with matplotlib (Agg, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(4.2, 3.0), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    bars = axes.bar(LEVEL_NAMES, level_counts, color=["#3b75af", "#ef8636", "#519e3e"])
    axes.bar_label(bars)
    axes.set_ylabel("masks")
    axes.set_title("masks per level")
    axes.margins(y=0.15)
    _save_figure(FigureCanvasAgg(figure), out_dir / "levels.png")

    figure = Figure(figsize=(4.2, 3.0), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    top = max(counts, default=0)
    bins = np.arange(-0.5, top + 1.5, max(1, int(np.ceil((top + 1) / 40))))
    axes.hist(counts, bins=bins, color="#3b75af", edgecolor="white")
    axes.set_xlabel("masks in the image")
    axes.set_ylabel("images")
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))  # image counts: no 0.5 ticks
    axes.set_title(f"masks per image ({counted(len(counts), 'image')})")
    _save_figure(FigureCanvasAgg(figure), out_dir / "masks_per_image.png")


def _score_histogram(
    out_dir: Path, annotations: Sequence[dict], score_threshold: float | None
) -> None:
    """scores.png: the scores of every scored mask (before the threshold), stacked by level,
    with the threshold the pictures and counts use marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    scores = np.asarray([score_of(a) for a in annotations], dtype=np.float64)
    levels = np.asarray([level_of(a) for a in annotations])
    low, high = min(0.0, float(scores.min())), max(1.0, float(scores.max()))
    figure = Figure(figsize=(4.2, 3.0), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    axes.hist(
        [scores[levels == level] for level in range(len(LEVEL_NAMES))],
        bins=np.linspace(low, high, 21),
        stacked=True,
        label=list(LEVEL_NAMES),
        color=["#3b75af", "#ef8636", "#519e3e"],
        edgecolor="white",
    )
    if score_threshold is not None:
        axes.axvline(
            score_threshold, color="black", linestyle="--", label=f"shown: >= {score_threshold:g}"
        )
    axes.set_xlabel("score")
    axes.set_ylabel("masks")
    axes.legend(fontsize="small")
    axes.set_title(f"scores ({counted(len(scores), 'mask')})")
    _save_figure(FigureCanvasAgg(figure), out_dir / "scores.png")


def _save_figure(canvas, path: Path) -> None:
    atomic_write(path, lambda temporary: canvas.print_figure(temporary, format="png"), parents=True)


def _write_viewer_files(
    out_dir: Path, slug: str, item: ImageMasks, colours: np.ndarray
) -> tuple[str, list[str], tuple[int, int]]:
    """The viewer's photo and one transparent overlay PNG per mask, at display size (photos
    longer than :data:`DISPLAY_SIDE` scaled down to it).

    Returns the photo's relative path, the overlays' relative paths and the (width, height)
    the page shows them at: the files' size, or for a small photo a whole multiple of it up to
    :data:`DISPLAY_SIDE` (the page enlarges it with sharp pixels, masks and photo alike).
    """
    from hassod.visualize import _outline

    height, width = item.pixels.shape[:2]
    scale = min(1.0, DISPLAY_SIDE / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    photo = Image.fromarray(item.pixels)
    if size != (width, height):
        photo = photo.resize(size, Image.BILINEAR)
    photo_path = f"photos/{slug}.jpg"
    atomic_write(
        out_dir / photo_path,
        lambda path: photo.save(path, format="JPEG", quality=90),
        parents=True,
    )
    rows = ((np.arange(size[1]) + 0.5) * height / size[1]).astype(np.int64)
    cols = ((np.arange(size[0]) + 0.5) * width / size[0]).astype(np.int64)
    overlay_paths = []
    for index, mask in enumerate(item.masks):
        small = mask[rows[:, None], cols[None, :]]
        rgba = np.zeros((size[1], size[0], 4), dtype=np.uint8)
        rgba[..., :3] = colours[index]
        rgba[..., 3] = np.where(small, 110, 0)
        rgba[_outline(small, 2), 3] = 255
        relative = f"overlays/{slug}/{index}.png"
        save_png(Image.fromarray(rgba, "RGBA"), out_dir / relative)
        overlay_paths.append(relative)
    factor = max(1, DISPLAY_SIDE // max(size))  # a 40 x 30 photo: shown at 480 x 360
    return photo_path, overlay_paths, (size[0] * factor, size[1] * factor)


# ---------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------

_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 1.5em auto; max-width: 1400px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; }
th, td { padding: .2em .7em; border-bottom: 1px solid #e3e3e3; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.note { color: #666; }
.figure { max-width: 100%; border: 1px solid #ddd; }
.viewer { display: flex; gap: 1.5em; align-items: flex-start; flex-wrap: wrap; margin-top: .8em; }
.stage { position: relative; line-height: 0; flex: none; }
.stage img { display: block; }
.stage.enlarged img { image-rendering: pixelated; }
.stage img.overlay { position: absolute; left: 0; top: 0; width: 100%; height: 100%;
                     visibility: hidden; }
.stage img.overlay.shown { visibility: visible; }
.tree, .tree ul { list-style: none; margin: 0; padding-left: 1.3em; }
.tree { padding-left: 0; max-height: 32em; overflow: auto; min-width: 18em; }
.entry { cursor: default; padding: 0 .3em; border-radius: 3px; white-space: nowrap; }
.entry:hover, .entry.active, .entry:focus { background: #ffe9a8; outline: none; }
.swatch { display: inline-block; width: .9em; height: .9em; margin-right: .35em;
          vertical-align: -.1em; border: 1px solid rgba(0, 0, 0, .35); }
.stats img { margin-right: 1em; border: 1px solid #ddd; }
article { margin-bottom: 2.5em; }
"""

# Hover (or keyboard focus) on a tree entry shows its mask's overlay. "#selftest" in the URL
# makes the page hover every entry itself and record the outcome in <body data-selftest>, so a
# headless browser can check the wiring (tests/test_report.py).
_SCRIPT = """
(function () {
  "use strict";
  var entries = document.querySelectorAll(".tree .entry[data-overlay]");
  function show(entry, on) {
    var overlay = document.getElementById(entry.getAttribute("data-overlay"));
    if (overlay) { overlay.classList.toggle("shown", on); }
    entry.classList.toggle("active", on);
    return overlay;
  }
  entries.forEach(function (entry) {
    entry.addEventListener("mouseenter", function () { show(entry, true); });
    entry.addEventListener("mouseleave", function () { show(entry, false); });
    entry.addEventListener("focus", function () { show(entry, true); });
    entry.addEventListener("blur", function () { show(entry, false); });
  });
  document.body.setAttribute("data-entries", String(entries.length));
  if (window.location.hash === "#selftest") {
    var good = 0;
    entries.forEach(function (entry) {
      entry.dispatchEvent(new MouseEvent("mouseenter"));
      var overlay = document.getElementById(entry.getAttribute("data-overlay"));
      var shown = overlay && overlay.classList.contains("shown");
      entry.dispatchEvent(new MouseEvent("mouseleave"));
      if (shown && !overlay.classList.contains("shown")) { good += 1; }
    });
    document.body.setAttribute("data-selftest", good === entries.length ? "ok" : "failed");
  }
})();
"""


def _link(path: str) -> str:
    """A relative URL of a report path, quoted for an HTML attribute."""
    return html.escape(quote(path), quote=True)


def _image_section(
    slug: str,
    file_name: str,
    item: ImageMasks,
    colours: np.ndarray,
    viewer: tuple[str, list[str], tuple[int, int]],
    parents: Sequence[int],
) -> str:
    photo, overlays, (width, height) = viewer
    shown = len(item.annotations)
    counts = [int((item.levels == level).sum()) for level in range(3)]
    summary = ", ".join(f"{count} {name}" for name, count in zip(LEVEL_NAMES, counts))
    more = f" (of {item.total})" if item.total != shown else ""
    overlay_tags = "".join(
        f'<img class="overlay" id="ov-{slug}-{index}" src="{_link(path)}" alt="">'
        for index, path in enumerate(overlays)
    )
    tree = _tree_html(slug, item, colours, parents)
    # A small photo is shown enlarged: its pixels (and its masks') as sharp squares.
    stage = "stage enlarged" if width > item.pixels.shape[1] else "stage"
    return (
        f'<article id="img-{slug}">\n<h3>{html.escape(file_name)}</h3>\n'
        f'<p class="note">{counted(shown, "mask")} shown{more}: {summary}</p>\n'
        f'<a href="{_link(f"figures/{slug}.png")}"><img class="figure" '
        f'src="{_link(f"figures/{slug}.png")}" alt="levels of {html.escape(file_name)}"></a>\n'
        f'<div class="viewer"><div class="{stage}"><img src="{_link(photo)}" width="{width}" '
        f'height="{height}" alt="{html.escape(file_name)}">{overlay_tags}</div>\n{tree}</div>\n'
        "</article>"
    )


def _tree_html(slug: str, item: ImageMasks, colours: np.ndarray, parents: Sequence[int]) -> str:
    """Nested lists, parent -> children, largest first; each entry names its overlay."""
    if not item.annotations:
        return '<p class="note">no masks</p>'
    areas = item.masks.reshape(len(item.masks), -1).sum(axis=1)
    children: dict[int, list[int]] = {}
    for index, parent in enumerate(parents):
        children.setdefault(int(parent), []).append(index)
    for siblings in children.values():
        siblings.sort(key=lambda index: -areas[index])
    placed: set[int] = set()

    def label(index: int) -> str:
        annotation = item.annotations[index]
        colour = "#{:02x}{:02x}{:02x}".format(*(int(c) for c in colours[index]))
        details = [mask_caption(annotation, index), f"{int(areas[index])} px"]
        threshold = threshold_of(annotation)
        if threshold is not None:
            details.append(f"θ {threshold:g}")
        return (
            f'<span class="entry" tabindex="0" data-overlay="ov-{slug}-{index}">'
            f'<i class="swatch" style="background:{colour}"></i>'
            f"{html.escape(' · '.join(details))}</span>"
        )

    def entry(root: int) -> str:
        # A stack, not recursion: a hand-written parent chain may be thousands deep.
        parts, stack = [], [root]
        while stack:
            top = stack.pop()
            if isinstance(top, str):  # the end of a nested list
                parts.append(top)
                continue
            placed.add(top)
            parts.append(f"<li>{label(top)}")
            nested = [child for child in children.get(top, []) if child not in placed]
            if nested:
                parts.append("<ul>")
                stack.append("</ul></li>")
                stack.extend(reversed(nested))
            else:
                parts.append("</li>")
        return "".join(parts)

    roots = [entry(index) for index in children.get(-1, [])]
    # Anything left (a parent cycle in a hand-written file) is listed at the top level.
    roots += [entry(index) for index in range(len(parents)) if index not in placed]
    return f'<ul class="tree">{"".join(roots)}</ul>'


def _metrics_tables(evaluation: dict) -> str:
    from hassod.evaluate import BREAKDOWN_METRICS, IOU_TYPE_NAMES, METRICS, format_metrics

    def percent(value):
        return "–" if value is None else f"{100 * value:.1f}"

    iou_types = evaluation["settings"]["iou_types"]
    head = "".join(f"<th>{html.escape(m)}</th>" for m in METRICS)
    body = "".join(
        f"<tr><td>{IOU_TYPE_NAMES[t]}</td>"
        + "".join(f"<td>{percent(evaluation[t][m])}</td>" for m in METRICS)
        + "</tr>"
        for t in iou_types
    )
    caption = html.escape(format_metrics(evaluation).splitlines()[0])
    parts = [f'<p class="note">{caption}</p><table><tr><th></th>{head}</tr>{body}</table>']
    if evaluation["settings"].get("note"):
        parts.append(f'<p class="note">{html.escape(evaluation["settings"]["note"])}</p>')
    head = "<th>subset</th><th>labels/img</th>" + "".join(
        f"<th>{IOU_TYPE_NAMES[t]} {m}</th>" for t in iou_types for m in BREAKDOWN_METRICS
    )
    rows = []
    for row in evaluation["breakdown"]:
        name = row["name"] if row["group"] == "all" else f"{row['group']} {row['name']}"
        cells = "".join(
            f"<td>{percent(row[t][m])}</td>" for t in iou_types for m in BREAKDOWN_METRICS
        )
        rows.append(
            f"<tr><td>{html.escape(name)}</td><td>{row['labels_per_image']:.2f}</td>{cells}</tr>"
        )
    parts.append(
        "<h3>By merge threshold and level</h3>"
        f"<table><tr>{head}</tr>{''.join(rows)}</table>"
        '<p class="note">Values in percent. Full numbers: '
        '<a href="metrics.json">metrics.json</a>.</p>'
    )
    return "\n".join(parts)


def _page_head(title: str) -> str:
    """The page's beginning up to </head>, stamped with REPORT_GENERATOR (``title``: HTML)."""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
{REPORT_GENERATOR}
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{_CSS}</style>
</head>
"""


def _page(
    *,
    labels: Labels,
    num_images: int,
    level_counts: np.ndarray,
    counts: Sequence[int],
    evaluation: dict | None,
    gallery: list[str],
    missing: list[str],
    unreadable: list[tuple[str, str]],
    settings: dict,
    panels: str,
    scored: bool,
) -> str:
    total = int(sum(counts))
    per_image = total / num_images if num_images else 0.0
    scores_html = '\n<img src="scores.png" alt="histogram of scores">' if scored else ""
    amounts = f"{counted(num_images, 'image')}, {counted(total, 'mask')}"
    levels = ", ".join(f"{int(c)} {n}" for n, c in zip(LEVEL_NAMES, level_counts))
    shown_settings = ", ".join(
        f"{name}: {'none' if value is None else value}" for name, value in settings.items()
    )
    if evaluation is None:
        evaluation_html = '<p class="note">No ground truth given (--gt): no evaluation.</p>'
    else:
        evaluation_html = _metrics_tables(evaluation)
    missing_html = ""
    if missing:
        names = ", ".join(html.escape(name) for name in missing[:20])
        extra = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
        missing_html = f'<p class="note">Not found in the images folder: {names}{extra}.</p>'
    if unreadable:
        names = "; ".join(html.escape(f"{name} ({why})") for name, why in unreadable[:20])
        extra = f" and {len(unreadable) - 20} more" if len(unreadable) > 20 else ""
        missing_html += f'\n<p class="note">Left out, as they cannot be read: {names}{extra}.</p>'
    title = f"hassod report: {html.escape(Path(labels.source).name)}"
    return f"""{_page_head(title)}<body>
<h1>{title}</h1>
<p>{amounts} ({per_image:.2f} per image): {levels}.</p>
<p class="note">{html.escape(shown_settings)}. Hover over (or tab to) an entry of a mask tree to
see its mask on the photo.</p>
<nav><a href="#evaluation">Evaluation</a> · <a href="#statistics">Statistics</a> ·
<a href="#gallery">Gallery</a></nav>
<h2 id="evaluation">Evaluation</h2>
{evaluation_html}
<h2 id="statistics">Statistics</h2>
<div class="stats"><img src="levels.png" alt="masks per level">
<img src="masks_per_image.png" alt="histogram of masks per image">{scores_html}</div>
<h2 id="gallery">Gallery ({counted(len(gallery), "image")})</h2>
<p class="note">Each figure: {html.escape(panels)}; outline width 3 / 2 / 1 px marks
whole / part / subpart.</p>
{missing_html}
{chr(10).join(gallery)}
<script>{_SCRIPT}</script>
</body>
</html>
"""
