"""``hassod predict``: a trained checkpoint -> detections with masks and levels (COCO results).

Each image is resized (short side ``test_min_size``, long side at most ``test_max_size``: the
checkpoint's settings, 800 / 1333 in the paper preset, 128 / 160 in cpu-small), run through the
detector (stage-averaged scores, up to 1000 detections), and the detections are mapped back to
the original image: boxes rescaled, the 28x28 mask probabilities pasted at full resolution and
thresholded at 0.5, then RLE-encoded.

A detection is a COCO result dict::

    {"image_id", "category_id": 1, "bbox": [x, y, w, h], "score",
     "segmentation": {"size": [H, W], "counts": str}, "hier_level": 0 | 1 | 2,
     "level_scores": [p_whole, p_part, p_subpart]}

``hier_level`` is the argmax of the stage-averaged level probabilities; :func:`filter_levels`
keeps the chosen levels (``whole``, ``part``, ``subpart`` or 0, 1, 2).
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hassod._checks import check_number
from hassod._text import counted
from hassod.coco import CATEGORY, LEVEL_NAMES, image_id_for
from hassod.detector import augment
from hassod.detector.cascade import clip_nonempty
from hassod.detector.checkpoint import detector_from_checkpoint
from hassod.detector.config import MIN_IMAGE_SIZE
from hassod.detector.paste import paste_masks
from hassod.detector.training import resolve_device

ALL_LEVELS = frozenset(range(len(LEVEL_NAMES)))
_PASTE_CHUNK = 64  # masks pasted at full resolution at a time (bounds memory)


def parse_levels(levels) -> frozenset:
    """Level set from ``"whole,part"``, ``["subpart"]``, ``[0, 2]`` or None (all levels)."""
    if levels is None:
        return ALL_LEVELS
    if isinstance(levels, str):
        levels = [item for item in levels.split(",") if item.strip()]
    chosen = set()
    for item in levels:
        if isinstance(item, str):
            name = item.strip().lower()
            if name.isdigit():
                item = int(name)
            elif name in LEVEL_NAMES:
                item = LEVEL_NAMES.index(name)
            else:
                raise ValueError(f"unknown level {item!r}; choose from {', '.join(LEVEL_NAMES)}")
        if int(item) not in ALL_LEVELS:
            raise ValueError(f"level {item} out of range 0..{len(LEVEL_NAMES) - 1}")
        chosen.add(int(item))
    if not chosen:
        raise ValueError("choose at least one level (whole, part, subpart)")
    return frozenset(chosen)


def filter_levels(detections: Iterable[dict], levels) -> list[dict]:
    """The detections whose ``hier_level`` is one of ``levels`` (see :func:`parse_levels`).

    Raises ValueError for a detection without an integer ``hier_level`` (e.g. results of
    another detector: they carry no level to filter by)."""
    chosen = parse_levels(levels)
    kept = []
    for index, detection in enumerate(detections):
        level = detection.get("hier_level") if isinstance(detection, dict) else None
        if not isinstance(level, numbers.Integral) or isinstance(level, bool):
            raise ValueError(
                f"detection {index} has no integer 'hier_level' (got {level!r}): filter_levels "
                "takes hassod predict results, whose level is 0 (whole), 1 (part) or 2 (subpart)"
            )
        if int(level) in chosen:
            kept.append(detection)
    return kept


_CHECKED_OPTIONS = ("score_threshold", "max_detections", "min_size", "max_size", "mask_threshold")


def check_predict_options(
    score_threshold: float | None = None,
    max_detections: int | None = None,
    min_size: int | None = None,
    max_size: int | None = None,
    mask_threshold: float = 0.5,
) -> None:
    """ValueError / TypeError naming the option unless each is None (the checkpoint's
    setting) or usable: a score threshold in [0, 1], at least one detection, test sizes of at
    least ``MIN_IMAGE_SIZE`` (32) px, a mask threshold in (0, 1)."""
    for name, value in (("min_size", min_size), ("max_size", max_size)):
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an integer number of pixels, got {value!r}")
        if value < MIN_IMAGE_SIZE:
            raise ValueError(
                f"{name} must be at least {MIN_IMAGE_SIZE} pixels (one cell of the detector's "
                f"coarsest feature map), got {value}; leave it out for the checkpoint's size"
            )
    if max_detections is not None:
        check_number("max_detections", max_detections, integer=True, low=1)
    if score_threshold is not None:
        check_number("score_threshold", score_threshold, low=0, high=1)
    check_number("mask_threshold", mask_threshold, low=0, high=1, low_open=True, high_open=True)


def _encode(masks: np.ndarray) -> list[dict]:
    from pycocotools import mask as mask_utils

    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


class Predictor:
    """A trained detector ready for images.

    Args:
        checkpoint: path of a ``hassod train`` checkpoint (or its loaded dict), or of a
            Detectron2 checkpoint of the HASSOD detector such as the authors' released model
            (:mod:`hassod.detector.detectron2_weights`).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        weights: ``student`` (default; the authors evaluate the student after Mean Teacher),
            ``teacher`` (its EMA) or ``auto`` (the teacher when present, else the student).
        score_threshold: keep detections scoring above it, in [0, 1] (default: the model's,
            0.0).
        max_detections: at most this many per image, >= 1 (default: the model's, 1000).
        min_size, max_size: test resize in pixels, at least 32 (None: the checkpoint's
            ``data.test_min_size`` / ``test_max_size``; 800 / 1333 in the paper preset).
        mask_threshold: a pixel is in a mask where its pasted probability is >= this, in
            (0, 1) (0.5; Detectron2's paste, :func:`hassod.detector.paste.paste_masks`).

    Raises ValueError / TypeError naming an option outside those ranges
    (:func:`check_predict_options`).
    """

    def __init__(
        self,
        checkpoint,
        *,
        device: str = "auto",
        weights: str = "student",
        score_threshold: float | None = None,
        max_detections: int | None = None,
        min_size: int | None = None,
        max_size: int | None = None,
        mask_threshold: float = 0.5,
    ):
        check_predict_options(score_threshold, max_detections, min_size, max_size, mask_threshold)
        self.device = resolve_device(device)
        model, config = detector_from_checkpoint(checkpoint, weights)
        model_config = config.model
        changes = {}
        if score_threshold is not None:
            changes["score_thresh"] = float(score_threshold)
        if max_detections is not None:
            changes["detections_per_image"] = max_detections
        if changes:
            model_config = dataclasses.replace(model_config, **changes)
            model.config = model_config
            model.roi_heads.config = model_config
        self.model = model.to(self.device).eval()
        self.config = config
        # only None means the checkpoint's size (0 is refused above, not a default)
        self.min_size = config.data.test_min_size if min_size is None else min_size
        self.max_size = config.data.test_max_size if max_size is None else max_size
        self.mask_threshold = mask_threshold

    @torch.no_grad()
    def raw(self, image: np.ndarray) -> dict:
        """Detections of one (H, W, 3) uint8 RGB image as tensors in its coordinates:
        ``boxes`` (N, 4) xyxy inside the image with positive width and height, ``scores``,
        ``levels``, ``level_scores`` (N, 3), ``mask_probs`` (N, 1, 28, 28) -- before mask
        pasting."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
        height, width = image.shape[:2]
        if height == 0 or width == 0:
            raise ValueError(f"image is empty ({height} x {width} pixels)")
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        size = augment.scaled_size(height, width, self.min_size, self.max_size)
        resized = augment.resize_image(tensor, size).to(self.device)
        detection = self.model([resized])[0]
        scale = torch.tensor(
            [width / size[1], height / size[0], width / size[1], height / size[0]],
            device=detection["boxes"].device,
        )
        # Detectron2's detector_postprocess: boxes scaled, clipped to the image, and those
        # the clipping left without area dropped (they would be empty results).
        boxes, keep = clip_nonempty(detection["boxes"] * scale, (height, width))
        return {key: value[keep] for key, value in {**detection, "boxes": boxes}.items()}

    def __call__(self, image, levels=None, image_id: int = 0) -> list[dict]:
        """COCO result dicts of one image (an (H, W, 3) uint8 array, a PIL image or a path),
        best score first, keeping the chosen ``levels`` (:func:`parse_levels`: e.g.
        ``"whole,part"`` or ``[0, 1]``; None: all), each with ``image_id`` (see the module
        docstring for the fields).

        Raises:
            ValueError: an image that is not (H, W, 3) uint8 RGB or is empty, an unknown level;
                :class:`hassod.discover.UnreadableImage` (a ValueError) for a path that
                cannot be read.
        """
        image = _as_array(image)
        detection = self.raw(image)
        chosen = parse_levels(levels)
        keep = torch.tensor(
            [int(level) in chosen for level in detection["levels"].tolist()],
            dtype=torch.bool,
            device=detection["levels"].device,
        )
        boxes = detection["boxes"][keep]
        scores = detection["scores"][keep].tolist()
        level_ids = detection["levels"][keep].tolist()
        level_scores = detection["level_scores"][keep].tolist()
        probs = detection["mask_probs"][keep]
        height, width = image.shape[:2]
        results = []
        for start in range(0, boxes.shape[0], _PASTE_CHUNK):
            chunk_boxes = boxes[start : start + _PASTE_CHUNK]
            pasted = paste_masks(
                probs[start : start + _PASTE_CHUNK],
                chunk_boxes,
                (height, width),
                self.mask_threshold,
            )
            masks = pasted.cpu().numpy()
            corners = chunk_boxes.tolist()  # one device-to-host copy per chunk
            for offset, rle in enumerate(_encode(masks)):
                index = start + offset
                x0, y0, x1, y1 = (float(v) for v in corners[offset])
                results.append(
                    {
                        "image_id": int(image_id),
                        "category_id": CATEGORY["id"],
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "score": float(scores[index]),
                        "segmentation": rle,
                        "hier_level": int(level_ids[index]),
                        "level_scores": [float(v) for v in level_scores[index]],
                    }
                )
        return results


def _as_array(image) -> np.ndarray:
    if isinstance(image, (str, Path)):
        from hassod.discover import read_image

        return read_image(image, None)
    if hasattr(image, "convert"):  # PIL: any mode, converted as stage 1 converts it
        from hassod.features import _pil_to_rgb

        return np.asarray(_pil_to_rgb(image))
    return np.asarray(image)


@dataclass
class PredictSummary:
    out: Path
    images: int
    detections: int
    failed: list = field(default_factory=list)  # {"file_name", "reason"}
    per_level: dict = field(default_factory=dict)
    unlisted: int = 0  # images skipped as the image_ids JSON does not list them

    def format(self) -> str:
        levels = ", ".join(f"{name} {self.per_level.get(name, 0)}" for name in LEVEL_NAMES)
        text = (
            f"wrote {self.out}: {self.detections} detections ({levels}) on "
            f"{counted(self.images, 'image')}"
        )
        if self.failed:
            text += f"; {counted(len(self.failed), 'image')} could not be read (listed on stderr)"
        if self.unlisted:
            text += f"; {counted(self.unlisted, 'image')} not in the --image-ids JSON skipped"
        return text


def predict_images(
    images,
    checkpoint,
    out,
    *,
    levels=None,
    image_ids=None,
    skip_unlisted: bool = False,
    progress: bool = False,
    **predictor_options,
) -> PredictSummary:
    """Run a checkpoint on an image file or every image under a folder; write COCO results.

    Image ids are :func:`hassod.coco.image_id_for` of the path relative to the folder (for a
    single file: its name), the rule ``hassod discover`` uses, so the results pair with a
    pseudo-label JSON made from the same folder. With ``image_ids`` (a COCO JSON path or dict,
    e.g. the ground truth) each image takes the id of its record there instead, matched by file
    name (:func:`image_ids_from`), so the results pair with that JSON (``hassod evaluate``);
    images it does not list are refused, or with ``skip_unlisted`` left out (e.g. a folder
    larger than the annotated subset). Unreadable images are skipped and listed in the summary.
    The output is written atomically.

    Raises:
        FileNotFoundError: no images.
        ValueError: a bad level, or (:class:`hassod.labels.InputError`) an ``image_ids`` JSON
            that is unreadable or does not list every image; checked before the model loads.
    """
    from hassod.discover import UnreadableImage, read_image
    from hassod.discover_run import atomic_write_json, list_images

    checked = {k: v for k, v in predictor_options.items() if k in _CHECKED_OPTIONS}
    check_predict_options(**checked)  # before the images are listed and the model loads
    images, out = Path(images), Path(out)
    if images.is_file():
        root, names = images.parent, [images.name]
    elif images.is_dir():
        root, names = images, list_images(images)
        if not names:
            raise FileNotFoundError(f"no images under {images}")
    else:
        raise FileNotFoundError(f"images not found: {images}")
    chosen = parse_levels(levels)
    unlisted = 0
    if image_ids is None:
        ids = {name: image_id_for(name) for name in names}
    else:
        ids = image_ids_from(image_ids, names, root, skip_unlisted=skip_unlisted)
        unlisted = len(names) - len(ids)
        names = [name for name in names if name in ids]
        if not names:
            raise FileNotFoundError(f"none of the images under {images} are in {image_ids}")
    predictor = Predictor(checkpoint, **predictor_options)
    results, failed = [], []
    iterator = names
    if progress:
        from hassod._progress import progress_bar

        iterator = progress_bar(names, unit="img", desc="predict")
    for name in iterator:
        try:
            image = read_image(root / name, None)
        except UnreadableImage as error:
            failed.append({"file_name": name, "reason": str(error)})
            continue
        results.extend(predictor(image, chosen, image_id=ids[name]))
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, results)
    per_level = {name: 0 for name in LEVEL_NAMES}
    for result in results:
        per_level[LEVEL_NAMES[result["hier_level"]]] += 1
    for item in failed:
        print(f"hassod predict: skipped {item['file_name']}: {item['reason']}", file=sys.stderr)
    return PredictSummary(
        out, len(names) - len(failed), len(results), failed, per_level, unlisted=unlisted
    )


def image_ids_from(
    dataset, names: Sequence[str], root: str | os.PathLike = ".", *, skip_unlisted: bool = False
) -> dict[str, int]:
    """Each image's id from a COCO JSON's ``images`` records, matched by file name.

    Args:
        dataset: a COCO JSON path or parsed dict with an ``images`` list (e.g. the ground truth).
        names: image paths relative to ``root`` (as :func:`predict_images` lists them).
        root: their folder; the absolute path is matched, so a record's ``file_name`` may be
            any tail of it ("x.jpg", "val2017/x.jpg"; :func:`hassod.labels.match_image`), and
            only a tail: "train2017/x.jpg" is not the image "val2017/x.jpg".

        skip_unlisted: leave images without a record out of the result instead of refusing.

    Returns:
        ``{name: id}``.

    Raises:
        InputError: an unreadable JSON, an image without a record (its id would be missing
            from that JSON, so ``hassod evaluate`` could not score it), two images matching
            one record (their detections would be pooled), a record without an integer id.
    """
    from hassod.labels import ImageIndex, InputError

    source, records = _image_records(dataset)
    index = ImageIndex(records, f"--image-ids {source}")
    ids, owners, unmatched = {}, {}, []
    for name in names:
        # strict: a record of another folder with the same base name is not this image
        record = index.find(os.path.abspath(Path(root) / name), strict=True)
        if record is None:
            unmatched.append(name)
            continue
        image_id = _record_id(record, source)
        if image_id in owners:
            raise InputError(
                f"--image-ids {source}: images {owners[image_id]} and {name} both match the "
                f"record {record.get('file_name')!r}: predict on files with distinct names"
            )
        owners[image_id], ids[name] = name, image_id
    if unmatched and not skip_unlisted:
        shown = ", ".join(unmatched[:5]) + (" ..." if len(unmatched) > 5 else "")
        raise InputError(
            f"--image-ids {source}: {len(unmatched)} of {len(names)} images are not in its "
            f"'images' (matched by file name), so they would have no id there: {shown}. "
            "Pass --skip-unlisted to predict on the listed ones only, or leave out "
            "--image-ids (ids: hashed file names)"
        )
    return ids


def _image_records(dataset) -> tuple[str, list]:
    """(name for messages, ``images`` list) of a COCO JSON path or dict."""
    from hassod.labels import InputError, read_json

    if isinstance(dataset, (str, os.PathLike)):
        source, data = str(dataset), read_json(dataset, "--image-ids")
    else:
        source, data = "in-memory image ids", dataset
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not data["images"]:
        from hassod.sa1b import sa1b_hint

        raise InputError(
            f"--image-ids {source}: expected a COCO JSON with a non-empty 'images' list"
            f"{sa1b_hint(data)}"
        )
    return source, data["images"]


def _record_id(record: dict, source: str) -> int:
    # COCO results need integer image ids (pycocotools' loadRes, hassod evaluate's matching).
    image_id = record.get("id")
    if not isinstance(image_id, int) or isinstance(image_id, bool):
        from hassod.labels import InputError

        raise InputError(
            f"--image-ids {source}: the record of {record.get('file_name')!r} has no integer "
            f"'id' (got {image_id!r})"
        )
    return image_id
