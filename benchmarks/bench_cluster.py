"""Hierarchical adaptive clustering: native core vs the plain reference, one run, one machine.

Usage:
    python benchmarks/bench_cluster.py [--quick] [--out benchmarks/results/cluster.json]
        [--weights ../shared/weights/dinov2_vits14_imgfocus_fp16.pth]

Cases (60x60 grids, the paper's 480x480 input at patch 8; thresholds 0.4 / 0.2 / 0.1):
  * synthetic: hassod.testing.structured_features, 768-d, seeds 0..7 (about 20 / 8 / 5
    regions), float32 — realistic neighbour similarity (spatially smooth noise);
  * synthetic-white: the same with white noise only, a harder case for the merge;
  * real: last-block keys of the shared DINOv2 ViT-S/14 (384-d) on photos at 840x840
    (60x60 patches of 14 px), centred per image (raw DINOv2 keys merge into one region,
    DESIGN.md 2b), when the weights are available.
For each: native single-thread median ms per image, merges and dot products per image, the
reference's time on the same inputs (a subset), and the ratio; then native batches of 32 on
1 and 2 threads. Prints a table and writes JSON.

Peer (synthetic and real cases): the same greedy merge through scikit-image's
``skimage.graph.merge_hierarchical`` (benchmarks/peer_skimage.py), timed on the first 1 (quick)
or 2 images as one merge run with snapshots ('peer ms') and as one run per threshold on fresh
RAG copies ('peer/T ms', the plain use of the API), RAG construction included; its partitions
are compared with native's on every image of the case (identical partitions and lowest adjusted
Rand index).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import hassod
from hassod.reference import reference_cluster
from hassod.testing import structured_features

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe_machine, write_report  # noqa: E402
from peer_skimage import adjusted_rand_index, skimage_cluster  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WEIGHTS = ROOT.parent / "shared" / "weights" / "dinov2_vits14_imgfocus_fp16.pth"
PHOTOS = ROOT.parent / "shared" / "data" / "coco_val2017_sample"


def median_ms(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def synthetic_grids(count: int, white: bool) -> list[np.ndarray]:
    extra = {"smooth_noise": 0.0, "noise": 0.9} if white else {}
    return [structured_features(seed=seed, **extra) for seed in range(count)]


def real_grids(weights: Path) -> list[np.ndarray]:
    """Centred DINOv2 keys on 60x60 patches for the shared photos and scikit-image samples."""
    import skimage.data
    from PIL import Image

    from hassod.features import center_keys, image_features, load_vit

    model = load_vit("vit_small_patch14_dinov2", weights=weights, img_size=840)
    images = [np.asarray(Image.open(path).convert("RGB")) for path in sorted(PHOTOS.glob("*.jpg"))]
    images += [skimage.data.astronaut(), skimage.data.coffee(), skimage.data.chelsea()]
    return [
        np.ascontiguousarray(center_keys(image_features(model, image, size=840)))
        for image in images
    ]


def bench_case(
    name: str,
    grids: list[np.ndarray],
    repeats: int,
    reference_count: int,
    peer_count: int = 0,
    peer_repeats: int = 1,
) -> dict:
    results = [hassod.fast_cluster(grid) for grid in grids]
    native = [median_ms(lambda g=grid: hassod.fast_cluster(g), repeats) for grid in grids]
    reference = [
        median_ms(lambda g=grid: reference_cluster(g), 1) for grid in grids[:reference_count]
    ]
    native_same = native[: len(reference)]
    row = {
        "case": name,
        "grid": "x".join(str(d) for d in grids[0].shape),
        "images": len(grids),
        "regions_per_threshold": np.mean([r.num_regions for r in results], axis=0)
        .round(1)
        .tolist(),
        "merges_per_image": float(np.mean([len(r.merges) for r in results])),
        "dot_products_per_image": float(np.mean([r.num_dot_products for r in results])),
        "native_ms": statistics.median(native),
        "native_ms_max": max(native),
        "reference_ms": statistics.median(reference) if reference else None,
        "reference_images": len(reference),
    }
    if reference:
        row["speedup_vs_reference"] = statistics.median(
            r / n for r, n in zip(reference, native_same)
        )
    if peer_count:
        row.update(bench_peer(grids, results, native, peer_count, peer_repeats))
    return row


def bench_peer(
    grids: list[np.ndarray], results: list, native: list[float], count: int, repeats: int
) -> dict:
    """Time the scikit-image peer on ``grids[:count]``; compare its partitions on all grids."""
    thresholds = hassod.DEFAULT_THRESHOLDS
    identical, aris = 0, []  # these runs also warm the peer up before it is timed
    for grid, result in zip(grids, results):
        for ours, theirs in zip(result.labels, skimage_cluster(grid, thresholds)):
            identical += bool(np.array_equal(ours, theirs))
            aris.append(adjusted_rand_index(ours, theirs))
    single = [
        median_ms(lambda g=grid: skimage_cluster(g, thresholds, mode="single"), repeats)
        for grid in grids[:count]
    ]
    per_threshold = [
        median_ms(lambda g=grid: skimage_cluster(g, thresholds, mode="per_threshold"), repeats)
        for grid in grids[:count]
    ]
    return {
        "peer": "skimage.graph.merge_hierarchical",
        "peer_images": len(single),
        "peer_ms": statistics.median(single),
        "peer_per_threshold_ms": statistics.median(per_threshold),
        "speedup_vs_peer": statistics.median(p / n for p, n in zip(single, native)),
        "speedup_vs_peer_per_threshold": statistics.median(
            p / n for p, n in zip(per_threshold, native)
        ),
        "peer_agreement": {
            "images": len(grids),
            "partitions": len(aris),
            "identical_partitions": identical,
            "mean_ari": float(np.mean(aris)),
            "min_ari": float(np.min(aris)),
        },
    }


def bench_batch(grids: list[np.ndarray], batch_size: int, repeats: int) -> dict:
    batch = np.stack([grids[i % len(grids)] for i in range(batch_size)])
    per_threads = {}
    for threads in (1, 2):
        total = median_ms(
            lambda t=threads: hassod.fast_cluster_batch(batch, num_threads=t), repeats
        )
        per_threads[threads] = total / batch_size
    return {
        "batch": batch_size,
        "ms_per_image_1_thread": per_threads[1],
        "ms_per_image_2_threads": per_threads[2],
        "speedup_2_threads": per_threads[1] / per_threads[2],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and images")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "cluster.json"
    )
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    args = parser.parse_args(argv)
    repeats = 3 if args.quick else 15
    reference_count = 1 if args.quick else 3
    peer_count = 1 if args.quick else 2
    images = 2 if args.quick else 8
    peer_cases = {"synthetic", "real"}  # a case name's first word

    cases = {
        "synthetic": synthetic_grids(images, white=False),
        "synthetic-white": synthetic_grids(images, white=True),
    }
    if args.weights.is_file():
        cases["real (DINOv2-S/14, centred)"] = real_grids(args.weights)
    else:
        print(f"real features skipped: no weights at {args.weights}")
    # The peer makes many small Python objects; keep the garbage collector from rescanning the
    # ~400k objects that torch and the model left behind on every collection while it runs.
    gc.collect()
    gc.freeze()

    rows = [
        bench_case(
            name,
            grids,
            repeats,
            reference_count,
            peer_count if name.split()[0] in peer_cases else 0,
            1 if args.quick else 3,
        )
        for name, grids in cases.items()
    ]
    batch = bench_batch(cases["synthetic"], 32, 3 if args.quick else 5)
    report = {
        "machine": describe_machine(),
        "thresholds": list(hassod.DEFAULT_THRESHOLDS),
        "cases": rows,
        "batch_synthetic": batch,
    }

    print(f"machine: {report['machine']['cpu']} ({report['machine']['cores']} cores)")
    header = (
        f"{'case':30} {'grid':>10} {'regions':>16} {'merges':>7} {'dots':>8} "
        f"{'native ms':>10} {'ref ms':>9} {'speedup':>8} {'peer ms':>8} {'peer/T ms':>9} "
        f"{'vs peer':>8} {'agree (same, min ARI)':>22}"
    )
    print(header)
    for row in rows:
        regions = "/".join(f"{r:g}" for r in row["regions_per_threshold"])
        reference = f"{row['reference_ms']:.0f}" if row["reference_ms"] else "-"
        speedup = f"{row['speedup_vs_reference']:.0f}x" if "speedup_vs_reference" in row else "-"
        peer = peer_per_threshold = vs_peer = agree = "-"
        if "peer_ms" in row:
            peer = f"{row['peer_ms']:.0f}"
            peer_per_threshold = f"{row['peer_per_threshold_ms']:.0f}"
            vs_peer = f"{row['speedup_vs_peer']:.0f}x"
            agreement = row["peer_agreement"]
            agree = (
                f"{agreement['identical_partitions']}/{agreement['partitions']}, "
                f"{agreement['min_ari']:.4f}"
            )
        print(
            f"{row['case']:30} {row['grid']:>10} {regions:>16} {row['merges_per_image']:>7.0f} "
            f"{row['dot_products_per_image']:>8.0f} {row['native_ms']:>10.2f} {reference:>9} "
            f"{speedup:>8} {peer:>8} {peer_per_threshold:>9} {vs_peer:>8} {agree:>22}"
        )
    print(
        f"batch of {batch['batch']} synthetic: {batch['ms_per_image_1_thread']:.2f} ms/image on "
        f"1 thread, {batch['ms_per_image_2_threads']:.2f} on 2 threads "
        f"({batch['speedup_2_threads']:.2f}x)"
    )
    write_report(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
