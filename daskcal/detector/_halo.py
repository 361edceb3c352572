"""Halos for pixel-chunked arrays that do not keep whole neighbour chunks alive (graph layer).

``dask.array.overlap.overlap`` builds every halo'd block from slices (views) of its
neighbour chunks. In raster order a chunk is read for the halo of the block above
it and then waits, whole, until its own block can run: memory holds a row of
chunks and grows with the image width. Here, for arrays read straight from Zarr,
the halo edges are cut from a *second read* of each chunk, so that read is dropped
as soon as its edges are cut, and the first read of a chunk feeds only its own
block. Each chunk is read twice; peak memory no longer depends on the image size.

:func:`halo_blocks` returns, for every block, a task to run *inside* the task that
uses it, so a halo'd block exists only while its consumer runs. For arrays read
straight from Zarr (:func:`daskcal.io._zarr_read.zarr_source`) the block's own chunk
is read into the middle of the block, and one task per chunk reads it again and cuts
every edge its neighbours need, for all such arrays at once
(:func:`halo_blocks_group`). Other arrays (in memory, or computed) give their edges
from their own chunks, each by its own small copying task.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from daskcal.io._zarr_read import zarr_source

__all__ = ["HaloBlocks", "halo_blocks", "halo_blocks_group", "overlap_reading_twice"]

#: Name prefix of the halo'd arrays :meth:`HaloBlocks.to_array` builds.
_HALO_PREFIX = "halo-"


def _copy(block: np.ndarray, ys: slice, xs: slice) -> np.ndarray:
    return np.array(block[..., ys, xs], copy=True)


def _cut_edges(block: np.ndarray, cuts: dict) -> dict:
    """Copies of the edges of one chunk that its neighbours need: ``{side: block[..., ys, xs]}``."""
    return {side: np.array(block[..., ys, xs], copy=True) for side, (ys, xs) in cuts.items()}


def _read_edges(sources: list, regions: list, cuts: dict) -> list[dict]:
    """:func:`_cut_edges` of one chunk of each array, read from Zarr within this task (no chunk is kept)."""
    return [_cut_edges(source.read(region), cuts) for source, region in zip(sources, regions, strict=True)]


def _assemble(rows: list[list], shape: tuple[int, ...], source=None, region=None) -> np.ndarray:
    """The pieces laid out in one new array of ``shape`` (allocated once).

    A ``None`` piece is the core chunk, read from ``source`` (a
    :class:`daskcal.io._zarr_read.ZarrSource`) at ``region`` straight into place.
    """
    first = next(piece for row in rows for piece in row if piece is not None) if source is None else None
    dtype = first.dtype if first is not None else source.array().dtype
    out = np.empty(shape, dtype=dtype)
    y = 0
    for row in rows:
        x = 0
        for piece in row:
            if piece is None:
                h, w = region[-2].stop - region[-2].start, region[-1].stop - region[-1].start
                source.read_into(region, out[..., y:y + h, x:x + w])
            else:
                h, w = piece.shape[-2:]
                out[..., y:y + h, x:x + w] = piece
            x += w
        y += h
    return out


def _edge(size: int, halo: int, side: int) -> slice:
    """Slice of a neighbour chunk along one axis: its last/first ``halo`` pixels, or all."""
    if side < 0:
        return slice(size - halo, size)
    if side > 0:
        return slice(0, halo)
    return slice(0, size)


@dataclass(frozen=True)
class HaloBlocks:
    """How to build each halo'd block of an array inside the task that consumes it.

    Attributes
    ----------
    layers : list of dask collections
        What the block tasks depend on (the edge-cutting layer and the reads).
    tasks : dict
        ``(i, j) -> task``: a (nested, legacy-form) task that returns the halo'd
        block of chunk ``(i, j)``. Put it among a consumer task's arguments and
        dask runs it within that task, so the block exists only while its
        consumer runs.
    chunks : tuple
        Chunks of the halo'd array.
    fresh : bool
        Every evaluation of a block task makes a new array that nothing else
        holds (the consumer may change it in place).
    """

    layers: list
    tasks: dict
    chunks: tuple
    fresh: bool

    def to_array(self, arr: da.Array) -> da.Array:
        """The halo'd blocks of ``arr`` as a dask array, each block its own task."""
        name = _HALO_PREFIX + tokenize(arr, [layer.name for layer in self.layers])
        zeros = (0,) * (arr.ndim - 2)
        dsk = {(name, *zeros, i, j): task for (i, j), task in self.tasks.items()}
        graph = HighLevelGraph.from_collections(name, dsk, dependencies=self.layers)
        return da.Array(graph, name, chunks=self.chunks, dtype=arr.dtype,
                        meta=np.empty((0,) * arr.ndim, dtype=arr.dtype))


def halo_blocks(arr: da.Array, halo: int) -> HaloBlocks:
    """The halo'd blocks of ``arr`` (``halo`` neighbour pixels on the last two axes, boundary 'none').

    Each block equals the block of ``da.overlap.overlap(arr, depth={-2: halo,
    -1: halo}, boundary="none")``. For arrays whose leading axes are single
    chunks and whose chunks are at least ``halo`` pixels wide, it is assembled
    from the chunk and copies of its neighbours' edges (cut from a second read of
    the neighbours where the array is read straight from Zarr, which also has its
    core read into place); otherwise it is that function's block.

    Parameters
    ----------
    arr : dask.array.Array
        Pixel-chunked array ``(..., y, x)``.
    halo : int
        Halo width in pixels (>= 0).
    """
    return halo_blocks_group([arr], halo)[0]


def halo_blocks_group(arrays: list, halo: int) -> list[HaloBlocks]:
    """:func:`halo_blocks` of several arrays; those read from Zarr with the same ``(y, x)``
    chunks share one edge-reading task per chunk (fewer, larger tasks)."""
    out: list = [None] * len(arrays)
    groups: dict = {}
    for k, arr in enumerate(arrays):
        if _assembled(arr, halo) and zarr_source(arr) is not None:
            groups.setdefault(arr.chunks[-2:], []).append(k)
        else:
            out[k] = _halo_blocks_one(arr, halo)
    for ks in groups.values():
        for k, hb in zip(ks, _halo_blocks_zarr([arrays[k] for k in ks], halo), strict=True):
            out[k] = hb
    return out


def _assembled(arr: da.Array, halo: int) -> bool:
    """Whether halo'd blocks of ``arr`` are assembled here (else dask's overlap, or no halo)."""
    lead = arr.ndim - 2
    return halo > 0 and all(n == 1 for n in arr.numblocks[:lead]) and min(*arr.chunks[-2], *arr.chunks[-1]) >= halo


def _regions(arr: da.Array):
    lead = arr.ndim - 2
    y0, x0 = np.cumsum((0, *arr.chunks[-2])), np.cumsum((0, *arr.chunks[-1]))

    def region(i, j):
        return (*(slice(None),) * lead, slice(int(y0[i]), int(y0[i + 1])), slice(int(x0[j]), int(x0[j + 1])))

    return region


def _cuts(cy, cx, halo: int, ni: int, nj: int) -> dict:
    """Edges of chunk ``(ni, nj)`` its neighbours need: ``(di, dj)`` is this chunk seen from
    the block at ``(ni - di, nj - dj)``."""
    return {(di, dj): (_edge(cy[ni], halo, di), _edge(cx[nj], halo, dj))
            for di in (-1, 0, 1) for dj in (-1, 0, 1)
            if (di, dj) != (0, 0) and 0 <= ni - di < len(cy) and 0 <= nj - dj < len(cx)}


def _block_tasks(arr: da.Array, halo: int, piece, source=None) -> tuple[dict, tuple]:
    """``(i, j) -> _assemble task`` from ``piece(i, j, di, dj)`` (a neighbour's edge); the
    chunk itself is read from ``source`` into place, or (no source) is ``arr``'s block."""
    lead = arr.ndim - 2
    zeros = (0,) * lead
    cy, cx = arr.chunks[-2], arr.chunks[-1]
    nby, nbx = len(cy), len(cx)
    region = _regions(arr)

    def core(i, j):
        return None if source is not None else (arr.name, *zeros, i, j)

    grown_y = tuple(c + halo * (i > 0) + halo * (i < nby - 1) for i, c in enumerate(cy))
    grown_x = tuple(c + halo * (j > 0) + halo * (j < nbx - 1) for j, c in enumerate(cx))
    tasks = {}
    for i in range(nby):
        for j in range(nbx):
            rows = []
            for di in (-1, 0, 1):
                if not 0 <= i + di < nby:
                    continue
                rows.append([core(i, j) if (di, dj) == (0, 0) else piece(i, j, di, dj)
                             for dj in (-1, 0, 1) if 0 <= j + dj < nbx])
            shape = (*arr.shape[:lead], grown_y[i], grown_x[j])
            tasks[(i, j)] = (_assemble, rows, shape, source, region(i, j) if source is not None else None)
    return tasks, arr.chunks[:lead] + (grown_y, grown_x)


def _halo_blocks_zarr(arrays: list, halo: int) -> list[HaloBlocks]:
    """Arrays read straight from Zarr, same ``(y, x)`` chunks: one task per chunk reads that
    chunk of every array again and cuts the edges its neighbours need (then drops it), and
    each block reads its own chunk into place."""
    cy, cx = arrays[0].chunks[-2:]
    edge = "halo-edges-" + tokenize(*arrays, halo)
    sources = [zarr_source(a) for a in arrays]
    regions = [_regions(a) for a in arrays]
    dsk = {(edge, ni, nj): (_read_edges, sources, [r(ni, nj) for r in regions], _cuts(cy, cx, halo, ni, nj))
           for ni in range(len(cy)) for nj in range(len(cx))}
    # a collection only to carry the edge layer into consumers' graphs (its blocks are lists of dicts)
    edges = da.Array(HighLevelGraph.from_collections(edge, dsk, dependencies=[]), edge,
                     chunks=((1,) * len(cy), (1,) * len(cx)), dtype=np.float32)
    out = []
    for k, arr in enumerate(arrays):
        def piece(i, j, di, dj, k=k):
            return (operator.getitem, (operator.getitem, (edge, i + di, j + dj), k), (di, dj))

        tasks, chunks = _block_tasks(arr, halo, piece, sources[k])
        out.append(HaloBlocks([edges], tasks, chunks, fresh=True))
    return out


def _halo_blocks_one(arr: da.Array, halo: int) -> HaloBlocks:
    """:func:`halo_blocks` of an array that is not read straight from Zarr (or cannot be assembled)."""
    lead = arr.ndim - 2
    zeros = (0,) * lead
    cy, cx = arr.chunks[-2], arr.chunks[-1]
    nby, nbx = len(cy), len(cx)
    if not _assembled(arr, halo):
        if halo:
            arr = da.overlap.overlap(arr, depth={lead: halo, lead + 1: halo}, boundary="none")
        tasks = {(i, j): (arr.name, *zeros, i, j) for i in range(nby) for j in range(nbx)}
        return HaloBlocks([arr], tasks, arr.chunks, fresh=False)
    # Edges are copied from the array's own chunks, one small task per edge, so a chunk is
    # computed once. Not from a second read through ``dask.graph_manipulation.clone``:
    # that renames a layer's keys but not the keys inside its task objects (dask issue
    # 12455), so the "clone" read the original chunks anyway, and where an axis had one
    # chunk (rechunk's aliases) the threaded scheduler's fusion failed on the graph.
    edge = "halo-edge-" + tokenize(arr, halo)
    dsk = {}
    for ni in range(nby):
        for nj in range(nbx):
            for (di, dj), (ys, xs) in _cuts(cy, cx, halo, ni, nj).items():
                dsk[(edge, *zeros, ni, nj, di + 1, dj + 1)] = (_copy, (arr.name, *zeros, ni, nj), ys, xs)
    # a collection only to carry the edge layer into consumers' graphs (its keys have 2 more axes)
    edges = da.Array(HighLevelGraph.from_collections(edge, dsk, dependencies=[arr]), edge,
                     chunks=(*((1,),) * lead, (1,) * nby, (1,) * nbx), dtype=arr.dtype)
    tasks, chunks = _block_tasks(arr, halo, lambda i, j, di, dj: (edge, *zeros, i + di, j + dj, di + 1, dj + 1))
    return HaloBlocks([edges, arr], tasks, chunks, fresh=True)


def overlap_reading_twice(arr: da.Array, halo: int) -> da.Array:
    """``arr`` with ``halo`` pixels of its neighbours on the last two axes, as a dask array.

    Equal to ``da.overlap.overlap(arr, depth={-2: halo, -1: halo}, boundary="none")``;
    see :func:`halo_blocks`. Each block is its own task here, which the
    scheduler may run well before the block's consumer: graphs that care about
    memory put :attr:`HaloBlocks.tasks` inside their consumers instead.
    """
    if halo == 0:
        return arr
    return halo_blocks(arr, halo).to_array(arr)
