"""Synthetic pseudo-labels: drawn shapes with whole / part / subpart masks, for tests and
benchmarks that need a training set without stage 1.

Each image has a noisy background and a few solid shapes (rectangles and ellipses, the
"whole" objects); some carry a smaller shape of another colour inside (a "part"), which may
carry a third (a "subpart"). Levels come from :func:`hassod.build_hierarchy` (cover 0.9), as in
stage 1, and the JSON is assembled with :mod:`hassod.coco`, so it has the exact format that
``hassod discover`` writes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _shape_mask(height: int, width: int, box, ellipse: bool) -> np.ndarray:
    x0, y0, x1, y1 = box
    mask = np.zeros((height, width), dtype=bool)
    if ellipse:
        yy, xx = np.mgrid[0:height, 0:width]
        cy, cx = (y0 + y1 - 1) / 2.0, (x0 + x1 - 1) / 2.0
        ry, rx = max((y1 - y0) / 2.0, 1.0), max((x1 - x0) / 2.0, 1.0)
        mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    else:
        mask[y0:y1, x0:x1] = True
    return mask


def _inner_box(box, rng: np.random.Generator, fraction=(0.35, 0.6)):
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    iw, ih = max(4, int(w * rng.uniform(*fraction))), max(4, int(h * rng.uniform(*fraction)))
    ix = x0 + int(rng.integers(max(1, (w - iw) // 4), max(2, w - iw - (w - iw) // 4 + 1)))
    iy = y0 + int(rng.integers(max(1, (h - ih) // 4), max(2, h - ih - (h - ih) // 4 + 1)))
    return ix, iy, min(ix + iw, x1 - 1), min(iy + ih, y1 - 1)


def draw_image(rng: np.random.Generator, size: int = 128, max_objects: int = 3):
    """One synthetic image: (H, W, 3) uint8 and (K, H, W) bool masks (wholes, parts, subparts)."""
    image = rng.integers(90, 150, size=(size, size, 3)).astype(np.uint8)
    masks = []
    taken = np.zeros((size, size), dtype=bool)
    for _ in range(int(rng.integers(1, max_objects + 1))):
        for _attempt in range(20):
            w, h = (int(v) for v in rng.integers(size // 4, size // 2 + 1, size=2))
            x0, y0 = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
            box = (x0, y0, x0 + w, y0 + h)
            whole = _shape_mask(size, size, box, ellipse=bool(rng.integers(2)))
            if not (whole & taken).any():
                break
        else:
            continue
        taken |= whole
        image[whole] = rng.integers(0, 256, size=3)
        masks.append(whole)
        if rng.random() < 0.7:
            part_box = _inner_box(box, rng)
            part = _shape_mask(size, size, part_box, ellipse=False) & whole
            if part.sum() >= 16:
                image[part] = rng.integers(0, 256, size=3)
                masks.append(part)
                if rng.random() < 0.5:
                    sub = _shape_mask(size, size, _inner_box(part_box, rng), ellipse=True) & part
                    if sub.sum() >= 9:
                        image[sub] = rng.integers(0, 256, size=3)
                        masks.append(sub)
    if not masks:
        return image, np.zeros((0, size, size), dtype=bool)
    return image, np.stack(masks)


def write_dataset(out_dir, count: int = 4, size: int = 128, seed: int = 0, max_objects: int = 3):
    """Write ``count`` PNG images to ``out_dir/images`` and their pseudo-labels to
    ``out_dir/pseudo.json``; returns ``(json_path, images_dir)``."""
    from PIL import Image

    import hassod
    from hassod import coco

    out_dir = Path(out_dir)
    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    entries = []
    for index in range(count):
        image, masks = draw_image(rng, size, max_objects)
        name = f"synthetic_{index:04d}.png"
        Image.fromarray(image).save(images_dir / name)
        hierarchy = hassod.build_hierarchy(masks, cover=0.9)
        records = coco.mask_annotations(
            masks,
            np.asarray(hierarchy.level),
            np.asarray(hierarchy.parent),
            np.full(len(masks), 0.4),
            np.ones(len(masks)),
        )
        entries.append((coco.image_record(name, size, size), records))
    json_path = out_dir / "pseudo.json"
    payload = coco.assemble(entries, info={"description": "hassod synthetic shapes", "seed": seed})
    json_path.write_text(json.dumps(payload), encoding="utf-8")
    return json_path, images_dir
