"""Synthetic inputs with known structure, shared by the tests and the benchmarks."""

from __future__ import annotations

import numpy as np


def nested_rectangles(
    height: int, width: int, groups_per_part: tuple[int, ...], rng: np.random.Generator
) -> list[np.ndarray]:
    """Nested partitions of an (H, W) grid into rectangles, coarsest first.

    ``groups_per_part[level]`` says into how many pieces each piece of the previous level is cut
    (along its longer side, at random positions). Returns one (H, W) int label map per level.
    """
    boxes = [(0, height, 0, width)]
    label_maps = []
    for pieces in groups_per_part:
        refined = []
        for top, bottom, left, right in boxes:
            vertical = (right - left) >= (bottom - top)
            start, stop = (left, right) if vertical else (top, bottom)
            count = min(pieces, stop - start)
            cuts = np.sort(rng.choice(np.arange(start + 1, stop), size=count - 1, replace=False))
            edges = [start, *cuts.tolist(), stop]
            for lo, hi in zip(edges[:-1], edges[1:]):
                refined.append((top, bottom, lo, hi) if vertical else (lo, hi, left, right))
        boxes = refined
        labels = np.empty((height, width), dtype=np.int32)
        for index, (top, bottom, left, right) in enumerate(boxes):
            labels[top:bottom, left:right] = index
        label_maps.append(labels)
    return label_maps


def structured_features(
    height: int = 60,
    width: int = 60,
    channels: int = 768,
    groups_per_part: tuple[int, ...] = (5, 2, 2),
    level_weights: tuple[float, ...] = (0.03, 0.12, 0.15, 0.70),
    noise: float = 0.2,
    smooth_noise: float = 0.7,
    smoothing: float = 2.0,
    seed: int = 0,
    dtype=np.float32,
) -> np.ndarray:
    """(H, W, C) features that are piecewise constant on nested rectangles, plus noise.

    Each cell's feature is ``sum_l sqrt(w_l) * v_l[piece at level l]`` plus noise, where ``v_0``
    is one vector shared by the whole grid and ``v_l`` are independent random unit vectors per
    piece of level ``l``. Two pieces that first differ at level ``l`` thus have cosine about
    ``sum(w[:l])``: with the defaults 0.03 (different top pieces), 0.15 (same top piece) and
    0.30 (same middle piece), so merging at 0.4 / 0.2 / 0.1 stops near the bottom / middle / top
    level: about 20 / 8 / 5 regions on a 60x60 grid with the default splits.

    The noise has a spatially smooth part (white noise blurred over the grid with a Gaussian of
    ``smoothing`` cells, scaled to RMS norm ``smooth_noise``) and a white part of RMS norm
    ``noise``. With the defaults, neighbouring cells have cosine about 0.95, as the centred keys
    of a real ViT have (median 0.91-0.96 on five photos, DINOv2 ViT-S/14). White noise alone
    (``smooth_noise=0``) is a harder case for the merge: every similarity inside a region is
    alike.
    """
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    label_maps = nested_rectangles(height, width, groups_per_part, rng)
    if len(level_weights) != len(label_maps) + 1:
        raise ValueError("level_weights needs one weight for the shared vector plus one per level")

    def unit_vectors(count: int) -> np.ndarray:
        vectors = rng.standard_normal((count, channels))
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    features = np.sqrt(level_weights[0]) * unit_vectors(1)[0] * np.ones((height, width, 1))
    for weight, labels in zip(level_weights[1:], label_maps):
        vectors = unit_vectors(int(labels.max()) + 1)
        features = features + np.sqrt(weight) * vectors[labels]
    if smooth_noise > 0:
        field = gaussian_filter(
            rng.standard_normal(features.shape), sigma=(smoothing, smoothing, 0)
        )
        field /= np.sqrt((field**2).sum(axis=-1).mean())
        features = features + smooth_noise * field
    features = features + noise * rng.standard_normal(features.shape) / np.sqrt(channels)
    return features.astype(dtype)


def slic_partition(image: np.ndarray, num_regions: int, grid: int = 60) -> np.ndarray:
    """A photo's SLIC superpixels on a (grid, grid) cell grid: a realistic partition for the CRF.

    The image is resized to ``grid`` x ``grid`` (a ViT's patch grid: 60 x 60 for the paper's
    480 x 480 input at patch 8) and cut into about ``num_regions`` SLIC superpixels (scikit-image;
    ``n_segments`` is searched for the count closest to ``num_regions``).

    Returns:
        (grid, grid) int32 labels 0 .. R-1.
    """
    from skimage.segmentation import slic
    from skimage.transform import resize

    small = resize(np.asarray(image), (grid, grid), anti_aliasing=True)
    best = None
    for segments in range(max(2, num_regions // 2), 3 * num_regions + 2):
        labels = slic(small, n_segments=segments, start_label=0)
        count = len(np.unique(labels))
        if best is None or abs(count - num_regions) < abs(best[0] - num_regions):
            best = (count, labels)
        if count >= num_regions:  # counts grow with n_segments: the closest is found
            break
    return np.unique(best[1], return_inverse=True)[1].reshape(grid, grid).astype(np.int32)


def voronoi_partition(num_regions: int, grid: int = 60, seed: int = 0) -> np.ndarray:
    """(grid, grid) int32 labels 0 .. R-1: cells of ``num_regions`` random seed points."""
    rng = np.random.default_rng(seed)
    seeds = rng.uniform(0, grid, size=(num_regions, 2))
    rows, cols = np.mgrid[0:grid, 0:grid] + 0.5
    distances = (rows[..., None] - seeds[:, 0]) ** 2 + (cols[..., None] - seeds[:, 1]) ** 2
    return (
        np.unique(distances.argmin(axis=-1), return_inverse=True)[1]
        .reshape(grid, grid)
        .astype(np.int32)
    )


def partition_probs(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(R, H, W) float32 CRF input of a partition: one-hot masks bilinearly upsampled to ``size``.

    The discovery pipeline's CRF input (DESIGN.md section 3, :func:`hassod.postprocess.upsample`).
    """
    from hassod.postprocess import one_hot, upsample

    return upsample(one_hot(labels), size)
