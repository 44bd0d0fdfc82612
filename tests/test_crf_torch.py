"""Batched torch dense CRF (hassod.crf_torch), the GPU path, against the native CPU CRF.

On the CPU, CrfBatch runs the same torch code the GPU runs, so its lattice construction, padding
and label-set layout are checked here on every machine: identical lattices (vertex counts),
Q within a few 1e-6 of the native CRF (itself equal to pydensecrf, tests/test_crf.py), on random
images and label sets and on a real photo. The tests marked ``needs_gpu`` compare the CUDA path
with the native CPU CRF on photos (the issue's bar: thresholded masks mean IoU >= 0.98, none
below 0.90) and skip with the reason where no CUDA device is present.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hassod.crf import CrfLattice, dense_crf, dense_crf_batch
from hassod.testing import partition_probs, slic_partition, voronoi_partition

torch = pytest.importorskip("torch")
from hassod.crf_torch import CrfBatch, dense_crf_batch_torch  # noqa: E402

skimage_data = pytest.importorskip("skimage.data")

needs_gpu = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device (torch.cuda.is_available() is False)"
)
PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco_val2017_sample"
TOLERANCE = 5e-5  # max |dQ| between the two paths (float summation order only)


def resized(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(np.asarray(image)).resize(size[::-1], Image.LANCZOS))


def random_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Blocks of flat colour plus noise: edges for the bilateral kernel, texture in between."""
    coarse = rng.integers(0, 256, size=(height // 8 + 1, width // 8 + 1, 3))
    image = np.repeat(np.repeat(coarse, 8, axis=0), 8, axis=1)[:height, :width]
    image = image + rng.integers(-20, 21, size=(height, width, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def random_probs(rng: np.random.Generator, labels: int, height: int, width: int) -> np.ndarray:
    """Soft random probabilities, or one-hot partitions upsampled (the pipeline's input)."""
    if rng.random() < 0.5:
        logits = rng.normal(scale=3.0, size=(labels, height, width)).astype(np.float32)
        exp = np.exp(logits - logits.max(axis=0, keepdims=True))
        return (exp / exp.sum(axis=0, keepdims=True)).astype(np.float32)
    partition = voronoi_partition(labels, seed=int(rng.integers(1 << 30)), grid=12)
    probs = partition_probs(partition, (height, width))
    return probs[: max(1, int(partition.max()) + 1)]


def mask_ious(ours: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    first, second = ours >= 0.5, theirs >= 0.5
    intersection = np.logical_and(first, second).sum(axis=(1, 2))
    union = np.logical_or(first, second).sum(axis=(1, 2))
    return np.where(union > 0, intersection / np.maximum(union, 1), 1.0)


KERNELS = [
    {},
    {"gaussian": (1.5, 3.0), "bilateral": (20.0, 13.0, 4.0)},
    {"gaussian": None},
    {"bilateral": None},
]


@pytest.mark.parametrize("seed", range(16))
def test_matches_native_on_random_cases(seed):
    rng = np.random.default_rng(seed)
    height, width = (int(v) for v in rng.integers(1, 70, size=2))
    labels = int(rng.integers(1, 40))
    kernels = KERNELS[seed % len(KERNELS)]
    iterations = int(rng.integers(0, 8))
    image = random_image(rng, height, width)
    probs = random_probs(rng, labels, height, width)
    native_lattice = CrfLattice(image, **kernels)
    expected = native_lattice.infer(probs, iterations=iterations)
    method = "gather" if seed % 4 == 3 else "spmm"  # both ways of filtering
    batch = CrfBatch([image], device="cpu", method=method, **kernels)
    got = batch.infer([probs], iterations=iterations)[0]
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32
    assert tuple(got.shape) == probs.shape
    # The same lattices: densecrf's elevation and rounding reproduced exactly.
    assert batch.num_vertices == native_lattice.num_vertices
    assert np.abs(got.numpy() - expected).max() < TOLERANCE


def densecrf_ranks(offset: np.ndarray) -> np.ndarray:
    """densecrf's ranking, pair by pair: for i < j, offset_i < offset_j ranks i up, else j."""
    count, corners = offset.shape
    rank = np.zeros((count, corners), dtype=np.int64)
    for n in range(count):
        for i in range(corners):
            for j in range(i + 1, corners):
                if offset[n, i] < offset[n, j]:
                    rank[n, i] += 1
                else:
                    rank[n, j] += 1
    return rank


@pytest.mark.parametrize("corners", [3, 6])
def test_ranks_equal_densecrfs_pairwise_ranking_with_ties(corners):
    from hassod.crf_torch import _ranks

    rng = np.random.default_rng(corners)
    offset = np.round(rng.normal(0, 1, (4000, corners)) * 2) / 2  # frequent ties
    assert (np.diff(np.sort(offset, axis=1), axis=1) == 0).any()
    got = _ranks(torch.from_numpy(offset).float()).numpy()
    np.testing.assert_array_equal(got, densecrf_ranks(offset))


def test_batch_of_mixed_sizes_and_label_sets_equals_each_image_alone():
    """Images of different sizes and label counts share one batch (padded columns, disjoint
    lattices): each image's Q equals the native CRF's on that image alone."""
    rng = np.random.default_rng(7)
    shapes = [(31, 45), (64, 20), (1, 9), (50, 50)]
    images = [random_image(rng, h, w) for h, w in shapes]
    label_sets = [
        [random_probs(rng, int(rng.integers(1, 25)), h, w) for _ in range(3)] for h, w in shapes
    ]
    q = CrfBatch(images, device="cpu").infer(label_sets, iterations=5)
    assert len(q) == len(images)
    for image, sets, got_sets in zip(images, label_sets, q):
        lattice = CrfLattice(image)
        assert len(got_sets) == 3
        for probs, got in zip(sets, got_sets):
            expected = lattice.infer(probs, iterations=5)
            assert tuple(got.shape) == probs.shape
            assert np.abs(got.numpy() - expected).max() < TOLERANCE


def test_lattices_of_a_batch_are_the_images_lattices_side_by_side():
    rng = np.random.default_rng(3)
    images = [random_image(rng, 40, 30), random_image(rng, 25, 60)]
    batch = CrfBatch(images, device="cpu")
    alone = [CrfLattice(image).num_vertices for image in images]
    for kernel in ("gaussian", "bilateral"):
        assert batch.num_vertices[kernel] == sum(counts[kernel] for counts in alone)


def test_identical_images_in_one_batch_give_identical_results():
    rng = np.random.default_rng(4)
    image = random_image(rng, 48, 40)
    probs = random_probs(rng, 6, 48, 40)
    first, second = CrfBatch([image, image], device="cpu").infer([probs, probs])
    assert torch.equal(first, second)


def test_negative_compatibilities_match_native_with_padding():
    """Negative compatibilities make messages negative: the padded label columns (0) must not
    take part in the row maximum (a mixed batch pads the smaller label set)."""
    rng = np.random.default_rng(9)
    images = [random_image(rng, 30, 26), random_image(rng, 22, 34)]
    probs = [random_probs(rng, 6, 30, 26), random_probs(rng, 3, 22, 34)]
    # Large enough that exp(message - 0) underflows where the max is not the real labels'.
    kernels = {"gaussian": (3.0, -150.0), "bilateral": (20.0, 13.0, -150.0)}
    got = CrfBatch(images, device="cpu", **kernels).infer(probs, iterations=5)
    for image, p, q in zip(images, probs, got):
        expected = CrfLattice(image, **kernels).infer(p, iterations=5)
        assert np.abs(q.numpy() - expected).max() < TOLERANCE


def test_exact_properties():
    rng = np.random.default_rng(5)
    image = random_image(rng, 36, 28)
    probs = random_probs(rng, 7, 36, 28)
    batch = CrfBatch([image], device="cpu")
    q = batch.infer([probs])[0]
    assert torch.allclose(q.sum(dim=0), torch.ones(36, 28), atol=1e-5)
    # Zero pairwise weight and zero iterations: softmax of the unary, i.e. clip(P) normalised.
    clipped = np.clip(probs, 1e-5, 1.0)
    softmax = clipped / clipped.sum(axis=0, keepdims=True)
    none = CrfBatch([image], gaussian=None, bilateral=None, device="cpu").infer([probs])[0]
    assert np.abs(none.numpy() - softmax).max() < 1e-6
    zero = batch.infer([probs], iterations=0)[0]
    assert np.abs(zero.numpy() - softmax).max() < 1e-6
    # One label: all ones.
    ones = batch.infer([probs[:1]])[0]
    assert torch.equal(ones, torch.ones(1, 36, 28))


def test_padded_labels_stay_exactly_zero_and_do_not_change_results():
    """An image with 2 labels batched with one of 30: its Q has 2 channels that sum to 1, equal
    to running it alone."""
    rng = np.random.default_rng(6)
    images = [random_image(rng, 30, 30), random_image(rng, 30, 30)]
    small, large = random_probs(rng, 2, 30, 30)[:2], random_probs(rng, 30, 30, 30)
    if small.shape[0] < 2:
        small = np.stack([small[0], 1.0 - small[0]])
    together = CrfBatch(images, device="cpu").infer([small, large])[0]
    alone = CrfBatch(images[:1], device="cpu").infer([small])[0]
    assert together.shape == (2, 30, 30)
    assert torch.allclose(together.sum(dim=0), torch.ones(30, 30), atol=1e-5)
    assert torch.allclose(together, alone, atol=1e-6)


def test_matches_native_on_a_photo_with_realistic_label_sets():
    image = resized(skimage_data.astronaut(), (240, 240))
    sets = [
        partition_probs(slic_partition(image, regions, grid=30), (240, 240)) for regions in (20, 8)
    ]
    got = CrfBatch([image], device="cpu").infer([sets])[0]
    lattice = CrfLattice(image)
    for probs, q in zip(sets, got):
        expected = lattice.infer(probs)
        ious = mask_ious(q.numpy(), expected)
        assert ious.mean() >= 0.98 and ious.min() >= 0.90
        assert np.abs(q.numpy() - expected).max() < TOLERANCE


def test_chunked_batches_equal_one_batch():
    rng = np.random.default_rng(8)
    images = [random_image(rng, 20 + i, 30) for i in range(5)]
    probs = [random_probs(rng, 4, 20 + i, 30) for i in range(5)]
    whole = CrfBatch(images, device="cpu").infer(probs)
    chunked = dense_crf_batch_torch(images, probs, device="cpu", max_batch_pixels=1300)
    assert len(chunked) == 5
    for a, b in zip(whole, chunked):
        assert torch.allclose(a, b, atol=1e-6)


def test_tensor_inputs_are_accepted():
    rng = np.random.default_rng(9)
    image = random_image(rng, 25, 25)
    probs = random_probs(rng, 5, 25, 25)
    from_arrays = CrfBatch([image], device="cpu").infer([probs])[0]
    from_tensors = CrfBatch([torch.from_numpy(image)]).infer([torch.from_numpy(probs).double()])[0]
    assert torch.allclose(from_arrays, from_tensors, atol=1e-6)


def test_cpu_inputs_keep_the_native_path():
    """dense_crf / dense_crf_batch return numpy from the native code for CPU inputs."""
    rng = np.random.default_rng(10)
    image = random_image(rng, 20, 20)
    probs = random_probs(rng, 3, 20, 20)
    assert isinstance(dense_crf(image, probs), np.ndarray)
    assert isinstance(dense_crf(image, torch.from_numpy(probs), device="cpu"), np.ndarray)
    assert isinstance(dense_crf_batch([image], [probs])[0], np.ndarray)
    with pytest.raises(ValueError, match="CPU or CUDA"):
        dense_crf(image, probs, device="meta")


def test_bad_inputs():
    rng = np.random.default_rng(11)
    image = random_image(rng, 10, 12)
    probs = random_probs(rng, 3, 10, 12)
    with pytest.raises(ValueError, match="at least one image"):
        CrfBatch([], device="cpu")
    with pytest.raises(ValueError, match="uint8"):
        CrfBatch([image.astype(np.float32)], device="cpu")
    with pytest.raises(ValueError, match="uint8"):
        CrfBatch([torch.from_numpy(image).float()], device="cpu")
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        CrfBatch([image[..., :2]], device="cpu")
    with pytest.raises(ValueError, match="at least one pixel"):
        CrfBatch([image[:0]], device="cpu")
    with pytest.raises(ValueError, match="sxy must be positive"):
        CrfBatch([image], gaussian=(0.0, 3.0), device="cpu")
    batch = CrfBatch([image], device="cpu")
    with pytest.raises(ValueError, match="one entry per image"):
        batch.infer([probs, probs])
    with pytest.raises(ValueError, match="to match the image"):
        batch.infer([probs[:, :5]])
    with pytest.raises(ValueError, match=r"\(K, H, W\)"):
        batch.infer([probs[0]])
    with pytest.raises(ValueError, match="at least one label"):
        batch.infer([probs[:0]])
    with pytest.raises(ValueError, match="real numbers"):
        batch.infer([probs > 0.5])
    for bad in (np.nan, -0.1, np.inf):
        broken = probs.copy()
        broken[1, 2, 3] = bad
        with pytest.raises(ValueError, match=r"probs\[0\]: probabilities must be finite"):
            batch.infer([broken])
    with pytest.raises(ValueError, match="iterations"):
        batch.infer([probs], iterations=-1)
    two = CrfBatch([image, image], device="cpu")
    with pytest.raises(ValueError, match="same, non-zero number of label sets"):
        two.infer([[probs], [probs, probs]])
    with pytest.raises(ValueError, match="all label sets or all sequences"):
        two.infer([probs, [probs]])
    with pytest.raises(ValueError, match="same length"):
        dense_crf_batch_torch([image], [probs, probs], device="cpu")
    with pytest.raises(ValueError, match="method must be 'auto' or one of"):
        CrfBatch([image], device="cpu", method="dense")
    with pytest.raises(ValueError, match="too large"):
        CrfBatch([image], gaussian=(1e-7, 3.0), device="cpu")


def test_device_names_torch_does_not_know_or_cannot_run_are_value_errors():
    """``device="gpu"`` ended in torch's RuntimeError listing every device type, and
    ``device="cuda"`` without a GPU in torch's "Found no NVIDIA driver" from deep inside."""
    from hassod.crf import dense_crf

    rng = np.random.default_rng(12)
    image, probs = random_image(rng, 10, 12), random_probs(rng, 3, 10, 12)
    for call in (
        lambda device: CrfBatch([image], device=device),
        lambda device: dense_crf(image, probs, device=device),
    ):
        with pytest.raises(ValueError, match="device must be .*got 'gpu'"):
            call("gpu")
        if not torch.cuda.is_available():
            with pytest.raises(ValueError, match="'cuda' requested but CUDA is not available"):
                call("cuda")


# --- the CUDA path (skips without a device) -------------------------------------------------


def photo(name: str) -> np.ndarray:
    if name.endswith(".jpg"):
        from PIL import Image

        path = PHOTOS / name
        if not path.is_file():
            pytest.skip(f"shared photo {path} is absent")
        return resized(np.asarray(Image.open(path).convert("RGB")), (480, 480))
    return resized(getattr(skimage_data, name)(), (480, 480))


GPU_PHOTOS = ["astronaut", "coffee", "chelsea", "000000142238.jpg", "000000439180.jpg"]


@needs_gpu
@pytest.mark.parametrize("name", GPU_PHOTOS)
def test_gpu_matches_native_on_photos(name):
    image = photo(name)
    sets = [partition_probs(slic_partition(image, regions), (480, 480)) for regions in (50, 20, 12)]
    sets.append(partition_probs(voronoi_partition(8, seed=GPU_PHOTOS.index(name)), (480, 480)))
    got = CrfBatch([image], device="cuda").infer([sets])[0]
    lattice = CrfLattice(image)
    for probs, q in zip(sets, got):
        assert q.is_cuda
        expected = lattice.infer(probs)
        ours = q.cpu().numpy()
        ious = mask_ious(ours, expected)
        delta = float(np.abs(ours - expected).max())
        print(
            f"{name} K={len(probs)}: mean IoU {ious.mean():.5f} min {ious.min():.5f} "
            f"max |dQ| {delta:.2e}"
        )
        assert ious.mean() >= 0.98 and ious.min() >= 0.90
        assert delta < 1e-3


@needs_gpu
def test_gpu_batch_matches_native_and_dispatch_picks_the_gpu():
    rng = np.random.default_rng(12)
    shapes = [(480, 480), (300, 400), (97, 131), (480, 480)]
    images = [random_image(rng, h, w) for h, w in shapes]
    probs = [random_probs(rng, int(rng.integers(2, 30)), h, w) for h, w in shapes]
    expected = dense_crf_batch(images, probs)
    got = dense_crf_batch(images, [torch.from_numpy(p).cuda() for p in probs])
    # Per-pixel noise labels on noise images are the CRF at its most sensitive: rounding
    # differences grow over the iterations to a few 1e-3 in Q there (photos: ~1e-5). The bar is
    # the issue's, on the thresholded masks.
    for q, e in zip(got, expected):
        assert isinstance(q, torch.Tensor) and q.is_cuda
        ious = mask_ious(q.cpu().numpy(), e)
        assert ious.mean() >= 0.98 and ious.min() >= 0.90
        assert np.abs(q.cpu().numpy() - e).max() < 2e-2
    single = dense_crf(images[2], probs[2], device="cuda")
    assert single.is_cuda
    assert mask_ious(single.cpu().numpy(), expected[2]).min() >= 0.90


@needs_gpu
def test_gpu_equals_torch_cpu_path_closely():
    rng = np.random.default_rng(13)
    images = [random_image(rng, 64, 48) for _ in range(3)]
    probs = [random_probs(rng, 9, 64, 48) for _ in range(3)]
    # the same method on both (auto picks the Triton kernels on CUDA: tests/test_crf_triton.py)
    cpu = CrfBatch(images, device="cpu", method="spmm").infer(probs)
    gpu_batch = CrfBatch(images, device="cuda", method="spmm")
    assert gpu_batch.num_vertices == CrfBatch(images, device="cpu").num_vertices
    for a, b in zip(cpu, gpu_batch.infer(probs)):
        assert torch.allclose(a, b.cpu(), atol=TOLERANCE)


def test_byte_swapped_inputs_are_accepted_like_on_the_cpu_path():
    """torch.from_numpy refuses big-endian arrays; the CPU path took them, so this one does."""
    rng = np.random.default_rng(8)
    image = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    probs = rng.random((3, 9, 11)).astype(np.float32)
    expected = CrfBatch([image], device="cpu").infer([probs], iterations=1)[0]
    got = CrfBatch([image], device="cpu").infer([probs.astype(">f4")], iterations=1)[0]
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_auto_method_is_triton_on_cuda_and_the_sparse_products_elsewhere():
    from hassod import crf_triton
    from hassod.crf_torch import auto_method

    assert auto_method(torch.device("cpu")) == "spmm"
    expected = "triton" if crf_triton.available() else "spmm"
    assert auto_method(torch.device("cuda", 0)) == expected
    image = np.zeros((4, 5, 3), dtype=np.uint8)
    assert CrfBatch([image], device="cpu").method == "spmm"
