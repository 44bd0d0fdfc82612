"""Dense CRF for batches of images with torch operations: the GPU path of :mod:`hassod.crf`.

The same model and numerical conventions as the native CPU CRF (csrc/crf, equal to pydensecrf's
``DenseCRF2D`` with the authors' kernels): the permutohedral lattice is built with densecrf's
elevation, rounding, ranks and barycentric weights, the blur weights are (1/2, 1, 1/2) along
each lattice axis, the kernels are normalised symmetrically and the unary is ``clip(P, 1e-5,
1)``. Only the order of floating-point summation differs (the GPU sums in its own order), so Q
agrees with the CPU path to a few 1e-6 (tests/test_crf_torch.py), not bit for bit.

How a batch runs on one device:

* **Lattices.** Every image's points (pixels) get their simplex corners with vectorised
  arithmetic; the corners' integer keys, prefixed with the image's index so that images never
  share a vertex, are packed into one int64 each and numbered with ``torch.unique``. Blur
  neighbours are found with ``torch.searchsorted`` on the sorted keys.
* **Filtering** is three sparse matrix products per kernel and step: splat (vertices x points),
  one blur matrix per lattice axis (vertices x vertices, three entries a row) and slice (points
  x vertices), all CSR, applied to every label of every image of the batch at once.
* **Label sets.** Each image can bring several label sets (the discovery pipeline runs one CRF
  per merge threshold on the same image); they are columns side by side, each padded to the
  batch's largest count, and share the lattices. The softmax runs per label set; padded columns
  hold zero probability and stay exactly zero.

The CUDA path is chosen automatically by :func:`hassod.crf.dense_crf` and
:func:`hassod.crf.dense_crf_batch` for CUDA tensors; :class:`CrfBatch` is the direct form and
also runs on the CPU (tests compare it with the native CPU CRF there).

Limits: lattice keys must fit in 63 bits, which holds for images and bandwidths of ordinary size
(a 4096 x 4096 image with the default kernels uses under 50 of them); features so spread that
they do not fit raise ValueError (smaller batches, or the CPU path, which has no such limit).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

from hassod import crf_triton
from hassod._checks import native_layout
from hassod.crf import (
    DEFAULT_BILATERAL,
    DEFAULT_GAUSSIAN,
    DEFAULT_ITERATIONS,
    _check_bilateral,
    _check_gaussian,
    check_image_shape,
    check_iterations,
    check_probs_shape,
    check_same_length,
)

#: Probabilities are clipped to [MIN_PROBABILITY, 1] (pydensecrf's unary_from_softmax clip).
MIN_PROBABILITY = 1e-5
# Lattice coordinates are integers held in float32 while the lattice is built: keep them well
# inside the range where float32 represents integers exactly (the native code's limit too).
_MAX_ELEVATED = 2.0**22


#: How the lattice filter runs (``"auto"``, the default, picks: :func:`auto_method`):
#: ``"spmm"`` (sparse CSR matrix products),
#: ``"gather"`` (index_add / index_select per simplex corner and blur neighbour),
#: ``"hybrid"`` (matrix products for splat and slice, index_select for the blur) or
#: ``"triton"`` (:mod:`hassod.crf_triton`: gather kernels with the mean-field update fused into
#: the slice; label columns in float32 or float16).
METHODS = ("spmm", "gather", "hybrid", "triton")
#: Prefix of the stage names this module gives torch.profiler (lattice, vertices, neighbours,
#: normalisation, iterations, ...).
STAGE_PREFIX = "hassod.crf_torch: "
#: Storage types of the label columns (``precision``); float16 needs ``method="triton"``.
PRECISIONS = tuple(crf_triton.STORAGE_DTYPES)


@dataclass
class _Lattice:
    """One kernel's permutohedral lattice over a batch's points, as index arrays."""

    num_vertices: int
    entry_vertex: torch.Tensor  # (N, d+1) vertex of each point's simplex corners
    neighbours: torch.Tensor  # (d+1, 2, M) blur neighbours along each axis, M where missing
    vertex_crow: torch.Tensor  # (M+1,) entries of vertex v: by_vertex[crow[v] : crow[v+1]]
    by_vertex: torch.Tensor  # (N (d+1),) flat entry indices ordered by vertex (stable)

    @cached_property
    def blur_matrices(self) -> list[torch.Tensor]:
        """d+1 of (M, M) CSR: 1 on the diagonal, 1/2 per neighbour along the axis."""
        num_vertices = self.num_vertices
        device = self.neighbours.device
        vertices = torch.arange(num_vertices, device=device)
        weights = torch.tensor([0.5, 1.0, 0.5], device=device).expand(num_vertices, 3)
        matrices = []
        for minus, plus in self.neighbours:
            columns, order = torch.sort(torch.stack([minus, vertices, plus], dim=1), dim=1)
            present = columns < num_vertices
            crow = torch.zeros(num_vertices + 1, dtype=torch.int64, device=device)
            crow[1:] = torch.cumsum(present.sum(dim=1), 0)
            matrices.append(
                _csr(
                    crow,
                    columns[present],
                    torch.gather(weights, 1, order)[present],
                    (num_vertices, num_vertices),
                )
            )
        return matrices

    @cached_property
    def blur_neighbours(self) -> torch.Tensor:
        """(d+1, 2, M) neighbours with -1 where missing, int32 where the vertices allow."""
        marked = torch.where(self.neighbours < self.num_vertices, self.neighbours, -1)
        return marked.to(_index_dtype(self.num_vertices)).contiguous()

    @cached_property
    def splat_points(self) -> torch.Tensor:
        """(N (d+1),) the point of each entry, in vertex order (the splat's CSR columns)."""
        corners = self.entry_vertex.shape[1]
        points = torch.div(self.by_vertex, corners, rounding_mode="floor")
        return points.to(_index_dtype(self.entry_vertex.shape[0])).contiguous()

    @cached_property
    def splat_plan(self) -> crf_triton.SplatPlan:
        """The vertices split by degree for the Triton splat (:func:`crf_triton.splat_plan`)."""
        return crf_triton.splat_plan(self.vertex_crow)

    @cached_property
    def corner_vertex(self) -> torch.Tensor:
        """(N, d+1) entry_vertex as int32 where the vertices allow (the slice's gathers)."""
        return self.entry_vertex.to(_index_dtype(self.num_vertices)).contiguous()


@dataclass
class _Kernel:
    """One pairwise term of a batch: its lattice and the splat / slice weights of each entry."""

    lattice: _Lattice
    splat_weight: torch.Tensor  # (N, d+1) barycentric weight * norm(point)
    slice_weight: torch.Tensor  # (N, d+1) barycentric weight * alpha * norm(point) * compat

    @property
    def num_vertices(self) -> int:
        return self.lattice.num_vertices

    @cached_property
    def splat_matrix(self) -> torch.Tensor:
        """(M, N) CSR."""
        lattice = self.lattice
        return _csr(
            lattice.vertex_crow,
            lattice.splat_points,
            self.splat_values,
            (lattice.num_vertices, lattice.entry_vertex.shape[0]),
        )

    @cached_property
    def slice_matrix(self) -> torch.Tensor:
        """(N, M) CSR, columns sorted within each row."""
        lattice = self.lattice
        num_points, corners = lattice.entry_vertex.shape
        sorted_vertex, slot = torch.sort(lattice.entry_vertex, dim=1)
        return _csr(
            torch.arange(0, num_points * corners + 1, corners, device=sorted_vertex.device),
            sorted_vertex.reshape(-1),
            torch.gather(self.slice_weight, 1, slot).reshape(-1),
            (num_points, lattice.num_vertices),
        )

    @cached_property
    def splat_values(self) -> torch.Tensor:
        """(N (d+1),) splat weights in vertex order (the Triton splat's CSR values)."""
        return self.splat_weight.reshape(-1)[self.lattice.by_vertex].contiguous()

    def filter(self, values: torch.Tensor, method: str = "spmm") -> torch.Tensor:
        """Splat, blur along every axis, slice: (N, C) -> (N, C)."""
        if method == "triton":
            return self.filter_triton(values)
        if method == "gather":
            vertex_values = self.splat_gather(values)
        else:
            vertex_values = self.splat_matrix @ values
        if method == "spmm":
            for blur in self.lattice.blur_matrices:
                vertex_values = blur @ vertex_values
        else:
            vertex_values = self.blur_gather(vertex_values)
        if method == "gather":
            return self.slice_gather(vertex_values)
        return self.slice_matrix @ vertex_values

    def blurred_triton(
        self, values: torch.Tensor, out: torch.Tensor, scratch: torch.Tensor
    ) -> torch.Tensor:
        """Splat and blur with the Triton kernels: (N, C) -> ``out`` (M, C); ``scratch`` is a
        second (M, C) buffer. Both contiguous, of a storage dtype."""
        lattice = self.lattice
        # The blurs alternate between the two buffers: start where the last one lands in out.
        passes = crf_triton.blur_pass_count(len(lattice.blur_neighbours))
        start, other = (out, scratch) if passes % 2 == 0 else (scratch, out)
        self.splat_triton(values, start)
        return crf_triton.blur_axes(start, other, lattice.blur_neighbours)

    def splat_triton(self, values: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The Triton splat with the launch settings of :mod:`crf_triton` (``SPLAT_ROWS``,
        ``SPLAT_BY_DEGREE``): (N, C) -> ``out`` (M, C), both contiguous."""
        lattice = self.lattice
        plan = lattice.splat_plan if crf_triton.SPLAT_BY_DEGREE else None
        return crf_triton.splat(
            lattice.vertex_crow, lattice.splat_points, self.splat_values, values, out,
            plan=plan, rows=crf_triton.SPLAT_ROWS,
        )  # fmt: skip

    def filter_triton(self, values: torch.Tensor) -> torch.Tensor:
        values = values.contiguous()
        vertex_values = values.new_empty(self.num_vertices, values.shape[1])
        self.blurred_triton(values, vertex_values, torch.empty_like(vertex_values))
        out = torch.empty(values.shape, dtype=torch.float32, device=values.device)
        return crf_triton.slice_update(
            out, vertex_values, self.lattice.corner_vertex, self.slice_weight
        )

    def splat_gather(self, values: torch.Tensor) -> torch.Tensor:
        """(N, C) -> (M, C) with one index_add per simplex corner."""
        entry_vertex = self.lattice.entry_vertex
        vertex_values = values.new_zeros(self.num_vertices, values.shape[1])
        for r in range(entry_vertex.shape[1]):
            vertex_values.index_add_(
                0, entry_vertex[:, r], values * self.splat_weight[:, r : r + 1]
            )
        return vertex_values

    def blur_gather(self, vertex_values: torch.Tensor) -> torch.Tensor:
        """(M, C) -> (M, C): per axis, old + (old[n1] + old[n2]) / 2 with index_select."""
        # Row M (zero) stands for missing neighbours.
        padded = torch.cat([vertex_values, vertex_values.new_zeros(1, vertex_values.shape[1])])
        for pair in self.lattice.neighbours:
            blurred = padded[:-1] + 0.5 * (padded[pair[0]] + padded[pair[1]])
            padded = torch.cat([blurred, padded[-1:]])
        return padded[:-1]

    def slice_gather(self, vertex_values: torch.Tensor) -> torch.Tensor:
        """(M, C) -> (N, C): the weighted corners' rows added up."""
        entry_vertex = self.lattice.entry_vertex
        out = None
        for r in range(entry_vertex.shape[1]):
            term = vertex_values[entry_vertex[:, r]] * self.slice_weight[:, r : r + 1]
            out = term if out is None else out + term
        return out


def _as_image(image, device: torch.device, name: str) -> torch.Tensor:
    """(H, W, 3) uint8 image as a tensor on ``device``, with the CPU path's checks."""
    if isinstance(image, torch.Tensor):
        if image.dtype != torch.uint8:
            raise ValueError(
                f"{name} must be uint8 RGB (got {image.dtype}); scale to 0..255 and convert "
                "with .to(torch.uint8)"
            )
        tensor = image
    else:
        array = np.asarray(image)
        if array.dtype != np.uint8:
            raise ValueError(
                f"{name} must be uint8 RGB (got {array.dtype}); scale to 0..255 and convert "
                "with .astype(np.uint8)"
            )
        tensor = _from_numpy(array)
    check_image_shape(tensor.shape, name)
    return tensor.to(device)


def _as_probs(probs, shape: tuple[int, int], device: torch.device, name: str) -> torch.Tensor:
    """(K, H, W) probabilities as float32 on ``device``, checked finite and >= 0."""
    if isinstance(probs, torch.Tensor):
        tensor = probs
        if tensor.dtype == torch.bool or tensor.is_complex():
            raise ValueError(
                f"{name} must hold real numbers (float or integer), got {tensor.dtype}"
            )
    else:
        array = np.asarray(probs)
        if array.dtype == np.bool_ or not (
            np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)
        ):
            raise ValueError(f"{name} must hold real numbers (float or integer), got {array.dtype}")
        tensor = _from_numpy(array)
    check_probs_shape(tensor.shape, shape, name)
    tensor = tensor.to(device=device, dtype=torch.float32)
    if not bool(torch.logical_and(tensor >= 0, tensor <= torch.finfo(torch.float32).max).all()):
        raise ValueError(f"{name}: probabilities must be finite and >= 0")
    return tensor


def _from_numpy(array: np.ndarray) -> torch.Tensor:
    array = native_layout(array)  # torch refuses byte-swapped arrays
    if not array.flags.writeable:  # torch wants writable memory; copy read-only inputs
        array = array.copy()
    return torch.from_numpy(array)


def _scales(dims: int) -> list[float]:
    """densecrf's elevation scale factors, rounded to float32 as it stores them."""
    corners = dims + 1
    inv_std_dev = float(np.float32(math.sqrt(2.0 / 3.0) * corners))
    return [
        float(np.float32(1.0 / math.sqrt(float((i + 2) * (i + 1))) * inv_std_dev))
        for i in range(dims)
    ]


def _simplices(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Enclosing simplex of every point, in float32 exactly as densecrf (and csrc/crf) do.

    Returns ``(remainder0 (N, d) int64, rank (N, d+1) int64, weights (N, d+1) float32)``.
    """
    num_points, dims = features.shape
    corners = dims + 1
    scale = _scales(dims)
    down = float(np.float32(1.0) / np.float32(corners))
    elevated = torch.empty(num_points, corners, dtype=torch.float32, device=features.device)
    running = torch.zeros(num_points, dtype=torch.float32, device=features.device)
    for j in range(dims, 0, -1):
        scaled = features[:, j - 1] * scale[j - 1]
        elevated[:, j] = running - scaled * float(j)
        running = running + scaled
    elevated[:, 0] = running
    if not bool((elevated.abs() < _MAX_ELEVATED).all()):
        raise ValueError(
            "lattice features are not finite or too large (is a kernel's bandwidth far too small?)"
        )
    # Nearest remainder-0 point: coordinates rounded half to even to multiples of d+1.
    rounded = torch.round(elevated * down)
    remainder0 = rounded * float(corners)
    shift = rounded.sum(dim=1).to(torch.int64)
    offset = elevated - remainder0
    rank = _ranks(offset)
    # Back onto the plane when the rounded coordinates do not sum to zero.
    rank += shift[:, None]
    below = rank < 0
    above = rank >= corners
    rank = torch.where(below, rank + corners, torch.where(above, rank - corners, rank))
    remainder0 = torch.where(
        below,
        remainder0 + float(corners),
        torch.where(above, remainder0 - float(corners), remainder0),
    )
    # Barycentric coordinates: each slot gets one + and one - term, so the order is immaterial.
    values = (elevated - remainder0) * down
    bary = torch.zeros(num_points, corners + 1, dtype=torch.float32, device=features.device)
    bary.scatter_add_(1, dims - rank, values)
    bary.scatter_add_(1, dims - rank + 1, -values)
    bary[:, 0] = bary[:, 0] + (1.0 + bary[:, corners])
    return remainder0[:, :dims].to(torch.int64), rank, bary[:, :corners].contiguous()


def _ranks(offset: torch.Tensor) -> torch.Tensor:
    """(N, d+1) int64 rank of each coordinate's offset, ties going to the later coordinate:
    densecrf compares every pair i < j once (offset_i < offset_j ranks i up, else j). In one
    broadcast, i counts the later j with a larger offset and the earlier j with one at least as
    large: a few passes over (N, d+1, d+1) instead of six per pair over (N, d+1) columns."""
    corners = offset.shape[1]
    mine, theirs = offset[:, :, None], offset[:, None, :]
    later = torch.ones(corners, corners, dtype=torch.bool, device=offset.device).triu(1)
    return ((later & (theirs > mine)) | (later.T & (theirs >= mine))).sum(dim=2)


def _packed_corner_keys(
    remainder0: torch.Tensor, rank: torch.Tensor, point_image: torch.Tensor, num_images: int
) -> tuple[torch.Tensor, list[int]]:
    """Integer keys of every point's simplex corners, each packed with its image index into
    one int64 (mixed radix, the first coordinate most significant, with room for the blur
    neighbours), so that sorting the packed keys sorts (image, key) lexicographically.

    Returns the packed keys (N, d+1), the radix stride of each coordinate, and the size of
    the key space (every key and every blur neighbour's key lies in [0, size)).
    """
    dims = remainder0.shape[1]
    corners = dims + 1
    # Corner r adds r to the coordinates of rank <= d - r and r - (d+1) to the others: every
    # key coordinate lies within d of the point's remainder-0 coordinate.
    low = (remainder0.min(dim=0).values - dims).tolist()
    high = (remainder0.max(dim=0).values + dims).tolist()
    margin = dims + 2  # neighbours move a coordinate by up to d
    strides = []
    total = 1
    for i in reversed(range(dims)):
        strides.append(total)
        total *= high[i] - low[i] + 1 + 2 * margin
    strides.reverse()
    if total * num_images >= 2**62:
        raise ValueError(
            "lattice keys do not fit in 63 bits for this batch (features too spread: a very "
            "small bandwidth or a huge image); use fewer images per batch or the CPU path"
        )
    device = remainder0.device
    offset = torch.tensor([lo - margin for lo in low], dtype=torch.int64, device=device)
    stride = torch.tensor(strides, dtype=torch.int64, device=device)
    base = ((remainder0 - offset) * stride).sum(dim=1) + point_image * total
    # packed(r) = base + r * sum(strides) - (d+1) * (strides of the coordinates of rank > d-r),
    # the last term a suffix sum over the coordinates ordered by rank (no (N, d+1, d) keys).
    by_rank = torch.zeros(remainder0.shape[0], corners + 1, dtype=torch.int64, device=device)
    by_rank.scatter_(1, rank[:, :dims], stride.expand(remainder0.shape[0], dims))
    # above[:, k]: strides of ranks >= k, a suffix sum by column adds: torch's cumsum along
    # a row of 7 int64 took 95 ms per kernel for 64 photos on the H100 (its innermost-dim scan
    # suits long rows), most of the lattice's construction time.
    above = torch.empty_like(by_rank)
    running = torch.zeros_like(by_rank[:, 0])
    for k in range(corners, -1, -1):
        running = running + by_rank[:, k]
        above[:, k] = running
    r = torch.arange(corners, device=device)
    packed = base[:, None] + r * sum(strides) - corners * above[:, dims + 1 - r]
    return packed, strides, total * num_images


def _stage(name: str):
    """A named range for torch.profiler (benchmarks/bench_crf_gpu.py's stage breakdown)."""
    return torch.profiler.record_function(f"{STAGE_PREFIX}{name}")


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape) -> torch.Tensor:
    # 32-bit indices where they fit (the sparse libraries' fast path).
    index_type = torch.int32 if max(col.numel(), *shape) < 2**31 else torch.int64
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(
            crow.to(index_type), col.to(index_type), values, size=shape, check_invariants=False
        )


def _index_dtype(count: int) -> torch.dtype:
    """int32 for indices below ``count`` where it fits (half the bytes to move), else int64."""
    return torch.int32 if count < 2**31 else torch.int64


def _build_lattice(features: torch.Tensor, point_image: torch.Tensor, num_images: int):
    """The lattice of the batch's points ``features`` (N, d) and their barycentric weights."""
    device = features.device
    num_points, dims = features.shape
    corners = dims + 1
    with _stage("simplices"):
        remainder0, rank, weights = _simplices(features)
        packed, strides, key_space = _packed_corner_keys(remainder0, rank, point_image, num_images)
    with _stage("vertices"):
        if key_space < 2**31:  # half the radix passes (the gaussian kernel's keys, typically)
            packed = packed.to(torch.int32)
        # One stable sort numbers the vertices (in key order) and lists each vertex's entries.
        sorted_keys, by_vertex = torch.sort(packed.reshape(-1), stable=True)
        first = torch.ones_like(sorted_keys, dtype=torch.bool)
        first[1:] = sorted_keys[1:] != sorted_keys[:-1]
        vertex_starts = torch.nonzero(first).flatten()
        keys = sorted_keys[vertex_starts]
        num_vertices = keys.numel()
        entry_vertex = torch.empty_like(by_vertex)
        entry_vertex[by_vertex] = torch.cumsum(first, 0) - 1
        entry_vertex = entry_vertex.reshape(num_points, corners)

    # Blur neighbours along axis j: minus / plus (d+1) e_j - 1 in the plane, i.e. every
    # coordinate -1 / +1 except coordinate j at +d / -d.
    neighbours = torch.empty(corners, 2, num_vertices, dtype=torch.int64, device=device)
    with _stage("neighbours"):
        for j in range(corners):
            for side, sign in enumerate((1, -1)):
                offset = sum(-sign * s for s in strides) + (
                    sign * (dims + 1) * strides[j] if j < dims else 0
                )
                query = keys + offset
                index = torch.searchsorted(keys, query).clamp_(max=num_vertices - 1)
                neighbours[j, side] = torch.where(keys[index] == query, index, num_vertices)

    vertex_crow = torch.full((num_vertices + 1,), by_vertex.numel(), device=device)
    vertex_crow[:-1] = vertex_starts
    return _Lattice(num_vertices, entry_vertex, neighbours, vertex_crow, by_vertex), weights


def _build_kernel(
    features: torch.Tensor,
    point_image: torch.Tensor,
    num_images: int,
    compat: float,
    method: str = "spmm",
) -> _Kernel:
    """One kernel's lattice for the batch's points ``features`` (N, d), normalised
    symmetrically; ``method`` is the filter that computes the normalisation."""
    with _stage("lattice"):
        lattice, weights = _build_lattice(features, point_image, num_images)
    dims = features.shape[1]
    # Symmetric normalisation: 1 / sqrt(filter of ones), the filter being densecrf's
    # alpha * slice(blur(splat(1))) with the plain barycentric weights.
    alpha = float(np.float32(1.0) / (np.float32(1.0) + np.float32(2.0) ** np.float32(-dims)))
    ones = torch.ones(features.shape[0], 1, dtype=torch.float32, device=features.device)
    with _stage("normalisation"):
        filtered = _Kernel(lattice, weights, weights * alpha).filter(ones, method)[:, 0]
        norm = (1.0 / torch.sqrt(filtered.double() + 1e-20)).float()
    return _Kernel(lattice, weights * norm[:, None], weights * alpha * norm[:, None] * compat)


def auto_method(device: torch.device) -> str:
    """``method="auto"``: the Triton kernels on a CUDA device when Triton is importable (the
    same float32 arithmetic, summed in another order; 116.9 against 41.4 images/s for the
    sparse products on an H100, benchmarks/README.md), else the sparse products (Triton on a
    CPU tensor only runs interpreted)."""
    return "triton" if device.type == "cuda" and crf_triton.available() else "spmm"


class CrfBatch:
    """The CRF kernels of a batch of images on one device, for any number of label sets each.

    Args:
        images: sequence of (H_i, W_i, 3) uint8 RGB images (numpy arrays or tensors; sizes may
            differ).
        gaussian, bilateral: kernel parameters as in :class:`hassod.crf.CrfLattice`.
        device: where to run; None uses the first image's device if it is a tensor, else CUDA
            when available, else the CPU.
        method: how the lattice filter runs (:data:`METHODS`): sparse matrix products
            (``"spmm"``), per-corner index_add / index_select (``"gather"``), products for
            splat and slice with index_select for the blur (``"hybrid"``), or Triton kernels
            with the mean-field update fused into the slice (``"triton"``; compiled on CUDA,
            interpreted, very slowly, on the CPU); ``"auto"`` (default, :func:`auto_method`):
            ``"triton"`` on CUDA when Triton is importable, else ``"spmm"``.
        precision: storage type of the label columns during inference, ``"float32"``
            (default) or ``"float16"`` (``method="triton"`` only: half the memory traffic;
            arithmetic stays float32, Q moves by up to about 1e-2).

    Memory: about (N * (4 d + 10) + C * (3 N + 2 M)) * 4 bytes on the device for N pixels in
    the batch, M lattice vertices and C label columns per inference (the label sets' padded
    counts added up): batch accordingly (64 images of 480 x 480 with 82 label columns take
    about 20 GB). ``method="triton"`` keeps C * (2 N + 2 M) values of the storage type
    instead of the products' intermediates.
    """

    def __init__(
        self,
        images: Sequence,
        gaussian: tuple[float, float] | None = DEFAULT_GAUSSIAN,
        bilateral: tuple[float, float, float] | None = DEFAULT_BILATERAL,
        device: str | torch.device | None = None,
        method: str = "auto",
        precision: str = "float32",
    ) -> None:
        images = list(images)
        if not images:
            raise ValueError("images must hold at least one image")
        if method not in ("auto", *METHODS):
            raise ValueError(f"method must be 'auto' or one of {METHODS}, got {method!r}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.device = _pick_device(images[0], device)
        if method == "auto":
            method = auto_method(self.device)
        if precision != "float32" and method != "triton":
            raise ValueError(f"precision={precision!r} needs method='triton'")
        if method == "triton" and not crf_triton.available():
            raise RuntimeError(crf_triton.IMPORT_ERROR)
        self.method = method
        self.precision = precision
        tensors = [_as_image(image, self.device, f"images[{i}]") for i, image in enumerate(images)]
        self.gaussian = _check_gaussian(gaussian)
        self.bilateral = _check_bilateral(bilateral)
        self.shapes = [(int(t.shape[0]), int(t.shape[1])) for t in tensors]
        counts = [h * w for h, w in self.shapes]
        self._offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        point_image = torch.repeat_interleave(
            torch.arange(len(tensors), device=self.device),
            torch.tensor(counts, device=self.device),
        )
        self._point_image = point_image
        self.kernels: dict[str, _Kernel] = {}
        if self.gaussian[1] != 0.0:
            sxy = self.gaussian[0]
            features = torch.cat([_positions(h, w, sxy, self.device) for h, w in self.shapes])
            with _stage("gaussian kernel"):
                self.kernels["gaussian"] = _build_kernel(
                    features, point_image, len(tensors), self.gaussian[1], method
                )
        if self.bilateral[2] != 0.0:
            sxy, srgb, compat = self.bilateral
            features = torch.cat(
                [
                    torch.cat([_positions(h, w, sxy, self.device), _colours(t, srgb)], dim=1)
                    for (h, w), t in zip(self.shapes, tensors)
                ]
            )
            with _stage("bilateral kernel"):
                self.kernels["bilateral"] = _build_kernel(
                    features, point_image, len(tensors), compat, method
                )

    @property
    def num_vertices(self) -> dict[str, int]:
        """Lattice vertices per kernel over the whole batch (0 for a kernel not built)."""
        return {
            name: (self.kernels[name].num_vertices if name in self.kernels else 0)
            for name in ("gaussian", "bilateral")
        }

    def infer(self, probs: Sequence, iterations: int = DEFAULT_ITERATIONS) -> list:
        """Mean-field marginals for every image's label sets.

        Args:
            probs: one entry per image: a (K, H_i, W_i) probability array/tensor, or a sequence
                of them (label sets; every image must bring the same number of sets). Values
                finite and >= 0, clipped to [1e-5, 1], not renormalised.
            iterations: mean-field iterations (0 returns softmax(-unary)).

        Returns:
            The same nesting with (K, H_i, W_i) float32 Q tensors on this batch's device.

        Raises:
            FloatingPointError: the messages overflowed (absurd compatibilities, or float16
                storage), so Q would hold NaN.
        """
        probs = list(probs)
        if len(probs) != len(self.shapes):
            raise ValueError(
                f"probs must hold one entry per image ({len(self.shapes)}), got {len(probs)}"
            )
        nested = [not _is_label_set(entry) for entry in probs]
        if any(nested) and not all(nested):
            raise ValueError("probs must be all label sets or all sequences of label sets")
        sets = [list(entry) if nest else [entry] for entry, nest in zip(probs, nested)]
        num_sets = len(sets[0])
        if num_sets == 0 or any(len(entry) != num_sets for entry in sets):
            raise ValueError("every image must bring the same, non-zero number of label sets")
        iterations = check_iterations(iterations)
        tensors = [
            [
                _as_probs(
                    p, self.shapes[i], self.device, f"probs[{i}]" + (f"[{s}]" if nested[0] else "")
                )
                for s, p in enumerate(entry)
            ]
            for i, entry in enumerate(sets)
        ]
        q = self._run(tensors, iterations)
        return q if nested[0] else [entry[0] for entry in q]

    def _run(self, probs: list[list[torch.Tensor]], iterations: int) -> list[list[torch.Tensor]]:
        num_images, num_sets = len(probs), len(probs[0])
        widths = [
            max(int(probs[i][s].shape[0]) for i in range(num_images)) for s in range(num_sets)
        ]
        starts = np.concatenate([[0], np.cumsum(widths)]).astype(np.int64)
        num_points = int(self._offsets[-1])
        num_columns = int(starts[-1])
        if self.method == "triton":  # rows of whole 16-byte groups: aligned vector loads
            group = 16 // crf_triton.STORAGE_DTYPES[self.precision].itemsize
            num_columns = -(-num_columns // group) * group
        clipped = torch.zeros(num_points, num_columns, dtype=torch.float32, device=self.device)
        for i in range(num_images):
            rows = slice(int(self._offsets[i]), int(self._offsets[i + 1]))
            for s in range(num_sets):
                p = probs[i][s]
                clipped[rows, int(starts[s]) : int(starts[s]) + p.shape[0]] = (
                    p.reshape(p.shape[0], -1).clamp(MIN_PROBABILITY, 1.0).T
                )
        # Labels of each image's sets: columns past them are padding (probability 0).
        counts = torch.tensor(
            [[int(probs[i][s].shape[0]) for s in range(num_sets)] for i in range(num_images)],
            device=self.device,
        )
        segments = [slice(int(starts[s]), int(starts[s + 1])) for s in range(num_sets)]
        q = torch.empty_like(clipped)
        q[:, int(starts[-1]) :] = 0.0
        for columns in segments:
            c = clipped[:, columns]
            q[:, columns] = c / c.sum(dim=1, keepdim=True)
        if self.kernels and iterations > 0:
            with _stage("iterations"):
                if self.method == "triton":
                    q = self._iterate_triton(q, clipped, counts, widths, iterations)
                else:
                    point_counts = counts[self._point_image]
                    q = self._iterate_torch(q, clipped, point_counts, segments, iterations)
            if not bool(torch.isfinite(q).all()):
                advice = (
                    "use precision='float32'"
                    if self.precision != "float32"
                    else "check the kernels' compatibilities"
                )
                raise FloatingPointError(
                    f"the CRF's messages overflowed ({self.precision} storage); {advice}"
                )
        out = []
        for i in range(num_images):
            rows = slice(int(self._offsets[i]), int(self._offsets[i + 1]))
            h, w = self.shapes[i]
            out.append(
                [
                    q[rows, int(starts[s]) : int(starts[s]) + probs[i][s].shape[0]]
                    .T.reshape(-1, h, w)
                    .contiguous()
                    for s in range(num_sets)
                ]
            )
        return out

    def _iterate_torch(
        self,
        q: torch.Tensor,
        clipped: torch.Tensor,
        point_counts: torch.Tensor,
        segments: list[slice],
        iterations: int,
    ) -> torch.Tensor:
        """Mean-field steps with the torch filters: (N, C) float32 Q after ``iterations``."""
        # With non-negative compatibilities every message is >= 0 (all lattice weights are).
        nonnegative = self.gaussian[1] >= 0 and self.bilateral[2] >= 0
        for _ in range(iterations):
            total = None
            for kernel in self.kernels.values():
                filtered = kernel.filter(q, self.method)
                total = filtered if total is None else total.add_(filtered)
            for s, columns in enumerate(segments):
                sliced = total[:, columns]
                if nonnegative:
                    # Padding columns hold exactly 0 and the others >= 0, so the row's max is
                    # the real labels' max, and every exponent is <= 0.
                    e = sliced - sliced.amax(dim=1, keepdim=True)
                else:
                    width = columns.stop - columns.start
                    counts = point_counts[:, s : s + 1]
                    real = torch.arange(width, device=self.device)[None, :] < counts
                    top = torch.where(real, sliced, -torch.inf).amax(dim=1, keepdim=True)
                    e = torch.clamp(sliced - top, max=0.0)  # padding: exp(0) * 0
                e = e.exp_().mul_(clipped[:, columns])
                q[:, columns] = e.div_(e.sum(dim=1, keepdim=True))
        return q

    def _iterate_triton(
        self,
        q: torch.Tensor,
        clipped: torch.Tensor,
        counts: torch.Tensor,
        widths: list[int],
        iterations: int,
    ) -> torch.Tensor:
        """Mean-field steps with the Triton kernels, Q stored as ``self.precision``."""
        storage = crf_triton.STORAGE_DTYPES[self.precision]
        column_set, column_rank = (
            t.to(self.device) for t in crf_triton.column_layout(widths, q.shape[1])
        )
        point_image = self._point_image.to(torch.int32)
        counts = counts.to(device=self.device, dtype=torch.int32).contiguous()
        # Every kernel's vertex rows stacked in one array, their corners side by side.
        kernels = list(self.kernels.values())
        starts = np.cumsum([0] + [kernel.num_vertices for kernel in kernels]).tolist()
        index_dtype = _index_dtype(starts[-1])
        corner_vertex = torch.cat(
            [k.lattice.entry_vertex.to(index_dtype) + start for k, start in zip(kernels, starts)],
            dim=1,
        ).contiguous()
        corner_weight = torch.cat([k.slice_weight for k in kernels], dim=1).contiguous()
        vertex_values = q.new_empty((starts[-1], q.shape[1]), dtype=storage)
        scratch = torch.empty_like(vertex_values)
        current = q.to(storage)
        following = torch.empty_like(current)
        clipped = crf_triton.scaled_clipped(clipped, storage)  # read once per iteration
        for iteration in range(iterations):
            for kernel, start, stop in zip(kernels, starts, starts[1:]):
                kernel.blurred_triton(current, vertex_values[start:stop], scratch[start:stop])
            if iteration == iterations - 1:  # the last step writes float32 Q
                following = q
            crf_triton.slice_update(
                following,
                vertex_values,
                corner_vertex,
                corner_weight,
                clipped,
                column_set,
                column_rank,
                point_image,
                counts,
            )
            current, following = following, current
        return q

    def __repr__(self) -> str:
        return (
            f"CrfBatch({len(self.shapes)} images on {self.device}, gaussian={self.gaussian}, "
            f"bilateral={self.bilateral}, vertices={self.num_vertices})"
        )


def dense_crf_batch_torch(
    images: Sequence,
    probs_list: Sequence,
    iterations: int = DEFAULT_ITERATIONS,
    gaussian: tuple[float, float] | None = DEFAULT_GAUSSIAN,
    bilateral: tuple[float, float, float] | None = DEFAULT_BILATERAL,
    device: str | torch.device | None = None,
    max_batch_pixels: int = 4_000_000,
) -> list:
    """:class:`CrfBatch` over consecutive chunks of at most ``max_batch_pixels`` pixels.

    ``probs_list`` entries are label sets or sequences of them, as in :meth:`CrfBatch.infer`.
    Returns float32 tensors on the device.
    """
    images = list(images)
    probs_list = list(probs_list)
    check_same_length(images, probs_list)
    if not images:
        return []
    out: list = []
    start = 0
    while start < len(images):
        stop, pixels = start, 0
        while stop < len(images):
            pixels += _pixels(images[stop])
            if stop > start and pixels > max_batch_pixels:
                break
            stop += 1
        batch = CrfBatch(images[start:stop], gaussian=gaussian, bilateral=bilateral, device=device)
        out.extend(batch.infer(probs_list[start:stop], iterations=iterations))
        start = stop
    return out


def _pixels(image) -> int:
    shape = image.shape if hasattr(image, "shape") else np.asarray(image).shape
    return int(shape[0]) * int(shape[1]) if len(shape) >= 2 else 0


def _is_label_set(entry) -> bool:
    return isinstance(entry, (torch.Tensor, np.ndarray))


def _pick_device(first_image, device) -> torch.device:
    if device is not None:
        try:
            chosen = torch.device(device)
        except (RuntimeError, TypeError):  # torch's "Expected one of cpu, cuda, ipu, ..."
            raise ValueError(f"device must be a torch device name, got {device!r}") from None
        if chosen.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available")
        return chosen
    if isinstance(first_image, torch.Tensor):
        return first_image.device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _positions(height: int, width: int, sxy: float, device: torch.device) -> torch.Tensor:
    """(H*W, 2) features x / sxy, y / sxy in float32, row-major pixels."""
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float32, device=device),
        torch.arange(width, dtype=torch.float32, device=device),
        indexing="ij",
    )
    # A tensor divisor: torch turns division by a Python scalar into a multiplication by its
    # reciprocal, which rounds differently from densecrf's x / sxy.
    divisor = torch.full((height * width,), float(np.float32(sxy)), device=device)
    return torch.stack([xs.reshape(-1) / divisor, ys.reshape(-1) / divisor], dim=1)


def _colours(image: torch.Tensor, srgb: float) -> torch.Tensor:
    """(H*W, 3) features rgb / srgb in float32."""
    colours = image.reshape(-1, 3).to(torch.float32)
    return colours / torch.full_like(colours, float(np.float32(srgb)))
