"""Detectron2 checkpoints of the HASSOD detector (the authors' released model) in hassod:
every part of the converted model against a functional forward that reads Detectron2's
names (tests/detectron2_layout.py), the architecture read from the weights, Mean Teacher
pairs, file formats, refusals, and the predict / train entry points."""

from __future__ import annotations

import dataclasses
import json
import pickle
import shutil
import warnings

import numpy as np
import pytest
import torch
from detector_checks import tiny_config
from detectron2_layout import (
    PAPER,
    Architecture,
    detectron2_state,
    reference_backbone,
    reference_box_stage,
    reference_cascade,
    reference_mask_logits,
    reference_proposals,
    reference_rpn_head,
)

from hassod.detector import detectron2_weights as d2
from hassod.detector.checkpoint import detector_from_checkpoint
from hassod.detector.config import ModelConfig, paper_config
from hassod.detector.predict import Predictor

TINY = Architecture()


@pytest.fixture(scope="module")
def tiny_state():
    return detectron2_state(TINY, seed=0)


@pytest.fixture(scope="module")
def tiny_model(tiny_state):
    return d2.convert_detectron2_detector(tiny_state)


def _close(ours, theirs, tolerance=1e-4):
    scale = max(1.0, float(theirs.abs().max()))
    torch.testing.assert_close(ours, theirs, rtol=0, atol=tolerance * scale)


def test_architecture_is_read_from_the_weights(tiny_model):
    _, config = tiny_model
    model = config.model
    assert (model.backbone, model.backbone_width, model.norm) == ("resnet10", 16, "syncbn")
    assert (model.fpn_channels, model.box_head_dim) == (32, 64)
    assert (model.mask_head_channels, model.mask_head_convs) == (16, 2)
    assert model.anchor_generator == "detectron2"
    # what weights cannot say comes from the authors' config
    paper = paper_config()
    assert dataclasses.replace(config, model=paper.model) == paper
    assert model.cascade_box_weights == paper.model.cascade_box_weights


def test_the_papers_detector_converts_whole():
    """ResNet-50 / FPN 256 / 2 x 1024 box head / 4 x 256 mask head, as the authors train it."""
    state = detectron2_state(PAPER, seed=3)
    model, config = d2.convert_detectron2_detector(state)
    assert config.model == dataclasses.replace(ModelConfig(), norm="syncbn")
    image = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = list(model.backbone(image).values())
        theirs = reference_backbone(state, image)
    for level, (a, b) in enumerate(zip(ours, theirs)):
        assert a.shape == b.shape, level
        _close(a, b)


@pytest.mark.parametrize(("fpn_norm", "freeze_at"), [(True, 0), (False, 0), (True, 2)])
def test_backbone_equals_detectron2s(fpn_norm, freeze_at):
    """freeze_at 2 (Detectron2's default): the stem and res2 are FrozenBatchNorm2d, whose
    state has no num_batches_tracked, beside SyncBN layers."""
    arch = dataclasses.replace(TINY, fpn_norm=fpn_norm, freeze_at=freeze_at)
    state = detectron2_state(arch, seed=1)
    model, config = d2.convert_detectron2_detector(state)
    assert config.model.norm == ("syncbn" if fpn_norm else "frozen_bn")
    image = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = list(model.backbone(image).values())
        theirs = reference_backbone(state, image)
    assert len(ours) == len(theirs) == 5
    for a, b in zip(ours, theirs):
        _close(a, b)


def test_rpn_head_equals_detectron2s(tiny_state, tiny_model):
    model, _ = tiny_model
    generator = torch.Generator().manual_seed(2)
    maps = [torch.randn(1, 32, size, size + 2, generator=generator) for size in (16, 8, 4)]
    with torch.no_grad():
        logits, deltas = model.rpn.head(maps)
    ref_logits, ref_deltas = reference_rpn_head(tiny_state, maps)
    for ours, theirs in zip(logits + deltas, ref_logits + ref_deltas):
        _close(ours, theirs)


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_box_stages_equal_detectron2s(tiny_state, tiny_model, stage):
    """The object probability is Detectron2's first softmax column and hassod's second."""
    model, _ = tiny_model
    pooled = torch.randn(7, 32, 7, 7, generator=torch.Generator().manual_seed(stage))
    heads = model.roi_heads
    with torch.no_grad():
        logits, deltas, levels = heads.box_predictors[stage](heads.box_heads[stage](pooled))
    probability, ref_deltas, ref_levels = reference_box_stage(tiny_state, stage, pooled)
    _close(logits.softmax(dim=1)[:, 1], probability)
    _close(deltas, ref_deltas)
    _close(levels, ref_levels)
    assert not torch.allclose(logits.softmax(dim=1)[:, 0], probability)  # the swap matters


def test_mask_head_equals_detectron2s(tiny_state, tiny_model):
    model, _ = tiny_model
    pooled = torch.randn(5, 32, 14, 14, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ours = model.roi_heads.mask_head(pooled)
    _close(ours, reference_mask_logits(tiny_state, pooled))


@pytest.mark.parametrize("logit_scale", [1.0, 60.0])
def test_rpn_proposals_equal_detectron2s(logit_scale):
    """The same proposals in the same order; with large logits (x 60) many sigmoids round to
    1.0 in float32, where NMS on probabilities (torchvision's) would order them arbitrarily."""
    state = detectron2_state(TINY, seed=5)
    state["proposal_generator.rpn_head.objectness_logits.weight"] *= logit_scale
    model, config = d2.convert_detectron2_detector(state)
    image = torch.randint(0, 256, (3, 200, 264), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        batch = model.preprocess([image.to(torch.uint8)])
        features = model.backbone(batch.tensors)
        ours = model.rpn(batch, features)[0][0]
        maps = list(features.values())
        logits, deltas = reference_rpn_head(state, maps)
        anchors = model.rpn.anchor_generator(batch, maps)[0]
    theirs = reference_proposals(
        logits,
        deltas,
        anchors,
        batch.image_sizes[0],
        config.model.rpn_pre_nms_top_n_test,
        config.model.rpn_nms_thresh,
        config.model.rpn_post_nms_top_n_test,
    )
    if logit_scale > 1:
        assert (torch.cat([x.flatten() for x in logits]) > 17).sum() > 100
    assert len(theirs) > 50
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-3)


def test_cascade_detections_equal_the_authors(tiny_state, tiny_model):
    model, config = tiny_model
    image = torch.randint(0, 256, (3, 96, 128), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        batch = model.preprocess([image.to(torch.uint8)])
        features = model.backbone(batch.tensors)
        proposals = model.rpn(batch, features)[0]
        ours = model.roi_heads.detect(features, proposals, batch.image_sizes)[0]
        boxes, scores, levels = reference_cascade(
            tiny_state,
            lambda boxes: model.roi_heads.box_roi_pool(features, [boxes]),
            proposals[0],
            batch.image_sizes[0],
            config.model.cascade_box_weights,
            config.model.nms_thresh,
            config.model.detections_per_image,
        )
    assert len(scores) > 10
    _close(ours["boxes"], boxes)
    _close(ours["scores"], scores)
    assert torch.equal(ours["levels"], levels)


def test_predictions_without_area_after_clipping_are_dropped(tiny_state, tmp_path):
    """Detectron2's detector_postprocess: boxes clipped to the image, empty ones removed."""
    torch.save({"model": tiny_state}, tmp_path / "model.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        predictor = Predictor(tmp_path / "model.pth", device="cpu", min_size=64, max_size=100)
    boxes = torch.tensor(
        [[10.0, 10, 30, 30], [100, 5, 130, 30], [-20, 40, -1, 60], [90, 0, 120, 9]]
    )
    fake = {
        "boxes": boxes,
        "scores": torch.tensor([0.9, 0.8, 0.7, 0.6]),
        "levels": torch.tensor([0, 1, 2, 1]),
        "level_scores": torch.full((4, 3), 1 / 3),
        "mask_probs": torch.full((4, 1, 28, 28), 0.9),
    }
    predictor.model = lambda images: [fake]
    raw = predictor.raw(np.zeros((64, 100, 3), dtype=np.uint8))
    assert raw["boxes"].tolist() == [[10.0, 10, 30, 30], [90, 0, 100, 9]]
    assert raw["scores"].tolist() == pytest.approx([0.9, 0.6])
    assert raw["levels"].tolist() == [0, 1] and raw["mask_probs"].shape == (2, 1, 28, 28)
    results = predictor(np.zeros((64, 100, 3), dtype=np.uint8))
    assert [r["bbox"] for r in results] == [[10.0, 10.0, 20.0, 20.0], [90.0, 0.0, 10.0, 9.0]]


def test_loaded_detectron2_dicts_convert_too(tiny_state):
    model, config = detector_from_checkpoint({"model": tiny_state, "iteration": 5})
    assert config.model.backbone == "resnet10"


def test_stored_anchors_and_pixel_statistics_are_checked(tiny_state):
    from hassod.detector.anchors import detectron2_cell_anchors

    sizes, ratios = ModelConfig().anchor_sizes, ModelConfig().aspect_ratios
    anchors = {
        f"proposal_generator.anchor_generator.cell_anchors.{level}": detectron2_cell_anchors(
            (size,), ratios
        )
        for level, size in enumerate(sizes)
    }
    rgb = {
        "pixel_mean": torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1),
        "pixel_std": torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1),
    }
    _, config = d2.convert_detectron2_detector(tiny_state | anchors | rgb)
    assert config.model.pixel_mean == pytest.approx((123.675, 116.28, 103.53))
    other = dict(anchors)
    other["proposal_generator.anchor_generator.cell_anchors.0"] = detectron2_cell_anchors(
        (24,), ratios
    )
    with pytest.raises(d2.Detectron2WeightsError, match="anchors at P2"):
        d2.convert_detectron2_detector(tiny_state | other)
    bgr = {"pixel_mean": torch.tensor([103.53, 116.28, 123.675]).view(3, 1, 1)}
    with pytest.raises(d2.Detectron2WeightsError, match="BGR"):
        d2.convert_detectron2_detector(tiny_state | bgr)


def _pair(student_seed=0, teacher_seed=1):
    student, teacher = detectron2_state(TINY, student_seed), detectron2_state(TINY, teacher_seed)
    return {f"modelStudent.{k}": v for k, v in student.items()} | {
        f"modelTeacher.{k}": v for k, v in teacher.items()
    }


def test_mean_teacher_pairs_give_the_chosen_network():
    pair = _pair()
    key = "roi_heads.box_predictors.0.bbox_pred.weight"
    expected = {
        "student": detectron2_state(TINY, 0)["roi_heads.box_predictor.0.bbox_pred.weight"],
        "teacher": detectron2_state(TINY, 1)["roi_heads.box_predictor.0.bbox_pred.weight"],
    }
    for weights, source in (("student", "student"), ("teacher", "teacher"), ("auto", "teacher")):
        model, _ = d2.convert_detectron2_detector(pair, weights)
        assert torch.equal(model.state_dict()[key], expected[source]), weights


def test_a_single_network_has_no_teacher(tiny_state):
    d2.convert_detectron2_detector(tiny_state, "auto")
    with pytest.raises(d2.Detectron2WeightsError, match="one network"):
        d2.convert_detectron2_detector(tiny_state, "teacher")
    with pytest.raises(ValueError, match="weights must be"):
        d2.convert_detectron2_detector(tiny_state, "ema")


@pytest.mark.parametrize("layout", ["pth", "pth_bare", "pth_pair", "pkl"])
def test_checkpoint_files_load_for_prediction(tmp_path, tiny_state, tiny_model, layout):
    extra = {"__author__": "Detectron2", "iteration": 12}
    if layout == "pth":
        path = tmp_path / "model.pth"
        torch.save({"model": tiny_state, **extra}, path)
    elif layout == "pth_bare":
        path = tmp_path / "model.pth"
        torch.save(tiny_state, path)
    elif layout == "pth_pair":
        path = tmp_path / "model_ts.pth"
        torch.save({"model": _pair(student_seed=0)}, path)
    else:  # Detectron2's NumPy pickle
        path = tmp_path / "model.pkl"
        arrays = {k: v.numpy() for k, v in tiny_state.items()}
        path.write_bytes(pickle.dumps({"model": arrays, **extra}))
    model, config = detector_from_checkpoint(path)
    expected, _ = tiny_model
    assert config.model.backbone == "resnet10"
    for name, value in expected.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    image = np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        detections = Predictor(path, device="cpu", min_size=64, max_size=96)(image)
    assert detections and all(d["hier_level"] in (0, 1, 2) for d in detections)
    assert all(d["segmentation"]["size"] == [70, 90] for d in detections)


def test_predict_cli_runs_a_detectron2_checkpoint(tmp_path, tiny_state):
    from PIL import Image

    from hassod.cli import main

    torch.save({"model": tiny_state}, tmp_path / "model.pth")
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (80, 100, 3), dtype=np.uint8)).save(images / "a.png")
    out = tmp_path / "preds.json"
    code = main(
        [
            "predict", str(images), "--checkpoint", str(tmp_path / "model.pth"),
            "--out", str(out), "--device", "cpu", "--quiet", "--max-detections", "5",
        ]
    )  # fmt: skip
    assert code == 0
    results = json.loads(out.read_text())
    assert 0 < len(results) <= 5 and {r["category_id"] for r in results} == {1}


def test_training_can_start_from_a_detectron2_checkpoint(tmp_path, tiny_state):
    from hassod.detector.data import load_pseudo_labels
    from hassod.detector.synthetic import write_dataset
    from hassod.detector.training import Trainer

    torch.save({"model": tiny_state}, tmp_path / "model.pth")
    labels = load_pseudo_labels(*write_dataset(tmp_path / "data", count=2, size=96, seed=3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = Trainer(
            tiny_config(iterations=1),
            labels,
            tmp_path / "run",
            progress=False,
            device="cpu",
            init_from=tmp_path / "model.pth",
        )
    expected, _ = d2.convert_detectron2_detector(tiny_state)
    key = "roi_heads.box_predictors.2.level_score.weight"
    assert torch.equal(trainer.model.state_dict()[key].cpu(), expected.state_dict()[key])
    assert trainer.config.model.norm == "syncbn" and trainer.config.iterations == 1


def _without(state, pattern):
    return {k: v for k, v in state.items() if pattern not in k}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: _without(s, "level_predictor"), "no level head"),
        (
            lambda s: (
                s
                | {
                    f"roi_heads.box_predictor.{k}.cls_score.weight": torch.zeros(81, 64)
                    for k in range(3)
                }
            ),
            "80 object classes",
        ),
        (
            lambda s: s | {"roi_heads.box_predictor.0.bbox_pred.weight": torch.zeros(8, 64)},
            "not class-agnostic",
        ),
        (
            lambda s: s | {"roi_heads.box_head.0.conv1.weight": torch.zeros(32, 32, 3, 3)},
            "unsupported box head",
        ),
        (lambda s: s | {"roi_heads.keypoint_head.x.weight": torch.zeros(1)}, "unexpected tensor"),
        (lambda s: _without(s, "roi_heads.mask_head.deconv.bias"), "1 missing"),
        (
            lambda s: s | {"backbone.fpn_output3.weight": torch.zeros(32, 32, 1, 1)},
            "backbone.fpn_output3.weight: \\(32, 32, 1, 1\\) vs \\(32, 32, 3, 3\\)",
        ),
        (lambda s: _without(s, "res3.0"), "unsupported ResNet"),
    ],
)
def test_checkpoints_this_model_cannot_hold_are_refused(tiny_state, edit, message):
    with pytest.raises(d2.Detectron2WeightsError, match=message):
        d2.convert_detectron2_detector(edit(dict(tiny_state)))


def test_other_files_are_named_in_the_error(tmp_path):
    torch.save({"model": {"conv1.weight": torch.zeros(1)}}, tmp_path / "resnet.pth")
    with pytest.raises(ValueError, match="nor a Detectron2 checkpoint of the HASSOD detector"):
        detector_from_checkpoint(tmp_path / "resnet.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        detector_from_checkpoint(tmp_path / "junk.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="holds a list"):
        detector_from_checkpoint(tmp_path / "list.pth")


def _random_model(config):
    """A HassodDetector with every parameter and BatchNorm statistic random."""
    from hassod.detector.model import HassodDetector

    torch.manual_seed(7)
    model = HassodDetector(config, config.norm)
    with torch.no_grad():
        for name, value in model.state_dict().items():
            if value.is_floating_point():
                value.copy_(torch.rand_like(value) + 0.5 if "running_var" in name else value)
                if "running_mean" in name or name.endswith(".bias"):
                    value.normal_(0, 0.1)
    return model.eval()


@pytest.mark.parametrize("norm", ["syncbn", "frozen_bn"])
def test_exported_weights_are_detectron2s_network(norm):
    """Export, then the functional Detectron2 forward on the exported names equals the model;
    importing the export gives the model back."""
    config = dataclasses.replace(tiny_config().model, norm=norm)
    model = _random_model(config)
    exported = d2.export_detectron2(model)
    image = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        for a, b in zip(model.backbone(image).values(), reference_backbone(exported, image)):
            _close(a, b)
        pooled = torch.randn(4, config.fpn_channels, 7, 7)
        logits, _, levels = model.roi_heads.box_predictors[1](model.roi_heads.box_heads[1](pooled))
        probability, _, ref_levels = reference_box_stage(exported, 1, pooled)
        _close(logits.softmax(dim=1)[:, 1], probability)
        _close(levels, ref_levels)
    back, back_config = d2.convert_detectron2_detector(exported)
    architecture = ("backbone", "backbone_width", "norm", "fpn_channels", "box_head_dim")
    architecture += ("mask_head_channels", "mask_head_convs", "num_levels")
    for field in architecture:  # the rest is the authors' config
        assert getattr(back_config.model, field) == getattr(config, field), field
    original = model.state_dict()
    assert all(torch.equal(value, original[name]) for name, value in back.state_dict().items())


def test_every_layer_has_one_detectron2_name():
    from hassod.detector.model import HassodDetector

    for norm in ("syncbn", "frozen_bn", "gn"):
        config = dataclasses.replace(tiny_config().model, norm=norm)
        names = list(HassodDetector(config, norm).state_dict())
        theirs = [d2.detectron2_name(name) for name in names]
        assert len(set(theirs)) == len(names)
        assert [d2.hassod_name(name) for name in theirs] == names


def test_export_command_writes_what_detectron2_loads(tmp_path, capsys, monkeypatch):
    from hassod.cli import main
    from hassod.detector.checkpoint import save_checkpoint

    config = tiny_config()
    model_config = dataclasses.replace(config.model, backbone="resnet18", backbone_width=64)
    config = dataclasses.replace(config, model=dataclasses.replace(model_config, norm="syncbn"))
    model = _random_model(config.model)
    save_checkpoint(tmp_path / "run.pth", config=config, iteration=4, model=model)
    assert main(["export-detectron2", str(tmp_path / "run.pth"), str(tmp_path / "d2.pth")]) == 0
    out = capsys.readouterr().out
    assert "MODEL.RESNETS.DEPTH 18" in out and 'MODEL.FPN.NORM "SyncBN"' in out
    # the tiny preset's anchors differ from the authors' config: named, as Detectron2 reads them
    assert 'MODEL.ANCHOR_GENERATOR.SIZES "[[8], [16], [32], [64], [128]]"' in out
    assert "MODEL.PIXEL_MEAN" not in out and "MODEL.ROI_BOX_CASCADE_HEAD" not in out
    saved = torch.load(tmp_path / "d2.pth", weights_only=True)
    assert "backbone.bottom_up.res2.0.conv1.weight" in saved["model"]
    back, _ = detector_from_checkpoint(tmp_path / "d2.pth")
    original = model.state_dict()
    assert all(torch.equal(value, original[name]) for name, value in back.state_dict().items())
    # its own export (.pth or .pkl) is replaced; the input checkpoint, another run's checkpoint
    # or any other file is not
    export = ["export-detectron2", str(tmp_path / "run.pth")]
    assert main([*export, str(tmp_path / "d2.pth")]) == 0
    assert (
        main([*export, str(tmp_path / "d2.pkl")]) == 0
        and main([*export, str(tmp_path / "d2.pkl")]) == 0
    )
    before = (tmp_path / "run.pth").read_bytes()
    shutil.copy(tmp_path / "run.pth", tmp_path / "other_run.pth")
    (tmp_path / "notes.json").write_text("{}")
    for target in ("run.pth", "other_run.pth", "notes.json"):
        with pytest.raises(SystemExit) as exit_info:
            main([*export, str(tmp_path / target)])
        assert exit_info.value.code == 2
    assert (tmp_path / "run.pth").read_bytes() == before
    assert (tmp_path / "notes.json").read_text() == "{}"
    # a disk that fills up while writing: the one-line run-time error of every command
    import errno

    def no_room(path, state, config=None):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(d2, "write_detectron2_file", no_room)
    assert main([*export, str(tmp_path / "full.pth")]) == 1
    assert "hassod export-detectron2: error: cannot write: [Errno 28]" in capsys.readouterr().err
    small = dataclasses.replace(config, model=tiny_config().model)
    save_checkpoint(
        tmp_path / "small.pth", config=small, iteration=4, model=_random_model(small.model)
    )
    assert main(["export-detectron2", str(tmp_path / "small.pth"), str(tmp_path / "x.pth")]) == 2
    assert "no ResNet-10" in capsys.readouterr().err
    assert not (tmp_path / "x.pth").exists()


def test_export_options_give_detectron2_the_bottleneck_width():
    """Detectron2 builds res2's bottleneck channels as NUM_GROUPS x WIDTH_PER_GROUP (64 by
    default): a narrower hassod ResNet-50 needs WIDTH_PER_GROUP, else its layers mismatch and
    Detectron2 leaves them random."""
    narrow = ModelConfig(backbone="resnet50", backbone_width=32, norm="syncbn")
    options = d2.detectron2_options(narrow)
    assert "MODEL.RESNETS.WIDTH_PER_GROUP 32" in options
    assert "MODEL.RESNETS.RES2_OUT_CHANNELS 128" in options
    basic = d2.detectron2_options(ModelConfig(backbone="resnet18", norm="frozen_bn"))
    assert not any("WIDTH_PER_GROUP" in option for option in basic)
    assert 'MODEL.RESNETS.NORM "FrozenBN"' in basic and 'MODEL.FPN.NORM ""' in basic


class _Payload:
    """Stands in for code a pickle could run: loading it must be refused, not executed."""

    ran = False

    def __reduce__(self):
        return (_mark_ran, ())


def _mark_ran():
    _Payload.ran = True
    return {}


def test_pickles_naming_code_are_refused_unrun(tmp_path, tiny_state):
    from hassod.detector.backbone import read_weight_file

    evil = tmp_path / "model.pkl"
    evil.write_bytes(pickle.dumps({"model": {"x": _Payload()}}))
    with pytest.raises(ValueError, match="refusing .*_mark_ran"):
        detector_from_checkpoint(evil)
    with pytest.raises(ValueError, match="refusing"):
        read_weight_file(evil)
    assert not _Payload.ran
    good = tmp_path / "ok.pkl"  # Detectron2's format: NumPy arrays (and an OrderedDict)
    from collections import OrderedDict

    arrays = OrderedDict((k, v.numpy()) for k, v in tiny_state.items())
    good.write_bytes(pickle.dumps({"model": arrays, "__author__": "x"}, protocol=2))
    assert detector_from_checkpoint(good)[1].model.backbone == "resnet10"


def test_export_to_pkl_is_detectron2s_numpy_pickle(tmp_path, tiny_state):
    model, _ = d2.convert_detectron2_detector(tiny_state)
    state = d2.export_detectron2(model)
    d2.write_detectron2_file(tmp_path / "out.pkl", state)
    with (tmp_path / "out.pkl").open("rb") as handle:  # what Detectron2 does with a .pkl
        raw = pickle.load(handle, encoding="latin1")
    assert raw["__author__"] == "hassod" and isinstance(
        raw["model"]["roi_heads.box_predictor.0.cls_score.weight"], np.ndarray
    )
    back, _ = detector_from_checkpoint(tmp_path / "out.pkl")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in back.state_dict().items())
    # a torch.save file named .pkl loads too (by content, not by suffix)
    torch.save({"model": tiny_state}, tmp_path / "torch_saved.pkl")
    assert detector_from_checkpoint(tmp_path / "torch_saved.pkl")[1].model.backbone == "resnet10"


def test_export_options_name_the_runs_test_size():
    config = tiny_config()  # cpu-small: 96 / 96 here
    options = d2.detectron2_options(
        dataclasses.replace(config.model, backbone="resnet18", backbone_width=64, norm="bn"),
        config.data,
    )
    assert "INPUT.MIN_SIZE_TEST 96" in options and "INPUT.MAX_SIZE_TEST 96" in options
    paper = d2.detectron2_options(ModelConfig(norm="syncbn"), paper_config().data)
    assert not any("SIZE_TEST" in option for option in paper)


def test_choosing_a_network_a_pair_lacks_names_the_other(tiny_state):
    teacher_only = {f"modelTeacher.{k}": v for k, v in tiny_state.items()}
    with pytest.raises(d2.Detectron2WeightsError, match="--weights teacher"):
        d2.convert_detectron2_detector(teacher_only, "student")


def test_predict_refuses_a_path_as_weights_and_an_unusable_out_before_running(tmp_path, capsys):
    from hassod.cli import main

    with pytest.raises(SystemExit):
        main(
            ["predict", str(tmp_path), "--weights", "model.pth", "--checkpoint", "x", "--out", "o"]
        )
    assert "the model file goes to --checkpoint" in capsys.readouterr().err
    (tmp_path / "folder").mkdir()
    with pytest.raises(SystemExit):
        main(["predict", str(tmp_path), "--checkpoint", "x.pth", "--out", str(tmp_path / "folder")])
    assert "is a folder; give a file name" in capsys.readouterr().err


def test_backbone_weights_from_a_whole_detectron2_detector(tmp_path):
    """The ResNet of a detector checkpoint (CutLER's, say) is under backbone.bottom_up."""
    from hassod.detector.backbone import build_backbone, load_backbone_weights

    state = detectron2_state(TINY, seed=4)
    torch.save({"model": state}, tmp_path / "cutler_like.pth")
    backbone = build_backbone(tiny_config().model, "frozen_bn")
    report = load_backbone_weights(backbone, tmp_path / "cutler_like.pth")
    assert report["loaded"] > 0
    key = "backbone.bottom_up.res3.0.conv1.weight"
    assert torch.equal(backbone.body.state_dict()["layer2.0.conv1.weight"], state[key])


def test_dino_training_checkpoints_with_their_args_load_as_backbone_weights(tmp_path):
    """DINO's main_dino.py saves its argparse.Namespace beside the weights."""
    import argparse

    from hassod.detector.backbone import build_backbone, load_backbone_weights

    body = build_backbone(tiny_config().model, "frozen_bn").body.state_dict()
    teacher = {f"module.backbone.{k}": v for k, v in body.items() if v.is_floating_point()}
    torch.save(
        {"teacher": teacher, "args": argparse.Namespace(arch="resnet50")}, tmp_path / "d.pth"
    )
    backbone = build_backbone(tiny_config().model, "frozen_bn")
    assert load_backbone_weights(backbone, tmp_path / "d.pth")["loaded"] > 0


def test_pkl_files_are_told_apart_by_their_first_bytes(tmp_path, tiny_state):
    """A NumPy pickle whose last array happens to hold a zip signature is still a pickle."""
    from collections import OrderedDict

    arrays = OrderedDict((k, v.numpy()) for k, v in tiny_state.items())
    arrays["zzz_tail"] = np.frombuffer(b"PK\x05\x06" + bytes(18), dtype=np.uint8).copy()
    path = tmp_path / "tricky.pkl"
    path.write_bytes(pickle.dumps({"model": arrays}, protocol=4))
    with pytest.raises(d2.Detectron2WeightsError, match="unexpected tensor 'zzz_tail'"):
        detector_from_checkpoint(path)  # read as a pickle: only the extra entry is refused


def test_output_checks_create_no_folders(tmp_path, capsys):
    from hassod.cli import main

    with pytest.raises(SystemExit):
        main(["predict", str(tmp_path), "--checkpoint", "x.pth", "--levels", "bogus",
              "--out", str(tmp_path / "new" / "deep" / "p.json")])  # fmt: skip
    assert not (tmp_path / "new").exists()
    assert (
        main(["sa1b-to-coco", str(tmp_path / "nodir"), "--out", str(tmp_path / "n4" / "g.json")])
        == 2
    )
    assert not (tmp_path / "n4").exists()
    capsys.readouterr()


def test_an_export_reads_back_with_the_runs_own_settings(tmp_path):
    """Reading an export used to assume the authors' settings (anchors 32-512, RPN top-k
    1000, test size 800) whatever the run trained with; the file now carries them."""
    from hassod.detector.checkpoint import save_checkpoint

    config = tiny_config()  # anchors 8-128, RPN top-k 100, test size 96
    model_config = dataclasses.replace(
        config.model, backbone="resnet18", backbone_width=64, norm="syncbn"
    )
    config = dataclasses.replace(config, model=model_config)
    model = _random_model(config.model)
    save_checkpoint(tmp_path / "run.pth", config=config, iteration=4, model=model)
    image = np.random.default_rng(3).integers(0, 255, (80, 120, 3), dtype=np.uint8)
    expected = Predictor(tmp_path / "run.pth", device="cpu").raw(image)
    assert len(expected["boxes"]) > 0
    for suffix in ("pth", "pkl"):
        path = tmp_path / f"d2.{suffix}"
        d2.write_detectron2_file(path, d2.export_detectron2(model), config)
        back, back_config = detector_from_checkpoint(path)
        assert back_config == config
        got = Predictor(path, device="cpu").raw(image)
        for key in ("boxes", "scores", "levels", "level_scores"):
            assert torch.equal(got[key], expected[key]), (suffix, key)
    # Detectron2's checkpointer returns the extra key unread: the weights are all it loads
    raw = torch.load(tmp_path / "d2.pth", weights_only=True)
    assert set(raw) == {"model", "__author__", d2.SETTINGS_KEY}
    # a file whose weights no longer match its settings is named, not half-loaded
    other = dataclasses.replace(config.model, fpn_channels=64)
    d2.write_detectron2_file(
        tmp_path / "bad.pth",
        d2.export_detectron2(model),
        dataclasses.replace(config, model=other),
    )
    with pytest.raises(d2.Detectron2WeightsError, match="fpn_channels 64 vs 32"):
        detector_from_checkpoint(tmp_path / "bad.pth")


def test_export_options_cover_every_model_setting():
    """Each ModelConfig setting is either given to Detectron2 where it differs from the
    authors' config or deliberately handled elsewhere (a new setting must be placed)."""
    fields = {field.name for field in dataclasses.fields(ModelConfig)}
    assert fields == set(d2._DIFFERING_OPTIONS) | set(d2._OPTIONS_ELSEWHERE)
    config = tiny_config()
    model = dataclasses.replace(
        config.model,
        backbone="resnet18",
        backbone_width=64,
        fpn_channels=64,
        cascade_ious=(0.4, 0.6, 0.7),
    )
    options = d2.detectron2_options(model, config.data)
    for expected in (
        "MODEL.RPN.PRE_NMS_TOPK_TEST 100",
        "MODEL.RPN.POST_NMS_TOPK_TEST 100",
        "MODEL.RPN.PRE_NMS_TOPK_TRAIN 200",
        "MODEL.RPN.POST_NMS_TOPK_TRAIN 100",
        "MODEL.RPN.BATCH_SIZE_PER_IMAGE 64",
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE 64",
        'MODEL.ROI_BOX_CASCADE_HEAD.IOUS "[0.4, 0.6, 0.7]"',
        'MODEL.ROI_HEADS.IOU_THRESHOLDS "[0.4]"',
    ):
        assert expected in options, expected
    paper = d2.detectron2_options(ModelConfig(norm="syncbn"), paper_config().data)
    assert not any("TOPK" in option or "IOU" in option for option in paper)


def test_export_refusal_lists_every_obstacle_with_the_settings_that_fix_them():
    """cpu-small used to be refused one obstacle per attempt, without naming the layer or
    the setting; the refusal now lists all and gives a --config JSON that clears them."""
    from hassod.detector.config import config_from_dict, cpu_small_config

    small = cpu_small_config()
    with pytest.raises(d2.Detectron2WeightsError) as refused:
        d2.detectron2_options(small.model, small.data)
    message = str(refused.value)
    for part in (
        "no ResNet-10",
        "only at width 64",
        "backbone_width is 16",
        "the FPN's layers (fpn_lateral2-5, fpn_output2-5) have 32 channels (fpn_channels)",
    ):
        assert part in message, part
    fix = message.split("--config JSON: ")[1].split(" (README")[0]
    assert json.loads(fix) == {
        "model": {"backbone": "resnet18", "backbone_width": 64, "fpn_channels": 64}
    }
    fixed = config_from_dict(json.loads(fix), base=small)
    assert d2.export_blockers(fixed.model) == []
    d2.detectron2_options(fixed.model, fixed.data)
    padded = dataclasses.replace(fixed.model, size_divisible=64)
    with pytest.raises(d2.Detectron2WeightsError, match='pads to 64.*"size_divisible": 32'):
        d2.detectron2_options(padded)
    with pytest.raises(d2.Detectron2WeightsError, match="fewer: .*backbone.fpn_lateral2.norm"):
        d2.export_detectron2(_random_model(small.model))


def test_the_readmes_exportable_cpu_model_trains_exports_and_reads_back(tmp_path, capsys):
    from pathlib import Path

    from hassod.cli import main
    from hassod.detector.synthetic import write_dataset

    readme = Path(__file__).parent.parent / "README.md"
    settings = '{"model": {"backbone": "resnet18", "backbone_width": 64, "fpn_channels": 64}}'
    if readme.is_file():  # tests run from a source checkout (not beside an installed package)
        assert settings in readme.read_text(encoding="utf-8")
    (tmp_path / "small.json").write_text(settings)
    pseudo, images = write_dataset(tmp_path / "data", count=2, size=96, seed=1)
    common = ["--device", "cpu", "--quiet"]
    assert (
        main(
            ["train", str(pseudo), str(images), "--preset", "cpu-small", "--config"]
            + [str(tmp_path / "small.json"), "--iterations", "2", "--mean-teacher-iterations"]
            + ["0", "--out", str(tmp_path / "run"), *common]
        )
        == 0
    )
    final = tmp_path / "run" / "checkpoints" / "model_final.pth"
    assert main(["export-detectron2", str(final), str(tmp_path / "d2.pth")]) == 0
    for checkpoint, out in ((final, "a.json"), (tmp_path / "d2.pth", "b.json")):
        predict = ["predict", str(images), "--checkpoint", str(checkpoint)]
        assert main([*predict, "--out", str(tmp_path / out), *common]) == 0
    capsys.readouterr()
    original = json.loads((tmp_path / "a.json").read_text())
    assert original and json.loads((tmp_path / "b.json").read_text()) == original
