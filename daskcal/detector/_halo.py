"""Halos for pixel-chunked arrays that do not keep whole neighbour chunks alive (graph layer).

``dask.array.overlap.overlap`` builds every halo'd block from slices (views) of its
neighbour chunks. In raster order a chunk is read for the halo of the block above
it and then waits, whole, until its own block can run: memory holds a row of
chunks and grows with the image width. Here the halo edges are cut from a
*second read* of the input (``dask.graph_manipulation.clone`` re-keys the input
graph) and copied, so that read is dropped as soon as its edges are cut, and the
first read of a chunk feeds only its own block. Each chunk is read twice; peak
memory no longer depends on the image size.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.graph_manipulation import clone
from dask.highlevelgraph import HighLevelGraph

__all__ = ["HALO_PREFIX", "overlap_reading_twice"]

#: Name prefix of the arrays this module builds (each block a new array, owned by its consumer).
HALO_PREFIX = "halo-"


def _copy(block: np.ndarray, ys: slice, xs: slice) -> np.ndarray:
    return np.array(block[..., ys, xs], copy=True)


def _assemble(rows: list[list[np.ndarray]]) -> np.ndarray:
    """The pieces laid out in one new array (allocated once: no intermediate row arrays)."""
    heights = [row[0].shape[-2] for row in rows]
    widths = [piece.shape[-1] for piece in rows[0]]
    first = rows[0][0]
    out = np.empty((*first.shape[:-2], sum(heights), sum(widths)), dtype=first.dtype)
    y = 0
    for row, h in zip(rows, heights, strict=True):
        x = 0
        for piece, w in zip(row, widths, strict=True):
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


def overlap_reading_twice(arr: da.Array, halo: int) -> da.Array:
    """``arr`` with ``halo`` pixels of its neighbours on the last two axes (boundary 'none').

    Equal to ``da.overlap.overlap(arr, depth={-2: halo, -1: halo}, boundary="none")``
    for arrays whose leading axes are single chunks and whose chunks are at least
    ``halo`` pixels wide (otherwise that function is used).

    Parameters
    ----------
    arr : dask.array.Array
        Pixel-chunked array ``(..., y, x)``.
    halo : int
        Halo width in pixels (>= 0).
    """
    lead = arr.ndim - 2
    cy, cx = arr.chunks[-2], arr.chunks[-1]
    if halo == 0:
        return arr
    if any(n != 1 for n in arr.numblocks[:lead]) or min(*cy, *cx) < halo:
        depth = {lead: halo, lead + 1: halo}
        return da.overlap.overlap(arr, depth=depth, boundary="none")
    src = clone(arr, assume_layers=False)
    name = HALO_PREFIX + tokenize(arr, halo)
    edge = "halo-edge-" + tokenize(arr, halo)
    zeros = (0,) * lead
    nby, nbx = len(cy), len(cx)
    dsk = {}
    for i in range(nby):
        for j in range(nbx):
            rows = []
            for di in (-1, 0, 1):
                ni = i + di
                if not 0 <= ni < nby:
                    continue
                row = []
                for dj in (-1, 0, 1):
                    nj = j + dj
                    if not 0 <= nj < nbx:
                        continue
                    if di == 0 and dj == 0:
                        row.append((arr.name, *zeros, i, j))
                        continue
                    key = (edge, *zeros, i, j, di + 1, dj + 1)
                    dsk[key] = (_copy, (src.name, *zeros, ni, nj), _edge(cy[ni], halo, di), _edge(cx[nj], halo, dj))
                    row.append(key)
                rows.append(row)
            dsk[(name, *zeros, i, j)] = (_assemble, rows)
    grown_y = tuple(c + halo * (i > 0) + halo * (i < nby - 1) for i, c in enumerate(cy))
    grown_x = tuple(c + halo * (j > 0) + halo * (j < nbx - 1) for j, c in enumerate(cx))
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[arr, src])
    return da.Array(graph, name, chunks=arr.chunks[:lead] + (grown_y, grown_x), dtype=arr.dtype,
                    meta=np.empty((0,) * arr.ndim, dtype=arr.dtype))
