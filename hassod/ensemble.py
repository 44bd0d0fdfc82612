"""Ensemble of the thresholds' masks and their coverage levels (DESIGN.md sections 1.5, 4)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hassod.hierarchy import LEVEL_NAMES, PSEUDO_LABEL_COVER, build_hierarchy, dedup_masks


@dataclass(frozen=True, eq=False)
class EnsembleResult:
    """The masks of one image after the ensemble, with their hierarchy.

    Attributes:
        masks: (M, H, W) bool, at the original image size.
        thresholds: (M,) float64, the merge threshold (theta) that produced each mask.
        scores: (M,) float64, each mask's CRF agreement (IoU before / after the CRF).
        parent: (M,) int32 index of each mask's parent, -1 for whole objects.
        level: (M,) int8: 0 whole, 1 part, 2 subpart.
    """

    masks: np.ndarray
    thresholds: np.ndarray
    scores: np.ndarray
    parent: np.ndarray
    level: np.ndarray

    def __repr__(self) -> str:  # the dataclass's would print every mask array
        height, width = self.masks.shape[1:]
        counts = ", ".join(
            f"{name}: {int((self.level == index).sum())}" for index, name in enumerate(LEVEL_NAMES)
        )
        return f"EnsembleResult(masks={len(self.masks)} of {height}x{width}, {counts})"


def ensemble(
    per_threshold: Sequence[tuple[float, np.ndarray, np.ndarray]],
    size: tuple[int, int],
    cover: float = PSEUDO_LABEL_COVER,
    near_duplicate_iou: float | None = None,
) -> EnsembleResult:
    """Concatenate the thresholds' masks, remove duplicates, build the coverage forest.

    Args:
        per_threshold: ``(theta, masks (M_t, H, W) bool, scores (M_t,))`` per threshold. They
            are concatenated in ascending theta, the order of the authors' ensemble (0.1, 0.2,
            0.4), which decides which copy of a duplicate is kept and breaks parent ties.
        size: (H, W), for an image with no masks at all.
        cover: coverage threshold of the forest (0.9 for pseudo-labels).
        near_duplicate_iou: also drop a mask whose IoU with an earlier kept mask is at least
            this (None: exact duplicates only). The authors' public code keeps exact duplicates
            too; the paper's ensemble counts (Table 2) show they are removed, and a duplicate
            only adds a sibling with the same box, so exact duplicates always go.
    """
    ordered = sorted(per_threshold, key=lambda item: item[0])
    height, width = size
    pieces = [_checked_masks(theta, masks, scores, size) for theta, masks, scores in ordered]
    masks = np.concatenate(pieces) if pieces else np.zeros((0, height, width), dtype=bool)
    thresholds = np.concatenate(
        [
            np.full(len(piece), theta, dtype=np.float64)
            for (theta, _, _), piece in zip(ordered, pieces)
        ]
        or [np.zeros(0)]
    )
    scores = np.concatenate(
        [np.asarray(s, dtype=np.float64) for _, _, s in ordered] or [np.zeros(0)]
    )
    if len(masks):
        keep = dedup_masks(masks, iou=1.0 if near_duplicate_iou is None else near_duplicate_iou)
        masks, thresholds, scores = masks[keep], thresholds[keep], scores[keep]
    hierarchy = build_hierarchy(masks, cover=cover)
    return EnsembleResult(
        masks=masks,
        thresholds=thresholds,
        scores=scores,
        parent=hierarchy.parent,
        level=hierarchy.level,
    )


def _checked_masks(theta: float, masks, scores, size: tuple[int, int]) -> np.ndarray:
    """One threshold's masks as (M, H, W) bool, refused unless they are (M, H, W) of ``size``
    (or one (H, W) mask) with one score each."""
    masks = np.asarray(masks, dtype=bool)
    if masks.size == 0 and np.ndim(scores) == 1 and len(scores) == 0:
        return np.zeros((0, *size), dtype=bool)
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3 or tuple(masks.shape[1:]) != tuple(size):
        raise ValueError(
            f"threshold {theta}: masks must have shape (M, {size[0]}, {size[1]}), got "
            f"{tuple(masks.shape)}"
        )
    if np.ndim(scores) != 1 or len(scores) != len(masks):
        raise ValueError(
            f"threshold {theta}: one score per mask expected ({len(masks)}), got shape "
            f"{np.shape(scores)}"
        )
    return masks
