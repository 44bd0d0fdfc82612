"""A peer for the benchmarks: hassod's greedy merge run through scikit-image's RAG machinery.

:func:`skimage_cluster` builds a region adjacency graph (``skimage.graph.RAG``, a networkx graph)
with one node per cell of the (H, W) grid and an edge to the right and the lower neighbour
(4-connectivity), then lets ``skimage.graph.merge_hierarchical`` merge the pair with the smallest
edge weight over and over. Nodes carry ``'sum'`` (the float64 feature sum of the region),
``'count'`` (its cells) and ``'labels'`` (its cells' ids, which merge_hierarchical needs); an
edge's ``'weight'`` is ``1 - cosine`` of the two regions' mean features (the cosine of the sums,
which is the same number). The custom ``merge_func`` adds the sums, the custom ``weight_func``
recomputes ``1 - cosine`` for every neighbour of the merged region.

Rules shared with :func:`hassod.fast_cluster` (see :mod:`hassod.cluster`):

* the cosine is rounded to the nearest multiple of 2^-32 (``round_similarity=True``), so
  ``weight = 1 - similarity`` is exact in float64 and the heap orders pairs as hassod does;
* a region whose sum has zero norm has similarity 0 (weight 1) with every neighbour;
* hassod merges while the best similarity is ``>= theta`` (weight ``<= 1 - theta``), but
  merge_hierarchical merges while the smallest weight is ``< thresh``. With rounded similarities
  every weight is a multiple of 2^-32, so :func:`merge_threshold` passes ``thresh = 1 - g +
  2^-33`` where ``g`` is the smallest multiple of 2^-32 that is ``>= theta``: exactly the same
  rule, no epsilon to tune. Without rounding it passes ``1 - theta + 1e-12``.

What may still differ: ties. merge_hierarchical's heap holds ``[weight, n1, n2, valid]`` and
breaks equal weights by ``n1`` then ``n2``; for the edges of a merged region it pushes
``(new, neighbour)`` whereas hassod breaks ties by the smallest ``(a, b)`` with ``a < b``. With
``in_place_merge=False`` a merge creates node ``max_id + 1``, i.e. ``H*W + k`` for merge ``k``, as
hassod numbers its regions, so only the order within the pair differs. Exact ties at 2^-32 are
rare on real-valued features; the dot products also sum in another order than the C++ core,
which matters only when a cosine falls within ~1e-16 of a rounding boundary.

Two ways to get the partitions of several thresholds:

* ``mode="per_threshold"``: one ``merge_hierarchical`` per threshold, each on a fresh copy of the
  RAG (``rag_copy=True``): the plain use of the API;
* ``mode="single"`` (default): one run at the lowest threshold whose ``merge_func`` records every
  merge and its weight; a run at a higher threshold would make the same merges up to the first
  one whose weight is not below its ``thresh``, so each partition is a prefix of that record
  (union-find over the cells).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from skimage.graph import RAG, merge_hierarchical

SIMILARITY_SCALE = 2.0**32  # hassod's similarity grid, see hassod.cluster
UNROUNDED_EPSILON = 1e-12  # slack for ``weight <= 1 - theta`` when similarities are not rounded


def skimage_cluster(
    features: np.ndarray,
    thresholds: float | Sequence[float] = (0.4, 0.2, 0.1),
    mode: str = "single",
    round_similarity: bool = True,
) -> list[np.ndarray]:
    """Cluster an (H, W, C) feature grid with ``skimage.graph.merge_hierarchical``.

    Args:
        features: (H, W, C) float array of raw features (summed in float64).
        thresholds: cosine thresholds; any order (answered in descending order, as
            :func:`hassod.fast_cluster` does).
        mode: ``"single"`` (one merge run, partitions from its recorded merges) or
            ``"per_threshold"`` (one merge run per threshold on a fresh RAG copy).
        round_similarity: round cosines to multiples of 2^-32 as hassod does.

    Returns:
        One (H, W) int32 canonical label map per threshold, thresholds descending.
    """
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 3:
        raise ValueError(f"features must have shape (H, W, C), got {features.shape}")
    levels = sorted((float(t) for t in np.atleast_1d(thresholds)), reverse=True)
    height, width, _ = features.shape
    labels = np.arange(height * width).reshape(height, width)
    similarity = _similarity_function(round_similarity)
    rag = build_grid_rag(features, similarity)
    weight_func = _weight_function(similarity)
    threshes = [merge_threshold(theta, round_similarity) for theta in levels]

    if mode == "per_threshold":
        return [
            canonical_labels(
                merge_hierarchical(
                    labels,
                    rag,
                    thresh=thresh,
                    rag_copy=True,
                    in_place_merge=False,
                    merge_func=_merge_sums,
                    weight_func=weight_func,
                )
            )
            for thresh in threshes
        ]
    if mode != "single":
        raise ValueError(f"mode must be 'single' or 'per_threshold', got {mode!r}")

    record: list[tuple[int, int, float]] = []  # (a cell of src, a cell of dst, weight)

    def merge_and_record(graph, src, dst):
        # Called before the merge: the edge src-dst still holds the weight the heap popped.
        cell_src, cell_dst = graph.nodes[src]["labels"][0], graph.nodes[dst]["labels"][0]
        record.append((cell_src, cell_dst, graph[src][dst]["weight"]))
        _merge_sums(graph, src, dst)

    merge_hierarchical(
        labels,
        rag,
        thresh=threshes[-1],
        rag_copy=False,
        in_place_merge=False,
        merge_func=merge_and_record,
        weight_func=weight_func,
    )
    weights = np.array([weight for _, _, weight in record])
    parent = np.arange(height * width)

    def find(cell: int) -> int:
        while parent[cell] != cell:
            parent[cell] = parent[parent[cell]]
            cell = parent[cell]
        return cell

    snapshots: list[np.ndarray] = []
    done = 0
    for thresh in threshes:  # ascending thresh: each run is a prefix of the next one
        stop = np.flatnonzero(weights >= thresh)
        count = int(stop[0]) if stop.size else len(record)
        for a, b, _ in record[done:count]:
            parent[find(a)] = find(b)
        done = count
        roots = np.array([find(cell) for cell in range(height * width)])
        snapshots.append(canonical_labels(roots.reshape(height, width)))
    return snapshots


def build_grid_rag(features: np.ndarray, similarity) -> RAG:
    """RAG of the (H, W) grid: node per cell (row-major id), edges to right and lower neighbours."""
    height, width, _ = features.shape
    rag = RAG()
    sums = features.reshape(height * width, -1)
    for cell in range(height * width):
        total = sums[cell].copy()
        rag.add_node(cell, sum=total, count=1, norm=math.sqrt(total @ total), labels=[cell])
    ids = np.arange(height * width).reshape(height, width)
    pairs = np.concatenate(
        [
            np.stack([ids[:, :-1].ravel(), ids[:, 1:].ravel()], axis=1),
            np.stack([ids[:-1, :].ravel(), ids[1:, :].ravel()], axis=1),
        ]
    )
    for a, b in pairs.tolist():
        rag.add_edge(a, b, weight=1.0 - similarity(rag.nodes[a], rag.nodes[b]))
    return rag


def merge_threshold(theta: float, round_similarity: bool = True) -> float:
    """``thresh`` for merge_hierarchical (merges while weight < thresh) that merges iff the
    similarity is >= ``theta``, as hassod does."""
    if not round_similarity:
        return 1.0 - theta + UNROUNDED_EPSILON
    lowest_similarity = math.ceil(theta * SIMILARITY_SCALE) / SIMILARITY_SCALE  # exact
    return 1.0 - lowest_similarity + 0.5 / SIMILARITY_SCALE


def canonical_labels(labels: np.ndarray) -> np.ndarray:
    """(H, W) int32 labels numbered 0, 1, ... by first appearance in row-major order."""
    _, first, inverse = np.unique(labels.ravel(), return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int32)
    rank[np.argsort(first)] = np.arange(len(first), dtype=np.int32)
    return rank[inverse].reshape(labels.shape)


def adjusted_rand_index(labels_a: np.ndarray, labels_b: np.ndarray) -> float:
    """Adjusted Rand index of two partitions of the same cells (1 = identical)."""
    a = np.unique(np.ravel(labels_a), return_inverse=True)[1]
    b = np.unique(np.ravel(labels_b), return_inverse=True)[1]
    if a.shape != b.shape:
        raise ValueError("the two label maps must have the same size")

    def pairs(counts: np.ndarray) -> float:
        counts = counts.astype(np.float64)
        return float((counts * (counts - 1) / 2).sum())

    joint = np.unique(a * (int(b.max()) + 1) + b, return_counts=True)[1]
    index = pairs(joint)
    rows, cols = pairs(np.bincount(a)), pairs(np.bincount(b))
    expected = rows * cols / pairs(np.array([a.size]))
    maximum = (rows + cols) / 2
    if maximum == expected:  # both partitions trivial (one region each, or all singletons)
        return 1.0
    return (index - expected) / (maximum - expected)


def _similarity_function(round_similarity: bool):
    def similarity(node_a: dict, node_b: dict) -> float:
        if node_a["norm"] == 0.0 or node_b["norm"] == 0.0:
            return 0.0
        cosine = float(node_a["sum"] @ node_b["sum"]) / (node_a["norm"] * node_b["norm"])
        if round_similarity:
            return round(cosine * SIMILARITY_SCALE) / SIMILARITY_SCALE
        return cosine

    return similarity


def _weight_function(similarity):
    def weight_func(graph, src, dst, neighbour):
        # merge_func has already made ``dst`` the merged region.
        return {"weight": 1.0 - similarity(graph.nodes[dst], graph.nodes[neighbour])}

    return weight_func


def _merge_sums(graph, src, dst):
    # A new array, not +=: rag_copy shares attribute values with the original RAG.
    node_src, node_dst = graph.nodes[src], graph.nodes[dst]
    total = node_src["sum"] + node_dst["sum"]
    node_dst["sum"] = total
    node_dst["count"] = node_src["count"] + node_dst["count"]
    node_dst["norm"] = math.sqrt(total @ total)
