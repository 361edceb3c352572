"""Memory of the running benchmark process, read from /proc (shared by the benchmarks)."""

from __future__ import annotations


def status_mb(field: str) -> float:
    """A ``/proc/self/status`` field such as ``VmRSS`` or ``VmHWM``, in MiB (NaN if absent)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb() -> float:
    """Current resident set (MiB)."""
    return status_mb("VmRSS")


def peak_mb() -> float:
    """This process's own peak resident set (VmHWM, MiB).

    Not ``ru_maxrss``: Linux carries the parent's peak across fork + exec into it,
    and benchmark parents hold simulated inputs.
    """
    return status_mb("VmHWM")
