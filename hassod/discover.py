"""Stage 1 for one image: features -> partitions -> masks -> ensemble -> levels.

:func:`discover_from_features` is the per-image composition of the plain steps in
:mod:`hassod.cluster`, :mod:`hassod.postprocess` and :mod:`hassod.ensemble`, with the paper's
defaults in :class:`DiscoveryConfig`. Batching the backbone over a folder lives in
:mod:`hassod.discover_run`; reading folders, resuming and shards in :mod:`hassod.image_folder`,
:mod:`hassod.work_folder` and :mod:`hassod.shards`.
"""

from __future__ import annotations

import numbers
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from hassod.cluster import DEFAULT_THRESHOLDS, check_thresholds, fast_cluster
from hassod.coco import image_record, mask_annotations
from hassod.ensemble import EnsembleResult, ensemble
from hassod.features import POS_EMBED_RESIZES, default_pos_embed_resize
from hassod.hierarchy import PSEUDO_LABEL_COVER, _check_fraction
from hassod.postprocess import (
    CrfCandidates,
    CrfParams,
    FilterParams,
    finish_partition,
    masks_for_partition,
)

DEFAULT_BACKBONE = "vit_base_patch8_224.dino"  # DINO ViT-B/8, the paper's
DEFAULT_SIZE = 480  # images are resized to 480 x 480 (aspect ratio ignored)
#: Largest image read by default, in pixels (width x height), e.g. 8000 x 5000. Post-processing
#: holds every kept region's mask at the original size as bool (1 byte x regions x pixels, a
#: few copies of it as masks go through the filters, the ensemble and the hierarchy, plus
#: 256 MB of float32 while upsampling), so memory grows with this; raise it deliberately.
DEFAULT_MAX_PIXELS = 40_000_000


@dataclass(frozen=True)
class DiscoveryConfig:
    """Every parameter of stage 1; the defaults are the paper's / authors' code's.

    ``feature_transform``: ``"auto"`` keeps the raw keys for DINO v1 backbones (the paper's
    setting) and centres them per image for every other backbone: raw DINOv2 keys share a large
    constant term that merges each image into one region (DESIGN.md 2b), and on the shared COCO
    photos centring gave the most regions of the three choices.

    ``pos_embed_resize``: how the backbone's position table is resized to the input's token
    grid (:data:`hassod.features.POS_EMBED_RESIZES`); ``"auto"`` is DINO v1's own way for DINO
    v1 backbones (the authors' features) and an explicit size for the others.
    """

    backbone: str = DEFAULT_BACKBONE
    size: int = DEFAULT_SIZE
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    feature_transform: str = "auto"
    pos_embed_resize: str = "auto"
    crf: CrfParams = field(default_factory=CrfParams)
    filters: FilterParams = field(default_factory=FilterParams)
    cover: float = PSEUDO_LABEL_COVER
    near_duplicate_iou: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "thresholds", check_thresholds(self.thresholds))
        size = self.size
        if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
            raise ValueError(f"size must be a positive integer, got {size!r}")
        object.__setattr__(self, "size", int(size))  # np.int64 too; as_dict() is JSON
        for name, kind in (("crf", CrfParams), ("filters", FilterParams)):
            if not isinstance(getattr(self, name), kind):
                raise TypeError(
                    f"{name} must be a {kind.__name__}, got {type(getattr(self, name)).__name__}"
                )
        # checked here, not after the CRFs of the first image
        object.__setattr__(self, "cover", _check_fraction(self.cover, "cover"))
        if self.near_duplicate_iou is not None:
            iou = _check_fraction(self.near_duplicate_iou, "near_duplicate_iou")
            object.__setattr__(self, "near_duplicate_iou", iou)
        if self.feature_transform not in ("auto", "none", "remove-key-bias", "center"):
            raise ValueError(f"unknown feature_transform {self.feature_transform!r}")
        if self.pos_embed_resize not in ("auto", *POS_EMBED_RESIZES):
            raise ValueError(f"unknown pos_embed_resize {self.pos_embed_resize!r}")

    @property
    def resolved_transform(self) -> str:
        if self.feature_transform != "auto":
            return self.feature_transform
        return "none" if self.backbone.endswith(".dino") else "center"

    @property
    def resolved_pos_embed_resize(self) -> str:
        if self.pos_embed_resize != "auto":
            return self.pos_embed_resize
        return default_pos_embed_resize(self.backbone)

    def as_dict(self) -> dict:
        """JSON-ready parameters (for the output's ``info``)."""
        values = asdict(self)
        values["thresholds"] = list(self.thresholds)
        values["feature_transform"] = self.resolved_transform
        values["pos_embed_resize"] = self.resolved_pos_embed_resize
        return values


def fixed_size(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) uint8, PIL LANCZOS, aspect ratio ignored (authors')."""
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((size, size), Image.LANCZOS))


class UnreadableImage(ValueError):
    """An image file that cannot be used; the message is the reason, for the ``failed`` list."""


def read_image(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode one image file as (H, W, 3) uint8 RGB, EXIF orientation applied.

    Any PIL mode works (grey, grey + alpha, RGBA, palette, CMYK, 1-bit, 16-bit): it is
    converted the way :func:`hassod.features.preprocess` converts it (16-bit values are scaled,
    not clipped; alpha is dropped). Width and height are those after the EXIF rotation, which
    is what Detectron2's ``read_image`` sees.

    Args:
        path: the file.
        max_pixels: refuse images with more pixels than this (checked from the header, before
            decoding); None or 0: no limit. PIL's own decompression-bomb limit (about 179
            million pixels) applies on top unless the caller lifted ``PIL.Image.MAX_IMAGE_PIXELS``
            (``hassod discover`` does, and enforces ``max_pixels`` instead).

    Raises:
        UnreadableImage: empty, missing, unidentifiable, truncated or corrupt file; an image
            over ``max_pixels``; a zero-sized image.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    from hassod.features import _pil_to_rgb

    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise UnreadableImage("empty file (0 bytes)")
    except OSError as error:
        raise UnreadableImage(f"cannot read file: {error.strerror or error}") from error
    try:
        with Image.open(path) as opened:
            width, height = opened.size
            if width < 1 or height < 1:
                raise UnreadableImage(f"image has no pixels ({width}x{height})")
            if max_pixels and width * height > max_pixels:
                raise UnreadableImage(
                    f"image too large: {width}x{height} = {width * height} pixels, over the "
                    f"limit of {max_pixels} (raise it with --max-pixels)"
                )
            opened.load()  # truncated data raises here (PIL.ImageFile.LOAD_TRUNCATED_IMAGES off)
            rgb = _pil_to_rgb(ImageOps.exif_transpose(opened))
    except UnreadableImage:
        raise
    except Image.DecompressionBombError as error:
        raise UnreadableImage(
            f"image too large for PIL's decompression-bomb limit: {error}"
        ) from error
    except UnidentifiedImageError as error:
        raise UnreadableImage(
            "not an image PIL can identify (unknown format or corrupt)"
        ) from error
    except Exception as error:  # corrupt data makes decoders fail in many ways
        raise UnreadableImage(
            f"cannot decode image: {type(error).__name__}: {str(error).strip() or 'no details'}"
        ) from error
    return np.asarray(rgb)


def discover_records(
    file_name: str,
    image: np.ndarray,
    features: np.ndarray | ThresholdCandidates,
    config: DiscoveryConfig = DiscoveryConfig(),
    timings: dict[str, float] | None = None,
) -> tuple[dict, list[dict]]:
    """One image's COCO image record and annotation records (see :mod:`hassod.coco`).

    :func:`discover_from_features` followed by RLE encoding (timed as ``encode``). The records'
    ``parent`` is an index within the image; :func:`hassod.coco.assemble` turns it into an id.
    """
    result = discover_from_features(image, features, config, timings)
    clock = _Clock(timings)
    height, width = image.shape[:2]
    annotations = mask_annotations(
        result.masks, result.level, result.parent, result.thresholds, result.scores
    )
    clock.lap("encode")
    return image_record(file_name, int(width), int(height)), annotations


def discover_from_features(
    image: np.ndarray,
    features: np.ndarray | ThresholdCandidates,
    config: DiscoveryConfig = DiscoveryConfig(),
    timings: dict[str, float] | None = None,
) -> EnsembleResult:
    """Pseudo-label masks of one image from its feature grid.

    Args:
        image: (H, W, 3) uint8 RGB original image.
        features: (h, w, C) features of the image resized to ``config.size`` (already
            transformed: see :class:`DiscoveryConfig`).
        config: stage-1 parameters.
        timings: if given, seconds per stage are added to it (``cluster``, ``crf+filters``,
            ``hierarchy``).

    Returns:
        An :class:`hassod.ensemble.EnsembleResult`: the ensemble's masks at the original size
        (M, H, W) bool, their thresholds, scores, parents and levels.

    Raises:
        ValueError: an image that is not (H, W, 3) uint8; features :func:`hassod.fast_cluster`
            refuses (not (h, w, C) floats, non-finite values).
    """
    image = _check_image(image)
    per_threshold = masks_per_threshold(image, features, config, timings)
    clock = _Clock(timings)
    result = ensemble(per_threshold, image.shape[:2], config.cover, config.near_duplicate_iou)
    clock.lap("hierarchy")
    return result


@dataclass(frozen=True)
class ThresholdCandidates:
    """An image's partitions already through the CRF (:mod:`hassod.batched_crf`), in the place
    of its features: the per-image steps then start at the mask filters."""

    thresholds: tuple[float, ...]  # descending, as fast_cluster returns them
    partitions: tuple[CrfCandidates, ...]  # one per threshold


def masks_per_threshold(
    image: np.ndarray,
    features: np.ndarray | ThresholdCandidates,
    config: DiscoveryConfig = DiscoveryConfig(),
    timings: dict[str, float] | None = None,
) -> list[tuple[float, np.ndarray, np.ndarray]]:
    """Each threshold's filtered masks before the ensemble (steps 3-4 of DESIGN.md section 1).

    Arguments as for :func:`discover_from_features` (timed as ``cluster`` and
    ``crf+filters``); ``features`` may also be the image's :class:`ThresholdCandidates`.
    Returns ``(theta, masks (M_t, H, W) bool, CRF agreement (M_t,))`` per threshold in
    descending theta, the input of :func:`hassod.ensemble.ensemble`; callers that compare
    ensemble settings (e.g. ``near_duplicate_iou``) run the costly part once.
    """
    image = _check_image(image)
    clock = _Clock(timings)
    if isinstance(features, ThresholdCandidates):
        per_threshold = []
        for theta, candidates in zip(features.thresholds, features.partitions):
            found = finish_partition(candidates, config.filters)
            per_threshold.append((float(theta), found.masks, found.agreement))
        clock.lap("crf+filters")
        return per_threshold
    clusters = fast_cluster(features, config.thresholds)
    clock.lap("cluster")
    crf_image = fixed_size(image, config.size)
    per_threshold = []
    for index, theta in enumerate(clusters.thresholds):
        found = masks_for_partition(
            clusters.labels[index], crf_image, image.shape[:2], config.crf, config.filters
        )
        per_threshold.append((float(theta), found.masks, found.agreement))
    clock.lap("crf+filters")
    return per_threshold


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    return image


class _Clock:
    def __init__(self, timings: dict[str, float] | None) -> None:
        self.timings = timings
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        if self.timings is not None:
            self.timings[name] = self.timings.get(name, 0.0) + now - self.last
        self.last = now
