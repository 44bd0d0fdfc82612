"""The paste benchmark (benchmarks/bench_paste.py) runs end to end on a small case."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
_BENCHMARKS_DIR = str(Path(__file__).resolve().parents[1] / "benchmarks")
if _BENCHMARKS_DIR not in sys.path:
    sys.path.insert(0, _BENCHMARKS_DIR)

from bench_paste import main  # noqa: E402


def test_benchmark_runs_and_writes_its_report(tmp_path, capsys):
    out = tmp_path / "paste.json"
    argv = ["--masks", "12", "--height", "60", "--width", "90", "--repeats", "1", "--out", str(out)]
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert set(report["results"]) == {
        "torchvision paste_masks_in_image",
        "hassod per box",
        "hassod whole image",
    }
    assert all(result["ms"] > 0 for result in report["results"].values())
    assert 0 < report["iou_with_torchvision"]["mean"] <= 1
    assert "x torchvision" in capsys.readouterr().out
