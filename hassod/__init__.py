"""hassod: Hierarchical Adaptive Self-Supervised Object Detection with a fast native core.

Importing hassod is light: NumPy only. The native module (``hassod._C``), torch and timm are
loaded when a feature that needs them is first used.

Here (the native core): :func:`fast_cluster` / :func:`fast_cluster_batch` (a feature grid ->
nested partitions, :class:`ClusterResult`), :func:`dense_crf` / :func:`dense_crf_batch` /
:class:`CrfLattice` (the dense CRF), :func:`coverage_matrix`, :func:`build_hierarchy` /
:func:`build_hierarchy_batch` (masks -> coverage forest and whole / part / subpart levels,
:class:`Hierarchy`) and :func:`dedup_masks`.

The pipeline, module by module (import them by name):

* :mod:`hassod.features` -- ViT keys of an image: ``load_vit``, ``image_features``;
* :mod:`hassod.discover` -- stage 1 for one image: ``DiscoveryConfig``, ``read_image``,
  ``discover_from_features`` (features -> masks, levels and parents at the image's size);
  :mod:`hassod.postprocess` and :mod:`hassod.ensemble` hold its steps;
* :mod:`hassod.coco` -- pseudo-label records and the COCO JSON (``mask_annotations``,
  ``image_record``, ``assemble``);
* :mod:`hassod.evaluate` -- class-agnostic AR / AP against a COCO ground truth (``evaluate``);
* :mod:`hassod.detector` -- stage 2, the detector: ``train``, ``Predictor``, ``predict_images``;
* :mod:`hassod.crf_torch` -- the dense CRF batched on a GPU (``CrfBatch``);
* :mod:`hassod.visualize`, :mod:`hassod.report` -- pictures of labels.

README.md shows them in use (its "Python API" section; the detector's under "Training the
detector"); ``python -m hassod --help`` lists the commands, which run the same code over
folders.
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
