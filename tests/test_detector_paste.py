"""Mask pasting (hassod.detector.paste) against a per-pixel bilinear reference, and its two
paths (whole image in chunks, per box) against each other."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from hassod.detector.paste import paste_masks  # noqa: E402


def reference_paste(probs: np.ndarray, box, height: int, width: int) -> np.ndarray:
    """Float64 samples of one (M, M) mask at every pixel centre: Detectron2's mapping and
    bilinear interpolation with zeros outside the mask (align_corners=False), written out."""
    cells_y, cells_x = probs.shape
    x0, y0, x1, y1 = (float(v) for v in box)
    out = np.zeros((height, width))
    if not (x1 > x0 and y1 > y0):
        return out
    for y in range(height):
        sy = (y + 0.5 - y0) / (y1 - y0) * cells_y - 0.5
        for x in range(width):
            sx = (x + 0.5 - x0) / (x1 - x0) * cells_x - 0.5
            fy, fx = int(np.floor(sy)), int(np.floor(sx))
            total = 0.0
            for ny, wy in ((fy, 1 - (sy - fy)), (fy + 1, sy - fy)):
                for nx, wx in ((fx, 1 - (sx - fx)), (fx + 1, sx - fx)):
                    if 0 <= ny < cells_y and 0 <= nx < cells_x:
                        total += wy * wx * probs[ny, nx]
            out[y, x] = total
    return out


def random_case(rng: np.random.Generator, count: int, height: int, width: int, cells: int):
    probs = rng.random((count, cells, cells)).astype(np.float32)
    probs[rng.random(probs.shape) < 0.2] = 1.0  # saturated sigmoids: edge values of exactly 1
    centres = rng.uniform(-0.2, 1.2, size=(count, 2)) * [width, height]
    sizes = np.exp(rng.uniform(np.log(0.5), np.log(1.5 * max(height, width)), size=(count, 2)))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1).astype(np.float32)
    # Corners on half pixels put pixel centres exactly on box edges.
    on_grid = rng.random(count) < 0.3
    boxes[on_grid] = np.round(boxes[on_grid] * 2) / 2
    return torch.from_numpy(probs), torch.from_numpy(boxes)


@pytest.mark.parametrize("seed", range(6))
def test_matches_the_per_pixel_reference(seed):
    rng = np.random.default_rng(seed)
    height, width = int(rng.integers(5, 30)), int(rng.integers(5, 30))
    cells = int(rng.choice([2, 5, 28]))
    threshold = float(rng.choice([0.5, 0.3, 0.8]))
    probs, boxes = random_case(rng, 6, height, width, cells)
    for whole_image in (True, False):
        got = paste_masks(probs, boxes, (height, width), threshold, whole_image=whole_image)
        assert got.shape == (6, height, width) and got.dtype == torch.bool
        for i in range(6):
            ref = reference_paste(probs[i].double().numpy(), boxes[i].tolist(), height, width)
            clear = np.abs(ref - threshold) > 1e-5  # float32 vs float64 at the threshold
            np.testing.assert_array_equal(got[i].numpy()[clear], (ref >= threshold)[clear])


@pytest.mark.parametrize("seed", range(8))
def test_per_box_and_whole_image_paths_are_identical(seed):
    rng = np.random.default_rng(100 + seed)
    height, width = int(rng.integers(20, 120)), int(rng.integers(20, 120))
    threshold = float(rng.choice([0.5, 0.25, 0.75, 0.5]))
    # Coarse masks in big boxes: mask cells many pixels wide, so the per-box path's margin
    # (half a cell) matters at thresholds below 0.5.
    probs, boxes = random_case(rng, 40, height, width, [5, 28, 2, 14][seed % 4])
    whole = paste_masks(probs, boxes, (height, width), threshold, whole_image=True)
    per_box = paste_masks(probs, boxes, (height, width), threshold, whole_image=False)
    assert torch.equal(whole, per_box)
    assert whole.any()  # the cases are not trivially empty
    # Chunks of a few masks give the same as one chunk.
    chunked = paste_masks(
        probs,
        boxes,
        (height, width),
        threshold,
        whole_image=True,
        chunk_bytes=3 * height * width * 12,
    )
    assert torch.equal(chunked, whole)


def test_mask_shapes_dtypes_and_degenerate_boxes():
    probs = torch.full((3, 1, 4, 4), 0.9, dtype=torch.float16)
    boxes = torch.tensor([[2.0, 2.0, 6.0, 5.0], [3.0, 3.0, 3.0, 8.0], [5.0, 1.0, 4.0, 2.0]])
    for whole_image in (True, False):
        masks = paste_masks(probs, boxes, (8, 10), whole_image=whole_image)
        assert masks[0].sum() > 0 and not masks[1:].any()  # zero / negative width: empty
        # The box's pixels and nothing far outside.
        assert masks[0, 2:5, 2:6].all() and not masks[0, 6:, :].any()
    empty = paste_masks(torch.zeros(0, 28, 28), torch.zeros(0, 4), (5, 7))
    assert empty.shape == (0, 5, 7) and empty.dtype == torch.bool


def test_bad_inputs():
    probs, boxes = torch.zeros(2, 28, 28), torch.zeros(2, 4)
    with pytest.raises(ValueError, match="mask_probs must be"):
        paste_masks(torch.zeros(2, 2, 28, 28), boxes, (5, 5))
    with pytest.raises(ValueError, match="mask_probs must be"):
        paste_masks(torch.zeros(28, 28), boxes, (5, 5))
    with pytest.raises(ValueError, match="boxes must be"):
        paste_masks(probs, torch.zeros(3, 4), (5, 5))
    with pytest.raises(ValueError, match="image_size must be positive"):
        paste_masks(probs, boxes, (0, 5))
    with pytest.raises(ValueError, match="threshold must be > 0"):
        paste_masks(probs, boxes, (5, 5), threshold=0.0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_equals_cpu():
    rng = np.random.default_rng(7)
    probs, boxes = random_case(rng, 50, 90, 130, 28)
    cpu = paste_masks(probs, boxes, (90, 130))
    gpu = paste_masks(probs.cuda(), boxes.cuda(), (90, 130))
    assert gpu.is_cuda and torch.equal(gpu.cpu(), cpu)


def test_whole_image_chunks_stay_within_chunk_bytes():
    """The documented bound (12 bytes per pixel and mask: the float32 sampling grid and the
    samples) holds for the live tensors at every step, tracked with a dispatch mode."""
    import weakref

    from torch.utils._python_dispatch import TorchDispatchMode

    class LiveBytes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.live: dict[int, int] = {}
            self.peak = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for tensor in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(tensor, torch.Tensor):
                    storage = tensor.untyped_storage()
                    key = storage.data_ptr()
                    if key and key not in self.live:
                        self.live[key] = storage.nbytes()
                        weakref.finalize(tensor, self.live.pop, key, None)
            self.peak = max(self.peak, sum(self.live.values()))
            return out

    height = width = 300
    count = 10
    probs = torch.rand(count, 1, 28, 28)
    boxes = torch.tensor([[50.0, 60.0, 250.0, 280.0]]).repeat(count, 1)
    boxes[3] = torch.tensor([80.0, 80.0, 80.0, 120.0])  # degenerate: infinite coordinates
    chunk = 12 * height * width * 5  # two chunks of 5 masks
    with LiveBytes() as tracker:
        pasted = paste_masks(probs, boxes, (height, width), whole_image=True, chunk_bytes=chunk)
    output = count * height * width  # the (n, H, W) bool result
    assert tracker.peak - output <= 1.05 * chunk
    assert not pasted[3].any()
