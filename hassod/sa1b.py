"""SA-1B's per-image annotation files as one COCO ground truth (``hassod sa1b-to-coco``).

SA-1B ships one JSON per image (``sa_1.json`` beside ``sa_1.jpg``)::

    {"image": {"image_id", "width", "height", "file_name"},
     "annotations": [{"id", "segmentation": {"size", "counts"}, "area", "bbox",
                      "predicted_iou", "stability_score", "point_coords", "crop_box"}]}

The paper's SA-1B figures score a detector against such masks class-agnostically (the
authors evaluate a COCO-format conversion, ``sa1b_p0_cls_agnostic.json``, presumably of the
first of SA-1B's 1000 parts). :func:`sa1b_to_coco` folds a folder of them into one COCO
dict -- images as listed, every mask an object of category 1, ``iscrowd`` 0, SAM's quality
fields dropped -- which ``hassod evaluate --gt`` and ``hassod predict --image-ids`` read.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from hassod.labels import InputError, check_annotation_fields, read_json

CATEGORY = {"id": 1, "name": "object", "supercategory": "object"}
_KEPT = ("segmentation", "area", "bbox")
#: ``info.description`` of the ground truths it writes (``sa1b-to-coco`` replaces only those).
SA1B_DESCRIPTION = "SA-1B masks as one class-agnostic COCO ground truth"


def sa1b_files(folder: str | os.PathLike) -> list[Path]:
    """The SA-1B annotation files of a folder: its ``sa_*.json`` (SA-1B's names; other JSON
    files, such as a converted ground truth written beside them, are not read), sorted by
    name, not in sub-folders."""
    folder = Path(folder)
    if folder.is_file():
        raise InputError(f"{folder} is a file; give the folder of SA-1B's sa_N.json files")
    if not folder.is_dir():
        raise InputError(f"SA-1B folder not found: {folder}")
    files = sorted(folder.glob("sa_*.json"))
    if not files:
        raise InputError(f"no sa_*.json annotation files in {folder} (SA-1B's per-image files)")
    return files


def sa1b_hint(data) -> str:
    """A pointer to ``hassod sa1b-to-coco`` when ``data`` is one SA-1B per-image file."""
    if isinstance(data, dict) and isinstance(data.get("image"), dict) and "images" not in data:
        return (
            " (this is one SA-1B per-image file: fold a folder of them into a ground truth "
            "with `hassod sa1b-to-coco SA1B_DIR --out GT.json`)"
        )
    return ""


def sa1b_to_coco(files: Iterable[str | os.PathLike]) -> dict:
    """One COCO ground-truth dict from SA-1B per-image files (see the module docstring).

    Raises:
        InputError: a file that is not an SA-1B annotation file (named, with what is wrong),
            or two files with one image id.
    """
    images, annotations, seen = [], [], {}
    for path in files:
        data = read_json(path, "SA-1B annotation")
        image = data.get("image") if isinstance(data, dict) else None
        objects = data.get("annotations") if isinstance(data, dict) else None
        if not isinstance(image, dict) or not isinstance(objects, list):
            raise InputError(f"{path}: expected SA-1B's {{'image': ..., 'annotations': [...]}}")
        record = {"id": image.get("image_id"), "file_name": image.get("file_name")}
        record.update(width=image.get("width"), height=image.get("height"))
        for key, value in record.items():
            wanted = str if key == "file_name" else int
            if not isinstance(value, wanted) or isinstance(value, bool):
                name = "image_id" if key == "id" else key
                kind = "a string" if wanted is str else "an integer"
                raise InputError(
                    f"{path}: the image record's {name!r} must be {kind}, got {value!r}"
                )
        if record["id"] in seen:
            raise InputError(f"{path}: image id {record['id']} already in {seen[record['id']]}")
        seen[record["id"]] = path
        images.append(record)
        for index, annotation in enumerate(objects):
            if not isinstance(annotation, dict) or "segmentation" not in annotation:
                raise InputError(f"{path}: annotation {index} has no 'segmentation'")
            segmentation = annotation["segmentation"]
            size = segmentation.get("size") if isinstance(segmentation, dict) else None
            expected = [record["height"], record["width"]]
            if size is not None and (not isinstance(size, (list, tuple)) or list(size) != expected):
                raise InputError(
                    f"{path}: annotation {index}'s mask size {size} differs from the image's "
                    f"[height, width] {[record['height'], record['width']]}"
                )
            # A truncated RLE here would hang `hassod evaluate` on the written ground truth.
            check_annotation_fields(annotation, f"{path}: annotation {index}")
            kept = {key: annotation[key] for key in _KEPT if key in annotation}
            kept.update(id=len(annotations) + 1, image_id=record["id"], category_id=1, iscrowd=0)
            annotations.append(kept)
    return {
        "info": {"description": SA1B_DESCRIPTION},
        "images": images,
        "annotations": annotations,
        "categories": [CATEGORY],
    }
