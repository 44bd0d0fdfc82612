"""`hassod discover` / `merge-shards` / `demo`: COCO output, resume, shards, bad input, real data.

Fast runs use a random (seeded) ViT-S/14 at 112 x 112 on tiny images; one test runs the shared
DINOv2 weights on the two shared COCO photos and checks mask recall against their annotations.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from hassod import discover_run
from hassod.cli import main
from hassod.coco import image_id_for
from hassod.discover import DiscoveryConfig
from hassod.visualize import level_figure, region_colours

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
WEIGHTS = SHARED / "weights" / "dinov2_vits14_imgfocus_fp16.pth"
COCO_SAMPLE = SHARED / "data" / "coco_val2017_sample"
TINY = ["--backbone", "vit_small_patch14_dinov2", "--random-weights", "--size", "112", "--quiet"]
EPOCH = "1700000000"  # SOURCE_DATE_EPOCH: the JSON's date, so separate runs compare byte for byte


@pytest.fixture(scope="module", autouse=True)
def _fixed_date():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SOURCE_DATE_EPOCH", EPOCH)
        for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
            patch.delenv(name, raising=False)
        yield


def _photo(name: str, width: int, height: int) -> Image.Image:
    import skimage.data

    return Image.fromarray(getattr(skimage.data, name)()).resize((width, height))


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Five small photos, two with the same name in different sub-folders."""
    root = tmp_path_factory.mktemp("photos")
    (root / "a").mkdir()
    (root / "b").mkdir()
    _photo("astronaut", 80, 64).save(root / "a" / "x.jpg", quality=95)
    _photo("coffee", 72, 48).save(root / "b" / "x.jpg", quality=95)
    _photo("chelsea", 60, 50).save(root / "cat.png")
    _photo("rocket", 50, 70).save(root / "rocket.PNG")
    _photo("astronaut", 40, 40).convert("L").save(root / "grey.bmp")
    return root


@pytest.fixture(scope="module")
def reference(photos, tmp_path_factory) -> Path:
    """An uninterrupted, unsharded run over ``photos`` with a pool of two worker processes."""
    out = tmp_path_factory.mktemp("reference") / "pseudo.json"
    assert main(["discover", str(photos), "--out", str(out), *TINY, "--workers", "2"]) == 0
    return out


def _discover(images: Path, out: Path, *extra: str) -> int:
    return main(["discover", str(images), "--out", str(out), *TINY, "--workers", "0", *extra])


# ---------------------------------------------------------------------------------------------
# Output format
# ---------------------------------------------------------------------------------------------


def test_run_writes_a_coco_file_pycocotools_loads(reference, photos, capsys):
    coco = COCO(str(reference))
    data = json.loads(reference.read_text())
    names = ["a/x.jpg", "b/x.jpg", "cat.png", "grey.bmp", "rocket.PNG"]
    assert [image["file_name"] for image in data["images"]] == names
    for image in data["images"]:
        assert set(image) == {"id", "file_name", "width", "height"}
        assert image["id"] == image_id_for(image["file_name"])
        with Image.open(photos / image["file_name"]) as opened:
            assert (image["width"], image["height"]) == opened.size
    assert len({image["id"] for image in data["images"]}) == len(names)  # same name, two ids
    assert data["categories"] == [{"id": 1, "name": "object", "supercategory": "object"}]
    assert data["failed"] == []

    annotations = data["annotations"]
    assert annotations, "random features still give some masks on these photos"
    assert [a["id"] for a in annotations] == list(range(1, len(annotations) + 1))
    by_id = {a["id"]: a for a in annotations}
    sizes = {image["id"]: (image["height"], image["width"]) for image in data["images"]}
    for annotation in annotations:
        assert {
            "id", "image_id", "segmentation", "bbox", "area", "category_id", "iscrowd",
            "hier_level", "parent_id", "threshold", "score",
        } <= set(annotation)  # fmt: skip
        rle = annotation["segmentation"]
        assert isinstance(rle["counts"], str) and rle["size"] == list(sizes[annotation["image_id"]])
        assert annotation["area"] == int(mask_utils.area(rle)) >= 100
        assert annotation["bbox"] == pytest.approx(mask_utils.toBbox(rle).tolist())
        assert (annotation["category_id"], annotation["iscrowd"]) == (1, 0)
        assert annotation["hier_level"] in (0, 1, 2)
        assert annotation["threshold"] in (0.4, 0.2, 0.1)
        assert 0.5 <= annotation["score"] <= 1.0
        parent = annotation["parent_id"]
        if parent is None:
            assert annotation["hier_level"] == 0
        else:
            assert by_id[parent]["image_id"] == annotation["image_id"]
            assert by_id[parent]["area"] > annotation["area"]
            assert annotation["hier_level"] == min(by_id[parent]["hier_level"] + 1, 2)
    assert len(coco.getAnnIds()) == len(annotations)
    mask = coco.annToMask(annotations[0])
    assert mask.sum() == annotations[0]["area"]

    info = data["info"]
    assert info["backbone"] == "vit_small_patch14_dinov2"
    assert info["weights"] == {"source": "random (seed 0)", "sha256": None}
    assert info["date_created"] == "2023-11-14T22:13:20Z"
    assert info["amp"] == "off" and info["hassod_version"]
    expected = DiscoveryConfig(backbone="vit_small_patch14_dinov2", size=112).as_dict()
    assert info["config"] == expected
    assert "shard" not in info

    parts = Path(str(reference) + ".parts")
    manifest = json.loads((parts / "manifest.json").read_text())
    assert manifest["completed"] == {"images": 5, "failed": 0}
    assert list(parts.glob("chunk-*.json")) and not list(parts.glob(".*.tmp"))


def test_summary_reports_levels_failures_and_stage_times(photos, tmp_path, capsys):
    assert _discover(photos, tmp_path / "p.json", "--limit", "2") == 0
    printed = capsys.readouterr().out
    assert "2 images processed" in printed and "per image (whole" in printed
    for stage in discover_run.STAGES + ("total (wall)",):
        assert stage in printed
    # Nothing left to do: the JSON is assembled again from the chunks, identically.
    before = (tmp_path / "p.json").read_bytes()
    assert _discover(photos, tmp_path / "p.json", "--limit", "2") == 0
    assert "2 already done" in capsys.readouterr().out
    assert (tmp_path / "p.json").read_bytes() == before


# ---------------------------------------------------------------------------------------------
# Resume
# ---------------------------------------------------------------------------------------------


def test_resume_after_a_partial_run_and_lost_chunks_is_byte_identical(reference, photos, tmp_path):
    out = tmp_path / "pseudo.json"
    assert _discover(photos, out, "--limit", "3", "--chunk-size", "1") == 0
    assert len(json.loads(out.read_text())["images"]) == 3
    parts = Path(str(out) + ".parts")
    chunks = sorted(parts.glob("chunk-*.json"))
    assert len(chunks) == 3
    out.unlink()  # the final JSON and the last chunk are lost
    chunks[-1].unlink()
    assert _discover(photos, out, "--chunk-size", "1") == 0
    assert out.read_bytes() == reference.read_bytes()  # also: inline == process pool


def test_resume_after_an_interrupt_is_byte_identical(
    reference, photos, tmp_path, monkeypatch, capsys
):
    calls = {"count": 0}
    real = discover_run.discover_records

    def interrupted_on_third_image(*args, **kwargs):
        calls["count"] += 1
        if calls["count"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(discover_run, "discover_records", interrupted_on_third_image)
    out = tmp_path / "pseudo.json"
    assert _discover(photos, out, "--chunk-size", "1") == discover_run.EXIT_INTERRUPTED
    assert "run the same command again to resume" in capsys.readouterr().err
    assert not out.exists()
    assert len(list(Path(str(out) + ".parts").glob("chunk-*.json"))) == 2
    monkeypatch.setattr(discover_run, "discover_records", real)
    assert _discover(photos, out) == 0
    assert "2 already done" in capsys.readouterr().out
    assert out.read_bytes() == reference.read_bytes()


def test_an_unreadable_chunk_is_a_warning_line_and_its_images_are_redone(
    reference, photos, tmp_path, capsys
):
    out = tmp_path / "pseudo.json"
    assert _discover(photos, out, "--chunk-size", "1") == 0
    chunk = sorted(Path(str(out) + ".parts").glob("chunk-*.json"))[0]
    chunk.write_text("{damaged")
    capsys.readouterr()
    assert _discover(photos, out) == 0
    err = capsys.readouterr().err
    assert err.count(f"hassod discover: warning: ignoring unreadable chunk {chunk}") == 1
    assert out.read_bytes() == reference.read_bytes()


def test_resumed_progress_bar_counts_the_whole_listing(photos, tmp_path, capsys):
    out = tmp_path / "pseudo.json"
    assert _discover(photos, out, "--limit", "2") == 0
    capsys.readouterr()
    noisy = [option for option in TINY if option != "--quiet"]
    assert main(["discover", str(photos), "--out", str(out), *noisy, "--workers", "0"]) == 0
    bar = capsys.readouterr().err
    assert "5/5" in bar  # starts at the 2 done before, not a fresh 0/3
    assert "3/3" not in bar


def test_resume_with_other_settings_is_refused_unless_restart(photos, tmp_path, capsys):
    out = tmp_path / "pseudo.json"
    assert _discover(photos, out, "--limit", "1") == 0
    capsys.readouterr()
    assert _discover(photos, out, "--thresholds", "0.3", "0.1") == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "--restart" in err and "config.thresholds" in err
    assert _discover(photos, out, "--thresholds", "0.3", "0.1", "--limit", "1", "--restart") == 0
    data = json.loads(out.read_text())
    assert data["info"]["config"]["thresholds"] == [0.3, 0.1]
    assert {a["threshold"] for a in data["annotations"]} <= {0.3, 0.1}


def test_an_interrupted_restart_leaves_no_output_of_the_discarded_run(
    photos, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "pseudo.json"
    assert _discover(photos, out, "--limit", "1") == 0
    assert out.exists()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(discover_run, "discover_records", interrupted)
    restart = ["--thresholds", "0.3", "0.1", "--restart"]
    assert _discover(photos, out, *restart) == discover_run.EXIT_INTERRUPTED
    assert not out.exists()  # not the old settings' labels beside the new run's work folder


# ---------------------------------------------------------------------------------------------
# Shards
# ---------------------------------------------------------------------------------------------


def test_two_shards_merged_equal_a_single_run(reference, photos, tmp_path, monkeypatch, capsys):
    out = tmp_path / "pseudo.json"
    assert _discover(photos, out, "--shard", "0/2") == 0
    monkeypatch.setenv("RANK", "1")  # torchrun-style: rank 1 of 2 takes shard 1/2 by itself
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert _discover(photos, out) == 0
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert "hassod merge-shards" in capsys.readouterr().out
    assert not out.exists()
    shard_files = [tmp_path / f"pseudo.shard-{i}-of-2.json" for i in range(2)]
    all_names = [image["file_name"] for image in json.loads(reference.read_text())["images"]]
    for index, path in enumerate(shard_files):
        data = json.loads(path.read_text())
        assert [image["file_name"] for image in data["images"]] == all_names[index::2]
        assert data["info"]["shard"] == {"index": index, "count": 2}
        assert (Path(str(out) + ".parts") / f"shard-{index}-of-2" / "manifest.json").is_file()

    merged = tmp_path / "merged.json"
    assert main(["merge-shards", *map(str, shard_files[::-1]), "--out", str(merged)]) == 0
    assert merged.read_bytes() == reference.read_bytes()
    folders = sorted(Path(str(out) + ".parts").glob("shard-*"))
    assert main(["merge-shards", *map(str, folders), "--out", str(merged)]) == 0
    assert merged.read_bytes() == reference.read_bytes()
    damaged = sorted(folders[0].glob("chunk-*.json"))[0]
    damaged.write_text("{damaged")
    capsys.readouterr()
    assert main(["merge-shards", *map(str, folders), "--out", str(merged)]) == 0
    err = capsys.readouterr().err
    assert f"hassod merge-shards: warning: ignoring unreadable chunk {damaged}" in err
    assert len(json.loads(merged.read_text())["images"]) < len(all_names)

    # An incomplete set, and shards made with other settings, are refused.
    assert main(["merge-shards", str(shard_files[0]), "--out", str(merged)]) == 2
    assert "shard 1/2 missing: give each shard of the run once" in capsys.readouterr().err
    twice = [str(shard_files[0]), str(shard_files[0]), str(shard_files[1])]
    assert main(["merge-shards", *twice, "--out", str(merged)]) == 2
    assert "shard 0/2 given twice" in capsys.readouterr().err
    assert main(["merge-shards", str(shard_files[0]), "--out", str(merged), "--allow-partial"]) == 0
    assert (  # allowed, and said
        "hassod merge-shards: warning: merging an incomplete set of shards: shard(s) 1 of 2 "
        "missing" in capsys.readouterr().err
    )
    other = tmp_path / "other.json"
    assert _discover(photos, other, "--shard", "1/2", "--thresholds", "0.4", "0.2") == 0
    mixed = [str(shard_files[0]), str(tmp_path / "other.shard-1-of-2.json")]
    assert main(["merge-shards", *mixed, "--out", str(merged)]) == 2
    assert "other settings" in capsys.readouterr().err


def test_shard_and_environment_parsing():
    assert discover_run.parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "-1/2", "1", "a/b", "1/0"):
        with pytest.raises(discover_run.UsageError):
            discover_run.parse_shard(bad)
    assert discover_run.shard_from_env({"RANK": "1", "WORLD_SIZE": "2"}) == (1, 2)
    assert discover_run.shard_from_env({"RANK": "0", "WORLD_SIZE": "1"}) is None
    assert discover_run.shard_from_env({}) is None
    out = Path("/data/pseudo.json")
    assert discover_run.output_paths(out, (1, 2)) == (
        Path("/data/pseudo.shard-1-of-2.json"),
        Path("/data/pseudo.json.parts/shard-1-of-2"),
    )


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def messy(tmp_path_factory) -> Path:
    """Every kind of awkward file, next to two good ones."""
    root = tmp_path_factory.mktemp("messy")
    good = _photo("astronaut", 64, 48)
    good.save(root / "good.jpg")
    (root / "zero.jpg").write_bytes(b"")
    (root / "text.jpg").write_text("not an image at all")
    data = (root / "good.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    good.save(root / "full.png")
    png = (root / "full.png").read_bytes()
    (root / "truncated.png").write_bytes(png[: len(png) // 2])
    (root / "notes.txt").write_text("ignored: not an image extension")
    (root / "labels.json").write_text("{}")
    good.save(root / ".hidden.jpg")
    (root / ".cache").mkdir()
    good.save(root / ".cache" / "inside.jpg")
    good.convert("L").save(root / "grey.png")
    good.convert("LA").save(root / "grey_alpha.png")
    good.convert("RGBA").save(root / "rgba.png")
    good.convert("P").save(root / "palette.png")
    good.convert("CMYK").save(root / "cmyk.jpg")
    good.convert("1").save(root / "bilevel.bmp")
    deep = (np.asarray(good.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(deep).save(root / "sixteen.png")  # mode I;16
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    good.save(root / "rotated.jpg", exif=exif)
    _photo("coffee", 1, 1).save(root / "one_pixel.png")
    _photo("coffee", 5, 3).save(root / "tiny.png")
    _photo("chelsea", 400, 300).save(root / "huge.png")  # over --max-pixels 100000 below
    good.save(root / "UPPER.JPEG")
    good.save(root / "photo.webp")
    good.save(root / "photo.tif")
    (root / "d1").mkdir()
    (root / "d2").mkdir()
    good.save(root / "d1" / "same.jpg")
    _photo("coffee", 64, 48).save(root / "d2" / "same.jpg")
    os.symlink(root, root / "d2" / "loop")  # a folder cycle is visited once
    return root


FAILING = {
    "zero.jpg": "empty file",
    "text.jpg": "not an image",
    "truncated.jpg": "truncated",
    "truncated.png": "",
    "huge.png": "image too large",
}


def test_bad_files_are_recorded_and_the_rest_processed(messy, tmp_path, monkeypatch, capsys):
    # PIL's own decompression-bomb limit is lifted for the run: --max-pixels replaces it.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    out = tmp_path / "pseudo.json"
    assert _discover(messy, out, "--max-pixels", "100000") == 0
    assert Image.MAX_IMAGE_PIXELS == 1000  # restored afterwards
    data = json.loads(out.read_text())
    COCO(str(out))
    failed = {failure["file_name"]: failure["reason"] for failure in data["failed"]}
    assert set(failed) == set(FAILING)
    for name, words in FAILING.items():
        assert words in failed[name], (name, failed[name])
    images = {image["file_name"]: image for image in data["images"]}
    assert set(images) == {
        "UPPER.JPEG", "bilevel.bmp", "cmyk.jpg", "d1/same.jpg", "d2/same.jpg", "full.png",
        "good.jpg", "grey.png", "grey_alpha.png", "one_pixel.png", "palette.png", "photo.tif",
        "photo.webp", "rgba.png", "rotated.jpg", "sixteen.png", "tiny.png",
    }  # fmt: skip
    assert (images["rotated.jpg"]["width"], images["rotated.jpg"]["height"]) == (48, 64)
    assert (images["one_pixel.png"]["width"], images["one_pixel.png"]["height"]) == (1, 1)
    assert images["d1/same.jpg"]["id"] != images["d2/same.jpg"]["id"]
    with_masks = {a["image_id"] for a in data["annotations"]}
    assert images["tiny.png"]["id"] not in with_masks  # under the 100-pixel area filter
    assert images["good.jpg"]["id"] in with_masks
    printed = capsys.readouterr().out
    assert "5 failed" in printed and "failed: zero.jpg: empty file" in printed

    # A re-run retries the failures (and records them again), keeping the rest.
    (messy / "zero.jpg").write_bytes((messy / "good.jpg").read_bytes())
    try:
        assert _discover(messy, out, "--max-pixels", "100000") == 0
    finally:
        (messy / "zero.jpg").write_bytes(b"")
    data = json.loads(out.read_text())
    assert "zero.jpg" in {image["file_name"] for image in data["images"]}
    assert {failure["file_name"] for failure in data["failed"]} == set(FAILING) - {"zero.jpg"}


def test_a_run_where_every_image_fails_exits_1_and_keeps_the_json(tmp_path, capsys):
    """A JSON of nothing but failures is no result: exit 1, one line naming the first
    failure, the JSON still written (its 'failed' says why), so scripts notice."""
    images = tmp_path / "images"
    images.mkdir()
    (images / "zero.jpg").write_bytes(b"")
    (images / "text.png").write_text("not an image at all")
    out = tmp_path / "pseudo.json"
    assert _discover(images, out) == 1
    err = capsys.readouterr().err
    assert "no image could be used: 2 images failed" in err and "text.png" in err
    data = json.loads(out.read_text())
    assert data["images"] == [] and len(data["failed"]) == 2
    # One usable image among them is a result (the failures are listed): exit 0.
    _photo("coffee", 64, 48).save(images / "good.png")
    assert _discover(images, out) == 0
    assert "no image could be used" not in capsys.readouterr().err


def test_a_demo_where_every_image_fails_exits_1(tmp_path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("simulated post-processing failure")

    monkeypatch.setattr(discover_run, "discover_records", broken)
    args = ["demo", "--backbone", "vit_small_patch14_dinov2", "--random-weights", "--size", "56"]
    assert main([*args, "--out", str(tmp_path), "--workers", "0", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "hassod demo: no image could be used: 3 images failed" in err
    assert "simulated post-processing failure" in err
    assert not (tmp_path / "figures").exists()


def test_listing_is_recursive_sorted_and_case_insensitive(messy):
    names = discover_run.list_images(messy)
    assert names == sorted(names)
    assert "UPPER.JPEG" in names and "d2/same.jpg" in names
    assert not any(name.startswith(".") or "/." in name or "loop" in name for name in names)
    assert not any(name.endswith((".txt", ".json")) for name in names)


def test_files_named_in_bytes_that_are_not_utf8_are_skipped_with_a_warning(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "good.jpg")
    (tmp_path / "good.jpg").rename(tmp_path / "kept.jpg")
    with open(os.path.join(os.fsencode(tmp_path), b"bad\xffname.jpg"), "wb") as handle:
        handle.write((tmp_path / "kept.jpg").read_bytes())
    with pytest.warns(RuntimeWarning, match=r"not valid UTF-8.*bad\\xffname.jpg"):
        names = discover_run.list_images(tmp_path)
    assert names == ["kept.jpg"]


def test_read_image_converts_every_mode_to_rgb(messy):
    from hassod.discover import UnreadableImage, read_image

    for name in ("grey.png", "palette.png", "sixteen.png", "cmyk.jpg", "bilevel.bmp", "rgba.png"):
        pixels = read_image(messy / name)
        assert pixels.shape == (48, 64, 3) and pixels.dtype == np.uint8, name
    grey = read_image(messy / "grey.png")
    assert np.abs(read_image(messy / "sixteen.png").astype(int) - grey).max() <= 1
    assert read_image(messy / "rotated.jpg").shape == (64, 48, 3)
    with pytest.raises(UnreadableImage, match="too large"):
        read_image(messy / "huge.png", max_pixels=1000)
    # the limit is the largest image read: exactly 400 x 300 pixels pass, one fewer does not
    assert read_image(messy / "huge.png", max_pixels=400 * 300).shape == (300, 400, 3)
    with pytest.raises(UnreadableImage, match="too large"):
        read_image(messy / "huge.png", max_pixels=400 * 300 - 1)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing folder", "images folder not found"),
        ("empty folder", "no images in"),
        ("out is a folder", "is a folder"),
        ("out under a file", "not writable"),
        ("weights and random", "either --weights or --random-weights"),
        ("bad shard", "--shard"),
        ("amp on cpu", "--amp"),
    ],
)
def test_usage_errors_exit_2_before_any_work(tmp_path, photos, capsys, case, message):
    images, out, extra = photos, tmp_path / "out" / "pseudo.json", []
    if case == "missing folder":
        images = tmp_path / "nowhere"
    elif case == "empty folder":
        images = tmp_path / "empty"
        images.mkdir()
        (images / "readme.txt").write_text("no pictures here")
    elif case == "out is a folder":
        out = tmp_path
    elif case == "out under a file":
        (tmp_path / "file").write_text("")
        out = tmp_path / "file" / "pseudo.json"
    elif case == "weights and random":
        extra = ["--weights", str(tmp_path / "w.pth")]
    elif case == "bad shard":
        extra = ["--shard", "2/2"]
    elif case == "amp on cpu":
        extra = ["--amp", "bf16", "--device", "cpu"]
    assert _discover(images, out, *extra) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.rglob("chunk-*.json"))


@pytest.mark.parametrize(
    "content", [b'{"info": {}, "images": [], "annotations": []}', b"[]", b"not json", b"\x89PNG"]
)
def test_outputs_never_replace_a_file_hassod_did_not_write(
    reference, photos, tmp_path, capsys, content
):
    """A mistyped --out (a ground truth, a results list, any file) is refused, untouched;
    hassod's own pseudo-labels are replaced (rerunning resumes), and so is an empty file."""
    foreign = tmp_path / "instances.json"
    foreign.write_bytes(content)
    assert _discover(photos, foreign) == 2
    assert "not a pseudo-label JSON of hassod" in capsys.readouterr().err
    assert foreign.read_bytes() == content and not Path(f"{foreign}.parts").exists()
    arguments = ["merge-shards", str(reference), "--out", str(foreign), "--allow-partial"]
    assert main(arguments) == 2
    assert "refusing to replace" in capsys.readouterr().err and foreign.read_bytes() == content
    own = tmp_path / "own.json"
    own.write_bytes(reference.read_bytes())
    assert main([*arguments[:3], str(own), "--allow-partial"]) == 0  # its own kind: replaced
    assert main(["merge-shards", str(own), "--out", str(own), "--allow-partial"]) == 2
    assert "is one of the inputs" in capsys.readouterr().err  # it would replace its input
    ground_truth = tmp_path / "gt.json"
    ground_truth.write_text(
        json.dumps({"info": {"description": "COCO"}, "images": [], "annotations": []})
    )
    assert (
        main(
            [
                "merge-shards",
                str(own),
                str(ground_truth),
                "--out",
                str(tmp_path / "m.json"),
                "--allow-partial",
            ]
        )
        == 2
    )
    assert "gt.json is not a pseudo-label JSON of hassod (its info.description is 'COCO')" in (
        capsys.readouterr().err
    )
    empty = tmp_path / "empty.json"
    empty.touch()
    assert _discover(photos, empty) == 0 and empty.read_bytes() == reference.read_bytes()


def test_a_size_under_one_patch_is_a_usage_error_and_leaves_no_folders(photos, tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "pseudo.json"
    assert _discover(photos, out, "--size", "5") == 2  # the last --size wins over TINY's
    assert "--size: size 5 is smaller than the patch size 14 of vit_small_patch14_dinov2" in (
        capsys.readouterr().err
    )
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(SystemExit) as exit_info:
        main(["cluster", "--backbone", "vit_small_patch14_dinov2", "--random-weights", "--size",
              "3", "--out", str(tmp_path / "cluster")])  # fmt: skip
    assert exit_info.value.code == 2 and "patch size 14" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_read_only_output_folder_exits_2(photos, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert _discover(photos, locked / "pseudo.json") == 2
    assert "not writable" in capsys.readouterr().err


def test_weights_that_cannot_be_loaded_exit_1_and_leave_nothing(photos, tmp_path, capsys):
    out = tmp_path / "pseudo.json"
    base = ["discover", str(photos), "--out", str(out), "--size", "112", "--quiet"]
    # No --weights: the hub download. A fresh process with HF_HUB_OFFLINE=1 (read when
    # huggingface_hub is imported) fails at once instead of retrying the network.
    environment = dict(os.environ, HF_HUB_OFFLINE="1")
    completed = subprocess.run(
        [sys.executable, "-m", "hassod", *base, "--backbone", "vit_small_patch14_dinov2"],
        capture_output=True, text=True, env=environment, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 1, completed.stderr
    assert "pretrained weights" in completed.stderr and "--weights" in completed.stderr
    missing = tmp_path / "missing.pth"
    assert main([*base, "--backbone", "vit_small_patch14_dinov2", "--weights", str(missing)]) == 1
    assert "missing.pth" in capsys.readouterr().err
    assert not Path(str(out) + ".parts").exists() and not out.exists()


def test_a_dead_worker_fails_its_images_and_the_pool_recovers():
    config = DiscoveryConfig(backbone="vit_small_patch14_dinov2", size=28)
    image = np.asarray(_photo("coffee", 40, 30))
    features = np.random.default_rng(0).standard_normal((2, 2, 8)).astype(np.float32)
    post = discover_run._PostProcessing(1, config)
    try:
        post.submit("first.png", image, features, {})
        for process in post.executor._processes.values():
            process.kill()
        results = post.collect(block=True)
        assert [r.file_name for r in results] == ["first.png"]
        assert "worker process died" in results[0].reason
        post.submit("second.png", image, features, {})
        (result,) = post.collect(block=True)
        assert result.reason is None and result.image["file_name"] == "second.png"
    finally:
        post.close()


_ORPHAN_SCRIPT = """
import os, sys, time
from hassod import discover_run
from hassod.discover import DiscoveryConfig

post = discover_run._PostProcessing(2, DiscoveryConfig())
pids = {post.executor.submit(os.getpid).result() for _ in range(8)}
print(" ".join(map(str, pids)), flush=True)
time.sleep(600)
"""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_workers_end_when_the_main_process_is_killed_outright():
    """kill -9 of the main process leaves no one to shut the pool down: the workers notice
    and exit on their own instead of waiting forever on their task queue."""
    import signal
    import time

    main_process = subprocess.Popen(
        [sys.executable, "-c", _ORPHAN_SCRIPT], stdout=subprocess.PIPE, text=True
    )
    try:
        workers = [int(pid) for pid in main_process.stdout.readline().split()]
        assert workers and all(_pid_alive(pid) for pid in workers)
    finally:
        main_process.send_signal(signal.SIGKILL)
        main_process.wait()
    deadline = time.monotonic() + 30
    while any(_pid_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [pid for pid in workers if _pid_alive(pid)]
    for pid in left:  # do not leave them behind when the test fails
        os.kill(pid, signal.SIGKILL)
    assert not left, f"workers {left} outlived their killed main process"


# ---------------------------------------------------------------------------------------------
# Demo and level pictures
# ---------------------------------------------------------------------------------------------


def test_demo_writes_pseudo_labels_and_level_figures(tmp_path, capsys):
    args = ["demo", "--backbone", "vit_small_patch14_dinov2", "--random-weights", "--size", "112"]
    assert main([*args, "--out", str(tmp_path), "--workers", "0", "--quiet"]) == 0
    assert "discover:" not in capsys.readouterr().err  # --quiet: no progress bar
    assert main([*args, "--out", str(tmp_path), "--workers", "0"]) == 0  # a rerun: afresh
    data = json.loads((tmp_path / "pseudo.json").read_text())
    names = ["astronaut.png", "chelsea.png", "coffee.png"]
    assert [image["file_name"] for image in data["images"]] == names
    for name in names:
        assert (tmp_path / "images" / name).is_file()
        with Image.open(tmp_path / "figures" / name) as figure:
            width, height = figure.size
        # Four panels, none narrower than tall, and a legend under them.
        assert height > 320 + 22 and width >= 4 * 320
    printed = capsys.readouterr().out
    assert "wrote 3 figures" in printed and "hassod demo: 3 images processed" in printed


def test_an_interrupted_demo_says_it_starts_afresh(tmp_path, monkeypatch, capsys):
    """discover's "run the same command again to resume" would be wrong: demo restarts."""

    def interrupted(options):
        raise discover_run.Interrupted("interrupted: 1 image finished ... to resume")

    monkeypatch.setattr(discover_run, "run_discover", interrupted)
    args = ["demo", "--backbone", "vit_small_patch14_dinov2", "--random-weights", "--size", "112"]
    assert main([*args, "--out", str(tmp_path), "--quiet"]) == 130
    err = capsys.readouterr().err
    assert "hassod demo: interrupted; run it again to start afresh" in err and "resume" not in err


def test_demo_refuses_a_folder_holding_other_images(tmp_path, capsys):
    """The demo labels every image in OUT/images: a user's photo there must not join it."""
    (tmp_path / "images").mkdir()
    _photo("rocket", 40, 30).save(tmp_path / "images" / "my_photo.png")
    args = ["demo", "--backbone", "vit_small_patch14_dinov2", "--random-weights", "--size", "112"]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--out", str(tmp_path), "--workers", "0"])
    assert exit_info.value.code == 2
    assert "'my_photo.png'" in capsys.readouterr().err
    assert sorted(path.name for path in tmp_path.rglob("*")) == ["images", "my_photo.png"]
    (tmp_path / "images" / "my_photo.png").unlink()
    (tmp_path / "figures").mkdir()
    _photo("rocket", 40, 30).save(tmp_path / "figures" / "coffee.png")  # not a demo figure
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--out", str(tmp_path), "--workers", "0"])
    assert exit_info.value.code == 2 and "is not a figure of hassod" in capsys.readouterr().err


def test_level_figure_shows_levels_cumulatively():
    image = np.zeros((40, 60, 3), dtype=np.uint8)
    masks = np.zeros((3, 40, 60), dtype=bool)
    masks[0, 5:35, 5:55] = True  # whole
    masks[1, 10:30, 10:30] = True  # part
    masks[2, 15:20, 15:20] = True  # subpart
    figure = np.asarray(level_figure(image, masks, np.array([0, 1, 2]), panel_height=40))
    assert figure.shape == (40 + 22, 4 * 60, 3)
    panels = [figure[22:, index * 60 : (index + 1) * 60] for index in range(4)]
    colours = region_colours(3)
    assert not panels[0].any()  # the input
    centre_of_part, centre_of_subpart = (20, 25), (17, 17)
    assert np.array_equal(panels[1][centre_of_part], panels[1][(32, 50)])  # only the whole
    assert not np.array_equal(panels[2][centre_of_part], panels[1][centre_of_part])
    assert np.array_equal(panels[2][centre_of_subpart], panels[2][centre_of_part])
    assert not np.array_equal(panels[3][centre_of_subpart], panels[2][centre_of_subpart])
    assert np.array_equal(panels[3][5, 30], colours[0])  # outlines in the mask's colour
    with pytest.raises(ValueError, match="levels"):
        level_figure(image, masks, np.array([0, 1]))


# ---------------------------------------------------------------------------------------------
# Real weights, real photos
# ---------------------------------------------------------------------------------------------

# Measured (DINOv2 ViT-S/14 shared weights, size 480 -> 476, centred keys, CPU): 1 of the 43
# COCO objects matched at IoU >= 0.5 (recall 0.023), mean best IoU over the objects 0.076, 4 of
# the 7 background "stuff" segments matched. These crowded photos (crowds of people, a herd of
# horses; objects of ~2000-4000 pixels, ~3x3 cells of the 34x34 grid) are hard for stage 1.
OBJECT_RECALL_FLOOR = 0.02  # 1 of 43
OBJECT_MEAN_IOU_FLOOR = 0.06
STUFF_RECALL_FLOOR = 3 / 7


@pytest.mark.skipif(not WEIGHTS.is_file(), reason="shared DINOv2 weights not present (../shared)")
def test_real_weights_on_coco_photos_recall(tmp_path, capsys):
    out = tmp_path / "pseudo.json"
    code = main(
        [
            "discover", str(COCO_SAMPLE), "--out", str(out), "--quiet",
            "--backbone", "vit_small_patch14_dinov2", "--weights", str(WEIGHTS),
        ]
    )  # fmt: skip
    assert code == 0
    print(capsys.readouterr().out)
    pseudo = COCO(str(out))
    data = json.loads(out.read_text())
    assert data["info"]["weights"]["sha256"] == (
        "d538dfe4a0f15afea4cb26b02953d05757e12d3e8d8dae144c24c21de7321546"
    )
    assert data["info"]["config"]["size"] == 476 and data["failed"] == []
    truth = json.loads((COCO_SAMPLE / "panoptic_coco_detection_format.json").read_text())
    ids = {image["file_name"]: image["id"] for image in data["images"]}
    names = {image["id"]: image["file_name"] for image in truth["images"]}
    best = {"object": [], "stuff": []}
    for annotation in truth["annotations"]:
        kind = "object" if annotation["category_id"] <= 90 else "stuff"
        image_id = ids[names[annotation["image_id"]]]
        predicted = [a["segmentation"] for a in pseudo.loadAnns(pseudo.getAnnIds(image_id))]
        iou = mask_utils.iou(predicted, [annotation["segmentation"]], [0]) if predicted else [[0]]
        best[kind].append(float(np.max(iou)))
    objects, stuff = np.asarray(best["object"]), np.asarray(best["stuff"])
    recall = float((objects >= 0.5).mean())
    print(
        f"object recall@0.5 {recall:.3f} ({int((objects >= 0.5).sum())}/{len(objects)}), "
        f"mean best IoU {objects.mean():.3f}, stuff recall@0.5 {(stuff >= 0.5).mean():.3f}"
    )
    assert len(objects) == 43 and len(stuff) == 7
    assert recall >= OBJECT_RECALL_FLOOR
    assert objects.mean() >= OBJECT_MEAN_IOU_FLOOR
    assert (stuff >= 0.5).mean() >= STUFF_RECALL_FLOOR


def test_an_image_merged_into_one_region_gives_no_masks_not_an_error():
    # Constant features merge every cell into one region, which the corner filter drops: the
    # filters must cope with nothing left (raw DINOv2 keys do this to whole images).
    from hassod.discover import discover_records

    config = DiscoveryConfig(backbone="vit_small_patch14_dinov2", size=56)
    image = np.asarray(_photo("coffee", 40, 30))
    features = np.ones((4, 4, 8), dtype=np.float32)
    record, annotations = discover_records("flat.png", image, features, config)
    assert record == {"id": image_id_for("flat.png"), "file_name": "flat.png", "width": 40,
                      "height": 30}  # fmt: skip
    assert annotations == []


def test_pos_embed_resize_option_reaches_the_config_and_the_model():
    """auto: DINO's own resize for DINO v1 backbones, an explicit size for others; the choice is
    recorded in the info and given to the backbone loader."""
    import argparse

    from hassod.cli import _discovery_config
    from hassod.discover_run import load_backbone

    parser = argparse.ArgumentParser()
    for backbone, choice, expected in (
        ("vit_base_patch8_224.dino", "auto", "dino"),
        ("vit_small_patch14_dinov2", "auto", "size"),
        ("vit_base_patch8_224.dino", "size", "size"),
        ("vit_small_patch14_dinov2", "dino", "dino"),
    ):
        namespace = argparse.Namespace(
            backbone=backbone, size=112, thresholds=None, feature_transform="auto",
            near_duplicate_iou=None, crf="native", pos_embed_resize=choice,
        )  # fmt: skip
        config = _discovery_config(namespace, parser)
        assert config.resolved_pos_embed_resize == expected
        assert config.as_dict()["pos_embed_resize"] == expected
    with pytest.raises(ValueError, match="pos_embed_resize"):
        DiscoveryConfig(pos_embed_resize="bilinear")
    model, _, _ = load_backbone("vit_tiny_patch16_224", None, True, 64, "dino")
    assert model.hassod_pos_embed_resize == "dino"


def test_crf_backend_option_reaches_the_config():
    """`--crf pydensecrf` selects the reference CRF; the default is the native one."""
    import argparse

    from hassod.cli import _discovery_config
    from hassod.postprocess import CrfParams

    parser = argparse.ArgumentParser()
    base = dict(
        backbone="vit_small_patch14_dinov2",
        size=112,
        thresholds=None,
        feature_transform="auto",
        near_duplicate_iou=None,
    )
    native = _discovery_config(argparse.Namespace(**base, crf="native"), parser)
    reference = _discovery_config(argparse.Namespace(**base, crf="pydensecrf"), parser)
    assert native.crf.backend == "native" and reference.crf.backend == "pydensecrf"
    assert native.as_dict()["crf"]["backend"] == "native"
    # auto: the batched torch CRF on CUDA devices, the native one on the CPU.
    for device, expected in (("cpu", "native"), ("cuda", "torch"), ("cuda:1", "torch")):
        namespace = argparse.Namespace(**base, crf="auto", device=device)
        assert _discovery_config(namespace, parser).crf.backend == expected
    torch_crf = _discovery_config(argparse.Namespace(**base, crf="torch", device="cpu"), parser)
    assert torch_crf.crf.backend == "torch"
    assert (torch_crf.crf.torch_method, torch_crf.crf.torch_precision) == ("spmm", "float32")
    # --crf-method auto (the default): the Triton kernels for the torch backend on CUDA.
    for crf, device, expected in (("torch", "cuda", "triton"), ("torch", "cpu", "spmm")):
        namespace = argparse.Namespace(**base, crf=crf, device=device, crf_method="auto")
        assert _discovery_config(namespace, parser).crf.torch_method == expected
    # --crf-method: how the torch backend filters.
    for choice, method, precision in (
        ("triton", "triton", "float32"),
        ("triton-float16", "triton", "float16"),
    ):
        namespace = argparse.Namespace(**base, crf="torch", device="cuda", crf_method=choice)
        crf = _discovery_config(namespace, parser).crf
        assert crf.torch_settings["method"] == method
        assert crf.torch_settings["precision"] == precision
    # The Triton kernels: only for the torch backend on a CUDA device.
    import torch

    refused = [("native", "cuda"), ("torch", "cpu"), ("auto", "cpu")]
    if not torch.cuda.is_available():
        refused.append(("torch", "auto"))  # auto resolves to the CPU here
    for crf, device in refused:
        namespace = argparse.Namespace(**base, crf=crf, device=device, crf_method="triton")
        with pytest.raises(SystemExit):
            _discovery_config(namespace, parser)
    with pytest.raises(ValueError, match="torch_method must be one of"):
        CrfParams(backend="torch", torch_method="dense")
    with pytest.raises(ValueError, match="torch_precision must be one of"):
        CrfParams(backend="torch", torch_precision="float64")


def test_batched_torch_crf_run_matches_the_native_run(reference, photos, tmp_path):
    """`--crf torch` (the GPU path, here on the CPU): clustering in the main process, the
    batch's CRFs together, filters in the workers; the masks equal the native run's but for
    pixels whose CRF marginal is within float rounding of 0.5."""
    out = tmp_path / "torch.json"
    assert _discover(photos, out, "--crf", "torch", "--device", "cpu", "--batch-size", "3") == 0
    ours, theirs = json.loads(out.read_text()), json.loads(reference.read_text())
    assert ours["info"]["config"]["crf"]["backend"] == "torch"
    assert [i["file_name"] for i in ours["images"]] == [i["file_name"] for i in theirs["images"]]
    assert len(ours["annotations"]) == len(theirs["annotations"]) > 0
    for mine, other in zip(ours["annotations"], theirs["annotations"]):
        assert mine["image_id"] == other["image_id"]
        assert mine["hier_level"] == other["hier_level"]
        assert mine["threshold"] == other["threshold"]
        iou = mask_utils.iou([mine["segmentation"]], [other["segmentation"]], [0])[0, 0]
        assert iou >= 0.99, (mine["image_id"], iou)


def test_clustering_in_the_main_process_batches_and_isolates_bad_grids():
    """The GPU-CRF path clusters a batch on native threads; one bad grid (NaN) loses only its
    image, and every other image's clusters equal fast_cluster's."""
    from hassod.cluster import fast_cluster
    from hassod.discover_run import _cluster_here

    rng = np.random.default_rng(0)
    grids = [rng.normal(size=(6 + i, 7, 5)).astype(np.float32) for i in range(4)]
    items = [(f"{i}.png", None, grid, {}) for i, grid in enumerate(grids)]
    thresholds = (0.4, 0.2, 0.1)
    clustered = _cluster_here(items, thresholds)
    for grid, got, (_, _, _, timings) in zip(grids, clustered, items):
        expected = fast_cluster(grid, thresholds)
        assert all(np.array_equal(a, b) for a, b in zip(got.labels, expected.labels))
        assert timings["cluster"] >= 0
    grids[2] = grids[2].copy()
    grids[2][0, 0, 0] = np.nan
    items = [(f"{i}.png", None, grid, {}) for i, grid in enumerate(grids)]
    clustered = _cluster_here(items, thresholds)
    assert clustered[2] is None
    assert [c is None for c in clustered] == [False, False, True, False]
    assert np.array_equal(clustered[3].labels[0], fast_cluster(grids[3], thresholds).labels[0])


def test_default_workers(monkeypatch):
    """Every usable CPU (split between torchrun's local ranks), but none on a CPU-only run
    with two CPUs or fewer: one process with the CRF on both threads is faster there."""
    from hassod import discover_run

    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    for cpus, device, expected in ((2, "cpu", 0), (1, "cpu", 0), (2, "cuda", 2), (8, "cpu", 8)):
        monkeypatch.setattr(discover_run, "usable_cpus", lambda c=cpus: c)
        assert discover_run.default_workers(device) == expected
    monkeypatch.setattr(discover_run, "usable_cpus", lambda: 16)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert discover_run.default_workers("cuda:1") == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert discover_run.default_workers("cuda:0") == 1
    assert discover_run.default_workers("cpu") == 0


def test_a_backbone_batch_out_of_memory_retries_each_image_unpadded(monkeypatch):
    """On a GPU a failed batch is retried one image at a time, without the padding that
    would rebuild the shape that failed, and after the failed attempt's memory is freed."""
    import gc
    import weakref

    import torch

    import hassod.features as features

    batch_size, seen, alive_at_retry, first_attempt = 4, [], [], []

    def attention_keys(model, stacked):
        seen.append(int(stacked.shape[0]))
        activations = torch.empty(stacked.shape[0], 1000)  # stands for the device tensors
        if not first_attempt:
            first_attempt.append(weakref.ref(activations))
        else:
            gc.collect()
            alive_at_retry.append(first_attempt[0]() is not None)
        if stacked.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return torch.zeros(stacked.shape[0], 2, 2, 8)

    monkeypatch.setattr(features, "attention_keys", attention_keys)
    batch = [(f"img{i}", None, torch.zeros(3, 16, 16), {}) for i in range(batch_size)]
    with pytest.warns(RuntimeWarning, match="one at a time"):
        out = list(
            discover_run._run_backbone(None, batch, DiscoveryConfig(), "off", "cuda", batch_size)
        )
    assert seen == [batch_size, 1, 1, 1, 1]
    assert alive_at_retry == [False] * batch_size
    assert all(not isinstance(grid, str) for _, _, grid, _ in out)


@pytest.mark.parametrize("where", ["backbone", "batched CRF"])
def test_a_signal_during_a_retried_step_is_not_taken_for_a_failed_batch(monkeypatch, where):
    """SIGTERM (raised as Interrupted by the run's handler) inside a step whose failures are
    retried must stop the run, not become a warning and a retry."""
    import torch

    import hassod.batched_crf
    import hassod.features as features

    def interrupted(*args, **kwargs):
        raise discover_run.Interrupted("signal 15")

    if where == "backbone":
        monkeypatch.setattr(features, "attention_keys", interrupted)
        batch = [("img0", None, torch.zeros(3, 16, 16), {})]
        with pytest.raises(discover_run.Interrupted):
            list(discover_run._run_backbone(None, batch, DiscoveryConfig(), "off", "cpu", 1))
    else:
        monkeypatch.setattr(hassod.batched_crf, "crf_candidates_batch", interrupted)
        clusters = SimpleNamespace(labels=[np.zeros((2, 2), np.int32)], thresholds=(0.4,))
        monkeypatch.setattr(discover_run, "_cluster_here", lambda items, thresholds: [clusters])
        items = [("img0", np.zeros((8, 8, 3), np.uint8), np.zeros((2, 2, 4), np.float32), {})]
        with pytest.raises(discover_run.Interrupted):
            discover_run._crf_on_device(items, DiscoveryConfig(), "cpu")


def test_a_gpu_fault_in_the_backbone_stops_the_run(monkeypatch):
    """An illegal memory access leaves the device unusable: a RunError (exit 1, the run
    resumable), not every later image recorded as failed."""
    import torch

    import hassod.features as features

    def fault(model, stacked):
        raise torch.AcceleratorError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(features, "attention_keys", fault)
    batch = [(f"img{i}", None, torch.zeros(3, 16, 16), {}) for i in range(2)]
    with pytest.raises(discover_run.RunError, match="rerun"):
        list(discover_run._run_backbone(None, batch, DiscoveryConfig(), "off", "cuda", 2))


def test_device_index_is_checked_against_the_visible_gpus(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert discover_run.resolve_device("auto") == "cuda"
    assert discover_run.resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(discover_run.UsageError, match="only 2 CUDA"):
        discover_run.resolve_device("cuda:7")
    with pytest.raises(discover_run.UsageError, match="cuda:N"):
        discover_run.resolve_device("cuda:x")
    monkeypatch.setenv("LOCAL_RANK", "3")
    with pytest.raises(discover_run.UsageError, match="only 2 CUDA"):
        discover_run.resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # one GPU per process
    assert discover_run.resolve_device("auto") == "cuda:0"


def test_chunks_past_a_million_keep_their_order_and_numbering(tmp_path):
    """chunk-1000000 sorts after chunk-999999 (a sort by name put it first, and every later
    chunk overwrote it), and the next number is found once, not by listing per chunk."""
    from hassod.work_folder import WorkFolder

    folder = WorkFolder(tmp_path)
    for index in (999_998, 999_999):
        (tmp_path / f"chunk-{index:06d}.json").write_text("{}")
    (tmp_path / "chunk-notes.json").write_text("{}")  # not a chunk: left alone
    written = [folder.write_chunk([], []) for _ in range(3)]
    assert [path.name for path in written] == [
        "chunk-1000000.json",
        "chunk-1000001.json",
        "chunk-1000002.json",
    ]
    assert [path.name for path in folder.chunk_paths()][-4:] == [
        "chunk-999999.json",
        *[path.name for path in written],
    ]
    folder.clear()
    assert folder.write_chunk([], []).name == "chunk-000000.json"


def test_an_image_replaced_under_its_name_is_processed_again(photos, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted(photos.glob("*.png"))[:2]:
        (images / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "p.json"
    assert _discover(images, out) == 0
    name = sorted(images.iterdir())[0].name
    _photo("coffee", 77, 55).save(images / name)
    capsys.readouterr()
    assert _discover(images, out) == 0
    captured = capsys.readouterr()
    assert "1 image processed" in captured.out
    # a warning line, not Python's warning with its source line
    changed = "hassod discover: warning: 1 image changed since processed"
    assert changed in captured.err and "warnings.warn" not in captured.err
    record = next(i for i in json.loads(out.read_text())["images"] if i["file_name"] == name)
    assert (record["width"], record["height"]) == (77, 55)
    assert _discover(images, out) == 0  # nothing changed since: nothing redone
    assert "0 images processed" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ([{"image_id": 1, "bbox": [0, 0, 1, 1], "score": 1}], "got a JSON list .*results list"),
        ({}, "got a dict without 'info', 'images', 'annotations'"),
        (
            {"info": {}, "images": [{"id": [1], "file_name": "a.png"}], "annotations": []},
            "image 0: 'id' must be an integer",
        ),
        (
            {
                "info": {},
                "images": [{"id": 1, "file_name": "a.png"}],
                "annotations": [{"id": 1, "image_id": 1, "bbox": [0, 0, 1, 1], "parent_id": "p"}],
            },
            "parent_id 'p' is not an integer",
        ),
    ],
)
def test_merge_shards_names_what_a_wrong_file_is(tmp_path, capsys, content, message):
    """A results list or {} gave 'list indices must be integers...' / "'info'"; a list id a
    traceback."""
    path = tmp_path / "x.json"
    path.write_text(json.dumps(content))
    out = str(tmp_path / "m.json")
    assert main(["merge-shards", str(path), "--out", out, "--allow-partial"]) == 2
    err = capsys.readouterr().err
    lines = err.splitlines()  # warnings first, as lines too (no Python source lines)
    assert lines[-1].startswith("hassod merge-shards: error: ")
    assert all(line.startswith("hassod merge-shards: ") for line in lines), err
    assert re.search(message, lines[-1]), err


def test_a_full_disk_mid_run_is_one_line_and_keeps_what_was_saved(
    photos, tmp_path, monkeypatch, capsys
):
    """A write failing for lack of space (or access) after the up-front checks: exit 1 with one
    line, no traceback; other OS errors still raise (a bug should show its traceback)."""
    import errno

    from hassod import work_folder

    out = tmp_path / "pseudo.json"

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.path / "chunk.json"))

    monkeypatch.setattr(work_folder.WorkFolder, "write_chunk", full)
    assert _discover(photos, out) == 1
    err = capsys.readouterr().err
    assert "hassod discover: error: cannot write: [Errno 28] No space left on device" in err
    assert "Traceback" not in err and not out.exists()

    def broken(self, *args, **kwargs):
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(work_folder.WorkFolder, "write_chunk", broken)
    with pytest.raises(OSError, match="Bad file descriptor"):
        _discover(photos, out)
    monkeypatch.undo()
    assert _discover(photos, out) == 0  # room again: the same command finishes the run
    # merge-shards writes once, at the end: a full disk there is the same one line, exit 1
    from hassod import shards

    def no_room(path, value, **options):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(shards, "atomic_write_json", no_room)
    merged = str(tmp_path / "merged.json")
    assert main(["merge-shards", str(out), "--out", merged, "--allow-partial"]) == 1
    assert "hassod merge-shards: error: cannot write: [Errno 28]" in capsys.readouterr().err
