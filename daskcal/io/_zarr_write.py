"""Zarr chunks written by daskcal's own tasks, and arrays known to be slices of one stacked array.

Writing through zarr-python 3 (``zarr.Array.__setitem__``) runs each write's
Python work and its copy into a chunk buffer on zarr's one event-loop thread
(``zarr_io``), so dask threads or worker processes that write at once take
turns there (the same limit :mod:`daskcal.io._zarr_read` removes for reads).
:class:`ChunkWriter` encodes a block's chunks with numcodecs (the library
zarr-python itself calls) in the calling thread and writes the chunk files.
It handles the layouts :func:`daskcal.io._zarr_read.chunk_layout` accepts (a
local, unsharded v3 array, native byte order, at most one Blosc, Zstd or Gzip
compressor) and blocks that start on chunk boundaries and end on one or at the
array's end; anything else is written through zarr-python.

Every chunk is written, including one equal to the fill value (zarr-python's
default, ``write_empty_chunks=False``, leaves those out): the readers of
:mod:`daskcal.io._zarr_read` take a missing chunk for a lost one and refuse it,
unless the array declares itself sparse (``"daskcal:sparse": true``).

:func:`register_slice` records that a dask array is one slice of the leading
axis of another (for example each product of :func:`daskcal.fit_ramps` is a
slice of one stacked array of every product plane), so a writer can take the
stacked block once per chunk instead of one sliced block per variable: on a
distributed cluster every sliced block is its own task (about 1 ms each).
"""

from __future__ import annotations

import functools
import itertools
import os
from dataclasses import dataclass

import numpy as np

from daskcal.io._zarr_read import ArrayNotes, ChunkLayout, ZarrSource, layout_and_codec

__all__ = ["ChunkWriter", "SliceOf", "chunk_writer", "register_slice", "slice_of", "take_block", "take_slice"]

#: The :class:`SliceOf` of each registered array (see :func:`slice_of`).
_SLICES = ArrayNotes(4096)


@dataclass(frozen=True)
class SliceOf:
    """An array that is ``source[index]`` viewed as ``dtype`` (``index`` selects on the leading axis).

    Attributes
    ----------
    source : dask.array.Array
        The stacked array; its last two axes are chunked as the slice's.
    index : int or slice
        Selection on ``source``'s leading axis.
    dtype : numpy.dtype
        The slice's dtype (same item size as ``source``'s: a view, not a cast).
    """

    source: object
    index: int | slice
    dtype: np.dtype


def register_slice(arr, source, index: int | slice, dtype=None) -> None:
    """Record that dask array ``arr`` is ``source[index].view(dtype)`` (see :class:`SliceOf`)."""
    dtype = np.dtype(dtype if dtype is not None else source.dtype)
    if dtype.itemsize != np.dtype(source.dtype).itemsize or source.chunks[-2:] != arr.chunks[-2:]:
        msg = "a registered slice must be a view of the source with the same (y, x) chunks"
        raise ValueError(msg)
    _SLICES.add(arr.name, SliceOf(source, index, dtype))


def take_block(block: np.ndarray, index, dtype: np.dtype) -> np.ndarray:
    """A slice's part of one block of its source: ``block[index]`` viewed as ``dtype`` (no copy)."""
    return block[index].view(dtype)


def take_slice(source, index: int | slice, dtype=None):
    """``source[index].view(dtype)`` as a dask array with one task per ``(y, x)`` chunk, registered
    with :func:`register_slice`.

    ``source`` must have one chunk on its leading axis. Dask's ``source[index].view(dtype)``
    would take two tasks per chunk (slice, then view); on a cluster each task costs about a
    millisecond of scheduler and worker time.
    """
    import dask.array as da
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    if source.numblocks[0] != 1:
        msg = "take_slice needs the source's leading axis in one chunk"
        raise ValueError(msg)
    dtype = np.dtype(dtype if dtype is not None else source.dtype)
    lead = np.empty(source.shape[0], dtype=bool)[index].shape  # () for an int, (n,) for a slice
    name = "take-" + tokenize(source, index, dtype)
    zeros = (0,) * (source.ndim - 3)
    dsk = {(name, *(0,) * len(lead), *zeros, i, j): (take_block, (source.name, 0, *zeros, i, j), index, dtype)
           for i in range(source.numblocks[-2]) for j in range(source.numblocks[-1])}
    chunks = (*((n,) for n in lead), *source.chunks[1:])
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[source])
    out = da.Array(graph, name, chunks=chunks, dtype=dtype, meta=np.empty((0,) * len(chunks), dtype=dtype))
    register_slice(out, source, index, dtype)
    return out


def slice_of(arr) -> SliceOf | None:
    """The :class:`SliceOf` registered for dask array ``arr`` (by name), else None."""
    return _SLICES.get(arr)


def _compressor(codec):
    """``compress(ndarray) -> bytes-like`` for a Zarr v3 bytes-to-bytes codec numcodecs encodes, else None."""
    import numcodecs
    from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

    if isinstance(codec, BloscCodec):
        shuffle = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[codec.shuffle.value]
        return numcodecs.Blosc(cname=codec.cname.value, clevel=codec.clevel, shuffle=shuffle,
                               blocksize=codec.blocksize, typesize=codec.typesize).encode
    if isinstance(codec, ZstdCodec):
        return numcodecs.Zstd(level=codec.level, checksum=codec.checksum).encode
    if isinstance(codec, GzipCodec):
        return numcodecs.GZip(level=codec.level).encode
    return None


@dataclass(frozen=True)
class ChunkWriter:
    """Writes whole chunks of a Zarr v3 array in a local directory from the calling thread.

    Attributes
    ----------
    layout : daskcal.io._zarr_read.ChunkLayout
        Where the files go, the chunk grid, dtype and fill value.
    compress : callable or None
        ``compress(chunk) -> bytes``; None when chunks are stored uncompressed.
    """

    layout: ChunkLayout
    compress: object

    @property
    def dtype(self) -> np.dtype:
        """In-memory dtype of the array (native byte order)."""
        return self.layout.dtype

    def accepts(self, start: tuple[int, ...], block: np.ndarray) -> bool:
        """Whether :meth:`write` takes ``block`` at ``start``: this array's dtype, whole chunks."""
        return block.dtype == self.dtype and self.covers(start, block.shape)

    def covers(self, start: tuple[int, ...], shape: tuple[int, ...]) -> bool:
        """Whether a block at ``start`` of ``shape`` is made of whole chunks (or ends at the array's end)."""
        meta = self.layout.meta
        chunk = meta.chunk_grid.chunk_shape
        if len(start) != len(chunk) or len(shape) != len(chunk):
            return False
        return all(s % c == 0 and s + n <= size and ((s + n) % c == 0 or s + n == size) and n > 0
                   for s, n, c, size in zip(start, shape, chunk, meta.shape, strict=True))

    def write(self, start: tuple[int, ...], block: np.ndarray, *, keep_open: bool = False) -> list:
        """Write ``block`` (its dtype must be this array's) at ``start`` (see :meth:`covers`).

        With ``keep_open``, the chunk files written are left open and their descriptors returned (for
        :func:`daskcal.io._writeback.release`, which closes them), else closed (and ``[]`` returned).
        """
        root, meta = self.layout.root, self.layout.meta
        if not self.accepts(start, block):
            msg = f"{root}: cannot write a {block.dtype} block of shape {block.shape} at {start}"
            raise ValueError(msg)
        chunk = meta.chunk_grid.chunk_shape
        spans = [range(s // c, -(-(s + n) // c)) for s, n, c in zip(start, block.shape, chunk, strict=True)]
        padded = None
        written = []
        for coords in itertools.product(*spans):
            inner = tuple(slice(k * c - s, min((k + 1) * c - s, n))
                          for k, c, s, n in zip(coords, chunk, start, block.shape, strict=True))
            piece = block[inner]
            if piece.shape != tuple(chunk):  # an edge chunk: Zarr stores it whole, padded with the fill value
                if padded is None:
                    padded = np.empty(chunk, dtype=self.dtype)
                padded[...] = meta.fill_value
                padded[tuple(slice(0, n) for n in piece.shape)] = piece
                piece = padded
            piece = np.ascontiguousarray(piece)
            data = memoryview(piece.reshape(-1).view(np.uint8)) if self.compress is None else self.compress(piece)
            path = root / meta.encode_chunk_key(coords)
            if not path.parent.is_dir():
                if not root.is_dir():  # never re-create a store that a cancelled run has removed
                    msg = f"{root}: the array being written no longer exists (the run was cancelled?)"
                    raise FileNotFoundError(msg)
                path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = _write_file(path, data)
            except OSError as exc:  # name the file (a full disk says only "No space left on device")
                for other in written:
                    os.close(other)
                raise type(exc)(exc.errno, exc.strerror, str(path)) from None
            if keep_open:
                written.append(fd)
            else:
                os.close(fd)
        return written


def _write_file(path, data) -> int:
    """Create or truncate ``path``, write ``data`` (a bytes-like object) whole; the descriptor, open."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        view = memoryview(data).cast("B")
        while view:
            view = view[os.write(fd, view):]
    except BaseException:
        os.close(fd)
        raise
    return fd


def chunk_writer(source: ZarrSource) -> ChunkWriter | None:
    """A :class:`ChunkWriter` for the array ``source`` names if its layout allows it, else None."""
    return _chunk_writer(source.store, source.name, source.version)


@functools.lru_cache(maxsize=256)
def _chunk_writer(store: str, name: str, version: str) -> ChunkWriter | None:
    found = layout_and_codec(store, name, version, _compressor)
    return None if found is None else ChunkWriter(*found)
