"""Atomic writing of Zarr stores and files.

A product is first written under a hidden temporary name beside its final path
and renamed into place only when every chunk has been written, so a failed or
interrupted run never leaves a store that looks complete.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from daskcal.io._outputs import HIDDEN_METADATA, OutputSet, WorkDirectory, mark_complete, mark_incomplete

log = logging.getLogger(__name__)

__all__ = ["PAUSED_TIMEOUT_CONFIG", "WorkersPausedError", "atomic_path", "compute_on_client", "compute_writes", "consolidate", "save", "save_dataset", "save_products", "write_zarr"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = False,
                inputs: Iterable[str | os.PathLike] = ()) -> Iterator[Path]:
    """Yield a staging path for ``path``; move it into place when the block succeeds.

    The product is written in a hidden staging folder beside ``path``
    (:class:`daskcal.io._outputs.OutputSet`) and appears at ``path`` only when complete;
    a product that appears at ``path`` meanwhile (another run) is never replaced without
    ``overwrite``, and nothing but ``path`` itself is ever replaced.

    Parameters
    ----------
    path : path-like
        Final location (a file or a directory such as a Zarr store).
    overwrite : bool, default False
        Replace an existing ``path``. Without it an existing ``path`` is an error,
        raised before anything is written.
    inputs : iterable of path-like, optional
        Paths the run reads: ``path`` may not be, contain or sit inside one of them.
    """
    with OutputSet([path], overwrite=overwrite, inputs=inputs) as outputs:
        yield outputs.path(path)
        outputs.commit()


def save_dataset(ds, path: str | os.PathLike, *, overwrite: bool = False, compute: bool = True,
                 resume: bool = False):
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
    resume : bool, default False
        Write so that a save that stops (an error, an interruption, a killed process) can be
        continued: the store is written in a hidden folder beside ``path`` that outlives a failed
        save, each ``(y, x)`` chunk recorded with its checksums when written, and the store
        records what was saved (its ``daskcal_run`` attribute: the name of each variable's
        Dask graph, a token of the attributes, daskcal's version). A later ``save(..., resume=True)``
        of the same dataset (the same graph: the same inputs, opened unchanged, and parameters)
        verifies the chunks written, computes only the others and gives the store an
        uninterrupted save gives, bit for bit; a dataset that differs is refused (``ValueError``
        naming the first difference). With nothing to continue it starts afresh; a store that a
        save alike completed is left as it is. Dask-backed variables must have 2 dimensions or
        more. Not with ``overwrite``.
    """
    if not compute:
        msg = "compute=False is not supported: an atomic write must run to completion"
        raise ValueError(msg)
    if resume:
        return _save_resumable(ds, Path(path), overwrite=overwrite)
    with atomic_path(path, overwrite=overwrite) as tmp:
        write_zarr(ds, tmp, encoding=_encoding(ds))
    return Path(path)


def _save_resumable(ds, path: Path, *, overwrite: bool) -> Path:
    """:func:`save_dataset` with ``resume=True``."""
    import json

    from daskcal.io._journal import ChunkJournal
    from daskcal.io._outputs import resume_folder
    from daskcal.io._resume import RUN_ATTR, check_partial, dataset_record, done_before

    if overwrite:
        msg = "resume=True keeps what an earlier save completed and overwrite=True replaces it: give one of them"
        raise ValueError(msg)
    record = dataset_record(ds)
    if done_before([path], record):
        log.info("%s was completed by an earlier save of the same dataset; left as it is", path)
        return path
    check_partial(path, record)
    with OutputSet([path], resumable=[path], resume=True) as outputs:
        folder = resume_folder(path)
        write_zarr(ds.assign_attrs({RUN_ATTR: record}), outputs.path(path),
                   journal=ChunkJournal(str(folder / "chunks"), str(folder), json.dumps(record)))
        outputs.commit()
    return path


def write_zarr(ds, store: Path, *, encoding: dict | None = None, progress: bool = False, journal=None,
               report: dict | None = None, unchanged=frozenset()) -> None:
    """``ds.to_zarr(store)`` with the store's root ``zarr.json`` hidden until every chunk is written.

    Runs on the default ``distributed.Client`` if there is one (cancelling its tasks if the
    write fails or is interrupted), else on dask's current scheduler. With ``journal``
    (:class:`daskcal.io._journal.ChunkJournal`), each chunk is recorded when written, and a
    ``store`` that exists is resumed (see :func:`_write_products`, also for ``report``). The ``(iy, ix)``
    chunks in ``unchanged`` are not written (a mosaic being added to: the caller links them from the stored one).
    """

    from daskcal.io._zarr_read import WRITTEN_ATTR

    if journal is not None or any(WRITTEN_ATTR in var.attrs for var in ds.data_vars.values()):
        # a mosaic: the chunks of tiles no input reaches are left unwritten (their planes' fill value)
        _write_products({"dataset": ds}, {"dataset": store}, progress, journal=journal, report=report,
                        unchanged=unchanged)
        return
    with naming_path(store):
        # every chunk, even one equal to the fill value: a missing chunk reads as an error (daskcal.io._zarr_read)
        with every_chunk():
            write = ds.to_zarr(store, mode="w", zarr_format=3, consolidated=False, compute=False, encoding=encoding)
        mark_incomplete(store)
        compute_writes([write], progress=progress)
        mark_complete(store)
        consolidate(store)


def every_chunk():
    """Zarr arrays created or opened inside write every chunk, even one equal to the fill value
    (a missing chunk reads as an error, :mod:`daskcal.io._zarr_read`).

    Zarr's global ``array.write_empty_chunks`` setting, which arrays take when they are created
    or opened (zarr >= 3.0.8 and xarray >= 2025.1 have no per-call form that both accept).
    """
    import zarr

    return zarr.config.set({"array.write_empty_chunks": True})


@contextlib.contextmanager
def naming_path(path) -> Iterator[None]:
    """Give an OSError raised inside without a file name (zarr's writes, a full disk) ``path`` as its name."""
    try:
        yield
    except OSError as exc:
        if exc.filename is not None or exc.errno is None:
            raise
        raise type(exc)(exc.errno, exc.strerror, str(path)) from exc


def _encoding(ds) -> dict:
    """Blosc-LZ4 with byte shuffle for variables that do not name their own compressor.

    It writes several times faster than Zarr's default Zstandard at a similar ratio on
    noisy float data, and writing products is on the critical path of every run.
    (As ``to_zarr``'s ``encoding`` argument, an entry replaces the variable's own encoding.)
    """
    from zarr.codecs import BloscCodec

    codec = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")
    return {
        name: {"compressors": (codec,), **{k: var.encoding[k] for k in ("fill_value",) if k in var.encoding}}
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


def temporary_directory(parent: str | os.PathLike | None = None, prefix: str = "daskcal-") -> WorkDirectory:
    """A temporary directory under ``parent`` or the system default: ``.name``, ``.cleanup()``.

    It is a marked ``.daskcal-partial-*`` folder (its purpose, ``prefix``, in the marker), so
    a later run removes it if this process is killed before cleaning up.
    """
    return WorkDirectory(parent, purpose=prefix.strip("-"))


def save_products(products: dict, out_dir: str | os.PathLike, *, overwrite: bool = False, progress: bool = False,
                  outputs: OutputSet | None = None, inputs: Iterable[str | os.PathLike] = (),
                  also: tuple = (), journal=None, report: dict | None = None,
                  side: dict | None = None, late_attrs: Iterable[str] = ()) -> dict | tuple[dict, list]:
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

    The stores are written in a hidden staging folder inside ``out_dir``, each with its
    root ``zarr.json`` hidden until its last chunk is written (so an interrupted run
    leaves nothing that opens as a product), and appear together when all are complete.
    ``out_dir`` itself is created if missing and never replaced; only the named stores are.
    If the computation fails or is interrupted, its tasks are cancelled before the
    staging folder is removed.

    Parameters
    ----------
    products : dict of str to xarray.Dataset
        Name -> dataset. Dask-backed variables should share one ``(y, x)`` chunking.
    out_dir : path-like
        Destination directory.
    overwrite : bool, default False
        Replace existing ``out_dir/<name>.zarr`` stores (nothing else in ``out_dir``).
    progress : bool, default False
        Show a console progress bar (needs an active ``distributed.Client``).
    outputs : daskcal.io._outputs.OutputSet, optional
        An entered output set that includes every ``out_dir/<name>.zarr``: the stores are
        written in its staging folder and left for the caller to commit (with other
        products, such as FITS exports). Without it the stores are committed here.
    inputs : iterable of path-like, optional
        Paths the run reads, which no product may be, contain or sit inside (when
        ``outputs`` is not given).
    also : sequence of dask collections, optional
        Computed in the same pass as the writes, so work they share with the
        products runs once (e.g. a count of flagged pixels to report).
    journal : daskcal.io._journal.ChunkJournal, optional
        With ``outputs``: record each chunk as written, and resume the stores that exist
        (their metadata must be what this write writes; their chunks whose records match
        the disk are not computed again).
    report : dict, optional
        With ``journal``: receives ``kept`` (chunks kept), ``redone`` (files that did not match
        their record) and ``chunks`` (write tasks that write something, kept ones included).
    side : dict of path-like to xarray.Dataset, optional
        With ``outputs``: datasets written by the same chunk tasks (and recorded in the same
        ``journal``) to the given stores, which are not products (nothing commits them): a
        per-chunk result a resumed run needs for the chunks it keeps (detector1's count of pixels
        with NaN samples).
    late_attrs : iterable of str, optional
        With ``journal``: names of root attributes the caller records in the staged stores after the
        writes, before they are committed (detector1's ``primary_cosmic_rays`` and
        ``extended_emission_events``, known once every chunk is counted). A resumed store that already
        holds them (its earlier run got that far) still matches what this write writes; any other
        difference of its metadata refuses the resume.

    Returns
    -------
    dict of str to Path
        Name -> final store path; with ``also``, ``(paths, [their computed values])``.
    """
    finals = {name: Path(out_dir) / f"{name}.zarr" for name in products}
    if journal is not None and outputs is None:
        msg = "journal= needs outputs= (an OutputSet whose resumable products hold the stores)"
        raise ValueError(msg)
    if side and outputs is None:
        msg = "side= needs outputs= (the side stores are written with staged products)"
        raise ValueError(msg)
    if outputs is not None:
        stores = {name: outputs.path(f) for name, f in finals.items()}
        extra = {f"side:{path}": ds for path, ds in (side or {}).items()}
        stores.update({f"side:{path}": Path(path) for path in side or {}})
        values = _write_products({**products, **extra}, stores, progress, also, journal=journal, report=report,
                                 late_attrs=frozenset(late_attrs))
    else:
        with OutputSet(finals.values(), overwrite=overwrite, inputs=inputs) as own:
            values = _write_products(products, {name: own.path(f) for name, f in finals.items()}, progress, also)
            own.commit()
    return (finals, values) if also else finals


def _write_products(products: dict, stores: dict, progress: bool, also: tuple = (), journal=None,
                    report: dict | None = None, unchanged=frozenset(), late_attrs=frozenset()) -> list:
    """Write each dataset of ``products`` to the (staging) store ``stores[name]``; see :func:`save_products`.
    Returns the computed values of ``also``.

    With ``journal`` (a :class:`daskcal.io._journal.ChunkJournal` whose ``root`` holds the stores), every
    chunk written is recorded there; a store that exists already is resumed: its metadata must be what this
    write would write (else ``ValueError`` naming the file), and its chunks whose records match the disk are
    not computed again (:meth:`~daskcal.io._journal.ChunkJournal.verified`). ``report`` (a dict) then
    receives ``kept`` (chunks kept), ``redone`` (files that did not match their record) and ``chunks``
    (the write tasks that write something, kept ones included). ``late_attrs``: root attributes a resumed
    store may hold beyond what this write writes (see :func:`save_products`).
    """
    import zarr

    from daskcal.io._zarr_read import ZarrSource

    targets = []
    done: set = set()
    for name, ds in products.items():
        store = stores[name]
        with naming_path(store):
            # metadata and numpy-backed variables now; dask-backed chunks below
            template, encoding = _metadata_template(ds, _encoding(ds))
            resuming = journal is not None and os.path.lexists(store)
            with every_chunk():
                if resuming:
                    mark_incomplete(store)  # a run stopped between its last chunk and its commit showed it
                    _check_same_metadata(template, encoding, Path(store), late_attrs)
                    arrays = {v: zarr.open_array(Path(store) / v, mode="r+", zarr_format=3) for v in ds.data_vars
                              if _is_dask(ds[v].data)}
                else:
                    template.to_zarr(store, mode="w", zarr_format=3, consolidated=False, compute=False,
                                     encoding=encoding)
                    group = zarr.open_group(store, mode="r+", zarr_format=3)
                    arrays = {v: group[v] for v in ds.data_vars if _is_dask(ds[v].data)}
                targets += [(_Target(arrays[v], ZarrSource.at(store, v), _unwritten(ds[v]), str(name)), ds[v].data)
                            for v in arrays]
            mark_incomplete(store)
    if journal is not None:
        done, redone = journal.verified()
        for path in redone:
            log.warning("%s does not match the record of its chunk (missing, torn or changed): its chunk is "
                        "computed and written again", path)
        journal.start()
        if done:
            log.info("resume: %d chunks written by an earlier run are verified and kept", len(done))
        if report is not None:
            report.update(kept=len(done), redone=redone)
    writes = _chunk_writers(targets, journal, frozenset(done), frozenset(unchanged))
    if report is not None:
        report["chunks"] = _count_writes(writes) + report.get("kept", 0)
    with naming_path(Path(next(iter(stores.values()))).parent if stores else "."):
        values = compute_writes([*writes, *also], progress=progress)
    for store in stores.values():
        mark_complete(store)
        consolidate(store)
    return list(values[len(writes):])


def _count_writes(writes) -> int:
    """How many of the chunk write tasks of ``writes`` (:func:`_chunk_writers`) write something."""
    n = 0
    for w in writes:
        name = getattr(w, "name", "")
        if name.startswith("write-chunks-"):
            n += sum(1 for key, task in w.dask.items() if isinstance(key, tuple) and key[0] == name
                     and not (isinstance(task, tuple) and task[:1] == (_nothing,)))
    return n


def _check_same_metadata(template, encoding: dict, store: Path, late_attrs=frozenset()) -> None:
    """Refuse to resume ``store`` (a staged store an earlier run began) unless its metadata and
    numpy-backed variables are, byte for byte, what this write would write (``ValueError`` naming
    the first file that differs), but for the root attributes named in ``late_attrs`` (recorded after
    the writes) and the consolidated metadata."""
    import shutil
    import tempfile

    scratch = Path(tempfile.mkdtemp(prefix=".daskcal-check-", dir=store.parent))
    try:
        fresh = scratch / store.name
        template.to_zarr(fresh, mode="w", zarr_format=3, consolidated=False, compute=False, encoding=encoding)
        for path in sorted(p for p in fresh.rglob("*") if p.is_file()):
            rel = path.relative_to(fresh)
            root = rel.as_posix() == "zarr.json"
            staged = store / (HIDDEN_METADATA if root else rel)
            if not staged.is_file() or not _same_file(staged, path, root, late_attrs):
                msg = (f"{staged} is not what this run writes there (a damaged partial product, or one of another "
                       f"daskcal version); run without --resume (resume=False) to start over")
                raise ValueError(msg)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _same_file(staged: Path, fresh: Path, root: bool, late_attrs=frozenset()) -> bool:
    """Whether a staged metadata file is the fresh one (a root ``zarr.json`` whose consolidated metadata,
    or attributes named in ``late_attrs``, were already added: the rest of it)."""
    import json

    if staged.read_bytes() == fresh.read_bytes():
        return True
    if not root:
        return False
    try:
        then, now = json.loads(staged.read_text()), json.loads(fresh.read_text())
    except ValueError:
        return False
    for meta in (then, now):
        meta.pop("consolidated_metadata", None)
        attrs = meta.get("attributes", {})
        for name in late_attrs:
            attrs.pop(name, None)
    return then == now


def consolidate(store: str | os.PathLike) -> None:
    """Add the consolidated metadata of the written (still staged) ``store`` to its root ``zarr.json``,
    so ``xr.open_zarr(store)`` reads it in one file and without a warning.

    Every array's metadata is final by then (our writers write it before any chunk).
    Zarr warns that consolidated metadata is not yet part of the Zarr v3 specification;
    it is zarr-python's and xarray's convention, and readers without it ignore the key.
    """
    import warnings

    import zarr

    with naming_path(store), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part")
        zarr.consolidate_metadata(store, zarr_format=3)
        _sort_consolidated(Path(store) / "zarr.json")


def _sort_consolidated(root_json: Path) -> None:
    """Put the consolidated metadata's arrays in name order, as zarr 3.1 writes them (zarr 3.0 lists them in
    the directory's order, so two stores of the same data differed in their root ``zarr.json``)."""
    import json

    meta = json.loads(root_json.read_text())
    listed = meta.get("consolidated_metadata", {}).get("metadata")
    if not listed or list(listed) == sorted(listed):
        return
    meta["consolidated_metadata"]["metadata"] = {name: listed[name] for name in sorted(listed)}
    root_json.write_text(json.dumps(meta, indent=2))


def compute_writes(collections: list, *, progress: bool = False) -> list:
    """Run write tasks; when this returns or raises, none of them is running any more.

    Returns the computed values of ``collections``, in order.

    On the default ``distributed.Client`` if there is one (:func:`compute_on_client`). Else
    on dask's scheduler; the threaded one gets a pool of our own, so that on a failure or
    an interruption the tasks still queued are dropped and those running are waited for
    (dask's own ``get`` returns as soon as one task fails, while others are still writing
    into a folder its caller is about to remove).
    """
    import dask

    client = _default_client()
    if client is not None:
        with _keep_priorities(collections):
            return list(compute_on_client(client, collections, progress=progress))
    if dask.config.get("scheduler", None) not in (None, "threads", "threading"):
        return list(dask.compute(*collections))
    from concurrent.futures import ThreadPoolExecutor

    from dask.system import CPU_COUNT

    pool = ThreadPoolExecutor(dask.config.get("num_workers", None) or CPU_COUNT, thread_name_prefix="daskcal-write")
    try:
        values = dask.compute(*collections, scheduler="threads", pool=pool)
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return list(values)


def _keep_priorities(collections):
    """A context in which ``collections`` reach a ``distributed`` scheduler with their tasks' priority annotations.

    Dask's array optimisation fuses the whole graph into one low-level layer and drops the layers'
    annotations; where a graph sets task priorities (resample orders its tiles so that each is finished before
    the next is started), low-level fusion is turned off for this computation (culling and blockwise fusion
    still run). Measured on a mosaic of 8 inputs at pixel scale ratio 0.1 on 2 workers of 1.5 GiB: without the
    priorities, 3x more partial tile sums were held and the workers paused.
    """
    import dask

    for c in collections:
        graph = c.__dask_graph__() if hasattr(c, "__dask_graph__") else None
        layers = getattr(graph, "layers", None) or {}
        if any("priority" in (getattr(layer, "annotations", None) or {}) for layer in layers.values()):
            return dask.config.set({"optimization.fuse.active": False})
    return contextlib.nullcontext()


def compute_on_client(client, collections, *, progress: bool = False):
    """Compute ``collections`` on ``client``; on any failure or interruption cancel them first.

    Cancelling before the caller removes its staging folder keeps queued tasks from
    writing into it (tasks already running finish their chunk; the writers never
    re-create a store that was removed).
    """
    t0 = time.perf_counter()
    futures = client.compute(collections)
    log.info("timing: graph optimised and sent to the scheduler in %.2f s", time.perf_counter() - t0)
    watch = _PauseWatch(client, futures)
    try:
        if progress:
            from daskcal.io._progress import show_progress

            show_progress(futures)
        return client.gather(futures)
    except BaseException:
        with contextlib.suppress(Exception):
            client.cancel(futures)
            _wait_until_stopped(client)
        if watch.error is not None:
            raise watch.error from None
        raise
    finally:
        watch.stop()


class WorkersPausedError(ValueError):
    """A worker stayed paused for lack of memory while no task could run: the run's tasks need more
    memory per worker than the workers have (a setting to change, not a failure of the data)."""


#: Dask configuration key: seconds during which a worker may stay paused (at distributed's
#: ``distributed.worker.memory.pause`` fraction of its memory limit) while no task runs, before a
#: run is stopped (``DASK_DASKCAL__PAUSED_TIMEOUT`` in the environment).
PAUSED_TIMEOUT_CONFIG = "daskcal.paused-timeout"


class _PauseWatch:
    """Stops a computation that stalls because a worker is paused for memory.

    A worker over ``distributed.worker.memory.pause`` (80%) of its memory limit stops taking
    tasks until its memory falls. When it holds more than that for good (a tile, a block or a
    buffer larger than the limit allows, beside the ~450 MB a worker holds after importing
    the kernels) and the other workers wait on it, the run waits forever without an error:
    seen with the outlier step on 2 workers of 1 GiB, in one run of three. This thread asks
    the scheduler every 2 s; once a worker has been paused while no worker ran a task for
    ``daskcal.paused-timeout`` seconds (default 120), it cancels the futures and the run fails
    with :class:`WorkersPausedError`, naming the workers' limit and the settings to change.
    """

    def __init__(self, client, futures) -> None:
        import threading

        import dask

        self.client, self.futures = client, futures
        self.timeout = float(dask.config.get(PAUSED_TIMEOUT_CONFIG, 120))
        self.error: WorkersPausedError | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="daskcal-pause-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import time

        since = None
        interval = min(2.0, max(self.timeout / 4, 0.05))
        while not self._stop.wait(interval):
            try:
                workers = list(self.client.scheduler_info()["workers"].values())
            except Exception:  # noqa: BLE001 - a closing client: nothing to watch
                return
            if _stalled(workers):
                since = since if since is not None else time.monotonic()
                if time.monotonic() - since >= self.timeout:
                    self.error = WorkersPausedError(_paused_message(workers, self.timeout))
                    with contextlib.suppress(Exception):
                        self.client.cancel(self.futures)
                    return
            else:
                since = None

    def stop(self) -> None:
        self._stop.set()


def _stalled(workers: list) -> bool:
    """A worker is paused for memory and no worker is running a task (the others wait on it, or all are paused)."""
    if not workers or not any(w.get("status") == "paused" for w in workers):
        return False
    return not any((w.get("metrics") or {}).get("task_counts", {}).get("executing", 0) for w in workers)


def _paused_message(workers: list, seconds: float) -> str:
    from dask.utils import format_bytes

    limits = sorted({w.get("memory_limit") or 0 for w in workers})
    limit = " / ".join(format_bytes(n) for n in limits if n) or "no limit"
    paused = sum(w.get("status") == "paused" for w in workers)
    return (f"{paused} of {len(workers)} workers paused at their memory limit ({limit} each) and no task ran for "
            f"{seconds:.0f} s with work left: the tasks need more memory than that; raise --memory-limit (or run "
            f"fewer workers with more memory each), or make the work smaller: --tile-shape, --buffer-size, --chunks")


def _wait_until_stopped(client, timeout: float = 60.0) -> None:
    """After cancelling, wait until the workers no longer run what was running (cancelling does
    not stop a running task, and a late chunk write would re-create a staging folder that is
    being removed).

    Waits until none of the tasks the workers were running when this was called still runs,
    and no worker runs a cancelled task, over two checks 50 ms apart (a task that started
    just before its worker heard of the cancellation turns "cancelled" then). The
    distributed API has no public "is this cancelled task still running"; this asks each
    worker through ``Client.run`` for its ``state.executing`` and ``state.long_running``
    (distributed >= 2022.11). If those are missing it falls back to a fixed wait, with a warning.
    """
    import time

    def running(dask_worker):
        state = dask_worker.state
        return [(str(ts.key), ts.state) for ts in (*state.executing, *state.long_running)]

    deadline = time.monotonic() + timeout
    first = None
    clean = 0
    while time.monotonic() < deadline:
        try:
            busy = [task for tasks in client.run(running).values() for task in tasks]
        except AttributeError:
            log.warning("cannot ask the workers whether cancelled writes still run; waiting 2 s")
            time.sleep(2.0)
            return
        if first is None:
            first = {key for key, _ in busy}
        clean = 0 if any(key in first or state == "cancelled" for key, state in busy) else clean + 1
        if clean >= 2:
            return
        time.sleep(0.05)
    log.warning("tasks of the cancelled run were still running after %.0f s", timeout)


def _is_dask(arr) -> bool:
    import dask.array as da

    return isinstance(arr, da.Array)


@dataclass(frozen=True)
class _Target:
    """A Zarr array to write: the opened array (for zarr-python) and where it is (for :class:`ChunkWriter`)."""

    array: object
    source: object
    skip: object = None  # (iy, ix) -> True for a chunk that is not written (see _unwritten)
    product: str | None = None  # the product (dataset) it belongs to: each product gets its own write tasks


def _unwritten(var):
    """A test of the ``(iy, ix)`` chunks of ``var`` that are not to be written (they are its fill value),
    from its :data:`~daskcal.io._zarr_read.WRITTEN_ATTR`; None when every chunk is written."""
    from daskcal.io._zarr_read import _may_miss, _sparse_of

    sparse = _sparse_of(var.attrs)  # the reader's own reading of the attributes
    if isinstance(sparse, bool):  # not sparse, or sparse without a list of written chunks: write them all
        return None
    return lambda c: _may_miss(sparse, c)


def _the_plan(write):
    """Task: the write function with its plan (see :func:`_chunk_writers`)."""
    return write


def _apply_plan(write, y0: int, x0: int, y1: int, x1: int, *blocks) -> np.ndarray:
    """Task: one ``(y, x)`` chunk written by the plan's write function."""
    return write(y0, x0, y1, x1, *blocks)


def _write_blocks(plan, y0: int, x0: int, y1: int, x1: int, *blocks, journal=None) -> np.ndarray:
    """Write the ``[y0:y1, x0:x1]`` chunk of every target.

    ``plan`` holds ``(target, k, index, dtype)``: the target's block is ``blocks[k]``, or
    ``blocks[k][index].view(dtype)`` when ``index`` is not None (a slice of a stacked block), or,
    when ``k`` is a :class:`~daskcal.io._zarr_read.ZarrSource`, the chunk read from it here.
    Blocks are encoded and written in this thread where the array's layout allows
    (:class:`daskcal.io._zarr_write.ChunkWriter`); the rest go through zarr-python
    (its ``__setitem__``). With ``journal`` (a :class:`daskcal.io._journal.ChunkJournal` and the
    targets' tag), the chunk files written are then recorded there with their checksums. Then the
    files written here are handed to :func:`daskcal.io._writeback.release` (to disk and out of the
    page cache in the background).
    """
    from daskcal.io._writeback import release

    files = None if journal is None else []
    written = []  # descriptors of the chunk files this task wrote, left open for release()
    try:
        _write_plan(plan, y0, x0, y1, x1, blocks, files, written)
        if journal is not None:
            journal[0].record(journal[1], y0, x0, files)
    finally:
        release(written)  # to disk and out of the page cache, in the background: no step of the run reads them again
    return np.ones((1, 1), dtype=bool)


def _write_plan(plan, y0, x0, y1, x1, blocks, files: list | None, written: list) -> None:
    """:func:`_write_blocks`' writing: the chunk files named into ``files`` (for the journal; None: not named), the
    descriptors of the files written by :class:`daskcal.io._zarr_write.ChunkWriter` (left open) into ``written``."""
    from daskcal.io._zarr_write import chunk_writer, take_block

    for target, k, index, dtype in plan:
        if not isinstance(k, int):  # a variable copied from a Zarr input: read where it is written
            lead = tuple(slice(0, n) for n in target.array.shape[:-2])
            block = k.read((*lead, slice(y0, y1), slice(x0, x1)))
        else:
            block = blocks[k] if index is None else take_block(blocks[k], index, dtype)
        start = (0,) * (block.ndim - 2) + (y0, x0)
        writer = chunk_writer(target.source)
        if writer is not None and writer.accepts(start, block):
            written += writer.write(start, block, keep_open=True)
        else:
            target.array[..., y0:y0 + block.shape[-2], x0:x0 + block.shape[-1]] = block
        if files is not None:
            from daskcal.io._journal import chunk_files

            folder = Path(target.source.store) / target.source.name
            files += [str(folder / key) for key in chunk_files(target.array, start, block.shape)]


def _nothing() -> np.ndarray:
    """The write task of a chunk no target writes (every target's fill value there)."""
    return np.ones((1, 1), dtype=bool)


def _chunk_writers(targets: list, journal=None, done=frozenset(), unchanged=frozenset()) -> list:
    """One write task per ``(y, x)`` chunk, storing that chunk of every array.

    Arrays registered as slices of one stacked array
    (:func:`daskcal.io._zarr_write.register_slice`, e.g. every product of a ramp fit)
    are cut from the stacked block inside the write task, so the task takes one block
    for all of them. Returns collections to compute: a small boolean dask array (one
    element per chunk) whose tasks do the writing, per (y, x) chunk grid among the arrays, plus a
    ``da.store`` for arrays of fewer than 2 dimensions.

    With ``journal`` (:class:`daskcal.io._journal.ChunkJournal`), every write task records the chunk
    files it wrote, and the chunks in ``done`` (``(tag, y0, x0)``, from
    :meth:`~daskcal.io._journal.ChunkJournal.verified`) are not computed again, nor the ``(iy, ix)`` chunks in
    ``unchanged``.
    """
    import dask.array as da

    if not targets:
        return []
    flat = [(t, a) for t, a in targets if a.ndim < 2]
    if flat and journal is not None:
        msg = f"arrays of fewer than 2 dimensions cannot be resumed chunk by chunk: {[t.source.name for t, _ in flat]}"
        raise ValueError(msg)
    writes = []
    if flat:
        writes.append(da.store([a for _, a in flat], [t.array for t, _ in flat], lock=False, compute=False))
    for grid, same in _write_groups([(t, a) for t, a in targets if a.ndim >= 2]):
        writes.append(_grid_writes(grid, same, journal, done, unchanged))
    return writes


def _write_groups(targets: list) -> list:
    """The targets (pairs of target and dask array) cut into the groups that share write tasks: ``(grid, pairs)``.

    One set of write tasks per product and (y, x) chunk grid (a mosaic's tiles, its exposures' chunks): a write
    task waits for every block it writes, so one task for the same chunk of all 32 exposures' crf products
    of an image3 run waited for the flags of the last exposure while holding the NaN'd chunks of all the others
    (900 MB of one worker's 1.65 GB of results at its peak, measured on 32 x 2048^2). Products whose arrays
    are slices of one stacked array (a ramp fit's rate and rateints) stay together: the task takes that one
    block for all of them.
    """
    from daskcal.io._zarr_write import slice_of

    parent: dict = {}

    def root(k):
        while parent.setdefault(k, k) != k:
            k = parent[k]
        return k

    keys = []
    for t, a in targets:
        key = ("product", a.chunks[-2:], t.product)
        cut = slice_of(a)
        if cut is not None:  # join the products cut from one stacked array
            parent[root(key)] = root(("stacked", a.chunks[-2:], cut.source.name))
        keys.append(key)
    groups: dict = {}
    for (t, a), key in zip(targets, keys, strict=True):
        groups.setdefault(root(key), (a.chunks[-2:], []))[1].append((t, a))
    return list(groups.values())


def _grid_writes(grid, same, journal=None, done=frozenset(), unchanged=frozenset()):
    """The write tasks of the arrays ``same`` (pairs of target and dask array) chunked as ``grid`` in (y, x);
    with ``journal``, recorded there, and those of the chunks in ``done`` left out (see :func:`_chunk_writers`)."""
    import functools

    import dask.array as da
    from dask.base import tokenize
    from dask.highlevelgraph import HighLevelGraph

    from daskcal.io._zarr_read import zarr_source
    from daskcal.io._zarr_write import slice_of

    inputs: dict = {}  # name -> (position among the write task's blocks, the dask array it takes them from)
    plan = []
    for target, arr in same:
        source = zarr_source(arr)
        if source is not None:
            # A variable copied unchanged from a Zarr input (an outlier step's crf products: data, err and
            # variances) is read by the write task itself. As separate read tasks, the chunks were read long
            # before their write could run (it waits for the flags, which wait for the median of every
            # exposure) and held meanwhile: on 32 exposures of 2048^2, ~80 chunks of each of 6 variables per
            # worker, 1.6 GB of the 2.8 GB each worker reached.
            plan.append((target, source, None, None))
            continue
        cut = slice_of(arr)
        if cut is not None and cut.source.chunks[-2:] == grid and all(n == 1 for n in cut.source.numblocks[:-2]):
            src, index, dtype = cut.source, cut.index, cut.dtype
        else:  # one block per (y, x) chunk: merge any leading-axis chunks first
            src, index, dtype = arr.rechunk((-1,) * (arr.ndim - 2) + grid), None, None
        k = inputs.setdefault(src.name, (len(inputs), src))[0]
        plan.append((target, k, index, dtype))
    arrays = [a for _, a in inputs.values()]
    tag = None
    if journal is not None:
        from daskcal.io._journal import grid_tag

        tag = grid_tag(f"{t.product}/{t.source.name}" for t, _ in same)
    write = functools.partial(_write_blocks, [(replace(t, skip=None), k, i, d) for t, k, i, d in plan],
                              journal=None if journal is None else (journal, tag))
    name = "write-chunks-" + tokenize(*arrays, [(t.source, k, i, d) for t, k, i, d in plan], journal, sorted(done),
                                      sorted(unchanged))
    # the plan (the opened Zarr arrays, whose attributes can hold a mosaic's list of written tiles) is one task
    # that every write task takes: each worker gets one copy. Inside each write task, it made every task
    # ~120 KB pickled (8 arrays of a mosaic with 1160 written tiles) and more once unpickled, and a worker keeps
    # a finished task (the write tasks are the computation's outputs) until the end: ~1 MB per tile written,
    # measured as unmanaged memory growing until 1.5 GiB workers paused.
    plan_key = "write-plan-" + name.removeprefix("write-chunks-")
    ys = np.cumsum((0, *grid[0]))
    xs = np.cumsum((0, *grid[1]))
    dsk = {
        (name, iy, ix): (_apply_plan, plan_key, int(ys[iy]), int(xs[ix]), int(ys[iy + 1]), int(xs[ix + 1]),
                         *[(a.name, *(0,) * (a.ndim - 2), iy, ix) for a in arrays])
        if not all(t.skip is not None and t.skip((iy, ix)) for t, _ in same)
        and (tag, int(ys[iy]), int(xs[ix])) not in done and (iy, ix) not in unchanged else (_nothing,)
        for iy in range(len(grid[0]))
        for ix in range(len(grid[1]))
    }
    dsk[plan_key] = (_the_plan, write)
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=arrays)
    nby, nbx = len(grid[0]), len(grid[1])
    return da.Array(graph, name, chunks=((1,) * nby, (1,) * nbx), dtype=bool)


def _default_client():
    """The ``distributed.Client`` dask would use now, or None.

    A scheduler the caller chose (``dask.config.set(scheduler="sync")``, ``"threads"``, a
    ``get`` function) wins over a default client, as it does for ``.compute()``; a client
    given as the scheduler is used as it is.
    """
    import dask

    chosen = dask.config.get("scheduler", None)
    if chosen is not None and chosen != "dask.distributed":
        return chosen if hasattr(chosen, "gather") and hasattr(chosen, "compute") else None
    try:
        from distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None


save = save_dataset
