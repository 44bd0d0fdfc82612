"""Tests for hassod.features: ViT loading, preprocessing, last-block keys, key transforms.

Random-weight tests use small timm ViTs; the real-feature tests use the shared DINOv2 ViT-S/14
weights and COCO photos in ../shared (skipped where that folder is absent).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
Image = pytest.importorskip("PIL.Image")

import hassod  # noqa: E402
from hassod import features  # noqa: E402
from hassod.reference import reference_cluster  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DINOV2_WEIGHTS = SHARED / "weights" / "dinov2_vits14_imgfocus_fp16.pth"
COCO_DIR = SHARED / "data" / "coco_val2017_sample"
COCO_PHOTOS = ("000000142238.jpg", "000000439180.jpg")

TINY = "vit_tiny_patch16_224"


def manual_keys(model, images: torch.Tensor) -> torch.Tensor:
    """Keys without the module's code path: timm's own forward_features up to the last block,
    then the block's norm1 and qkv by hand."""
    captured = {}
    handle = model.blocks[-1].register_forward_pre_hook(
        lambda module, args: captured.update(x=args[0])
    )
    try:
        with torch.no_grad():
            model.forward_features(images)
    finally:
        handle.remove()
    block = model.blocks[-1]
    with torch.no_grad():
        qkv = block.attn.qkv(block.norm1(captured["x"]))
    dim = qkv.shape[-1] // 3
    patch = model.patch_embed.patch_size[0]
    grid = (images.shape[2] // patch, images.shape[3] // patch)
    keys = qkv[:, model.num_prefix_tokens :, dim : 2 * dim]
    return keys.reshape(images.shape[0], *grid, dim)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return features.load_vit(TINY, random_weights=True, img_size=224)


@pytest.fixture(scope="module")
def tiny_state_dict(tiny_model):
    return {key: value.clone() for key, value in tiny_model.state_dict().items()}


# ---------------------------------------------------------------------------------------------
# (a) keys on random weights
# ---------------------------------------------------------------------------------------------


def test_import_hassod_stays_light():
    """hassod does not import hassod.features, and importing it loads no torch/timm/PIL."""
    code = (
        "import sys, hassod; "
        "assert 'hassod.features' not in sys.modules; "
        "import hassod.features; "
        "heavy = [m for m in ('torch', 'timm', 'PIL') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_load_vit_random_is_frozen_eval(tiny_model):
    assert not tiny_model.training
    assert not any(p.requires_grad for p in tiny_model.parameters())
    assert tiny_model.hassod_weights == "random"
    assert features.patch_size(tiny_model) == 16
    assert tuple(tiny_model.patch_embed.grid_size) == (14, 14)


@pytest.mark.parametrize("shape", [(2, 224, 224), (1, 224, 160), (1, 96, 320)])
def test_attention_keys_match_manual_forward(tiny_model, shape):
    batch, height, width = shape
    images = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(1))
    keys = features.attention_keys(tiny_model, images)
    assert keys.shape == (batch, height // 16, width // 16, 192)
    assert keys.dtype == torch.float32
    assert not keys.requires_grad and not keys.is_inference()
    # timm resizes pos_embed with antialias=True; the module (like DINO/DINOv2) without.
    expected = manual_keys_without_antialias(tiny_model, images)
    torch.testing.assert_close(keys, expected, rtol=0, atol=0)


def manual_keys_without_antialias(model, images):
    """manual_keys with timm's pos_embed resize told antialias=False, as hassod resizes."""
    with pytest.MonkeyPatch.context() as patch:
        import timm.models.vision_transformer as vit

        original = vit.resample_abs_pos_embed
        patch.setattr(
            vit,
            "resample_abs_pos_embed",
            lambda *args, **kwargs: original(*args, **{**kwargs, "antialias": False}),
        )
        return manual_keys(model, images)


def test_attention_keys_is_the_k_third_of_qkv(tiny_model):
    """Keys are qkv[..., D:2D] for the patch tokens, not q or v, and no CLS token."""
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    captured = {}
    handle = tiny_model.blocks[-1].attn.qkv.register_forward_hook(
        lambda module, args, out: captured.update(out=out)
    )
    try:
        with torch.no_grad():
            tiny_model.forward_features(images)
    finally:
        handle.remove()
    out = captured["out"][0]  # (1 + 196, 576)
    keys = features.attention_keys(tiny_model, images)[0].reshape(196, 192)
    torch.testing.assert_close(keys, out[1:, 192:384], rtol=0, atol=0)
    assert not torch.equal(keys, out[1:, :192])


def test_attention_keys_drop_register_tokens():
    torch.manual_seed(3)
    model = timm.create_model(
        TINY, depth=3, reg_tokens=4, no_embed_class=True, num_classes=0, dynamic_img_size=True
    ).eval()
    assert model.num_prefix_tokens == 5
    images = torch.randn(2, 3, 224, 192, generator=torch.Generator().manual_seed(4))
    keys = features.attention_keys(model, images)
    assert keys.shape == (2, 14, 12, 192)
    expected = manual_keys_without_antialias(model, images)
    torch.testing.assert_close(keys, expected, rtol=0, atol=0)


def test_attention_keys_work_on_a_fixed_size_model():
    torch.manual_seed(5)
    model = timm.create_model(TINY, depth=2, num_classes=0).eval()  # strict 224 patch_embed
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(
        features.attention_keys(model, images), manual_keys(model, images), rtol=0, atol=0
    )
    assert features.attention_keys(model, images[:, :, :160]).shape == (1, 10, 14, 192)


def test_other_grid_equals_model_built_for_it(tiny_model, tiny_state_dict):
    """Running at 160x160 resizes pos_embed like loading the weights into a 160 model."""
    images = torch.randn(1, 3, 160, 160, generator=torch.Generator().manual_seed(7))
    model_160 = features.load_vit(TINY, tiny_state_dict, img_size=160)
    assert tuple(model_160.pos_embed.shape) == (1, 1 + 100, 192)
    expected = manual_keys(model_160, images)  # native grid: timm resizes nothing
    torch.testing.assert_close(
        features.attention_keys(tiny_model, images), expected, rtol=0, atol=0
    )


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ((3, 224, 224), "shape"),
        ((1, 1, 224, 224), "shape"),
        ((1, 3, 224, 200), "multiples of the patch size 16"),
        ((0, 3, 224, 224), "non-empty"),
    ],
)
def test_attention_keys_validate_shapes(tiny_model, shape, message):
    with pytest.raises(ValueError, match=message):
        features.attention_keys(tiny_model, torch.zeros(shape))


def test_attention_keys_reject_arrays(tiny_model):
    with pytest.raises(ValueError, match="torch.Tensor"):
        features.attention_keys(tiny_model, np.zeros((1, 3, 224, 224), np.float32))


def test_grid_helpers(tiny_model):
    assert features.grid_size_for(tiny_model, 480) == 30
    assert features.round_to_patch(tiny_model, 480) == 480
    assert features.round_to_patch(tiny_model, 479) == 464
    with pytest.raises(ValueError, match="try 464 or 480"):
        features.grid_size_for(tiny_model, 470)
    with pytest.raises(ValueError, match="multiple"):
        features.grid_size_for(tiny_model, 0)


def test_image_features_default_size(tiny_model):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), np.uint8))
    keys = features.image_features(tiny_model, image)
    assert keys.shape == (30, 30, 192) and keys.dtype == np.float32
    assert keys.flags.c_contiguous
    direct = features.attention_keys(tiny_model, features.preprocess(image, 480)[None])[0]
    np.testing.assert_array_equal(keys, direct.numpy())
    centred = features.image_features(tiny_model, image, size=224, transform="center")
    assert centred.shape == (14, 14, 192)
    with pytest.raises(ValueError, match="transform must be one of"):
        features.image_features(tiny_model, image, transform="whiten")
    with pytest.raises(ValueError, match="multiple of the patch size"):
        features.image_features(tiny_model, image, size=100)


def test_remove_key_bias_and_center(tiny_model):
    keys = features.attention_keys(tiny_model, torch.randn(2, 3, 64, 64))
    bias = tiny_model.blocks[-1].attn.qkv.bias[192:384]
    torch.testing.assert_close(features.remove_key_bias(keys, tiny_model), keys - bias)
    as_array = keys[0].numpy()
    np.testing.assert_allclose(
        features.remove_key_bias(as_array, tiny_model), as_array - bias.numpy(), rtol=0, atol=0
    )
    centred = features.center_keys(keys)
    assert centred.shape == keys.shape
    torch.testing.assert_close(centred.mean(dim=(1, 2)), torch.zeros(2, 192), atol=1e-5, rtol=0)
    centred_one = features.center_keys(as_array)
    assert centred_one.dtype == np.float32
    np.testing.assert_allclose(centred_one.mean(axis=(0, 1)), 0.0, atol=1e-5)
    np.testing.assert_allclose(centred_one, centred[0].numpy(), atol=1e-5)
    assert set(features.FEATURE_TRANSFORMS) == {"none", "remove-key-bias", "center"}
    for transform in features.FEATURE_TRANSFORMS.values():
        assert transform(keys, tiny_model).shape == keys.shape
    with pytest.raises(ValueError, match="shape"):
        features.center_keys(keys[0, 0])


def test_remove_key_bias_without_bias():
    model = timm.create_model(TINY, depth=1, qkv_bias=False, num_classes=0).eval()
    keys = torch.randn(1, 2, 2, 192)
    assert features.key_bias(model) is None
    torch.testing.assert_close(features.remove_key_bias(keys, model), keys)


# ---------------------------------------------------------------------------------------------
# (b) load_vit: weights formats and errors
# ---------------------------------------------------------------------------------------------


def assert_same_weights(model, state_dict):
    loaded = model.state_dict()
    assert set(loaded) == set(state_dict)
    for key, value in state_dict.items():
        assert torch.equal(loaded[key], value.to(loaded[key].dtype)), key


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda sd: sd, id="timm"),
        pytest.param(lambda sd: {"model": sd, "epoch": 3}, id="model"),
        pytest.param(lambda sd: {"state_dict": {f"module.{k}": v for k, v in sd.items()}}, id="sd"),
        pytest.param(
            lambda sd: {
                "teacher": {
                    **{f"backbone.{k}": v for k, v in sd.items()},
                    "head.mlp.0.weight": torch.zeros(8, 192),
                    "head.last_layer.weight_g": torch.zeros(65536, 1),
                },
                "student": {"module.backbone.cls_token": torch.zeros(1)},
                "epoch": 100,
            },
            id="dino-full",
        ),
        pytest.param(
            lambda sd: {
                **sd,
                "head.weight": torch.zeros(1000, 192),
                "head.bias": torch.zeros(1000),
            },
            id="with-head",
        ),
        pytest.param(lambda sd: {k: v.half() for k, v in sd.items()}, id="fp16"),
    ],
)
def test_load_vit_checkpoint_layouts(tmp_path, tiny_state_dict, wrap):
    path = tmp_path / "weights.pth"
    torch.save(wrap(tiny_state_dict), path)
    model = features.load_vit(TINY, path, img_size=224)
    saved_fp16 = torch.load(path, weights_only=True).get("cls_token", torch.zeros(1)).dtype
    expected = tiny_state_dict
    if saved_fp16 == torch.float16:  # loaded as the float32 widening of the float16 copy
        expected = {k: v.half().float() for k, v in tiny_state_dict.items()}
    assert_same_weights(model, expected)
    assert model.pos_embed.dtype == torch.float32
    assert model.hassod_weights == str(path)


def test_load_vit_dino_full_checkpoint_with_args(tmp_path, tiny_state_dict):
    """DINO's training checkpoints carry an argparse.Namespace; load it without unsafe pickle."""
    import argparse

    path = tmp_path / "checkpoint.pth"
    teacher = {f"backbone.{k}": v for k, v in tiny_state_dict.items()}
    torch.save({"teacher": teacher, "args": argparse.Namespace(arch="vit_tiny")}, path)
    assert_same_weights(features.load_vit(TINY, path, img_size=224), tiny_state_dict)


def test_load_vit_drops_mask_token_and_resizes_pos_embed(tiny_state_dict):
    from timm.layers import resample_abs_pos_embed

    state = {**tiny_state_dict, "mask_token": torch.zeros(1, 192)}
    model = features.load_vit(TINY, state, img_size=96)
    expected = resample_abs_pos_embed(
        tiny_state_dict["pos_embed"], [6, 6], [14, 14], num_prefix_tokens=1, antialias=False
    )
    torch.testing.assert_close(model.pos_embed, expected, rtol=0, atol=0)
    antialiased = resample_abs_pos_embed(
        tiny_state_dict["pos_embed"], [6, 6], [14, 14], num_prefix_tokens=1, antialias=True
    )
    assert not torch.allclose(model.pos_embed, antialiased)


def dino_interpolate_pos_encoding(pos_embed: torch.Tensor, grid: int) -> torch.Tensor:
    """DINO v1's VisionTransformer.interpolate_pos_encoding (the authors' hac/dino.py), square
    grids, transcribed step by step."""
    import math

    n = pos_embed.shape[1] - 1
    if grid * grid == n:
        return pos_embed
    side = int(math.sqrt(n))
    patches = pos_embed[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    w0 = h0 = grid + 0.1
    patches = torch.nn.functional.interpolate(
        patches, scale_factor=(w0 / math.sqrt(n), h0 / math.sqrt(n)), mode="bicubic"
    )
    assert int(w0) == patches.shape[-2] and int(h0) == patches.shape[-1]
    patches = patches.permute(0, 2, 3, 1).reshape(1, -1, pos_embed.shape[-1])
    return torch.cat([pos_embed[:, :1], patches], dim=1)


@pytest.mark.parametrize(("old", "new"), [(28, 60), (14, 34), (14, 6), (37, 34), (5, 5)])
def test_resize_pos_embed_dino_equals_dinos_interpolation(old, new):
    torch.manual_seed(old * 100 + new)
    table = torch.randn(1, 1 + old * old, 8)
    resized = features.resize_pos_embed(table, [new, new], [old, old], 1, how="dino")
    torch.testing.assert_close(resized, dino_interpolate_pos_encoding(table, new), rtol=0, atol=0)
    by_size = features.resize_pos_embed(table, [new, new], [old, old], 1, how="size")
    assert torch.equal(resized, by_size) == (old == new)


def cubic_convolution_1d(values: np.ndarray, positions: np.ndarray, a: float = -0.75):
    """Keys' cubic convolution (PyTorch's bicubic, a = -0.75) of ``values`` at source
    coordinates ``positions``, border taps clamped: the plain reference."""

    def weight(s: float) -> float:
        s = abs(s)
        if s <= 1:
            return (a + 2) * s**3 - (a + 3) * s**2 + 1
        return a * s**3 - 5 * a * s**2 + 8 * a * s - 4 * a if s < 2 else 0.0

    out = []
    for x in positions:
        x0 = int(np.floor(x))
        out.append(
            sum(
                weight(x - tap) * values[min(max(tap, 0), len(values) - 1)]
                for tap in range(x0 - 1, x0 + 3)
            )
        )
    return np.array(out)


@pytest.mark.parametrize("how", ["size", "dino"])
def test_resize_pos_embed_sampling_positions(how):
    """Output row i samples the source at (i + 0.5) * old / new - 0.5, or with new + 0.1 in
    place of new for DINO's way (a table that varies along rows only, checked row by row)."""
    old, new = 28, 60
    rng = np.random.default_rng(5)
    profile = rng.normal(size=old)
    table = np.concatenate([[0.0], np.repeat(profile, old)]).reshape(1, -1, 1)
    out = features.resize_pos_embed(torch.tensor(table).float(), [new, new], [old, old], 1, how)
    sampled = out[0, 1:, 0].reshape(new, new).double().numpy()
    denominator = new + 0.1 if how == "dino" else new
    positions = (np.arange(new) + 0.5) * old / denominator - 0.5
    expected = cubic_convolution_1d(profile, positions)
    np.testing.assert_allclose(sampled, np.repeat(expected[:, None], new, 1), atol=2e-5)
    other = (np.arange(new) + 0.5) * old / (new if how == "dino" else new + 0.1) - 0.5
    assert np.abs(sampled[:, 0] - cubic_convolution_1d(profile, other)).max() > 1e-2


def test_resize_pos_embed_rejects_unknown_way():
    with pytest.raises(ValueError, match="how must be one of"):
        features.resize_pos_embed(torch.zeros(1, 5, 2), [3, 3], [2, 2], 1, how="timm")


def test_load_vit_resizes_dino_v1_tables_the_dino_way():
    """The paper's backbone family (names ending in .dino) gets DINO's resize by default,
    others the explicit size; pos_embed_resize overrides the choice."""
    name = "vit_small_patch16_224.dino"
    torch.manual_seed(3)
    state = features.load_vit(name, random_weights=True, img_size=224).state_dict()
    table = state["pos_embed"]
    model = features.load_vit(name, state, img_size=64)
    assert model.hassod_pos_embed_resize == "dino"
    torch.testing.assert_close(
        model.pos_embed, dino_interpolate_pos_encoding(table, 4), rtol=0, atol=0
    )
    by_size = features.load_vit(name, state, img_size=64, pos_embed_resize="size")
    expected = features.resize_pos_embed(table, [4, 4], [14, 14], 1, how="size")
    torch.testing.assert_close(by_size.pos_embed, expected, rtol=0, atol=0)
    assert not torch.allclose(by_size.pos_embed, model.pos_embed)
    assert features.load_vit(TINY, random_weights=True).hassod_pos_embed_resize == "size"
    with pytest.raises(ValueError, match="pos_embed_resize must be one of"):
        features.load_vit(TINY, random_weights=True, pos_embed_resize="bilinear")


def test_loading_into_a_plain_timm_dino_model_resizes_the_dino_way():
    """load_backbone_state_dict on a model timm built (not load_vit): its pretrained config
    names it DINO v1."""
    torch.manual_seed(5)
    state = features.load_vit("vit_small_patch16_224.dino", random_weights=True).state_dict()
    model = timm.create_model(
        "vit_small_patch16_224.dino", pretrained=False, num_classes=0, img_size=64
    )
    features.load_backbone_state_dict(model, state)
    expected = dino_interpolate_pos_encoding(state["pos_embed"], 4)
    torch.testing.assert_close(model.pos_embed.data, expected, rtol=0, atol=0)


def test_attention_keys_resizes_a_dino_model_the_dino_way():
    """Running at another grid than the model's resizes its table the model's way."""
    torch.manual_seed(4)
    model = features.load_vit("vit_small_patch16_224.dino", random_weights=True, img_size=64)
    images = torch.randn(1, 3, 96, 96)
    keys = features.attention_keys(model, images)
    resized = features.resize_pos_embed(model.pos_embed, [6, 6], [4, 4], 1, how="dino")
    original = model.pos_embed.data.clone()
    try:
        model.pos_embed.data = resized  # a model built for the 6x6 grid with the same table
        model.patch_embed.grid_size = (6, 6)
        expected = features.attention_keys(model, images)
    finally:
        model.pos_embed.data = original
        model.patch_embed.grid_size = (4, 4)
    torch.testing.assert_close(keys, expected, rtol=0, atol=0)
    model.hassod_pos_embed_resize = "size"
    assert not torch.allclose(features.attention_keys(model, images), expected)


def test_load_vit_missing_file(tmp_path):
    path = tmp_path / "nope" / "dino_vitbase8_pretrain.pth"
    with pytest.raises(FileNotFoundError, match="dino_vitbase8_pretrain.pth"):
        features.load_vit(TINY, path)
    with pytest.raises(FileNotFoundError, match="is a folder, not a weights file"):
        features.load_vit(TINY, tmp_path)


def test_load_vit_non_checkpoint_says_why_without_torchs_unsafe_advice(tmp_path):
    """A JSON given as weights: a short reason, not torch's truncated advice to load with
    weights_only=False (which would run the file's code)."""
    path = tmp_path / "labels.json"
    path.write_text('{"info": {}, "images": []}')
    with pytest.raises(ValueError) as error:
        features.load_vit(TINY, path)
    message = str(error.value)
    assert "cannot read weights file" in message and "not a checkpoint, or damaged" in message
    assert "weights_only" not in message and "arbitrary code" not in message


def test_load_vit_garbage_file(tmp_path):
    path = tmp_path / "garbage.pth"
    path.write_bytes(b"this is not a checkpoint\n" * 10)
    with pytest.raises(ValueError, match="cannot read weights file"):
        features.load_vit(TINY, path)
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="cannot read weights file"):
        features.load_vit(TINY, path)
    torch.save([torch.zeros(1)], path)
    with pytest.raises(ValueError, match="not a state dict"):
        features.load_vit(TINY, path)
    torch.save({"optimizer": {"lr": 0.1}}, path)
    with pytest.raises(ValueError, match="not a state dict"):
        features.load_vit(TINY, path)


def test_load_vit_wrong_architecture(tmp_path, tiny_state_dict):
    path = tmp_path / "tiny.pth"
    torch.save(tiny_state_dict, path)
    # Same key names, other widths: a shape error naming the tensors.
    with pytest.raises(ValueError, match=r"wrong architecture.*blocks\.0\.attn\.qkv\.weight"):
        features.load_vit("vit_small_patch16_224", path)
    # Other key names: missing and unexpected keys listed.
    with pytest.raises(ValueError, match=r"missing keys \[.*ls1\.gamma"):
        features.load_vit("vit_small_patch14_dinov2", path, img_size=224)
    extra = {**tiny_state_dict, "blocks.12.norm1.weight": torch.zeros(192)}
    with pytest.raises(ValueError, match=r"1 unexpected keys \[blocks\.12\.norm1\.weight\]"):
        features.load_vit(TINY, extra)
    del extra["blocks.12.norm1.weight"], extra["norm.bias"]
    with pytest.raises(ValueError, match=r"1 missing keys \[norm\.bias\]"):
        features.load_vit(TINY, extra)


def test_load_vit_offline_without_weights(monkeypatch):
    original = timm.create_model

    def offline_create_model(name, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        return original(name, pretrained=pretrained, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline_create_model)
    monkeypatch.setattr(features, "_download_unreachable", lambda name: None)
    with pytest.raises(RuntimeError, match="--weights") as info:
        features.load_vit(TINY)
    assert "random_weights=True" in str(info.value) and "--random-weights" in str(info.value)
    assert "smoke tests" in str(info.value)


def _no_proxies(monkeypatch):
    from urllib.request import getproxies

    for name in [*os.environ]:
        if name.lower().endswith("_proxy") or name == "HF_HUB_OFFLINE":
            monkeypatch.delenv(name)
    assert not getproxies()


def _no_download(monkeypatch):
    """timm.create_model that fails the test if asked for pretrained weights."""
    original = timm.create_model

    def create_model(name, pretrained=False, **kwargs):
        assert not pretrained, "the download was attempted"
        return original(name, pretrained=pretrained, **kwargs)

    monkeypatch.setattr(timm, "create_model", create_model)


def test_load_vit_offline_fails_at_once_without_trying_the_hub(monkeypatch):
    """huggingface_hub retries an unreachable host for about a minute: a host that cannot be
    reached, with nothing cached, stops before any download is tried."""
    import socket

    calls = []

    def unreachable(address, timeout=None):
        calls.append(address)
        raise socket.gaierror(-2, "Name or service not known")

    _no_proxies(monkeypatch)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.setattr(features, "_in_hub_cache", lambda repo: False)
    monkeypatch.setattr(socket, "create_connection", unreachable)
    _no_download(monkeypatch)
    with pytest.raises(RuntimeError, match="huggingface.co cannot be reached") as info:
        features.load_vit(TINY)
    assert "--weights PATH" in str(info.value) and calls == [("huggingface.co", 443)]
    monkeypatch.setenv("HF_ENDPOINT", "http://mirror.example:8080")
    assert "mirror.example cannot" in features._download_unreachable(TINY)
    assert calls[-1] == ("mirror.example", 8080)


def test_download_check_steps_aside_when_it_cannot_judge(monkeypatch):
    """Cached weights, a proxy, offline mode, a host that answers: timm is left to do its job."""
    import socket

    class Answer:
        def close(self):
            pass

    _no_proxies(monkeypatch)
    monkeypatch.setattr(features, "_in_hub_cache", lambda repo: False)
    monkeypatch.setattr(socket, "create_connection", lambda address, timeout=None: Answer())
    assert features._download_unreachable(TINY) is None

    def unreachable(address, timeout=None):
        raise OSError("unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    assert features._download_unreachable(TINY) is not None
    monkeypatch.setattr(features, "_in_hub_cache", lambda repo: True)
    assert features._download_unreachable(TINY) is None
    monkeypatch.setattr(features, "_in_hub_cache", lambda repo: False)
    for proxy in ("HTTPS_PROXY", "all_proxy"):  # a SOCKS proxy too: requests uses ALL_PROXY
        monkeypatch.setenv(proxy, "socks5://proxy:1080")
        assert features._download_unreachable(TINY) is None
        monkeypatch.delenv(proxy)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert features._download_unreachable(TINY) is None


@pytest.mark.parametrize(
    ("source", "target", "suggested"),
    [
        ("vit_small_patch14_dinov2", TINY, "vit_small_patch14_dinov2"),
        ("vit_small_patch16_224.dino", TINY, "vit_small_patch16_224.dino"),
        ("vit_small_patch14_reg4_dinov2", "vit_small_patch14_dinov2", "vit_small_patch14_reg4"),
    ],
)
def test_weights_of_another_architecture_suggest_the_backbone(source, target, suggested):
    torch.manual_seed(0)
    state = features.load_vit(source, random_weights=True, img_size=56).state_dict()
    with pytest.raises(ValueError, match="do not fit") as info:
        features.load_vit(target, state, img_size=56)
    assert f"try --backbone {suggested}" in str(info.value)


def test_load_vit_argument_errors(tiny_state_dict):
    with pytest.raises(ValueError, match="not both"):
        features.load_vit(TINY, tiny_state_dict, random_weights=True)
    with pytest.raises(ValueError, match="cannot build timm model"):
        features.load_vit("no_such_model_xyz", random_weights=True)
    with pytest.raises(ValueError, match="img_size"):
        features.load_vit(TINY, random_weights=True, img_size=0)
    with pytest.raises(ValueError, match="not a supported ViT"):
        features.load_vit("resnet18", random_weights=True)


# ---------------------------------------------------------------------------------------------
# (c) preprocess
# ---------------------------------------------------------------------------------------------


def torchvision_preprocess(image, size):
    """The authors' pipeline: RGB, Resize((size, size), LANCZOS), ToTensor, Normalize."""
    from torchvision import transforms

    pipeline = transforms.Compose(
        [
            transforms.Resize((size, size), interpolation=transforms.InterpolationMode.LANCZOS),
            transforms.ToTensor(),
            transforms.Normalize(features.IMAGENET_MEAN, features.IMAGENET_STD),
        ]
    )
    return pipeline(image.convert("RGB"))


@pytest.fixture(scope="module")
def rgb_pixels():
    rng = np.random.default_rng(8)
    smooth = rng.integers(0, 256, (12, 16, 3)).astype(np.float64)
    big = np.kron(smooth, np.ones((5, 5, 1)))  # (60, 80, 3), some structure for the resize
    return np.clip(big + rng.normal(0, 8, big.shape), 0, 255).astype(np.uint8)


def test_preprocess_rgb_matches_torchvision(rgb_pixels):
    image = Image.fromarray(rgb_pixels)
    out = features.preprocess(image, 48)
    assert out.shape == (3, 48, 48) and out.dtype == torch.float32
    torch.testing.assert_close(out, torchvision_preprocess(image, 48), rtol=0, atol=0)
    torch.testing.assert_close(features.preprocess(rgb_pixels, 48), out, rtol=0, atol=0)


def test_preprocess_modes(rgb_pixels):
    image = Image.fromarray(rgb_pixels)
    expected_rgb = features.preprocess(image, 40)
    grey = image.convert("L")
    grey_rgb = features.preprocess(grey.convert("RGB"), 40)
    torch.testing.assert_close(features.preprocess(grey, 40), grey_rgb, rtol=0, atol=0)
    torch.testing.assert_close(features.preprocess(np.asarray(grey), 40), grey_rgb, rtol=0, atol=0)
    torch.testing.assert_close(
        features.preprocess(np.asarray(grey)[:, :, None], 40), grey_rgb, rtol=0, atol=0
    )
    torch.testing.assert_close(features.preprocess(grey.convert("LA"), 40), grey_rgb)
    bilevel = grey.convert("1")
    torch.testing.assert_close(
        features.preprocess(bilevel, 40), features.preprocess(bilevel.convert("L"), 40)
    )
    # Alpha is dropped (PIL convert("RGB")), not composited.
    rgba = image.copy()
    rgba.putalpha(Image.fromarray(np.full(rgb_pixels.shape[:2], 7, np.uint8)))
    torch.testing.assert_close(features.preprocess(rgba, 40), expected_rgb, rtol=0, atol=0)
    rgba_array = np.dstack([rgb_pixels, np.zeros(rgb_pixels.shape[:2], np.uint8)])
    torch.testing.assert_close(features.preprocess(rgba_array, 40), expected_rgb, rtol=0, atol=0)
    palette = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    torch.testing.assert_close(
        features.preprocess(palette, 40), features.preprocess(palette.convert("RGB"), 40)
    )


@pytest.mark.filterwarnings("error")
def test_preprocess_palette_with_transparency_no_warning(rgb_pixels):
    palette = Image.fromarray(rgb_pixels).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = bytes(range(16))
    assert features.preprocess(palette, 24).shape == (3, 24, 24)


def test_preprocess_16_bit_and_float(rgb_pixels):
    """Deeper input is rounded to 8 bits: the same picture gives the same tensor."""
    grey = np.asarray(Image.fromarray(rgb_pixels).convert("L"))
    reference = features.preprocess(grey, 40)
    sixteen = grey.astype(np.uint16) * np.uint16(257)  # same brightness, 16 bits
    image16 = Image.fromarray(sixteen)
    assert image16.mode.startswith("I;16")
    torch.testing.assert_close(features.preprocess(image16, 40), reference, rtol=0, atol=0)
    torch.testing.assert_close(features.preprocess(sixteen, 40), reference, rtol=0, atol=0)
    int32 = Image.fromarray(sixteen.astype(np.int32))
    assert int32.mode == "I"
    torch.testing.assert_close(features.preprocess(int32, 40), reference, rtol=0, atol=0)
    # Not PIL's convert("RGB"), which clips 16-bit values at 255 (a white image).
    assert features.preprocess(image16, 40).std() > 0.1
    floats = rgb_pixels.astype(np.float64) / 255.0
    expected = features.preprocess(rgb_pixels, 40)
    torch.testing.assert_close(features.preprocess(floats, 40), expected, rtol=0, atol=0)
    torch.testing.assert_close(
        features.preprocess(floats.astype(np.float32), 40), expected, rtol=0, atol=0
    )
    torch.testing.assert_close(
        features.preprocess(floats.astype(np.float16), 40), expected, rtol=0, atol=0
    )
    grey_float = Image.fromarray(grey.astype(np.float32) / 255)
    assert grey_float.mode == "F"
    torch.testing.assert_close(features.preprocess(grey_float, 40), reference, rtol=0, atol=0)
    bools = np.kron(np.indices((8, 8)).sum(axis=0) % 2, np.ones((5, 5))).astype(bool)
    torch.testing.assert_close(
        features.preprocess(bools, 16),
        features.preprocess(bools.astype(np.uint8) * 255, 16),
        rtol=0,
        atol=0,
    )
    with pytest.raises(ValueError, match="16-bit"):
        features.preprocess(Image.fromarray(np.full((4, 4), 70000, np.int32)), 8)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.full((8, 8, 3), 255.0), r"\[0, 1\]"),
        (np.full((8, 8), np.nan, np.float32), "NaN"),
        (np.zeros((3, 8, 8, 1), np.uint8), "shape"),
        (np.zeros((3, 8, 8), np.uint8).transpose(1, 2, 0)[:, :, :0], "shape"),
        (np.zeros((8, 8, 5), np.uint8), "shape"),
        (np.zeros((0, 8, 3), np.uint8), "empty"),
        (np.zeros((8, 8, 3), np.int32), "dtype"),
    ],
)
def test_preprocess_rejects(array, message):
    with pytest.raises(ValueError, match=message):
        features.preprocess(array, 16)


def test_preprocess_rejects_bad_size_and_type(rgb_pixels):
    with pytest.raises(ValueError, match="size"):
        features.preprocess(rgb_pixels, 0)
    with pytest.raises(ValueError, match="PIL image or a NumPy array"):
        features.preprocess(rgb_pixels.tolist(), 16)


# ---------------------------------------------------------------------------------------------
# (d) real features: shared DINOv2 ViT-S/14 on two COCO photos
# ---------------------------------------------------------------------------------------------

REAL_SIZE = 476  # 480 rounded down to a multiple of 14: a 34x34 grid
THRESHOLDS = (0.4, 0.2, 0.1)


@pytest.fixture(scope="module")
def dinov2():
    if not DINOV2_WEIGHTS.is_file():
        pytest.skip(f"shared DINOv2 weights absent ({DINOV2_WEIGHTS}); only in the dev workspace")
    return features.load_vit("vit_small_patch14_dinov2", DINOV2_WEIGHTS, img_size=REAL_SIZE)


@pytest.fixture(scope="module")
def coco_keys(dinov2):
    """Raw (34, 34, 384) keys of both photos, by file name."""
    if not all((COCO_DIR / name).is_file() for name in COCO_PHOTOS):
        pytest.skip(f"shared COCO photos absent ({COCO_DIR}); only in the dev workspace")
    assert features.round_to_patch(dinov2) == REAL_SIZE
    keys = {}
    for name in COCO_PHOTOS:
        with Image.open(COCO_DIR / name) as image:
            keys[name] = features.image_features(dinov2, image)
    return keys


def test_dinov2_keys_match_weights_readme_recipe(dinov2, coco_keys, monkeypatch):
    """The weights README's recipe (518 model, pos_embed resized without antialias, hook)."""
    import timm.models.vision_transformer as vit

    original = vit.resample_abs_pos_embed
    monkeypatch.setattr(
        vit,
        "resample_abs_pos_embed",
        lambda *args, **kwargs: original(*args, **{**kwargs, "antialias": False}),
    )
    model = timm.create_model(
        "vit_small_patch14_dinov2", pretrained=False, img_size=518, dynamic_img_size=True
    ).eval()
    model.load_state_dict(torch.load(DINOV2_WEIGHTS, map_location="cpu", weights_only=True))
    name = COCO_PHOTOS[0]
    with Image.open(COCO_DIR / name) as image:
        images = features.preprocess(image, REAL_SIZE)[None]
    expected = manual_keys(model, images)[0].numpy()
    assert coco_keys[name].shape == (34, 34, 384)
    np.testing.assert_allclose(coco_keys[name], expected, rtol=0, atol=1e-4)
    # DESIGN 2b: the key-projection bias of these weights has norm ~48.
    assert 40 < float(features.key_bias(dinov2).norm()) < 56


@pytest.mark.parametrize("transform", sorted(features.FEATURE_TRANSFORMS))
@pytest.mark.parametrize("name", COCO_PHOTOS)
def test_native_cluster_equals_reference_on_dinov2_keys(dinov2, coco_keys, name, transform):
    keys = np.ascontiguousarray(
        features.FEATURE_TRANSFORMS[transform](coco_keys[name], dinov2), dtype=np.float32
    )
    start = time.perf_counter()
    native = hassod.fast_cluster(keys, THRESHOLDS)
    native_s = time.perf_counter() - start
    start = time.perf_counter()
    reference = reference_cluster(keys, THRESHOLDS)
    reference_s = time.perf_counter() - start
    print(
        f"{name} {transform}: regions {native.num_regions.tolist()} "
        f"(native {native_s * 1e3:.1f} ms, reference {reference_s:.2f} s, "
        f"{len(native.merges)} merges)"
    )
    np.testing.assert_array_equal(native.labels, reference.labels)
    np.testing.assert_array_equal(native.num_regions, reference.num_regions)
    assert [tuple(row) for row in native.merges.tolist()] == reference.merges
    assert native.stop_similarity == reference.stop_similarity
    if transform == "none":
        # DESIGN 2b: the key bias makes every neighbour alike; all merges before 0.1.
        assert native.num_regions[0] <= 2
    if transform == "center":
        assert native.num_regions[0] > 1, "centred keys must exercise real merging"
        assert native.num_regions[0] > native.num_regions[-1]


def test_random_weights_are_the_same_network_every_time_and_leave_the_rng_alone():
    """`hassod cluster --random-weights` drew a new network per run (partitions changed from
    one run to the next, and differed from discover's seeded one)."""
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = features.load_vit(TINY, random_weights=True, img_size=224).state_dict()
    assert torch.equal(torch.rand(3), expected_next)  # the caller's stream continues as it was
    second = features.load_vit(TINY, random_weights=True, img_size=224).state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert any(tensor.float().std() > 0 for tensor in first.values())  # random, not constant


def test_dino_weights_in_an_untagged_dino_architecture_warn(tmp_path):
    """The backbone's name, not the file, selects the paper's settings: DINO-like weights (no
    classifier head) loaded under a name without ``.dino`` get a warning naming the tag."""
    import warnings

    name = "vit_small_patch16_224"
    state = features.load_vit(f"{name}.dino", random_weights=True, img_size=32).state_dict()
    path = tmp_path / "dino_deitsmall16_pretrain.pth"
    torch.save(state, path)
    with pytest.warns(UserWarning, match=r"name the backbone vit_small_patch16_224\.dino"):
        features.load_vit(name, path, img_size=32)
    supervised = {**state, "head.weight": torch.zeros(10, 384), "head.bias": torch.zeros(10)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        features.load_vit(f"{name}.dino", path, img_size=32)  # tagged: the paper's settings
        features.load_vit(name, {"model": supervised}, img_size=32)  # a classifier: not DINO's
        features.load_vit(name, random_weights=True, img_size=32)  # no file
