"""``hassod demo``: sample photos to run discovery on, and one level figure per labelled image.

The photos are scikit-image's samples (:data:`DEMO_IMAGES`) saved as PNG files; the figures
are ``hassod show``'s drawings (:func:`hassod.report.image_figure`) of a pseudo-label JSON's
masks, level by level, written atomically next to each other under the figures folder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hassod._io import atomic_open
from hassod.discover import read_image

DEMO_IMAGES = ("astronaut", "coffee", "chelsea")


def write_demo_images(folder: Path) -> list[Path]:
    """The scikit-image sample photos of the demo, as PNG files in ``folder``."""
    import skimage.data
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in DEMO_IMAGES:
        path = folder / f"{name}.png"
        if not path.is_file():
            Image.fromarray(getattr(skimage.data, name)()).save(path)
        paths.append(path)
    return paths


def write_level_figures(coco: dict, images_dir: Path, figures_dir: Path) -> list[Path]:
    """One level figure per image of a pseudo-label JSON, drawn as ``hassod show`` draws it
    (:func:`hassod.report.image_figure`: outlines 3 / 2 / 1 px for whole / part / subpart and a
    legend of the masks)."""
    from pycocotools import mask as mask_utils

    from hassod.report import ImageMasks, image_figure
    from hassod.visualize import save_stamped_png

    figures_dir.mkdir(parents=True, exist_ok=True)
    by_image: dict[int, list[dict]] = {image["id"]: [] for image in coco["images"]}
    for annotation in coco["annotations"]:
        by_image[annotation["image_id"]].append(annotation)
    written = []
    for image in coco["images"]:
        pixels = read_image(images_dir / image["file_name"], None)
        annotations = by_image[image["id"]]
        masks = np.zeros((len(annotations), image["height"], image["width"]), dtype=bool)
        for index, annotation in enumerate(annotations):
            masks[index] = mask_utils.decode(annotation["segmentation"]).astype(bool)
        levels = np.asarray([a["hier_level"] for a in annotations], dtype=np.int64)
        item = ImageMasks(pixels, annotations, masks, levels, len(annotations))
        path = figures_dir / (Path(image["file_name"]).with_suffix(".png").as_posix())
        with atomic_open(path, parents=True) as handle:
            save_stamped_png(image_figure(item), handle, "hassod demo")
        written.append(path)
    return written
