"""Atomic writing of Zarr stores and files.

A product is first written under a hidden temporary name beside its final path
and renamed into place only when every chunk has been written, so a failed or
interrupted run never leaves a store that looks complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["atomic_path", "save", "save_dataset", "save_products"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it to ``path`` on success.

    Parameters
    ----------
    path : path-like
        Final location (a file or a directory such as a Zarr store).
    overwrite : bool, default False
        Replace an existing ``path``. Without it an existing ``path`` is an error,
        raised before anything is written.
    """
    final = Path(path)
    if final.exists() and not overwrite:
        msg = f"output {str(final)!r} already exists; pass overwrite=True (--overwrite) to replace it"
        raise FileExistsError(msg)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        yield tmp
        if final.exists():
            trash = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(final, trash)
            os.replace(tmp, final)
            _remove(trash)
        else:
            os.replace(tmp, final)
    except BaseException:
        _remove(tmp)
        raise


def _remove(p: Path) -> None:
    if p.is_dir():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists():
        p.unlink()


def save_dataset(ds, path: str | os.PathLike, *, overwrite: bool = False, compute: bool = True):
    """Write an xarray Dataset to a Zarr (v3) store atomically.

    Lazy (dask-backed) variables are computed chunk by chunk as they are written,
    with whatever scheduler the caller has active (a ``distributed.Client`` if one
    is set as default, else dask's threaded scheduler).

    Parameters
    ----------
    ds : xarray.Dataset
        Dataset to write. Attributes must be JSON-serialisable.
    path : path-like
        Destination store (a directory).
    overwrite : bool, default False
        Replace an existing store.
    compute : bool, default True
        Must be True: a delayed write could not be made atomic.
    """
    if not compute:
        msg = "compute=False is not supported: an atomic write must run to completion"
        raise ValueError(msg)
    with atomic_path(path, overwrite=overwrite) as tmp:
        ds.to_zarr(tmp, mode="w", zarr_format=3, consolidated=False, encoding=_encoding(ds))
    return Path(path)


def _encoding(ds) -> dict:
    """Blosc-LZ4 with byte shuffle for variables that do not name their own compressor.

    It writes several times faster than Zarr's default Zstandard at a similar ratio on
    noisy float data, and writing products is on the critical path of every run.
    (As ``to_zarr``'s ``encoding`` argument, an entry replaces the variable's own encoding.)
    """
    from zarr.codecs import BloscCodec

    codec = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
    return {
        name: {"compressors": (codec,)}
        for name, var in ds.data_vars.items()
        if "compressors" not in var.encoding and "compressor" not in var.encoding
    }


def _metadata_template(ds, encoding: dict):
    """``(template, encoding)`` that ``to_zarr(..., compute=False)`` writes as it would ``(ds, encoding)``.

    Every dask-backed variable of ``ds`` is replaced by a one-chunk stand-in of the
    same shape, dtype and attributes, and its Zarr chunks (the ones ``to_zarr`` would
    choose: those of its encoding, else its first dask chunk) are named explicitly.
    ``to_zarr`` writes the metadata (and numpy-backed variables) and returns a graph
    for the rest, which :func:`save_products` does not use: built for the real
    variables, that graph cost ~0.15 s per :func:`save_products` of a 2048^2 ramp fit's
    ``rate`` and ``rateints`` (one store task per chunk, then dask's optimisation of
    all of them; ~0.04 s with the stand-ins), all of it before the first chunk could start. Dask chunks that would share a Zarr chunk are refused.
    """
    import dask.array as da

    encoding = {name: dict(enc) for name, enc in encoding.items()}
    stand_in = {}
    for name, var in ds.data_vars.items():
        if not _is_dask(var.data):
            continue
        # an ``encoding`` entry replaces the variable's own encoding (as in to_zarr)
        own = encoding.get(name, var.encoding)
        zarr_chunks = tuple(own.get("chunks") or (c[0] for c in var.data.chunks))
        _check_aligned(name, var.data.chunks, zarr_chunks)
        # named after the variable's own graph, so that dask does not tokenize the arguments
        new = var.copy(data=da.empty(var.shape, dtype=var.dtype, chunks=var.shape or -1,
                                     name=f"zarr-template-{var.data.name}"))
        if name in encoding:
            encoding[name]["chunks"] = zarr_chunks
        else:
            new.encoding = {**var.encoding, "chunks": zarr_chunks}
        stand_in[name] = new
    return (ds.assign(stand_in) if stand_in else ds), encoding


def _check_aligned(name: str, dask_chunks: tuple, zarr_chunks: tuple) -> None:
    """Refuse dask chunks that would share a Zarr chunk (two tasks writing one chunk file), as
    ``to_zarr`` does: every boundary between dask chunks must be a Zarr chunk boundary."""
    for axis, (sizes, z) in enumerate(zip(dask_chunks, zarr_chunks, strict=True)):
        bounds = np.cumsum(sizes)[:-1]
        if np.any(bounds % z):
            msg = (f"variable {name!r}: dask chunks {sizes} on axis {axis} do not line up with its Zarr "
                   f"chunks of {z}; rechunk it (every chunk but the last a multiple of {z})")
            raise ValueError(msg)


def temporary_directory(parent: str | os.PathLike | None = None, prefix: str = "daskcal-") -> tempfile.TemporaryDirectory:
    """A temporary directory (deleted on cleanup) under ``parent`` or the system default."""
    return tempfile.TemporaryDirectory(prefix=prefix, dir=parent)


def save_products(products: dict, out_dir: str | os.PathLike, *, overwrite: bool = False, progress: bool = False) -> dict:
    """Write several datasets as ``out_dir/<name>.zarr`` in one pass, atomically.

    The datasets are computed together, so work they share (for example the one
    ramp fit behind ``rate`` and ``rateints``) runs once, and every ``(y, x)`` chunk
    of every variable of every product is written by one task as soon as it is
    computed, so finished chunks never wait in memory for the other variables.
    That task encodes and writes the chunk files itself where the store allows
    (:mod:`daskcal.io._zarr_write`: local, unsharded, one Blosc/Zstd/Gzip
    compressor; products get Blosc-LZ4 with byte shuffle), and takes the ramp
    fit's one stacked block for all of ``rate``'s and ``rateints``' variables.
    Dask-backed variables are written as they are (no CF encoding).
    ``out_dir`` appears only when every store is complete.

    Parameters
    ----------
    products : dict of str to xarray.Dataset
        Name -> dataset. Dask-backed variables should share one ``(y, x)`` chunking.
    out_dir : path-like
        Destination directory.
    overwrite : bool, default False
        Replace an existing ``out_dir``.
    progress : bool, default False
        Show a console progress bar (needs an active ``distributed.Client``).

    Returns
    -------
    dict of str to Path
        Name -> store path.
    """
    import dask
    import zarr

    from daskcal.io._zarr_read import ZarrSource

    paths = {}
    with atomic_path(out_dir, overwrite=overwrite) as tmp:
        tmp.mkdir()
        targets = []
        for name, ds in products.items():
            store = tmp / f"{name}.zarr"
            # metadata and numpy-backed variables now; dask-backed chunks below
            template, encoding = _metadata_template(ds, _encoding(ds))
            template.to_zarr(store, mode="w", zarr_format=3, consolidated=False, compute=False, encoding=encoding)
            group = zarr.open_group(store, mode="r+", zarr_format=3)
            targets += [(_Target(group[v], ZarrSource.at(store, v)), ds[v].data)
                        for v in ds.data_vars if _is_dask(ds[v].data)]
            paths[name] = Path(out_dir) / f"{name}.zarr"
        writes = _chunk_writers(targets)
        client = _default_client()
        if client is not None:
            futures = client.compute(writes)
            if progress:
                from distributed import progress as show

                show(futures)
                print()
            client.gather(futures)
        else:
            dask.compute(*writes)
    return paths


def _is_dask(arr) -> bool:
    import dask.array as da

    return isinstance(arr, da.Array)


@dataclass(frozen=True)
class _Target:
    """A Zarr array to write: the opened array (for zarr-python) and where it is (for :class:`ChunkWriter`)."""

    array: object
    source: object


def _write_blocks(plan, y0: int, x0: int, *blocks) -> np.ndarray:
    """Write one ``(y, x)`` chunk of every target.

    ``plan`` holds ``(target, k, index, dtype)``: the target's block is ``blocks[k]``, or
    ``blocks[k][index].view(dtype)`` when ``index`` is not None (a slice of a stacked block).
    Blocks are encoded and written in this thread where the array's layout allows
    (:class:`daskcal.io._zarr_write.ChunkWriter`); the rest go through zarr-python
    (its ``__setitem__``).
    """
    from daskcal.io._zarr_write import chunk_writer, take_block

    for target, k, index, dtype in plan:
        block = blocks[k] if index is None else take_block(blocks[k], index, dtype)
        start = (0,) * (block.ndim - 2) + (y0, x0)
        writer = chunk_writer(target.source)
        if writer is not None and writer.accepts(start, block):
            writer.write(start, block)
        else:
            target.array[..., y0:y0 + block.shape[-2], x0:x0 + block.shape[-1]] = block
    return np.ones((1, 1), dtype=bool)


def _chunk_writers(targets: list) -> list:
    """One write task per ``(y, x)`` chunk, storing that chunk of every array.

    Arrays registered as slices of one stacked array
    (:func:`daskcal.io._zarr_write.register_slice`, e.g. every product of a ramp fit)
    are cut from the stacked block inside the write task, so the task takes one block
    for all of them. Returns collections to compute: a small boolean dask array (one
    element per chunk) whose tasks do the writing, plus a ``da.store`` for arrays
    chunked differently.
    """
    import functools

    import dask.array as da
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    from daskcal.io._zarr_write import slice_of

    if not targets:
        return []
    grid = targets[0][1].chunks[-2:]
    odd = [(t, a) for t, a in targets if a.chunks[-2:] != grid]
    same = [(t, a) for t, a in targets if a.chunks[-2:] == grid]
    writes = []
    if odd:
        writes.append(da.store([a for _, a in odd], [t.array for t, _ in odd], lock=False, compute=False))
    inputs: dict = {}  # name -> (position among the write task's blocks, the dask array it takes them from)
    plan = []
    for target, arr in same:
        cut = slice_of(arr)
        if cut is not None and cut.source.chunks[-2:] == grid and all(n == 1 for n in cut.source.numblocks[:-2]):
            src, index, dtype = cut.source, cut.index, cut.dtype
        else:  # one block per (y, x) chunk: merge any leading-axis chunks first
            src, index, dtype = arr.rechunk((-1,) * (arr.ndim - 2) + grid), None, None
        k = inputs.setdefault(src.name, (len(inputs), src))[0]
        plan.append((target, k, index, dtype))
    arrays = [a for _, a in inputs.values()]
    write = functools.partial(_write_blocks, plan)
    name = "write-chunks-" + tokenize(*arrays, [(t.source, k, i, d) for t, k, i, d in plan])
    ys = np.cumsum((0, *grid[0]))
    xs = np.cumsum((0, *grid[1]))
    dsk = {
        (name, iy, ix): (write, int(ys[iy]), int(xs[ix]), *[(a.name, *(0,) * (a.ndim - 2), iy, ix) for a in arrays])
        for iy in range(len(grid[0]))
        for ix in range(len(grid[1]))
    }
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=arrays)
    nby, nbx = len(grid[0]), len(grid[1])
    writes.append(da.Array(graph, name, chunks=((1,) * nby, (1,) * nbx), dtype=bool))
    return writes


def _default_client():
    try:
        from distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None


save = save_dataset
