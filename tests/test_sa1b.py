"""SA-1B per-image files -> one COCO ground truth: fields, evaluation on it, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from hassod.cli import main
from hassod.evaluate import evaluate
from hassod.labels import InputError
from hassod.sa1b import sa1b_files, sa1b_to_coco


def _rle(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def _write_sa1b(folder, boxes_per_image, size=(60, 80)):
    """SA-1B's layout: sa_N.json beside sa_N.jpg, masks as RLE with SAM's quality fields."""
    folder.mkdir(parents=True, exist_ok=True)
    height, width = size
    for number, boxes in enumerate(boxes_per_image, start=1):
        objects = []
        for index, (x, y, w, h) in enumerate(boxes):
            mask = np.zeros(size, dtype=bool)
            mask[y : y + h, x : x + w] = True
            objects.append(
                {
                    "id": 1000 * number + index,
                    "segmentation": _rle(mask),
                    "area": int(mask.sum()),
                    "bbox": [x, y, w, h],
                    "predicted_iou": 0.9,
                    "stability_score": 0.95,
                    "point_coords": [[x + 1, y + 1]],
                    "crop_box": [0, 0, width, height],
                }
            )
        image = {
            "image_id": number,
            "width": width,
            "height": height,
            "file_name": f"sa_{number}.jpg",
        }
        (folder / f"sa_{number}.json").write_text(
            json.dumps({"image": image, "annotations": objects})
        )
    return folder


def test_files_fold_into_one_class_agnostic_ground_truth(tmp_path):
    folder = _write_sa1b(tmp_path / "sa1b", [[(5, 5, 20, 10), (30, 20, 15, 15)], [(0, 0, 8, 8)]])
    (folder / "sa_1.jpg").write_bytes(b"")  # images beside them are not read
    coco = sa1b_to_coco(sa1b_files(folder))
    assert [image["file_name"] for image in coco["images"]] == ["sa_1.jpg", "sa_2.jpg"]
    assert [a["image_id"] for a in coco["annotations"]] == [1, 1, 2]
    assert [a["id"] for a in coco["annotations"]] == [1, 2, 3]  # 1..N: id 0 would not match
    first = coco["annotations"][0]
    assert set(first) == {
        "id",
        "image_id",
        "category_id",
        "iscrowd",
        "segmentation",
        "area",
        "bbox",
    }
    assert (first["category_id"], first["iscrowd"], first["bbox"]) == (1, 0, [5, 5, 20, 10])
    assert coco["categories"] == [{"id": 1, "name": "object", "supercategory": "object"}]


def test_evaluating_against_it_finds_every_mask(tmp_path):
    boxes = [[(5, 5, 20, 10), (30, 20, 15, 15)], [(0, 0, 8, 8)]]
    coco = sa1b_to_coco(sa1b_files(_write_sa1b(tmp_path / "sa1b", boxes)))
    predictions = [
        {**{k: a[k] for k in ("image_id", "segmentation", "bbox")}, "score": 1.0}
        for a in coco["annotations"][:2]
    ]
    result = evaluate(predictions, coco)
    assert result["segm"]["AR@1000"] == pytest.approx(2 / 3)
    assert result["bbox"]["AR@1000"] == pytest.approx(2 / 3)


def test_command_writes_the_json(tmp_path, capsys):
    folder = _write_sa1b(tmp_path / "sa1b", [[(5, 5, 20, 10)]])
    out = tmp_path / "gt.json"
    assert main(["sa1b-to-coco", str(folder), "--out", str(out), "--quiet"]) == 0
    assert "1 image, 1 mask" in capsys.readouterr().out
    assert json.loads(out.read_text())["annotations"][0]["image_id"] == 1


def test_command_replaces_only_its_own_output(tmp_path, capsys):
    folder = _write_sa1b(tmp_path / "sa1b", [[(5, 5, 20, 10)]])
    out = tmp_path / "gt.json"
    out.write_text('{"info": {"description": "someone else\'s ground truth"}}')
    with pytest.raises(SystemExit) as exit_info:
        main(["sa1b-to-coco", str(folder), "--out", str(out), "--quiet"])
    assert exit_info.value.code == 2 and "refusing to replace" in capsys.readouterr().err
    assert "someone else" in out.read_text()
    out.unlink()
    for _ in range(2):  # the second run replaces the first's file
        assert main(["sa1b-to-coco", str(folder), "--out", str(out), "--quiet"]) == 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[]", "expected SA-1B's"),
        ('{"image": {"image_id": 1}, "annotations": []}', "'file_name' must be a string"),
        ('{"image": {"image_id": 1.9, "file_name": "a", "width": 2, "height": 2}, '
         '"annotations": []}', "'image_id' must be an integer, got 1.9"),
        ('{"image": {"image_id": 1, "file_name": "a", "width": null, "height": 2}, '
         '"annotations": []}', "'width' must be an integer, got None"),
        ('{"image": {"image_id": 1, "file_name": "a", "width": 2, "height": 2}, '
         '"annotations": [{"segmentation": {"size": 7, "counts": ""}}]}', "mask size 7 differs"),
        ('{"image": {"image_id": 1, "file_name": "a", "width": 2, "height": 2}, '
         '"annotations": [{"id": 3}]}', "annotation 0 has no 'segmentation'"),
        ('{"image": {"image_id": 1, "file_name": "a", "width": 2, "height": 2}, '
         '"annotations": [{"segmentation": {"size": [2, 2], "counts": "1"}}]}',
         "annotation 0: corrupt RLE"),
        ("{broken", "not valid JSON"),
    ],
)  # fmt: skip
def test_bad_files_are_named(tmp_path, content, message):
    folder = tmp_path / "sa1b"
    folder.mkdir()
    (folder / "sa_9.json").write_text(content)
    with pytest.raises(InputError, match=message):
        sa1b_to_coco(sa1b_files(folder))


def test_missing_folder_duplicate_ids_and_empty_folder(tmp_path, capsys):
    with pytest.raises(InputError, match="SA-1B folder not found"):
        sa1b_files(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    assert main(["sa1b-to-coco", str(tmp_path / "empty"), "--out", str(tmp_path / "x.json")]) == 2
    assert "no sa_*.json annotation files" in capsys.readouterr().err
    folder = _write_sa1b(tmp_path / "sa1b", [[(5, 5, 20, 10)]])
    (folder / "sa_7.json").write_text((folder / "sa_1.json").read_text())
    with pytest.raises(InputError, match="image id 1 already in"):
        sa1b_to_coco(sa1b_files(folder))
    assert not (tmp_path / "x.json").exists()


def test_the_converted_file_beside_them_is_not_read_and_a_file_path_is_explained(tmp_path):
    folder = _write_sa1b(tmp_path / "sa1b", [[(5, 5, 20, 10)]])
    out = folder / "gt.json"  # written beside the files: a rerun must not read it
    assert main(["sa1b-to-coco", str(folder), "--out", str(out), "--quiet"]) == 0
    assert main(["sa1b-to-coco", str(folder), "--out", str(out), "--quiet"]) == 0
    with pytest.raises(InputError, match="is a file; give the folder"):
        sa1b_files(folder / "sa_1.json")


def test_a_mask_of_another_size_names_its_file(tmp_path):
    folder = _write_sa1b(tmp_path / "sa1b", [[(5, 5, 20, 10)]])
    data = json.loads((folder / "sa_1.json").read_text())
    data["annotations"][0]["segmentation"]["size"] = [50, 50]
    (folder / "sa_1.json").write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"sa_1.json: annotation 0's mask size \[50, 50\]"):
        sa1b_to_coco(sa1b_files(folder))


def test_one_per_image_file_as_ground_truth_points_to_the_converter(tmp_path):
    from hassod.detector.predict import image_ids_from

    folder = _write_sa1b(tmp_path / "sa1b", [[(5, 5, 20, 10)]])
    with pytest.raises(InputError, match="one SA-1B per-image file.*hassod sa1b-to-coco"):
        evaluate([], folder / "sa_1.json")
    with pytest.raises(InputError, match="hassod sa1b-to-coco"):
        image_ids_from(folder / "sa_1.json", ["sa_1.jpg"])
