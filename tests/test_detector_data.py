"""Pseudo-label loading, bad input, deterministic batches and the augmentations."""

from __future__ import annotations

import dataclasses
import json
import os
import warnings

import numpy as np
import pytest
import torch
from detector_checks import tiny_config

from hassod.detector import augment
from hassod.detector.data import (
    DataError,
    TrainBatches,
    decode_segmentations,
    load_pseudo_labels,
)
from hassod.detector.synthetic import write_dataset


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("synthetic"), count=4, size=96, seed=3)


def _rewrite(json_path, tmp_path, change):
    coco = json.loads(json_path.read_text())
    change(coco)
    path = tmp_path / "changed.json"
    path.write_text(json.dumps(coco))
    return path


def test_load_reports_usable_images(synthetic):
    json_path, images = synthetic
    labels = load_pseudo_labels(json_path, images)
    coco = json.loads(json_path.read_text())
    assert len(labels) == 4
    assert labels.report["annotations_in_json"] == len(coco["annotations"])
    assert sum(len(e.levels) for e in labels.entries) == len(coco["annotations"])
    assert {level for e in labels.entries for level in e.levels} <= {0, 1, 2}


def test_json_without_images_is_refused(synthetic, tmp_path):
    json_path, images = synthetic
    path = _rewrite(json_path, tmp_path, lambda coco: coco.pop("images"))
    with pytest.raises(DataError, match="no 'images' list"):
        load_pseudo_labels(path, images)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="cannot read"):
        load_pseudo_labels(bad, images)


def test_a_folder_for_the_json_or_a_file_for_the_images_says_which(synthetic, tmp_path):
    json_path, images = synthetic
    with pytest.raises(DataError, match=rf"pseudo-label JSON {images} is a folder, not a file"):
        load_pseudo_labels(images, images)
    with pytest.raises(DataError, match=rf"image folder {json_path} is a file, not a folder"):
        load_pseudo_labels(json_path, json_path)
    with pytest.raises(DataError, match="pseudo-label JSON not found"):
        load_pseudo_labels(tmp_path / "missing.json", images)


def test_json_without_annotations_is_refused(synthetic, tmp_path):
    json_path, images = synthetic
    path = _rewrite(json_path, tmp_path, lambda coco: coco.update(annotations=[]))
    with pytest.raises(DataError, match="no usable annotations"):
        load_pseudo_labels(path, images)


def test_a_corrupt_rle_is_left_out_not_decoded(synthetic, tmp_path):
    """pycocotools decodes a truncated RLE string from memory past its end: such an
    annotation is counted and left out, with a warning naming it."""
    json_path, images = synthetic

    def truncate(coco):
        rle = coco["annotations"][1]["segmentation"]
        if not isinstance(rle, dict):  # polygons: make it an RLE
            coco["annotations"][1]["segmentation"] = rle = {"size": [96, 96], "counts": ""}
        rle["counts"] = "Ug011"

    path = _rewrite(json_path, tmp_path, truncate)
    with pytest.warns(UserWarning, match="1 malformed annotation in .* corrupt RLE"):
        labels = load_pseudo_labels(path, images)
    assert labels.report["annotations_malformed"] == 1
    total = len(json.loads(json_path.read_text())["annotations"])
    assert sum(len(e.levels) for e in labels.entries) == total - 1


def test_annotations_without_level_are_whole_objects(synthetic, tmp_path):
    json_path, images = synthetic

    def drop_levels(coco):
        for annotation in coco["annotations"][:3]:
            del annotation["hier_level"]

    path = _rewrite(json_path, tmp_path, drop_levels)
    with pytest.warns(UserWarning, match="3 annotations .* no hier_level"):
        labels = load_pseudo_labels(path, images)
    assert labels.report["annotations_without_level"] == 3
    coco = json.loads(path.read_text())
    first_image = next(
        e for e in labels.entries if e.image_id == coco["annotations"][0]["image_id"]
    )
    assert first_image.levels[0] == 0


def test_levels_outside_0_to_2_are_clipped_and_crowd_regions_skipped(synthetic, tmp_path):
    """hier_level 5 counts as a subpart (2), a float 1.0 as a part (1), both counted as bad;
    an iscrowd annotation is no pseudo-label (Detectron2 leaves crowd regions out too)."""
    json_path, images = synthetic

    def change(coco):
        first, second, third = coco["annotations"][:3]
        first["hier_level"], second["hier_level"], third["iscrowd"] = 5, 1.0, 1

    path = _rewrite(json_path, tmp_path, change)
    with pytest.warns(UserWarning, match="2 annotations have a hier_level outside 0-2"):
        labels = load_pseudo_labels(path, images)
    assert labels.report["annotations_bad_level"] == 2
    assert labels.report["annotations_crowd"] == 1
    coco = json.loads(path.read_text())
    (entry,) = [e for e in labels.entries if e.image_id == coco["annotations"][0]["image_id"]]
    same_image = [a for a in coco["annotations"] if a["image_id"] == entry.image_id]
    assert coco["annotations"][2]["image_id"] == entry.image_id  # all three on this image
    kept = [a for a in same_image if not a.get("iscrowd")]
    assert entry.segmentations == [a["segmentation"] for a in kept]
    assert entry.levels[:2] == [2, 1]
    assert entry.levels[2:] == [a["hier_level"] for a in kept[2:]]


def test_copy_paste_takes_objects_from_the_mirror_image_of_the_batch(synthetic, monkeypatch):
    """Image i of a batch receives objects of image n-1-i (the authors' pairing)."""
    labels = load_pseudo_labels(*synthetic)
    config = tiny_config(iterations=2)
    config = dataclasses.replace(config, batch_size=4)
    pairs = []
    paste = augment.copy_paste

    def record(target, source, rng, *ratios):
        pairs.append((target["file_name"], source["file_name"]))
        return paste(target, source, rng, *ratios)

    monkeypatch.setattr(augment, "copy_paste", record)
    batch = TrainBatches(labels, config)[0]
    names = batch["file_names"]
    assert len(set(names)) == 4
    assert pairs == [(name, mirror) for name, mirror in zip(names, names[::-1])]


def test_missing_and_corrupt_images_are_skipped_and_counted(synthetic, tmp_path):
    json_path, images = synthetic
    folder = tmp_path / "images"
    folder.mkdir()
    names = sorted(p.name for p in images.iterdir())
    for name in names[1:]:
        (folder / name).write_bytes((images / name).read_bytes())
    (folder / names[2]).write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.warns(UserWarning, match="1 image listed .* is missing"):
        labels = load_pseudo_labels(json_path, folder)
    assert labels.report["images_missing_file"] == 1 and len(labels) == 3
    config = tiny_config(iterations=4)
    batches = TrainBatches(labels, config)
    skipped = {}
    for iteration in range(4):
        batch = batches[iteration]
        assert len(batch["images"]) == 2
        assert names[2] not in batch["file_names"]
        skipped.update(dict(batch["skipped"]))
    assert list(skipped) == [names[2]]


def test_batches_are_a_function_of_the_iteration(synthetic):
    labels = load_pseudo_labels(*synthetic)
    config = tiny_config(iterations=6)
    first, again = TrainBatches(labels, config)[3], TrainBatches(labels, config)[3]
    for a, b in zip(
        first["images"] + [t["masks"] for t in first["targets"]],
        again["images"] + [t["masks"] for t in again["targets"]],
    ):
        assert torch.equal(a, b)
    # every image is seen once per epoch (4 images, batch 2: two iterations per epoch)
    epoch = (
        TrainBatches(labels, config)[0]["file_names"]
        + TrainBatches(labels, config)[1]["file_names"]
    )
    assert sorted(epoch) == sorted(e.file_name for e in labels.entries)
    for target in first["targets"]:
        assert target["boxes"].shape[0] == target["levels"].shape[0] == target["masks"].shape[0]
        assert torch.equal(target["boxes"], augment.boxes_from_masks(target["masks"]))


def test_ranks_draw_disjoint_images(synthetic):
    labels = load_pseudo_labels(*synthetic)
    config = tiny_config(iterations=2)
    rank0 = TrainBatches(labels, config, rank=0, world_size=2)[0]["file_names"]
    rank1 = TrainBatches(labels, config, rank=1, world_size=2)[0]["file_names"]
    assert len(rank0) == len(rank1) == 1 and rank0 != rank1


def test_mean_teacher_batches_have_both_views(synthetic):
    labels = load_pseudo_labels(*synthetic)
    config = tiny_config(iterations=1, mean_teacher=2)
    batch = TrainBatches(labels, config)[1]
    images, targets = batch["labeled"]
    assert len(images) == 2 and len(targets) == 2  # strong + weak view of one image
    assert images[0].shape == images[1].shape and targets[0] is targets[1]
    assert not torch.equal(images[0], images[1])  # the strong view is photometrically changed
    assert len(batch["unlabeled_weak"]) == len(batch["unlabeled_strong"]) == 2
    for weak, strong in zip(batch["unlabeled_weak"], batch["unlabeled_strong"]):
        assert weak.shape == strong.shape and weak.dtype == strong.dtype == torch.uint8


def test_mean_teacher_unlabeled_images_come_from_their_own_stream(synthetic, monkeypatch):
    """The unlabeled images follow stream 1, shuffled independently of the pseudo-label
    stream 0 (burn-in's, whose batches of two would otherwise repeat here)."""
    from hassod.detector import data
    from hassod.detector.sampling import GroupedStream, ShuffledStream

    labels = load_pseudo_labels(*synthetic)
    config = tiny_config(iterations=1, mean_teacher=4)
    read, seen = data.read_sample, []
    monkeypatch.setattr(
        data, "read_sample", lambda labels, index: seen.append(index) or read(labels, index)
    )
    batches = TrainBatches(labels, config)
    landscape = [e.width > e.height for e in labels.entries]
    unlabeled = GroupedStream(ShuffledStream(len(labels), config.seed, 1), landscape, 2)
    pseudo = GroupedStream(ShuffledStream(len(labels), config.seed, 0), landscape, 2)
    for step in range(4):
        seen.clear()
        batches[1 + step]
        assert len(seen) == 3  # one labeled image, then two unlabeled ones
        assert seen[1:] == [unlabeled.index_at(2 * step + k) for k in range(2)]
    ones = [unlabeled.index_at(p) for p in range(8)]
    assert ones != [pseudo.index_at(p) for p in range(8)]  # the two streams differ here


def test_images_without_annotations_are_dropped_unless_kept(synthetic, tmp_path):
    json_path, images = synthetic

    def empty_first_image(coco):
        first = coco["images"][0]["id"]
        coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] != first]

    path = _rewrite(json_path, tmp_path, empty_first_image)
    dropped = load_pseudo_labels(path, images)
    assert len(dropped) == 3 and dropped.report["images_without_annotations"] == 1
    kept = load_pseudo_labels(path, images, keep_empty=True)
    assert len(kept) == 4 and kept.report["images_without_annotations"] == 0
    assert sorted(e.file_name for e in kept.entries if not e.segmentations) == [
        json.loads(path.read_text())["images"][0]["file_name"]
    ]


def test_scaled_size_follows_the_short_side_and_caps_the_long_side():
    assert augment.scaled_size(480, 640, 800, 1333) == (800, 1067)
    assert augment.scaled_size(100, 1000, 800, 1333) == (133, 1333)
    rng = np.random.default_rng(0)
    sample = {
        "image": torch.zeros((3, 50, 100), dtype=torch.uint8),
        "masks": torch.zeros((1, 50, 100), dtype=torch.uint8),
        "levels": torch.tensor([0]),
    }
    sizes = {
        tuple(augment.random_resize(sample, (20, 40), 1000, rng)["image"].shape[-2:])
        for _ in range(30)
    }
    assert sizes == {(20, 40), (40, 80)}


def test_flip_mirrors_image_masks_and_boxes():
    image = torch.arange(3 * 4 * 6, dtype=torch.uint8).reshape(3, 4, 6)
    masks = torch.zeros((1, 4, 6), dtype=torch.uint8)
    masks[0, 1:3, 0:2] = 1
    sample = {"image": image, "masks": masks, "levels": torch.tensor([1])}
    flipped = augment.random_flip(sample, 1.0, np.random.default_rng(0))
    assert torch.equal(flipped["image"], image.flip(-1))
    assert augment.boxes_from_masks(flipped["masks"]).tolist() == [[4.0, 1.0, 6.0, 3.0]]
    assert augment.random_flip(sample, 0.0, np.random.default_rng(0)) is sample


def test_boxes_from_masks_match_coco_to_bbox():
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(1)
    masks = (rng.random((5, 20, 30)) > 0.97).astype(np.uint8)
    masks[4] = 0
    boxes = augment.boxes_from_masks(torch.from_numpy(masks))
    for mask, box in zip(masks[:4], boxes):
        x, y, w, h = mask_utils.toBbox(mask_utils.encode(np.asfortranarray(mask)))
        assert box.tolist() == [x, y, x + w, y + h]
    assert boxes[4].tolist() == [0.0, 0.0, 0.0, 0.0]


def _sample(size, boxes, levels, colour):
    image = torch.full((3, size, size), colour, dtype=torch.uint8)
    masks = torch.zeros((len(boxes), size, size), dtype=torch.uint8)
    for mask, (x0, y0, x1, y1) in zip(masks, boxes):
        mask[y0:y1, x0:x1] = 1
    return {"image": image, "masks": masks, "levels": torch.tensor(levels), "file_name": "x"}


class _FixedRng:
    """Stands in for a Generator with chosen draws, to place the paste by hand."""

    def __init__(self, ratio, top, left):
        self._ints = [top, left]
        self.ratio = ratio

    def integers(self, low, high=None):
        return self._ints.pop(0)

    def choice(self, count, size, replace):
        return np.arange(size)

    def uniform(self, low, high):
        return self.ratio


def test_copy_paste_occludes_and_adds_objects():
    target = _sample(40, [(0, 0, 20, 20), (15, 15, 35, 35)], [0, 2], colour=10)
    source = _sample(40, [(0, 0, 20, 20)], [1], colour=200)
    pasted = augment.copy_paste(target, source, _FixedRng(ratio=0.5, top=20, left=20), 0.3, 1.0)
    # the source's 20 px square becomes 10 px at (20, 20): it hides a quarter of object 1
    assert pasted["image"][0, 25, 25] == 200 and pasted["image"][0, 5, 5] == 10
    assert pasted["levels"].tolist() == [0, 2, 1]
    assert pasted["masks"].flatten(1).sum(dim=1).tolist() == [400, 300, 100]
    assert augment.boxes_from_masks(pasted["masks"]).tolist() == [
        [0, 0, 20, 20],
        [15, 15, 35, 35],
        [20, 20, 30, 30],
    ]
    assert target["masks"].flatten(1).sum(dim=1).tolist() == [400, 400]  # input unchanged


def test_copy_paste_pastes_only_objects_hiding_less_than_half():
    target = _sample(40, [(0, 0, 40, 40), (22, 22, 24, 24)], [0, 1], colour=10)
    source = _sample(40, [(0, 0, 20, 20), (20, 20, 40, 40)], [1, 2], colour=200)
    rng = _FixedRng(ratio=1.0, top=0, left=0)
    rng._ints = [2, 0, 0]  # paste both source objects (count drawn as 2 is replaced by choice)
    rng.choice = lambda count, size, replace: np.arange(count)
    result = augment.copy_paste(target, source, rng, 0.3, 1.0)
    # the tiny object is hidden by the second pasted square -> that square is not pasted;
    # the first (hiding 25% of the big object) is
    assert result["levels"].tolist() == [0, 1, 1]
    assert result["masks"].flatten(1).sum(dim=1).tolist() == [1200, 4, 400]


def test_copy_paste_skips_objects_that_would_hide_half_an_object():
    target = _sample(40, [(0, 0, 20, 20)], [0], colour=10)
    source = _sample(40, [(0, 0, 40, 30)], [1], colour=200)
    # pasted at full size over the target: covers 100% of the target object -> not pasted
    result = augment.copy_paste(target, source, _FixedRng(ratio=1.0, top=0, left=0), 0.3, 1.0)
    assert result is target


def test_strong_view_is_deterministic_and_keeps_geometry():
    image = torch.randint(
        0, 256, (3, 32, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    first = augment.strong_photometric(image, np.random.default_rng(5))
    second = augment.strong_photometric(image, np.random.default_rng(5))
    assert torch.equal(first, second) and first.shape == image.shape and first.dtype == torch.uint8
    changed = [
        not torch.equal(augment.strong_photometric(image, np.random.default_rng(s)), image)
        for s in range(5)
    ]
    assert all(changed)


def test_strong_view_is_real_memory_that_can_be_pinned_and_written():
    """Every strong view (grayscale ones included: torchvision expands the grey channel) owns
    its memory, as DataLoader's pin_memory and in-place writes need."""
    image = torch.randint(
        0, 256, (3, 24, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    for seed in range(40):
        view = augment.strong_photometric(image, np.random.default_rng(seed))
        assert view.is_contiguous() and 0 not in view.stride(), seed
        view[:, :2, :2] = 0  # would raise on an expanded tensor


def test_decode_polygons_and_uncompressed_rle():
    from pycocotools import mask as mask_utils

    mask = np.zeros((10, 12), dtype=np.uint8)
    mask[2:6, 3:9] = 1
    compressed = mask_utils.encode(np.asfortranarray(mask))
    uncompressed = {"size": [10, 12], "counts": [int(v) for v in _run_lengths(mask)]}
    polygon = [[3, 2, 9, 2, 9, 6, 3, 6]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        decoded = decode_segmentations(
            [{"size": [10, 12], "counts": compressed["counts"].decode()}, uncompressed, polygon],
            10,
            12,
        )
    assert np.array_equal(decoded[0], mask) and np.array_equal(decoded[1], mask)
    assert decoded[2].sum() >= mask.sum() * 0.8


def _run_lengths(mask):
    flat = mask.flatten(order="F")
    counts, current, run = [], 0, 0
    for value in flat:
        if value != current:
            counts.append(run)
            current, run = value, 0
        run += 1
    counts.append(run)
    return counts


def test_loader_workers_are_capped_at_the_usable_cpus(synthetic, monkeypatch):
    from hassod.detector import data as data_module

    labels = load_pseudo_labels(*synthetic)
    batches = TrainBatches(labels, tiny_config(iterations=2))
    monkeypatch.setattr(data_module, "usable_cpus", lambda: 2)
    assert data_module.make_loader(batches, 0, 2, num_workers=4).num_workers == 2
    assert data_module.make_loader(batches, 0, 2, num_workers=1).num_workers == 1
    assert data_module.make_loader(batches, 0, 2, num_workers=0).num_workers == 0
    assert 1 <= data_module.usable_cpus() <= (os.cpu_count() or 1)


# ------------------------------------------- Detectron2's / the authors' pipeline, detail
def test_mask_resize_equals_pil_nearest():
    """Detectron2 resizes masks with PIL's NEAREST (pixel centres), in line with the image."""
    from PIL import Image

    rng = np.random.default_rng(4)
    for height, width, new_h, new_w in [(37, 53, 80, 101), (120, 90, 47, 33), (64, 64, 96, 40)]:
        masks = (rng.random((3, height, width)) > 0.6).astype(np.uint8)
        ours = augment.resize_masks(torch.from_numpy(masks), (new_h, new_w)).numpy()
        for mask, resized in zip(masks, ours):
            pil = np.asarray(Image.fromarray(mask).resize((new_w, new_h), Image.NEAREST))
            assert np.array_equal(resized, pil)


def test_scaled_size_rounds_as_detectron2():
    """Detectron2 rescales the already scaled sides (its order of operations): 149 x 298 at
    672 / 1333 is 666.5 x 1333 -> 667 rows (scaling the original sides gives 666.49...)."""
    assert augment.scaled_size(149, 298, 672, 1333) == (667, 1333)

    def detectron2(h, w, short_edge, max_size):  # ResizeShortestEdge.get_output_shape
        scale = short_edge * 1.0 / min(h, w)
        newh, neww = (short_edge, scale * w) if h < w else (scale * h, short_edge)
        if max(newh, neww) > max_size:
            scale = max_size * 1.0 / max(newh, neww)
            newh, neww = newh * scale, neww * scale
        return int(newh + 0.5), int(neww + 0.5)

    for h in range(100, 700, 7):
        for w in range(100, 700, 11):
            for short in (240, 672, 800):
                assert augment.scaled_size(h, w, short, 1333) == detectron2(h, w, short, 1333)


def test_paste_resize_truncates_and_keeps_every_touched_pixel():
    """The authors' copy-paste: bilinear without antialiasing, the image truncated to uint8
    (0 .. 255 over 2 pixels -> 3 pixels: 0, 127.5 -> 127, 255) and a mask wherever the
    interpolation is above zero (a 1-pixel object survives a 3x shrink)."""
    image = torch.tensor([[[0, 255]]], dtype=torch.uint8).expand(3, 1, 2)
    scaled, _ = augment.paste_resize(image, torch.zeros((0, 1, 2), dtype=torch.uint8), (1, 3))
    assert scaled[0, 0].tolist() == [0, 127, 255]
    mask = torch.zeros((1, 30, 30), dtype=torch.uint8)
    mask[0, 14, 14] = 1  # 30 -> 12 samples at 13.25 (a quarter of pixel 14) and 15.75
    _, small = augment.paste_resize(torch.zeros((3, 30, 30), dtype=torch.uint8), mask, (12, 12))
    assert small.dtype == torch.uint8 and small[0].nonzero().tolist() == [[5, 5]]
    assert int(augment.resize_masks(mask, (12, 12)).sum()) == 0  # nearest loses it


def test_copy_paste_chooses_among_objects_that_survived_resizing():
    target = _sample(40, [(0, 0, 10, 10)], [0], colour=10)
    source = _sample(40, [(20, 20, 40, 40), (0, 0, 1, 1)], [1, 2], colour=200)
    source["masks"][1] = 0  # emptied by a resize: the authors filter it before pasting
    for seed in range(20):
        pasted = augment.copy_paste(target, source, np.random.default_rng(seed), 0.5, 1.0)
        assert pasted["levels"].tolist() == [0, 1]


def test_boxes_are_carried_through_resize_and_flip_then_replaced_by_a_paste():
    """Detectron2 scales and mirrors the annotation boxes; after a paste the authors take
    every box from the masks; boxes without area are dropped with their objects."""
    sample = _sample(40, [(4, 8, 20, 16), (30, 30, 31, 31)], [0, 1], colour=10)
    sample["boxes"] = torch.tensor([[4.2, 8.0, 19.6, 16.0], [30.0, 30.0, 30.0, 31.0]])
    resized = augment.resize_sample(sample, (60, 80))  # x 2 across, x 1.5 down
    assert resized["boxes"][0].tolist() == pytest.approx([8.4, 12.0, 39.2, 24.0])
    assert resized["boxes"][1].tolist() == pytest.approx([60, 45, 60, 46.5])
    flipped = augment.random_flip(resized, 1.0, np.random.default_rng(0))
    assert flipped["boxes"][0].tolist() == pytest.approx([80 - 39.2, 12.0, 80 - 8.4, 24.0])
    _, target = augment.finalize(flipped)
    assert target["boxes"].shape == (1, 4)
    assert target["boxes"][0].tolist() == pytest.approx([80 - 39.2, 12.0, 80 - 8.4, 24.0])
    assert target["levels"].tolist() == [0] and target["masks"].shape[0] == 1
    source = _sample(80, [(0, 0, 20, 20)], [2], colour=200)
    pasted = augment.copy_paste(
        {**flipped, "image": flipped["image"][:, :, :80]}, source,
        _FixedRng(ratio=0.5, top=0, left=40), 0.3, 1.0,
    )  # fmt: skip
    assert torch.equal(pasted["boxes"], augment.boxes_from_masks(pasted["masks"]))


def test_samples_carry_the_annotation_boxes(synthetic, tmp_path):
    from hassod.detector.data import read_sample

    def shift_boxes(coco):
        for annotation in coco["annotations"]:
            x, y, w, h = annotation["bbox"]
            annotation["bbox"] = [x + 0.25, y, w - 0.5, h]
        del coco["annotations"][0]["bbox"]  # without one: the mask's bounds

    labels = load_pseudo_labels(_rewrite(synthetic[0], tmp_path, shift_boxes), synthetic[1])
    coco = json.loads(synthetic[0].read_text())
    entry = labels.entries[0]
    sample = read_sample(labels, 0)
    mask_boxes = augment.boxes_from_masks(sample["masks"])
    for index, box in enumerate(entry.boxes):
        if box is None:
            assert sample["boxes"][index].tolist() == mask_boxes[index].tolist()
        else:
            x, y, w, h = box
            assert sample["boxes"][index].tolist() == pytest.approx([x, y, x + w, y + h])
    assert None in [b for e in labels.entries for b in e.boxes] and coco["annotations"]


def test_carried_boxes_are_clipped_to_the_image():
    """A JSON box reaching out of the image is clipped (Detectron2's transform_instance_
    annotations); one wholly outside is dropped with its object."""
    sample = _sample(40, [(0, 0, 10, 10), (30, 30, 40, 40)], [0, 1], colour=10)
    sample["boxes"] = torch.tensor([[-5.0, -2.0, 10.0, 10.0], [41.0, 30.0, 50.0, 40.0]])
    _, target = augment.finalize(sample)
    assert target["boxes"].tolist() == [[0.0, 0.0, 10.0, 10.0]]
    assert target["levels"].tolist() == [0] and target["masks"].shape[0] == 1
