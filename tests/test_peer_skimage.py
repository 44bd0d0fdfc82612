"""The scikit-image peer of the benchmarks (benchmarks/peer_skimage.py) agrees with fast_cluster."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("skimage.graph")

from hassod import DEFAULT_THRESHOLDS, fast_cluster  # noqa: E402
from hassod.testing import structured_features  # noqa: E402

_BENCHMARKS_DIR = str(Path(__file__).resolve().parents[1] / "benchmarks")
if _BENCHMARKS_DIR not in sys.path:
    sys.path.insert(0, _BENCHMARKS_DIR)

from peer_skimage import (  # noqa: E402
    adjusted_rand_index,
    canonical_labels,
    merge_threshold,
    skimage_cluster,
)


@pytest.mark.parametrize("mode", ["single", "per_threshold"])
@pytest.mark.parametrize("seed", range(4))
def test_peer_partitions_equal_fast_cluster(seed, mode):
    # Exact equality holds: the peer rounds cosines to 2^-32 as hassod does and maps hassod's
    # ">= theta" onto merge_hierarchical's "weight < thresh" exactly (merge_threshold); only
    # exact ties are broken differently, and real-valued features have none here.
    features = structured_features(12, 12, 16, (2, 2, 2), seed=seed)
    ours = fast_cluster(features, DEFAULT_THRESHOLDS)
    theirs = skimage_cluster(features, DEFAULT_THRESHOLDS, mode=mode)
    assert len(theirs) == len(DEFAULT_THRESHOLDS)
    for t, labels in enumerate(theirs):
        np.testing.assert_array_equal(labels, ours.labels[t])
        assert adjusted_rand_index(labels, ours.labels[t]) == pytest.approx(1.0)


def test_merge_threshold_is_inclusive():
    # A similarity exactly at theta merges (weight == 1 - theta < thresh), one grid step below
    # does not.
    theta = 0.25  # a multiple of 2^-32
    thresh = merge_threshold(theta)
    assert 1.0 - theta < thresh
    assert not 1.0 - (theta - 2.0**-32) < thresh
    theta = 0.4  # between grid points: the first similarity above it merges, the one below not
    above = np.ceil(theta * 2.0**32) / 2.0**32
    assert 1.0 - above < merge_threshold(theta)
    assert not 1.0 - (above - 2.0**-32) < merge_threshold(theta)


def test_canonical_labels_and_ari():
    labels = np.array([[5, 5, 2], [7, 2, 2]])
    np.testing.assert_array_equal(canonical_labels(labels), [[0, 0, 1], [2, 1, 1]])
    # Known values (as sklearn.metrics.adjusted_rand_score gives them).
    assert adjusted_rand_index([0, 0, 1, 1], [1, 1, 0, 0]) == pytest.approx(1.0)
    assert adjusted_rand_index([0, 0, 1, 2], [0, 0, 1, 1]) == pytest.approx(4 / 7)
    assert adjusted_rand_index([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(-0.5)
    assert adjusted_rand_index([0, 0, 0], [1, 1, 1]) == pytest.approx(1.0)
