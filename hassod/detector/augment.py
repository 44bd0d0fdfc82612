"""Training augmentations as functions of tensors and an explicit NumPy ``Generator``.

All randomness comes from the ``rng`` argument (never a global RNG), so a batch is a pure
function of (seed, iteration, rank): resuming a run, or loading with any number of worker
processes, gives the same images.

A *sample* is a dict: ``image`` (3, H, W) uint8 RGB tensor, ``masks`` (N, H, W) uint8,
``levels`` (N,) int64, ``file_name`` str, and optionally ``boxes`` (N, 4) float32 xyxy (the
pseudo-labels' boxes, carried through resizing and flipping as Detectron2 carries them; a
paste replaces them with the masks' bounds). :func:`finalize` turns it into a model target.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF


def scaled_size(height: int, width: int, short_side: int, max_size: int) -> tuple[int, int]:
    """Size with the short side ``short_side`` and the long side at most ``max_size``:
    Detectron2's ``ResizeShortestEdge.get_output_shape``, in its order of operations (its
    rounding at exact halves depends on it)."""
    scale = short_side * 1.0 / min(height, width)
    if height < width:
        new_h, new_w = short_side, scale * width
    else:
        new_h, new_w = scale * height, short_side
    if max(new_h, new_w) > max_size:
        scale = max_size * 1.0 / max(new_h, new_w)
        new_h, new_w = new_h * scale, new_w * scale
    return max(1, int(new_h + 0.5)), max(1, int(new_w + 0.5))


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a (3, H, W) uint8 image (antialiased when shrinking)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return TF.resize(image, list(size), antialias=True)


def resize_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of (N, H, W) uint8 masks with PIL's ``NEAREST``, as
    Detectron2's ``ResizeTransform`` resizes them: it samples pixel centres, in line with the
    bilinear-resized image (torch's ``nearest`` samples ``floor(x * scale)``, half a pixel
    off; its ``nearest-exact`` breaks ties unlike PIL, which accumulates its steps)."""
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    if masks.shape[0] == 0:
        return masks.new_zeros((0, *size))
    from PIL import Image

    height, width = size
    resized = [
        np.asarray(Image.fromarray(mask).resize((width, height), Image.NEAREST))
        for mask in masks.to(torch.uint8).numpy()
    ]
    return torch.from_numpy(np.stack(resized))


def resize_sample(sample: dict, size: tuple[int, int]) -> dict:
    resized = {
        **sample,
        "image": resize_image(sample["image"], size),
        "masks": resize_masks(sample["masks"], size),
    }
    if "boxes" in sample:  # Detectron2's apply_box: corners scaled per axis
        height, width = sample["image"].shape[-2:]
        scale = torch.tensor([size[1] / width, size[0] / height] * 2, dtype=torch.float32)
        resized["boxes"] = sample["boxes"].float() * scale
    return resized


def random_resize(sample: dict, min_sizes, max_size: int, rng: np.random.Generator) -> dict:
    """Multi-scale training: the short side drawn uniformly from ``min_sizes``."""
    height, width = sample["image"].shape[-2:]
    short_side = int(min_sizes[int(rng.integers(len(min_sizes)))])
    return resize_sample(sample, scaled_size(height, width, short_side, max_size))


def random_flip(sample: dict, prob: float, rng: np.random.Generator) -> dict:
    """Horizontal flip with probability ``prob``."""
    if rng.random() >= prob:
        return sample
    flipped = {**sample, "image": sample["image"].flip(-1), "masks": sample["masks"].flip(-1)}
    if "boxes" in sample:
        width = sample["image"].shape[-1]
        boxes = sample["boxes"]
        flipped["boxes"] = torch.stack(
            [width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1
        )
    return flipped


def paste_resize(
    image: torch.Tensor, masks: torch.Tensor, size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pasted objects' rescaling, as the authors' ``copy_and_paste``: bilinear without
    antialiasing (``align_corners=False``), the image truncated to uint8 (``.byte()``), a mask
    pixel set wherever the interpolated mask is above 0 (``.bool()``)."""
    scaled = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False)
    if masks.shape[0] == 0:
        return scaled[0].to(torch.uint8), masks.new_zeros((0, *size))
    spread = F.interpolate(masks[None].float(), size=size, mode="bilinear", align_corners=False)
    return scaled[0].to(torch.uint8), (spread[0] > 0).to(torch.uint8)


def copy_paste(
    target: dict,
    source: dict,
    rng: np.random.Generator,
    min_ratio: float = 0.3,
    max_ratio: float = 1.0,
) -> dict:
    """Paste some of ``source``'s objects onto ``target`` (the authors' CutLER-style copy-paste).

    A random number of source objects (1 .. N-1, or the only one) is chosen; the source image
    and those masks are scaled to ``ratio`` x the target's size (ratio uniform in
    [min_ratio, max_ratio]) and placed at a random offset. A pasted object that would hide at
    least half of an existing target object is not pasted. Target masks lose the pasted
    pixels (objects hidden completely disappear) and the pasted objects are added with their
    levels. Returns a new sample; ``target`` is unchanged when nothing is pasted.
    """
    # Only objects whose mask survived resizing can be chosen (the authors filter empty
    # instances before pasting; by box too, which a surviving mask always has here).
    present = torch.where((source["masks"].flatten(1) != 0).any(dim=1))[0]
    count = int(present.shape[0])
    if count == 0:
        return target
    chosen = 1 if count == 1 else int(rng.integers(1, count))
    picked = present[torch.as_tensor(np.sort(rng.choice(count, size=chosen, replace=False)))]
    height, width = target["image"].shape[-2:]
    ratio = float(rng.uniform(min_ratio, max_ratio))
    new_h, new_w = max(1, int(ratio * height)), max(1, int(ratio * width))
    top = int(rng.integers(0, height - new_h + 1))
    left = int(rng.integers(0, width - new_w + 1))

    pasted_image, pasted_masks = paste_resize(
        source["image"], source["masks"][picked], (new_h, new_w)
    )
    canvas = pasted_masks.new_zeros((chosen, height, width))
    canvas[:, top : top + new_h, left : left + new_w] = pasted_masks
    keep = (canvas.flatten(1) != 0).any(dim=1)
    target_masks = target["masks"]
    if target_masks.shape[0] and bool(keep.any()):
        inter = canvas.flatten(1).float() @ target_masks.flatten(1).float().T  # (chosen, N)
        hidden = inter / target_masks.flatten(1).sum(dim=1).clamp(min=1).float()
        keep &= hidden.max(dim=1).values < 0.5
    if not bool(keep.any()):
        return target
    canvas = canvas[keep]
    alpha = (canvas != 0).any(dim=0)
    image = target["image"].clone()
    region = image[:, top : top + new_h, left : left + new_w]
    region_alpha = alpha[top : top + new_h, left : left + new_w]
    image[:, top : top + new_h, left : left + new_w] = torch.where(
        region_alpha, pasted_image, region
    )
    remaining = target_masks * (~alpha).to(target_masks.dtype)
    visible = (remaining.flatten(1) != 0).any(dim=1)
    levels = torch.cat([target["levels"][visible], source["levels"][picked][keep]])
    masks = torch.cat([remaining[visible], canvas])
    pasted = {**target, "image": image, "masks": masks, "levels": levels}
    if "boxes" in target:
        # The authors recompute every box from the masks after a paste (when the target has
        # objects; onto an empty one they keep the pasted boxes, x and y shifts swapped: here
        # the masks' bounds always).
        pasted["boxes"] = boxes_from_masks(masks)
    return pasted


def boxes_from_masks(masks: torch.Tensor) -> torch.Tensor:
    """(N, 4) float32 xyxy boxes enclosing (N, H, W) masks, as COCO's ``toBbox``: the right
    and bottom edges are one past the last pixel. Empty masks give zeros."""
    if masks.shape[0] == 0:
        return torch.zeros((0, 4), dtype=torch.float32)
    binary = masks != 0
    rows = binary.any(dim=2)
    cols = binary.any(dim=1)
    height, width = masks.shape[-2:]
    row_index = torch.arange(height)
    col_index = torch.arange(width)
    big = torch.iinfo(torch.int64).max
    y0 = torch.where(rows, row_index, big).min(dim=1).values
    y1 = torch.where(rows, row_index, -1).max(dim=1).values + 1
    x0 = torch.where(cols, col_index, big).min(dim=1).values
    x1 = torch.where(cols, col_index, -1).max(dim=1).values + 1
    boxes = torch.stack([x0, y0, x1, y1], dim=1).float()
    boxes[~rows.any(dim=1)] = 0.0
    return boxes


def finalize(sample: dict) -> tuple[torch.Tensor, dict]:
    """(image, target): the sample's boxes (else the masks' bounds), without the objects whose
    mask or box resizing or pasting emptied (Detectron2's ``filter_empty_instances``: a box
    needs sides > 1e-5)."""
    masks = sample["masks"]
    nonempty = (masks.flatten(1) != 0).any(dim=1)
    if "boxes" in sample:
        # Detectron2 clips every transformed box to the image (a JSON's boxes may reach out).
        height, width = sample["image"].shape[-2:]
        boxes = sample["boxes"].float().clone()
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        nonempty &= ((boxes[:, 2] - boxes[:, 0]) > 1e-5) & ((boxes[:, 3] - boxes[:, 1]) > 1e-5)
        boxes = boxes[nonempty]
    else:
        boxes = boxes_from_masks(masks[nonempty])
    target = {
        "boxes": boxes,
        "levels": sample["levels"][nonempty].to(torch.int64),
        "masks": masks[nonempty],
    }
    return sample["image"], target


# --------------------------------------------------------------------- strong (student) view
_ERASERS = (  # (probability, area fraction range, aspect ratio range): Unbiased Teacher's
    (0.7, (0.05, 0.2), (0.3, 3.3)),
    (0.5, (0.02, 0.2), (0.1, 6.0)),
    (0.3, (0.02, 0.2), (0.05, 8.0)),
)


def strong_photometric(image: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """The student's strong view (Mean Teacher): colour jitter (p 0.8; brightness, contrast,
    saturation 0.4, hue 0.1, random order), grayscale (p 0.2), Gaussian blur (p 0.5, sigma
    0.1-2) and three random erasings with random pixel values. Geometry is unchanged, so the
    teacher's boxes from the weak view stay valid. (3, H, W) uint8 in and out."""
    if rng.random() < 0.8:
        factors = {
            "brightness": rng.uniform(0.6, 1.4),
            "contrast": rng.uniform(0.6, 1.4),
            "saturation": rng.uniform(0.6, 1.4),
            "hue": rng.uniform(-0.1, 0.1),
        }
        for name in rng.permutation(list(factors)):
            value = float(factors[name])
            if name == "brightness":
                image = TF.adjust_brightness(image, value)
            elif name == "contrast":
                image = TF.adjust_contrast(image, value)
            elif name == "saturation":
                image = TF.adjust_saturation(image, value)
            else:
                image = TF.adjust_hue(image, value)
    if rng.random() < 0.2:
        # torchvision returns the grey channel expanded to three (one memory location per
        # pixel), which in-place writes and pinned-memory copies refuse: make it real memory.
        image = TF.rgb_to_grayscale(image, num_output_channels=3).contiguous()
    if rng.random() < 0.5:
        sigma = float(rng.uniform(0.1, 2.0))
        kernel = 2 * math.ceil(3.0 * sigma) + 1
        image = TF.gaussian_blur(image, [kernel, kernel], [sigma, sigma])
    for prob, scale, ratio in _ERASERS:
        if rng.random() < prob:
            image = _erase(image, scale, ratio, rng)
    return image


def _erase(image: torch.Tensor, scale, ratio, rng: np.random.Generator) -> torch.Tensor:
    height, width = image.shape[-2:]
    area = height * width
    for _ in range(10):
        erase_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        h = int(round(math.sqrt(erase_area * aspect)))
        w = int(round(math.sqrt(erase_area / aspect)))
        if 0 < h < height and 0 < w < width:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            noise = torch.from_numpy(rng.integers(0, 256, size=(3, h, w), dtype=np.uint8))
            image = image.clone()
            image[:, top : top + h, left : left + w] = noise
            return image
    return image
