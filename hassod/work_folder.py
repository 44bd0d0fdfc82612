"""The work folder of ``hassod discover`` (``OUT.parts/``) and the run's provenance.

The folder holds ``manifest.json`` (the run's settings, see :func:`run_info`) and
``chunk-NNNNNN.json`` files, each written atomically (temporary file, fsync, ``os.replace``;
:mod:`hassod._io`) every ``chunk_size`` images or
:data:`~hassod.discover_run.FLUSH_SECONDS`, holding ``(image_record, annotation records)``
entries and failures. A lock file (``.lock``, ``flock``) refuses a second run on the same
folder. Re-running the same command skips the images already in the chunks and retries the
failed ones. A re-run whose settings (backbone, weights hash, every
:class:`~hassod.discover.DiscoveryConfig` parameter, AMP mode, hassod version: the
:func:`run_identity`) differ from the stored ones is refused unless ``restart`` discards the
old chunks (:func:`prepare_manifest`). A file changed in place under the same name after it
was processed is not noticed: use ``--restart``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

from hassod._io import atomic_write_json, is_leftover
from hassod.coco import PSEUDO_LABEL_DESCRIPTION
from hassod.discover import DiscoveryConfig
from hassod.run_errors import UsageError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


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
        "description": PSEUDO_LABEL_DESCRIPTION,
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


class WorkFolder:
    """``OUT.parts/`` (or one shard's subfolder): manifest, chunk files and a lock.

    ``command``: the command that writes it, named when a second run is refused."""

    def __init__(self, path: Path, command: str = "hassod discover") -> None:
        self.path = path
        self.command = command
        self._lock_handle = None
        self._next_chunk: int | None = None  # found once, then counted here (no re-listing)
        self._reported: set[Path] = set()  # unreadable chunks already warned about

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def chunk_paths(self) -> list[Path]:
        """The chunk files in the order they were written (by number: chunk-1000000 comes
        after chunk-999999, which a sort by name would put after it)."""
        numbered = [path for path in self.path.glob("chunk-*.json") if _is_chunk_name(path)]
        return sorted(numbered, key=_chunk_number)

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
            try:  # the holder wrote its command there (below)
                holder = (self.path / ".lock").read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError):
                holder = ""
            holder = holder if holder.startswith("hassod ") else self.command
            raise UsageError(
                f"another {holder} is writing to {self.path}; wait for it or use another --out"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(self.command)
        handle.flush()
        self._lock_handle = handle
        self._remove_leftovers()

    def _remove_leftovers(self) -> None:
        """Delete the temporaries of chunk and manifest writes a killed run left here. Only the
        lock holder writes in this folder, so none of them belongs to a live process."""
        with contextlib.suppress(OSError):
            for entry in self.path.iterdir():
                if is_leftover(entry.name):
                    with contextlib.suppress(OSError):
                        entry.unlink()

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
        self._next_chunk = None

    def write_chunk(
        self, entries: list, failed: list[dict], stamps: dict[str, list] | None = None
    ) -> Path:
        """``stamps``: file name -> [size, mtime_ns] of the images the entries came from (so
        that a resume can tell an image replaced under the same name)."""
        if self._next_chunk is None:
            existing = self.chunk_paths()
            self._next_chunk = _chunk_number(existing[-1]) + 1 if existing else 0
        path = self.path / f"chunk-{self._next_chunk:06d}.json"
        chunk = {"format": FORMAT_VERSION, "entries": entries, "failed": failed}
        if stamps:
            chunk["stamps"] = stamps
        atomic_write_json(path, chunk)
        self._next_chunk += 1
        return path

    def load(self) -> tuple[dict[str, tuple[dict, list]], dict[str, dict]]:
        """``(entries by file name, failures by file name)`` over all chunks, later ones winning.

        A failure is dropped when the same image succeeded in any chunk. A chunk that cannot
        be read (only possible through outside damage: chunks are written atomically) is
        reported on stderr and ignored, so its images are processed again.
        """
        entries, failures, _ = self.load_with_stamps()
        return entries, failures

    def load_with_stamps(self) -> tuple[dict, dict, dict[str, list]]:
        """:meth:`load` and the entries' file stamps (chunks written before stamps: none)."""
        entries: dict[str, tuple[dict, list]] = {}
        failures: dict[str, dict] = {}
        stamps: dict[str, list] = {}
        for path in self.chunk_paths():
            try:
                chunk = json.loads(path.read_text(encoding="utf-8"))
                chunk_entries = [(image, list(records)) for image, records in chunk["entries"]]
                chunk_failed = list(chunk["failed"])
                chunk_stamps = dict(chunk.get("stamps", {}))
            except (OSError, ValueError, KeyError, TypeError) as error:
                if path not in self._reported:  # a run loads the folder twice
                    self._reported.add(path)
                    warnings.warn(
                        f"ignoring unreadable chunk {path} ({error}); its images are processed "
                        "again",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                continue
            for image, records in chunk_entries:
                entries[image["file_name"]] = (image, records)
                failures.pop(image["file_name"], None)
                stamps.pop(image["file_name"], None)
            stamps.update(chunk_stamps)
            for failure in chunk_failed:
                if failure["file_name"] not in entries:
                    failures[failure["file_name"]] = failure
        return entries, failures, stamps


def file_stamp(path: Path) -> list[int] | None:
    """[size, mtime_ns] of a file, None if it cannot be read."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return [status.st_size, status.st_mtime_ns]


def _is_chunk_name(path: Path) -> bool:
    """``chunk-<digits>.json``: other files that match the glob are not this run's."""
    number = path.stem.split("-", 1)[1]
    return number.isascii() and number.isdigit()


def _chunk_number(path: Path) -> int:
    return int(path.stem.split("-", 1)[1])


def check_output(out: Path, parts_dir: Path) -> bool:
    """Make sure ``out`` and its work folder can be written; returns whether it created it."""
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder; give a file name such as {out / 'pseudo.json'}")
    created = not parts_dir.exists()
    try:
        parts_dir.mkdir(parents=True, exist_ok=True)
        for folder in {out.parent, parts_dir}:
            # A unique name: ranks on different nodes may share a folder and a process id.
            handle, probe = tempfile.mkstemp(prefix=".hassod_write_test.", dir=folder)
            os.close(handle)
            os.unlink(probe)
    except OSError as error:
        raise UsageError(f"output {out} is not writable: {error}") from None
    return created


def prepare_manifest(folder: WorkFolder, info: dict, restart: bool) -> dict:
    """The manifest of a run with ``info``: the stored one when it matches, else a new one.

    Raises:
        UsageError: the stored settings differ (and not ``restart``), or the folder holds
            chunks without a manifest.
    """
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
