"""Detector model: losses and their hand computations (level focal loss, DropLoss, box and
class losses), cascade matching, stage-averaged inference, backbone weight conversion."""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pytest
import torch
from detector_checks import square_target, tiny_config

from hassod.detector import losses as L
from hassod.detector.backbone import build_backbone, convert_to_torchvision, load_backbone_weights
from hassod.detector.cascade import CascadeRoIHeads
from hassod.detector.config import ModelConfig, paper_config
from hassod.detector.model import HassodDetector, build_detector

LOSS_KEYS = {
    "loss_rpn_cls",
    "loss_rpn_box",
    *(f"loss_{kind}_stage{k}" for kind in ("cls", "box", "level") for k in range(3)),
    "loss_mask",
}


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_detector(tiny_config().model)


def _images(count=2, size=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=generator)
        for _ in range(count)
    ]


def test_paper_defaults():
    config = paper_config()
    assert config.model.cascade_ious == (0.5, 0.6, 0.7)
    assert config.model.cascade_box_weights == ((10, 10, 5, 5), (20, 20, 10, 10), (30, 30, 15, 15))
    assert config.model.detections_per_image == 1000
    assert (config.iterations, config.batch_size, config.base_lr, config.weight_decay) == (
        40000,
        16,
        0.01,
        5e-5,
    )
    assert (
        config.mean_teacher.ema_keep_rate == 0.9996 and config.mean_teacher.score_threshold == 0.7
    )
    assert config.mean_teacher.cover == 0.75
    with pytest.raises(ValueError, match="backbone"):
        ModelConfig(backbone="vgg")


def test_training_losses_are_finite_scalars_and_backpropagate(tiny_model):
    tiny_model.train()
    losses = tiny_model(_images(), [square_target(), square_target()])
    assert set(losses) == LOSS_KEYS
    for name, value in losses.items():
        assert value.dim() == 0 and torch.isfinite(value), name
    sum(losses.values()).backward()
    level_grad = tiny_model.roi_heads.box_predictors[2].level_score.weight.grad
    assert level_grad is not None and level_grad.abs().sum() > 0
    assert tiny_model.roi_heads.mask_head.predictor.mask_fcn_logits.weight.grad.abs().sum() > 0
    tiny_model.zero_grad(set_to_none=True)


def test_image_without_pseudo_labels_trains(tiny_model):
    tiny_model.train()
    empty = {
        "boxes": torch.zeros((0, 4)),
        "levels": torch.zeros(0, dtype=torch.int64),
        "masks": torch.zeros((0, 64, 64), dtype=torch.uint8),
    }
    losses = tiny_model(_images(), [empty, square_target()])
    assert all(torch.isfinite(v) for v in losses.values())
    losses = tiny_model(_images(1), [empty])
    assert all(torch.isfinite(v) for v in losses.values())


def test_targets_without_masks_add_no_mask_loss(tiny_model):
    tiny_model.train()
    target = {key: value for key, value in square_target().items() if key != "masks"}
    assert "loss_mask" not in tiny_model(_images(1), [target])


def test_inference_outputs(tiny_model):
    tiny_model.eval()
    with torch.no_grad():
        detections = tiny_model(_images(2, size=80))
    assert len(detections) == 2
    for detection in detections:
        count = detection["boxes"].shape[0]
        assert 0 < count <= tiny_model.config.detections_per_image
        assert detection["scores"].shape == (count,)
        assert detection["level_scores"].shape == (count, 3)
        assert detection["mask_probs"].shape == (count, 1, 28, 28)
        assert torch.allclose(detection["level_scores"].sum(dim=1), torch.ones(count), atol=1e-5)
        assert torch.equal(detection["levels"], detection["level_scores"].argmax(dim=1))
        assert (detection["scores"][:-1] >= detection["scores"][1:]).all()
        boxes = detection["boxes"]
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 80).all()


def test_detections_per_image_cap():
    config = dataclasses.replace(tiny_config().model, detections_per_image=5)
    model = HassodDetector(config, "gn").eval()
    with torch.no_grad():
        assert all(d["boxes"].shape[0] <= 5 for d in model(_images(2)))


class _FixedStage(torch.nn.Module):
    """A stage predictor returning fixed class and level logits and zero box deltas."""

    def __init__(self, foreground_logit: float, level_logits):
        super().__init__()
        self.foreground_logit = foreground_logit
        self.level_logits = torch.tensor(level_logits)

    def forward(self, features):
        rows = features.shape[0]
        logits = torch.zeros(rows, 2)
        logits[:, 1] = self.foreground_logit
        return logits, torch.zeros(rows, 4), self.level_logits.expand(rows, 3)


def test_inference_averages_stage_scores_and_level_probabilities():
    config = dataclasses.replace(tiny_config().model, nms_thresh=0.99)
    heads = CascadeRoIHeads(config, config.fpn_channels).eval()
    stage_logits = [0.0, 1.0, -2.0]
    stage_levels = [[2.0, 0.0, 0.0], [0.0, 0.0, 3.0], [1.0, 1.0, 1.0]]
    heads.box_predictors = torch.nn.ModuleList(
        [_FixedStage(f, lv) for f, lv in zip(stage_logits, stage_levels)]
    )
    features = {
        name: torch.randn(1, config.fpn_channels, 64 // 2 ** (i + 2), 64 // 2 ** (i + 2))
        for i, name in enumerate("0123")
    }
    proposals = [torch.tensor([[0.0, 0.0, 20.0, 20.0], [30.0, 30.0, 60.0, 50.0]])]
    detection = heads(features, proposals, [(64, 64)])[0]
    expected_score = np.mean([1 / (1 + math.exp(-f)) for f in stage_logits])
    expected_levels = np.mean(
        [np.exp(lv) / np.exp(lv).sum() for lv in map(np.array, stage_levels)], axis=0
    )
    assert detection["scores"].tolist() == pytest.approx([expected_score] * 2, rel=1e-6)
    assert detection["level_scores"][0].tolist() == pytest.approx(
        expected_levels.tolist(), rel=1e-6
    )
    assert detection["levels"].tolist() == [int(expected_levels.argmax())] * 2
    assert torch.allclose(detection["boxes"].sort(dim=0).values, proposals[0].sort(dim=0).values)


def _random_features(config, size=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {
        name: torch.randn(
            1, config.fpn_channels, size // 2 ** (i + 2), size // 2 ** (i + 2), generator=generator
        )
        for i, name in enumerate("0123")
    }


def test_level_loss_sees_exactly_the_foreground_proposals(monkeypatch):
    """The level head's focal loss runs over foreground proposals only (DESIGN.md 5), in
    every stage: as many rows as the stage's classification labels have ones."""
    config = tiny_config().model
    heads = CascadeRoIHeads(config, config.fpn_channels).train()
    seen_labels, seen_levels = [], []
    classification, level_loss = L.classification_loss, L.level_focal_loss

    def record_labels(logits, labels, weights=None):
        seen_labels.append(labels.clone())
        return classification(logits, labels, weights)

    def record_levels(logits, targets, alpha, gamma):
        seen_levels.append((logits.shape[0], targets.clone()))
        return level_loss(logits, targets, alpha, gamma)

    monkeypatch.setattr(L, "classification_loss", record_labels)
    monkeypatch.setattr(L, "level_focal_loss", record_levels)
    target = square_target(64)
    proposals = [torch.tensor([[0.0, 0.0, 30.0, 30.0], [40.0, 0.0, 60.0, 20.0]])]
    torch.manual_seed(0)
    heads(_random_features(config), proposals, [(64, 64)], [target])
    assert len(seen_labels) == len(seen_levels) == heads.num_stages
    for labels, (rows, levels) in zip(seen_labels, seen_levels):
        foreground = int((labels > 0).sum())
        assert 0 < foreground < len(labels)  # both kinds present: the filter matters
        assert rows == foreground == len(levels)
        assert set(levels.tolist()) <= set(target["levels"].tolist())


def test_cascade_stages_scale_the_gradient_into_shared_features_by_one_over_stages():
    """Each stage's gradient into the shared features is scaled by 1 / stages (Detectron2's
    cascade), while its outputs are unchanged."""
    config = tiny_config().model
    heads = CascadeRoIHeads(config, config.fpn_channels).train()
    boxes = [torch.tensor([[0.0, 0.0, 30.0, 30.0], [10.0, 20.0, 50.0, 60.0]])]
    gradients, outputs = [], []
    for scale in (True, False):
        features = {
            name: value.requires_grad_() for name, value in _random_features(config).items()
        }
        class_logits, deltas, levels = heads._run_stage(0, features, boxes, [(64, 64)], scale)
        (class_logits.sum() + deltas.sum() + levels.sum()).backward()
        gradients.append(torch.cat([f.grad.flatten() for f in features.values()]))
        outputs.append(class_logits.detach())
    assert torch.equal(outputs[0], outputs[1])
    assert gradients[1].abs().max() > 0
    torch.testing.assert_close(gradients[0] * heads.num_stages, gradients[1])


def test_next_stage_proposals_are_clipped_and_empty_boxes_dropped():
    """Between training stages the regressed boxes are clipped to the image and boxes left
    without area dropped (Detectron2's ``clip`` then ``nonempty``)."""
    boxes = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # inside: kept
            [5.0, 5.0, 5.0, 20.0],  # zero width: dropped
            [-10.0, -10.0, -1.0, 30.0],  # left of the image: zero width once clipped
            [60.0, 50.0, 80.0, 90.0],  # partly outside: clipped to [60, 50, 64, 64]
            [3.0, 70.0, 9.0, 80.0],  # below the image: zero height once clipped
        ]
    )
    (result,) = CascadeRoIHeads._next_proposals([boxes], [(64, 64)])
    assert result.tolist() == [[0.0, 0.0, 10.0, 10.0], [60.0, 50.0, 64.0, 64.0]]


def test_cascade_stages_match_at_rising_iou():
    config = tiny_config().model
    heads = CascadeRoIHeads(config, config.fpn_channels)
    assert [coder.weights for coder in heads.box_coders] == [
        (10, 10, 5, 5),
        (20, 20, 10, 10),
        (30, 30, 15, 15),
    ]
    gt = torch.tensor([[0.0, 0.0, 100.0, 100.0]])
    # IoUs with gt: 0.55, 0.65, 0.75, 0.45
    proposals = [
        torch.tensor(
            [
                [0.0, 0.0, 100.0, 55.0],
                [0.0, 0.0, 100.0, 65.0],
                [0.0, 0.0, 100.0, 75.0],
                [0.0, 0.0, 100.0, 45.0],
            ]
        )
    ]
    targets = [{"boxes": gt, "levels": torch.tensor([2])}]
    labels = [heads.match(proposals, targets, stage)[1][0].tolist() for stage in range(3)]
    assert labels == [[1, 1, 1, 0], [0, 1, 1, 0], [0, 0, 1, 0]]


def test_a_zero_area_target_matches_nothing_not_even_itself():
    """Detectron2's pairwise_iou gives 0 where the union is empty; torchvision's box_iou gives
    NaN, which the matcher took for a match (a foreground proposal with NaN targets)."""
    config = tiny_config().model
    heads = CascadeRoIHeads(config, config.fpn_channels)
    gt = torch.tensor([[0.0, 0.0, 100.0, 100.0], [50.0, 20.0, 50.0, 20.0]])
    proposals = [torch.cat([torch.tensor([[0.0, 0.0, 100.0, 90.0]]), gt])]
    targets = [{"boxes": gt, "levels": torch.tensor([0, 0])}]
    for stage in range(3):
        matched, labels = heads.match(proposals, targets, stage)
        assert labels[0].tolist() == [1, 1, 0] and matched[0].tolist()[:2] == [0, 0]


def test_level_focal_loss_matches_hand_computation():
    logits = torch.tensor([[2.0, -1.0, 0.5], [-0.3, 0.8, -2.0]])
    levels = torch.tensor([0, 2])
    alpha, gamma = 0.25, 2.0
    total = 0.0
    for row, level in zip(logits.tolist(), levels.tolist()):
        for column, x in enumerate(row):
            y = 1.0 if column == level else 0.0
            p = 1.0 / (1.0 + math.exp(-x))
            p_t = p if y else 1.0 - p
            alpha_t = alpha if y else 1.0 - alpha
            total += -alpha_t * (1.0 - p_t) ** gamma * math.log(p_t)
    expected = total / 6.0
    assert L.level_focal_loss(logits, levels, alpha, gamma).item() == pytest.approx(
        expected, rel=1e-6
    )
    empty = torch.zeros((0, 3), requires_grad=True)
    zero = L.level_focal_loss(empty, torch.zeros(0, dtype=torch.int64))
    assert zero.item() == 0.0 and zero.requires_grad


def test_drop_loss_masks_exactly_background_proposals_without_overlap():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    boxes = torch.tensor(
        [
            [20.0, 20.0, 30.0, 30.0],  # IoU 0, background: dropped
            [9.5, 9.5, 29.5, 29.5],  # IoU 0.25 / 499.75 = 0.0005, background: dropped
            [8.0, 8.0, 18.0, 18.0],  # IoU 4 / 196 = 0.0204, background: kept
            [20.0, 20.0, 30.0, 30.0],  # IoU 0 but foreground: kept
            [0.0, 0.0, 10.0, 10.0],  # IoU 1, background label: kept
        ]
    )
    labels = torch.tensor([0, 0, 0, 1, 0])
    weights = L.drop_loss_weights(boxes, gt, labels, 0.01)
    assert weights.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]
    assert L.drop_loss_weights(boxes, gt, labels, 0.0).tolist() == [1.0] * 5
    assert L.drop_loss_weights(boxes, torch.zeros((0, 4)), labels, 0.01).tolist() == [1.0] * 5
    # the paper's rule drops IoU < threshold only: IoU exactly at it (100 / 200) keeps its loss
    half = torch.tensor([[0.0, 0.0, 10.0, 20.0], [0.0, 0.0, 10.0, 21.0]])
    assert L.drop_loss_weights(half, gt, torch.tensor([0, 0]), 0.5).tolist() == [1.0, 0.0]


def test_classification_loss_with_drop_weights():
    logits = torch.tensor([[0.2, 1.0], [1.5, -0.5], [0.0, 0.0], [-1.0, 2.0]])
    labels = torch.tensor([1, 0, 0, 1])
    weights = torch.tensor([1.0, 0.0, 1.0, 0.0])
    ce = [
        -math.log(math.exp(row[label]) / sum(math.exp(v) for v in row))
        for row, label in zip(logits.tolist(), labels.tolist())
    ]
    expected = (ce[0] + ce[2]) / 4  # dropped proposals count as zeros in the mean
    assert L.classification_loss(logits, labels, weights).item() == pytest.approx(
        expected, rel=1e-6
    )
    assert L.classification_loss(logits, labels).item() == pytest.approx(sum(ce) / 4, rel=1e-6)


def test_box_regression_loss_is_l1_over_all_proposals():
    deltas = torch.tensor([[0.1, 0.2, 0.3, 0.4], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    targets = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.5, 1.5, 1.0, 0.0], [9.0, 9.0, 9.0, 9.0]])
    labels = torch.tensor([1, 1, 0])
    expected = (0.1 + 0.2 + 0.3 + 0.4 + 0.5 + 0.5 + 0.0 + 1.0) / 3
    assert L.box_regression_loss(deltas, targets, labels).item() == pytest.approx(
        expected, rel=1e-6
    )


def test_mask_targets_crop_the_matched_mask():
    masks = torch.zeros((2, 32, 32), dtype=torch.uint8)
    masks[0, 0:16, 0:8] = 1  # left half of the box [0, 0, 16, 16]
    masks[1] = 1
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0], [4.0, 4.0, 12.0, 12.0]])
    targets = L.mask_targets(masks, boxes, torch.tensor([0, 1]), 8)
    assert targets[0, :, :4].eq(1).all() and targets[0, :, 4:].eq(0).all()
    assert targets[1].eq(1).all()


def test_mask_targets_are_aligned_and_thresholded_at_one_half():
    """A 10-pixel box resampled to 4 bins (2.5 px each): the bin right of the mask's edge
    holds a sliver of it (mean about 0.03) and must be 0, as Detectron2's ``>= 0.5``; the mask is
    the box's left half, so the target is the grid's left half."""
    masks = torch.zeros((1, 10, 10), dtype=torch.uint8)
    masks[0, :, :5] = 1
    box = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    targets = L.mask_targets(masks, box, torch.tensor([0]), 4)
    assert targets[0].tolist() == [[1.0, 1.0, 0.0, 0.0]] * 4
    # one bin per pixel: half-pixel-aligned sampling (aligned=True) reads each pixel's centre,
    # so the target is the mask itself (unaligned, the right half's column 4 would read 0.5)
    right = 1 - masks
    assert torch.equal(L.mask_targets(right, box, torch.tensor([0]), 10)[0], right[0].float())


def _resnet10_state(width=16):
    config = dataclasses.replace(tiny_config().model, backbone_width=width)
    return build_backbone(config, "frozen_bn").body.state_dict()


def _to_detectron2(name: str) -> str:
    name = name.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")
    for k in (1, 2, 3):
        name = name.replace(f"bn{k}.", f"conv{k}.norm.")
    if name.startswith(("conv1.", "conv1.norm.")):
        return "stem." + name
    layer, rest = name.split(".", 1)
    return f"res{int(layer[5:]) + 1}.{rest}"


@pytest.mark.parametrize(
    "layout", ["torchvision", "dino_checkpoint", "detectron2", "detectron2_pkl"]
)
def test_backbone_weights_are_converted_on_load(tmp_path, layout):
    torch.manual_seed(1)
    source = {
        k: v.clone().normal_() if v.is_floating_point() else v for k, v in _resnet10_state().items()
    }
    if layout == "torchvision":
        payload = {**source, "fc.weight": torch.zeros(10, 128)}
    elif layout == "dino_checkpoint":
        payload = {
            "teacher": {f"module.backbone.{k}": v for k, v in source.items()}
            | {"module.head.mlp.0.weight": torch.zeros(3)},
            "student": {},
            "epoch": 100,
        }
    else:
        payload = {"model": {_to_detectron2(k): v for k, v in source.items()}}
    path = tmp_path / ("weights.pkl" if layout == "detectron2_pkl" else "weights.pth")
    if layout == "detectron2_pkl":  # Detectron2's own format: NumPy arrays in a pickle
        import pickle

        arrays = {"model": {k: v.numpy() for k, v in payload["model"].items()}, "__author__": "x"}
        path.write_bytes(pickle.dumps(arrays))
    else:
        torch.save(payload, path)
    inner = {"dino_checkpoint": "teacher", "detectron2": "model", "detectron2_pkl": "model"}.get(
        layout
    )
    assert set(convert_to_torchvision(payload[inner] if inner else payload)) == set(source)
    config = tiny_config().model
    backbone = build_backbone(config, "frozen_bn")
    report = load_backbone_weights(backbone, path)
    loaded = backbone.body.state_dict()
    assert report["loaded"] == len([k for k in source if k in loaded])
    for name, value in source.items():
        if name in loaded:
            assert torch.equal(loaded[name], value), name


def test_backbone_weights_of_another_architecture_are_refused(tmp_path):
    path = tmp_path / "wide.pth"
    torch.save(_resnet10_state(width=32), path)
    backbone = build_backbone(tiny_config().model, "frozen_bn")
    with pytest.raises(ValueError, match="does not fit"):
        load_backbone_weights(backbone, path)
    with pytest.raises(FileNotFoundError):
        load_backbone_weights(backbone, tmp_path / "missing.pth")


def test_random_initialisation_warns_and_uses_group_norm():
    with pytest.warns(UserWarning, match="randomly initialised"):
        model = build_detector(dataclasses.replace(tiny_config().model, norm="auto"))
    assert model.norm == "gn"
    assert any(isinstance(m, torch.nn.GroupNorm) for m in model.backbone.body.modules())


def test_importing_the_package_and_cli_does_not_import_torch():
    import subprocess
    import sys

    modules = "hassod, hassod.detector, hassod.detector.cli, hassod.detector.config, hassod.cli"
    code = f"import sys, {modules}; print('torch' in sys.modules)"
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert output.stdout.strip() == "False"


def test_rpn_losses_are_detectron2s_l1_over_256_anchors_per_image(tiny_model):
    rpn = tiny_model.rpn
    per_image = rpn.fg_bg_sampler.batch_size_per_image
    # two images of 6 anchors: 1 = object, 0 = background, -1 = ignored; all get sampled
    labels = [torch.tensor([1.0, 0.0, -1.0, 0.0, 1.0, 0.0]), torch.tensor([0.0, -1.0, 1.0] * 2)]
    objectness = torch.tensor([2.0, -1.0, 5.0, 0.5, -0.5, 0.0, 1.0, 3.0, -2.0, 0.0, 0.0, 1.5])
    deltas = torch.arange(48, dtype=torch.float32).reshape(12, 4) / 10
    targets = [torch.zeros(6, 4), torch.full((6, 4), 0.05)]
    cls_loss, box_loss = rpn.compute_loss(objectness, deltas, labels, targets)
    flat_labels, flat_targets = torch.cat(labels), torch.cat(targets)
    used, positive = flat_labels >= 0, flat_labels == 1
    bce = [
        -(y * math.log(1 / (1 + math.exp(-x))) + (1 - y) * math.log(1 - 1 / (1 + math.exp(-x))))
        for x, y in zip(objectness[used].tolist(), flat_labels[used].tolist())
    ]
    l1 = (deltas[positive] - flat_targets[positive]).abs().sum().item()  # beta 0: plain L1
    assert cls_loss.item() == pytest.approx(sum(bce) / (2 * per_image), rel=1e-5)
    assert box_loss.item() == pytest.approx(l1 / (2 * per_image), rel=1e-5)


def test_heads_start_as_detectron2s():
    config = tiny_config().model
    heads = CascadeRoIHeads(config, config.fpn_channels)
    for head in heads.box_heads:
        assert head.fc6.bias.abs().sum() == 0 and head.fc7.bias.abs().sum() == 0
        bound = math.sqrt(3.0 / head.fc6.weight.shape[1])  # Kaiming-uniform, a = 1
        assert head.fc6.weight.abs().max() <= bound
    predictor = heads.mask_head.predictor
    assert predictor.conv5_mask.bias.abs().sum() == 0
    assert predictor.mask_fcn_logits.bias.abs().sum() == 0
    assert predictor.mask_fcn_logits.weight.std().item() < 0.005


def test_roi_pooler_is_detectron2s_roialign_v2():
    from torchvision.ops import roi_align

    from hassod.detector.cascade import RoIAlignV2

    boxes = torch.tensor(
        [[0, 0, 32, 32], [0, 0, 112, 112], [10, 10, 234, 234], [0, 0, 448, 448], [0, 0, 999, 999]]
    ).float()
    # Detectron2's assign_boxes_to_levels: floor(4 + log2(side / 224)), clamped to P2-P5
    assert RoIAlignV2.levels(boxes).tolist() == [0, 1, 2, 3, 3]
    generator = torch.Generator().manual_seed(0)
    features = {
        name: torch.randn(1, 2, 512 // stride, 512 // stride, generator=generator)
        for name, stride in zip("0123", (4, 8, 16, 32))
    }
    pooled = RoIAlignV2(7)(features, [boxes[2:3]], [(512, 512)])
    rois = torch.cat([torch.zeros(1, 1), boxes[2:3]], dim=1)
    # half-pixel aligned, adaptive sampling, on P4 (stride 16)
    expected = roi_align(features["2"], rois, 7, 1 / 16, sampling_ratio=0, aligned=True)
    assert torch.equal(pooled, expected)
    unaligned = roi_align(features["2"], rois, 7, 1 / 16, sampling_ratio=2, aligned=False)
    assert not torch.allclose(pooled, unaligned)
