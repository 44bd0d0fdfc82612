"""Stage 1 per image against the authors'-way reference (:mod:`hassod.reference.discover`).

On fixed feature grids, :func:`hassod.discover.discover_from_features` must give exactly the
reference's masks (bit for bit), thresholds, CRF scores, parents and levels:

* real DINOv2 ViT-S/14 keys (``../shared/weights``) of the shared COCO photos and of
  scikit-image photos, centred per image (the default transform for DINOv2);
* synthetic :func:`hassod.testing.structured_features` grids, with synthetic images drawn on
  the same rectangles and with unrelated photos, on a 240 x 240 CRF;
* given label maps that reach every filter (tiny regions, background over three corners,
  a ring whose hole gets filled), through the per-threshold step and the ensemble.

Plus the ensemble's duplicate removal as a property: a mask that several thresholds give is
kept once, the copy of the lowest threshold.

The bit-for-bit comparisons pin the pipeline's CRF to the pydensecrf backend, the library the
reference (and the authors) call; the native CRF (the default backend) equals it only up to float
rounding, so it is compared on the real photos with a pixel tolerance. A few seconds per photo.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils
from scipy import ndimage

from hassod.discover import DiscoveryConfig, discover_from_features, fixed_size
from hassod.ensemble import ensemble
from hassod.postprocess import CrfParams, masks_for_partition
from hassod.reference import reference_hierarchy
from hassod.reference.discover import (
    reference_discover,
    reference_ensemble,
    reference_fixed_size,
    reference_threshold_masks,
)
from hassod.testing import nested_rectangles, structured_features

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
WEIGHTS = SHARED / "weights" / "dinov2_vits14_imgfocus_fp16.pth"
COCO_SAMPLE = SHARED / "data" / "coco_val2017_sample"
COCO_PHOTOS = ("000000142238.jpg", "000000439180.jpg")
DINOV2 = "vit_small_patch14_dinov2"

# pycocotools' decode under NumPy 2
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def crf_params(backend: str) -> CrfParams:
    """CrfParams with the given CRF backend ("pydensecrf" is the only one where the field is
    absent)."""
    if "backend" in {item.name for item in dataclasses.fields(CrfParams)}:
        return CrfParams(backend=backend)
    if backend != "pydensecrf":
        pytest.skip("this hassod has no CRF backend choice")
    return CrfParams()


def authors_crf(config: DiscoveryConfig) -> DiscoveryConfig:
    """``config`` with the pydensecrf CRF backend (the reference's library)."""
    return dataclasses.replace(config, crf=crf_params("pydensecrf"))


def assert_same_result(result, reference) -> None:
    """The pipeline's EnsembleResult equals the reference's output exactly."""
    assert result.masks.shape == reference.masks.shape
    assert result.masks.dtype == np.bool_
    np.testing.assert_array_equal(result.masks, reference.masks)
    np.testing.assert_array_equal(result.thresholds, reference.thresholds)
    np.testing.assert_array_equal(result.scores, reference.scores)
    np.testing.assert_array_equal(result.parent, reference.parent)
    np.testing.assert_array_equal(result.level, reference.level)
    # what the reference counted before the ensemble, minus what it removed, is what is left
    total = sum(reference.per_threshold.values())
    assert len(result.masks) == total - reference.duplicates_removed


def assert_no_duplicates(masks: np.ndarray) -> None:
    packed = {np.packbits(mask).tobytes() for mask in masks}
    assert len(packed) == len(masks)


def check_image(image: np.ndarray, features: np.ndarray, config: DiscoveryConfig):
    config = authors_crf(config)
    result = discover_from_features(image, features, config)
    reference = reference_discover(
        image,
        features,
        thresholds=config.thresholds,
        size=config.size,
        cover=config.cover,
        near_duplicate_iou=config.near_duplicate_iou,
    )
    assert_same_result(result, reference)
    if config.near_duplicate_iou is None:
        assert_no_duplicates(result.masks)
    return reference


def test_fixed_size_is_the_authors_resize():
    import skimage.data

    image = skimage.data.coffee()
    np.testing.assert_array_equal(fixed_size(image, 240), reference_fixed_size(image, 240))


# --------------------------------------------------------------------------------------------
# Real DINOv2 keys
# --------------------------------------------------------------------------------------------


def _real_cases():
    """(name, image, size): the shared COCO photos and scikit-image photos."""
    import skimage.data

    from hassod.discover import read_image

    cases = [(name, read_image(COCO_SAMPLE / name), 476) for name in COCO_PHOTOS]
    cases += [(name, getattr(skimage.data, name)(), 476) for name in ("astronaut", "chelsea")]
    cases.append(("coffee", skimage.data.coffee(), 224))  # a 16 x 16 grid
    return cases


@pytest.fixture(scope="module")
def real_references() -> dict:
    """name -> the reference's result, shared by the two backends' tests."""
    return {}


@pytest.fixture(scope="module")
def real_features():
    """{name: (image, centred keys, config)} for the real photos."""
    if not WEIGHTS.is_file() or not COCO_SAMPLE.is_dir():
        pytest.skip(f"needs the shared DINOv2 weights and COCO photos under {SHARED}")
    from hassod.features import FEATURE_TRANSFORMS, image_features, load_vit

    model = load_vit(DINOV2, weights=WEIGHTS, img_size=476)
    features = {}
    for name, image, size in _real_cases():
        config = DiscoveryConfig(backbone=DINOV2, size=size)
        transform = FEATURE_TRANSFORMS[config.resolved_transform]
        keys = np.asarray(transform(image_features(model, image, size), model), dtype=np.float32)
        features[name] = (image, keys, config)
    return features


@pytest.mark.parametrize("name", [*COCO_PHOTOS, "astronaut", "chelsea", "coffee"])
def test_real_photos_match_the_reference(real_features, real_references, name):
    image, keys, config = real_features[name]
    reference = check_image(image, keys, config)
    assert len(reference.masks) >= 3  # real pseudo-labels, not an empty comparison
    real_references[name] = reference


@pytest.mark.parametrize("name", [*COCO_PHOTOS, "astronaut", "chelsea", "coffee"])
def test_real_photos_with_the_native_crf(real_features, real_references, name):
    """The default (native) CRF: the same masks up to a few pixels where Q is within rounding
    of 0.5, the same thresholds and hierarchy."""
    image, keys, config = real_features[name]
    config = dataclasses.replace(config, crf=crf_params("native"))
    if name not in real_references:
        real_references[name] = reference_discover(image, keys, size=config.size)
    reference = real_references[name]
    result = discover_from_features(image, keys, config)
    assert result.masks.shape == reference.masks.shape
    differing = (result.masks != reference.masks).sum(axis=(1, 2))
    assert (differing <= 1e-3 * reference.masks.sum(axis=(1, 2))).all(), differing
    np.testing.assert_array_equal(result.thresholds, reference.thresholds)
    np.testing.assert_allclose(result.scores, reference.scores, atol=1e-3)
    np.testing.assert_array_equal(result.parent, reference.parent)
    np.testing.assert_array_equal(result.level, reference.level)


# --------------------------------------------------------------------------------------------
# Synthetic grids
# --------------------------------------------------------------------------------------------


def rectangles_image(seed: int, grid: int, height: int, width: int) -> np.ndarray:
    """A noisy (height, width, 3) image coloured by the finest rectangles of
    ``structured_features(grid, grid, seed=seed)`` (the same random cuts)."""
    from PIL import Image

    finest = nested_rectangles(grid, grid, (5, 2, 2), np.random.default_rng(seed))[-1]
    rng = np.random.default_rng([seed, 1])
    colours = rng.integers(0, 256, (int(finest.max()) + 1, 3), dtype=np.uint8)
    image = Image.fromarray(colours[finest]).resize((width, height), Image.NEAREST)
    noisy = np.asarray(image, dtype=np.int16) + rng.integers(-10, 11, (height, width, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    ("seed", "height", "width"),
    [(0, 180, 200), (1, 90, 120), (2, 300, 260)],
)
def test_synthetic_features_on_matching_images(seed, height, width):
    features = structured_features(30, 30, 64, seed=seed)
    image = rectangles_image(seed, 30, height, width)
    reference = check_image(image, features, DiscoveryConfig(size=240))
    assert reference.duplicates_removed > 0  # nested partitions repeat regions
    assert (reference.level > 0).any()


@pytest.mark.parametrize(
    ("photo", "seed", "near_duplicate_iou"),
    [("astronaut", 3, None), ("chelsea", 4, 0.8), ("rocket", 5, 0.95)],
)
def test_synthetic_features_on_unrelated_photos(photo, seed, near_duplicate_iou):
    import skimage.data

    image = getattr(skimage.data, photo)()[::2, ::2].copy()
    features = structured_features(30, 30, 64, seed=seed, smooth_noise=0.0 if seed == 3 else 0.7)
    config = DiscoveryConfig(size=240, near_duplicate_iou=near_duplicate_iou)
    check_image(image, features, config)


# --------------------------------------------------------------------------------------------
# Given label maps: every filter
# --------------------------------------------------------------------------------------------


def filter_cases() -> dict[str, tuple[list[np.ndarray], np.ndarray, int]]:
    """name -> (label maps for 0.4 / 0.2 / 0.1, image, CRF size)."""
    rng = np.random.default_rng(7)
    cases = {}

    # A ring (region 1) around a block (region 2) on a background over all four corners
    # (region 0): the background is dropped by the corner filter, the ring's hole is filled so
    # it covers the block; coarser thresholds merge the ring and the block.
    ring = np.zeros((24, 24), dtype=np.int32)
    ring[4:20, 4:20] = 1
    ring[9:15, 9:15] = 2
    merged = np.where(ring > 0, 1, 0).astype(np.int32)
    image = np.full((24, 24, 3), 40, dtype=np.uint8)
    image[4:20, 4:20] = (200, 60, 60)
    image[9:15, 9:15] = (60, 200, 60)
    image = np.kron(image, np.ones((8, 8, 1), dtype=np.uint8))  # 192 x 192
    cases["ring"] = ([ring, merged, merged], image, 96)

    # Many 2 x 2 regions on a small original image: most masks end under 100 pixels.
    tiny = (np.arange(20)[:, None] // 2) * 10 + np.arange(20)[None, :] // 2
    small = rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)
    small = np.kron(small, np.ones((6, 6, 1), dtype=np.uint8))  # 60 x 60
    cases["tiny"] = ([tiny.astype(np.int32), tiny // 20, tiny // 50], small, 96)

    # Nested rectangles over a photo whose colours disagree with them: the CRF moves
    # boundaries, so some regions fail the IoU >= 0.5 agreement.
    import skimage.data

    maps = nested_rectangles(20, 20, (3, 3, 2), rng)
    photo = skimage.data.coffee()[::3, ::3].copy()
    cases["photo"] = ([maps[2], maps[1], maps[0]], photo, 96)

    # Exact boundaries, with grid = CRF image = original (48 x 48), so the CRF keeps the
    # colour-matched regions pixel for pixel: a 100-pixel block (kept) and a 99-pixel one
    # (dropped); at 0.4 a top band with two corners (kept), at 0.2 an L with three (dropped).
    side = 48
    image = np.full((side, side, 3), 128, dtype=np.uint8)
    image[:8] = (30, 30, 200)
    image[:, 40:] = (200, 200, 30)
    image[15:25, 10:20] = (220, 20, 20)
    image[15:24, 28:39] = (20, 220, 20)
    band = np.zeros((side, side), dtype=np.int32)
    band[:8] = 1
    corner_l = np.ones((side, side), dtype=np.int32)
    corner_l[:8] = 0
    corner_l[:, 40:] = 0
    for partition in (band, corner_l):
        partition[15:25, 10:20] = 2  # 10 x 10 = 100 pixels
        partition[15:24, 28:39] = 3  # 9 x 11 = 99 pixels
    block = np.zeros((side, side), dtype=np.int32)
    block[15:25, 10:20] = 1
    cases["boundaries"] = ([band, corner_l, block], image, side)
    return cases


@pytest.mark.parametrize("name", ["ring", "tiny", "photo", "boundaries"])
def test_label_maps_through_each_step(name):
    labels, image, size = filter_cases()[name]
    height, width = image.shape[:2]
    crf_image = fixed_size(image, size)
    per_threshold = []
    for theta, partition in zip((0.4, 0.2, 0.1), labels):
        found = masks_for_partition(partition, crf_image, (height, width), crf_params("pydensecrf"))
        expected = reference_threshold_masks(partition, crf_image, height, width)
        assert len(found.masks) == len(expected)
        for mask, score, (rle, ref_score) in zip(found.masks, found.agreement, expected):
            np.testing.assert_array_equal(mask, mask_utils.decode(rle).astype(bool))
            assert score == ref_score
        per_threshold.append((theta, found.masks, found.agreement))
        regions = int(partition.max()) + 1
        if name == "tiny" and theta == 0.4:
            assert len(found.masks) == 0  # 100 regions of 36 pixels: all under the area filter
        if name == "photo" and theta == 0.4:
            assert 0 < len(found.masks) < regions  # some fail the CRF agreement

    result = ensemble(per_threshold, (height, width))
    reference = reference_discover(image, labels=labels, size=size)
    assert_same_result(result, reference)
    if name == "ring":
        # The background holds four corners: dropped. The ring's hole is filled, so at 0.4 it
        # equals the merged ring + block of 0.2 and 0.1 (two duplicates removed, the 0.1 copy
        # kept) and covers the block, its child.
        assert reference.per_threshold == {0.4: 2, 0.2: 1, 0.1: 1}
        assert reference.duplicates_removed == 2
        assert result.thresholds.tolist() == [0.1, 0.4]
        assert result.parent.tolist() == [-1, 0]
        assert result.level.tolist() == [0, 1]
        np.testing.assert_array_equal(ndimage.binary_fill_holes(result.masks[0]), result.masks[0])
    if name == "boundaries":
        assert reference.per_threshold == {0.4: 3, 0.2: 2, 0.1: 1}
        assert sorted(result.masks.sum(axis=(1, 2)).tolist()) == [100, 384, 1600, 1920]


def test_reference_checks_its_arguments():
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="either features or labels"):
        reference_discover(image)
    with pytest.raises(ValueError, match="one label map per threshold"):
        reference_discover(image, labels=[np.zeros((2, 2), dtype=np.int32)])


# --------------------------------------------------------------------------------------------
# Duplicates across thresholds: removed exactly once
# --------------------------------------------------------------------------------------------

SHAPE = (9, 11)


@st.composite
def threshold_mask_lists(draw):
    """A pool of distinct non-empty masks and, per threshold, a list of pool indices (with
    repeats across and within thresholds), plus the order the thresholds are passed in."""
    count = draw(st.integers(1, 8))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    pool, seen = [], set()
    while len(pool) < count:
        mask = rng.random(SHAPE) < rng.uniform(0.1, 0.9)
        mask[rng.integers(SHAPE[0]), rng.integers(SHAPE[1])] = True
        if mask.tobytes() not in seen:
            seen.add(mask.tobytes())
            pool.append(mask)
    picks = {
        theta: draw(st.lists(st.integers(0, count - 1), max_size=6)) for theta in (0.4, 0.2, 0.1)
    }
    order = draw(st.permutations([0.4, 0.2, 0.1]))
    return pool, picks, order


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(threshold_mask_lists())
def test_duplicates_across_thresholds_are_removed_exactly_once(case):
    pool, picks, order = case
    score_of = {}  # (theta, position) -> score
    per_threshold = []
    for theta in order:  # the ensemble orders the thresholds itself
        indices = picks[theta]
        scores = np.array([theta + 0.01 * position for position in range(len(indices))])
        score_of.update({(theta, position): scores[position] for position in range(len(indices))})
        stack = np.array([pool[i] for i in indices], dtype=bool).reshape(-1, *SHAPE)
        per_threshold.append((theta, stack, scores))

    result = ensemble(per_threshold, SHAPE)

    # each distinct mask once, at its first occurrence in the order 0.1, 0.2, 0.4
    expected, seen = [], set()
    for theta in (0.1, 0.2, 0.4):
        for position, index in enumerate(picks[theta]):
            if index not in seen:
                seen.add(index)
                expected.append((index, theta, score_of[(theta, position)]))
    assert len(result.masks) == len(expected)
    for mask, theta, score, (index, expected_theta, expected_score) in zip(
        result.masks, result.thresholds, result.scores, expected
    ):
        np.testing.assert_array_equal(mask, pool[index])
        assert theta == expected_theta  # the copy of the lowest threshold is kept
        assert score == expected_score  # ... with its own score
    assert_no_duplicates(result.masks)
    parent, _, level = reference_hierarchy(result.masks, 0.9)
    np.testing.assert_array_equal(result.parent, parent)
    np.testing.assert_array_equal(result.level, level)

    # the reference's ensemble agrees and counts every removed copy once
    as_rles = {
        theta: [
            (mask_utils.encode(np.asfortranarray(pool[i].astype(np.uint8))), 0.0)
            for i in picks[theta]
        ]
        for theta in (0.4, 0.2, 0.1)
    }
    reference = reference_ensemble(as_rles, *SHAPE)
    np.testing.assert_array_equal(reference.masks, result.masks)
    np.testing.assert_array_equal(reference.thresholds, result.thresholds)
    np.testing.assert_array_equal(reference.parent, result.parent)
    np.testing.assert_array_equal(reference.level, result.level)
    total = sum(len(indices) for indices in picks.values())
    assert reference.duplicates_removed == total - len(expected)


def test_ensemble_refuses_masks_of_another_shape_or_unpaired_scores():
    """Masks with the right pixel count but another shape used to be reshaped silently."""
    masks = np.zeros((2, 4, 6), dtype=bool)
    with pytest.raises(ValueError, match=r"masks must have shape \(M, 6, 4\)"):
        ensemble([(0.1, masks, np.ones(2))], (6, 4))
    with pytest.raises(ValueError, match="one score per mask"):
        ensemble([(0.1, masks, np.ones(3))], (4, 6))
    empty = ensemble([(0.1, [], []), (0.2, masks, np.ones(2))], (4, 6))
    assert empty.masks.shape == (1, 4, 6)  # the two empty masks are one exact duplicate


def test_discovery_config_checks_its_settings_when_made():
    """cover and near_duplicate_iou were only checked after the first image's CRFs, a dict
    for crf failed there with an AttributeError, and a NumPy integer size was refused as
    "not a positive integer"; a result's repr printed every mask."""
    assert DiscoveryConfig(size=np.int64(64)).as_dict()["size"] == 64
    for options, error, message in (
        ({"cover": 2}, ValueError, r"cover must be a number in \(0, 1\], got 2"),
        ({"near_duplicate_iou": 0}, ValueError, r"near_duplicate_iou must be a number in \(0, 1"),
        ({"crf": {"iterations": 5}}, TypeError, "crf must be a CrfParams, got dict"),
        ({"filters": None}, TypeError, "filters must be a FilterParams, got NoneType"),
        ({"size": 2.0}, ValueError, "size must be a positive integer, got 2.0"),
    ):
        with pytest.raises(error, match=message):
            DiscoveryConfig(**options)
    masks = covered_pair()
    result = ensemble([(0.1, masks, np.ones(2))], masks.shape[1:], cover=0.75)
    assert repr(result) == "EnsembleResult(masks=2 of 20x20, whole: 1, part: 1, subpart: 0)"


def test_label_maps_that_are_not_region_ids_are_refused():
    """A label map from elsewhere (SLIC, a user's own) reaches the CRF through
    masks_for_partition: negative ids used to be left out of every mask, float ids gave no
    masks at all, and an id of a billion allocated a billion masks; all silently."""
    image = np.random.default_rng(0).integers(0, 256, size=(40, 40, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(4), 25).reshape(10, 10)
    for bad, message in (
        (labels - 1, r"region ids >= 0, got -1"),
        (labels + 0.5, "integer region ids, got float64"),
        (np.where(labels == 3, 10**9, labels), "number the regions 0..R-1, got id 1000000000"),
    ):
        with pytest.raises(ValueError, match=message):
            masks_for_partition(bad, image, (40, 40))
    for good in (labels.astype(np.int64), labels.astype(np.uint8), labels > 1):
        assert masks_for_partition(good, image, (40, 40)).masks.dtype == bool


# --------------------------------------------------------------------------------------------
# Settings that must reach their step (the reference runs the defaults only)
# --------------------------------------------------------------------------------------------


def covered_pair() -> np.ndarray:
    """A 100-pixel square and a 25-pixel one with 20 of its pixels inside it: cov = 0.8, so
    the small one is a child at cover 0.75 and a root at 0.9."""
    masks = np.zeros((2, 20, 20), dtype=bool)
    masks[0, 0:10, 0:10] = True
    masks[1, 6:11, 5:10] = True  # rows 6..9 inside, row 10 outside: 20 of 25
    return masks


@pytest.mark.parametrize(("cover", "parent"), [(0.9, [-1, -1]), (0.75, [-1, 0]), (0.8, [-1, 0])])
def test_ensemble_builds_the_forest_at_the_cover_it_is_given(cover, parent):
    """``cover`` (0.75 for teacher predictions) must reach the forest, not the 0.9 default."""
    masks = covered_pair()
    result = ensemble([(0.1, masks, np.ones(2))], masks.shape[1:], cover=cover)
    assert result.parent.tolist() == parent
    assert result.level.tolist() == [0, 0 if parent[1] < 0 else 1]
    np.testing.assert_array_equal(result.parent, reference_hierarchy(masks, cover)[0])


def test_a_region_at_exactly_the_keep_iou_is_kept(monkeypatch):
    """Keep a region when IoU(before, after) >= keep_iou (DESIGN.md 3): 0.5 itself passes.

    A stand-in CRF returns chosen marginals on a 4 x 4 grid that is also the CRF and the
    original size (no resampling): region 0 keeps 4 of its 8 pixels (IoU 4 / 8 = 0.5), region
    1 grows from 8 to 12 (IoU 8 / 12)."""
    import hassod.postprocess as postprocess

    labels = np.zeros((4, 4), dtype=np.int32)
    labels[:, 2:] = 1
    after = np.zeros((2, 4, 4), dtype=np.float32)
    after[0, :2, :2] = 1.0
    after[1] = 1.0 - after[0]
    monkeypatch.setattr(postprocess, "dense_crf", lambda image, probs, params: after)
    crf_image = np.zeros((4, 4, 3), dtype=np.uint8)
    found = postprocess.crf_candidates(labels, crf_image, (4, 4))
    assert found.agreement.tolist() == [0.5, 8 / 12]
    assert found.regions.tolist() == [0, 1]
    np.testing.assert_array_equal(found.masks, after >= 0.5)
    strict = postprocess.crf_candidates(
        labels, crf_image, (4, 4), filters=postprocess.FilterParams(keep_iou=0.6)
    )
    assert strict.regions.tolist() == [1]


def test_filters_drop_empty_masks_even_without_an_area_limit():
    """An empty mask is never a pseudo-label (DESIGN.md 3: "drop empty masks"), also when
    min_area = 0 lets it through the area filter."""
    from hassod.postprocess import FilterParams, filter_masks

    masks = np.zeros((3, 12, 12), dtype=bool)
    masks[1, 2:5, 3:9] = True
    kept, indices = filter_masks(masks, FilterParams(min_area=0))
    assert indices.tolist() == [1]
    np.testing.assert_array_equal(kept, masks[1:2])


def test_configured_filters_reach_both_discovery_paths():
    """``DiscoveryConfig.filters`` applies from features and from a batch's CRF candidates
    (:class:`hassod.discover.ThresholdCandidates`, the GPU path): with min_area above the image's
    pixel count no mask can be left, while the defaults leave some, the same on both paths."""
    from hassod.cluster import fast_cluster
    from hassod.discover import ThresholdCandidates
    from hassod.postprocess import FilterParams, crf_candidates

    features = structured_features(30, 30, 64, seed=1)
    image = rectangles_image(1, 30, 90, 120)
    default = DiscoveryConfig(size=240)
    too_big = dataclasses.replace(default, filters=FilterParams(min_area=90 * 120 + 1))
    clusters = fast_cluster(features, default.thresholds)
    crf_image = fixed_size(image, default.size)
    candidates = ThresholdCandidates(
        thresholds=tuple(float(t) for t in clusters.thresholds),
        partitions=tuple(crf_candidates(each, crf_image, (90, 120)) for each in clusters.labels),
    )
    from_features = discover_from_features(image, features, default)
    assert len(from_features.masks) > 0
    np.testing.assert_array_equal(
        discover_from_features(image, candidates, default).masks, from_features.masks
    )
    assert len(discover_from_features(image, features, too_big).masks) == 0
    assert len(discover_from_features(image, candidates, too_big).masks) == 0


@pytest.mark.parametrize("regions_per_chunk", [1, 2, 3, 100])
def test_marginals_upsampled_in_chunks_equal_the_whole_stack(monkeypatch, regions_per_chunk):
    """The original-size masks are made a few regions at a time (bounded memory on large
    images); each region resizes alone, so the masks equal the whole stack's, pixel for pixel."""
    import hassod.postprocess as postprocess

    rng = np.random.default_rng(regions_per_chunk)
    height, width = 37, 53
    monkeypatch.setattr(postprocess, "UPSAMPLE_CHUNK_BYTES", 4 * height * width * regions_per_chunk)
    marginals = rng.random((7, 12, 16), dtype=np.float32)
    expected = postprocess.upsample(marginals, (height, width)) >= 0.5
    got = postprocess.upsampled_masks(marginals, (height, width))
    assert got.dtype == bool and np.array_equal(got, expected)
    assert postprocess.upsampled_masks(marginals[:0], (height, width)).shape == (0, height, width)
    labels, image, size = filter_cases()["photo"]
    crf_image = fixed_size(image, size)
    chunked = masks_for_partition(labels[1], crf_image, image.shape[:2], crf_params("native"))
    monkeypatch.setattr(postprocess, "UPSAMPLE_CHUNK_BYTES", 1 << 40)
    whole = masks_for_partition(labels[1], crf_image, image.shape[:2], crf_params("native"))
    assert len(whole.masks) > 1 and np.array_equal(chunked.masks, whole.masks)
