"""Stage-2 training and inference throughput on synthetic pseudo-labels.

    python benchmarks/bench_detector.py                      # cpu-small preset on this CPU
    python benchmarks/bench_detector.py --preset paper --device cuda --synthetic 48 \
        --size 800 --batch-size 16 --micro-batch 16 8 4 --workers 12   # see gpu_detector.sh

Writes the drawn-shapes training set of :mod:`hassod.detector.synthetic` to a temporary folder,
then times ``--iterations`` training iterations after ``--warmup`` ones, data loading
included (the real DataLoader with ``--workers`` processes), for the burn-in phase and, with
``--mean-teacher``, for Mean Teacher iterations (teacher forward + two student branches).
``--micro-batch`` lists images-per-forward to try in order (0: the whole batch at once): the
first that does not run out of GPU memory is measured. Inference is timed on the same images
at the test size. Prints one line per measurement and writes them as JSON to ``--out``.
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

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import describe_machine  # noqa: E402

from hassod.detector.config import preset  # noqa: E402
from hassod.detector.data import load_pseudo_labels, make_loader  # noqa: E402
from hassod.detector.synthetic import write_dataset  # noqa: E402
from hassod.detector.training import Trainer  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_steps(trainer: Trainer, args) -> tuple[float, float, dict]:
    """(seconds, seconds waiting for data, last metrics) of the timed iterations."""
    device = trainer.device
    total = args.warmup + args.iterations
    loader = iter(
        make_loader(
            trainer.batches, 0, total, trainer.config.data.num_workers, device.type == "cuda"
        )
    )
    wait = 0.0
    for iteration in range(total):
        if iteration == args.warmup:
            _sync(device)
            start, wait = time.perf_counter(), 0.0
        fetch = time.perf_counter()
        batch = next(loader)
        wait += time.perf_counter() - fetch
        metrics = trainer.step(iteration, batch)
    _sync(device)
    return time.perf_counter() - start, wait, metrics


def time_training(config, labels, work: Path, args, mean_teacher: bool) -> dict:
    total = args.warmup + args.iterations
    teacher = dataclasses.replace(config.mean_teacher, iterations=total if mean_teacher else 0)
    config = dataclasses.replace(
        config, iterations=0 if mean_teacher else total, mean_teacher=teacher
    )
    images = (
        2 * teacher.labeled_batch + teacher.unlabeled_batch if mean_teacher else config.batch_size
    )
    failures = []
    for micro in args.micro_batch:
        run = dataclasses.replace(config, micro_batch=micro)
        folder = work / f"run_{int(mean_teacher)}_{micro}"
        trainer = Trainer(run, labels, folder, device=args.device, progress=False)
        if trainer.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(trainer.device)
        try:
            seconds, wait, metrics = _timed_steps(trainer, args)
        except torch.cuda.OutOfMemoryError as error:
            failures.append(f"micro-batch {micro or images}: {str(error).splitlines()[0]}")
            print(f"micro-batch {micro or images}: out of GPU memory, trying the next", flush=True)
            continue
        finally:
            trainer.close()
            if trainer.device.type == "cuda":
                peak = torch.cuda.max_memory_allocated(trainer.device) / 2**30
            del trainer
            torch.cuda.empty_cache()
        result = {
            "phase": "mean_teacher" if mean_teacher else "burn_in",
            "iterations_per_second": args.iterations / seconds,
            "seconds_per_iteration": seconds / args.iterations,
            "images_per_iteration": images,
            "micro_batch": micro or images,
            "data_wait_fraction": wait / seconds,
            "final_total_loss": metrics["total_loss"],
            "amp": run.amp and args.device != "cpu" and torch.cuda.is_available(),
            "norm": run.model.norm,
        }
        if torch.cuda.is_available() and args.device != "cpu":
            result["peak_gpu_memory_gib"] = peak
        return result
    raise RuntimeError("every micro-batch size ran out of memory: " + "; ".join(failures))


@torch.no_grad()
def time_inference(trainer_model, labels, config, device, count: int) -> dict:
    from hassod.detector import augment
    from hassod.detector.data import read_sample

    model = trainer_model.eval()
    images = []
    for index in range(min(count, len(labels))):
        image = read_sample(labels, index)["image"]
        size = augment.scaled_size(
            *image.shape[-2:], config.data.test_min_size, config.data.test_max_size
        )
        images.append(augment.resize_image(image, size).to(device))
    use_amp = config.amp and device.type == "cuda"
    with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
        model(images[:1])
        _sync(device)
        start = time.perf_counter()
        detections = sum(model([image])[0]["boxes"].shape[0] for image in images)
        _sync(device)
    seconds = time.perf_counter() - start
    return {
        "phase": "inference",
        "images_per_second": len(images) / seconds,
        "detections_per_image": detections / len(images),
        "amp": use_amp,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu-small", choices=["cpu-small", "paper"])
    parser.add_argument("--synthetic", type=int, default=8, help="synthetic images")
    parser.add_argument("--size", type=int, default=128, help="side of the synthetic images")
    parser.add_argument("--batch-size", type=int, help="images per burn-in iteration")
    parser.add_argument("--micro-batch", type=int, nargs="+", default=[0], help="tried in order")
    parser.add_argument("--iterations", type=int, default=20, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=5, help="untimed iterations first")
    parser.add_argument("--workers", type=int, default=0, help="data loader processes")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--norm", help="override the model's normalisation (e.g. bn)")
    parser.add_argument("--no-amp", action="store_true")
    parser.add_argument("--mean-teacher", action="store_true", help="also time Mean Teacher")
    parser.add_argument(
        "--mean-teacher-batch",
        type=int,
        nargs=2,
        metavar=("LABELED", "UNLABELED"),
        help="Mean Teacher images per iteration (default: the preset's, paper 8 + 8)",
    )
    parser.add_argument("--inference", type=int, default=8, help="images to time inference on")
    parser.add_argument("--out", type=Path, help="JSON results file")
    args = parser.parse_args(argv)

    config = preset(args.preset)
    changes = {
        "amp": not args.no_amp,
        "data": dataclasses.replace(config.data, num_workers=args.workers),
    }
    if args.batch_size:
        changes["batch_size"] = args.batch_size
    if args.norm:
        changes["model"] = dataclasses.replace(config.model, norm=args.norm)
    if args.mean_teacher_batch:
        labeled, unlabeled = args.mean_teacher_batch
        changes["mean_teacher"] = dataclasses.replace(
            config.mean_teacher, labeled_batch=labeled, unlabeled_batch=unlabeled
        )
    config = dataclasses.replace(config, **changes)
    warnings.filterwarnings("ignore", message=".*randomly initialised.*")
    report = {"machine": describe_machine(), "torch": torch.__version__, "preset": args.preset}
    if torch.cuda.is_available():
        report["gpu"] = torch.cuda.get_device_name(0)
    report["settings"] = {k: v for k, v in vars(args).items() if k != "out"}
    results = []
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        start = time.perf_counter()
        json_path, images_dir = write_dataset(
            work / "data", count=args.synthetic, size=args.size, seed=0
        )
        labels = load_pseudo_labels(json_path, images_dir)
        print(
            f"synthetic set: {len(labels)} images of {args.size}x{args.size}, "
            f"{labels.report['annotations_in_json']} masks ({time.perf_counter() - start:.1f} s)",
            flush=True,
        )
        phases = [False, True] if args.mean_teacher else [False]
        for mean_teacher in phases:
            result = time_training(config, labels, work, args, mean_teacher)
            results.append(result)
            print(json.dumps(result), flush=True)
        if args.inference:
            trainer = Trainer(
                dataclasses.replace(config, iterations=1),
                labels,
                work / "inference",
                device=args.device,
                progress=False,
            )
            result = time_inference(
                trainer.model, labels, trainer.config, trainer.device, args.inference
            )
            results.append(result)
            print(json.dumps(result), flush=True)
    report["results"] = results
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
