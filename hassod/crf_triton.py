"""Triton kernels for the batched dense CRF (:mod:`hassod.crf_torch`, ``method="triton"``).

The sparse-product path (``method="spmm"``) streams every label column through memory once per
sparse product and once more per elementwise step of the mean-field update (about twenty passes
over the (points x columns) and (vertices x columns) arrays per iteration). These kernels do the
same arithmetic in fewer passes and can hold the label columns in float16:

* :func:`splat`: one program per lattice vertex gathers its points' rows (CSR by vertex), a
  block of entries at a time (or a tile of vertices per program, one entry each per step; or
  by degree, :func:`splat_plan`: tiles of vertices with few entries, the others alone).
* :func:`blur`: one pass per lattice axis, ``v + (v[minus] + v[plus]) / 2`` over a tile of
  vertices; :func:`blur_pair` does two axes in one pass (:func:`blur_axes` runs them all).
* :func:`slice_update`: gathers every point's simplex corners from both kernels' lattices
  (their vertex values stacked in one array), adds the messages and finishes the mean-field
  step in the same pass (per label set: max, exp, times the clipped probabilities,
  normalise), writing the new Q. Without the probabilities it writes the summed messages
  instead (used once, for the kernels' normalisation).

Label rows are padded to 16 bytes and the kernels get the row width as groups times a
constant (:func:`column_group`), so the compiler can load them 16 bytes at a time.

Arithmetic is float32 whatever the storage type; only the order of summation differs from the
other paths. On CUDA tensors the kernels are compiled by Triton; on CPU tensors they run in
Triton's interpreter (numpy, very slow: for tests on small images only), so the same kernel code
is checked on machines without a GPU.
"""

from __future__ import annotations

import builtins
import operator
import types
from dataclasses import dataclass

import numpy as np
import torch

try:  # Triton ships with Linux CUDA builds of torch; anything else goes without these kernels.
    import triton
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    IMPORT_ERROR: str | None = None
except ImportError as error:  # pragma: no cover - depends on the installation
    triton = None
    IMPORT_ERROR = f"Triton is not importable ({error}); use method='spmm'"

#: Storage types for the label columns (arithmetic is float32 in every case).
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16}
#: Widest row (label columns, all sets together) the fused update handles in one program.
MAX_COLUMNS = 8192
# Elements per program tile: enough loads in flight to cover memory latency, few registers.
# 1024: the H100 sweep's best for the blur pair and the fused slice (2048 was 2-14 % slower).
_TILE = 1024
# Columns per program in the column-parallel kernels (splat, blur).
_COLUMN_BLOCK = 128
# Entries of a vertex gathered per step of the splat.
_ENTRY_BLOCK = 16
#: Lattice axes per blur launch (1 or 2). Two halve the blur's (vertices x columns) traffic
#: to memory but read 9 rows per vertex through the cache instead of 2 x 3 (10 rows moved per
#: two axes instead of 8): better where memory bandwidth limits the blur, worse where the
#: cache's does. A default from that count, not a measurement: bench_crf_gpu.py --sweep
#: times both on the GPU.
BLUR_AXES_PER_PASS = 2


def available() -> bool:
    """Whether Triton is importable (the kernels also need a CUDA device, or run interpreted)."""
    return IMPORT_ERROR is None


def _next_power_of_two(value: int) -> int:
    return 1 << max(0, int(value) - 1).bit_length()


def _own_device_function(value) -> bool:
    return isinstance(value, JITFunction) and value.fn.__module__ == __name__


def _interpreter_range(*bounds) -> range:
    """``range`` for the interpreted kernels, whose loop bounds may be loaded scalars: Triton
    3.6's interpreter converts those with ``int()`` of a 1-element array, which NumPy 2
    refuses (3.8 squeezes it first). Compiled kernels keep the builtin."""
    return builtins.range(*(_interpreted_int(bound) for bound in bounds))


def _interpreted_int(value) -> int:
    handle = getattr(value, "handle", None)  # an interpreted tensor: a numpy array inside
    if handle is not None:
        return int(np.asarray(handle.data).reshape(-1)[0])
    return operator.index(getattr(value, "value", value))  # ints and constexprs


def _with_globals(fn, namespace: dict):
    """``fn`` bound to other module globals."""
    return types.FunctionType(fn.__code__, namespace, fn.__name__, fn.__defaults__, fn.__closure__)


class _TritonKernel:
    """One kernel body, compiled for CUDA tensors and interpreted for CPU tensors."""

    def __init__(self, fn) -> None:
        self._fn = fn
        self._compiled = JITFunction(fn)
        self._interpreted = None  # built on first use: only CPU tensors need it

    def _interpreted_form(self):
        if self._interpreted is None:
            # The device functions a body calls are module globals compiled with it
            # (JITFunction); the interpreted body, and this module's device functions (which
            # may call each other), run against a copy of the globals that interprets them
            # (Triton's own, such as the combine functions, stay as they are).
            fn = self._fn
            namespace = dict(fn.__globals__, range=_interpreter_range)
            for name, value in fn.__globals__.items():
                if _own_device_function(value):
                    namespace[name] = InterpretedFunction(_with_globals(value.fn, namespace))
            self._interpreted = InterpretedFunction(_with_globals(fn, namespace))
        return self._interpreted

    def launch(self, grid: tuple[int, ...], device: torch.device, *args, **kwargs) -> None:
        if device.type == "cuda":
            with torch.cuda.device(device):  # Triton launches on the current device
                self._compiled[grid](*args, **kwargs)
        else:
            kwargs.pop("num_warps", None)
            self._interpreted_form()[grid](*args, **kwargs)


if triton is not None:
    # tl.sum, tl.max and tl.zeros are jitted functions themselves, which Triton's interpreter
    # cannot call unless TRITON_INTERPRET was set before triton was imported. tl.reduce with
    # their combine functions is what they compile to, and the interpreter runs it with numpy;
    # tl.full stands in for tl.zeros.
    _SUM = tl.standard._sum_combine
    _MAX = tl.standard._elementwise_max

    def _splat_entries_body(
        point_ptr, weight_ptr, src_ptr, entries, live, columns, column_mask, num_columns
    ):
        # The weighted point rows of `entries` (one per tile row, masked by `live`; columns
        # masked by the (1, COLUMN_BLOCK) column_mask), float32: a step of every splat kernel.
        points = tl.load(point_ptr + entries, mask=live, other=0).to(tl.int64)
        weights = tl.load(weight_ptr + entries, mask=live, other=0.0)
        values = tl.load(
            src_ptr + points[:, None] * num_columns + columns[None, :],
            mask=live[:, None] & column_mask,
            other=0.0,
        )
        return weights[:, None] * values.to(tl.float32)

    _splat_entries = triton.jit(_splat_entries_body)

    def _splat_body(
        crow_ptr,  # (M + 1,) int64: entries of vertex v are crow[v] .. crow[v+1]
        point_ptr,  # (E,) int32/int64: the point of each entry
        weight_ptr,  # (E,) float32
        src_ptr,  # (N, C) point values
        dst_ptr,  # (M, C) vertex values
        order_ptr,  # (programs,) the vertex of each program (ORDERED only)
        num_column_groups,
        COLUMN_GROUP: tl.constexpr,
        ORDERED: tl.constexpr,
        ENTRY_BLOCK: tl.constexpr,
        COLUMN_BLOCK: tl.constexpr,
    ):
        num_columns = num_column_groups * COLUMN_GROUP  # rows start 16-byte aligned
        if ORDERED:
            vertex = tl.load(order_ptr + tl.program_id(0)).to(tl.int64)
        else:
            vertex = tl.program_id(0).to(tl.int64)
        columns = tl.program_id(1) * COLUMN_BLOCK + tl.arange(0, COLUMN_BLOCK)
        column_mask = columns < num_columns
        start = tl.load(crow_ptr + vertex)
        end = tl.load(crow_ptr + vertex + 1)
        # Accumulated per entry slot and reduced once after the loop: a reduction across the
        # slots inside the loop would cost barriers (the slots span warps) on every step.
        total = tl.full([ENTRY_BLOCK, COLUMN_BLOCK], 0.0, tl.float32)
        for first in range(start, end, ENTRY_BLOCK):
            entries = first + tl.arange(0, ENTRY_BLOCK)
            total += _splat_entries(
                point_ptr,
                weight_ptr,
                src_ptr,
                entries,
                entries < end,
                columns,
                column_mask[None, :],
                num_columns,
            )
        tl.store(
            dst_ptr + vertex * num_columns + columns,
            tl.reduce(total, 0, _SUM).to(dst_ptr.dtype.element_ty),
            mask=column_mask,
        )

    def _splat_tile_body(
        crow_ptr, point_ptr, weight_ptr, src_ptr, dst_ptr, rows, row_mask, columns,
        column_mask, num_columns, MAX_DEGREE: tl.constexpr,
    ):  # fmt: skip
        # Splat of a tile of vertices `rows`, one entry of each per step: as many steps as the
        # tile's busiest vertex has (MAX_DEGREE 0), or MAX_DEGREE unrolled ones.
        start = tl.load(crow_ptr + rows, mask=row_mask, other=0)
        degree = tl.load(crow_ptr + rows + 1, mask=row_mask, other=0) - start
        total = tl.full([rows.shape[0], columns.shape[0]], 0.0, tl.float32)
        if MAX_DEGREE == 0:
            for step in range(0, tl.reduce(degree, 0, _MAX)):
                total += _splat_entries(
                    point_ptr, weight_ptr, src_ptr, start + step, step < degree, columns,
                    column_mask, num_columns,
                )  # fmt: skip
        else:
            for step in tl.static_range(MAX_DEGREE):
                total += _splat_entries(
                    point_ptr, weight_ptr, src_ptr, start + step, step < degree, columns,
                    column_mask, num_columns,
                )  # fmt: skip
        _store_tile(dst_ptr, total, rows, columns, row_mask, column_mask, num_columns)

    _splat_tile = triton.jit(_splat_tile_body)

    def _splat_rows_body(
        crow_ptr,  # as in _splat_body
        point_ptr,
        weight_ptr,
        src_ptr,
        dst_ptr,
        num_vertices,
        num_column_groups,
        COLUMN_GROUP: tl.constexpr,
        ROWS: tl.constexpr,
        COLUMN_BLOCK: tl.constexpr,
    ):
        # ROWS vertices per program, one entry of each per step, for as many steps as the
        # tile's busiest vertex has entries (fewer, larger programs than _splat_body).
        num_columns = num_column_groups * COLUMN_GROUP  # rows start 16-byte aligned
        rows, columns, row_mask, column_mask = _row_tile(
            num_vertices, num_columns, ROWS, COLUMN_BLOCK
        )
        _splat_tile(
            crow_ptr, point_ptr, weight_ptr, src_ptr, dst_ptr, rows, row_mask, columns,
            column_mask, num_columns, 0,
        )  # fmt: skip

    def _splat_light_body(
        crow_ptr,  # as in _splat_body
        point_ptr,
        weight_ptr,
        src_ptr,
        dst_ptr,
        order_ptr,  # (num_rows,) vertices of degree <= MAX_DEGREE, in the order to run them
        num_rows,
        num_column_groups,
        COLUMN_GROUP: tl.constexpr,
        ROWS: tl.constexpr,
        MAX_DEGREE: tl.constexpr,
        COLUMN_BLOCK: tl.constexpr,
    ):
        # ROWS light vertices per program, their entries in MAX_DEGREE unrolled steps: every
        # gather is issued without a loop-carried bound (most vertices have 1 to 4 entries).
        num_columns = num_column_groups * COLUMN_GROUP  # rows start 16-byte aligned
        slots, columns, slot_mask, column_mask = _row_tile(
            num_rows, num_columns, ROWS, COLUMN_BLOCK
        )
        rows = tl.load(order_ptr + slots, mask=slot_mask, other=0).to(tl.int64)
        _splat_tile(
            crow_ptr, point_ptr, weight_ptr, src_ptr, dst_ptr, rows, slot_mask, columns,
            column_mask, num_columns, MAX_DEGREE,
        )  # fmt: skip

    def _axis_blur_body(
        src_ptr, minus_ptr, plus_ptr, rows, row_mask, columns, column_mask, num_columns
    ):
        # densecrf's blur along one axis at `rows` (int64, masked by row_mask): the vertex plus
        # half of each neighbour, a missing one (-1) or a masked row counting 0; float32.
        minus = tl.load(minus_ptr + rows, mask=row_mask, other=-1).to(tl.int64)
        plus = tl.load(plus_ptr + rows, mask=row_mask, other=-1).to(tl.int64)
        own = tl.load(
            src_ptr + rows[:, None] * num_columns + columns[None, :],
            mask=row_mask[:, None] & column_mask,
            other=0.0,
        )
        low = tl.load(
            src_ptr + minus[:, None] * num_columns + columns[None, :],
            mask=(row_mask & (minus >= 0))[:, None] & column_mask,
            other=0.0,
        )
        high = tl.load(
            src_ptr + plus[:, None] * num_columns + columns[None, :],
            mask=(row_mask & (plus >= 0))[:, None] & column_mask,
            other=0.0,
        )
        return own.to(tl.float32) + 0.5 * (low.to(tl.float32) + high.to(tl.float32))

    _axis_blur = triton.jit(_axis_blur_body)

    def _row_tile_body(num_rows, num_columns, ROWS: tl.constexpr, COLUMN_BLOCK: tl.constexpr):
        # This program's rows (int64) and columns of an (num_rows, num_columns) array, masks.
        rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
        columns = tl.program_id(1) * COLUMN_BLOCK + tl.arange(0, COLUMN_BLOCK)
        return rows, columns, rows < num_rows, (columns < num_columns)[None, :]

    _row_tile = triton.jit(_row_tile_body)

    def _store_tile_body(dst_ptr, values, rows, columns, row_mask, column_mask, num_columns):
        tl.store(
            dst_ptr + rows[:, None] * num_columns + columns[None, :],
            values.to(dst_ptr.dtype.element_ty),
            mask=row_mask[:, None] & column_mask,
        )

    _store_tile = triton.jit(_store_tile_body)

    def _blur_body(
        src_ptr,  # (M, C)
        dst_ptr,  # (M, C)
        minus_ptr,  # (M,) int32/int64 neighbour index, -1 where missing
        plus_ptr,  # (M,)
        num_vertices,
        num_column_groups,
        COLUMN_GROUP: tl.constexpr,
        ROWS: tl.constexpr,
        COLUMN_BLOCK: tl.constexpr,
    ):
        num_columns = num_column_groups * COLUMN_GROUP  # rows start 16-byte aligned
        rows, columns, row_mask, column_mask = _row_tile(
            num_vertices, num_columns, ROWS, COLUMN_BLOCK
        )
        blurred = _axis_blur(
            src_ptr, minus_ptr, plus_ptr, rows, row_mask, columns, column_mask, num_columns
        )
        _store_tile(dst_ptr, blurred, rows, columns, row_mask, column_mask, num_columns)

    def _blur_pair_body(
        src_ptr,  # (M, C)
        dst_ptr,  # (M, C)
        minus_a_ptr,  # (M,) first axis' neighbours, -1 where missing
        plus_a_ptr,
        minus_b_ptr,  # (M,) second axis' neighbours
        plus_b_ptr,
        num_vertices,
        num_column_groups,
        COLUMN_GROUP: tl.constexpr,
        ROWS: tl.constexpr,
        COLUMN_BLOCK: tl.constexpr,
    ):
        # Two blur passes in one: axis a's blur at the vertex and at its two axis-b neighbours
        # (recomputed from src, the neighbours' rows mostly in cache), then axis b's. Half
        # the (M, C) reads and writes of two single passes; the same float32 expressions.
        num_columns = num_column_groups * COLUMN_GROUP  # rows start 16-byte aligned
        rows, columns, row_mask, column_mask = _row_tile(
            num_vertices, num_columns, ROWS, COLUMN_BLOCK
        )
        low_b = tl.load(minus_b_ptr + rows, mask=row_mask, other=-1).to(tl.int64)
        high_b = tl.load(plus_b_ptr + rows, mask=row_mask, other=-1).to(tl.int64)
        centre = _axis_blur(
            src_ptr, minus_a_ptr, plus_a_ptr, rows, row_mask, columns, column_mask, num_columns
        )
        below = _axis_blur(
            src_ptr,
            minus_a_ptr,
            plus_a_ptr,
            low_b,
            row_mask & (low_b >= 0),  # a missing neighbour's blurred row is 0 too
            columns,
            column_mask,
            num_columns,
        )
        above = _axis_blur(
            src_ptr,
            minus_a_ptr,
            plus_a_ptr,
            high_b,
            row_mask & (high_b >= 0),
            columns,
            column_mask,
            num_columns,
        )
        blurred = centre + 0.5 * (below + above)
        _store_tile(dst_ptr, blurred, rows, columns, row_mask, column_mask, num_columns)

    def _slice_update_body(
        out_ptr,  # (N, C): new Q (update) or the summed messages
        clipped_ptr,  # (N, C) clipped probabilities, any positive scale (update only)
        vertex_values_ptr,  # (M, C) blurred vertex values of every kernel, stacked
        corner_vertex_ptr,  # (N, CORNERS) int32/int64 rows of vertex_values
        corner_weight_ptr,  # (N, CORNERS) float32 slice weights
        column_set_ptr,  # (C,) int32: label set of each column, -1 for none
        column_rank_ptr,  # (C,) int32: index of the column within its set
        point_image_ptr,  # (N,) int32
        counts_ptr,  # (images, NUM_SETS) int32: labels of each image's sets
        num_points,
        num_column_groups,
        COLUMN_GROUP: tl.constexpr,
        CORNERS: tl.constexpr,
        NUM_SETS: tl.constexpr,
        UPDATE: tl.constexpr,
        ROWS: tl.constexpr,
        BLOCK_COLUMNS: tl.constexpr,
    ):
        num_columns = num_column_groups * COLUMN_GROUP  # rows start 16-byte aligned
        rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
        columns = tl.arange(0, BLOCK_COLUMNS)
        row_mask = rows < num_points
        column_mask = columns < num_columns
        mask = row_mask[:, None] & column_mask[None, :]
        message = tl.full([ROWS, BLOCK_COLUMNS], 0.0, tl.float32)
        for corner in tl.static_range(CORNERS):
            vertex = tl.load(corner_vertex_ptr + rows * CORNERS + corner, mask=row_mask, other=0)
            weight = tl.load(corner_weight_ptr + rows * CORNERS + corner, mask=row_mask, other=0.0)
            values = tl.load(
                vertex_values_ptr + vertex.to(tl.int64)[:, None] * num_columns + columns[None, :],
                mask=mask,
                other=0.0,
            )
            message += weight[:, None] * values.to(tl.float32)
        offsets = rows[:, None] * num_columns + columns[None, :]
        if UPDATE:
            # Q = clip(P) * exp(message - max) / sum, per label set over its real columns.
            column_set = tl.load(column_set_ptr + columns, mask=column_mask, other=-1)
            column_rank = tl.load(column_rank_ptr + columns, mask=column_mask, other=0)
            image = tl.load(point_image_ptr + rows, mask=row_mask, other=0).to(tl.int64)
            real = tl.full([ROWS, BLOCK_COLUMNS], 0, tl.int1)
            top = tl.full([ROWS, BLOCK_COLUMNS], 0.0, tl.float32)
            for label_set in tl.static_range(NUM_SETS):
                count = tl.load(counts_ptr + image * NUM_SETS + label_set, mask=row_mask, other=0)
                in_set = (column_set == label_set)[None, :] & (
                    column_rank[None, :] < count[:, None]
                )
                in_set = in_set & mask
                set_top = tl.reduce(tl.where(in_set, message, float("-inf")), 1, _MAX)
                top = tl.where(in_set, set_top[:, None], top)
                real = real | in_set
            clipped = tl.load(clipped_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
            # <= 0 on the real columns; padding clamped. Not tl.minimum, which drops NaN: an
            # inf or NaN message must make the set's Q NaN, as the other paths do.
            difference = message - top
            exponent = tl.where(difference > 0.0, 0.0, difference)
            unnormalised = tl.where(real, clipped * tl.exp(exponent), 0.0)
            total = tl.full([ROWS, BLOCK_COLUMNS], 0.0, tl.float32)
            for label_set in tl.static_range(NUM_SETS):
                count = tl.load(counts_ptr + image * NUM_SETS + label_set, mask=row_mask, other=0)
                in_set = (column_set == label_set)[None, :] & (
                    column_rank[None, :] < count[:, None]
                )
                in_set = in_set & mask
                set_total = tl.reduce(tl.where(in_set, unnormalised, 0.0), 1, _SUM)
                total = tl.where(in_set, set_total[:, None], total)
            result = tl.where(real, unnormalised / tl.where(real, total, 1.0), 0.0)
        else:
            result = message
        tl.store(out_ptr + offsets, result.to(out_ptr.dtype.element_ty), mask=mask)

    _SPLAT = _TritonKernel(_splat_body)
    _SPLAT_ROWS = _TritonKernel(_splat_rows_body)
    _SPLAT_LIGHT = _TritonKernel(_splat_light_body)
    _BLUR = _TritonKernel(_blur_body)
    _BLUR_PAIR = _TritonKernel(_blur_pair_body)
    _SLICE_UPDATE = _TritonKernel(_slice_update_body)


#: Clipped probabilities stored in float16 are scaled by this power of two first, so that the
#: clip floor 1e-5 (below float16's normal range, 6.1e-5) keeps 11 significant bits.
CLIPPED_FLOAT16_SCALE = 1024.0


def scaled_clipped(clipped: torch.Tensor, storage: torch.dtype) -> torch.Tensor:
    """The (N, C) float32 clipped probabilities as :func:`slice_update` reads them in
    ``storage``: unchanged for float32, times :data:`CLIPPED_FLOAT16_SCALE` in float16 (relative
    error 2^-11, against about 1e-2 that float16 storage of Q brings anyway)."""
    if storage == torch.float32:
        return clipped
    return (clipped * CLIPPED_FLOAT16_SCALE).to(storage)


def column_layout(widths: list[int], num_columns: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(C,) int32 label set of each column (-1: none) and its index within the set, for label
    sets of ``widths`` columns side by side followed by padding up to ``num_columns``."""
    column_set = torch.full((num_columns,), -1, dtype=torch.int32)
    column_rank = torch.zeros(num_columns, dtype=torch.int32)
    start = 0
    for label_set, width in enumerate(widths):
        column_set[start : start + width] = label_set
        column_rank[start : start + width] = torch.arange(width, dtype=torch.int32)
        start += width
    return column_set, column_rank


def _require() -> None:
    if IMPORT_ERROR is not None:
        raise RuntimeError(IMPORT_ERROR)


def column_group(num_columns: int, *arrays: torch.Tensor) -> int:
    """The kernels' ``COLUMN_GROUP``: the largest power of two that divides ``num_columns``
    and fits 16 bytes of the narrowest of ``arrays`` (the (rows, C) arrays a kernel reads and
    writes). The kernels get the row width as groups times this constant, so the compiler
    knows every row starts 16-byte aligned and loads rows 16 bytes at a time: rows padded to
    4 float32 or 8 float16 columns are enough (Triton's launcher marks integers divisible by
    16 only, which would take padding to 16 columns, 8 to 12 % more traffic at ~84 labels)."""
    group = 16 // min(array.element_size() for array in arrays)
    while num_columns % group:
        group //= 2
    return group


def _column_grid(num_columns: int) -> tuple[int, int]:
    block = min(_next_power_of_two(num_columns), _COLUMN_BLOCK)
    return block, -(-num_columns // block)


@dataclass(frozen=True)
class SplatPlan:
    """Vertices of a lattice split by degree for :func:`splat` (see :func:`splat_plan`)."""

    light: torch.Tensor  # vertices of degree <= max_light, by window, busiest first
    heavy: torch.Tensor  # the others, busiest first
    max_light: int


def splat_plan(crow: torch.Tensor, max_light: int = 16, window: int = 1024) -> SplatPlan:
    """Split the vertices of the CSR ``crow`` (M + 1,) for the splat: the light ones (degree
    <= ``max_light``; most of a bilateral lattice's, which has a median degree of 2 but
    vertices with thousands of points) run ``light_rows`` to a program in unrolled steps; the
    heavy ones one to a program, the busiest first so that they do not finish last. Light
    vertices keep their order at the scale of ``window`` vertices (neighbouring vertices share
    points, which the cache then serves) and are sorted by degree within each window, so that
    a program's rows need similar steps."""
    degree = crow[1:] - crow[:-1]
    vertices = torch.arange(degree.numel(), device=crow.device)
    light = degree <= max_light
    light_vertices = vertices[light]
    key = (light_vertices // window) * (max_light + 1) + (max_light - degree[light])
    light_order = light_vertices[torch.sort(key, stable=True).indices]
    heavy_vertices = vertices[~light]
    heavy_order = heavy_vertices[torch.sort(-degree[~light], stable=True).indices]
    index = torch.int32 if degree.numel() < 2**31 else torch.int64
    return SplatPlan(light_order.to(index), heavy_order.to(index), max_light)


#: Whether :class:`hassod.crf_torch.CrfBatch` splats by degree (:func:`splat_plan`) or one
#: program per vertex. The per-vertex default is what ran first; bench_crf_gpu.py --sweep
#: times both on the GPU.
SPLAT_BY_DEGREE = False
#: Vertices per program of :class:`hassod.crf_torch.CrfBatch`'s splat (``splat(rows=...)``,
#: one entry of each per step). On the H100 (64 photos, 96 label columns, float32) the
#: bilateral splat took 9.7 ms with 4, against 25.3 ms with a program per vertex gathering 16
#: entries a step, 13.3-13.5 ms by degree and 15.9 / 21.9 ms with 8 / 16 rows; float16 10.5 ms
#: (10.2 with 8).
SPLAT_ROWS = 4


def splat(
    crow: torch.Tensor,
    points: torch.Tensor,
    weights: torch.Tensor,
    values: torch.Tensor,
    out: torch.Tensor,
    *,
    entry_block: int = _ENTRY_BLOCK,
    rows: int = 1,
    num_warps: int | None = None,
    plan: SplatPlan | None = None,
    light_rows: int = 16,
) -> torch.Tensor:
    """``out[v] = sum of weights[e] * values[points[e]]`` over the entries e of vertex v.

    ``crow`` (M + 1,) int64, ``points`` (E,) int32/int64, ``weights`` (E,) float32, ``values``
    (N, C) and ``out`` (M, C) contiguous, of a storage dtype; returns ``out``. Launch settings
    (benchmarks/bench_crf_gpu.py --sweep times alternatives): ``rows`` = 1 gives each vertex
    a program that gathers ``entry_block`` entries per step (a power of two); ``rows`` > 1 (a
    power of two) gives each program that many vertices, one entry of each per step.
    ``num_warps`` None: 4, fewer for tiles of under 512 elements (a warp per 128; the
    normalisation's single column takes one); for the light tiles of a ``plan``, one per 256
    elements, at most 8. ``plan`` (:func:`splat_plan` of ``crow``): the
    light vertices ``light_rows`` (a power of two) to a program, then the heavy ones as with
    ``rows`` = 1; ``rows`` is then ignored.
    """
    _require()
    num_vertices, num_columns = out.shape
    if num_vertices == 0 or num_columns == 0:
        return out
    block, column_blocks = _column_grid(num_columns)
    # Light tiles: 8 elements per thread. Registers of the 16 x 128 tile's cubin on 4 / 8 warps,
    # Triton 3.6 (the H100's): float16 124 / 69, float32 64 / 44; Triton 3.8: 116 / 76 and
    # 212 / 93.
    light_warps = num_warps or min(8, max(1, light_rows * block // 256))
    if num_warps is None:
        num_warps = min(4, max(1, max(rows, entry_block) * block // 128))
    group = column_group(num_columns, values, out)
    tensors = (crow, points, weights, values, out)
    if plan is not None:
        count = plan.light.numel()
        if count:
            _SPLAT_LIGHT.launch(
                (-(-count // light_rows), column_blocks),
                out.device,
                *tensors,
                plan.light,
                count,
                num_columns // group,
                COLUMN_GROUP=group,
                ROWS=light_rows,
                MAX_DEGREE=plan.max_light,
                COLUMN_BLOCK=block,
                num_warps=light_warps,
            )
        if plan.heavy.numel():
            _launch_splat(tensors, plan.heavy, plan.heavy.numel(), group, block, column_blocks,
                          entry_block, num_warps)  # fmt: skip
        return out
    if rows > 1:
        return _launch_row_tiles(_SPLAT_ROWS, tensors, out, rows, num_warps)
    _launch_splat(tensors, None, num_vertices, group, block, column_blocks, entry_block, num_warps)
    return out


def _launch_splat(tensors, order, programs, group, block, column_blocks, entry_block, num_warps):
    """One program per vertex (of ``order``, or every vertex in turn when it is None)."""
    out = tensors[-1]
    _SPLAT.launch(
        (programs, column_blocks),
        out.device,
        *tensors,
        tensors[0] if order is None else order,  # unused pointer when not ORDERED
        out.shape[1] // group,
        COLUMN_GROUP=group,
        ORDERED=order is not None,
        ENTRY_BLOCK=entry_block,
        COLUMN_BLOCK=block,
        num_warps=num_warps,
    )


def _launch_row_tiles(kernel, tensors, out: torch.Tensor, rows: int, num_warps: int):
    """Launch ``kernel(*tensors, num_rows, num_column_groups, COLUMN_GROUP, ROWS,
    COLUMN_BLOCK)`` with one program per ``rows`` rows and column block of ``out`` (M, C);
    returns ``out``."""
    num_rows, num_columns = out.shape
    block, column_blocks = _column_grid(num_columns)
    group = column_group(num_columns, *(t for t in tensors if t.dim() == 2))
    kernel.launch(
        (-(-num_rows // rows), column_blocks),
        out.device,
        *tensors,
        num_rows,
        num_columns // group,
        COLUMN_GROUP=group,
        ROWS=rows,
        COLUMN_BLOCK=block,
        num_warps=num_warps,
    )
    return out


def _launch_blur(
    kernel, values: torch.Tensor, out: torch.Tensor, neighbours, tile: int, num_warps: int
) -> torch.Tensor:
    """One blur launch of ``kernel`` over (values -> out), given its neighbour arrays."""
    _require()
    num_vertices, num_columns = values.shape
    if num_vertices == 0 or num_columns == 0:
        return out
    rows = max(1, tile // _column_grid(num_columns)[0])
    return _launch_row_tiles(kernel, (values, out, *neighbours), out, rows, num_warps)


def blur(
    values: torch.Tensor,
    minus: torch.Tensor,
    plus: torch.Tensor,
    out: torch.Tensor,
    *,
    tile: int = _TILE,
    num_warps: int = 4,
) -> torch.Tensor:
    """``out[v] = values[v] + (values[minus[v]] + values[plus[v]]) / 2`` (missing: -1 -> 0).

    ``tile`` (elements per program, a power of two) and ``num_warps`` are launch settings."""
    return _launch_blur(_BLUR, values, out, (minus, plus), tile, num_warps)


def blur_pair(
    values: torch.Tensor,
    first: tuple[torch.Tensor, torch.Tensor],
    second: tuple[torch.Tensor, torch.Tensor],
    out: torch.Tensor,
    *,
    tile: int = _TILE,
    num_warps: int = 4,
) -> torch.Tensor:
    """Two blur passes in one kernel: :func:`blur` along ``first`` (minus, plus), then along
    ``second``, without storing the intermediate (the same float32 arithmetic). Launch
    settings as in :func:`blur`; the default 4 warps on 1024-element tiles give 8 elements
    per thread, about 56 registers on sm_90 in float32 (16 per thread took 94)."""
    neighbours = (first[0], first[1], second[0], second[1])
    return _launch_blur(_BLUR_PAIR, values, out, neighbours, tile, num_warps)


def blur_pass_count(num_axes: int, axes_per_pass: int | None = None) -> int:
    """Kernel launches (buffer swaps) :func:`blur_axes` makes for ``num_axes`` axes
    (``axes_per_pass`` None: :data:`BLUR_AXES_PER_PASS`, read at the call)."""
    return -(-num_axes // _axes_per_pass(axes_per_pass))


def _axes_per_pass(value: int | None) -> int:
    """``value`` checked, None meaning :data:`BLUR_AXES_PER_PASS` (read at the call)."""
    value = BLUR_AXES_PER_PASS if value is None else value
    if value not in (1, 2):
        raise ValueError(f"axes_per_pass must be 1 or 2, got {value!r}")
    return value


def blur_axes(
    values: torch.Tensor,
    scratch: torch.Tensor,
    neighbours: torch.Tensor,
    *,
    axes_per_pass: int | None = None,
    tile: int = _TILE,
    num_warps: int | None = None,
) -> torch.Tensor:
    """Blur along every lattice axis in order, ``neighbours`` (axes, 2, M) as in :func:`blur`,
    alternating between ``values`` and ``scratch`` (both overwritten); returns the one that
    holds the result (``values`` when :func:`blur_pass_count` is even). ``axes_per_pass`` 2
    fuses consecutive axes into one :func:`blur_pair` launch (a last odd axis runs alone).
    ``axes_per_pass`` None reads :data:`BLUR_AXES_PER_PASS`; ``num_warps`` None keeps each
    kernel's default."""
    axes_per_pass = _axes_per_pass(axes_per_pass)
    buffers = (values, scratch)
    launch = {"tile": tile} if num_warps is None else {"tile": tile, "num_warps": num_warps}
    passes = blur_pass_count(len(neighbours), axes_per_pass)
    for step in range(passes):
        source, target = buffers[step % 2], buffers[(step + 1) % 2]
        axes = neighbours[step * axes_per_pass : (step + 1) * axes_per_pass]
        if len(axes) == 2:
            blur_pair(source, axes[0], axes[1], target, **launch)
        else:
            blur(source, axes[0][0], axes[0][1], target, **launch)
    return buffers[passes % 2]


def slice_update(
    out: torch.Tensor,
    vertex_values: torch.Tensor,
    corner_vertex: torch.Tensor,
    corner_weight: torch.Tensor,
    clipped: torch.Tensor | None = None,
    column_set: torch.Tensor | None = None,
    column_rank: torch.Tensor | None = None,
    point_image: torch.Tensor | None = None,
    counts: torch.Tensor | None = None,
    *,
    tile: int = _TILE,
    num_warps: int | None = None,
) -> torch.Tensor:
    """Slice the blurred lattice values at every point, summed over its corners; with
    ``clipped`` given, finish the mean-field step (per label set softmax of the messages times
    the clipped probabilities) and write the new Q into ``out`` instead of the messages.

    ``vertex_values`` (M, C): the kernels' blurred vertex values stacked (one kernel's rows
    after the other's); ``corner_vertex`` (N, K) int32/int64 rows of it and ``corner_weight``
    (N, K) float32 slice weights, every kernel's simplex corners side by side (K = 3 + 6 for
    the Gaussian and bilateral kernels of an image). ``clipped`` (N, C) float32 or float16
    holds the clipped probabilities times any positive power of two (the normalisation cancels
    it: :func:`scaled_clipped` stores them in half precision). ``column_set`` / ``column_rank`` (C,)
    int32 (:func:`column_layout`), ``point_image`` (N,) int32 and ``counts`` (images, sets)
    int32 describe the label sets: columns past an image's count are padding and get 0.
    ``tile`` (elements per program, a power of two; at least one whole row) and ``num_warps``
    (None: one per 256 elements of the tile, at least 8) are launch settings.
    """
    _require()
    num_points, num_columns = out.shape
    if num_columns > MAX_COLUMNS:
        raise ValueError(
            f"method='triton' handles up to {MAX_COLUMNS} label columns per batch, got "
            f"{num_columns}; use method='spmm' or fewer label sets per batch"
        )
    if num_points == 0 or num_columns == 0:
        return out
    update = clipped is not None
    group = column_group(num_columns, out, vertex_values, *((clipped,) if update else ()))
    if update:
        num_sets = int(counts.shape[1])
    else:  # unused pointers: any tensor of the right device
        clipped = column_set = column_rank = point_image = counts = corner_vertex
        num_sets = 1
    block = _next_power_of_two(num_columns)
    rows = max(1, tile // block)
    if num_warps is None:
        # 8 elements of the tile per thread: about 70 registers for float32 on sm_90 (16 per
        # thread took 203 and starved the multiprocessors of warps). Narrow tiles (the
        # normalisation's single column) hold a row per element, each with its own corner
        # indices: 4 per thread (8 took 94-142 registers, 4 take 44-78).
        per_thread = 8 if block >= 16 else 4
        num_warps = min(32, max(8, rows * block // (32 * per_thread)))
    _SLICE_UPDATE.launch(
        (-(-num_points // rows),),
        out.device,
        out,
        clipped,
        vertex_values,
        corner_vertex,
        corner_weight,
        column_set,
        column_rank,
        point_image,
        counts,
        num_points,
        num_columns // group,
        COLUMN_GROUP=group,
        CORNERS=int(corner_vertex.shape[1]),
        NUM_SETS=num_sets,
        UPDATE=update,
        ROWS=rows,
        BLOCK_COLUMNS=block,
        num_warps=num_warps,
    )
    return out
