"""Mask pasting as Detectron2 does it: the mask head's (M x M) probabilities -> full-image masks.

The authors' code (Detectron2, ``detectron2/layers/mask_ops.py``, ``paste_masks_in_image``)
samples every mask at the centre of every image pixel: pixel (y, x) maps to the point
``((x + 0.5 - x0) / (x1 - x0) * 2 - 1, (y + 0.5 - y0) / (y1 - y0) * 2 - 1)`` of the box's
normalised coordinates, read with ``grid_sample`` (bilinear, ``align_corners=False``, zero
outside the mask), and the pixel is in the mask when that value is ``>= threshold``.

Two ways of doing it give the same masks:

* whole image (Detectron2's GPU path, the default for CUDA tensors): all masks of a chunk are
  sampled over the whole image in one ``grid_sample``, chunks bounded by ``chunk_bytes`` (grid
  and samples); no per-mask Python work, no host synchronisation.
* per box (the default on the CPU): each mask is sampled only over its box grown by half a
  mask cell and one pixel; further out both bilinear neighbours are zero padding, so the
  sample is exactly 0 and below any positive threshold. The masks are the same as the
  whole-image path's (tests/test_detector_paste.py). (Detectron2's CPU path grows the union
  of the boxes by one pixel only, which is exact for thresholds of 0.5 and above.)

torchvision's ``paste_masks_in_image`` (used here before) differs: it resizes each mask to its
integer box plus a padding cell with ``interpolate`` one mask at a time, with several host
synchronisations per mask, and thresholds with ``>``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: Bytes a whole-image chunk may hold (Detectron2's GPU_MEM_LIMIT, which counts the samples
#: only; here the sampling grid's two coordinates per pixel are counted too).
CHUNK_BYTES = 1 << 30


def paste_masks(
    mask_probs: torch.Tensor,
    boxes: torch.Tensor,
    image_size: tuple[int, int],
    threshold: float = 0.5,
    *,
    whole_image: bool | None = None,
    chunk_bytes: int = CHUNK_BYTES,
) -> torch.Tensor:
    """Masks of N detections in an image of ``image_size`` = (H, W).

    Args:
        mask_probs: (N, M, M) or (N, 1, M, M) probabilities in [0, 1] (any float dtype).
        boxes: (N, 4) xyxy boxes in image pixels (corners, as the detector returns them).
        threshold: a pixel is in the mask where the sampled probability is >= threshold
            (> 0).
        whole_image: sample over the whole image (Detectron2's GPU path) or over each box;
            None picks the whole image for CUDA tensors.
        chunk_bytes: bound on the float32 grid and samples of one whole-image chunk (12 bytes
            per pixel and mask).

    Returns:
        (N, H, W) bool on the masks' device. A box of zero or negative width or height gives
        an empty mask.
    """
    if mask_probs.dim() == 4 and mask_probs.shape[1] == 1:
        mask_probs = mask_probs[:, 0]
    if mask_probs.dim() != 3:
        raise ValueError(
            f"mask_probs must be (N, M, M) or (N, 1, M, M), got {tuple(mask_probs.shape)}"
        )
    if boxes.shape != (mask_probs.shape[0], 4):
        raise ValueError(
            f"boxes must be ({mask_probs.shape[0]}, 4) for {mask_probs.shape[0]} masks, "
            f"got {tuple(boxes.shape)}"
        )
    if not threshold > 0:
        raise ValueError(f"threshold must be > 0, got {threshold}")
    height, width = (int(v) for v in image_size)
    if height < 1 or width < 1:
        raise ValueError(f"image_size must be positive (H, W), got {image_size}")
    device = mask_probs.device
    count = mask_probs.shape[0]
    out = torch.zeros((count, height, width), dtype=torch.bool, device=device)
    if count == 0:
        return out
    masks = mask_probs[:, None].float()
    boxes = boxes.to(device=device, dtype=torch.float32)
    if whole_image is None:
        whole_image = device.type == "cuda"
    if whole_image:
        per_chunk = max(1, chunk_bytes // (12 * height * width))
        for start in range(0, count, per_chunk):
            chunk = slice(start, start + per_chunk)
            # One statement: no chunk's samples outlive it into the next chunk's peak.
            out[chunk] = (_sample(masks[chunk], boxes[chunk], 0, 0, height, width) >= threshold) & (
                _proper(boxes[chunk])[:, None, None]
            )
        return out
    cells = masks.shape[-1], masks.shape[-2]  # (M_x, M_y)
    for index, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        if not (x1 > x0 and y1 > y0):
            continue
        # Samples are 0 once a pixel centre is half a mask cell past the box's edge.
        grow_x = (x1 - x0) / (2 * cells[0]) + 1
        grow_y = (y1 - y0) / (2 * cells[1]) + 1
        left, top = max(math.floor(x0 - grow_x), 0), max(math.floor(y0 - grow_y), 0)
        right = min(math.ceil(x1 + grow_x), width)
        bottom = min(math.ceil(y1 + grow_y), height)
        if left >= right or top >= bottom:
            continue
        sampled = _sample(
            masks[index : index + 1], boxes[index : index + 1], top, left, bottom, right
        )
        out[index, top:bottom, left:right] = sampled[0] >= threshold
    return out


def _proper(boxes: torch.Tensor) -> torch.Tensor:
    """Boxes of positive width and height."""
    return (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])


def _sample(masks: torch.Tensor, boxes: torch.Tensor, top: int, left: int, bottom: int, right: int):
    """(n, 1, M, M) masks sampled at the centres of pixels [top, bottom) x [left, right):
    (n, bottom - top, right - left) float32."""
    device = masks.device
    x0, y0, x1, y1 = torch.split(boxes, 1, dim=1)
    centres_y = torch.arange(top, bottom, device=device, dtype=torch.float32) + 0.5
    centres_x = torch.arange(left, right, device=device, dtype=torch.float32) + 0.5
    # Degenerate boxes (x1 == x0) give infinite coordinates; their masks are discarded. Made
    # finite before the (n, h, w, 2) grid exists, which then is the only full-size copy.
    grid_y = torch.nan_to_num(
        (centres_y - y0) / (y1 - y0) * 2 - 1, nan=2.0, posinf=2.0, neginf=-2.0
    )
    grid_x = torch.nan_to_num(
        (centres_x - x0) / (x1 - x0) * 2 - 1, nan=2.0, posinf=2.0, neginf=-2.0
    )
    count, rows, columns = masks.shape[0], grid_y.shape[1], grid_x.shape[1]
    grid = torch.stack(
        [
            grid_x[:, None, :].expand(count, rows, columns),
            grid_y[:, :, None].expand(count, rows, columns),
        ],
        dim=3,
    )
    return F.grid_sample(masks, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[
        :, 0
    ]
