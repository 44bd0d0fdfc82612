"""Atomic file writes: readers never see a partial file.

Every helper writes to a temporary file in the destination's folder (``.NAME.PID.tmp``, so
the final rename never crosses file systems), optionally fsyncs it, then ``os.replace``-s it
over the destination. The temporary file is removed if writing fails. A destination that is a
symbolic link is written through (its target replaced); one that is a device, pipe or folder
is refused.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


def output_target(path: str | os.PathLike) -> Path:
    """The file a write to ``path`` replaces: a symbolic link's target (the link stays a link).

    Raises:
        OSError: ``path`` is an existing folder, device, pipe or socket (a rename over it
            would replace it, e.g. turn /dev/full into a regular file).
    """
    path = Path(path)
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    if path.exists() and not path.is_file():
        raise OSError(f"{path} exists and is not a regular file; give a file path to write")
    return path


#: Names of the files hassod's own writes leave behind when a process is killed mid-write:
#: the temporaries of :func:`_replacing` (``.NAME.PID.tmp``) and the writability probes of
#: the commands' output checks (``.hassod_write_test...``).
_LEFTOVER = re.compile(r"^\..+\.\d+\.tmp$|^\.hassod_write_test")


def is_leftover(name: str) -> bool:
    """Whether a file name is one a killed hassod write leaves behind (never a user's file of
    value): folders holding only such files count as empty, and they may be deleted."""
    return _LEFTOVER.match(name) is not None


@contextlib.contextmanager
def _replacing(path: Path, parents: bool) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it over ``path`` when the block ends."""
    path = output_target(path)
    if parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike,
    mode: str = "wb",
    *,
    encoding: str | None = None,
    fsync: bool = False,
    parents: bool = False,
) -> Iterator[IO[Any]]:
    """Open a temporary file for writing; it replaces ``path`` when the block ends normally.

    Args:
        path: the destination.
        mode: ``"wb"`` or ``"w"`` (with ``encoding``).
        fsync: flush the data to disk before the rename (survives a power cut).
        parents: create the destination's missing folders first.
    """
    with _replacing(Path(path), parents) as temporary:
        with open(temporary, mode, encoding=encoding) as handle:
            yield handle
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())


def atomic_write(
    path: str | os.PathLike,
    write: Callable[[Path], object],
    *,
    fsync: bool = False,
    parents: bool = False,
) -> None:
    """``write(temporary_path)``, then rename it over ``path``.

    For writers that want a file name (PIL, matplotlib, ``Path.write_text``).
    """
    with _replacing(Path(path), parents) as temporary:
        write(temporary)
        if fsync:
            descriptor = os.open(temporary, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)


def atomic_write_file(
    path: str | os.PathLike,
    write: Callable[[IO[bytes]], object],
    *,
    fsync: bool = False,
    parents: bool = False,
) -> None:
    """``write(handle)`` on a temporary file opened in binary mode, then rename it over ``path``.

    For writers that want an open file (``numpy.savez_compressed`` would add ``.npz`` to a
    temporary file name).
    """
    with atomic_open(path, "wb", fsync=fsync, parents=parents) as handle:
        write(handle)


def not_a_file(path: Path, what: str) -> str:
    """Why ``path``, which ``is_file()`` refused, is no ``what`` file: missing, or a folder."""
    if path.is_dir():
        return f"{what} {path} is a folder, not a file"
    return f"{what} not found: {path}"


def not_a_folder(path: Path, what: str) -> str:
    """Why ``path``, which ``is_dir()`` refused, is no ``what``: missing, or a file."""
    if path.exists():
        return f"{what} {path} is a file, not a folder"
    return f"{what} not found: {path}"


def json_signature(description: str) -> bytes:
    """How a compact JSON written by :func:`atomic_write_json` begins when its first key is
    ``info`` and ``info``'s first key is ``description``."""
    return ('{"info":{"description":' + json.dumps(description)).encode("utf-8")


def foreign_file(
    path: str | os.PathLike, signatures: tuple[bytes, ...] | Callable[[bytes], bool]
) -> bool:
    """True when ``path`` is a non-empty file whose first bytes (after white space) begin with
    none of ``signatures`` (or, given a function, for which it returns False): another
    program's file, which an output must not replace (a mistyped ``--out`` would otherwise
    destroy, say, a ground-truth JSON). A file that cannot be read counts as foreign."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096).lstrip()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return False
    except OSError:
        return True
    if not head:
        return False
    return not (signatures(head) if callable(signatures) else head.startswith(signatures))


def not_replaced(
    path: str | os.PathLike,
    kind: str,
    advice: str = "choose another --out (or delete the file first)",
) -> str:
    """The message of an output refused because :func:`foreign_file` says another program
    wrote it: ``kind`` says what the command writes ("a pseudo-label JSON of hassod")."""
    return f"{path} exists and is not {kind}; refusing to replace it: {advice}"


def atomic_write_json(
    path: str | os.PathLike, value: Any, *, fsync: bool = True, parents: bool = False
) -> None:
    """Write ``value`` as compact UTF-8 JSON (no NaN / infinity), fsynced by default;
    ``parents``: make missing folders."""
    with atomic_open(path, "w", encoding="utf-8", fsync=fsync, parents=parents) as handle:
        json.dump(value, handle, separators=(",", ":"), allow_nan=False)


def describe_read_error(error: Exception) -> str:
    """A short reason for a weight file that did not load."""
    text = str(error)
    if "Weights only load failed" in text:
        # torch's advice (weights_only=False) would run the file's code: not repeated here.
        if "Unsupported global" in text:
            named = text.split("Unsupported global:")[-1].strip().splitlines()[0]
            named = named.split(" was not")[0]  # "GLOBAL datetime.date was not an allowed ..."
            return (
                f"it names objects other than tensors, numbers and strings ({named}), which "
                "hassod does not unpickle (re-save a file you trust as a plain state dict)"
            )
        reason = text.split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
        return f"not a checkpoint, or damaged (unpickling stopped: {reason})"
    # torch's own messages can be bare (a corrupt pickle says only a number): name the type.
    return f"not a checkpoint, or damaged ({type(error).__name__}: {text})"


# What Detectron2's (and other) NumPy weight pickles reference: arrays, dtypes, scalars.
_ARRAY_PICKLE_GLOBALS = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),  # bytes in protocol-2 pickles
        ("collections", "OrderedDict"),
    }
)


def load_array_pickle(handle: IO[bytes]) -> Any:
    """Unpickle a weight file of dicts, lists, numbers, strings and NumPy arrays, refusing any
    other class or function: a plain ``pickle.load`` of a downloaded ``.pkl`` runs whatever
    code it names. Raises ``pickle.UnpicklingError`` naming what was refused."""
    import pickle

    class ArraysOnly(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if (module, name) in _ARRAY_PICKLE_GLOBALS:
                return super().find_class(module, name)
            raise pickle.UnpicklingError(
                f"refusing {module}.{name}: a weight file should hold arrays only"
            )

    return ArraysOnly(handle, encoding="latin1").load()
