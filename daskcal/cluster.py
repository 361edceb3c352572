"""Choosing where a daskcal run executes.

Library functions return lazy objects and never pick a scheduler; the command line
(and users who want the same behaviour) call :func:`connect` to get a
``distributed.Client``:

- ``None`` or ``"local"``: an embedded ``LocalCluster`` (one process per core by
  default, with ``threads_per_worker`` threads each). Its scheduler, workers and
  dashboard listen on 127.0.0.1 only, and its connections use TLS with a temporary
  self-signed certificate that only this process holds
  (``distributed.security.Security.temporary()``): another local user can neither
  reach it from another machine nor connect to its scheduler and run code on its
  workers.
- ``"threads"``: an embedded ``LocalCluster`` in this process: one worker whose threads
  (one per core by default) run the tasks, as Dask's threaded scheduler does, with the
  dashboard, progress and memory management of a cluster. No worker process is started
  (nothing to fork or import again, and the process's caches serve every task), and its
  scheduler is reachable only from this process.
- ``"tcp://host:8786"``, ``"tls://host:8786"`` or ``"host:8786"``: an existing scheduler.
- a path to a scheduler file (the JSON that ``dask scheduler --scheduler-file`` writes):
  the existing scheduler it names.
- ``"slurm"`` / ``"pbs"``: a dask-jobqueue cluster configured from Dask's
  configuration (``jobqueue.slurm.*`` / ``jobqueue.pbs.*``), scaled to ``n_workers`` jobs.

An existing scheduler that uses TLS needs a ``security`` (a
``distributed.security.Security``); without one, Dask's configuration
(``distributed.comm.tls.ca-file``, ``distributed.comm.tls.client.cert`` / ``.key``) applies.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import json
import logging
import math
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "WORKER_ENVIRON",
    "MissingPackageError",
    "SchedulerConnectError",
    "WorkersTimeoutError",
    "connect",
    "preload_workers",
    "workers_in_process",
]

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


#: The :data:`WORKER_ENVIRON` variables set in this process's environment when daskcal.cluster was imported (the
#: user's, which win over ours). Read then, because distributed's nannies copy their own settings into
#: ``os.environ`` when they start a worker (``MALLOC_TRIM_THRESHOLD_`` 65536 after a plain
#: ``distributed.LocalCluster`` of processes), and a nanny takes ``os.environ``'s value over its configuration.
_INHERITED = {k: os.environ[k] for k in WORKER_ENVIRON if k in os.environ}


#: Modules every worker of an embedded cluster starts with (see :func:`preload_workers`).
#: ``daskcal._numba_ready`` sets numba's compiler up (0.3-0.6 s of each worker's first task otherwise);
#: ``daskcal._worker_logs`` drops the heartbeat error a closing worker can log.
WORKER_MODULES = ("distributed", "numpy", "dask.array", "xarray", "zarr", "numba", "daskcal._numba_ready",
                  "daskcal._worker_logs")
#: Modules the tasks of detector1 import (preloaded by the command line's detector commands).
DETECTOR_TASK_MODULES = ("daskcal.detector._fused", "daskcal.io._zarr_read", "daskcal.io._zarr_write")
#: Modules the tasks of the image stage import (preloaded by the command line's image commands).
#: ``daskcal.image._asdf_preload`` loads asdf's extensions (asdf-astropy's import astropy.modeling,
#: coordinates, nddata...): on a worker that first reads a WCS, 0.7-1.0 s of its first task.
IMAGE_TASK_MODULES = ("daskcal.image._resample", "daskcal.image._outlier_blocks", "daskcal.image._skymatch",
                      "daskcal.io._zarr_read", "daskcal.image._asdf_preload")
#: What a worker serving its own dashboard imports (bokeh: 1-2 s of CPU); preloaded only for those.
_WORKER_DASHBOARD = "distributed.dashboard.worker"

#: (process id, environment) of the fork server this process started (:func:`preload_workers`), if any.
_forkserver: tuple[int, dict[str, str]] | None = None


def preload_workers(modules: tuple[str, ...] = (), *, dashboard: bool = True) -> None:
    """Start the process that an embedded cluster forks its workers from, importing ``modules`` there.

    An embedded cluster's worker processes are forked from one "fork server" (multiprocessing's
    ``forkserver``) that imports :data:`WORKER_MODULES` and ``modules`` once, in the background: each
    worker then starts with them (instead of each worker importing distributed, numpy, dask, xarray,
    zarr and numba again, 1.5-2.5 s of CPU per worker here, and the modules of its first task), with
    numba's compiler set up, and exits without tearing its interpreter down (0.6-0.8 s saved at the
    end of a run). ``dashboard``: the workers will serve dashboards (the cluster has one), so the
    server imports theirs too.
    Calling this before :func:`connect` (say, before opening the inputs) lets the imports run while the
    caller works; :func:`connect` starts the server itself otherwise. Does nothing if this process
    already runs a fork server; a module that fails to import is skipped there (the worker imports it
    when a task needs it, as without preloading).

    The server is started with the environment the workers need (:data:`WORKER_ENVIRON` and Dask's
    ``distributed.nanny.pre-spawn-environ``), and stops when this process and its workers have exited.
    """
    global _forkserver
    import multiprocessing
    from multiprocessing import forkserver

    if _forkserver_running():
        return
    environ = _worker_environ()
    preload = [*WORKER_MODULES, *([_WORKER_DASHBOARD] if dashboard else []), *modules]
    multiprocessing.get_context("forkserver").set_forkserver_preload(list(dict.fromkeys(preload)))
    with _os_environ(environ):  # inherited by the server, hence by every worker it forks
        forkserver.ensure_running()
    if _forkserver is None:
        atexit.register(_stop_idle_forkserver)
    _forkserver = (_forkserver_pid(), environ)
    log.debug("fork server for the workers started, importing %s", ", ".join(dict.fromkeys(preload)))


def _forkserver_running() -> bool:
    """Whether multiprocessing's fork server runs (without reaping it: multiprocessing waits for it itself)."""
    import psutil

    pid = _forkserver_pid()
    if pid is None:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _stop_idle_forkserver() -> None:
    """At exit, stop the fork server if no worker of it is alive (a command that stopped before its cluster
    started): it would otherwise finish its imports, up to 2 s, before noticing that this process is gone."""
    import signal

    import psutil

    pid = _forkserver_pid()
    if pid is None or not _forkserver_running():
        return
    try:
        if psutil.Process(pid).children():
            return  # it exits with the last of them
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
    except (psutil.Error, ProcessLookupError, ChildProcessError):
        pass


def _forkserver_pid() -> int | None:
    from multiprocessing import forkserver

    return forkserver._forkserver._forkserver_pid


def _worker_environ() -> dict[str, str]:
    """The environment variables a nanny of the embedded cluster sets before starting its worker process.

    As ``distributed.nanny.Nanny`` computes them: Dask's ``distributed.nanny.pre-spawn-environ`` with
    :data:`WORKER_ENVIRON` over it, a variable already set in this process's environment winning (for those of
    :data:`WORKER_ENVIRON`, as it was when daskcal was imported: :data:`_INHERITED`), and ``PYTHONHASHSEED``
    6640 unless set to something other than 0.
    """
    import dask
    import distributed  # noqa: F401 - its configuration defaults

    with dask.config.set(_pre_spawn_config()):  # (get's dict is the configuration's own, undone at exit)
        config = dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {}
        environ = {k: (_INHERITED.get(k, str(v)) if k in WORKER_ENVIRON else os.environ.get(k, str(v)))
                   for k, v in config.items() if v is not None}
    if environ.get("PYTHONHASHSEED") in (None, "0"):
        environ["PYTHONHASHSEED"] = "6640"
    return environ


@contextlib.contextmanager
def _os_environ(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` for the block, then as it was."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _pre_spawn_config() -> dict:
    return {f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in WORKER_ENVIRON.items()}


#: Dask configuration key of the scheduler's root-task queueing, and the value the embedded cluster uses.
SATURATION = "distributed.scheduler.worker-saturation"
WORKER_SATURATION = 1.0


class MissingPackageError(ModuleNotFoundError):
    """An optional package that the chosen cluster needs is not installed (the message says how to install it)."""


class SchedulerConnectError(ConnectionError):
    """An existing Dask scheduler did not answer within the connect timeout, or refused the connection."""


class WorkersTimeoutError(TimeoutError):
    """No worker of a batch-system cluster joined in time (the message gives the queue's state of its jobs)."""


def connect(
    cluster: str | None = None,
    *,
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    memory_limit: str | None = "auto",
    dashboard_address: str | None = ":0",
    security: distributed.security.Security | None = None,  # noqa: F821
    timeout: float = 10.0,
    tls: bool = True,
    wait_workers: float = 300.0,
    adapt: tuple[int, int] | None = None,
) -> distributed.Client:  # noqa: F821
    """A ``distributed.Client`` for ``cluster``; closing it stops what ``connect`` started.

    Use it as ``client = daskcal.connect()`` (a notebook: ``client.close()`` when done, or let
    the kernel's exit do it) or as ``with daskcal.connect() as client:`` (a script: the cluster
    stops at the end of the block). Either way ``client.close()`` also stops an embedded or
    jobqueue cluster and cancels its batch jobs; an existing scheduler is left running.

    Parameters
    ----------
    cluster : str or None, default None
        ``None``/``"local"`` (embedded LocalCluster on 127.0.0.1 with temporary TLS
        credentials), ``"threads"`` (embedded LocalCluster in this process: one worker of
        ``n_workers * threads_per_worker`` threads, no worker processes), a scheduler address
        (``"tcp://..."``, ``"tls://..."``, ``"host:port"``), a path to a scheduler file (JSON written by
        ``dask scheduler --scheduler-file``), ``"slurm"`` or ``"pbs"`` (dask-jobqueue,
        configured from Dask's ``jobqueue.slurm.*`` / ``jobqueue.pbs.*``: deploy/jobqueue.yaml).
        The embedded cluster's workers are forked from a process that imported the task modules
        of both stages once (``preload_workers``: ~1 s before the workers start, which their
        first tasks no longer spend each); call ``daskcal.cluster.preload_workers`` first to choose them.
    n_workers : int, optional
        Workers of an embedded cluster (default one per core; ``"threads"``: that many times
        ``threads_per_worker`` threads in its one worker), or batch jobs of a jobqueue
        cluster (default 1; each runs one worker with the configuration's cores and memory).
    threads_per_worker : int, default 1
        Threads per worker process of an embedded cluster. Kernels release the GIL.
    memory_limit : str, default "auto"
        Memory limit per worker of an embedded cluster (``"threads"``: of this process, whose
        one worker spills to disk and pauses as it nears it).
    dashboard_address : str, default ":0"
        Where an embedded cluster serves its dashboard: ``":port"`` (or a bare port)
        on 127.0.0.1, ``":0"`` a free port there; ``"host:port"`` as given
        (``"0.0.0.0:8787"``: every interface); None for no dashboard (nor worker dashboards;
        ``client.dashboard_link`` is then ""), which starts about a second sooner.
    security : distributed.security.Security, optional
        TLS credentials for an existing scheduler (address or scheduler file).
        Default: Dask's configuration (``distributed.comm.tls.*``). The embedded
        cluster makes its own.
    timeout : float, default 10.0
        Seconds to wait for an existing scheduler to answer.
    tls : bool, default True
        Whether the embedded cluster uses TLS. Without it, any user of this machine can
        connect to its scheduler (on 127.0.0.1) and run code as you; with it, data moved
        between its workers is encrypted, which cost the outlier step 10-15% here
        (8 x 2048^2 exposures on 2 workers: 19.4-22.5 s against 17.5-19.1 s). Turn it off
        only on a machine no one else uses.
    wait_workers : float, default 300.0
        Seconds a jobqueue cluster has for its first worker to join. Then ``connect``
        cancels the jobs it submitted and raises :class:`~daskcal.cluster.WorkersTimeoutError` with the
        queue's state of each job (``squeue``'s ``PD (PartitionConfig)``: the jobs ask for
        more than a node has). The run starts as soon as one worker has joined.
    adapt : (int, int), optional
        ``(minimum, maximum)`` batch jobs of an adaptive jobqueue cluster (Dask adds jobs
        while tasks wait and retires idle ones), instead of ``n_workers`` fixed jobs;
        minimum at least 1. Only for ``"slurm"``/``"pbs"``.

    Raises
    ------
    SchedulerConnectError
        No scheduler answered at the address within ``timeout`` seconds, or it refused
        the connection (wrong TLS credentials, not a Dask scheduler).
    WorkersTimeoutError
        No worker of a jobqueue cluster joined within ``wait_workers`` seconds.
    ModuleNotFoundError
        ``"slurm"``/``"pbs"`` without dask-jobqueue installed.
    """
    kind = (cluster or "local").strip()
    if not 0 < timeout < math.inf:
        msg = f"the connect timeout must be a positive number of seconds; got {timeout!r}"
        raise ValueError(msg)
    if not 0 < wait_workers < math.inf:
        msg = f"wait_workers must be a positive number of seconds; got {wait_workers!r}"
        raise ValueError(msg)
    # "local", "threads", "slurm", "pbs" (any case); else an address or a scheduler file, kept as given
    named = kind.lower() if kind.lower() in {"local", "threads", "slurm", "pbs"} else None
    jobqueue = named in {"slurm", "pbs"}
    if named is not None and security is not None:
        msg = (f"security (TLS settings) is for an existing scheduler, not cluster={kind!r}; "
               "(the embedded cluster makes its own temporary certificate; a jobqueue cluster's comes from "
               "Dask's configuration)")
        raise ValueError(msg)
    if adapt is not None:
        adapt = _adapt_range(adapt, kind, jobqueue)
    if n_workers is not None and (not isinstance(n_workers, int) or n_workers < 1):
        msg = f"n_workers must be a positive integer; got {n_workers!r}"
        raise ValueError(msg)
    if named == "local":
        _check_main_guard()
        opened = _embedded(n_workers, threads_per_worker, memory_limit, dashboard_address, tls)
    elif named == "threads":
        opened = _in_process(n_workers, threads_per_worker, memory_limit, dashboard_address)
    elif jobqueue:
        opened = _jobqueue(named, n_workers, wait_workers, adapt)
    else:
        opened = _client(_scheduler_address(kind), security, timeout)
    stack = contextlib.ExitStack()
    t0 = time.perf_counter()
    try:
        client = stack.enter_context(opened)
    except BaseException:
        stack.close()
        raise
    log.info("timing: %s cluster ready in %.2f s", named or "existing", time.perf_counter() - t0)
    client._daskcal_stack = stack
    return client


def _check_main_guard() -> None:
    """Refuse to start worker processes from a script's top level outside ``if __name__ == "__main__":``.

    The embedded cluster's worker processes are started with multiprocessing's "spawn", which runs the
    script's top level again in each of them: unguarded, each would try to start a cluster of its own and
    the run fails with pages of tracebacks from every worker. Found by reading the script: the statement
    of ``__main__`` that is running (the outermost frame of the script) must be inside such an ``if``.
    Jupyter, ``python -c``, ``python -m`` of a module and the REPL have no script file and are not checked.
    """
    import ast
    import sys

    import __main__

    path = getattr(__main__, "__file__", None)
    if not path or getattr(__main__, "__spec__", None) is not None or not str(path).endswith(".py"):
        return
    frame, line = sys._getframe(1), None
    while frame is not None:
        if frame.f_globals is vars(__main__) and frame.f_code.co_name == "<module>":
            line = frame.f_lineno
        frame = frame.f_back
    if line is None:
        return
    try:
        tree = ast.parse(Path(path).read_text(), filename=str(path))
    except (OSError, SyntaxError, ValueError, UnicodeDecodeError):
        return
    for node in tree.body:
        if node.lineno <= line <= (node.end_lineno or node.lineno):
            if isinstance(node, ast.If) and _is_main_test(node.test):
                return
            break
    else:
        return
    msg = (f"daskcal.connect() starts worker processes, which run the top level of {path} again: call it under "
           f"'if __name__ == \"__main__\":' (line {line} is not)")
    raise RuntimeError(msg)


def _is_main_test(test) -> bool:
    """Whether an ``if`` tests ``__name__ == "__main__"`` (either way round)."""
    import ast

    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, test.comparators[0]]
    names = [s for s in sides if isinstance(s, ast.Name) and s.id == "__name__"]
    consts = [s for s in sides if isinstance(s, ast.Constant) and s.value == "__main__"]
    return len(names) == 1 and len(consts) == 1


def _adapt_range(adapt, kind: str, jobqueue: bool) -> tuple[int, int]:
    if not jobqueue:
        msg = f"adapt (--adapt MIN MAX) is for cluster='slurm' or 'pbs', not {kind!r}"
        raise ValueError(msg)
    try:
        lo, hi = (int(v) for v in adapt)
    except (TypeError, ValueError):
        msg = f"adapt must be two integers (minimum, maximum) of batch jobs; got {adapt!r}"
        raise ValueError(msg) from None
    if not 1 <= lo <= hi:
        msg = f"adapt must be 1 <= minimum <= maximum jobs (the run needs a worker to plan on); got {lo} {hi}"
        raise ValueError(msg)
    return lo, hi


@functools.cache
def _client_class():
    """``distributed.Client`` whose ``close()`` also closes what :func:`connect` opened for it."""
    from distributed import Client

    class DaskcalClient(Client):
        """A ``distributed.Client`` from :func:`daskcal.connect`: closing it also stops the cluster it started."""

        _daskcal_stack: contextlib.ExitStack | None = None
        #: An embedded cluster started without a dashboard: its scheduler's HTTP server serves none.
        _daskcal_no_dashboard = False
        #: The host the dashboard listens on where the scheduler's address names another (in-process comms name
        #: the machine's address; the dashboard listens on 127.0.0.1).
        _daskcal_dashboard_host: str | None = None

        @property
        def dashboard_link(self):
            """The scheduler's dashboard; "" if it serves none (distributed links its bare HTTP server)."""
            if self._daskcal_no_dashboard:
                return ""
            link = super().dashboard_link
            host = self._daskcal_dashboard_host
            if host is None or not link:
                return link
            import urllib.parse

            parts = urllib.parse.urlsplit(link)
            return parts._replace(netloc=f"{host}:{parts.port}").geturl() if parts.port else link

        def close(self, *args, **kwargs):
            t0 = time.perf_counter()
            result = super().close(*args, **kwargs)
            stack, self._daskcal_stack = self._daskcal_stack, None
            if stack is not None:
                stack.close()
                log.info("timing: client and cluster closed in %.2f s", time.perf_counter() - t0)
            return result

    DaskcalClient.__module__ = __name__
    DaskcalClient.__qualname__ = "DaskcalClient"
    return DaskcalClient


@contextlib.contextmanager
def _embedded(n_workers, threads_per_worker, memory_limit, dashboard_address, tls=True):
    """A LocalCluster on 127.0.0.1 whose scheduler only takes clients holding its temporary certificate."""
    import dask
    from distributed import LocalCluster
    from distributed.security import Security

    try:
        security = Security.temporary() if tls else None
    except ImportError as exc:
        msg = "the embedded cluster's TLS certificate needs the cryptography package: pip install cryptography"
        raise MissingPackageError(msg, name="cryptography") from exc
    environ = _pre_spawn_config()
    # One queued task per worker thread, not Dask's default 1.1 (rounded up: two for a one-thread worker). With two,
    # a worker that finishes a long task (a tile's chain of inputs) already holds the next one and starts it before
    # the short tasks that follow the first (the tile's planes, its write) reach it a scheduler round trip later:
    # resample of 16 x 2048^2 on 2 workers wrote each tile a whole chain late, so a run killed at 4 of 9 tiles had
    # two finished tiles unwritten (what --resume redoes).
    environ[SATURATION] = WORKER_SATURATION
    if dask.config.get("distributed.worker.multiprocessing-method") in ("spawn", "forkserver"):
        # unless running already (the command line starts it with its command's modules): from Python, the
        # session may run either stage, and one import in the fork server beats one in every worker's first task
        preload_workers((*DETECTOR_TASK_MODULES, *IMAGE_TASK_MODULES), dashboard=dashboard_address is not None)
        if _forkserver_running() and _forkserver == (_forkserver_pid(), _worker_environ()):
            environ["distributed.worker.multiprocessing-method"] = "forkserver"
        else:  # a fork server daskcal did not start, or with other settings: its workers would lack ours
            log.debug("embedded cluster: workers spawned (the running fork server has other settings)")
            environ["distributed.worker.multiprocessing-method"] = "spawn"
    with dask.config.set(environ):
        workers = _worker_environ()
    quiet = _SlowExitFilter()
    nanny_log = logging.getLogger("distributed.nanny")
    try:
        with contextlib.ExitStack() as stack, dask.config.set(environ):
            # the nannies read the allocator settings from os.environ, over their configuration, when they start
            # their workers (keeping them for restarts, and leaving them there): set for the start only
            with _os_environ({k: workers[k] for k in WORKER_ENVIRON if k in workers}):
                lc = LocalCluster(
                    n_workers=n_workers,
                    threads_per_worker=threads_per_worker,
                    memory_limit=memory_limit,
                    host="127.0.0.1",
                    dashboard_address=_on_localhost(dashboard_address),
                    # the workers serve dashboards when the scheduler does (older distributed binds a ":0" to
                    # 0.0.0.0); without, their HTTP server (health, metrics) listens on their own host, 127.0.0.1
                    worker_dashboard_address=None if dashboard_address is None else "127.0.0.1:0",
                    security=security,
                    processes=True,
                    scheduler_kwargs=_scheduler_kwargs(dashboard_address),
                )
            with lc:
                with _closing(_client_class()(lc)) as client:
                    client._daskcal_no_dashboard = dashboard_address is None
                    yield client
                stack.enter_context(_quiet_close())
                # The run succeeded and its client is closed: a worker process slower than the nanny's fixed
                # 4 s to exit (a loaded machine) is stopped, which loses nothing; say so only with -vv.
                nanny_log.addFilter(quiet)
    finally:
        nanny_log.removeFilter(quiet)


@contextlib.contextmanager
def _in_process(n_workers, threads_per_worker, memory_limit, dashboard_address):
    """A LocalCluster in this process (``cluster="threads"``): one worker of ``n_workers * threads_per_worker``
    threads (``n_workers`` default: the cores Dask counts for this process, its affinity and cgroup
    limits, as the ``"local"`` cluster's default number of workers), its scheduler on in-process
    comms (no TLS needed: nothing outside this process can reach it).

    Measured on 2 cores against the 2-process cluster (``"local"``), command line, resample of 16 x 2048^2:
    computing 6.6-7.2 s against 7.2-7.7 s, 15-17 CPU s against 19-22 (the whole command); ``--add`` of 2
    exposures to a mosaic of 16 1.6-2.0 s against 2.2-2.3 s (alternate runs): the workers' start (forking,
    their imports, first touch of their memory, parsing the WCSs the command has parsed already) is not
    paid. Tasks that hold the GIL (gwcs outside the compiled pixel maps, photutils) do not run in parallel.
    """
    import dask
    from dask.system import CPU_COUNT
    from distributed import LocalCluster

    threads = (n_workers or CPU_COUNT) * threads_per_worker
    served = _on_localhost(dashboard_address)
    with dask.config.set({SATURATION: WORKER_SATURATION}), LocalCluster(
        n_workers=1,
        threads_per_worker=threads,
        processes=False,
        memory_limit=memory_limit,
        dashboard_address=served,
        # the worker's HTTP server (health, metrics) on 127.0.0.1, not every interface, where it goes by default
        # with in-process comms; its dashboard only with the scheduler's (bokeh: ~0.5 s of imports)
        worker_dashboard_address="127.0.0.1:0",
        worker_class=_worker_class(dashboard=dashboard_address is not None),
        scheduler_kwargs=_scheduler_kwargs(dashboard_address),
    ) as lc, _closing(_client_class()(lc)) as client:
        client._daskcal_no_dashboard = dashboard_address is None
        host = (served or "").rpartition(":")[0]
        client._daskcal_dashboard_host = host if host not in ("", "0.0.0.0", "[::]", "::") else None
        yield client


def _scheduler_kwargs(dashboard_address: str | None) -> dict | None:
    """An embedded scheduler's keywords: without a dashboard, its HTTP server (health, metrics) on a free port of
    127.0.0.1, not on 8787 (taken by another run, distributed warns), and bokeh not imported (~1 s of this process)."""
    return None if dashboard_address is not None else {"dashboard_address": "127.0.0.1:0"}


def workers_in_process(client) -> bool:
    """Whether ``client``'s scheduler and workers run in this process (``connect("threads")``: in-process comms),
    so that tasks holding the GIL take turns with this thread rather than run beside it."""
    return str(getattr(client.scheduler, "address", "")).startswith("inproc://")


@functools.cache
def _worker_class(*, dashboard: bool):
    """``distributed.Worker``, or without ``dashboard`` a subclass that serves none on its HTTP server (LocalCluster
    asks for one wherever it gives the server an address)."""
    from distributed import Worker

    if dashboard:
        return Worker

    class WorkerWithoutDashboard(Worker):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "dashboard": False})

    WorkerWithoutDashboard.__module__ = __name__
    return WorkerWithoutDashboard


class _SlowExitFilter(logging.Filter):
    """Turns distributed's "Worker process still alive after 4.0 seconds, killing" into a debug message."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("Worker process still alive after"):
            log.debug("embedded cluster shutdown: %s", record.getMessage())
            return False
        return True


class _CancelledAtCloseFilter(logging.Filter):
    """Turns the scheduler's logged ``CancelledError`` of a handler stopped by its own shutdown (the progress
    bar's ``feed`` sleeping between updates when the cluster closes) into a debug message."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError):
            log.debug("cluster shutdown: a scheduler handler was cancelled (%s)", record.getMessage())
            return False
        return True


@contextlib.contextmanager
def _quiet_close() -> Iterator[None]:
    """Drop what a cluster's shutdown logs and that is not a problem (while the block runs)."""
    quiet = _CancelledAtCloseFilter()
    loggers = [logging.getLogger(name) for name in ("distributed.scheduler", "distributed.core", "distributed.utils")]
    for logger in loggers:
        logger.addFilter(quiet)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(quiet)


def _on_localhost(dashboard_address: str | None) -> str | None:
    """``dashboard_address`` with 127.0.0.1 for a missing host (distributed binds ``":port"`` to 0.0.0.0)."""
    if dashboard_address is None:
        return None
    address = str(dashboard_address).strip()
    if ":" not in address:  # a bare port
        address = f":{address}"
    return f"127.0.0.1{address}" if address.startswith(":") else address


@contextlib.contextmanager
def _jobqueue(kind, n_workers, wait_workers, adapt):
    """A dask-jobqueue cluster of ``n_workers`` jobs (or adaptive), once its first worker has joined."""
    try:
        import dask_jobqueue
    except ModuleNotFoundError as exc:  # any other ImportError is dask-jobqueue's own failure: raised as it is
        if exc.name != "dask_jobqueue":
            raise
        msg = f"cluster={kind!r} needs dask-jobqueue: pip install 'daskcal[jobqueue]' (or pip install dask-jobqueue)"
        raise MissingPackageError(msg, name="dask_jobqueue") from exc
    _check_jobqueue_config(kind)
    cls = dask_jobqueue.SLURMCluster if kind == "slurm" else dask_jobqueue.PBSCluster
    with contextlib.ExitStack() as stack, cls() as jc:
        if adapt is not None:
            jc.adapt(minimum_jobs=adapt[0], maximum_jobs=adapt[1])
        else:
            jc.scale(jobs=n_workers or 1)
        with _closing(_client_class()(jc)) as client:
            _wait_for_workers(client, jc, kind, wait_workers)
            yield client
        stack.enter_context(_quiet_close())


def _check_jobqueue_config(kind: str) -> None:
    """Refuse a Dask configuration without the cores and memory of a job (dask-jobqueue's own error does not say where)."""
    import dask

    missing = [k for k in ("cores", "memory") if dask.config.get(f"jobqueue.{kind}.{k}", None) in (None, "")]
    if missing:
        msg = (f"--cluster {kind}: Dask's configuration has no jobqueue.{kind}.{' or '.join(missing)}; copy "
               "deploy/jobqueue.yaml to ~/.config/dask/ or point DASK_CONFIG at its folder, and edit it "
               f"(DASK_CONFIG is {os.environ.get('DASK_CONFIG', 'not set')!r})")
        raise ValueError(msg)


def _wait_for_workers(client, jc, kind: str, wait: float) -> None:
    """Return once a worker has joined; else cancel the jobs and raise WorkersTimeoutError with their queue state."""
    deadline = time.monotonic() + wait
    while not client.scheduler_info()["workers"]:
        if time.monotonic() > deadline:
            ids = _job_ids(jc)
            states = _queue_states(kind, ids)
            msg = (f"no Dask worker joined within {wait:g} s (--wait-workers); the {kind.upper()} jobs "
                   f"{states or 'were never submitted'}. They are cancelled. Check the cores, memory, queue and "
                   f"walltime of jobqueue.{kind} in your Dask configuration (deploy/jobqueue.yaml) against what "
                   "the partition offers, or wait longer")
            raise WorkersTimeoutError(msg)
        time.sleep(0.5)
    ids = _job_ids(jc)
    log.info("%s cluster: a worker joined; jobs %s", kind, " ".join(ids) or "?")


def _job_ids(jc) -> list[str]:
    return [str(job.job_id) for job in list(jc.workers.values()) if getattr(job, "job_id", None)]


def _queue_states(kind: str, ids: list[str]) -> str:
    """``"123 PD (PartitionConfig), 124 PD (PartitionConfig)"`` from the batch system, or what went wrong asking."""
    if not ids:
        return ""
    cmd = (["squeue", "-h", "-o", "%i %t (%r)", "-j", ",".join(ids)] if kind == "slurm"
           else ["qstat", "-f", *ids])
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{' '.join(ids)} (state unknown: {cmd[0]} failed: {exc})"
    if kind == "slurm":
        lines = [" ".join(line.split()) for line in done.stdout.splitlines() if line.strip()]
        return ", ".join(lines) if lines else f"{' '.join(ids)} (no longer in squeue)"
    states = []
    for block in done.stdout.split("Job Id:")[1:]:
        fields = dict(line.strip().split(" = ", 1) for line in block.splitlines() if " = " in line)
        jid = block.split()[0] if block.split() else "?"
        states.append(f"{jid} {fields.get('job_state', '?')} ({fields.get('comment', 'no comment')})")
    return ", ".join(states) or f"{' '.join(ids)} (qstat: {done.stderr.strip() or 'no output'})"


def _scheduler_address(cluster: str) -> str:
    """The scheduler address ``cluster`` gives: itself, or the address in the scheduler file it names."""
    if "://" in cluster:
        return cluster
    path = Path(cluster).expanduser()
    if path.suffix.lower() == ".json" or path.is_file():
        return _read_scheduler_file(path)
    if ":" in cluster:
        return cluster
    msg = ("cluster must be 'local', 'threads', 'slurm', 'pbs', a scheduler address such as tcp://host:8786 "
           f"or a scheduler file (JSON); got {cluster!r}")
    raise ValueError(msg)


def _read_scheduler_file(path: Path) -> str:
    """The ``address`` of a scheduler file as ``dask scheduler --scheduler-file`` writes it."""
    if not path.is_file():
        msg = f"no scheduler file at {str(path)!r} (start the scheduler with: dask scheduler --scheduler-file {path})"
        raise FileNotFoundError(msg)
    try:
        address = json.loads(path.read_text()).get("address")
    except (ValueError, AttributeError, UnicodeDecodeError) as exc:
        msg = f"scheduler file {str(path)!r} is not a JSON object as written by dask scheduler --scheduler-file: {exc}"
        raise ValueError(msg) from exc
    if not isinstance(address, str) or not address:
        msg = f"scheduler file {str(path)!r} has no 'address' string; got {address!r}"
        raise ValueError(msg)
    return address


@contextlib.contextmanager
def _client(address, security, timeout):
    """A client of the existing scheduler at ``address``; one clear error if it cannot connect in ``timeout`` s."""
    from distributed.security import Security

    _check_tls(address, security if security is not None else Security())  # Client's default: Dask's config
    try:
        client = _client_class()(address, security=security, timeout=timeout)
    except (FileNotFoundError, PermissionError):
        raise
    except OSError as exc:
        msg = f"cannot connect to a Dask scheduler at {address} (connect timeout {timeout:g} s): {exc}"
        raise SchedulerConnectError(msg) from exc
    with _closing(client):
        yield client


def _closing(client):
    """Close ``client`` at the end, without entering it: the caller's ``with connect() as c`` enters it (a
    Client entered twice resets its "current client" context variable twice, which raises)."""
    return contextlib.closing(client)


def _check_tls(address: str, security) -> None:
    """Refuse, before connecting, TLS settings that cannot work with ``address``."""
    import dask

    tls = address.startswith("tls://")
    if security.require_encryption and not tls:
        msg = (f"TLS settings are given (or Dask's distributed.comm.require-encryption is set) but the scheduler "
               f"address {address} is not tls://; give its tls:// address")
        raise ValueError(msg)
    if tls and not dask.config.get("distributed.client.security-loader", None):
        if not (security.tls_ca_file and security.tls_client_cert):
            msg = (f"the scheduler at {address} uses TLS: give its CA certificate and a client certificate "
                   "(connect's security=, the command line's --tls-ca-file, --tls-cert, --tls-key, or Dask's "
                   "distributed.comm.tls.ca-file and distributed.comm.tls.client.cert / .key configuration)")
            raise ValueError(msg)
