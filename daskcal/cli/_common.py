"""Options shared by subcommands that run a graph on a cluster."""

from __future__ import annotations

import argparse

__all__ = ["add_cluster_options", "chunk_option"]


def add_cluster_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--cluster``, ``--workers``, ``--threads`` and ``--no-progress``."""
    g = parser.add_argument_group("execution")
    g.add_argument(
        "--cluster",
        default="local",
        help="'local' (embedded LocalCluster, default), a scheduler address such as tcp://host:8786, 'slurm' or 'pbs'",
    )
    g.add_argument("--workers", type=int, default=None, help="worker processes (default: one per core)")
    g.add_argument("--threads", type=int, default=1, help="threads per worker of an embedded cluster (default 1)")
    g.add_argument("--no-progress", action="store_true", help="do not show the console progress bar")


def chunk_option(values, option: str = "--chunks") -> tuple[int, int] | None:
    """The ``(y, x)`` chunk shape given as ``option`` (two positive integers), or None."""
    if values is None:
        return None
    values = tuple(values)
    if len(values) != 2 or min(values) < 1:
        msg = f"{option} must be two positive integers CY CX (pixels); got {' '.join(map(str, values))}"
        raise ValueError(msg)
    return values
