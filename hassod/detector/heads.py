"""Per-RoI heads: box head, the stage predictor with its level head, the mask head.

The box head (two FC layers) and the mask head (4 convs + deconv + 1x1) are torchvision's
``TwoMLPHead``, ``MaskRCNNHeads`` and ``MaskRCNNPredictor``. What torchvision lacks is the
level head: :class:`StagePredictor` adds a linear layer with one logit per hierarchy level
beside the class and box layers (DESIGN.md section 5), one predictor per cascade stage.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor


class StagePredictor(nn.Module):
    """Class, box and level outputs of one cascade stage (class-agnostic).

    Input: (R, D) box-head features. Output: ``class_logits`` (R, 2) -- column 0 background,
    column 1 object (torchvision's label convention) --, ``box_deltas`` (R, 4) class-agnostic
    and ``level_logits`` (R, num_levels).
    Initialisation as the authors' (Detectron2's ``FastRCNNOutputLayers``): normal std 0.01
    for the class and level layers, 0.001 for the box layer, zero biases.
    """

    def __init__(self, in_features: int, num_levels: int = 3):
        super().__init__()
        self.cls_score = nn.Linear(in_features, 2)
        self.bbox_pred = nn.Linear(in_features, 4)
        self.level_score = nn.Linear(in_features, num_levels)
        for layer, std in (
            (self.cls_score, 0.01),
            (self.bbox_pred, 0.001),
            (self.level_score, 0.01),
        ):
            nn.init.normal_(layer.weight, std=std)
            nn.init.zeros_(layer.bias)

    def forward(self, features: torch.Tensor):
        features = features.flatten(start_dim=1)
        return self.cls_score(features), self.bbox_pred(features), self.level_score(features)


def box_head(in_channels: int, resolution: int, dim: int) -> nn.Module:
    """Two FC layers on the (in_channels, resolution, resolution) pooled features.

    Initialised as Detectron2's ``FastRCNNConvFCHead`` (``c2_xavier_fill``: Kaiming-uniform
    with a = 1, zero biases) rather than with ``nn.Linear``'s default.
    """
    head = TwoMLPHead(in_channels * resolution * resolution, dim)
    for layer in (head.fc6, head.fc7):
        nn.init.kaiming_uniform_(layer.weight, a=1)
        nn.init.zeros_(layer.bias)
    return head


class MaskHead(nn.Module):
    """torchvision's Mask R-CNN mask branch with one (class-agnostic) output channel.

    Input: (R, C, 14, 14) pooled features; output: (R, 1, 28, 28) mask logits.
    Initialised as Detectron2's ``MaskRCNNConvUpsampleHead``: convolutions and deconvolution
    Kaiming-normal (fan out) with zero biases, the 1x1 predictor normal with std 0.001 and a
    zero bias (torchvision leaves the deconvolution's and predictor's biases at their default
    and gives the predictor Kaiming weights).
    """

    def __init__(self, in_channels: int, channels: int, num_convs: int, norm_layer=None):
        super().__init__()
        self.convs = MaskRCNNHeads(in_channels, [channels] * num_convs, 1, norm_layer=norm_layer)
        self.predictor = MaskRCNNPredictor(channels, channels, 1)
        nn.init.zeros_(self.predictor.conv5_mask.bias)
        nn.init.normal_(self.predictor.mask_fcn_logits.weight, std=0.001)
        nn.init.zeros_(self.predictor.mask_fcn_logits.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.predictor(self.convs(features))
