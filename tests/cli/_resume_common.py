"""Helpers shared by the kill-and-resume tests of the command line (detector1, resample, outliers, image3)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

#: Warnings the commands' embedded LocalCluster gives on a busy machine (a port taken) or when closing its comms:
#: ``pytestmark = pytest.mark.filterwarnings(*CLUSTER_WARNINGS)``.
CLUSTER_WARNINGS = ("ignore:Port .* is already in use:UserWarning", "ignore::ResourceWarning")


def tree_bytes(folder: Path) -> dict:
    """Every file below ``folder`` (relative POSIX path -> its bytes), to compare two runs' products."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def chunk_records(folder: Path) -> list[Path]:
    """The per-chunk (or per-tile) completion records in a resume folder."""
    return sorted((folder / "chunks").glob("*.json"))


def kill_after_records(args: list[str], folder: Path, after: int, timeout: float = 120.0) -> int:
    """Run ``python -m daskcal *args`` in its own process group, SIGKILL the group once ``folder`` holds
    ``after`` chunk records, and return how many it held then."""
    cmd = [sys.executable, "-m", "daskcal", *args]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while len(chunk_records(folder)) < after:
            assert proc.poll() is None, f"the run ended before it was killed: {proc.stderr.read().decode()}"
            assert time.monotonic() < deadline, f"no chunk recorded in {timeout:.0f} s"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return len(chunk_records(folder))
