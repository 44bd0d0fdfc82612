"""COCO-format pseudo-labels: RLE masks, boxes, stable image ids, the assembled JSON.

The JSON loads with pycocotools and registers in Detectron2 with
``register_coco_instances(name, {}, json_path, image_root)`` plus
``extra_annotation_keys=["hier_level"]`` on the dataset loader (see README).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np

CATEGORY = {"id": 1, "name": "object", "supercategory": "object"}  # class-agnostic
LEVEL_NAMES = ("whole", "part", "subpart")
#: ``info.description`` of stage-1 pseudo-label JSONs; outputs that begin otherwise are not
#: replaced (:func:`is_foreign_output`).
PSEUDO_LABEL_DESCRIPTION = "HASSOD stage-1 pseudo-labels (class-agnostic, hierarchical)"


def is_foreign_output(path) -> bool:
    """True when ``path`` exists and is not a pseudo-label JSON that hassod wrote (see
    :func:`hassod._io.foreign_file`): discovery and merging must not replace it."""
    from hassod._io import foreign_file, json_signature

    return foreign_file(path, (json_signature(PSEUDO_LABEL_DESCRIPTION),))


def image_id_for(file_name: str) -> int:
    """Stable positive integer id of an image from its relative file name (not parsed from it).

    The first 48 bits of the SHA-256 of the POSIX path: the same file name always gets the same
    id, in any run or shard, and ids stay exact in JavaScript (< 2^53). Collisions are checked
    when a JSON is assembled.
    """
    if not isinstance(file_name, str):
        raise TypeError(f"file_name must be a str, got {type(file_name).__name__}")
    digest = hashlib.sha256(file_name.encode("utf-8")).digest()
    return int.from_bytes(digest[:6], "big") or 1


def encode_mask(mask: np.ndarray) -> dict:
    """(H, W) bool mask -> COCO RLE dict with ASCII ``counts``."""
    from pycocotools import mask as mask_utils

    mask = np.asarray(mask)
    if mask.ndim != 2:  # pycocotools reads a 3-D array as a stack, fails obscurely on 1-D
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def mask_annotations(
    masks: np.ndarray,
    levels: np.ndarray,
    parents: np.ndarray,
    thresholds: np.ndarray,
    scores: np.ndarray,
) -> list[dict]:
    """Per-mask annotation records of one image, without ids (see :func:`assemble`).

    ``parent`` in each record is the index of the parent mask within the image (or None).
    """
    from pycocotools import mask as mask_utils

    lengths = {
        name: len(values)
        for name, values in (
            ("masks", masks),
            ("levels", levels),
            ("parents", parents),
            ("thresholds", thresholds),
            ("scores", scores),
        )
    }
    if len(set(lengths.values())) != 1:  # zip-like reads would drop or misplace values
        raise ValueError(
            f"masks, levels, parents, thresholds and scores differ in length: {lengths}"
        )
    records = []
    for index, mask in enumerate(masks):
        rle = encode_mask(mask)
        area = int(mask_utils.area(rle))
        if area < 1:
            raise ValueError(f"mask {index} is empty; filters must drop empty masks first")
        parent = int(parents[index])
        records.append(
            {
                "segmentation": rle,
                "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                "area": area,
                "category_id": CATEGORY["id"],
                "iscrowd": 0,
                "hier_level": int(levels[index]),
                "parent": parent if parent >= 0 else None,
                "threshold": float(thresholds[index]),
                "score": float(scores[index]),
            }
        )
    return records


def image_record(file_name: str, width: int, height: int) -> dict:
    """The COCO image record of ``file_name`` (relative to the image folder), with its stable
    id (:func:`image_id_for`); :func:`assemble` pairs it with :func:`mask_annotations`."""
    return {"id": image_id_for(file_name), "file_name": file_name, "width": width, "height": height}


def assemble(
    entries: Iterable[tuple[dict, Sequence[dict]]], info: dict, failed: Sequence[dict] = ()
) -> dict:
    """The final COCO dict from ``(image_record, annotation_records)`` pairs.

    Images are sorted by file name and annotations numbered 1, 2, ... in that order, so the
    result does not depend on the order work finished in (resumed or sharded runs give the same
    JSON). Each record's in-image ``parent`` index becomes ``parent_id``, an annotation id.
    """
    entries = list(entries)
    for image, _ in entries:
        if not isinstance(image.get("file_name"), str) or "id" not in image:
            raise ValueError(f"an image record needs an 'id' and a 'file_name' string, got {image}")
    ordered = sorted(entries, key=lambda entry: entry[0]["file_name"])
    images, annotations, seen_ids = [], [], {}
    next_id = 1
    for image, records in ordered:
        if image["id"] in seen_ids and seen_ids[image["id"]] != image["file_name"]:
            raise ValueError(
                f"image id collision between {seen_ids[image['id']]!r} and {image['file_name']!r}"
            )
        if image["id"] in seen_ids:
            raise ValueError(f"image {image['file_name']!r} appears twice")
        seen_ids[image["id"]] = image["file_name"]
        images.append(image)
        first_id = next_id
        for record in records:
            annotation = {key: value for key, value in record.items() if key != "parent"}
            parent = record.get("parent")
            annotation["id"] = next_id
            annotation["image_id"] = image["id"]
            annotation["parent_id"] = None if parent is None else first_id + int(parent)
            annotations.append(annotation)
            next_id += 1
    return {
        "info": info,
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [CATEGORY],
        "failed": list(failed),
    }
