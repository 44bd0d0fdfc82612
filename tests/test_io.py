"""Atomic writes (hassod._io): the destination appears whole or not at all, a symbolic link is
written through, and special files are refused instead of replaced."""

from __future__ import annotations

import json
import os

import pytest

from hassod._io import atomic_write, atomic_write_json, output_target
from hassod.cli import main


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "x.json"
    atomic_write_json(path, {"a": 1})
    with pytest.raises(ValueError):
        atomic_write_json(path, {"a": float("nan")})  # refused mid-write
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


def test_a_link_is_written_through(tmp_path):
    target = tmp_path / "data" / "metrics.json"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    atomic_write_json(link, [1, 2])
    assert link.is_symlink() and json.loads(target.read_text()) == [1, 2]
    assert output_target(link) == target.resolve()


@pytest.mark.skipif(not os.path.exists("/dev/null"), reason="needs /dev/null")
def test_devices_pipes_and_folders_are_refused_not_replaced(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for special in (fifo, tmp_path, "/dev/null"):
        with pytest.raises(OSError, match="not a regular file"):
            atomic_write(special, lambda path: path.write_text("x"))
    assert not os.path.isfile("/dev/null") and fifo.exists() and not fifo.is_file()


def test_the_cli_refuses_a_special_output_before_any_work(tmp_path, capsys):
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--pred", str(gt), "--gt", str(gt), "--out", str(fifo)])
    assert exit_info.value.code == 2
    assert "not a regular file" in capsys.readouterr().err
