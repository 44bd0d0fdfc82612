"""Hierarchical adaptive clustering of a ViT feature grid (DESIGN.md section 2, paper 3.1).

The native core merges the most similar pair of 4-adjacent regions, over and over, where the
similarity of two regions is the cosine of their mean raw features. Each time the best
similarity falls below the next threshold (taken in descending order) the partition is
recorded. One merge sequence thus gives nested partitions for every threshold.

Exact rules (shared with :mod:`hassod.reference`):

* Similarities are computed in float64 and rounded to the nearest multiple of 2^-32 before any
  comparison, so pairs that are equal up to floating-point rounding tie exactly.
* Ties go to the pair with the smallest ``(a, b)``, where cells are regions ``0 .. H*W-1``
  (row-major), merge ``k`` creates region ``H*W + k``, and ``a < b``.
* A region whose feature sum has zero norm has similarity 0 with every neighbour.
* Label maps are canonical: regions are numbered 0, 1, ... in row-major order of their first
  cell.
* float64 features of extreme magnitude (squared cell norms beyond 1e200 or below 1e-200) are
  first scaled by a power of two, which is exact and leaves every cosine unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from hassod._checks import (
    check_index,
    check_num_threads,
    cpu_tensor_values,
    is_torch_tensor,
    native_layout,
    real_number,
)
from hassod._native import cpu_module

if TYPE_CHECKING:  # annotations only: importing hassod does not import torch
    import torch

DEFAULT_THRESHOLDS: tuple[float, ...] = (0.4, 0.2, 0.1)  # paper's theta_merge values

#: One row per merge: regions ``a < b`` joined into region ``new`` at ``similarity``.
MERGE_DTYPE = np.dtype(
    [("a", np.int32), ("b", np.int32), ("new", np.int32), ("similarity", np.float64)]
)

_SUPPORTED_DTYPES = (np.float16, np.float32, np.float64)


@dataclass(frozen=True, eq=False)
class ClusterResult:
    """Nested partitions of one feature grid and the merge sequence that produced them.

    Attributes:
        labels: (T, H, W) int32 canonical region ids per threshold.
        thresholds: (T,) float64, descending.
        num_regions: (T,) int32 regions per threshold.
        merges: (M,) structured array with fields ``a``, ``b``, ``new``, ``similarity``
            (see :data:`MERGE_DTYPE`), in merge order.
        merges_before: (T,) int64 number of merges made before each snapshot.
        stop_similarity: best adjacent similarity when the run stopped (below the lowest
            threshold), or ``-inf`` when no adjacent pair was left.
        num_dot_products: full-length feature dot products the native core computed.
    """

    labels: np.ndarray
    thresholds: np.ndarray
    num_regions: np.ndarray
    merges: np.ndarray
    merges_before: np.ndarray
    stop_similarity: float
    num_dot_products: int

    @property
    def shape(self) -> tuple[int, int]:
        """Grid shape (H, W)."""
        return int(self.labels.shape[1]), int(self.labels.shape[2])

    def num_merges_at(self, theta: float) -> int:
        """Number of merges a run with threshold ``theta`` alone would make."""
        theta = _check_threshold_value(theta, "theta")
        if not theta > self.stop_similarity:
            raise ValueError(
                f"theta={theta} is not above the similarity at which this run stopped "
                f"({self.stop_similarity}); run fast_cluster with a threshold <= {theta}"
            )
        below = np.flatnonzero(self.merges["similarity"] < theta)
        return int(below[0]) if below.size else len(self.merges)

    def cut(self, theta: float) -> np.ndarray:
        """(H, W) int32 canonical labels for threshold ``theta``, equal to a fresh run with it.

        Any ``theta`` above :attr:`stop_similarity` can be answered (in particular every
        threshold at or above the lowest one of the run).

        Raises:
            ValueError: ``theta`` is not a number in [-1, 1], or not above
                :attr:`stop_similarity` (the run stopped before reaching it: cluster again
                with a threshold <= ``theta``).
        """
        count = self.num_merges_at(theta)
        height, width = self.shape
        flat = cpu_module().partition_from_merges(
            height * width, self.merges["a"], self.merges["b"], count
        )
        return flat.reshape(height, width)

    def masks(self, t: int) -> np.ndarray:
        """(R_t, H, W) bool one-hot region masks for threshold index ``t`` (an index into
        :attr:`thresholds`, negative ones from the end; IndexError outside them, TypeError for
        a non-integer); mask ``r`` is region ``r`` of ``labels[t]``."""
        t = check_index(t, "threshold index t")
        if not -len(self.thresholds) <= t < len(self.thresholds):
            raise IndexError(f"threshold index {t} out of range for {len(self.thresholds)}")
        regions = np.arange(int(self.num_regions[t]), dtype=np.int32)
        return self.labels[t][None, :, :] == regions[:, None, None]

    def __repr__(self) -> str:
        height, width = self.shape
        regions = ", ".join(
            f"{theta:g}: {count}" for theta, count in zip(self.thresholds, self.num_regions)
        )
        return (
            f"ClusterResult(grid={height}x{width}, merges={len(self.merges)}, "
            f"regions={{{regions}}})"
        )


def fast_cluster(
    features: np.ndarray | torch.Tensor,
    thresholds: float | Sequence[float] = DEFAULT_THRESHOLDS,
) -> ClusterResult:
    """Cluster one (H, W, C) feature grid with the native core.

    Args:
        features: (H, W, C) float16/float32/float64 NumPy array or CPU torch tensor (bfloat16
            too) of raw, unnormalised features. float16 and bfloat16 are widened exactly.
            Channels last: a (C, H, W) tensor would be read as a C x H grid of W-channel
            features (no error can tell), so ``permute(1, 2, 0)`` it first.
        thresholds: one merge threshold or several, each a cosine in [-1, 1]; any order
            (sorted descending). Default: the paper's (0.4, 0.2, 0.1).

    Returns:
        A :class:`ClusterResult`: ``labels`` (T, H, W) int32, one partition per threshold in
        descending order, and the merge sequence.

    Raises:
        ValueError: wrong rank, empty grid, unsupported dtype, a tensor not on the CPU, no
            threshold, or a threshold that is not a number in [-1, 1].
    """
    grid = as_feature_grid(features)
    levels = check_thresholds(thresholds)
    return _result_from_native(cpu_module().cluster(grid, list(levels)))


def fast_cluster_batch(
    features: np.ndarray | torch.Tensor | Sequence[np.ndarray | torch.Tensor],
    thresholds: float | Sequence[float] = DEFAULT_THRESHOLDS,
    num_threads: int | None = None,
) -> list[ClusterResult]:
    """Cluster many grids in parallel native threads (GIL released).

    Args:
        features: a (B, H, W, C) array or CPU tensor, or a sequence of (H, W, C) grids (shapes
            and dtypes may differ); each grid as for :func:`fast_cluster`.
        thresholds: as for :func:`fast_cluster`, the same for every grid.
        num_threads: worker threads, 1 to 1024; None uses every hardware thread. The results
            do not depend on it.

    Returns:
        One :class:`ClusterResult` per grid, in input order (an empty list for no grids).

    Raises:
        ValueError: an array or tensor that is not 4-D, a grid :func:`fast_cluster` would
            refuse (named ``features[i]``), bad thresholds or ``num_threads``.
    """
    threads = check_num_threads(num_threads)
    if is_torch_tensor(features) or isinstance(features, np.ndarray):
        if features.ndim != 4:
            raise ValueError(
                f"batched features must have shape (B, H, W, C), got {tuple(features.shape)}"
            )
        items = [features[i] for i in range(features.shape[0])]
    else:
        try:
            items = list(features)
        except TypeError:
            raise ValueError(
                "features must be a (B, H, W, C) array or tensor or a sequence of (H, W, C) "
                f"grids, got {type(features).__name__}"
            ) from None
    grids = [as_feature_grid(item, name=f"features[{i}]") for i, item in enumerate(items)]
    levels = check_thresholds(thresholds)
    raw = cpu_module().cluster_batch(grids, list(levels), threads)
    return [_result_from_native(item) for item in raw]


def as_feature_grid(features, name: str = "features") -> np.ndarray:
    """Validate ``features`` and return a C-contiguous (H, W, C) float32/float64 array."""
    if is_torch_tensor(features):
        features = cpu_tensor_values(
            features, name, f"the clustering core runs on the CPU, pass {name}.cpu()"
        )
    array = np.asarray(features)
    if array.dtype.type not in _SUPPORTED_DTYPES:
        raise ValueError(
            f"{name} must be float16, float32 or float64 (got {array.dtype}); "
            "convert with .astype(np.float32)"
        )
    if array.ndim != 3:
        raise ValueError(f"{name} must have shape (H, W, C), got shape {array.shape}")
    if 0 in array.shape:
        raise ValueError(f"{name} has a zero-sized dimension: shape {array.shape}")
    if array.dtype == np.float16:
        array = array.astype(np.float32)  # exact widening
    return native_layout(array)


def check_thresholds(thresholds: float | Sequence[float]) -> tuple[float, ...]:
    """Validate merge thresholds and return them sorted in descending order."""
    if thresholds is None:
        raise ValueError("thresholds must be a number or a sequence of numbers, got None")
    if np.ndim(thresholds) == 0:
        thresholds = (thresholds,)
    values = [_check_threshold_value(theta, "threshold") for theta in thresholds]
    if not values:
        raise ValueError("thresholds must contain at least one value")
    return tuple(sorted(values, reverse=True))


def _check_threshold_value(theta, what: str) -> float:
    value = real_number(theta, what, "a number")
    if not math.isfinite(value) or not -1.0 <= value <= 1.0:
        raise ValueError(f"{what} must be a finite cosine similarity in [-1, 1], got {theta!r}")
    return value


def _result_from_native(raw: dict) -> ClusterResult:
    merge_a = raw["merge_a"]
    height, width = raw["labels"].shape[1:]
    merges = np.empty(len(merge_a), dtype=MERGE_DTYPE)
    merges["a"] = merge_a
    merges["b"] = raw["merge_b"]
    merges["new"] = height * width + np.arange(len(merge_a), dtype=np.int32)
    merges["similarity"] = raw["merge_similarity"]
    return ClusterResult(
        labels=raw["labels"],
        thresholds=raw["thresholds"],
        num_regions=raw["num_regions"],
        merges=merges,
        merges_before=raw["merges_before"],
        stop_similarity=float(raw["stop_similarity"]),
        num_dot_products=int(raw["num_dot_products"]),
    )
