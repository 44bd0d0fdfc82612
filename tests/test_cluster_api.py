"""The public API of the clustering: ClusterResult helpers (cut, masks, num_merges_at), result
structure (nesting, canonical labels), batching, input validation and conversions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cluster_checks import (
    DEFAULT,
    check_result_invariants,
    gaussian_features,
    is_canonical,
    merge_tuples,
    refines,
)

import hassod
from hassod import DEFAULT_THRESHOLDS, ClusterResult, fast_cluster, fast_cluster_batch
from hassod.cluster import as_feature_grid
from hassod.testing import structured_features


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([77, *key])


def assert_results_identical(x: ClusterResult, y: ClusterResult) -> None:
    np.testing.assert_array_equal(x.labels, y.labels)
    np.testing.assert_array_equal(x.thresholds, y.thresholds)
    np.testing.assert_array_equal(x.num_regions, y.num_regions)
    np.testing.assert_array_equal(x.merges_before, y.merges_before)
    assert x.merges.dtype == y.merges.dtype
    assert merge_tuples(x) == merge_tuples(y)
    assert x.stop_similarity == y.stop_similarity
    assert x.num_dot_products == y.num_dot_products


def _features_for(kind: str, seed: int) -> np.ndarray:
    rng = _rng(1, seed)
    if kind == "gaussian":
        return gaussian_features(rng, (int(rng.integers(3, 19)), int(rng.integers(3, 19))), 64)
    if kind == "structured":
        return structured_features(20, 16, 384, (3, 2, 2), noise=0.6, seed=seed)
    if kind == "zeros":
        features = gaussian_features(rng, (10, 12), 3)
        features[rng.random((10, 12)) < 0.3] = 0
        return features
    if kind == "constant":
        return np.broadcast_to(rng.standard_normal(8), (7, 9, 8)).astype(np.float32)
    raise AssertionError(kind)


FEATURE_KINDS = ["gaussian", "structured", "zeros", "constant"]


# --------------------------------------------------------------------------------------------
# Result structure
# --------------------------------------------------------------------------------------------


def test_default_thresholds():
    assert DEFAULT_THRESHOLDS == DEFAULT
    features = _features_for("gaussian", 0)
    result = fast_cluster(features)
    assert result.thresholds.tolist() == [0.4, 0.2, 0.1]
    assert_results_identical(result, fast_cluster(features, [0.1, 0.4, 0.2]))


def test_result_types_and_shapes():
    features = _features_for("structured", 1)
    result = fast_cluster(features, [0.1, 0.3])
    assert isinstance(result, ClusterResult)
    assert result.labels.shape == (2, 20, 16) and result.labels.dtype == np.int32
    assert result.thresholds.dtype == np.float64 and result.thresholds.tolist() == [0.3, 0.1]
    assert result.num_regions.shape == (2,) and result.num_regions.dtype == np.int32
    assert result.merges_before.shape == (2,) and result.merges_before.dtype == np.int64
    assert result.merges.dtype == hassod.cluster.MERGE_DTYPE
    assert isinstance(result.stop_similarity, float)
    assert isinstance(result.num_dot_products, int) and result.num_dot_products > 0
    assert result.shape == (20, 16)
    assert "20x16" in repr(result)
    check_result_invariants(result)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("kind", FEATURE_KINDS)
def test_invariants(kind, seed):
    """Canonical, connected, nested labels consistent with the merge sequence."""
    thresholds = [DEFAULT, (0.9, 0.5, 0.0), (0.25,), (0.6, -0.2, 0.3, 0.05)][seed]
    check_result_invariants(fast_cluster(_features_for(kind, seed), thresholds))


def test_canonical_numbering_by_first_appearance():
    """Region ids follow row-major order of the regions' first cells (checked directly)."""
    features = structured_features(24, 24, 64, (4, 2, 2), noise=0.5, seed=0)
    result = fast_cluster(features)
    for t in range(len(result.thresholds)):
        seen: dict[int, int] = {}
        for value in result.labels[t].ravel().tolist():
            if value not in seen:
                assert value == len(seen), f"label {value} appears before label {len(seen)}"
                seen[value] = len(seen)
        assert len(seen) == result.num_regions[t]
    assert result.num_regions[0] > 1  # a trivial single-region map would prove nothing


def test_nesting_on_structured_features():
    """Each finer partition (higher threshold) refines the coarser ones, with real merging."""
    features = structured_features(32, 32, 768, (4, 2, 3), noise=0.9, seed=0)
    thresholds = (0.6, 0.4, 0.2, 0.1, 0.0)
    result = fast_cluster(features, thresholds)
    counts = result.num_regions.tolist()
    assert counts == sorted(counts, reverse=True)
    assert len(set(counts)) >= 4, counts
    for fine in range(len(thresholds)):
        for coarse in range(fine + 1, len(thresholds)):
            assert refines(result.labels[fine], result.labels[coarse])
            if counts[fine] > counts[coarse]:
                assert not refines(result.labels[coarse], result.labels[fine])


def test_helpers_detect_broken_partitions():
    """The checks used throughout must be able to fail."""
    assert not is_canonical(np.array([[1, 0], [0, 1]]))
    assert not is_canonical(np.array([[0, 2], [2, 0]]))
    assert is_canonical(np.array([[0, 1], [2, 1]]))
    assert not refines(np.array([[0, 0, 1]]), np.array([[0, 1, 1]]))
    assert refines(np.array([[0, 1, 2]]), np.array([[0, 0, 1]]))
    result = fast_cluster(_features_for("gaussian", 3), [0.2])
    broken = np.array(result.labels)
    broken[0, 0, 0] = broken.max() + 1
    tampered = ClusterResult(
        labels=broken,
        thresholds=result.thresholds,
        num_regions=result.num_regions,
        merges=result.merges,
        merges_before=result.merges_before,
        stop_similarity=result.stop_similarity,
        num_dot_products=result.num_dot_products,
    )
    with pytest.raises(AssertionError):
        check_result_invariants(tampered)


def test_one_cell_grid():
    result = fast_cluster(np.ones((1, 1, 4), dtype=np.float32), [0.5, -1.0])
    assert result.labels.tolist() == [[[0]], [[0]]]
    assert result.num_regions.tolist() == [1, 1]
    assert len(result.merges) == 0
    assert result.stop_similarity == -np.inf  # no adjacent pair at all
    np.testing.assert_array_equal(result.cut(-1.0), [[0]])


def test_threshold_order_and_scalar():
    features = _features_for("gaussian", 4)
    a = fast_cluster(features, [0.1, 0.4, 0.2])
    b = fast_cluster(features, (0.4, 0.2, 0.1))
    assert_results_identical(a, b)
    scalar = fast_cluster(features, 0.2)
    np.testing.assert_array_equal(scalar.labels[0], b.labels[1])
    assert fast_cluster(features, np.float32(0.5)).thresholds.tolist() == [0.5]
    assert fast_cluster(features, np.array([0.2, 0.4])).thresholds.tolist() == [0.4, 0.2]


# --------------------------------------------------------------------------------------------
# cut / num_merges_at
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("kind", FEATURE_KINDS)
def test_cut_equals_fresh_run(kind, seed):
    features = _features_for(kind, seed)
    lowest = [0.05, -0.3, 0.15][seed]
    result = fast_cluster(features, [0.5, lowest])
    rng = _rng(2, seed)
    low = max(result.stop_similarity, -1.0)
    thetas = list(rng.uniform(low, 1.0, size=6))
    # Boundaries: exactly at a merge similarity (that merge is made) and just above it.
    for similarity in rng.choice(result.merges["similarity"], size=min(3, len(result.merges))):
        thetas += [float(similarity), float(np.nextafter(similarity, 2.0))]
    thetas += [1.0, lowest]
    for theta in thetas:
        if not theta > result.stop_similarity or not -1.0 <= theta <= 1.0:
            continue
        fresh = fast_cluster(features, theta)
        np.testing.assert_array_equal(result.cut(theta), fresh.labels[0], err_msg=f"{theta}")
        assert result.num_merges_at(theta) == len(fresh.merges)
        assert merge_tuples(fresh) == merge_tuples(result)[: len(fresh.merges)]
        assert result.cut(theta).dtype == np.int32


def test_cut_with_non_monotone_merge_similarities():
    """Merging can raise the best similarity again; a cut stops at the first merge below."""
    features = gaussian_features(_rng(3), (16, 16), 64, offset=0.6)
    result = fast_cluster(features, [-0.5])
    similarity = result.merges["similarity"]
    rises = np.flatnonzero(np.diff(similarity) > 0)
    assert rises.size > 0, "input does not exercise non-monotone merges"
    k = int(rises[0])  # similarity[k] < similarity[k + 1]
    theta = float(similarity[k + 1])
    fresh = fast_cluster(features, theta)
    assert len(fresh.merges) <= k < len(result.merges)
    np.testing.assert_array_equal(result.cut(theta), fresh.labels[0])


@pytest.mark.parametrize("kind", FEATURE_KINDS)
def test_cut_at_own_thresholds(kind):
    features = _features_for(kind, 5)
    result = fast_cluster(features, [0.45, 0.3, 0.12, 0.02])
    for t, theta in enumerate(result.thresholds):
        np.testing.assert_array_equal(result.cut(theta), result.labels[t])
        assert result.num_merges_at(theta) == result.merges_before[t]


def test_cut_rejects_theta_at_or_below_stop_similarity():
    features = _features_for("structured", 2)
    result = fast_cluster(features, [0.3])
    stop = result.stop_similarity
    assert -1.0 < stop < 0.3
    for theta in [stop, np.nextafter(stop, -2.0), -1.0]:
        with pytest.raises(ValueError, match="stopped"):
            result.cut(theta)
        with pytest.raises(ValueError, match="stopped"):
            result.num_merges_at(theta)
    # Just above the stop similarity is answerable (the run's full merge sequence).
    above = float(np.nextafter(stop, 2.0))
    assert result.num_merges_at(above) == len(result.merges)


@pytest.mark.parametrize("theta", [float("nan"), 1.5, -2.0, "x", None, float("inf")])
def test_cut_rejects_invalid_theta(theta):
    result = fast_cluster(_features_for("gaussian", 6))
    with pytest.raises(ValueError, match="theta"):
        result.cut(theta)


def test_cut_after_everything_merged():
    features = _features_for("constant", 0)
    result = fast_cluster(features, [0.5])
    assert result.stop_similarity == -np.inf
    np.testing.assert_array_equal(result.cut(-1.0), np.zeros(features.shape[:2]))
    assert result.num_merges_at(-1.0) == features.shape[0] * features.shape[1] - 1


# --------------------------------------------------------------------------------------------
# masks
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", FEATURE_KINDS)
def test_masks_one_hot(kind):
    features = _features_for(kind, 7)
    result = fast_cluster(features, [0.6, 0.2, 0.05])
    height, width = features.shape[:2]
    for t in range(3):
        masks = result.masks(t)
        regions = int(result.num_regions[t])
        assert masks.shape == (regions, height, width)
        assert masks.dtype == np.bool_
        np.testing.assert_array_equal(masks.sum(axis=0), np.ones((height, width)))
        assert np.all(masks.any(axis=(1, 2))), "empty mask"
        for r in range(regions):
            np.testing.assert_array_equal(masks[r], result.labels[t] == r)
    np.testing.assert_array_equal(result.masks(-1), result.masks(2))
    np.testing.assert_array_equal(result.masks(-3), result.masks(0))


@pytest.mark.parametrize("t", [3, 4, -4, 100])
def test_masks_bad_index(t):
    result = fast_cluster(_features_for("gaussian", 8), [0.6, 0.2, 0.05])
    with pytest.raises(IndexError):
        result.masks(t)


@pytest.mark.parametrize("t", [1.0, 1.5, True, "1"])
def test_masks_index_that_is_no_integer(t):
    """masks(1.0) ended in NumPy's "only integers, slices ... are valid indices"."""
    result = fast_cluster(_features_for("gaussian", 8), [0.6, 0.2, 0.05])
    np.testing.assert_array_equal(result.masks(np.int64(1)), result.masks(1))
    with pytest.raises(TypeError, match="threshold index t must be an integer"):
        result.masks(t)


# --------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_threads", [1, 2, None])
def test_batch_array_equals_single(num_threads):
    rng = _rng(4)
    batch = np.stack([gaussian_features(rng, (14, 11), 64, offset=0.7) for _ in range(5)])
    results = fast_cluster_batch(batch, [0.3, 0.1], num_threads=num_threads)
    assert len(results) == 5
    for image, result in zip(batch, results):
        assert_results_identical(result, fast_cluster(image, [0.3, 0.1]))


@pytest.mark.parametrize("num_threads", [1, 2, None])
def test_batch_list_of_shapes_equals_single(num_threads):
    """Different shapes and dtypes, large after small and back (reused per-thread buffers)."""
    torch = pytest.importorskip("torch")
    rng = _rng(5)
    grids = [
        structured_features(40, 36, 64, (3, 2, 2), noise=0.5, seed=1),
        gaussian_features(rng, (1, 1), 3),
        gaussian_features(rng, (3, 7), 768, np.float16),
        gaussian_features(rng, (25, 1), 1, np.float64),
        structured_features(30, 30, 384, seed=2, dtype=np.float64),
        torch.from_numpy(gaussian_features(rng, (9, 9), 64)).to(torch.bfloat16),
        gaussian_features(rng, (2, 2), 3),
    ]
    results = fast_cluster_batch(grids, num_threads=num_threads)
    assert len(results) == len(grids)
    for grid, result in zip(grids, results):
        assert_results_identical(result, fast_cluster(grid))


def test_batch_torch_and_tuple_inputs():
    torch = pytest.importorskip("torch")
    rng = _rng(6)
    batch = np.stack([gaussian_features(rng, (8, 10), 3) for _ in range(3)])
    from_tensor = fast_cluster_batch(torch.from_numpy(batch), 0.2, num_threads=2)
    from_tuple = fast_cluster_batch(tuple(batch), 0.2)
    for image, x, y in zip(batch, from_tensor, from_tuple):
        single = fast_cluster(image, 0.2)
        assert_results_identical(x, single)
        assert_results_identical(y, single)


def test_batch_many_images_more_than_threads():
    rng = _rng(7)
    grids = [gaussian_features(rng, (6, 6), 3) for _ in range(37)]
    results = fast_cluster_batch(grids, num_threads=3)
    for grid, result in zip(grids, results):
        assert_results_identical(result, fast_cluster(grid))


def test_batch_empty():
    assert fast_cluster_batch([]) == []
    assert fast_cluster_batch(np.zeros((0, 4, 4, 3), dtype=np.float32)) == []


@pytest.mark.parametrize("num_threads", [1, 2])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_batch_non_finite_names_image(bad, num_threads):
    rng = _rng(8)
    grids = [gaussian_features(rng, (5, 6), 4) for _ in range(5)]
    grids[3][2, 4, 1] = bad
    with pytest.raises(ValueError, match=r"(image 3|features\[3\])[\s\S]*non-finite"):
        fast_cluster_batch(grids, num_threads=num_threads)
    # The same with a 4-D array.
    with pytest.raises(ValueError, match=r"image 3|features\[3\]"):
        fast_cluster_batch(np.stack(grids), num_threads=num_threads)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (np.zeros((4, 4, 3), dtype=np.int32), "float"),
        (np.zeros((4, 4), dtype=np.float32), r"\(H, W, C\)"),
        (np.zeros((4, 0, 3), dtype=np.float32), "zero-sized"),
    ],
    ids=["int", "rank", "empty"],
)
def test_batch_bad_item_names_index(bad, message):
    grids = [np.ones((4, 4, 3), dtype=np.float32)] * 2 + [bad]
    with pytest.raises(ValueError, match=rf"features\[2\][\s\S]*{message}"):
        fast_cluster_batch(grids)


def test_batch_rejects_wrong_rank_array():
    with pytest.raises(ValueError, match=r"\(B, H, W, C\)"):
        fast_cluster_batch(np.ones((4, 4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"\(B, H, W, C\)"):
        fast_cluster_batch(np.ones((2, 2, 4, 4, 3), dtype=np.float32))


def test_batch_accepts_numpy_integer_threads():
    grids = [np.ones((3, 3, 2), dtype=np.float32)] * 3
    results = fast_cluster_batch(grids, num_threads=np.int64(2))
    assert [r.num_regions.tolist() for r in results] == [[1, 1, 1]] * 3


@pytest.mark.parametrize("num_threads", [0, -1, -8, 1.5, 2.0, "2", True, 2**31, 10**6])
def test_batch_rejects_bad_num_threads(num_threads):
    with pytest.raises(ValueError, match="num_threads"):
        fast_cluster_batch([np.ones((3, 3, 2), dtype=np.float32)], num_threads=num_threads)


def test_batch_rejects_bad_thresholds():
    grids = [np.ones((3, 3, 2), dtype=np.float32)]
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        fast_cluster_batch(grids, [0.5, 1.5])
    with pytest.raises(ValueError, match="at least one"):
        fast_cluster_batch(grids, [])


# --------------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape", [(), (5,), (4, 6), (2, 4, 6, 3), (1, 1, 1, 1, 1)], ids=["0d", "1d", "2d", "4d", "5d"]
)
def test_rejects_wrong_rank(shape):
    with pytest.raises(ValueError, match=r"shape \(H, W, C\)"):
        fast_cluster(np.ones(shape, dtype=np.float32))


@pytest.mark.parametrize("shape", [(0, 5, 3), (5, 0, 3), (5, 5, 0), (0, 0, 0)])
def test_rejects_zero_sized(shape):
    with pytest.raises(ValueError, match="zero-sized"):
        fast_cluster(np.ones(shape, dtype=np.float32))


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_rejects_non_finite(bad, dtype):
    features = np.ones((6, 7, 5), dtype=dtype)
    features[2, 3, 4] = bad
    # The message names the problem and the position: row 2, column 3 (channel 4).
    with pytest.raises(ValueError, match=r"non-finite[\s\S]*\b2\b[\s\S]*\b3\b") as info:
        fast_cluster(features)
    assert "row 2" in str(info.value) and "column 3" in str(info.value)


def test_rejects_non_finite_in_last_cell():
    features = np.ones((3, 4, 2), dtype=np.float32)
    features[2, 3, 1] = np.nan
    with pytest.raises(ValueError, match=r"non-finite[\s\S]*row 2[\s\S]*column 3"):
        fast_cluster(features)


@pytest.mark.parametrize(
    "dtype",
    [np.int8, np.int32, np.int64, np.uint8, np.bool_, np.complex64, np.complex128, object],
)
def test_rejects_unsupported_dtypes(dtype):
    features = np.ones((4, 4, 3), dtype=dtype)
    with pytest.raises(ValueError, match=r"float16, float32 or float64"):
        fast_cluster(features)


def test_rejects_unsupported_torch_dtypes():
    torch = pytest.importorskip("torch")
    for dtype in (torch.int64, torch.bool, torch.complex64, torch.uint8):
        with pytest.raises(ValueError, match=r"float16, float32 or float64"):
            fast_cluster(torch.ones((4, 4, 3), dtype=dtype))


def test_rejects_python_lists_of_wrong_rank():
    with pytest.raises(ValueError, match=r"\(H, W, C\)"):
        fast_cluster([[1.0, 2.0], [3.0, 4.0]])


def test_accepts_nested_float_lists():
    grid = _features_for("gaussian", 9).astype(np.float64)
    assert_results_identical(fast_cluster(grid.tolist()), fast_cluster(grid))


@pytest.mark.parametrize(
    ("thresholds", "message"),
    [
        ([], "at least one"),
        ((), "at least one"),
        (1.5, r"\[-1, 1\]"),
        (-1.0001, r"\[-1, 1\]"),
        ([0.4, 2.0], r"\[-1, 1\]"),
        ([0.4, -3.0, 0.1], r"\[-1, 1\]"),
        (float("nan"), "finite"),
        ([0.4, float("nan")], "finite"),
        ([float("inf")], "finite"),
        ("abc", "number"),
        ([0.4, "abc"], "number"),
        ([0.4, None], "number"),
        ([object()], "number"),
        ([[0.4, 0.2]], "number"),
    ],
)
def test_rejects_bad_thresholds(thresholds, message):
    with pytest.raises(ValueError, match=message):
        fast_cluster(np.ones((3, 3, 2), dtype=np.float32), thresholds)


@pytest.mark.parametrize("thresholds", [None, np.array(0.3)], ids=["None", "0d-array"])
def test_thresholds_none_or_0d_array(thresholds):
    features = np.ones((3, 3, 2), dtype=np.float32)
    if thresholds is None:
        with pytest.raises(ValueError, match="threshold"):
            fast_cluster(features, thresholds)
    else:
        assert fast_cluster(features, thresholds).thresholds.tolist() == [0.3]


def test_threshold_extremes_accepted():
    features = _features_for("gaussian", 10)
    result = fast_cluster(features, [1.0, -1.0])
    assert result.num_regions[-1] == 1  # every cosine is >= -1
    assert result.stop_similarity == -np.inf


# --------------------------------------------------------------------------------------------
# Conversions: non-contiguous views, float16 / float32 / float64, torch
# --------------------------------------------------------------------------------------------

VIEWS = {
    "transposed": lambda x: x.transpose(1, 0, 2),
    "row_stride": lambda x: x[::2],
    "col_stride": lambda x: x[:, ::3],
    "channel_stride": lambda x: x[:, :, ::2],
    "reversed": lambda x: x[::-1, :, ::-1],
    "fortran": np.asfortranarray,
    "channels_moved": lambda x: np.moveaxis(np.ascontiguousarray(np.moveaxis(x, 2, 0)), 0, 2),
}


@pytest.mark.parametrize("view", list(VIEWS))
def test_non_contiguous_equals_contiguous_copy(view):
    base = structured_features(18, 14, 64, (3, 2, 2), noise=0.6, seed=4)
    features = VIEWS[view](base)
    assert not features.flags.c_contiguous
    expected = fast_cluster(np.ascontiguousarray(features), [0.35, 0.15])
    assert expected.num_regions[0] < features.shape[0] * features.shape[1]
    assert_results_identical(fast_cluster(features, [0.35, 0.15]), expected)


def test_non_contiguous_torch_tensor():
    torch = pytest.importorskip("torch")
    base = torch.from_numpy(structured_features(12, 16, 64, (3, 2, 2), noise=0.6, seed=5))
    view = base.permute(1, 0, 2)
    assert not view.is_contiguous()
    assert_results_identical(fast_cluster(view), fast_cluster(view.contiguous()))


@pytest.mark.parametrize("seed", range(4))
def test_float16_equals_widened_float32(seed):
    rng = _rng(9, seed)
    half = gaussian_features(rng, (15, 13), [3, 64, 384, 768][seed], np.float16)
    single = half.astype(np.float32)
    result = fast_cluster(half)
    assert_results_identical(result, fast_cluster(single))
    assert_results_identical(result, fast_cluster(single.astype(np.float64)))


def test_torch_dtypes_equal_numpy_widened():
    torch = pytest.importorskip("torch")
    rng = _rng(10)
    array = gaussian_features(rng, (11, 12), 64, np.float32)
    tensor = torch.from_numpy(array)
    assert_results_identical(fast_cluster(tensor), fast_cluster(array))
    half = tensor.half()
    assert_results_identical(fast_cluster(half), fast_cluster(half.numpy().astype(np.float32)))
    brain = tensor.bfloat16()
    assert_results_identical(fast_cluster(brain), fast_cluster(brain.float().numpy()))
    # bfloat16 really changes the values: its results come from its own data, not the source.
    assert not np.array_equal(brain.float().numpy(), array)
    grad = tensor.clone().requires_grad_(True)
    assert_results_identical(fast_cluster(grad), fast_cluster(array))


@pytest.mark.parametrize("exponent", [-30, -8, 9, 40])
def test_scale_invariance_power_of_two(exponent):
    """Cosine similarity ignores scale; scaling by 2^k is exact, so results are identical."""
    features = structured_features(16, 16, 64, (3, 2, 2), noise=0.6, seed=6, dtype=np.float64)
    expected = fast_cluster(features)
    scaled = fast_cluster(features * 2.0**exponent)
    np.testing.assert_array_equal(scaled.labels, expected.labels)
    assert merge_tuples(scaled) == merge_tuples(expected)
    assert scaled.stop_similarity == expected.stop_similarity


@pytest.mark.parametrize("exponent", [600, -560])
def test_scale_invariance_extreme_float64(exponent):
    features = structured_features(16, 16, 64, (3, 2, 2), noise=0.6, seed=6, dtype=np.float64)
    expected = fast_cluster(features)
    scaled = fast_cluster(features * 2.0**exponent)
    np.testing.assert_array_equal(scaled.labels, expected.labels)
    assert -1.0 <= scaled.stop_similarity <= 1.0 or scaled.stop_similarity == -np.inf


def test_input_not_modified():
    features = _features_for("zeros", 11)
    copy = features.copy()
    fast_cluster(features)
    fast_cluster_batch([features, features], num_threads=2)
    np.testing.assert_array_equal(features, copy)


def test_deterministic_across_calls():
    features = _features_for("structured", 12)
    first = fast_cluster(features)
    fast_cluster(np.ones((50, 50, 8), dtype=np.float32))  # grow the per-thread buffers
    fast_cluster(np.ones((1, 2, 1), dtype=np.float32))
    assert_results_identical(fast_cluster(features), first)


# --------------------------------------------------------------------------------------------
# Import weight
# --------------------------------------------------------------------------------------------


def test_import_hassod_does_not_import_torch():
    code = (
        "import sys, hassod, hassod.cluster, hassod.reference, hassod.testing\n"
        "hassod.fast_cluster(__import__('numpy').ones((2, 2, 3)))\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'timm'))\n"
        "assert not loaded, loaded\n"
        "print(hassod.__file__)\n"
    )
    # Run next to the package this session imported, so that the same copy is imported.
    package_root = Path(hassod.__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=package_root, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    # The subprocess imported the same package as this test session.
    assert Path(out.stdout.strip()).resolve() == Path(hassod.__file__).resolve()


def test_cuda_tensor_rejected():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    with pytest.raises(ValueError, match="cpu"):
        fast_cluster(torch.ones((2, 2, 3), device="cuda"))


def test_cuda_module_status_is_reported():
    """The optional CUDA module either is absent (with the reason) or answers a device query."""
    from hassod._native import cuda_status

    status = cuda_status()
    if status["built"]:
        assert status["device_count"] >= 0
        assert isinstance(status["error"], str)
        if status["device_count"] == 0:
            assert status["error"], "no device and no reason given"
    else:
        assert "_C_cuda" in status["reason"]


@pytest.mark.parametrize("tiny", [1e-101, 1e-170, 1e-300])
def test_float64_grids_with_vanishing_cells_equal_the_reference(tiny):
    """A cell whose squared norm underflows makes the native code rescale the grid; the
    rescaled run used to skip building the region graph (no merges at all)."""
    from hassod.reference import reference_cluster

    rng = np.random.default_rng(0)
    features = rng.normal(size=(8, 8, 16))
    features[3, 3] *= tiny
    native = fast_cluster(features, thresholds=(0.4, 0.2, 0.1))
    reference = reference_cluster(features, (0.4, 0.2, 0.1))
    np.testing.assert_array_equal(native.num_regions, reference.num_regions)
    np.testing.assert_array_equal(native.labels, reference.labels)
    assert native.num_regions[0] < 64


@pytest.mark.parametrize("exponent", [-1030, -1060, -1070])
def test_a_subnormal_float64_grid_clusters_like_the_same_grid_scaled_up(exponent):
    """Cosines do not depend on scale: a grid of subnormal values (largest < 2^-1022) is
    rescaled like any tiny grid (the scale factor used to overflow to inf and the grid be
    refused as non-finite)."""
    features = structured_features(8, 9, 6, seed=2).astype(np.float64)
    features /= np.abs(features).max()
    tiny = np.ldexp(features, exponent)  # exact down to the subnormal range's precision
    assert 0 < np.abs(tiny).max() < np.finfo(np.float64).tiny
    expected = fast_cluster(np.ldexp(tiny, -exponent), thresholds=(0.4, 0.2, 0.1))
    got = fast_cluster(tiny, thresholds=(0.4, 0.2, 0.1))
    np.testing.assert_array_equal(got.labels, expected.labels)


def test_misaligned_and_byte_swapped_features_are_read_correctly():
    """Arrays numpy calls C-contiguous may still be misaligned or big-endian: the native code
    gets an aligned, native-order copy (it read misaligned doubles, and refused '>f4')."""
    features = structured_features(12, 14, 8, seed=3).astype(np.float64)
    expected = fast_cluster(features)
    buffer = np.zeros(features.nbytes + 1, dtype=np.uint8)
    misaligned = np.frombuffer(buffer.data, dtype=np.float64, count=features.size, offset=1)
    misaligned = misaligned.reshape(features.shape)
    misaligned[...] = features
    assert misaligned.flags.c_contiguous and not misaligned.flags.aligned
    for variant in (misaligned, features.astype(">f8"), features.astype(">f4")):
        handed = as_feature_grid(variant)  # what the C++ code reads
        assert handed.flags.aligned and handed.flags.c_contiguous and handed.dtype.isnative
        got = fast_cluster(variant)
        np.testing.assert_array_equal(got.labels, expected.labels)


def test_batch_errors_name_the_first_bad_grid_whatever_the_threads():
    grids = [structured_features(6, 6, 4, seed=s) for s in range(6)]
    # grid 1 is large with its NaN at the end: with several threads grid 4's error comes first
    grids[1] = structured_features(200, 200, 64, seed=1)
    grids[1][-1, -1, -1] = np.nan
    grids[4] = grids[4].copy()
    grids[4][0, 0, 0] = np.inf
    messages = set()
    for threads in (1, 2, 3, 6):
        with pytest.raises(ValueError) as info:
            fast_cluster_batch(grids, num_threads=threads)
        messages.add(str(info.value))
    assert len(messages) == 1 and "nan" in messages.pop().lower()


def test_native_merge_replay_checks_its_id_range():
    from hassod._native import cpu_module

    module = cpu_module()
    merges = np.zeros(1, dtype=np.int32)
    with pytest.raises(ValueError, match="below 2\\^31"):
        module.partition_from_merges(2**31 - 1, merges, merges + 1, 1)
    with pytest.raises(ValueError, match="num_pixels"):
        module.coverage_matrix_runs([], -1)


@pytest.mark.parametrize("theta", ["0.4", True, np.bool_(True), 1 + 2j, object()])
def test_thresholds_that_are_not_numbers_are_refused(theta):
    """float() would take "0.4" and True: they are refused like any other non-number."""
    features = structured_features(5, 5, 3, seed=0)
    with pytest.raises(ValueError, match="threshold must be a number"):
        fast_cluster(features, theta)
    with pytest.raises(ValueError, match="threshold must be a number"):
        fast_cluster(features, [0.3, theta])


def test_numeric_scalars_of_any_kind_are_thresholds():
    torch = pytest.importorskip("torch")
    features = structured_features(6, 6, 4, seed=1)
    expected = fast_cluster(features, 0.3).labels
    for theta in (np.float32(0.3), np.array(0.3), torch.tensor(0.3, dtype=torch.float64)):
        np.testing.assert_array_equal(fast_cluster(features, theta).labels, expected)


@pytest.mark.parametrize("batch", [None, 3])
def test_a_batch_that_is_not_a_sequence_is_refused(batch):
    with pytest.raises(ValueError, match="sequence of \\(H, W, C\\) grids, got"):
        fast_cluster_batch(batch)
    grids = (structured_features(4, 4, 3, seed=s) for s in range(2))  # any iterable is fine
    assert len(fast_cluster_batch(grids)) == 2
