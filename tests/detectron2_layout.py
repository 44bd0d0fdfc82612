"""Detectron2's Cascade Mask R-CNN as the authors configure it, written independently of
hassod's converter: the state dict Detectron2 would save (names and shapes from its modules:
``ResNet`` with ``BottleneckBlock`` / ``BasicBlock`` and ``STRIDE_IN_1X1: False``, ``FPN``,
``StandardRPNHead``, ``FastRCNNConvFCHead`` with two FCs, the authors' ``FastRCNNOutputLayers``
with ``level_predictor``, ``MaskRCNNConvUpsampleHead``), filled with random values, and a
plain functional forward of each part that reads those names (eval mode: BatchNorm with its
running statistics)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import batched_nms

BOTTOM = "backbone.bottom_up."
BN_EPS = 1e-5  # Detectron2's BatchNorm / SyncBatchNorm / FrozenBatchNorm2d


@dataclass
class Architecture:
    kind: str = "basic"  # basic or bottleneck
    blocks: tuple = (1, 1, 1, 1)
    width: int = 16
    fpn: int = 32
    box: int = 64
    mask: int = 16
    mask_convs: int = 2
    fpn_norm: bool = True  # the authors' SyncBN in the FPN
    levels: int = 3
    freeze_at: int = 0  # Detectron2's FREEZE_AT: 1 the stem, 2 also res2, as FrozenBatchNorm2d


PAPER = Architecture("bottleneck", (3, 4, 6, 3), 64, 256, 1024, 256, 4)


def stage_channels(arch: Architecture, stage: int) -> tuple[int, int]:
    """(bottleneck channels, output channels) of res{stage}."""
    inner = arch.width * 2 ** (stage - 2)
    return inner, inner * (4 if arch.kind == "bottleneck" else 1)


def detectron2_state(arch: Architecture, seed: int = 0) -> dict:
    """Random weights under Detectron2's names (the checkpoint's ``model`` dict)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}

    def tensor(*shape, scale=0.1):
        return torch.randn(shape, generator=generator) * scale

    def conv(name, out, inp, k, bias=False, norm=True, frozen=False):
        state[f"{name}.weight"] = tensor(out, inp, k, k, scale=(2.0 / (inp * k * k)) ** 0.5)
        if bias:
            state[f"{name}.bias"] = tensor(out)
        if norm:
            state[f"{name}.norm.weight"] = 1 + tensor(out)
            state[f"{name}.norm.bias"] = tensor(out)
            state[f"{name}.norm.running_mean"] = tensor(out)
            state[f"{name}.norm.running_var"] = 0.5 + torch.rand(out, generator=generator)
            if not frozen:  # FrozenBatchNorm2d keeps no count
                state[f"{name}.norm.num_batches_tracked"] = torch.tensor(1000)

    conv(f"{BOTTOM}stem.conv1", arch.width, 3, 7, frozen=arch.freeze_at >= 1)
    channels = arch.width
    outputs = []
    for stage, count in zip((2, 3, 4, 5), arch.blocks):
        inner, out = stage_channels(arch, stage)
        frozen = arch.freeze_at >= stage
        for block in range(count):
            name = f"{BOTTOM}res{stage}.{block}"
            stride = 2 if stage > 2 and block == 0 else 1
            if channels != out or stride != 1:
                conv(f"{name}.shortcut", out, channels, 1, frozen=frozen)
            if arch.kind == "bottleneck":
                conv(f"{name}.conv1", inner, channels, 1, frozen=frozen)
                conv(f"{name}.conv2", inner, inner, 3, frozen=frozen)
                conv(f"{name}.conv3", out, inner, 1, frozen=frozen)
            else:
                conv(f"{name}.conv1", out, channels, 3, frozen=frozen)
                conv(f"{name}.conv2", out, out, 3, frozen=frozen)
            channels = out
        outputs.append(channels)
    for stage, channels in zip((2, 3, 4, 5), outputs):
        norm = arch.fpn_norm
        conv(f"backbone.fpn_lateral{stage}", arch.fpn, channels, 1, bias=not norm, norm=norm)
        conv(f"backbone.fpn_output{stage}", arch.fpn, arch.fpn, 3, bias=not norm, norm=norm)
    rpn = "proposal_generator.rpn_head"
    conv(f"{rpn}.conv", arch.fpn, arch.fpn, 3, bias=True, norm=False)
    conv(f"{rpn}.objectness_logits", 3, arch.fpn, 1, bias=True, norm=False)
    conv(f"{rpn}.anchor_deltas", 12, arch.fpn, 1, bias=True, norm=False)
    for stage in range(3):
        head = f"roi_heads.box_head.{stage}"
        for index, (out, inp) in enumerate(((arch.box, arch.fpn * 49), (arch.box, arch.box))):
            state[f"{head}.fc{index + 1}.weight"] = tensor(out, inp, scale=inp**-0.5)
            state[f"{head}.fc{index + 1}.bias"] = tensor(out)
        predictor = f"roi_heads.box_predictor.{stage}"
        for layer, out in (("cls_score", 2), ("bbox_pred", 4), ("level_predictor", arch.levels)):
            state[f"{predictor}.{layer}.weight"] = tensor(out, arch.box)
            state[f"{predictor}.{layer}.bias"] = tensor(out)
    channels = arch.fpn
    for index in range(arch.mask_convs):
        conv(f"roi_heads.mask_head.mask_fcn{index + 1}", arch.mask, channels, 3, True, False)
        channels = arch.mask
    state["roi_heads.mask_head.deconv.weight"] = tensor(arch.mask, arch.mask, 2, 2)
    state["roi_heads.mask_head.deconv.bias"] = tensor(arch.mask)
    conv("roi_heads.mask_head.predictor", 1, arch.mask, 1, bias=True, norm=False)
    return state


def _conv(x, state, name, stride=1, padding=0, relu=True):
    x = F.conv2d(x, state[f"{name}.weight"], state.get(f"{name}.bias"), stride, padding)
    if f"{name}.norm.weight" in state:
        x = F.batch_norm(
            x,
            state[f"{name}.norm.running_mean"],
            state[f"{name}.norm.running_var"],
            state[f"{name}.norm.weight"],
            state[f"{name}.norm.bias"],
            False,
            0.0,
            BN_EPS,
        )
    return F.relu(x) if relu else x


def reference_backbone(state: dict, image: torch.Tensor) -> list[torch.Tensor]:
    """P2-P6 of a normalised (N, 3, H, W) batch: Detectron2's ResNet (stride in the 3x3) and
    FPN (lateral 1x1 + nearest 2x top-down sum, 3x3 output convs, P6 = max-pool k1 s2 of P5)."""
    x = F.max_pool2d(_conv(image, state, f"{BOTTOM}stem.conv1", 2, 3), 3, 2, 1)
    stages = []
    for stage in (2, 3, 4, 5):
        block = 0
        while f"{BOTTOM}res{stage}.{block}.conv1.weight" in state:
            name = f"{BOTTOM}res{stage}.{block}"
            stride = 2 if stage > 2 and block == 0 else 1
            shortcut = (
                _conv(x, state, f"{name}.shortcut", stride, relu=False)
                if f"{name}.shortcut.weight" in state
                else x
            )
            if f"{name}.conv3.weight" in state:
                y = _conv(x, state, f"{name}.conv1")
                y = _conv(y, state, f"{name}.conv2", stride, 1)
                y = _conv(y, state, f"{name}.conv3", relu=False)
            else:
                y = _conv(x, state, f"{name}.conv1", stride, 1)
                y = _conv(y, state, f"{name}.conv2", 1, 1, relu=False)
            x = F.relu(y + shortcut)
            block += 1
        stages.append(x)
    previous = _conv(stages[3], state, "backbone.fpn_lateral5", relu=False)
    outputs = [_conv(previous, state, "backbone.fpn_output5", padding=1, relu=False)]
    for stage, feature in zip((4, 3, 2), reversed(stages[:3])):
        top_down = F.interpolate(previous, scale_factor=2.0, mode="nearest")
        previous = _conv(feature, state, f"backbone.fpn_lateral{stage}", relu=False) + top_down
        outputs.insert(0, _conv(previous, state, f"backbone.fpn_output{stage}", 1, 1, False))
    outputs.append(F.max_pool2d(outputs[-1], kernel_size=1, stride=2, padding=0))
    return outputs


def reference_rpn_head(state: dict, maps: list[torch.Tensor]):
    """Per map: objectness logits (N, A, H, W) and anchor deltas (N, 4A, H, W)."""
    rpn = "proposal_generator.rpn_head"
    logits, deltas = [], []
    for x in maps:
        hidden = _conv(x, state, f"{rpn}.conv", padding=1)
        logits.append(_conv(hidden, state, f"{rpn}.objectness_logits", relu=False))
        deltas.append(_conv(hidden, state, f"{rpn}.anchor_deltas", relu=False))
    return logits, deltas


def reference_box_stage(state: dict, stage: int, pooled: torch.Tensor):
    """(object probability, box deltas, level logits) of (R, C, 7, 7) pooled features;
    Detectron2's classifier puts the object first, background last."""
    x = pooled.flatten(1)
    for index in (1, 2):
        fc = f"roi_heads.box_head.{stage}.fc{index}"
        x = F.relu(F.linear(x, state[f"{fc}.weight"], state[f"{fc}.bias"]))
    predictor = f"roi_heads.box_predictor.{stage}"

    def linear(layer):
        return F.linear(x, state[f"{predictor}.{layer}.weight"], state[f"{predictor}.{layer}.bias"])

    return linear("cls_score").softmax(dim=1)[:, 0], linear("bbox_pred"), linear("level_predictor")


def reference_mask_logits(state: dict, pooled: torch.Tensor) -> torch.Tensor:
    """(R, 1, 28, 28) mask logits of (R, C, 14, 14) pooled features."""
    x, index = pooled, 1
    while f"roi_heads.mask_head.mask_fcn{index}.weight" in state:
        x = _conv(x, state, f"roi_heads.mask_head.mask_fcn{index}", padding=1)
        index += 1
    x = F.relu(
        F.conv_transpose2d(
            x,
            state["roi_heads.mask_head.deconv.weight"],
            state["roi_heads.mask_head.deconv.bias"],
            2,
        )
    )
    return _conv(x, state, "roi_heads.mask_head.predictor", relu=False)


SCALE_CLAMP = math.log(1000.0 / 16)  # Detectron2's _DEFAULT_SCALE_CLAMP


def apply_deltas(deltas, boxes, weights=(1.0, 1.0, 1.0, 1.0), clamp=SCALE_CLAMP):
    """Detectron2's ``Box2BoxTransform.apply_deltas`` in float32."""
    deltas, boxes = deltas.float(), boxes.float()
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    ctr_x, ctr_y = boxes[:, 0] + 0.5 * widths, boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx, dy = deltas[:, 0] / wx, deltas[:, 1] / wy
    dw, dh = (deltas[:, 2] / ww).clamp(max=clamp), (deltas[:, 3] / wh).clamp(max=clamp)
    x, y = dx * widths + ctr_x, dy * heights + ctr_y
    w, h = torch.exp(dw) * widths, torch.exp(dh) * heights
    return torch.stack((x - 0.5 * w, y - 0.5 * h, x + 0.5 * w, y + 0.5 * h), dim=1)


def clip(boxes, height, width):
    """``Boxes.clip``: x into [0, width], y into [0, height]."""
    boxes = boxes.clone()
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    return boxes


def reference_proposals(logits, deltas, anchors, image_size, pre_topk, nms_thresh, post_topk):
    """Detectron2's ``RPN.predict_proposals`` + ``find_top_rpn_proposals`` at test for one
    image: per level the top-k logits with their decoded anchors, then finite ones, clipped,
    both sides > 0, NMS per level on the logits, the post-NMS top-k. ``logits`` (1, A, H, W)
    and ``deltas`` (1, 4A, H, W) per level, ``anchors`` (sum H*W*A, 4) in level order."""
    height, width = image_size
    boxes, scores, levels, start = [], [], [], 0
    for level, (logit, delta) in enumerate(zip(logits, deltas)):
        count = logit.numel()
        flat_logits = logit.permute(0, 2, 3, 1).flatten()  # (H, W, A): anchors of a cell together
        flat_deltas = delta.view(1, -1, 4, *delta.shape[-2:]).permute(0, 3, 4, 1, 2).reshape(-1, 4)
        decoded = apply_deltas(flat_deltas, anchors[start : start + count])
        start += count
        top, index = flat_logits.topk(min(count, pre_topk))
        boxes.append(decoded[index])
        scores.append(top)
        levels.append(torch.full_like(index, level))
    boxes, scores, levels = torch.cat(boxes), torch.cat(scores), torch.cat(levels)
    finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
    boxes = clip(boxes[finite], height, width)
    scores, levels = scores[finite], levels[finite]
    keep = ((boxes[:, 2] - boxes[:, 0]) > 0) & ((boxes[:, 3] - boxes[:, 1]) > 0)
    boxes, scores, levels = boxes[keep], scores[keep], levels[keep]
    keep = batched_nms(boxes, scores, levels, nms_thresh)[:post_topk]
    return boxes[keep]


def reference_cascade(state, pool, proposals, image_size, box_weights, nms_thresh, topk):
    """The authors' ``CustomCascadeROIHeads._forward_box`` at test + their
    ``fast_rcnn_inference_single_image`` for one image: each stage pools the previous boxes
    (clipped, none dropped), object probabilities and level softmaxes averaged over the
    stages, the last stage's boxes clipped, score > 0, NMS, top-k, level = argmax.
    ``pool(boxes)`` gives the (R, C, 7, 7) features of boxes."""
    height, width = image_size
    boxes, probabilities, levels = proposals, [], []
    for stage, weights in enumerate(box_weights):
        if stage > 0:
            boxes = clip(boxes, height, width)
        probability, deltas, level_logits = reference_box_stage(state, stage, pool(boxes))
        probabilities.append(probability)
        levels.append(level_logits.softmax(dim=1))
        boxes = apply_deltas(deltas, boxes, weights)
    score = sum(probabilities) / len(probabilities)
    level = sum(levels) / len(levels)
    boxes = clip(boxes, height, width)
    chosen = score > 0.0
    boxes, score, level = boxes[chosen], score[chosen], level[chosen].argmax(dim=1)
    keep = batched_nms(boxes, score, torch.zeros_like(level), nms_thresh)[:topk]
    return boxes[keep], score[keep], level[keep]
