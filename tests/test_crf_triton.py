"""Triton kernels of the batched CRF (hassod.crf_triton, CrfBatch(method="triton")).

Without a GPU the kernels run in Triton's interpreter on CPU tensors: the same kernel code, so
its indexing, masking, padding and the fused mean-field update are checked on every machine
(small inputs: the interpreter is slow). Each kernel is compared with a plain torch version on
random inputs, with outputs poisoned first so that an element left unwritten shows; the whole
CRF is compared with the sparse-product path (itself equal to the native CRF,
tests/test_crf_torch.py). The ``needs_gpu`` tests compile the kernels and compare them with the
native CPU CRF on photos.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from hassod import crf_triton  # noqa: E402
from hassod.crf import CrfLattice  # noqa: E402
from hassod.crf_torch import CrfBatch  # noqa: E402
from hassod.testing import partition_probs, slic_partition  # noqa: E402

if not crf_triton.available():
    pytest.skip(crf_triton.IMPORT_ERROR, allow_module_level=True)

needs_gpu = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device (torch.cuda.is_available() is False)"
)
PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco_val2017_sample"


def random_csr(rng, rows: int, columns: int, max_entries: int):
    """CSR arrays with 0..max_entries entries per row (empty rows included)."""
    counts = rng.integers(0, max_entries + 1, size=rows)
    crow = np.concatenate([[0], np.cumsum(counts)])
    points = rng.integers(0, columns, size=int(crow[-1]))
    weights = rng.random(int(crow[-1])).astype(np.float32)
    return torch.from_numpy(crow), torch.from_numpy(points), torch.from_numpy(weights)


def dense_of(crow, points, weights, shape) -> torch.Tensor:
    matrix = torch.zeros(shape, dtype=torch.float64)
    for row in range(shape[0]):
        for e in range(int(crow[row]), int(crow[row + 1])):
            matrix[row, int(points[e])] += float(weights[e])
    return matrix


@pytest.mark.parametrize("seed", range(4))
def test_splat_equals_a_dense_product(seed):
    rng = np.random.default_rng(seed)
    rows, points, columns = (
        int(rng.integers(1, 30)),
        int(rng.integers(1, 40)),
        [1, 5, 130][seed % 3],
    )
    # Up to 40 entries: more than one entry block per vertex.
    crow, point_index, weights = random_csr(rng, rows, points, 40)
    if seed % 2:
        point_index = point_index.to(torch.int32)
    values = torch.from_numpy(rng.random((points, columns)).astype(np.float32))
    expected = dense_of(crow, point_index, weights, (rows, points)) @ values.double()
    # per-vertex programs, vertex tiles, and by degree (light ones up to 8 entries in tiles,
    # 4 to a tile; heavy ones per vertex; windows of 4 vertices)
    plan = crf_triton.splat_plan(crow, max_light=8, window=4)
    for settings in ({}, {"rows": 4}, {"rows": 16}, {"plan": plan, "light_rows": 4}):
        out = torch.full((rows, columns), float("nan"))
        crf_triton.splat(crow, point_index, weights, values, out, **settings)
        torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


def test_splat_plan_splits_by_degree_and_keeps_windows():
    rng = np.random.default_rng(11)
    degrees = rng.integers(0, 30, size=200)
    crow = torch.from_numpy(np.concatenate([[0], np.cumsum(degrees)]))
    plan = crf_triton.splat_plan(crow, max_light=16, window=50)
    light, heavy = plan.light.long().numpy(), plan.heavy.long().numpy()
    assert sorted([*light, *heavy]) == list(range(200))  # every vertex once
    assert (degrees[light] <= 16).all() and (degrees[heavy] > 16).all()
    assert (np.diff(degrees[heavy]) <= 0).all()  # busiest first
    windows = light // 50
    assert (np.diff(windows) >= 0).all()  # window by window, in order
    for window in np.unique(windows):  # busiest first within each
        assert (np.diff(degrees[light[windows == window]]) <= 0).all()
    assert plan.light.dtype == plan.heavy.dtype == torch.int32


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_blur_equals_its_definition(dtype):
    rng = np.random.default_rng(7)
    vertices, columns = 45, 140  # two column blocks, several row tiles
    values = torch.from_numpy(rng.random((vertices, columns)).astype(np.float32)).to(dtype)
    minus = torch.from_numpy(rng.integers(-1, vertices, size=vertices)).to(torch.int32)
    plus = torch.from_numpy(rng.integers(-1, vertices, size=vertices))
    out = torch.full((vertices, columns), float("nan"), dtype=dtype)
    crf_triton.blur(values, minus, plus, out)
    padded = torch.cat([values.double(), torch.zeros(1, columns, dtype=torch.float64)])
    expected = padded[:-1] + 0.5 * (padded[minus.long()] + padded[plus])
    tolerance = 1e-6 if dtype == torch.float32 else 2e-3
    torch.testing.assert_close(out.double(), expected, rtol=tolerance, atol=tolerance)


def random_neighbours(rng, axes: int, vertices: int) -> torch.Tensor:
    """(axes, 2, M) neighbour indices, -1 (missing) about one time in five."""
    index = rng.integers(0, vertices, size=(axes, 2, vertices))
    index[rng.random(index.shape) < 0.2] = -1
    return torch.from_numpy(index).to(torch.int32)


def blurred_plainly(values: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
    """Every axis' blur in order, in float64, a missing neighbour (-1) counting 0."""
    current = values.double()
    for minus, plus in neighbours.long():
        padded = torch.cat([current, torch.zeros(1, current.shape[1], dtype=torch.float64)])
        current = padded[:-1] + 0.5 * (padded[minus] + padded[plus])
    return current


@pytest.mark.parametrize("seed", range(3))
def test_blur_pair_equals_two_single_passes(seed):
    rng = np.random.default_rng(seed)
    vertices, columns = int(rng.integers(1, 60)), [3, 140, 16][seed]
    values = torch.from_numpy(rng.random((vertices, columns)).astype(np.float32))
    neighbours = random_neighbours(rng, 2, vertices)
    middle = torch.full_like(values, float("nan"))
    expected = torch.full_like(values, float("nan"))
    crf_triton.blur(values, *neighbours[0], middle)
    crf_triton.blur(middle, *neighbours[1], expected)
    out = torch.full_like(values, float("nan"))
    crf_triton.blur_pair(values, neighbours[0], neighbours[1], out)
    # The same float32 expressions in the same order: equal to the last bit.
    assert torch.equal(out, expected)
    torch.testing.assert_close(
        out.double(), blurred_plainly(values, neighbours), rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("axes", [1, 3, 6])
@pytest.mark.parametrize("axes_per_pass", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_blur_axes_runs_every_axis_in_order(axes, axes_per_pass, dtype):
    rng = np.random.default_rng(axes * 10 + axes_per_pass)
    vertices, columns = 37, 24
    values = torch.from_numpy(rng.random((vertices, columns)).astype(np.float32))
    neighbours = random_neighbours(rng, axes, vertices)
    first = values.to(dtype)
    expected = blurred_plainly(first, neighbours)  # blur_axes overwrites both buffers
    scratch = torch.full_like(first, float("nan"))
    result = crf_triton.blur_axes(first, scratch, neighbours, axes_per_pass=axes_per_pass)
    passes = crf_triton.blur_pass_count(axes, axes_per_pass)
    assert result is (first if passes % 2 == 0 else scratch)
    # Up to 2 ** 6 of growth through six blurs: compare relative to the largest value.
    tolerance = (1e-6 if dtype == torch.float32 else 4e-3) * float(expected.abs().max())
    torch.testing.assert_close(result.double(), expected, rtol=0, atol=tolerance)


def test_blur_axes_per_pass_is_checked():
    with pytest.raises(ValueError, match="axes_per_pass"):
        crf_triton.blur_pass_count(6, 3)


def reference_update(message, clipped, column_set, column_rank, point_image, counts):
    """The mean-field step written plainly, label set by label set and point by point."""
    q = torch.zeros_like(message, dtype=torch.float64)
    for point in range(message.shape[0]):
        for label_set in range(counts.shape[1]):
            count = int(counts[point_image[point], label_set])
            real = (column_set == label_set) & (column_rank < count)
            columns = torch.nonzero(real).flatten()
            m = message[point, columns].double()
            e = clipped[point, columns].double() * torch.exp(m - m.max())
            q[point, columns] = e / e.sum()
    return q


@pytest.mark.parametrize("seed", range(3))
def test_slice_update_equals_plain_slices_and_softmax(seed):
    rng = np.random.default_rng(seed)
    num_points, widths = 37, [[3, 5], [7, 2, 4], [40]][seed]
    num_columns = sum(widths) + 3  # trailing padding columns belong to no set
    num_images = 3
    point_image = torch.from_numpy(rng.integers(0, num_images, size=num_points)).to(torch.int32)
    counts = torch.tensor(
        [[int(rng.integers(1, w + 1)) for w in widths] for _ in range(num_images)],
        dtype=torch.int32,
    )
    column_set, column_rank = crf_triton.column_layout(widths, num_columns)
    assert column_set.tolist() == sum(([s] * w for s, w in enumerate(widths)), []) + [-1] * 3
    assert column_rank[: sum(widths)].tolist() == sum((list(range(w)) for w in widths), [])
    kernels = []
    for corners, vertices in ((3, 11), (6, 23)):
        vertex_values = torch.from_numpy(rng.random((vertices, num_columns)).astype(np.float32))
        corner_vertex = torch.from_numpy(rng.integers(0, vertices, size=(num_points, corners)))
        weights = torch.from_numpy(5 * rng.random((num_points, corners)).astype(np.float32))
        kernels.append((vertex_values, corner_vertex, weights))
    messages = [(w.double()[:, :, None] * v.double()[c]).sum(dim=1) for v, c, w in kernels]
    # Messages alone, one kernel and two (stacked: the second kernel's rows after the first's).
    out = torch.full((num_points, num_columns), float("nan"))
    crf_triton.slice_update(out, *kernels[0])
    torch.testing.assert_close(out.double(), messages[0], rtol=1e-5, atol=1e-5)
    stacked = (
        torch.cat([kernels[0][0], kernels[1][0]]),
        torch.cat([kernels[0][1], kernels[1][1] + 11], dim=1).to(torch.int32),
        torch.cat([kernels[0][2], kernels[1][2]], dim=1),
    )
    crf_triton.slice_update(out, *stacked)
    message = messages[0] + messages[1]
    torch.testing.assert_close(out.double(), message, rtol=1e-5, atol=1e-5)
    # The fused update: padding columns come out exactly 0.
    clipped = torch.from_numpy(rng.random((num_points, num_columns)).astype(np.float32)) + 1e-5
    out.fill_(float("nan"))
    crf_triton.slice_update(out, *stacked, clipped, column_set, column_rank, point_image, counts)
    expected = reference_update(message, clipped, column_set, column_rank, point_image, counts)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6)
    padding = expected == 0
    assert bool((out[padding] == 0).all())
    # Half-precision clipped probabilities, scaled by a power of two that the normalisation
    # cancels: floor values (1e-5, subnormal in float16 unscaled) included.
    clipped[torch.from_numpy(rng.random(clipped.shape) < 0.5)] = 1e-5
    expected = reference_update(message, clipped, column_set, column_rank, point_image, counts)
    half = crf_triton.scaled_clipped(clipped, torch.float16)
    assert half.dtype == torch.float16
    assert crf_triton.scaled_clipped(clipped, torch.float32) is clipped
    crf_triton.slice_update(out, *stacked, half, column_set, column_rank, point_image, counts)
    torch.testing.assert_close(out.double(), expected, rtol=2e-3, atol=1e-6)
    floor = (clipped == 1e-5) & (expected > 1e-3)
    assert floor.any()
    assert float(((out - expected).abs() / expected)[floor].max()) < 5e-4
    # What the scale is for: unscaled, 1e-5 is subnormal in float16 (stored 0.14 % off).
    unscaled = clipped.to(torch.float16)
    crf_triton.slice_update(out, *stacked, unscaled, column_set, column_rank, point_image, counts)
    assert float(((out - expected).abs() / expected)[floor].max()) > 1e-3


def test_slice_update_turns_non_finite_messages_into_nan_like_the_other_paths():
    """An inf or NaN message must not vanish in the max / clamp (Triton's min and max drop
    NaN): the point's label set comes out NaN, as the plain formula gives, and the rest is
    untouched."""
    rng = np.random.default_rng(3)
    num_points, widths = 12, [4, 3]
    num_columns = sum(widths)
    column_set, column_rank = crf_triton.column_layout(widths, num_columns)
    point_image = torch.zeros(num_points, dtype=torch.int32)
    counts = torch.tensor([widths], dtype=torch.int32)
    vertex_values = torch.from_numpy(rng.random((6, num_columns)).astype(np.float32))
    vertex_values[2, 1] = float("inf")  # set 0, label 1
    vertex_values[4, 5] = float("nan")  # set 1, label 1
    corner_vertex = torch.from_numpy(rng.integers(0, 6, size=(num_points, 3))).to(torch.int32)
    weights = torch.from_numpy(rng.random((num_points, 3)).astype(np.float32)) + 0.1
    clipped = torch.from_numpy(rng.random((num_points, num_columns)).astype(np.float32)) + 1e-5
    message = (weights.double()[:, :, None] * vertex_values.double()[corner_vertex.long()]).sum(1)
    expected = reference_update(message, clipped, column_set, column_rank, point_image, counts)
    out = torch.empty(num_points, num_columns)
    crf_triton.slice_update(
        out, vertex_values, corner_vertex, weights, clipped, column_set, column_rank,
        point_image, counts,
    )  # fmt: skip
    assert torch.isnan(expected).any() and torch.isfinite(expected).any()
    assert torch.equal(torch.isnan(out), torch.isnan(expected))
    finite = torch.isfinite(expected)
    torch.testing.assert_close(out.double()[finite], expected[finite], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "settings",
    [
        {"method": "triton", "precision": "float32"},
        {"method": "triton", "precision": "float16"},
        {"method": "spmm"},
    ],
)
def test_batch_refuses_to_return_non_finite_q(settings):
    image = random_image(np.random.default_rng(4), 12, 12)
    probs = random_probs(np.random.default_rng(5), 3, 12, 12)
    kernels = {"gaussian": (2.0, 3e38), "bilateral": (8.0, 40.0, 3e38)}  # messages overflow
    batch = CrfBatch([image], device="cpu", **settings, **kernels)
    with pytest.raises(FloatingPointError, match="overflowed"):
        batch.infer([probs], iterations=2)


def random_image(rng, height: int, width: int) -> np.ndarray:
    coarse = rng.integers(0, 256, size=(height // 4 + 1, width // 4 + 1, 3))
    image = np.repeat(np.repeat(coarse, 4, axis=0), 4, axis=1)[:height, :width]
    return np.clip(image + rng.integers(-15, 16, size=image.shape), 0, 255).astype(np.uint8)


def random_probs(rng, labels: int, height: int, width: int) -> np.ndarray:
    logits = rng.normal(scale=2.0, size=(labels, height, width))
    exp = np.exp(logits - logits.max(axis=0))
    return (exp / exp.sum(axis=0)).astype(np.float32)


# Small images and a wide colour bandwidth keep the interpreted kernels quick.
SMALL_KERNELS = {"gaussian": (2.0, 3.0), "bilateral": (8.0, 40.0, 5.0)}


def test_triton_batch_equals_the_sparse_product_path():
    rng = np.random.default_rng(11)
    shapes = [(9, 11), (7, 6)]
    images = [random_image(rng, h, w) for h, w in shapes]
    probs = [
        [random_probs(rng, k, h, w) for k in ks] for (h, w), ks in zip(shapes, [(3, 5), (4, 2)])
    ]
    expected = CrfBatch(images, device="cpu", **SMALL_KERNELS).infer(probs, iterations=2)
    batch = CrfBatch(images, device="cpu", method="triton", **SMALL_KERNELS)
    assert batch.num_vertices == CrfBatch(images, device="cpu", **SMALL_KERNELS).num_vertices
    got = batch.infer(probs, iterations=2)
    for got_sets, expected_sets in zip(got, expected):
        for q, ref in zip(got_sets, expected_sets):
            assert q.shape == ref.shape and q.dtype == torch.float32
            assert float((q - ref).abs().max()) < 5e-6
            torch.testing.assert_close(q.sum(dim=0), torch.ones_like(q[0]), atol=1e-5, rtol=0)


def test_splat_by_degree_gives_the_same_batch(monkeypatch):
    rng = np.random.default_rng(12)
    images = [random_image(rng, 10, 12), random_image(rng, 9, 7)]
    probs = [[random_probs(rng, 4, *image.shape[:2])] for image in images]
    expected = CrfBatch(images, device="cpu", method="triton", **SMALL_KERNELS).infer(probs, 2)
    monkeypatch.setattr(crf_triton, "SPLAT_BY_DEGREE", True)
    batch = CrfBatch(images, device="cpu", method="triton", **SMALL_KERNELS)
    plan = batch.kernels["bilateral"].lattice.splat_plan
    assert plan.light.numel() + plan.heavy.numel() == batch.num_vertices["bilateral"]
    for got, ref in zip(batch.infer(probs, 2), expected):
        assert float((got[0] - ref[0]).abs().max()) < 5e-6


@pytest.mark.parametrize("kernels", [{"gaussian": None}, {"bilateral": None}])
def test_triton_with_one_kernel(kernels):
    rng = np.random.default_rng(3)
    image = random_image(rng, 8, 9)
    probs = random_probs(rng, 4, 8, 9)
    settings = {**SMALL_KERNELS, **kernels}
    expected = CrfBatch([image], device="cpu", **settings).infer([probs], iterations=2)[0]
    got = CrfBatch([image], device="cpu", method="triton", **settings).infer([probs], 2)[0]
    assert float((got - expected).abs().max()) < 5e-6


def test_triton_negative_compatibilities_with_padding():
    """Messages far below 0: padded columns (0) must not set the row maximum."""
    rng = np.random.default_rng(4)
    images = [random_image(rng, 7, 8), random_image(rng, 6, 6)]
    probs = [random_probs(rng, 5, 7, 8), random_probs(rng, 2, 6, 6)]
    settings = {"gaussian": (2.0, -150.0), "bilateral": (8.0, 40.0, -150.0)}
    expected = CrfBatch(images, device="cpu", **settings).infer(probs, iterations=2)
    got = CrfBatch(images, device="cpu", method="triton", **settings).infer(probs, 2)
    for q, ref in zip(got, expected):
        assert bool(torch.isfinite(q).all())
        assert float((q - ref).abs().max()) < 5e-5


def test_triton_float16_stays_close():
    rng = np.random.default_rng(5)
    image = random_image(rng, 10, 10)
    probs = random_probs(rng, 5, 10, 10)
    expected = CrfBatch([image], device="cpu", **SMALL_KERNELS).infer([probs], iterations=3)[0]
    batch = CrfBatch([image], device="cpu", method="triton", precision="float16", **SMALL_KERNELS)
    got = batch.infer([probs], iterations=3)[0]
    assert got.dtype == torch.float32
    # Half-precision storage: about 1e-2 in Q (11-bit mantissas through splat, 6 blurs, slice).
    assert float((got - expected).abs().max()) < 3e-2
    torch.testing.assert_close(got.sum(dim=0), torch.ones_like(got[0]), atol=1e-5, rtol=0)


def test_bad_method_and_precision():
    image = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="precision must be one of"):
        CrfBatch([image], device="cpu", method="triton", precision="bfloat16")
    with pytest.raises(ValueError, match="needs method='triton'"):
        CrfBatch([image], device="cpu", precision="float16")
    out = torch.empty(3, crf_triton.MAX_COLUMNS + 1)
    lattice = (
        torch.zeros(1, out.shape[1]),
        torch.zeros(3, 3, dtype=torch.int32),
        torch.zeros(3, 3),
    )
    with pytest.raises(ValueError, match="label columns"):
        crf_triton.slice_update(out, *lattice)


def gpu_photos() -> list[np.ndarray]:
    import skimage.data
    from PIL import Image

    images = [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea()]
    images += [np.asarray(Image.open(p).convert("RGB")) for p in sorted(PHOTOS.glob("*.jpg"))[:2]]
    return [np.asarray(Image.fromarray(i).resize((320, 240), Image.LANCZOS)) for i in images]


@needs_gpu
@pytest.mark.parametrize("precision", ["float32", "float16"])
def test_gpu_triton_matches_native_on_photos(precision):
    images = gpu_photos()
    sets = [
        [partition_probs(slic_partition(image, r, grid=30), image.shape[:2]) for r in (40, 15, 8)]
        for image in images
    ]
    device_sets = [[torch.from_numpy(p).cuda() for p in s] for s in sets]
    batch = CrfBatch(images, device="cuda", method="triton", precision=precision)
    got = batch.infer(device_sets)
    ious, deltas = [], []
    for image, image_sets, image_got in zip(images, sets, got):
        lattice = CrfLattice(image)
        for probs, q in zip(image_sets, image_got):
            ref = lattice.infer(probs)
            ours = q.cpu().numpy()
            first, second = ours >= 0.5, ref >= 0.5
            union = np.logical_or(first, second).sum(axis=(1, 2))
            inter = np.logical_and(first, second).sum(axis=(1, 2))
            ious.append(np.where(union > 0, inter / np.maximum(union, 1), 1.0))
            deltas.append(float(np.abs(ours - ref).max()))
    ious = np.concatenate(ious)
    print(
        f"triton {precision}: mean IoU {ious.mean():.4f}, min {ious.min():.4f}, "
        f"max |dQ| {max(deltas):.2e}"
    )
    assert ious.mean() >= 0.98 and ious.min() >= 0.90
    if precision == "float32":
        assert max(deltas) < 5e-5


@needs_gpu
def test_gpu_splat_by_degree_equals_per_vertex_splat_on_a_photo_lattice():
    image = gpu_photos()[0]
    kernel = CrfBatch([image], device="cuda", method="triton").kernels["bilateral"]
    lattice = kernel.lattice
    values = torch.rand(lattice.entry_vertex.shape[0], 90, device="cuda")
    results = []
    for plan in (None, lattice.splat_plan):
        out = torch.empty(kernel.num_vertices, 90, device="cuda")
        arrays = (lattice.vertex_crow, lattice.splat_points, kernel.splat_values, values, out)
        results.append(crf_triton.splat(*arrays, plan=plan))
    torch.testing.assert_close(results[1], results[0], rtol=1e-5, atol=1e-5)


@needs_gpu
def test_gpu_blur_pairs_equal_single_axis_passes_on_a_photo_lattice():
    """The compiled paired blur against the compiled single passes on a real lattice (the
    same float32 expressions: equal up to the compiler's contraction choices)."""
    image = gpu_photos()[0]
    kernel = CrfBatch([image], device="cuda", method="triton").kernels["bilateral"]
    neighbours = kernel.lattice.blur_neighbours
    values = torch.rand(kernel.num_vertices, 90, device="cuda")
    results = []
    for axes_per_pass in (1, 2):
        first, scratch = values.clone(), torch.empty_like(values)
        blurred = crf_triton.blur_axes(first, scratch, neighbours, axes_per_pass=axes_per_pass)
        results.append(blurred.clone())
    torch.testing.assert_close(results[1], results[0], rtol=1e-6, atol=1e-6)


def compile_for_hopper(kernel, signature: dict, constants: dict, num_warps: int):
    """Compile a kernel to sm_90 machine code with Triton's own ptxas (no GPU needed), with
    the alignment Triton's launcher sees at run time: pointers by 16, the row width's group
    count not at all (e.g. 84 columns are 21 groups of 4 float32), so vector loads must come
    from COLUMN_GROUP alone."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = kernel._compiled
    aligned = {
        (i,): [["tt.divisibility", 16]]
        for i, name in enumerate(fn.arg_names)
        if signature.get(name, "").startswith("*")
    }
    source = ASTSource(fn=fn, signature=signature, constexprs=constants, attrs=aligned)
    return triton.compile(
        source, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps}
    )


def cubin_usage(compiled) -> tuple[int, int] | None:
    """(registers per thread, stack bytes: spills) of a compiled kernel's own cubin, as the
    cuobjdump Triton uses reports them; None (with a warning) where there is no cuobjdump."""
    import os
    import re
    import subprocess
    import tempfile
    import warnings

    import triton

    try:
        tool = triton.knobs.nvidia.cuobjdump.path  # Triton >= 3.4
    except AttributeError:
        tool = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump")
    if not tool or not os.path.isfile(tool):
        warnings.warn("no cuobjdump next to Triton: register and spill check skipped", stacklevel=2)
        return None
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "kernel.cubin")
        with open(path, "wb") as handle:
            handle.write(compiled.asm["cubin"])
        report = subprocess.run(
            [tool, "-res-usage", path], capture_output=True, text=True, check=True
        ).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+)", report)
    assert found, report
    return int(found.group(1)), int(found.group(2))


# The trailing arguments of the kernels tiled by rows (crf_triton._launch_row_tiles).
ROW_TILE_ARGUMENTS = {
    "num_vertices": "i32",
    "num_column_groups": "i32",
    "COLUMN_GROUP": "constexpr",
    "ROWS": "constexpr",
    "COLUMN_BLOCK": "constexpr",
}


@pytest.mark.parametrize("storage", ["fp32", "fp16"])
def test_kernels_compile_for_hopper_with_vector_loads(storage):
    """What the GPU will run compiles here: every kernel down to a cubin, the label rows read
    16 bytes at a time (the bandwidth the design counts on)."""
    values = f"*{storage}"
    group = 4 if storage == "fp32" else 8  # 16 bytes (crf_triton.column_group)
    # crow, each entry's point and weight, the point rows and the vertex rows
    splat_arrays = {
        "crow_ptr": "*i64",
        "point_ptr": "*i32",
        "weight_ptr": "*fp32",
        "src_ptr": values,
        "dst_ptr": values,
    }
    splat = compile_for_hopper(
        crf_triton._SPLAT,
        {
            **splat_arrays,
            "order_ptr": "*i32",
            "num_column_groups": "i32",
            "COLUMN_GROUP": "constexpr",
            "ORDERED": "constexpr",
            "ENTRY_BLOCK": "constexpr",
            "COLUMN_BLOCK": "constexpr",
        },
        {"COLUMN_GROUP": group, "ORDERED": True, "ENTRY_BLOCK": 16, "COLUMN_BLOCK": 128},
        4,
    )
    splat_light = compile_for_hopper(
        crf_triton._SPLAT_LIGHT,
        {
            **splat_arrays,
            "order_ptr": "*i32",
            "num_rows": "i32",
            "num_column_groups": "i32",
            "COLUMN_GROUP": "constexpr",
            "ROWS": "constexpr",
            "MAX_DEGREE": "constexpr",
            "COLUMN_BLOCK": "constexpr",
        },
        {"COLUMN_GROUP": group, "ROWS": 16, "MAX_DEGREE": 16, "COLUMN_BLOCK": 128},
        8,  # splat()'s default for light tiles of 16 x 128
    )
    splat_rows = compile_for_hopper(
        crf_triton._SPLAT_ROWS,
        {
            **splat_arrays,
            **ROW_TILE_ARGUMENTS,
        },
        {"COLUMN_GROUP": group, "ROWS": 8, "COLUMN_BLOCK": 128},
        4,
    )
    blur = compile_for_hopper(
        crf_triton._BLUR,
        {
            "src_ptr": values,
            "dst_ptr": values,
            "minus_ptr": "*i32",
            "plus_ptr": "*i32",
            **ROW_TILE_ARGUMENTS,
        },
        {"COLUMN_GROUP": group, "ROWS": 16, "COLUMN_BLOCK": 128},
        4,
    )
    blur_pair = compile_for_hopper(
        crf_triton._BLUR_PAIR,
        {
            "src_ptr": values,
            "dst_ptr": values,
            "minus_a_ptr": "*i32",
            "plus_a_ptr": "*i32",
            "minus_b_ptr": "*i32",
            "plus_b_ptr": "*i32",
            **ROW_TILE_ARGUMENTS,
        },
        {"COLUMN_GROUP": group, "ROWS": 16, "COLUMN_BLOCK": 128},
        4,
    )
    slice_signature = {
        "out_ptr": values,
        "clipped_ptr": "*fp32",
        "vertex_values_ptr": values,
        "corner_vertex_ptr": "*i32",
        "corner_weight_ptr": "*fp32",
        "column_set_ptr": "*i32",
        "column_rank_ptr": "*i32",
        "point_image_ptr": "*i32",
        "counts_ptr": "*i32",
        "num_points": "i32",
        "num_column_groups": "i32",
        "COLUMN_GROUP": "constexpr",
        "CORNERS": "constexpr",
        "NUM_SETS": "constexpr",
        "UPDATE": "constexpr",
        "ROWS": "constexpr",
        "BLOCK_COLUMNS": "constexpr",
    }
    update = compile_for_hopper(
        crf_triton._SLICE_UPDATE,
        slice_signature,
        {
            "COLUMN_GROUP": group,
            "CORNERS": 9,
            "NUM_SETS": 3,
            "UPDATE": True,
            "ROWS": 16,
            "BLOCK_COLUMNS": 128,
        },
        8,
    )
    messages = compile_for_hopper(
        crf_triton._SLICE_UPDATE,
        slice_signature,
        {
            "COLUMN_GROUP": 1,
            "CORNERS": 6,
            "NUM_SETS": 1,
            "UPDATE": False,
            "ROWS": 2048,
            "BLOCK_COLUMNS": 1,
        },
        16,  # slice_update()'s default for a single column
    )
    for compiled in (splat, splat_light, splat_rows, blur, blur_pair, update, messages):
        assert compiled.asm["cubin"]
        usage = cubin_usage(compiled)
        if usage is not None:  # no spills (a stack frame), and at most 128 registers per thread
            registers, stack = usage
            assert stack == 0 and registers <= 128, (compiled.name, usage)
    for compiled in (splat, splat_light, splat_rows, blur, blur_pair, update):
        assert "ld.global.v4.b32" in compiled.asm["ptx"]
    # ... because of COLUMN_GROUP: with groups of one column the same rows load piecemeal.
    ungrouped = compile_for_hopper(
        crf_triton._BLUR,
        {"src_ptr": values, "dst_ptr": values, "minus_ptr": "*i32", "plus_ptr": "*i32",
         **ROW_TILE_ARGUMENTS},
        {"COLUMN_GROUP": 1, "ROWS": 16, "COLUMN_BLOCK": 128},
        4,
    )  # fmt: skip
    assert "ld.global.v4.b32" not in ungrouped.asm["ptx"]
