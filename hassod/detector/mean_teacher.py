"""Mean Teacher pieces: the EMA teacher update and teacher detections -> training targets.

The teacher is an exponential moving average of the student (DESIGN.md section 5): copied from
the student when phase 2 starts, then ``teacher <- keep * teacher + (1 - keep) * student``
before every student step (keep rate 0.9996), over parameters and floating-point buffers
(integer buffers are copied). Its detections on the weakly augmented view with score > 0.7
become the targets of the student's strongly augmented view; their levels are recomputed from
the teacher's masks with the coverage forest at cover 0.75 (:func:`hassod.build_hierarchy`),
the masks pasted as Detectron2 pastes them (:func:`hassod.detector.paste.paste_masks`) and the
forests of all images built in one pass, on the GPU when the masks are there and the CUDA
module is built.
The teacher skips its detections at or below that score from the start
(:func:`skip_detections_below`: the same targets, no masks computed for boxes then dropped).
The masks are used for the levels only: teacher targets carry no masks, so they add nothing
to the mask loss (the authors compute that loss and weight it by 0).

The teacher runs in eval mode. The authors' teacher stays in training mode: its RPN keeps the
training top-k (2000 per level, 4000 after NMS) and SyncBN layers use batch statistics. With
frozen BatchNorm or GroupNorm (this package's choices) only the proposal count differs; eval
mode is kept because it is what prediction uses, so the teacher labels what it would predict.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from hassod.detector.paste import paste_masks


@torch.no_grad()
def ema_update(teacher: torch.nn.Module, student: torch.nn.Module, keep_rate: float) -> None:
    """In place: every floating-point entry of ``teacher.state_dict()`` becomes
    ``teacher * keep_rate + student * (1 - keep_rate)``; other entries are copied.
    ``keep_rate = 0`` copies the student."""
    student_state = student.state_dict()
    teacher_state = teacher.state_dict()
    missing = sorted(set(teacher_state) - set(student_state))
    if missing:
        raise KeyError(f"student has no {missing[0]} (and {len(missing) - 1} more teacher entries)")
    for name, value in teacher_state.items():
        source = student_state[name].detach().to(value.device)
        if value.dtype.is_floating_point and keep_rate > 0:
            value.copy_(value * keep_rate + source * (1.0 - keep_rate))
        else:
            value.copy_(source)


def skip_detections_below(model: torch.nn.Module, score_threshold: float) -> None:
    """In place: ``model`` (a HassodDetector) stops producing detections scoring at or below
    ``score_threshold`` (if its own inference threshold is lower).

    For the teacher, whose detections at or below the pseudo-label score are dropped anyway:
    the boxes above it are the same (greedy NMS and the top-k never let a lower-scoring box
    remove a higher one), and the mask head no longer runs on the up to 1000 others per image.
    """
    config = model.config
    if score_threshold > config.score_thresh:
        config = dataclasses.replace(config, score_thresh=float(score_threshold))
        model.config = config
        model.roi_heads.config = config


def hierarchy_levels(masks: list[torch.Tensor], cover: float) -> list[torch.Tensor]:
    """Levels (int64, on each stack's device) of the coverage forests of (K_i, H_i, W_i) bool
    mask stacks: in one pass on the GPU when the stacks are CUDA tensors and the CUDA module
    is built (no copy of full-size masks to the host), else on the CPU's threads."""
    import hassod
    from hassod._native import cuda_module

    if not masks:
        return []
    if masks[0].is_cuda and cuda_module() is not None:
        forests = hassod.build_hierarchy_batch(masks, cover=cover)
        return [forest.level.to(torch.int64) for forest in forests]
    forests = hassod.build_hierarchy_batch([m.cpu().numpy() for m in masks], cover=cover)
    return [
        torch.as_tensor(np.asarray(forest.level), dtype=torch.int64).to(m.device)
        for forest, m in zip(forests, masks)
    ]


@torch.no_grad()
def teacher_targets(
    detections: list, image_sizes: list, score_threshold: float = 0.7, cover: float = 0.75
) -> list:
    """Teacher detections -> student targets, one dict per image.

    Args:
        detections: the detector's eval output per image (``boxes``, ``scores``,
            ``mask_probs``).
        image_sizes: (H, W) of each image (the weak and strong views share it).
        score_threshold: keep detections with a stage-averaged score above it.
        cover: coverage threshold of the forest the levels are recomputed with.

    Returns dicts with ``boxes`` (K, 4), ``levels`` (K,) int64 and ``scores`` (K,), one entry
    per detection above the threshold whose box has both sides > 1e-5. An empty box (clipping
    at the image border can leave one) is dropped, as Detectron2 drops empty annotation boxes:
    it has IoU 0 with every anchor, so the RPN's low-quality matching makes every anchor
    positive with an infinite regression target, and the step would be skipped. (The authors'
    ``threshold_bbox`` keeps such boxes.) A detection whose pasted mask is empty at 0.5 is kept
    for its box: in the forest it is a root that covers nothing, i.e. a whole object, as in
    the authors' ``build_tree_and_assign_levels`` (its coverage 0/0 is NaN, never >= cover).
    """
    targets, masks = [], []
    for detection, size in zip(detections, image_sizes):
        boxes = detection["boxes"].float()
        keep = (
            (detection["scores"] > score_threshold)
            & ((boxes[:, 2] - boxes[:, 0]) > 1e-5)
            & ((boxes[:, 3] - boxes[:, 1]) > 1e-5)
        )
        boxes = boxes[keep]
        targets.append({"boxes": boxes, "scores": detection["scores"][keep]})
        masks.append(paste_masks(detection["mask_probs"][keep], boxes, tuple(size), 0.5))
    for target, levels in zip(targets, hierarchy_levels(masks, cover)):
        target["levels"] = levels
    return targets
