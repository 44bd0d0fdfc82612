"""Plain, slow, obviously-correct implementations: the yardstick for tests and benchmarks."""

from hassod.reference.cluster import ReferenceClusterResult, reference_cluster
from hassod.reference.discover import ReferenceDiscovery, reference_discover
from hassod.reference.hierarchy import (
    reference_coverage_matrix,
    reference_dedup,
    reference_hierarchy,
)

__all__ = [
    "ReferenceClusterResult",
    "ReferenceDiscovery",
    "reference_cluster",
    "reference_coverage_matrix",
    "reference_dedup",
    "reference_discover",
    "reference_hierarchy",
]
