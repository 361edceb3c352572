"""Memory of the running benchmark process, read from /proc, child runs and the results file (shared by the
benchmarks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path


def run_child(script: str, args: list[str]) -> dict:
    """Run ``python script *args`` in a fresh process; return its last stdout line parsed as JSON.

    The child gets daskcal.cluster.WORKER_ENVIRON (the allocator settings daskcal.connect gives
    its workers; glibc reads them at start-up).
    """
    from daskcal.cluster import WORKER_ENVIRON

    env = dict(os.environ, **{k: str(v) for k, v in WORKER_ENVIRON.items()})
    out = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, check=False, env=env)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(lines: list[str], out: str | None, header: str = "") -> None:
    """Print ``lines``; with ``out`` (a path, a relative one under benchmarks/), also append ``header`` and them
    to that file, its folder made if need be."""
    text = "\n".join(lines)
    print(text)
    if out:
        path = Path(out) if Path(out).is_absolute() else Path(__file__).resolve().parent / out
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(f"{header}{text}\n")


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


class TreeSampler:
    """Peak of the summed RSS (MiB) of this process and all its descendants, sampled with psutil.

    ``peak_total`` is the summed peak, ``peak_single_child`` the largest child's.
    """

    def __init__(self, interval=0.05):
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.peak_total = 0.0
        self.peak_single_child = 0.0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import psutil

        while not self._stop.is_set():
            total, single = 0.0, 0.0
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
            except psutil.Error:
                procs = [self.proc]
            for p in procs:
                try:
                    rss = p.memory_info().rss / 2**20
                except psutil.Error:
                    continue
                total += rss
                if p.pid != self.proc.pid:
                    single = max(single, rss)
            self.peak_total = max(self.peak_total, total)
            self.peak_single_child = max(self.peak_single_child, single)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def serving(py, cwd, env: dict) -> subprocess.Popen:
    """``daskcal serve`` of interpreter ``py`` in ``env`` (without ``DASKCAL_SERVER``), once it says it is ready."""
    env = {k: v for k, v in env.items() if k != "DASKCAL_SERVER"}
    proc = subprocess.Popen([str(py), "-m", "daskcal", "serve"], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if "daskcal serve: ready" in line:
            return proc
    raise RuntimeError(f"daskcal serve of {py} exited with {proc.wait()}")
