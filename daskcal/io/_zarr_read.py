"""Dask arrays read from Zarr by daskcal's own tasks (graph layer).

``xr.open_zarr`` gives dask arrays whose tasks each return a new chunk. The
arrays built here read the same values (for variables that Zarr stores without
any CF decoding), and they remember where they come from: a graph that knows
the :class:`ZarrSource` of an array can read a chunk straight into a buffer of
its own (:meth:`ZarrSource.read_into`), for example the middle of a halo'd
block, instead of reading it into a new array and copying it there.
"""

from __future__ import annotations

import functools
import itertools
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

__all__ = ["ZarrSource", "read_as_dask", "zarr_source"]

#: How many array names :func:`zarr_source` remembers (oldest forgotten first).
_MAX_SOURCES = 1024
_SOURCES: OrderedDict[str, ZarrSource] = OrderedDict()


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
        """The values in ``region`` as a new array."""
        return self.array()[region]

    def read_into(self, region: tuple[slice, ...], out: np.ndarray) -> None:
        """Read ``region`` into ``out`` (a view with the region's shape; no intermediate array)."""
        from zarr.core.buffer.cpu import NDBuffer

        self.array().get_basic_selection(region, out=NDBuffer.from_numpy_array(out))


@functools.lru_cache(maxsize=64)
def _open(store: str, name: str, version: str):
    import zarr

    return zarr.open_array(Path(store) / name, mode="r")


def _read(source: ZarrSource, region: tuple[slice, ...]) -> np.ndarray:
    return source.read(region)


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
    starts = [np.cumsum((0, *c[:-1])) for c in chunks]
    dsk = {}
    for idx in itertools.product(*(range(len(c)) for c in chunks)):
        region = tuple(slice(int(s[i]), int(s[i]) + c[i]) for s, c, i in zip(starts, chunks, idx, strict=True))
        dsk[(name, *idx)] = (_read, source, region)
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=())
    out = da.Array(graph, name, chunks=chunks, dtype=arr.dtype, meta=np.empty((0,) * arr.ndim, dtype=arr.dtype))
    _SOURCES[name] = source
    _SOURCES.move_to_end(name)
    while len(_SOURCES) > _MAX_SOURCES:
        _SOURCES.popitem(last=False)
    return out


def zarr_source(arr) -> ZarrSource | None:
    """The :class:`ZarrSource` a dask array made by :func:`read_as_dask` reads, else None.

    Any operation on the array gives it a new name, so only the array exactly
    as read is recognised.
    """
    return _SOURCES.get(getattr(arr, "name", None))
