"""Dense CRF on the GPU (hassod.crf_torch) vs pydensecrf and the native CRF on the same machine.

Usage (on a machine with a CUDA device; benchmarks/gpu_crf.sh runs it):
    python benchmarks/bench_crf_gpu.py [--images 64] [--device cuda] [--out PATH]
A CPU smoke run of the same code (tests/test_bench_crf_gpu.py):
    python benchmarks/bench_crf_gpu.py --device cpu --images 2 --size 64 --repeats 1

Workload (the issue's): a batch of 64 photos at 480 x 480 (scikit-image's and the shared COCO
sample's, cycled), each with the discovery pipeline's three label sets (SLIC superpixels on the
60 x 60 grid, about 50 / 20 / 12 regions, one-hot and bilinearly upsampled), 10 mean-field
iterations, the authors' kernels. Timed in one process, same run:

* GPU, ``CrfBatch`` over the whole batch with the probabilities already on the device (the
  lattices built and the three label sets inferred together), for the ``spmm`` and ``gather``
  filters, and in chunks of 16 images; also with the probabilities copied from host memory;
* the native CPU CRF with every core (one CrfLattice per image, infer_many), on a few images;
* pydensecrf in one process (three CRFs per image), on two images.

Throughput is images/s for the three-CRF workload (median of the repeats). Also: the lattice
build's share, peak GPU memory, and the agreement of the GPU's Q with the native CRF's on each
distinct photo (IoU of Q >= 0.5 per label, max |dQ|). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from hassod.crf import CrfLattice
from hassod.crf_torch import CrfBatch
from hassod.postprocess import CrfParams
from hassod.postprocess import dense_crf as postprocess_dense_crf
from hassod.testing import partition_probs, slic_partition

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe_machine, write_report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REGIONS = (50, 20, 12)
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "cat", "immunohistochemistry")
SHARED_PHOTOS = ROOT.parent / "shared" / "data" / "coco_val2017_sample"


def photos(size: tuple[int, int]) -> list[tuple[str, np.ndarray]]:
    """(name, RGB resized to ``size``) of the distinct photos the batch cycles through."""
    import skimage.data
    from PIL import Image

    found = []
    for name in SKIMAGE_PHOTOS:
        image = getattr(skimage.data, name)()
        if image.ndim == 3 and image.shape[2] == 3:
            found.append((name, image))
    for path in sorted(SHARED_PHOTOS.glob("*.jpg")):
        found.append((path.name, np.asarray(Image.open(path).convert("RGB"))))
    return [
        (name, np.asarray(Image.fromarray(image).resize(size, Image.LANCZOS)))
        for name, image in found
    ]


def agreement(ours: np.ndarray, theirs: np.ndarray) -> tuple[np.ndarray, float]:
    first, second = ours >= 0.5, theirs >= 0.5
    union = np.logical_or(first, second).sum(axis=(1, 2))
    intersection = np.logical_and(first, second).sum(axis=(1, 2))
    return np.where(union > 0, intersection / np.maximum(union, 1), 1.0), float(
        np.abs(ours - theirs).max()
    )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function, repeats: int, device: torch.device) -> list[float]:
    seconds = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        function()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=480, help="square image side")
    parser.add_argument("--chunk", type=int, default=16, help="images per chunk (chunked case)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cpu-images", type=int, default=8, help="images for the native CPU")
    parser.add_argument("--pydensecrf-images", type=int, default=2)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "crf_gpu.json"
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device (torch.cuda.is_available() is False); --device cpu smoke-tests")
    size = (args.size, args.size)
    grid = max(4, args.size // 8)  # the ViT's patch grid: 60 x 60 at 480

    distinct = photos(size)
    sets_of = {
        name: [partition_probs(slic_partition(image, r, grid=grid), size) for r in REGIONS]
        for name, image in distinct
    }
    batch_names = [distinct[i % len(distinct)][0] for i in range(args.images)]
    images = [dict(distinct)[name] for name in batch_names]
    host_sets = [sets_of[name] for name in batch_names]
    device_sets = [[torch.from_numpy(p).to(device) for p in sets] for sets in host_sets]
    labels = [sum(len(p) for p in sets) for sets in host_sets]
    print(
        f"{args.images} images at {size[0]}x{size[1]} ({len(distinct)} distinct photos), "
        f"labels per image {np.mean(labels):.1f} (sets of {REGIONS} regions requested)"
    )

    # Agreement with the native CPU CRF, and the warm-up.
    per_photo = {}
    for name, image in distinct:
        on_device = [torch.from_numpy(p).to(device) for p in sets_of[name]]
        got = CrfBatch([image], device=device).infer([on_device])[0]
        lattice = CrfLattice(image)
        ious, deltas = [], []
        for probs, q in zip(sets_of[name], got):
            iou, delta = agreement(q.cpu().numpy(), lattice.infer(probs))
            ious.append(iou)
            deltas.append(delta)
        all_ious = np.concatenate(ious)
        per_photo[name] = {
            "mean_iou": float(all_ious.mean()),
            "min_iou": float(all_ious.min()),
            "max_abs_dq": max(deltas),
        }
        print(f"agreement {name}: {per_photo[name]}")

    def gpu_batch(method: str, chunk: int, on_host: bool) -> None:
        sets = host_sets if on_host else device_sets
        for start in range(0, len(images), chunk):
            batch = CrfBatch(images[start : start + chunk], device=device, method=method)
            batch.infer(sets[start : start + chunk])

    results = {}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    n = args.images
    cases = {
        f"{device.type} spmm, batch {n}": lambda: gpu_batch("spmm", n, False),
        f"{device.type} spmm, chunks of {args.chunk}": lambda: gpu_batch("spmm", args.chunk, False),
        f"{device.type} spmm, batch {n}, probs from host": lambda: gpu_batch("spmm", n, True),
        f"{device.type} gather, batch {n}": lambda: gpu_batch("gather", n, False),
        f"{device.type} hybrid, batch {n}": lambda: gpu_batch("hybrid", n, False),
    }
    for name, function in cases.items():
        function()  # warm-up (allocator, cuSPARSE handles)
        seconds = timed(function, args.repeats, device)
        results[name] = {
            "seconds": seconds,
            "images_per_s": args.images / statistics.median(seconds),
        }
        print(f"{name}: {results[name]['images_per_s']:.1f} images/s")
    peak_gb = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0

    # Lattice build alone (whole batch).
    build = timed(lambda: CrfBatch(images, device=device), args.repeats, device)
    results[f"{device.type} lattice build only, batch {n}"] = {
        "seconds": build,
        "images_per_s": args.images / statistics.median(build),
    }

    # Where one mean-field iteration spends its time: each kernel's splat, blurs and slice on
    # the whole batch's label columns (the three sets side by side).
    columns = sum(max(len(sets[s]) for sets in host_sets) for s in range(len(REGIONS)))
    whole = CrfBatch(images, device=device)
    values = torch.rand(int(sum(h * w for h, w in whole.shapes)), columns, device=device)
    breakdown = {"columns": columns, "vertices": whole.num_vertices}
    for name, kernel in whole.kernels.items():
        vertex_values = kernel.splat @ values

        def ms(function) -> float:
            return 1e3 * statistics.median(timed(function, args.repeats, device))

        breakdown[name] = {
            "splat_spmm_ms": ms(lambda k=kernel, x=values: k.splat @ x),
            "splat_index_add_ms": ms(lambda k=kernel, x=values: k.splat_gather(x)),
            "blurs_spmm_ms": ms(lambda k=kernel, v=vertex_values: [b @ v for b in k.blurs]),
            "blurs_index_select_ms": ms(lambda k=kernel, v=vertex_values: k.blur_gather(v)),
            "slice_spmm_ms": ms(lambda k=kernel, v=vertex_values: k.slice @ v),
            "slice_gather_ms": ms(lambda k=kernel, v=vertex_values: k.slice_gather(v)),
        }
    print(f"one iteration on the batch ({columns} label columns): {breakdown}")
    del whole, values

    # Native CPU, every core, lattice reuse with the label sets on parallel threads.
    def native(count: int) -> None:
        for image, sets in zip(images[:count], host_sets[:count]):
            CrfLattice(image).infer_many(sets)

    cpu_count = min(args.cpu_images, args.images)
    native(1)
    start = time.perf_counter()
    native(cpu_count)
    seconds = time.perf_counter() - start
    results["native cpu, all cores"] = {"seconds": [seconds], "images_per_s": cpu_count / seconds}

    # pydensecrf in one process.
    pyd_count = min(args.pydensecrf_images, args.images)
    reference = CrfParams(backend="pydensecrf")
    start = time.perf_counter()
    for image, sets in zip(images[:pyd_count], host_sets[:pyd_count]):
        for probs in sets:
            postprocess_dense_crf(image, probs, reference)
    seconds = time.perf_counter() - start
    results["pydensecrf, one process"] = {"seconds": [seconds], "images_per_s": pyd_count / seconds}

    reference_rate = results["pydensecrf, one process"]["images_per_s"]
    print(f"\n{'case':40s} {'images/s':>10s} {'x pydensecrf':>13s}")
    for name, result in results.items():
        rate = result["images_per_s"]
        print(f"{name:40s} {rate:10.1f} {rate / reference_rate:13.1f}")
    print(f"peak GPU memory {peak_gb:.1f} GiB")

    report = {
        "benchmark": "crf_gpu",
        "machine": describe_machine(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "images": args.images,
        "size": list(size),
        "regions_requested": list(REGIONS),
        "labels_per_image_mean": float(np.mean(labels)),
        "iterations": 10,
        "results": results,
        "peak_gpu_memory_gib": peak_gb,
        "agreement_with_native": per_photo,
        "iteration_breakdown": breakdown,
    }
    write_report(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
