"""Exceptions and exit codes of ``hassod discover`` and ``hassod merge-shards``.

:class:`UsageError` (exit code 2) is raised before any image is processed: a missing folder,
no images in it, an output path that is a folder or cannot be written, a work folder in use by
another run, settings that differ from the stored ones, bad arguments. :class:`RunError`
(exit code 1) is a failure that is not the input's fault, e.g. weights that cannot be loaded
(offline without ``--weights``). :class:`Interrupted` (exit code 130) is SIGINT / SIGTERM
during a run. Failures of single images are not exceptions: they are recorded, with
:func:`describe_error` text, in the JSON's ``failed``.
"""

from __future__ import annotations

import contextlib
import errno
import signal
import threading
from collections.abc import Iterator

EXIT_OK, EXIT_RUN_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """Bad arguments or input, found before any image was processed (exit code 2)."""


class RunError(Exception):
    """A failure that is not the input's fault, e.g. weights that cannot be loaded (exit 1)."""


class Interrupted(BaseException):
    """SIGINT / SIGTERM during a run; the finished images are saved (exit code 130).

    A BaseException, like KeyboardInterrupt: the signal handler raises it wherever the main
    thread is, and the ``except Exception`` that turn a failed batch into a retry must not
    swallow it (torchrun and Slurm stop processes with SIGTERM, then SIGKILL)."""


def describe_error(error: BaseException) -> str:
    """``"TypeName: message"``, as recorded for an image that failed."""
    return f"{type(error).__name__}: {str(error).strip() or 'no details'}"


@contextlib.contextmanager
def signals_as_interrupt(
    exception: type[BaseException] = Interrupted,
) -> Iterator[None]:
    """SIGTERM (a scheduler's pre-emption) raises ``exception`` (:class:`Interrupted`, or
    KeyboardInterrupt to pass for Ctrl-C), so that a run saves its finished work either way (in
    the main thread only: elsewhere signals cannot be handled and the block runs unchanged)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise exception(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


#: Failures of the disk rather than of the arguments: it filled up, a quota ran out, it broke.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO})
#: ... and of access to it, which a mount turning read-only during a run also gives.
STORAGE_ERRNOS = DISK_ERRNOS | {errno.EROFS, errno.EACCES, errno.EPERM}
