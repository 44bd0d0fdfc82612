"""Pseudo-label COCO JSON -> deterministic training batches.

:func:`load_pseudo_labels` reads and checks the stage-1 JSON (see :mod:`hassod.coco`), and
:class:`TrainBatches` turns it into batches: item ``i`` is this process's share of iteration
``i``, a pure function of (seed, iteration, rank). That makes ``--resume`` exact and lets a
``torch.utils.data.DataLoader`` with any number of workers produce the same data.

Bad input: a JSON without an ``images`` list or without any usable annotation is an error
(:class:`DataError`); annotations without ``hier_level`` count as whole objects (level 0) with
one warning; crowd annotations, annotations without a segmentation or for unknown images are
skipped and counted; images whose file is missing are left out with a warning; images that
cannot be decoded (or whose masks do not match their size) are skipped when met -- the next
image of the shuffled order takes their place -- and reported in each batch's ``skipped``.
"""

from __future__ import annotations

import hashlib
import json
import signal
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from hassod._io import not_a_file, not_a_folder
from hassod._text import counted
from hassod.detector import augment
from hassod.detector.config import TrainConfig
from hassod.detector.sampling import GroupedStream, ShuffledStream
from hassod.labels import InputError, check_annotation_fields

NUM_LEVELS = 3
_STREAM_PSEUDO, _STREAM_UNLABELED = 0, 1
_PASTE_SLOT = 1_000_003  # RNG key of the batch-level copy-paste draw


class DataError(ValueError):
    """The pseudo-label JSON (or the image folder) cannot be used for training."""


class ImageReadError(RuntimeError):
    """One image cannot be used (undecodable, or masks of another size)."""


@dataclass
class ImageEntry:
    file_name: str
    image_id: int
    width: int
    height: int
    segmentations: list = field(default_factory=list)
    levels: list = field(default_factory=list)
    boxes: list = field(default_factory=list)  # COCO [x, y, w, h] per annotation, or None


@dataclass
class PseudoLabels:
    """The usable part of a pseudo-label JSON, plus counts of what was left out and why."""

    image_root: Path
    entries: list
    report: dict
    # what was read, recorded in checkpoints so that a resume on other data is noticed:
    # pseudo_json (resolved path), pseudo_json_bytes, pseudo_json_sha256, images_dir
    # (resolved), images and annotations (the usable ones)
    source: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.entries)


def load_pseudo_labels(json_path, image_root, *, keep_empty: bool = False) -> PseudoLabels:
    """Read and check a pseudo-label COCO JSON.

    Args:
        json_path: the JSON written by ``hassod discover`` (or any COCO instance JSON with
            ``segmentation``; ``hier_level`` optional).
        image_root: folder the images' ``file_name`` are relative to.
        keep_empty: keep images without annotations (default: drop them, as Detectron2 does).

    Raises :class:`DataError` when nothing can be trained on.
    """
    json_path, image_root = Path(json_path), Path(image_root)
    if not json_path.is_file():
        raise DataError(not_a_file(json_path, "pseudo-label JSON"))
    if not image_root.is_dir():
        raise DataError(not_a_folder(image_root, "image folder"))
    try:
        raw = json_path.read_bytes()
        source = {
            "pseudo_json": str(json_path.resolve()),
            "pseudo_json_bytes": len(raw),
            "pseudo_json_sha256": hashlib.sha256(raw).hexdigest(),  # 1-2 s a GB
            "images_dir": str(image_root.resolve()),
        }
        text = raw.decode("utf-8")
        del raw
        coco = json.loads(text)
        del text
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"cannot read pseudo-label JSON {json_path}: {error}") from error
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
        raise DataError(f"{json_path} has no 'images' list: not a COCO pseudo-label file")
    annotations = coco.get("annotations") or []
    if not isinstance(annotations, list):
        raise DataError(f"{json_path}: 'annotations' must be a list")

    report = {
        "images_in_json": len(coco["images"]),
        "annotations_in_json": len(annotations),
        "annotations_without_level": 0,
        "annotations_bad_level": 0,
        "annotations_crowd": 0,
        "annotations_without_segmentation": 0,
        "annotations_unknown_image": 0,
        "annotations_malformed": 0,
        "images_without_annotations": 0,
        "images_missing_file": 0,
        "images_bad_record": 0,
    }
    entries: dict[int, ImageEntry] = {}
    malformed = ""  # the first malformed annotation's error
    for record in coco["images"]:
        try:
            entry = ImageEntry(
                file_name=str(record["file_name"]),
                image_id=int(record["id"]),
                width=int(record["width"]),
                height=int(record["height"]),
            )
        except (KeyError, TypeError, ValueError):
            report["images_bad_record"] += 1
            continue
        entries[entry.image_id] = entry
    for annotation in annotations:
        if not isinstance(annotation, dict):
            report["annotations_without_segmentation"] += 1
            continue
        entry = entries.get(annotation.get("image_id"))
        if entry is None:
            report["annotations_unknown_image"] += 1
            continue
        if annotation.get("iscrowd", 0):
            report["annotations_crowd"] += 1
            continue
        segmentation = annotation.get("segmentation")
        if not segmentation:
            report["annotations_without_segmentation"] += 1
            continue
        try:  # a corrupt RLE would decode to garbage (pycocotools reads past its end)
            check_annotation_fields(annotation, f"annotation {annotation.get('id', '?')!r}")
        except InputError as error:
            report["annotations_malformed"] += 1
            malformed = malformed or str(error)
            continue
        level = annotation.get("hier_level")
        if level is None:
            report["annotations_without_level"] += 1
            level = 0
        elif not isinstance(level, int) or not 0 <= level < NUM_LEVELS:
            report["annotations_bad_level"] += 1
            level = (
                min(max(int(level), 0), NUM_LEVELS - 1) if isinstance(level, (int, float)) else 0
            )
        entry.segmentations.append(segmentation)
        entry.levels.append(level)
        entry.boxes.append(_coco_box(annotation.get("bbox")))

    usable = []
    for entry in sorted(entries.values(), key=lambda e: e.file_name):
        if not entry.segmentations and not keep_empty:
            report["images_without_annotations"] += 1
            continue
        if not (image_root / entry.file_name).is_file():
            report["images_missing_file"] += 1
            continue
        usable.append(entry)
    count = report["annotations_without_level"]
    if count:
        warnings.warn(
            f"{counted(count, 'annotation')} in {json_path} {'has' if count == 1 else 'have'} "
            "no hier_level; treated as whole objects (level 0)",
            stacklevel=2,
        )
    count = report["annotations_bad_level"]
    if count:
        warnings.warn(
            f"{counted(count, 'annotation')} {'has' if count == 1 else 'have'} a hier_level "
            "outside 0-2; clipped into that range",
            stacklevel=2,
        )
    count = report["annotations_malformed"]
    if count:
        warnings.warn(
            f"{counted(count, 'malformed annotation')} in {json_path} left out, e.g. {malformed}",
            stacklevel=2,
        )
    count = report["images_missing_file"]
    if count:
        warnings.warn(
            f"{counted(count, 'image')} listed in {json_path} {'is' if count == 1 else 'are'} "
            f"missing under {image_root}; left out",
            stacklevel=2,
        )
    if not coco["images"]:
        raise DataError(f"{json_path} lists no images")
    if not usable:
        if not any(entry.segmentations for entry in entries.values()):
            raise DataError(
                f"{json_path} has no usable annotations ({len(annotations)} in the file): "
                "nothing to train on"
            )
        raise DataError(f"none of the images of {json_path} were found under {image_root}")
    report["images_used"] = len(usable)
    source["images"] = len(usable)
    source["annotations"] = sum(len(entry.segmentations) for entry in usable)
    return PseudoLabels(image_root=image_root, entries=usable, report=report, source=source)


def _coco_box(value) -> list | None:
    """A usable COCO ``bbox`` (four finite numbers), else None (the mask's bounds are used)."""
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        return None
    try:
        box = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    return box if all(np.isfinite(box)) else None


def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB, decoded as stage 1 decodes it (:func:`hassod.discover.read_image`:
    EXIF orientation applied, any PIL mode converted), so the pseudo-label masks line up."""
    from hassod.discover import UnreadableImage
    from hassod.discover import read_image as decode

    try:
        return decode(path, None)
    except UnreadableImage as error:
        raise ImageReadError(f"{error}") from error


def decode_segmentations(segmentations: list, height: int, width: int) -> np.ndarray:
    """(N, H, W) uint8 masks from COCO segmentations: RLE (string or list counts) or polygons."""
    from pycocotools import mask as mask_utils

    if not segmentations:
        return np.zeros((0, height, width), dtype=np.uint8)
    rles = []
    for segmentation in segmentations:
        if isinstance(segmentation, list):  # polygons
            rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
        elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        elif isinstance(segmentation, dict) and "counts" in segmentation:
            rle = dict(segmentation)
            if isinstance(rle["counts"], str):
                rle["counts"] = rle["counts"].encode("ascii")
        else:
            raise ImageReadError(f"unsupported segmentation of type {type(segmentation).__name__}")
        if list(rle.get("size", [])) != [height, width]:
            raise ImageReadError(
                f"a mask has size {rle.get('size')} but the image is {height}x{width}"
            )
        rles.append(rle)
    return np.ascontiguousarray(mask_utils.decode(rles).transpose(2, 0, 1))


def read_sample(labels: PseudoLabels, index: int) -> dict:
    """Image ``index`` at its own size with its masks and levels (an augment sample)."""
    entry = labels.entries[index]
    image = read_image(labels.image_root / entry.file_name)
    height, width = image.shape[:2]
    masks = torch.from_numpy(decode_segmentations(entry.segmentations, height, width))
    # Boxes as Detectron2 reads them: the annotation's bbox; the mask's bounds where it has none.
    given = entry.boxes + [None] * (len(entry.segmentations) - len(entry.boxes))
    boxes = torch.zeros((len(given), 4), dtype=torch.float32)
    missing = [number for number, box in enumerate(given) if box is None]
    if missing:
        boxes[missing] = augment.boxes_from_masks(masks[missing])
    for number, box in enumerate(given):
        if box is not None:
            x, y, w, h = box
            boxes[number] = torch.tensor([x, y, x + w, y + h])
    return {
        "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
        "masks": masks,
        "levels": torch.as_tensor(entry.levels, dtype=torch.int64).reshape(-1),
        "boxes": boxes,
        "file_name": entry.file_name,
    }


class TrainBatches(torch.utils.data.Dataset):
    """Item ``iteration`` -> this process's batch for that iteration.

    Burn-in iterations give ``{"images", "targets", "skipped"}``. Mean Teacher iterations give
    ``{"labeled": (images, targets) of the weak and the strong views together,
    "unlabeled_weak": images, "unlabeled_strong": images, "skipped"}``: the same pseudo-label
    set serves both streams (as the authors' config), shuffled independently.

    Images are assigned to iterations through a per-epoch permutation drawn from
    ``(seed, stream, epoch)``, grouped by orientation so that each process's batch is all
    landscape or all portrait (``config.data.aspect_ratio_grouping``, on by default as in the
    authors' loaders; :mod:`hassod.detector.sampling`); every augmentation draws from ``(seed,
    stream, iteration, rank, slot)``. An unreadable image is replaced by the next readable one
    after its position in the shuffled stream (of the same orientation when grouping) and listed
    in ``skipped`` as ``(file_name, reason)``.
    """

    def __init__(
        self, labels: PseudoLabels, config: TrainConfig, rank: int = 0, world_size: int = 1
    ):
        self.labels = labels
        self.config = config
        self.rank = rank
        self.world_size = world_size
        self.burn_in = config.iterations
        self.per_rank = _share(config.batch_size, world_size, "batch_size (--batch-size)")
        mean_teacher = config.mean_teacher
        if mean_teacher.iterations:

            def teacher_share(name: str) -> int:
                example = f'{{"mean_teacher": {{"{name}": {world_size}}}}}'
                how = f"(in a --config JSON, e.g. {example})"
                return _share(getattr(mean_teacher, name), world_size, f"mean_teacher.{name}", how)

            self.labeled_per_rank = teacher_share("labeled_batch")
            self.unlabeled_per_rank = teacher_share("unlabeled_batch")
        self._streams: dict = {}
        self._bad: dict[int, str] = {}
        self._landscape = np.array([e.width > e.height for e in labels.entries], dtype=bool)

    def __len__(self) -> int:
        return self.config.total_iterations

    # ---------------------------------------------------------------- sampling
    def _stream(self, stream: int, per_rank: int):
        """``stream``'s image order for batches of ``per_rank`` images per process."""
        key = (stream, per_rank)
        if key not in self._streams:
            shuffled = ShuffledStream(len(self.labels), self.config.seed, stream)
            if self.config.data.aspect_ratio_grouping:
                self._streams[key] = GroupedStream(shuffled, self._landscape, per_rank)
            else:
                self._streams[key] = shuffled
        return self._streams[key]

    def _read(self, stream: int, per_rank: int, number: int, skipped: list) -> dict:
        """The ``number``-th image of ``stream``'s endless sequence. An unreadable one is
        replaced by the next readable image after that position in the shuffled stream, of the
        same orientation when batches are grouped (of any, if no image of that orientation can
        be read): a function of the files alone, never of which bad ones were met before."""
        order = self._stream(stream, per_rank)
        index = order.index_at(number)
        sample = self._try_read(index, skipped)
        if sample is not None:
            return sample
        shuffled = order.shuffled if isinstance(order, GroupedStream) else order
        count = len(self.labels)
        wanted = [None]
        if self.config.data.aspect_ratio_grouping:
            wanted = [bool(self._landscape[index]), None]
        for orientation in wanted:
            for attempt in range(1, 2 * count + 1):  # every image comes up within two epochs
                candidate = shuffled.index_at(number + attempt)
                if orientation is not None and bool(self._landscape[candidate]) != orientation:
                    continue
                sample = self._try_read(candidate, skipped)
                if sample is not None:
                    return sample
        example = next(iter(self._bad.values()))
        raise DataError(
            f"none of the {count} images could be read (e.g. {example})"
            if count != 1
            else f"the only image could not be read ({example})"
        )

    def _try_read(self, index: int, skipped: list) -> dict | None:
        """The sample of image ``index``, or None when it cannot be read (noted once)."""
        if index in self._bad:
            return None
        try:
            return read_sample(self.labels, index)
        except ImageReadError as error:
            self._bad[index] = str(error)
            skipped.append((self.labels.entries[index].file_name, str(error)))
            return None

    def _numbers(self, step: int, per_rank: int):
        first = step * per_rank * self.world_size + self.rank * per_rank
        return range(first, first + per_rank)

    def _rng(self, stream: int, iteration: int, slot: int) -> np.random.Generator:
        return np.random.default_rng([self.config.seed, stream, iteration, self.rank, slot])

    # ----------------------------------------------------------------- batches
    def __getitem__(self, iteration: int) -> dict:
        if not 0 <= iteration < len(self):
            raise IndexError(f"iteration {iteration} outside [0, {len(self)})")
        if iteration < self.burn_in:
            return self._burn_in_batch(iteration)
        return self._mean_teacher_batch(iteration)

    def _geometric(self, sample: dict, rng: np.random.Generator) -> dict:
        data = self.config.data
        sample = augment.random_resize(sample, data.min_sizes, data.max_size, rng)
        return augment.random_flip(sample, data.flip_prob, rng)

    def _burn_in_batch(self, iteration: int) -> dict:
        skipped: list = []
        samples = []
        for slot, number in enumerate(self._numbers(iteration, self.per_rank)):
            sample = self._read(_STREAM_PSEUDO, self.per_rank, number, skipped)
            samples.append(self._geometric(sample, self._rng(_STREAM_PSEUDO, iteration, slot)))
        samples = self._copy_paste(samples, self._rng(_STREAM_PSEUDO, iteration, _PASTE_SLOT))
        images, targets = zip(*(augment.finalize(sample) for sample in samples))
        return {
            "images": list(images),
            "targets": list(targets),
            "file_names": [sample["file_name"] for sample in samples],
            "skipped": skipped,
        }

    def _copy_paste(self, samples: list, rng: np.random.Generator) -> list:
        """Each image receives objects of its mirror in the batch (the authors pair image i with
        image n-1-i, the batch reversed), with probability ``copy_paste_prob``."""
        data = self.config.data
        if data.copy_paste_prob <= 0:
            return samples
        result = []
        for index, sample in enumerate(samples):
            if rng.random() < data.copy_paste_prob:
                source = samples[len(samples) - 1 - index]
                sample = augment.copy_paste(
                    sample, source, rng, data.copy_paste_min_ratio, data.copy_paste_max_ratio
                )
            result.append(sample)
        return result

    def _mean_teacher_batch(self, iteration: int) -> dict:
        step = iteration - self.burn_in
        skipped: list = []
        weak_images, weak_targets, strong_images, strong_targets = [], [], [], []
        for slot, number in enumerate(self._numbers(step, self.labeled_per_rank)):
            rng = self._rng(_STREAM_PSEUDO, iteration, slot)
            sample = self._read(_STREAM_PSEUDO, self.labeled_per_rank, number, skipped)
            sample = self._geometric(sample, rng)
            image, target = augment.finalize(sample)
            weak_images.append(image)
            weak_targets.append(target)
            strong_images.append(augment.strong_photometric(image, rng))
            strong_targets.append(target)
        unlabeled_weak, unlabeled_strong = [], []
        for slot, number in enumerate(self._numbers(step, self.unlabeled_per_rank)):
            rng = self._rng(_STREAM_UNLABELED, iteration, slot)
            sample = self._read(_STREAM_UNLABELED, self.unlabeled_per_rank, number, skipped)
            sample = self._geometric(sample, rng)
            unlabeled_weak.append(sample["image"])
            unlabeled_strong.append(augment.strong_photometric(sample["image"], rng))
        return {
            "labeled": (strong_images + weak_images, strong_targets + weak_targets),
            "unlabeled_weak": unlabeled_weak,
            "unlabeled_strong": unlabeled_strong,
            "skipped": skipped,
        }


def _share(total: int, world_size: int, name: str, how: str = "") -> int:
    """Each process's part of a batch of ``total`` images; ``how`` says where to set it."""
    if total % world_size:
        raise ValueError(
            f"{name} {total} is not divisible by the {world_size} processes: set a multiple "
            f"of {world_size} {how}".rstrip()
        )
    return total // world_size


def _identity(item):
    return item


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the system has one)."""
    import os

    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def _leave_stop_signals_to_the_trainer(worker_id: int) -> None:
    """Loader workers ignore Ctrl-C and SIGTERM, which a terminal or a job scheduler sends to
    the whole process group: the training process stops after its current iteration and saves
    a checkpoint, then ends its workers itself. A worker killed by the signal would make torch
    raise in the training process wherever it happens to be, and the checkpoint be lost."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


def make_loader(
    batches: TrainBatches, start: int, stop: int, num_workers: int, pin_memory: bool = False
):
    """A DataLoader over iterations ``start .. stop-1`` in order (workers prefetch ahead), with
    at most as many workers as this process may use CPUs (more only contend, and torch warns;
    the batches do not depend on the count)."""
    num_workers = min(num_workers, usable_cpus())
    return torch.utils.data.DataLoader(
        batches,
        sampler=range(start, stop),
        batch_size=None,
        num_workers=num_workers,
        collate_fn=_identity,
        worker_init_fn=_leave_stop_signals_to_the_trainer,
        pin_memory=pin_memory,
        prefetch_factor=2 if num_workers else None,
        # its own generator: creating the iterator must not consume the global torch RNG, or a
        # resumed run would sample RoIs differently from an uninterrupted one
        generator=torch.Generator(),
    )
