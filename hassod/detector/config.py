"""Stage-2 settings as dataclasses: the paper's defaults and a small CPU preset for tests.

Plain Python (no torch import), JSON round-trippable with :func:`config_to_dict` /
:func:`config_from_dict`, so a checkpoint carries the exact settings it was trained with.

Defaults follow DESIGN.md section 5 and the authors' Detectron2 configs
(``cascade_mask_rcnn_R_50_FPN.yaml`` and ``..._MT.yaml``): Cascade Mask R-CNN R50-FPN, one
foreground class, cascade IoUs 0.5/0.6/0.7, 40k burn-in iterations at batch 16, LR 0.01
constant after a linear warm-up, weight decay 5e-5, per-parameter gradient-norm clipping at 1.0
(Detectron2's ``CLIP_GRADIENTS`` wraps the optimizer per parameter), AMP, then
Mean Teacher (EMA keep rate 0.9996, teacher score > 0.7, coverage 0.75, adaptive weights).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

NORMS = ("auto", "frozen_bn", "bn", "syncbn", "gn")
ANCHOR_GENERATORS = ("detectron2", "torchvision")  # see hassod.detector.anchors
BACKBONES = ("resnet50", "resnet101", "resnet34", "resnet18", "resnet10")


@dataclass
class ModelConfig:
    """Cascade Mask R-CNN with a level head (DESIGN.md section 5).

    ``norm`` is the backbone's (and FPN's / heads') normalisation: ``auto`` gives frozen
    BatchNorm when backbone weights are loaded (their statistics are kept, which is what
    torchvision's detection models do) and GroupNorm(32) without weights, because a randomly
    initialised ResNet-50 with frozen (identity) BatchNorm has no normalisation at all and its
    activations blow up; GroupNorm does not depend on the per-GPU batch size. ``syncbn`` is the
    authors' choice (BatchNorm synchronised across GPUs under DDP; plain BatchNorm otherwise).
    """

    backbone: str = "resnet50"
    backbone_width: int = 64  # channels of the first stage; 64 is the standard ResNet
    norm: str = "auto"
    fpn_channels: int = 256
    box_head_dim: int = 1024
    mask_head_channels: int = 256
    mask_head_convs: int = 4
    anchor_sizes: tuple = (32, 64, 128, 256, 512)  # one per FPN level P2-P6
    aspect_ratios: tuple = (0.5, 1.0, 2.0)
    # detectron2: the authors' anchors (strides 4-64, exact sizes, float32); torchvision: its
    # AnchorGenerator (strides inferred per image, P6's wrong for odd sizes; rounded sizes),
    # which checkpoints written before this setting were trained with (hassod.detector.anchors)
    anchor_generator: str = "detectron2"
    rpn_pre_nms_top_n_train: int = 2000  # per FPN level
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_train: int = 4000  # per image (authors' POST_NMS_TOPK_TRAIN)
    rpn_post_nms_top_n_test: int = 1000
    rpn_nms_thresh: float = 0.65
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    roi_batch_size_per_image: int = 512
    roi_positive_fraction: float = 0.5
    cascade_ious: tuple = (0.5, 0.6, 0.7)
    cascade_box_weights: tuple = (
        (10.0, 10.0, 5.0, 5.0),
        (20.0, 20.0, 10.0, 10.0),
        (30.0, 30.0, 15.0, 15.0),
    )
    num_levels: int = 3  # whole / part / subpart
    level_loss_alpha: float = 0.25
    level_loss_gamma: float = 2.0
    drop_loss_iou: float = 0.01  # 0 disables DropLoss
    score_thresh: float = 0.0  # inference: stage-averaged score must exceed it
    nms_thresh: float = 0.5
    detections_per_image: int = 1000
    # RGB pixel statistics on the 0-255 scale (ImageNet; the authors' PIXEL_MEAN/STD)
    pixel_mean: tuple = (123.675, 116.28, 103.53)
    pixel_std: tuple = (58.395, 57.12, 57.375)
    size_divisible: int = 32

    def __post_init__(self):
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.backbone_width < 4 or self.backbone_width % 4:
            raise ValueError(f"backbone_width must be a multiple of 4, got {self.backbone_width}")
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if len(self.cascade_ious) != len(self.cascade_box_weights):
            raise ValueError(
                "cascade_ious and cascade_box_weights must have one entry per stage, got "
                f"{len(self.cascade_ious)} and {len(self.cascade_box_weights)}"
            )
        if self.anchor_generator not in ANCHOR_GENERATORS:
            raise ValueError(
                f"anchor_generator must be one of {ANCHOR_GENERATORS}, "
                f"got {self.anchor_generator!r}"
            )
        if len(self.anchor_sizes) != 5:
            raise ValueError(f"anchor_sizes needs 5 entries (P2-P6), got {self.anchor_sizes}")
        if self.detections_per_image < 1:
            raise ValueError(f"detections_per_image must be >= 1, got {self.detections_per_image}")
        if not 0.0 <= self.drop_loss_iou < 1.0:
            raise ValueError(f"drop_loss_iou must be in [0, 1), got {self.drop_loss_iou}")


@dataclass
class DataConfig:
    """Input pipeline: multi-scale resize, flip, copy-paste (authors' CutLER-style settings)."""

    min_sizes: tuple = (240, 320, 480, 640, 672, 704, 736, 768, 800, 1024)
    max_size: int = 1333
    test_min_size: int = 800
    test_max_size: int = 1333
    flip_prob: float = 0.5
    copy_paste_prob: float = 1.0
    copy_paste_min_ratio: float = 0.3
    copy_paste_max_ratio: float = 1.0
    num_workers: int = 4
    # Each process's batch of one orientation (Detectron2's ASPECT_RATIO_GROUPING, which the
    # authors' loaders require): less padding, and copy-paste pairs images of one shape.
    aspect_ratio_grouping: bool = True

    def __post_init__(self):
        if not self.min_sizes or min(self.min_sizes) < 1:
            raise ValueError(f"min_sizes must be positive sizes, got {self.min_sizes}")
        if not 0.0 < self.copy_paste_min_ratio <= self.copy_paste_max_ratio <= 1.0:
            raise ValueError(
                "copy-paste ratios must satisfy 0 < min <= max <= 1, got "
                f"{self.copy_paste_min_ratio}, {self.copy_paste_max_ratio}"
            )


@dataclass
class MeanTeacherConfig:
    """Phase 2 (DESIGN.md section 5; authors' ``cascade_mask_rcnn_R_50_FPN_MT.yaml``).

    The pseudo-label branch's weight falls 1 -> 0 and the teacher branch's rises 2 -> 3 on a
    cosine over ``iterations``; the LR follows the same cosine from ``TrainConfig.base_lr``
    to 0 (DESIGN.md section 5). DropLoss is off in this phase, as in the authors' config.

    ``warmup_iters`` > 0 puts Detectron2's linear warm-up in front of the LR cosine (from
    ``TrainConfig.warmup_factor * base_lr`` up to the cosine's value at ``warmup_iters``, then
    the cosine), which is what the authors' public script runs: their Mean Teacher job is a
    fresh Detectron2 run with ``WarmupCosineLR`` and the default ``WARMUP_ITERS`` 1000, so its
    LR climbs to 0.005 over the first 1000 of 2000 iterations before falling to 0. Set 1000 to
    reproduce that; the default 0 is the paper's plain cosine. The branch weights never warm
    up (the authors' weight schedule is a plain cosine).
    """

    iterations: int = 2000  # 0: no Mean Teacher phase
    labeled_batch: int = 8  # pseudo-label images (both the weak and the strong view train)
    unlabeled_batch: int = 8  # teacher-labelled images
    ema_keep_rate: float = 0.9996
    score_threshold: float = 0.7
    cover: float = 0.75
    pseudo_weight: float = 1.0  # start of the pseudo-label branch weight (-> 0)
    teacher_weight: float = 2.0  # start of the teacher branch weight (-> + pseudo_weight)
    drop_loss: bool = False
    warmup_iters: int = 0  # linear LR warm-up in front of the cosine (authors' script: 1000)

    def __post_init__(self):
        if self.iterations < 0:
            raise ValueError(f"mean-teacher iterations must be >= 0, got {self.iterations}")
        if self.warmup_iters < 0:
            raise ValueError(f"mean-teacher warmup_iters must be >= 0, got {self.warmup_iters}")
        if not 0.0 <= self.ema_keep_rate <= 1.0:
            raise ValueError(f"ema_keep_rate must be in [0, 1], got {self.ema_keep_rate}")


@dataclass
class TrainConfig:
    """Whole training run: burn-in on pseudo-labels, then the Mean Teacher phase."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    mean_teacher: MeanTeacherConfig = field(default_factory=MeanTeacherConfig)
    iterations: int = 40000  # burn-in (phase 1)
    batch_size: int = 16  # images per iteration, all processes together
    micro_batch: int = 0  # images per forward pass on one process; 0: the whole share
    base_lr: float = 0.01
    warmup_iters: int = 1000
    warmup_factor: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 5e-5
    weight_decay_norm: float = 0.0  # no decay on normalisation weights (Detectron2's default)
    clip_grad_norm: float = 1.0  # L2 norm each parameter's gradient is clipped to; 0 disables
    amp: bool = True  # fp16 autocast + GradScaler on CUDA; ignored on CPU
    checkpoint_period: int = 5000
    log_period: int = 20
    seed: int = 0

    def __post_init__(self):
        if self.iterations < 0:
            raise ValueError(f"iterations must be >= 0, got {self.iterations}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.micro_batch < 0:
            raise ValueError(f"micro_batch must be >= 0, got {self.micro_batch}")
        if self.base_lr <= 0:
            raise ValueError(f"base_lr must be > 0, got {self.base_lr}")

    @property
    def total_iterations(self) -> int:
        return self.iterations + self.mean_teacher.iterations


def paper_config() -> TrainConfig:
    """The paper's configuration (all defaults)."""
    return TrainConfig()


def cpu_small_config() -> TrainConfig:
    """A tiny model and schedule that trains in seconds on a laptop CPU (tests, smoke runs).

    ResNet-10 (one BasicBlock per stage) at a quarter width, GroupNorm, 32-channel FPN, 64-d
    box head, two 16-channel mask convs, 96-160 px inputs, 64 sampled RoIs per image, batch 2.
    """
    return TrainConfig(
        model=ModelConfig(
            backbone="resnet10",
            backbone_width=16,
            norm="gn",
            fpn_channels=32,
            box_head_dim=64,
            mask_head_channels=16,
            mask_head_convs=2,
            anchor_sizes=(8, 16, 32, 64, 128),
            rpn_pre_nms_top_n_train=200,
            rpn_pre_nms_top_n_test=100,
            rpn_post_nms_top_n_train=100,
            rpn_post_nms_top_n_test=100,
            rpn_batch_size_per_image=64,
            roi_batch_size_per_image=64,
            detections_per_image=100,
        ),
        data=DataConfig(
            min_sizes=(96, 112, 128),
            max_size=160,
            test_min_size=128,
            test_max_size=160,
            num_workers=0,
        ),
        mean_teacher=MeanTeacherConfig(iterations=0, labeled_batch=1, unlabeled_batch=1),
        iterations=30,
        batch_size=2,
        base_lr=0.01,
        warmup_iters=5,
        checkpoint_period=1000,
        log_period=5,
        amp=False,
    )


PRESETS = {"paper": paper_config, "cpu-small": cpu_small_config}


def preset(name: str) -> TrainConfig:
    """A named preset: ``paper`` or ``cpu-small``."""
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


def config_to_dict(config: TrainConfig) -> dict:
    """JSON-ready nested dict (tuples become lists)."""
    return dataclasses.asdict(config)


def _tuples(value):
    if isinstance(value, list):
        return tuple(_tuples(item) for item in value)
    return value


def _section(cls, data: dict | None, base=None):
    data = dict(data or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} settings: {', '.join(unknown)}")
    values = {key: _tuples(value) for key, value in data.items()}
    return cls(**values) if base is None else dataclasses.replace(base, **values)


def config_from_dict(data: dict, base: TrainConfig | None = None) -> TrainConfig:
    """Inverse of :func:`config_to_dict`; unknown keys are an error (a typo is not ignored).

    With ``base`` (e.g. a preset), settings the dict leaves out keep the base's values, section
    by section: ``{"model": {"backbone": "resnet18"}}`` changes only the backbone.
    """
    data = dict(data)
    if base is None:
        base = TrainConfig()
    model = _section(ModelConfig, data.pop("model", None), base.model)
    data_config = _section(DataConfig, data.pop("data", None), base.data)
    mean_teacher = _section(MeanTeacherConfig, data.pop("mean_teacher", None), base.mean_teacher)
    top = _section(TrainConfig, data, base)
    return dataclasses.replace(top, model=model, data=data_config, mean_teacher=mean_teacher)
