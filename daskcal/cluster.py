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

import contextlib
import json
import logging
import math
from collections.abc import Iterator
from pathlib import Path

__all__ = ["WORKER_ENVIRON", "MissingPackageError", "SchedulerConnectError", "connect"]

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


class MissingPackageError(ModuleNotFoundError):
    """An optional package that the chosen cluster needs is not installed (the message says how to install it)."""


class SchedulerConnectError(ConnectionError):
    """An existing Dask scheduler did not answer within the connect timeout, or refused the connection."""


@contextlib.contextmanager
def connect(
    cluster: str | None = None,
    *,
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    memory_limit: str | None = "auto",
    dashboard_address: str | None = ":0",
    security: "distributed.security.Security | None" = None,  # noqa: F821
    timeout: float = 10.0,
    tls: bool = True,
) -> Iterator["distributed.Client"]:  # noqa: F821
    """Yield a ``distributed.Client`` for ``cluster`` and close what was opened.

    Parameters
    ----------
    cluster : str or None, default None
        ``None``/``"local"`` (embedded LocalCluster on 127.0.0.1 with temporary TLS
        credentials), a scheduler address (``"tcp://..."``, ``"tls://..."``,
        ``"host:port"``), a path to a scheduler file (JSON written by
        ``dask scheduler --scheduler-file``), ``"slurm"`` or ``"pbs"``.
    n_workers : int, optional
        Workers of an embedded or jobqueue cluster; default one per core.
    threads_per_worker : int, default 1
        Threads per worker process of an embedded cluster. Kernels release the GIL.
    memory_limit : str, default "auto"
        Memory limit per worker of an embedded cluster.
    dashboard_address : str, default ":0"
        Where an embedded cluster serves its dashboard: ``":port"`` (or a bare port)
        on 127.0.0.1, ``":0"`` a free port there; ``"host:port"`` as given
        (``"0.0.0.0:8787"``: every interface); None for no dashboard.
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

    Raises
    ------
    SchedulerConnectError
        No scheduler answered at the address within ``timeout`` seconds, or it refused
        the connection (wrong TLS credentials, not a Dask scheduler).
    ModuleNotFoundError
        ``"slurm"``/``"pbs"`` without dask-jobqueue installed.
    """
    kind = (cluster or "local").strip()
    if not 0 < timeout < math.inf:
        msg = f"the connect timeout must be a positive number of seconds; got {timeout!r}"
        raise ValueError(msg)
    if kind.lower() in {"local", "slurm", "pbs"} and security is not None:
        msg = (f"security (TLS settings) is for an existing scheduler, not cluster={kind!r}; "
               "(the embedded cluster makes its own temporary certificate; a jobqueue cluster's comes from "
               "Dask's configuration)")
        raise ValueError(msg)
    if kind.lower() == "local":
        with _embedded(n_workers, threads_per_worker, memory_limit, dashboard_address, tls) as client:
            yield client
    elif kind.lower() in {"slurm", "pbs"}:
        with _jobqueue(kind.lower(), n_workers) as client:
            yield client
    else:
        address = _scheduler_address(kind)
        with _client(address, security, timeout) as client:
            yield client


@contextlib.contextmanager
def _embedded(n_workers, threads_per_worker, memory_limit, dashboard_address, tls=True):
    """A LocalCluster on 127.0.0.1 whose scheduler only takes clients holding its temporary certificate."""
    import dask
    from distributed import Client, LocalCluster
    from distributed.security import Security

    try:
        security = Security.temporary() if tls else None
    except ImportError as exc:
        msg = "the embedded cluster's TLS certificate needs the cryptography package: pip install cryptography"
        raise MissingPackageError(msg, name="cryptography") from exc
    environ = {f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in WORKER_ENVIRON.items()}
    quiet = _SlowExitFilter()
    nanny_log = logging.getLogger("distributed.nanny")
    try:
        with dask.config.set(environ), LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            memory_limit=memory_limit,
            host="127.0.0.1",
            dashboard_address=_on_localhost(dashboard_address),
            worker_dashboard_address="127.0.0.1:0",  # older distributed binds the workers' ":0" to 0.0.0.0
            security=security,
            processes=True,
        ) as lc:
            with Client(lc) as client:
                yield client
            # The run succeeded and its client is closed: a worker process slower than the nanny's fixed
            # 4 s to exit (a loaded machine) is stopped, which loses nothing; say so only with -vv.
            nanny_log.addFilter(quiet)
    finally:
        nanny_log.removeFilter(quiet)


class _SlowExitFilter(logging.Filter):
    """Turns distributed's "Worker process still alive after 4.0 seconds, killing" into a debug message."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage().startswith("Worker process still alive after"):
            log.debug("embedded cluster shutdown: %s", record.getMessage())
            return False
        return True


def _on_localhost(dashboard_address: str | None) -> str | None:
    """``dashboard_address`` with 127.0.0.1 for a missing host (distributed binds ``":port"`` to 0.0.0.0)."""
    if dashboard_address is None:
        return None
    address = str(dashboard_address).strip()
    if ":" not in address:  # a bare port
        address = f":{address}"
    return f"127.0.0.1{address}" if address.startswith(":") else address


@contextlib.contextmanager
def _jobqueue(kind, n_workers):
    from distributed import Client

    try:
        import dask_jobqueue
    except ImportError as exc:
        msg = f"cluster={kind!r} needs dask-jobqueue: pip install 'daskcal[jobqueue]' (or pip install dask-jobqueue)"
        raise MissingPackageError(msg, name="dask_jobqueue") from exc
    cls = dask_jobqueue.SLURMCluster if kind == "slurm" else dask_jobqueue.PBSCluster
    with cls() as jc:
        jc.scale(jobs=n_workers or 1)
        with Client(jc) as client:
            yield client


def _scheduler_address(cluster: str) -> str:
    """The scheduler address ``cluster`` gives: itself, or the address in the scheduler file it names."""
    if "://" in cluster:
        return cluster
    path = Path(cluster).expanduser()
    if path.suffix.lower() == ".json" or path.is_file():
        return _read_scheduler_file(path)
    if ":" in cluster:
        return cluster
    msg = ("cluster must be 'local', 'slurm', 'pbs', a scheduler address such as tcp://host:8786 "
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
    from distributed import Client
    from distributed.security import Security

    _check_tls(address, security if security is not None else Security())  # Client's default: Dask's config
    try:
        client = Client(address, security=security, timeout=timeout)
    except (FileNotFoundError, PermissionError):
        raise
    except OSError as exc:
        msg = f"cannot connect to a Dask scheduler at {address} (connect timeout {timeout:g} s): {exc}"
        raise SchedulerConnectError(msg) from exc
    with client:
        yield client


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
