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

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field

from hassod._checks import check_number

# False inside settings_unchecked(): the dataclasses' __post_init__ checks are skipped.
_CHECKING = contextvars.ContextVar("hassod_config_checks", default=True)
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
        if not _CHECKING.get():  # see settings_unchecked()
            return
        _check_fields(self, "model.", _MODEL_LIMITS)
        if self.backbone not in BACKBONES:
            raise ValueError(f"model.backbone must be one of {BACKBONES}, got {self.backbone!r}")
        if self.backbone_width % 4:
            raise ValueError(
                f"model.backbone_width must be a multiple of 4, got {self.backbone_width}"
            )
        if self.norm not in NORMS:
            raise ValueError(f"model.norm must be one of {NORMS}, got {self.norm!r}")
        if self.anchor_generator not in ANCHOR_GENERATORS:
            raise ValueError(
                f"model.anchor_generator must be one of {ANCHOR_GENERATORS}, "
                f"got {self.anchor_generator!r}"
            )
        if len(self.anchor_sizes) != 5:
            raise ValueError(
                f"model.anchor_sizes needs 5 entries (P2-P6), got {list(self.anchor_sizes)}"
            )
        _check_numbers("model.anchor_sizes", self.anchor_sizes, low=0, low_open=True)
        if not self.aspect_ratios:
            raise ValueError("model.aspect_ratios needs at least one ratio, got []")
        _check_numbers("model.aspect_ratios", self.aspect_ratios, low=0, low_open=True)
        # IoU thresholds that label proposals: 0 or 1 would make every / no proposal a
        # foreground (the authors' stages use 0.5, 0.6, 0.7)
        if not self.cascade_ious:
            raise ValueError("model.cascade_ious needs one IoU per cascade stage, got []")
        _check_numbers("model.cascade_ious", self.cascade_ious, 0, 1, low_open=True, high_open=True)
        if len(self.cascade_ious) != len(self.cascade_box_weights):
            raise ValueError(
                "model.cascade_ious and model.cascade_box_weights must have one entry per "
                f"stage, got {len(self.cascade_ious)} and {len(self.cascade_box_weights)}"
            )
        for weights in self.cascade_box_weights:
            if not isinstance(weights, (tuple, list)) or len(weights) != 4:
                raise ValueError(
                    "model.cascade_box_weights needs 4 weights (x, y, w, h) per stage, "
                    f"got {_literal(weights)!r}"
                )
            _check_numbers("model.cascade_box_weights", weights, low=0, low_open=True)
        for name in ("pixel_mean", "pixel_std"):
            values = getattr(self, name)
            if len(values) != 3:
                raise ValueError(f"model.{name} needs 3 values (R, G, B), got {_literal(values)}")
        _check_numbers("model.pixel_mean", self.pixel_mean)
        _check_numbers("model.pixel_std", self.pixel_std, low=0, low_open=True)
        if self.num_levels != 3:  # pseudo-labels, teacher targets and predict use three
            raise ValueError(
                f"model.num_levels must be 3 (whole, part, subpart), got {self.num_levels}"
            )
        if self.size_divisible % 32:  # the FPN adds upsampled stride-32 maps to finer ones
            raise ValueError(
                f"model.size_divisible must be a multiple of 32, got {self.size_divisible}"
            )


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
        if not _CHECKING.get():  # see settings_unchecked()
            return
        _check_fields(self, "data.", _DATA_LIMITS)
        if not self.min_sizes:
            raise ValueError("data.min_sizes needs at least one size, got []")
        _check_numbers("data.min_sizes", self.min_sizes, low=MIN_IMAGE_SIZE, integer=True)
        if not self.copy_paste_min_ratio <= self.copy_paste_max_ratio:
            raise ValueError(
                "data.copy_paste_min_ratio must be <= data.copy_paste_max_ratio, got "
                f"{self.copy_paste_min_ratio} > {self.copy_paste_max_ratio}"
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
        if not _CHECKING.get():  # see settings_unchecked()
            return
        _check_fields(self, "mean_teacher.", _MEAN_TEACHER_LIMITS)


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
        if not _CHECKING.get():  # see settings_unchecked()
            return
        for name, cls in (
            ("model", ModelConfig),
            ("data", DataConfig),
            ("mean_teacher", MeanTeacherConfig),
        ):
            if not isinstance(getattr(self, name), cls):
                raise TypeError(f"{name} must be a {cls.__name__}, got {getattr(self, name)!r}")
        _check_fields(self, "", _TRAIN_LIMITS)
        largest = self.batch_size
        if self.mean_teacher.iterations:  # the weak and strong views of each labelled image
            teacher = self.mean_teacher
            largest = max(largest, 2 * teacher.labeled_batch, teacher.unlabeled_batch)
        if self.micro_batch > largest:
            raise ValueError(
                f"micro_batch (--micro-batch) must be at most the images of one iteration "
                f"({largest}: batch_size, or the Mean Teacher batches), got {self.micro_batch}; "
                "0 runs each iteration's images in one pass"
            )

    @property
    def total_iterations(self) -> int:
        return self.iterations + self.mean_teacher.iterations


# Smallest resize target (train and test sizes): one cell of the stride-32 FPN level. Much
# smaller targets are no use and a 1-pixel one fails inside PyTorch's resize.
MIN_IMAGE_SIZE = 32

# (low, high, low_open, high_open) of each numeric setting; None: unbounded. Types come from
# the annotations: an int setting takes an int, a float one a finite int or float.
_POSITIVE = (1, None, False, False)
_COUNT = (0, None, False, False)
_FRACTION = (0.0, 1.0, False, False)  # [0, 1]
_OPEN_FRACTION = (0.0, 1.0, True, False)  # (0, 1]
_PROBABILITY_BELOW_ONE = (0.0, 1.0, False, True)  # [0, 1)
_MODEL_LIMITS = {
    "backbone_width": (4, None, False, False),
    "fpn_channels": _POSITIVE,
    "box_head_dim": _POSITIVE,
    "mask_head_channels": _POSITIVE,
    "mask_head_convs": _COUNT,
    "rpn_pre_nms_top_n_train": _POSITIVE,
    "rpn_pre_nms_top_n_test": _POSITIVE,
    "rpn_post_nms_top_n_train": _POSITIVE,
    "rpn_post_nms_top_n_test": _POSITIVE,
    "rpn_nms_thresh": _OPEN_FRACTION,
    "rpn_batch_size_per_image": _POSITIVE,
    "rpn_positive_fraction": _OPEN_FRACTION,
    "roi_batch_size_per_image": _POSITIVE,
    "roi_positive_fraction": _OPEN_FRACTION,
    "level_loss_alpha": _FRACTION,
    "level_loss_gamma": _COUNT,
    "drop_loss_iou": _PROBABILITY_BELOW_ONE,
    "score_thresh": _FRACTION,  # 1 keeps nothing (a test of an empty result)
    "nms_thresh": _OPEN_FRACTION,
    "detections_per_image": _POSITIVE,
    "size_divisible": _POSITIVE,
}
_DATA_LIMITS = {
    "max_size": (MIN_IMAGE_SIZE, None, False, False),
    "test_min_size": (MIN_IMAGE_SIZE, None, False, False),
    "test_max_size": (MIN_IMAGE_SIZE, None, False, False),
    "flip_prob": _FRACTION,
    "copy_paste_prob": _FRACTION,
    "copy_paste_min_ratio": _OPEN_FRACTION,
    "copy_paste_max_ratio": _OPEN_FRACTION,
    "num_workers": _COUNT,
}
_MEAN_TEACHER_LIMITS = {
    "iterations": _COUNT,
    "labeled_batch": _POSITIVE,
    "unlabeled_batch": _POSITIVE,
    "ema_keep_rate": _FRACTION,
    "score_threshold": _PROBABILITY_BELOW_ONE,
    "cover": _OPEN_FRACTION,
    "pseudo_weight": _COUNT,
    "teacher_weight": _COUNT,
    "warmup_iters": _COUNT,
}
_TRAIN_LIMITS = {
    "iterations": _COUNT,
    "batch_size": _POSITIVE,
    "micro_batch": _COUNT,
    "base_lr": (0.0, None, True, False),
    "warmup_iters": _COUNT,
    "warmup_factor": _FRACTION,
    "momentum": _PROBABILITY_BELOW_ONE,
    "weight_decay": _COUNT,
    "weight_decay_norm": _COUNT,
    "clip_grad_norm": _COUNT,
    "checkpoint_period": _POSITIVE,
    "log_period": _POSITIVE,
    "seed": _COUNT,
}
# The `hassod train` options that set a setting, named in its error messages.
_OPTIONS = {
    "iterations": "--iterations",
    "batch_size": "--batch-size",
    "micro_batch": "--micro-batch",
    "base_lr": "--lr",
    "seed": "--seed",
    "checkpoint_period": "--checkpoint-period",
    "mean_teacher.iterations": "--mean-teacher-iterations",
    "data.num_workers": "--workers",
}


def _literal(value):
    """Tuples as lists, as a JSON config writes them."""
    if isinstance(value, (tuple, list)):
        return [_literal(item) for item in value]
    return value


def _check_number(name: str, value, kind: str, limits=(None, None, False, False)) -> None:
    """ValueError / TypeError naming setting ``name`` (and its option) unless ``value`` is a
    ``kind`` ("int" or "float": finite) inside ``limits`` (low, high, low_open, high_open)."""
    label = f"{name} ({_OPTIONS[name]})" if name in _OPTIONS else name
    low, high, low_open, high_open = limits
    check_number(
        label, value, integer=kind == "int", low=low, high=high, low_open=low_open,
        high_open=high_open,
    )  # fmt: skip


def _check_numbers(
    name: str, values, low=None, high=None, *, low_open=False, high_open=False, integer=False
) -> None:
    if not isinstance(values, (tuple, list)):
        raise TypeError(f"{name} must be a list of numbers, got {values!r}")
    for value in values:
        try:
            _check_number(name, value, "int" if integer else "float")
            _check_number(name, value, "float", (low, high, low_open, high_open))
        except (TypeError, ValueError) as error:
            raise type(error)(f"{error} in {_literal(values)}") from None


def _check_fields(section, prefix: str, limits: dict) -> None:
    """Type of every scalar setting of a config dataclass (from its annotations), range of
    the numeric ones in ``limits``; errors name the setting as ``prefix + name``."""
    for item in dataclasses.fields(section):
        value, name = getattr(section, item.name), prefix + item.name
        if item.type in ("int", "float"):
            _check_number(name, value, item.type, limits.get(item.name, (None,) * 2 + (False,) * 2))
        elif item.type == "bool" and not isinstance(value, bool):
            raise TypeError(f"{name} must be true or false, got {value!r}")
        elif item.type == "str" and not isinstance(value, str):
            raise TypeError(f"{name} must be a string, got {value!r}")
        elif item.type == "tuple" and not isinstance(value, (tuple, list)):
            raise TypeError(f"{name} must be a list, got {value!r}")


@contextlib.contextmanager
def settings_unchecked() -> Iterator[None]:
    """Build configs without the setting checks: for the settings stored in a checkpoint of an
    earlier version, which may fail a check added since (its network still loads), and for
    settings changed one at a time and checked once at the end (:func:`check_config`)."""
    token = _CHECKING.set(False)
    try:
        yield
    finally:
        _CHECKING.reset(token)


def check_config(config: TrainConfig) -> None:
    """Check every setting again (a dataclass can be changed after it was built): TypeError
    or ValueError naming the setting and what it takes. :func:`hassod.detector.train` runs it
    before training starts."""
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    token = _CHECKING.set(True)
    try:
        for section in (config.model, config.data, config.mean_teacher, config):
            section.__post_init__()
    finally:
        _CHECKING.reset(token)


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


# Each settings class by the prefix of its settings' paths (base_lr, model.backbone, ...).
_SECTIONS = {
    "": TrainConfig,
    "model.": ModelConfig,
    "data.": DataConfig,
    "mean_teacher.": MeanTeacherConfig,
}


def _suggestion(key: str, prefix: str) -> str:
    """The setting an unknown ``key`` of the ``prefix`` section (``""``, ``"model."``, ...)
    likely means (``base_lr``, ``model.backbone``, ``the top-level seed``), or ``""``: the
    setting of the command-line option of that name (``lr``: ``base_lr``), else a close
    spelling in the same section, else the name or a close spelling in another section."""
    import difflib

    option = "--" + key.lstrip("-").replace("_", "-")
    found = [path for path, name in _OPTIONS.items() if name == option]
    if not found:
        names = [item.name for item in dataclasses.fields(_SECTIONS[prefix])]
        found = [prefix + name for name in difflib.get_close_matches(key, names, n=1)]
    if not found:
        paths = [p + item.name for p, cls in _SECTIONS.items() for item in dataclasses.fields(cls)]
        leaves = {path.rsplit(".", 1)[-1]: path for path in reversed(paths)}
        found = [leaves[name] for name in difflib.get_close_matches(key, list(leaves), n=1)]
    if not found:
        return ""
    return f"the top-level {found[0]}" if prefix and "." not in found[0] else found[0]


def _section(cls, data, base, name: str):
    if not isinstance(data, dict):
        raise TypeError(f"{name} must be a JSON object of settings, got {data!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        prefix = "" if cls is TrainConfig else f"{name}."
        hints = [(key, _suggestion(str(key), prefix)) for key in unknown]
        listed = [f"{key} (did you mean {hint}?)" if hint else str(key) for key, hint in hints]
        where = "top-level" if cls is TrainConfig else f"'{name}'"
        raise ValueError(f"unknown {where} settings: {', '.join(listed)}")
    values = {key: _tuples(value) for key, value in data.items()}
    return dataclasses.replace(base, **values)


def config_from_dict(data: dict, base: TrainConfig | None = None) -> TrainConfig:
    """Inverse of :func:`config_to_dict`; unknown keys are an error (a typo is not ignored).

    With ``base`` (e.g. a preset), settings the dict leaves out keep the base's values, section
    by section: ``{"model": {"backbone": "resnet18"}}`` changes only the backbone.
    """
    if not isinstance(data, dict):
        raise TypeError(f"settings must be a JSON object, got {data!r}")
    data = dict(data)
    if base is None:
        base = TrainConfig()
    model = _section(ModelConfig, data.pop("model", {}), base.model, "model")
    data_config = _section(DataConfig, data.pop("data", {}), base.data, "data")
    mean_teacher = _section(
        MeanTeacherConfig, data.pop("mean_teacher", {}), base.mean_teacher, "mean_teacher"
    )
    top = _section(TrainConfig, data, base, "settings")
    return dataclasses.replace(top, model=model, data=data_config, mean_teacher=mean_teacher)
