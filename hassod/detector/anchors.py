"""RPN anchors as Detectron2's ``DefaultAnchorGenerator`` makes them (the authors' detector).

torchvision's ``AnchorGenerator`` differs in three ways that change which boxes the RPN starts
from, so :class:`DetectronAnchorGenerator` replaces it (``ModelConfig.anchor_generator``):

- it infers each level's stride as ``padded image size // feature map size``; P6 is P5
  max-pooled with stride 2, so when P5 has an odd side (an 800-pixel side: 25 cells) P6 gets
  stride 800 // 13 = 61 instead of 64, and its anchors drift by up to ~36 pixels across the
  image, differently for each image size. Here the strides are the backbone's, 4 to 64;
- it rounds the cell anchors to whole pixels (a 32-pixel anchor of ratio 0.5 becomes
  46 x 22 instead of 45.25 x 22.63). Here they are exact: ``w = sqrt(size^2 / ratio)``,
  ``h = ratio * w``, centred on the cell's corner (offset 0), in Detectron2's order (sizes,
  then ratios);
- it computes anchors in the feature maps' dtype, float16 under autocast (half-pixel steps
  beyond 1024). Here they are float32 always, as Detectron2's buffers are.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList

from hassod.detector.config import ANCHOR_GENERATORS

# Strides of the FPN maps P2-P6 the RPN runs on (the backbone's, whatever the image size).
RPN_STRIDES = (4, 8, 16, 32, 64)


def detectron2_cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float]) -> torch.Tensor:
    """(len(sizes) * len(aspect_ratios), 4) float32 xyxy anchors centred on (0, 0).

    Detectron2's ``generate_cell_anchors``: for each size, for each ratio (height / width),
    ``w = sqrt(size^2 / ratio)``, ``h = ratio * w``, computed in double precision."""
    anchors = []
    for size in sizes:
        area = float(size) ** 2
        for ratio in aspect_ratios:
            width = math.sqrt(area / float(ratio))
            height = float(ratio) * width
            anchors.append([-width / 2.0, -height / 2.0, width / 2.0, height / 2.0])
    return torch.tensor(anchors, dtype=torch.float32)


class DetectronAnchorGenerator(AnchorGenerator):
    """torchvision's ``AnchorGenerator`` interface with Detectron2's anchors (see the module
    docstring): fixed per-level strides, exact cell anchors, float32 output.

    ``sizes`` and ``aspect_ratios`` as for torchvision (one tuple per feature map);
    ``strides`` one per feature map. ``forward(image_list, feature_maps)`` returns one
    (sum over maps of H * W * A, 4) float32 tensor per image, locations in row-major order
    and the A anchors of a location together, the order the RPN head's outputs are
    flattened in.
    """

    def __init__(self, sizes, aspect_ratios, strides: Sequence[int] = RPN_STRIDES) -> None:
        super().__init__(sizes, aspect_ratios)
        if len(strides) != len(sizes):
            raise ValueError(f"need one stride per feature map, got {strides} for {len(sizes)}")
        self.strides = tuple(int(stride) for stride in strides)
        self.cell_anchors = [
            detectron2_cell_anchors(size, ratios)
            for size, ratios in zip(self.sizes, self.aspect_ratios)
        ]

    def set_cell_anchors(self, dtype: torch.dtype, device: torch.device) -> None:
        # float32 whatever the feature maps' dtype (torchvision casts them to it).
        self.cell_anchors = [
            anchors.to(device=device, dtype=torch.float32) for anchors in self.cell_anchors
        ]

    def forward(
        self, image_list: ImageList, feature_maps: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        if len(feature_maps) != len(self.strides):
            raise ValueError(
                f"expected {len(self.strides)} feature maps (strides {self.strides}), "
                f"got {len(feature_maps)}"
            )
        device = feature_maps[0].device
        grid_sizes = [feature_map.shape[-2:] for feature_map in feature_maps]
        strides = [
            [torch.tensor(stride, dtype=torch.int64, device=device)] * 2 for stride in self.strides
        ]
        self.set_cell_anchors(torch.float32, device)
        per_map = self.grid_anchors(grid_sizes, strides)
        anchors = torch.cat(per_map)
        return [anchors for _ in image_list.image_sizes]


def build_anchor_generator(kind: str, sizes, aspect_ratios) -> AnchorGenerator:
    """The RPN's anchor generator: ``detectron2`` (the authors') or ``torchvision`` (what
    checkpoints written before it was added were trained with)."""
    sizes = tuple((int(size),) for size in sizes)
    ratios = (tuple(float(r) for r in aspect_ratios),) * len(sizes)
    if kind == "detectron2":
        return DetectronAnchorGenerator(sizes, ratios)
    if kind == "torchvision":
        return AnchorGenerator(sizes=sizes, aspect_ratios=ratios)
    raise ValueError(f"anchor_generator must be one of {ANCHOR_GENERATORS}, got {kind!r}")
