"""Coverage matrix, coverage forest and dedup: the native core against the plain reference
(:mod:`hassod.reference.hierarchy`), hand-derived expectations at the exact thresholds, the
input formats (bool / integer arrays, torch, COCO RLE), the batch API and bad input.

The rule (DESIGN.md section 4): B covers A iff |A∩B|/|A| >= cover and |A∩B|/|B| < cover
(float64 division); A's parent is the smallest covering mask, ties to the lowest index; empty
masks are roots that cover nothing; level = min(depth, 2).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from pycocotools import mask as mask_utils

import hassod
import hassod._native
from hassod.hierarchy import _rle_runs, check_rle
from hassod.reference import reference_coverage_matrix, reference_dedup, reference_hierarchy
from hassod.reference.hierarchy import reference_dedup_intersections, reference_forest

# pycocotools' decode of frPyObjects output warns under NumPy 2 (the reference's RLE path)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

COVERS = (0.5, 0.75, 0.9, 1.0)
# Covers where `shared / area >= cover` and `shared >= cover * area` disagree in float64
# (7 / 25 >= 0.28 but 0.28 * 25 > 7): they catch a multiplication-based comparison.
FLOAT_TRAP_COVERS = ((0.28, 25, 7), (0.14, 50, 7), (0.56, 25, 14))
ODD_SHAPES = [
    (1, 1),
    (1, 7),
    (9, 1),
    (3, 5),
    (8, 8),  # 64 pixels: exactly one word
    (8, 16),  # 128 pixels: exactly two words
    (1, 64),
    (64, 1),
    (2, 64),
    (7, 9),  # 63 pixels
    (5, 13),  # 65 pixels
    (11, 23),
    (17, 31),
    (33, 29),
    (40, 47),
]
# cover = numerator / denominator exactly (as float64 divisions of small integers)
EXACT_RATIOS = {0.5: (1, 2), 0.75: (3, 4), 0.9: (9, 10), 1.0: (1, 1)}
DTYPES = ("bool", "uint8", "uint16", "int8", "int64", "torch-bool", "torch-uint8")


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([20240917, *key])


# --------------------------------------------------------------------------------------------
# Synthetic masks
# --------------------------------------------------------------------------------------------


def blob(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A random ellipse or rectangle (possibly clipped by the border, possibly tiny)."""
    rows, cols = np.ogrid[:height, :width]
    cy, cx = rng.uniform(-0.1, 1.1) * height, rng.uniform(-0.1, 1.1) * width
    ry = rng.uniform(0.05, 0.6) * height + 0.5
    rx = rng.uniform(0.05, 0.6) * width + 0.5
    if rng.random() < 0.5:
        return ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1.0
    return (np.abs(rows - cy) <= ry) & (np.abs(cols - cx) <= rx)


def add_outside_pixels(
    rng: np.random.Generator, mask: np.ndarray, container: np.ndarray, count: int
) -> np.ndarray:
    """``mask`` plus ``count`` random pixels outside ``container`` (fewer if there are none)."""
    outside = np.flatnonzero(~container.ravel())
    count = min(count, len(outside))
    out = mask.copy().ravel()
    if count > 0:
        out[rng.choice(outside, size=count, replace=False)] = True
    return out.reshape(mask.shape)


def jittered_child(
    rng: np.random.Generator, container: np.ndarray, cover: float
) -> np.ndarray | None:
    """A mask that the container covers at a ratio right around ``cover``: a blob inside the
    container plus about |inside| * (1 - cover) / cover pixels outside it, off by -1 .. +2, so
    the ratio |child ∩ container| / |child| falls just above, on or just below the threshold.
    Sometimes the child is the container minus about (1 - cover) of its pixels instead, which
    puts the *reverse* ratio |child ∩ container| / |container| at the threshold."""
    height, width = container.shape
    area = int(container.sum())
    if area == 0:
        return None
    if rng.random() < 0.25:  # nearly the whole container: the reverse ratio decides
        remove = int(round(area * (1.0 - cover))) + int(rng.integers(-1, 2))
        remove = min(max(remove, 0), area - 1)
        inside = np.flatnonzero(container.ravel())
        child = container.copy().ravel()
        child[rng.choice(inside, size=remove, replace=False)] = False
        return child.reshape(container.shape)
    inside = blob(rng, height, width) & container
    if not inside.any():
        inside = container.copy()
    n_in = int(inside.sum())
    numerator, denominator = EXACT_RATIOS.get(cover, (0, 0))
    if numerator and n_in > numerator and rng.random() < 0.5:
        # trim the inside to a multiple of the numerator so the ratio can hit cover exactly
        trim = n_in % numerator
        if trim:
            flat = inside.ravel()  # a fresh array: safe to modify
            flat[rng.choice(np.flatnonzero(flat), size=trim, replace=False)] = False
            n_in -= trim
        extra = n_in // numerator * (denominator - numerator)
        extra += int(rng.choice([-1, 0, 0, 0, 1]))
    else:
        extra = int(np.floor(n_in * (1.0 - cover) / cover + 1e-9)) + int(rng.integers(-1, 3))
    return add_outside_pixels(rng, inside, container, max(extra, 0))


def nested_scene(
    rng: np.random.Generator, height: int, width: int, cover: float, max_objects: int = 3
) -> list[np.ndarray]:
    """Objects containing parts containing subparts (and sub-subparts), jittered around the
    threshold, plus random blobs, duplicates, empty and full masks, in shuffled order."""
    masks: list[np.ndarray] = []

    def descend(container: np.ndarray, depth: int) -> None:
        for _ in range(int(rng.integers(0, 3 if depth < 3 else 1))):
            child = jittered_child(rng, container, cover)
            if child is None:
                return
            masks.append(child)
            descend(child & container, depth + 1)

    for _ in range(int(rng.integers(1, max_objects + 1))):
        whole = blob(rng, height, width)
        masks.append(whole)
        descend(whole, 1)
    for _ in range(int(rng.integers(0, 3))):
        masks.append(blob(rng, height, width))
    if masks and rng.random() < 0.4:
        masks.append(masks[int(rng.integers(len(masks)))].copy())  # an exact duplicate
    if rng.random() < 0.2:
        masks.append(np.zeros((height, width), dtype=bool))
    if rng.random() < 0.2:
        masks.append(np.ones((height, width), dtype=bool))
    order = rng.permutation(len(masks))
    return [masks[i] for i in order]


def as_dtype(masks: np.ndarray, dtype: str, rng: np.random.Generator | None = None):
    """(K, H, W) bool masks in another input format (non-zero = inside, varied values)."""
    masks = np.asarray(masks, dtype=bool)
    if dtype == "bool":
        return masks
    if dtype.startswith("torch"):
        import torch

        return torch.from_numpy(masks.astype(np.uint8) if dtype == "torch-uint8" else masks)
    values = {"uint8": (1, 255), "uint16": (1, 256, 65535), "int8": (1, -1, -128)}.get(
        dtype, (1, 2**40, -7)
    )
    rng = rng or _rng(0)
    fill = rng.choice(np.array(values, dtype=np.int64), size=masks.shape)
    return np.where(masks, fill, 0).astype(dtype)


def stack(masks: list[np.ndarray], height: int, width: int) -> np.ndarray:
    if not masks:
        return np.zeros((0, height, width), dtype=bool)
    return np.stack(masks).astype(bool)


def compressed_rles(masks: np.ndarray) -> list[dict]:
    """pycocotools.mask.encode on Fortran-ordered uint8 (bytes counts)."""
    fortran = np.asfortranarray(np.moveaxis(np.asarray(masks, dtype=np.uint8), 0, -1))
    return mask_utils.encode(fortran)


def uncompressed_rle(mask: np.ndarray) -> dict:
    """Column-major run lengths, starting with background (COCO's uncompressed RLE)."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    changes = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    edges = np.concatenate([[0], changes, [flat.size]])
    runs = np.diff(edges).tolist()
    if flat.size and flat[0]:
        runs = [0, *runs]
    return {"size": list(mask.shape), "counts": [int(r) for r in runs]}


# --------------------------------------------------------------------------------------------
# Comparison helpers
# --------------------------------------------------------------------------------------------


def check_against_reference(masks, cover: float, iou: float | None = None, reference=None):
    """Native == reference for the coverage matrix, the forest and (optionally) dedup."""
    reference_masks = masks if reference is None else reference
    expected_inter, expected_areas = reference_coverage_matrix(reference_masks)
    inter, areas = hassod.coverage_matrix(masks)
    assert inter.dtype == np.int64 and areas.dtype == np.int64
    np.testing.assert_array_equal(inter, expected_inter)
    np.testing.assert_array_equal(areas, expected_areas)

    parent, depth, level = reference_hierarchy(reference_masks, cover)
    hierarchy = hassod.build_hierarchy(masks, cover)
    assert hierarchy.parent.dtype == np.int32
    assert hierarchy.depth.dtype == np.int32
    assert hierarchy.level.dtype == np.int8
    np.testing.assert_array_equal(hierarchy.intersections, expected_inter)
    np.testing.assert_array_equal(hierarchy.parent, parent)
    np.testing.assert_array_equal(hierarchy.depth, depth)
    np.testing.assert_array_equal(hierarchy.level, level)
    assert hierarchy.cover == cover
    check_forest_invariants(hierarchy)

    from_matrix = hassod.build_hierarchy(intersections=expected_inter, cover=cover)
    np.testing.assert_array_equal(from_matrix.parent, parent)
    np.testing.assert_array_equal(from_matrix.depth, depth)
    np.testing.assert_array_equal(from_matrix.level, level)

    if iou is not None:
        expected_kept = reference_dedup(reference_masks, iou)
        np.testing.assert_array_equal(
            reference_dedup_intersections(expected_inter, iou), expected_kept
        )
        kept = hassod.dedup_masks(masks, iou)
        assert kept.dtype == np.int64
        np.testing.assert_array_equal(kept, expected_kept)
        np.testing.assert_array_equal(
            hassod.dedup_masks(intersections=expected_inter, iou=iou), expected_kept
        )
    return hierarchy


def check_forest_invariants(hierarchy) -> None:
    """Rule-level facts that hold whatever the masks (independent of the reference)."""
    areas = hierarchy.areas
    inter = hierarchy.intersections
    for child, parent in enumerate(hierarchy.parent):
        if parent < 0:
            assert hierarchy.depth[child] == 0
            continue
        assert areas[parent] > areas[child] > 0  # a parent is strictly larger; empties are roots
        assert inter[child, parent] / areas[child] >= hierarchy.cover
        assert inter[child, parent] / areas[parent] < hierarchy.cover
        assert hierarchy.depth[child] == hierarchy.depth[parent] + 1
    np.testing.assert_array_equal(hierarchy.level, np.minimum(hierarchy.depth, 2))
    # roots and children() read the parent array as a plain scan does (mask 0 is a parent
    # often enough here that `parent <= 0` for roots would show)
    parents = [int(p) for p in hierarchy.parent]
    assert hierarchy.roots.tolist() == [i for i, p in enumerate(parents) if p == -1]
    for index in range(len(parents)):
        expected = [i for i, p in enumerate(parents) if p == index]
        assert hierarchy.children(index).tolist() == expected


# --------------------------------------------------------------------------------------------
# Randomized equivalence (native == reference)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(90))
def test_random_blobs(seed):
    """1 .. 12 random ellipses / rectangles on odd image sizes, every input dtype and cover."""
    rng = _rng(1, seed)
    height, width = ODD_SHAPES[seed % len(ODD_SHAPES)]
    count = int(rng.integers(1, 13))
    masks = stack([blob(rng, height, width) for _ in range(count)], height, width)
    dtype = DTYPES[seed % len(DTYPES)]
    cover = COVERS[seed % len(COVERS)]
    iou = float(rng.choice([0.5, 0.8, 0.95, 1.0]))
    check_against_reference(as_dtype(masks, dtype, rng), cover, iou, reference=masks)


@pytest.mark.parametrize("seed", range(110))
def test_nested_jittered(seed):
    """Objects > parts > subparts jittered around the threshold, duplicates, empty, full."""
    rng = _rng(2, seed)
    cover = COVERS[seed % len(COVERS)]
    height, width = [(24, 24), (31, 45), (48, 64), (15, 70), (57, 33)][seed % 5]
    masks = stack(nested_scene(rng, height, width, cover), height, width)
    iou = float(rng.choice([0.6, 0.9, 1.0]))
    hierarchy = check_against_reference(masks, cover, iou)
    assert len(hierarchy) == len(masks)


def test_nested_scenes_exercise_the_threshold():
    """The jittered generator really produces ratios on, just above and just below every
    threshold, and hierarchies deeper than two levels (otherwise the tests above are weak)."""
    on = dict.fromkeys(COVERS, 0)
    above = below = deep = 0
    for seed in range(110):
        rng = _rng(2, seed)
        cover = COVERS[seed % len(COVERS)]
        height, width = [(24, 24), (31, 45), (48, 64), (15, 70), (57, 33)][seed % 5]
        masks = stack(nested_scene(rng, height, width, cover), height, width)
        inter, areas = reference_coverage_matrix(masks)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = inter / areas[:, None]
        off_diagonal = ~np.eye(len(masks), dtype=bool) & (areas[:, None] > 0)
        on[cover] += int((off_diagonal & (ratio == cover)).sum())
        close = off_diagonal & (np.abs(ratio - cover) < 0.05)
        above += int((close & (ratio > cover)).sum())
        below += int((close & (ratio < cover)).sum())
        deep += int(reference_hierarchy(masks, cover)[1].max(initial=0) >= 3)
    assert min(on.values()) >= 20 and above >= 100 and below >= 100 and deep >= 10, (
        on,
        above,
        below,
        deep,
    )


@pytest.mark.parametrize(
    "shape", [(1, 1), (3, 1000), (1000, 3), (427, 640), (8, 8), (8, 16), (16, 8), (1, 128)]
)
def test_special_image_sizes(shape):
    """Single pixel, very thin, the usual COCO size, and exactly 64 / 128 pixels."""
    height, width = shape
    rng = _rng(3, height, width)
    count = 6 if height * width > 10_000 else 9
    masks = [blob(rng, height, width) for _ in range(count)]
    masks += [np.zeros(shape, bool), np.ones(shape, bool), masks[0].copy()]
    for cover in (0.5, 0.9):
        check_against_reference(stack(masks, height, width), cover, iou=0.9)


def test_many_masks_against_matrix_product():
    """600 masks of 77 words: the native blocking of words (64-word blocks for K >= 512) and of
    pairs, against an independent int64 matrix product."""
    rng = _rng(4)
    height, width = 70, 70
    masks = np.stack([blob(rng, height, width) for _ in range(600)])
    masks[17] = False
    masks[300] = True
    flat = masks.reshape(len(masks), -1).astype(np.int64)
    inter, areas = hassod.coverage_matrix(masks)
    np.testing.assert_array_equal(inter, flat @ flat.T)
    np.testing.assert_array_equal(areas, flat.sum(axis=1))
    hierarchy = hassod.build_hierarchy(masks, 0.9)
    parent, depth, level = reference_forest(flat @ flat.T, 0.9)
    np.testing.assert_array_equal(hierarchy.parent, parent)
    np.testing.assert_array_equal(hierarchy.depth, depth)
    np.testing.assert_array_equal(hierarchy.level, level)


@pytest.mark.parametrize("seed", range(12))
def test_non_contiguous_and_fortran_inputs(seed):
    rng = _rng(5, seed)
    base = np.stack([blob(rng, 40, 50) for _ in range(7)])
    views = [
        base[:, ::2, ::3],
        np.asfortranarray(base),
        base.transpose(0, 2, 1),
        base[::-1],
    ]
    view = views[seed % len(views)]
    check_against_reference(
        as_dtype(view, DTYPES[seed % 5], rng), COVERS[seed % 4], reference=np.array(view)
    )


# --------------------------------------------------------------------------------------------
# Exact thresholds (hand-derived expectations)
# --------------------------------------------------------------------------------------------


def pixels(shape: tuple[int, int], indices) -> np.ndarray:
    mask = np.zeros(shape[0] * shape[1], dtype=bool)
    mask[list(indices)] = True
    return mask.reshape(shape)


def covering_pair(area_a: int, shared: int, area_b: int, shape=(23, 29)) -> np.ndarray:
    """Masks [A, B] with |A| = area_a, |A∩B| = shared, |B| = area_b (pixels laid out as
    A-only, shared, B-only runs of a row-major index, offset to straddle word boundaries)."""
    start = 5
    a = range(start, start + area_a)
    b = range(start + area_a - shared, start + area_a - shared + area_b)
    return np.stack([pixels(shape, a), pixels(shape, b)])


@pytest.mark.parametrize("scale", [1, 2, 3, 7])
@pytest.mark.parametrize("cover", COVERS)
def test_exactly_at_threshold_forward(cover, scale):
    """|A∩B| / |A| == cover exactly covers (>=); one pixel less does not."""
    numerator, denominator = EXACT_RATIOS[cover]
    area_a, shared = denominator * scale, numerator * scale
    area_b = 3 * area_a + 1  # reverse ratio well below any cover
    masks = covering_pair(area_a, shared, area_b)
    inter, _ = hassod.coverage_matrix(masks)
    assert inter.tolist() == [[area_a, shared], [shared, area_b]]
    hierarchy = check_against_reference(masks, cover)
    assert hierarchy.parent.tolist() == [1, -1]
    assert hierarchy.level.tolist() == [1, 0]
    below = covering_pair(area_a, shared - 1, area_b)
    assert check_against_reference(below, cover).parent.tolist() == [-1, -1]


@pytest.mark.parametrize("scale", [1, 2, 5])
@pytest.mark.parametrize("cover", COVERS)
def test_exactly_at_threshold_reverse(cover, scale):
    """A ⊂ B with |A| / |B| == cover exactly: B does *not* cover A (the reverse ratio must be
    strictly below cover); one more pixel in B and it does."""
    numerator, denominator = EXACT_RATIOS[cover]
    area_a, area_b = numerator * scale, denominator * scale
    masks = covering_pair(area_a, area_a, area_b)
    assert check_against_reference(masks, cover).parent.tolist() == [-1, -1]
    larger = covering_pair(area_a, area_a, area_b + 1)
    assert check_against_reference(larger, cover).parent.tolist() == [1, -1]


@pytest.mark.parametrize(("cover", "area", "shared"), FLOAT_TRAP_COVERS)
def test_float64_division_not_multiplication(cover, area, shared):
    """shared / area == cover in float64 although cover * area > shared: covered."""
    assert shared / area >= cover and shared < cover * area  # the trap is real
    masks = covering_pair(area, shared, 4 * area)
    assert check_against_reference(masks, cover).parent.tolist() == [1, -1]
    # and on the reverse side: |A| / |B| == cover exactly, so B does not cover A
    masks = covering_pair(shared, shared, area)
    assert check_against_reference(masks, cover).parent.tolist() == [-1, -1]


@pytest.mark.parametrize("area", [10**8, 3 * 10**9, 10**15])
@pytest.mark.parametrize("cover", [0.5, 0.75, 0.9])
def test_huge_counts_one_pixel_off(cover, area):
    """Through intersections=: counts beyond int32 and beyond float32 precision. One pixel
    below cover * |A| is *not* covered (float32 or int32 arithmetic would get this wrong)."""
    numerator, denominator = EXACT_RATIOS[cover]
    area = area // denominator * denominator
    shared = area // denominator * numerator
    big = 4 * area
    for inside, expected in ((shared, [1, -1]), (shared - 1, [-1, -1])):
        matrix = np.array([[area, inside], [inside, big]], dtype=np.int64)
        hierarchy = hassod.build_hierarchy(intersections=matrix, cover=cover)
        assert hierarchy.parent.tolist() == expected
        assert reference_forest(matrix, cover)[0].tolist() == expected
    # the reverse side: A inside B with |A| / |B| one pixel above / exactly at cover
    for extra, expected in ((1, [1, -1]), (0, [-1, -1])):
        b = shared // numerator * denominator + extra
        matrix = np.array([[shared, shared], [shared, b]], dtype=np.int64)
        assert hassod.build_hierarchy(intersections=matrix, cover=cover).parent.tolist() == (
            expected
        )
    # dedup at huge counts: IoU one pixel below the threshold stays
    matrix = np.array([[area, shared - 1], [shared - 1, shared - 1]], dtype=np.int64)
    assert hassod.dedup_masks(intersections=matrix, iou=cover).tolist() == [0, 1]
    matrix = np.array([[area, shared], [shared, shared]], dtype=np.int64)
    assert hassod.dedup_masks(intersections=matrix, iou=cover).tolist() == [0]


@pytest.mark.parametrize("cover", COVERS)
def test_mutual_near_duplicates_are_both_roots(cover):
    """Two masks covering each other at >= cover: neither is the other's parent."""
    masks = covering_pair(40, 40, 40)  # identical
    assert check_against_reference(masks, cover).parent.tolist() == [-1, -1]
    masks = covering_pair(40, 39, 40)  # 39 / 40 both ways
    assert check_against_reference(masks, cover).parent.tolist() == [-1, -1]


def test_smallest_cover_wins_and_ties_go_to_lowest_index():
    shape = (10, 10)
    a = pixels(shape, range(0, 10))
    big = pixels(shape, range(0, 60))
    mid_1 = pixels(shape, range(0, 30))
    mid_2 = pixels(shape, [*range(0, 10), *range(40, 60)])  # same area as mid_1, inside big
    masks = np.stack([big, mid_2, a, mid_1])
    hierarchy = check_against_reference(masks, 0.9)
    # a is covered by big (60), mid_2 (30) and mid_1 (30): the smallest, lowest index = mid_2
    assert hierarchy.parent.tolist() == [-1, 0, 1, 0]
    swapped = check_against_reference(masks[[0, 3, 2, 1]], 0.9)
    assert swapped.parent.tolist() == [-1, 0, 1, 0]


def test_level_semantics_hand_built():
    """whole > part > subpart > sub-subpart: levels 0, 1, 2, 2 and depths 0, 1, 2, 3."""
    shape = (40, 40)
    whole = np.zeros(shape, bool)
    whole[2:38, 2:38] = True
    part = np.zeros(shape, bool)
    part[4:24, 4:30] = True
    subpart = np.zeros(shape, bool)
    subpart[6:14, 6:16] = True
    subsub = np.zeros(shape, bool)
    subsub[7:10, 7:10] = True
    other = np.zeros(shape, bool)
    other[30:37, 30:37] = True  # a second part of the whole
    lone = np.zeros(shape, bool)
    lone[0, :] = True  # overlaps the whole only a little: its own root
    masks = np.stack([subsub, whole, subpart, lone, part, other])
    hierarchy = check_against_reference(masks, 0.9)
    assert hierarchy.parent.tolist() == [2, -1, 4, -1, 1, 1]
    assert hierarchy.depth.tolist() == [3, 0, 2, 0, 1, 1]
    assert hierarchy.level.tolist() == [2, 0, 2, 0, 1, 1]
    assert hierarchy.roots.tolist() == [1, 3]
    assert hierarchy.children(1).tolist() == [4, 5]
    assert hierarchy.children(4).tolist() == [2]
    assert hierarchy.children(2).tolist() == [0]
    assert hierarchy.children(0).tolist() == []
    assert hierarchy.children(-1).tolist() == []  # index 5 (other) has no children
    assert hierarchy.children(-2).tolist() == [2]  # index 4 (part)
    assert hierarchy.areas.tolist() == [9, 36 * 36, 80, 40, 20 * 26, 49]
    assert len(hierarchy) == 6
    assert repr(hierarchy) == "Hierarchy(masks=6, whole: 2, part: 2, subpart: 2, cover=0.9)"
    with pytest.raises(IndexError, match="out of range"):
        hierarchy.children(6)
    with pytest.raises(IndexError, match="out of range"):
        hierarchy.children(-7)
    for index in (1.5, 1.0, True):  # 1.5 gave no children, silently
        with pytest.raises(TypeError, match="mask index must be an integer"):
            hierarchy.children(index)
    assert hierarchy.children(np.int64(1)).tolist() == [4, 5]
    torch = pytest.importorskip("torch")
    assert hierarchy.children(torch.tensor(1)).tolist() == [4, 5]  # an entry of CUDA roots
    # areas is a copy: writing to it does not change the hierarchy
    areas = hierarchy.areas
    areas[:] = 0
    assert hierarchy.areas[1] == 36 * 36


def test_empty_masks_are_roots_and_cover_nothing():
    shape = (6, 7)
    empty = np.zeros(shape, bool)
    a = pixels(shape, range(3, 9))
    for cover in COVERS:
        masks = np.stack([empty, a, empty.copy(), np.ones(shape, bool)])
        hierarchy = check_against_reference(masks, cover)
        assert hierarchy.parent.tolist() == [-1, 3, -1, -1]
        assert hierarchy.roots.tolist() == [0, 2, 3]


@pytest.mark.parametrize("cover", COVERS)
def test_all_full_masks(cover):
    masks = np.ones((4, 9, 11), dtype=np.uint8)
    hierarchy = check_against_reference(masks, cover, iou=1.0)
    assert hierarchy.parent.tolist() == [-1] * 4
    assert hierarchy.intersections.tolist() == [[99] * 4] * 4
    assert hassod.dedup_masks(masks).tolist() == [0]


@pytest.mark.parametrize("shape", [(1, 1), (5, 5), (427, 640)])
def test_single_mask(shape):
    mask = np.zeros((1, *shape), dtype=bool)
    mask[0, : shape[0] // 2 + 1, : shape[1] // 3 + 1] = True
    hierarchy = check_against_reference(mask, 0.9, iou=0.5)
    assert hierarchy.parent.tolist() == [-1] and hierarchy.level.tolist() == [0]
    assert hierarchy.areas.tolist() == [(shape[0] // 2 + 1) * (shape[1] // 3 + 1)]
    assert hierarchy.roots.tolist() == [0]


def test_zero_masks_from_intersections():
    hierarchy = hassod.build_hierarchy(intersections=np.zeros((0, 0), np.int64))
    assert len(hierarchy) == 0 and hierarchy.roots.tolist() == []
    assert repr(hierarchy) == "Hierarchy(masks=0, whole: 0, part: 0, subpart: 0, cover=0.9)"
    assert hassod.dedup_masks(intersections=np.zeros((0, 0), np.int64)).tolist() == []


@pytest.mark.parametrize("shape", [(0, 5, 7), (0, 427, 640), (0, 0, 0)])
def test_zero_masks_from_arrays(shape):
    """K = 0 (this failed with 'cannot reshape array of size 0' before _flat_masks was fixed)."""
    masks = np.zeros(shape, dtype=bool)
    inter, areas = hassod.coverage_matrix(masks)
    assert inter.shape == (0, 0) and areas.shape == (0,)
    hierarchy = hassod.build_hierarchy(masks)
    assert len(hierarchy) == 0
    assert hassod.dedup_masks(masks).tolist() == []
    assert len(hassod.build_hierarchy_batch([masks, np.ones((1, 3, 3), bool)])[0]) == 0


def test_zero_masks_from_empty_list():
    inter, areas = hassod.coverage_matrix([])
    assert inter.shape == (0, 0) and areas.shape == (0,)


def test_zero_pixel_images():
    masks = np.zeros((3, 0, 5), dtype=bool)
    inter, areas = hassod.coverage_matrix(masks)
    assert inter.tolist() == [[0] * 3] * 3 and areas.tolist() == [0, 0, 0]
    assert hassod.build_hierarchy(masks).parent.tolist() == [-1, -1, -1]
    assert hassod.dedup_masks(masks).tolist() == [0]


# --------------------------------------------------------------------------------------------
# Input formats
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_dtypes_agree(dtype):
    rng = _rng(6)
    masks = stack(nested_scene(rng, 37, 41, 0.75), 37, 41)
    expected = hassod.build_hierarchy(masks, 0.75)
    converted = as_dtype(masks, dtype, rng)
    got = hassod.build_hierarchy(converted, 0.75)
    np.testing.assert_array_equal(got.intersections, expected.intersections)
    np.testing.assert_array_equal(got.parent, expected.parent)
    check_against_reference(converted, 0.75, reference=masks)


def test_torch_tensor_that_requires_grad_is_detached():
    torch = pytest.importorskip("torch")
    masks = np.stack([pixels((4, 4), range(6)), pixels((4, 4), range(16))])
    tensor = torch.from_numpy(masks.astype(np.int32))
    inter, _ = hassod.coverage_matrix(tensor)
    assert inter.tolist() == [[6, 6], [6, 16]]
    float_tensor = torch.zeros((2, 4, 4), requires_grad=True)
    with pytest.raises(ValueError, match="threshold"):
        hassod.coverage_matrix(float_tensor)


def test_list_of_arrays_is_accepted():
    masks = [pixels((5, 5), range(10)), pixels((5, 5), range(5, 25))]
    inter, _ = hassod.coverage_matrix(masks)
    assert inter.tolist() == [[10, 5], [5, 20]]


@pytest.mark.parametrize("seed", range(24))
def test_rle_equals_array_input(seed):
    """Compressed (bytes and str) and uncompressed RLE give the array path's results."""
    rng = _rng(7, seed)
    height, width = [(1, 1), (3, 5), (8, 8), (31, 17), (64, 2), (427, 640)][seed % 6]
    cover = COVERS[seed % 4]
    masks = stack(nested_scene(rng, height, width, cover, max_objects=2), height, width)
    if seed % 3 == 0:
        masks = np.concatenate([masks, np.zeros((1, height, width), bool), masks[:1]])
    compressed = compressed_rles(masks)
    assert all(isinstance(rle["counts"], bytes) for rle in compressed)
    as_str = [{"size": rle["size"], "counts": rle["counts"].decode()} for rle in compressed]
    uncompressed = [uncompressed_rle(mask) for mask in masks]
    for rles in (compressed, as_str, uncompressed):
        check_against_reference(rles, cover, iou=0.8, reference=masks)


def test_rle_intersections_are_order_independent():
    rng = _rng(8)
    masks = stack(nested_scene(rng, 45, 39, 0.9), 45, 39)
    rles = compressed_rles(masks)
    inter, _ = hassod.coverage_matrix(rles)
    for permutation_seed in range(3):
        order = _rng(8, permutation_seed).permutation(len(masks))
        permuted, _ = hassod.coverage_matrix([rles[i] for i in order])
        np.testing.assert_array_equal(permuted, inter[np.ix_(order, order)])


def test_rle_against_pycocotools_iou():
    """pycocotools' own iou with iscrowd=1 is |dt ∩ gt| / |dt|: our ratios match it."""
    rng = _rng(9)
    masks = stack(nested_scene(rng, 120, 90, 0.9), 120, 90)
    masks = masks[masks.reshape(len(masks), -1).any(axis=1)]  # pycocotools: area 0 -> 0
    rles = compressed_rles(masks)
    inter, areas = hassod.coverage_matrix(rles)
    np.testing.assert_array_equal(areas, mask_utils.area(rles).astype(np.int64))
    ratios = np.asarray(mask_utils.iou(rles, rles, [1] * len(rles)))
    np.testing.assert_allclose(ratios, inter / areas[:, None], rtol=0, atol=1e-12)


def test_uncompressed_rle_with_zero_runs_and_long_runs():
    """Zero-length runs in the middle, a leading zero run, runs longer than one word."""
    rles = [
        {"size": [2, 2], "counts": [0, 2, 0, 2]},  # all four pixels
        {"size": [2, 2], "counts": [1, 1, 0, 1, 1]},  # pixels 1 and 2 (column-major)
        {"size": [2, 2], "counts": [4]},  # empty
    ]
    inter, areas = hassod.coverage_matrix(rles)
    assert inter.tolist() == [[4, 2, 0], [2, 2, 0], [0, 0, 0]]
    expected, _ = reference_coverage_matrix(rles)
    np.testing.assert_array_equal(inter, expected)
    long_runs = [
        {"size": [300, 7], "counts": [5, 1000, 95, 1000]},
        uncompressed_rle(np.ones((300, 7))),
    ]
    inter, _ = hassod.coverage_matrix(long_runs)
    assert inter.tolist() == [[2000, 2000], [2000, 2100]]


def test_rle_formats_mixed_in_one_list():
    """Hand-written column-major runs, pycocotools bytes and str counts in one list. (Pixel
    order itself is unobservable in intersections, which are invariant under a common pixel
    permutation: these check that each format lands on the same pixel.)"""
    mask = np.zeros((2, 3), dtype=bool)
    mask[0, 1] = True  # column-major index 2
    other = np.zeros((2, 3), dtype=bool)
    other[1, 1:] = True  # column-major indices 3 and 5
    encoded = compressed_rles(np.stack([mask, other]))
    hand_written = [
        {"size": [2, 3], "counts": [2, 1, 3]},  # index 2
        {"size": [2, 3], "counts": [3, 1, 1, 1]},  # indices 3 and 5
        {"size": [2, 3], "counts": [2, 2, 1, 1]},  # indices 2, 3 and 5
    ]
    rles = [encoded[0], {"size": [2, 3], "counts": encoded[1]["counts"].decode()}, *hand_written]
    inter, areas = hassod.coverage_matrix(rles)
    assert areas.tolist() == [1, 2, 1, 2, 3]
    assert inter.tolist() == [
        [1, 0, 1, 0, 1],
        [0, 2, 0, 2, 2],
        [1, 0, 1, 0, 1],
        [0, 2, 0, 2, 2],
        [1, 2, 1, 2, 3],
    ]


# --------------------------------------------------------------------------------------------
# Batch
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_threads", [1, 2, None])
def test_batch_equals_single(num_threads):
    rng = _rng(10)
    sizes = [(24, 24), (31, 45), (1, 1), (8, 8), (57, 33), (3, 100), (48, 64)] * 3
    batch = []
    for index, (height, width) in enumerate(sizes):
        masks = stack(nested_scene(rng, height, width, 0.75), height, width)
        batch.append(as_dtype(masks, DTYPES[index % len(DTYPES)], rng))
    results = hassod.build_hierarchy_batch(batch, 0.75, num_threads=num_threads)
    assert len(results) == len(batch)
    for masks, result in zip(batch, results):
        single = hassod.build_hierarchy(masks, 0.75)
        np.testing.assert_array_equal(result.intersections, single.intersections)
        np.testing.assert_array_equal(result.parent, single.parent)
        np.testing.assert_array_equal(result.depth, single.depth)
        np.testing.assert_array_equal(result.level, single.level)
        assert result.cover == 0.75
        assert result.parent.dtype == np.int32 and result.level.dtype == np.int8


def test_batch_against_reference_and_array_batch():
    rng = _rng(11)
    scenes = [stack(nested_scene(rng, 20, 30, 0.9), 20, 30) for _ in range(4)]
    count = min(len(s) for s in scenes)
    as_array = np.stack([s[:count] for s in scenes])  # a (B, K, H, W) array is a batch too
    for masks, result in zip(as_array, hassod.build_hierarchy_batch(as_array, 0.9, 2)):
        parent, depth, level = reference_hierarchy(masks, 0.9)
        np.testing.assert_array_equal(result.parent, parent)
        np.testing.assert_array_equal(result.depth, depth)
        np.testing.assert_array_equal(result.level, level)
    assert hassod.build_hierarchy_batch([], 0.9) == []


# --------------------------------------------------------------------------------------------
# build_hierarchy(intersections=...)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_intersections_path_equals_masks_path(seed):
    rng = _rng(12, seed)
    cover = COVERS[seed % 4]
    masks = stack(nested_scene(rng, 33, 35, cover), 33, 35)
    from_masks = hassod.build_hierarchy(masks, cover)
    for matrix in (
        from_masks.intersections,
        from_masks.intersections.astype(np.int32),
        from_masks.intersections.tolist(),
        np.asfortranarray(from_masks.intersections),
    ):
        from_matrix = hassod.build_hierarchy(intersections=matrix, cover=cover)
        np.testing.assert_array_equal(from_matrix.parent, from_masks.parent)
        np.testing.assert_array_equal(from_matrix.depth, from_masks.depth)
        np.testing.assert_array_equal(from_matrix.level, from_masks.level)
        np.testing.assert_array_equal(from_matrix.intersections, from_masks.intersections)
        assert from_matrix.intersections.dtype == np.int64


def test_intersections_hand_built_matrix():
    # A (10 px) inside B (20 px) inside C (40 px); D (10 px) 9 px inside A (cover 0.9).
    matrix = np.array(
        [
            [10, 10, 10, 9],
            [10, 20, 20, 9],
            [10, 20, 40, 9],
            [9, 9, 9, 10],
        ]
    )
    hierarchy = hassod.build_hierarchy(intersections=matrix, cover=0.9)
    # D: covered by A? 9/10 >= .9 and 9/10 < .9 is false -> no. By B: 9/10, 9/20 -> yes.
    assert hierarchy.parent.tolist() == [1, 2, -1, 1]
    assert hierarchy.depth.tolist() == [2, 1, 0, 2]
    assert hierarchy.level.tolist() == [2, 1, 0, 2]
    parent, depth, level = reference_forest(matrix, 0.9)
    assert parent.tolist() == [1, 2, -1, 1] and depth.tolist() == [2, 1, 0, 2]


# --------------------------------------------------------------------------------------------
# Dedup
# --------------------------------------------------------------------------------------------


def test_dedup_identical_and_near_identical():
    shape = (20, 20)
    a = pixels(shape, range(100))
    a_near = pixels(shape, range(1, 100))  # IoU 0.99 with a
    b = pixels(shape, range(200, 300))
    b_copy = b.copy()
    c = pixels(shape, range(150, 250))  # IoU 1/3 with b
    masks = np.stack([a, b, a_near, b_copy, c, a.copy()])
    assert hassod.dedup_masks(masks).tolist() == [0, 1, 2, 4]  # iou=1.0: exact copies only
    assert hassod.dedup_masks(masks, iou=0.99).tolist() == [0, 1, 4]
    assert hassod.dedup_masks(masks, iou=0.995).tolist() == [0, 1, 2, 4]
    assert hassod.dedup_masks(masks, iou=0.3).tolist() == [0, 1]  # c joins b at IoU 1/3
    # the first of a group is kept whatever comes first
    assert hassod.dedup_masks(masks[[2, 0, 5, 4, 1, 3]], iou=0.99).tolist() == [0, 3, 4]
    for iou in (0.3, 0.5, 0.99, 0.995, 1.0):
        np.testing.assert_array_equal(hassod.dedup_masks(masks, iou), reference_dedup(masks, iou))


def test_dedup_distinct_masks_stay():
    masks = np.stack([pixels((6, 6), [i]) for i in range(36)])
    assert hassod.dedup_masks(masks, iou=0.01).tolist() == list(range(36))


def test_dedup_empty_duplicates():
    empty = np.zeros((5, 5), bool)
    a = pixels((5, 5), range(3))
    masks = np.stack([a, empty, empty, a, empty])
    assert hassod.dedup_masks(masks).tolist() == [0, 1]
    assert hassod.dedup_masks(masks, iou=0.5).tolist() == [0, 1]
    np.testing.assert_array_equal(hassod.dedup_masks(masks), reference_dedup(masks))


def test_dedup_exact_iou_boundary():
    # |a| = 10, |b| = 9 inside a: IoU 9/10 == 0.9 exactly -> a duplicate at iou=0.9 (>=)
    masks = covering_pair(10, 9, 9)
    assert hassod.dedup_masks(masks, iou=0.9).tolist() == [0]
    assert hassod.dedup_masks(masks, iou=np.nextafter(0.9, 1.0)).tolist() == [0, 1]


def test_dedup_is_greedy_against_kept_masks_only():
    # b is a duplicate of a, c is a duplicate of b but not of a: c stays (b was dropped)
    masks = np.stack(
        [
            pixels((1, 20), range(0, 10)),
            pixels((1, 20), range(1, 11)),
            pixels((1, 20), range(2, 12)),
        ]
    )
    # IoU(a, b) = 9/11, IoU(b, c) = 9/11, IoU(a, c) = 8/12
    assert hassod.dedup_masks(masks, iou=0.8).tolist() == [0, 2]
    np.testing.assert_array_equal(hassod.dedup_masks(masks, 0.8), reference_dedup(masks, 0.8))


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------

GOOD = np.zeros((2, 4, 4), dtype=bool)


@pytest.mark.parametrize("shape", [(4, 4), (4,), (1, 2, 4, 4), ()])
def test_wrong_rank(shape):
    with pytest.raises(ValueError, match=r"shape \(K, H, W\)"):
        hassod.coverage_matrix(np.zeros(shape, bool))
    with pytest.raises(ValueError, match=r"shape \(K, H, W\)"):
        hassod.build_hierarchy(np.zeros(shape, bool))
    with pytest.raises(ValueError, match=r"batch\[1\].*shape \(K, H, W\)"):
        hassod.build_hierarchy_batch([GOOD, np.zeros(shape, bool)])


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, np.complex64])
def test_float_masks_rejected_with_threshold_hint(dtype):
    with pytest.raises(ValueError, match=r"bool or uint8.*threshold"):
        hassod.coverage_matrix(np.ones((2, 3, 3), dtype=dtype))
    with pytest.raises(ValueError, match="threshold"):
        hassod.build_hierarchy_batch([np.ones((2, 3, 3), dtype=dtype)])
    with pytest.raises(ValueError, match="threshold"):
        hassod.dedup_masks(np.ones((2, 3, 3), dtype=dtype))


def test_rle_of_different_sizes():
    rles = compressed_rles(np.ones((1, 4, 5), bool)) + compressed_rles(np.ones((1, 5, 4), bool))
    with pytest.raises(ValueError, match="same size"):
        hassod.coverage_matrix(rles)


@pytest.mark.parametrize(
    "bad", [{"size": [2, 2]}, {"counts": [4]}, "not a dict", {"size": [2, 2], "count": [4]}]
)
def test_malformed_rle_dict(bad):
    good = {"size": [2, 2], "counts": [4]}
    with pytest.raises(ValueError, match="not a COCO RLE dict"):
        hassod.coverage_matrix([good, bad])


@pytest.mark.parametrize(
    "counts",
    [[3], [5], [1, 1, 1], [2, 2, 1], [], [0, 5], "1", "5", b"11"],
)
def test_rle_runs_that_do_not_sum_to_the_size(counts):
    with pytest.raises(ValueError, match="RLE runs"):
        hassod.coverage_matrix([{"size": [2, 2], "counts": counts}])


@pytest.mark.parametrize("counts", ["4 ", "!", "4p", "4~", "/", "4\x00"])
def test_invalid_counts_string_characters(counts):
    with pytest.raises(ValueError, match="invalid character"):
        hassod.coverage_matrix([{"size": [2, 2], "counts": counts}])


def test_truncated_counts_string():
    with pytest.raises(ValueError, match="truncated"):
        hassod.coverage_matrix([{"size": [2, 2], "counts": "P"}])  # continuation bit, no more


@pytest.mark.parametrize(
    "counts",
    [[3], [5], [1, 1, 1], [2, 2, 1], [], [0, 5], "1", "5", b"11", "P", "4!", [-1, 5], ["1", "3"]],
)
def test_check_rle_refuses_what_the_run_arrays_refuse(counts):
    rle = {"size": [2, 2], "counts": counts}
    with pytest.raises(ValueError, match="RLE") as expected:
        _rle_runs([rle])
    with pytest.raises(ValueError, match="RLE") as error:
        check_rle(rle, "masks[0]")
    assert str(error.value) == str(expected.value)


@settings(max_examples=60, deadline=None)
@given(
    mask=hnp.arrays(
        np.uint8, hnp.array_shapes(min_dims=2, max_dims=2, max_side=40), elements=st.integers(0, 1)
    ),
    cut=st.integers(-3, 3),
)
def test_native_pixel_count_equals_the_decoded_runs_sum(mask, cut):
    """The native count against the plain sum of pycocotools' runs, on random masks and on
    their strings cut short or extended (which must be refused or miscounted alike)."""
    rle = mask_utils.encode(np.asfortranarray(mask))
    counts = rle["counts"].decode("ascii")
    if cut < 0:
        counts = counts[:cut]
    elif cut > 0:
        counts = counts + "1" * cut
    try:
        expected = int(hassod._native.cpu_module().decode_rle(counts).sum(dtype=np.int64))
    except ValueError:
        with pytest.raises(ValueError):
            hassod._native.cpu_module().rle_pixel_count(counts)
        return
    assert hassod._native.cpu_module().rle_pixel_count(counts) == expected
    if cut == 0:
        assert expected == mask.size
        check_rle({"size": list(mask.shape), "counts": counts}, "m")
    elif expected != mask.size:
        with pytest.raises(ValueError, match="RLE runs cover"):
            check_rle({"size": list(mask.shape), "counts": counts}, "m")


@pytest.mark.parametrize("counts", [[-1, 5], [2**32, 0], [2**32 + 4], [0.9, 3.1], ["1", "3"]])
def test_negative_or_huge_list_counts(counts):
    # 2**32 + 4 wraps to 4 in uint32, the pixel count of the 2 x 2 mask: refused by its range
    with pytest.raises(ValueError, match="RLE"):
        hassod.coverage_matrix([{"size": [2, 2], "counts": counts}])
    with pytest.raises(ValueError, match="RLE"):
        check_rle({"size": [2, 2], "counts": counts}, "m")


@pytest.mark.parametrize(
    "rle",
    [
        {"size": None, "counts": [4]},  # TypeError: 'NoneType' object is not iterable
        {"size": [2], "counts": [4]},  # ValueError: not enough values to unpack
        {"size": ["a", 2], "counts": [4]},  # ValueError: invalid literal for int()
        {"size": [-100, 100], "counts": [4]},  # ValueError: cannot create std::vector ...
        {"size": [2, 2], "counts": 5},  # TypeError: len() of unsized object
        {"size": [2, 2], "counts": None},  # TypeError: int() argument must be ...
        {"size": [2, 2], "counts": [[1, 2], [0, 1]]},  # RuntimeError: Unable to cast ...
    ],
)
def test_malformed_rle_values(rle):
    with pytest.raises(ValueError, match="RLE"):
        hassod.coverage_matrix([rle])


def test_asymmetric_intersections():
    with pytest.raises(ValueError, match="symmetric"):
        hassod.build_hierarchy(intersections=np.array([[5, 1], [2, 5]]))
    with pytest.raises(ValueError, match="symmetric"):
        hassod.dedup_masks(intersections=np.array([[5, 1], [2, 5]]))


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        (np.zeros((2, 3), np.int64), "square"),
        (np.zeros(4, np.int64), "square"),
        (np.zeros((2, 2, 2), np.int64), "square"),
        (np.array([[5, -1], [-1, 5]]), "non-negative"),
        (np.array([[-1]]), "non-negative"),
        (np.array([[5, 6], [6, 9]]), "exceeds the area"),
        (np.array([[5.0, 1.0], [1.0, 5.0]]), "integer"),
    ],
)
def test_bad_intersections(matrix, message):
    with pytest.raises(ValueError, match=message):
        hassod.build_hierarchy(intersections=matrix)
    with pytest.raises(ValueError, match=message):
        hassod.dedup_masks(intersections=matrix)


@pytest.mark.parametrize(
    "value", [0, 0.0, -0.5, 1.0000001, 2, float("nan"), float("inf"), "x", None]
)
def test_cover_and_iou_outside_range(value):
    with pytest.raises(ValueError, match=r"cover must be a number in \(0, 1\]"):
        hassod.build_hierarchy(GOOD, value)
    with pytest.raises(ValueError, match=r"cover must be a number in \(0, 1\]"):
        hassod.build_hierarchy_batch([GOOD], value)
    with pytest.raises(ValueError, match=r"iou must be a number in \(0, 1\]"):
        hassod.dedup_masks(GOOD, value)


@pytest.mark.parametrize("threads", [0, -1, 1.5, True, "2", 100_000])
def test_bad_num_threads(threads):
    with pytest.raises(ValueError, match="num_threads"):
        hassod.build_hierarchy_batch([GOOD], 0.9, num_threads=threads)


def test_masks_that_do_not_stack_are_refused_saying_what_they_are():
    """A list of masks of different sizes ended in NumPy's "setting an array element with a
    sequence ... inhomogeneous shape"; RLEs given to build_hierarchy_batch (which takes none)
    in "must have shape (K, H, W), got shape (1,)"."""
    ragged = [np.ones((4, 4), bool), np.ones((5, 5), bool)]
    with pytest.raises(ValueError, match=r"masks of one size .*got a list of \(4, 4\), \(5, 5\)"):
        hassod.build_hierarchy(ragged)
    mixed = [np.ones((4, 4), bool), {"size": [4, 4], "counts": [16]}]
    with pytest.raises(ValueError, match=r"got a list of \(4, 4\), RLE dicts"):
        hassod.coverage_matrix(mixed)
    with pytest.raises(ValueError, match=r"\(K, H, W\) bool or integer array .* got str"):
        hassod.coverage_matrix("masks.json")
    with pytest.raises(ValueError, match=r"batch\[0\] is a list of COCO RLE dicts"):
        hassod.build_hierarchy_batch([[{"size": [4, 4], "counts": [16]}]])
    with pytest.raises(ValueError, match=r"batch\[1\] must be .*got a list of \(3, 3\), \(4, 4\)"):
        hassod.build_hierarchy_batch([np.ones((1, 4, 4), bool), [ragged[0], np.ones((3, 3))]])
    assert hassod.build_hierarchy([ragged[0], ragged[0]]).parent.tolist() == [-1, -1]


def test_masks_and_intersections_both_or_neither():
    matrix, _ = hassod.coverage_matrix(GOOD)
    for function in (hassod.build_hierarchy, hassod.dedup_masks):
        with pytest.raises(ValueError, match="either masks or intersections"):
            function(GOOD, intersections=matrix)
        with pytest.raises(ValueError, match="either masks or intersections"):
            function()


# --------------------------------------------------------------------------------------------
# Property-based
# --------------------------------------------------------------------------------------------


@st.composite
def small_mask_stacks(draw):
    count = draw(st.integers(1, 7))
    height = draw(st.integers(1, 9))
    width = draw(st.integers(1, 9))
    masks = draw(hnp.arrays(np.bool_, (count, height, width)))
    if count > 1 and draw(st.booleans()):  # nest: intersect some masks with others
        for index in range(1, count):
            if draw(st.booleans()):
                masks[index] &= masks[draw(st.integers(0, index - 1))]
    return masks


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    masks=small_mask_stacks(),
    cover=st.one_of(st.sampled_from(COVERS), st.floats(0.01, 1.0)),
    iou=st.one_of(st.sampled_from((0.5, 0.9, 1.0)), st.floats(0.01, 1.0)),
)
def test_property_native_equals_reference(masks, cover, iou):
    check_against_reference(masks, cover, iou)
    rles = compressed_rles(masks)
    inter, _ = hassod.coverage_matrix(rles)
    np.testing.assert_array_equal(inter, hassod.coverage_matrix(masks)[0])


def test_non_numbers_and_bools_are_refused_where_numbers_are_expected():
    masks = np.ones((2, 4, 4), dtype=bool)
    for cover in ("0.5", True, None):
        with pytest.raises(ValueError, match="cover must be a number"):
            hassod.build_hierarchy(masks, cover=cover)
    assert hassod.build_hierarchy(masks, cover=np.float64(0.5)).parent.tolist() == [-1, -1]
    with pytest.raises(ValueError, match="RLE 'size' must be"):
        hassod.build_hierarchy([{"size": [True, True], "counts": "1"}])
    with pytest.raises(ValueError, match="sequence of mask stacks, got NoneType"):
        hassod.build_hierarchy_batch(None)
