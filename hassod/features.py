"""Frozen ViT features for stage 1: last-block attention keys (DESIGN.md sections 1 and 2b).

The pipeline resizes every image to a fixed square (480x480 for DINO ViT-B/8, paper section 3.1),
runs a frozen self-supervised ViT and keeps the **keys** of the last block's attention -- the
``k`` third of that block's ``qkv`` projection, all heads concatenated, prefix (CLS and register)
tokens dropped -- as an (H/p, W/p, D) grid for :func:`hassod.fast_cluster`.

Typical use::

    from hassod.features import load_vit, image_features
    model = load_vit("vit_base_patch8_224.dino", weights="dino_vitbase8_pretrain.pth")
    keys = image_features(model, PIL.Image.open(path))  # (60, 60, 768) float32

This module imports torch, timm and PIL inside its functions, so ``import hassod`` stays light and
``hassod/__init__.py`` does not import this module.

Position embeddings: whenever the token grid differs from the one a position table was trained
for, the table is resized bicubically with ``antialias=False`` (not timm's default
``antialias=True``, which changes the kernel even when upsampling; see
``../shared/weights/README.md``), in one of two ways (:data:`POS_EMBED_RESIZES`):

* ``"dino"``, DINO v1's ``interpolate_pos_encoding`` (the authors' ``hac/dino.py``): a scale
  factor of (new grid + 0.1) / old grid, which PyTorch uses as given, so the table is sampled at
  ``(i + 0.5) * old / (new + 0.1) - 0.5``, not at ``(i + 0.5) * old / new - 0.5``. The default
  for DINO v1 backbones (timm names ending in ``.dino``): the paper's keys. The two ways differ
  by about 1 % in the keys, enough to change greedy merges (DESIGN.md section 2).
* ``"size"``, an explicit output size (Hugging Face Dinov2 and the ONNX graph the shared DINOv2
  weights come from): the default for every other backbone.

An exact match with the original models needs the model built for the size it is run at
(``load_vit(img_size=...)``); other sizes resize the model's own table once more.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np

if TYPE_CHECKING:
    import torch
    from PIL import Image

#: The paper's backbone (DESIGN.md section 1): DINO ViT-B/8, 768-d keys, 60x60 grid at 480x480.
DEFAULT_MODEL = "vit_base_patch8_224.dino"
#: Input side length of the paper's stage 1 (DESIGN.md section 1).
DEFAULT_INPUT_SIZE = 480
#: How a position table is resized to another token grid (see the module docstring).
POS_EMBED_RESIZES = ("dino", "size")
# DINO v1's offset: "we add a small number to avoid floating point error in the interpolation".
_DINO_GRID_OFFSET = 0.1

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Checkpoint wrappers, tried in this order: DINO's full checkpoints hold 'student' and 'teacher',
# and the teacher is the network DINO evaluates.
_WRAPPER_KEYS = ("teacher", "model", "state_dict")
_STRIPPED_PREFIXES = ("module.", "backbone.")
# Training-only tensors some checkpoints carry that a frozen backbone never uses (DINOv2's
# masked-image-modelling token); dropped only when the model has no such parameter.
_TRAINING_ONLY_KEYS = ("mask_token",)

Keys = Union["torch.Tensor", np.ndarray]


class InputSizeError(ValueError):
    """The input size asked of :func:`load_vit` is smaller than one patch."""


class _StopForward(Exception):
    """Raised by the qkv hook: nothing after the last block's key projection is needed."""


# ---------------------------------------------------------------------------------------------
# Model loading
# ---------------------------------------------------------------------------------------------


#: Seed of ``random_weights=True`` models (``--random-weights``): every command, run, shard
#: and resume gets the same network.
RANDOM_WEIGHTS_SEED = 0


def load_vit(
    name: str = DEFAULT_MODEL,
    weights: str | Path | Mapping[str, Any] | None = None,
    *,
    random_weights: bool = False,
    img_size: int = DEFAULT_INPUT_SIZE,
    device: str | torch.device = "cpu",
    pos_embed_resize: str | None = None,
) -> torch.nn.Module:
    """Build a frozen timm ViT in eval mode, ready for :func:`attention_keys`.

    Args:
        name: timm model name (a ``VisionTransformer`` with ``blocks[-1].attn.qkv``), e.g.
            ``"vit_base_patch8_224.dino"`` (the paper's) or ``"vit_small_patch14_dinov2"``.
        weights: a local checkpoint (path, or an already loaded dict). Accepted layouts: a timm
            state dict; one wrapped under ``'teacher'``, ``'model'`` or ``'state_dict'``; the
            original DINO release (``dino_vitbase8_pretrain.pth``, timm-compatible key names).
            ``module.``/``backbone.`` prefixes and classifier/projection-head keys are dropped;
            every backbone key must then match (missing or unexpected keys raise). ``pos_embed``
            is resized to the model's grid when it differs (``pos_embed_resize``).
            None: timm's pretrained download (needs the network or a filled cache).
        random_weights: timm's random initialisation, drawn from seed
            :data:`RANDOM_WEIGHTS_SEED` (the global RNG is left as it was), so that every
            command and run gets the same network; for smoke tests only.
        img_size: input side the model is built for; its token grid is ``img_size // patch``.
            ``dynamic_img_size`` is on as well, so any multiple of the patch size runs.
        device: where the model lives.
        pos_embed_resize: how position tables are resized to another grid, here and in
            :func:`attention_keys` (:data:`POS_EMBED_RESIZES`); None:
            :func:`default_pos_embed_resize` of ``name``.

    Returns:
        The model, in eval mode with ``requires_grad`` off. ``model.hassod_weights`` records
        where the weights came from (a path, ``"timm-pretrained"`` or ``"random"``),
        ``model.hassod_pos_embed_resize`` how its position table is resized.

    Raises:
        FileNotFoundError: ``weights`` names no file.
        ValueError: an unreadable file, a state dict that does not fit the architecture, a model
            that is not a supported ViT, or ``weights`` together with ``random_weights``;
            :class:`InputSizeError` (a ValueError) when ``img_size`` is under one patch.
        RuntimeError: ``weights`` is None and the pretrained download failed.
    """
    import timm

    if weights is not None and random_weights:
        raise ValueError("pass either weights or random_weights=True, not both")
    if not isinstance(img_size, int) or isinstance(img_size, bool) or img_size <= 0:
        raise ValueError(f"img_size must be a positive integer, got {img_size!r}")
    if pos_embed_resize is None:
        pos_embed_resize = default_pos_embed_resize(name)
    if pos_embed_resize not in POS_EMBED_RESIZES:
        raise ValueError(
            f"pos_embed_resize must be one of {POS_EMBED_RESIZES}, got {pos_embed_resize!r}"
        )

    state_dict: Mapping[str, Any] | None = None
    source = "random"
    if weights is not None:
        if isinstance(weights, Mapping):
            state_dict, source = weights, "state dict"
        else:
            state_dict, source = _read_checkpoint(Path(weights)), str(weights)

    import torch

    # num_classes=0: the classifier head is not part of the feature extractor.
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_WEIGHTS_SEED)
            model = timm.create_model(
                name, pretrained=False, num_classes=0, img_size=img_size, dynamic_img_size=True
            )
    except RuntimeError as error:  # timm's "Unknown model" and friends
        raise ValueError(f"cannot build timm model {name!r}: {error}") from error
    except TypeError as error:  # a non-ViT family that takes no img_size / dynamic_img_size
        raise ValueError(f"timm model {name!r} is not a supported ViT: {error}") from error
    _check_supported(model, name)
    if img_size < patch_size(model):
        raise InputSizeError(
            f"size {img_size} is smaller than the patch size {patch_size(model)} of {name}"
        )
    model.hassod_pos_embed_resize = pos_embed_resize
    if weights is None and not random_weights:
        state_dict, source = _timm_pretrained_state_dict(name), "timm-pretrained"
    if state_dict is not None:
        load_backbone_state_dict(model, state_dict, name=name)
        if weights is not None:
            _warn_if_untagged_dino(name, state_dict)
    model.eval().requires_grad_(False)
    model.hassod_weights = source
    return model.to(device)


def default_pos_embed_resize(name: str) -> str:
    """``"dino"`` for DINO v1 backbones (timm names ending in ``.dino``), else ``"size"``."""
    return "dino" if name.endswith(".dino") else "size"


def resize_pos_embed(
    pos_embed: torch.Tensor,
    new_size: tuple[int, int] | list[int],
    old_size: tuple[int, int] | list[int],
    num_prefix_tokens: int,
    how: str = "size",
) -> torch.Tensor:
    """(1, P + old_h * old_w, D) position table -> (1, P + new_h * new_w, D), bicubic without
    antialiasing, the P prefix rows kept; ``how`` as in :data:`POS_EMBED_RESIZES`."""
    import torch
    import torch.nn.functional as F

    if how not in POS_EMBED_RESIZES:
        raise ValueError(f"how must be one of {POS_EMBED_RESIZES}, got {how!r}")
    new_h, new_w = (int(v) for v in new_size)
    old_h, old_w = (int(v) for v in old_size)
    if (new_h, new_w) == (old_h, old_w):
        return pos_embed
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dim = grid.shape[-1]
    # float32: bicubic interpolation of float16 tensors is not supported on every device.
    grid = grid.float().reshape(1, old_h, old_w, dim).permute(0, 3, 1, 2)
    if how == "dino":
        scale = ((new_h + _DINO_GRID_OFFSET) / old_h, (new_w + _DINO_GRID_OFFSET) / old_w)
        grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", align_corners=False)
    else:
        grid = F.interpolate(grid, size=(new_h, new_w), mode="bicubic", align_corners=False)
    if tuple(grid.shape[-2:]) != (new_h, new_w):  # the offset keeps floor(old * scale) = new
        raise ValueError(
            f"resizing a {old_h}x{old_w} position table the DINO way gave "
            f"{tuple(grid.shape[-2:])}, not {new_h}x{new_w}"
        )
    grid = grid.permute(0, 2, 3, 1).reshape(1, new_h * new_w, dim).to(pos_embed.dtype)
    return torch.cat([prefix, grid], dim=1)


def load_backbone_state_dict(
    model: torch.nn.Module, checkpoint: Mapping[str, Any], name: str = "model"
) -> None:
    """Load ``checkpoint`` into the timm ViT ``model`` in place, strictly (see :func:`load_vit`).

    Args:
        model: a timm ``VisionTransformer``.
        checkpoint: a state dict, possibly wrapped and prefixed as :func:`load_vit` describes.
        name: how error messages call the model.

    Raises:
        ValueError: missing, unexpected or mis-shaped keys, listed by name.
    """
    state_dict = _backbone_state_dict(checkpoint)
    expected = model.state_dict()
    state_dict = {
        key: value
        for key, value in state_dict.items()
        if not (key in _TRAINING_ONLY_KEYS and key not in expected)
    }
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"weights do not fit timm model {name!r} (wrong architecture or checkpoint?): "
            f"{len(missing)} missing keys {_preview(missing)}, "
            f"{len(unexpected)} unexpected keys {_preview(unexpected)}"
            f"{_backbone_hint(state_dict)}"
        )
    mismatched = [
        f"{key}: file {tuple(value.shape)} vs model {tuple(expected[key].shape)}"
        for key, value in state_dict.items()
        if key != "pos_embed" and tuple(value.shape) != tuple(expected[key].shape)
    ]
    if mismatched:
        raise ValueError(
            f"weights do not fit timm model {name!r} (wrong architecture?): "
            f"{len(mismatched)} tensors differ in shape: {_preview(mismatched)}"
            f"{_backbone_hint(state_dict)}"
        )
    if state_dict.get("pos_embed") is not None:  # the one tensor whose shape may differ
        state_dict["pos_embed"] = _fit_pos_embed(model, state_dict["pos_embed"], name)
    model.load_state_dict(state_dict, strict=True)  # casts float16 files to the model's dtype


_VIT_SIZES = {192: "tiny", 384: "small", 768: "base", 1024: "large", 1536: "giant"}


def _backbone_hint(state_dict: Mapping[str, Any]) -> str:
    """ "; the file looks like ... (--backbone NAME)" from a ViT state dict's shapes, or ""."""
    projection = state_dict.get("patch_embed.proj.weight")
    if projection is None or getattr(projection, "ndim", 0) != 4:
        return ""
    width, patch = int(projection.shape[0]), int(projection.shape[-1])
    blocks = len({key.split(".")[1] for key in state_dict if key.startswith("blocks.")})
    layer_scale = any(".ls1." in key for key in state_dict)
    registers = int(state_dict["reg_token"].shape[1]) if "reg_token" in state_dict else 0
    looks = f"a ViT of width {width}, patch {patch}, {blocks} blocks"
    size = _VIT_SIZES.get(width)
    if size is None:
        return f"; the file looks like {looks}: pick the timm model of that shape with --backbone"
    if layer_scale or patch == 14:  # DINOv2's family
        tag = f"_reg{registers}" if registers else ""
        suggestion = f"vit_{size}_patch{patch}{tag}_dinov2"
    else:
        suggestion = f"vit_{size}_patch{patch}_224.dino"
    return f"; the file looks like {looks}: try --backbone {suggestion}"


# timm's DINO v1 models, by name without the ``.dino`` tag that selects their settings.
_DINO_V1_ARCHITECTURES = (
    "vit_small_patch16_224",
    "vit_small_patch8_224",
    "vit_base_patch16_224",
    "vit_base_patch8_224",
)


def _warn_if_untagged_dino(name: str, checkpoint: Mapping[str, Any]) -> None:
    """Warn when weights without a classifier (DINO's release has none; timm's supervised
    weights have one) go into a DINO v1 architecture named without ``.dino``: the name, not
    the file, selects the paper's raw keys and DINO's position-table resize."""
    if name not in _DINO_V1_ARCHITECTURES:
        return
    state: Mapping[str, Any] = checkpoint
    while True:
        wrapper = next((key for key in _WRAPPER_KEYS if isinstance(state.get(key), Mapping)), None)
        if wrapper is None:
            break
        state = state[wrapper]
    keys = {str(key) for key in state}
    if any(key == "head.weight" or key.endswith(".head.weight") for key in keys):
        return
    import warnings

    warnings.warn(
        f"weights without a classifier head loaded into {name!r}: if they are DINO's, name the "
        f"backbone {name}.dino for the paper's settings (raw keys, DINO's position-table "
        "resize); names without .dino centre the keys and resize positions plainly",
        UserWarning,
        stacklevel=3,
    )


def _read_checkpoint(path: Path) -> Mapping[str, Any]:
    import argparse
    import contextlib

    import torch

    if path.is_dir():
        raise FileNotFoundError(f"weights path {path} is a folder, not a weights file")
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    # DINO's full training checkpoints store their command line as an argparse.Namespace: a
    # plain attribute bag, safe to allow. Nothing else beyond weights_only's defaults.
    allow = getattr(torch.serialization, "safe_globals", None)
    context = allow([argparse.Namespace]) if allow else contextlib.nullcontext()
    try:
        with context:
            # weights_only: a checkpoint is data; never run code from it.
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # garbage makes the unpickler fail in many ways
        from hassod._io import describe_read_error

        raise ValueError(
            f"cannot read weights file {path} as a PyTorch checkpoint (a state dict saved with "
            f"torch.save): {describe_read_error(error)[:400]}"
        ) from error
    if not isinstance(checkpoint, Mapping):
        raise ValueError(
            f"weights file {path} holds a {type(checkpoint).__name__}, not a state dict"
        )
    return checkpoint


_NO_PRETRAINED_ADVICE = (
    "Pass a local weights file instead (--weights PATH on the command line, "
    "load_vit(weights=PATH) in Python). Random weights (--random-weights, random_weights=True) "
    "exist only for smoke tests: random features give meaningless pseudo-labels."
)


def _timm_pretrained_state_dict(name: str) -> Mapping[str, Any]:
    import timm

    unreachable = _download_unreachable(name)
    if unreachable:
        raise RuntimeError(
            f"could not get pretrained weights for timm model {name!r}: they are not in the "
            f"local cache and {unreachable}. {_NO_PRETRAINED_ADVICE}"
        )
    try:
        # Built at timm's own input size so timm does not resize pos_embed itself (it would
        # use antialias=True); load_backbone_state_dict resizes it the DINO way.
        source = timm.create_model(name, pretrained=True, num_classes=0)
    except Exception as error:  # offline: OSError, URLError, hub errors, ... all mean the same
        raise RuntimeError(
            f"could not get pretrained weights for timm model {name!r} ({type(error).__name__}: "
            f"{error}). {_NO_PRETRAINED_ADVICE}"
        ) from error
    return source.state_dict()


def _download_unreachable(name: str, timeout: float = 5.0) -> str | None:
    """Why timm cannot download ``name``'s weights now ("host ... cannot be reached"), found in
    seconds: offline, huggingface_hub retries for about a minute before it gives up. None when
    the weights are cached, a proxy or offline mode is configured, or the host answers."""
    import os
    import socket
    from urllib.parse import urlparse
    from urllib.request import getproxies

    from timm.models import get_pretrained_cfg

    config = get_pretrained_cfg(name)
    if config is None or getproxies():  # HTTP(S)_PROXY, ALL_PROXY, ... any case
        return None  # timm reports unknown names itself; proxies cannot be probed directly
    if config.hf_hub_id:
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
            return None  # the hub library reads its cache and says what is missing
        if _in_hub_cache(config.hf_hub_id):
            return None
        url = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    elif config.url:
        import torch

        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(config.url).path).name
        if cached.is_file():
            return None
        url = config.url
    else:
        return None
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout).close()
    except OSError as error:
        return f"{parsed.hostname} cannot be reached ({error})"
    return None


def _in_hub_cache(repo: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    repo = repo.split("@")[0]  # timm's "repo@revision" form
    return any(
        isinstance(try_to_load_from_cache(repo, filename), str)
        for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")
    )


def _backbone_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    import torch

    state: Mapping[str, Any] = checkpoint
    # Unwrap until the values are tensors ({'teacher': {...}}, {'model': {...}}, ...).
    while not all(isinstance(value, torch.Tensor) for value in state.values()):
        wrapper = next((key for key in _WRAPPER_KEYS if isinstance(state.get(key), Mapping)), None)
        if wrapper is None:
            raise ValueError(
                "checkpoint is not a state dict: its values are not all tensors and it has none "
                f"of the wrapper keys {list(_WRAPPER_KEYS)} (top-level keys: "
                f"{_preview(sorted(map(str, state)))})"
            )
        state = state[wrapper]
    backbone: dict[str, Any] = {}
    for key, value in state.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in _STRIPPED_PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix) :], True
        # 'head.*': timm classifiers and DINO's projection head; never part of the features.
        if key == "head" or key.startswith("head."):
            continue
        backbone[key] = value
    return backbone


def _fit_pos_embed(model: torch.nn.Module, pos_embed: torch.Tensor, name: str) -> torch.Tensor:
    target = model.pos_embed
    if tuple(pos_embed.shape) == tuple(target.shape):
        return pos_embed
    num_prefix = _pos_embed_prefix_tokens(model)
    grid_tokens = pos_embed.shape[1] - num_prefix if pos_embed.ndim == 3 else -1
    side = math.isqrt(grid_tokens) if grid_tokens > 0 else 0
    if (
        pos_embed.ndim != 3
        or pos_embed.shape[0] != 1
        or pos_embed.shape[2] != target.shape[2]
        or side * side != grid_tokens
    ):
        raise ValueError(
            f"weights do not fit timm model {name!r}: pos_embed {tuple(pos_embed.shape)} cannot "
            f"be resized to {tuple(target.shape)} ({num_prefix} prefix tokens + a square grid "
            "of the same width expected)"
        )
    return resize_pos_embed(
        pos_embed.float(),
        new_size=list(model.patch_embed.grid_size),
        old_size=[side, side],
        num_prefix_tokens=num_prefix,
        how=_pos_embed_resize_of(model, name),
    )


def _pos_embed_resize_of(model: torch.nn.Module, name: str) -> str:
    """The model's resize (set by :func:`load_vit`), else the default for its timm name (from
    its pretrained config; ``name`` when it has none)."""
    resize = getattr(model, "hassod_pos_embed_resize", None)
    return resize or default_pos_embed_resize(_timm_name(model) or name)


def _timm_name(model: torch.nn.Module) -> str:
    """``architecture.tag`` from a timm model's pretrained config (``""`` without one)."""
    config = getattr(model, "pretrained_cfg", None) or {}
    architecture, tag = config.get("architecture") or "", config.get("tag")
    return f"{architecture}.{tag}" if tag else architecture


def _check_supported(model: torch.nn.Module, name: str) -> None:
    attn = getattr(getattr(model, "blocks", [None])[-1], "attn", None)
    if (
        getattr(model, "patch_embed", None) is None
        or not hasattr(model, "num_prefix_tokens")
        or getattr(attn, "qkv", None) is None
    ):
        raise ValueError(
            f"timm model {name!r} is not a supported ViT: need patch_embed, num_prefix_tokens "
            "and a fused blocks[-1].attn.qkv projection (timm VisionTransformer)"
        )


def _preview(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    more = f", ... ({len(items) - limit} more)" if len(items) > limit else ""
    return f"[{shown}{more}]"


# ---------------------------------------------------------------------------------------------
# Geometry helpers
# ---------------------------------------------------------------------------------------------


def patch_size(model: torch.nn.Module) -> int:
    """Side length in pixels of the model's (square) patches, e.g. 8 for ViT-B/8."""
    height, width = model.patch_embed.patch_size
    if height != width:
        raise ValueError(f"non-square patches {height}x{width} are not supported")
    return int(height)


def grid_size_for(model: torch.nn.Module, size: int) -> int:
    """Token-grid side for a ``size`` x ``size`` input (``size`` a multiple of the patch size).

    Raises:
        ValueError: ``size`` is not a positive multiple of the patch size; the message names
            the nearest valid sizes (e.g. 476 and 490 for 480 with patch 14).
    """
    patch = patch_size(model)
    if not isinstance(size, int) or isinstance(size, bool):
        raise ValueError(f"input size must be an integer, got {size!r}")
    if size < patch or size % patch:
        lower = max(patch, size // patch * patch)
        raise ValueError(
            f"input size must be a positive multiple of the patch size {patch}, got {size} "
            f"(try {lower} or {lower + patch})"
        )
    return size // patch


def round_to_patch(model: torch.nn.Module, size: int = DEFAULT_INPUT_SIZE) -> int:
    """Largest multiple of the patch size that is <= ``size`` (480 -> 480 for /8, 476 for /14)."""
    patch = patch_size(model)
    if size < patch:
        raise ValueError(f"size {size} is smaller than the patch size {patch}")
    return (int(size) // patch) * patch


# ---------------------------------------------------------------------------------------------
# Preprocessing
# ---------------------------------------------------------------------------------------------


def preprocess(image: Image.Image | np.ndarray, size: int = DEFAULT_INPUT_SIZE) -> torch.Tensor:
    """Resize one image to ``size`` x ``size`` and ImageNet-normalise it (DESIGN.md section 1).

    The authors' path: convert to 8-bit RGB, resize with PIL LANCZOS ignoring the aspect ratio,
    divide by 255, subtract the ImageNet mean and divide by its std. Deeper input (16-bit,
    float) is rounded to 8 bits first, so the same picture gives the same features whatever its
    container (PIL's 8-bit resize rounds and clips between its two passes, which a float resize
    would not) -- the backbones were trained on 8-bit images anyway. Alpha channels are dropped,
    not composited (PIL's ``convert("RGB")``).

    Args:
        image: a PIL image in any common mode (RGB, L, LA, RGBA, P, PA, CMYK, 1, I;16, I, F, ...)
            or an (H, W), (H, W, 1|2|3|4) array: uint8 (0..255), uint16 (0..65535), bool, or
            float (values in [0, 1]). ``I;16``/``I`` images hold 16-bit values (0..65535);
            ``F`` images and float arrays values in [0, 1].
        size: output side; for a ViT pick a multiple of its patch size (see
            :func:`round_to_patch`).

    Returns:
        (3, size, size) float32 CPU tensor.

    Raises:
        ValueError: unsupported shape, dtype, mode or value range.
    """
    import torch
    from PIL import Image

    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    if isinstance(image, Image.Image):
        rgb = _pil_to_rgb(image)
    elif isinstance(image, np.ndarray):
        rgb = _array_to_rgb(image)
    else:
        raise ValueError(f"image must be a PIL image or a NumPy array, got {type(image).__name__}")

    resized = rgb.resize((size, size), Image.Resampling.LANCZOS)
    pixels = np.asarray(resized, dtype=np.float32) / np.float32(255.0)  # ToTensor's scaling
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)
    std = np.asarray(IMAGENET_STD, dtype=np.float32)
    normalised = (pixels - mean) / std  # the same float32 operations as torchvision's Normalize
    return torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1)))


def _pil_to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB PIL image of any PIL image."""
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # PIL's convert("RGB") clips these to 255 instead of scaling: read the numbers.
        values = np.asarray(image).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise ValueError(
                f"mode {mode} image has values in [{values.min()}, {values.max()}]; expected "
                "16-bit data in [0, 65535]"
            )
        return _array_to_rgb(values.astype(np.uint16))
    if mode == "F":
        return _array_to_rgb(np.asarray(image, dtype=np.float32))
    if mode in ("P", "PA"):
        # Through RGBA: palette transparency is honoured without PIL's warning, then dropped.
        image = image.convert("RGBA")
    return image.convert("RGB")


def _array_to_rgb(array: np.ndarray) -> Image.Image:
    """8-bit RGB PIL image of an (H, W) or (H, W, 1..4) uint8/uint16/bool/float array."""
    from PIL import Image

    if array.ndim == 3 and array.shape[2] in (1, 2, 3, 4):
        # 1: grey, 2: grey + alpha, 3: RGB, 4: RGBA; alpha is dropped
        colour = array[:, :, :1] if array.shape[2] <= 2 else array[:, :, :3]
    elif array.ndim == 2:
        colour = array[:, :, None]
    else:
        raise ValueError(
            "image array must have shape (H, W) or (H, W, C) with C in 1..4 (channels last), "
            f"got {array.shape}"
        )
    if 0 in colour.shape:
        raise ValueError(f"image array is empty: shape {array.shape}")
    if colour.dtype == np.bool_:
        colour = colour.astype(np.uint8) * np.uint8(255)
    elif colour.dtype == np.uint16:
        # Round to the nearest 8-bit level: 257 * v maps back to v exactly.
        colour = ((colour.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    elif np.issubdtype(colour.dtype, np.floating):
        values = colour.astype(np.float64)
        if not np.isfinite(values).all():
            raise ValueError("float image array contains NaN or infinite values")
        low, high = float(values.min()), float(values.max())
        if low < -1e-3 or high > 1.0 + 1e-3:
            raise ValueError(
                f"float image values must lie in [0, 1], got [{low:g}, {high:g}]; pass uint8 "
                "data or divide by 255"
            )
        colour = np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)
    elif colour.dtype != np.uint8:
        raise ValueError(
            f"unsupported image dtype {array.dtype}: use uint8, uint16, bool or float in [0, 1]"
        )
    rgb = np.ascontiguousarray(np.broadcast_to(colour, colour.shape[:2] + (3,)))
    return Image.fromarray(rgb)  # (H, W, 3) uint8 -> mode RGB


# ---------------------------------------------------------------------------------------------
# Features
# ---------------------------------------------------------------------------------------------


def attention_keys(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Keys of the last block's attention for a batch of images (DESIGN.md section 1).

    The ``k`` third of ``blocks[-1].attn.qkv``'s output (all heads concatenated, before any
    ``k_norm``), prefix tokens (CLS and registers, ``model.num_prefix_tokens``) removed. The
    forward pass stops right after that projection: the rest of the last block, the final norm
    and the head never run. Position embeddings are resized (``model.hassod_pos_embed_resize``,
    else the default for the model's timm name) when the grid differs from the model's (see the
    module docstring).

    Args:
        model: a timm ViT, e.g. from :func:`load_vit`.
        images: (B, 3, H, W) ImageNet-normalised images (see :func:`preprocess`); H and W
            multiples of the patch size. Moved to the model's device and dtype.

    Returns:
        (B, H/p, W/p, D) float32 tensor on the model's device; D = qkv width / 3 (768 for
        ViT-B, 384 for ViT-S). Raw: no bias removal, centring or normalisation.

    Raises:
        ValueError: wrong rank, channel count, or a side that is not a multiple of the patch size.
    """
    import torch

    _check_supported(model, type(model).__name__)
    patch = patch_size(model)
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
    batch, _, height, width = images.shape
    if batch == 0 or height == 0 or width == 0:
        raise ValueError(f"images must be non-empty, got shape {tuple(images.shape)}")
    if height % patch or width % patch:
        raise ValueError(
            f"image height and width must be multiples of the patch size {patch}, got "
            f"{height}x{width}; resize with preprocess(image, size) and a multiple of {patch}"
        )
    grid_h, grid_w = height // patch, width // patch
    parameter = next(model.parameters())
    images = images.to(device=parameter.device, dtype=parameter.dtype)

    qkv = model.blocks[-1].attn.qkv
    captured: dict[str, torch.Tensor] = {}

    def capture_and_stop(module, inputs, output) -> None:
        captured["qkv"] = output
        raise _StopForward

    with torch.inference_mode():
        # Same steps as timm's forward_features, spelled out so the position table can be
        # resized with antialias=False and so it works whatever patch_embed's strictness.
        embed = model.patch_embed
        tokens = embed.proj(images).flatten(2).transpose(1, 2)  # (B, h*w, C)
        tokens = embed.norm(tokens)
        prefix = [
            token.expand(batch, -1, -1)
            for token in (getattr(model, "cls_token", None), getattr(model, "reg_token", None))
            if token is not None
        ]
        pos_embed = getattr(model, "pos_embed", None)
        if pos_embed is not None:
            pos_embed = resize_pos_embed(
                pos_embed,
                new_size=[grid_h, grid_w],
                old_size=list(embed.grid_size),
                num_prefix_tokens=_pos_embed_prefix_tokens(model),
                how=_pos_embed_resize_of(model, _timm_name(model)),
            )
        if pos_embed is not None and getattr(model, "no_embed_class", False):
            tokens = torch.cat([*prefix, tokens + pos_embed], dim=1)
        else:
            tokens = torch.cat([*prefix, tokens], dim=1)
            if pos_embed is not None:
                tokens = tokens + pos_embed
        for step in ("pos_drop", "patch_drop", "norm_pre"):
            layer = getattr(model, step, None)
            if layer is not None:
                tokens = layer(tokens)

        handle = qkv.register_forward_hook(capture_and_stop)
        try:
            for block in model.blocks:
                tokens = block(tokens)
        except _StopForward:
            pass
        finally:
            handle.remove()
    if "qkv" not in captured:
        raise RuntimeError("the last block never called attn.qkv; unsupported block type")
    out = captured["qkv"]
    width_qkv = out.shape[-1]
    if width_qkv % 3:
        raise RuntimeError(f"qkv output width {width_qkv} is not divisible by 3")
    dim = width_qkv // 3
    num_prefix = int(model.num_prefix_tokens)
    if out.shape[1] != num_prefix + grid_h * grid_w:
        raise RuntimeError(
            f"expected {num_prefix} prefix + {grid_h * grid_w} patch tokens, got {out.shape[1]}"
        )
    keys = out[:, num_prefix:, dim : 2 * dim].float()
    return keys.reshape(batch, grid_h, grid_w, dim).clone()  # clone: leave inference mode's view


def image_features(
    model: torch.nn.Module,
    image: Image.Image | np.ndarray,
    size: int | None = None,
    *,
    transform: str = "none",
) -> np.ndarray:
    """Last-block keys of one image as an (h, w, D) float32 NumPy array.

    Args:
        model: a timm ViT from :func:`load_vit`.
        image: anything :func:`preprocess` takes.
        size: input side, a multiple of the patch size; None: 480 rounded down to one (480 for
            /8 and /16 models, 476 for /14).
        transform: a :data:`FEATURE_TRANSFORMS` name applied to the keys (default ``"none"``,
            the paper's raw keys).

    Returns:
        (size/p, size/p, D) float32 C-contiguous array, e.g. (60, 60, 768) for DINO ViT-B/8.
    """
    if transform not in FEATURE_TRANSFORMS:
        raise ValueError(
            f"transform must be one of {sorted(FEATURE_TRANSFORMS)}, got {transform!r}"
        )
    if size is None:
        size = round_to_patch(model, DEFAULT_INPUT_SIZE)
    grid_size_for(model, size)  # clear error before the resize
    keys = attention_keys(model, preprocess(image, size)[None])
    keys = FEATURE_TRANSFORMS[transform](keys, model)
    return np.ascontiguousarray(keys[0].cpu().numpy(), dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# Feature transforms (DESIGN.md section 2b)
# ---------------------------------------------------------------------------------------------


def key_bias(model: torch.nn.Module) -> torch.Tensor | None:
    """(D,) bias of the last block's key projection, or None when qkv has no bias."""
    qkv = model.blocks[-1].attn.qkv
    if qkv.bias is None:
        return None
    dim = qkv.bias.shape[0] // 3
    return qkv.bias.detach()[dim : 2 * dim]


def remove_key_bias(keys: Keys, model: torch.nn.Module) -> Keys:
    """Subtract the last block's key-projection bias from ``keys`` (DESIGN.md section 2b).

    The bias is the same for every token and cancels in the attention softmax, so the model never
    uses it; for DINOv2 it dominates the raw keys (norm ~48) and makes every cell look alike.

    Args:
        keys: (..., D) float tensor or array, e.g. (B, h, w, D) from :func:`attention_keys` or
            (h, w, D) from :func:`image_features`.
        model: the model the keys came from.

    Returns:
        Keys of the same type, shape and dtype (a new object); unchanged values when the
        projection has no bias.
    """
    bias = key_bias(model)
    if bias is None:
        return keys.clone() if not isinstance(keys, np.ndarray) else keys.copy()
    if keys.shape[-1] != bias.shape[0]:
        raise ValueError(f"keys have {keys.shape[-1]} channels, the key bias {bias.shape[0]}")
    if isinstance(keys, np.ndarray):
        return keys - bias.float().cpu().numpy().astype(keys.dtype)
    return keys - bias.to(device=keys.device, dtype=keys.dtype)


def center_keys(keys: Keys) -> Keys:
    """Subtract each image's mean key over its grid (DESIGN.md section 2b).

    Args:
        keys: (h, w, D) for one image or (B, h, w, D) for a batch; float tensor or array.

    Returns:
        Keys of the same type, shape and dtype whose mean over the grid is ~0 per image.
    """
    if keys.ndim not in (3, 4):
        raise ValueError(f"keys must have shape (h, w, D) or (B, h, w, D), got {tuple(keys.shape)}")
    axes = (0, 1) if keys.ndim == 3 else (1, 2)
    if isinstance(keys, np.ndarray):
        mean = keys.mean(axis=axes, keepdims=True, dtype=np.float64)
        return (keys - mean).astype(keys.dtype)
    return keys - keys.mean(dim=axes, keepdim=True)


def _identity_keys(keys: Keys, model: torch.nn.Module) -> Keys:
    return keys


def _center_keys_of(keys: Keys, model: torch.nn.Module) -> Keys:
    return center_keys(keys)


#: Feature transforms by name, each ``f(keys, model) -> keys``: ``"none"`` (the paper's raw
#: keys, the choice for DINO v1), ``"remove-key-bias"`` and ``"center"`` (DESIGN.md 2b: raw
#: DINOv2 keys merge every image into one region).
FEATURE_TRANSFORMS: dict[str, Callable[[Keys, Any], Keys]] = {
    "none": _identity_keys,
    "remove-key-bias": remove_key_bias,
    "center": _center_keys_of,
}


def _pos_embed_prefix_tokens(model: torch.nn.Module) -> int:
    # Prefix tokens that have their own rows in pos_embed (none with no_embed_class).
    return 0 if getattr(model, "no_embed_class", False) else int(model.num_prefix_tokens)
