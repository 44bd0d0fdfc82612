"""Class-agnostic evaluation of masks and boxes against COCO ground truth (paper Tables 1, 2, 9).

HASSOD is judged class-agnostically: every ground-truth category and every prediction is one
class, "object", with up to 1000 detections per image. pycocotools' ``COCOeval`` does all the
matching; this module prepares its inputs, runs it with ``maxDets = [10, 100, 1000]`` and
reads the summary numbers out of its accumulated arrays.

Metrics (fractions in [0, 1]; None where undefined, e.g. AR small on data without small
objects, which COCOeval marks -1):

- ``AR@10``, ``AR@100``, ``AR@1000``: recall averaged over the IoU thresholds 0.50:0.05:0.95,
  all areas, at most 10 / 100 / 1000 detections per image; the paper's "AR" is ``AR@1000``
  (the authors' Detectron2 ``COCOEvaluator`` with ``top1000``: maxDets 10 / 100 / 1000);
- ``AR_s``, ``AR_m``, ``AR_l``: the same at 1000 detections for small (< 32²), medium and large
  (> 96²) ground truth (COCO's areas: the annotation's ``area``);
- ``AP``, ``AP50``, ``AP75``: 101-point interpolated precision at 1000 detections, averaged
  over the IoU thresholds / at IoU 0.5 / at IoU 0.75.

Reading COCOeval's arrays (``eval.eval`` after ``accumulate()``), with ``T`` IoU thresholds
(``params.iouThrs``), ``R`` = 101 recall points, ``K`` = 1 category (folded), ``A`` area
ranges (``params.areaRngLbl``: all, small, medium, large) and ``M`` = 3 detection limits
(``params.maxDets``):

- ``precision[t, r, k, a, m]`` (T, R, K, A, M): AP = mean of ``precision[:, :, 0, all, 1000]``,
  AP50 = mean of ``precision[t50, :, 0, all, 1000]`` with ``iouThrs[t50] == 0.5``, AP75 alike;
- ``recall[t, k, a, m]`` (T, K, A, M): AR@n = mean of ``recall[:, 0, all, n]``, AR_s = mean of
  ``recall[:, 0, small, 1000]``, ...;

each mean over the entries > -1 (-1: nothing to evaluate), exactly as ``COCOeval.summarize``
computes ``stats``. With ``maxDets = [10, 100, 1000]``, ``stats`` holds AP, AP50, AP75 at 1000
in 0-2, and AR@10, AR@100, AR@1000, AR_s, AR_m, AR_l in 6-11: the tests check against them.

Inputs and how they are handled:

- Categories are folded: every kept ground-truth annotation and every prediction gets
  ``category_id`` 1, and ``params.useCats = 0`` on top.
- Ground-truth annotations are renumbered 1..N in file order: COCOeval records a match by the
  ground truth's annotation id and reads id 0 as "unmatched", so a ground truth with id 0 (as
  in COCO's panoptic-derived files) would silently lose its match.
- Crowd regions (``iscrowd`` 1) are COCOeval's "ignore" regions: they count in no recall
  denominator, and detections matched to them (IoU = intersection / detection area) are
  neither true nor false positives.
- ``things_only``: ground-truth annotations with ``category_id >= stuff_min_id`` (default 92,
  COCO panoptic's first "stuff" id; ids <= 90 are objects) are dropped before evaluation,
  crowd ones included. Predictions are never filtered. A negative ``stuff_min_id``, and a
  ground truth left with no object to score (by these filters or any other), are refused.
- Predictions: a COCO results list (``image_id``, ``bbox`` / ``segmentation``, ``score``) or a
  pseudo-label / COCO dict (``annotations``). A dict's images are matched to the ground truth's
  by file name (:func:`hassod.labels.match_image`), a results list's ``image_id`` must be a
  ground-truth image id. Predictions on images the ground truth lacks are refused (COCOeval
  needs results on its images only), or with ``only_gt_images`` left out and counted
  (``counts["dropped_images"]``, ``counts["dropped_predictions"]``). Missing ``score`` = 1.0
  (:func:`hassod.labels.score_of`).
  Box evaluation uses ``bbox`` (from the mask when absent), mask evaluation ``segmentation``
  only, so a detection's area for the small/medium/large ranges is its box area for boxes and
  its mask area for masks (as Detectron2's COCO evaluator does).
- Every ground-truth image is evaluated; an image without predictions has recall 0. No
  predictions at all gives AR 0 (not an error).
- Ground-truth annotations of images the file does not list are left out (pycocotools never
  looks at them), and so are polygons of fewer than 3 points and objects left with none
  (Detectron2's loader drops them): counted and warned about.
- Image records without ``file_name`` (LVIS) are matched by the file name of their
  ``coco_url``.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import math
import os
import warnings
from collections.abc import Sequence

import numpy as np

from hassod._checks import real_number
from hassod._text import counted
from hassod.labels import (
    HASHED_IDS_HINT,
    LEVEL_NAMES,
    ImageIndex,
    InputError,
    Labels,
    check_annotation_fields,
    check_id,
    level_of,
    load_labels,
    python_values,
    read_json,
    score_of,
    threshold_of,
    to_rle,
)
from hassod.sa1b import sa1b_hint

IOU_TYPES = ("bbox", "segm")
MAX_DETS = (10, 100, 1000)
STUFF_MIN_ID = 92  # COCO panoptic: ids <= 90 are things, >= 92 stuff
METRICS = ("AR@10", "AR@100", "AR@1000", "AR_s", "AR_m", "AR_l", "AP", "AP50", "AP75")
IOU_TYPE_NAMES = {"bbox": "box", "segm": "mask"}
BREAKDOWN_METRICS = ("AR@100", "AR@1000", "AP")

__all__ = [
    "IOU_TYPES",
    "MAX_DETS",
    "METRICS",
    "STUFF_MIN_ID",
    "InputError",
    "evaluate",
    "format_breakdown",
    "format_metrics",
    "load_ground_truth",
    "prediction_records",
    "summarize",
]


def evaluate(
    pred: str | os.PathLike | list[dict] | dict | Labels,
    gt: str | os.PathLike | dict,
    iou_types: Sequence[str] = IOU_TYPES,
    things_only: bool = False,
    stuff_min_id: int = STUFF_MIN_ID,
    breakdown: bool = False,
    only_gt_images: bool = False,
    progress: bool = False,
    masks_when_available: bool = False,
) -> dict:
    """Class-agnostic AR / AP of predictions against ground truth (see the module docstring).

    Args:
        pred: predictions: a path, a results list or a pseudo-label / COCO dict (built in
            Python, its numbers and boxes may be NumPy or torch scalars and arrays).
        gt: ground truth: a path or a COCO dataset dict (``images``, ``annotations``).
        iou_types: any of "bbox" and "segm".
        things_only: drop ground truth with ``category_id >= stuff_min_id``.
        stuff_min_id: the first "stuff" category id (COCO panoptic: 92).
        breakdown: also evaluate subsets of the predictions by ``threshold`` and by level (the
            paper's Table 2): rows in ``result["breakdown"]``.
        only_gt_images: leave out predictions on images the ground truth does not have (e.g.
            discovery on a folder larger than the annotated subset) instead of refusing them;
            how many is in ``result["counts"]``.
        masks_when_available: with a ground truth that has objects without a mask, or
            predictions none of which has one, evaluate boxes only (noted in
            ``result["settings"]["note"]``) instead of refusing "segm" (before any COCOeval
            run, with the way out in the message).
        progress: progress bars on stderr (tqdm) for the long loops: reading the predictions
            (per mask), then one over all COCOeval runs (per image), its description naming
            the run and its stage.

    Returns:
        ``{"settings": {...}, "counts": {...}, "bbox": {metric: value}, "segm": {...},
        "breakdown": [...]}`` (the last only with ``breakdown``); metric names in
        :data:`METRICS`, values fractions or None.

    Raises:
        InputError: missing or malformed files, predictions of images the ground truth does not
            have (unless ``only_gt_images``; always when none of them has), an unknown IoU
            type, masks whose size differs from their image's, a negative ``stuff_min_id``, a
            ground truth left with no object to score (e.g. all dropped by ``things_only``).
    """
    iou_types = _checked_iou_types(iou_types)
    dataset, counts = load_ground_truth(gt, things_only, stuff_min_id)
    note = None
    if "segm" in iou_types:
        missing = _missing_masks_message(dataset, gt)
        iou_types, note = _without_masks(iou_types, missing, masks_when_available, missing)
    labels = pred if isinstance(pred, Labels) else load_labels(pred, "predictions")
    to_gt = _gt_image_ids(labels, dataset, only_gt_images)
    records = _records(labels, dataset, to_gt, progress)
    if "segm" in iou_types:
        unmasked = [record for record in records if record["segmentation"] is None]
        missing = unmasked and (
            f"{_of(len(unmasked), len(records), 'prediction')} no mask (e.g. one on image "
            f"{unmasked[0]['image_id']!r})"
        )
        # Box-only predictions give box recall (the authors' evaluator decides so, too);
        # some with and some without a mask cannot be scored for masks.
        allowed = masks_when_available and len(unmasked) == len(records)
        iou_types, prediction_note = _without_masks(
            iou_types, missing, allowed, "the predictions have no masks"
        )
        note = note or prediction_note
    predicted_images = {annotation["image_id"] for annotation in labels.annotations}
    counts["dropped_images"] = len(predicted_images - to_gt.keys())
    counts["dropped_predictions"] = len(labels.annotations) - len(records)
    gt_coco = _coco(dataset)
    result = {
        "settings": {
            "iou_types": list(iou_types),
            "max_dets": list(MAX_DETS),
            "class_agnostic": True,
            "things_only": bool(things_only),
            "stuff_min_id": int(stuff_min_id),
            "only_gt_images": bool(only_gt_images),
            "predictions": labels.source,
            "ground_truth": str(gt) if isinstance(gt, (str, os.PathLike)) else "in memory",
        },
        "counts": {**counts, "predictions": len(records)},
    }
    if note:
        result["settings"]["note"] = note
    groups = _breakdown_groups(records) if breakdown else []
    runs = len(iou_types) * (1 + len(groups))
    # One bar over every COCOeval run (its description names the run and its stage): a
    # breakdown is a dozen runs, each a second on a small set, minutes on COCO val.
    total = runs * _cocoeval_steps(len(dataset["images"]))
    with _bar(progress, total, "COCOeval", "step") as bar:
        for iou_type in iou_types:
            result[iou_type] = summarize(_run_cocoeval(gt_coco, records, iou_type, bar))
        if breakdown:
            num_images = len(dataset["images"])
            result["breakdown"] = _breakdown(gt_coco, groups, iou_types, num_images, bar)
        bar.set_description_str(f"COCOeval ({runs} run{'' if runs == 1 else 's'})", False)
    return result


def _without_masks(iou_types: tuple, missing, allowed: bool, reason) -> tuple[tuple, str | None]:
    """``(iou_types, note)``: unchanged when nothing lacks a mask (``missing`` falsy); "segm"
    left out with a note when ``allowed`` and boxes remain; else an InputError with the fix."""
    if not missing:
        return iou_types, None
    if allowed and iou_types != ("segm",):
        return tuple(t for t in iou_types if t != "segm"), f"mask recall left out: {reason}"
    raise InputError(
        f"{missing}, so mask recall cannot be measured; evaluate boxes only "
        "(--iou-type bbox, iou_types=['bbox'])"
    )


def _of(part: int, whole: int, noun: str) -> str:
    """'1 of 3 predictions has', '2 of 3 predictions have', '1 of 1 prediction has'."""
    return f"{part} of {counted(whole, noun)} {'has' if part == 1 else 'have'}"


def _gt_name(gt) -> str:
    """How messages name the ground truth: its path, or "in-memory ground truth"."""
    return str(gt) if isinstance(gt, (str, os.PathLike)) else "in-memory ground truth"


def _missing_masks_message(dataset: dict, gt) -> str | None:
    """Which ground-truth objects have no mask (mask recall needs every one; pycocotools
    stops with a KeyError), or None."""
    boxes_only = [a for a in dataset["annotations"] if not a.get("segmentation")]
    if not boxes_only:
        return None
    share = _of(len(boxes_only), len(dataset["annotations"]), "object")
    return (
        f"ground truth {_gt_name(gt)}: {share} no 'segmentation' (e.g. one on image id "
        f"{boxes_only[0]['image_id']!r})"
    )


def _bar(enabled: bool, total: int | None, description: str, unit: str):
    """A bar on stderr that clears itself when done on a terminal (the tables follow on
    stdout); lines in a log file."""
    from hassod._progress import progress_bar

    return progress_bar(total=total, desc=description, unit=unit, enabled=enabled, leave=False)


def _checked_iou_types(iou_types: Sequence[str]) -> tuple[str, ...]:
    iou_types = tuple(dict.fromkeys([iou_types] if isinstance(iou_types, str) else iou_types))
    unknown = [t for t in iou_types if t not in IOU_TYPES]
    if unknown or not iou_types:
        raise InputError(f"iou_types must be among {list(IOU_TYPES)}, got {list(iou_types)}")
    return iou_types


def load_ground_truth(
    gt: str | os.PathLike | dict, things_only: bool = False, stuff_min_id: int = STUFF_MIN_ID
) -> tuple[dict, dict]:
    """A single-category copy of a COCO ground truth, ready for COCOeval.

    Returns:
        ``(dataset, counts)``: the dataset dict (annotations renumbered 1..N -- their own ids
        are not read, so repeated ones do no harm -- ``category_id``
        1, ``iscrowd`` 0/1, ``area`` and ``bbox`` filled in from the mask where missing) and
        ``{"images", "objects", "crowd", "dropped_stuff"}``.

    Raises:
        InputError: a malformed file, a negative ``stuff_min_id``, or no object left to score
            (none, or all dropped by ``things_only`` or the other filters; the message says
            which).
    """
    from pycocotools import mask as mask_utils

    # A bool or a string is a ValueError; a negative id (nan too) would call everything stuff.
    if not real_number(stuff_min_id, "stuff_min_id", "a category id >= 0") >= 0:
        raise InputError(
            f"stuff_min_id (--stuff-min-id) must be a category id >= 0, got {stuff_min_id!r}"
        )
    in_memory = not isinstance(gt, (str, os.PathLike))
    data = gt if in_memory else read_json(gt, "ground truth")
    name = _gt_name(gt)
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise InputError(f"ground truth {name}: expected a COCO dict with an 'annotations' list")
    if not isinstance(data.get("images"), list) or not data["images"]:
        raise InputError(
            f"ground truth {name}: expected a non-empty 'images' list{sa1b_hint(data)}"
        )
    # built in Python: NumPy / torch numbers and arrays read as JSON's
    plain = python_values if in_memory else (lambda record: record)
    images = {}
    for index, image in enumerate(map(plain, data["images"])):
        if not isinstance(image, dict) or not {"id", "width", "height"} <= image.keys():
            raise InputError(f"ground truth {name}: image {index} lacks id, width or height")
        check_id(image["id"], f"ground truth {name}: image {index}")
        if image["id"] in images:
            raise InputError(f"ground truth {name}: image id {image['id']!r} appears twice")
        images[image["id"]] = image
    annotations, dropped, orphans, rings, shapeless = [], 0, 0, 0, 0
    categories = set()  # of the annotations things_only looked at
    for index, annotation in enumerate(map(plain, data["annotations"])):
        where = f"ground truth {name}: annotation {index}"
        if not isinstance(annotation, dict):
            raise InputError(f"{where} is not an object")
        check_id(annotation.get("image_id"), where, "image_id")
        if annotation["image_id"] not in images:
            orphans += 1  # pycocotools only looks at the listed images' annotations
            continue
        if things_only:
            category = _category(annotation, where)
            categories.add(category)
            if category >= stuff_min_id:
                dropped += 1
                continue
        annotation, removed = _valid_polygons(annotation)
        rings += removed
        if annotation is None:
            shapeless += 1
            continue
        check_annotation_fields(annotation, where)
        image = images[annotation["image_id"]]
        segmentation = annotation.get("segmentation")
        if isinstance(segmentation, dict) and list(segmentation.get("size")) != [
            image["height"],
            image["width"],
        ]:
            raise InputError(
                f"{where}: mask size {segmentation.get('size')} differs from its image's "
                f"[height, width] {[image['height'], image['width']]}"
            )
        folded = {
            key: value
            for key, value in annotation.items()
            if key not in ("id", "category_id", "iscrowd")
        }
        folded.update(id=len(annotations) + 1, category_id=1)
        folded["iscrowd"] = int(bool(annotation.get("iscrowd", 0)))
        if "area" not in folded or "bbox" not in folded:
            rle = to_rle(annotation, image["height"], image["width"], where)
            folded.setdefault("area", float(mask_utils.area(rle)))
            folded.setdefault("bbox", [float(v) for v in mask_utils.toBbox(rle)])
        annotations.append(folded)
    dataset = {
        "info": data.get("info", {}),
        "images": list(images.values()),
        "annotations": annotations,
        "categories": [{"id": 1, "name": "object", "supercategory": "object"}],
    }
    crowd = sum(a["iscrowd"] for a in annotations)
    counts = {
        "images": len(images),
        "objects": len(annotations) - crowd,
        "crowd": crowd,
        "dropped_stuff": dropped,
    }
    if orphans:
        counts["dropped_unknown_image"] = orphans
        warnings.warn(
            f"ground truth {name}: {counted(orphans, 'annotation')} of images it does not list "
            "left out",
            stacklevel=2,
        )
    if rings:
        counts["dropped_polygons"] = rings
        counts["dropped_objects"] = shapeless
        warnings.warn(
            f"ground truth {name}: {counted(rings, 'polygon')} with fewer than 3 points (or an "
            f"odd number of coordinates) left out, and {counted(shapeless, 'object')} left with "
            "none, as Detectron2's loader leaves them out",
            stacklevel=2,
        )
    if not counts["objects"]:
        filtered = {
            "things_only": (dropped, stuff_min_id, categories),
            "orphans": orphans,
            "shapeless": shapeless,
            "crowd": crowd,
        }
        raise InputError(_nothing_to_score(name, len(data["annotations"]), filtered))
    return dataset, counts


def _nothing_to_score(name: str, total: int, filtered: dict) -> str:
    """Why no ground-truth object is left to score (every metric would be undefined)."""
    if not total:
        return f"ground truth {name} has no annotations: there is nothing to score"
    dropped, stuff_min_id, categories = filtered["things_only"]
    reasons = []
    if dropped:
        low, high = min(categories), max(categories)
        ids = f"{low}" if low == high else f"{low} to {high}"
        option = "" if stuff_min_id == STUFF_MIN_ID else f"--stuff-min-id {stuff_min_id}; "
        reasons.append(
            f"{dropped} dropped as stuff by --things-only (things_only=True): category_id >= "
            f"{stuff_min_id} ({option}its category ids: {ids})"
        )
    if filtered["orphans"]:
        reasons.append(f"{counted(filtered['orphans'], 'annotation')} of unlisted images left out")
    if filtered["shapeless"]:
        reasons.append(
            f"{counted(filtered['shapeless'], 'object')} without a polygon of 3 or more points "
            "left out"
        )
    if filtered["crowd"]:
        reasons.append(f"{counted(filtered['crowd'], 'crowd region')}, which COCOeval ignores")
    text = (
        f"ground truth {name}: none of its {counted(total, 'annotation')} is left to score: "
        + "; ".join(reasons)
    )
    if dropped and stuff_min_id != STUFF_MIN_ID:
        text += f". COCO panoptic's stuff starts at category id {STUFF_MIN_ID}, the default"
    elif dropped:
        text += ". Evaluate without --things-only"
    return text


def _category(annotation: dict, where: str) -> int:
    value = annotation.get("category_id", 1)
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value != int(value)
    ):
        raise InputError(f"{where}: 'category_id' must be an integer, got {value!r}")
    return int(value)


def _valid_polygons(annotation: dict) -> tuple[dict | None, int]:
    """The annotation without polygons too short to be one (fewer than 3 points, or an odd
    number of coordinates), and how many were removed; None when none is left (Detectron2's
    ``load_coco_json`` drops such an object)."""
    segmentation = annotation.get("segmentation")
    if not isinstance(segmentation, list) or not segmentation:
        return annotation, 0
    kept = [
        polygon
        for polygon in segmentation
        if not (isinstance(polygon, list) and (len(polygon) < 6 or len(polygon) % 2))
    ]
    removed = len(segmentation) - len(kept)
    if not kept:
        return None, removed
    return ({**annotation, "segmentation": kept} if removed else annotation), removed


def prediction_records(labels: Labels, dataset: dict, only_gt_images: bool = False) -> list[dict]:
    """Predictions as single-category records on the ground truth's image ids.

    Each record keeps ``image_id`` (the ground truth's), ``category_id`` 1, ``score``,
    ``level``, ``threshold``, ``bbox`` and a compressed-RLE ``segmentation`` (None for
    box-only predictions). Predictions on images the ground truth lacks are refused, or left
    out with ``only_gt_images`` (see :func:`evaluate`).
    """
    return _records(labels, dataset, _gt_image_ids(labels, dataset, only_gt_images))


def _gt_image_ids(labels: Labels, dataset: dict, only_gt_images: bool) -> dict:
    """{prediction image id: ground-truth image id} for the predicted images the ground truth
    has. The others are an error unless ``only_gt_images``; none at all is always one."""
    predicted = {annotation["image_id"] for annotation in labels.annotations}
    if labels.images is None:  # a results list: its ids must be the ground truth's
        known = {image["id"] for image in dataset["images"]}
        to_gt = {image_id: image_id for image_id in predicted if image_id in known}
        unknown = sorted(predicted - known, key=str)
    else:  # a dict: match its images to the ground truth's by file name
        to_gt, unknown = {}, []
        index = ImageIndex(dataset["images"], "the ground truth")
        for image in labels.images:
            if image["id"] in predicted:
                match = _gt_image_named(labels, index, image.get("file_name", ""))
                if match is None:
                    unknown.append(image.get("file_name", ""))
                else:
                    to_gt[image["id"]] = match["id"]
    if unknown and (not only_gt_images or not to_gt):
        raise InputError(_unknown_images_message(labels, dataset, unknown, len(predicted), to_gt))
    return to_gt


def _gt_image_named(labels: Labels, index: ImageIndex, file_name: str) -> dict | None:
    try:
        return index.find(file_name)
    except InputError as error:  # several ground-truth images with that name
        raise InputError(f"predictions {labels.source}: {error}") from None


def _unknown_images_message(
    labels: Labels, dataset: dict, unknown: list, predicted: int, to_gt: dict
) -> str:
    shown = ", ".join(map(repr, unknown[:5])) + (" ..." if len(unknown) > 5 else "")
    # Images with at least one prediction: an image listed with no masks counts in neither.
    if to_gt:
        share = f"{len(unknown)} of the {counted(predicted, 'image')} with predictions"
    else:
        share = (
            "the only image with predictions"
            if predicted == 1
            else (f"all {predicted} images with predictions")
        )
    if labels.images is None:
        verb = "is" if len(unknown) == 1 else "are"
        text = (
            f"{counted(len(unknown), 'image id')} {verb} not in the ground truth: {shown} "
            f"({share}). {HASHED_IDS_HINT}"
        )
    else:
        text = (
            f"no image named {shown} in the ground truth "
            f"({counted(len(dataset['images']), 'image')}; {share}, matched by file name)"
        )
    if to_gt:  # leaving the others out still evaluates something
        text += (
            ". To evaluate only the images the ground truth has, leaving out the predictions "
            "on the others, pass --only-gt-images (Python: only_gt_images=True)"
        )
    return f"predictions {labels.source}: {text}"


def _records(labels: Labels, dataset: dict, to_gt: dict, progress: bool = False) -> list[dict]:
    """Single-category records of the predictions on the images in ``to_gt``."""
    gt_images = {image["id"]: image for image in dataset["images"]}
    records = []
    with _bar(progress, len(labels.annotations), "reading predictions", "mask") as bar:
        for index, annotation in enumerate(labels.annotations):
            bar.update()
            if annotation["image_id"] in to_gt:  # else an image the ground truth lacks
                image = gt_images[to_gt[annotation["image_id"]]]
                where = f"predictions {labels.source}: annotation {index}"
                records.append(_record(annotation, image, where))
    return records


def _record(annotation: dict, image: dict, where: str) -> dict:
    """One prediction as a single-category record on its ground-truth ``image``."""
    from pycocotools import mask as mask_utils

    segmentation = None
    if annotation.get("segmentation"):
        segmentation = to_rle(annotation, image["height"], image["width"], where)
    bbox = annotation.get("bbox")
    if not bbox:
        bbox = [float(v) for v in mask_utils.toBbox(segmentation)]
    score = score_of(annotation)
    if not math.isfinite(score):
        raise InputError(f"{where}: score {score!r} is not a finite number")
    return {
        "image_id": image["id"],
        "category_id": 1,
        "score": score,
        "level": level_of(annotation),
        "threshold": threshold_of(annotation),
        "bbox": [float(v) for v in bbox],
        "segmentation": segmentation,
    }


def _coco(dataset: dict):
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco


def _cocoeval_steps(num_images: int) -> int:
    """The steps a COCOeval run's bar counts: per image its IoUs, then its matching in each of
    COCOeval's area ranges (all, small, medium, large)."""
    from pycocotools.cocoeval import Params

    return num_images * (1 + len(Params(iouType="bbox").areaRng))


def _run_cocoeval(gt_coco, records: Sequence[dict], iou_type: str, bar=None, label: str = ""):
    """COCOeval, class-agnostic, maxDets 10/100/1000, evaluated and accumulated.

    ``bar`` (a tqdm bar, or None) counts evaluate()'s :func:`_cocoeval_steps`, its
    description the run and its stage; ``label`` names the run (a breakdown subset).
    """
    name = " ".join(filter(None, [label, IOU_TYPE_NAMES[iou_type]]))
    if bar is None:
        bar = _bar(False, None, "", "step")
    bar.set_description_str(f"{name}: loading results")
    results = _cocoeval_results(records, iou_type)
    with contextlib.redirect_stdout(io.StringIO()):
        if results:
            detections = gt_coco.loadRes(results)
        else:  # loadRes cannot take an empty list
            detections = _coco(
                {"images": gt_coco.dataset["images"], "annotations": [], "categories": []}
            )
        evaluation = _ticking_cocoeval()(gt_coco, detections, iou_type)
        evaluation.bar = bar
        evaluation.params.useCats = 0
        evaluation.params.maxDets = list(MAX_DETS)
        bar.set_description_str(f"{name}: IoUs and matching")
        evaluation.evaluate()
        bar.set_description_str(f"{name}: accumulating")
        evaluation.accumulate()
    return evaluation


def _cocoeval_results(records: Sequence[dict], iou_type: str) -> list[dict]:
    """The records as COCO results with one geometry (copied: loadRes adds fields)."""
    geometry = "bbox" if iou_type == "bbox" else "segmentation"
    results = []
    for record in records:
        if record[geometry] is None:
            raise InputError(f"a prediction of image {record['image_id']} has no mask for segm")
        results.append(
            {
                "image_id": record["image_id"],
                "category_id": 1,
                "score": record["score"],
                geometry: copy.deepcopy(record[geometry]),
            }
        )
    return results


@functools.cache
def _ticking_cocoeval() -> type:
    """COCOeval that ticks ``self.bar`` once per image in computeIoU and once per image and
    area range in evaluateImg: evaluate()'s loops, the long part on big inputs."""
    from pycocotools.cocoeval import COCOeval

    class TickingCOCOeval(COCOeval):
        bar = None

        def computeIoU(self, imgId, catId):  # pycocotools' names and signatures
            self.bar.update()
            return super().computeIoU(imgId, catId)

        def evaluateImg(self, imgId, catId, aRng, maxDet):
            self.bar.update()
            return super().evaluateImg(imgId, catId, aRng, maxDet)

    return TickingCOCOeval


def summarize(evaluation) -> dict:
    """The :data:`METRICS` of an accumulated class-agnostic COCOeval (module docstring)."""
    params = evaluation.params
    if list(params.maxDets) != list(MAX_DETS):
        raise ValueError(f"expected params.maxDets {list(MAX_DETS)}, got {params.maxDets}")
    precision = evaluation.eval["precision"]  # (T, R, K, A, M)
    recall = evaluation.eval["recall"]  # (T, K, A, M)
    area = {label: index for index, label in enumerate(params.areaRngLbl)}
    at = {limit: index for index, limit in enumerate(params.maxDets)}
    t50 = int(np.flatnonzero(np.isclose(params.iouThrs, 0.5))[0])
    t75 = int(np.flatnonzero(np.isclose(params.iouThrs, 0.75))[0])
    most = at[MAX_DETS[-1]]
    return {
        "AR@10": _mean_defined(recall[:, :, area["all"], at[10]]),
        "AR@100": _mean_defined(recall[:, :, area["all"], at[100]]),
        "AR@1000": _mean_defined(recall[:, :, area["all"], at[1000]]),
        "AR_s": _mean_defined(recall[:, :, area["small"], most]),
        "AR_m": _mean_defined(recall[:, :, area["medium"], most]),
        "AR_l": _mean_defined(recall[:, :, area["large"], most]),
        "AP": _mean_defined(precision[:, :, :, area["all"], most]),
        "AP50": _mean_defined(precision[t50, :, :, area["all"], most]),
        "AP75": _mean_defined(precision[t75, :, :, area["all"], most]),
    }


def _mean_defined(values: np.ndarray) -> float | None:
    """Mean of the entries > -1 (COCOeval's "defined"), None when there are none."""
    defined = values[values > -1]
    return float(np.mean(defined)) if defined.size else None


def _breakdown_groups(records: Sequence[dict]) -> list[tuple[str, str, list[dict]]]:
    """(group, name, records) of each breakdown row: by merge threshold, the whole set, then
    by level (the paper's Table 2)."""
    groups: list[tuple[str, str, list[dict]]] = []
    thresholds = sorted({r["threshold"] for r in records if r["threshold"] is not None})
    for threshold in thresholds:
        subset = [r for r in records if r["threshold"] == threshold]
        groups.append(("threshold", f"{threshold:g}", subset))
    if any(r["threshold"] is None for r in records) and thresholds:
        groups.append(("threshold", "none", [r for r in records if r["threshold"] is None]))
    groups.append(("all", "ensemble" if thresholds else "all", list(records)))
    for level, name in enumerate(LEVEL_NAMES):  # levels without predictions are left out
        subset = [r for r in records if r["level"] == level]
        if subset:
            groups.append(("level", name, subset))
    return groups


def _breakdown(gt_coco, groups, iou_types, num_images: int, bar=None) -> list[dict]:
    """The rows of :func:`_breakdown_groups`' subsets.

    Labels per image = predictions in the subset / ground-truth images.
    """
    rows = []
    for group, name, subset in groups:
        row = {
            "group": group,
            "name": name,
            "predictions": len(subset),
            "labels_per_image": len(subset) / num_images,
        }
        for iou_type in iou_types:
            label = name if group == "all" else f"{group} {name}"
            row[iou_type] = summarize(_run_cocoeval(gt_coco, subset, iou_type, bar, label))
        rows.append(row)
    return rows


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


UNDEFINED_NOTE = (
    "-: nothing to evaluate (no ground-truth objects in that area range, e.g. AR_s without "
    "small objects; null in the JSON)"
)


def _notes(rows: list[list[str]], unit: str) -> str:
    """The unit line under a table, and what '-' means when the table has one."""
    has_dash = any(cell == "-" for row in rows[1:] for cell in row[1:])
    return unit + ("\n" + UNDEFINED_NOTE if has_dash else "")


def format_metrics(result: dict) -> str:
    """The main table (paper Tables 1 and 9): one row per IoU type, values in percent.

    The first line is the summary (counts); the lines under the table give the unit (the
    result dict and ``--out`` JSON hold fractions) and what "-" means when one is shown.
    """
    counts = result["counts"]
    settings = result["settings"]
    header = (
        f"class-agnostic, {counted(counts['images'], 'image')}, "
        f"{counted(counts['objects'], 'object')} ({counted(counts['crowd'], 'crowd region')} "
        "ignored"
        + (
            f", {counted(counts['dropped_stuff'], 'stuff region')} dropped"
            if settings["things_only"]
            else ""
        )
        + f"), {counted(counts['predictions'], 'prediction')}"
        + _dropped_note(result)
        + f"; AR_s/m/l and AP at {MAX_DETS[-1]} detections"
    )
    rows = [["(%)", *METRICS]]
    for iou_type in settings["iou_types"]:
        rows.append([IOU_TYPE_NAMES[iou_type], *(_percent(result[iou_type][m]) for m in METRICS)])
    unit = "values in % (the --out JSON holds fractions in [0, 1])"
    text = header + "\n" + _table(rows) + "\n" + _notes(rows, unit)
    return text + (f"\n{settings['note']}" if settings.get("note") else "")


def _dropped_note(result: dict) -> str:
    """How much --only-gt-images left out (nothing for results of older versions)."""
    if not result["settings"].get("only_gt_images"):
        return ""
    counts = result["counts"]
    images = counts["dropped_images"]
    return (
        f" ({counts['dropped_predictions']} more on {counted(images, 'image')} "
        "not in the ground truth left out)"
    )


def format_breakdown(result: dict) -> str:
    """The breakdown table (paper Table 2): labels per image, AR and AP (in percent) per
    subset, with the unit line (and the meaning of "-") under it."""
    iou_types = result["settings"]["iou_types"]
    header = ["subset", "labels/img"]
    for iou_type in iou_types:
        header += [f"{IOU_TYPE_NAMES[iou_type]} {metric}" for metric in BREAKDOWN_METRICS]
    rows = [header]
    for row in result["breakdown"]:
        name = row["name"] if row["group"] == "all" else f"{row['group']} {row['name']}"
        cells = [name, f"{row['labels_per_image']:.2f}"]
        for iou_type in iou_types:
            cells += [_percent(row[iou_type][metric]) for metric in BREAKDOWN_METRICS]
        rows.append(cells)
    unit = "AR and AP in %; labels/img: predictions per ground-truth image"
    return _table(rows) + "\n" + _notes(rows, unit)


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:])]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
