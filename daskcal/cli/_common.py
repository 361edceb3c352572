"""Options shared by subcommands that run a graph on a cluster."""

from __future__ import annotations

import argparse

__all__ = ["add_cluster_options", "memory_limit"]


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
    """Add ``--cluster``, ``--workers``, ``--threads``, ``--memory-limit`` and ``--no-progress``."""
    g = parser.add_argument_group("execution")
    g.add_argument(
        "--cluster",
        default="local",
        help="'local' (embedded LocalCluster, default), a scheduler address such as tcp://host:8786, 'slurm' or 'pbs'",
    )
    g.add_argument("--workers", type=int, default=None, help="worker processes (default: one per core)")
    g.add_argument("--threads", type=int, default=1, help="threads per worker of an embedded cluster (default 1)")
    g.add_argument(
        "--memory-limit",
        type=memory_limit,
        default="auto",
        help="memory limit per worker of an embedded cluster, e.g. 4GiB (default auto: the machine's memory "
        "shared among the workers; 0: no limit). Resample sizes its tiles from the workers' limit",
    )
    g.add_argument("--no-progress", action="store_true", help="do not show the console progress bar")
