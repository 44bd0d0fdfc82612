"""Stage 2: Cascade Mask R-CNN with a level head, trained on the pseudo-labels, then Mean Teacher.

Importing this package is light (no torch): the pieces load when used.

- :mod:`hassod.detector.config` -- settings dataclasses, the paper's defaults and a CPU preset
- :mod:`hassod.detector.model` -- :func:`build_detector` (torchvision parts + cascade + level head)
- :mod:`hassod.detector.data` -- pseudo-label JSON -> training batches (resize, flip, copy-paste)
- :mod:`hassod.detector.training` -- :func:`train` (burn-in, then Mean Teacher), checkpoints, logs
- :mod:`hassod.detector.predict` -- :class:`Predictor` and :func:`predict_images` (COCO results)
"""

from __future__ import annotations

_LAZY = {
    "TrainConfig": "hassod.detector.config",
    "ModelConfig": "hassod.detector.config",
    "DataConfig": "hassod.detector.config",
    "MeanTeacherConfig": "hassod.detector.config",
    "paper_config": "hassod.detector.config",
    "cpu_small_config": "hassod.detector.config",
    "build_detector": "hassod.detector.model",
    "train": "hassod.detector.training",
    "Predictor": "hassod.detector.predict",
    "predict_images": "hassod.detector.predict",
    "filter_levels": "hassod.detector.predict",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hassod.detector' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
