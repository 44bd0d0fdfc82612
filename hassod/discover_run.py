"""``hassod discover``: a folder of images -> COCO pseudo-labels; streamed, resumable, sharded.

Data flow (DESIGN.md section 7): decode + resize in threads -> backbone in the main process in
batches (``--device``, optional AMP on CUDA) -> per-image clustering, CRF, filters, hierarchy
and RLE encoding in a pool of ``--workers`` processes (pydensecrf holds the GIL, so threads
would not run it in parallel) -> chunk files -> one COCO JSON. Per-image logic lives in
:mod:`hassod.discover`; this module only reads folders, batches, schedules and stores.

Input: every file under ``IMAGES_DIR`` (recursively, symbolic links followed, hidden files and
folders skipped) whose extension is one of :data:`IMAGE_EXTENSIONS` (any case). File names are
relative POSIX paths, sorted by code point; image ids are :func:`hassod.coco.image_id_for` of
them, so ``a/x.jpg`` and ``b/x.jpg`` are different images with different ids.

Output: ``OUT`` (COCO JSON; see :func:`hassod.coco.assemble`) plus the work folder
``OUT.parts/`` holding ``manifest.json`` (the run's settings) and ``chunk-NNNNNN.json`` files,
each written atomically (temporary file, fsync, ``os.replace``) every ``chunk_size`` images or
:data:`FLUSH_SECONDS`, holding ``(image_record, annotation records)`` entries and failures.
Re-running the same command skips the images already in the chunks and retries the failed
ones; the final JSON is always assembled from the chunks (images sorted by file name,
annotation ids 1..N), so an interrupted-and-resumed run writes the same bytes as an
uninterrupted one. A re-run whose settings (backbone, weights hash, every
:class:`~hassod.discover.DiscoveryConfig` parameter, AMP mode, hassod version) differ from the
stored ones is refused unless ``restart`` discards the old chunks. The final JSON holds the
images of the current listing only (after ``shard`` and ``limit``). A file changed in place
under the same name after it was processed is not noticed: use ``--restart``.

Shards: ``shard=(i, N)`` takes the images whose index in the sorted listing is ``i`` modulo
``N``, works in ``OUT.parts/shard-i-of-N/`` and writes ``OUT-stem.shard-i-of-N.json``; under
``torchrun`` (``RANK`` / ``WORLD_SIZE`` in the environment) each rank takes its shard by
itself and uses ``cuda:LOCAL_RANK``. :func:`merge_shards` joins shard JSONs or shard folders
into the JSON a single run would have written.

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
import datetime as _dt
import hashlib
import json
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hassod.coco import LEVEL_NAMES, assemble, image_id_for
from hassod.discover import (
    DEFAULT_MAX_PIXELS,
    DiscoveryConfig,
    UnreadableImage,
    discover_records,
    read_image,
)

#: Extensions (lower case) of the files taken as images; others are ignored.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
#: Stages timed per image, in pipeline order (seconds summed over images and workers).
#: ``decode`` includes the resize and normalisation for the backbone; ``encode`` is the RLE.
STAGES = ("decode", "backbone", "cluster", "crf+filters", "hierarchy", "encode")
#: A chunk is written at least this often while images finish (seconds).
FLUSH_SECONDS = 60.0
#: Seed of ``--random-weights`` models: every run, shard and resume gets the same network.
RANDOM_WEIGHTS_SEED = 0
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
EXIT_OK, EXIT_RUN_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """Bad arguments or input, found before any image was processed (exit code 2)."""


class RunError(Exception):
    """A failure that is not the input's fault, e.g. weights that cannot be loaded (exit 1)."""


class Interrupted(Exception):
    """SIGINT / SIGTERM during a run; the finished images are saved (exit code 130)."""


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
    workers: int | None = None  # None: usable CPUs (per local rank under torchrun)
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

    def format(self) -> str:
        lines = []
        where = f" (shard {self.shard[0]}/{self.shard[1]})" if self.shard else ""
        working = self.wall - self.setup
        rate = self.processed / working if working > 0 else 0.0
        lines.append(
            f"hassod discover{where}: {self.processed} images processed in {self.wall:.1f} s "
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
            f"{self.json_path}: {self.images} images, {total} masks = {per_image:.2f} per image "
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
# Listing, shards, paths
# ---------------------------------------------------------------------------------------------


def list_images(images_dir: str | Path, exclude: Sequence[Path] = ()) -> list[str]:
    """Relative POSIX paths of the image files under ``images_dir``, sorted.

    Recursive, following symbolic links (each real folder visited once), skipping hidden
    files and folders (names starting with ``.``) and the folders in ``exclude``.
    """
    root = Path(images_dir)
    excluded = {os.path.realpath(path) for path in exclude}
    seen_dirs: set[str] = set()
    names = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen_dirs or real in excluded:
            dirs[:] = []
            continue
        seen_dirs.add(real)
        dirs[:] = [name for name in dirs if not name.startswith(".")]
        relative = Path(folder).relative_to(root)
        for name in files:
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in IMAGE_EXTENSIONS:
                continue
            names.append((relative / name).as_posix())
    return sorted(names)


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/N"`` -> ``(i, N)`` with ``0 <= i < N``."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard must look like i/N (e.g. 0/4), got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise UsageError(f"--shard i/N needs 0 <= i < N, got {text!r}")
    return index, count


def shard_from_env(environ: dict | None = None) -> tuple[int, int] | None:
    """``(RANK, WORLD_SIZE)`` as set by torchrun, or None outside a multi-process launch."""
    environ = os.environ if environ is None else environ
    if "RANK" not in environ or "WORLD_SIZE" not in environ:
        return None
    try:
        rank, world = int(environ["RANK"]), int(environ["WORLD_SIZE"])
    except ValueError:
        raise UsageError(
            f"RANK / WORLD_SIZE are not integers: {environ['RANK']!r} / {environ['WORLD_SIZE']!r}"
        ) from None
    if world < 1 or not 0 <= rank < world:
        raise UsageError(f"RANK={rank} does not fit WORLD_SIZE={world}")
    return (rank, world) if world > 1 else None


def output_paths(out: Path, shard: tuple[int, int] | None) -> tuple[Path, Path]:
    """``(json_path, parts_dir)`` of a run writing ``out`` (one shard of it, if ``shard``)."""
    parts = out.with_name(out.name + ".parts")
    if shard is None:
        return out, parts
    tag = f"shard-{shard[0]}-of-{shard[1]}"
    return out.with_name(f"{out.stem}.{tag}{out.suffix}"), parts / tag


# ---------------------------------------------------------------------------------------------
# Provenance: the JSON's info, and the part of it that must match to resume or merge
# ---------------------------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_info(
    backbone: str,
    weights_source: str,
    weights_sha256: str | None,
    amp: str,
    config: DiscoveryConfig,
    date_created: str,
    shard: tuple[int, int] | None = None,
) -> dict:
    """The JSON's ``info``: what produced the pseudo-labels."""
    from hassod import __version__

    info = {
        "description": "HASSOD stage-1 pseudo-labels (class-agnostic, hierarchical)",
        "hassod_version": __version__,
        "date_created": date_created,
        "backbone": backbone,
        "weights": {"source": weights_source, "sha256": weights_sha256},
        "amp": amp,
        "config": config.as_dict(),
    }
    if shard is not None:
        info["shard"] = {"index": shard[0], "count": shard[1]}
    return info


def run_identity(info: dict) -> dict:
    """The settings that decide the pseudo-labels: equal identities may share one JSON."""
    weights = info.get("weights") or {}
    return {
        "hassod_version": info.get("hassod_version"),
        "backbone": info.get("backbone"),
        "weights": weights.get("sha256") or weights.get("source"),
        "amp": info.get("amp"),
        "config": info.get("config"),
    }


def identity_differences(stored: dict, current: dict) -> list[str]:
    """``key: stored -> current`` for each differing leaf of two identities."""
    flat_stored, flat_current = _flatten(stored), _flatten(current)
    return [
        f"{key}: {flat_stored.get(key)!r} -> {flat_current.get(key)!r}"
        for key in sorted(set(flat_stored) | set(flat_current))
        if flat_stored.get(key) != flat_current.get(key)
    ]


def _flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        flat = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): value}


def creation_date(now: float | None = None) -> str:
    """ISO 8601 UTC, from ``SOURCE_DATE_EPOCH`` when set (reproducible outputs)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    seconds = int(epoch) if epoch and epoch.strip().isdigit() else int(now or time.time())
    moment = _dt.datetime.fromtimestamp(seconds, tz=_dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------------------
# The work folder: manifest, chunks, lock
# ---------------------------------------------------------------------------------------------


def atomic_write_json(path: Path, value) -> None:
    """Write ``value`` as compact JSON through a temporary file + fsync + rename."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            json.dump(value, handle, separators=(",", ":"), allow_nan=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


class WorkFolder:
    """``OUT.parts/`` (or one shard's subfolder): manifest, chunk files and a lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_handle = None

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def chunk_paths(self) -> list[Path]:
        return sorted(self.path.glob("chunk-*.json"))

    def lock(self) -> None:
        """Hold an exclusive lock for the run; another run on the same folder is refused."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock
            return
        handle = open(self.path / ".lock", "a")  # noqa: SIM115 - held for the whole run
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise UsageError(
                f"another hassod discover is writing to {self.path}; wait for it or use "
                "another --out"
            ) from None
        self._lock_handle = handle

    def unlock(self) -> None:
        if self._lock_handle is not None:
            self._lock_handle.close()
            self._lock_handle = None

    def read_manifest(self) -> dict | None:
        if not self.manifest_path.is_file():
            return None
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise UsageError(
                f"cannot read {self.manifest_path} ({error}); delete the folder or use --restart"
            ) from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION:
            raise UsageError(
                f"{self.manifest_path} is not a hassod work-folder manifest (format "
                f"{FORMAT_VERSION}); use --restart or another --out"
            )
        return manifest

    def write_manifest(self, manifest: dict) -> None:
        atomic_write_json(self.manifest_path, manifest)

    def clear(self) -> None:
        """Remove the manifest and every chunk (``--restart``)."""
        for path in [*self.chunk_paths(), self.manifest_path]:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def write_chunk(self, entries: list, failed: list[dict]) -> Path:
        existing = self.chunk_paths()
        index = int(existing[-1].stem.split("-")[1]) + 1 if existing else 0
        path = self.path / f"chunk-{index:06d}.json"
        atomic_write_json(path, {"format": FORMAT_VERSION, "entries": entries, "failed": failed})
        return path

    def load(self) -> tuple[dict[str, tuple[dict, list]], dict[str, dict]]:
        """``(entries by file name, failures by file name)`` over all chunks, later ones winning.

        A failure is dropped when the same image succeeded in any chunk. A chunk that cannot
        be read (only possible through outside damage: chunks are written atomically) is
        reported on stderr and ignored, so its images are processed again.
        """
        entries: dict[str, tuple[dict, list]] = {}
        failures: dict[str, dict] = {}
        for path in self.chunk_paths():
            try:
                chunk = json.loads(path.read_text(encoding="utf-8"))
                chunk_entries = [(image, list(records)) for image, records in chunk["entries"]]
                chunk_failed = list(chunk["failed"])
            except (OSError, ValueError, KeyError, TypeError) as error:
                print(f"hassod: ignoring unreadable chunk {path}: {error}", file=sys.stderr)
                continue
            for image, records in chunk_entries:
                entries[image["file_name"]] = (image, records)
                failures.pop(image["file_name"], None)
            for failure in chunk_failed:
                if failure["file_name"] not in entries:
                    failures[failure["file_name"]] = failure
        return entries, failures


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
            file_name, None, None, f"post-processing failed: {_describe(error)}", timings
        )
    return _Result(file_name, record, annotations, None, timings)


def _worker_init() -> None:
    # The parent handles Ctrl-C; each worker runs one image at a time on one core.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import torch

    torch.set_num_threads(1)


def _process_context():
    import multiprocessing

    # forkserver: workers fork from a clean server process, not from a parent that holds
    # OpenMP / CUDA state (fork-unsafe); torch and hassod are imported there once.
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["torch", "hassod.discover"])
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
            self.workers, mp_context=_process_context(), initializer=_worker_init
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
    detail = f" ({_describe(error)})" if error is not None else ""
    return (
        "a worker process died while this image was in flight (out of memory?)" + detail + "; "
        "it is retried when the same command is run again"
    )


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error).strip() or 'no details'}"


def _add_timings(target: dict[str, float], source: dict[str, float]) -> None:
    for key, value in source.items():
        target[key] = target.get(key, 0.0) + value


def _decode(
    path: Path, size: int, max_pixels: int | None
) -> tuple[np.ndarray | None, object, str | None, float]:
    """Thread task: ``(image, preprocessed tensor, failure reason, seconds)``."""
    from hassod.features import preprocess

    start = time.perf_counter()
    try:
        image = read_image(path, max_pixels)
        tensor = preprocess(image, size)
    except UnreadableImage as error:
        return None, None, str(error), time.perf_counter() - start
    except Exception as error:  # e.g. MemoryError on a huge image
        return None, None, f"cannot decode image: {_describe(error)}", time.perf_counter() - start
    return image, tensor, None, time.perf_counter() - start


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def usable_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


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
    return device


def load_backbone(backbone: str, weights: Path | None, random_weights: bool, img_size: int):
    """``(model, weights source, sha256 or None)``; :class:`RunError` when loading fails."""
    import torch

    from hassod.features import load_vit

    try:
        if random_weights:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_WEIGHTS_SEED)
                model = load_vit(backbone, random_weights=True, img_size=img_size)
            return model, f"random (seed {RANDOM_WEIGHTS_SEED})", None
        model = load_vit(backbone, weights=weights, img_size=img_size)
    except (FileNotFoundError, ValueError, RuntimeError, OSError) as error:
        raise RunError(str(error)) from error
    if weights is None:
        return model, "timm-pretrained", None
    return model, str(Path(weights).resolve()), file_sha256(Path(weights))


def check_output(out: Path, parts_dir: Path) -> bool:
    """Make sure ``out`` and its work folder can be written; returns whether it created it."""
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; give a file name such as {out / 'pseudo.json'}")
    created = not parts_dir.exists()
    try:
        parts_dir.mkdir(parents=True, exist_ok=True)
        for folder in {out.parent, parts_dir}:
            probe = folder / f".hassod_write_test.{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
    except OSError as error:
        raise UsageError(f"output {out} is not writable: {error}") from None
    return created


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
    if not images_dir.is_dir():
        raise UsageError(f"images folder not found: {images_dir}")
    json_path, parts_dir = output_paths(out, shard)
    root_parts = output_paths(out, None)[1]
    names = list_images(images_dir, exclude=[root_parts])
    if not names:
        raise UsageError(
            f"no images in {images_dir} (looked for {', '.join(IMAGE_EXTENSIONS)}, any case, "
            "in all sub-folders)"
        )
    _check_ids(names)
    if shard is not None:
        names = names[shard[0] :: shard[1]]
    if options.limit is not None:
        names = names[: options.limit]
    device = resolve_device(options.device)
    if options.amp != "off" and not device.startswith("cuda"):
        raise UsageError("--amp bf16/fp16 needs a CUDA device (--device cuda)")
    workers = options.workers
    if workers is None:
        local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
        workers = max(1, usable_cpus() // max(1, local_ranks))

    created = check_output(out, parts_dir)
    folder = WorkFolder(parts_dir)
    folder.lock()
    try:
        try:
            model, source, sha256 = load_backbone(
                config.backbone, options.weights, options.random_weights, config.size
            )
        except RunError:
            if created:  # leave no empty work folder behind
                folder.unlock()
                with contextlib.suppress(OSError):
                    (parts_dir / ".lock").unlink()
                    parts_dir.rmdir()
                    if shard is not None:
                        root_parts.rmdir()
            raise
        from hassod.features import round_to_patch

        try:
            size = round_to_patch(model, config.size)
        except ValueError as error:
            raise UsageError(f"--size: {error}") from None
        if size != config.size:
            config = _replace_size(config, size)
        info = run_info(config.backbone, source, sha256, options.amp, config, "", shard)
        manifest = _prepare_manifest(folder, info, options.restart)
        info["date_created"] = manifest["date_created"]

        entries, failures = folder.load()
        todo = [name for name in names if name not in entries]
        manifest["completed"] = None
        folder.write_manifest(manifest)

        timings: dict[str, float] = {}
        counts = {"processed": 0, "failed": 0}
        setup = time.perf_counter() - started
        if todo:
            model = model.to(device)
            with _pil_limits(), _signals_as_interrupt():
                _pipeline(
                    todo, images_dir, model, config, options, device, workers, folder,
                    timings, counts,
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


def _check_ids(names: Sequence[str]) -> None:
    seen: dict[int, str] = {}
    for name in names:
        image_id = image_id_for(name)
        if image_id in seen:  # 48-bit hashes: astronomically rare, but never silent
            raise UsageError(f"image id collision between {seen[image_id]!r} and {name!r}")
        seen[image_id] = name


def _prepare_manifest(folder: WorkFolder, info: dict, restart: bool) -> dict:
    stored = None if restart else folder.read_manifest()
    if restart:
        folder.clear()
    elif stored is None and folder.chunk_paths():
        raise UsageError(
            f"{folder.path} holds chunks but no manifest; use --restart to discard them"
        )
    if stored is not None:
        differences = identity_differences(run_identity(stored.get("info", {})), run_identity(info))
        if differences:
            raise UsageError(
                f"{folder.path} was made with other settings; resuming would mix pseudo-labels. "
                "Use --restart to discard it, or another --out. Differences (stored -> now): "
                + "; ".join(differences)
            )
        manifest = stored
        manifest["info"] = info | {"date_created": stored["date_created"]}
        return manifest
    date = creation_date()
    return {
        "format": FORMAT_VERSION,
        "date_created": date,
        "info": info | {"date_created": date},
        "completed": None,
    }


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
) -> None:
    """Decode (threads) -> backbone (here, batched) -> post-processing (pool) -> chunks."""
    from tqdm import tqdm

    batch_size = options.batch_size
    decode_threads = max(2, min(8, usable_cpus()))
    lookahead = 2 * batch_size + decode_threads
    max_in_flight = 2 * max(workers, 1) + batch_size
    buffer_entries: list = []
    buffer_failed: list[dict] = []
    last_flush = time.monotonic()

    def flush() -> None:
        nonlocal last_flush
        if buffer_entries or buffer_failed:
            folder.write_chunk(list(buffer_entries), list(buffer_failed))
            buffer_entries.clear()
            buffer_failed.clear()
        last_flush = time.monotonic()

    progress = tqdm(
        total=len(todo), unit="img", desc="discover", disable=not options.progress,
        dynamic_ncols=True, smoothing=0.1,
    )  # fmt: skip

    def record(results: Iterable[_Result]) -> None:
        for result in results:
            _add_timings(timings, result.timings)
            if result.reason is None:
                buffer_entries.append([result.image, result.annotations])
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

    post = _PostProcessing(workers, config)
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
                future = decoder.submit(_decode, images_dir / name, config.size, options.max_pixels)
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
                for name, image, features, image_timings in _run_backbone(
                    model, batch, config, options.amp, device, batch_size
                ):
                    if isinstance(features, str):
                        record([_Result(name, None, None, features, image_timings)])
                    else:
                        post.submit(name, image, features, image_timings)
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
            f"interrupted: {counts['processed']} images finished in this run are saved in "
            f"{folder.path}; run the same command again to resume"
        ) from None
    finally:
        flush()
        progress.close()
        for _, future in decoding:
            future.cancel()
        decoder.shutdown(wait=not interrupted, cancel_futures=True)
        post.close(kill=interrupted)


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

    def features_of(tensors: list) -> np.ndarray:
        stacked = torch.stack(tensors)
        if device.startswith("cuda") and len(tensors) < batch_size:
            # The same batch shape every time: GPU kernels may pick another algorithm for
            # another batch size, and results must not depend on how images were batched.
            padding = stacked.new_zeros((batch_size - len(tensors), *stacked.shape[1:]))
            stacked = torch.cat([stacked, padding])
        with autocast:
            keys = attention_keys(model, stacked)[: len(tensors)]
        keys = transform(keys, model)
        return keys.float().cpu().numpy()

    start = time.perf_counter()
    try:
        grids = list(features_of([tensor for _, _, tensor, _ in batch]))
    except Exception:  # e.g. out of memory for the batch: one image at a time
        grids = []
        for _, _, tensor, _ in batch:
            try:
                grids.append(features_of([tensor])[0])
            except Exception as error:
                grids.append(f"backbone failed: {_describe(error)}")
    share = (time.perf_counter() - start) / len(batch)
    for (name, image, _, image_timings), grid in zip(batch, grids):
        image_timings["backbone"] = share
        if not isinstance(grid, str):
            grid = np.ascontiguousarray(grid, dtype=np.float32)
        yield name, image, grid, image_timings


@contextlib.contextmanager
def _pil_limits() -> Iterator[None]:
    """Lift PIL's decompression-bomb limit for the run: ``max_pixels`` replaces it."""
    import warnings

    from PIL import Image

    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


@contextlib.contextmanager
def _signals_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler's pre-emption) interrupts like Ctrl-C: finished images are saved."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Interrupted(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------------------------------------
# Merging shards
# ---------------------------------------------------------------------------------------------


def merge_shards(inputs: Sequence[str | Path], out: str | Path, allow_partial: bool = False):
    """Join shard outputs (shard JSON files or shard work folders) into one COCO JSON.

    All inputs must have the same settings (see :func:`run_identity`); unless
    ``allow_partial``, they must be the shards ``0 .. N-1`` of one ``N``, each once, and work
    folders must come from finished runs. The result equals the JSON of a single run over the
    same images (its ``info`` has no ``shard``; ``date_created`` is the earliest).

    Returns:
        The merged COCO dict (also written to ``out``).

    Raises:
        UsageError: unreadable inputs, mixed settings, missing or repeated shards.
    """
    if not inputs:
        raise UsageError("merge-shards needs at least one shard JSON or shard folder")
    loaded = [_load_shard(Path(item), allow_partial) for item in inputs]
    first_info = loaded[0][0]
    for path, (info, _, _) in zip(inputs, loaded):
        differences = identity_differences(run_identity(first_info), run_identity(info))
        if differences:
            raise UsageError(
                f"{path} was made with other settings than {inputs[0]}; refusing to mix them: "
                + "; ".join(differences)
            )
    shards = [info.get("shard") for info, _, _ in loaded]
    if not allow_partial:
        if any(shard is None for shard in shards):
            raise UsageError(
                "every input must be one shard (from --shard or torchrun); use --allow-partial "
                "to merge other outputs"
            )
        counts = {shard["count"] for shard in shards}
        indices = sorted(shard["index"] for shard in shards)
        if len(counts) != 1 or indices != list(range(counts.pop())):
            raise UsageError(
                f"shards {indices} of {sorted({shard['count'] for shard in shards})} do not make "
                "one complete set 0..N-1; use --allow-partial to merge them anyway"
            )
    entries, failures = [], {}
    seen: dict[str, str] = {}
    for path, (_, shard_entries, shard_failed) in zip(inputs, loaded):
        for image, records in shard_entries:
            name = image["file_name"]
            if name in seen:
                raise UsageError(f"image {name!r} is in both {seen[name]} and {path}")
            seen[name] = str(path)
            entries.append((image, records))
        for failure in shard_failed:
            failures[failure["file_name"]] = failure
    failed = sorted(
        (failure for name, failure in failures.items() if name not in seen),
        key=lambda failure: failure["file_name"],
    )
    info = {key: value for key, value in first_info.items() if key != "shard"}
    info["date_created"] = min(info_item.get("date_created") or "" for info_item, _, _ in loaded)
    try:
        coco = assemble(entries, info, failed)
    except ValueError as error:
        raise UsageError(str(error)) from None
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out, coco)
    except OSError as error:
        raise UsageError(f"cannot write {out}: {error}") from None
    return coco


def _load_shard(path: Path, allow_partial: bool) -> tuple[dict, list, list[dict]]:
    """``(info, entries, failures)`` of a shard JSON or a shard work folder."""
    if path.is_dir():
        folder = WorkFolder(path)
        manifest = folder.read_manifest()
        if manifest is None:
            raise UsageError(f"{path} is not a hassod work folder (no {MANIFEST})")
        if not manifest.get("completed") and not allow_partial:
            raise UsageError(
                f"the run writing {path} has not finished; finish it (re-run its command) or "
                "use --allow-partial"
            )
        entries, failures = folder.load()
        return manifest["info"], list(entries.values()), list(failures.values())
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        info, images, annotations = data["info"], data["images"], data["annotations"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UsageError(f"cannot read shard {path}: {error}") from None
    by_image: dict[int, list[dict]] = {image["id"]: [] for image in images}
    for annotation in annotations:
        by_image[annotation["image_id"]].append(annotation)
    entries = []
    for image in images:
        records = []
        group = by_image[image["id"]]
        first_id = group[0]["id"] if group else 0
        for annotation in group:
            record = {
                key: value
                for key, value in annotation.items()
                if key not in ("id", "image_id", "parent_id")
            }
            parent = annotation.get("parent_id")
            record["parent"] = None if parent is None else parent - first_id
            records.append(record)
        entries.append((image, records))
    return info, entries, list(data.get("failed", []))


# ---------------------------------------------------------------------------------------------
# Demo
# ---------------------------------------------------------------------------------------------

DEMO_IMAGES = ("astronaut", "coffee", "chelsea")


def write_demo_images(folder: Path) -> list[Path]:
    """The scikit-image sample photos of the demo, as PNG files in ``folder``."""
    import skimage.data
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in DEMO_IMAGES:
        path = folder / f"{name}.png"
        if not path.is_file():
            Image.fromarray(getattr(skimage.data, name)()).save(path)
        paths.append(path)
    return paths


def write_level_figures(coco: dict, images_dir: Path, figures_dir: Path) -> list[Path]:
    """One :func:`hassod.visualize.level_figure` PNG per image of a pseudo-label JSON."""
    from pycocotools import mask as mask_utils

    from hassod.visualize import level_figure

    figures_dir.mkdir(parents=True, exist_ok=True)
    by_image: dict[int, list[dict]] = {image["id"]: [] for image in coco["images"]}
    for annotation in coco["annotations"]:
        by_image[annotation["image_id"]].append(annotation)
    written = []
    for image in coco["images"]:
        pixels = read_image(images_dir / image["file_name"], None)
        annotations = by_image[image["id"]]
        masks = np.zeros((len(annotations), image["height"], image["width"]), dtype=bool)
        for index, annotation in enumerate(annotations):
            masks[index] = mask_utils.decode(annotation["segmentation"]).astype(bool)
        levels = np.asarray([a["hier_level"] for a in annotations], dtype=np.int64)
        path = figures_dir / (Path(image["file_name"]).with_suffix(".png").as_posix())
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp")
        level_figure(pixels, masks, levels).save(temporary, format="PNG")
        os.replace(temporary, path)
        written.append(path)
    return written
