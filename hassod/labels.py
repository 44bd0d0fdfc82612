"""Reading mask JSONs: hassod pseudo-labels, COCO datasets and COCO results lists.

Two forms are accepted wherever labels or predictions are read (``hassod evaluate``, ``show``,
``report``):

- a COCO dataset dict with ``annotations`` and usually ``images`` (each with ``id``,
  ``file_name``, ``width``, ``height``): hassod pseudo-labels (:mod:`hassod.coco`), or any
  COCO-style file such as ground truth;
- a COCO results list, ``[{"image_id", "segmentation" and/or "bbox", "score", ...}, ...]``, as
  detectors write them. It names no files: pair it with a dataset JSON (``--images``/``--gt``)
  to find an image by file name.

Per-annotation fields, with the rule used when one is missing:

- score: ``score``; else 1.0. Unscored labels rank as equals, and every ranking here (COCOeval's
  included) is a stable sort, so equals keep their order in the file.
- level: ``hier_level``, else ``level``; else 0 (whole). Values above 2 count as subpart (2),
  as in :mod:`hassod.hierarchy`.
- parent: ``parent_id`` (an annotation id of the same image); else none.
- threshold: ``threshold`` (the merge threshold a pseudo-label came from); else none.
"""

from __future__ import annotations

import json
import math
import os
import re
import reprlib
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np

from hassod._checks import is_finite_number, is_torch_tensor
from hassod.coco import LEVEL_NAMES

__all__ = [
    "HASHED_IDS_HINT",
    "LEVEL_NAMES",
    "InputError",
    "Labels",
    "check_annotation_fields",
    "check_id",
    "decode_masks",
    "ImageIndex",
    "find_image",
    "level_of",
    "load_labels",
    "mask_tree",
    "match_image",
    "python_values",
    "read_json",
    "score_of",
    "select",
    "threshold_of",
    "to_rle",
]


class InputError(ValueError):
    """A labels, predictions or ground-truth input that cannot be used, with the reason."""


#: What to do when a results list's image ids are not a dataset JSON's (said where that shows).
HASHED_IDS_HINT = (
    "`hassod predict` numbers images by hashed file names unless it is given --image-ids: "
    "rerun it with --image-ids GT.json (the ground truth, or the dataset JSON used here) so "
    "that its results carry that JSON's image ids (in Python: predict_images(..., "
    "image_ids=GT.json), or Predictor(...)(image, image_id=the image's id in it))"
)


def read_json(path: str | os.PathLike, what: str = "labels"):
    """Parse a JSON file, with errors that name ``what`` the file was meant to be."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{what} file not found: {path}") from None
    except IsADirectoryError:
        raise InputError(f"{what} file {path} is a folder, expected a JSON file") from None
    except UnicodeDecodeError as error:
        raise InputError(f"{what} file {path} is not UTF-8 text: {error}") from None
    except OSError as error:
        raise InputError(f"cannot read {what} file {path}: {error.strerror or error}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(
            f"{what} file {path} is not valid JSON (line {error.lineno}, column {error.colno}: "
            f"{error.msg})"
        ) from None


@dataclass
class Labels:
    """Annotations of one JSON file, checked.

    Attributes:
        annotations: the annotation dicts, in file order (not copied: do not modify).
        images: the file's image records, or None for a results list.
        source: the file name, or a description, for messages.
        failed: the images `hassod discover` could not use (``file_name``, ``reason``), from
            the file's ``failed`` list.
    """

    annotations: list[dict]
    images: list[dict] | None
    source: str
    failed: list[dict] = field(default_factory=list)

    @property
    def is_results_list(self) -> bool:
        return self.images is None

    def by_image(self) -> dict[int, list[dict]]:
        """Annotations grouped by ``image_id``, in file order."""
        groups: dict[int, list[dict]] = {}
        for annotation in self.annotations:
            groups.setdefault(annotation["image_id"], []).append(annotation)
        return groups


def load_labels(source, what: str = "labels", name: str | None = None) -> Labels:
    """Read and check a pseudo-label / COCO dataset dict or a COCO results list.

    Args:
        source: a path, or the already parsed dict or list (one built in Python may hold
            NumPy or torch numbers and arrays: read as JSON's, see :func:`python_values`).
        what: the role of the file, for messages ("labels", "predictions", ...).
        name: how messages name the file; by default its path, or "in-memory ``what``".

    Raises:
        InputError: missing or malformed file; an annotation without ``image_id`` or without
            both ``segmentation`` and ``bbox`` (null or empty counts as missing); an
            annotation of an image the file does not list; ids that are not integers or
            strings; duplicate image ids or annotation ids.
    """
    in_memory = not isinstance(source, (str, os.PathLike))
    if in_memory:
        name, data = (f"in-memory {what}" if name is None else name), source
    else:
        name = str(source) if name is None else name
        data = read_json(source, what)
    if isinstance(data, list):
        annotations, images = data, None
    elif isinstance(data, dict):
        if not isinstance(data.get("annotations"), list):
            raise InputError(
                f"{what} {name}: a dict needs an 'annotations' list (COCO dataset / pseudo-label "
                "format); a results list is a JSON list of detections"
            )
        annotations, images = data["annotations"], data.get("images")
        if in_memory and isinstance(images, list):
            images = [python_values(image) for image in images]
        if images is not None:
            images = _checked_images(images, f"{what} {name}")
    else:
        raise InputError(
            f"{what} {name}: expected a COCO dict or a results list, got {type(data).__name__}"
        )
    if in_memory:  # built in Python: NumPy / torch numbers and arrays read as JSON's
        annotations = [python_values(annotation) for annotation in annotations]
    known = None if images is None else {image["id"] for image in images}
    first_of_id: dict = {}
    repeated = None  # (where, id, first index) of the first repeated annotation id
    for index, annotation in enumerate(annotations):
        where = f"{what} {name}: annotation {index}"
        if not isinstance(annotation, dict):
            raise InputError(f"{where} is a {type(annotation).__name__}, expected an object")
        if "image_id" not in annotation:
            raise InputError(f"{where} has no 'image_id'")
        check_id(annotation["image_id"], where, "image_id")
        # null counts as missing, as `hassod show` reads it: there is nothing to draw or score.
        if not annotation.get("segmentation") and not annotation.get("bbox"):
            raise InputError(f"{where} has neither 'segmentation' nor 'bbox'")
        if annotation.get("id") is not None:
            check_id(annotation["id"], where, "id")
            if annotation["id"] in first_of_id and repeated is None:
                repeated = (where, annotation["id"], first_of_id[annotation["id"]])
            first_of_id.setdefault(annotation["id"], index)
        if annotation.get("parent_id") is not None:
            check_id(annotation["parent_id"], where, "parent_id")
        if known is not None and annotation["image_id"] not in known:
            raise InputError(
                f"{where} refers to image_id {annotation['image_id']!r}, which is not in the "
                "file's 'images'"
            )
        check_annotation_fields(annotation, where)
    # parent_id names an annotation by id: with a repeated id the trees are ambiguous.
    # Without parent_id the ids are unused (pycocotools renumbers results lists anyway).
    if repeated is not None and any(a.get("parent_id") is not None for a in annotations):
        where, repeated_id, first = repeated
        raise InputError(
            f"{where}: annotation id {repeated_id!r} already used by annotation {first}; ids "
            "must be unique where parent_id refers to them"
        )
    _warn_on_dangling_parents(annotations, f"{what} {name}")
    failed = data.get("failed") if isinstance(data, dict) else None
    failed = [
        entry
        for entry in (failed if isinstance(failed, list) else [])
        if isinstance(entry, dict) and isinstance(entry.get("file_name"), str)
    ]
    return Labels(annotations=annotations, images=images, source=name, failed=failed)


def _python_value(value):
    """A NumPy or torch scalar or array as the Python number or list JSON would give."""
    if isinstance(value, (np.ndarray, np.generic)) or is_torch_tensor(value):
        return value.tolist()
    return value


def python_values(record):
    """An annotation or image dict built in Python, with its NumPy / torch scalars and arrays
    (``np.float32`` scores, ``np.int64`` ids, a box as an array, an RLE's ``size``, polygons
    as arrays) as the Python numbers and lists of a parsed JSON file: the same dict when it
    holds none, else a converted shallow copy. Anything else is returned as it is."""
    if not isinstance(record, dict):
        return record
    converted = None
    for key, value in record.items():
        new = _python_value(value)
        if isinstance(new, dict):  # an RLE: its size and counts
            inner = {k: _python_value(v) for k, v in new.items()}
            if any(inner[k] is not new[k] for k in new):
                new = inner
        elif isinstance(new, list) and key == "segmentation":  # polygons
            polygons = [_python_value(polygon) for polygon in new]
            if any(a is not b for a, b in zip(polygons, new)):
                new = polygons
        if new is not value:
            converted = dict(record) if converted is None else converted
            converted[key] = new
    return record if converted is None else converted


def _warn_on_dangling_parents(annotations: Sequence[dict], where: str) -> None:
    """A ``parent_id`` that names no annotation of the same image makes that mask a root in the
    trees drawn (:func:`mask_tree`): say so once, with a count, rather than silently."""
    image_of = {a["id"]: a["image_id"] for a in annotations if "id" in a}
    dangling = [
        a
        for a in annotations
        if a.get("parent_id") is not None
        and image_of.get(a["parent_id"], object()) != a["image_id"]
    ]
    if dangling:
        warnings.warn(
            f"{where}: {len(dangling)} annotations have a parent_id that is no annotation of "
            f"their image (e.g. {dangling[0]['parent_id']!r}); they count as roots in the trees",
            stacklevel=3,
        )


def _shown(value) -> str:
    """``repr`` cut short, so that a 400-digit number or a long list keeps a message one line."""
    return reprlib.repr(value)


def check_id(value, where: str, key: str = "id") -> None:
    """An image or annotation id must be an integer or a string (COCO's are integers): a list
    or an object cannot be looked up, a bool or a fractional float would match the wrong id.
    A whole float (1.0, as some exporters write) equals, and looks up as, the integer."""
    if isinstance(value, float) and value.is_integer():
        return
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InputError(f"{where}: {key!r} must be an integer or a string, got {_shown(value)}")


def check_annotation_fields(annotation: dict, where: str) -> None:
    """Types and values of the fields the tools read, so that a bad file fails here with its
    place named (exit 2) rather than deep in pycocotools (a traceback, or a hang on a
    corrupt RLE string) or silently (a NaN box shifts the metrics)."""
    for key in ("score", "threshold"):
        value = annotation.get(key)
        if value is not None and not is_finite_number(value):
            raise InputError(f"{where}: {key!r} must be a finite number, got {_shown(value)}")
    area = annotation.get("area")  # COCOeval's area ranges compare it with numbers
    if area is not None and not (is_finite_number(area) and area >= 0):
        raise InputError(f"{where}: 'area' must be a finite number >= 0, got {_shown(area)}")
    category = annotation.get("category_id")
    if category is not None and not (is_finite_number(category) and float(category).is_integer()):
        raise InputError(f"{where}: 'category_id' must be an integer, got {_shown(category)}")
    # COCO's 0/1 (or false/true): bool("0") would make a string "0" a crowd region.
    if annotation.get("iscrowd") not in (None, 0, 1):
        raise InputError(f"{where}: 'iscrowd' must be 0 or 1, got {_shown(annotation['iscrowd'])}")
    for key in ("hier_level", "level"):
        level = annotation.get(key)
        if level is not None and not (
            is_finite_number(level) and float(level).is_integer() and level >= 0
        ):
            raise InputError(f"{where}: {key!r} must be an integer >= 0, got {_shown(level)}")
    bbox = annotation.get("bbox")
    if bbox is not None and not (
        isinstance(bbox, list)
        and len(bbox) == 4
        and all(is_finite_number(v) for v in bbox)
        and bbox[2] >= 0
        and bbox[3] >= 0
    ):
        raise InputError(
            f"{where}: 'bbox' must be [x, y, width, height] finite, got {_shown(bbox)}"
        )
    segmentation = annotation.get("segmentation")
    if segmentation is None or segmentation == []:
        return
    if isinstance(segmentation, dict):
        size, counts = segmentation.get("size"), segmentation.get("counts")
        if not (
            isinstance(size, (list, tuple))
            and len(size) == 2
            and all(isinstance(v, int) and v >= 0 for v in size)
        ):
            raise InputError(f"{where}: RLE 'size' must be [height, width], got {_shown(size)}")
        if isinstance(counts, str) and not _RLE_CHARACTERS.fullmatch(counts):
            raise InputError(f"{where}: RLE 'counts' is not a COCO compressed RLE string")
        # Decoded, not just its characters checked: pycocotools reads past the end of a
        # truncated string (garbage masks) and COCOeval's IoU loops forever on one.
        from hassod.hierarchy import check_rle

        try:
            check_rle(segmentation, "mask")
        except ValueError as error:
            reason = str(error).removeprefix("mask: ")
            raise InputError(
                f"{where}: corrupt RLE: its runs must add up to height x width ({reason})"
            ) from None
    elif isinstance(segmentation, list):
        for polygon in segmentation:
            if not (
                isinstance(polygon, list)
                and len(polygon) >= 6
                and len(polygon) % 2 == 0
                and all(is_finite_number(v) for v in polygon)
            ):
                raise InputError(
                    f"{where}: a polygon must be a list of at least 3 finite x, y pairs"
                )
    else:
        raise InputError(
            f"{where}: 'segmentation' must be an RLE object or a list of polygons, got "
            f"{type(segmentation).__name__}"
        )


# Characters of COCO's compressed RLE: 6-bit groups stored as chr(48 + value), 48..111.
_RLE_CHARACTERS = re.compile(r"[0-o]*")


def _checked_images(images, where: str) -> list[dict]:
    if not isinstance(images, list):
        raise InputError(f"{where}: 'images' must be a list")
    seen = set()
    for index, image in enumerate(images):
        if not isinstance(image, dict) or "id" not in image:
            raise InputError(f"{where}: image {index} is not an object with an 'id'")
        check_id(image["id"], f"{where}: image {index}")
        if image.get("file_name") is not None and not isinstance(image["file_name"], str):
            raise InputError(
                f"{where}: image {index}'s 'file_name' must be a string, got "
                f"{_shown(image['file_name'])}"
            )
        if image["id"] in seen:
            raise InputError(f"{where}: image id {image['id']!r} appears twice")
        seen.add(image["id"])
    return images


def score_of(annotation: dict) -> float:
    """The annotation's ``score``, 1.0 when it has none."""
    score = annotation.get("score")
    return 1.0 if score is None else float(score)


def level_of(annotation: dict) -> int:
    """0 whole, 1 part, 2 subpart: ``hier_level``, else ``level``, else 0; deeper counts as 2."""
    level = annotation.get("hier_level", annotation.get("level"))
    return 0 if level is None else min(max(int(level), 0), 2)


def threshold_of(annotation: dict) -> float | None:
    """The merge threshold a pseudo-label came from, or None."""
    threshold = annotation.get("threshold")
    return None if threshold is None else float(threshold)


def select(
    annotations: Iterable[dict],
    score_threshold: float | None = None,
    max_masks: int | None = None,
) -> list[dict]:
    """Annotations with score >= ``score_threshold``; of those, the ``max_masks`` best
    (ties: the earlier first), returned in their input order (drawing order, tree order)."""
    if score_threshold is not None and not math.isfinite(score_threshold):
        raise ValueError(f"score_threshold must be a finite number, got {score_threshold}")
    if max_masks is not None and max_masks < 0:  # kept[:-1] would silently drop the last
        raise ValueError(f"max_masks must be >= 0 (None: no limit), got {max_masks}")
    kept = [a for a in annotations if score_threshold is None or score_of(a) >= score_threshold]
    if max_masks is not None and len(kept) > max_masks:
        order = sorted(range(len(kept)), key=lambda index: -score_of(kept[index]))
        kept = [kept[index] for index in sorted(order[:max_masks])]
    return kept


def match_image(images: Sequence[dict], file_name: str | os.PathLike, within: str) -> dict:
    """The image record for a file: its relative path is a suffix of ``file_name``.

    ``file_name`` may be the record's own relative path ("val2017/x.jpg") or any path ending
    with it ("/data/coco/val2017/x.jpg"); the longest such record wins. When none matches, a
    record with the same base name is taken if it is the only one.

    Raises:
        InputError: no match, or several records with the base name; ``within`` names the
            list searched ("labels pseudo.json").
    """
    record = find_image(images, file_name, within)
    if record is None:
        base = PurePosixPath(Path(file_name).as_posix()).name
        raise InputError(f"no image named {base!r} in {within} ({len(images)} images)")
    return record


def failure_of(labels: Labels, file_name: str | os.PathLike) -> str | None:
    """Why `hassod discover` could not use ``file_name`` (any path ending with a ``failed``
    entry's relative path), or None when the labels do not list it as failed."""
    path = "/" + Path(os.path.abspath(file_name)).as_posix().lstrip("/")
    for entry in labels.failed:
        if path.endswith("/" + entry["file_name"]):
            return str(entry.get("reason") or "no reason given")
    return None


def find_image(images: Sequence[dict], file_name: str | os.PathLike, within: str) -> dict | None:
    """:func:`match_image`, but None when no record matches (still an error when the base
    name is ambiguous: that is a question the caller cannot answer by leaving it out)."""
    return ImageIndex(images, within).find(file_name)


def _url_file_name(url) -> str | None:
    """The file name of an image URL: LVIS records have no file_name, only ``coco_url``
    (``http://images.cocodataset.org/val2017/000000397133.jpg`` -> ``000000397133.jpg``).
    Not its folder: LVIS val mixes COCO's train2017 and val2017 images, often kept in one
    folder."""
    if not isinstance(url, str) or not url:
        return None
    from urllib.parse import urlsplit

    return PurePosixPath(urlsplit(url).path).name or None


class ImageIndex:
    """Image records by base name, for many :func:`match_image` lookups (each one then looks
    only at the records of its base name, not at all of them).

    Args:
        images: COCO ``images`` records.
        within: how error messages name the list ("the ground truth").
    """

    def __init__(self, images: Sequence[dict], within: str) -> None:
        self.within = within
        self._by_base: dict[str, list[tuple[tuple[str, ...], dict]]] = {}
        for position, image in enumerate(images):
            if not isinstance(image, dict):
                raise InputError(f"{within}: image {position} is not an object")
            name = image.get("file_name")
            if name is not None and not isinstance(name, str):
                raise InputError(
                    f"{within}: image {position}'s 'file_name' must be a string, got {_shown(name)}"
                )
            name = name or _url_file_name(image.get("coco_url"))
            if name:
                parts = PurePosixPath(name).parts
                self._by_base.setdefault(parts[-1], []).append((parts, image))

    def find(self, file_name: str | os.PathLike, strict: bool = False) -> dict | None:
        """The record whose path is the longest tail of ``file_name``; else (unless
        ``strict``) the only record with its base name; else None.

        Raises:
            InputError: no tail matches and several records share the base name.
        """
        parts = PurePosixPath(Path(file_name).as_posix()).parts
        candidates = self._by_base.get(parts[-1] if parts else "", [])
        best, best_length = None, -1
        for candidate, image in candidates:
            if len(candidate) > best_length and tuple(parts[-len(candidate) :]) == candidate:
                best, best_length = image, len(candidate)
        if best is not None or strict:
            return best
        if len(candidates) > 1:
            raise InputError(
                f"{len(candidates)} images in {self.within} are named {parts[-1]!r}: give more "
                "of the path"
            )
        return candidates[0][1] if candidates else None


def to_rle(annotation: dict, height: int, width: int, where: str = "annotation") -> dict:
    """The annotation's mask as a compressed COCO RLE with ASCII ``counts``.

    Accepts RLE (compressed or uncompressed) and polygon segmentations; an annotation with only a
    ``bbox`` becomes its (rounded) rectangle.
    """
    from pycocotools import mask as mask_utils

    segmentation = annotation.get("segmentation")
    if isinstance(segmentation, dict) and "counts" in segmentation:
        size = [int(v) for v in segmentation.get("size", ())]
        if size != [height, width]:
            raise InputError(
                f"{where}: mask size {size} differs from the image's [height, width] "
                f"{[height, width]}"
            )
        counts = segmentation["counts"]
        if isinstance(counts, list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = {"size": size, "counts": counts}
    elif isinstance(segmentation, list) and segmentation:
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif annotation.get("bbox"):
        x, y, w, h = (float(v) for v in annotation["bbox"])
        box = np.zeros((height, width), dtype=np.uint8, order="F")
        # Clamped at both ends: a negative end would wrap around and paint the wrong side;
        # clamped before rounding, as a huge box's end (1e308 + 1e308) is infinite.
        top, bottom = (round(min(max(v, 0), height)) for v in (y, y + h))
        left, right = (round(min(max(v, 0), width)) for v in (x, x + w))
        box[top:bottom, left:right] = 1
        rle = mask_utils.encode(box)
    else:
        raise InputError(f"{where}: no usable 'segmentation' or 'bbox'")
    counts = rle["counts"]
    return {
        "size": [int(v) for v in rle["size"]],
        "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
    }


def decode_masks(annotations: Sequence[dict], height: int, width: int) -> np.ndarray:
    """(M, height, width) bool masks of annotations (see :func:`to_rle` for the forms)."""
    from pycocotools import mask as mask_utils

    masks = np.zeros((len(annotations), height, width), dtype=bool)
    for index, annotation in enumerate(annotations):
        rle = to_rle(annotation, height, width, f"annotation {annotation.get('id', index)}")
        masks[index] = mask_utils.decode(rle).astype(bool)
    return masks


def mask_tree(annotations: Sequence[dict], all_annotations: Sequence[dict] = ()) -> list[int]:
    """Parent index (into ``annotations``) of each annotation, -1 for roots, from ``parent_id``.

    A parent that is not among ``annotations`` (filtered out by score, say) is replaced by its
    nearest ancestor that is, looked up through ``all_annotations`` (the image's full list).
    """
    position = {a["id"]: index for index, a in enumerate(annotations) if "id" in a}
    parent_ids = {
        a["id"]: a.get("parent_id") for a in (*all_annotations, *annotations) if "id" in a
    }
    parents = []
    for annotation in annotations:
        parent, seen = annotation.get("parent_id"), {annotation.get("id")}
        while parent is not None and parent not in position and parent not in seen:
            seen.add(parent)
            parent = parent_ids.get(parent)
        parents.append(position[parent] if parent in position and parent not in seen else -1)
    return parents
