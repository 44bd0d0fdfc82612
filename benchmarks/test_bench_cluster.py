"""pytest-benchmark versions of bench_cluster.py's cases.

Run with: python -m pytest benchmarks/test_bench_cluster.py --benchmark-enable
(benchmarks are not part of the test suite; the root config disables them by default).
"""

from __future__ import annotations

import numpy as np
import pytest

import hassod
from hassod.reference import reference_cluster
from hassod.testing import structured_features


@pytest.fixture(scope="module")
def grid() -> np.ndarray:
    return structured_features(seed=0)


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    return np.stack([structured_features(seed=seed % 8) for seed in range(32)])


def test_native_single(benchmark, grid):
    result = benchmark(hassod.fast_cluster, grid)
    assert result.num_regions[0] > 1


@pytest.mark.parametrize("threads", [1, 2])
def test_native_batch(benchmark, batch, threads):
    results = benchmark(hassod.fast_cluster_batch, batch, num_threads=threads)
    assert len(results) == len(batch)


def test_reference_single(benchmark, grid):
    result = benchmark.pedantic(reference_cluster, args=(grid,), rounds=1, iterations=1)
    assert result.num_regions[0] > 1
