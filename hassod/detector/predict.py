"""``hassod predict``: a trained checkpoint -> detections with masks and levels (COCO results).

Each image is resized (short side ``test_min_size``, long side at most ``test_max_size``: the
checkpoint's settings, 800 / 1333 in the paper preset, 128 / 160 in cpu-small), run through the
detector (stage-averaged scores, up to 1000 detections), and the detections are mapped back to
the original image: boxes rescaled, the 28x28 mask probabilities pasted at full resolution and
thresholded at 0.5, then RLE-encoded.

A detection is a COCO result dict::

    {"image_id", "category_id": 1, "bbox": [x, y, w, h], "score",
     "segmentation": {"size": [H, W], "counts": str}, "hier_level": 0 | 1 | 2,
     "level_scores": [p_whole, p_part, p_subpart]}

``hier_level`` is the argmax of the stage-averaged level probabilities; :func:`filter_levels`
keeps the chosen levels (``whole``, ``part``, ``subpart`` or 0, 1, 2).

:func:`predict_images` (``hassod predict``) streams the results of finished images to a work
folder next to its output, ``OUT.parts/`` (:func:`work_folder_for`: a manifest of the run's
settings and chunk files of :data:`CHUNK_IMAGES` images each, written atomically), so that an
interrupted run (Ctrl-C, SIGTERM) keeps its finished images: the same call again predicts only
the others, then writes ``OUT`` (the bytes an uninterrupted run writes) and removes the folder.
A work folder of other settings (network, levels, thresholds, sizes, device type, hassod
version) is discarded with a warning: its results are not mixed in. An image whose id or file
changed since it was predicted is predicted again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import numbers
import os
import re
import sys
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import torch

from hassod._checks import check_number
from hassod._text import counted
from hassod.coco import CATEGORY, LEVEL_NAMES, image_id_for
from hassod.detector import augment
from hassod.detector.cascade import clip_nonempty
from hassod.detector.checkpoint import detector_from_checkpoint
from hassod.detector.config import MIN_IMAGE_SIZE
from hassod.detector.paste import paste_masks
from hassod.detector.training import resolve_device

if TYPE_CHECKING:
    import PIL.Image

ALL_LEVELS = frozenset(range(len(LEVEL_NAMES)))
_PASTE_CHUNK = 64  # masks pasted at full resolution at a time (bounds memory)
CHUNK_IMAGES = 8  # finished images per work-folder chunk (see predict_images)
FLUSH_SECONDS = 60.0  # ... or fewer, when this long has passed since the last chunk
_COMMAND = "hassod predict"
_WORK_FORMAT = 1


Levels = Union[str, int, Iterable[Union[str, int]], None]


def parse_levels(levels: Levels) -> frozenset:
    """Level set from ``"whole,part"``, ``["subpart"]``, ``[0, 2]``, one level (``"part"``,
    ``1``) or None (all levels).

    Raises:
        ValueError: an unknown level name, a number outside 0..2 or not a whole number (a
            float or a bool), no level at all.
    """
    if levels is None:
        return ALL_LEVELS
    if isinstance(levels, str):
        levels = [item for item in levels.split(",") if item.strip()]
    elif isinstance(levels, numbers.Integral) and not isinstance(levels, bool):
        levels = [levels]
    elif not isinstance(levels, Iterable):
        raise ValueError(
            f"levels must be level names or numbers (e.g. 'whole,part' or [0, 1]), got {levels!r}"
        )
    chosen = set()
    for item in levels:
        if isinstance(item, str):
            name = item.strip().lower()
            if name.isdigit():
                item = int(name)
            elif name in LEVEL_NAMES:
                item = LEVEL_NAMES.index(name)
            else:
                raise ValueError(f"unknown level {item!r}; choose from {', '.join(LEVEL_NAMES)}")
        if isinstance(item, bool) or not isinstance(item, numbers.Integral):
            raise ValueError(
                f"a level is a name ({', '.join(LEVEL_NAMES)}) or a number 0..2, got {item!r}"
            )
        if int(item) not in ALL_LEVELS:
            raise ValueError(f"level {item} out of range 0..{len(LEVEL_NAMES) - 1}")
        chosen.add(int(item))
    if not chosen:
        raise ValueError("choose at least one level (whole, part, subpart)")
    return frozenset(chosen)


def filter_levels(detections: Iterable[dict], levels: Levels) -> list[dict]:
    """The detections whose ``hier_level`` is one of ``levels`` (see :func:`parse_levels`).

    Raises ValueError for a detection without an integer ``hier_level`` (e.g. results of
    another detector: they carry no level to filter by)."""
    chosen = parse_levels(levels)
    kept = []
    for index, detection in enumerate(detections):
        level = detection.get("hier_level") if isinstance(detection, dict) else None
        if not isinstance(level, numbers.Integral) or isinstance(level, bool):
            raise ValueError(
                f"detection {index} has no integer 'hier_level' (got {level!r}): filter_levels "
                "takes hassod predict results, whose level is 0 (whole), 1 (part) or 2 (subpart)"
            )
        if int(level) in chosen:
            kept.append(detection)
    return kept


_CHECKED_OPTIONS = ("score_threshold", "max_detections", "min_size", "max_size", "mask_threshold")


def check_predict_options(
    score_threshold: float | None = None,
    max_detections: int | None = None,
    min_size: int | None = None,
    max_size: int | None = None,
    mask_threshold: float = 0.5,
    *,
    names: dict[str, str] | None = None,
) -> None:
    """ValueError / TypeError naming the option unless each is None (the checkpoint's
    setting) or usable: a score threshold in [0, 1], at least one detection, test sizes of at
    least ``MIN_IMAGE_SIZE`` (32) px, a mask threshold in (0, 1). ``names``: what to call a
    parameter in the message (``hassod predict`` names its options: ``--min-size``)."""
    names = names or {}

    def label(option: str) -> str:
        return names.get(option, option)

    for option, value in (("min_size", min_size), ("max_size", max_size)):
        if value is None:
            continue
        name = label(option)
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an integer number of pixels, got {value!r}")
        if value < MIN_IMAGE_SIZE:
            raise ValueError(
                f"{name} must be at least {MIN_IMAGE_SIZE} pixels (one cell of the detector's "
                f"coarsest feature map), got {value}; leave it out for the checkpoint's size"
            )
    if max_detections is not None:
        check_number(label("max_detections"), max_detections, integer=True, low=1)
    if score_threshold is not None:
        check_number(label("score_threshold"), score_threshold, low=0, high=1)
    mask = label("mask_threshold")
    check_number(mask, mask_threshold, low=0, high=1, low_open=True, high_open=True)


def _encode(masks: np.ndarray) -> list[dict]:
    from pycocotools import mask as mask_utils

    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    for rle in rles:
        rle["counts"] = rle["counts"].decode("ascii")
    return rles


class Predictor:
    """A trained detector ready for images.

    Args:
        checkpoint: path of a ``hassod train`` checkpoint (or its loaded dict), or of a
            Detectron2 checkpoint of the HASSOD detector such as the authors' released model
            (:mod:`hassod.detector.detectron2_weights`).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        weights: ``student`` (default; the authors evaluate the student after Mean Teacher),
            ``teacher`` (its EMA) or ``auto`` (the teacher when present, else the student).
        score_threshold: keep detections scoring above it, in [0, 1] (default: the model's,
            0.0).
        max_detections: at most this many per image, >= 1 (default: the checkpoint's
            ``detections_per_image``: 1000 in the paper preset, 100 in ``cpu-small``).
        min_size, max_size: test resize in pixels, at least 32 (None: the checkpoint's
            ``data.test_min_size`` / ``test_max_size``; 800 / 1333 in the paper preset).
        mask_threshold: a pixel is in a mask where its pasted probability is >= this, in
            (0, 1) (0.5; Detectron2's paste, :func:`hassod.detector.paste.paste_masks`).

    Raises ValueError / TypeError naming an option outside those ranges
    (:func:`check_predict_options`).
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike | dict,
        *,
        device: str = "auto",
        weights: str = "student",
        score_threshold: float | None = None,
        max_detections: int | None = None,
        min_size: int | None = None,
        max_size: int | None = None,
        mask_threshold: float = 0.5,
    ) -> None:
        check_predict_options(score_threshold, max_detections, min_size, max_size, mask_threshold)
        self.device = resolve_device(device)
        model, config = detector_from_checkpoint(checkpoint, weights)
        model_config = config.model
        changes = {}
        if score_threshold is not None:
            changes["score_thresh"] = float(score_threshold)
        if max_detections is not None:
            changes["detections_per_image"] = max_detections
        if changes:
            model_config = dataclasses.replace(model_config, **changes)
            model.config = model_config
            model.roi_heads.config = model_config
        self.model = model.to(self.device).eval()
        self.config = config
        # only None means the checkpoint's size (0 is refused above, not a default)
        self.min_size = config.data.test_min_size if min_size is None else min_size
        self.max_size = config.data.test_max_size if max_size is None else max_size
        self.mask_threshold = mask_threshold

    @torch.no_grad()
    def raw(self, image: np.ndarray) -> dict:
        """Detections of one (H, W, 3) uint8 RGB image as tensors in its coordinates:
        ``boxes`` (N, 4) xyxy inside the image with positive width and height, ``scores``,
        ``levels``, ``level_scores`` (N, 3), ``mask_probs`` (N, 1, 28, 28) -- before mask
        pasting."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}")
        height, width = image.shape[:2]
        if height == 0 or width == 0:
            raise ValueError(f"image is empty ({height} x {width} pixels)")
        # a copy: the caller's array may be read-only (np.asarray of a PIL image), which
        # torch.from_numpy warns about when the transpose is contiguous already (1 x 1 images)
        tensor = torch.from_numpy(image.transpose(2, 0, 1).copy())
        size = augment.scaled_size(height, width, self.min_size, self.max_size)
        resized = augment.resize_image(tensor, size).to(self.device)
        detection = self.model([resized])[0]
        scale = torch.tensor(
            [width / size[1], height / size[0], width / size[1], height / size[0]],
            device=detection["boxes"].device,
        )
        # Detectron2's detector_postprocess: boxes scaled, clipped to the image, and those
        # the clipping left without area dropped (they would be empty results).
        boxes, keep = clip_nonempty(detection["boxes"] * scale, (height, width))
        return {key: value[keep] for key, value in {**detection, "boxes": boxes}.items()}

    def __call__(
        self,
        image: np.ndarray | torch.Tensor | PIL.Image.Image | str | os.PathLike,
        levels: Levels = None,
        image_id: int = 0,
    ) -> list[dict]:
        """COCO result dicts of one image (an (H, W, 3) uint8 array or tensor, a PIL image or
        a path), best score first, keeping the chosen ``levels`` (:func:`parse_levels`: e.g.
        ``"whole,part"``, ``[0, 1]`` or ``1``; None: all), each with ``image_id`` (an integer;
        see the module docstring for the fields).

        Raises:
            ValueError: an image that is not (H, W, 3) uint8 RGB or is empty, an unknown level;
                :class:`hassod.discover.UnreadableImage` (a ValueError) for a path that
                cannot be read.
            TypeError: an ``image_id`` that is not an integer.
        """
        if isinstance(image_id, bool) or not isinstance(image_id, numbers.Integral):
            raise TypeError(f"image_id must be an integer, got {image_id!r}")
        image = _as_array(image)
        detection = self.raw(image)
        chosen = parse_levels(levels)
        keep = torch.tensor(
            [int(level) in chosen for level in detection["levels"].tolist()],
            dtype=torch.bool,
            device=detection["levels"].device,
        )
        boxes = detection["boxes"][keep]
        scores = detection["scores"][keep].tolist()
        level_ids = detection["levels"][keep].tolist()
        level_scores = detection["level_scores"][keep].tolist()
        probs = detection["mask_probs"][keep]
        height, width = image.shape[:2]
        results = []
        for start in range(0, boxes.shape[0], _PASTE_CHUNK):
            chunk_boxes = boxes[start : start + _PASTE_CHUNK]
            pasted = paste_masks(
                probs[start : start + _PASTE_CHUNK],
                chunk_boxes,
                (height, width),
                self.mask_threshold,
            )
            masks = pasted.cpu().numpy()
            corners = chunk_boxes.tolist()  # one device-to-host copy per chunk
            for offset, rle in enumerate(_encode(masks)):
                index = start + offset
                x0, y0, x1, y1 = (float(v) for v in corners[offset])
                results.append(
                    {  # hier_level second: RESULTS_SIGNATURE finds it in a file's first bytes
                        "image_id": int(image_id),
                        "hier_level": int(level_ids[index]),
                        "category_id": CATEGORY["id"],
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "score": float(scores[index]),
                        "segmentation": rle,
                        "level_scores": [float(v) for v in level_scores[index]],
                    }
                )
        return results


def is_results_list(head: bytes) -> bool:
    """Whether a file's first bytes are a results list :func:`predict_images` wrote: ``[]``,
    or records that begin ``{"image_id":N,"hier_level":`` (another detector's list does not)."""
    return re.match(rb'\[\s*(\]|\{"image_id":\d+,"hier_level":)', head) is not None


def _as_array(image) -> np.ndarray:
    if isinstance(image, (str, os.PathLike)):
        from hassod.discover import read_image

        return read_image(image, None)
    if hasattr(image, "convert"):  # PIL: any mode, converted as stage 1 converts it
        from hassod.features import _pil_to_rgb

        return np.asarray(_pil_to_rgb(image))
    if isinstance(image, torch.Tensor):  # on any device
        return image.detach().cpu().numpy()
    return np.asarray(image)


@dataclass
class PredictSummary:
    out: Path
    images: int
    detections: int
    failed: list = field(default_factory=list)  # {"file_name", "reason"}
    per_level: dict = field(default_factory=dict)
    unlisted: int = 0  # images skipped as the image_ids JSON does not list them
    resumed: int = 0  # images whose results an interrupted run had saved in the work folder

    def format(self) -> str:
        levels = ", ".join(f"{name} {self.per_level.get(name, 0)}" for name in LEVEL_NAMES)
        text = (
            f"wrote {self.out}: {counted(self.detections, 'detection')} ({levels}) on "
            f"{counted(self.images, 'image')}"
        )
        if self.resumed:
            text += f" ({self.resumed} predicted by an interrupted run)"
        if self.failed:
            text += f"; {counted(len(self.failed), 'image')} could not be read (listed on stderr)"
        if self.unlisted:
            text += f"; {counted(self.unlisted, 'image')} not in the --image-ids JSON skipped"
        return text


def work_folder_for(out: str | os.PathLike) -> Path:
    """The work folder of :func:`predict_images` writing ``out``: ``OUT.parts/`` beside it
    (there only while a run is unfinished)."""
    out = Path(out)
    return out.with_name(out.name + ".parts")


def predict_images(
    images: str | os.PathLike,
    checkpoint: str | os.PathLike | dict,
    out: str | os.PathLike,
    *,
    levels: Levels = None,
    image_ids: str | os.PathLike | dict | None = None,
    skip_unlisted: bool = False,
    progress: bool = False,
    **predictor_options: Any,
) -> PredictSummary:
    """Run a checkpoint on an image file or every image under a folder; write COCO results.

    Image ids are :func:`hassod.coco.image_id_for` of the path relative to the folder (for a
    single file: its name), the rule ``hassod discover`` uses, so the results pair with a
    pseudo-label JSON made from the same folder. With ``image_ids`` (a COCO JSON path or dict,
    e.g. the ground truth) each image takes the id of its record there instead, matched by file
    name (:func:`image_ids_from`), so the results pair with that JSON (``hassod evaluate``);
    images it does not list are refused, or with ``skip_unlisted`` left out (e.g. a folder
    larger than the annotated subset). Unreadable images are skipped and listed in the summary.

    Finished images are saved as they go in the work folder :func:`work_folder_for` ``(out)``
    (see the module docstring); an interrupted call leaves it for the same call to resume.
    SIGTERM interrupts like Ctrl-C (in the main thread). The output is written atomically,
    then the work folder is removed.

    Raises:
        FileNotFoundError: no images.
        ValueError: a bad level, or (:class:`hassod.labels.InputError`) an ``image_ids`` JSON
            that is unreadable or does not list every image; checked before the model loads.
            A ValueError too when no image could be read (``out`` is not written).
        hassod.run_errors.UsageError: ``out`` is a folder, cannot be written or is a file
            that predict did not write (a dataset, another detector's results), its work folder
            is in use by another run or is not a ``hassod predict`` one.
        hassod.run_errors.Interrupted: Ctrl-C or SIGTERM; the finished images are saved.
    """
    from hassod._io import foreign_file, not_replaced
    from hassod.discover_run import atomic_write_json, list_images
    from hassod.run_errors import Interrupted, UsageError, signals_as_interrupt
    from hassod.work_folder import WorkFolder, check_output

    checked = {k: v for k, v in predictor_options.items() if k in _CHECKED_OPTIONS}
    check_predict_options(**checked)  # before the images are listed and the model loads
    images, out = Path(images), Path(out)
    if foreign_file(out, is_results_list):  # not a dataset, nor another detector's list
        raise UsageError(not_replaced(f"--out {out}", "a results list of hassod predict"))
    if images.is_file():
        root, names = images.parent, [images.name]
    elif images.is_dir():
        root, names = images, list_images(images)
        if not names:
            raise FileNotFoundError(f"no images under {images}")
    else:
        raise FileNotFoundError(f"images not found: {images}")
    chosen = parse_levels(levels)
    unlisted = 0
    if image_ids is None:
        ids = {name: image_id_for(name) for name in names}
    else:
        ids = image_ids_from(image_ids, names, root, skip_unlisted=skip_unlisted)
        unlisted = len(names) - len(ids)
        names = [name for name in names if name in ids]
        if not names:
            raise FileNotFoundError(f"none of the images under {images} are in {image_ids}")

    folder = WorkFolder(work_folder_for(out), command=_COMMAND)
    made = [parent for parent in folder.path.parents if not parent.exists()]  # by check_output
    own = check_output(out, folder.path)  # True: this call made the folder
    folder.lock()
    done: dict[str, list] = {}  # file name -> its results, in this call or an interrupted one
    failed: list[dict] = []
    try:
        with signals_as_interrupt():
            try:
                predictor = Predictor(checkpoint, **predictor_options)
                _open_work_folder(folder, _run_identity(predictor, chosen))
                own = True
                done = _resumable(folder, names, ids, root)
                resumed = len(done)
                todo = [name for name in names if name not in done]
                _predict_into(folder, predictor, root, todo, ids, chosen, done, failed, progress)
                for item in failed:
                    print(
                        f"hassod predict: skipped {item['file_name']}: {item['reason']}",
                        file=sys.stderr,
                    )
                if not done:
                    raise ValueError(
                        f"no image could be read ({counted(len(failed), 'unreadable image')}, "
                        f"listed above); {out} not written"
                    )
                results = [result for name in names if name in done for result in done[name]]
                out.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_json(out, results)
                folder.clear()  # OUT holds it all: the work folder goes (below)
            except (KeyboardInterrupt, Interrupted):
                resume = "run the same command again to resume"
                if done:  # the chunks hold every finished image (_predict_into)
                    saved = f"{counted(len(done), 'finished image')} of {len(names)}"
                    where = f"{saved} saved in {folder.path}; {resume}"
                elif folder.chunk_paths():  # stopped while loading, before _resumable
                    where = f"{folder.path} keeps the images finished before; {resume}"
                else:
                    where = "no image was finished"
                raise Interrupted(f"interrupted: {where}") from None
    finally:
        if own and not folder.chunk_paths():
            _remove_work_folder(folder, made)
        folder.unlock()
    per_level = {name: 0 for name in LEVEL_NAMES}
    for result in results:
        per_level[LEVEL_NAMES[result["hier_level"]]] += 1
    return PredictSummary(
        out, len(done), len(results), failed, per_level, unlisted=unlisted, resumed=resumed
    )


def _predict_into(
    folder,
    predictor,
    root: Path,
    todo: list[str],
    ids: dict,
    chosen,
    done: dict,
    failed: list,
    progress: bool,
) -> None:
    """Predict ``todo``, adding each image's results to ``done`` and to the work folder's
    chunks (every :data:`CHUNK_IMAGES` images or :data:`FLUSH_SECONDS`, and when stopped)."""
    from hassod._progress import progress_bar
    from hassod.discover import UnreadableImage, read_image
    from hassod.work_folder import file_stamp

    entries: list = []
    stamps: dict[str, list] = {}
    last_flush = time.monotonic()

    def flush() -> None:
        nonlocal last_flush
        if entries:
            folder.write_chunk(list(entries), [], dict(stamps))
            entries.clear()
            stamps.clear()
        last_flush = time.monotonic()

    total = len(todo) + len(done)
    bar = progress_bar(
        todo, enabled=progress, total=total, initial=len(done), unit="img", desc="predict"
    )
    try:
        for name in bar:
            stamp = file_stamp(root / name)  # before reading: a file replaced later is redone
            try:
                image = read_image(root / name, None)
            except UnreadableImage as error:
                failed.append({"file_name": name, "reason": str(error)})
                continue
            results = predictor(image, chosen, image_id=ids[name])
            entries.append([{"file_name": name, "id": ids[name]}, results])
            if stamp is not None:
                stamps[name] = stamp
            done[name] = results
            if len(entries) >= CHUNK_IMAGES or time.monotonic() - last_flush >= FLUSH_SECONDS:
                flush()
    finally:
        flush()
        bar.close()


def _run_identity(predictor: Predictor, chosen) -> dict:
    """What decides the results of an image besides its file and id: a work folder of another
    identity is not resumed."""
    from hassod import __version__

    digest = hashlib.sha256()
    for name, tensor in predictor.model.state_dict().items():
        data = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name} {data.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(data.view(torch.uint8).numpy())
    model = dataclasses.asdict(predictor.model.config)
    return json.loads(  # as the manifest stores it (lists, not tuples)
        json.dumps(
            {
                "hassod_version": __version__,
                "network_sha256": digest.hexdigest(),
                "model": model,
                "min_size": predictor.min_size,
                "max_size": predictor.max_size,
                "mask_threshold": predictor.mask_threshold,
                "levels": [LEVEL_NAMES[level] for level in sorted(chosen)],
                "device": predictor.device.type,
            },
            default=repr,
        )
    )


def _open_work_folder(folder, identity: dict) -> None:
    """Keep the folder's chunks when a run of the same identity wrote them; else discard them
    with a warning, and write this run's manifest. A folder that is not ``hassod predict``'s
    (say, ``hassod discover``'s for the same OUT) is refused, never cleared."""
    from hassod.run_errors import UsageError
    from hassod.work_folder import identity_differences

    manifest = None
    if folder.manifest_path.is_file():
        try:
            manifest = json.loads(folder.manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            manifest = None
        if not (
            isinstance(manifest, dict)
            and manifest.get("command") == _COMMAND
            and manifest.get("format") == _WORK_FORMAT
            and isinstance(manifest.get("identity"), dict)
        ):
            raise UsageError(
                f"{folder.manifest_path} is not the manifest of a {_COMMAND} work folder "
                "(another command's, or damaged); remove the folder or choose another --out"
            )
    elif folder.chunk_paths() or any(entry.is_dir() for entry in folder.path.iterdir()):
        # chunks, or folders such as a sharded `hassod discover`'s shard-i-of-N/
        raise UsageError(
            f"{folder.path} holds another run's work but no {_COMMAND} manifest; remove the "
            "folder or choose another --out"
        )
    if manifest is not None:
        differences = identity_differences(manifest["identity"], identity)
        if not differences:
            return
        warnings.warn(
            f"{folder.path} holds results of other settings, discarded (starting afresh; "
            f"stored -> now: {'; '.join(differences)})",
            RuntimeWarning,
            stacklevel=3,
        )
        folder.clear()
    folder.write_manifest({"format": _WORK_FORMAT, "command": _COMMAND, "identity": identity})


def _resumable(folder, names: list[str], ids: dict, root: Path) -> dict[str, list]:
    """``{file name: results}`` of the listed images the work folder's chunks hold, except
    those whose id or file changed since (predicted again, with a warning)."""
    from hassod.work_folder import file_stamp

    entries, _, stamps = folder.load_with_stamps()
    kept, changed = {}, []
    for name in names:
        if name not in entries:
            continue
        record, results = entries[name]
        if record.get("id") != ids[name] or (
            name in stamps and stamps[name] != file_stamp(root / name)
        ):
            changed.append(name)
            continue
        kept[name] = results
    if changed:
        warnings.warn(
            f"{counted(len(changed), 'image')} changed, or took another id, since an interrupted "
            f"run predicted it (e.g. {changed[0]}): predicted again",
            RuntimeWarning,
            stacklevel=3,
        )
    return kept


def _remove_work_folder(folder, made: list[Path]) -> None:
    """Remove a work folder that holds no chunks (its manifest, lock file and leftover
    temporaries, then itself), and the folders ``made`` for it that stayed empty (OUT's, when
    nothing was written)."""
    from hassod._io import is_leftover

    leftovers = []  # temporaries of writes a killed run left: they would keep the folder
    with contextlib.suppress(OSError):
        leftovers = [entry for entry in folder.path.iterdir() if is_leftover(entry.name)]
    for path in (folder.manifest_path, folder.path / ".lock", *leftovers):
        with contextlib.suppress(OSError):
            path.unlink()
    for path in (folder.path, *made):
        with contextlib.suppress(OSError):
            path.rmdir()


def image_ids_from(
    dataset, names: Sequence[str], root: str | os.PathLike = ".", *, skip_unlisted: bool = False
) -> dict[str, int]:
    """Each image's id from a COCO JSON's ``images`` records, matched by file name.

    Args:
        dataset: a COCO JSON path or parsed dict with an ``images`` list (e.g. the ground truth).
        names: image paths relative to ``root`` (as :func:`predict_images` lists them).
        root: their folder; the absolute path is matched, so a record's ``file_name`` may be
            any tail of it ("x.jpg", "val2017/x.jpg"; :func:`hassod.labels.match_image`), and
            only a tail: "train2017/x.jpg" is not the image "val2017/x.jpg".

        skip_unlisted: leave images without a record out of the result instead of refusing.

    Returns:
        ``{name: id}``.

    Raises:
        InputError: an unreadable JSON, an image without a record (its id would be missing
            from that JSON, so ``hassod evaluate`` could not score it), two images matching
            one record (their detections would be pooled), a record without an integer id.
    """
    from hassod.labels import ImageIndex, InputError

    source, records = _image_records(dataset)
    index = ImageIndex(records, f"--image-ids {source}")
    ids, owners, unmatched = {}, {}, []
    for name in names:
        # strict: a record of another folder with the same base name is not this image
        record = index.find(os.path.abspath(Path(root) / name), strict=True)
        if record is None:
            unmatched.append(name)
            continue
        image_id = _record_id(record, source)
        if image_id in owners:
            raise InputError(
                f"--image-ids {source}: images {owners[image_id]} and {name} both match the "
                f"record {record.get('file_name')!r}: predict on files with distinct names"
            )
        owners[image_id], ids[name] = name, image_id
    if unmatched and not skip_unlisted:
        shown = ", ".join(unmatched[:5]) + (" ..." if len(unmatched) > 5 else "")
        if len(names) == 1:
            missing = "the image is"
        else:
            verb = "is" if len(unmatched) == 1 else "are"
            missing = f"{len(unmatched)} of {len(names)} images {verb}"
        raise InputError(
            f"--image-ids {source}: {missing} not in its 'images' (matched by file name), so "
            f"{'it' if len(unmatched) == 1 else 'they'} would have no id there: {shown}. "
            "Pass --skip-unlisted to predict on the listed ones only, or leave out "
            "--image-ids (ids: hashed file names)"
        )
    return ids


def _image_records(dataset) -> tuple[str, list]:
    """(name for messages, ``images`` list) of a COCO JSON path or dict."""
    from hassod.labels import InputError, read_json

    if isinstance(dataset, (str, os.PathLike)):
        source, data = str(dataset), read_json(dataset, "--image-ids")
    else:
        source, data = "in-memory image ids", dataset
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not data["images"]:
        from hassod.sa1b import sa1b_hint

        raise InputError(
            f"--image-ids {source}: expected a COCO JSON with a non-empty 'images' list"
            f"{sa1b_hint(data)}"
        )
    return source, data["images"]


def _record_id(record: dict, source: str) -> int:
    # COCO results need integer image ids (pycocotools' loadRes, hassod evaluate's matching).
    image_id = record.get("id")
    if not isinstance(image_id, int) or isinstance(image_id, bool):
        from hassod.labels import InputError

        raise InputError(
            f"--image-ids {source}: the record of {record.get('file_name')!r} has no integer "
            f"'id' (got {image_id!r})"
        )
    return image_id
