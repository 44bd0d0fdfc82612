"""The stage-2 detector: ResNet-FPN -> RPN -> cascade RoI heads with level and mask heads.

Built from torchvision's maintained detection components (``BackboneWithFPN``, ``RPNHead``,
``RegionProposalNetwork``, ``roi_align``, ``BoxCoder``, ``Matcher``,
``BalancedPositiveNegativeSampler``, the Mask R-CNN mask head) with Detectron2's anchors
(:mod:`hassod.detector.anchors`), proposal selection, RPN losses and RoI pooler
(``cascade.RoIAlignV2``) where torchvision's differ, plus the cascade and the level head in
:mod:`hassod.detector.cascade`.

Images go in at the size they should be processed at (the data pipeline and the predictor
resize); the model only normalises and pads them into a batch, so its outputs are in the
coordinates of the images it was given.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.ops import boxes as box_ops

from hassod.detector.anchors import build_anchor_generator
from hassod.detector.backbone import build_backbone, load_backbone_weights, resolve_norm
from hassod.detector.cascade import CascadeRoIHeads, clip_nonempty
from hassod.detector.config import ModelConfig


class DetectronLossRPN(RegionProposalNetwork):
    """torchvision's RPN with Detectron2's (the authors') losses and proposal selection.

    Losses: torchvision uses smooth-L1 with beta 1/9 for the anchor deltas and averages the
    objectness loss over the sampled anchors; Detectron2 (``RPN.SMOOTH_L1_BETA: 0``) uses L1
    and divides both sums by ``batch_size_per_image * images`` (256 per image), so an image
    with few sampled anchors does not weigh more. Matching and sampling are torchvision's,
    which follow Detectron2's (IoU 0.3 / 0.7, low-quality matches kept). Proposals: see
    :meth:`filter_proposals`.
    """

    def filter_proposals(self, proposals, objectness, image_shapes, num_anchors_per_level):
        """Detectron2's ``find_top_rpn_proposals``: the top-k logits per level, then per
        image: predictions that are not finite dropped (at test), boxes clipped, those with
        both sides > 0 kept, NMS per level on the logits, the post-NMS top-k.

        torchvision differs in two ways: it keeps sides >= 1e-3 only, and it runs NMS on the
        sigmoid of the logits, whose float32 values tie at 1.0 above a logit of ~16.6 (then
        the order among those proposals, and which of them make the top-k, is arbitrary).
        Returns the boxes and their logits per image.
        """
        num_images = proposals.shape[0]
        device = proposals.device
        objectness = objectness.detach().float().reshape(num_images, -1)
        levels = torch.cat(
            [
                torch.full((count,), level, dtype=torch.int64, device=device)
                for level, count in enumerate(num_anchors_per_level)
            ]
        ).expand_as(objectness)
        top = self._get_top_n_idx(objectness, num_anchors_per_level)
        rows = torch.arange(num_images, device=device)[:, None]
        objectness, levels = objectness[rows, top], levels[rows, top]
        proposals = proposals[rows, top]
        final_boxes, final_scores = [], []
        for boxes, scores, level, shape in zip(proposals, objectness, levels, image_shapes):
            if not self.training:
                finite = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
                boxes, scores, level = boxes[finite], scores[finite], level[finite]
            boxes, keep = clip_nonempty(boxes, shape)
            boxes, scores, level = boxes[keep], scores[keep], level[keep]
            keep = box_ops.batched_nms(boxes, scores, level, self.nms_thresh)
            keep = keep[: self.post_nms_top_n()]
            final_boxes.append(boxes[keep])
            final_scores.append(scores[keep])
        return final_boxes, final_scores

    def compute_loss(self, objectness, pred_bbox_deltas, labels, regression_targets):
        positive, negative = self.fg_bg_sampler(labels)
        positive = torch.where(torch.cat(positive))[0]
        sampled = torch.cat([positive, torch.where(torch.cat(negative))[0]])
        normalizer = self.fg_bg_sampler.batch_size_per_image * len(labels)
        labels = torch.cat(labels)
        regression_targets = torch.cat(regression_targets)
        box_loss = (
            F.l1_loss(
                pred_bbox_deltas[positive].float(),
                regression_targets[positive].float(),
                reduction="sum",
            )
            / normalizer
        )
        objectness_loss = (
            F.binary_cross_entropy_with_logits(
                objectness.flatten()[sampled].float(), labels[sampled].float(), reduction="sum"
            )
            / normalizer
        )
        return objectness_loss, box_loss


class Float32RPNHead(RPNHead):
    """torchvision's RPN head with float32 outputs under autocast.

    torchvision decodes proposals in the dtype of the head's deltas (``BoxCoder.decode``
    converts the anchors to it); in float16, box corners beyond 1024 pixels have half-pixel
    steps. Detectron2 (the authors' code) decodes in float32 (``apply_deltas``). The logits
    rank proposals, which float16 would tie.
    """

    def forward(self, features):
        logits, deltas = super().forward(features)
        return [map_.float() for map_ in logits], [map_.float() for map_ in deltas]


class HassodDetector(nn.Module):
    """Cascade Mask R-CNN with a level head (class-agnostic).

    ``forward(images, targets=None, drop_loss=True)``

    Args:
        images: list of (3, H, W) RGB tensors, uint8 or float on the 0-255 scale.
        targets: training only; per image a dict with ``boxes`` (G, 4) float xyxy,
            ``levels`` (G,) int64 in [0, num_levels) and optionally ``masks`` (G, H, W) uint8.
        drop_loss: apply DropLoss (``config.drop_loss_iou``) to the classification loss.

    Returns: in training mode a dict of scalar losses (``loss_rpn_cls``, ``loss_rpn_box``,
    ``loss_{cls,box,level}_stage{0,1,2}``, ``loss_mask``); in eval mode a list of detection
    dicts (see :class:`~hassod.detector.cascade.CascadeRoIHeads`).
    """

    def __init__(self, config: ModelConfig, norm: str):
        super().__init__()
        self.config = config
        self.norm = norm
        self.backbone = build_backbone(config, norm)
        channels = config.fpn_channels
        anchors = build_anchor_generator(
            config.anchor_generator, config.anchor_sizes, config.aspect_ratios
        )
        self.rpn = DetectronLossRPN(
            anchors,
            Float32RPNHead(channels, anchors.num_anchors_per_location()[0]),
            fg_iou_thresh=0.7,
            bg_iou_thresh=0.3,
            batch_size_per_image=config.rpn_batch_size_per_image,
            positive_fraction=config.rpn_positive_fraction,
            pre_nms_top_n={
                "training": config.rpn_pre_nms_top_n_train,
                "testing": config.rpn_pre_nms_top_n_test,
            },
            post_nms_top_n={
                "training": config.rpn_post_nms_top_n_train,
                "testing": config.rpn_post_nms_top_n_test,
            },
            nms_thresh=config.rpn_nms_thresh,
        )
        self.roi_heads = CascadeRoIHeads(config, channels)
        self.register_buffer(
            "pixel_mean", torch.tensor(config.pixel_mean).view(3, 1, 1), persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(config.pixel_std).view(3, 1, 1), persistent=False
        )

    def preprocess(self, images) -> ImageList:
        """Normalise (0-255 RGB, ImageNet statistics) and zero-pad to a multiple of 32."""
        if not images:
            raise ValueError("images must be a non-empty list of (3, H, W) tensors")
        for index, image in enumerate(images):
            if image.dim() != 3 or image.shape[0] != 3:
                raise ValueError(f"images[{index}] must be (3, H, W), got {tuple(image.shape)}")
        sizes = [(int(image.shape[1]), int(image.shape[2])) for image in images]
        step = self.config.size_divisible
        height = -(-max(h for h, _ in sizes) // step) * step
        width = -(-max(w for _, w in sizes) // step) * step
        batch = torch.zeros((len(images), 3, height, width), device=self.pixel_mean.device)
        for slot, image in zip(batch, images):
            normalised = (
                image.to(self.pixel_mean.device, torch.float32) - self.pixel_mean
            ) / self.pixel_std
            slot[:, : image.shape[1], : image.shape[2]].copy_(normalised)
        return ImageList(batch, sizes)

    def forward(self, images, targets=None, drop_loss: bool = True):
        image_list = self.preprocess(images)
        features = self.backbone(image_list.tensors)
        if self.training:
            if targets is None:
                raise ValueError("targets are required in training mode")
            rpn_targets = [{"boxes": target["boxes"]} for target in targets]
            proposals, rpn_losses = self.rpn(image_list, features, rpn_targets)
            losses = {
                "loss_rpn_cls": rpn_losses["loss_objectness"],
                "loss_rpn_box": rpn_losses["loss_rpn_box_reg"],
            }
            losses.update(
                self.roi_heads(
                    features, proposals, image_list.image_sizes, targets, drop_loss=drop_loss
                )
            )
            return losses
        proposals, _ = self.rpn(image_list, features)
        return self.roi_heads(features, proposals, image_list.image_sizes)


def build_detector(
    config: ModelConfig, backbone_weights: str | Path | None = None
) -> HassodDetector:
    """The detector, with the backbone loaded from a self-supervised ResNet checkpoint if given.

    Without weights the backbone is randomly initialised with GroupNorm (``norm="auto"``) and a
    warning says so: the paper's results need a DINO ResNet-50.
    """
    norm = resolve_norm(config.norm, backbone_weights is not None)
    model = HassodDetector(config, norm)
    if backbone_weights is not None:
        load_backbone_weights(model.backbone, backbone_weights)
    else:
        if norm == "frozen_bn":
            warnings.warn(
                "norm=frozen_bn without backbone weights leaves the backbone unnormalised; "
                "use norm=gn (or auto) for a random initialisation",
                stacklevel=2,
            )
        warnings.warn(
            f"no --backbone-weights: the {config.backbone} backbone is randomly initialised "
            f"({norm}); the paper starts from a self-supervised DINO ResNet-50",
            stacklevel=2,
        )
    return model
