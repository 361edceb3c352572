"""Median of a stack of frames, in memory or through a bounded on-disk buffer.

:class:`MedianComputer` has the interface of stcal's
``stcal.outlier_detection.median.MedianComputer`` (``append``, ``evaluate``,
``cleanup``) and returns exactly ``np.nanmedian(stack, axis=0)``.

On disk, the frames go into one pre-sized file laid out section by section
(a section is a band of rows; within a section, frame after frame), written
with positioned writes and never memory-mapped, so the resident memory is one
section of the whole stack while the median is evaluated -- at most
``buffer_size`` bytes -- plus the output frame. Frames are counted against
``full_shape[0]``, so any buffer size works with any number of frames (stcal
1.20 counts frames against file sections and fails when there are more frames
than sections).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from daskcal.image._median_kernels import nanmedian_stack

__all__ = ["MedianComputer", "nanmedian_stack"]

log = logging.getLogger(__name__)

_ONE_MB = 1 << 20


@dataclass(frozen=True)
class _Layout:
    """Sections of rows such that one section of every frame fits the buffer."""

    nframes: int
    nrows: int
    ncols: int
    itemsize: int
    section_rows: int

    @property
    def nsections(self) -> int:
        return math.ceil(self.nrows / self.section_rows) if self.nrows else 0

    def rows(self, section: int) -> tuple[int, int]:
        r0 = section * self.section_rows
        return r0, min(r0 + self.section_rows, self.nrows)

    def offset(self, section: int, frame: int) -> int:
        """Byte offset of ``frame``'s part of ``section`` in the file."""
        r0, r1 = self.rows(section)
        row_bytes = self.ncols * self.itemsize
        return (self.nframes * r0 + frame * (r1 - r0)) * row_bytes


def _plan(full_shape: tuple[int, int, int], itemsize: int, buffer_size: int) -> _Layout:
    nframes, nrows, ncols = full_shape
    row_all_frames = max(1, nframes * ncols * itemsize)
    if buffer_size <= 0:
        buffer_size = nrows * ncols * itemsize  # stcal's default: one frame
    section_rows = buffer_size // row_all_frames
    if section_rows < 1:
        log.warning(
            "buffer_size %.3f MB cannot hold one row of %d frames; using %.3f MB",
            buffer_size / _ONE_MB,
            nframes,
            row_all_frames / _ONE_MB,
        )
        section_rows = 1
    section_rows = int(min(section_rows, max(nrows, 1)))
    return _Layout(nframes, nrows, ncols, itemsize, section_rows)


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
        is evaluated. Default (``None`` or 0): the size of one frame, as in stcal.
        A buffer smaller than one row of every frame is raised to that, with a
        logged warning.
    dtype : str or numpy.dtype, default "float32"
        Storage and result type. Appended frames are cast to it (``same_kind``).
    tempdir : str or path-like, default ""
        Parent of the temporary directory (on disk only); ``""`` is the current
        working directory (stcal's default) and ``None`` the system default.

    Notes
    -----
    ``evaluate`` returns ``np.nanmedian`` of the appended frames along the first
    axis (bit-identical for float32 and float64); frames that were never
    appended do not take part. In-memory mode needs ``idx`` in ``append``;
    on disk, frames without ``idx`` take the next free slot. The temporary files
    are removed by :meth:`evaluate` (on disk), by :meth:`cleanup`, or on leaving
    a ``with`` block.
    """

    def __init__(self, full_shape, in_memory, buffer_size=None, dtype="float32", tempdir=""):
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
        self.full_shape = shape
        self.in_memory = bool(in_memory)
        self.buffer_size = int(buffer_size or 0)
        self._filled = np.zeros(shape[0], dtype=bool)
        self._next = 0
        self._closed = False
        self._stack = None
        self._tmpdir = None
        self._fd = None
        if self.in_memory:
            self._stack = np.full(shape, np.nan, dtype=self.dtype) if self.dtype.kind == "f" else np.zeros(shape, self.dtype)
            return
        self.layout = _plan(shape, self.dtype.itemsize, self.buffer_size)
        self.buffer_size = max(self.buffer_size, self.layout.section_rows * shape[0] * shape[2] * self.dtype.itemsize)
        from daskcal.io._atomic import temporary_directory

        parent = os.getcwd() if tempdir == "" else tempdir
        self._tmpdir = temporary_directory(parent, prefix="daskcal-median-")
        self._path = Path(self._tmpdir.name) / "stack.bin"
        self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        log.info(
            "median of up to %d frames %s in %d sections of %d rows (buffer %.1f MB)",
            shape[0],
            shape[1:],
            self.layout.nsections,
            self.layout.section_rows,
            self.buffer_size / _ONE_MB,
        )

    # -- context manager -------------------------------------------------
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cleanup()

    def __del__(self):  # best effort; files also go with the TemporaryDirectory
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
                part = np.ascontiguousarray(arr[r0:r1], dtype=self.dtype)
                _pwrite_all(self._fd, memoryview(part).cast("B"), lay.offset(s, idx))
        self._filled[idx] = True

    def evaluate(self):
        """Return the median of the appended frames, ``np.nanmedian(stack, axis=0)``.

        Returns
        -------
        numpy.ndarray, shape ``full_shape[1:]``
            Median in ``dtype`` (float64 for an integer ``dtype``); NaN where no
            appended frame has a finite value. On disk, the temporary files are
            removed afterwards.
        """
        self._check_open()
        frames = np.flatnonzero(self._filled)
        if frames.size == 0:
            msg = "no frames were appended; nothing to take the median of"
            raise ValueError(msg)
        if self.in_memory:
            stack = self._stack if frames.size == self.full_shape[0] else self._stack[frames]
            return nanmedian_stack(stack)
        try:
            return self._evaluate_on_disk(frames)
        finally:
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

    def _evaluate_on_disk(self, frames):
        lay = self.layout
        out_dtype = self.dtype if self.dtype.kind == "f" else np.dtype(np.float64)
        out = np.empty(self.full_shape[1:], dtype=out_dtype)
        for s in range(lay.nsections):
            r0, r1 = lay.rows(s)
            section = np.empty((frames.size, r1 - r0, lay.ncols), dtype=self.dtype)
            if frames.size == lay.nframes:  # one contiguous read
                _pread_into(self._fd, memoryview(section).cast("B"), lay.offset(s, 0))
            else:
                for k, f in enumerate(frames):
                    _pread_into(self._fd, memoryview(section[k]).cast("B"), lay.offset(s, int(f)))
            nanmedian_stack(section, out=out[r0:r1])
            del section
        return out


def _pwrite_all(fd, buf, offset):
    view = memoryview(buf)
    while view.nbytes:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _pread_into(fd, buf, offset):
    """Fill ``buf`` from ``fd`` at ``offset``; bytes past the end of file read as zeros."""
    view = memoryview(buf)
    with os.fdopen(os.dup(fd), "rb", buffering=0) as f:
        f.seek(offset)
        while view.nbytes:
            n = f.readinto(view)
            if not n:
                view[:] = b"\x00" * view.nbytes
                break
            view = view[n:]
