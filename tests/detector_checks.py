"""Shared settings and data for the detector tests (tests/test_detector*.py): a tiny model,
tiny synthetic images, a fixed schedule, so the whole detector suite runs in a few minutes
on two CPU cores."""

from __future__ import annotations

import dataclasses

import torch

from hassod.detector.config import cpu_small_config


def tiny_config(iterations: int = 4, mean_teacher: int = 0, size: int = 96, augment: bool = True):
    """The cpu-small preset at ``size`` px, no loader workers, batch 2 everywhere."""
    config = cpu_small_config()
    data = dataclasses.replace(
        config.data,
        min_sizes=(size - 16, size) if augment else (size,),
        max_size=size,
        test_min_size=size,
        test_max_size=size,
        flip_prob=0.5 if augment else 0.0,
        copy_paste_prob=1.0 if augment else 0.0,
        num_workers=0,
    )
    teacher = dataclasses.replace(
        config.mean_teacher, iterations=mean_teacher, labeled_batch=1, unlabeled_batch=2
    )
    return dataclasses.replace(
        config, data=data, mean_teacher=teacher, iterations=iterations, warmup_iters=2, log_period=2
    )


def square_target(size: int = 64):
    """One image's target: a whole object with a part inside, and a separate whole object."""
    masks = torch.zeros((3, size, size), dtype=torch.uint8)
    masks[0, 8:40, 8:40] = 1
    masks[1, 12:24, 12:24] = 1
    masks[2, 44:60, 30:62] = 1
    boxes = torch.tensor([[8, 8, 40, 40], [12, 12, 24, 24], [30, 44, 62, 60]], dtype=torch.float32)
    return {"boxes": boxes, "levels": torch.tensor([0, 1, 0]), "masks": masks}


def states_equal(first: dict, second: dict) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
