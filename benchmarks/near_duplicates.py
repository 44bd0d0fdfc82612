"""Pseudo-labels per image with near-duplicate removal off / at IoU 0.95 / 0.9 / 0.8.

Usage:
    python benchmarks/near_duplicates.py [--out benchmarks/results/near_duplicates.json]

On the two shared COCO photos and three scikit-image photos, with the shared DINOv2 ViT-S/14
keys (476 x 476, centred per image: the default for DINOv2), each image's per-threshold masks
are computed once (:func:`hassod.discover.masks_per_threshold`: clustering, CRF, filters) and
then ensembled with each ``near_duplicate_iou`` (:func:`hassod.ensemble.ensemble`, exactly what
:func:`hassod.discover.discover_from_features` runs). Reported: labels per image, per threshold
before the ensemble (the paper's Table 2 columns), the authors' plain concatenation (every
copy kept), and per setting the total and whole / part / subpart per image. Prints a table and
writes JSON (atomically).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe_machine, write_report  # noqa: E402
from photos import DINOV2, ROOT, WEIGHTS, real_photos, require_shared  # noqa: E402

SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea")
SETTINGS = (None, 0.95, 0.9, 0.8)
SIZE = 476  # 480 rounded down to the 14-pixel patch
PAPER = {"0.1": 2.58, "0.2": 4.20, "0.4": 11.61, "ensemble": 12.69}  # Table 2, COCO+LVIS val


def level_counts(levels: np.ndarray) -> list[int]:
    return np.bincount(np.asarray(levels, dtype=np.int64), minlength=3)[:3].tolist()


def measure(size: int = SIZE) -> dict:
    from hassod.discover import DiscoveryConfig, masks_per_threshold
    from hassod.ensemble import ensemble
    from hassod.features import FEATURE_TRANSFORMS, image_features, load_vit
    from hassod.hierarchy import build_hierarchy

    model = load_vit(DINOV2, weights=WEIGHTS, img_size=size)
    config = DiscoveryConfig(backbone=DINOV2, size=size)
    transform = FEATURE_TRANSFORMS[config.resolved_transform]
    images = []
    for name, image in real_photos(SKIMAGE_PHOTOS):
        start = time.perf_counter()
        keys = np.asarray(transform(image_features(model, image, size), model), dtype=np.float32)
        per_threshold = masks_per_threshold(image, keys, config)
        shape = image.shape[:2]
        concatenated = np.concatenate(
            [masks for _, masks, _ in sorted(per_threshold, key=lambda item: item[0])]
        )
        entry = {
            "name": name,
            "size": [int(shape[0]), int(shape[1])],
            "per_threshold": {f"{theta:g}": len(masks) for theta, masks, _ in per_threshold},
            "keep_all": {
                "labels": len(concatenated),
                "levels": level_counts(build_hierarchy(concatenated).level),
            },
            "settings": {},
        }
        for setting in SETTINGS:
            result = ensemble(per_threshold, shape, config.cover, setting)
            entry["settings"][str(setting)] = {
                "labels": len(result.masks),
                "levels": level_counts(result.level),
            }
        entry["seconds"] = time.perf_counter() - start
        images.append(entry)
        print(f"  {name}: {entry['seconds']:.1f} s", file=sys.stderr)
    return {"config": config.as_dict(), "images": images}


def summarise(report: dict) -> dict:
    images = report["images"]
    count = len(images)

    def mean_of(rows: list[dict]) -> dict:
        return {
            "labels_per_image": sum(row["labels"] for row in rows) / count,
            "levels_per_image": [sum(row["levels"][lv] for row in rows) / count for lv in range(3)],
        }

    summary = {
        "per_threshold": {
            theta: sum(image["per_threshold"][theta] for image in images) / count
            for theta in ("0.1", "0.2", "0.4")
        },
        "keep_all": mean_of([image["keep_all"] for image in images]),
    }
    for setting in SETTINGS:
        summary[str(setting)] = mean_of([image["settings"][str(setting)] for image in images])
    return summary


def table(report: dict) -> str:
    images, summary = report["images"], report["summary"]
    names = [image["name"].removesuffix(".jpg") for image in images]
    backend = report["config"]["crf"].get("backend", "pydensecrf")
    lines = [
        "labels per image (whole/part/subpart), shared DINOv2 ViT-S/14 keys at 476, "
        f"{len(images)} photos, {backend} CRF",
        "",
        "| ensemble | " + " | ".join(names) + " | mean | whole | part | subpart |",
        "|---" * (len(names) + 5) + "|",
    ]

    def row(label: str, rows: list[dict], mean: dict) -> str:
        cells = [f"{r['labels']} ({'/'.join(map(str, r['levels']))})" for r in rows]
        means = [mean["labels_per_image"], *mean["levels_per_image"]]
        return f"| {label} | " + " | ".join(cells + [f"{v:.2f}" for v in means]) + " |"

    lines.append(row("keep every copy (public code)", [i["keep_all"] for i in images],
                     summary["keep_all"]))  # fmt: skip
    for setting in SETTINGS:
        label = f"near-duplicates IoU>={setting}" if setting else "exact duplicates (default)"
        rows = [image["settings"][str(setting)] for image in images]
        lines.append(row(label, rows, summary[str(setting)]))
    per = summary["per_threshold"]
    lines += [
        "",
        "per threshold before the ensemble (mean per image): "
        + ", ".join(f"theta {theta}: {per[theta]:.2f}" for theta in ("0.1", "0.2", "0.4")),
        "paper, Table 2 (COCO+LVIS val, DINO ViT-B/8): theta 0.1: 2.58, 0.2: 4.20, 0.4: 11.61, "
        "ensemble 12.69",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "near_duplicates.json"
    )
    args = parser.parse_args(argv)
    require_shared()
    report = measure()
    report["summary"] = summarise(report)
    report["paper_table2"] = PAPER
    report["machine"] = describe_machine()
    print(table(report))
    write_report(args.out, report)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
