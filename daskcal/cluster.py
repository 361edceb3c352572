"""Choosing where a daskcal run executes.

Library functions return lazy objects and never pick a scheduler; the command line
(and users who want the same behaviour) call :func:`connect` to get a
``distributed.Client``:

- ``None`` or ``"local"``: an embedded ``LocalCluster`` (one process per core by
  default, with ``threads_per_worker`` threads each).
- ``"tcp://host:8786"`` (any scheduler address): an existing scheduler.
- ``"slurm"`` / ``"pbs"``: a dask-jobqueue cluster configured from Dask's
  configuration (``jobqueue.slurm.*`` / ``jobqueue.pbs.*``), scaled to ``n_workers`` jobs.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

__all__ = ["WORKER_ENVIRON", "connect"]

log = logging.getLogger(__name__)

#: glibc allocator settings for the worker processes of an embedded cluster.
#:
#: Every chunk task allocates and frees arrays of a few to a few tens of MB (a halo'd
#: ramp chunk, its products, Zarr's decode buffers). Above glibc's mmap threshold each
#: is a fresh mmap whose pages fault in one by one and are zeroed: in detector1 that
#: was 0.6-0.9 s of system time per 2048^2 x 10 cube (a quarter of the run), and it
#: serialises threads on the page-fault path. Dask's nannies make it worse: they set
#: ``MALLOC_TRIM_THRESHOLD_``, which freezes the mmap threshold at 128 KiB, and WCS
#: evaluation then ran ~5x slower. So arrays below 64 MiB come from the heap, and up to
#: 64 MiB of freed heap is kept for the next chunk instead of being returned and
#: faulted in again. One arena for all threads stops each thread from keeping its own
#: free memory: with these settings detector1 ran ~25% faster and its peak RSS was
#: lower (343 vs 356 MB on 1 thread, 383-391 vs 398 MB on 2; benchmarks/results).
#: No per-thread cache of small freed blocks (``tcache_count=0``): a task thread that
#: decodes Zarr chunks itself (Blosc's small temporaries) kept freed small blocks
#: scattered between the chunk-sized ones, so freed chunks could not coalesce and the
#: heap grew: detector1's growth over the pre-run RSS was 80-107 MB on 1 thread and
#: 136-146 MB on 2 with the cache, 13-18 and 63-75 MB without it, at the same speed.
#: (These replace any ``GLIBC_TUNABLES`` of the nanny's own environment.)
WORKER_ENVIRON = {
    "MALLOC_MMAP_THRESHOLD_": 64 * 2**20,
    "MALLOC_TRIM_THRESHOLD_": 64 * 2**20,
    "MALLOC_ARENA_MAX": 1,
    "GLIBC_TUNABLES": "glibc.malloc.tcache_count=0",
}


@contextlib.contextmanager
def connect(
    cluster: str | None = None,
    *,
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    memory_limit: str | None = "auto",
    dashboard_address: str | None = ":0",
) -> Iterator["distributed.Client"]:  # noqa: F821
    """Yield a ``distributed.Client`` for ``cluster`` and close what was opened.

    Parameters
    ----------
    cluster : str or None, default None
        ``None``/``"local"`` (embedded LocalCluster), a scheduler address
        (``"tcp://..."``, ``"tls://..."``, ``"host:port"``), ``"slurm"`` or ``"pbs"``.
    n_workers : int, optional
        Workers of an embedded or jobqueue cluster; default one per core.
    threads_per_worker : int, default 1
        Threads per worker process of an embedded cluster. Kernels release the GIL.
    memory_limit : str, default "auto"
        Memory limit per worker of an embedded cluster.
    dashboard_address : str, default ":0"
        Where an embedded cluster serves its dashboard (``":0"``: a free port).
    """
    import dask
    from distributed import Client, LocalCluster

    kind = (cluster or "local").strip()
    if kind.lower() == "local":
        environ = {f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in WORKER_ENVIRON.items()}
        with dask.config.set(environ), LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            memory_limit=memory_limit,
            dashboard_address=dashboard_address,
            processes=True,
        ) as lc, Client(lc) as client:
            yield client
    elif kind.lower() in {"slurm", "pbs"}:
        try:
            import dask_jobqueue
        except ImportError as exc:
            msg = f"cluster={kind!r} needs dask-jobqueue: pip install 'daskcal[jobqueue]'"
            raise ImportError(msg) from exc
        cls = dask_jobqueue.SLURMCluster if kind.lower() == "slurm" else dask_jobqueue.PBSCluster
        with cls() as jc:
            jc.scale(jobs=n_workers or 1)
            with Client(jc) as client:
                yield client
    elif "://" in kind or ":" in kind:
        with Client(kind) as client:
            yield client
    else:
        msg = f"cluster must be 'local', 'slurm', 'pbs' or a scheduler address such as tcp://host:8786; got {cluster!r}"
        raise ValueError(msg)
