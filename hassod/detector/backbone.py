"""ResNet-FPN backbone (torchvision parts) and self-supervised ResNet weights, converted on load.

Accepted weight files (``--backbone-weights``):

- torchvision ResNet state dicts (``conv1.weight``, ``layer1.0.conv1.weight``, ...; ``fc.*``
  is ignored) -- this is also the layout of DINO's ``dino_resnet50_pretrain.pth``;
- DINO training checkpoints (``{"teacher": {"module.backbone.conv1.weight", ...}, ...}``; the
  teacher is used, as DINO releases it) and other wrappers (``state_dict``/``model`` keys,
  ``module.`` / ``backbone.`` / ``encoder.`` prefixes);
- Detectron2-format ResNets (``stem.conv1.weight``, ``res2.0.conv1.norm.weight``,
  ``res2.0.shortcut.weight``, ...), e.g. CutLER's converted DINO ResNet-50, as a ``.pth``
  (or a ``.pkl`` of NumPy arrays; pickles that name anything but arrays are refused).
"""

from __future__ import annotations

import re
import warnings
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet as tv_resnet
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from hassod.detector.config import ModelConfig

_BLOCKS = {
    "resnet10": (tv_resnet.BasicBlock, [1, 1, 1, 1]),
    "resnet18": (tv_resnet.BasicBlock, [2, 2, 2, 2]),
    "resnet34": (tv_resnet.BasicBlock, [3, 4, 6, 3]),
    "resnet50": (tv_resnet.Bottleneck, [3, 4, 6, 3]),
    "resnet101": (tv_resnet.Bottleneck, [3, 4, 23, 3]),
}


def resolve_norm(norm: str, has_weights: bool) -> str:
    """The normalisation actually used: ``auto`` -> frozen BN with weights, GroupNorm without."""
    if norm == "auto":
        return "frozen_bn" if has_weights else "gn"
    return norm


def norm_layer_factory(norm: str):
    """A ``channels -> nn.Module`` constructor for ``frozen_bn`` / ``bn`` / ``syncbn`` / ``gn``."""
    if norm == "frozen_bn":
        return FrozenBatchNorm2d
    if norm in ("bn", "syncbn"):  # syncbn: converted when the model is wrapped for DDP
        return nn.BatchNorm2d
    if norm == "gn":
        return lambda channels: nn.GroupNorm(_groups(channels), channels)
    raise ValueError(f"unknown norm {norm!r}")


def _groups(channels: int) -> int:
    # 32 groups (Wu & He) where the width allows it; the tiny test widths get fewer.
    for groups in (32, 16, 8, 4, 2):
        if channels % groups == 0 and channels // groups >= 2:
            return groups
    return 1


class ScaledResNet(tv_resnet.ResNet):
    """torchvision's ResNet with every stage's width scaled by ``width / 64`` (64: the
    standard network; the small CPU preset uses 16). Same module names, so standard widths
    load torchvision / DINO state dicts."""

    def __init__(self, block, layers, width: int = 64, norm_layer=None, zero_init_residual=False):
        nn.Module.__init__(self)
        self._norm_layer = norm_layer or nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = width, 1, 1, 64
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = self._norm_layer(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        for module in self.modules():  # torchvision's initialisation
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, tv_resnet.Bottleneck):
                    nn.init.zeros_(module.bn3.weight)
                elif isinstance(module, tv_resnet.BasicBlock):
                    nn.init.zeros_(module.bn2.weight)

    def forward(self, x):  # pragma: no cover - BackboneWithFPN calls the layers directly
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def build_backbone(config: ModelConfig, norm: str) -> BackboneWithFPN:
    """ResNet (C2-C5) + FPN (P2-P5) + max-pool P6, all layers trainable (authors' FREEZE_AT 0).

    Returns torchvision's ``BackboneWithFPN``; its output is an ordered dict of five maps
    ``'0'..'3', 'pool'`` with ``config.fpn_channels`` channels at strides 4, 8, 16, 32, 64.
    With GroupNorm the last norm of each residual branch starts at zero (Goyal et al.), so
    every block starts as the identity: stable from a random initialisation.
    """
    block, layers = _BLOCKS[config.backbone]
    width = config.backbone_width
    body = ScaledResNet(
        block, layers, width, norm_layer=norm_layer_factory(norm), zero_init_residual=norm == "gn"
    )
    stage2 = width * block.expansion
    in_channels = [stage2, stage2 * 2, stage2 * 4, stage2 * 8]
    fpn_norm = None if norm == "frozen_bn" else norm_layer_factory(norm)
    return BackboneWithFPN(
        body,
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=in_channels,
        out_channels=config.fpn_channels,
        extra_blocks=LastLevelMaxPool(),
        norm_layer=fpn_norm,
    )


def read_weight_file(path: str | Path) -> dict:
    """Load a weight file into a flat ``name -> tensor`` dict (no model needed)."""
    path = Path(path)
    from hassod._io import describe_read_error, not_a_file

    if not path.is_file():
        raise FileNotFoundError(not_a_file(path, "backbone weights"))
    from hassod.detector.checkpoint import read_weights

    try:
        raw = read_weights(path)
    except Exception as error:  # noqa: BLE001 - any unreadable file is the same user error
        raise ValueError(
            f"cannot read backbone weights {path}: {describe_read_error(error)}"
        ) from error
    return _flatten_checkpoint(raw, path)


def _flatten_checkpoint(raw, path) -> dict:
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(raw).__name__}")
    for key in ("teacher", "state_dict", "model", "student"):  # DINO keeps both: use teacher
        if key in raw and isinstance(raw[key], dict):
            raw = raw[key]
            break
    tensors = {}
    for name, value in raw.items():
        if isinstance(value, torch.Tensor):
            tensors[name] = value
        elif hasattr(value, "shape") and hasattr(value, "dtype"):  # NumPy (Detectron2 .pkl)
            tensors[name] = torch.as_tensor(value)
    if not tensors:
        raise ValueError(f"{path}: no tensors found in the weight file")
    return tensors


_PREFIXES = ("module.", "backbone.", "bottom_up.", "encoder.", "body.", "model.")


def convert_to_torchvision(state: dict) -> dict:
    """Rename a ResNet state dict (DINO / wrapped / Detectron2 layouts) to torchvision names.

    Keys that are not part of a ResNet trunk (DINO's projection head, ``fc``) are dropped.
    """
    converted = OrderedDict()
    for name, tensor in state.items():
        stripped = name
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if stripped.startswith(prefix):
                    stripped = stripped[len(prefix) :]
                    changed = True
        stripped = detectron2_resnet_name(stripped)
        if stripped is None or stripped.startswith(("fc.", "head.")):
            continue
        if not re.match(r"^(conv1|bn1|layer[1-4])\.", stripped):
            continue
        if stripped.endswith("num_batches_tracked"):
            continue
        converted[stripped] = tensor
    return converted


def detectron2_resnet_name(name: str) -> str | None:
    """``stem.conv1.norm.weight`` -> ``bn1.weight``, ``res3.1.conv2.weight`` ->
    ``layer2.1.conv2.weight``, ``res2.0.shortcut.norm.bias`` -> ``layer1.0.downsample.1.bias``.
    Names already in torchvision layout pass through."""
    if name.startswith("stem."):
        rest = name[len("stem.") :]
        if rest.startswith("conv1.norm."):
            return "bn1." + rest[len("conv1.norm.") :]
        return rest
    match = re.match(r"^res([2-5])\.(\d+)\.(.*)$", name)
    if not match:
        return name
    layer = int(match.group(1)) - 1
    rest = match.group(3)
    rest = re.sub(r"^conv(\d)\.norm\.", r"bn\1.", rest)
    rest = re.sub(r"^shortcut\.norm\.", "downsample.1.", rest)
    rest = re.sub(r"^shortcut\.", "downsample.0.", rest)
    return f"layer{layer}.{match.group(2)}.{rest}"


def load_backbone_weights(backbone: BackboneWithFPN, path: str | Path) -> dict:
    """Load a self-supervised ResNet into ``backbone.body``; returns a small report.

    Every convolution must be found with the right shape (else ``ValueError``: the file is for
    another architecture). Normalisation weights are loaded where the layer has them; with
    GroupNorm the BatchNorm running statistics have nowhere to go and are reported as unused.
    """
    state = convert_to_torchvision(read_weight_file(path))
    body = backbone.body
    target = body.state_dict()
    loaded, unused, mismatched = [], [], []
    for name, tensor in state.items():
        if name not in target:
            unused.append(name)
            continue
        if tuple(target[name].shape) != tuple(tensor.shape):
            mismatched.append(
                f"{name}: file {tuple(tensor.shape)} vs model {tuple(target[name].shape)}"
            )
            continue
        target[name] = tensor.to(target[name].dtype)
        loaded.append(name)
    convs = [name for name in target if name.endswith(".weight") and target[name].dim() == 4]
    missing_convs = [name for name in convs if name not in loaded]
    if mismatched or missing_convs:
        problems = mismatched + [f"{name}: missing" for name in missing_convs[:5]]
        raise ValueError(
            f"{path} does not fit the {type(body).__name__} backbone "
            f"({len(missing_convs)} convolutions missing, {len(mismatched)} shape mismatches): "
            + "; ".join(problems[:5])
        )
    body.load_state_dict(target)
    if unused:
        warnings.warn(
            f"backbone weights: {len(unused)} entries unused (e.g. {unused[0]}); "
            "expected for BatchNorm statistics under GroupNorm",
            stacklevel=2,
        )
    return {"loaded": len(loaded), "unused": len(unused), "path": str(path)}
