"""Plain, slow, obviously-correct implementations: the yardstick for tests and benchmarks."""

from hassod.reference.cluster import ReferenceClusterResult, reference_cluster

__all__ = ["ReferenceClusterResult", "reference_cluster"]
