"""Per-threshold post-processing of a partition into object masks (DESIGN.md section 3).

Plain functions, arrays in and arrays out, composed by :func:`masks_for_partition`. Defaults
are the authors': one multi-label dense CRF per threshold over the regions' bilinearly
upsampled one-hot masks on the fixed-size (480 x 480) image; keep a region when its mask before
and after the CRF agree (IoU >= 0.5); upsample the kept CRF marginals to the original size and
threshold at 0.5; drop masks under 100 pixels and masks holding >= 3 of the 4 image corners
(background); fill holes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CrfParams:
    """Dense CRF parameters (Krähenbühl & Koltun 2011), the authors' values by default.

    ``backend`` picks the implementation: ``"native"`` (:mod:`hassod.crf`, multi-threaded,
    equal to pydensecrf up to float rounding; see tests/test_crf.py), ``"torch"``
    (:mod:`hassod.crf_torch`, the same model on a CUDA device when there is one, else on the
    CPU; ``hassod discover`` runs it batched over images on its device) or ``"pydensecrf"``
    (the reference, the authors' library). ``torch_method`` and ``torch_precision`` choose how
    the torch backend filters (:class:`hassod.crf_torch.CrfBatch`'s ``method`` and
    ``precision``: sparse products in float32 by default, or the Triton kernels).
    """

    iterations: int = 10
    gaussian_sxy: float = 3.0
    gaussian_compat: float = 7.0
    bilateral_sxy: float = 50.0
    bilateral_srgb: float = 5.0
    bilateral_compat: float = 10.0
    backend: str = "native"
    torch_method: str = "spmm"
    torch_precision: str = "float32"

    def __post_init__(self) -> None:
        if self.backend not in CRF_BACKENDS:
            raise ValueError(f"CRF backend must be one of {CRF_BACKENDS}, got {self.backend!r}")
        if (self.torch_method, self.torch_precision) != ("spmm", "float32"):
            from hassod.crf_torch import METHODS, PRECISIONS

            if self.torch_method not in METHODS:
                raise ValueError(
                    f"torch_method must be one of {METHODS}, got {self.torch_method!r}"
                )
            if self.torch_precision not in PRECISIONS:
                raise ValueError(
                    f"torch_precision must be one of {PRECISIONS}, got {self.torch_precision!r}"
                )

    @property
    def torch_settings(self) -> dict:
        """Keyword arguments of :class:`hassod.crf_torch.CrfBatch` for these parameters."""
        return {
            "gaussian": (self.gaussian_sxy, self.gaussian_compat),
            "bilateral": (self.bilateral_sxy, self.bilateral_srgb, self.bilateral_compat),
            "method": self.torch_method,
            "precision": self.torch_precision,
        }


#: CrfParams.backend values.
CRF_BACKENDS = ("native", "torch", "pydensecrf")


@dataclass(frozen=True)
class FilterParams:
    """Mask filters after the CRF, the authors' values by default."""

    keep_iou: float = 0.5  # IoU(pre-CRF >= 0.5, post-CRF >= 0.5) needed to keep a region
    min_area: int = 100  # pixels, at the original image size
    max_corners: int = 2  # masks holding more image corners are background
    fill_holes: bool = True


def one_hot(labels: np.ndarray) -> np.ndarray:
    """(h, w) int region ids 0..R-1 -> (R, h, w) float32 one-hot masks.

    Raises:
        ValueError: a label map that is not 2-D, not integer (or bool), holds a negative id
            (its cells would be in no mask) or an id of h * w or more (at least that many
            masks, nearly all empty: relabel first).
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2-D label map, got shape {labels.shape}")
    if not (labels.dtype == np.bool_ or np.issubdtype(labels.dtype, np.integer)):
        raise ValueError(f"labels must hold integer region ids, got {labels.dtype}")
    if not labels.size:
        return np.zeros((0, *labels.shape), dtype=np.float32)
    lowest, highest = int(labels.min()), int(labels.max())
    if lowest < 0:
        raise ValueError(f"labels must be region ids >= 0, got {lowest}")
    if highest >= labels.size:
        raise ValueError(
            f"labels must number the regions 0..R-1, got id {highest} on a map of "
            f"{labels.size} cells; relabel with np.unique(labels, return_inverse=True)[1]"
        )
    regions = highest + 1
    return (labels[None] == np.arange(regions)[:, None, None]).astype(np.float32)


def upsample(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of (R, h, w) float masks to (R, H, W), half-pixel centres.

    The same operation as the authors' ``torch.nn.functional.interpolate(mode="bilinear")``
    (``align_corners=False``), which is what it calls.
    """
    import torch

    masks = np.asarray(masks, dtype=np.float32)
    if masks.ndim != 3:
        raise ValueError(f"masks must have shape (R, h, w), got {masks.shape}")
    height, width = (int(v) for v in size)
    if height <= 0 or width <= 0:
        raise ValueError(f"size must be positive, got {size}")
    if masks.shape[0] == 0:
        return np.zeros((0, height, width), dtype=np.float32)
    resized = torch.nn.functional.interpolate(
        torch.from_numpy(np.ascontiguousarray(masks))[None], size=(height, width), mode="bilinear"
    )
    return resized[0].numpy()


# Float32 bytes of marginals upsampled at once to the original size: caps the intermediate
# (85 regions of a 40-megapixel image would otherwise take 13.6 GB) without changing a pixel.
UPSAMPLE_CHUNK_BYTES = 1 << 28


def upsampled_masks(marginals, size: tuple[int, int]) -> np.ndarray:
    """(K, h, w) marginals (NumPy, or a torch tensor on any device) -> (K, H, W) bool: bilinear
    :func:`upsample` to ``size``, then ``>= 0.5``, a few regions at a time (each region is
    resized alone, so the result does not depend on the chunking)."""
    import torch

    height, width = (int(v) for v in size)
    if height <= 0 or width <= 0:
        raise ValueError(f"size must be positive, got {size}")
    if not isinstance(marginals, torch.Tensor):
        marginals = torch.from_numpy(np.ascontiguousarray(marginals, dtype=np.float32))
    if marginals.ndim != 3:
        raise ValueError(f"marginals must have shape (K, h, w), got {tuple(marginals.shape)}")
    masks = np.zeros((marginals.shape[0], height, width), dtype=bool)
    step = max(1, UPSAMPLE_CHUNK_BYTES // (4 * height * width))
    for start in range(0, marginals.shape[0], step):
        resized = torch.nn.functional.interpolate(
            marginals[None, start : start + step].float(), size=(height, width), mode="bilinear"
        )[0]
        masks[start : start + step] = (resized >= 0.5).cpu().numpy()
    return masks


def import_pydensecrf():
    """``(pydensecrf.densecrf, pydensecrf.utils.unary_from_softmax)``, or an ImportError that says
    how to get them: pydensecrf2 is a dependency only where it builds (Python < 3.13)."""
    try:
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_softmax
    except ImportError as error:
        raise ImportError(
            f"the pydensecrf CRF (the reference) needs the pydensecrf2 package ({error}); hassod "
            "installs it on Python < 3.13 only, where it builds: `pip install pydensecrf2` there, "
            "or use the native CRF (backend 'native', `--crf native`), which computes the same"
        ) from error
    return dcrf, unary_from_softmax


def dense_crf(
    image: np.ndarray,
    probs: np.ndarray,
    params: CrfParams = CrfParams(),
    backend: str | None = None,
    num_threads: int | None = None,
) -> np.ndarray:
    """Mean-field dense CRF over K labels, the authors' set-up.

    Args:
        image: (H, W, 3) uint8 RGB.
        probs: (K, H, W) float label probabilities (used as given: unary = -log(clip(P, 1e-5))).
        params: kernel parameters and iterations.
        backend: ``"native"``, ``"torch"`` or ``"pydensecrf"``; None uses ``params.backend``.
        num_threads: native backend threads; None uses every hardware thread.

    Returns:
        (K, H, W) float32 marginals Q.
    """
    backend = params.backend if backend is None else backend
    if backend not in CRF_BACKENDS:
        raise ValueError(f"backend must be one of {CRF_BACKENDS}, got {backend!r}")
    image = np.asarray(image)
    probs = np.asarray(probs, dtype=np.float32)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if probs.ndim != 3 or probs.shape[1:] != image.shape[:2]:
        raise ValueError(f"probs must be (K, H, W) matching the image, got {probs.shape}")
    if backend == "native":  # checks the values itself (finite, >= 0) in its first pass
        from hassod.crf import shared_lattice

        # One CRF per threshold on the same image: its lattices are built once (hassod.crf).
        lattice = shared_lattice(
            image,
            gaussian=(params.gaussian_sxy, params.gaussian_compat),
            bilateral=(params.bilateral_sxy, params.bilateral_srgb, params.bilateral_compat),
            num_threads=num_threads,
        )
        return lattice.infer(probs, iterations=params.iterations, num_threads=num_threads)
    if backend == "torch":
        from hassod.crf_torch import CrfBatch

        batch = CrfBatch([image], **params.torch_settings)
        return batch.infer([probs], iterations=params.iterations)[0].cpu().numpy()

    if not np.isfinite(probs).all():
        raise ValueError("probs contain non-finite values")
    dcrf, unary_from_softmax = import_pydensecrf()
    labels, height, width = probs.shape
    crf = dcrf.DenseCRF2D(width, height, labels)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    crf.addPairwiseGaussian(sxy=params.gaussian_sxy, compat=params.gaussian_compat)
    crf.addPairwiseBilateral(
        sxy=params.bilateral_sxy,
        srgb=params.bilateral_srgb,
        rgbim=np.array(image, order="C"),  # a writable copy: pydensecrf rejects read-only buffers
        compat=params.bilateral_compat,
    )
    return np.asarray(crf.inference(params.iterations), dtype=np.float32).reshape(probs.shape)


def crf_agreement(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """(K,) IoU between ``before >= 0.5`` and ``after >= 0.5`` per label (0 when both empty)."""
    first, second = before >= 0.5, after >= 0.5
    intersection = np.logical_and(first, second).sum(axis=(1, 2))
    union = np.logical_or(first, second).sum(axis=(1, 2))
    return np.divide(intersection, union, out=np.zeros(len(union)), where=union > 0)


def corner_count(masks: np.ndarray) -> np.ndarray:
    """(K,) number of the four image corners inside each (K, H, W) bool mask."""
    return masks[:, 0, 0].astype(np.int64) + masks[:, 0, -1] + masks[:, -1, 0] + masks[:, -1, -1]


def filter_masks(
    masks: np.ndarray, params: FilterParams = FilterParams()
) -> tuple[np.ndarray, np.ndarray]:
    """The authors' filters, in their order: area, corners, then hole filling.

    Args:
        masks: (K, H, W) bool masks at the original image size.

    Returns:
        ``(kept, indices)``: (K', H, W) bool masks and their (K',) indices into ``masks``.
    """
    from scipy.ndimage import binary_fill_holes

    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"masks must have shape (K, H, W), got {masks.shape}")
    keep = (masks.sum(axis=(1, 2)) >= params.min_area) & (corner_count(masks) <= params.max_corners)
    indices = np.flatnonzero(keep)
    kept = masks[indices]  # a copy: the holes are filled in place, one mask at a time
    if params.fill_holes:
        for mask in kept:
            binary_fill_holes(mask, output=mask)
    nonempty = kept.any(axis=(1, 2))  # (not reshape(K, -1): K = 0 is allowed)
    if nonempty.all():
        return kept, indices
    return kept[nonempty], indices[nonempty]


@dataclass(frozen=True)
class ThresholdMasks:
    """Object masks from one partition."""

    masks: np.ndarray  # (M, H, W) bool, original image size
    regions: np.ndarray  # (M,) region id of each mask in the partition
    agreement: np.ndarray  # (M,) IoU of the region's mask before and after the CRF


@dataclass(frozen=True)
class CrfCandidates:
    """One partition after the CRF, before the mask filters."""

    masks: np.ndarray  # (K', H, W) bool, original size: kept regions' marginals >= 0.5
    regions: np.ndarray  # (K',) region id of each mask (the regions whose agreement passed)
    agreement: np.ndarray  # (R,) every region's IoU before / after the CRF


def crf_candidates(
    labels: np.ndarray,
    crf_image: np.ndarray,
    original_size: tuple[int, int],
    crf: CrfParams = CrfParams(),
    filters: FilterParams = FilterParams(),
) -> CrfCandidates:
    """One partition of the feature grid -> CRF marginals of the agreeing regions, thresholded
    at the original size (:mod:`hassod.batched_crf` does the same for a batch on a GPU).

    Args:
        labels: (h, w) region ids 0..R-1 (one threshold of :func:`hassod.fast_cluster`).
        crf_image: (S, S, 3) uint8, the image resized to the fixed size the CRF runs at.
        original_size: (height, width) of the original image.
    """
    crf_size = crf_image.shape[:2]
    before = upsample(one_hot(labels), crf_size)
    after = dense_crf(crf_image, before, crf)
    agreement = crf_agreement(before, after)
    kept_regions = np.flatnonzero(agreement >= filters.keep_iou)
    at_original = upsampled_masks(after[kept_regions], original_size)
    return CrfCandidates(masks=at_original, regions=kept_regions, agreement=agreement)


def finish_partition(
    candidates: CrfCandidates, filters: FilterParams = FilterParams()
) -> ThresholdMasks:
    """The mask filters (area, corners, holes) over one partition's CRF candidates."""
    masks, indices = filter_masks(candidates.masks, filters)
    regions = candidates.regions[indices]
    return ThresholdMasks(masks=masks, regions=regions, agreement=candidates.agreement[regions])


def masks_for_partition(
    labels: np.ndarray,
    crf_image: np.ndarray,
    original_size: tuple[int, int],
    crf: CrfParams = CrfParams(),
    filters: FilterParams = FilterParams(),
) -> ThresholdMasks:
    """One partition of the feature grid -> filtered object masks at the original size:
    :func:`crf_candidates` then :func:`finish_partition` (arguments as the former's)."""
    return finish_partition(crf_candidates(labels, crf_image, original_size, crf, filters), filters)
