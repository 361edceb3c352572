"""Dask arrays read from Zarr by daskcal's own tasks (graph layer).

``xr.open_zarr`` gives dask arrays whose tasks each return a new chunk. The
arrays built here read the same values (for variables that Zarr stores without
any CF decoding), and they remember where they come from: a graph that knows
the :class:`ZarrSource` of an array can read a chunk straight into a buffer of
its own (:meth:`ZarrSource.read_into`), for example the middle of a halo'd
block, instead of reading it into a new array and copying it there.

Chunks are read synchronously in the calling thread where the array allows it
(:class:`_ChunkFiles`: a local store, no sharding or array-to-array codec, and at
most one Blosc, Zstd or Gzip compressor, decoded by numcodecs, the library
zarr-python itself calls). zarr-python 3 runs every read's Python work, and the
copy of each decoded chunk into its destination, on its one event-loop thread
(``zarr_io``), so two dask threads reading at once take turns there, and that
thread and zarr's decoding pool take CPU from the kernels. Measured on the
detector1 benchmark (2048^2 x 10 groups, 512^2 chunks, 2 cores): edge and core
reads took 0.21 s on one thread and 0.38 s summed over two; read here, 0.11 and
0.13 s. Any other array is read through zarr-python. (Decoding in the task's own
thread needs the workers' ``glibc.malloc.tcache_count=0``, see
``daskcal.cluster.WORKER_ENVIRON``: with glibc's per-thread cache the heap grew by
~60 MB more.)
"""

from __future__ import annotations

import functools
import itertools
import os
import sys
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

__all__ = ["ArrayNotes", "ChunkLayout", "ZarrSource", "chunk_layout", "layout_and_codec", "read_as_dask", "read_regions", "zarr_source"]


class ArrayNotes:
    """Facts about dask arrays, kept by array name for the ``maxsize`` arrays noted last.

    Any operation on a dask array gives it a new name, so a note applies only to the
    array exactly as it was noted.
    """

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._notes: OrderedDict[str, object] = OrderedDict()

    def add(self, name: str, note) -> None:
        """Note ``note`` for the array called ``name`` (forgetting the oldest beyond ``maxsize``)."""
        self._notes[name] = note
        self._notes.move_to_end(name)
        while len(self._notes) > self.maxsize:
            self._notes.popitem(last=False)

    def get(self, arr):
        """The note for dask array ``arr`` (by its name), else None."""
        return self._notes.get(getattr(arr, "name", None))


#: The :class:`ZarrSource` of each array :func:`read_as_dask` made (see :func:`zarr_source`).
_SOURCES = ArrayNotes(1024)


@dataclass(frozen=True)
class ZarrSource:
    """One array of a Zarr (v3) store on disk.

    Attributes
    ----------
    store : str
        Path of the store (a directory).
    name : str
        Name of the array in the store's root group.
    version : str
        The array metadata's modification time and size, so that a store
        rewritten in place gives new dask keys.
    """

    store: str
    name: str
    version: str

    @classmethod
    def at(cls, store: str | os.PathLike, name: str) -> ZarrSource:
        meta = Path(store) / name / "zarr.json"
        st = meta.stat()
        return cls(str(Path(store).resolve()), name, f"{st.st_mtime_ns}-{st.st_size}")

    def array(self):
        """The opened ``zarr.Array`` (cached per process)."""
        return _open(self.store, self.name, self.version)

    def read(self, region: tuple[slice, ...]) -> np.ndarray:
        """The values in ``region`` (one slice per axis) as a new array."""
        files = self._files(region)
        return self.array()[region] if files is None else files.read(region)

    def read_into(self, region: tuple[slice, ...], out: np.ndarray) -> None:
        """Read ``region`` (one slice per axis) into ``out``, a view with the region's shape."""
        files = self._files(region)
        if files is None:
            out[...] = self.array()[region]
            return
        files.read(region, out)

    def _files(self, region: tuple[slice, ...]) -> _ChunkFiles | None:
        """The chunk files to read ``region`` from here, or None to read it through zarr-python."""
        if any(s.step not in (None, 1) for s in region):
            return None
        return _chunk_files(self.store, self.name, self.version)


@functools.lru_cache(maxsize=64)
def _open(store: str, name: str, version: str):
    import zarr

    return zarr.open_array(Path(store) / name, mode="r")


def _check_size(kind: str, nbytes: int, expected: int) -> None:
    if nbytes != expected:
        msg = f"{kind} chunk holds {nbytes} bytes, expected {expected}"
        raise ValueError(msg)


def _zstd_content_size(raw) -> int | None:
    """Decompressed size from a Zstandard frame header (RFC 8878, 3.1.1.1), or None if absent."""
    if len(raw) < 6 or bytes(raw[:4]) != b"\x28\xb5\x2f\xfd":
        return None
    descriptor = raw[4]
    single_segment = (descriptor >> 5) & 1
    start = 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[descriptor & 3]  # window byte, dictionary id
    size = (single_segment, 2, 4, 8)[descriptor >> 6]
    if size == 0 or len(raw) < start + size:
        return None
    value = int.from_bytes(raw[start:start + size], "little")
    return value + 256 if size == 2 else value


def _decompressor(codec):
    """``decompress(raw, dest)`` for a Zarr v3 bytes-to-bytes codec that numcodecs decodes, else None."""
    import numcodecs
    from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

    if isinstance(codec, BloscCodec):
        from numcodecs import blosc

        def decompress(raw, dest):  # the frame's header carries its type size, shuffle and block size
            _check_size("Blosc", int.from_bytes(raw[4:8], "little"), dest.nbytes)  # Blosc 1 header
            blosc.decompress(raw, dest)

        return decompress
    if isinstance(codec, ZstdCodec):
        from numcodecs import zstd

        def decompress(raw, dest):
            nbytes = _zstd_content_size(raw)
            if nbytes is None:  # the frame does not say: decode, then compare
                data = zstd.decompress(raw)
                _check_size("Zstd", len(data), dest.nbytes)
                dest.reshape(-1).view(np.uint8)[:] = np.frombuffer(data, dtype=np.uint8)
                return
            _check_size("Zstd", nbytes, dest.nbytes)
            zstd.decompress(raw, dest)

        return decompress
    if isinstance(codec, GzipCodec):
        gzip = numcodecs.GZip(level=codec.level)

        def decompress(raw, dest):
            _check_size("Gzip", int.from_bytes(raw[-4:], "little"), dest.nbytes % 2**32)  # ISIZE trailer
            gzip.decode(raw, out=dest)

        return decompress
    return None


@dataclass(frozen=True)
class _ChunkFiles:
    """The chunk files of a Zarr v3 array in a local directory, decoded in the calling thread.

    Attributes
    ----------
    layout : ChunkLayout
        Where the files are, the chunk grid, dtype and fill value.
    decompress : callable or None
        ``decompress(raw, dest)`` fills ``dest`` from a chunk file's bytes; None
        when chunks are stored uncompressed.
    """

    layout: ChunkLayout
    decompress: object

    def _chunk(self, coords: tuple[int, ...], out: np.ndarray) -> None:
        """Fill ``out`` (C-contiguous, the full chunk shape) with the chunk at ``coords``."""
        root, meta = self.layout.root, self.layout.meta
        try:
            raw = (root / meta.encode_chunk_key(coords)).read_bytes()
        except FileNotFoundError:  # never written: all fill value
            out[...] = meta.fill_value
            return
        if self.decompress is None:
            if len(raw) != out.nbytes:
                msg = f"{root}: chunk {coords} holds {len(raw)} bytes, expected {out.nbytes}"
                raise ValueError(msg)
            out.reshape(-1).view(np.uint8)[:] = np.frombuffer(raw, dtype=np.uint8)
        else:
            self.decompress(raw, out)

    def read(self, region: tuple[slice, ...], out: np.ndarray | None = None) -> np.ndarray:
        """``region`` (slices with step 1) into ``out`` (new when None); returns it."""
        shape, chunk, dtype = self.layout.meta.shape, self.layout.meta.chunk_grid.chunk_shape, self.layout.dtype
        bounds = [s.indices(n)[:2] for s, n in zip(region, shape, strict=True)]
        if out is None:
            out = np.empty([hi - lo for lo, hi in bounds], dtype=dtype)
        spans = [range(lo // c, (hi - 1) // c + 1) if hi > lo else range(0) for (lo, hi), c in zip(bounds, chunk)]
        full = None
        for coords in itertools.product(*spans):
            starts = [k * c for k, c in zip(coords, chunk)]
            inner = tuple(slice(max(lo, s) - s, min(hi, s + c) - s)
                          for (lo, hi), s, c in zip(bounds, starts, chunk))
            into = tuple(slice(max(lo, s) - lo, min(hi, s + c) - lo) for (lo, hi), s, c in zip(bounds, starts, chunk))
            whole = all(i.start == 0 and i.stop == c for i, c in zip(inner, chunk))
            if whole and out[into].flags.c_contiguous:
                self._chunk(coords, out[into])  # decoded straight into place
                continue
            if full is None:
                full = np.empty(chunk, dtype=dtype)
            self._chunk(coords, full)
            out[into] = full[inner]
        return out


@dataclass(frozen=True)
class ChunkLayout:
    """Where and how the chunk files of a Zarr v3 array are stored, when daskcal reads and writes them itself.

    Attributes
    ----------
    root : Path
        The array's directory (chunk keys are relative to it).
    meta : ArrayV3Metadata
        Shape, regular chunk grid, chunk key encoding, dtype and fill value.
    dtype : numpy.dtype
        In-memory dtype (native byte order, stored in that order).
    codec : BytesBytesCodec or None
        The one compressor after the ``bytes`` codec, or None.
    """

    root: Path
    meta: object
    dtype: np.dtype
    codec: object


@functools.lru_cache(maxsize=256)
def chunk_layout(store: str, name: str, version: str) -> ChunkLayout | None:
    """The :class:`ChunkLayout` of an array in a local store with a regular grid, no sharding or
    array-to-array codec, native byte order and at most one compressor; else None."""
    from zarr.codecs import BytesCodec
    from zarr.storage import LocalStore

    arr = _open(store, name, version)
    meta = arr.metadata
    if not isinstance(arr.store, LocalStore) or meta.zarr_format != 3:
        return None
    if not hasattr(meta.chunk_grid, "chunk_shape"):  # not a regular grid
        return None
    codecs = list(meta.codecs)
    if not codecs or not isinstance(codecs[0], BytesCodec) or len(codecs) > 2:
        return None  # sharding, an array-to-array codec first, or a chain of compressors
    dtype = np.dtype(arr.dtype)
    if dtype.kind not in "biuf" or not dtype.isnative:
        return None
    endian = codecs[0].endian
    if dtype.itemsize > 1 and (endian is None or endian.value != sys.byteorder):
        return None
    return ChunkLayout(Path(arr.store.root) / arr.path, meta, dtype, codecs[1] if len(codecs) == 2 else None)


def layout_and_codec(store: str, name: str, version: str, make) -> tuple | None:
    """``(layout, function)`` for an array whose chunks daskcal reads or writes itself, else None.

    ``function`` is ``make(codec)`` for the array's bytes-to-bytes codec (None from
    ``make``: a codec daskcal does not handle, so None here), or None when chunks are
    stored uncompressed.
    """
    layout = chunk_layout(store, name, version)
    if layout is None:
        return None
    if layout.codec is None:
        return layout, None
    function = make(layout.codec)
    return None if function is None else (layout, function)


@functools.lru_cache(maxsize=64)
def _chunk_files(store: str, name: str, version: str) -> _ChunkFiles | None:
    """A :class:`_ChunkFiles` for the array if its layout allows reading it here, else None."""
    found = layout_and_codec(store, name, version, _decompressor)
    return None if found is None else _ChunkFiles(*found)


def _read(source: ZarrSource, region: tuple[slice, ...]) -> np.ndarray:
    return source.read(region)


def read_regions(name: str, chunks: tuple, dtype, task) -> da.Array:
    """A dask array named ``name`` whose every chunk is computed by ``task(region)``, a task with
    no dependencies (``region``: one slice per axis); ``chunks`` normalized."""
    starts = [np.cumsum((0, *c[:-1])) for c in chunks]
    dsk = {}
    for idx in itertools.product(*(range(len(c)) for c in chunks)):
        region = tuple(slice(int(s[i]), int(s[i]) + c[i]) for s, c, i in zip(starts, chunks, idx, strict=True))
        dsk[(name, *idx)] = task(region)
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=())
    return da.Array(graph, name, chunks=chunks, dtype=dtype, meta=np.empty((0,) * len(chunks), dtype=dtype))


def read_as_dask(source: ZarrSource, chunks) -> da.Array:
    """A dask array whose every chunk is read from ``source`` by one task.

    Parameters
    ----------
    source : ZarrSource
        The array to read.
    chunks : tuple
        Dask chunks (any form ``dask.array.core.normalize_chunks`` accepts),
        independent of the store's own chunking.
    """
    arr = source.array()
    chunks = da.core.normalize_chunks(chunks, arr.shape, dtype=arr.dtype)
    name = f"zarr-read-{source.name}-" + tokenize(source, chunks)
    out = read_regions(name, chunks, arr.dtype, lambda region: (_read, source, region))
    _SOURCES.add(name, source)
    return out


def zarr_source(arr) -> ZarrSource | None:
    """The :class:`ZarrSource` a dask array made by :func:`read_as_dask` reads, else None.

    Any operation on the array gives it a new name, so only the array exactly
    as read is recognised.
    """
    return _SOURCES.get(arr)
