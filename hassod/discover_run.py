"""``hassod discover``: a folder of images -> COCO pseudo-labels; streamed, resumable, sharded.

Data flow (DESIGN.md section 7): decode + resize in threads -> backbone in the main process in
batches (``--device``, optional AMP on CUDA) -> per-image clustering, CRF, filters, hierarchy
and RLE encoding in a pool of ``--workers`` processes (pydensecrf holds the GIL, so threads
would not run it in parallel) -> chunk files -> one COCO JSON. Per-image logic lives in
:mod:`hassod.discover`; this module only batches and schedules. The other jobs of a run live in
their own modules:

* :mod:`hassod.image_folder`: which files are images, their order and ids, decoding;
* :mod:`hassod.work_folder`: the work folder ``OUT.parts/`` (manifest, chunks, lock) that
  makes runs resumable, and the settings that must match to resume;
* :mod:`hassod.shards`: ``--shard`` / torchrun splitting and ``merge-shards``;
* :mod:`hassod.run_errors`: the exceptions below and their exit codes;
* :mod:`hassod._io`: atomic writes.

Output: ``OUT`` (COCO JSON; see :func:`hassod.coco.assemble`) plus the work folder
``OUT.parts/``, where a chunk is written every ``chunk_size`` images or :data:`FLUSH_SECONDS`.
The final JSON is always assembled from the chunks (images sorted by file name, annotation ids
1..N), so an interrupted-and-resumed run writes the same bytes as an uninterrupted one. It
holds the images of the current listing only (after ``shard`` and ``limit``).

Bad input (each image's fate is recorded; one bad image never stops a run):

* unreadable, zero-byte, truncated or corrupt images, and files with an image extension that
  are not images: skipped, listed in the JSON's ``failed`` with file name and reason; retried
  by the next run with the same output;
* files without an image extension: ignored;
* grey, grey + alpha, RGBA, palette, CMYK, 1-bit and 16-bit images: converted to 8-bit RGB
  (16-bit values scaled, alpha dropped); EXIF orientation is applied and the recorded width
  and height are those of the rotated image;
* tiny images (even 1x1, smaller than one patch): processed like any other, since the backbone
  and the CRF see the image resized to ``size``; masks are then resized back to the original
  size, where the 100-pixel area filter usually leaves none: the image is in the JSON with no
  annotations (not a failure);
* huge images: PIL's decompression-bomb limit is replaced by ``max_pixels`` (default
  :data:`~hassod.discover.DEFAULT_MAX_PIXELS`, 40 million); larger images are listed in
  ``failed`` ("image too large") without being decoded;
* a worker process that dies (e.g. killed for memory): the images it had in flight are listed
  in ``failed`` and the pool is restarted;
* before any work, :class:`UsageError` (exit code 2): missing folder, no images in it,
  an output path that is a folder or cannot be written, a work folder in use by another run,
  settings that differ from the stored ones, bad arguments; :class:`RunError` (exit code 1):
  weights that cannot be loaded (e.g. offline without ``--weights``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import threading
import time
import warnings
from collections import deque
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hassod._io import atomic_write_json, not_replaced
from hassod._text import counted
from hassod.cluster import fast_cluster, fast_cluster_batch
from hassod.coco import LEVEL_NAMES, assemble, is_foreign_output
from hassod.demo import DEMO_IMAGES, write_demo_images, write_level_figures
from hassod.discover import (
    DEFAULT_MAX_PIXELS,
    DiscoveryConfig,
    ThresholdCandidates,
    discover_records,
    fixed_size,
)
from hassod.features import RANDOM_WEIGHTS_SEED
from hassod.image_folder import IMAGE_EXTENSIONS, check_ids, decode, list_images, pil_limits
from hassod.run_errors import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_RUN_ERROR,
    EXIT_USAGE,
    Interrupted,
    RunError,
    UsageError,
    describe_error,
    signals_as_interrupt,
)
from hassod.shards import merge_shards, output_paths, parse_shard, shard_from_env
from hassod.work_folder import (
    WorkFolder,
    check_output,
    file_sha256,
    file_stamp,
    prepare_manifest,
    run_info,
)

__all__ = [
    # Defined here.
    "FLUSH_SECONDS",
    "STAGES",
    "RunOptions",
    "RunSummary",
    "load_backbone",
    "resolve_device",
    "run_discover",
    "default_workers",
    "usable_cpus",
    # Re-exported: the CLI, the tests and hassod.detector use them from here.
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_RUN_ERROR",
    "EXIT_USAGE",
    "IMAGE_EXTENSIONS",
    "Interrupted",
    "RANDOM_WEIGHTS_SEED",
    "RunError",
    "UsageError",
    "atomic_write_json",
    "list_images",
    "merge_shards",
    "output_paths",
    "parse_shard",
    "shard_from_env",
    "DEMO_IMAGES",
    "write_demo_images",
    "write_level_figures",
]

#: Stages timed per image, in pipeline order (seconds summed over images and workers).
#: ``decode`` includes the resize and normalisation for the backbone; ``encode`` is the RLE.
STAGES = ("decode", "backbone", "cluster", "crf+filters", "hierarchy", "encode")
#: A chunk is written at least this often while images finish (seconds).
FLUSH_SECONDS = 60.0


@dataclass
class RunOptions:
    """Everything ``hassod discover`` takes; see the module docstring and ``--help``."""

    images_dir: Path
    out: Path
    config: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    weights: Path | None = None
    random_weights: bool = False
    device: str = "auto"
    amp: str = "off"
    workers: int | None = None  # None: default_workers(device)
    batch_size: int = 4
    shard: tuple[int, int] | None = None  # None: from RANK / WORLD_SIZE, else unsharded
    limit: int | None = None
    restart: bool = False
    chunk_size: int = 8
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    progress: bool = True


@dataclass
class RunSummary:
    """What a run did and what the JSON it wrote holds."""

    json_path: Path
    parts_dir: Path
    shard: tuple[int, int] | None
    listed: int  # images in this run's listing (after shard and limit)
    skipped: int  # already finished by an earlier run
    processed: int  # finished by this run (with or without masks)
    failed_now: int  # failed in this run
    images: int  # images in the JSON
    masks_per_level: list[int]  # annotations per level in the JSON
    failed: list[dict]  # the JSON's failures
    timings: dict[str, float]  # seconds per stage, this run's images
    wall: float  # the whole run
    setup: float  # before the first image: listing, weights, work folder
    device: str

    def nothing_usable(self) -> str | None:
        """Why the run's JSON holds no usable image although images were tried (every one
        failed), or None. The commands then exit 1: a JSON of nothing but failures is no
        result, and scripts should not take it for one."""
        if self.images or not self.failed:
            return None
        first = self.failed[0]
        return (
            f"no image could be used: {counted(len(self.failed), 'image')} failed (the first, "
            f"{first.get('file_name')}: {first.get('reason')}); {self.json_path} lists them "
            "under 'failed'"
        )

    def format(self, command: str = "hassod discover") -> str:
        """The run's summary lines, the first one naming ``command``."""
        lines = []
        where = f" (shard {self.shard[0]}/{self.shard[1]})" if self.shard else ""
        working = self.wall - self.setup
        rate = self.processed / working if working > 0 else 0.0
        lines.append(
            f"{command}{where}: {counted(self.processed, 'image')} processed in "
            f"{self.wall:.1f} s "
            f"({rate:.2f} images/s on {self.device} after {self.setup:.1f} s of setup), "
            f"{self.skipped} already done, {self.failed_now} failed this run"
        )
        total = sum(self.masks_per_level)
        per_image = total / self.images if self.images else 0.0
        levels = ", ".join(
            f"{name} {count / max(self.images, 1):.2f}"
            for name, count in zip(LEVEL_NAMES, self.masks_per_level)
        )
        lines.append(
            f"{self.json_path}: {counted(self.images, 'image')}, {counted(total, 'mask')} = "
            f"{per_image:.2f} per image "
            f"({levels}), {len(self.failed)} failed"
        )
        for failure in self.failed[:10]:
            lines.append(f"  failed: {failure['file_name']}: {failure['reason']}")
        if len(self.failed) > 10:
            lines.append(f"  ... {len(self.failed) - 10} more in the JSON's 'failed'")
        if self.processed or self.failed_now:
            count = self.processed + self.failed_now
            lines.append(
                "time per stage (summed over threads and worker processes; mean per image):"
            )
            for stage in STAGES:
                seconds = self.timings.get(stage, 0.0)
                lines.append(f"  {stage:<12} {seconds:9.2f} s  {1e3 * seconds / count:9.1f} ms")
            lines.append(f"  {'setup':<12} {self.setup:9.2f} s  (listing, weights, work folder)")
            lines.append(f"  {'total (wall)':<12} {self.wall:9.2f} s")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Workers
# ---------------------------------------------------------------------------------------------


@dataclass
class _Result:
    """One image's outcome, as sent back by a worker."""

    file_name: str
    image: dict | None
    annotations: list | None
    reason: str | None  # set when it failed
    timings: dict[str, float]


def _postprocess(
    file_name: str, image: np.ndarray, features: np.ndarray, config: DiscoveryConfig
) -> _Result:
    """Worker task: clustering, CRF, filters, hierarchy, RLE of one image; never raises."""
    timings: dict[str, float] = {}
    try:
        record, annotations = discover_records(file_name, image, features, config, timings)
    except Exception as error:  # recorded in 'failed'; the run goes on
        return _Result(
            file_name, None, None, f"post-processing failed: {describe_error(error)}", timings
        )
    return _Result(file_name, record, annotations, None, timings)


#: Seconds between a worker's checks that the run's main process is still there.
ORPHAN_CHECK_SECONDS = 1.0


def _worker_init(main_pid: int) -> None:
    # The parent handles Ctrl-C; each worker runs one image at a time on one core.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_when_orphaned(main_pid)
    import torch

    from hassod.crf import set_default_num_threads

    torch.set_num_threads(1)
    set_default_num_threads(1)  # the pool already keeps every core busy


def _exit_when_orphaned(main_pid: int) -> None:
    """End this worker once the run's main process is gone. A main process killed outright
    (``kill -9``, the out-of-memory killer) cannot shut its pool down, and the workers' task
    queue never reports end of file (they hold its write end too), so they would wait forever."""
    parent = os.getppid()  # the forkserver (or the main process itself under spawn)

    def watch() -> None:
        while True:
            time.sleep(ORPHAN_CHECK_SECONDS)
            if os.getppid() != parent or not _process_alive(main_pid):
                os._exit(1)

    threading.Thread(target=watch, name="hassod-orphan-watch", daemon=True).start()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - someone else's process under that pid
        return True
    return True


def _hassod_preload() -> list[str]:
    """``["hassod.discover"]``, or nothing where the forkserver would import another hassod.

    The forkserver is started with ``python -c``, so the current folder comes first on its
    ``sys.path`` (CPython ignores the ``sys_path`` it is handed): run from a source checkout
    after ``pip install .``, preloading would import the checkout's hassod/, which has no
    compiled module, into every worker. Without the preload each worker imports hassod after
    taking this process's ``sys.path``."""
    package = Path(__file__).resolve().parent
    try:
        local = Path.cwd() / package.name
        shadowed = (local / "__init__.py").is_file() and local.resolve() != package
    except OSError:  # pragma: no cover - the current folder was removed
        shadowed = False
    return [] if shadowed else ["hassod.discover"]


def _process_context():
    import multiprocessing

    # forkserver: workers fork from a clean server process, not from a parent that holds
    # OpenMP / CUDA state (fork-unsafe); torch and hassod are imported there once.
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["torch", *_hassod_preload()])
        return context
    return multiprocessing.get_context("spawn")  # pragma: no cover - Windows


class _PostProcessing:
    """A process pool (or inline calls with ``workers=0``) running :func:`_postprocess`."""

    def __init__(self, workers: int, config: DiscoveryConfig) -> None:
        self.workers = workers
        self.config = config
        self.pending: dict[Future, tuple[str, dict]] = {}
        self.ready: deque[_Result] = deque()
        self.executor = self._new_executor()

    def _new_executor(self):
        if self.workers == 0:
            return None
        from concurrent.futures import ProcessPoolExecutor

        return ProcessPoolExecutor(
            self.workers,
            mp_context=_process_context(),
            initializer=_worker_init,
            initargs=(os.getpid(),),
        )

    def __len__(self) -> int:
        return len(self.pending) + len(self.ready)

    def submit(self, file_name: str, image, features, timings: dict[str, float]) -> None:
        if self.executor is None:
            result = _postprocess(file_name, image, features, self.config)
            _add_timings(result.timings, timings)
            self.ready.append(result)
            return
        future = self.executor.submit(_postprocess, file_name, image, features, self.config)
        self.pending[future] = (file_name, timings)

    def collect(self, block: bool) -> list[_Result]:
        """Finished results; with ``block``, wait until at least one is there (if any pending)."""
        results = list(self.ready)
        self.ready.clear()
        if not self.pending or (results and block):
            return results
        done, _ = wait(
            list(self.pending), timeout=None if block else 0, return_when=FIRST_COMPLETED
        )
        broken = False
        for future in done:
            file_name, timings = self.pending.pop(future)
            try:
                result = future.result()
            except Exception as error:  # BrokenProcessPool: a worker died (e.g. out of memory)
                broken = True
                result = _Result(file_name, None, None, _pool_failure(error), {})
            _add_timings(result.timings, timings)
            results.append(result)
        if broken:
            # Every other image in flight died with the pool: record them, start a fresh pool.
            for file_name, timings in self.pending.values():
                results.append(_Result(file_name, None, None, _pool_failure(None), timings))
            self.pending.clear()
            self.close(kill=True)
            self.executor = self._new_executor()
        return results

    def close(self, kill: bool = False) -> None:
        if self.executor is None:
            return
        if kill:
            for process in list((getattr(self.executor, "_processes", None) or {}).values()):
                with contextlib.suppress(Exception):
                    process.terminate()
        self.executor.shutdown(wait=not kill, cancel_futures=True)
        self.executor = None


def _pool_failure(error: Exception | None) -> str:
    detail = f" ({describe_error(error)})" if error is not None else ""
    return (
        "a worker process died while this image was in flight (out of memory?)" + detail + "; "
        "it is retried when the same command is run again"
    )


def _add_timings(target: dict[str, float], source: dict[str, float]) -> None:
    for key, value in source.items():
        target[key] = target.get(key, 0.0) + value


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def usable_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def default_workers(device: str) -> int:
    """Post-processing processes when ``--workers`` is not given: the usable CPUs (per local
    rank under torchrun), except on the CPU with two CPUs or fewer, where the post-processing
    runs in this process with the CRF on every thread: worker processes there compete with the
    backbone (benchmarks/README.md, 2 cores: 1.09 images/s in one process, 0.92 with 2
    workers)."""
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    cpus = usable_cpus() // max(1, local_ranks)
    if not device.startswith("cuda") and cpus <= 2:
        return 0
    return max(1, cpus)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` (``cuda:LOCAL_RANK`` under torchrun) when available, else ``cpu``."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available (use --device cpu)")
    if not (device == "cpu" or device.startswith("cuda")):
        raise UsageError(f"--device must be cpu, cuda or auto, got {device!r}")
    if device.startswith("cuda:"):
        try:
            index = int(device.split(":", 1)[1])
        except ValueError:
            raise UsageError(
                f"--device must be cpu, cuda, cuda:N or auto, got {device!r}"
            ) from None
        visible = torch.cuda.device_count()
        if index >= visible:
            if visible == 1 and "LOCAL_RANK" in os.environ:
                # Launchers that give each process its own GPU (CUDA_VISIBLE_DEVICES per
                # rank: Slurm --gpu-bind, Ray) still number the ranks.
                return "cuda:0"
            raise UsageError(f"--device {device}: only {visible} CUDA device(s) are visible")
    return device


def load_backbone(
    backbone: str,
    weights: Path | None,
    random_weights: bool,
    img_size: int,
    pos_embed_resize: str | None = None,
):
    """``(model, weights source, sha256 or None)``; :class:`RunError` when loading fails,
    :class:`UsageError` when ``img_size`` is under one patch."""
    from hassod.features import InputSizeError, load_vit

    try:
        if random_weights:  # seeded: the same network in every run (load_vit)
            model = load_vit(
                backbone, random_weights=True, img_size=img_size, pos_embed_resize=pos_embed_resize
            )
            return model, f"random (seed {RANDOM_WEIGHTS_SEED})", None
        model = load_vit(
            backbone, weights=weights, img_size=img_size, pos_embed_resize=pos_embed_resize
        )
    except InputSizeError as error:
        raise UsageError(f"--size: {error}") from None
    except (FileNotFoundError, ValueError, RuntimeError, OSError) as error:
        raise RunError(str(error)) from error
    if weights is None:
        return model, "timm-pretrained", None
    return model, str(Path(weights).resolve()), file_sha256(Path(weights))


def run_discover(options: RunOptions) -> RunSummary:
    """Run stage 1 over a folder (see the module docstring). Raises the exceptions above."""
    started = time.perf_counter()
    config = options.config
    images_dir = Path(options.images_dir)
    out = Path(options.out)
    if options.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {options.batch_size}")
    if options.workers is not None and options.workers < 0:
        raise UsageError(f"--workers must be >= 0, got {options.workers}")
    if options.limit is not None and options.limit < 1:
        raise UsageError(f"--limit must be >= 1, got {options.limit}")
    if options.chunk_size < 1:
        raise UsageError(f"chunk size must be >= 1, got {options.chunk_size}")
    if options.amp not in ("off", "bf16", "fp16"):
        raise UsageError(f"--amp must be off, bf16 or fp16, got {options.amp!r}")
    if options.weights is not None and options.random_weights:
        raise UsageError("pass either --weights or --random-weights, not both")
    shard = options.shard if options.shard is not None else shard_from_env()
    if images_dir.is_file():
        raise UsageError(f"{images_dir} is a file; give the folder of images it is in")
    if not images_dir.is_dir():
        raise UsageError(f"images folder not found: {images_dir}")
    json_path, parts_dir = output_paths(out, shard)
    if is_foreign_output(json_path):
        raise UsageError(not_replaced(json_path, "a pseudo-label JSON of hassod"))
    root_parts = output_paths(out, None)[1]
    names = list_images(images_dir, exclude=[root_parts])
    if not names:
        raise UsageError(
            f"no images in {images_dir} (looked for {', '.join(IMAGE_EXTENSIONS)}, any case, "
            "in all sub-folders)"
        )
    check_ids(names)
    if shard is not None:
        names = names[shard[0] :: shard[1]]
    if options.limit is not None:
        names = names[: options.limit]
    device = resolve_device(options.device)
    if options.amp != "off" and not device.startswith("cuda"):
        raise UsageError("--amp bf16/fp16 needs a CUDA device (--device cuda)")
    workers = default_workers(device) if options.workers is None else options.workers

    missing_parents = [folder for folder in out.absolute().parents if not folder.exists()]
    created = check_output(out, parts_dir)
    folder = WorkFolder(parts_dir)
    folder.lock()
    try:
        try:
            model, source, sha256 = load_backbone(
                config.backbone,
                options.weights,
                options.random_weights,
                config.size,
                config.resolved_pos_embed_resize,
            )
        except (RunError, UsageError):
            if created:  # leave no empty work folder behind
                folder.unlock()
                with contextlib.suppress(OSError):
                    (parts_dir / ".lock").unlink()
                    parts_dir.rmdir()
                    if shard is not None:
                        root_parts.rmdir()
                    for parent in missing_parents:  # innermost first
                        parent.rmdir()
            raise
        from hassod.features import round_to_patch

        try:
            size = round_to_patch(model, config.size)
        except ValueError as error:
            raise UsageError(f"--size: {error}") from None
        if size != config.size:
            config = _replace_size(config, size)
        info = run_info(config.backbone, source, sha256, options.amp, config, "", shard)
        manifest = prepare_manifest(folder, info, options.restart)
        if options.restart:  # the discarded run's JSON must not pass for this run's output
            json_path.unlink(missing_ok=True)
        info["date_created"] = manifest["date_created"]

        entries, failures, stamps = folder.load_with_stamps()
        # An image replaced under the same name since it was processed is done again.
        changed = [
            name
            for name in names
            if name in entries and name in stamps and stamps[name] != file_stamp(images_dir / name)
        ]
        if changed:
            warnings.warn(
                f"{counted(len(changed), 'image')} changed since processed (e.g. "
                f"{changed[0]!r}): processed again",
                RuntimeWarning,
                stacklevel=2,
            )
        redo = set(changed)
        todo = [name for name in names if name not in entries or name in redo]
        manifest["completed"] = None
        folder.write_manifest(manifest)

        timings: dict[str, float] = {}
        counts = {"processed": 0, "failed": 0}
        setup = time.perf_counter() - started
        if todo:
            model = model.to(device)
            with pil_limits(), signals_as_interrupt():
                _pipeline(
                    todo, images_dir, model, config, options, device, workers, folder,
                    timings, counts, done_before=len(names) - len(todo),
                )  # fmt: skip

        entries, failures = folder.load()
        listed = set(names)
        kept = [entry for name, entry in entries.items() if name in listed]
        failed = sorted(
            (failure for name, failure in failures.items() if name in listed),
            key=lambda failure: failure["file_name"],
        )
        coco = assemble(kept, info, failed)
        atomic_write_json(json_path, coco)
        manifest["completed"] = {"images": len(coco["images"]), "failed": len(failed)}
        folder.write_manifest(manifest)
    finally:
        folder.unlock()

    per_level = [0] * len(LEVEL_NAMES)
    for annotation in coco["annotations"]:
        per_level[annotation["hier_level"]] += 1
    return RunSummary(
        json_path=json_path,
        parts_dir=parts_dir,
        shard=shard,
        listed=len(names),
        skipped=len(names) - len(todo),
        processed=counts["processed"],
        failed_now=counts["failed"],
        images=len(coco["images"]),
        masks_per_level=per_level,
        failed=failed,
        timings=timings,
        wall=time.perf_counter() - started,
        setup=setup,
        device=device,
    )


def _replace_size(config: DiscoveryConfig, size: int) -> DiscoveryConfig:
    from dataclasses import replace

    return replace(config, size=size)


def _pipeline(
    todo: list[str],
    images_dir: Path,
    model,
    config: DiscoveryConfig,
    options: RunOptions,
    device: str,
    workers: int,
    folder: WorkFolder,
    timings: dict[str, float],
    counts: dict[str, int],
    done_before: int = 0,
) -> None:
    """Decode (threads) -> backbone (here, batched) -> post-processing (pool) -> chunks.

    ``done_before``: images of the listing a previous run finished; a resumed run's bar starts
    there, so it counts the whole listing.
    """
    from hassod._progress import progress_bar

    batch_size = options.batch_size
    decode_threads = max(2, min(8, usable_cpus()))
    lookahead = 2 * batch_size + decode_threads
    max_in_flight = 2 * max(workers, 1) + batch_size
    buffer_entries: list = []
    buffer_failed: list[dict] = []
    buffer_stamps: dict[str, list] = {}
    last_flush = time.monotonic()

    def flush() -> None:
        nonlocal last_flush
        if buffer_entries or buffer_failed:
            folder.write_chunk(list(buffer_entries), list(buffer_failed), dict(buffer_stamps))
            buffer_entries.clear()
            buffer_failed.clear()
            buffer_stamps.clear()
        last_flush = time.monotonic()

    progress = progress_bar(
        total=done_before + len(todo), initial=done_before, unit="img", desc="discover",
        enabled=options.progress, dynamic_ncols=True, smoothing=0.1,
    )  # fmt: skip

    def record(results: Iterable[_Result]) -> None:
        for result in results:
            _add_timings(timings, result.timings)
            if result.reason is None:
                buffer_entries.append([result.image, result.annotations])
                stamp = file_stamp(images_dir / result.file_name)
                if stamp is not None:
                    buffer_stamps[result.file_name] = stamp
                counts["processed"] += 1
            else:
                buffer_failed.append({"file_name": result.file_name, "reason": result.reason})
                counts["failed"] += 1
                progress.set_postfix(failed=counts["failed"], refresh=False)
            progress.update(1)
            if len(buffer_entries) + len(buffer_failed) >= options.chunk_size or (
                time.monotonic() - last_flush >= FLUSH_SECONDS
            ):
                flush()

    # With the batched device CRF the workers start after the CRF; images whose batch could not
    # run on the device (say, out of memory) fall back to the native CRF in the workers.
    worker_config = config
    if config.crf.backend == "torch":
        worker_config = dataclasses.replace(
            config, crf=dataclasses.replace(config.crf, backend="native")
        )
    post = _PostProcessing(workers, worker_config)
    decoder = ThreadPoolExecutor(decode_threads, thread_name_prefix="hassod-decode")
    decoding: deque[tuple[str, Future]] = deque()
    names = iter(todo)
    batch: list[tuple[str, np.ndarray, object, dict[str, float]]] = []
    interrupted = False
    try:
        while True:
            while len(decoding) < lookahead:
                name = next(names, None)
                if name is None:
                    break
                future = decoder.submit(decode, images_dir / name, config.size, options.max_pixels)
                decoding.append((name, future))
            if not decoding and not batch:
                break
            if decoding:
                name, future = decoding.popleft()
                image, tensor, reason, seconds = future.result()
                if reason is not None:
                    record([_Result(name, None, None, reason, {"decode": seconds})])
                else:
                    batch.append((name, image, tensor, {"decode": seconds}))
            if batch and (len(batch) >= batch_size or not decoding):
                computed = []
                for name, image, features, image_timings in _run_backbone(
                    model, batch, config, options.amp, device, batch_size
                ):
                    if isinstance(features, str):
                        record([_Result(name, None, None, features, image_timings)])
                    else:
                        computed.append((name, image, features, image_timings))
                if config.crf.backend == "torch":
                    computed = _crf_on_device(computed, config, device)
                for name, image, payload, image_timings in computed:
                    post.submit(name, image, payload, image_timings)
                batch = []
            record(post.collect(block=False))
            while len(post) > max_in_flight:
                record(post.collect(block=True))
        while len(post):
            record(post.collect(block=True))
    except (KeyboardInterrupt, Interrupted):
        interrupted = True
        with contextlib.suppress(BaseException):  # keep what already finished
            record(post.collect(block=False))
        raise Interrupted(
            f"interrupted: {counted(counts['processed'], 'image')} finished in this run "
            f"{'is' if counts['processed'] == 1 else 'are'} saved in "
            f"{folder.path}; run the same command again to resume"
        ) from None
    finally:
        flush()
        progress.close()
        for _, future in decoding:
            future.cancel()
        decoder.shutdown(wait=not interrupted, cancel_futures=True)
        post.close(kill=interrupted)


def _crf_on_device(items: list, config: DiscoveryConfig, device: str) -> list:
    """Cluster the batch's images here and run their CRFs together on ``device``.

    Returns the items with :class:`~hassod.discover.ThresholdCandidates` in the place of the
    features. Images that fail to cluster, and the whole batch if the batched CRF fails, keep
    their features and go through the per-image path (which reports or redoes them).
    """
    from hassod.batched_crf import crf_candidates_batch

    clustered = _cluster_here(items, config.thresholds)
    ready = [i for i, clusters in enumerate(clustered) if clusters is not None]
    if not ready:
        return items
    start = time.perf_counter()
    try:
        candidates = crf_candidates_batch(
            [fixed_size(items[i][1], config.size) for i in ready],
            [list(clustered[i].labels) for i in ready],
            [items[i][1].shape[:2] for i in ready],
            config.crf,
            config.filters,
            device=device,
        )
    except Exception as error:
        warnings.warn(  # the default filter shows each distinct message once
            f"the batched CRF failed on {device} ({describe_error(error)}); these images use "
            "the native CPU CRF",
            RuntimeWarning,
            stacklevel=2,
        )
        return items
    share = (time.perf_counter() - start) / len(ready)
    out = list(items)
    for i, per_threshold in zip(ready, candidates):
        name, image, _, image_timings = items[i]
        image_timings["crf+filters"] = share
        thresholds = tuple(float(t) for t in clustered[i].thresholds)
        out[i] = (name, image, ThresholdCandidates(thresholds, tuple(per_threshold)), image_timings)
    return out


def _cluster_here(items: list, thresholds) -> list:
    """Cluster the batch's feature grids in this process: all together on native threads
    (GIL released), or one by one when that fails, so that a bad grid only loses its image
    (None in its place; the per-image path reports it)."""
    start = time.perf_counter()
    try:
        clustered = fast_cluster_batch([features for _, _, features, _ in items], thresholds)
    except Exception:
        clustered = None
    if clustered is not None:
        share = (time.perf_counter() - start) / max(len(items), 1)
        for _, _, _, image_timings in items:
            image_timings["cluster"] = share
        return clustered
    clustered = []
    for _, _, features, image_timings in items:
        start = time.perf_counter()
        try:
            clusters = fast_cluster(features, thresholds)
        except Exception:
            clusters = None
        image_timings["cluster"] = time.perf_counter() - start
        clustered.append(clusters)
    return clustered


def _stop_on_device_fault(error: Exception, device: str) -> None:
    """Raise :class:`RunError` for a GPU fault other than running out of memory (an illegal
    address, an ECC or driver error): the device stays unusable, so every later image would
    fail too. Exit 1; the finished images are kept and a rerun resumes."""
    import torch

    if isinstance(error, torch.OutOfMemoryError):
        return
    if isinstance(error, getattr(torch, "AcceleratorError", ())) or "CUDA error" in str(error):
        raise RunError(
            f"the GPU failed ({describe_error(error)}); finished images are saved, rerun the "
            "same command to resume"
        ) from error


def _run_backbone(model, batch, config: DiscoveryConfig, amp: str, device: str, batch_size: int):
    """Yield ``(name, image, features or failure reason, timings)`` for one batch."""
    import torch

    from hassod.features import FEATURE_TRANSFORMS, attention_keys

    transform = FEATURE_TRANSFORMS[config.resolved_transform]
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)
        if amp != "off"
        else contextlib.nullcontext()
    )

    def features_of(tensors: list, pad: bool = True) -> np.ndarray:
        stacked = torch.stack(tensors)
        if pad and device.startswith("cuda") and len(tensors) < batch_size:
            # The same batch shape every time: GPU kernels may pick another algorithm for
            # another batch size, and results must not depend on how images were batched.
            padding = stacked.new_zeros((batch_size - len(tensors), *stacked.shape[1:]))
            stacked = torch.cat([stacked, padding])
        with autocast:
            keys = attention_keys(model, stacked)[: len(tensors)]
        keys = transform(keys, model)
        return keys.float().cpu().numpy()

    start = time.perf_counter()
    grids, failure = None, None
    try:
        grids = list(features_of([tensor for _, _, tensor, _ in batch]))
    except Exception as error:  # e.g. out of memory for the batch: one image at a time
        _stop_on_device_fault(error, device)
        failure = describe_error(error)
    if grids is None:
        # Outside the except block, whose traceback holds the failed attempt's tensors, and
        # unpadded, as padding would rebuild the batch shape that failed (so these images'
        # features may differ from a full batch's in the last bits).
        warnings.warn(
            f"a backbone batch failed on {device} ({failure}); its images run one at a time",
            RuntimeWarning,
            stacklevel=2,
        )
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        grids = []
        for _, _, tensor, _ in batch:
            try:
                grids.append(features_of([tensor], pad=False)[0])
            except Exception as error:
                _stop_on_device_fault(error, device)
                grids.append(f"backbone failed: {describe_error(error)}")
    share = (time.perf_counter() - start) / len(batch)
    for (name, image, _, image_timings), grid in zip(batch, grids):
        image_timings["backbone"] = share
        if not isinstance(grid, str):
            grid = np.ascontiguousarray(grid, dtype=np.float32)
        yield name, image, grid, image_timings
