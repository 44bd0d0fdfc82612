"""What a process killed mid-write (kill -9) leaves must not lose work or block the next run:
found by SIGKILL testing of discover, train, predict and report at random moments."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _rows(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as handle:
        return [row["iteration"] for row in csv.DictReader(handle)]


def test_metrics_rewrite_on_resume_keeps_old_rows_if_killed(tmp_path, monkeypatch):
    """MetricsWriter._truncate rewrites metrics.csv in place (open 'w', then write): a run
    killed in between loses every logged row before the checkpoint. Simulated here by the
    process dying (an exception) inside the rewrite."""
    from hassod.detector import metrics

    writer = metrics.MetricsWriter(tmp_path, 3, 0)
    for iteration in (4, 9, 14, 19):
        writer.add({"total_loss": 1.0})
        writer.write(iteration, "burn_in")
    writer.close()
    assert _rows(tmp_path / "metrics.csv") == ["4", "9", "14", "19"]

    class Killed(BaseException):
        pass

    def die(self, rows):  # the kill arrives after the file was truncated
        raise Killed

    monkeypatch.setattr(csv.DictWriter, "writerows", die)
    with pytest.raises(Killed):
        metrics.MetricsWriter(tmp_path, 3, 20)  # resume from iteration 20
    monkeypatch.undo()
    # Expected: the rows before the checkpoint survive (atomic rewrite).
    assert _rows(tmp_path / "metrics.csv") == ["4", "9", "14", "19"]


def test_report_rerun_after_kill_during_first_index_write(tmp_path):
    """kill -9 while write_report writes its first ('unfinished') index.html leaves only
    .index.html.PID.tmp in a new report folder; the rerun is then refused (exit 2)."""
    from hassod.report import write_report

    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(images / "a.png")
    labels = {
        "images": [{"id": 1, "file_name": "a.png", "width": 40, "height": 40}],
        "annotations": [],
        "categories": [{"id": 1, "name": "object"}],
    }
    out = tmp_path / "report"
    out.mkdir()
    (out / ".index.html.12345.tmp").write_text("<!DOCTYPE html>\n<html><he", encoding="utf-8")
    write_report(images, labels, out)  # was refused: "not empty and holds no report"
    assert (out / "index.html").is_file()


def test_train_resume_after_kill_during_write_probe(tmp_path):
    """kill -9 while `hassod train` probes --out (cli._writable_folder's
    .hassod_write_test* file) before the first checkpoint: the rerun with --resume is refused
    ('holds files that are not a training run's')."""
    from hassod.detector.training import check_run_folder

    (tmp_path / "config.json").write_text('{\n  "model": {}}', encoding="utf-8")
    (tmp_path / "metrics.csv").write_text("iteration,phase,\n", encoding="utf-8")
    (tmp_path / ".hassod_write_testab12cd").write_bytes(b"")
    assert check_run_folder(tmp_path, resume=True) is None  # was refused (ValueError)


def test_predict_work_folder_removed_despite_stale_temporary(tmp_path):
    """A chunk temporary left by a killed `hassod predict` (.chunk-N.json.PID.tmp) stays in
    OUT.parts/ after the resumed run finished, so the work folder is never removed."""
    from hassod.detector.predict import _remove_work_folder
    from hassod.work_folder import WorkFolder

    folder = WorkFolder(tmp_path / "pred.json.parts", command="hassod predict")
    folder.path.mkdir()
    folder.lock()
    folder.write_manifest({"format": 1})
    (folder.path / ".chunk-000001.json.4242.tmp").write_text("{", encoding="utf-8")
    folder.clear()
    _remove_work_folder(folder, [])
    folder.unlock()
    assert not folder.path.exists(), sorted(p.name for p in folder.path.iterdir())


def test_a_checkpoint_killed_while_saved_leaves_the_last_one_whole(tmp_path, monkeypatch):
    """Checkpoints are written through a temporary named as every hassod write names its
    temporaries (so later runs know it for a leftover) and fsynced before the rename."""
    import torch

    from hassod._io import is_leftover
    from hassod.detector import checkpoint as ckpt
    from hassod.detector.config import cpu_small_config

    path = tmp_path / "iter_0000010.pth"
    model = torch.nn.Linear(2, 2)
    ckpt.save_checkpoint(path, config=cpu_small_config(), iteration=10, model=model)
    before = path.read_bytes()
    seen = []

    class Killed(BaseException):
        pass

    def dies_midway(payload, target):
        seen.append(Path(target).name)
        Path(target).write_bytes(b"half a checkpoint")
        raise Killed

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(Killed):
        ckpt.save_checkpoint(path, config=cpu_small_config(), iteration=20, model=model)
    assert path.read_bytes() == before and is_leftover(seen[0])


def test_a_work_folder_lock_removes_what_a_killed_writer_left(tmp_path):
    """A run killed while writing a chunk or the manifest leaves ``.NAME.PID.tmp`` in the
    work folder; the next run holding the lock deletes those, and nothing else."""
    from hassod.work_folder import WorkFolder

    folder_path = tmp_path / "pseudo.json.parts"
    folder_path.mkdir()
    leftovers = [".chunk-000003.json.4242.tmp", ".manifest.json.17.tmp", ".hassod_write_test1"]
    kept = ["chunk-000001.json", "manifest.json", "notes.txt", ".hidden.tmp"]
    for name in leftovers + kept:
        (folder_path / name).write_text("x")
    folder = WorkFolder(folder_path)
    folder.lock()
    try:
        names = {entry.name for entry in folder_path.iterdir()}
    finally:
        folder.unlock()
    assert names == {*kept, ".lock"}
