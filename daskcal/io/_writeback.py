"""Product chunk files pushed to disk and dropped from the page cache, by a background thread.

A file written is first copied into the kernel's page cache, and a cache that grows takes
pages the machine has not used yet. On a virtual machine those are the dearest a process can
touch: here (2 cores, 24 GiB) writing 8 GB of 4 MB files cost 23-24 s of system time (2.9 ms
per MB), against 3.7-4.5 s (and 7.5-9 s of wall time with the disk's own) when each file is
written to disk and its pages given back at once, so that the next file reuses them (a loop
of ``os.write`` with and without ``fdatasync`` + ``POSIX_FADV_DONTNEED``; the large-mosaic
benchmark's system time went from 70-73 s to 25-27 s, ``benchmarks/results/resample-jwst.txt``).
A large mosaic writes tens of GB of chunks
that no step of the run reads again, and its profile had 31% of the threads' time in writing
them. So each write task hands the chunk files it has written (and recorded, when it keeps a
journal) to :func:`release`: a thread of the process calls ``fdatasync`` and
``posix_fadvise(POSIX_FADV_DONTNEED)`` on each, while the task goes on.

It is a hint and never a wait: the queue holds at most :data:`QUEUED` files (open
descriptors, so a product renamed into place meanwhile is still released) and a file that
does not fit stays cached as it would have. Where ``posix_fadvise`` does not exist (macOS)
nothing is done. Dask config ``daskcal.io.release-written`` (default True) turns it off.
"""

from __future__ import annotations

import logging
import os
import queue
import threading

__all__ = ["CONFIG", "release"]

log = logging.getLogger(__name__)

#: Dask config key: whether written product chunks are released (default True).
CONFIG = "daskcal.io.release-written"
#: Files waiting for the background thread at most, each an open descriptor (beyond, they are closed and left
#: cached).
QUEUED = 256

_lock = threading.Lock()
_started: tuple[int, queue.Queue] | None = None  # (process id, queue) of this process's thread


def release(fds) -> None:
    """Have the files open at descriptors ``fds`` (just written by this process) written to disk and dropped from
    the page cache, then closed, in the background; returns at once. Each descriptor is closed, now or then.

    Descriptors, not paths: a staged product is renamed into place when its run ends, and a file keeps its
    descriptor (and its pages) through the rename.
    """
    fds = list(fds)
    if not fds:
        return
    import dask

    if not hasattr(os, "posix_fadvise") or not dask.config.get(CONFIG, True):
        _close(fds)
        return
    q = _queue()
    for k, fd in enumerate(fds):
        try:
            q.put_nowait(fd)
        except queue.Full:  # left cached, as without this module
            _close(fds[k:])
            return


def _close(fds) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _queue() -> queue.Queue:
    global _started
    with _lock:
        if _started is None or _started[0] != os.getpid():  # none yet, or inherited through a fork
            q: queue.Queue = queue.Queue(QUEUED)
            threading.Thread(target=_drop, args=(q,), name="daskcal-writeback", daemon=True).start()
            _started = (os.getpid(), q)
        return _started[1]


def _drop(q: queue.Queue) -> None:
    while True:
        fd = q.get()
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        except OSError as exc:  # a file system that cannot: the file stays cached
            log.debug("could not release file descriptor %d from the page cache: %s", fd, exc)
        finally:
            _close([fd])
            q.task_done()
