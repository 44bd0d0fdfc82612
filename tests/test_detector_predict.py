"""Prediction: COCO results format, mask RLEs at the original size, the level filter, the
Python API and ``hassod predict``."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from detector_checks import tiny_config
from PIL import Image

from hassod.coco import image_id_for
from hassod.detector import checkpoint as ckpt
from hassod.detector.model import HassodDetector
from hassod.detector.predict import (
    Predictor,
    filter_levels,
    image_ids_from,
    parse_levels,
    predict_images,
    work_folder_for,
)
from hassod.run_errors import Interrupted, UsageError


@pytest.fixture(scope="module")
def checkpoint_path(tmp_path_factory):
    torch.manual_seed(0)
    config = tiny_config()
    config = dataclasses.replace(
        config, model=dataclasses.replace(config.model, norm="gn", detections_per_image=50)
    )
    model = HassodDetector(config.model, "gn")
    teacher = HassodDetector(config.model, "gn")
    path = tmp_path_factory.mktemp("checkpoint") / "model.pth"
    return ckpt.save_checkpoint(path, config=config, iteration=0, model=model, teacher=teacher)


@pytest.fixture(scope="module")
def images_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name, size in (("a.png", (70, 90)), ("sub/b.jpg", (64, 64))):
        (folder / name).parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)).save(folder / name)
    (folder / "broken.png").write_bytes(b"not an image")
    return folder


def test_parse_levels():
    assert parse_levels("whole,part,subpart") == {0, 1, 2}
    assert parse_levels(["part"]) == {1}
    assert parse_levels([0, "2"]) == {0, 2}
    assert parse_levels(None) == {0, 1, 2}
    with pytest.raises(ValueError, match="unknown level"):
        parse_levels("wholes")
    with pytest.raises(ValueError, match="at least one"):
        parse_levels("")


def test_parse_levels_takes_one_level_and_refuses_fractions():
    """``levels=1`` (one level, as ``"part"``) was a TypeError ('int' object is not iterable);
    ``[1.5]`` and ``[True]`` silently meant level 1."""
    assert parse_levels(1) == parse_levels("part") == {1}
    assert parse_levels(np.int64(2)) == {2}
    for levels in ([1.5], [True], 0.0, object()):
        with pytest.raises(ValueError, match="level"):
            parse_levels(levels)


def test_filter_levels_keeps_exactly_the_chosen_levels():
    detections = [
        {"hier_level": level, "score": 1.0 - 0.1 * i} for i, level in enumerate([0, 1, 2, 1, 0])
    ]
    assert [d["hier_level"] for d in filter_levels(detections, "part")] == [1, 1]
    assert [d["hier_level"] for d in filter_levels(detections, "whole,subpart")] == [0, 2, 0]
    assert filter_levels(detections, [0, 1, 2]) == detections


def test_predictor_returns_coco_results_at_the_original_size(checkpoint_path):
    from pycocotools import mask as mask_utils

    predictor = Predictor(checkpoint_path, device="cpu")
    image = np.random.default_rng(1).integers(0, 256, size=(70, 90, 3), dtype=np.uint8)
    results = predictor(image, image_id=7)
    assert 0 < len(results) <= 50
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    for result in results:
        assert result["image_id"] == 7 and result["category_id"] == 1
        assert result["hier_level"] in (0, 1, 2)
        assert len(result["level_scores"]) == 3 and sum(result["level_scores"]) == pytest.approx(
            1.0, abs=1e-5
        )
        assert result["hier_level"] == int(np.argmax(result["level_scores"]))
        x, y, w, h = result["bbox"]
        assert 0 <= x and 0 <= y and x + w <= 90 + 1e-3 and y + h <= 70 + 1e-3
        assert result["segmentation"]["size"] == [70, 90]
        assert mask_utils.decode(result["segmentation"]).shape == (70, 90)
    only_parts = predictor(image, levels="part", image_id=7)
    assert only_parts == [r for r in results if r["hier_level"] == 1]


def test_predictor_options(checkpoint_path):
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    assert len(Predictor(checkpoint_path, device="cpu", max_detections=3)(image)) <= 3
    assert Predictor(checkpoint_path, device="cpu", score_threshold=1.0)(image) == []
    # the student by default (the authors evaluate model_student.pth after Mean Teacher)
    payload = ckpt.load_checkpoint(checkpoint_path)
    for options, key in (
        ({}, "model"),
        ({"weights": "teacher"}, "teacher"),
        ({"weights": "auto"}, "teacher"),
    ):
        state = Predictor(payload, device="cpu", **options).model.state_dict()
        assert all(torch.equal(state[name], payload[key][name]) for name in payload[key])
    with pytest.raises(ValueError, match="no teacher"):
        payload = ckpt.load_checkpoint(checkpoint_path)
        payload["teacher"] = None
        Predictor(payload, weights="teacher")


def test_predict_images_writes_results_and_skips_unreadable(checkpoint_path, images_dir, tmp_path):
    from pycocotools.coco import COCO

    out = tmp_path / "preds.json"
    summary = predict_images(images_dir, checkpoint_path, out, levels="whole,part", device="cpu")
    assert summary.images == 2 and [f["file_name"] for f in summary.failed] == ["broken.png"]
    results = json.loads(out.read_text())
    assert len(results) == summary.detections and {r["hier_level"] for r in results} <= {0, 1}
    assert {r["image_id"] for r in results} <= {image_id_for("a.png"), image_id_for("sub/b.jpg")}
    gt = {
        "images": [
            {"id": image_id_for("a.png"), "width": 90, "height": 70},
            {"id": image_id_for("sub/b.jpg"), "width": 64, "height": 64},
        ],
        "annotations": [],
        "categories": [{"id": 1, "name": "object"}],
    }
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        coco = COCO(str(tmp_path / "gt.json"))
        assert len(coco.loadRes(str(out)).anns) == len(results)


def test_predict_cli(checkpoint_path, images_dir, tmp_path, capsys):
    from hassod.cli import main

    out = tmp_path / "p.json"
    common = ["--checkpoint", str(checkpoint_path), "--out", str(out), "--device", "cpu", "--quiet"]
    assert main(["predict", str(images_dir / "a.png"), *common, "--levels", "subpart"]) == 0
    assert "detections" in capsys.readouterr().out
    assert all(r["hier_level"] == 2 for r in json.loads(out.read_text()))
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(images_dir), *common, "--levels", "objects"])
    assert exit_info.value.code == 2
    missing = ["--checkpoint", str(tmp_path / "none.pth"), "--out", str(out), "--quiet"]
    assert main(["predict", str(images_dir), *missing]) == 2
    # its own results list is replaced; a ground truth named as --out by mistake is kept
    assert main(["predict", str(images_dir / "a.png"), *common]) == 0
    for text in (  # a dataset, another detector's results, any other array: kept
        '{"images": [], "annotations": []}',
        '[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.9}]',
        "[1, 2, 3]",
    ):
        other = tmp_path / "other.json"
        other.write_text(text)
        assert main(["predict", str(images_dir), *common[:2], "--out", str(other), "--quiet"]) == 2
        assert "refusing to replace" in capsys.readouterr().err
        with pytest.raises(UsageError, match="not a results list of hassod predict"):
            predict_images(images_dir, checkpoint_path, other, device="cpu")  # Python alike
        assert other.read_text() == text


def gt_of(records) -> dict:
    """A ground truth naming images (file_name, id, size) and one box per image."""
    images = [
        {"id": image_id, "file_name": name, "width": width, "height": height}
        for name, image_id, (height, width) in records
    ]
    annotations = [
        {
            "id": n + 1,
            "image_id": i["id"],
            "category_id": 1,
            "segmentation": [[5, 5, 25, 5, 25, 25, 5, 25]],
            "bbox": [5, 5, 20, 20],
            "area": 400,
        }
        for n, i in enumerate(images)
    ]
    return {"images": images, "annotations": annotations, "categories": [{"id": 1}]}


def test_predict_image_ids_from_ground_truth_score_with_evaluate(
    checkpoint_path, images_dir, tmp_path, capsys
):
    from hassod.cli import main

    # "b.jpg" without its folder: a record's file name may be any tail of the image's path.
    gt = gt_of([("a.png", 101, (70, 90)), ("b.jpg", 202, (64, 64))])
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (images_dir / "broken.png").rename(tmp_path / "broken.png")  # not in the ground truth
    try:
        out = tmp_path / "preds.json"
        common = ["--checkpoint", str(checkpoint_path), "--device", "cpu", "--quiet"]
        args = [
            str(images_dir),
            *common,
            "--out",
            str(out),
            "--image-ids",
            str(tmp_path / "gt.json"),
        ]
        assert main(["predict", *args]) == 0
    finally:
        (tmp_path / "broken.png").rename(images_dir / "broken.png")
    results = json.loads(out.read_text())
    assert results and {r["image_id"] for r in results} <= {101, 202}
    capsys.readouterr()
    evaluate = ["evaluate", "--pred", str(out), "--gt", str(tmp_path / "gt.json"), "--quiet"]
    assert main(evaluate) == 0
    assert "AR@100" in capsys.readouterr().out


def test_predict_images_refuses_images_the_image_ids_json_lacks(
    checkpoint_path, images_dir, tmp_path
):
    from hassod.labels import InputError

    out = tmp_path / "preds.json"
    gt = gt_of([("a.png", 101, (70, 90))])
    with pytest.raises(InputError, match=r"2 of 3 images are not in .*broken.png, sub/b.jpg"):
        predict_images(images_dir, checkpoint_path, out, image_ids=gt, device="cpu")
    # only a tail of the image's path matches: a record of another folder with the same base
    # name is another image (and of two such records, neither is this one)
    for others in ([("train2017/b.jpg", 1)], [("x/b.jpg", 1), ("y/b.jpg", 2)]):
        elsewhere = gt_of([(name, image_id, (64, 64)) for name, image_id in others])
        with pytest.raises(InputError, match=r"the image is not in .*, so it would .*: b.jpg"):
            predict_images(images_dir / "sub" / "b.jpg", checkpoint_path, out, image_ids=elsewhere)
    assert image_ids_from(gt_of([("sub/b.jpg", 7, (64, 64))]), ["sub/b.jpg"], images_dir) == {
        "sub/b.jpg": 7
    }
    twins = tmp_path / "twins"
    for name in ("x/c.png", "y/c.png"):  # checked before any image is read
        (twins / name).parent.mkdir(parents=True)
        (twins / name).write_bytes(b"")
    with pytest.raises(
        InputError, match="images x/c.png and y/c.png both match the record 'c.png'"
    ):
        predict_images(twins, checkpoint_path, out, image_ids=gt_of([("c.png", 1, (8, 8))]))
    assert not out.exists()  # each refused before any work


def test_skip_unlisted_predicts_on_the_listed_images_only(
    checkpoint_path, images_dir, tmp_path, capsys
):
    """A folder larger than the annotated subset: the unlisted images are left out, counted."""
    from hassod.cli import main

    gt_path = tmp_path / "gt.json"
    gt_path.write_text(json.dumps(gt_of([("a.png", 101, (70, 90))])))
    out = tmp_path / "preds.json"
    command = ["predict", str(images_dir), "--checkpoint", str(checkpoint_path)]
    command += ["--out", str(out), "--device", "cpu", "--quiet", "--image-ids", str(gt_path)]
    assert main(command) == 2
    assert "--skip-unlisted" in capsys.readouterr().err
    assert main([*command, "--skip-unlisted"]) == 0
    assert "1 image; 2 images not in the --image-ids JSON skipped" in capsys.readouterr().out
    results = json.loads(out.read_text())
    assert {result["image_id"] for result in results} <= {101}
    alone = predict_images(images_dir / "a.png", checkpoint_path, out, device="cpu")
    assert [r["bbox"] for r in results] == [r["bbox"] for r in json.loads(out.read_text())]
    assert alone.images == 1
    with pytest.raises(SystemExit):
        main([*command[:-2], "--skip-unlisted"])  # without --image-ids
    assert "goes with --image-ids" in capsys.readouterr().err


def test_predict_cli_image_ids_errors_exit_2(checkpoint_path, images_dir, tmp_path, capsys):
    from hassod.cli import main

    common = ["--checkpoint", str(checkpoint_path), "--out", str(tmp_path / "p.json"), "--quiet"]
    (tmp_path / "gt.json").write_text(json.dumps(gt_of([("a.png", 101, (70, 90))])))
    assert (
        main(["predict", str(images_dir), *common, "--image-ids", str(tmp_path / "gt.json")]) == 2
    )
    error = capsys.readouterr().err
    assert "are not in its 'images'" in error and "leave out --image-ids" in error
    missing = str(tmp_path / "none.json")
    assert main(["predict", str(images_dir), *common, "--image-ids", missing]) == 2
    assert "--image-ids file not found" in capsys.readouterr().err


def test_predict_help_gives_the_test_sizes_the_code_uses(checkpoint_path, capsys):
    from hassod.cli import main

    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default 800)" not in text and "(default 1333)" not in text
    assert "default: the checkpoint's test_min_size" in text
    assert "default: the checkpoint's test_max_size" in text
    # ... which is what a Predictor without sizes uses (this checkpoint: 96 / 96).
    predictor = Predictor(checkpoint_path, device="cpu")
    data = tiny_config().data
    assert (predictor.min_size, predictor.max_size) == (data.test_min_size, data.test_max_size)
    assert Predictor(checkpoint_path, device="cpu", min_size=64).min_size == 64


def test_filter_levels_names_a_detection_without_a_level():
    detections = [{"hier_level": 0}, {"hier_level": np.int64(2)}, {"score": 0.9}]
    assert filter_levels(detections[:2], "subpart") == [detections[1]]
    with pytest.raises(ValueError, match="detection 2 has no integer 'hier_level'"):
        filter_levels(detections, "whole")


@pytest.mark.parametrize(
    "options, message",
    [
        ({"min_size": 1, "max_size": 1}, "min_size must be at least 32 pixels"),
        ({"min_size": -5}, "min_size must be at least 32 pixels"),
        ({"min_size": 0}, "min_size must be at least 32"),  # not the checkpoint's size
        ({"max_size": 8}, "max_size must be at least 32"),
        ({"score_threshold": float("nan")}, r"score_threshold must be a finite number, got nan"),
        ({"mask_threshold": 2}, r"mask_threshold must be in \(0, 1\), got 2"),
        ({"mask_threshold": 0.0}, r"mask_threshold must be in \(0, 1\)"),
        ({"max_detections": 0}, "max_detections must be >= 1"),
    ],
)
def test_predictor_refuses_unusable_options(checkpoint_path, options, message):
    """They ended in PyTorch's INTERNAL ASSERT, or gave no detections / empty masks silently."""
    with pytest.raises(ValueError, match=message):
        Predictor(checkpoint_path, device="cpu", **options)


def test_predictor_refuses_an_empty_image(checkpoint_path):
    with pytest.raises(ValueError, match=r"image is empty \(0 x 5 pixels\)"):
        Predictor(checkpoint_path, device="cpu")(np.zeros((0, 5, 3), dtype=np.uint8))


def test_predictor_inputs_a_python_user_passes(checkpoint_path, images_dir, tmp_path, capsys):
    """A tensor image, one level as a number, image ids that are not integers and device
    names torch does not know: results, or errors naming the argument (``hassod predict
    --device gpu`` exits 2 as other bad arguments, not 1 with torch's list of device types)."""
    from hassod.cli import main

    predictor = Predictor(checkpoint_path, device="cpu")
    image = np.random.default_rng(2).integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    results = predictor(image, image_id=3)
    assert predictor(torch.from_numpy(image), image_id=np.int64(3)) == results
    assert predictor(image, levels=1, image_id=3) == [r for r in results if r["hier_level"] == 1]
    for image_id in ("abc", 1.7):
        with pytest.raises(TypeError, match="image_id must be an integer"):
            predictor(image, image_id=image_id)
    for device in ("gpu", "cuda:x"):
        with pytest.raises(ValueError, match=f"device must be .*got '{device}'"):
            Predictor(checkpoint_path, device=device)
    command = ["predict", str(images_dir), "--checkpoint", str(checkpoint_path), "--quiet"]
    assert main([*command, "--device", "gpu", "--out", str(tmp_path / "out.json")]) == 2
    assert "hassod predict: error: device must be" in capsys.readouterr().err


def test_predict_cli_refuses_bad_sizes_and_thresholds(
    checkpoint_path, images_dir, tmp_path, capsys
):
    from hassod.cli import main

    common = ["predict", str(images_dir), "--checkpoint", str(checkpoint_path), "--quiet"]
    common += ["--device", "cpu", "--out", str(tmp_path / "out.json")]
    for options, message in (  # named as the command line's options, not as parameters
        (["--min-size", "1", "--max-size", "1"], "--min-size must be at least 32 pixels"),
        (["--max-size", "8"], "--max-size must be at least 32 pixels"),
        (["--score-threshold", "nan"], "--score-threshold must be a finite number, got nan"),
        (["--max-detections", "0"], "--max-detections must be >= 1, got 0"),
    ):
        assert main([*common, *options]) == 2
        err = capsys.readouterr().err
        assert f"hassod predict: error: {message}" in err and "Traceback" not in err
    assert not (tmp_path / "out.json").exists()


def test_predict_summary_counts_one_image_in_the_singular(tmp_path):
    from hassod.detector.predict import PredictSummary

    text = PredictSummary(tmp_path / "p.json", 1, 3, [{"file_name": "x"}]).format()
    assert text.endswith("on 1 image; 1 image could not be read (listed on stderr)")
    assert PredictSummary(tmp_path / "p.json", 2, 0).format().endswith("on 2 images")
    assert "wrote p.json: 1 detection (" in PredictSummary(Path("p.json"), 1, 1).format()
    assert "2 detections" in PredictSummary(Path("p.json"), 1, 2).format()


def test_a_checkpoint_whose_settings_fail_a_newer_check_still_predicts(
    checkpoint_path, images_dir, tmp_path, capsys
):
    """Settings earlier versions accepted (micro_batch above the batch, a type the checks now
    refuse) must not make a trained network unusable: loaded as stored, with a warning."""
    from hassod.cli import main

    payload = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
    payload["config"]["micro_batch"] = 99
    payload["config"]["amp"] = 0
    old = tmp_path / "old.pth"
    torch.save(payload, old)
    with pytest.warns(UserWarning, match="fails a check of this version .* loaded as stored"):
        loaded = ckpt.load_checkpoint(old)
    assert loaded["config"].micro_batch == 99
    out = tmp_path / "preds.json"
    command = ["predict", str(images_dir / "a.png"), "--checkpoint", str(old), "--out", str(out)]
    assert main([*command, "--device", "cpu", "--quiet"]) == 0
    assert "hassod predict: warning:" in capsys.readouterr().err
    predict_images(images_dir / "a.png", checkpoint_path, tmp_path / "new.json", device="cpu")
    assert out.read_text() == (tmp_path / "new.json").read_text()  # the same network


# --- an interrupted run keeps its finished images and resumes --------------------------------


@pytest.fixture(scope="module")
def five_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("five")
    rng = np.random.default_rng(5)
    for index in range(5):
        pixels = rng.integers(0, 256, size=(40 + 4 * index, 50, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{index}.png")
    return folder


@pytest.fixture(scope="module")
def uninterrupted(checkpoint_path, five_images, tmp_path_factory):
    """The bytes a run that nobody stopped writes (all levels, then only "whole")."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    outputs = {}
    for levels in (None, "whole"):
        out = folder / f"{levels}.json"
        predict_images(five_images, checkpoint_path, out, levels=levels, device="cpu")
        assert not work_folder_for(out).exists()  # removed once OUT is written
        outputs[levels] = out.read_bytes()
    return outputs


def stop_at_call(monkeypatch, number: int, stop) -> list:
    """Make the ``number``-th image prediction call ``stop()`` (raise, or send a signal)
    instead; returns the list of the images' ids predicted (all calls, across runs)."""
    original, calls = Predictor.__call__, []

    def predict(self, image, levels=None, image_id=0):
        calls.append(image_id)
        if len(calls) == number:
            stop()
        return original(self, image, levels, image_id)

    monkeypatch.setattr(Predictor, "__call__", predict)
    return calls


def ctrl_c():
    raise KeyboardInterrupt


def interrupted(call) -> str:
    """The message of the :class:`Interrupted` that ``call()`` raises (a KeyboardInterrupt
    escaping it fails the test rather than stopping pytest)."""
    try:
        call()
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped predict_images as KeyboardInterrupt, not Interrupted")
    except Interrupted as error:
        return str(error)
    pytest.fail("not interrupted")


def test_interrupted_predict_keeps_finished_images_and_resumes(
    checkpoint_path, five_images, uninterrupted, tmp_path, monkeypatch
):
    import hassod.detector.predict as predict_module

    out = tmp_path / "p.json"
    parts = work_folder_for(out)
    monkeypatch.setattr(predict_module, "CHUNK_IMAGES", 2)

    def saved_then_ctrl_c():
        # the first two images were saved as a chunk before (a SIGKILL would keep them too)
        assert [path.name for path in parts.glob("chunk-*.json")] == ["chunk-000000.json"]
        ctrl_c()

    calls = stop_at_call(monkeypatch, 4, saved_then_ctrl_c)
    message = interrupted(lambda: predict_images(five_images, checkpoint_path, out, device="cpu"))
    assert f"interrupted: 3 finished images of 5 saved in {parts}; run the same" in message
    assert not out.exists()
    assert sorted(path.name for path in parts.glob("chunk-*.json")) == [
        "chunk-000000.json",
        "chunk-000001.json",
    ]
    summary = predict_images(five_images, checkpoint_path, out, device="cpu")
    assert len(calls) == 4 + 2  # the rerun predicted only the two images left
    assert summary.images == 5 and summary.resumed == 3
    assert out.read_bytes() == uninterrupted[None]  # as if never stopped
    assert not parts.exists()


def test_sigterm_stops_predict_like_ctrl_c(
    checkpoint_path, five_images, uninterrupted, tmp_path, monkeypatch, capsys
):
    """SIGTERM (a scheduler's stop) ended the process at once: rc 143, nothing kept."""
    from hassod.cli import main

    class Killed(Exception):
        pass

    def killed(signum, frame):  # stands in for the default action, which would end pytest
        raise Killed

    previous = signal.signal(signal.SIGTERM, killed)
    try:
        out = tmp_path / "p.json"
        command = ["predict", str(five_images), "--checkpoint", str(checkpoint_path)]
        command += ["--out", str(out), "--device", "cpu", "--quiet"]
        calls = stop_at_call(monkeypatch, 2, lambda: os.kill(os.getpid(), signal.SIGTERM))
        assert main(command) == 130
        assert signal.getsignal(signal.SIGTERM) is killed  # restored after the run
        err = capsys.readouterr().err
        assert "hassod predict: interrupted: 1 finished image of 5 saved in" in err
        assert "run the same command again to resume" in err
        assert main(command) == 0
        assert "on 5 images (1 predicted by an interrupted run)" in capsys.readouterr().out
        assert len(calls) == 2 + 4
        assert out.read_bytes() == uninterrupted[None]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_rerun_with_other_settings_starts_afresh(
    checkpoint_path, five_images, uninterrupted, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "p.json"

    def interrupted_run(**options):
        interrupted(
            lambda: predict_images(five_images, checkpoint_path, out, device="cpu", **options)
        )

    calls = stop_at_call(monkeypatch, 3, ctrl_c)
    interrupted_run()
    with pytest.warns(RuntimeWarning, match=r"other settings, discarded .*levels: \['whole',"):
        predict_images(five_images, checkpoint_path, out, levels="whole", device="cpu")
    assert len(calls) == 3 + 5  # nothing of the first run was kept
    assert out.read_bytes() == uninterrupted["whole"]
    # another network: the teacher of the same checkpoint
    calls.clear()
    interrupted_run()
    with pytest.warns(RuntimeWarning, match="network_sha256"):
        predict_images(five_images, checkpoint_path, out, weights="teacher", device="cpu")
    assert len(calls) == 3 + 5
    # other ids: the images are predicted again, under the new ids
    calls.clear()
    interrupted_run(score_threshold=0.0)  # the checkpoint's own threshold: the same settings
    names = sorted(path.name for path in five_images.glob("*.png"))
    gt = gt_of([(name, 500 + index, (64, 64)) for index, name in enumerate(names)])
    with pytest.warns(RuntimeWarning, match="2 images changed, or took another id"):
        predict_images(five_images, checkpoint_path, out, image_ids=gt, device="cpu")
    assert len(calls) == 3 + 5
    assert {result["image_id"] for result in json.loads(out.read_text())} <= set(range(500, 505))


def test_predict_refuses_a_work_folder_it_did_not_make(checkpoint_path, five_images, tmp_path):
    """``hassod discover --out x.json`` keeps its work in x.json.parts/ too: never cleared."""
    from hassod.cli import main
    from hassod.work_folder import WorkFolder

    out = tmp_path / "x.json"
    parts = work_folder_for(out)
    parts.mkdir()
    manifest = {"format": 1, "date_created": "x", "info": {"backbone": "vit"}, "completed": None}
    (parts / "manifest.json").write_text(json.dumps(manifest))
    (parts / "chunk-000000.json").write_text('{"format": 1, "entries": [], "failed": []}')
    before = {path.name: path.read_bytes() for path in parts.iterdir()}
    with pytest.raises(UsageError, match="not the manifest of a hassod predict work folder"):
        predict_images(five_images, checkpoint_path, out, device="cpu")
    assert {path.name: path.read_bytes() for path in parts.iterdir() if path.name != ".lock"} == (
        before
    )
    (parts / "manifest.json").unlink()
    command = ["predict", str(five_images), "--checkpoint", str(checkpoint_path)]
    assert main([*command, "--out", str(out), "--device", "cpu", "--quiet"]) == 2
    # a sharded discover run's folder: shard folders, no manifest at its top
    (parts / "chunk-000000.json").unlink()
    (parts / "shard-0-of-2").mkdir()
    with pytest.raises(UsageError, match="holds another run's work"):
        predict_images(five_images, checkpoint_path, out, device="cpu")
    assert not out.exists() and (parts / "shard-0-of-2").is_dir()
    # a second run on the same OUT while one is writing: the holder is named
    other = tmp_path / "y.json"
    holder = WorkFolder(work_folder_for(other), command="hassod discover")
    holder.path.mkdir()
    holder.lock()
    try:
        with pytest.raises(UsageError, match="another hassod discover is writing to"):
            predict_images(five_images, checkpoint_path, other, device="cpu")
    finally:
        holder.unlock()
    assert not other.exists()


def test_predict_exits_2_when_no_image_can_be_read(checkpoint_path, images_dir, tmp_path, capsys):
    """It wrote an empty results list and exited 0 ("0 detections on 0 images")."""
    from hassod.cli import main

    out = tmp_path / "new" / "p.json"
    command = ["predict", str(images_dir / "broken.png"), "--checkpoint", str(checkpoint_path)]
    assert main([*command, "--out", str(out), "--device", "cpu", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "hassod predict: skipped broken.png:" in err
    assert "hassod predict: error: no image could be read (1 unreadable image" in err
    assert "not written" in err
    assert not (tmp_path / "new").exists()  # nor the work folder, nor the folder made for it


def test_a_one_pixel_image_predicts_without_a_pytorch_warning(checkpoint_path, tmp_path):
    """np.asarray of a 1 x 1 PIL image is read-only and its transpose needs no copy: PyTorch
    warned "The given NumPy array is not writable" (once a process: hence a fresh one)."""
    Image.fromarray(np.full((1, 1, 3), 200, dtype=np.uint8)).save(tmp_path / "dot.png")
    out = tmp_path / "dot.json"
    command = [sys.executable, "-m", "hassod", "predict", str(tmp_path / "dot.png")]
    command += ["--checkpoint", str(checkpoint_path), "--out", str(out), "--device", "cpu"]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [*command, "--quiet"], capture_output=True, text=True, env=environment, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert "not writable" not in done.stderr and "warning" not in done.stderr
    assert "on 1 image" in done.stdout and out.exists()
