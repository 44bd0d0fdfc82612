"""The `hassod cluster` command: a real run on a photo, and its errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hassod.cli import main

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
WEIGHTS = SHARED / "weights" / "dinov2_vits14_imgfocus_fp16.pth"
PHOTO = SHARED / "data" / "coco_val2017_sample" / "000000142238.jpg"
SMALL = ["--backbone", "vit_small_patch14_dinov2", "--size", "224"]


def test_cluster_random_weights_writes_picture_and_labels(tmp_path, capsys):
    assert main(["cluster", *SMALL, "--random-weights", "--out", str(tmp_path)]) == 0
    figure = Image.open(tmp_path / "astronaut_partitions.png")
    saved = np.load(tmp_path / "astronaut_labels.npz")
    assert saved["labels"].shape == (3, 16, 16)
    assert saved["thresholds"].tolist() == [0.4, 0.2, 0.1]
    assert figure.size[0] == 4 * (figure.size[1] - 22)  # four square panels under a caption
    assert "regions" in capsys.readouterr().out
    assert not list(tmp_path.glob(".*.tmp"))  # temporary files renamed away


def test_cluster_takes_discovers_name_for_the_transform(tmp_path):
    """--feature-transform (discover's name) and --transform give the same partitions."""
    common = ["cluster", *SMALL, "--random-weights"]
    assert main([*common, "--transform", "none", "--out", str(tmp_path / "a")]) == 0
    assert main([*common, "--feature-transform", "none", "--out", str(tmp_path / "b")]) == 0
    assert main([*common, "--feature-transform", "center", "--out", str(tmp_path / "c")]) == 0
    labels = [np.load(tmp_path / d / "astronaut_labels.npz")["labels"] for d in "abc"]
    assert np.array_equal(labels[0], labels[1])
    assert not np.array_equal(labels[0], labels[2])  # the option is applied, not ignored


@pytest.mark.skipif(not WEIGHTS.is_file(), reason="shared DINOv2 weights not present (../shared)")
def test_cluster_real_photo_with_shared_weights(tmp_path):
    code = main(
        [
            "cluster",
            str(PHOTO),
            "--backbone",
            "vit_small_patch14_dinov2",
            "--weights",
            str(WEIGHTS),
            "--size",
            "476",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    labels = np.load(tmp_path / "000000142238_labels.npz")["labels"]
    assert labels.shape == (3, 34, 34)
    counts = [len(np.unique(level)) for level in labels]
    assert counts[0] > 1 and counts == sorted(counts, reverse=True)


def test_cluster_missing_image_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["cluster", str(tmp_path / "nope.jpg"), *SMALL, "--random-weights"])
    assert exit_info.value.code == 2
    assert "image not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["cluster", str(tmp_path), *SMALL, "--random-weights"])
    assert exit_info.value.code == 2
    assert f"{tmp_path} is a folder; give one image file" in capsys.readouterr().err


def test_cluster_corrupt_image_is_a_usage_error(tmp_path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(SystemExit) as exit_info:
        main(["cluster", str(broken), *SMALL, "--random-weights"])
    assert exit_info.value.code == 2
    assert "cannot read image" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["I;16", "I", "F", "CMYK", "P"])
def test_cluster_reads_images_as_discover_does(tmp_path, mode):
    """``cluster`` previews the picture ``discover`` will use: a 16-bit image is scaled to 8
    bits (PIL's convert("RGB") would clip it to white), any other mode converted alike."""
    import argparse

    from hassod.cli import _read_image
    from hassod.detector.predict import _as_array
    from hassod.discover import read_image

    ramp = np.linspace(0, 1, 32 * 48, dtype=np.float64).reshape(32, 48)
    if mode == "F":
        image = Image.fromarray(ramp.astype(np.float32), mode="F")
        path = tmp_path / "image.tif"
    elif mode.startswith("I"):
        image = Image.fromarray((ramp * 65535).astype(np.uint16))
        image = image if mode == "I;16" else image.convert("I")
        path = tmp_path / "image.png" if mode == "I;16" else tmp_path / "image.tif"
    else:
        image = Image.fromarray((ramp * 255).astype(np.uint8)).convert(mode)
        path = tmp_path / ("image.jpg" if mode == "CMYK" else "image.png")
    image.save(path)
    expected = read_image(path, None)
    pixels, name = _read_image(str(path), argparse.ArgumentParser())
    assert name == "image" and pixels.dtype == np.uint8 and np.array_equal(pixels, expected)
    assert 100 < expected.mean() < 155  # a ramp, not clipped to white
    with Image.open(path) as opened:  # predict converts PIL images the same way
        assert np.array_equal(_as_array(opened), expected)


def test_cluster_replaces_only_its_own_figure(tmp_path, capsys):
    out = tmp_path / "out"
    arguments = ["cluster", *SMALL, "--random-weights", "--out", str(out)]
    assert main(arguments) == 0 and main(arguments) == 0  # its own figure: replaced
    figure = out / "astronaut_partitions.png"
    Image.new("RGB", (4, 4)).save(figure)  # someone else's picture of that name
    mine = figure.read_bytes()
    with pytest.raises(SystemExit) as exit_info:
        main(arguments)
    assert (
        exit_info.value.code == 2 and "not a file hassod cluster wrote" in capsys.readouterr().err
    )
    assert figure.read_bytes() == mine
    figure.unlink()
    labels = out / "astronaut_labels.npz"
    labels.write_text("my notes")  # not cluster's label maps either
    with pytest.raises(SystemExit) as exit_info:
        main(arguments)
    assert exit_info.value.code == 2 and labels.read_text() == "my notes"


def test_cluster_bad_thresholds_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["cluster", *SMALL, "--random-weights", "--thresholds", "1.5"])
    assert exit_info.value.code == 2
    assert "[-1, 1]" in capsys.readouterr().err


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_cluster_unwritable_output_is_a_usage_error(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(SystemExit) as exit_info:
        main(["cluster", *SMALL, "--random-weights", "--out", str(locked / "sub")])
    assert exit_info.value.code == 2


def test_cluster_output_path_that_is_a_file_is_a_usage_error(tmp_path, capsys):
    occupied = tmp_path / "occupied"
    occupied.write_text("a file, not a folder")
    with pytest.raises(SystemExit) as exit_info:
        main(["cluster", *SMALL, "--random-weights", "--out", str(occupied)])
    assert exit_info.value.code == 2
    assert f"--out {occupied} is a file; give a folder" in capsys.readouterr().err


def test_cluster_missing_weights_file_fails_clearly(tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["cluster", *SMALL, "--weights", str(tmp_path / "missing.pth"), "--out", str(out)])
    assert code == 1
    assert "missing.pth" in capsys.readouterr().err


def test_console_entry_point_runs():
    completed = subprocess.run(
        [sys.executable, "-m", "hassod", "--help"], capture_output=True, text=True, check=True
    )
    assert "cluster" in completed.stdout


def test_output_paths_are_checked_before_the_work(tmp_path, capsys):
    """A folder or an empty name as --out is a usage error up front (evaluate and show used
    to fail after their work; discover gave a traceback for --out '')."""
    folder = tmp_path / "existing"
    folder.mkdir()
    image = tmp_path / "image.png"
    Image.new("RGB", (8, 8)).save(image)
    labels = tmp_path / "labels.json"
    labels.write_text('{"images": [{"id": 1, "file_name": "image.png"}], "annotations": []}')
    for argv in (
        ["evaluate", "--pred", str(labels), "--gt", str(labels), "--out", str(folder)],
        ["show", str(image), "--labels", str(labels), "--out", str(folder)],
        ["discover", str(tmp_path), "--out", "", "--random-weights"],
        ["discover", str(image), "--out", str(tmp_path / "p.json"), "--random-weights"],
    ):
        try:
            code = main(argv)
        except SystemExit as exit_info:  # argparse's usage errors
            code = exit_info.code
        assert code == 2, argv
    err = capsys.readouterr().err
    assert "is a folder" in err and "not a file name" in err and "is a file" in err


def test_errors_after_parsing_show_the_subcommands_usage(tmp_path, capsys):
    from hassod.cli import main

    (tmp_path / "labels.json").write_text('{"images": [], "annotations": []}')
    with pytest.raises(SystemExit) as exit_info:
        main(["show", str(tmp_path / "x.png"), "--labels", str(tmp_path / "labels.json"),
              "--levels", "wholes"])  # fmt: skip
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: hassod show" in err and "--levels" in err


def test_ctrl_c_ends_any_command_with_one_line_and_exit_130(monkeypatch, capsys, tmp_path):
    import hassod.cli as cli

    def interrupted(args, parser):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_show_command", interrupted)
    image = tmp_path / "x.png"
    assert main(["show", str(image), "--labels", "l.json", "--out", "o.png"]) == 130
    assert capsys.readouterr().err == "hassod show: interrupted\n"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["cluster", *SMALL[:2], "--random-weights", "--size", "0"], "positive number of pixels"),
        (["cluster", *SMALL[:2], "--random-weights", "--size", "9"], "smaller than the patch"),
        (["discover", "images", "--out", "p.json", "--max-pixels", "-1"], "--max-pixels"),
    ],
)
def test_sizes_out_of_range_are_usage_errors(arguments, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(arguments)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_cluster_size_is_rounded_down_to_the_patch(tmp_path):
    assert (
        main(["cluster", *SMALL[:2], "--random-weights", "--size", "30", "--out", str(tmp_path)])
        == 0
    )
    assert np.load(tmp_path / "astronaut_labels.npz")["labels"].shape == (3, 2, 2)


def test_sigterm_anywhere_in_a_command_exits_130_like_ctrl_c():
    """Not only inside a run that saves work: while a command starts (say, torch loading) a
    scheduler's SIGTERM also ends it with 130 and a line, not 143 and silence. In a child
    process: without the handler the signal would end the test session itself."""
    script = (
        "import os, signal, sys, time\n"
        "import hassod.cli as cli\n"
        "def slow_start(args, parser):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(30)\n"
        "    return 0\n"
        "cli._run_command = slow_start\n"
        "previous = signal.getsignal(signal.SIGTERM)\n"
        "code = cli.main(['evaluate', '--pred', 'p.json', '--gt', 'g.json'])\n"
        "assert signal.getsignal(signal.SIGTERM) is previous, 'handler not restored'\n"
        "sys.exit(code)\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert completed.returncode == 130, (completed.returncode, completed.stderr)
    assert "hassod evaluate: interrupted" in completed.stderr
