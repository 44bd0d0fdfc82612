"""The GPU CRF benchmark (benchmarks/bench_crf_gpu.py) runs end to end: the same code the GPU
script (benchmarks/gpu_crf.sh) runs on CUDA, here on the CPU with two small images."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("pydensecrf")
pytest.importorskip("skimage")

_BENCHMARKS_DIR = str(Path(__file__).resolve().parents[1] / "benchmarks")
if _BENCHMARKS_DIR not in sys.path:
    sys.path.insert(0, _BENCHMARKS_DIR)

from bench_crf_gpu import main  # noqa: E402


def test_benchmark_runs_and_writes_its_report(tmp_path, capsys):
    out = tmp_path / "results" / "crf_gpu.json"
    argv = [
        "--device", "cpu", "--images", "2", "--size", "48", "--chunk", "1", "--repeats", "1",
        "--cpu-images", "1", "--pydensecrf-images", "1", "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert report["images"] == 2 and report["size"] == [48, 48]
    assert set(report["results"]) >= {
        "cpu spmm, batch 2",
        "cpu spmm, chunks of 1",
        "cpu gather, batch 2",
        "native cpu, all cores",
        "pydensecrf, one process",
    }
    for result in report["results"].values():
        assert result["images_per_s"] > 0
    assert report["methods"] == ["spmm", "gather"]
    profile = report["profile"]["spmm"]
    assert profile["clock"] == "cpu" and profile["top"]
    # Named stages, nested: the lattice build inside each kernel's build.
    assert all(times["device_ms"] == 0 for times in profile["stages"].values())
    stages = {name: times["cpu_ms"] for name, times in profile["stages"].items()}
    assert {"bilateral kernel", "lattice", "vertices", "neighbours", "iterations"} <= set(stages)
    assert (
        0
        < stages["vertices"]
        <= stages["lattice"]
        <= stages["bilateral kernel"] + stages["gaussian kernel"]
    )
    for photo in report["agreement_with_native"]["spmm"].values():
        assert photo["mean_iou"] >= 0.98 and photo["max_abs_dq"] < 1e-3
    assert "images/s" in capsys.readouterr().out


def test_benchmark_runs_the_triton_kernels(tmp_path):
    """The Triton cases and their stage timings, interpreted on the CPU (tiny images)."""
    from hassod import crf_triton

    if not crf_triton.available():
        pytest.skip(crf_triton.IMPORT_ERROR)
    out = tmp_path / "crf_gpu.json"
    argv = [
        "--device", "cpu", "--images", "2", "--size", "8", "--photos", "1", "--chunk", "1",
        "--repeats", "1", "--cpu-images", "1", "--pydensecrf-images", "1", "--iterations", "1",
        "--methods", "triton", "--sweep", "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert report["methods"] == ["triton"]
    assert {"cpu triton, batch 2", "cpu triton, chunks of 1"} <= set(report["results"])
    assert set(report["iteration_breakdown"]["bilateral"]) == {
        "splat_triton",
        "blurs_triton",
        "slice_triton",
    }
    sweep = report["launch_sweep"]["triton"]
    assert set(sweep) == {"splat", "blur", "slice"}
    for stage, rows in sweep.items():
        assert len(rows) >= 2 and all(0 < row["ms"] < float("inf") for row in rows), stage
    for photo in report["agreement_with_native"]["triton"].values():
        assert photo["mean_iou"] >= 0.98 and photo["max_abs_dq"] < 1e-3


def test_a_failing_method_keeps_the_others_figures(tmp_path, monkeypatch):
    """The Triton kernels' first GPU run may fail: the report still carries the other
    methods' figures and names what failed (exit code 1)."""
    from hassod import crf_triton

    if not crf_triton.available():
        pytest.skip(crf_triton.IMPORT_ERROR)

    def broken(*args, **kwargs):
        raise RuntimeError("simulated kernel failure")

    monkeypatch.setattr(crf_triton, "splat", broken)
    out = tmp_path / "crf_gpu.json"
    argv = [
        "--device", "cpu", "--images", "2", "--size", "8", "--photos", "1", "--chunk", "1",
        "--repeats", "1", "--cpu-images", "1", "--pydensecrf-images", "1", "--iterations", "1",
        "--methods", "spmm,triton", "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 1
    report = json.loads(out.read_text())
    assert report["methods"] == ["spmm"]
    assert "cpu spmm, batch 2" in report["results"]
    assert not any("triton" in name for name in report["results"])
    assert "simulated kernel failure" in report["failures"]["triton"][0]
    assert set(report["agreement_with_native"]) == {"spmm"}


def test_the_breakdown_times_the_splat_crfbatch_launches(monkeypatch):
    """The per-stage breakdown times the Triton splat with CrfBatch's launch settings
    (crf_triton.SPLAT_ROWS / SPLAT_BY_DEGREE), not the function's defaults."""
    import numpy as np
    import torch
    from bench_crf_gpu import iteration_breakdown

    from hassod import crf_triton

    if not crf_triton.available():
        pytest.skip(crf_triton.IMPORT_ERROR)
    launches = []
    original = crf_triton.splat

    def recording(*args, **kwargs):
        launches.append((kwargs.get("rows", 1), kwargs.get("plan") is not None))
        return original(*args, **kwargs)

    monkeypatch.setattr(crf_triton, "splat", recording)
    monkeypatch.setattr(crf_triton, "SPLAT_ROWS", 2)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    sets = [
        rng.dirichlet(np.ones(k), size=(6, 6)).transpose(2, 0, 1).astype(np.float32)
        for k in (4, 3, 2)
    ]  # one per region count of the benchmark (REGIONS)
    breakdown = iteration_breakdown([image], [sets], torch.device("cpu"), ["triton"], 1)
    assert "splat_triton" in breakdown["bilateral"]
    assert launches and set(launches) == {(2, crf_triton.SPLAT_BY_DEGREE)}
