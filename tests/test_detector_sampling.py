"""Training streams: shuffled epochs and Detectron2's aspect-ratio grouping, against a literal
replay of Detectron2's bucketing; and batches of one orientation from TrainBatches."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from detector_checks import tiny_config

from hassod.detector.data import TrainBatches, load_pseudo_labels
from hassod.detector.sampling import GroupedStream, ShuffledStream


def detectron2_grouping(shuffled: ShuffledStream, landscape, chunk: int, length: int) -> list:
    """AspectRatioGroupedDataset over the endless stream, image by image: append to the
    orientation's bucket, emit the bucket when it is full."""
    buckets: dict[bool, list] = {True: [], False: []}
    out: list = []
    position = 0
    while len(out) < length:
        index = shuffled.index_at(position)
        position += 1
        bucket = buckets[bool(landscape[index])]
        bucket.append(index)
        if len(bucket) == chunk:
            out.extend(bucket)
            bucket.clear()
    return out[:length]


def test_shuffled_stream_is_one_permutation_per_epoch():
    stream = ShuffledStream(7, seed=3, stream=1)
    for epoch in range(3):
        assert sorted(stream.index_at(epoch * 7 + i) for i in range(7)) == list(range(7))
    again = ShuffledStream(7, seed=3, stream=1)
    assert [again.index_at(p) for p in range(21)] == [stream.index_at(p) for p in range(21)]
    assert [ShuffledStream(7, 3, 2).index_at(p) for p in range(7)] != [
        stream.index_at(p) for p in range(7)
    ]


def test_grouped_stream_equals_detectron2s_bucketing():
    rng = np.random.default_rng(0)
    for trial in range(60):
        count = int(rng.integers(1, 30))
        chunk = int(rng.integers(1, 6))
        landscape = rng.random(count) < rng.random()
        shuffled = ShuffledStream(count, seed=trial, stream=0)
        grouped = GroupedStream(ShuffledStream(count, seed=trial, stream=0), landscape, chunk)
        length = chunk * int(rng.integers(1, 40))
        expected = detectron2_grouping(shuffled, landscape, chunk, length)
        positions = rng.permutation(length)  # in any order: random access
        got = {int(p): grouped.index_at(int(p)) for p in positions}
        assert [got[p] for p in range(length)] == expected
        for start in range(0, length, chunk):  # every chunk of one orientation
            assert len({bool(landscape[i]) for i in expected[start : start + chunk]}) == 1


def test_grouping_in_chunks_of_one_is_the_shuffled_stream():
    landscape = np.array([True, False, True, True, False])
    grouped = GroupedStream(ShuffledStream(5, 1, 0), landscape, 1)
    shuffled = ShuffledStream(5, 1, 0)
    assert [grouped.index_at(p) for p in range(15)] == [shuffled.index_at(p) for p in range(15)]


def test_grouped_stream_checks_its_arguments():
    with pytest.raises(ValueError, match="one flag per image"):
        GroupedStream(ShuffledStream(3, 0, 0), np.array([True]), 2)
    with pytest.raises(ValueError, match="chunk"):
        GroupedStream(ShuffledStream(3, 0, 0), np.array([True, False, True]), 0)
    with pytest.raises(ValueError, match="at least one image"):
        ShuffledStream(0, 0, 0)


def write_photos(root, shapes, broken=()):
    """Random photos of the given (width, height) shapes with one square object each, and
    their pseudo-label JSON; the indices in ``broken`` are written as unreadable files."""
    from PIL import Image

    from hassod import coco

    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(1)
    entries = []
    for index, (width, height) in enumerate(shapes):
        name = f"photo_{index}.png"
        if index in broken:
            (root / "images" / name).write_bytes(b"\x89PNG\r\n\x1a\n broken")
        else:
            image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
            Image.fromarray(image).save(root / "images" / name)
        mask = np.zeros((1, height, width), dtype=bool)
        mask[0, 4:20, 4:20] = True
        records = coco.mask_annotations(
            mask, np.zeros(1, int), np.full(1, -1), np.full(1, 0.4), np.ones(1)
        )
        entries.append((coco.image_record(name, width, height), records))
    (root / "pseudo.json").write_text(json.dumps(coco.assemble(entries, info={})))
    return root / "pseudo.json", root / "images"


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Nine photos: five landscape (64 x 48), four portrait (48 x 64)."""
    shapes = [(64, 48)] * 5 + [(48, 64)] * 4
    return write_photos(tmp_path_factory.mktemp("mixed"), shapes)


def _orientations(images) -> set:
    return {bool(image.shape[-1] > image.shape[-2]) for image in images}


@pytest.mark.parametrize("world_size", [1, 2])
def test_each_process_batch_is_of_one_orientation(mixed, world_size):
    labels = load_pseudo_labels(*mixed)
    config = tiny_config(iterations=12, mean_teacher=4, size=48, augment=False)
    teacher = dataclasses.replace(config.mean_teacher, labeled_batch=2, unlabeled_batch=4)
    config = dataclasses.replace(config, batch_size=4, mean_teacher=teacher)
    seen = set()
    for rank in range(world_size):
        batches = TrainBatches(labels, config, rank=rank, world_size=world_size)
        for iteration in range(12):
            orientations = _orientations(batches[iteration]["images"])
            assert len(orientations) == 1
            seen |= orientations
        for iteration in range(12, 16):
            batch = batches[iteration]
            assert len(_orientations(batch["labeled"][0])) == 1
            assert len(_orientations(batch["unlabeled_weak"])) == 1
    assert seen == {True, False}
    ungrouped_config = dataclasses.replace(
        config, data=dataclasses.replace(config.data, aspect_ratio_grouping=False)
    )
    ungrouped = TrainBatches(labels, ungrouped_config)
    assert any(len(_orientations(ungrouped[i]["images"])) == 2 for i in range(12))


def test_a_bad_image_is_replaced_by_one_of_the_same_orientation(mixed, tmp_path):
    json_path, images = mixed
    folder = tmp_path / "images"
    folder.mkdir()
    for path in images.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "photo_6.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")  # a portrait
    labels = load_pseudo_labels(json_path, folder)
    config = tiny_config(iterations=20, size=48, augment=False)
    batches = TrainBatches(labels, config)
    skipped = []
    for iteration in range(20):
        batch = batches[iteration]
        assert "photo_6.png" not in batch["file_names"]
        assert len(_orientations(batch["images"])) == 1
        skipped += batch["skipped"]
    assert [name for name, _ in skipped] == ["photo_6.png"]


def test_a_rare_orientation_with_a_bad_image_still_finds_its_replacement(tmp_path):
    """3 portraits (one unreadable) among 20 photos, 16 per batch: the replacement portrait is
    far ahead in the grouped order, but near in the shuffled one."""
    shapes = [(40, 32)] * 17 + [(32, 40)] * 3
    labels = load_pseudo_labels(*write_photos(tmp_path, shapes, broken={19}))
    config = dataclasses.replace(tiny_config(iterations=40, size=32, augment=False), batch_size=16)
    batches = TrainBatches(labels, config)
    for iteration in range(40):
        batch = batches[iteration]
        assert "photo_19.png" not in batch["file_names"]
        assert len(_orientations(batch["images"])) == 1


def test_batches_do_not_depend_on_the_bad_images_met_before(tmp_path):
    """Every portrait unreadable: landscapes stand in, the same ones whether this copy of the
    dataset served earlier iterations or not (a resumed run, another loader worker)."""
    shapes = [(64, 48)] * 8 + [(48, 64)] * 4
    labels = load_pseudo_labels(*write_photos(tmp_path, shapes, broken={8, 9, 10, 11}))
    config = tiny_config(iterations=30, size=48, augment=False)
    warm = TrainBatches(labels, config)
    for iteration in range(30):
        names = warm[iteration]["file_names"]
        assert names == TrainBatches(labels, config)[iteration]["file_names"]
        assert all(int(name[6:-4]) < 8 for name in names)
