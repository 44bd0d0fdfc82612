"""Class-agnostic evaluation: equal to a direct COCOeval run, known answers, inputs, the CLI."""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import json
from pathlib import Path

import numpy as np
import pytest
import tqdm
from pycocotools import mask as mask_utils

import hassod._progress
from hassod.cli import main
from hassod.coco import image_id_for
from hassod.evaluate import METRICS, InputError, evaluate, format_breakdown, format_metrics

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SAMPLE = SHARED / "data" / "coco_val2017_sample"
SAMPLE_GT = SAMPLE / "panoptic_coco_detection_format.json"
needs_sample = pytest.mark.skipif(
    not SAMPLE_GT.is_file(), reason="shared COCO sample not present (../shared/data)"
)
# COCOeval.stats with maxDets [10, 100, 1000]: indices of our metrics (see hassod.evaluate).
STATS_INDEX = {
    "AP": 0,
    "AP50": 1,
    "AP75": 2,
    "AR@10": 6,
    "AR@100": 7,
    "AR@1000": 8,
    "AR_s": 9,
    "AR_m": 10,
    "AR_l": 11,
}


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def rle_of(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def box_mask(height: int, width: int, box) -> np.ndarray:
    x, y, w, h = box
    mask = np.zeros((height, width), dtype=bool)
    mask[y : y + h, x : x + w] = True
    return mask


def dataset(boxes_per_image, size=(200, 300), category_ids=None, crowd=()):
    """A GT dict: rectangles (x, y, w, h) per image, ids from 1, masks = the rectangles."""
    height, width = size
    images, annotations = [], []
    for image_index, boxes in enumerate(boxes_per_image):
        image_id = 10 + image_index
        images.append(
            {"id": image_id, "file_name": f"img{image_index}.png", "height": height, "width": width}
        )
        for box in boxes:
            number = len(annotations)
            mask = box_mask(height, width, box)
            annotations.append(
                {
                    "id": number + 1,
                    "image_id": image_id,
                    "category_id": 1 if category_ids is None else category_ids[number],
                    "iscrowd": int(number in crowd),
                    "bbox": [float(v) for v in box],
                    "area": float(mask.sum()),
                    "segmentation": rle_of(mask),
                }
            )
    categories = [
        {"id": c, "name": f"c{c}"} for c in sorted({a["category_id"] for a in annotations} | {1})
    ]
    return {"images": images, "annotations": annotations, "categories": categories}


def results_from_boxes(gt, boxes_per_image, scores=None, with_score=True):
    """A results list of rectangles (box and mask) on the GT's image ids."""
    height, width = gt["images"][0]["height"], gt["images"][0]["width"]
    results = []
    for image, boxes in zip(gt["images"], boxes_per_image):
        for box in boxes:
            result = {
                "image_id": image["id"],
                "category_id": 1,
                "bbox": [float(v) for v in box],
                "segmentation": rle_of(box_mask(height, width, box)),
            }
            if with_score:
                result["score"] = 1.0 if scores is None else scores[len(results)]
            results.append(result)
    return results


def direct_stats(gt: dict, results: list, iou_type: str) -> np.ndarray:
    """Plain pycocotools: useCats 0, maxDets 10/100/1000, summarize()'s stats."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    results = copy.deepcopy(results)
    if iou_type == "segm":
        for result in results:
            result.pop("bbox", None)
    else:
        for result in results:
            result.pop("segmentation", None)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        evaluation = COCOeval(coco_gt, coco_dt, iou_type)
        evaluation.params.useCats = 0
        evaluation.params.maxDets = [10, 100, 1000]
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return evaluation.stats


def assert_matches_direct(result: dict, gt: dict, results: list) -> None:
    for iou_type in ("bbox", "segm"):
        stats = direct_stats(gt, results, iou_type)
        for metric, index in STATS_INDEX.items():
            expected = None if stats[index] == -1 else stats[index]
            ours = result[iou_type][metric]
            if expected is None:
                assert ours is None, (iou_type, metric)
            else:
                assert ours == pytest.approx(expected, abs=1e-12, rel=0), (iou_type, metric)


def jittered_predictions(gt: dict, seed: int = 0) -> list[dict]:
    """Shifted and cut copies of the non-crowd GT masks, plus false positives, random scores."""
    rng = np.random.default_rng(seed)
    sizes = {image["id"]: (image["height"], image["width"]) for image in gt["images"]}
    results = []
    for annotation in gt["annotations"]:
        if annotation["iscrowd"]:
            continue
        height, width = sizes[annotation["image_id"]]
        mask = mask_utils.decode(annotation["segmentation"]).astype(bool)
        for _ in range(int(rng.integers(1, 3))):  # some objects twice (duplicates)
            shifted = np.roll(mask, tuple(rng.integers(-6, 7, size=2)), axis=(0, 1))
            if rng.random() < 0.3:  # cut a band away
                row = int(rng.integers(0, height))
                shifted[row : row + int(rng.integers(1, 30))] = False
            if not shifted.any():
                continue
            rle = rle_of(shifted)
            results.append(
                {
                    "image_id": annotation["image_id"],
                    "category_id": 1,
                    "segmentation": rle,
                    "bbox": [float(v) + rng.normal(0, 2) for v in mask_utils.toBbox(rle)],
                    "score": float(rng.random()),
                }
            )
    for image_id, (height, width) in sizes.items():  # false positives
        for _ in range(15):
            x, y = int(rng.integers(0, width - 40)), int(rng.integers(0, height - 40))
            box = (x, y, int(rng.integers(5, 40)), int(rng.integers(5, 40)))
            results.append(
                {
                    "image_id": image_id,
                    "category_id": 1,
                    "segmentation": rle_of(box_mask(height, width, box)),
                    "bbox": [float(v) for v in box],
                    "score": float(rng.random()),
                }
            )
    return results


@pytest.fixture(scope="module")
def sample_gt() -> dict:
    if not SAMPLE_GT.is_file():
        pytest.skip("shared COCO sample not present (../shared/data)")
    return json.loads(SAMPLE_GT.read_text())


def renumbered(gt: dict) -> dict:
    """GT with annotation ids 1..N: COCOeval reads a match with GT id 0 as "no match"."""
    gt = copy.deepcopy(gt)
    for number, annotation in enumerate(gt["annotations"]):
        annotation["id"] = number + 1
    return gt


# ---------------------------------------------------------------------------------------------
# Equal to a direct COCOeval run on the shared COCO photos
# ---------------------------------------------------------------------------------------------


@needs_sample
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_direct_cocoeval_on_coco_sample(sample_gt, seed):
    predictions = jittered_predictions(sample_gt, seed)
    result = evaluate(predictions, SAMPLE_GT)
    assert result["counts"] == {
        "images": 2,
        "objects": 47,
        "crowd": 3,
        "dropped_stuff": 0,
        "dropped_images": 0,
        "dropped_predictions": 0,
        "predictions": len(predictions),
    }
    assert_matches_direct(result, renumbered(sample_gt), predictions)
    assert 0 < result["segm"]["AR@1000"] < 1 and 0 < result["bbox"]["AP"] < 1


@needs_sample
def test_things_only_matches_direct_cocoeval_without_stuff(sample_gt):
    predictions = jittered_predictions(sample_gt, 2)
    result = evaluate(predictions, SAMPLE_GT, things_only=True)
    things = renumbered(sample_gt)
    things["annotations"] = [a for a in things["annotations"] if a["category_id"] < 92]
    assert result["counts"]["dropped_stuff"] == 7 and result["counts"]["objects"] == 40
    assert_matches_direct(result, things, predictions)


@needs_sample
def test_pseudo_label_dict_matches_results_list(sample_gt):
    """A pseudo-label JSON (hashed image ids, matched by file name) = the same results list."""
    predictions = jittered_predictions(sample_gt, 3)
    images = [
        {
            "id": image_id_for(i["file_name"]),
            "file_name": i["file_name"],
            "width": i["width"],
            "height": i["height"],
        }
        for i in sample_gt["images"]
    ]
    to_hashed = {i["id"]: image_id_for(i["file_name"]) for i in sample_gt["images"]}
    annotations = []
    for number, p in enumerate(predictions):
        annotations.append(
            {
                **p,
                "id": number + 1,
                "image_id": to_hashed[p["image_id"]],
                "hier_level": 0,
                "parent_id": None,
                "threshold": 0.4,
                "iscrowd": 0,
                "area": 1,
            }
        )
    pseudo = {"images": images, "annotations": annotations, "categories": [{"id": 1}]}
    by_list = evaluate(predictions, SAMPLE_GT)
    by_dict = evaluate(pseudo, SAMPLE_GT)
    for iou_type in ("bbox", "segm"):
        assert by_dict[iou_type] == by_list[iou_type]


@needs_sample
def test_perfect_predictions_on_sample_despite_annotation_id_zero(sample_gt):
    assert min(a["id"] for a in sample_gt["annotations"]) == 0  # the pycocotools trap
    perfect = [
        {
            "image_id": a["image_id"],
            "category_id": 1,
            "segmentation": a["segmentation"],
            "bbox": a["bbox"],
            "score": 1.0,
        }
        for a in sample_gt["annotations"]
        if not a["iscrowd"]
    ]
    result = evaluate(perfect, SAMPLE_GT)
    for iou_type in ("bbox", "segm"):
        assert result[iou_type]["AR@100"] == 1.0
        assert result[iou_type]["AP"] == pytest.approx(1.0, abs=1e-12)
    naive = direct_stats(sample_gt, perfect, "segm")  # ids as in the file
    assert naive[STATS_INDEX["AR@100"]] < 1.0


# ---------------------------------------------------------------------------------------------
# Known answers on synthetic data
# ---------------------------------------------------------------------------------------------


def test_perfect_predictions_give_recall_and_precision_one():
    boxes = [[(10, 10, 50, 40), (100, 20, 80, 120)], [(5, 5, 20, 20), (150, 50, 100, 100)]]
    gt = dataset(boxes)
    result = evaluate(results_from_boxes(gt, boxes), gt)
    for iou_type in ("bbox", "segm"):
        for metric in METRICS:
            assert result[iou_type][metric] == pytest.approx(1.0, abs=1e-12), (iou_type, metric)


@pytest.mark.parametrize("shift, expected", [(25, 0.3), (0, 1.0), (20, 0.4), (60, 0.0)])
def test_shifted_box_recall_is_fraction_of_iou_thresholds_met(shift, expected):
    """A 100x100 object shifted by d: IoU (100-d)/(100+d); 25 -> 0.6 -> thresholds .5,.55,.6."""
    gt = dataset([[(50, 50, 100, 100)]])
    result = evaluate(results_from_boxes(gt, [[(50 + shift, 50, 100, 100)]]), gt)
    iou = (100 - shift) / (100 + shift)
    assert expected == pytest.approx(np.mean(iou >= np.linspace(0.5, 0.95, 10)), abs=1e-12)
    for iou_type in ("bbox", "segm"):
        metrics = result[iou_type]
        assert metrics["AR@1000"] == pytest.approx(expected, abs=1e-12)
        assert metrics["AR@10"] == pytest.approx(expected, abs=1e-12)
        assert metrics["AP"] == pytest.approx(expected, abs=1e-12)  # one object, one detection
        assert metrics["AP50"] == pytest.approx(1.0 if iou >= 0.5 else 0.0, abs=1e-12)
        assert metrics["AP75"] == pytest.approx(1.0 if iou >= 0.75 else 0.0, abs=1e-12)


def test_max_dets_limit_recall_per_image():
    boxes = [[(10 * (i % 20), 10 * (i // 20) * 10, 8, 8) for i in range(40)]]
    gt = dataset(boxes, size=(200, 300))
    scores = list(np.linspace(1.0, 0.5, 40))
    result = evaluate(results_from_boxes(gt, boxes, scores), gt)
    for iou_type in ("bbox", "segm"):
        assert result[iou_type]["AR@10"] == pytest.approx(10 / 40, abs=1e-12)
        assert result[iou_type]["AR@100"] == 1.0 and result[iou_type]["AR@1000"] == 1.0


def test_unscored_predictions_rank_in_file_order():
    boxes = [[(10 * i, 10, 8, 8) for i in range(12)]]
    gt = dataset(boxes)
    # The first 10 in the file are the last 10 objects: AR@10 = 10/12 whichever they are.
    order = list(range(2, 12)) + [0, 1]
    predictions = results_from_boxes(gt, [[boxes[0][i] for i in order]], with_score=False)
    result = evaluate(predictions, gt, iou_types=["bbox"])
    assert result["bbox"]["AR@10"] == pytest.approx(10 / 12, abs=1e-12)
    assert "segm" not in result


def test_area_ranges():
    boxes = [[(0, 0, 16, 16), (50, 0, 50, 50), (120, 0, 120, 120)]]  # small, medium, large
    gt = dataset(boxes, size=(200, 300))
    result = evaluate(results_from_boxes(gt, [[boxes[0][0]]]), gt)
    for iou_type in ("bbox", "segm"):
        metrics = result[iou_type]
        assert (metrics["AR_s"], metrics["AR_m"], metrics["AR_l"]) == (1.0, 0.0, 0.0)
        assert metrics["AR@1000"] == pytest.approx(1 / 3, abs=1e-12)


def test_undefined_area_range_is_none_and_printed_as_dash():
    gt = dataset([[(0, 0, 50, 50)]])  # medium only
    result = evaluate(results_from_boxes(gt, [[(0, 0, 50, 50)]]), gt)
    assert result["segm"]["AR_s"] is None and result["segm"]["AR_l"] is None
    assert result["segm"]["AR_m"] == 1.0
    assert " - " in format_metrics(result)


def test_printed_tables_give_their_unit_and_explain_the_dash():
    """The tables print percent, the result (and --out JSON) fractions: both said."""
    gt = dataset([[(0, 0, 50, 50)]])  # medium only: AR_s and AR_l undefined
    result = evaluate(results_from_boxes(gt, [[(0, 0, 50, 50)]]), gt, breakdown=True)
    text = format_metrics(result)
    header, box_row = text.splitlines()[1:3]
    assert header.startswith("(%)") and box_row.split()[1] == "100.0"
    assert "values in % (the --out JSON holds fractions in [0, 1])" in text
    assert "-: nothing to evaluate (no ground-truth objects in that area range" in text
    assert "AR and AP in %" in format_breakdown(result)
    everything = dataset([[(0, 0, 16, 16), (50, 0, 50, 50), (120, 0, 120, 120)]])
    defined = evaluate(results_from_boxes(everything, [[(0, 0, 16, 16)]]), everything)
    assert "nothing to evaluate" not in format_metrics(defined)  # no dash, no note


def test_crowd_regions_are_ignored():
    """Crowd GT counts in no recall denominator; detections on it are no false positives."""
    boxes = [[(10, 10, 60, 60), (150, 20, 100, 100)]]
    gt = dataset(boxes, crowd=(1,))
    on_object = results_from_boxes(gt, [[boxes[0][0]]], scores=[0.5])
    on_crowd = results_from_boxes(gt, [[(160, 30, 40, 40)]], scores=[0.9])  # inside the crowd
    result = evaluate(on_crowd + on_object, gt)
    assert result["counts"]["crowd"] == 1 and result["counts"]["objects"] == 1
    for iou_type in ("bbox", "segm"):
        assert result[iou_type]["AR@1000"] == 1.0
        # the higher-scored detection on the crowd region is ignored, not a false positive
        assert result[iou_type]["AP"] == pytest.approx(1.0, abs=1e-12)
    outside = results_from_boxes(gt, [[(100, 150, 30, 30)]], scores=[0.9])  # a real FP
    assert evaluate(outside + on_object, gt)["bbox"]["AP"] < 0.99


def test_things_only_drops_stuff_categories_with_configurable_cutoff():
    boxes = [[(10, 10, 60, 60), (100, 10, 60, 60), (0, 120, 300, 80)]]
    gt = dataset(boxes, category_ids=[1, 50, 95])  # thing, thing, stuff
    predictions = results_from_boxes(gt, [boxes[0][:2]])
    assert evaluate(predictions, gt)["segm"]["AR@100"] == pytest.approx(2 / 3, abs=1e-12)
    only = evaluate(predictions, gt, things_only=True)
    assert only["segm"]["AR@100"] == 1.0 and only["counts"]["dropped_stuff"] == 1
    low = evaluate(predictions, gt, things_only=True, stuff_min_id=50)  # 50 and 95 are stuff
    assert low["segm"]["AR@100"] == 1.0 and low["counts"]["objects"] == 1


def test_a_negative_stuff_min_id_is_refused(tmp_path, capsys):
    gt = dataset([[(10, 10, 60, 60)]], category_ids=[1])
    with pytest.raises(
        InputError, match="stuff_min_id .--stuff-min-id. must be a category id >= 0"
    ):
        evaluate([], gt, things_only=True, stuff_min_id=-5)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text("[]")
    args = ["evaluate", "--pred", str(tmp_path / "pred.json"), "--gt", str(tmp_path / "gt.json")]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--things-only", "--stuff-min-id", "-5"])
    assert exit_info.value.code == 2
    assert "--stuff-min-id: expected an integer >= 0, got -5" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # alone it would change nothing, silently
        main([*args, "--stuff-min-id", "50"])
    assert exit_info.value.code == 2
    assert "--stuff-min-id goes with --things-only" in capsys.readouterr().err


def test_filters_that_leave_no_ground_truth_object_are_refused_naming_the_option(tmp_path, capsys):
    """--things-only with a --stuff-min-id below every category gave an all-'-' table, rc 0."""
    boxes = [[(10, 10, 60, 60), (100, 10, 60, 60), (0, 120, 300, 80)]]
    gt = dataset(boxes, category_ids=[1, 50, 95], crowd=(2,))
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(json.dumps(results_from_boxes(gt, boxes)))
    args = ["evaluate", "--pred", str(tmp_path / "pred.json"), "--gt", str(tmp_path / "gt.json")]
    assert main([*args, "--things-only", "--stuff-min-id", "1", "--quiet"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "hassod evaluate: error: ground truth" in captured.err
    assert "none of its 3 annotations is left to score" in captured.err
    assert (
        "3 dropped as stuff by --things-only (things_only=True): category_id >= 1 "
        "(--stuff-min-id 1; its category ids: 1 to 95)" in captured.err
    )
    assert "stuff starts at category id 92, the default" in captured.err
    # Two dropped as stuff, the one left a crowd region: nothing to score either.
    mostly_stuff = dataset(boxes, category_ids=[92, 93, 1], crowd=(2,))
    with pytest.raises(InputError, match="2 dropped as .*; 1 crowd region, .*Evaluate without"):
        evaluate([], mostly_stuff, things_only=True)
    with pytest.raises(InputError, match="has no annotations: there is nothing to score"):
        evaluate([], dataset([[]]))
    kept = evaluate([], gt, things_only=True, stuff_min_id=60)  # the 2 things stay
    assert kept["counts"]["objects"] == 2 and kept["counts"]["dropped_stuff"] == 1


def test_printed_counts_are_singular_for_one():
    gt = dataset([[(10, 10, 60, 60)]], category_ids=[1])
    result = evaluate(results_from_boxes(gt, [[(10, 10, 60, 60)]]), gt, things_only=True)
    header = format_metrics(result).splitlines()[0]
    assert header.startswith(
        "class-agnostic, 1 image, 1 object (0 crowd regions ignored, 0 stuff regions dropped), "
        "1 prediction;"
    ), header


def test_categories_are_folded():
    """Predictions of any category match GT of any category."""
    boxes = [[(10, 10, 60, 60), (100, 10, 60, 60)]]
    gt = dataset(boxes, category_ids=[3, 7])
    predictions = results_from_boxes(gt, boxes)
    for number, prediction in enumerate(predictions):
        prediction["category_id"] = 42 + number
    assert evaluate(predictions, gt)["bbox"]["AR@100"] == 1.0


def test_empty_predictions_give_zero_recall():
    gt = dataset([[(10, 10, 60, 60)]])
    for empty in ([], {"images": gt["images"], "annotations": []}):
        result = evaluate(empty, gt)
        assert result["counts"]["predictions"] == 0
        assert result["bbox"]["AR@1000"] == 0.0 and result["segm"]["AR@1000"] == 0.0


def test_breakdown_by_threshold_and_level():
    boxes = [[(10, 10, 100, 100), (20, 20, 30, 30), (150, 20, 60, 60)]]
    gt = dataset(boxes)
    image = {**gt["images"][0], "id": 999}  # another id: matched by file name
    annotations = [
        {
            "id": 1,
            "image_id": 999,
            "bbox": list(map(float, boxes[0][0])),
            "threshold": 0.1,
            "hier_level": 0,
            "parent_id": None,
            "score": 0.9,
        },
        {
            "id": 2,
            "image_id": 999,
            "bbox": list(map(float, boxes[0][1])),
            "threshold": 0.4,
            "hier_level": 1,
            "parent_id": 1,
            "score": 0.8,
        },
        {
            "id": 3,
            "image_id": 999,
            "bbox": list(map(float, boxes[0][2])),
            "threshold": 0.4,
            "hier_level": 0,
            "parent_id": None,
            "score": 0.7,
        },
    ]
    pseudo = {"images": [image], "annotations": annotations}
    result, rows = _bbox_breakdown(pseudo, gt)
    assert list(rows) == [
        ("threshold", "0.1"),
        ("threshold", "0.4"),
        ("all", "ensemble"),
        ("level", "whole"),
        ("level", "part"),
    ]
    assert rows["threshold", "0.4"]["labels_per_image"] == 2.0
    assert rows["threshold", "0.1"]["bbox"]["AR@100"] == pytest.approx(1 / 3, abs=1e-12)
    assert rows["all", "ensemble"]["bbox"]["AR@100"] == 1.0
    assert rows["level", "whole"]["bbox"]["AR@100"] == pytest.approx(2 / 3, abs=1e-12)
    table = format_breakdown(result)
    assert "threshold 0.4" in table and "level part" in table and "labels/img" in table


def _bbox_breakdown(pseudo: dict, gt: dict) -> tuple[dict, dict]:
    """evaluate()'s box breakdown and its rows by (group, name), in their order."""
    result = evaluate(pseudo, gt, iou_types=["bbox"], breakdown=True)
    return result, {(row["group"], row["name"]): row for row in result["breakdown"]}


def test_breakdown_lists_predictions_without_a_threshold_as_their_own_row():
    """Labels mixing pseudo-labels (with ``threshold``) and others: the others get a
    "threshold none" row rather than silently missing from the by-threshold rows."""
    boxes = [[(10, 10, 100, 100), (150, 20, 60, 60)]]
    gt = dataset(boxes)
    annotations = [
        {"id": 1, "image_id": 10, "bbox": list(map(float, boxes[0][0])), "threshold": 0.1},
        {"id": 2, "image_id": 10, "bbox": list(map(float, boxes[0][1]))},
    ]
    pseudo = {"images": gt["images"], "annotations": annotations}
    _, rows = _bbox_breakdown(pseudo, gt)
    assert list(rows) == [
        ("threshold", "0.1"),
        ("threshold", "none"),
        ("all", "ensemble"),
        ("level", "whole"),
    ]
    assert rows["threshold", "none"]["predictions"] == 1
    assert rows["threshold", "none"]["bbox"]["AR@100"] == 0.5  # one of the two objects


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


def test_errors_are_clear(tmp_path):
    gt = dataset([[(10, 10, 60, 60)]])
    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(gt))
    with pytest.raises(InputError, match="predictions file not found"):
        evaluate(tmp_path / "nope.json", gt_path)
    with pytest.raises(InputError, match="ground truth file not found"):
        evaluate([], tmp_path / "nope.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"annotations": [')
    with pytest.raises(InputError, match="not valid JSON"):
        evaluate(broken, gt_path)
    stray = results_from_boxes(gt, [[(10, 10, 60, 60)]])
    stray[0]["image_id"] = 12345
    with pytest.raises(
        InputError, match="1 image id is not in the ground truth: 12345 .the only image"
    ):
        evaluate(stray, gt_path)
    unknown_file = {
        "images": [{"id": 1, "file_name": "other.png"}],
        "annotations": [{"image_id": 1, "bbox": [1, 1, 5, 5]}],
    }
    with pytest.raises(InputError, match="no image named 'other.png'"):
        evaluate(unknown_file, gt_path)
    with pytest.raises(InputError, match="iou_types"):
        evaluate([], gt_path, iou_types=["keypoints"])
    wrong_size = results_from_boxes(gt, [[(10, 10, 60, 60)]])
    wrong_size[0]["segmentation"] = rle_of(np.ones((5, 5), dtype=bool))
    with pytest.raises(InputError, match="mask size"):
        evaluate(wrong_size, gt_path)
    with pytest.raises(InputError, match="neither 'segmentation' nor 'bbox'"):
        evaluate([{"image_id": 10, "score": 1.0}], gt_path)
    box_only = [{"image_id": 10, "bbox": [10, 10, 60, 60], "score": 1.0}]
    assert evaluate(box_only, gt_path, iou_types=["bbox"])["bbox"]["AR@100"] == 1.0


def test_results_with_hashed_file_name_ids_are_refused_with_the_fix():
    """`hassod predict` without --image-ids numbers images by hashed file names."""
    gt = dataset([[(10, 10, 60, 60)], [(20, 20, 40, 40)]])
    hashed = results_from_boxes(gt, [[(10, 10, 60, 60)], [(20, 20, 40, 40)]])
    for result, image in zip(hashed, gt["images"]):
        result["image_id"] = image_id_for(image["file_name"])
    for only_gt_images in (False, True):  # nothing would be left to evaluate
        with pytest.raises(InputError, match="all 2 images with predictions") as error:
            evaluate(hashed, gt, only_gt_images=only_gt_images)
        assert "rerun it with --image-ids GT.json" in str(error.value)
        assert "Predictor(...)(image, image_id=" in str(error.value)  # the Python way
        assert "--only-gt-images" not in str(error.value)


def pseudo_labels_with_an_extra_image(gt: dict) -> dict:
    """Pseudo-labels matching the GT's first image's boxes, plus two on an image not in it."""
    images = [{"id": 5, "file_name": "img0.png"}, {"id": 6, "file_name": "extra.png"}]
    annotations = [
        {"image_id": 5, "bbox": a["bbox"], "segmentation": a["segmentation"], "score": 0.9}
        for a in gt["annotations"]
        if a["image_id"] == gt["images"][0]["id"]
    ]
    annotations += [{"image_id": 6, "bbox": [0, 0, 9, 9], "score": 1.0}] * 2
    return {"images": images, "annotations": annotations}


def test_only_gt_images_leaves_out_predictions_on_other_images():
    gt = dataset([[(10, 10, 60, 60), (100, 20, 50, 50)]])
    pseudo = pseudo_labels_with_an_extra_image(gt)
    with pytest.raises(InputError, match="no image named 'extra.png'") as error:
        evaluate(pseudo, gt)
    assert "1 of the 2 images with predictions" in str(error.value)
    assert "pass --only-gt-images" in str(error.value)
    # An image listed without masks is no image with predictions (said "predicted images").
    pseudo["images"].append({"id": 7, "file_name": "img1.png"})
    with pytest.raises(InputError, match="1 of the 2 images with predictions"):
        evaluate(pseudo, gt)
    pseudo["images"].pop()
    result = evaluate(pseudo, gt, only_gt_images=True)
    expected = evaluate({**pseudo, "annotations": pseudo["annotations"][:2]}, gt)
    assert result["segm"] == expected["segm"] and result["segm"]["AR@100"] == 1.0
    counts = result["counts"]
    assert counts["predictions"] == 2
    assert counts["dropped_images"] == 1 and counts["dropped_predictions"] == 2
    assert "(2 more on 1 image not in the ground truth left out)" in format_metrics(result)
    # A results list: the same for ids the ground truth lacks.
    results = results_from_boxes(gt, [[(10, 10, 60, 60)]])
    stray = [dict(results[0], image_id=999)]
    with pytest.raises(InputError, match="1 image id is not in the ground truth: 999"):
        evaluate(results + stray, gt)
    kept = evaluate(results + stray, gt, only_gt_images=True)
    assert kept["counts"]["dropped_predictions"] == 1
    assert kept["bbox"] == evaluate(results, gt)["bbox"]


def test_evaluate_command_only_gt_images(tmp_path, capsys):
    gt = dataset([[(10, 10, 60, 60)]])
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pseudo.json").write_text(json.dumps(pseudo_labels_with_an_extra_image(gt)))
    args = ["evaluate", "--pred", str(tmp_path / "pseudo.json"), "--gt", str(tmp_path / "gt.json")]
    assert main(args) == 2
    assert "pass --only-gt-images" in capsys.readouterr().err
    assert main([*args, "--only-gt-images", "--out", str(tmp_path / "m.json")]) == 0
    assert "2 more on 1 image not in the ground truth left out" in capsys.readouterr().out
    assert json.loads((tmp_path / "m.json").read_text())["counts"]["dropped_images"] == 1


# ---------------------------------------------------------------------------------------------
# The command
# ---------------------------------------------------------------------------------------------


def test_evaluate_command_prints_tables_and_writes_json(tmp_path, capsys):
    boxes = [[(10, 10, 50, 40), (100, 20, 80, 120)]]
    gt = dataset(boxes)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(json.dumps(results_from_boxes(gt, boxes)))
    out = tmp_path / "metrics" / "m.json"
    out.parent.mkdir()
    code = main(
        [
            "evaluate",
            "--pred",
            str(tmp_path / "pred.json"),
            "--gt",
            str(tmp_path / "gt.json"),
            "--out",
            str(out),
            "--breakdown",
            "--iou-type",
            "segm",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "AR@1000" in printed and "mask" in printed and "ensemble" not in printed
    assert "all" in printed  # the breakdown's whole-set row
    saved = json.loads(out.read_text())
    assert saved["segm"]["AR@1000"] == 1.0 and saved["settings"]["max_dets"] == [10, 100, 1000]
    assert not list(out.parent.glob(".*tmp"))
    arguments = [
        "evaluate",
        "--pred",
        str(tmp_path / "pred.json"),
        "--gt",
        str(tmp_path / "gt.json"),
    ]
    assert main([*arguments, "--out", str(out), "--quiet"]) == 0  # its own file: replaced
    with pytest.raises(SystemExit) as exit_info:  # the ground truth, mistyped as --out: kept
        main([*arguments, "--out", str(tmp_path / "gt.json"), "--quiet"])
    assert exit_info.value.code == 2 and "refusing to replace" in capsys.readouterr().err
    assert json.loads((tmp_path / "gt.json").read_text()) == gt


def test_evaluate_command_input_errors_exit_2(tmp_path, capsys):
    gt = dataset([[(10, 10, 60, 60)]])
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "bad.json").write_text("not json")
    code = main(
        ["evaluate", "--pred", str(tmp_path / "bad.json"), "--gt", str(tmp_path / "gt.json")]
    )
    assert code == 2
    assert "hassod evaluate: error: predictions file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--pred", "x.json", "--gt", "y.json", "--iou-type", "keypoints"])
    assert exit_info.value.code == 2


def _two_images_with_thresholds(tmp_path) -> list[str]:
    """`hassod evaluate` of perfect predictions on two images, at thresholds 0.4 and 0.2."""
    gt = dataset([[(10, 10, 60, 60)], [(20, 20, 40, 40)]])
    results = results_from_boxes(gt, [[(10, 10, 60, 60)], [(20, 20, 40, 40)]])
    for result, threshold in zip(results, (0.4, 0.2)):
        result["threshold"] = threshold
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(json.dumps(results))
    return ["evaluate", "--pred", str(tmp_path / "pred.json"), "--gt", str(tmp_path / "gt.json")]


def test_evaluate_command_shows_progress_on_stderr_unless_quiet(tmp_path, capsys, monkeypatch):
    # Draw every step on a terminal, not 10 times a second: the bars clear themselves when done.
    monkeypatch.setattr(
        tqdm.tqdm, "__init__", functools.partialmethod(tqdm.tqdm.__init__, mininterval=0)
    )
    monkeypatch.setattr(hassod._progress, "_is_terminal", lambda stream: True)
    args = _two_images_with_thresholds(tmp_path)
    assert main([*args, "--breakdown"]) == 0
    captured = capsys.readouterr()
    assert "reading predictions" in captured.err and "2/2" in captured.err  # per prediction
    # One bar over the COCOeval runs, its description the run and its stage.
    for run in ("box", "mask", "threshold 0.4 box", "ensemble mask"):
        assert f"{run}: IoUs and matching" in captured.err, run
        assert f"{run}: accumulating" in captured.err, run
    # 10 runs (box and mask of all, thresholds 0.2 and 0.4, level whole), each per image its
    # IoUs, then its matching in 4 area ranges: 10 x 2 x 5 steps.
    assert "100/100" in captured.err and "101/100" not in captured.err
    assert "IoUs" not in captured.out and "AR@100" in captured.out  # the tables stay clean
    assert main([*args, "--breakdown", "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_evaluate_progress_in_a_log_file_is_a_final_line_per_bar(tmp_path, capsys):
    """stderr redirected to a file (capsys: not a terminal): each bar's final state once, at
    its total; no line for tqdm's redraws at creation, reset or a new description (a second's
    breakdown wrote ~70 lines, "IoUs and matching 0/10" among them, each end twice)."""
    args = _two_images_with_thresholds(tmp_path)
    assert main([*args, "--breakdown"]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("reading predictions: 100%") and "2/2" in lines[0]
    assert lines[1].startswith("COCOeval (10 runs): 100%") and "100/100" in lines[1]


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("bbox", [float("nan")] * 4, "'bbox' must be"),
        ("bbox", [1, 2], "'bbox' must be"),
        ("bbox", [0, 0, -3, 4], "'bbox' must be"),
        ("score", "high", "'score' must be a finite number"),
        ("score", float("inf"), "'score' must be a finite number"),
        ("hier_level", "banana", "'hier_level' must be an integer"),
        ("hier_level", 1.5, "'hier_level' must be an integer"),
        ("segmentation", [[1, 2, 3]], "a polygon must be"),
        ("segmentation", {"size": [4, 4], "counts": "garbage!!"}, "compressed RLE"),
        ("segmentation", {"size": [4, 4], "counts": [3, 4]}, "add.*up to"),
        ("segmentation", {"size": [128, 128], "counts": "Ug011"}, "corrupt RLE.*743 pixels"),
        ("segmentation", {"size": [4, 4], "counts": "o"}, "corrupt RLE.*truncated"),
        ("segmentation", {"size": [4], "counts": "04"}, "RLE 'size'"),
        ("segmentation", "polygon", "must be an RLE object or a list"),
    ],
)
def test_bad_annotation_fields_are_refused_with_their_place(field, value, message):
    """Checked before pycocotools sees them: a corrupt RLE string made it loop for good, a NaN
    box changed the metrics silently, a string score or level gave a traceback."""
    from hassod.labels import load_labels

    good = {"image_id": 1, "bbox": [0, 0, 2, 2], "score": 0.5, "hier_level": 1}
    load_labels([good])  # the unchanged annotation passes
    with pytest.raises(InputError, match=f"annotation 0: .*{message}"):
        load_labels([{**good, field: value}])


@pytest.mark.parametrize("corrupt", ["gt", "pred"])
def test_evaluate_command_refuses_a_truncated_rle_quickly(tmp_path, corrupt):
    """A compressed RLE whose runs do not cover its size made COCOeval's IoU loop forever:
    run in a subprocess with a timeout, so that a regression fails instead of hanging."""
    import subprocess
    import sys

    gt = dataset([[(10, 10, 60, 60)]])
    results = results_from_boxes(gt, [[(10, 10, 60, 60)]])
    height, width = gt["images"][0]["height"], gt["images"][0]["width"]
    truncated = {"size": [height, width], "counts": "Ug011"}
    if corrupt == "gt":
        gt["annotations"][0]["segmentation"] = truncated
    else:
        results[0]["segmentation"] = truncated
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(json.dumps(results))
    args = ["evaluate", "--pred", str(tmp_path / "pred.json"), "--gt", str(tmp_path / "gt.json")]
    completed = subprocess.run(
        [sys.executable, "-m", "hassod", *args, "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 2, completed.stderr
    assert completed.stderr.startswith("hassod evaluate: error: ")
    assert "annotation 0: corrupt RLE" in completed.stderr
    assert "Traceback" not in completed.stderr


def test_numpy_and_torch_values_built_in_python_score_as_plain_ones():
    """Results and ground truth built in Python from a model's arrays (np.float32 scores,
    np.int64 ids, boxes and RLE sizes as arrays or tensors) score as their JSON form, rather
    than being refused as "not a finite number" or failing on an array's truth value."""
    import torch

    gt = dataset([[(10, 10, 60, 60), (100, 100, 50, 50)], [(20, 30, 40, 40)]])
    results = jittered_predictions(gt)
    for result in results:  # values float32 holds exactly, so that both forms are equal
        result["score"] = float(np.float32(result["score"]))
        result["bbox"] = [float(v) for v in np.float32(result["bbox"])]
    expected = evaluate(copy.deepcopy(results), copy.deepcopy(gt))
    arrays = []
    for index, result in enumerate(copy.deepcopy(results)):
        box = np.asarray(result["bbox"], dtype=np.float32)
        result["image_id"] = np.int64(result["image_id"])
        result["score"] = np.float32(result["score"])
        result["bbox"] = torch.from_numpy(box) if index % 2 else box
        result["segmentation"]["size"] = np.asarray(result["segmentation"]["size"])
        arrays.append(result)
    gt_arrays = copy.deepcopy(gt)
    for image in gt_arrays["images"]:
        image.update(id=np.int64(image["id"]), height=np.int64(image["height"]))
    for annotation in gt_arrays["annotations"]:
        annotation.update(
            image_id=np.int32(annotation["image_id"]), bbox=np.array(annotation["bbox"])
        )
    ours = evaluate(arrays, gt_arrays)
    for iou_type in ("bbox", "segm"):
        for metric in METRICS:
            assert ours[iou_type][metric] == expected[iou_type][metric]
    assert isinstance(arrays[0]["score"], np.float32)  # the caller's records are not changed


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["images"][0].update(id=[1]), r"image 0: 'id' must be an integer or a str"),
        (lambda d: d["images"][0].update(file_name=5), r"'file_name' must be a string, got 5"),
        (lambda d: d["annotations"][0].update(parent_id=[1]), "'parent_id' must be an integer"),
        (lambda d: d["annotations"][0].update(image_id={}), "'image_id' must be an integer"),
        (lambda d: d["annotations"][0].update(score=10**400), r"'score' must be a finite.*\.\.\."),
        (lambda d: d["annotations"][0].update(threshold="x"), "'threshold' must be a finite"),
        (lambda d: d["annotations"][0].update(area="big"), "'area' must be a finite number"),
        (lambda d: d["annotations"][0].update(category_id="x"), "'category_id' must be an int"),
        (lambda d: d["annotations"][0].update(iscrowd="0"), "'iscrowd' must be 0 or 1"),
        (
            lambda d: d["annotations"][0].update(segmentation=None, bbox=None),
            "has neither 'segmentation' nor 'bbox'",
        ),
        (
            lambda d: d["annotations"].append({**d["annotations"][0], "parent_id": 1}),
            "annotation id 1 already used by annotation 0; ids must be unique where parent_id",
        ),
        (lambda d: d["annotations"][0].update(image_id=1.5), "'image_id' must be an integer"),
    ],
)
def test_hand_edited_labels_are_refused_with_their_place(change, message):
    """Each of these gave a traceback (unhashable ids, OverflowError, a float() of a string,
    pycocotools on None) or a silently wrong result (iscrowd "0" counted as a crowd)."""
    from hassod.labels import load_labels

    labels = dataset([[(10, 10, 60, 60)]])
    load_labels(copy.deepcopy(labels))
    change(labels)
    with pytest.raises(InputError, match=message):
        load_labels(labels)


def test_results_lists_pycocotools_takes_are_taken():
    """Concatenated per-file results repeat ids (unused without parent_id: pycocotools
    renumbers them) and some exporters write whole-number ids as floats: both load, and a
    float id scores as its integer."""
    from hassod.labels import load_labels

    gt = dataset([[(10, 10, 60, 60)]])
    image_id = gt["images"][0]["id"]
    result = {"image_id": image_id, "bbox": [10, 10, 50, 50], "score": 0.9, "category_id": 1}
    results = [dict(result, id=1), dict(result, id=1, score=0.5)]
    assert len(load_labels(results).annotations) == 2
    as_float = [dict(result, image_id=float(image_id))]
    ours = evaluate(as_float, gt, iou_types=("bbox",))
    assert ours["bbox"] == evaluate([result], gt, iou_types=("bbox",))["bbox"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["images"][0].update(id=[1]), r"image 0: 'id' must be an integer or a str"),
        (lambda d: d["annotations"][0].update(image_id=[1]), "'image_id' must be an integer"),
        (lambda d: d["annotations"][0].update(area="big"), "'area' must be a finite number"),
        (lambda d: d["annotations"][0].update(iscrowd="yes"), "'iscrowd' must be 0 or 1"),
        (lambda d: d["annotations"][0].update(category_id="x"), "'category_id' must be an int"),
    ],
)
def test_hand_edited_ground_truth_is_refused_with_its_place(change, message):
    from hassod.evaluate import load_ground_truth

    gt = dataset([[(10, 10, 60, 60)]])
    load_ground_truth(copy.deepcopy(gt))
    change(gt)
    with pytest.raises(InputError, match=f"ground truth .*{message}"):
        load_ground_truth(gt)


def test_ground_truth_annotation_ids_may_repeat_as_they_are_renumbered():
    gt = dataset([[(10, 10, 60, 60), (100, 100, 50, 50)]])
    gt["annotations"][1]["id"] = gt["annotations"][0]["id"]
    results = results_from_boxes(gt, [[(10, 10, 60, 60), (100, 100, 50, 50)]])
    assert evaluate(results, gt)["segm"]["AR@100"] == 1.0


def test_image_index_refuses_a_file_name_that_is_not_a_string():
    """`hassod predict --image-ids` looks its images up here: a number was a TypeError."""
    from hassod.labels import ImageIndex

    with pytest.raises(InputError, match="ids.json: image 1's 'file_name' must be a string"):
        ImageIndex([{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": 7}], "ids.json")


def test_a_huge_box_without_mask_is_clipped_not_an_overflow():
    from hassod.labels import to_rle

    rle = to_rle({"bbox": [1e308] * 4}, 20, 30)
    assert mask_utils.area(rle) == 0
    rle = to_rle({"bbox": [-1e308, -1e308, 1.7e308, 1.7e308]}, 20, 30)
    assert mask_utils.area(rle) == 20 * 30


def test_ground_truth_masks_must_match_their_images_size():
    from hassod.evaluate import load_ground_truth

    gt = {
        "images": [{"id": 1, "width": 4, "height": 3, "file_name": "a.png"}],
        "annotations": [
            {
                "image_id": 1,
                "segmentation": {"size": [3, 4], "counts": "0<"},
                "area": 12.0,
                "bbox": [0, 0, 4, 3],
            }
        ],
    }
    load_ground_truth(gt)
    gt["annotations"][0]["segmentation"]["size"] = [4, 3]
    with pytest.raises(InputError, match=r"mask size \[4, 3\] differs"):
        load_ground_truth(gt)


@pytest.mark.parametrize("size", [(100, 100), (130, 70), (70, 130)])
@pytest.mark.parametrize(
    "box",
    [[10, -50, 20, 30], [-40, 10, 20, 30], [90, 95, 40, 40], [-5, -5, 200, 200], [3, 4, 5, 6]],
)
def test_box_only_annotations_become_the_box_clipped_to_the_image(box, size):
    """A box partly or wholly outside the image covers exactly its pixels inside it (no
    wrap-around of negative ends; rows clipped to the height, columns to the width)."""
    from hassod.labels import to_rle

    height, width = size
    x, y, w, h = box
    expected = np.zeros((height, width), dtype=bool)
    for row in range(height):  # the plain reference: pixel by pixel
        for column in range(width):
            expected[row, column] = round(y) <= row < round(y + h) and (
                round(x) <= column < round(x + w)
            )
    mask = mask_utils.decode(to_rle({"bbox": box}, height, width)).astype(bool)
    np.testing.assert_array_equal(mask, expected)


def test_box_only_ground_truth_refuses_mask_recall_and_gives_box_recall():
    """pycocotools stopped with KeyError 'segmentation'; now the message names the way out."""
    from hassod.evaluate import evaluate
    from hassod.labels import InputError

    mask = np.zeros((50, 60), dtype=np.uint8, order="F")
    mask[10:30, 10:40] = 1
    rle = mask_utils.encode(mask)
    rle["counts"] = rle["counts"].decode("ascii")
    gt = {
        "images": [{"id": 7, "file_name": "a.png", "width": 60, "height": 50}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "bbox": [10, 10, 30, 20], "iscrowd": 0}
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    predictions = [
        {"image_id": 7, "category_id": 1, "score": 0.9, "segmentation": rle,
         "bbox": [10.0, 10.0, 30.0, 20.0]}
    ]  # fmt: skip
    with pytest.raises(InputError, match=r"no 'segmentation'.*--iou-type bbox"):
        evaluate(predictions, gt)
    assert evaluate(predictions, gt, iou_types=["bbox"])["bbox"]["AR@100"] == 1.0
    # report's way: boxes only, with a note saying why
    result = evaluate(predictions, gt, masks_when_available=True)
    assert result["settings"]["iou_types"] == ["bbox"] and "segm" not in result
    assert result["settings"]["note"].startswith("mask recall left out")
    assert "mask recall left out" in format_metrics(result)
    with pytest.raises(InputError, match="no 'segmentation'"):  # nothing would be left
        evaluate(predictions, gt, iou_types=["segm"], masks_when_available=True)


def linear_find(images, file_name):
    """The plain lookup: the longest record path that is a tail of the file's, else the only
    record of its base name (None when there is none, "ambiguous" when there are several)."""
    from pathlib import PurePosixPath

    parts = PurePosixPath(file_name).parts
    tails = [
        image
        for image in images
        if image.get("file_name")
        and parts[-len(PurePosixPath(image["file_name"]).parts) :]
        == PurePosixPath(image["file_name"]).parts
    ]
    if tails:
        return max(tails, key=lambda image: len(PurePosixPath(image["file_name"]).parts))
    same = [i for i in images if PurePosixPath(i.get("file_name") or "").name == parts[-1]]
    return "ambiguous" if len(same) > 1 else (same[0] if same else None)


def test_image_index_finds_what_a_linear_scan_finds():
    from hassod.labels import ImageIndex, InputError

    rng = np.random.default_rng(4)
    folders, names = ["", "a/", "b/", "a/b/", "c/a/"], ["x.jpg", "y.jpg", "z.png"]
    for _ in range(200):
        records = [
            {"id": k, "file_name": str(rng.choice(folders)) + str(rng.choice(names))}
            for k in range(int(rng.integers(0, 6)))
        ]
        # first-listed wins among equally long tails, as the linear scan's max keeps
        records = list({r["file_name"]: r for r in reversed(records)}.values())[::-1]
        index = ImageIndex(records, "the test")
        for query in ("/d/a/x.jpg", "/d/b/y.jpg", "/d/c/a/b/z.png", "/d/q.jpg", "a/b/x.jpg"):
            expected = linear_find(records, query)
            if expected == "ambiguous":
                with pytest.raises(InputError, match="give more of the path"):
                    index.find(query)
            else:
                assert index.find(query) is expected
            strict = index.find(query, strict=True)
            assert strict is None or query.endswith(strict["file_name"])


def test_dangling_parent_ids_are_reported_once():
    import warnings

    from hassod.labels import load_labels

    box = {"bbox": [0.0, 0.0, 4.0, 4.0], "category_id": 1}
    data = {
        "images": [{"id": 1, "file_name": "a.png", "width": 8, "height": 8},
                   {"id": 2, "file_name": "b.png", "width": 8, "height": 8}],
        "annotations": [
            {"id": 10, "image_id": 1, "parent_id": None, **box},
            {"id": 11, "image_id": 1, "parent_id": 10, **box},
            {"id": 20, "image_id": 2, "parent_id": 10, **box},  # another image's annotation
            {"id": 21, "image_id": 2, "parent_id": 99, **box},  # no such annotation
        ],
    }  # fmt: skip
    with pytest.warns(UserWarning, match=r"2 annotations have a parent_id .* \(e.g. 10\)"):
        load_labels(data)
    data["annotations"] = data["annotations"][:2]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_labels(data)


# ------------------------------------------------------ inputs the authors' evaluator takes
def test_ground_truth_polygons_too_short_are_left_out_with_a_warning():
    """pycocotools rasterises a file whose first ring is valid and drops nothing; Detectron2's
    loader drops rings of fewer than 3 points. Such a file was refused whole."""
    gt = dataset([[(10, 10, 60, 60), (100, 50, 40, 40)]])
    x, y, w, h = 100, 50, 40, 40
    square = [x, y, x + w, y, x + w, y + h, x, y + h]
    gt["annotations"][1]["segmentation"] = [square, [5.0, 5.0, 6.0, 6.0]]
    gt["annotations"][0]["segmentation"] = [[1.0, 2.0, 3.0, 4.0]]  # none left: object dropped
    preds = results_from_boxes(gt, [[(100, 50, 40, 40)]])
    with pytest.warns(UserWarning, match="2 polygons .* and 1 object left with none"):
        result = evaluate(preds, gt)
    counts = result["counts"]
    assert counts["dropped_polygons"] == 2 and counts["dropped_objects"] == 1
    assert counts["objects"] == 1
    assert result["bbox"]["AR@100"] == 1.0 and result["segm"]["AR@100"] == 1.0


def test_ground_truth_annotations_of_unlisted_images_are_left_out():
    gt = dataset([[(10, 10, 60, 60)]])
    gt["annotations"].append({**gt["annotations"][0], "id": 99, "image_id": 777})
    preds = results_from_boxes(gt, [[(10, 10, 60, 60)]])
    with pytest.warns(UserWarning, match="1 annotation of images it does not list left out"):
        result = evaluate(preds, gt)
    assert result["counts"]["dropped_unknown_image"] == 1 and result["counts"]["objects"] == 1
    assert result["segm"]["AR@100"] == 1.0


def test_things_only_refuses_a_category_id_that_is_not_a_number():
    gt = dataset([[(10, 10, 60, 60)]])
    gt["annotations"][0]["category_id"] = "person"
    with pytest.raises(InputError, match="'category_id' must be an integer, got 'person'"):
        evaluate([], gt, things_only=True)
    gt["annotations"][0]["category_id"] = float("nan")
    with pytest.raises(InputError, match="'category_id' must be an integer, got nan"):
        evaluate([], gt, things_only=True)


def test_box_only_predictions_are_scored_for_boxes_before_any_mask_run():
    gt = dataset([[(10, 10, 60, 60)], [(20, 20, 30, 30)]])
    boxes = [{"image_id": 10, "bbox": [10, 10, 60, 60], "score": 0.9}]
    with pytest.raises(InputError, match="1 of 1 prediction has no mask.*--iou-type bbox"):
        evaluate(boxes, gt)  # default: boxes and masks; refused before the box run
    result = evaluate(boxes, gt, masks_when_available=True)  # what `hassod report` asks
    assert "segm" not in result and result["bbox"]["AR@100"] == 0.5
    assert "predictions have no masks" in result["settings"]["note"]
    mixed = boxes + results_from_boxes(gt, [[], [(20, 20, 30, 30)]])
    with pytest.raises(InputError, match="1 of 2 predictions has no mask"):
        evaluate(mixed, gt, masks_when_available=True)
    with pytest.raises(InputError, match="no mask"):
        evaluate(boxes, gt, iou_types=["segm"], masks_when_available=True)


def test_lvis_records_are_matched_by_their_coco_url():
    gt = dataset([[(10, 10, 60, 60)]])
    record = gt["images"][0]
    del record["file_name"]
    record["coco_url"] = "http://images.cocodataset.org/val2017/000000397133.jpg"
    pseudo = {
        "images": [{"id": 1, "file_name": "val2017/000000397133.jpg", "height": 200, "width": 300}],
        "annotations": [{"image_id": 1, "bbox": [10, 10, 60, 60], "score": 1.0}],
    }
    assert evaluate(pseudo, gt, iou_types=["bbox"])["bbox"]["AR@100"] == 1.0
    from hassod.labels import ImageIndex

    index = ImageIndex(gt["images"], "the ground truth")  # any folder, strict or not
    assert index.find("/data/lvis/000000397133.jpg", strict=True) is record
    assert index.find("000000397133.jpg", strict=True) is record


def test_in_memory_rle_sizes_may_be_tuples():
    gt = dataset([[(10, 10, 60, 60)]])
    gt["annotations"][0]["segmentation"]["size"] = (200, 300)
    preds = results_from_boxes(gt, [[(10, 10, 60, 60)]])
    assert evaluate(preds, gt)["segm"]["AR@100"] == 1.0


def test_notes_of_ground_truth_and_predictions_both_survive():
    """A box-only ground truth's note stays when the predictions have masks."""
    gt = dataset([[(10, 10, 60, 60)]])
    del gt["annotations"][0]["segmentation"]
    preds = results_from_boxes(gt, [[(10, 10, 60, 60)]])
    result = evaluate(preds, gt, masks_when_available=True)
    assert "no 'segmentation'" in result["settings"]["note"] and "segm" not in result


def test_evaluate_command_prints_ground_truth_warnings_as_lines(tmp_path, capsys):
    gt = dataset([[(10, 10, 60, 60)]])
    gt["annotations"].append({**gt["annotations"][0], "id": 99, "image_id": 777})
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "pred.json").write_text(json.dumps(results_from_boxes(gt, [[(10, 10, 60, 60)]])))
    args = ["evaluate", "--pred", str(tmp_path / "pred.json"), "--gt", str(tmp_path / "gt.json")]
    assert main([*args, "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "hassod evaluate: warning: ground truth" in err and "UserWarning" not in err


# ---------------------------------------------------------------------------------------------
# hassod.labels helpers (the reading rules every command shares)
# ---------------------------------------------------------------------------------------------


def test_level_of_reads_hier_level_first_then_level_and_clips_deeper_to_subpart():
    from hassod.labels import level_of

    assert level_of({"hier_level": 1, "level": 2}) == 1
    assert level_of({"level": 2}) == 2
    assert level_of({"hier_level": 0, "level": 2}) == 0
    assert level_of({"hier_level": 7}) == 2
    assert level_of({}) == 0


def test_select_keeps_scores_at_the_threshold_and_the_best_masks():
    """``score >= threshold`` (equal passes); ``max_masks`` keeps the highest scores, equal
    scores in file order, the kept ones in file order."""
    from hassod.labels import select

    annotations = [{"id": i, "score": s} for i, s in enumerate([0.2, 0.9, 0.5, 0.9, 0.5])]
    assert [a["id"] for a in select(annotations, score_threshold=0.5)] == [1, 2, 3, 4]
    assert [a["id"] for a in select(annotations, max_masks=3)] == [1, 2, 3]
    best = sorted(annotations, key=lambda a: -a["score"])[:3]  # the plain stable ranking
    assert select(annotations, max_masks=3) == [a for a in annotations if a in best]
    assert select(annotations, score_threshold=0.95) == []


def test_mask_tree_skips_to_the_nearest_shown_ancestor_and_breaks_self_loops():
    """A parent filtered out (by score, say) is replaced by its nearest ancestor that is
    shown; a mask naming itself as parent is a root."""
    from hassod.labels import mask_tree

    chain = [
        {"id": 1, "parent_id": None},
        {"id": 2, "parent_id": 1},
        {"id": 3, "parent_id": 2},
        {"id": 4, "parent_id": 4},
    ]
    shown = [chain[0], chain[2], chain[3]]
    assert mask_tree(shown, chain) == [-1, 0, -1]
    assert mask_tree(chain, chain) == [-1, 0, 1, -1]


def test_failure_of_matches_whole_path_components_only(tmp_path):
    """``failed`` names a relative path: "a.jpg" is the reason for ".../a.jpg", not for
    ".../xa.jpg"."""
    from hassod.labels import failure_of, load_labels

    labels = load_labels(
        {
            "images": [],
            "annotations": [],
            "failed": [{"file_name": "a.jpg", "reason": "empty file (0 bytes)"}],
        }
    )
    assert failure_of(labels, tmp_path / "a.jpg") == "empty file (0 bytes)"
    assert failure_of(labels, tmp_path / "xa.jpg") is None


def test_labels_refuse_annotations_of_images_the_file_does_not_list():
    from hassod.labels import load_labels

    labels = dataset([[(10, 10, 60, 60)]])
    labels["annotations"][0]["image_id"] = 99
    with pytest.raises(InputError, match="image_id 99, which is not in the file's 'images'"):
        load_labels(labels)
