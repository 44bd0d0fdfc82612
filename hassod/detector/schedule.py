"""Learning-rate and branch-weight schedules: pure functions of the iteration number.

Phase 1 (burn-in, iterations ``[0, B)``): linear warm-up from ``warmup_factor * base_lr`` over
``warmup_iters``, then constant ``base_lr`` (the paper). Phase 2 (Mean Teacher, ``[B, B + T)``),
with ``t = iteration - B`` and ``c(t) = (1 + cos(pi t / T)) / 2`` (1 at t = 0, 1/2 at T/2, 0 at
T): the LR is ``base_lr * c(t)`` (after an optional linear warm-up,
``mean_teacher.warmup_iters``); the pseudo-label branch weight ``p * c(t)`` (p = 1: 1 -> 0)
and the teacher branch weight ``q + p * (1 - c(t))`` (q = 2: 2 -> 3), as the authors' cosine
"adaptive targets" schedule.
"""

from __future__ import annotations

import math

from hassod.detector.config import TrainConfig


def cosine_factor(step: float, total: float) -> float:
    """``(1 + cos(pi * step / total)) / 2``, clamped to [0, 1] outside ``[0, total]``."""
    if total <= 0:
        return 0.0
    progress = min(max(step / total, 0.0), 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def learning_rate(iteration: int, config: TrainConfig) -> float:
    """The LR of ``iteration`` (0-based). A Mean Teacher warm-up longer than the phase is
    cut to the phase, as the authors' Detectron2 scheduler cuts it
    (``min(warmup / max_iter, 1)``)."""
    mean_teacher = config.mean_teacher
    if iteration >= config.iterations and mean_teacher.iterations:
        step, total = iteration - config.iterations, mean_teacher.iterations
        warmup = min(mean_teacher.warmup_iters, total)
        if step < warmup:  # Detectron2's WarmupParamScheduler: linear up to the cosine
            start, end = config.warmup_factor, cosine_factor(warmup, total)
            return config.base_lr * (start + (end - start) * step / warmup)
        return config.base_lr * cosine_factor(step, total)
    if config.warmup_iters and iteration < config.warmup_iters:
        alpha = iteration / config.warmup_iters
        return config.base_lr * (config.warmup_factor * (1.0 - alpha) + alpha)
    return config.base_lr


def branch_weights(iteration: int, config: TrainConfig) -> tuple[float, float]:
    """(pseudo-label branch weight, teacher branch weight) of ``iteration``.

    Burn-in iterations train on pseudo-labels alone: (1, 0).
    """
    mean_teacher = config.mean_teacher
    if iteration < config.iterations or not mean_teacher.iterations:
        return 1.0, 0.0
    factor = cosine_factor(iteration - config.iterations, mean_teacher.iterations)
    pseudo = mean_teacher.pseudo_weight * factor
    teacher = mean_teacher.teacher_weight + mean_teacher.pseudo_weight - pseudo
    return pseudo, teacher
