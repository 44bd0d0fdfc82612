"""Stage 1's per-image post-processing written the authors' way (HASSOD ``hac/hac.py``,
``hac/crf.py`` and ``hac/post_process.py``): the yardstick for :mod:`hassod.discover`.

From one image and its partitions (label maps, or a feature grid clustered with
:func:`hassod.reference.reference_cluster`):

1. per threshold: one-hot float32 masks of the regions -> ``torch`` bilinear interpolation to
   the CRF image's size (the pre-CRF masks) -> pydensecrf ``DenseCRF2D`` called directly
   (``unary_from_softmax``, ``addPairwiseGaussian(sxy=3, compat=7)``,
   ``addPairwiseBilateral(sxy=50, srgb=5, rgbim, compat=10)``, 10 iterations; the CRF
   interpolates the grid masks itself, as ``densecrf_hac`` does) -> keep a region when
   ``IoU(pre >= 0.5, post >= 0.5) >= 0.5`` (a 0 / 0 IoU is NaN: not kept) -> interpolate the
   kept marginals to the original size -> ``>= 0.5`` -> per mask, in region order: skip it
   under 100 pixels, skip it with >= 3 image corners, ``binary_fill_holes``; RLE-encode it;
2. the ensemble as ``post_process.py`` runs it: the thresholds' masks concatenated in the
   order 0.1, 0.2, 0.4 (ascending), decoded from their RLEs; for every ordered pair both
   coverages from ``np.logical_and(...).sum()`` and float division; a mask's parent is the
   smallest-area mask covering it (a strictly smaller area replaces, so ties keep the lower
   index); levels by recursion from the roots, clamped at 2.

One addition on purpose, as in :func:`hassod.ensemble.ensemble`: before the coverage tree,
exact duplicates are removed (the first copy in the concatenated order is kept; the public
code keeps every copy), and with ``near_duplicate_iou`` also masks whose IoU with an earlier
kept mask reaches it.

Region order within a threshold is the label maps' (region ids 0..R-1); the authors number
regions by their position in the similarity dict instead, which only changes the order masks
are listed in (and so which copy of a duplicate and which of two equal-area parents is first).

Uses NumPy, SciPy, torch, PIL, pycocotools and pydensecrf only (nothing of hassod's native
code). Slow on purpose.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# The authors' constants (hac/crf.py, hac/hac.py, hac/post_process.py).
CRF_ITERATIONS = 10
GAUSSIAN_SXY, GAUSSIAN_COMPAT = 3, 7
BILATERAL_SXY, BILATERAL_SRGB, BILATERAL_COMPAT = 50, 5, 10
KEEP_IOU = 0.5
MIN_AREA = 100
COVERAGE_THRESHOLD = 0.9


@dataclass
class ReferenceDiscovery:
    """One image's pseudo-labels, in the ensemble's order."""

    masks: np.ndarray  # (M, H, W) bool, decoded from their RLEs
    thresholds: np.ndarray  # (M,) float64 theta_merge of each mask
    scores: np.ndarray  # (M,) float64 IoU of the region before / after the CRF
    parent: np.ndarray  # (M,) int32, -1 for roots
    level: np.ndarray  # (M,) int8: 0 whole, 1 part, 2 subpart
    duplicates_removed: int  # masks dropped as (near-)duplicates of an earlier one
    per_threshold: dict  # theta -> number of masks that threshold gave (before the ensemble)


def reference_fixed_size(image: np.ndarray, size: int) -> np.ndarray:
    """``Image.resize((size, size), LANCZOS)``, aspect ratio ignored (hac.py's ``I_new``)."""
    from PIL import Image

    return np.array(Image.fromarray(np.asarray(image)).resize((size, size), Image.LANCZOS))


def reference_one_hot(labels: np.ndarray) -> np.ndarray:
    """(h, w) region ids 0..R-1 -> (R, h, w) float32 masks, 1.0 inside each region."""
    labels = np.asarray(labels)
    masks = np.zeros((int(labels.max()) + 1, *labels.shape), dtype=np.float32)
    for region in range(masks.shape[0]):
        masks[region][labels == region] = 1.0
    return masks


def _interpolate(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    import torch

    resized = torch.nn.functional.interpolate(
        torch.tensor(masks).unsqueeze(0), size=(height, width), mode="bilinear"
    )
    return resized.squeeze(0).numpy()


def reference_crf(image: np.ndarray, grid_masks: np.ndarray) -> np.ndarray:
    """``densecrf_hac``: (R, h, w) float32 grid masks -> (R, H, W) CRF marginals Q on ``image``."""
    from hassod.postprocess import import_pydensecrf

    dcrf, unary_from_softmax = import_pydensecrf()
    height, width = image.shape[:2]
    image = np.array(image, order="C")  # a writable copy: pydensecrf rejects read-only ones
    probs = _interpolate(grid_masks, height, width)
    labels = probs.shape[0]
    crf = dcrf.DenseCRF2D(width, height, labels)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    crf.addPairwiseGaussian(sxy=GAUSSIAN_SXY, compat=GAUSSIAN_COMPAT)
    crf.addPairwiseBilateral(
        sxy=BILATERAL_SXY, srgb=BILATERAL_SRGB, rgbim=image, compat=BILATERAL_COMPAT
    )
    return np.array(crf.inference(CRF_ITERATIONS)).reshape((labels, height, width))


def reference_threshold_masks(
    labels: np.ndarray, crf_image: np.ndarray, height: int, width: int
) -> list[tuple[dict, float]]:
    """One threshold's partition -> ``(RLE, CRF agreement)`` of each kept mask, region order.

    ``crf_image`` is the image resized to the fixed size; ``height`` / ``width`` the original's.
    """
    from pycocotools import mask as mask_utils
    from scipy import ndimage

    grid_masks = reference_one_hot(labels)
    size = crf_image.shape[:2]
    pre_crf = _interpolate(grid_masks, size[0], size[1])
    post_crf = reference_crf(crf_image, grid_masks)
    mask1 = (pre_crf >= 0.5).astype(np.uint8)
    mask2 = (post_crf >= 0.5).astype(np.uint8)
    intersection = np.logical_and(mask1, mask2).sum(axis=1).sum(axis=1)
    union = np.logical_or(mask1, mask2).sum(axis=1).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        agreement = intersection / union  # NaN for an empty union: never kept
    keep = agreement >= KEEP_IOU
    if keep.sum() == 0:
        return []
    kept = _interpolate(post_crf[keep], height, width)
    kept_agreement = agreement[keep]

    found = []
    for index in range(kept.shape[0]):
        binary = (kept[index] >= 0.5).astype(np.uint8)
        if binary.sum() < MIN_AREA:
            continue
        if binary[0, 0] + binary[0, -1] + binary[-1, 0] + binary[-1, -1] >= 3:
            continue
        binary = ndimage.binary_fill_holes(binary)
        rle = mask_utils.encode(np.asfortranarray(binary.astype(np.uint8)))
        if mask_utils.area(rle) < 1:
            continue
        found.append((rle, float(kept_agreement[index])))
    return found


def _coverage(mask_a: np.ndarray, mask_b: np.ndarray) -> float:
    """``compute_coverage``: |A ∩ B| / |A| (NaN for an empty A, which covers nothing)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.logical_and(mask_a, mask_b).sum() / mask_a.sum()


def reference_tree(masks: Sequence[np.ndarray], cover: float = COVERAGE_THRESHOLD):
    """``build_tree_and_assign_levels`` on decoded masks -> ((M,) parent int32, level int8)."""
    tree: dict[int, list[int]] = {}
    roots = []
    parent = []
    for a, mask_a in enumerate(masks):
        smallest, smallest_area = None, float("inf")
        for b, mask_b in enumerate(masks):
            if a == b:
                continue
            if _coverage(mask_a, mask_b) >= cover and _coverage(mask_b, mask_a) < cover:
                area_b = mask_b.sum()
                if area_b < smallest_area:
                    smallest, smallest_area = b, area_b
        if smallest is None:
            roots.append(a)
            parent.append(-1)
        else:
            tree.setdefault(smallest, []).append(a)
            parent.append(smallest)

    level = [-1] * len(masks)

    def assign(node: int, depth: int) -> None:
        for child in tree.get(node, []):
            level[child] = min(depth, 2)
            assign(child, depth + 1)

    for root in roots:
        level[root] = 0
        assign(root, 1)
    if min(level, default=0) < 0:
        raise AssertionError("a mask is not reachable from any root (a cycle)")
    return np.array(parent, dtype=np.int32), np.array(level, dtype=np.int8)


def _iou(mask_a: np.ndarray, mask_b: np.ndarray) -> float:
    """``compute_iou`` for one pair: logical_and / logical_or sums."""
    return np.logical_and(mask_a, mask_b).sum() / np.logical_or(mask_a, mask_b).sum()


def reference_ensemble(
    per_threshold: dict,
    height: int,
    width: int,
    cover: float = COVERAGE_THRESHOLD,
    near_duplicate_iou: float | None = None,
) -> ReferenceDiscovery:
    """``{theta: [(rle, agreement), ...]}`` -> the image's pseudo-labels (module docstring)."""
    from pycocotools import mask as mask_utils

    decoded, thresholds, scores = [], [], []
    for theta in sorted(per_threshold):  # 0.1, 0.2, 0.4: the order post_process.py reads them
        for rle, agreement in per_threshold[theta]:
            decoded.append(mask_utils.decode(rle))
            thresholds.append(float(theta))
            scores.append(agreement)

    kept = []
    for index, mask in enumerate(decoded):
        duplicate = False
        for earlier in kept:
            if np.array_equal(mask, decoded[earlier]):
                duplicate = True
            elif near_duplicate_iou is not None and _iou(mask, decoded[earlier]) >= (
                near_duplicate_iou
            ):
                duplicate = True
            if duplicate:
                break
        if not duplicate:
            kept.append(index)

    masks = [decoded[index] for index in kept]
    parent, level = reference_tree(masks, cover)
    stack = np.array(masks, dtype=bool).reshape(len(masks), height, width)
    return ReferenceDiscovery(
        masks=stack,
        thresholds=np.array([thresholds[index] for index in kept], dtype=np.float64),
        scores=np.array([scores[index] for index in kept], dtype=np.float64),
        parent=parent,
        level=level,
        duplicates_removed=len(decoded) - len(kept),
        per_threshold={float(theta): len(found) for theta, found in per_threshold.items()},
    )


def reference_discover(
    image: np.ndarray,
    features: np.ndarray | None = None,
    *,
    labels: Sequence[np.ndarray] | None = None,
    thresholds: Sequence[float] = (0.4, 0.2, 0.1),
    size: int = 480,
    cover: float = COVERAGE_THRESHOLD,
    near_duplicate_iou: float | None = None,
) -> ReferenceDiscovery:
    """One image's pseudo-labels the authors' way, from its features or its partitions.

    Args:
        image: (H, W, 3) uint8 RGB original image.
        features: (h, w, C) feature grid, clustered with
            :func:`hassod.reference.reference_cluster` at ``thresholds``; or None with ``labels``.
        labels: one (h, w) label map (region ids 0..R-1) per entry of ``thresholds``.
        thresholds: the merge thresholds (0.4, 0.2, 0.1 in the paper).
        size: side of the square image the CRF runs on (480 in the paper).
        cover: coverage threshold of the tree (0.9 for pseudo-labels).
        near_duplicate_iou: also drop masks whose IoU with an earlier kept one is at least this.
    """
    image = np.asarray(image)
    if (features is None) == (labels is None):
        raise ValueError("pass either features or labels=, not both and not neither")
    if labels is None:
        from hassod.reference.cluster import reference_cluster

        clusters = reference_cluster(features, thresholds)
        partitions = dict(zip(clusters.thresholds.tolist(), clusters.labels))
    else:
        if len(labels) != len(thresholds):
            raise ValueError("labels needs one label map per threshold")
        partitions = {float(theta): np.asarray(lab) for theta, lab in zip(thresholds, labels)}

    height, width = image.shape[:2]
    crf_image = reference_fixed_size(image, size)
    per_threshold = {
        theta: reference_threshold_masks(partition, crf_image, height, width)
        for theta, partition in partitions.items()
    }
    return reference_ensemble(per_threshold, height, width, cover, near_duplicate_iou)
