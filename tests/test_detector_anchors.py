"""RPN anchors against a plain transcription of Detectron2's DefaultAnchorGenerator, and the
float32 RPN head."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from detector_checks import tiny_config
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RPNHead

from hassod.detector import checkpoint as ckpt
from hassod.detector.anchors import DetectronAnchorGenerator, build_anchor_generator
from hassod.detector.config import ModelConfig
from hassod.detector.model import Float32RPNHead

SIZES = (32, 64, 128, 256, 512)
RATIOS = (0.5, 1.0, 2.0)
STRIDES = (4, 8, 16, 32, 64)


def reference_anchors(height: int, width: int) -> torch.Tensor:
    """Detectron2's anchors for a padded (height, width) batch, written out with loops in its
    arithmetic: cell anchors (-w/2, -h/2, w/2, h/2) with w = sqrt(size^2 / ratio), h = ratio * w
    computed in double precision and stored as float32, then shifted by float32 cell offsets
    (x * stride, y * stride); levels in order, cells row-major, sizes then ratios per cell.
    P2-P5 at strides 4-32 (the backbone's), P6 the max-pool of P5 (kernel 1, stride 2:
    ceil(P5 / 2) cells) at stride 64."""
    grids = [(height // STRIDES[level], width // STRIDES[level]) for level in range(4)]
    grids.append((math.ceil(grids[3][0] / 2), math.ceil(grids[3][1] / 2)))
    levels = []
    for (rows, cols), stride, size in zip(grids, STRIDES, SIZES):
        cell = []
        for ratio in RATIOS:
            w = math.sqrt(size * size / ratio)
            h = ratio * w
            cell.append([-w / 2, -h / 2, w / 2, h / 2])
        shifts = [[x * stride, y * stride] * 2 for y in range(rows) for x in range(cols)]
        shifted = np.float32(shifts)[:, None, :] + np.float32(cell)[None, :, :]
        levels.append(shifted.reshape(-1, 4))
    return torch.from_numpy(np.concatenate(levels))


def feature_maps(height: int, width: int, dtype=torch.float32):
    """Empty maps of the FPN's shapes for a padded (height, width) batch (P6: ceil of P5 / 2)."""
    shapes = [(height // s, width // s) for s in STRIDES[:4]]
    shapes.append((math.ceil(shapes[3][0] / 2), math.ceil(shapes[3][1] / 2)))
    return [torch.zeros(1, 1, h, w, dtype=dtype) for h, w in shapes]


@pytest.mark.parametrize("size", [(800, 1216), (672, 896), (1024, 1344), (64, 96), (32, 32)])
def test_anchors_equal_detectron2s(size):
    height, width = size
    generator = build_anchor_generator("detectron2", SIZES, RATIOS)
    images = ImageList(torch.zeros(2, 3, height, width), [(height, width)] * 2)
    anchors = generator(images, feature_maps(height, width))
    expected = reference_anchors(height, width)
    assert len(anchors) == 2 and anchors[0].dtype == torch.float32
    assert anchors[0].shape == expected.shape
    assert torch.equal(anchors[0], expected)
    assert torch.equal(anchors[0], anchors[1])


def test_torchvisions_generator_differs_where_p5_is_odd():
    """What the Detectron2 generator fixes: torchvision infers P6's stride as 800 // 13 = 61
    and rounds the cell anchors, so its anchors are off by pixels (tens at P6)."""
    height, width = 800, 1216  # P5 25 x 38 cells: P6 13 x 19
    torchvision = build_anchor_generator("torchvision", SIZES, RATIOS)
    assert isinstance(torchvision, AnchorGenerator)
    assert not isinstance(torchvision, DetectronAnchorGenerator)
    images = ImageList(torch.zeros(1, 3, height, width), [(height, width)])
    theirs = torchvision(images, feature_maps(height, width))[0]
    expected = reference_anchors(height, width)
    error = (theirs - expected).abs()
    p6 = slice(expected.shape[0] - 13 * 19 * 3, None)
    assert error[p6].max() > 30  # the last P6 row: 12 * 61 instead of 12 * 64
    assert 0.2 < error[: p6.start].max() <= 0.5  # rounding elsewhere


def test_anchors_are_float32_for_half_precision_maps():
    generator = build_anchor_generator("detectron2", SIZES, RATIOS)
    images = ImageList(torch.zeros(1, 3, 1344, 1344), [(1344, 1344)])
    anchors = generator(images, feature_maps(1344, 1344, torch.float16))[0]
    assert anchors.dtype == torch.float32
    assert torch.equal(anchors, reference_anchors(1344, 1344))


def test_generator_rejects_a_wrong_number_of_maps():
    generator = build_anchor_generator("detectron2", SIZES, RATIOS)
    images = ImageList(torch.zeros(1, 3, 64, 64), [(64, 64)])
    with pytest.raises(ValueError, match="expected 5 feature maps"):
        generator(images, feature_maps(64, 64)[:4])
    with pytest.raises(ValueError, match="anchor_generator must be one of"):
        build_anchor_generator("mmdet", SIZES, RATIOS)
    with pytest.raises(ValueError, match="anchor_generator must be one of"):
        ModelConfig(anchor_generator="mmdet")


def test_rpn_head_outputs_float32_under_autocast():
    torch.manual_seed(0)
    head = Float32RPNHead(8, 3)
    maps = [torch.randn(1, 8, 6, 6), torch.randn(1, 8, 3, 3)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, deltas = head(maps)
        plain_logits, _ = RPNHead.forward(head, maps)
    assert all(t.dtype == torch.float32 for t in logits + deltas)
    assert plain_logits[0].dtype == torch.bfloat16  # what it corrects
    assert [tuple(t.shape) for t in deltas] == [(1, 12, 6, 6), (1, 12, 3, 3)]


def test_checkpoints_from_before_the_detectron2_anchors_keep_torchvisions(tmp_path):
    config = tiny_config(iterations=1)
    assert config.model.anchor_generator == "detectron2"
    path = ckpt.save_checkpoint(
        tmp_path / "new.pth", config=config, iteration=1, model=torch.nn.Linear(2, 2)
    )
    assert ckpt.load_checkpoint(path)["config"].model.anchor_generator == "detectron2"
    payload = torch.load(path, weights_only=True)
    del payload["config"]["model"]["anchor_generator"]
    torch.save(payload, tmp_path / "old.pth")
    old = ckpt.load_checkpoint(tmp_path / "old.pth")["config"]
    assert old.model.anchor_generator == "torchvision"
    assert dataclasses.replace(old.model, anchor_generator="detectron2") == config.model
