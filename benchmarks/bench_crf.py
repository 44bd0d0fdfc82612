"""Dense CRF: native (hassod.crf) vs pydensecrf on the discovery pipeline's per-image workload.

Usage:
    python benchmarks/bench_crf.py [--quick] [--image PATH] [--out benchmarks/results/crf.json]

Workload (DESIGN.md section 3): one photo at 480 x 480 (scikit-image's astronaut unless
--image), three label sets as the three merge thresholds give them, here SLIC superpixels on the
60 x 60 patch grid with about 50 / 20 / 12 regions (hassod.testing.slic_partition), one-hot and
bilinearly upsampled; 10 mean-field iterations, the authors' kernels.

Timed, median of the rounds (every case timed once per round, in turn), per image (all three
label sets):
  * pydensecrf: postprocess.dense_crf(backend="pydensecrf") three times;
  * native, 1 and 2 threads: hassod.crf.dense_crf three times (lattices built every time);
  * native lattice reuse, 1 and 2 threads: one CrfLattice, then infer() per label set;
  * native lattice reuse + infer_many on 2 threads (the label sets on parallel threads);
  * the pipeline's call, postprocess.dense_crf (native backend: hassod.crf.shared_lattice keeps
    the image's lattices between its three calls), 1 and 2 threads.
Also per label set, and the agreement with pydensecrf (IoU of Q >= 0.5 per label, max |dQ|).
The machine's load average is recorded before and after: other processes share its cores.
Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from hassod.crf import CrfLattice, clear_shared_lattice, dense_crf
from hassod.postprocess import CrfParams
from hassod.postprocess import dense_crf as postprocess_dense_crf
from hassod.testing import partition_probs, slic_partition

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe_machine, write_report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SIZE = (480, 480)
REGIONS = (50, 20, 12)


def round_robin(cases: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds of each case per round, the cases timed in turn in every round.

    Other processes may share the machine's cores; timing the cases in turn lets each see the
    same share of it (see load_average_* in the report).
    """
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, function in cases.items():
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return times


def load_image(path: Path | None) -> tuple[str, np.ndarray]:
    from PIL import Image

    if path is None:
        import skimage.data

        name, image = "skimage.data.astronaut", skimage.data.astronaut()
    else:
        name, image = str(path), np.asarray(Image.open(path).convert("RGB"))
    return name, np.asarray(Image.fromarray(image).resize(SIZE, Image.LANCZOS))


def agreement(ours: np.ndarray, theirs: np.ndarray) -> dict:
    first, second = ours >= 0.5, theirs >= 0.5
    union = np.logical_or(first, second).sum(axis=(1, 2))
    intersection = np.logical_and(first, second).sum(axis=(1, 2))
    ious = np.where(union > 0, intersection / np.maximum(union, 1), 1.0)
    return {
        "mean_iou": float(ious.mean()),
        "min_iou": float(ious.min()),
        "max_abs_dq": float(np.abs(ours - theirs).max()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--image", type=Path, default=None, help="photo (default: astronaut)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "crf.json")
    args = parser.parse_args(argv)
    repeats = 1 if args.quick else 5
    load_before = os.getloadavg()

    name, image = load_image(args.image)
    label_sets = [partition_probs(slic_partition(image, regions), SIZE) for regions in REGIONS]
    reference = CrfParams(backend="pydensecrf")

    # Warm-up and agreement.
    per_set = []
    for probs in label_sets:
        theirs = postprocess_dense_crf(image, probs, reference)
        ours = dense_crf(image, probs)
        per_set.append({"labels": int(len(probs)), **agreement(ours, theirs)})

    def with_reuse(threads: int) -> None:
        lattice = CrfLattice(image, num_threads=threads)
        for probs in label_sets:
            lattice.infer(probs, num_threads=threads)

    def with_infer_many(threads: int) -> None:
        CrfLattice(image, num_threads=threads).infer_many(label_sets, num_threads=threads)

    def with_postprocess(threads: int) -> None:
        clear_shared_lattice()  # a new image: the first call builds the lattices
        for probs in label_sets:
            postprocess_dense_crf(image, probs, CrfParams(), num_threads=threads)

    cases = {}
    for index, probs in enumerate(label_sets):
        cases[f"set{index}/pydensecrf"] = lambda p=probs: postprocess_dense_crf(image, p, reference)
        for threads in (1, 2):
            cases[f"set{index}/native_{threads}t"] = lambda p=probs, t=threads: dense_crf(
                image, p, num_threads=t
            )
    for threads in (1, 2):
        cases[f"workload/lattice_{threads}t"] = lambda t=threads: CrfLattice(image, num_threads=t)
        cases[f"workload/reuse_{threads}t"] = lambda t=threads: with_reuse(t)
        cases[f"workload/postprocess_{threads}t"] = lambda t=threads: with_postprocess(t)
    cases["workload/reuse_infer_many_2t"] = lambda: with_infer_many(2)
    times = round_robin(cases, repeats)
    # The workload without lattice reuse: the three label sets' times of the same round.
    for method in ("pydensecrf", "native_1t", "native_2t"):
        times[f"workload/{method}"] = [
            sum(times[f"set{index}/{method}"][r] for index in range(len(label_sets)))
            for r in range(repeats)
        ]
    medians = {name: statistics.median(values) for name, values in times.items()}

    for index, row in enumerate(per_set):
        row["pydensecrf_s"] = medians[f"set{index}/pydensecrf"]
        for threads in (1, 2):
            row[f"native_{threads}t_s"] = medians[f"set{index}/native_{threads}t"]
    workload = {
        key.split("/", 1)[1] + "_s": value
        for key, value in medians.items()
        if key.startswith("workload/")
    }
    for key in list(workload):
        if key.startswith(("native_", "reuse_", "postprocess_")):
            workload["speedup_" + key[:-2]] = workload["pydensecrf_s"] / workload[key]

    lattice = CrfLattice(image)
    report = {
        "machine": describe_machine(),
        "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
        "image": name,
        "size": list(SIZE),
        "iterations": 10,
        "rounds": repeats,
        "lattice_vertices": lattice.num_vertices,
        "label_sets": per_set,
        "workload": workload,
    }

    machine = report["machine"]
    print(f"machine: {machine['cpu']} ({machine['cores']} cores), load {load_before[0]:.2f}")
    print(f"image: {name} at {SIZE[0]}x{SIZE[1]}, lattice vertices {lattice.num_vertices}")
    print(
        f"{'labels':>6} {'pydensecrf s':>13} {'native 1t s':>12} {'native 2t s':>12} "
        f"{'x (1t)':>7} {'x (2t)':>7} {'mean IoU':>9} {'min IoU':>8} {'max |dQ|':>9}"
    )
    for row in per_set:
        print(
            f"{row['labels']:>6} {row['pydensecrf_s']:>13.3f} {row['native_1t_s']:>12.3f} "
            f"{row['native_2t_s']:>12.3f} {row['pydensecrf_s'] / row['native_1t_s']:>7.2f} "
            f"{row['pydensecrf_s'] / row['native_2t_s']:>7.2f} {row['mean_iou']:>9.5f} "
            f"{row['min_iou']:>8.5f} {row['max_abs_dq']:>9.2e}"
        )
    print(f"per image ({'/'.join(str(row['labels']) for row in per_set)} labels):")
    print(f"  {'pydensecrf':42} {workload['pydensecrf_s']:7.3f} s")
    print(
        f"  {'lattices alone (1 / 2 threads)':42} {workload['lattice_1t_s']:7.3f} / "
        f"{workload['lattice_2t_s']:.3f} s"
    )
    for key, label in (
        ("native_1t", "native, 1 thread"),
        ("native_2t", "native, 2 threads"),
        ("reuse_1t", "native lattice reuse, 1 thread"),
        ("reuse_2t", "native lattice reuse, 2 threads"),
        ("reuse_infer_many_2t", "lattice reuse + infer_many, 2 threads"),
        ("postprocess_1t", "postprocess.dense_crf (native), 1 thread"),
        ("postprocess_2t", "postprocess.dense_crf (native), 2 threads"),
    ):
        print(
            f"  {label:42} {workload[key + '_s']:7.3f} s  "
            f"{workload['speedup_' + key]:5.2f}x vs pydensecrf"
        )
    write_report(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
