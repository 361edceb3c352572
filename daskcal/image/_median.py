"""Median of a stack of frames, in memory or through a bounded on-disk buffer.

:class:`MedianComputer` has the interface of stcal's
``stcal.outlier_detection.median.MedianComputer`` (``append``, ``evaluate``,
``cleanup``) and returns exactly ``np.nanmedian(stack, axis=0)``.

On disk, the frames go into one file, reserved at its full size up front, laid
out section by section (a section is a band of rows; within a section, frame
after frame), written with positioned writes and never memory-mapped. The
median reads each section with one read and combines it in tiles of pixels
with a sorting network of numpy ``minimum``/``maximum`` calls (NaN counted and
set to +inf, so the first values of each sorted column are its non-NaN values
in order). Each of ``nthreads`` threads holds one section and a working copy
of at most that size, so the resident memory while the median is evaluated is
at most ``buffer_size`` bytes (and a few kB) plus the output frame. This module does not
import numba: its process's peak stays that of numpy alone.

Frames are counted against ``full_shape[0]``, so any buffer size works with any
number of frames (stcal 1.20 counts frames against file sections and fails when
there are more frames than sections).
"""

from __future__ import annotations

import errno
import functools
import logging
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["MedianComputer", "nanmedian_frames"]

log = logging.getLogger(__name__)

_ONE_MB = 1 << 20
# Bytes of one section (all frames) read at once by one thread: larger reads gain nothing.
_SECTION_MAX = 4 * _ONE_MB
# Bytes of one tile's working copy: small enough to stay in cache across the network's passes.
_TILE_MAX = 4 * _ONE_MB
# Above this many frames numpy's sort of each tile beats the sorting network's n log^2 n calls
# (per pixel, 40 against 78 ns at 20 frames, 213 against 175 ns at 64).
_NETWORK_MAX_FRAMES = 48


@dataclass(frozen=True)
class _Layout:
    """Sections of rows such that one section of every frame and its working copy fit the buffer."""

    nframes: int
    nrows: int
    ncols: int
    itemsize: int
    section_rows: int
    nthreads: int

    @property
    def nsections(self) -> int:
        return math.ceil(self.nrows / self.section_rows) if self.nrows else 0

    @property
    def section_bytes(self) -> int:
        return self.nframes * self.section_rows * self.ncols * self.itemsize

    def rows(self, section: int) -> tuple[int, int]:
        r0 = section * self.section_rows
        return r0, min(r0 + self.section_rows, self.nrows)

    def offset(self, section: int, frame: int) -> int:
        """Byte offset of ``frame``'s part of ``section`` in the file."""
        r0, r1 = self.rows(section)
        row_bytes = self.ncols * self.itemsize
        return (self.nframes * r0 + frame * (r1 - r0)) * row_bytes


def _plan(full_shape: tuple[int, int, int], itemsize: int, buffer_size: int, nthreads: int) -> _Layout:
    """Section rows and threads: each thread holds a section and a working copy of at most its size."""
    nframes, nrows, ncols = full_shape
    row_all_frames = max(1, nframes * ncols * itemsize)
    if buffer_size <= 0:
        buffer_size = nrows * ncols * itemsize  # stcal's default: one frame
    nthreads = int(max(1, min(nthreads, buffer_size // (2 * row_all_frames))))
    section_rows = min(buffer_size // (2 * nthreads), _SECTION_MAX) // row_all_frames
    if section_rows < 1:
        log.warning(
            "buffer_size %d bytes cannot hold one row of %d frames and its working copy; using %d bytes",
            buffer_size,
            nframes,
            2 * row_all_frames,
        )
        section_rows = 1
    section_rows = int(min(section_rows, max(nrows, 1)))
    nsections = math.ceil(nrows / section_rows) if nrows else 0
    return _Layout(nframes, nrows, ncols, itemsize, section_rows, int(max(1, min(nthreads, nsections))))


def _default_threads() -> int:
    """The cores this process may use from the main thread; 1 inside a worker thread (a Dask task)."""
    if threading.current_thread() is not threading.main_thread():
        return 1
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class MedianComputer:
    """NaN-ignoring median of a stack of 2-D frames, in memory or on disk.

    Parameters
    ----------
    full_shape : tuple of int
        ``(nframes, ny, nx)``: the most frames that will be appended and their shape.
    in_memory : bool
        Keep the whole stack in memory (``True``) or in a temporary file (``False``).
    buffer_size : int, optional
        On disk only: bytes of the stack held in memory at once while the median
        is evaluated (sections being read and their working copies, all threads
        together; the output frame comes on top). Default (``None`` or 0): the
        size of one frame, as in stcal. A buffer smaller than one row of every
        frame and its working copy is raised to that, with a logged warning.
    dtype : str or numpy.dtype, default "float32"
        Storage and result type. Appended frames are cast to it (``same_kind``).
    tempdir : str or path-like, default ""
        Parent of the temporary directory (on disk only); ``""`` is the current
        working directory (stcal's default) and ``None`` the system default.
    nthreads : int, optional
        Threads that evaluate the median (keyword only). Default: the cores this
        process may use when called from the main thread, 1 when called from
        another thread (a Dask task, whose scheduler already uses the cores).
        On disk, fewer threads are used when the buffer holds too few sections.

    Notes
    -----
    ``evaluate`` returns ``np.nanmedian`` of the appended frames along the first
    axis (bit-identical for float32 and float64, except that a median of zeros
    of both signs may differ from numpy's in its sign); frames that were never
    appended do not take part. In-memory mode needs ``idx`` in ``append``;
    on disk, frames without ``idx`` take the next free slot. The temporary files
    are removed by :meth:`evaluate` (on disk), by :meth:`cleanup`, on leaving
    a ``with`` block, or when the constructor fails.
    """

    def __init__(self, full_shape, in_memory, buffer_size=None, dtype="float32", tempdir="", *, nthreads=None):
        shape = tuple(int(s) for s in full_shape)
        if len(shape) != 3 or min(shape) < 0 or shape[0] < 1:
            msg = f"full_shape must be (nframes >= 1, ny, nx); got {tuple(full_shape)!r}"
            raise ValueError(msg)
        self.dtype = np.dtype(dtype)
        if self.dtype.kind not in "fiu":
            msg = f"dtype must be a real numeric type; got {self.dtype}"
            raise TypeError(msg)
        if buffer_size is not None and (not isinstance(buffer_size, (int, np.integer)) or buffer_size < 0):
            msg = f"buffer_size must be a non-negative integer number of bytes or None; got {buffer_size!r}"
            raise ValueError(msg)
        if nthreads is not None and (not isinstance(nthreads, (int, np.integer)) or nthreads < 1):
            msg = f"nthreads must be a positive integer or None; got {nthreads!r}"
            raise ValueError(msg)
        self.full_shape = shape
        self.in_memory = bool(in_memory)
        self.buffer_size = int(buffer_size or 0)
        self.nthreads = int(nthreads) if nthreads is not None else _default_threads()
        self._filled = np.zeros(shape[0], dtype=bool)
        self._next = 0
        self._closed = False
        self._stack = None
        self._tmpdir = None
        self._fd = None
        if self.in_memory:
            self._stack = np.full(shape, np.nan, dtype=self.dtype) if self.dtype.kind == "f" else np.zeros(shape, self.dtype)
            return
        self.layout = _plan(shape, self.dtype.itemsize, self.buffer_size, self.nthreads)
        self.nthreads = self.layout.nthreads
        self.buffer_size = max(self.buffer_size, 2 * self.nthreads * self.layout.section_bytes)
        from daskcal.io._atomic import temporary_directory

        parent = os.getcwd() if tempdir == "" else tempdir
        self._tmpdir = temporary_directory(parent, prefix="daskcal-median-")
        try:
            self._path = Path(self._tmpdir.name) / "stack.bin"
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            _reserve(self._fd, math.prod(shape) * self.dtype.itemsize, self._path)
        except BaseException:
            self.cleanup()
            raise
        log.info(
            "median of up to %d frames %s in %d sections of %d rows, %d threads (buffer %.1f MB)",
            shape[0],
            shape[1:],
            self.layout.nsections,
            self.layout.section_rows,
            self.nthreads,
            self.buffer_size / _ONE_MB,
        )

    # -- context manager -------------------------------------------------
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cleanup()

    def __del__(self):  # best effort; files also go with the temporary directory
        try:
            self.cleanup()
        except Exception:  # noqa: BLE001
            pass

    # -- public API -------------------------------------------------------
    def append(self, data, idx=None):
        """Add one frame.

        Parameters
        ----------
        data : array_like, shape ``full_shape[1:]``
            The frame; NaN marks missing values. Not modified.
        idx : int, optional
            Slot ``0 <= idx < full_shape[0]``. Required in memory; on disk,
            default the next free slot. A slot may be written only once.
        """
        self._check_open()
        arr = np.asarray(data)
        if arr.shape != self.full_shape[1:]:
            msg = f"data shape {arr.shape} does not match frame shape {self.full_shape[1:]}"
            raise ValueError(msg)
        if not np.can_cast(arr.dtype, self.dtype, casting="same_kind"):
            msg = f"data dtype {arr.dtype} cannot be stored as {self.dtype}"
            raise TypeError(msg)
        idx = self._slot(idx)
        if self.in_memory:
            self._stack[idx] = arr
        else:
            lay = self.layout
            for s in range(lay.nsections):
                r0, r1 = lay.rows(s)
                part = np.ascontiguousarray(arr[r0:r1], dtype=self.dtype)  # a view unless cast
                _pwrite_all(self._fd, memoryview(part).cast("B"), lay.offset(s, idx))
        self._filled[idx] = True

    def evaluate(self):
        """Return the median of the appended frames, ``np.nanmedian(stack, axis=0)``.

        Returns
        -------
        numpy.ndarray, shape ``full_shape[1:]``
            Median in ``dtype`` (float64 for an integer ``dtype``); NaN where no
            appended frame has a non-NaN value. On disk, the temporary files are
            removed afterwards.
        """
        self._check_open()
        frames = tuple(int(f) for f in np.flatnonzero(self._filled))
        if not frames:
            msg = "no frames were appended; nothing to take the median of"
            raise ValueError(msg)
        try:
            if self.in_memory:
                return self._evaluate_in_memory(frames)
            return self._evaluate_on_disk(frames)
        finally:
            if not self.in_memory:
                self.cleanup()

    def cleanup(self):
        """Release the stack and remove temporary files; the instance is unusable afterwards."""
        if self._closed:
            return
        self._closed = True
        self._stack = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    # -- internals --------------------------------------------------------
    def _check_open(self):
        if self._closed:
            msg = "this MedianComputer was evaluated or cleaned up; create a new one"
            raise RuntimeError(msg)

    def _slot(self, idx):
        n = self.full_shape[0]
        if idx is None:
            if self.in_memory:
                msg = "idx must be given when the median is computed in memory"
                raise ValueError(msg)
            while self._next < n and self._filled[self._next]:
                self._next += 1
            idx = self._next
            if idx >= n:
                msg = f"too many frames: full_shape allows {n}"
                raise IndexError(msg)
        idx = int(idx)
        if not 0 <= idx < n:
            msg = f"idx must be in [0, {n}); got {idx}"
            raise IndexError(msg)
        if self._filled[idx]:
            msg = f"frame {idx} was already appended"
            raise ValueError(msg)
        return idx

    def _out(self):
        return np.empty(self.full_shape[1:], dtype=self.dtype if self.dtype.kind == "f" else np.float64)

    def _evaluate_in_memory(self, frames):
        out = self._out()
        flat = self._stack.reshape(self.full_shape[0], -1)
        out_flat = out.reshape(-1)
        tile = _tile_pixels(len(frames), self.dtype.itemsize, flat.shape[1])
        nblocks = math.ceil(flat.shape[1] / (4 * tile)) if tile else 0

        def work(blocks):
            scratch = _Scratch(len(frames), tile, self.dtype) if self.dtype.kind == "f" else None
            for b in blocks:
                p0, p1 = 4 * tile * b, min(4 * tile * (b + 1), flat.shape[1])
                _median_block(flat[:, p0:p1], frames, out_flat[p0:p1], scratch)

        _run(work, nblocks, self.nthreads)
        return out

    def _evaluate_on_disk(self, frames):
        lay = self.layout
        out = self._out()
        npix = lay.section_rows * lay.ncols
        tile = _tile_pixels(len(frames), lay.itemsize, min(npix, lay.section_bytes // _scratch_bytes(len(frames), lay.itemsize)))

        def work(sections):
            buf = np.empty(lay.nframes * npix, dtype=self.dtype)
            scratch = _Scratch(len(frames), tile, self.dtype) if self.dtype.kind == "f" else None
            for s in sections:
                r0, r1 = lay.rows(s)
                section = buf[: lay.nframes * (r1 - r0) * lay.ncols].reshape(lay.nframes, -1)
                _pread_exact(self._fd, memoryview(section).cast("B"), lay.offset(s, 0))
                _median_block(section, frames, out[r0:r1].reshape(-1), scratch)

        _run(work, lay.nsections, self.nthreads)
        return out


# -- the median of a block of pixels ------------------------------------------------------


def nanmedian_frames(stack, out=None):
    """``np.nanmedian(stack, axis=0)`` of a float32 or float64 stack, serially, tile by tile.

    Parameters
    ----------
    stack : ndarray, shape (nframes, ...), float32 or float64
        Frames to combine; NaN marks a missing value. Not modified.
    out : ndarray, optional
        C-contiguous output of shape ``stack.shape[1:]`` and the dtype of ``stack``.

    Returns
    -------
    ndarray
        The median; NaN where every frame is NaN. Working memory: about
        ``_TILE_MAX`` bytes besides ``out``; no threads (a Dask task's own).
    """
    n = stack.shape[0]
    if out is None:
        out = np.empty(stack.shape[1:], stack.dtype)
    flat, out_flat = stack.reshape(n, -1), out.reshape(-1)
    if flat.shape[1]:
        tile = _tile_pixels(n, stack.dtype.itemsize, flat.shape[1])
        _median_block(flat, tuple(range(n)), out_flat, _Scratch(n, tile, stack.dtype))
    return out


def _scratch_bytes(n: int, itemsize: int) -> int:
    """Working bytes per pixel of a tile: the arrays of ``_Scratch`` and the count cast to indices."""
    return (n + 5) * itemsize + n + 1 + 3 * np.dtype(np.intp).itemsize


def _tile_pixels(n: int, itemsize: int, limit: int) -> int:
    """Pixels per tile: the working copy fits ``_TILE_MAX`` bytes and ``limit`` pixels."""
    return int(max(1, min(limit, _TILE_MAX // _scratch_bytes(n, itemsize))))


class _Scratch:
    """One thread's working arrays for tiles of up to ``size`` pixels of ``n`` frames."""

    def __init__(self, n: int, size: int, dtype: np.dtype):
        self.size = size
        # the values of n frames, a spare row for the network and a row of NaN (the median of no values)
        self.rows = np.empty((n + 2, size), dtype)
        self.rows[n + 1] = np.nan
        self.isnan = np.empty((n, size), bool)
        self.count = np.empty(size, np.uint8 if n < 256 else np.intp)
        self.index = np.empty(size, np.intp)
        self.pixel = np.arange(size, dtype=np.intp)
        self.inf = np.full(size, np.inf, dtype)  # an array, not a scalar: numpy's SIMD loop, 2.5x faster
        self.low = np.empty(size, dtype)
        self.high = np.empty(size, dtype)


@functools.lru_cache(maxsize=64)
def _median_network(n: int) -> tuple[tuple[int, int], ...]:
    """Comparators ``(i, j)``, ``i < j``, that put the smallest ``n // 2 + 1`` of ``n`` values in order.

    Batcher's odd-even merge sort for the next power of two, less the comparators
    that touch positions ``>= n`` (which hold +inf padding) and those whose results
    no later comparator or output position reads.
    """
    size = 1 << max(0, (n - 1).bit_length())
    pairs = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    a, b = i + j, i + j + k
                    if a // (2 * p) == b // (2 * p) and b < n:
                        pairs.append((a, b))
            k //= 2
        p *= 2
    needed = set(range(n // 2 + 1))
    kept = []
    for a, b in reversed(pairs):
        if a in needed or b in needed:
            kept.append((a, b))
            needed.update((a, b))
    return tuple(reversed(kept))


def _median_block(stack, frames, out, scratch):
    """``np.nanmedian`` over the ``frames`` rows of ``stack`` (nall, npix) into ``out`` (npix,), tile by tile."""
    if stack.dtype.kind != "f":
        out[...] = np.median(stack[list(frames)], axis=0)
        return
    for p0 in range(0, stack.shape[1], scratch.size):
        p1 = min(p0 + scratch.size, stack.shape[1])
        _median_tile(stack[:, p0:p1], frames, out[p0:p1], scratch)


def _median_tile(stack, frames, out, scratch):
    """Median of one tile of pixels (at most ``scratch.size``), bit-identical to ``np.nanmedian``.

    Each column's m non-NaN values are put in order (NaN counted and replaced by
    +inf, which sorts after them and ties only with equal values); the median is
    ``(v[(m - 1) // 2] + v[m // 2]) / 2`` in the array's float type, the sum and
    halving numpy's median does; NaN where m is 0.
    """
    n, size = len(frames), out.shape[0]
    rows = [scratch.rows[k, :size] for k in range(n + 1)]
    isnan, count, inf = scratch.isnan[:, :size], scratch.count[:size], scratch.inf[:size]
    for k, f in enumerate(frames):  # row by row: numpy buffers 2-D calls on strided views
        np.isnan(stack[f], out=isnan[k])
        np.fmin(stack[f], inf, out=rows[k])  # NaN -> +inf
    np.add.reduce(isnan.view(np.uint8), axis=0, dtype=count.dtype, out=count)
    np.subtract(n, count, out=count)  # m: the non-NaN values
    if n <= _NETWORK_MAX_FRAMES:
        slot = list(range(n))  # slot[k]: the row holding the k-th smallest so far
        spare = n
        for i, j in _median_network(n):
            a, b = rows[slot[i]], rows[slot[j]]
            np.minimum(a, b, out=rows[spare])
            np.maximum(a, b, out=b)
            slot[i], spare = spare, slot[i]
    else:
        scratch.rows[:n, :size].sort(axis=0)
        slot = list(range(n))
    # flat index of the row holding the k-th smallest value, for k = (m - 1) // 2 and m // 2 of
    # every count m of non-NaN values; m = 0 points at the row of NaN
    m = np.arange(n + 1)
    starts = np.array([*slot[: n // 2 + 1], n + 1], dtype=np.intp) * scratch.rows.shape[1]
    first_low = starts[np.where(m > 0, (m - 1) // 2, -1)]
    first_high = starts[np.where(m > 0, m // 2, -1)]
    flat = scratch.rows.reshape(-1)
    pixel, index = scratch.pixel[:size], scratch.index[:size]
    low, high = scratch.low[:size], scratch.high[:size]
    for first, value in ((first_low, low), (first_high, high)):
        first.take(count, out=index, mode="clip")
        np.add(index, pixel, out=index)
        flat.take(index, out=value, mode="clip")
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf is NaN; x + x may overflow, as in numpy
        np.add(low, high, out=out)
    np.multiply(out, 0.5, out=out)  # exact halving: numpy's sum / 2


def _run(work, nitems, nthreads):
    """Call ``work(items)`` in ``nthreads`` threads that share the items ``range(nitems)``."""
    if nitems == 0:
        return
    nthreads = max(1, min(nthreads, nitems))
    if nthreads == 1:
        work(iter(range(nitems)))
        return
    lock = threading.Lock()
    todo = iter(range(nitems))
    failed = threading.Event()

    def items():
        while not failed.is_set():
            with lock:
                item = next(todo, None)
            if item is None:
                return
            yield item

    def guarded():
        try:
            work(items())
        except BaseException:
            failed.set()
            raise

    with ThreadPoolExecutor(nthreads, thread_name_prefix="daskcal-median") as pool:
        futures = [pool.submit(guarded) for _ in range(nthreads)]
        for f in futures:
            f.result()


# -- file access -------------------------------------------------------------------------


def _reserve(fd, nbytes, path):
    """Give the file its full size, with its disk blocks allocated where the file system can."""
    if nbytes == 0:
        return
    if not hasattr(os, "posix_fallocate"):  # macOS
        os.ftruncate(fd, nbytes)
        return
    try:
        os.posix_fallocate(fd, 0, nbytes)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise OSError(exc.errno, f"cannot reserve {nbytes / _ONE_MB:.1f} MB for the median's stack", str(path)) from exc
        os.ftruncate(fd, nbytes)


def _pwrite_all(fd, buf, offset):
    view = memoryview(buf)
    while view.nbytes:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _pread_exact(fd, buf, offset):
    """Fill ``buf`` from ``fd`` at ``offset`` (the file was reserved at its full size)."""
    view = memoryview(buf)
    while view.nbytes:
        n = os.preadv(fd, [view], offset) if hasattr(os, "preadv") else _pread_into(fd, view, offset)
        if n == 0:
            msg = f"the median's stack file ended {view.nbytes} bytes early"
            raise OSError(errno.EIO, msg)
        view = view[n:]
        offset += n


def _pread_into(fd, view, offset):
    """``os.preadv`` for a platform without it: read into ``view`` at ``offset``; bytes read."""
    with os.fdopen(os.dup(fd), "rb", buffering=0) as f:
        f.seek(offset)
        return f.readinto(view)
