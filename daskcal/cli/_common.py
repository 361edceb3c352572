"""Options shared by subcommands that run a graph on a cluster."""

from __future__ import annotations

import argparse
import logging
import threading
import time
from pathlib import Path

__all__ = ["ClusterStart", "add_cluster_options", "chunk_option", "connect_options", "memory_limit", "open_cluster",
           "print_dashboard"]

log = logging.getLogger(__name__)


def memory_limit(text: str) -> str | int:
    """``--memory-limit`` value: ``auto``, ``0`` (no limit) or bytes such as ``4GiB``/``1.5 GB``."""
    from dask.utils import parse_bytes

    s = text.strip()
    if s.lower() == "auto":
        return "auto"
    try:
        n = int(parse_bytes(s))
    except (ValueError, TypeError):
        msg = f"--memory-limit must be 'auto', 0 or a size such as 4GiB; got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if n < 0:
        msg = f"--memory-limit must not be negative; got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return n


def add_cluster_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--cluster``, ``--workers``, ``--threads``, the dashboard, TLS and timeout options and ``--no-progress``."""
    g = parser.add_argument_group("execution")
    g.add_argument(
        "--cluster",
        default="local",
        help="'local' (embedded LocalCluster on 127.0.0.1 with temporary TLS credentials, default), "
        "'threads' (embedded LocalCluster in this process: one worker of --workers x --threads threads, "
        "no worker processes; quicker to start, tasks holding the GIL do not run in parallel), "
        "a scheduler address such as tcp://host:8786 or tls://host:8786, a scheduler file "
        "(JSON written by 'dask scheduler --scheduler-file'), 'slurm' or 'pbs'",
    )
    g.add_argument("--workers", type=int, default=None,
                   help="worker processes (default: one per core; --cluster threads: threads = workers x --threads)")
    g.add_argument("--threads", type=int, default=1, help="threads per worker of an embedded cluster (default 1)")
    g.add_argument(
        "--dashboard-address",
        default=None,
        metavar="[HOST]:PORT",
        help="serve the embedded cluster's dashboard there and print its address (default: no dashboard, "
        "which saves about a second of start-up; ':0': a free port on 127.0.0.1; a bare ':PORT' binds to "
        "127.0.0.1, '0.0.0.0:PORT' to every interface)",
    )
    tls = "of this client for an existing TLS scheduler (default: Dask's distributed.comm.tls.* configuration)"
    g.add_argument("--tls-ca-file", metavar="PEM", help=f"CA certificate file {tls}")
    g.add_argument("--tls-cert", metavar="PEM", help=f"client certificate file {tls}")
    g.add_argument("--tls-key", metavar="PEM", help=f"client private key file {tls}; omit if in the certificate file")
    g.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long to wait for an existing scheduler to answer (default 10)",
    )
    g.add_argument(
        "--memory-limit",
        type=memory_limit,
        default="auto",
        help="memory limit per worker of an embedded cluster, e.g. 4GiB (default auto: the machine's memory "
        "shared among the workers; 0: no limit). Resample sizes its tiles from the workers' limit",
    )
    g.add_argument(
        "--no-tls",
        action="store_true",
        help="embedded cluster without TLS: faster transfers between workers (the outlier step 10-15%%), but any "
        "user of this machine could connect to it and run code as you; only on a machine no one else uses",
    )
    g.add_argument(
        "--wait-workers",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="--cluster slurm/pbs: how long the first worker job has to start (default 300); then the jobs are "
        "cancelled and the command stops with their queue state (e.g. 'PD (PartitionConfig)')",
    )
    g.add_argument(
        "--adapt",
        type=int,
        nargs=2,
        metavar=("MIN", "MAX"),
        default=None,
        help="--cluster slurm/pbs: between MIN (>= 1) and MAX worker jobs, added while tasks wait and retired "
        "when idle (Dask's adaptive scaling), instead of --workers fixed jobs",
    )
    g.add_argument("--no-progress", action="store_true", help="do not show the console progress bar")


def connect_options(args: argparse.Namespace) -> dict:
    """The keywords of ``daskcal.connect`` that the options of :func:`add_cluster_options` give,
    beyond ``--cluster``, ``--workers`` and ``--threads``: dashboard address, TLS security, timeout and
    the workers' memory limit."""
    return {
        "dashboard_address": args.dashboard_address,
        "security": _security(args),
        "timeout": args.connect_timeout,
        "memory_limit": getattr(args, "memory_limit", "auto"),
        "tls": not getattr(args, "no_tls", False),
        "wait_workers": getattr(args, "wait_workers", 300.0),
        "adapt": getattr(args, "adapt", None),
    }


def open_cluster(args: argparse.Namespace):
    """``daskcal.connect`` for the options of :func:`add_cluster_options` (use it in a ``with`` block).

    In a ``daskcal serve`` process, an embedded cluster (``local``, ``threads``) is the server's
    kept one: leaving the block leaves it running for the next command.
    """
    from daskcal.cli._serve import borrowed_cluster

    kwargs = {"n_workers": args.workers, "threads_per_worker": args.threads, **connect_options(args)}
    kept = borrowed_cluster(args.cluster, **kwargs)
    if kept is not None:
        return kept
    from daskcal.cluster import connect

    return connect(args.cluster, **kwargs)


def _security(args: argparse.Namespace):
    """A ``distributed.security.Security`` from ``--tls-*`` (unset ones from Dask's configuration), or None."""
    given = {
        "tls_ca_file": ("--tls-ca-file", args.tls_ca_file),
        "tls_client_cert": ("--tls-cert", args.tls_cert),
        "tls_client_key": ("--tls-key", args.tls_key),
    }
    given = {field: (option, path) for field, (option, path) in given.items() if path is not None}
    if not given:
        return None
    for option, path in given.values():
        if not Path(path).is_file():
            msg = f"{option}: no file at {path!r}"
            raise FileNotFoundError(msg)
    from distributed.security import Security

    return Security(require_encryption=True, **{field: str(path) for field, (_, path) in given.items()})


def print_dashboard(client, **print_kwargs) -> None:
    """Print ``dashboard: LINK`` when the cluster serves a dashboard (the embedded one: ``--dashboard-address``)."""
    if client.dashboard_link:
        print(f"dashboard: {client.dashboard_link}", **print_kwargs)


def chunk_option(values, option: str = "--chunks") -> tuple[int, int] | None:
    """The ``(y, x)`` chunk shape given as ``option`` (two positive integers), or None."""
    if values is None:
        return None
    values = tuple(values)
    if len(values) != 2 or min(values) < 1:
        msg = f"{option} must be two positive integers CY CX (pixels); got {' '.join(map(str, values))}"
        raise ValueError(msg)
    return values


class ClusterStart:
    """The cluster of ``--cluster``, started in a background thread while the command opens and checks
    its inputs when it is the embedded one; else connected to when :meth:`client` is called (a
    batch-system cluster submits jobs: only once the inputs are known to be good).

    Use as ``with ClusterStart(args) as cluster:`` and, once the inputs are checked,
    ``with cluster.client() as client:``. Leaving the outer block closes the cluster however the
    block ends, waiting for it to finish starting if need be (an error in the inputs is then
    reported once the cluster it started is stopped: no process outlives the command).
    """

    def __init__(self, args: argparse.Namespace, *, background: bool = True) -> None:
        self._args = args
        self._client = None
        self._error: BaseException | None = None
        self._thread = None
        if background and str(args.cluster).strip().lower() in ("local", "threads"):
            self._thread = threading.Thread(target=self._start, name="daskcal-cluster-start", daemon=True)

    def __enter__(self) -> ClusterStart:
        if self._thread is not None:
            from daskcal._precompile import import_before_threads

            import_before_threads()  # the cluster's thread and a warm-up's would race to import distributed
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self) -> None:
        try:
            self._client = self._connect()
        except BaseException as exc:  # noqa: BLE001 - raised by client(), in the caller's thread
            self._error = exc

    def _connect(self):
        return open_cluster(self._args)

    def client(self):
        """The cluster's ``distributed.Client`` (enter it with ``with``; closing it stops the cluster)."""
        if self._thread is None:
            self._client = self._connect()
            return self._client
        t0 = time.perf_counter()
        self._thread.join()
        log.info("timing: waited %.2f s for the cluster started in the background", time.perf_counter() - t0)
        if self._error is not None:
            raise self._error
        return self._client

    def close(self) -> None:
        """Close the cluster (once it has started); harmless if it is closed already."""
        if self._thread is not None and self._thread.ident is not None:
            self._thread.join()
        client, self._client = self._client, None
        if client is not None:
            client.close()
