"""Coverage relations between masks, the coverage forest and whole / part / subpart levels.

DESIGN.md section 4 (paper section 3.2). For masks A and B, ``cov(A in B) = |A ∩ B| / |A|``
(float64 division, as the authors' NumPy code). B *covers* A when ``cov(A in B) >= cover`` and
``cov(B in A) < cover``; A's parent is the smallest-area mask covering it (ties: lowest index).
A parent is always strictly larger than its child, so the relation is a forest. Roots are
whole objects (level 0), their children parts (1), every deeper descendant a subpart (2).
``cover`` is 0.9 for pseudo-labels and 0.75 when levels are recomputed from teacher predictions.

An empty mask has coverage 0 in every mask and covers nothing: it is always a root.

All pairwise intersections come from one (K, K) coverage matrix, computed natively on
bit-packed masks (popcounts of ANDed 64-pixel words), or straight from COCO RLEs.

CUDA torch tensors take the CUDA path (hassod._C_cuda, see hassod/_cuda_hierarchy.py), with
results identical to the CPU path's, returned as torch tensors on the masks' device.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

import numpy as np

from hassod import _cuda_hierarchy as _cuda
from hassod._checks import (
    check_index,
    check_num_threads,
    is_torch_tensor,
    mask_shape_error,
    native_layout,
    real_number,
    soft_mask_error,
)
from hassod._native import cpu_module

if TYPE_CHECKING:  # annotations only: importing hassod does not import torch
    import torch

#: What the functions below take as masks: a (K, H, W) bool or integer NumPy array or torch
#: tensor (CPU or CUDA), or a sequence of COCO RLE dicts of one image size.
Masks = Union[np.ndarray, "torch.Tensor", Sequence[dict]]

PSEUDO_LABEL_COVER = 0.9  # paper / authors' code, initial pseudo-labels
TEACHER_COVER = 0.75  # levels recomputed from Mean Teacher predictions
LEVEL_NAMES = ("whole", "part", "subpart")


@dataclass(frozen=True, eq=False)
class Hierarchy:
    """A coverage forest over K masks.

    The fields are NumPy arrays, or torch tensors on the masks' CUDA device when the masks (or
    the intersections) were CUDA tensors; the methods return the same kind.

    Attributes:
        parent: (K,) int32 index of each mask's parent, -1 for roots.
        depth: (K,) int32 number of ancestors.
        level: (K,) int8 ``min(depth, 2)``: 0 whole, 1 part, 2 subpart.
        intersections: (K, K) int64 ``|M_i ∩ M_j|``; the diagonal holds the areas.
        cover: the coverage threshold used.
    """

    parent: np.ndarray
    depth: np.ndarray
    level: np.ndarray
    intersections: np.ndarray
    cover: float

    def __len__(self) -> int:
        return len(self.parent)

    @property
    def areas(self) -> np.ndarray:
        """(K,) int64 mask areas in pixels."""
        areas = self.intersections.diagonal()
        return areas.clone() if is_torch_tensor(areas) else areas.copy()

    @property
    def roots(self) -> np.ndarray:
        """Indices of the whole objects (masks without a parent), ascending."""
        return _flatnonzero(self.parent < 0)

    def children(self, index: int) -> np.ndarray:
        """Indices of the masks whose parent is ``index`` (negative: from the end), ascending;
        IndexError outside ``-K .. K-1``, TypeError for a non-integer."""
        index = check_index(index, "mask index")
        if not -len(self) <= index < len(self):
            raise IndexError(f"mask index {index} out of range for {len(self)} masks")
        return _flatnonzero(self.parent == index % len(self))

    def __repr__(self) -> str:
        counts = [int((self.level == level).sum()) for level in range(len(LEVEL_NAMES))]
        levels = ", ".join(f"{name}: {count}" for name, count in zip(LEVEL_NAMES, counts))
        return f"Hierarchy(masks={len(self)}, {levels}, cover={self.cover:g})"


def coverage_matrix(masks: Masks) -> tuple[np.ndarray, np.ndarray]:
    """All pairwise intersections of K masks.

    Args:
        masks: (K, H, W) bool or integer (non-zero = inside; uint8 and bool are read without
            a copy) NumPy array or torch tensor (CPU or CUDA), or a list of COCO RLE dicts
            (``{"size": [H, W], "counts": str | bytes | list}``, as pycocotools writes them)
            of one image size — RLEs are not decoded. An empty list gives (0, 0) results.

    Returns:
        ``(intersections, areas)``: (K, K) int64 ``|M_i ∩ M_j|`` and its (K,) diagonal; torch
        tensors on the masks' device for CUDA masks.

    Raises:
        ValueError: masks that are not (K, H, W), of a float (soft) dtype, or RLEs that are
            malformed, of different sizes, or whose runs do not cover their size.
    """
    if _cuda.is_cuda_tensor(masks):
        return _cuda.coverage_matrix(masks)
    native = cpu_module()
    if isinstance(masks, (list, tuple)) and len(masks) == 0:  # no masks, no size needed
        intersections = np.zeros((0, 0), dtype=np.int64)
    elif _is_rle_list(masks):
        runs, num_pixels = _rle_runs(masks)
        intersections = native.coverage_matrix_runs(runs, num_pixels)
    else:
        intersections = native.coverage_matrix(_flat_masks(masks))
    return intersections, np.diagonal(intersections).copy()


def build_hierarchy(
    masks: Masks | None = None,
    cover: float = PSEUDO_LABEL_COVER,
    *,
    intersections: np.ndarray | torch.Tensor | None = None,
) -> Hierarchy:
    """Coverage forest and levels of K masks (see the module docstring for the rule).

    Args:
        masks: as for :func:`coverage_matrix`; or None with ``intersections``.
        cover: coverage threshold in (0, 1]; 0.9 for pseudo-labels (paper), 0.75 for the
            teacher's detections.
        intersections: a (K, K) integer intersection matrix (diagonal = areas), e.g. from
            :func:`coverage_matrix`, instead of masks.

    Returns:
        A :class:`Hierarchy`: ``parent`` (K,) int32 (-1: root), ``depth`` (K,) int32,
        ``level`` (K,) int8 (0 whole, 1 part, 2 subpart), ``intersections`` (K, K) int64.
        CUDA masks or intersections give one of torch tensors on their device.

    Raises:
        ValueError: both or neither of ``masks`` and ``intersections``; masks
            :func:`coverage_matrix` refuses; an intersection matrix that is not square,
            integer, non-negative, symmetric and within its diagonal; ``cover`` outside (0, 1].
    """
    cover = _check_fraction(cover, "cover")
    intersections = _intersections_of(masks, intersections)
    if _cuda.is_cuda_tensor(intersections):
        forest = _cuda.build_forest(intersections, cover)
    else:
        forest = cpu_module().build_forest(intersections, cover)
    return Hierarchy(intersections=intersections, cover=cover, **forest)


def build_hierarchy_batch(
    batch: Sequence[np.ndarray | torch.Tensor],
    cover: float = PSEUDO_LABEL_COVER,
    num_threads: int | None = None,
) -> list[Hierarchy]:
    """:func:`build_hierarchy` for many images' mask stacks on native threads (GIL released).

    Args:
        batch: a sequence of (K_i, H_i, W_i) bool or integer mask stacks, NumPy arrays or CPU
            tensors (sizes may differ; no RLEs). CUDA tensors (all on one device) are
            processed on it in one pass, and give Hierarchies of torch tensors there.
        cover: as for :func:`build_hierarchy`.
        num_threads: worker threads, 1 to 1024; None uses every hardware thread (CPU path
            only). The results do not depend on it.

    Returns:
        One :class:`Hierarchy` per stack, in input order (an empty list for an empty batch).

    Raises:
        ValueError: a stack that is not (K, H, W) or holds floats (named ``batch[i]``), CUDA
            and CPU stacks mixed, ``cover`` outside (0, 1], bad ``num_threads``.
    """
    cover = _check_fraction(cover, "cover")
    threads = check_num_threads(num_threads)
    try:
        batch = list(batch)
    except TypeError:
        raise ValueError(
            f"batch must be a sequence of mask stacks, got {type(batch).__name__}"
        ) from None
    if any(_cuda.is_cuda_tensor(masks) for masks in batch):
        return [Hierarchy(cover=cover, **item) for item in _cuda.hierarchy_batch(batch, cover)]
    stacks = [_flat_masks(masks, name=f"batch[{i}]") for i, masks in enumerate(batch)]
    raw = cpu_module().hierarchy_batch(stacks, cover, threads)
    return [
        Hierarchy(
            parent=item["parent"],
            depth=item["depth"],
            level=item["level"],
            intersections=item["intersections"],
            cover=cover,
        )
        for item in raw
    ]


def dedup_masks(
    masks: Masks | None = None,
    iou: float = 1.0,
    *,
    intersections: np.ndarray | torch.Tensor | None = None,
) -> np.ndarray | torch.Tensor:
    """Indices of the masks to keep when identical or near-identical masks repeat.

    Masks are taken in index order; a mask is dropped when its IoU with a mask already kept is
    ``>= iou``, so the first of a group of duplicates is the one kept (the ensemble lists its
    thresholds' masks in a fixed order, which makes the choice reproducible). ``iou=1.0`` (the
    default) removes exact duplicates only. Two empty masks count as identical.

    Args:
        masks: as for :func:`coverage_matrix`; or None with ``intersections``.
        iou: the IoU in (0, 1] at which a mask counts as a duplicate of a kept one.
        intersections: a (K, K) intersection matrix instead of masks, as for
            :func:`build_hierarchy`.

    Returns:
        (K',) int64 ascending indices (a torch tensor on the device of CUDA input).

    Raises:
        ValueError: as :func:`build_hierarchy` (``iou`` in place of ``cover``).
    """
    iou = _check_fraction(iou, "iou")
    intersections = _intersections_of(masks, intersections)
    if _cuda.is_cuda_tensor(intersections):
        return _cuda.dedup_masks(intersections, iou)
    return cpu_module().dedup_masks(intersections, iou).astype(np.int64)


def _intersections_of(masks, intersections):
    """The (K, K) matrix from exactly one of ``masks`` (computed) or ``intersections`` (checked)."""
    if (masks is None) == (intersections is None):
        raise ValueError("pass either masks or intersections=, not both and not neither")
    if intersections is None:
        return coverage_matrix(masks)[0]
    return check_intersections(intersections)


def check_intersections(intersections) -> np.ndarray:
    """Validate a (K, K) intersection matrix: symmetric, non-negative, within the areas.

    Returns it C-contiguous int64: a NumPy array, or for a CUDA tensor a tensor on its device.
    """
    cuda = _cuda.is_cuda_tensor(intersections)
    matrix = intersections if cuda else np.asarray(intersections)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        shape = tuple(matrix.shape)
        raise ValueError(f"intersections must be a square (K, K) matrix, got shape {shape}")
    integer = _cuda.is_integer_tensor(matrix) if cuda else np.issubdtype(matrix.dtype, np.integer)
    if matrix.shape[0] and not integer:
        raise ValueError(f"intersections must hold integer pixel counts, got {matrix.dtype}")
    matrix = _cuda.as_int64(matrix) if cuda else native_layout(matrix, np.int64)
    areas = matrix.diagonal()
    if (matrix < 0).any():
        raise ValueError("intersections must be non-negative")
    if (matrix != matrix.T).any():
        raise ValueError("intersections must be symmetric")
    if ((matrix > areas[:, None]) | (matrix > areas[None, :])).any():
        raise ValueError("an intersection exceeds the area of one of its masks (the diagonal)")
    return matrix


def _flat_masks(masks, name: str = "masks") -> np.ndarray:
    """(K, H, W) masks as a C-contiguous (K, H*W) uint8 array (a view where possible)."""
    if is_torch_tensor(masks):
        if masks.device.type != "cpu":  # CUDA tensors were sent to hassod._cuda_hierarchy
            raise ValueError(f"{name} is on {masks.device}; pass a CPU or CUDA tensor")
        masks = masks.detach().numpy()
    if _is_rle_list(masks):  # only build_hierarchy_batch gets here with RLEs
        raise ValueError(
            f"{name} is a list of COCO RLE dicts, which this function does not take: decode "
            "them (pycocotools.mask.decode) or pass them to build_hierarchy"
        )
    try:
        array = np.asarray(masks)
    except ValueError:  # NumPy's "inhomogeneous shape": masks of different sizes
        array = None
    if array is None or array.dtype == object or (array.ndim == 0 and not hasattr(masks, "shape")):
        raise ValueError(
            f"{name} must be a (K, H, W) bool or integer array or tensor, or a sequence of "
            f"(H, W) masks of one size (or of COCO RLE dicts only), got {_described(masks)}"
        )
    if array.ndim != 3:
        raise mask_shape_error(name, array.shape)
    if array.dtype == np.bool_:
        array = array.view(np.uint8)
    elif array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.integer):
            raise soft_mask_error(name, array.dtype)
        array = (array != 0).view(np.uint8)
    return np.ascontiguousarray(array).reshape(array.shape[0], array.shape[1] * array.shape[2])


def _described(masks) -> str:
    """What ``masks`` is, for a refusal: its type, and the shapes in a sequence."""
    if isinstance(masks, (list, tuple)):
        shapes = sorted(
            {str(tuple(np.shape(item))) for item in masks if not isinstance(item, dict)}
        )
        dicts = any(isinstance(item, dict) for item in masks)
        kinds = shapes + (["RLE dicts"] if dicts else [])
        return f"a {type(masks).__name__} of {', '.join(kinds)}"
    return type(masks).__name__


def _flatnonzero(condition):
    """Ascending indices where a (K,) NumPy or torch condition holds (int64, same device)."""
    if is_torch_tensor(condition):
        return condition.nonzero().flatten()
    return np.flatnonzero(condition)


def _is_rle_list(masks) -> bool:
    return isinstance(masks, (list, tuple)) and len(masks) > 0 and isinstance(masks[0], dict)


def _rle_runs(rles: Sequence[dict]) -> tuple[list, int]:
    """Run-length arrays of COCO RLE dicts (all one size) and their pixel count."""
    decode = cpu_module().decode_rle
    sizes, runs = set(), []
    for index, rle in enumerate(rles):
        where = f"masks[{index}]"
        if not isinstance(rle, dict) or "counts" not in rle or "size" not in rle:
            raise ValueError(f"{where} is not a COCO RLE dict with 'size' and 'counts'")
        height, width = _rle_size(rle["size"], where)
        counts = rle["counts"]
        if isinstance(counts, (str, bytes)):
            lengths = _from_counts_string(decode, counts, where)
        else:
            lengths = _rle_counts_list(counts, where)
        _check_coverage(int(lengths.sum(dtype=np.int64)), height, width, where)
        sizes.add((height, width))
        runs.append(lengths)
    if len(sizes) != 1:
        raise ValueError(f"all RLE masks must have the same size, got {sorted(sizes)}")
    height, width = sizes.pop()
    return runs, height * width


def check_rle(rle: dict, where: str) -> None:
    """ValueError naming ``where`` unless ``rle`` (a COCO RLE dict, compressed or not) is
    well formed and its runs cover exactly height x width pixels: pycocotools reads past the
    end of a truncated string and COCOeval's IoU loops forever on one. Counts the pixels
    natively, without building the run arrays (results files hold 10**5..10**6 masks)."""
    height, width = _rle_size(rle.get("size"), where)
    counts = rle.get("counts")
    if isinstance(counts, (str, bytes)):
        covered = _from_counts_string(cpu_module().rle_pixel_count, counts, where)
    else:
        covered = int(_rle_counts_list(counts, where).sum(dtype=np.int64))
    _check_coverage(covered, height, width, where)


def _from_counts_string(read, counts: str | bytes, where: str):
    try:
        return read(counts.decode("ascii") if isinstance(counts, bytes) else counts)
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{where}: invalid RLE counts string ({error})") from error


def _check_coverage(covered: int, height: int, width: int, where: str) -> None:
    if covered != height * width:
        raise ValueError(
            f"{where}: RLE runs cover {covered} pixels, but its size {height}x{width} has "
            f"{height * width}"
        )


def _rle_size(size, where: str) -> tuple[int, int]:
    try:
        values = [operator.index(v) for v in size if not isinstance(v, bool)]
    except TypeError:
        values = None
    if values is None or len(values) != 2 or min(values) < 0:
        raise ValueError(
            f"{where}: RLE 'size' must be [height, width] non-negative integers, got {size!r}"
        )
    return values[0], values[1]


def _rle_counts_list(counts, where: str) -> np.ndarray:
    """Uncompressed RLE counts (a list of run lengths) as uint32, checked."""
    try:
        array = np.asarray(counts)
    except (TypeError, ValueError):
        array = None
    if array is None or array.ndim != 1 or (array.size and array.dtype.kind not in "iu"):
        raise ValueError(f"{where}: RLE 'counts' must be a string or a flat list of integers")
    if array.size and (array.min() < 0 or array.max() > np.iinfo(np.uint32).max):
        raise ValueError(f"{where}: RLE run lengths must lie in [0, 2**32 - 1]")
    return array.astype(np.uint32)


def _check_fraction(value, name: str) -> float:
    number = real_number(value, name, "a number in (0, 1]")
    if not math.isfinite(number) or not 0.0 < number <= 1.0:
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")
    return number
