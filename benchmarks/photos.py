"""Images for the stage-1 benchmarks: the shared real photos and generated synthetic ones."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
WEIGHTS = SHARED / "weights" / "dinov2_vits14_imgfocus_fp16.pth"
COCO_SAMPLE = SHARED / "data" / "coco_val2017_sample"
COCO_PHOTOS = ("000000142238.jpg", "000000439180.jpg")
DINOV2 = "vit_small_patch14_dinov2"


def require_shared() -> None:
    """Exit with a clear message when ../shared (weights, COCO photos) is not there."""
    missing = [path for path in (WEIGHTS, COCO_SAMPLE) if not path.exists()]
    if missing:
        raise SystemExit(f"needs {', '.join(map(str, missing))} (the project's ../shared)")


def skimage_photo(name: str) -> np.ndarray:
    """A scikit-image sample photo by name; ``motorcycle_left`` is the left image of
    ``stereo_motorcycle()`` (the name of its file in scikit-image's data folder)."""
    import skimage.data

    if name == "motorcycle_left":
        return skimage.data.stereo_motorcycle()[0]
    return getattr(skimage.data, name)()


def real_photos(skimage_names: tuple[str, ...]) -> list[tuple[str, np.ndarray]]:
    """``(name, (H, W, 3) uint8)``: the two shared COCO photos, then the scikit-image ones."""
    from hassod.discover import read_image

    photos = [(name, read_image(COCO_SAMPLE / name)) for name in COCO_PHOTOS]
    photos += [(name, skimage_photo(name)) for name in skimage_names]
    return photos


def write_real_photos(folder: Path, skimage_names: tuple[str, ...]) -> list[Path]:
    """Copy the COCO photos (JPEG, as they are) and save the scikit-image ones (PNG) in
    ``folder``."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in COCO_PHOTOS:
        paths.append(Path(shutil.copyfile(COCO_SAMPLE / name, folder / name)))
    for name in skimage_names:
        path = folder / f"{name}.png"
        Image.fromarray(skimage_photo(name)).save(path)
        paths.append(path)
    return paths


def synthetic_photo(seed: int, height: int = 480, width: int = 640) -> np.ndarray:
    """A (height, width, 3) uint8 scene: a textured background gradient with a few filled
    ellipses and rectangles, some striped or checkered, some nested, plus pixel noise."""
    rng = np.random.default_rng([20241126, seed])
    rows, cols = np.mgrid[:height, :width].astype(np.float32)
    start, end = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    ramp = (cols / width)[..., None]
    image = start * (1 - ramp) + end * ramp
    image += 12 * np.sin(rows[..., None] / rng.uniform(6, 20) + rng.uniform(0, 6.3, 3))

    def paint(inside: np.ndarray, colour: np.ndarray) -> None:
        """Fill ``inside`` with ``colour``, plain, striped or checkered."""
        pattern = rng.integers(3)
        if pattern == 1:  # stripes
            period = rng.uniform(6, 24)
            shade = 40 * np.sign(np.sin((rows + cols * rng.uniform(-1, 1)) / period))
        elif pattern == 2:  # checkers
            cell = int(rng.integers(6, 20))
            shade = 40.0 * ((((rows // cell) + (cols // cell)) % 2) * 2 - 1)
        else:
            shade = np.zeros_like(rows)
        image[inside] = colour + shade[inside][:, None]

    for _ in range(int(rng.integers(3, 7))):
        cy, cx = rng.uniform(0.15, 0.85) * height, rng.uniform(0.15, 0.85) * width
        ry, rx = rng.uniform(0.08, 0.3) * height, rng.uniform(0.08, 0.3) * width
        if rng.random() < 0.5:
            inside = ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1
        else:
            inside = (np.abs(rows - cy) <= ry) & (np.abs(cols - cx) <= rx)
        paint(inside, rng.uniform(0, 255, 3))
        if rng.random() < 0.5:  # a part inside the object
            part = ((rows - cy) / (0.4 * ry)) ** 2 + ((cols - cx) / (0.4 * rx)) ** 2 <= 1
            paint(part, rng.uniform(0, 255, 3))
    image += rng.normal(0, 4, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_synthetic_photos(folder: Path, count: int, height: int = 480, width: int = 640):
    """``count`` :func:`synthetic_photo` scenes as PNG files in ``folder``."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"synthetic_{index:04d}.png"
        Image.fromarray(synthetic_photo(index, height, width)).save(path)
        paths.append(path)
    return paths
