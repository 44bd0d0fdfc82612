"""hassod: Hierarchical Adaptive Self-Supervised Object Detection with a fast native core.

Importing hassod is light: NumPy and the native module only. torch and timm are imported when
a feature that needs them is first used.
"""

from __future__ import annotations

from hassod.cluster import (
    DEFAULT_THRESHOLDS,
    ClusterResult,
    fast_cluster,
    fast_cluster_batch,
)
from hassod.crf import CrfLattice, dense_crf, dense_crf_batch
from hassod.hierarchy import (
    Hierarchy,
    build_hierarchy,
    build_hierarchy_batch,
    coverage_matrix,
    dedup_masks,
)

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_THRESHOLDS",
    "ClusterResult",
    "fast_cluster",
    "fast_cluster_batch",
    "CrfLattice",
    "dense_crf",
    "dense_crf_batch",
    "Hierarchy",
    "build_hierarchy",
    "build_hierarchy_batch",
    "coverage_matrix",
    "dedup_masks",
    "__version__",
]
