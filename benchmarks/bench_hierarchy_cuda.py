"""Coverage matrices + coverage forests, batched: the CPU path vs the CUDA path, one machine.

Usage:
    python benchmarks/bench_hierarchy_cuda.py [--images 64] [--masks 16] [--height 480]
        [--width 640] [--repeats 20] [--out benchmarks/results/hierarchy_cuda.json]

Input: ``--images`` stacks of ``--masks`` nested masks (whole boxes, parts of earlier masks with
stray pixels, duplicates, empties), bool. Rows, each the median wall time of
``hassod.build_hierarchy_batch`` over the batch (intersections + forest + levels):
  * cpu, all threads / cpu, 1 thread: NumPy masks, native threads;
  * gpu: CUDA masks already on the device, until torch.cuda.synchronize() returns;
  * gpu + upload: from pinned CPU tensors, the host-to-device copy included.
The GPU results are checked identical to the CPU's before timing. Needs a CUDA device and
hassod._C_cuda (HASSOD_CUDA=1 pip install .).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import hassod
from hassod._native import cuda_status

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe_machine  # noqa: E402


def nested_batch(rng, images: int, masks: int, height: int, width: int) -> list[np.ndarray]:
    """Nested bool masks; stray pixels come from one shared noise field (cheap at 640x480)."""
    noise = rng.random((height, width))
    batch = []
    for _ in range(images):
        stack = np.zeros((masks, height, width), dtype=bool)
        for index in range(masks):
            y0, y1 = sorted(rng.integers(0, height + 1, 2))
            x0, x1 = sorted(rng.integers(0, width + 1, 2))
            box = np.zeros((height, width), dtype=bool)
            box[y0:y1, x0:x1] = True
            kind = int(rng.integers(0, 5)) if index else 0
            if kind == 0:
                stack[index] = box
            elif kind <= 2:
                parent = stack[rng.integers(index)]
                stack[index] = (box & parent) | (noise < rng.uniform(0.0, 0.02))
            elif kind == 3:
                stack[index] = stack[rng.integers(index)]
            # kind 4: empty
        batch.append(stack)
    return batch


def median_ms(function, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def check_identical(gpu: list, cpu: list) -> None:
    for index, (got, expected) in enumerate(zip(gpu, cpu)):
        for field in ("intersections", "parent", "depth", "level"):
            if not np.array_equal(getattr(got, field).cpu().numpy(), getattr(expected, field)):
                raise SystemExit(f"image {index}: the CUDA {field} differ from the CPU's")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--masks", type=int, default=16)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch

    status = cuda_status()
    if not status["built"] or not torch.cuda.is_available():
        print(f"no CUDA path to time: cuda_status() = {status}")
        return 1
    batch = nested_batch(np.random.default_rng(0), args.images, args.masks, args.height, args.width)
    on_gpu = [torch.from_numpy(stack).cuda() for stack in batch]
    pinned = [torch.from_numpy(stack).pin_memory() for stack in batch]
    torch.cuda.synchronize()

    check_identical(hassod.build_hierarchy_batch(on_gpu), hassod.build_hierarchy_batch(batch))

    def gpu():
        hassod.build_hierarchy_batch(on_gpu)
        torch.cuda.synchronize()

    def gpu_upload():
        hassod.build_hierarchy_batch([stack.cuda(non_blocking=True) for stack in pinned])
        torch.cuda.synchronize()

    cpu_repeats = max(3, args.repeats // 4)
    rows = [
        ("cpu, all threads", median_ms(lambda: hassod.build_hierarchy_batch(batch), cpu_repeats)),
        (
            "cpu, 1 thread",
            median_ms(lambda: hassod.build_hierarchy_batch(batch, num_threads=1), cpu_repeats),
        ),
        ("gpu", median_ms(gpu, args.repeats, warmup=3)),
        ("gpu + upload", median_ms(gpu_upload, args.repeats, warmup=3)),
    ]
    baseline = rows[0][1]
    machine = describe_machine()
    device = torch.cuda.get_device_name()
    print(
        f"\n{args.images} images x {args.masks} masks at {args.width}x{args.height}; "
        f"{device}; {machine['cpu']} ({os.cpu_count()} threads); results identical"
    )
    print(f"{'path':<18}{'ms / batch':>12}{'ms / image':>12}{'vs cpu all':>12}")
    for name, ms in rows:
        print(f"{name:<18}{ms:>12.2f}{ms / args.images:>12.3f}{baseline / ms:>11.1f}x")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        report = {
            "case": vars(args) | {"out": str(args.out)},
            "device": device,
            "machine": machine,
            "cuda_status": status,
            "ms_per_batch": dict(rows),
        }
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
