"""Detectron2 checkpoints of the HASSOD detector (the authors' released model) in hassod, and
hassod's detector as a Detectron2 checkpoint.

The authors train and release their Cascade Mask R-CNN with Detectron2 (``model.pth``, or a
Mean Teacher checkpoint holding ``modelStudent.*`` and ``modelTeacher.*``). Its layers are the
ones :class:`~hassod.detector.model.HassodDetector` builds, under other names, so such a file
loads here for ``hassod predict`` / :class:`~hassod.detector.predict.Predictor` and as the
start of ``hassod train --init-from``. :func:`convert_detectron2_detector` renames every
tensor, reads the architecture from their shapes (ResNet depth and width, FPN and head
widths, normalisation, stages, levels) and refuses what this model cannot hold exactly:

- the classifier: Detectron2 puts the object logit first and background last, torchvision
  the other way round: its rows are swapped;
- normalisation: BatchNorm in the FPN (the authors' SyncBN) gives ``norm="syncbn"``
  (inference uses the running statistics, as Detectron2's does); an FPN without norm and a
  ResNet with BatchNorm statistics gives ``frozen_bn``; GroupNorm gives ``gn``;
- the ResNet is assumed to stride in its 3x3 convolutions (``STRIDE_IN_1X1: False``, the
  authors' and CutLER's setting, and torchvision's); MSRA-style ImageNet ResNets stride in
  the 1x1 and would compute something else -- the weights cannot tell;
- settings not stored in weights (cascade IoUs and box weights, anchors, RPN top-k, test
  sizes, thresholds) are the authors' config's, which
  :func:`~hassod.detector.config.paper_config` holds -- unless the file is hassod's own
  export, which carries its run's settings under ``hassod_config`` (a JSON string that
  Detectron2's checkpointer returns unread as extra data), and those are used.

:func:`export_detectron2` goes the other way (``hassod export-detectron2``): a hassod
checkpoint's network under Detectron2's names, for the authors' ``train_net.py --eval-only``
and demo, with the config options that make Detectron2 build the same network
(:func:`detectron2_options`).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import torch

from hassod.detector.anchors import detectron2_cell_anchors
from hassod.detector.backbone import detectron2_resnet_name
from hassod.detector.checkpoint import check_weights
from hassod.detector.config import (
    DataConfig,
    ModelConfig,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    paper_config,
)

TEACHER, STUDENT = "modelTeacher.", "modelStudent."
# Top-level key of an exported file holding the run's TrainConfig as JSON. fvcore's
# Checkpointer.load returns unknown top-level keys as extra data and Detectron2's .pkl
# reader keeps them, so Detectron2 ignores it; a JSON string loads under weights_only.
SETTINGS_KEY = "hassod_config"
_PREDICTOR_KEY = "roi_heads.box_predictor.0.cls_score.weight"
# ResNets by block kind and blocks per stage (res2..res5).
_RESNETS = {
    ("bottleneck", (3, 4, 6, 3)): "resnet50",
    ("bottleneck", (3, 4, 23, 3)): "resnet101",
    ("basic", (1, 1, 1, 1)): "resnet10",
    ("basic", (2, 2, 2, 2)): "resnet18",
    ("basic", (3, 4, 6, 3)): "resnet34",
}
# Buffers Detectron2 may store that the model recomputes (anchors) or takes from its config.
_IGNORED = re.compile(
    r"^(proposal_generator\.anchor_generator\.cell_anchors\.\d+|pixel_(mean|std))$"
)


class Detectron2WeightsError(ValueError):
    """A Detectron2 checkpoint this model cannot hold (the message says what differs)."""


def is_detectron2_detector(state: dict) -> bool:
    """True for a Detectron2 R-CNN state dict with cascade box predictors (one model, or a
    Mean Teacher pair under ``modelStudent.`` / ``modelTeacher.``)."""
    return any(
        key in state for key in (_PREDICTOR_KEY, TEACHER + _PREDICTOR_KEY, STUDENT + _PREDICTOR_KEY)
    )


def select_model(state: dict, weights: str = "student") -> dict:
    """The state dict of one network: ``student`` / ``teacher`` of a Mean Teacher checkpoint
    (``auto``: the teacher), or the only network of a plain one (``student`` or ``auto``)."""
    check_weights(weights)
    paired = any(name.startswith((TEACHER, STUDENT)) for name in state)
    if not paired:
        if weights == "teacher":
            raise Detectron2WeightsError(
                "this Detectron2 checkpoint holds one network, not a Mean Teacher pair "
                "(no modelTeacher.*): use --weights student or auto"
            )
        return dict(state)
    prefix = STUDENT if weights == "student" else TEACHER
    chosen = {
        name[len(prefix) :]: value for name, value in state.items() if name.startswith(prefix)
    }
    if not chosen:
        other = "teacher" if prefix == STUDENT else "student"
        raise Detectron2WeightsError(
            f"this Mean Teacher checkpoint has no {prefix}* weights, only the {other} (which "
            f"predict and export-detectron2 take with --weights {other}; train --init-from "
            "takes the student)"
        )
    return chosen


def _count(state: dict, pattern: str) -> int:
    """How many distinct values the ``(\\d+)`` group of ``pattern`` takes among the keys."""
    compiled = re.compile(pattern)
    return len({match.group(1) for name in state if (match := compiled.match(name))})


def _shape(state: dict, name: str) -> tuple:
    if name not in state:
        raise Detectron2WeightsError(f"the checkpoint has no {name}")
    return tuple(state[name].shape)


def infer_model_config(state: dict) -> ModelConfig:
    """The :class:`ModelConfig` of one network's Detectron2 state dict (see the module
    docstring); raises :class:`Detectron2WeightsError` for layers this model does not have."""
    defaults = ModelConfig()
    backbone, width = _resnet(state)
    _check_box_heads(state)
    _check_mask_head(state)
    _check_rpn(state, defaults)
    return dataclasses.replace(
        defaults,
        backbone=backbone,
        backbone_width=width,
        norm=_norm(state),
        fpn_channels=_shape(state, "backbone.fpn_output2.weight")[0],
        box_head_dim=_shape(state, "roi_heads.box_head.0.fc1.weight")[0],
        mask_head_channels=_shape(state, "roi_heads.mask_head.mask_fcn1.weight")[0],
        mask_head_convs=_count(state, r"^roi_heads\.mask_head\.mask_fcn(\d+)\.weight$"),
        anchor_generator="detectron2",
        **_pixel_statistics(state),
    )


def _resnet(state: dict) -> tuple[str, int]:
    """(hassod backbone name, stem width) from the ResNet's blocks."""
    bottom = "backbone.bottom_up."
    kind = "bottleneck" if f"{bottom}res2.0.conv3.weight" in state else "basic"
    blocks = tuple(_count(state, rf"^{bottom}res{stage}\.(\d+)\.") for stage in (2, 3, 4, 5))
    backbone = _RESNETS.get((kind, blocks))
    if backbone is None:
        raise Detectron2WeightsError(
            f"unsupported ResNet: {kind} blocks {blocks} per stage (hassod builds "
            "ResNet-10/18/34/50/101)"
        )
    return backbone, _shape(state, f"{bottom}stem.conv1.weight")[0]


def _norm(state: dict) -> str:
    """BatchNorm statistics in the FPN: its (Sync)BN; GroupNorm there: GN; none there but BN
    statistics in the ResNet: frozen BN (hassod's FPN has no norm with it)."""
    if "backbone.fpn_lateral2.norm.running_mean" in state:
        return "syncbn"
    if "backbone.fpn_lateral2.norm.weight" in state:
        return "gn"
    if "backbone.bottom_up.stem.conv1.norm.running_mean" in state:
        return "frozen_bn"
    raise Detectron2WeightsError(
        "unsupported normalisation: a GroupNorm ResNet with an FPN without norm"
    )


def _check_box_heads(state: dict) -> None:
    """Three stages of two FC layers with a class-agnostic classifier, box and level head."""
    stages = _count(state, r"^roi_heads\.box_predictor\.(\d+)\.cls_score\.weight$")
    if stages != 3:
        raise Detectron2WeightsError(f"expected a 3-stage cascade, found {stages} box predictors")
    box_layers = {
        match.group(1)
        for name in state
        if (match := re.match(r"^roi_heads\.box_head\.\d+\.([a-z]+\d*)\.", name))
    }
    if box_layers != {"fc1", "fc2"}:
        raise Detectron2WeightsError(
            f"unsupported box head {sorted(box_layers)}: hassod's is two FC layers (fc1, fc2)"
        )
    classes = _shape(state, "roi_heads.box_predictor.0.cls_score.weight")[0]
    if classes != 2:
        raise Detectron2WeightsError(
            f"the classifier has {classes - 1} object classes; hassod's detector is "
            "class-agnostic (one class)"
        )
    if _shape(state, "roi_heads.box_predictor.0.bbox_pred.weight")[0] != 4:
        raise Detectron2WeightsError("box regression is not class-agnostic (4 outputs)")
    level_key = "roi_heads.box_predictor.0.level_predictor.weight"
    if level_key not in state:
        raise Detectron2WeightsError(
            "the checkpoint has no level head (roi_heads.box_predictor.K.level_predictor): "
            "a CutLER or plain Cascade R-CNN model, not HASSOD"
        )
    levels = _shape(state, level_key)[0]
    if levels != 3:
        raise Detectron2WeightsError(
            f"the level head has {levels} outputs; hassod's classifies 3 levels (the "
            "authors' focal / ce level loss)"
        )


def _check_mask_head(state: dict) -> None:
    if any(re.match(r"^roi_heads\.mask_head\.mask_fcn\d+\.norm\.", n) for n in state):
        raise Detectron2WeightsError("unsupported mask head with normalisation layers")
    if _shape(state, "roi_heads.mask_head.predictor.weight")[0] != 1:
        raise Detectron2WeightsError("the mask head is not class-agnostic (1 output)")


def _check_rpn(state: dict, defaults: ModelConfig) -> None:
    """Anchors per location, and the cell anchors where the checkpoint stores them (Detectron2
    0.6 and later keep them out of checkpoints: then the authors' sizes are assumed)."""
    anchors = _shape(state, "proposal_generator.rpn_head.objectness_logits.weight")[0]
    if anchors != len(defaults.aspect_ratios):
        raise Detectron2WeightsError(
            f"the RPN has {anchors} anchors per location; hassod's has "
            f"{len(defaults.aspect_ratios)} (one size per level, ratios {defaults.aspect_ratios})"
        )
    for level, size in enumerate(defaults.anchor_sizes):
        name = f"proposal_generator.anchor_generator.cell_anchors.{level}"
        expected = detectron2_cell_anchors((size,), defaults.aspect_ratios)
        if name in state and not torch.allclose(state[name].float(), expected, atol=1e-3):
            raise Detectron2WeightsError(
                f"the checkpoint's anchors at P{level + 2} ({state[name].tolist()}) are not "
                f"hassod's (size {size}, ratios {defaults.aspect_ratios})"
            )


def _pixel_statistics(state: dict) -> dict:
    """``pixel_mean`` / ``pixel_std`` where the checkpoint stores them (older Detectron2;
    later ones do not, and the authors' RGB ImageNet statistics are assumed)."""
    found = {
        name: tuple(float(v) for v in state[name].flatten().tolist())
        for name in ("pixel_mean", "pixel_std")
        if name in state
    }
    mean = found.get("pixel_mean")
    if mean is not None and len(mean) == 3 and mean[0] < mean[2]:
        # ImageNet's mean is (123.7, 116.3, 103.5) in RGB: reversed, the model reads BGR.
        raise Detectron2WeightsError(
            f"the checkpoint's pixel_mean {mean} is in BGR order (INPUT.FORMAT BGR); hassod "
            "feeds RGB (the authors' INPUT.FORMAT)"
        )
    return found


_FPN = {"lateral": "inner_blocks", "output": "layer_blocks"}
# Layer names, Detectron2's -> hassod's, per module (the RPN's bbox_pred is another layer).
_RPN_LAYERS = {"conv": "conv.0.0", "objectness_logits": "cls_logits", "anchor_deltas": "bbox_pred"}
_HEAD_LAYERS = {
    "cls_score": "cls_score",  # box predictors
    "bbox_pred": "bbox_pred",
    "level_predictor": "level_score",
    "deconv": "conv5_mask",  # mask head
    "predictor": "mask_fcn_logits",
}
# (Detectron2 name pattern, HassodDetector name), in the order they are tried.
_RULES = [
    (r"backbone\.fpn_(lateral|output)([2-5])\.norm\.(.+)", lambda m: _fpn(m, "1")),
    (r"backbone\.fpn_(lateral|output)([2-5])\.(.+)", lambda m: _fpn(m, "0")),
    (
        r"proposal_generator\.rpn_head\.(conv|objectness_logits|anchor_deltas)\.(.+)",
        lambda m: f"rpn.head.{_RPN_LAYERS[m[1]]}.{m[2]}",
    ),
    (
        r"roi_heads\.box_head\.(\d+)\.fc([12])\.(.+)",
        lambda m: f"roi_heads.box_heads.{m[1]}.fc{int(m[2]) + 5}.{m[3]}",
    ),
    (
        r"roi_heads\.box_predictor\.(\d+)\.(cls_score|bbox_pred|level_predictor)\.(.+)",
        lambda m: f"roi_heads.box_predictors.{m[1]}.{_HEAD_LAYERS[m[2]]}.{m[3]}",
    ),
    (
        r"roi_heads\.mask_head\.mask_fcn(\d+)\.(.+)",
        lambda m: f"roi_heads.mask_head.convs.{int(m[1]) - 1}.0.{m[2]}",
    ),
    (
        r"roi_heads\.mask_head\.(deconv|predictor)\.(.+)",
        lambda m: f"roi_heads.mask_head.predictor.{_HEAD_LAYERS[m[1]]}.{m[2]}",
    ),
]


def _fpn(match: re.Match, part: str) -> str:
    return f"backbone.fpn.{_FPN[match[1]]}.{int(match[2]) - 2}.{part}.{match[3]}"


def hassod_name(name: str) -> str | None:
    """The HassodDetector parameter a Detectron2 name holds (None: not a model tensor)."""
    if _IGNORED.match(name):
        return None
    if name.startswith("backbone.bottom_up."):
        return "backbone.body." + detectron2_resnet_name(name[len("backbone.bottom_up.") :])
    for pattern, rename in _RULES:
        match = re.fullmatch(pattern, name)
        if match:
            return rename(match)
    raise Detectron2WeightsError(f"unexpected tensor {name!r}: not a layer of hassod's detector")


def convert_detectron2_detector(
    state: dict, weights: str = "student", settings: TrainConfig | None = None
) -> tuple:
    """``(HassodDetector in eval mode, TrainConfig)`` from a Detectron2 state dict.

    ``state``: a checkpoint's ``model`` dict (tensors or NumPy arrays), of one network or a
    Mean Teacher pair (``weights`` picks, see :func:`select_model`). The config is
    ``settings`` (a hassod export's own, :func:`stored_settings`) when given, else
    :func:`~hassod.detector.config.paper_config` with the model section read from the
    weights. Every tensor must find its layer with the same shape, and every layer a tensor.
    """
    from hassod.detector.model import HassodDetector

    state = {name: torch.as_tensor(value) for name, value in select_model(state, weights).items()}
    model_config = infer_model_config(state)
    if settings is not None:
        _check_settings_fit(settings.model, model_config)
        model_config = settings.model
    model = HassodDetector(model_config, model_config.norm)
    target = model.state_dict()
    converted, problems = {}, []
    for name, tensor in state.items():
        ours = hassod_name(name)
        if ours is None:
            continue
        if ours not in target:
            if ours.endswith("num_batches_tracked"):  # FrozenBatchNorm keeps no count
                continue
            problems.append(f"{name}: no layer {ours}")
            continue
        if tuple(tensor.shape) != tuple(target[ours].shape):
            problems.append(f"{name}: {tuple(tensor.shape)} vs {tuple(target[ours].shape)}")
            continue
        if name.endswith(("cls_score.weight", "cls_score.bias")):
            tensor = tensor.flip(0)  # Detectron2: (object, background); torchvision: reversed
        converted[ours] = tensor.to(target[ours].dtype)
    for name in target:
        # Detectron2's FrozenBatchNorm2d (its default for the stem and res2, FREEZE_AT 2) keeps
        # no count: BatchNorm layers here need one, and at inference it is unused.
        if name.endswith("num_batches_tracked") and name not in converted:
            converted[name] = torch.zeros_like(target[name])
    missing = [name for name in target if name not in converted]
    if problems or missing:
        details = problems[:5] + [f"{name}: missing" for name in missing[:5]]
        raise Detectron2WeightsError(
            f"the Detectron2 weights do not fit hassod's {model_config.backbone} detector "
            f"({len(problems)} mismatched, {len(missing)} missing): " + "; ".join(details)
        )
    model.load_state_dict(converted)
    model.eval()
    config = settings or dataclasses.replace(paper_config(), model=model_config)
    return model, config


# Architecture settings the weights determine; the stored settings must agree with them.
_ARCHITECTURE = (
    "backbone",
    "backbone_width",
    "fpn_channels",
    "box_head_dim",
    "mask_head_channels",
    "mask_head_convs",
)


def _check_settings_fit(stored: ModelConfig, inferred: ModelConfig) -> None:
    differing = [
        f"{name} {getattr(stored, name)} vs {getattr(inferred, name)}"
        for name in _ARCHITECTURE
        if getattr(stored, name) != getattr(inferred, name)
    ]
    if differing:
        raise Detectron2WeightsError(
            f"the file's {SETTINGS_KEY} does not describe its weights (settings vs weights: "
            + "; ".join(differing)
            + "): the weights were replaced after export"
        )


def stored_settings(raw: dict) -> TrainConfig | None:
    """The run settings a hassod export carries (:data:`SETTINGS_KEY`), or None (the authors'
    files and other Detectron2 checkpoints have none)."""
    text = raw.get(SETTINGS_KEY) if isinstance(raw, dict) else None
    if text is None:
        return None
    try:
        return config_from_dict(json.loads(text))
    except (TypeError, ValueError) as error:
        raise Detectron2WeightsError(f"unreadable {SETTINGS_KEY} in the file: {error}") from None


def model_state(raw: dict) -> dict:
    """The state dict inside a loaded Detectron2 checkpoint (``{"model": ...}``, or bare)."""
    return raw["model"] if isinstance(raw.get("model"), dict) else raw


def is_detectron2_checkpoint(raw) -> bool:
    """True for a loaded Detectron2 checkpoint (or bare state dict) of the HASSOD detector."""
    return isinstance(raw, dict) and is_detectron2_detector(model_state(raw))


_BODY = [  # torchvision ResNet name -> Detectron2 name, in order
    (r"^bn1\.", "stem.conv1.norm."),
    (r"^conv1\.", "stem.conv1."),
    (r"^layer([1-4])\.", lambda m: f"res{int(m[1]) + 1}."),
    (r"\.bn(\d)\.", r".conv\1.norm."),
    (r"\.downsample\.0\.", ".shortcut."),
    (r"\.downsample\.1\.", ".shortcut.norm."),
]
_THEIRS = {ours: theirs for theirs, ours in _HEAD_LAYERS.items()}
_RPN_THEIRS = {ours: theirs for theirs, ours in _RPN_LAYERS.items()}
# (HassodDetector name pattern, Detectron2 name): the inverse of _RULES.
_INVERSE_RULES = [
    (
        r"backbone\.fpn\.(inner|layer)_blocks\.(\d)\.([01])\.(.+)",
        lambda m: (
            f"backbone.fpn_{'lateral' if m[1] == 'inner' else 'output'}{int(m[2]) + 2}."
            f"{'norm.' if m[3] == '1' else ''}{m[4]}"
        ),
    ),
    (
        r"rpn\.head\.(conv\.0\.0|cls_logits|bbox_pred)\.(.+)",
        lambda m: f"proposal_generator.rpn_head.{_RPN_THEIRS[m[1]]}.{m[2]}",
    ),
    (
        r"roi_heads\.box_heads\.(\d+)\.fc([67])\.(.+)",
        lambda m: f"roi_heads.box_head.{m[1]}.fc{int(m[2]) - 5}.{m[3]}",
    ),
    (
        r"roi_heads\.box_predictors\.(\d+)\.(cls_score|bbox_pred|level_score)\.(.+)",
        lambda m: f"roi_heads.box_predictor.{m[1]}.{_THEIRS[m[2]]}.{m[3]}",
    ),
    (
        r"roi_heads\.mask_head\.convs\.(\d+)\.0\.(.+)",
        lambda m: f"roi_heads.mask_head.mask_fcn{int(m[1]) + 1}.{m[2]}",
    ),
    (
        r"roi_heads\.mask_head\.predictor\.(conv5_mask|mask_fcn_logits)\.(.+)",
        lambda m: f"roi_heads.mask_head.{_THEIRS[m[1]]}.{m[2]}",
    ),
]


def detectron2_name(name: str) -> str:
    """The Detectron2 name of a HassodDetector state-dict entry (the inverse of
    :func:`hassod_name`)."""
    if name.startswith("backbone.body."):
        rest = name[len("backbone.body.") :]
        for pattern, replacement in _BODY:
            rest = re.sub(pattern, replacement, rest)
        return "backbone.bottom_up." + rest
    for pattern, rename in _INVERSE_RULES:
        match = re.fullmatch(pattern, name)
        if match:
            return rename(match)
    raise ValueError(f"no Detectron2 name for {name!r}")


def export_detectron2(model: torch.nn.Module) -> dict:
    """A HassodDetector's state dict under Detectron2's names (classifier rows in Detectron2's
    order: object, background), ready for ``torch.save({"model": ...})``."""
    # Only what makes the weights wrong is refused here; what keeps Detectron2 from building
    # the network at all is detectron2_options' (export_blockers), listed all at once.
    narrow = [  # named as Detectron2 names them
        detectron2_name(f"{name}.weight").removesuffix(".weight")
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.GroupNorm) and module.num_groups != 32
    ]
    if narrow:
        raise Detectron2WeightsError(
            "Detectron2's GroupNorm has 32 groups; these layers have fewer: " + ", ".join(narrow)
        )
    exported = {}
    for name, tensor in model.state_dict().items():
        theirs = detectron2_name(name)
        tensor = tensor.detach().cpu().clone()
        if name.endswith(("cls_score.weight", "cls_score.bias")):
            tensor = tensor.flip(0)
        exported[theirs] = tensor
    return exported


# ModelConfig settings -> the Detectron2 option that holds them, given where they differ from
# the authors' config (the architecture's options are always given).
_DIFFERING_OPTIONS = {
    "pixel_mean": "MODEL.PIXEL_MEAN",
    "pixel_std": "MODEL.PIXEL_STD",
    "rpn_pre_nms_top_n_train": "MODEL.RPN.PRE_NMS_TOPK_TRAIN",
    "rpn_pre_nms_top_n_test": "MODEL.RPN.PRE_NMS_TOPK_TEST",
    "rpn_post_nms_top_n_train": "MODEL.RPN.POST_NMS_TOPK_TRAIN",
    "rpn_post_nms_top_n_test": "MODEL.RPN.POST_NMS_TOPK_TEST",
    "rpn_nms_thresh": "MODEL.RPN.NMS_THRESH",
    "rpn_batch_size_per_image": "MODEL.RPN.BATCH_SIZE_PER_IMAGE",
    "rpn_positive_fraction": "MODEL.RPN.POSITIVE_FRACTION",
    "roi_batch_size_per_image": "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE",
    "roi_positive_fraction": "MODEL.ROI_HEADS.POSITIVE_FRACTION",
    "cascade_ious": "MODEL.ROI_BOX_CASCADE_HEAD.IOUS",
    "cascade_box_weights": "MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS",
    "score_thresh": "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
    "nms_thresh": "MODEL.ROI_HEADS.NMS_THRESH_TEST",
}
# ModelConfig settings without an option here: the architecture's (always given), the
# anchors (given as SIZES / ASPECT_RATIOS; the generator is warned about), the fixed three
# levels, training losses of the authors' fork (no effect on the exported network) and the
# padding (Detectron2's FPN fixes 32; another value refuses the export).
_OPTIONS_ELSEWHERE = (
    "backbone",
    "backbone_width",
    "norm",
    "fpn_channels",
    "box_head_dim",
    "mask_head_channels",
    "mask_head_convs",
    "detections_per_image",
    "anchor_sizes",
    "aspect_ratios",
    "anchor_generator",
    "num_levels",
    "level_loss_alpha",
    "level_loss_gamma",
    "drop_loss_iou",
    "size_divisible",
)


def _gn_has_32_groups(channels: int) -> bool:
    # hassod's GroupNorm takes 32 groups only from 64 channels on, in multiples of 32
    # (backbone._groups); Detectron2's always has 32.
    return channels % 32 == 0 and channels >= 64


def export_blockers(config: ModelConfig) -> list[tuple[str, dict]]:
    """Why Detectron2 cannot build this network: ``(reason naming the layers, the model
    settings that fix it)`` for each obstacle; empty when it can."""
    blockers = []
    if config.backbone == "resnet10":
        blockers.append(
            (
                "Detectron2 has no ResNet-10 (one block per stage; backbone resnet10)",
                {"backbone": "resnet18"},
            )
        )
    basic = config.backbone in ("resnet10", "resnet18", "resnet34")
    if basic and config.backbone_width != 64:
        blockers.append(
            (
                "Detectron2 builds ResNet-18/34 only at width 64 (its stem and res2 have 64 "
                f"channels; this model's backbone_width is {config.backbone_width})",
                {"backbone_width": 64},
            )
        )
    if config.norm == "gn":
        width = 64 if basic else config.backbone_width  # after the fix above
        if not _gn_has_32_groups(width):
            blockers.append(
                (
                    "Detectron2's GroupNorm has 32 groups; the ResNet's stem and res2 have "
                    f"{width} channels (backbone_width), which take fewer here",
                    {"backbone_width": 64 if width < 64 else -(-width // 32) * 32},
                )
            )
        if not _gn_has_32_groups(config.fpn_channels):
            blockers.append(
                (
                    "Detectron2's GroupNorm has 32 groups; the FPN's layers (fpn_lateral2-5, "
                    f"fpn_output2-5) have {config.fpn_channels} channels (fpn_channels), which "
                    "take fewer here",
                    {"fpn_channels": max(64, -(-config.fpn_channels // 32) * 32)},
                )
            )
    if config.norm not in ("syncbn", "bn", "frozen_bn", "gn"):
        blockers.append(
            (f"no Detectron2 normalisation for norm={config.norm!r}", {"norm": "syncbn"})
        )
    if config.size_divisible != 32:
        blockers.append(
            (
                "Detectron2 pads images to multiples of 32 (its FPN's size_divisibility); "
                f"this model pads to {config.size_divisible}",
                {"size_divisible": 32},
            )
        )
    return blockers


def _blockers_message(blockers: list[tuple[str, dict]]) -> str:
    fixes = {}
    for _, fix in blockers:
        fixes.update(fix)
    reasons = "; ".join(reason for reason, _ in blockers)
    return (
        f"Detectron2 cannot build this network: {reasons}. Train it with these settings in "
        f"the --config JSON: {json.dumps({'model': fixes})} (README: the authors' released "
        "detector)"
    )


def detectron2_options(config: ModelConfig, data: DataConfig | None = None) -> list[str]:
    """Detectron2 config options (``KEY VALUE`` pairs for the authors'
    ``cascade_mask_rcnn_R_50_FPN.yaml``) under which it builds this network, with the
    settings Detectron2 does not store in weights (anchors, pixel statistics, RPN top-k,
    cascade, thresholds: :data:`_DIFFERING_OPTIONS`) where they differ from the authors'."""
    blockers = export_blockers(config)
    if blockers:
        raise Detectron2WeightsError(_blockers_message(blockers))
    depth = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101}
    basic = config.backbone in ("resnet18", "resnet34")
    norms = {
        "syncbn": ("SyncBN", "SyncBN"),
        "bn": ("SyncBN", "SyncBN"),
        "frozen_bn": ("FrozenBN", ""),
        "gn": ("GN", "GN"),
    }
    if config.norm not in norms:
        raise Detectron2WeightsError(f"no Detectron2 normalisation for norm={config.norm!r}")
    backbone_norm, fpn_norm = norms[config.norm]
    options = {
        "MODEL.RESNETS.DEPTH": depth[config.backbone],
        "MODEL.RESNETS.RES2_OUT_CHANNELS": config.backbone_width * (1 if basic else 4),
        "MODEL.RESNETS.STEM_OUT_CHANNELS": config.backbone_width,
        # bottleneck channels of res2 = NUM_GROUPS (1) x WIDTH_PER_GROUP
        "MODEL.RESNETS.WIDTH_PER_GROUP": config.backbone_width,
        "MODEL.RESNETS.NORM": f'"{backbone_norm}"',
        "MODEL.RESNETS.STRIDE_IN_1X1": False,
        "MODEL.FPN.OUT_CHANNELS": config.fpn_channels,
        "MODEL.FPN.NORM": f'"{fpn_norm}"',
        "MODEL.ROI_BOX_HEAD.FC_DIM": config.box_head_dim,
        "MODEL.ROI_MASK_HEAD.CONV_DIM": config.mask_head_channels,
        "MODEL.ROI_MASK_HEAD.NUM_CONV": config.mask_head_convs,
        "MODEL.ROI_BOX_HEAD.PRED_LEVEL": True,
        "MODEL.ROI_BOX_HEAD.PRED_LEVEL_LOSS_TYPE": '"focal"',
        "TEST.DETECTIONS_PER_IMAGE": config.detections_per_image,
    }
    if basic:
        del options["MODEL.RESNETS.WIDTH_PER_GROUP"]  # basic blocks have none
        options["MODEL.RESNETS.RES5_DILATION"] = 1
    # Settings the authors' config fixes, when this network was built with others.
    authors = ModelConfig()
    for field, key in _DIFFERING_OPTIONS.items():
        value = getattr(config, field)
        if _literal(value) != _literal(getattr(authors, field)):
            text = _literal(value)
            options[key] = f'"{text}"' if isinstance(text, list) else text
    if tuple(config.cascade_ious) != tuple(authors.cascade_ious):
        # Detectron2's CascadeROIHeads asserts that the first stage's IoU is this one
        options["MODEL.ROI_HEADS.IOU_THRESHOLDS"] = f'"{[config.cascade_ious[0]]}"'
    if data is not None and (data.test_min_size, data.test_max_size) != (800, 1333):
        options["INPUT.MIN_SIZE_TEST"] = data.test_min_size
        options["INPUT.MAX_SIZE_TEST"] = data.test_max_size
    if tuple(config.anchor_sizes) != tuple(authors.anchor_sizes):
        options["MODEL.ANCHOR_GENERATOR.SIZES"] = f'"{[[int(s)] for s in config.anchor_sizes]}"'
    if tuple(config.aspect_ratios) != tuple(authors.aspect_ratios):
        options["MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS"] = f'"{[list(config.aspect_ratios)]}"'
    return [f"{key} {value}" for key, value in options.items()]


def _literal(value):
    """Tuples as lists, the way Detectron2's config literals are written."""
    if isinstance(value, (tuple, list)):
        return [_literal(item) for item in value]
    return value


def is_export(head: bytes) -> bool:
    """Whether a file's first bytes are those of :func:`write_detectron2_file` (its payload
    begins with ``"__author__": "hassod"``, in a pickle or in torch.save's first zip entry)."""
    start = head.find(b"__author__")
    return start >= 0 and b"hassod" in head[start : start + 64]


def write_detectron2_file(path: str | Path, state: dict, config: TrainConfig | None = None) -> None:
    """Write an exported state dict as Detectron2 reads it, atomically: ``.pkl`` as its
    pickle of NumPy arrays (``{"model": ..., "__author__": ...}``), anything else with
    ``torch.save`` (``{"model": ...}``). With ``config`` (the run's settings) the file also
    carries them as JSON under :data:`SETTINGS_KEY`, which Detectron2 ignores and hassod
    reads back (anchors, RPN top-k, test sizes... the weights do not hold)."""
    from hassod._io import atomic_write_file

    extra = {} if config is None else {SETTINGS_KEY: json.dumps(config_to_dict(config))}

    if Path(path).suffix == ".pkl":
        import pickle

        arrays = {name: tensor.numpy() for name, tensor in state.items()}
        # "__author__" first: it lands in the file's first bytes, where a later export looks
        # for it before replacing the file (EXPORT_STAMP).
        payload = {"__author__": "hassod", "model": arrays, **extra}
        # Protocol 4 (Python 3, which Detectron2 needs): arrays as bytes, not latin-1 text.
        # Written under NumPy 2 it names numpy._core, which NumPy >= 1.26 reads.
        write = lambda handle: pickle.dump(payload, handle, protocol=4)  # noqa: E731
    else:
        payload = {"__author__": "hassod", "model": state, **extra}
        write = lambda handle: torch.save(payload, handle)  # noqa: E731
    atomic_write_file(path, write, parents=True)
