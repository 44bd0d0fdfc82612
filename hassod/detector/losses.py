"""Loss terms of one cascade stage and of the mask head, as plain functions of tensors.

Conventions: ``labels`` are per-proposal ints, 1 object (foreground) and 0 background;
``matched`` indexes the pseudo-label each proposal was matched to (any value for background).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import box_iou, roi_align, sigmoid_focal_loss


def level_focal_loss(
    level_logits: torch.Tensor, level_targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0
) -> torch.Tensor:
    """Sigmoid focal loss of the level head over foreground proposals (DESIGN.md section 5).

    Args:
        level_logits: (F, L) float logits of the F foreground proposals.
        level_targets: (F,) int64 levels in [0, L) of the pseudo-labels they matched.

    Returns the mean over all F * L entries against one-hot targets (the authors' reduction),
    or a zero that keeps the graph when F = 0.
    """
    if level_logits.shape[0] == 0:
        return level_logits.sum() * 0.0
    targets = F.one_hot(level_targets, level_logits.shape[1]).to(level_logits.dtype)
    return sigmoid_focal_loss(level_logits, targets, alpha=alpha, gamma=gamma, reduction="mean")


def drop_loss_weights(
    boxes: torch.Tensor, gt_boxes: torch.Tensor, labels: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """DropLoss: per-proposal classification weights, 0 where the loss is dropped.

    A background proposal whose box has IoU < ``iou_threshold`` with every pseudo-label is
    not penalised: it may be an object the pseudo-labels missed (CutLER's DropLoss, used by
    HASSOD with 0.01). Foreground proposals always count. Each image on its own: one without
    pseudo-labels keeps every proposal's loss (in the authors' code such an image turns
    DropLoss off for its whole batch in the first stage, through a try/except, and drops all
    its proposals' loss in the later two; burn-in images practically always have labels).
    Deliberate differences from the authors' (CutLER's) code: it compares with the distinct
    boxes matched by the first 100 sampled proposals rather than every pseudo-label, drops at
    IoU <= threshold, and does not exempt foreground proposals (whose regressed box almost
    never misses every pseudo-label); here the definition is the paper's.

    Args:
        boxes: (R, 4) xyxy boxes the proposals predict (the authors use the stage's regressed
            boxes).
        gt_boxes: (G, 4) xyxy pseudo-label boxes of the same image.
        labels: (R,) 1 foreground / 0 background.
        iou_threshold: 0 disables DropLoss (all weights 1).

    Returns (R,) float weights in {0, 1}.
    """
    weights = torch.ones(boxes.shape[0], dtype=torch.float32, device=boxes.device)
    if iou_threshold <= 0 or gt_boxes.shape[0] == 0 or boxes.shape[0] == 0:
        return weights
    max_iou = box_iou(boxes.float(), gt_boxes.float()).max(dim=1).values
    dropped = (labels == 0) & (max_iou < iou_threshold)
    weights[dropped] = 0.0
    return weights


def classification_loss(
    class_logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Softmax cross-entropy, averaged over all R proposals (dropped ones count as 0)."""
    if class_logits.shape[0] == 0:
        return class_logits.sum() * 0.0
    losses = F.cross_entropy(class_logits.float(), labels, reduction="none")
    if weights is not None:
        losses = losses * weights
    return losses.mean()


def box_regression_loss(
    box_deltas: torch.Tensor, regression_targets: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """L1 loss (Detectron2's smooth-L1 with beta 0) on foreground deltas, summed and divided
    by the number of all proposals, so every foreground proposal weighs the same whatever
    the foreground fraction of the batch."""
    foreground = labels > 0
    if not bool(foreground.any()):
        return box_deltas.sum() * 0.0
    loss = F.l1_loss(
        box_deltas[foreground].float(), regression_targets[foreground].float(), reduction="sum"
    )
    return loss / max(labels.numel(), 1)


def mask_targets(
    gt_masks: torch.Tensor, boxes: torch.Tensor, matched: torch.Tensor, size: int
) -> torch.Tensor:
    """(P, size, size) binary targets: each matched pseudo-label mask cropped to its proposal
    box and resampled (RoIAlign, aligned=True, then >= 0.5 as Detectron2's bitmask targets).

    Args:
        gt_masks: (G, H, W) uint8/bool masks of one image.
        boxes: (P, 4) xyxy proposal boxes in that image.
        matched: (P,) int64 indices into ``gt_masks``.
    """
    if boxes.shape[0] == 0:
        return boxes.new_zeros((0, size, size))
    used, inverse = torch.unique(matched, return_inverse=True)
    masks = gt_masks[used][:, None].to(dtype=boxes.dtype)
    rois = torch.cat([inverse[:, None].to(boxes.dtype), boxes], dim=1)
    sampled = roi_align(
        masks, rois, (size, size), spatial_scale=1.0, sampling_ratio=0, aligned=True
    )
    return (sampled[:, 0] >= 0.5).to(boxes.dtype)


def mask_loss(mask_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-pixel binary cross-entropy, mean over all pixels of all foreground proposals.

    Args:
        mask_logits: (P, 1, M, M) logits; targets: (P, M, M) in {0, 1}.
    """
    if mask_logits.shape[0] == 0:
        return mask_logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(mask_logits[:, 0].float(), targets.float())
