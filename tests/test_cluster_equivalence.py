"""The native core against the plain reference (:mod:`hassod.reference`): same partitions, same
merge sequence, same stop similarity, on randomized and adversarial (tied, zero) inputs.

The reference is O(merges x edges) in Python, so most grids are small; a few are full size.
"""

from __future__ import annotations

import numpy as np
import pytest
from cluster_checks import (
    CHANNELS,
    DEFAULT,
    DTYPES,
    check_and_compare,
    gaussian_features,
    random_thresholds,
    rectangle_labels,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hassod.testing import structured_features

SMALL_SHAPES = [
    (1, 1),
    (1, 2),
    (2, 1),
    (1, 9),
    (1, 24),
    (13, 1),
    (24, 1),
    (2, 2),
    (2, 3),
    (3, 2),
    (4, 4),
    (5, 7),
    (7, 5),
    (8, 8),
    (6, 15),
    (15, 6),
    (11, 11),
    (12, 17),
    (16, 16),
    (20, 20),
    (9, 24),
    (24, 13),
    (24, 24),
]


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([20240611, *key])


def _random_shape(rng: np.random.Generator, max_side: int = 24) -> tuple[int, int]:
    kind = rng.integers(4)
    if kind == 0:
        return 1, int(rng.integers(1, max_side + 1))
    if kind == 1:
        return int(rng.integers(1, max_side + 1)), 1
    return int(rng.integers(1, max_side + 1)), int(rng.integers(1, max_side + 1))


# --------------------------------------------------------------------------------------------
# Gaussian features (plus a shared offset so merging proceeds)
# --------------------------------------------------------------------------------------------

GRID_CASES = [
    pytest.param(shape, channels, index, id=f"{shape[0]}x{shape[1]}-C{channels}")
    for index, (shape, channels) in enumerate(
        (shape, channels) for shape in SMALL_SHAPES for channels in CHANNELS
    )
]


@pytest.mark.parametrize(("shape", "channels", "index"), GRID_CASES)
def test_gaussian_grid(shape, channels, index):
    """Every small shape x every channel count; dtype and thresholds rotate with the case."""
    rng = _rng(1, index)
    dtype = DTYPES[index % 3]
    features = gaussian_features(rng, shape, channels, dtype)
    thresholds = None if index % 2 == 0 else random_thresholds(rng)
    check_and_compare(features, thresholds)


@pytest.mark.parametrize("seed", range(60))
def test_gaussian_random(seed):
    """Random shape (incl. 1xN / Nx1), channels, dtype, offset strength and thresholds."""
    rng = _rng(2, seed)
    shape = _random_shape(rng)
    channels = int(rng.choice(CHANNELS))
    dtype = DTYPES[int(rng.integers(3))]
    features = gaussian_features(rng, shape, channels, dtype, offset=float(rng.uniform(0.0, 2.0)))
    thresholds = None if seed % 3 == 0 else random_thresholds(rng)
    check_and_compare(features, thresholds)


@pytest.mark.parametrize("seed", range(40))
def test_random_thresholds(seed):
    """1 to 4 thresholds in [-1, 1] in any order (negative ones merge nearly everything)."""
    rng = _rng(3, seed)
    shape = _random_shape(rng, max_side=20)
    channels = int(rng.choice(CHANNELS))
    dtype = DTYPES[seed % 3]
    features = gaussian_features(rng, shape, channels, dtype)
    thresholds = random_thresholds(rng)
    result, _ = check_and_compare(features, thresholds)
    np.testing.assert_array_equal(result.thresholds, sorted(thresholds, reverse=True))


@pytest.mark.parametrize("theta", [1.0, 0.0, -1.0, 0.7, -0.3])
def test_single_scalar_threshold(theta):
    rng = _rng(4, round(theta * 10) + 10)
    features = gaussian_features(rng, (10, 9), 64, np.float32)
    result, _ = check_and_compare(features, theta)
    assert result.thresholds.tolist() == [theta]


def test_duplicate_thresholds():
    rng = _rng(5)
    features = gaussian_features(rng, (12, 12), 64, np.float32, offset=0.7)
    result, _ = check_and_compare(features, [0.3, 0.3, 0.1, 0.3])
    np.testing.assert_array_equal(result.labels[0], result.labels[1])
    np.testing.assert_array_equal(result.labels[1], result.labels[2])


# --------------------------------------------------------------------------------------------
# Structured features: nested rectangles, so merging passes through every threshold
# --------------------------------------------------------------------------------------------

# (height, width, channels, groups_per_part, noise)
STRUCTURED_CONFIGS = [
    (24, 24, 768, (3, 2, 2), 0.9),
    (24, 24, 384, (3, 2, 2), 0.5),
    (16, 16, 64, (2, 2, 2), 0.3),
    (20, 12, 384, (3, 2, 2), 0.5),
    (24, 24, 64, (4, 2, 2), 0.5),
    (12, 12, 768, (2, 2, 2), 0.5),
    (8, 8, 64, (2, 2, 2), 0.2),
    (24, 24, 3, (3, 2, 2), 0.1),
    (1, 24, 64, (3, 2, 2), 0.3),
    (24, 1, 64, (3, 2, 2), 0.3),
    (10, 22, 1, (2, 2, 2), 0.05),
]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize(
    "config",
    STRUCTURED_CONFIGS,
    ids=[f"{h}x{w}-C{c}-g{''.join(map(str, g))}-n{n}" for h, w, c, g, n in STRUCTURED_CONFIGS],
)
def test_structured(config, seed):
    height, width, channels, groups, noise = config
    dtype = DTYPES[seed]
    features = structured_features(height, width, channels, groups, noise=noise, seed=seed)
    features = features.astype(dtype)
    thresholds = None if seed < 2 else random_thresholds(_rng(6, height, width, channels))
    check_and_compare(features, thresholds)


# Cases where the reference itself gives three different region counts at 0.4 / 0.2 / 0.1.
DISTINCT_COUNT_CASES = [
    (24, 24, 768, (3, 2, 2), 0.9, 1),
    (24, 24, 768, (3, 2, 2), 0.9, 4),
    (24, 24, 64, (4, 2, 2), 0.5, 0),
    (24, 24, 64, (4, 2, 2), 0.5, 3),
    (32, 32, 768, (4, 2, 3), 0.9, 0),
    (32, 32, 768, (4, 2, 3), 0.9, 4),
]


@pytest.mark.parametrize(
    "case",
    DISTINCT_COUNT_CASES,
    ids=[f"{h}x{w}-C{c}-seed{s}" for h, w, c, _, _, s in DISTINCT_COUNT_CASES],
)
def test_structured_merges_through_all_thresholds(case):
    height, width, channels, groups, noise, seed = case
    features = structured_features(height, width, channels, groups, noise=noise, seed=seed)
    result, ref = check_and_compare(features, DEFAULT)
    # Real merging at every level: strictly fewer regions at each lower threshold, and far
    # fewer than cells.
    assert ref.num_regions[0] > ref.num_regions[1] > ref.num_regions[2] >= 1
    assert ref.num_regions[0] < height * width // 4
    assert len(set(result.num_regions.tolist())) == 3


# --------------------------------------------------------------------------------------------
# Exact ties: constant and piecewise-constant features, sign patterns
# --------------------------------------------------------------------------------------------

TIE_THRESHOLDS = [DEFAULT, (1.0,), (0.999, -1.0), (0.0,), (0.5, -0.5)]


@pytest.mark.parametrize("thresholds", TIE_THRESHOLDS, ids=str)
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (6, 1), (5, 5), (9, 14), (16, 16)], ids=str)
def test_constant_features(shape, thresholds):
    """All pairs tie at similarity 1: the tie rule alone decides the merge order."""
    rng = _rng(7, *shape)
    channels = int(rng.choice(CHANNELS))
    vector = rng.standard_normal(channels)
    features = np.broadcast_to(vector, (*shape, channels)).astype(np.float32)
    result, _ = check_and_compare(features, thresholds)
    # Everything is similar: one region at every threshold (all thresholds are <= 1).
    assert result.num_regions.tolist() == [1] * len(thresholds)
    assert np.all(result.merges["similarity"] == 1.0)


@pytest.mark.parametrize("seed", range(20))
def test_piecewise_constant_rectangles(seed):
    """Integer-valued vectors per rectangle, no noise: exact ties inside and between pieces."""
    rng = _rng(8, seed)
    shape = _random_shape(rng, max_side=20)
    channels = int(rng.choice((1, 3, 8, 64)))
    pieces = int(rng.integers(1, 9))
    labels = rectangle_labels(rng, shape, pieces)
    palette = rng.integers(-2, 3, size=(labels.max() + 1, channels))
    features = palette[labels].astype(DTYPES[seed % 3])
    thresholds = DEFAULT if seed % 2 == 0 else random_thresholds(rng)
    check_and_compare(features, thresholds)


@pytest.mark.parametrize("seed", range(10))
def test_piecewise_constant_structured(seed):
    """structured_features without noise: identical vectors inside each rectangle."""
    rng = _rng(9, seed)
    height, width = int(rng.integers(4, 21)), int(rng.integers(4, 21))
    channels = int(rng.choice(CHANNELS))
    features = structured_features(
        height, width, channels, (3, 2, 2), noise=0.0, seed=seed, dtype=DTYPES[seed % 3]
    )
    thresholds = DEFAULT if seed % 2 == 0 else random_thresholds(rng)
    check_and_compare(features, thresholds)


@pytest.mark.parametrize("thresholds", [(-1.0,), (0.0,), (-0.5, -0.99)], ids=str)
@pytest.mark.parametrize("shape", [(1, 6), (4, 4), (7, 10)], ids=str)
def test_sign_checkerboard(shape, thresholds):
    """Cells alternate v / -v: similarity -1 between neighbours, and merged pairs cancel to an
    exactly zero sum (similarity 0 from then on)."""
    rng = _rng(10, *shape)
    vector = rng.integers(-3, 4, size=5).astype(np.float64)
    vector[0] = 1.0
    rows, cols = np.indices(shape)
    sign = np.where((rows + cols) % 2 == 0, 1.0, -1.0)
    features = sign[..., None] * vector
    check_and_compare(features, thresholds)


# --------------------------------------------------------------------------------------------
# Zero vectors (zero-norm cells have similarity 0 with every neighbour)
# --------------------------------------------------------------------------------------------

ZERO_PATTERNS = ["single", "row", "column", "half", "most"]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("pattern", ZERO_PATTERNS)
def test_zero_vectors(pattern, seed):
    rng = _rng(11, ZERO_PATTERNS.index(pattern), seed)
    shape = (int(rng.integers(2, 17)), int(rng.integers(2, 17)))
    channels = int(rng.choice(CHANNELS))
    features = gaussian_features(rng, shape, channels, DTYPES[seed % 3])
    zero = np.zeros(shape, dtype=bool)
    if pattern == "single":
        zero[rng.integers(shape[0]), rng.integers(shape[1])] = True
    elif pattern == "row":
        zero[rng.integers(shape[0]), :] = True
    elif pattern == "column":
        zero[:, rng.integers(shape[1])] = True
    elif pattern == "half":
        zero = rng.random(shape) < 0.5
    else:
        zero = rng.random(shape) < 0.9
    features[zero] = 0
    # Thresholds around 0 decide whether zero cells merge (at similarity exactly 0).
    thresholds = [DEFAULT, (0.0,), (0.3, 0.0, -0.2), random_thresholds(rng)][seed % 4]
    check_and_compare(features, thresholds)


@pytest.mark.parametrize("thresholds", [DEFAULT, (0.0,), (1.0, 0.0, -1.0)], ids=str)
@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (5, 1), (6, 6), (8, 13)], ids=str)
def test_all_zero(shape, thresholds):
    """Every similarity is exactly 0: nothing merges above 0, everything merges at or below."""
    channels = 3 if shape[0] % 2 else 64
    features = np.zeros((*shape, channels), dtype=np.float32)
    result, _ = check_and_compare(features, thresholds)
    expected = [shape[0] * shape[1] if theta > 0 else 1 for theta in sorted(thresholds)[::-1]]
    assert result.num_regions.tolist() == expected
    assert np.all(result.merges["similarity"] == 0.0)


# --------------------------------------------------------------------------------------------
# torch CPU tensors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("torch_dtype", ["float32", "float16", "bfloat16"])
def test_torch_tensors(torch_dtype, seed):
    torch = pytest.importorskip("torch")
    rng = _rng(12, seed)
    shape = [(7, 9), (1, 12), (14, 14)][seed]
    array = gaussian_features(rng, shape, int(CHANNELS[seed + 2]), np.float32)
    tensor = torch.from_numpy(array).to(getattr(torch, torch_dtype))
    # The reference sees the exact values the tensor holds, widened to float64.
    check_and_compare(tensor, None if seed else DEFAULT)


# --------------------------------------------------------------------------------------------
# Full-size grids
# --------------------------------------------------------------------------------------------


def test_large_structured_60x60():
    features = structured_features(60, 60, 768, seed=3)
    result, ref = check_and_compare(features)
    assert len(set(ref.num_regions.tolist())) == 3


def test_large_nonsquare_gaussian():
    rng = _rng(13)
    features = gaussian_features(rng, (36, 64), 3, np.float16, offset=0.8)
    check_and_compare(features, [0.9, 0.5, 0.2])


@pytest.mark.slow
def test_large_structured_64x64():
    features = structured_features(64, 64, 384, (5, 3, 2), seed=7, dtype=np.float64)
    check_and_compare(features, random_thresholds(_rng(14)) + [0.25])


@pytest.mark.slow
def test_large_gaussian_64x64():
    rng = _rng(15)
    features = gaussian_features(rng, (64, 64), 64, np.float32, offset=0.5)
    check_and_compare(features)


# --------------------------------------------------------------------------------------------
# Property-based: small grids of small integers (many ties and zero vectors) or floats
# --------------------------------------------------------------------------------------------


@st.composite
def small_grids(draw):
    height = draw(st.integers(1, 7))
    width = draw(st.integers(1, 7))
    channels = draw(st.sampled_from([1, 2, 3, 8]))
    if draw(st.booleans()):
        elements = st.integers(-2, 2).map(float)
    else:
        elements = st.floats(-10, 10, allow_nan=False, allow_infinity=False, width=32)
    dtype = draw(st.sampled_from(DTYPES))
    features = draw(hnp.arrays(np.float64, (height, width, channels), elements=elements))
    return features.astype(dtype)


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    features=small_grids(),
    thresholds=st.lists(st.floats(-1.0, 1.0, allow_nan=False), min_size=1, max_size=4),
)
def test_property_native_matches_reference(features, thresholds):
    check_and_compare(features, thresholds)
