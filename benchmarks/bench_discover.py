"""End-to-end stage 1 (``hassod discover``): images per second and time per stage.

Usage:
    python benchmarks/bench_discover.py [--out benchmarks/results/discover.json]
        real photos (the 2 shared COCO photos + 5 scikit-image photos) with the shared DINOv2
        ViT-S/14 at 476 x 476 on the CPU, post-processing inline (--workers 0: one image at a
        time, comparable to the paper's one-worker figure) and in a pool of every CPU;
    python benchmarks/bench_discover.py --synthetic 64 --backbone vit_base_patch8_224.dino \\
        --random-weights --size 480 --device cuda --batch-size 32 --amp off bf16
        the GPU run of benchmarks/gpu_discover.sh (generated scenes, no download).

Each configuration is one :func:`hassod.discover_run.run_discover` call (exactly what the CLI
runs) on a fresh output, after one warm-up call per CRF backend on the first image (imports,
first kernels, CUDA context), or on the first ``--warmup-images N`` images: with N = all
(``--warmup-images 0``), the timed runs meet the batch shapes the warm-up met, so the Triton
CRF's kernels, compiled once per shape class (a long run amortises that; Triton's disk cache
keeps them for later runs), are not compiled inside the timing. The warm-up's wall time is
reported too. Its :class:`~hassod.discover_run.RunSummary` gives the wall time, the set-up
time (listing, weights, work folder; excluded from images/s) and the seconds per stage summed
over threads and worker processes: ``decode`` (read + resize + normalise, threads),
``backbone`` (batched, main process; a batch's time is shared among its images), ``cluster``,
``crf+filters``, ``hierarchy`` (ensemble + coverage forest) and ``encode`` (RLE), the last four
in the post-processing workers. The bottleneck is the pipeline part with the most work per
parallel lane: decode / decode threads, backbone (one lane), post-processing / workers.

Prints a table next to the paper's 13.8 s per image (11.7 s merge + post-process, 2.1 s
ensemble, one worker) and writes JSON atomically.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe_machine, write_report  # noqa: E402
from photos import (  # noqa: E402
    DINOV2,
    ROOT,
    WEIGHTS,
    require_shared,
    write_real_photos,
    write_synthetic_photos,
)

SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle_left")
POST_STAGES = ("cluster", "crf+filters", "hierarchy", "encode")
PAPER = {
    "seconds_per_image_one_worker": 13.8,
    "merge_and_postprocess": 11.7,
    "ensemble_and_split": 2.1,
    "seconds_per_image_4xA100_node": 1.59,
    "source": "HASSOD paper (NeurIPS 2023); DESIGN.md section 6",
}


def describe_torch(device: str) -> dict:
    import torch

    info = {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def crf_backends() -> tuple[str, ...]:
    """The CRF backends this hassod offers, its default first."""
    from hassod.postprocess import CrfParams

    if "backend" not in {item.name for item in dataclasses.fields(CrfParams)}:
        return ("pydensecrf",)
    default = CrfParams().backend
    import hassod.postprocess

    offered = getattr(hassod.postprocess, "CRF_BACKENDS", ("native", "pydensecrf"))
    if "torch_method" in {item.name for item in dataclasses.fields(CrfParams)}:
        offered = (*offered, *TORCH_VARIANTS)
    return (default, *(name for name in offered if name != default))


#: --crf-backend names for the torch backend with the Triton kernels: (method, precision).
TORCH_VARIANTS = {
    "torch-triton": ("triton", "float32"),
    "torch-triton-float16": ("triton", "float16"),
}


def crf_params(name: str | None):
    """CrfParams for a --crf-backend name (None: this hassod's default)."""
    from hassod.postprocess import CrfParams

    if name is None:
        return CrfParams()
    if name in TORCH_VARIANTS:
        method, precision = TORCH_VARIANTS[name]
        return CrfParams(backend="torch", torch_method=method, torch_precision=precision)
    return CrfParams(backend=name)


def run_config(
    images_dir: Path, work: Path, args, amp: str, crf: str | None, workers: int, label: str
) -> dict:
    """One ``run_discover`` over ``images_dir``; its summary as a JSON-ready dict.

    ``crf``: the CRF backend, or None for this hassod's default.
    """
    from hassod import discover_run
    from hassod.discover import DiscoveryConfig

    config = DiscoveryConfig(
        backbone=args.backbone,
        size=args.size,
        feature_transform=args.feature_transform,
        crf=crf_params(crf),
    )
    options = discover_run.RunOptions(
        images_dir=images_dir,
        out=work / f"{label}.json",
        config=config,
        weights=args.weights,
        random_weights=args.random_weights,
        device=args.device,
        amp=amp,
        workers=workers,
        batch_size=args.batch_size,
        restart=True,
        progress=False,
        chunk_size=1 << 20,  # one chunk at the end: no periodic writes inside the timing
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = discover_run.run_discover(options)
    for warning in caught:
        print(f"{label}: warning: {warning.message}", file=sys.stderr)
    # A GPU CRF that fails falls back to the CPU CRF: the figures are then not the backend's.
    fallbacks = [str(w.message) for w in caught if "batched CRF failed" in str(w.message)]
    if summary.failed_now:
        raise SystemExit(f"{label}: {summary.failed_now} images failed: {summary.failed}")
    count = summary.processed
    working = summary.wall - summary.setup
    stages = {stage: summary.timings.get(stage, 0.0) for stage in discover_run.STAGES}
    decode_threads = max(2, min(8, discover_run.usable_cpus()))  # as discover_run._pipeline
    lanes = {
        "decode": stages["decode"] / decode_threads,
        "backbone": stages["backbone"],
        "post-processing": sum(stages[s] for s in POST_STAGES) / max(workers, 1),
    }
    total_masks = sum(summary.masks_per_level)
    info = json.loads(summary.json_path.read_text(encoding="utf-8"))["info"]
    return {
        "label": label,
        "amp": amp,
        "crf_backend": crf or getattr(config.crf, "backend", "pydensecrf"),
        "workers": workers,
        "images": count,
        "wall_s": summary.wall,
        "setup_s": summary.setup,
        "images_per_s": count / working if working > 0 else 0.0,
        "wall_ms_per_image": 1e3 * working / count if count else 0.0,
        "stage_s": stages,
        "stage_ms_per_image": {stage: 1e3 * s / count for stage, s in stages.items()},
        "sum_of_stages_ms_per_image": 1e3 * sum(stages.values()) / count,
        "lane_s": lanes,
        "bottleneck": max(lanes, key=lanes.get),
        "bottleneck_stage": max(stages, key=stages.get),
        "masks_per_image": total_masks / summary.images if summary.images else 0.0,
        "masks_per_level": summary.masks_per_level,
        "device": summary.device,
        "size_used": info["config"]["size"],  # rounded down to the patch size
        "crf_fallbacks": len(fallbacks),
        "crf_fallback_reasons": sorted(set(fallbacks))[:5],
    }


def table(runs: list[dict]) -> str:
    from hassod.discover_run import STAGES

    head = "| ms per image | " + " | ".join(run["label"] for run in runs) + " |"
    lines = [head, "|---" * (len(runs) + 1) + "|"]

    def row(name: str, values: list[str]) -> None:
        lines.append(f"| {name} | " + " | ".join(values) + " |")

    for stage in STAGES:
        row(stage, [f"{run['stage_ms_per_image'][stage]:.1f}" for run in runs])
    row("sum of stages", [f"{run['sum_of_stages_ms_per_image']:.1f}" for run in runs])
    row("wall per image", [f"{run['wall_ms_per_image']:.1f}" for run in runs])
    row("**images/s**", [f"**{run['images_per_s']:.3f}**" for run in runs])
    row("CRF backend", [run["crf_backend"] for run in runs])
    row("batches falling back to the CPU CRF", [str(run["crf_fallbacks"]) for run in runs])
    row("setup (s, once)", [f"{run['setup_s']:.1f}" for run in runs])
    row("masks per image", [f"{run['masks_per_image']:.2f}" for run in runs])
    row("bottleneck", [f"{run['bottleneck']} ({run['bottleneck_stage']})" for run in runs])
    lines.append(
        f"paper: {PAPER['seconds_per_image_one_worker']} s/image on one worker "
        f"({PAPER['merge_and_postprocess']} s merge + post-process, "
        f"{PAPER['ensemble_and_split']} s ensemble), "
        f"{PAPER['seconds_per_image_4xA100_node']} s/image on a node of 4 A100 with parallel "
        "workers"
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--synthetic", type=int, metavar="N", help="N generated 640x480 scenes instead of photos"
    )
    parser.add_argument("--backbone", default=DINOV2, help="timm ViT name")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--weights", type=Path, help="checkpoint (default: the shared DINOv2)")
    weights.add_argument("--random-weights", action="store_true", help="seeded random ViT")
    parser.add_argument("--size", type=int, default=480, help="input side (rounded to the patch)")
    parser.add_argument(
        "--feature-transform",
        default="auto",
        choices=("auto", "none", "remove-key-bias", "center"),
        help="see DiscoveryConfig (random ViTs: 'center', or raw keys merge into 1-6 regions)",
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--amp", nargs="+", default=["off"], choices=("off", "bf16", "fp16"))
    parser.add_argument(
        "--workers",
        nargs="+",
        type=int,
        help="post-processing processes, one run each (default: 0 and every usable CPU)",
    )
    parser.add_argument(
        "--crf-backend",
        nargs="+",
        choices=("native", "torch", *TORCH_VARIANTS, "pydensecrf"),
        help="CRF backends, one run each (default: hassod's default only)",
    )
    parser.add_argument("--no-warmup", action="store_true", help="skip the warm-up run")
    parser.add_argument(
        "--warmup-images",
        type=int,
        default=1,
        help="images of the warm-up run (the first ones; 0: all of them), default 1",
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "discover.json"
    )
    args = parser.parse_args(argv)
    if args.warmup_images < 0:
        parser.error(f"--warmup-images must be >= 0, got {args.warmup_images}")
    unknown = sorted(set(args.crf_backend or ()) - set(crf_backends()))
    if unknown:
        parser.error(f"this hassod has no CRF backend {', '.join(unknown)}")
    if args.weights is None and not args.random_weights:
        if args.backbone != DINOV2:
            parser.error("--weights or --random-weights is needed for backbones other than DINOv2")
        require_shared()
        args.weights = WEIGHTS
    return args


def main(argv: list[str] | None = None) -> int:
    from hassod.discover_run import usable_cpus

    args = parse_args(argv)
    workers_list = args.workers if args.workers else sorted({0, usable_cpus()})
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hassod_bench_discover_") as temporary:
        root = Path(temporary)
        images_dir = root / "images"
        if args.synthetic:
            write_synthetic_photos(images_dir, args.synthetic)
            source = f"{args.synthetic} synthetic 640x480 scenes (benchmarks/photos.py)"
        else:
            require_shared()
            write_real_photos(images_dir, SKIMAGE_PHOTOS)
            source = "2 shared COCO val2017 photos + scikit-image " + ", ".join(SKIMAGE_PHOTOS)
        work = root / "out"
        work.mkdir()
        backends = args.crf_backend or [None]
        warmups = []
        if not args.no_warmup:  # compiles, cuSPARSE handles, allocator: per CRF backend
            warm_dir = root / "warmup"
            warm_dir.mkdir()
            listed = sorted(images_dir.iterdir())
            for image in listed[: args.warmup_images or len(listed)]:
                (warm_dir / image.name).symlink_to(image)
            for crf in backends:
                workers = workers_list[-1] if args.warmup_images != 1 else 0
                warm = run_config(warm_dir, work, args, args.amp[0], crf, workers, f"warmup {crf}")
                warmups.append(
                    {"crf_backend": crf, "images": warm["images"], "wall_s": warm["wall_s"]}
                )
                print(f"warm-up, {warm['crf_backend']} CRF: {warm['images']} images in "
                      f"{warm['wall_s']:.1f} s", file=sys.stderr, flush=True)  # fmt: skip
        runs = []
        machine = describe_machine() | describe_torch(args.device)

        def report_so_far() -> dict:  # written after every run: a time limit loses nothing
            report = {
                "benchmark": "hassod discover end to end (benchmarks/bench_discover.py)",
                "images": source,
                "backbone": args.backbone,
                "weights": "random (seeded)" if args.random_weights else str(args.weights),
                "size": args.size,
                "size_used": runs[0]["size_used"] if runs else args.size,
                "feature_transform": args.feature_transform,
                "device": args.device,
                "batch_size": args.batch_size,
                "runs": runs,
                "warmups": warmups,
                "paper": PAPER,
                "machine": machine,
                "seconds": time.perf_counter() - started,
            }
            write_report(args.out, report)
            return report

        report = report_so_far()
        for amp in args.amp:
            for crf in backends:
                for workers in workers_list:
                    label = f"{'fp32' if amp == 'off' else amp}, workers={workers}"
                    if args.crf_backend:
                        label += f", {crf} CRF"
                    print(f"running {label} ...", file=sys.stderr, flush=True)
                    runs.append(run_config(images_dir, work, args, amp, crf, workers, label))
                    report = report_so_far()
                    print(f"{label}: {runs[-1]['images_per_s']:.3f} images/s", flush=True)

    size = runs[0]["size_used"] if runs else args.size
    print(f"{source}; {args.backbone} ({report['weights']}) at {size}x{size}, {args.device}, "
          f"batch {args.batch_size}")  # fmt: skip
    print(table(runs))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
