"""pytest-benchmark versions of bench_hierarchy.py's cases (K = 16 masks at 640x480).

Run with: python -m pytest benchmarks/test_bench_hierarchy.py --benchmark-enable
(benchmarks are not part of the test suite; the root config disables them by default).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import hassod
from hassod.reference import reference_hierarchy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_hierarchy import COVER, peer_intersections, realistic_masks, to_rles  # noqa: E402


@pytest.fixture(scope="module")
def masks() -> np.ndarray:
    return realistic_masks(16, seed=0)


@pytest.fixture(scope="module")
def rles(masks) -> list[dict]:
    return to_rles(masks)


@pytest.fixture(scope="module")
def batch() -> list[np.ndarray]:
    scenes = [realistic_masks(16, seed=seed) for seed in range(16)]
    return [scenes[i % len(scenes)] for i in range(64)]


def test_native_single(benchmark, masks):
    hierarchy = benchmark(hassod.build_hierarchy, masks, COVER)
    assert len(hierarchy.roots) >= 1


def test_native_coverage_matrix(benchmark, masks):
    intersections, areas = benchmark(hassod.coverage_matrix, masks)
    assert (areas > 0).all()


@pytest.mark.parametrize("threads", [1, 2])
def test_native_batch(benchmark, batch, threads):
    results = benchmark(hassod.build_hierarchy_batch, batch, COVER, num_threads=threads)
    assert len(results) == len(batch)


def test_native_rle(benchmark, rles, masks):
    intersections, _ = benchmark(hassod.coverage_matrix, rles)
    np.testing.assert_array_equal(intersections, hassod.coverage_matrix(masks)[0])


def test_peer_pycocotools_rle(benchmark, rles):
    ratios, areas = benchmark(peer_intersections, rles)
    assert ratios.shape == (len(rles), len(rles)) and (areas > 0).all()


def test_reference_single(benchmark, masks):
    parent, _, _ = benchmark.pedantic(
        reference_hierarchy, args=(masks, COVER), rounds=1, iterations=1
    )
    np.testing.assert_array_equal(parent, hassod.build_hierarchy(masks, COVER).parent)
