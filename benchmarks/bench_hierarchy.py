"""Coverage matrix and coverage forest: native core vs the plain reference, one run, one machine.

Usage:
    python benchmarks/bench_hierarchy.py [--quick] [--out benchmarks/results/hierarchy.json]

Cases: K in {8, 16, 32, 64} masks on a 640x480 image (H=480, W=640), realistic nested masks
(a few objects, each with parts inside it and subparts inside those, slightly jittered, plus
random blobs), cover 0.9. For each K:
  * native: median ms of ``hassod.build_hierarchy(masks)`` on a (K, 480, 640) bool array —
    bit packing, the coverage matrix and the forest all included;
  * reference: ``hassod.reference.reference_hierarchy`` on the same masks (the authors' loop:
    both coverages per ordered pair from full-image ``np.logical_and(...).sum()`` passes), and
    the ratio; its forest is checked equal to native's;
  * RLE: ``hassod.coverage_matrix(rles)`` on pycocotools-compressed RLEs (runs, never decoded)
    against pycocotools' own ``mask.iou(rles, rles, [1] * K)`` (iscrowd = 1 gives
    |dt ∩ gt| / |dt|) plus ``mask.area`` as the peer: both timed, and the peer's ratios are
    checked against our intersections / areas.
Then a batch of 64 images (K = 16) with ``build_hierarchy_batch`` on 1 and 2 threads.
Prints a table and writes JSON (atomically).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

import hassod
from hassod.reference import reference_hierarchy

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe_machine, write_report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HEIGHT, WIDTH = 480, 640
COVER = 0.9
MASK_COUNTS = (8, 16, 32, 64)


def median_ms(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _blob(
    rng: np.random.Generator, box: tuple[int, int, int, int], scale: float = 1.0
) -> np.ndarray:
    """An ellipse or rectangle inside ``box`` = (top, bottom, left, right)."""
    top, bottom, left, right = box
    rows, cols = np.ogrid[:HEIGHT, :WIDTH]
    cy, cx = rng.uniform(top, bottom), rng.uniform(left, right)
    ry = max(scale * rng.uniform(0.15, 0.5) * (bottom - top), 2.0)
    rx = max(scale * rng.uniform(0.15, 0.5) * (right - left), 2.0)
    if rng.random() < 0.6:
        return ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1.0
    return (np.abs(rows - cy) <= ry) & (np.abs(cols - cx) <= rx)


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _child(rng: np.random.Generator, parent: np.ndarray) -> np.ndarray:
    """A blob mostly inside ``parent``: clipped to it, with a few percent of pixels spilling
    out (a fuzzy boundary, as real pseudo-label masks have)."""
    child = _blob(rng, _bbox(parent))
    spill = child & ~parent
    keep = rng.random() < 0.7  # most children are clipped, some spill over the boundary
    return child & parent if keep or spill.sum() > 0.2 * max(int(child.sum()), 1) else child


def realistic_masks(count: int, seed: int) -> np.ndarray:
    """(count, 480, 640) bool: objects > parts > subparts, plus random blobs, shuffled."""
    rng = np.random.default_rng([7, count, seed])
    scale = min(1.0, (12 / count) ** 0.5)  # more masks in an image: smaller objects
    masks: list[np.ndarray] = []
    while len(masks) < count:
        if rng.random() < 0.25:  # a stray blob anywhere
            masks.append(_blob(rng, (0, HEIGHT, 0, WIDTH), scale))
            continue
        whole = _blob(rng, (0, HEIGHT, 0, WIDTH), scale)
        if whole.sum() < 200:
            continue
        masks.append(whole)
        for _ in range(int(rng.integers(0, 3))):  # about 0.5 whole : 0.35 part : 0.15 subpart
            part = _child(rng, whole)
            if part.sum() < 50:
                continue
            masks.append(part)
            if rng.random() < 0.4:
                subpart = _child(rng, part)
                if subpart.sum() >= 10:
                    masks.append(subpart)
    order = rng.permutation(count)
    return np.stack(masks[:count])[order]


def to_rles(masks: np.ndarray) -> list[dict]:
    return mask_utils.encode(np.asfortranarray(np.moveaxis(masks.astype(np.uint8), 0, -1)))


def peer_intersections(rles: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """pycocotools: iou with iscrowd=1 is |dt ∩ gt| / |dt|; times the areas -> intersections."""
    areas = mask_utils.area(rles).astype(np.int64)
    ratios = np.asarray(mask_utils.iou(rles, rles, [1] * len(rles)))
    return ratios, areas


def bench_case(count: int, repeats: int, reference_repeats: int) -> dict:
    masks = realistic_masks(count, seed=0)
    native = hassod.build_hierarchy(masks, COVER)
    parent, depth, level = reference_hierarchy(masks, COVER)
    same = (
        np.array_equal(native.parent, parent)
        and np.array_equal(native.depth, depth)
        and np.array_equal(native.level, level)
    )
    native_ms = median_ms(lambda: hassod.build_hierarchy(masks, COVER), repeats)
    coverage_ms = median_ms(lambda: hassod.coverage_matrix(masks), repeats)
    reference_ms = median_ms(lambda: reference_hierarchy(masks, COVER), reference_repeats)

    rles = to_rles(masks)
    rle_inter, rle_areas = hassod.coverage_matrix(rles)
    ratios, peer_areas = peer_intersections(rles)
    peer_agrees = bool(
        np.array_equal(rle_inter, native.intersections)
        and np.array_equal(peer_areas, rle_areas)
        and np.allclose(ratios, rle_inter / rle_areas[:, None], rtol=0, atol=1e-12)
    )
    rle_ms = median_ms(lambda: hassod.coverage_matrix(rles), repeats)
    rle_forest_ms = median_ms(lambda: hassod.build_hierarchy(rles, COVER), repeats)
    peer_ms = median_ms(lambda: peer_intersections(rles), repeats)
    return {
        "masks": count,
        "image": f"{WIDTH}x{HEIGHT}",
        "levels": np.bincount(native.level.astype(np.int64), minlength=3).tolist(),
        "max_depth": int(native.depth.max()),
        "native_ms": native_ms,
        "native_coverage_matrix_ms": coverage_ms,
        "reference_ms": reference_ms,
        "speedup_vs_reference": reference_ms / native_ms,
        "reference_agrees": bool(same),
        "rle_runs_per_mask": float(np.mean([len(r["counts"]) for r in rles])),
        "native_rle_coverage_ms": rle_ms,
        "native_rle_hierarchy_ms": rle_forest_ms,
        "peer": "pycocotools.mask.iou(iscrowd=1) + mask.area",
        "peer_ms": peer_ms,
        "speedup_vs_peer": peer_ms / rle_ms,
        "peer_agrees": peer_agrees,
    }


def bench_batch(count: int, batch_size: int, repeats: int) -> dict:
    scenes = [realistic_masks(count, seed=seed) for seed in range(16)]
    batch = [scenes[i % len(scenes)] for i in range(batch_size)]
    singles = [hassod.build_hierarchy(masks, COVER) for masks in batch]
    per_threads, agrees = {}, True
    for threads in (1, 2):
        results = hassod.build_hierarchy_batch(batch, COVER, num_threads=threads)
        agrees &= all(
            np.array_equal(r.parent, s.parent) and np.array_equal(r.level, s.level)
            for r, s in zip(results, singles)
        )
        total = median_ms(
            lambda t=threads: hassod.build_hierarchy_batch(batch, COVER, num_threads=t), repeats
        )
        per_threads[threads] = total / batch_size
    return {
        "batch": batch_size,
        "masks": count,
        "ms_per_image_1_thread": per_threads[1],
        "ms_per_image_2_threads": per_threads[2],
        "speedup_2_threads": per_threads[1] / per_threads[2],
        "agrees_with_single": bool(agrees),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "hierarchy.json"
    )
    args = parser.parse_args(argv)
    repeats = 5 if args.quick else 31
    reference_repeats = 1 if args.quick else 3

    rows = [bench_case(count, repeats, reference_repeats) for count in MASK_COUNTS]
    batch = bench_batch(16, 64, 3 if args.quick else 7)
    target_row = next(row for row in rows if row["masks"] == 16)
    targets = {
        "speedup_vs_reference_K16": target_row["speedup_vs_reference"],
        "speedup_vs_reference_K16_met (>= 200x)": target_row["speedup_vs_reference"] >= 200,
        "native_ms_K16": target_row["native_ms"],
        "native_ms_K16_met (< 2 ms)": target_row["native_ms"] < 2.0,
    }
    report = {
        "machine": describe_machine(),
        "cover": COVER,
        "cases": rows,
        "batch": batch,
        "targets": targets,
    }

    print(f"machine: {report['machine']['cpu']} ({report['machine']['cores']} cores)")
    header = (
        f"{'K':>3} {'levels w/p/s':>13} {'native ms':>10} {'(matrix)':>9} {'ref ms':>9} "
        f"{'speedup':>8} {'same':>5} {'RLE ms':>8} {'RLE+forest':>11} {'peer ms':>8} "
        f"{'vs peer':>8} {'agree':>6}"
    )
    print(header)
    for row in rows:
        levels = "/".join(str(n) for n in row["levels"])
        print(
            f"{row['masks']:>3} {levels:>13} {row['native_ms']:>10.3f} "
            f"{row['native_coverage_matrix_ms']:>9.3f} {row['reference_ms']:>9.1f} "
            f"{row['speedup_vs_reference']:>7.0f}x {str(row['reference_agrees']):>5} "
            f"{row['native_rle_coverage_ms']:>8.3f} {row['native_rle_hierarchy_ms']:>11.3f} "
            f"{row['peer_ms']:>8.3f} {row['speedup_vs_peer']:>7.1f}x "
            f"{str(row['peer_agrees']):>6}"
        )
    print(
        f"batch of {batch['batch']} images (K={batch['masks']}): "
        f"{batch['ms_per_image_1_thread']:.3f} ms/image on 1 thread, "
        f"{batch['ms_per_image_2_threads']:.3f} on 2 threads "
        f"({batch['speedup_2_threads']:.2f}x), same as single: {batch['agrees_with_single']}"
    )
    print(
        f"targets (K=16): {targets['speedup_vs_reference_K16']:.0f}x vs reference (>= 200x: "
        f"{targets['speedup_vs_reference_K16_met (>= 200x)']}), "
        f"{targets['native_ms_K16']:.3f} ms per forest (< 2 ms: "
        f"{targets['native_ms_K16_met (< 2 ms)']})"
    )
    write_report(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
