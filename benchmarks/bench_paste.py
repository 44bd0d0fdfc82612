"""Mask pasting: hassod.detector.paste (Detectron2's sampling) vs torchvision's paste.

Usage:
    python benchmarks/bench_paste.py [--masks 150] [--height 800] [--width 1333] [--device cpu]

The Mean Teacher step pastes the teacher's masks above the score threshold at full image size
for the level forest, and ``hassod predict`` pastes every detection. Times, same run and
inputs (random 28 x 28 probabilities, boxes of 10-600 px): torchvision's
``paste_masks_in_image`` (one mask at a time, thresholded with > 0.5), this package's per-box
path (the CPU default) and its whole-image path (Detectron2's GPU path, the CUDA default).
Also the agreement of the two conventions (IoU per mask; they differ by design: Detectron2
samples pixel centres in the box, torchvision resizes onto a padded integer box).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torchvision.models.detection.roi_heads import paste_masks_in_image

from hassod.detector.paste import paste_masks

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe_machine, write_report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def random_detections(count: int, height: int, width: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    probs = torch.from_numpy(rng.random((count, 1, 28, 28), dtype=np.float32))
    centres = rng.uniform(0, 1, (count, 2)) * [width, height]
    sizes = np.exp(rng.uniform(np.log(10), np.log(600), (count, 2)))
    boxes = np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=1)
    boxes = np.clip(boxes, 0, [width, height, width, height]).astype(np.float32)
    return probs, torch.from_numpy(boxes)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--masks", type=int, default=150)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1333)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "paste.json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    size = (args.height, args.width)
    probs, boxes = random_detections(args.masks, *size)
    probs, boxes = probs.to(device), boxes.to(device)

    def torchvision_paste():
        return paste_masks_in_image(probs, boxes, size, padding=1)[:, 0] > 0.5

    cases = {
        "torchvision paste_masks_in_image": torchvision_paste,
        "hassod per box": lambda: paste_masks(probs, boxes, size, whole_image=False),
        "hassod whole image": lambda: paste_masks(probs, boxes, size, whole_image=True),
    }
    results = {}
    for name, function in cases.items():
        function()
        seconds = []
        for _ in range(args.repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            function()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds.append(time.perf_counter() - start)
        results[name] = {"seconds": seconds, "ms": 1e3 * statistics.median(seconds)}
    base = results["torchvision paste_masks_in_image"]["ms"]
    print(f"{args.masks} masks at {args.width} x {args.height} on {device}")
    for name, result in results.items():
        print(f"{name:34s} {result['ms']:9.1f} ms  {base / result['ms']:6.1f}x torchvision")
    ours, theirs = cases["hassod per box"](), torchvision_paste()
    if not torch.equal(ours, cases["hassod whole image"]()):
        sys.exit("the per-box and whole-image paths disagree")
    union = (ours | theirs).sum(dim=(1, 2)).clamp(min=1)
    iou = ((ours & theirs).sum(dim=(1, 2)) / union).cpu().numpy()
    print(f"IoU with torchvision's masks: mean {iou.mean():.3f}, min {iou.min():.3f}")
    write_report(
        args.out,
        {
            "benchmark": "paste",
            "machine": describe_machine(),
            "device": str(device),
            "masks": args.masks,
            "size": list(size),
            "results": results,
            "iou_with_torchvision": {"mean": float(iou.mean()), "min": float(iou.min())},
        },
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
