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

Missing and corrupt chunks are errors (:class:`ChunkError`, a ``ValueError`` naming
the store, the variable and the chunk). Zarr 3 does not write chunks equal to the
fill value by default (``write_empty_chunks=False``), so a missing chunk file
reads as the fill value there: a deleted or lost chunk of a ramp cube became a
rate of 0 DN/s with DQ 0, and of a calibrated image NaN in a mosaic. daskcal's
own writers write every chunk (:func:`daskcal.io._atomic.save_dataset` and
:func:`~daskcal.io._atomic.save_products` write with ``array.write_empty_chunks`` on;
:class:`daskcal.io._zarr_write.ChunkWriter` writes whatever it is given), so
its stores are complete. An array whose missing chunks mean the fill value on
purpose declares it with the array attribute ``"daskcal:sparse": true``
(:data:`SPARSE_ATTR`; in xarray, ``ds[name].attrs["daskcal:sparse"] = True``
before ``to_zarr``); its missing chunks read as the fill value. For any other
array:

- the task that reads a chunk raises :class:`ChunkError` for a missing chunk
  file (here the read opens the file anyway, so this costs nothing; on the
  zarr-python path a local store's chunk files are looked up first), and for a
  chunk that does not decode or decodes to another size than the array's chunk
  shape (exceptions from the codec or from zarr-python are wrapped);
- :func:`check_store`, called by ``open_ramps`` and ``open_images`` before any
  graph is built, lists a local store's chunk files against each array's chunk
  grid: a missing chunk, or a chunk file beyond the grid (a ``zarr.json`` whose
  shape disagrees with its chunks), is refused there, before any cluster work,
  and so is an array whose first chunk file states (in its header, undecoded)
  another size than the ``zarr.json``'s chunk shape (about 1 ms for a 2048^2 x 10
  group ramp store, see :func:`check_store`).

Not checked: stores that are not local directories (no listing at open, no
lookup on the zarr-python path: zarr fills their missing chunks), the inner
chunks of a shard, and an edited shape that keeps the number of chunks (the
edge chunk is stored whole, so it cannot disagree).
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

__all__ = ["SPARSE_ATTR", "WRITTEN_ATTR", "ArrayNotes", "ChunkError", "ChunkLayout", "ZarrSource", "check_store", "chunk_layout",
           "layout_and_codec", "read_as_dask", "read_regions", "read_task", "stored_as_is", "zarr_source"]

#: Array attribute that declares an array sparse on purpose: its missing chunks are the fill value.
SPARSE_ATTR = "daskcal:sparse"
#: Array attribute of a sparse array: the ``[iy, ix]`` chunks (of its last two axes) that were written, so a
#: missing one of them is damage, not the fill value (a mosaic's tiles that some input reaches).
WRITTEN_ATTR = "daskcal:written"


def _sparse_of(attrs):
    """What a missing chunk of an array means: False (an error), True (the fill value) or a frozenset of
    the ``(iy, ix)`` chunks that must be present (the others are the fill value)."""
    if attrs.get(SPARSE_ATTR) is not True:
        return False
    written = attrs.get(WRITTEN_ATTR)
    if written is None:
        return True
    return frozenset(tuple(int(v) for v in c) for c in written)


def _may_miss(sparse, coords) -> bool:
    """Whether chunk ``coords`` of an array with :func:`_sparse_of` ``sparse`` may be absent."""
    if isinstance(sparse, bool):
        return sparse
    return tuple(coords[-2:]) not in sparse


class ChunkError(ValueError):
    """A chunk of a Zarr array is missing (and the array is not declared sparse), cannot be
    decoded, or disagrees with the array's metadata."""


def _chunk_error(store: str, name: str, chunk, problem: str) -> ChunkError:
    return ChunkError(f"Zarr store {store!r}, variable {name!r}, chunk {chunk}: {problem}")


def _missing(store: str, name: str, chunks: list, nchunks: int | None = None) -> ChunkError:
    """The error for chunk files that are missing from an array not declared sparse."""
    shown = ", ".join(map(str, chunks[:4])) + (", ..." if len(chunks) > 4 else "")
    count = "" if nchunks is None else f", {len(chunks)} of its {nchunks} chunks"
    msg = (f"Zarr store {store!r}, variable {name!r}: no chunk file for chunk{'s' if len(chunks) > 1 else ''} "
           f"{shown}{count}: deleted, lost or never written. daskcal writes every chunk; if this array is "
           f"sparse on purpose (missing chunks are its fill value), set its attribute {SPARSE_ATTR!r} to true, else "
           f"rewrite the store with every chunk (to_zarr(..., write_empty_chunks=True))")
    return ChunkError(msg)


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


#: The :class:`ZarrSource` of each array :func:`read_as_dask` made (see :func:`zarr_source`). A note is
#: ~0.3 KB; a forgotten one does not change results but makes its array's tasks depend on read tasks again
#: (memory that grows with the exposures), so room for thousands of exposures' variables.
_SOURCES = ArrayNotes(1 << 16)


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
        """The values in ``region`` (one slice per axis) as a new array.

        Raises
        ------
        ChunkError
            A chunk of ``region`` is missing (and the array is not declared sparse) or corrupt.
        """
        files = self._files(region)
        if files is not None:
            return files.read(region)
        return self._through_zarr(region, lambda arr: arr[region])

    def read_into(self, region: tuple[slice, ...], out: np.ndarray) -> None:
        """Read ``region`` (one slice per axis) into ``out``, a view with the region's shape (see :meth:`read`)."""
        files = self._files(region)
        if files is not None:
            files.read(region, out)
            return

        def read(arr):
            out[...] = arr[region]  # zarr's public API: one copy more than reading into ``out``

        self._through_zarr(region, read)

    def _files(self, region: tuple[slice, ...]) -> _ChunkFiles | None:
        """The chunk files to read ``region`` from here, or None to read it through zarr-python."""
        if any(s.step not in (None, 1) for s in region):
            return None
        return _chunk_files(self.store, self.name, self.version)

    def _through_zarr(self, region: tuple[slice, ...], read):
        """``read(zarr.Array)`` after looking up the chunk files of ``region`` (a local store), its
        exceptions as :class:`ChunkError`."""
        grid = _stored_grid(self.store, self.name, self.version)
        if grid is not None and grid.sparse is not True:
            missing = [c for c in grid.coords(region) if not _may_miss(grid.sparse, c)
                       and not (grid.root / grid.meta.encode_chunk_key(c)).is_file()]
            if missing:
                raise _missing(self.store, self.name, missing)
        try:
            return read(self.array())
        except MemoryError:
            raise
        except Exception as exc:  # zarr and its codecs raise many types for a chunk that does not decode
            chunks = list(itertools.islice(grid.coords(region), 5)) if grid is not None else []
            where = (chunks[0] if len(chunks) == 1 else f"one of {chunks[:4]}{'...' if len(chunks) > 4 else ''}"
                     if chunks else f"in region {region}")
            raise _chunk_error(self.store, self.name, where, f"cannot be read: {type(exc).__name__}: {exc}") from exc

    def check(self) -> None:
        """Refuse (:class:`ChunkError`) the array if a chunk file is missing (unless declared sparse), lies
        beyond its chunk grid, or (the first one, for arrays read here) states another decoded size than
        the chunk shape. Only local stores with a regular grid are listed; others pass."""
        grid = _stored_grid(self.store, self.name, self.version)
        if grid is None:
            return
        present = set()
        for dirpath, dirnames, filenames in os.walk(grid.root):
            rel = os.path.relpath(dirpath, grid.root)
            prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
            present.update(prefix + f for f in filenames if f != "zarr.json" and not f.startswith("."))
        expected = {grid.meta.encode_chunk_key(c): c for c in grid.coords()}
        beyond = sorted(c for c in map(grid.key_coords, present.difference(expected)) if c is not None)
        if beyond:
            shape, chunk = grid.meta.shape, grid.meta.chunk_grid.chunk_shape
            msg = (f"its zarr.json disagrees with its chunk files: chunk files {beyond[:4]} lie beyond its grid "
                   f"of {grid.counts} chunks (shape {shape} in chunks of {chunk})")
            raise _chunk_error(self.store, self.name, beyond[0], msg)
        if grid.sparse is not True:
            missing = [c for key, c in expected.items() if key not in present and not _may_miss(grid.sparse, c)]
            if missing:
                raise _missing(self.store, self.name, missing, len(expected))
        files = _chunk_files(self.store, self.name, self.version)
        first = next((key for key in expected if key in present), None)
        if files is None or first is None:
            return
        chunk = tuple(grid.meta.chunk_grid.chunk_shape)
        nbytes = int(np.prod(chunk)) * files.layout.dtype.itemsize
        claimed = _claimed_nbytes(files.layout.root / first, files.layout.codec)
        if claimed not in (None, nbytes, nbytes % 2**32):  # (Gzip states the size modulo 2^32)
            msg = (f"its zarr.json disagrees with its chunk files (or the file is corrupt): chunk file {first!r} "
                   f"holds {claimed} bytes, a chunk of {chunk} {files.layout.dtype} takes {nbytes}")
            raise _chunk_error(self.store, self.name, expected[first], msg)


def check_store(path: str | os.PathLike, names) -> None:
    """Refuse a local Zarr store whose arrays ``names`` miss chunk files, have files beyond their grid,
    or whose chunk files state another size than the chunk shape.

    Each array's directory is listed and compared with its chunk grid (see
    :meth:`ZarrSource.check`); names without an array in the store are skipped. Measured on a
    2048^2 x 10 group ramp store (7 arrays, 512^2 chunks): ~1 ms beyond opening the arrays'
    metadata, which the readers cache.

    Raises
    ------
    ChunkError
        Naming the store, the variable and the chunk(s).
    """
    for name in names:
        if (Path(path) / str(name) / "zarr.json").is_file():
            ZarrSource.at(path, str(name)).check()


@dataclass(frozen=True)
class _StoredGrid:
    """The regular chunk grid of an array in a local directory: where its chunk files are."""

    root: Path
    meta: object
    sparse: object  # see _sparse_of

    @property
    def counts(self) -> tuple[int, ...]:
        return tuple(-(-n // c) for n, c in zip(self.meta.shape, self.meta.chunk_grid.chunk_shape, strict=True))

    def coords(self, region: tuple[slice, ...] | None = None):
        """Coordinates of the chunks ``region`` touches (every chunk when None)."""
        if region is None:
            return itertools.product(*(range(n) for n in self.counts))
        chunk = self.meta.chunk_grid.chunk_shape
        bounds = [s.indices(n)[:2] for s, n in zip(region, self.meta.shape, strict=True)]
        return itertools.product(*(range(lo // c, (hi - 1) // c + 1) if hi > lo else range(0)
                                   for (lo, hi), c in zip(bounds, chunk, strict=True)))

    def key_coords(self, key: str) -> tuple[int, ...] | None:
        """The chunk coordinates a file name ``key`` encodes, else None (not a chunk key)."""
        encoding = self.meta.chunk_key_encoding
        parts = key.split(encoding.separator)
        if encoding.name == "default":
            if parts[0] != "c":
                return None
            parts = parts[1:]
        try:
            coords = tuple(int(p) for p in parts)
        except ValueError:
            return None
        if not self.meta.shape and coords == (0,):
            coords = ()
        if len(coords) != len(self.meta.shape) or self.meta.encode_chunk_key(coords) != key:
            return None
        return coords


@functools.lru_cache(maxsize=256)
def _stored_grid(store: str, name: str, version: str) -> _StoredGrid | None:
    """The :class:`_StoredGrid` of a v3 array with a regular grid in a local store, else None."""
    from zarr.storage import LocalStore

    arr = _open(store, name, version)
    meta = arr.metadata
    if not isinstance(arr.store, LocalStore) or meta.zarr_format != 3 or not hasattr(meta.chunk_grid, "chunk_shape"):
        return None
    return _StoredGrid(Path(arr.store.root) / arr.path, meta, _sparse_of(arr.attrs))


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


def _claimed_nbytes(path: Path, codec) -> int | None:
    """The decoded size of a chunk file as it states it, read without decoding: the file's size
    (uncompressed), the Blosc or Zstd frame header, the Gzip trailer (modulo 2^32); None if it does not say."""
    from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

    with open(path, "rb") as f:
        if codec is None:
            return os.fstat(f.fileno()).st_size
        if isinstance(codec, BloscCodec):
            head = f.read(16)  # Blosc 1 header
            return int.from_bytes(head[4:8], "little") if len(head) == 16 else None
        if isinstance(codec, ZstdCodec):
            return _zstd_content_size(f.read(18))  # the longest frame header
        if isinstance(codec, GzipCodec) and f.seek(0, os.SEEK_END) >= 18:
            f.seek(-4, os.SEEK_END)
            return int.from_bytes(f.read(4), "little")
    return None


def _decompressor(codec):
    """``decompress(raw, dest)`` for a Zarr v3 bytes-to-bytes codec that numcodecs decodes, else None."""
    import numcodecs
    from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

    if isinstance(codec, BloscCodec):
        from numcodecs import blosc

        def decompress(raw, dest):  # the frame's header carries its type size, shuffle and block size
            _check_size("Blosc", int.from_bytes(raw[4:8], "little"), dest.nbytes)  # Blosc 1 header
            if len(raw) != int.from_bytes(raw[12:16], "little"):
                msg = f"Blosc frame of {int.from_bytes(raw[12:16], 'little')} bytes is stored in {len(raw)} bytes"
                raise ValueError(msg)
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
    store, name : str
        The store and the array's name in it (for error messages).
    sparse : bool or frozenset
        A missing chunk file is the fill value (the array declares :data:`SPARSE_ATTR`;
        with :data:`WRITTEN_ATTR`, only a chunk outside it); otherwise it is a :class:`ChunkError`.
    """

    layout: ChunkLayout
    decompress: object
    store: str
    name: str
    sparse: object

    def _chunk(self, coords: tuple[int, ...], out: np.ndarray) -> None:
        """Fill ``out`` (C-contiguous, the full chunk shape) with the chunk at ``coords``."""
        root, meta = self.layout.root, self.layout.meta
        try:
            raw = (root / meta.encode_chunk_key(coords)).read_bytes()
        except FileNotFoundError:
            if not _may_miss(self.sparse, coords):
                raise _missing(self.store, self.name, [coords]) from None
            out[...] = meta.fill_value
            return
        try:
            if self.decompress is None:
                _check_size("uncompressed", len(raw), out.nbytes)
                out.reshape(-1).view(np.uint8)[:] = np.frombuffer(raw, dtype=np.uint8)
            else:
                self.decompress(raw, out)
        except MemoryError:
            raise
        except Exception as exc:  # numcodecs raises RuntimeError, ValueError, EOFError, zlib.error, ...
            shape = tuple(meta.chunk_grid.chunk_shape)
            msg = (f"chunk file {meta.encode_chunk_key(coords)!r} is corrupt or disagrees with the array's "
                   f"chunk shape {shape} ({self.layout.dtype}): {exc}")
            raise _chunk_error(self.store, self.name, coords, msg) from exc

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


@functools.lru_cache(maxsize=4096)
def _chunk_files(store: str, name: str, version: str) -> _ChunkFiles | None:
    """A :class:`_ChunkFiles` for the array if its layout allows reading it here, else None.

    Cached for 4096 arrays (~4 KB each; a hit 0.7 us, a miss ~2 ms: the array opened by zarr-python and its
    codec looked up). A resample tile task reads its inputs' arrays in turn, so a cache smaller than
    (inputs reaching a tile) x (arrays per input) misses on every read: with 64 entries, 16 inputs of 6 arrays
    missed every time (py-spy: ~1 s of a 15 s run, more with more tiles)."""
    found = layout_and_codec(store, name, version, _decompressor)
    if found is None:
        return None
    return _ChunkFiles(*found, store, name, _sparse_of(_open(store, name, version).attrs))


def read_task(source: ZarrSource, region: tuple[slice, ...]) -> np.ndarray:
    """Task: ``region`` of ``source`` (:meth:`ZarrSource.read`, damage checks included)."""
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
    out = read_regions(name, chunks, arr.dtype, lambda region: (read_task, source, region))
    _SOURCES.add(name, source)
    return out


def stored_as_is(var) -> bool:
    """Whether xarray reads the variable ``var`` from Zarr without any CF decoding (so that
    :func:`read_as_dask` reads the same values)."""
    enc = var.encoding
    if any(k in enc for k in ("scale_factor", "add_offset", "missing_value", "units", "calendar")):
        return False
    if np.dtype(enc.get("dtype", var.dtype)) != var.dtype or var.dtype.kind not in "biuf":
        return False
    fill = enc.get("_FillValue")
    return fill is None or (var.dtype.kind == "f" and np.isnan(fill))


@dataclass(frozen=True)
class WholeRead:
    """A task argument standing for a whole array of a Zarr store, which the task reads itself
    (:func:`materialize`)."""

    source: ZarrSource
    shape: tuple[int, ...]

    def read(self) -> np.ndarray:
        return self.source.read(tuple(slice(0, n) for n in self.shape))


def whole_argument(arr):
    """``arr`` as the argument of a task that needs all of it (see :func:`materialize`).

    An array exactly as :func:`read_as_dask` made it becomes a :class:`WholeRead`: the task
    reads the store itself, so the array's chunks are neither read ahead by read tasks nor
    held for it (with one read task per chunk, the chunks of many exposures waited on a
    worker for their tasks: 508 MB of the 1205 MB peak of skymatch on 32 x 2048^2).
    Anything else is returned unchanged.
    """
    source = zarr_source(arr)
    return arr if source is None else WholeRead(source, tuple(int(n) for n in arr.shape))


def materialize(x):
    """Inside a task: the array a :func:`whole_argument` stands for (anything else unchanged)."""
    return x.read() if isinstance(x, WholeRead) else x


def zarr_source(arr) -> ZarrSource | None:
    """The :class:`ZarrSource` a dask array made by :func:`read_as_dask` reads, else None.

    Any operation on the array gives it a new name, so only the array exactly
    as read is recognised.
    """
    return _SOURCES.get(arr)
