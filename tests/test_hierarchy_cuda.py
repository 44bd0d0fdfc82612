"""The CUDA hierarchy path (hassod._C_cuda) against the CPU path: identical intersections,
parents, depths and levels, as torch tensors of the documented dtypes on the masks' device.

The comparisons need a CUDA device and the CUDA module (`HASSOD_CUDA=1 pip install .`); each
skips with the reason otherwise. The few tests at the end check argument validation and error
messages, which need no device: they run wherever the module is built.
"""

from __future__ import annotations

import numpy as np
import pytest

import hassod
from hassod import _cuda_hierarchy
from hassod._native import cuda_module, cuda_status

torch = pytest.importorskip("torch")

_STATUS = cuda_status()
_MODULE_SKIP = None
if not _STATUS["built"]:
    _MODULE_SKIP = f"hassod._C_cuda is not built ({_STATUS['reason']}); HASSOD_CUDA=1 pip install ."
_GPU_SKIP = _MODULE_SKIP or (
    None if torch.cuda.is_available() else "no CUDA device (torch.cuda.is_available() is False)"
)
needs_module = pytest.mark.skipif(_MODULE_SKIP is not None, reason=_MODULE_SKIP or "")
needs_gpu = pytest.mark.skipif(_GPU_SKIP is not None, reason=_GPU_SKIP or "")

COVERS = (0.9, 0.75, 1.0, 0.5)
DTYPES = {
    "intersections": torch.int64,
    "parent": torch.int32,
    "depth": torch.int32,
    "level": torch.int8,
}


def nested_masks(rng: np.random.Generator, count: int, height: int, width: int) -> np.ndarray:
    """(count, height, width) bool masks with nesting: boxes, parts of earlier masks (with a few
    stray pixels, so coverage ratios land near the thresholds), duplicates, noise, empties."""
    masks = np.zeros((count, height, width), dtype=bool)
    for index in range(count):
        kind = int(rng.integers(0, 6)) if index else 0
        y0, y1 = sorted(rng.integers(0, height + 1, 2))
        x0, x1 = sorted(rng.integers(0, width + 1, 2))
        box = np.zeros((height, width), dtype=bool)
        box[y0:y1, x0:x1] = True
        if kind == 0:
            masks[index] = box
        elif kind <= 2:
            part = box & masks[rng.integers(index)]
            masks[index] = part | (rng.random((height, width)) < 0.01)
        elif kind == 3:
            masks[index] = masks[rng.integers(index)]
        elif kind == 4:
            masks[index] = rng.random((height, width)) < rng.random()
        # kind 5: left empty
    return masks


def assert_same_hierarchy(gpu: hassod.Hierarchy, cpu: hassod.Hierarchy, device=None) -> None:
    assert gpu.cover == cpu.cover
    for field, dtype in DTYPES.items():
        value = getattr(gpu, field)
        assert torch.is_tensor(value), field
        assert value.device.type == "cuda", field
        if device is not None:
            assert value.device == device, field
        assert value.dtype == dtype, field
        np.testing.assert_array_equal(value.cpu().numpy(), getattr(cpu, field), err_msg=field)


def cuda(masks: np.ndarray):
    return torch.from_numpy(masks).cuda()


# --------------------------------------------------------------------------------------------
# CUDA vs CPU (need a device)
# --------------------------------------------------------------------------------------------


@needs_gpu
@pytest.mark.parametrize(
    "shape",
    [
        (1, 1, 1),
        (1, 5, 7),
        (2, 3, 3),
        (5, 1, 63),  # one partial word
        (5, 1, 64),  # exactly one word
        (5, 1, 65),  # a word and one pixel
        (15, 9, 11),
        (16, 31, 29),  # one full tile
        (17, 7, 13),  # two tiles, the second with one mask
        (33, 64, 64),  # three tiles, a whole chunk of 64 words
        (40, 1, 4097),  # chunk boundary + 1
        (70, 20, 33),
    ],
)
@pytest.mark.parametrize("cover", COVERS)
def test_nested_masks_match_cpu(shape, cover):
    masks = nested_masks(np.random.default_rng(sum(shape)), *shape)
    assert_same_hierarchy(
        hassod.build_hierarchy(cuda(masks), cover), hassod.build_hierarchy(masks, cover)
    )


@needs_gpu
def test_coverage_matrix_matches_cpu():
    masks = nested_masks(np.random.default_rng(1), 23, 37, 41)
    intersections, areas = hassod.coverage_matrix(cuda(masks))
    expected, expected_areas = hassod.coverage_matrix(masks)
    assert intersections.dtype == areas.dtype == torch.int64
    assert intersections.is_cuda and areas.is_cuda
    np.testing.assert_array_equal(intersections.cpu().numpy(), expected)
    np.testing.assert_array_equal(areas.cpu().numpy(), expected_areas)


@needs_gpu
def test_many_masks_many_tiles():
    masks = nested_masks(np.random.default_rng(2), 300, 12, 10)
    assert_same_hierarchy(hassod.build_hierarchy(cuda(masks)), hassod.build_hierarchy(masks))


@needs_gpu
def test_full_size_images():
    rng = np.random.default_rng(3)
    batch = [nested_masks(rng, 16, 480, 640) for _ in range(4)]
    gpu = hassod.build_hierarchy_batch([cuda(masks) for masks in batch])
    for got, masks in zip(gpu, batch):
        assert_same_hierarchy(got, hassod.build_hierarchy(masks))


@needs_gpu
def test_zero_masks():
    result = hassod.build_hierarchy(torch.zeros((0, 5, 6), dtype=torch.bool, device="cuda"))
    assert len(result) == 0
    assert tuple(result.intersections.shape) == (0, 0)
    assert_same_hierarchy(result, hassod.build_hierarchy(np.zeros((0, 5, 6), dtype=bool)))


@needs_gpu
def test_masks_without_pixels():
    masks = np.zeros((3, 0, 4), dtype=bool)
    result = hassod.build_hierarchy(cuda(masks))
    assert_same_hierarchy(result, hassod.build_hierarchy(masks))
    assert (result.parent == -1).all()


@needs_gpu
def test_exact_threshold_and_ties():
    # On one 1 x 40 row: A (area 10) shares exactly 9 pixels with B1 and B2 (equal areas 30),
    # so cov(A in B) = 0.9 exactly and the tie goes to the lower index; C duplicates A (mutual
    # cover 1: neither covers the other); E is empty.
    row = np.zeros((6, 1, 40), dtype=bool)
    row[0, 0, 0:10] = True  # A
    row[1, 0, 1:31] = True  # B1
    row[2, 0, 1:31] = True  # B2 (equal to B1)
    row[3, 0, 0:10] = True  # C == A
    row[4, 0, 0:40] = True  # the whole row
    for cover in (0.9, np.nextafter(0.9, 1.0), 0.3, 1.0):
        expected = hassod.build_hierarchy(row, cover)
        assert_same_hierarchy(hassod.build_hierarchy(cuda(row), cover), expected)
    assert hassod.build_hierarchy(row, 0.9).parent[0] == 1


@needs_gpu
def test_batch_matches_cpu():
    rng = np.random.default_rng(4)
    shapes = [(0, 4, 4), (3, 0, 5), (1, 1, 1), (17, 9, 70), (16, 33, 65), (5, 1, 64)]
    shapes += [
        (int(rng.integers(0, 20)), int(rng.integers(1, 30)), int(rng.integers(1, 90)))
        for _ in range(70)
    ]
    batch = [nested_masks(rng, *shape) for shape in shapes]  # 76 images: two launches of <= 64
    for cover in (0.9, 0.75):
        gpu = hassod.build_hierarchy_batch([cuda(masks) for masks in batch], cover)
        cpu = hassod.build_hierarchy_batch(batch, cover)
        assert len(gpu) == len(cpu)
        for got, expected in zip(gpu, cpu):
            assert_same_hierarchy(got, expected)


@needs_gpu
def test_empty_batch():
    assert hassod.build_hierarchy_batch([]) == []


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64])
def test_integer_masks_nonzero_is_inside(dtype):
    rng = np.random.default_rng(5)
    masks = nested_masks(rng, 9, 13, 17)
    values = torch.from_numpy(masks.astype(np.int64) * rng.integers(1, 100, masks.shape))
    expected = hassod.build_hierarchy(masks)
    assert_same_hierarchy(hassod.build_hierarchy(values.to(dtype).cuda()), expected)


@needs_gpu
def test_soft_masks_rejected():
    with pytest.raises(ValueError, match="threshold soft masks first"):
        hassod.build_hierarchy(torch.rand((2, 3, 3), device="cuda"))
    with pytest.raises(ValueError, match=r"shape \(K, H, W\)"):
        hassod.coverage_matrix(torch.zeros((3, 3), dtype=torch.bool, device="cuda"))


@needs_gpu
def test_views_offsets_and_strides():
    masks = nested_masks(np.random.default_rng(6), 12, 21, 34)
    base = cuda(masks)
    size = 11 * 21 * 34
    flat = masks.reshape(-1)
    views = [
        (base[1:], masks[1:]),  # data_ptr past the allocation's start
        (cuda(flat)[3 : 3 + size].view(11, 21, 34), flat[3 : 3 + size].reshape(11, 21, 34)),  # odd
        (base[:, :, ::3], masks[:, :, ::3]),  # not contiguous
        (base.transpose(1, 2), masks.transpose(0, 2, 1)),
    ]
    for tensor, array in views:
        assert_same_hierarchy(hassod.build_hierarchy(tensor), hassod.build_hierarchy(array))


@needs_gpu
def test_intersections_input_on_cuda():
    masks = nested_masks(np.random.default_rng(7), 19, 15, 15)
    matrix, _ = hassod.coverage_matrix(masks)
    for dtype in (torch.int64, torch.int32):
        got = hassod.build_hierarchy(intersections=torch.from_numpy(matrix).to(dtype).cuda())
        assert_same_hierarchy(got, hassod.build_hierarchy(intersections=matrix))
    asymmetric = torch.from_numpy(matrix).cuda()
    asymmetric[0, 1] += 1
    with pytest.raises(ValueError, match="symmetric"):
        hassod.build_hierarchy(intersections=asymmetric)
    with pytest.raises(ValueError, match="integer pixel counts"):
        hassod.build_hierarchy(intersections=torch.from_numpy(matrix).double().cuda())
    with pytest.raises(ValueError, match="square"):
        hassod.build_hierarchy(intersections=torch.zeros((2, 3), dtype=torch.int64, device="cuda"))


@needs_gpu
def test_hierarchy_methods_on_cuda():
    masks = nested_masks(np.random.default_rng(8), 25, 30, 30)
    gpu, cpu = hassod.build_hierarchy(cuda(masks)), hassod.build_hierarchy(masks)
    assert repr(gpu) == repr(cpu)
    assert gpu.areas.is_cuda and gpu.roots.is_cuda
    np.testing.assert_array_equal(gpu.areas.cpu().numpy(), cpu.areas)
    np.testing.assert_array_equal(gpu.roots.cpu().numpy(), cpu.roots)
    for index in range(-len(cpu), len(cpu)):
        np.testing.assert_array_equal(gpu.children(index).cpu().numpy(), cpu.children(index))


@needs_gpu
def test_dedup_on_cuda():
    masks = nested_masks(np.random.default_rng(9), 30, 20, 20)
    for iou in (1.0, 0.8):
        kept = hassod.dedup_masks(cuda(masks), iou)
        assert kept.is_cuda and kept.dtype == torch.int64
        np.testing.assert_array_equal(kept.cpu().numpy(), hassod.dedup_masks(masks, iou))


@needs_gpu
def test_runs_on_the_current_stream():
    rng = np.random.default_rng(10)
    batch = [nested_masks(rng, 16, 120, 160) for _ in range(6)]
    tensors = [cuda(masks) for masks in batch]
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        gpu = hassod.build_hierarchy_batch(tensors)
    torch.cuda.current_stream().wait_stream(stream)
    for got, masks in zip(gpu, batch):
        assert_same_hierarchy(got, hassod.build_hierarchy(masks))


@needs_gpu
def test_batch_mixing_devices_rejected():
    masks = np.ones((2, 3, 3), dtype=bool)
    with pytest.raises(ValueError, match="all CUDA tensors"):
        hassod.build_hierarchy_batch([cuda(masks), masks])


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
@needs_gpu
def test_second_device():
    masks = nested_masks(np.random.default_rng(11), 20, 25, 25)
    device = torch.device("cuda", 1)
    got = hassod.build_hierarchy(torch.from_numpy(masks).to(device))
    assert_same_hierarchy(got, hassod.build_hierarchy(masks), device=device)


# --------------------------------------------------------------------------------------------
# Validation and error messages (no device needed)
# --------------------------------------------------------------------------------------------


@needs_module
def test_native_rejects_bad_sizes_before_touching_the_device():
    module = cuda_module()
    with pytest.raises(ValueError, match="one entry per image"):
        module.coverage_matrix_batch([0], [1, 2], [3], 0, 0, 0)
    with pytest.raises(ValueError, match="mask count"):
        module.coverage_matrix_batch([0], [-1], [3], 0, 0, 0)
    with pytest.raises(ValueError, match="null pointer"):
        module.coverage_matrix_batch([0], [2], [3], 8, 0, 0)
    with pytest.raises(ValueError, match="aligned"):
        module.coverage_matrix_batch([8], [2], [3], 4, 0, 0)
    with pytest.raises(ValueError, match="cover"):
        module.build_forest_batch(8, [2], 1.5, 8, 8, 8, 0, 0)


@needs_module
def test_native_empty_batches_need_no_device():
    module = cuda_module()
    assert module.coverage_matrix_batch([], [], [], 0, 0, 0) is None
    assert module.coverage_matrix_batch([0, 0], [0, 0], [5, 0], 0, 0, 0) is None
    assert module.build_forest_batch(0, [0, 0], 0.9, 0, 0, 0, 0, 0) is None


@needs_module
@pytest.mark.skipif(
    _STATUS.get("device_count", 0) > 0, reason="only without a CUDA device (fake addresses)"
)
def test_native_without_device_raises_runtime_error():
    with pytest.raises(RuntimeError, match="hassod CUDA: .* failed: "):
        cuda_module().coverage_matrix_batch([8], [1], [64], 8, 0, 0)


def test_missing_module_error_says_why(monkeypatch):
    monkeypatch.setattr(_cuda_hierarchy, "cuda_module", lambda: None)
    monkeypatch.setattr(
        _cuda_hierarchy, "cuda_status", lambda: {"built": False, "reason": "no nvcc"}
    )
    with pytest.raises(
        RuntimeError, match=r"hassod._C_cuda is not built \(no nvcc\).*HASSOD_CUDA=1"
    ):
        _cuda_hierarchy.native_module()
