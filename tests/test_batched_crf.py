"""Discovery's batched CRF step (hassod.batched_crf) against the per-image CPU step.

crf_candidates_batch runs the torch CRF (on the CPU here, on CUDA in discovery runs) for every
image and threshold of a batch; each result must match postprocess.crf_candidates with the
native CRF: the same agreeing regions and masks that differ in at most a few pixels whose
marginal sits within float rounding of 0.5.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
skimage_data = pytest.importorskip("skimage.data")

from hassod.batched_crf import crf_candidates_batch  # noqa: E402
from hassod.discover import fixed_size  # noqa: E402
from hassod.postprocess import CrfParams, FilterParams, crf_candidates  # noqa: E402
from hassod.testing import slic_partition, voronoi_partition  # noqa: E402

SIZE = 96  # the CRF's fixed size here (480 in the paper): small enough for CPU tests


def photo(name: str, height: int, width: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(getattr(skimage_data, name)()).resize((width, height)))


def _cuda_case(method: str):
    import torch

    return pytest.param(
        "cuda",
        method,
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
    )


@pytest.mark.parametrize(
    "device, method", [("cpu", "spmm"), _cuda_case("spmm"), _cuda_case("triton")]
)
def test_batch_matches_the_per_image_step(device, method):
    images = [photo("astronaut", 120, 100), photo("coffee", 64, 90), photo("chelsea", 75, 75)]
    crf_images = [fixed_size(image, SIZE) for image in images]
    partitions = [
        [slic_partition(crf_image, regions, grid=12) for regions in (12, 6, 3)]
        for crf_image in crf_images
    ]
    partitions[2][1] = voronoi_partition(5, grid=12, seed=3)
    crf = CrfParams(iterations=5, backend="torch", torch_method=method)
    filters = FilterParams(keep_iou=0.3)
    got = crf_candidates_batch(
        crf_images, partitions, [image.shape[:2] for image in images], crf, filters, device=device
    )
    assert len(got) == 3
    native = CrfParams(iterations=5)
    differing = total = 0
    for image, crf_image, labels_list, per_threshold in zip(images, crf_images, partitions, got):
        assert len(per_threshold) == 3
        for labels, candidates in zip(labels_list, per_threshold):
            expected = crf_candidates(labels, crf_image, image.shape[:2], native, filters)
            np.testing.assert_array_equal(candidates.regions, expected.regions)
            np.testing.assert_allclose(candidates.agreement, expected.agreement, atol=1e-3)
            assert candidates.masks.dtype == bool
            assert candidates.masks.shape == expected.masks.shape
            differing += int((candidates.masks != expected.masks).sum())
            total += expected.masks.size
    assert total > 0
    assert differing <= 1e-4 * total, (differing, total)
    # One image per CRF batch (grouping by label count, chunking): the same results.
    alone = crf_candidates_batch(
        crf_images, partitions, [image.shape[:2] for image in images], crf, filters,
        device=device, max_batch_elements=1,
    )  # fmt: skip
    for per_threshold, per_threshold_alone in zip(got, alone):
        for together, single in zip(per_threshold, per_threshold_alone):
            np.testing.assert_array_equal(together.regions, single.regions)
            assert (together.masks != single.masks).sum() <= 1e-4 * together.masks.size


def test_agreement_filter_and_empty_results():
    """keep_iou above 1 keeps nothing: empty (0, H, W) masks at the original size."""
    image = photo("astronaut", 50, 40)
    crf_image = fixed_size(image, 48)
    labels = voronoi_partition(4, grid=6, seed=0)
    (only,) = crf_candidates_batch(
        [crf_image], [[labels]], [(50, 40)], filters=FilterParams(keep_iou=1.5), device="cpu"
    )
    assert only[0].masks.shape == (0, 50, 40)
    assert len(only[0].regions) == 0 and len(only[0].agreement) == int(labels.max()) + 1


def test_bad_inputs():
    image = fixed_size(photo("astronaut", 30, 30), 24)
    labels = voronoi_partition(3, grid=6, seed=0)
    assert crf_candidates_batch([], [], [], device="cpu") == []
    with pytest.raises(ValueError, match="same length"):
        crf_candidates_batch([image], [[labels], [labels]], [(30, 30)], device="cpu")
    with pytest.raises(ValueError, match="2-D label map"):
        crf_candidates_batch([image], [[labels[None]]], [(30, 30)], device="cpu")


def test_a_batch_that_runs_out_of_memory_is_split(monkeypatch):
    import torch

    from hassod import batched_crf

    images = [fixed_size(photo(name, 40, 40), 32) for name in ("astronaut", "coffee", "chelsea")]
    partitions = [[voronoi_partition(3 + i, grid=6, seed=i)] for i in range(3)]
    sizes = [(40, 40)] * 3
    expected = crf_candidates_batch(images, partitions, sizes, device="cpu")
    real = batched_crf._chunk_candidates
    calls = []

    def small_memory(chunk_images, *args):
        calls.append(len(chunk_images))
        if len(chunk_images) > 1:
            raise torch.OutOfMemoryError("pretend the device is full")
        return real(chunk_images, *args)

    monkeypatch.setattr(batched_crf, "_chunk_candidates", small_memory)
    got = crf_candidates_batch(images, partitions, sizes, device="cpu")
    assert calls[0] == 3 and sorted(calls[1:]) == [1, 1, 1, 2]
    for single, batched in zip(got, expected):
        np.testing.assert_array_equal(single[0].regions, batched[0].regions)
        np.testing.assert_array_equal(single[0].masks, batched[0].masks)


def test_a_failed_attempts_memory_is_released_before_the_halves_run(monkeypatch):
    """The retry must not run inside the except block, whose traceback keeps the failed
    attempt's frames (and on a GPU their tensors) alive."""
    import gc
    import weakref

    import torch

    from hassod import batched_crf

    images = [fixed_size(photo(name, 40, 40), 32) for name in ("astronaut", "coffee")]
    partitions = [[voronoi_partition(3 + i, grid=6, seed=i)] for i in range(2)]
    real = batched_crf._chunk_candidates
    held = []

    class Buffer:  # stands for the attempt's device tensors
        pass

    def small_memory(chunk_images, *args):
        if len(chunk_images) > 1:
            buffer = Buffer()  # a local of the failing frame, as the CRF's tensors are
            held.append(weakref.ref(buffer))
            raise torch.OutOfMemoryError("pretend the device is full")
        gc.collect()
        assert held[0]() is None, "the failed attempt's memory is still referenced"
        return real(chunk_images, *args)

    monkeypatch.setattr(batched_crf, "_chunk_candidates", small_memory)
    got = crf_candidates_batch(images, partitions, [(40, 40)] * 2, device="cpu")
    assert len(got) == 2 and len(held) == 1
