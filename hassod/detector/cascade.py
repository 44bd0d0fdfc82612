"""Cascade R-CNN RoI heads with a level head and a mask head, on torchvision components.

torchvision has a single-stage ``RoIHeads``; the cascade (Cai & Vasconcelos) is added here with
the semantics of the authors' Detectron2 ``CustomCascadeROIHeads``:

- training, stage 0: RPN proposals plus the pseudo-label boxes, matched at IoU 0.5 and
  subsampled (512 per image, at most half foreground); stage k > 0: the previous stage's
  regressed boxes (detached, clipped, empty ones dropped) matched at IoU 0.6 / 0.7, no
  subsampling. Each stage has its own box head, predictor and box coder weights
  ((10,10,5,5), (20,20,10,10), (30,30,15,15)); gradients into the shared features are scaled by
  1/stages. Losses per stage: softmax classification with DropLoss weights, L1 box regression,
  sigmoid focal level loss on foreground proposals. The mask loss uses the stage-0 foreground
  proposals of images whose targets carry masks (teacher targets carry none).
- inference: the stages run in sequence on the RPN proposals, each stage refining the last
  one's boxes; foreground scores and level probabilities (softmax) are averaged over the
  stages, the last stage's boxes are kept, then score threshold, NMS and top-k (1000).

Boxes and masks are pooled as Detectron2 pools them (:class:`RoIAlignV2`: half-pixel aligned,
adaptive sampling), not with torchvision's ``MultiScaleRoIAlign``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, BoxCoder, Matcher
from torchvision.ops import box_iou, clip_boxes_to_image, nms, roi_align

from hassod.detector import losses as L
from hassod.detector.config import ModelConfig
from hassod.detector.heads import MaskHead, StagePredictor, box_head

FEATURE_NAMES = ["0", "1", "2", "3"]  # P2-P5 (P6 feeds the RPN only)
FEATURE_STRIDES = [4, 8, 16, 32]
BOX_POOL = 7
MASK_POOL = 14


def clip_nonempty(boxes: torch.Tensor, size) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 4) xyxy boxes clipped to an image of ``size`` (height, width), and the mask of those
    with both sides > 0 (Detectron2's ``Boxes.clip`` then ``nonempty()``)."""
    boxes = clip_boxes_to_image(boxes, size)
    return boxes, (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])


class RoIAlignV2(nn.Module):
    """Detectron2's ``ROIPooler`` with ``ROIAlignV2`` (the authors' box and mask poolers).

    torchvision's ``MultiScaleRoIAlign`` pools with ``aligned=False`` (no half-pixel shift)
    and infers the strides from the first batch; Detectron2 shifts box corners by half a
    pixel (``aligned=True``), samples adaptively (``sampling_ratio=0``) and assigns a box of
    side ``s = sqrt(area)`` to level ``floor(4 + log2(s / 224 + 1e-8))`` clamped to P2-P5.

    ``forward(features, boxes, image_sizes)``: ``features`` the FPN dict (``FEATURE_NAMES``
    at ``FEATURE_STRIDES``), ``boxes`` a list of (N_i, 4) xyxy image-coordinate boxes;
    returns (sum N_i, C, output_size, output_size). ``image_sizes`` is unused (kept for
    ``MultiScaleRoIAlign``'s signature).
    """

    def __init__(self, output_size: int, sampling_ratio: int = 0):
        super().__init__()
        self.output_size = (output_size, output_size)
        self.sampling_ratio = sampling_ratio

    @staticmethod
    def levels(boxes: torch.Tensor) -> torch.Tensor:
        """(N,) int64 index into ``FEATURE_NAMES`` of each (N, 4) box."""
        sides = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=0).sqrt()
        level = torch.floor(4 + torch.log2(sides / 224 + 1e-8))
        return (level.clamp(min=2, max=5) - 2).to(torch.int64)

    def forward(self, features, boxes, image_sizes=None) -> torch.Tensor:
        maps = [features[name] for name in FEATURE_NAMES]
        rois = torch.cat(
            [
                torch.cat([torch.full_like(image_boxes[:, :1], index), image_boxes], dim=1)
                for index, image_boxes in enumerate(boxes)
            ]
        )
        levels = self.levels(rois[:, 1:])
        result = maps[0].new_zeros((rois.shape[0], maps[0].shape[1], *self.output_size))
        for level, (feature, stride) in enumerate(zip(maps, FEATURE_STRIDES)):
            index = torch.where(levels == level)[0]
            pooled = roi_align(
                feature,
                rois[index],
                self.output_size,
                spatial_scale=1.0 / stride,
                sampling_ratio=self.sampling_ratio,
                aligned=True,
            )
            result[index] = pooled.to(result.dtype)
        return result


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; multiplies the gradient by ``scale`` on the way back."""

    @staticmethod
    def forward(ctx, tensor, scale: float):
        ctx.scale = scale
        return tensor.view_as(tensor)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


class CascadeRoIHeads(nn.Module):
    """Three-stage cascade box heads with level heads, plus the mask head.

    ``forward(features, proposals, image_sizes, targets=None, drop_loss=True)``:
    in training mode returns a dict of losses; in eval mode a list (one per image) of dicts
    with ``boxes`` (N, 4) xyxy, ``scores`` (N,), ``level_scores`` (N, L) stage-averaged level
    probabilities, ``levels`` (N,) their argmax and ``mask_probs`` (N, 1, 28, 28).

    Targets: dicts with ``boxes`` (G, 4) float xyxy, ``levels`` (G,) int64 and optionally
    ``masks`` (G, H, W) uint8 (without it the image adds nothing to the mask loss).
    """

    def __init__(self, config: ModelConfig, in_channels: int):
        super().__init__()
        self.config = config
        stages = len(config.cascade_ious)
        self.num_stages = stages
        self.box_roi_pool = RoIAlignV2(BOX_POOL)
        self.box_heads = nn.ModuleList(
            [box_head(in_channels, BOX_POOL, config.box_head_dim) for _ in range(stages)]
        )
        self.box_predictors = nn.ModuleList(
            [StagePredictor(config.box_head_dim, config.num_levels) for _ in range(stages)]
        )
        self.box_coders = [
            BoxCoder(tuple(float(w) for w in weights)) for weights in config.cascade_box_weights
        ]
        self.matchers = [
            Matcher(iou, iou, allow_low_quality_matches=False) for iou in config.cascade_ious
        ]
        self.sampler = BalancedPositiveNegativeSampler(
            config.roi_batch_size_per_image, config.roi_positive_fraction
        )
        self.mask_roi_pool = RoIAlignV2(MASK_POOL)
        self.mask_head = MaskHead(in_channels, config.mask_head_channels, config.mask_head_convs)

    def forward(self, features, proposals, image_sizes, targets=None, drop_loss: bool = True):
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            return self.losses(features, proposals, image_sizes, targets, drop_loss)
        return self.detect(features, proposals, image_sizes)

    # ------------------------------------------------------------------ training
    @torch.no_grad()
    def match(self, proposals, targets, stage: int):
        """Per image: (matched pseudo-label index, label 1/0) of each proposal at ``stage``."""
        matched, labels = [], []
        for boxes, target in zip(proposals, targets):
            gt = target["boxes"]
            if gt.shape[0] == 0 or boxes.shape[0] == 0:
                zeros = torch.zeros(boxes.shape[0], dtype=torch.int64, device=boxes.device)
                matched.append(zeros)
                labels.append(zeros.clone())
                continue
            # A zero-area box has IoU 0/0 with itself: 0 as in Detectron2's pairwise_iou (NaN
            # would count as a match, with NaN regression targets).
            index = self.matchers[stage](torch.nan_to_num(box_iou(gt, boxes), nan=0.0))
            labels.append((index >= 0).to(torch.int64))
            matched.append(index.clamp(min=0))
        return matched, labels

    @torch.no_grad()
    def sample(self, proposals, targets):
        """Stage 0: append the pseudo-label boxes, match at the first IoU, subsample."""
        proposals = [
            torch.cat([boxes, target["boxes"].to(boxes.dtype)])
            for boxes, target in zip(proposals, targets)
        ]
        matched, labels = self.match(proposals, targets, 0)
        positive, negative = self.sampler(labels)
        for i, (pos, neg) in enumerate(zip(positive, negative)):
            keep = torch.where(pos | neg)[0]
            proposals[i], matched[i], labels[i] = (
                proposals[i][keep],
                matched[i][keep],
                labels[i][keep],
            )
        return proposals, matched, labels

    def _run_stage(self, stage: int, features, boxes, image_sizes, scale_gradient: bool):
        pooled = self.box_roi_pool(features, boxes, image_sizes)
        if scale_gradient:
            pooled = _ScaleGradient.apply(pooled, 1.0 / self.num_stages)
        return self.box_predictors[stage](self.box_heads[stage](pooled))

    def losses(self, features, proposals, image_sizes, targets, drop_loss: bool = True):
        config = self.config
        # fp32 boxes whatever the autocast dtype: regression targets need the precision
        proposals = [p.detach().float() for p in proposals]
        proposals, matched, labels = self.sample(proposals, targets)
        mask_inputs = (proposals, matched, labels)
        losses = {}
        for stage in range(self.num_stages):
            if stage > 0:
                matched, labels = self.match(proposals, targets, stage)
            class_logits, deltas, level_logits = self._run_stage(
                stage, features, proposals, image_sizes, scale_gradient=True
            )
            coder = self.box_coders[stage]
            counts = [boxes.shape[0] for boxes in proposals]
            all_proposals = torch.cat(proposals)
            all_labels = torch.cat(labels)
            matched_gt = torch.cat(
                [
                    target["boxes"][index] if target["boxes"].shape[0] else boxes
                    for target, index, boxes in zip(targets, matched, proposals)
                ]
            ).to(all_proposals.dtype)
            regression_targets = coder.encode_single(matched_gt, all_proposals)
            predicted = coder.decode_single(deltas.detach().float(), all_proposals).reshape(-1, 4)
            weights = None
            if drop_loss and config.drop_loss_iou > 0:
                weights = torch.cat(
                    [
                        L.drop_loss_weights(
                            boxes, target["boxes"], image_labels, config.drop_loss_iou
                        )
                        for boxes, target, image_labels in zip(
                            predicted.split(counts), targets, labels
                        )
                    ]
                )
            foreground = all_labels > 0
            level_targets = torch.cat(
                [
                    target["levels"][index] if target["levels"].shape[0] else index
                    for target, index in zip(targets, matched)
                ]
            )
            losses[f"loss_cls_stage{stage}"] = L.classification_loss(
                class_logits, all_labels, weights
            )
            losses[f"loss_box_stage{stage}"] = L.box_regression_loss(
                deltas, regression_targets, all_labels
            )
            losses[f"loss_level_stage{stage}"] = L.level_focal_loss(
                level_logits[foreground].float(),
                level_targets[foreground],
                config.level_loss_alpha,
                config.level_loss_gamma,
            )
            if stage + 1 < self.num_stages:
                proposals = self._next_proposals(predicted.split(counts), image_sizes)
        if any("masks" in target for target in targets):
            losses["loss_mask"] = self._mask_loss(features, image_sizes, targets, *mask_inputs)
        return losses

    @staticmethod
    def _next_proposals(boxes_per_image, image_sizes):
        """Clip the regressed boxes and drop empty ones (training only: at inference the
        stages' scores must stay aligned with the same proposals)."""
        result = []
        for boxes, size in zip(boxes_per_image, image_sizes):
            boxes, keep = clip_nonempty(boxes, size)
            result.append(boxes[keep].detach())
        return result

    def _mask_loss(self, features, image_sizes, targets, proposals, matched, labels):
        boxes, indices = [], []
        for target, image_boxes, index, image_labels in zip(targets, proposals, matched, labels):
            use = (
                (image_labels > 0)
                if "masks" in target
                else torch.zeros_like(image_labels, dtype=torch.bool)
            )
            boxes.append(image_boxes[use])
            indices.append(index[use])
        pooled = self.mask_roi_pool(features, boxes, image_sizes)
        logits = self.mask_head(pooled)
        mask_size = logits.shape[-1]
        mask_targets = [
            L.mask_targets(target["masks"], image_boxes, index, mask_size)
            for target, image_boxes, index in zip(targets, boxes, indices)
            if image_boxes.shape[0]
        ]
        if not mask_targets:
            return logits.sum() * 0.0
        return L.mask_loss(logits, torch.cat(mask_targets))

    # ----------------------------------------------------------------- inference
    @torch.no_grad()
    def detect(self, features, proposals, image_sizes):
        config = self.config
        counts = [boxes.shape[0] for boxes in proposals]
        boxes = [p.float() for p in proposals]
        stage_scores, stage_levels = [], []
        for stage in range(self.num_stages):
            class_logits, deltas, level_logits = self._run_stage(
                stage, features, boxes, image_sizes, scale_gradient=False
            )
            stage_scores.append(F.softmax(class_logits.float(), dim=1)[:, 1])
            stage_levels.append(F.softmax(level_logits.float(), dim=1))
            decoded = self.box_coders[stage].decode_single(deltas.float(), torch.cat(boxes).float())
            boxes = [
                clip_boxes_to_image(image_boxes, size)
                for image_boxes, size in zip(decoded.reshape(-1, 4).split(counts), image_sizes)
            ]
        scores = torch.stack(stage_scores).mean(dim=0).split(counts)
        level_scores = torch.stack(stage_levels).mean(dim=0).split(counts)
        detections = []
        for image_boxes, image_scores, image_levels in zip(boxes, scores, level_scores):
            valid = torch.isfinite(image_boxes).all(dim=1) & torch.isfinite(image_scores)
            valid &= image_scores > config.score_thresh
            image_boxes, image_scores, image_levels = (
                image_boxes[valid],
                image_scores[valid],
                image_levels[valid],
            )
            keep = nms(image_boxes, image_scores, config.nms_thresh)[: config.detections_per_image]
            detections.append(
                {
                    "boxes": image_boxes[keep],
                    "scores": image_scores[keep],
                    "level_scores": image_levels[keep],
                    "levels": image_levels[keep].argmax(dim=1),
                }
            )
        mask_boxes = [detection["boxes"] for detection in detections]
        mask_logits = self.mask_head(self.mask_roi_pool(features, mask_boxes, image_sizes))
        for detection, probs in zip(
            detections, mask_logits.float().sigmoid().split([b.shape[0] for b in mask_boxes])
        ):
            detection["mask_probs"] = probs
        return detections
