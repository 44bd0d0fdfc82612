"""The input of ``hassod discover``: listing a folder of images and decoding them.

Input: every file under ``IMAGES_DIR`` (recursively, symbolic links followed, each real folder
visited once so link loops end, hidden files and folders skipped) whose extension is one of
:data:`IMAGE_EXTENSIONS` (any case); files without an image extension are ignored. File names
are relative POSIX paths, sorted by code point; image ids are :func:`hassod.coco.image_id_for`
of them, so ``a/x.jpg`` and ``b/x.jpg`` are different images with different ids
(:func:`check_ids` refuses the astronomically rare collision).

Decoding (:func:`decode`, run in threads) never raises: an unreadable, zero-byte, truncated or
corrupt image, or a file with an image extension that is not an image, comes back with a
failure reason. Grey, grey + alpha, RGBA, palette, CMYK, 1-bit and 16-bit images become 8-bit
RGB with EXIF orientation applied (:func:`hassod.discover.read_image`). PIL's
decompression-bomb limit is lifted for the run by :func:`pil_limits`: ``max_pixels`` (default
:data:`~hassod.discover.DEFAULT_MAX_PIXELS`, 40 million) replaces it, and larger images fail
("image too large") without being decoded.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from hassod.coco import image_id_for
from hassod.discover import UnreadableImage, read_image
from hassod.run_errors import UsageError, describe_error

#: Extensions (lower case) of the files taken as images; others are ignored.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def list_images(images_dir: str | Path, exclude: Sequence[Path] = ()) -> list[str]:
    """Relative POSIX paths of the image files under ``images_dir``, sorted.

    Recursive, following symbolic links (each real folder visited once), skipping hidden
    files and folders (names starting with ``.``) and the folders in ``exclude``. Files whose
    names are not valid UTF-8 are skipped with a warning: COCO JSON cannot hold their names.
    """
    root = Path(images_dir)
    excluded = {os.path.realpath(path) for path in exclude}
    seen_dirs: set[str] = set()
    names = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen_dirs or real in excluded:
            dirs[:] = []
            continue
        seen_dirs.add(real)
        dirs[:] = [name for name in dirs if not name.startswith(".")]
        relative = Path(folder).relative_to(root)
        for name in files:
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                continue
            names.append((relative / name).as_posix())
    unnamable = [name for name in names if not _is_utf8(name)]
    if unnamable:
        import warnings

        examples = ", ".join(
            os.fsencode(name).decode("utf-8", "backslashreplace") for name in unnamable[:3]
        )
        warnings.warn(
            f"skipped {len(unnamable)} image file(s) whose names are not valid UTF-8 (COCO JSON "
            f"cannot hold them; rename them to include them), e.g. {examples}",
            RuntimeWarning,
            stacklevel=2,
        )
    return sorted(name for name in names if _is_utf8(name))


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes, kept by os as surrogate escapes
        return False
    return True


def check_ids(names: Sequence[str]) -> None:
    """Raise :class:`~hassod.run_errors.UsageError` if two file names get the same image id."""
    seen: dict[int, str] = {}
    for name in names:
        image_id = image_id_for(name)
        if image_id in seen:  # 48-bit hashes: astronomically rare, but never silent
            raise UsageError(f"image id collision between {seen[image_id]!r} and {name!r}")
        seen[image_id] = name


@contextlib.contextmanager
def pil_limits() -> Iterator[None]:
    """Lift PIL's decompression-bomb limit for the run: ``max_pixels`` replaces it."""
    import warnings

    from PIL import Image

    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def decode(
    path: Path, size: int, max_pixels: int | None
) -> tuple[np.ndarray | None, object, str | None, float]:
    """Thread task: ``(image, preprocessed tensor, failure reason, seconds)``; never raises."""
    from hassod.features import preprocess

    start = time.perf_counter()
    try:
        image = read_image(path, max_pixels)
        tensor = preprocess(image, size)
    except UnreadableImage as error:
        return None, None, str(error), time.perf_counter() - start
    except Exception as error:  # e.g. MemoryError on a huge image
        message = f"cannot decode image: {describe_error(error)}"
        return None, None, message, time.perf_counter() - start
    return image, tensor, None, time.perf_counter() - start
