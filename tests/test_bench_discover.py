"""The stage-1 benchmark (benchmarks/bench_discover.py) runs end to end: a seeded random tiny ViT
on two generated scenes, on the CPU, inline and with one worker process, as the GPU script
(benchmarks/gpu_discover.sh) runs it with DINO ViT-B/8 on CUDA."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

_BENCHMARKS_DIR = str(Path(__file__).resolve().parents[1] / "benchmarks")
if _BENCHMARKS_DIR not in sys.path:
    sys.path.insert(0, _BENCHMARKS_DIR)

from bench_discover import crf_backends, crf_params, main  # noqa: E402
from photos import synthetic_photo  # noqa: E402

from hassod.discover_run import STAGES  # noqa: E402


def test_synthetic_photos_are_deterministic_scenes():
    first = synthetic_photo(0, 60, 80)
    again = synthetic_photo(0, 60, 80)
    other = synthetic_photo(1, 60, 80)
    assert first.shape == (60, 80, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    assert (first != other).any()
    assert len(np.unique(first.reshape(-1, 3), axis=0)) > 100  # textured, not flat


def test_benchmark_runs_and_writes_its_report(tmp_path, capsys):
    out = tmp_path / "results" / "discover.json"
    argv = [
        "--synthetic", "2", "--backbone", "vit_small_patch14_dinov2", "--random-weights",
        "--size", "112", "--feature-transform", "center", "--device", "cpu",
        "--batch-size", "2", "--amp", "off", "--workers", "0", "1", "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(out.read_text())
    assert [run["workers"] for run in report["runs"]] == [0, 1]
    for run in report["runs"]:
        assert run["images"] == 2
        assert set(run["stage_s"]) == set(STAGES)
        assert all(seconds > 0 for stage, seconds in run["stage_s"].items() if stage != "encode")
        assert run["images_per_s"] > 0
        assert run["bottleneck"] in ("decode", "backbone", "post-processing")
        assert run["crf_fallbacks"] == 0
    assert report["paper"]["seconds_per_image_one_worker"] == 13.8
    assert "cpu" in report["machine"]
    printed = capsys.readouterr().out
    assert "crf+filters" in printed and "images/s" in printed
    assert not list(out.parent.glob(".*.tmp"))  # written atomically, nothing left behind


def test_a_gpu_crf_falling_back_to_the_cpu_is_counted(tmp_path, monkeypatch):
    import hassod.batched_crf

    def broken(*args, **kwargs):
        raise RuntimeError("simulated device failure")

    monkeypatch.setattr(hassod.batched_crf, "crf_candidates_batch", broken)
    out = tmp_path / "discover.json"
    argv = [
        "--synthetic", "2", "--backbone", "vit_small_patch14_dinov2", "--random-weights",
        "--size", "112", "--feature-transform", "center", "--device", "cpu",
        "--batch-size", "2", "--amp", "off", "--workers", "0", "--crf-backend", "torch",
        "--no-warmup", "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    (run,) = json.loads(out.read_text())["runs"]
    assert run["images"] == 2 and run["crf_fallbacks"] == 1
    assert "simulated device failure" in run["crf_fallback_reasons"][0]


def test_crf_backend_names_map_to_crf_params():
    assert crf_backends()[0] == "native"  # this hassod's default first
    assert {"torch", "torch-triton", "torch-triton-float16", "pydensecrf"} <= set(crf_backends())
    assert crf_params(None).backend == "native"
    assert crf_params("pydensecrf").backend == "pydensecrf"
    triton = crf_params("torch-triton-float16")
    assert (triton.backend, triton.torch_method, triton.torch_precision) == (
        "torch",
        "triton",
        "float16",
    )


def test_warm_up_on_every_image_is_recorded(tmp_path):
    out = tmp_path / "discover.json"
    argv = [
        "--synthetic", "2", "--backbone", "vit_small_patch14_dinov2", "--random-weights",
        "--size", "112", "--feature-transform", "center", "--device", "cpu",
        "--batch-size", "2", "--amp", "off", "--workers", "0", "--warmup-images", "0",
        "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(out.read_text())
    (warmup,) = report["warmups"]
    assert warmup["images"] == 2 and warmup["wall_s"] > 0
    assert [run["images"] for run in report["runs"]] == [2]
