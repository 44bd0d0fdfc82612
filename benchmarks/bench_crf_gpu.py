"""Dense CRF on the GPU (hassod.crf_torch) vs pydensecrf and the native CRF on the same machine.

Usage (on a machine with a CUDA device; benchmarks/gpu_crf.sh runs it):
    python benchmarks/bench_crf_gpu.py [--images 64] [--device cuda] [--out PATH]
A CPU smoke run of the same code (tests/test_bench_crf_gpu.py; the Triton kernels run in
Triton's interpreter there, so keep the images tiny):
    python benchmarks/bench_crf_gpu.py --device cpu --images 2 --size 48 --repeats 1

Workload (the issue's): a batch of 64 photos at 480 x 480 (scikit-image's and the shared COCO
sample's, cycled), each with the discovery pipeline's three label sets (SLIC superpixels on the
60 x 60 grid, about 50 / 20 / 12 regions, one-hot and bilinearly upsampled), 10 mean-field
iterations, the authors' kernels. Timed in one process, same run:

* GPU, ``CrfBatch`` over the whole batch with the probabilities already on the device (the
  lattices built and the three label sets inferred together), for each filter method
  (``--methods``: sparse products ``spmm``, ``gather``, ``hybrid``, the Triton kernels in
  float32 ``triton`` and float16 ``triton-float16``), ``spmm`` and ``triton`` also in chunks
  of 16 images and with the probabilities copied from host memory;
* the native CPU CRF with every core (one CrfLattice per image, infer_many), on a few images;
* pydensecrf in one process (three CRFs per image), on two images.

Throughput is images/s for the three-CRF workload (median of the repeats). Also: the lattice
build's share, peak GPU memory per method, the time of each filter stage of one iteration, and
the agreement of each method's Q with the native CRF's on each distinct photo (IoU of Q >= 0.5
per label, max |dQ|), a torch.profiler breakdown of one whole-batch CRF per method (the lattice
build's stages, the iterations, the busiest kernels), and with ``--sweep`` the Triton
kernels' time under several launch settings (tile, warps, blur axes per pass). Prints a table
and writes JSON.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

from hassod import crf_torch, crf_triton
from hassod.crf import CrfLattice
from hassod.crf_torch import CrfBatch
from hassod.postprocess import CrfParams
from hassod.postprocess import dense_crf as postprocess_dense_crf
from hassod.testing import partition_probs, slic_partition

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe_machine, write_report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REGIONS = (50, 20, 12)
SKIMAGE_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "cat", "immunohistochemistry")
SHARED_PHOTOS = ROOT.parent / "shared" / "data" / "coco_val2017_sample"
#: --methods names -> CrfBatch settings.
METHODS = {
    "spmm": {"method": "spmm"},
    "gather": {"method": "gather"},
    "hybrid": {"method": "hybrid"},
    "triton": {"method": "triton"},
    "triton-float16": {"method": "triton", "precision": "float16"},
}


def photos(size: tuple[int, int]) -> list[tuple[str, np.ndarray]]:
    """(name, RGB resized to ``size``) of the distinct photos the batch cycles through."""
    import skimage.data
    from PIL import Image

    found = []
    for name in SKIMAGE_PHOTOS:
        image = getattr(skimage.data, name)()
        if image.ndim == 3 and image.shape[2] == 3:
            found.append((name, image))
    for path in sorted(SHARED_PHOTOS.glob("*.jpg")):
        found.append((path.name, np.asarray(Image.open(path).convert("RGB"))))
    return [
        (name, np.asarray(Image.fromarray(image).resize(size, Image.LANCZOS)))
        for name, image in found
    ]


def agreement(ours: np.ndarray, theirs: np.ndarray) -> tuple[np.ndarray, float]:
    first, second = ours >= 0.5, theirs >= 0.5
    union = np.logical_or(first, second).sum(axis=(1, 2))
    intersection = np.logical_and(first, second).sum(axis=(1, 2))
    return np.where(union > 0, intersection / np.maximum(union, 1), 1.0), float(
        np.abs(ours - theirs).max()
    )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function, repeats: int, device: torch.device) -> list[float]:
    seconds = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        function()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def median_ms(function, repeats: int, device: torch.device) -> float:
    return 1e3 * statistics.median(timed(function, repeats, device))


def batch_columns(host_sets) -> int:
    """Label columns of the whole batch: each set padded to its largest count, the total to a
    multiple of 8 (whole 16-byte groups in float16 and float32, as the Triton path pads)."""
    columns = sum(max(len(sets[s]) for sets in host_sets) for s in range(len(REGIONS)))
    return -(-columns // 8) * 8


def photo_agreement(method: str, distinct, sets_of, native_q, device, iterations) -> dict:
    """Per distinct photo: IoU of the masks (Q >= 0.5) and max |dQ| of ``method`` against the
    native CRF's Q ``native_q``."""
    per_photo = {}
    for name, image in distinct:
        on_device = [torch.from_numpy(p).to(device) for p in sets_of[name]]
        batch = CrfBatch([image], device=device, **METHODS[method])
        got = batch.infer([on_device], iterations)[0]
        ious, deltas = [], []
        for q, ref in zip(got, native_q[name]):
            iou, delta = agreement(q.cpu().numpy(), ref)
            ious.append(iou)
            deltas.append(delta)
        all_ious = np.concatenate(ious)
        per_photo[name] = {
            "mean_iou": float(all_ious.mean()),
            "min_iou": float(all_ious.min()),
            "max_abs_dq": max(deltas),
        }
    return per_photo


def iteration_breakdown(images, host_sets, device, methods, repeats) -> dict:
    """Milliseconds of each filter stage of one mean-field iteration on the whole batch (the
    three label sets' columns side by side), per kernel and method."""

    def ms(function) -> float:
        return median_ms(function, repeats, device)

    columns = batch_columns(host_sets)
    whole = CrfBatch(images, device=device)
    num_points = int(sum(h * w for h, w in whole.shapes))
    values = torch.rand(num_points, columns, device=device)
    breakdown = {"columns": columns, "vertices": whole.num_vertices}
    for name, kernel in whole.kernels.items():
        stages = {}
        vertex_values = kernel.splat_matrix @ values
        blurs = kernel.lattice.blur_matrices
        if "spmm" in methods:
            stages["splat_spmm"] = ms(lambda k=kernel, x=values: k.splat_matrix @ x)
            stages["blurs_spmm"] = ms(lambda v=vertex_values, bs=blurs: [b @ v for b in bs])
            stages["slice_spmm"] = ms(lambda k=kernel, v=vertex_values: k.slice_matrix @ v)
        if "gather" in methods or "hybrid" in methods:
            stages["splat_index_add"] = ms(lambda k=kernel, x=values: k.splat_gather(x))
            stages["blurs_index_select"] = ms(lambda k=kernel, v=vertex_values: k.blur_gather(v))
            stages["slice_gather"] = ms(lambda k=kernel, v=vertex_values: k.slice_gather(v))
        for method in ("triton", "triton-float16"):
            if method not in methods:
                continue
            storage = crf_triton.STORAGE_DTYPES[METHODS[method].get("precision", "float32")]
            x = values.to(storage)
            lattice = kernel.lattice
            out = vertex_values.to(storage)
            scratch = torch.empty_like(out)
            q = torch.empty_like(x)
            # The splat as CrfBatch launches it (crf_triton.SPLAT_ROWS / SPLAT_BY_DEGREE).
            stages[f"splat_{method}"] = ms(lambda k=kernel, x=x, o=out: k.splat_triton(x, o))
            stages[f"blurs_{method}"] = ms(
                lambda o=out, s=scratch, n=lattice.blur_neighbours: crf_triton.blur_axes(o, s, n)
            )
            stages[f"slice_{method}"] = ms(
                lambda k=kernel, o=out, q=q: crf_triton.slice_update(
                    q, o, k.lattice.corner_vertex, k.slice_weight
                )
            )
        breakdown[name] = stages
    return breakdown


def profile_stages(images, sets, device, method: str, iterations: int, top: int = 12) -> dict:
    """One whole-batch CRF (lattices and inference) under torch.profiler: milliseconds of
    hassod.crf_torch's named stages, CPU time and (on CUDA) the device time the profiler
    attributes to them (a stage's times include the stages inside it; CPU time covers device
    work only where a step waits for it), and the ``top`` operations and kernels by their own
    time (device time on CUDA)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as profiler:
        CrfBatch(images, device=device, **METHODS[method]).infer(sets, iterations)
        synchronize(device)
    on_device = device.type == "cuda"

    def total_ms(event) -> float:
        return (event.device_time_total if on_device else event.cpu_time_total) / 1e3

    def self_ms(event) -> float:
        return (event.self_device_time_total if on_device else event.self_cpu_time_total) / 1e3

    events = profiler.key_averages()
    prefix = crf_torch.STAGE_PREFIX
    stages: dict[str, dict[str, float]] = {}
    for event in events:  # CPU ranges and, on CUDA, their device annotations share a name
        if event.key.startswith(prefix):
            stage = stages.setdefault(event.key[len(prefix) :], {"cpu_ms": 0.0, "device_ms": 0.0})
            stage["cpu_ms"] = round(max(stage["cpu_ms"], event.cpu_time_total / 1e3), 3)
            if on_device:
                stage["device_ms"] = round(max(stage["device_ms"], total_ms(event)), 3)
    ranked = sorted(
        (event for event in events if not event.key.startswith(prefix)), key=self_ms, reverse=True
    )
    operations = [
        {"name": event.key[:120], "calls": event.count, "ms": round(self_ms(event), 3)}
        for event in ranked[:top]
    ]
    return {"clock": "device" if on_device else "cpu", "stages": stages, "top": operations}


#: Launch settings --sweep tries for each Triton kernel (the first is the default).
SWEEP = {
    "splat": [
        {"entry_block": 16, "num_warps": 4},
        {"entry_block": 8, "num_warps": 4},
        {"entry_block": 32, "num_warps": 4},
        {"entry_block": 16, "num_warps": 2},
        {"entry_block": 8, "num_warps": 2},
        {"rows": 4, "num_warps": 4},
        {"rows": 8, "num_warps": 4},
        {"rows": 16, "num_warps": 4},
        # by degree (crf_triton.splat_plan): light vertices in unrolled tiles, heavy ones alone
        {"by_degree": True, "light_rows": 16},  # 8 warps for the light tiles, 4 for the rest
        {"by_degree": True, "light_rows": 32},
        {"by_degree": True, "light_rows": 8},
        {"by_degree": True, "light_rows": 16, "num_warps": 4},
    ],
    "blur": [  # every axis of the lattice, two per launch or one
        {"axes_per_pass": 2, "tile": 2048, "num_warps": 8},
        {"axes_per_pass": 2, "tile": 1024, "num_warps": 4},
        {"axes_per_pass": 2, "tile": 4096, "num_warps": 16},
        {"axes_per_pass": 2, "tile": 2048, "num_warps": 4},
        {"axes_per_pass": 1, "tile": 2048, "num_warps": 4},
        {"axes_per_pass": 1, "tile": 1024, "num_warps": 4},
        {"axes_per_pass": 1, "tile": 4096, "num_warps": 8},
        {"axes_per_pass": 1, "tile": 2048, "num_warps": 8},
    ],
    "slice": [
        {"tile": 2048, "num_warps": None},
        {"tile": 1024, "num_warps": 4},
        {"tile": 1024, "num_warps": 8},
        {"tile": 2048, "num_warps": 16},
        {"tile": 4096, "num_warps": 16},
    ],
}


def sweep_launch_settings(images, host_sets, device, methods, repeats) -> dict:
    """Milliseconds of each Triton stage on the bilateral kernel (the larger lattice) of the
    whole batch, for each launch setting in SWEEP, per storage precision."""
    columns = batch_columns(host_sets)
    batch = CrfBatch(images, device=device, method="triton")
    out = {}
    for method in ("triton", "triton-float16"):
        if method in methods:
            precision = METHODS[method].get("precision", "float32")
            out[method] = _sweep_one(batch, columns, precision, device, repeats)
            for stage, rows in out[method].items():
                best = min(rows, key=lambda row: row["ms"])
                setting = {k: v for k, v in best.items() if k != "ms"}
                print(
                    f"sweep {method} {stage}: default {rows[0]['ms']:.2f} ms, "
                    f"best {best['ms']:.2f} ms with {setting}"
                )
    return out


def _sweep_one(batch: CrfBatch, columns: int, precision: str, device, repeats: int) -> dict:
    def ms(function) -> float:
        try:
            function()  # compiles this setting
        except Exception as error:  # one failing setting must not lose the whole report
            print(f"sweep setting failed: {error!r}")
            return float("inf")
        return median_ms(function, repeats, device)

    kernel = batch.kernels["bilateral"]
    lattice = kernel.lattice
    num_points = int(sum(h * w for h, w in batch.shapes))
    storage = crf_triton.STORAGE_DTYPES[precision]
    values = torch.rand(num_points, columns, device=device).to(storage)
    vertex_values = torch.rand(lattice.num_vertices, columns, device=device).to(storage)
    scratch = torch.empty_like(vertex_values)
    # As the iterations run it: Q and the clipped probabilities in the storage type.
    q = torch.empty(num_points, columns, device=device, dtype=storage)
    clipped = crf_triton.scaled_clipped(torch.rand(num_points, columns, device=device), storage)
    widths = [columns // 3, columns // 3, columns - 2 * (columns // 3)]
    column_set, column_rank = (t.to(device) for t in crf_triton.column_layout(widths, columns))
    counts = torch.tensor([widths] * len(batch.shapes), dtype=torch.int32, device=device)
    point_image = batch._point_image.to(torch.int32)

    def splat(setting):
        setting = dict(setting)
        plan = lattice.splat_plan if setting.pop("by_degree", False) else None
        crf_triton.splat(
            lattice.vertex_crow,
            lattice.splat_points,
            kernel.splat_values,
            values,
            vertex_values,
            plan=plan,
            **setting,
        )

    def blur(setting):
        crf_triton.blur_axes(vertex_values, scratch, lattice.blur_neighbours, **setting)

    def slice_update(setting):
        crf_triton.slice_update(
            q,
            vertex_values,
            lattice.corner_vertex,
            kernel.slice_weight,
            clipped,
            column_set,
            column_rank,
            point_image,
            counts,
            **setting,
        )

    stages = {"splat": splat, "blur": blur, "slice": slice_update}
    return {
        stage: [
            {**setting, "ms": ms(lambda f=stages[stage], st=setting: f(st))} for setting in settings
        ]
        for stage, settings in SWEEP.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=480, help="square image side")
    parser.add_argument("--chunk", type=int, default=16, help="images per chunk (chunked case)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cpu-images", type=int, default=8, help="images for the native CPU")
    parser.add_argument("--pydensecrf-images", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--photos", type=int, default=None, help="distinct photos (default all)")
    parser.add_argument(
        "--sweep", action="store_true", help="also time the Triton kernels' launch settings"
    )
    parser.add_argument(
        "--methods",
        default=None,
        help=f"comma-separated, of {', '.join(METHODS)} (default: spmm, triton, triton-float16 "
        "on CUDA; spmm, gather on the CPU, where the Triton kernels would run interpreted)",
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "crf_gpu.json"
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device (torch.cuda.is_available() is False); --device cpu smoke-tests")
    if args.methods is None:
        methods = (
            ["spmm", "triton", "triton-float16"] if device.type == "cuda" else ["spmm", "gather"]
        )
    else:
        methods = [name.strip() for name in args.methods.split(",") if name.strip()]
    unknown = [name for name in methods if name not in METHODS]
    if unknown or not methods:
        sys.exit(f"--methods: unknown {unknown}; choose from {list(METHODS)}")
    if not crf_triton.available():
        skipped = [name for name in methods if name.startswith("triton")]
        if skipped:
            print(f"skipping {skipped}: {crf_triton.IMPORT_ERROR}")
        methods = [name for name in methods if not name.startswith("triton")]
    iterations = args.iterations
    size = (args.size, args.size)
    grid = max(4, args.size // 8)  # the ViT's patch grid: 60 x 60 at 480

    distinct = photos(size)[: args.photos]
    sets_of = {
        name: [partition_probs(slic_partition(image, r, grid=grid), size) for r in REGIONS]
        for name, image in distinct
    }
    batch_names = [distinct[i % len(distinct)][0] for i in range(args.images)]
    images = [dict(distinct)[name] for name in batch_names]
    host_sets = [sets_of[name] for name in batch_names]
    device_sets = [[torch.from_numpy(p).to(device) for p in sets] for sets in host_sets]
    labels = [sum(len(p) for p in sets) for sets in host_sets]
    print(
        f"{args.images} images at {size[0]}x{size[1]} ({len(distinct)} distinct photos), "
        f"labels per image {np.mean(labels):.1f} (sets of {REGIONS} regions requested), "
        f"methods {methods}"
    )

    # Agreement of each method with the native CPU CRF (and the warm-up: Triton compiles here).
    native_q = {
        name: CrfLattice(image).infer_many(sets_of[name], iterations) for name, image in distinct
    }
    failures: dict[str, list[str]] = {}

    def attempt(method: str, what: str, function):
        """function(), or None with the error recorded: one method failing (the Triton kernels'
        first run on a GPU, say) must not lose the other methods' figures."""
        try:
            return function()
        except Exception as error:
            traceback.print_exc()
            failures.setdefault(method, []).append(f"{what}: {error!r}")
            print(f"{method}: {what} failed ({error!r}); the method is left out from here")
            if device.type == "cuda":
                torch.cuda.empty_cache()
            return None

    agreement_of = {}
    for method in list(methods):
        per_photo = attempt(
            method,
            "agreement",
            lambda m=method: photo_agreement(m, distinct, sets_of, native_q, device, iterations),
        )
        if per_photo is None:
            methods.remove(method)
            continue
        agreement_of[method] = per_photo
        worst = {
            "mean_iou": min(p["mean_iou"] for p in per_photo.values()),
            "min_iou": min(p["min_iou"] for p in per_photo.values()),
            "max_abs_dq": max(p["max_abs_dq"] for p in per_photo.values()),
        }
        print(f"agreement with native, {method}, worst photo: {worst}")

    def gpu_batch(method: str, chunk: int, on_host: bool) -> None:
        sets = host_sets if on_host else device_sets
        for start in range(0, len(images), chunk):
            batch = CrfBatch(images[start : start + chunk], device=device, **METHODS[method])
            batch.infer(sets[start : start + chunk], iterations)

    results = {}
    peak_gib = {}
    n = args.images
    kind = device.type

    def time_case(case) -> dict:
        gpu_batch(*case)  # warm-up (allocator, cuSPARSE handles, Triton's cache)
        seconds = timed(lambda: gpu_batch(*case), args.repeats, device)
        return {"seconds": seconds, "images_per_s": args.images / statistics.median(seconds)}

    for method in methods:
        cases = {f"{kind} {method}, batch {n}": (method, n, False)}
        if method in ("spmm", "triton"):
            cases[f"{kind} {method}, chunks of {args.chunk}"] = (method, args.chunk, False)
            cases[f"{kind} {method}, batch {n}, probs from host"] = (method, n, True)
        if kind == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        for name, case in cases.items():
            result = attempt(method, name, lambda c=case: time_case(c))
            if result is not None:
                results[name] = result
                print(f"{name}: {result['images_per_s']:.1f} images/s")
        if kind == "cuda":
            peak_gib[method] = torch.cuda.max_memory_allocated(device) / 2**30

    # Lattice build alone (whole batch).
    for method in {METHODS[m]["method"] for m in methods} & {"spmm", "triton"}:
        build = attempt(
            method,
            "lattice build",
            lambda m=method: timed(
                lambda: CrfBatch(images, device=device, method=m), args.repeats, device
            ),
        )
        if build is not None:
            results[f"{kind} lattice build only ({method}), batch {n}"] = {
                "seconds": build,
                "images_per_s": args.images / statistics.median(build),
            }

    breakdown: dict = {}
    for method in methods:
        stages = attempt(
            method,
            "iteration breakdown",
            lambda m=method: iteration_breakdown(images, host_sets, device, [m], args.repeats),
        )
        for key, value in (stages or {}).items():
            if isinstance(value, dict):
                breakdown.setdefault(key, {}).update(value)
            else:
                breakdown[key] = value
    print(f"one iteration on the batch, ms: {breakdown}")
    profiles = {}
    for method in methods:
        profile = attempt(
            method,
            "profile",
            lambda m=method: profile_stages(images, device_sets, device, m, iterations),
        )
        if profile is None:
            continue
        profiles[method] = profile
        print(f"profile of {method} ({profile['clock']} ms): {profile['stages']}")
        for row in profile["top"]:
            print(f"    {row['ms']:9.2f} ms  {row['calls']:5d} x  {row['name']}")

    # Native CPU, every core, lattice reuse with the label sets on parallel threads.
    def native(count: int) -> None:
        for image, sets in zip(images[:count], host_sets[:count]):
            CrfLattice(image).infer_many(sets, iterations)

    cpu_count = min(args.cpu_images, args.images)
    native(1)
    start = time.perf_counter()
    native(cpu_count)
    seconds = time.perf_counter() - start
    results["native cpu, all cores"] = {"seconds": [seconds], "images_per_s": cpu_count / seconds}

    # pydensecrf in one process.
    pyd_count = min(args.pydensecrf_images, args.images)
    reference = CrfParams(backend="pydensecrf", iterations=iterations)
    start = time.perf_counter()
    for image, sets in zip(images[:pyd_count], host_sets[:pyd_count]):
        for probs in sets:
            postprocess_dense_crf(image, probs, reference)
    seconds = time.perf_counter() - start
    results["pydensecrf, one process"] = {"seconds": [seconds], "images_per_s": pyd_count / seconds}

    reference_rate = results["pydensecrf, one process"]["images_per_s"]
    print(f"\n{'case':40s} {'images/s':>10s} {'x pydensecrf':>13s}")
    for name, result in results.items():
        rate = result["images_per_s"]
        print(f"{name:40s} {rate:10.1f} {rate / reference_rate:13.1f}")
    print(f"peak GPU memory, GiB: {peak_gib}")
    if failures:
        print(f"FAILED parts (left out of the figures above): {failures}")

    report = {
        "benchmark": "crf_gpu",
        "machine": describe_machine(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "images": args.images,
        "size": list(size),
        "regions_requested": list(REGIONS),
        "labels_per_image_mean": float(np.mean(labels)),
        "iterations": iterations,
        "methods": methods,
        "results": results,
        "peak_gpu_memory_gib": peak_gib,
        "agreement_with_native": agreement_of,
        "iteration_breakdown": breakdown,
        "profile": profiles,
        "failures": failures,
        "launch_sweep": {},
    }
    write_report(args.out, report)
    print(f"wrote {args.out}")
    if args.sweep and any(name.startswith("triton") for name in methods):
        # Last, and written again after: a sweep cut short by a time limit loses nothing else.
        report["launch_sweep"] = sweep_launch_settings(
            images, host_sets, device, methods, args.repeats
        )
        write_report(args.out, report)
        print(f"wrote {args.out} with the launch sweep")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
