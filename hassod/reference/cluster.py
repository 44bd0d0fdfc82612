"""Hierarchical adaptive clustering written the authors' way: a dict of adjacent pairs, scanned
for the best pair at every merge, with similarities recomputed from fresh dot products.

O(merges x edges): seconds per 60x60 grid. Follows the exact rules documented in
:mod:`hassod.cluster` (similarity rounded to multiples of 2^-32, smallest-pair tie rule,
zero-norm similarity 0, canonical labels).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SIMILARITY_SCALE = 2.0**32


@dataclass
class ReferenceClusterResult:
    labels: np.ndarray  # (T, H, W) int32
    thresholds: np.ndarray  # (T,) descending
    num_regions: np.ndarray  # (T,)
    merges: list[tuple[int, int, int, float]]  # (a, b, new, similarity)
    stop_similarity: float


def reference_cluster(
    features: np.ndarray, thresholds: Sequence[float] = (0.4, 0.2, 0.1)
) -> ReferenceClusterResult:
    """Cluster an (H, W, C) feature grid; see :func:`hassod.fast_cluster` for the semantics."""
    features = np.asarray(features, dtype=np.float64)
    height, width, _ = features.shape
    thresholds = sorted((float(t) for t in thresholds), reverse=True)
    num_cells = height * width

    # Region id -> feature sum and member cells. Cells are regions 0 .. H*W-1 (row-major).
    sums = {cell: features[cell // width, cell % width].copy() for cell in range(num_cells)}
    members = {cell: [cell] for cell in range(num_cells)}

    def similarity(a: int, b: int) -> float:
        norm_a = np.linalg.norm(sums[a])
        norm_b = np.linalg.norm(sums[b])
        if norm_a == 0.0 or norm_b == 0.0:
            return 0.0
        cosine = float(np.dot(sums[a], sums[b])) / (norm_a * norm_b)
        return float(np.rint(cosine * SIMILARITY_SCALE)) / SIMILARITY_SCALE

    # Adjacent pairs (a, b) with a < b -> similarity; 4-neighbourhood on the grid.
    edges: dict[tuple[int, int], float] = {}
    for row in range(height):
        for col in range(width):
            cell = row * width + col
            if col + 1 < width:
                edges[(cell, cell + 1)] = similarity(cell, cell + 1)
            if row + 1 < height:
                edges[(cell, cell + width)] = similarity(cell, cell + width)

    def snapshot() -> np.ndarray:
        region_of_cell = np.empty(num_cells, dtype=np.int64)
        for region, cells in members.items():
            region_of_cell[cells] = region
        labels = np.empty(num_cells, dtype=np.int32)
        label_of_region: dict[int, int] = {}
        for cell in range(num_cells):  # number regions by first appearance
            region = int(region_of_cell[cell])
            if region not in label_of_region:
                label_of_region[region] = len(label_of_region)
            labels[cell] = label_of_region[region]
        return labels.reshape(height, width)

    snapshots: list[np.ndarray] = []
    merges: list[tuple[int, int, int, float]] = []
    stop_similarity = float("-inf")
    t = 0
    while t < len(thresholds):
        if not edges:
            while t < len(thresholds):
                snapshots.append(snapshot())
                t += 1
            break
        # Best pair: highest similarity, ties to the smallest (a, b).
        (a, b), best = max(edges.items(), key=lambda item: (item[1], -item[0][0], -item[0][1]))
        if best < thresholds[t]:
            snapshots.append(snapshot())
            if t == len(thresholds) - 1:
                stop_similarity = best
            t += 1
            continue
        new = num_cells + len(merges)
        merges.append((a, b, new, best))
        neighbours = set()
        for x, y in list(edges):
            if x in (a, b) or y in (a, b):
                neighbours.update((x, y))
                del edges[(x, y)]
        neighbours -= {a, b}
        sums[new] = sums.pop(a) + sums.pop(b)
        members[new] = members.pop(a) + members.pop(b)
        for c in neighbours:
            edges[(c, new)] = similarity(c, new)

    labels = np.stack(snapshots)
    return ReferenceClusterResult(
        labels=labels,
        thresholds=np.asarray(thresholds, dtype=np.float64),
        num_regions=np.asarray([int(s.max()) + 1 for s in snapshots], dtype=np.int32),
        merges=merges,
        stop_similarity=stop_similarity,
    )
