"""Coverage relations, the coverage forest and dedup written the authors' way.

Every mask is decoded to a full (H, W) bool array. :func:`reference_hierarchy` is the authors'
post-processing loop (HASSOD ``hac/post_process.py``): for every ordered pair (A, B) it
computes both ``cov(A in B)`` and ``cov(B in A)`` with ``np.logical_and(a, b).sum()`` full-image
passes and float64 division, and keeps the smallest covering mask. It follows the rule
documented in :mod:`hassod.hierarchy`:

* B covers A iff ``|A∩B| / |A| >= cover`` and ``|A∩B| / |B| < cover``; an empty mask has
  coverage ratio 0, so it is a root and covers nothing;
* A's parent is the smallest-area mask covering it, ties to the lowest index;
* depth = number of ancestors, level = ``min(depth, 2)``;
* dedup: in index order, drop a mask whose IoU with an already kept mask is ``>= iou``; two
  empty masks have IoU 1.

:func:`reference_coverage_matrix` is the (K, K) matrix of pairwise ``logical_and`` sums;
:func:`reference_forest` and :func:`reference_dedup_intersections` apply the rules to a given
intersection matrix with plain Python arithmetic. Slow on purpose (O(K²) full-image passes per
image): the yardstick for tests and benchmarks.
"""

from __future__ import annotations

import numpy as np


def reference_decode(masks) -> list[np.ndarray]:
    """K masks as a list of (H, W) bool arrays (non-zero = inside).

    Accepts a (K, H, W) NumPy array or CPU torch tensor of any bool / integer dtype, a sequence
    of (H, W) arrays, or a list of COCO RLE dicts (compressed or uncompressed counts), decoded
    with pycocotools.
    """
    if isinstance(masks, (list, tuple)) and masks and isinstance(masks[0], dict):
        from pycocotools import mask as mask_utils

        decoded = []
        for rle in masks:
            if isinstance(rle["counts"], list):  # uncompressed -> compressed, as COCO does
                height, width = rle["size"]
                rle = mask_utils.frPyObjects(rle, height, width)
            decoded.append(mask_utils.decode(rle).astype(bool))
        return decoded
    if hasattr(masks, "detach"):  # torch tensor
        masks = masks.detach().cpu().numpy()
    return [np.asarray(mask) != 0 for mask in masks]


def reference_coverage_matrix(masks) -> tuple[np.ndarray, np.ndarray]:
    """(K, K) int64 pairwise intersections (diagonal = areas) and the (K,) areas."""
    decoded = reference_decode(masks)
    count = len(decoded)
    intersections = np.zeros((count, count), dtype=np.int64)
    for i in range(count):
        for j in range(count):
            intersections[i, j] = int(np.logical_and(decoded[i], decoded[j]).sum())
    areas = np.array([int(mask.sum()) for mask in decoded], dtype=np.int64)
    return intersections, areas


def _ratio(shared: int, area: int) -> float:
    """|A∩B| / |A| in float64, 0 for an empty A."""
    return float(shared) / float(area) if area > 0 else 0.0


def reference_forest(
    intersections: np.ndarray, cover: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(parent, depth, level) from a (K, K) intersection matrix (diagonal = areas)."""
    intersections = np.asarray(intersections)
    count = len(intersections)
    areas = [int(intersections[i, i]) for i in range(count)]
    parent = []
    for a in range(count):
        covering = []
        for b in range(count):
            if b == a:
                continue
            shared = int(intersections[a, b])
            if _ratio(shared, areas[a]) >= cover and _ratio(shared, areas[b]) < cover:
                covering.append(b)
        # smallest area first, then lowest index
        parent.append(min(covering, key=lambda b: (areas[b], b)) if covering else -1)
    return _depth_and_level(parent, count)


def reference_coverage(mask_a: np.ndarray, mask_b: np.ndarray) -> float:
    """cov(A in B) = |A∩B| / |A| as the authors compute it (float64); 0 for an empty A."""
    intersection = np.logical_and(mask_a, mask_b).sum()
    area_a = mask_a.sum()
    return float(intersection / area_a) if area_a > 0 else 0.0


def reference_hierarchy(masks, cover: float = 0.9) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(parent, depth, level) of K masks: (K,) int32, int32, int8; -1 parent for roots.

    The authors' loop: for every ordered pair (A, B), both coverages from full-image passes,
    then the smallest covering B (strictly smaller area replaces, so ties keep the lowest
    index); depth by following parents.
    """
    decoded = reference_decode(masks)
    count = len(decoded)
    parent = []
    for a, mask_a in enumerate(decoded):
        smallest, smallest_area = -1, None
        for b, mask_b in enumerate(decoded):
            if a == b:
                continue
            a_in_b = reference_coverage(mask_a, mask_b)
            b_in_a = reference_coverage(mask_b, mask_a)
            if a_in_b >= cover and b_in_a < cover:
                area_b = int(mask_b.sum())
                if smallest_area is None or area_b < smallest_area:
                    smallest, smallest_area = b, area_b
        parent.append(smallest)
    return _depth_and_level(parent, count)


def _depth_and_level(parent: list[int], count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    depth = []
    for a in range(count):
        steps, node = 0, parent[a]
        while node >= 0:
            steps += 1
            node = parent[node]
            if steps > count:
                raise AssertionError("the coverage relation has a cycle")
        depth.append(steps)
    level = [min(d, 2) for d in depth]
    return (
        np.array(parent, dtype=np.int32),
        np.array(depth, dtype=np.int32),
        np.array(level, dtype=np.int8),
    )


def reference_dedup_intersections(intersections: np.ndarray, iou: float = 1.0) -> np.ndarray:
    """Indices (ascending, int64) kept by dedup, from a (K, K) intersection matrix."""
    intersections = np.asarray(intersections)
    kept: list[int] = []
    for i in range(len(intersections)):
        duplicate = False
        for j in kept:
            shared = int(intersections[i, j])
            union = int(intersections[i, i]) + int(intersections[j, j]) - shared
            overlap = float(shared) / float(union) if union > 0 else 1.0
            if overlap >= iou:
                duplicate = True
                break
        if not duplicate:
            kept.append(i)
    return np.array(kept, dtype=np.int64)


def reference_dedup(masks, iou: float = 1.0) -> np.ndarray:
    """Indices (ascending, int64) of the masks kept when near-identical masks repeat, from
    pixel-level IoUs (``logical_and`` / ``logical_or`` sums, as the authors' compute_iou)."""
    decoded = reference_decode(masks)
    kept: list[int] = []
    for i, mask in enumerate(decoded):
        duplicate = False
        for j in kept:
            intersection = np.logical_and(mask, decoded[j]).sum()
            union = np.logical_or(mask, decoded[j]).sum()
            overlap = float(intersection / union) if union > 0 else 1.0
            if overlap >= iou:
                duplicate = True
                break
        if not duplicate:
            kept.append(i)
    return np.array(kept, dtype=np.int64)
