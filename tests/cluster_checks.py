"""Shared input generators and checks for the clustering tests.

Everything here is derived from the rules documented in :mod:`hassod.cluster`, never from the
output of the native core itself.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from hassod import fast_cluster
from hassod.reference import reference_cluster

DTYPES = (np.float16, np.float32, np.float64)
CHANNELS = (1, 3, 64, 384, 768)
DEFAULT = (0.4, 0.2, 0.1)


# --------------------------------------------------------------------------------------------
# Input generators
# --------------------------------------------------------------------------------------------


def gaussian_features(
    rng: np.random.Generator,
    shape: tuple[int, int],
    channels: int,
    dtype=np.float32,
    offset: float | None = None,
) -> np.ndarray:
    """Gaussian noise plus one random vector shared by every cell, so that merging proceeds.

    Neighbouring cells have cosine about offset^2 / (1 + offset^2); a random ``offset`` in
    [0.3, 1.1] puts that between ~0.08 and ~0.55, around the default thresholds.
    """
    if offset is None:
        offset = float(rng.uniform(0.3, 1.1))
    height, width = shape
    shared = rng.standard_normal(channels)
    features = rng.standard_normal((height, width, channels)) + offset * shared
    return features.astype(dtype)


def random_thresholds(rng: np.random.Generator) -> list[float]:
    """1 to 4 thresholds in [-1, 1], in random order (sometimes the exact ends or 0)."""
    count = int(rng.integers(1, 5))
    values = rng.uniform(-1.0, 1.0, size=count)
    special = rng.random(count) < 0.15
    values[special] = rng.choice([-1.0, 0.0, 1.0], size=int(special.sum()))
    return [float(v) for v in values]


def rectangle_labels(rng: np.random.Generator, shape: tuple[int, int], pieces: int) -> np.ndarray:
    """(H, W) label map of axis-aligned rectangles (random guillotine cuts)."""
    height, width = shape
    labels = np.zeros((height, width), dtype=np.int64)
    boxes = [(0, height, 0, width)]
    while len(boxes) < pieces:
        index = int(rng.integers(len(boxes)))
        top, bottom, left, right = boxes[index]
        if bottom - top < 2 and right - left < 2:
            if all(b - t < 2 and r - le < 2 for t, b, le, r in boxes):
                break
            continue
        vertical = (right - left) >= (bottom - top)
        if vertical:
            cut = int(rng.integers(left + 1, right))
            boxes[index : index + 1] = [(top, bottom, left, cut), (top, bottom, cut, right)]
        else:
            cut = int(rng.integers(top + 1, bottom))
            boxes[index : index + 1] = [(top, cut, left, right), (cut, bottom, left, right)]
    for label, (top, bottom, left, right) in enumerate(boxes):
        labels[top:bottom, left:right] = label
    return labels


def to_float64(features) -> np.ndarray:
    """The float64 version of the same data (what the reference is given)."""
    if type(features).__module__.split(".")[0] == "torch":
        return features.detach().cpu().double().numpy()
    return np.asarray(features).astype(np.float64)


# --------------------------------------------------------------------------------------------
# Checks
# --------------------------------------------------------------------------------------------


def merge_tuples(result) -> list[tuple[int, int, int, float]]:
    return [tuple(m) for m in result.merges.tolist()]


def assert_same_partitions(result, ref) -> None:
    """Native result == reference result: labels, counts, thresholds, merges, stop similarity."""
    assert result.labels.shape == ref.labels.shape
    for t in range(ref.labels.shape[0]):
        mismatch = np.argwhere(result.labels[t] != ref.labels[t])
        assert mismatch.size == 0, (
            f"labels differ at threshold index {t} ({len(mismatch)} cells, first at "
            f"{tuple(mismatch[0])})"
        )
    np.testing.assert_array_equal(result.num_regions, ref.num_regions)
    np.testing.assert_array_equal(result.thresholds, ref.thresholds)
    native = merge_tuples(result)
    if native != ref.merges:
        first = next(
            (k for k, (x, y) in enumerate(zip(native, ref.merges)) if x != y),
            min(len(native), len(ref.merges)),
        )
        raise AssertionError(
            f"merge sequences differ at merge {first} (native {len(native)} merges, reference "
            f"{len(ref.merges)}): native {native[first : first + 2]}, "
            f"reference {ref.merges[first : first + 2]}"
        )
    assert result.stop_similarity == ref.stop_similarity, (
        result.stop_similarity,
        ref.stop_similarity,
    )


def check_and_compare(features, thresholds=None, ref_features=None):
    """Runs both implementations, checks they agree and that the result is well formed."""
    if thresholds is None:
        result = fast_cluster(features)
        ref = reference_cluster(to_float64(features) if ref_features is None else ref_features)
    else:
        result = fast_cluster(features, thresholds)
        # The reference takes a sequence only.
        ref_thresholds = [thresholds] if np.isscalar(thresholds) else thresholds
        ref = reference_cluster(
            to_float64(features) if ref_features is None else ref_features, ref_thresholds
        )
    assert_same_partitions(result, ref)
    check_result_invariants(result)
    return result, ref


def is_canonical(labels: np.ndarray) -> bool:
    """Regions numbered 0, 1, ... by first appearance in row-major order."""
    flat = labels.ravel()
    values, first = np.unique(flat, return_index=True)
    if not np.array_equal(values, np.arange(len(values))):
        return False
    return bool(np.all(np.diff(first) > 0))


def refines(fine: np.ndarray, coarse: np.ndarray) -> bool:
    """Every region of ``fine`` lies inside one region of ``coarse``."""
    pairs = np.unique(np.stack([fine.ravel(), coarse.ravel()]), axis=1)
    return pairs.shape[1] == len(np.unique(fine))


def num_connected_regions(labels: np.ndarray) -> int:
    """Number of 4-connected components of equal-label cells."""
    height, width = labels.shape
    index = np.arange(height * width).reshape(height, width)
    same_h = labels[:, 1:] == labels[:, :-1]
    same_v = labels[1:, :] == labels[:-1, :]
    rows = np.concatenate([index[:, :-1][same_h], index[:-1, :][same_v]])
    cols = np.concatenate([index[:, 1:][same_h], index[1:, :][same_v]])
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(height * width, height * width))
    return int(connected_components(graph, directed=False)[0])


def check_result_invariants(result) -> None:
    """Properties every ClusterResult must have, from the documented semantics."""
    labels = result.labels
    num_thresholds, height, width = labels.shape
    num_cells = height * width
    assert labels.dtype == np.int32
    assert result.shape == (height, width)
    assert result.thresholds.dtype == np.float64
    assert result.thresholds.shape == (num_thresholds,)
    assert np.all(np.diff(result.thresholds) <= 0), "thresholds must be descending"
    assert result.num_regions.shape == (num_thresholds,)
    assert result.merges_before.shape == (num_thresholds,)
    merges = result.merges
    assert merges.dtype.names == ("a", "b", "new", "similarity")

    for t in range(num_thresholds):
        assert is_canonical(labels[t]), f"labels[{t}] not canonical"
        assert result.num_regions[t] == labels[t].max() + 1
        # Regions are unions of adjacent cells: each one is 4-connected.
        assert num_connected_regions(labels[t]) == result.num_regions[t]
        # Every merge removes exactly one region.
        assert result.num_regions[t] == num_cells - result.merges_before[t]
        if t > 0:
            assert refines(labels[t - 1], labels[t]), f"labels[{t - 1}] does not refine [{t}]"
            assert result.merges_before[t] >= result.merges_before[t - 1]
    assert result.merges_before[-1] == len(merges)

    # Merge structure: a < b, fresh ids, every region merged at most once.
    new = num_cells + np.arange(len(merges))
    np.testing.assert_array_equal(merges["new"], new)
    assert np.all(merges["a"] < merges["b"])
    assert np.all(merges["a"] >= 0)
    assert np.all(merges["b"] < new)
    consumed = np.concatenate([merges["a"], merges["b"]])
    assert len(np.unique(consumed)) == len(consumed), "a region was merged twice"

    # Merges made while threshold t was active are >= thresholds[t]; the pair that was best when
    # snapshot t was taken (the next merge, if any) is below thresholds[t].
    similarity = merges["similarity"]
    assert np.all((similarity >= -1.0) & (similarity <= 1.0))
    start = 0
    for t in range(num_thresholds):
        stop = int(result.merges_before[t])
        assert np.all(similarity[start:stop] >= result.thresholds[t])
        if stop < len(merges):
            assert similarity[stop] < result.thresholds[t]
        start = stop
    # Similarities are multiples of 2^-32.
    scaled = similarity * 2.0**32
    np.testing.assert_array_equal(scaled, np.round(scaled))

    stop_similarity = result.stop_similarity
    if stop_similarity == -np.inf:
        assert result.num_regions[-1] == 1, "run ended with no adjacent pair but several regions"
    else:
        assert -1.0 <= stop_similarity < result.thresholds[-1]
        assert stop_similarity * 2.0**32 == np.round(stop_similarity * 2.0**32)
        assert result.num_regions[-1] > 1
