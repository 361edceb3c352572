"""``daskcal resample`` or ``daskcal detector1`` killed halfway, then ``--resume``: the share of the work done twice.

resample (default): simulates N exposures of NY x NX px (default 16 of 2048^2). detector1
(``--command detector1``): simulates one ramp store of NINTS x NGROUPS x NY x NX (``--ints``, ``--groups``, default
1 x 10 x 2048^2). Each command is run once uninterrupted (the reference product), then again into
another output, its process group (the command and its workers, as a batch system at the
walltime) SIGKILLed once half the chunks or tiles are recorded as written, and resumed with
``--resume``. Reported:

- chunks or tiles recorded at the kill, kept (verified) by the resume, computed by it;
- the share of the work redone, ``(killed + resumed - uninterrupted) / uninterrupted``, measured
  three ways: the CPU seconds of the command's whole process group (driver, scheduler, workers)
  from the moment it starts computing (its "dashboard:" line) to its end or the kill, which a
  loaded machine changes least; the same wall seconds; the wall time, a second start-up included;
- whether the resumed product equals the uninterrupted one, file for file;
- the 1-minute load average before and after (other processes share the cores).

Usage: ``python benchmarks/bench_resume.py [--command resample|detector1] [-n 16] [--shape 2048 2048]
[--workers 2] [--cluster local|threads] [--tile-shape 1024 1024] [--chunks CY CX] [--ints 1] [--groups 10] [--out results/resume.txt]``
(``--out`` appends). Needs psutil.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
from _proc import report

#: The commands serve a dashboard only when asked; its "dashboard:" line marks the start of the computing.
DASHBOARD = "127.0.0.1:0"


class Run:
    """``python -m daskcal ARGS`` in its own process group, with the CPU seconds of every process of the group
    sampled every 0.1 s (a process's last sample before it exits is what it used), and the group's CPU and the
    time when the command printed its "dashboard:" line (it starts computing then)."""

    def __init__(self, *args, folder: Path | None = None) -> None:
        self.t0 = time.monotonic()
        self.folder, self.first = folder, None  # group CPU s when a chunk or tile record is first added to folder
        self._records0 = records(folder) if folder is not None else 0
        self.proc = subprocess.Popen([sys.executable, "-m", "daskcal", *map(str, args)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.cpu: dict[int, float] = {}
        self.out: list[str] = []
        self.started: tuple[float, float] | None = None  # (monotonic time, group CPU s) at "dashboard:"
        self.driver_at_start = 0.0  # the command's own process (its scheduler included) at "dashboard:"
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.errors: list[str] = []
        self._threads = [threading.Thread(target=f, daemon=True) for f in (self._read, self._read_errors)]
        for t in [*self._threads, threading.Thread(target=self._sample, daemon=True)]:
            t.start()

    def group_cpu(self) -> float:
        with self._lock:
            return sum(self.cpu.values())

    def _poll_cpu(self) -> None:
        for p in psutil.process_iter(["pid"]):
            try:
                if os.getpgid(p.pid) != self.proc.pid:
                    continue
                t = p.cpu_times()
                with self._lock:
                    self.cpu[p.pid] = max(self.cpu.get(p.pid, 0.0), t.user + t.system)
            except (psutil.Error, ProcessLookupError, PermissionError):
                continue

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._poll_cpu()
            if self.first is None and self.folder is not None and records(self.folder) > self._records0:
                self.first = self.group_cpu()
            time.sleep(0.1)

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.out.append(line)
            if line.startswith("dashboard:") and self.started is None:
                self._poll_cpu()
                self.started = (time.monotonic(), self.group_cpu())
                self.driver_at_start = self.cpu.get(self.proc.pid, 0.0)

    def _read_errors(self) -> None:
        self.errors.extend(self.proc.stderr)

    def wait(self) -> None:
        """Wait for the command to end; it must succeed."""
        self.proc.wait()
        self.end = time.monotonic()
        self._stop.set()
        for t in self._threads:
            t.join()
        assert self.proc.returncode == 0, "".join(self.errors)

    def kill(self) -> None:
        """SIGKILL the whole group (after a last sample of its CPU)."""
        self._poll_cpu()
        self.end = time.monotonic()
        self._stop.set()
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    @property
    def text(self) -> str:
        return "".join(self.out)

    @property
    def wall(self) -> float:
        return self.end - self.t0

    @property
    def compute_wall(self) -> float:
        return self.end - self.started[0]

    @property
    def compute_cpu(self) -> float:
        return self.group_cpu() - self.started[1]

    @property
    def split(self) -> str:
        """The computing CPU s of the command's own process (driver and scheduler) and of the others (workers)."""
        driver = self.cpu.get(self.proc.pid, 0.0) - self.driver_at_start
        first = "" if self.first is None or self.started is None else f"; until the first record {self.first - self.started[1]:.1f}"
        return f"driver and scheduler {driver:.1f}, workers {self.compute_cpu - driver:.1f}{first}"


def records(folder: Path) -> int:
    try:
        return sum(1 for p in (folder / "chunks").iterdir() if p.suffix == ".json")
    except FileNotFoundError:
        return 0


def files(store: Path) -> dict:
    return {p.relative_to(store).as_posix(): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def share(killed: float, resumed: float, whole: float) -> str:
    return f"{100 * (killed + resumed - whole) / whole:.1f}% ({killed:.1f} + {resumed:.1f} vs {whole:.1f})"


def resample_case(root: Path, args) -> dict:
    sim = root / "sim"
    subprocess.run([sys.executable, "-m", "daskcal", "simulate-images", "-n", str(args.n), "--shape",
                    *map(str, args.shape), str(sim)], check=True, capture_output=True)
    run = ["resample", sim / "asn.json", "-o", None, "--workers", args.workers, "--no-progress",
           "--dashboard-address", DASHBOARD, "--cluster", args.cluster]
    if args.tile_shape:
        run += ["--tile-shape", *args.tile_shape]

    def total(product: Path) -> int:
        return len(json.loads((product / "data" / "zarr.json").read_text())["attributes"]["daskcal:written"])

    return {"title": f"daskcal resample: {args.n} exposures of {args.shape[0]}x{args.shape[1]}", "run": run,
            "whole": root / "whole.zarr", "killed": root / "m.zarr", "what": "tiles", "total": total,
            "folder": lambda out: out.parent / f".daskcal-resume-{out.name}",
            "kept": r"resample: (\d+) of \d+ tiles were written"}


def detector1_case(root: Path, args) -> dict:
    ramps = root / "ramps.zarr"
    shape = [str(args.ints), str(args.groups), *map(str, args.shape)]
    subprocess.run([sys.executable, "-m", "daskcal", "simulate", str(ramps), "--shape", *shape], check=True,
                   capture_output=True)
    run = ["detector1", ramps, None, "--workers", args.workers, "--no-progress", "--dashboard-address", DASHBOARD,
           "--cluster", args.cluster]
    if args.chunks:
        run += ["--chunks", *args.chunks]

    def total(product: Path) -> int:
        meta = json.loads((product / "rate.zarr" / "data" / "zarr.json").read_text())
        cy, cx = meta["chunk_grid"]["configuration"]["chunk_shape"]
        return math.ceil(meta["shape"][0] / cy) * math.ceil(meta["shape"][1] / cx)

    return {"title": f"daskcal detector1: {args.ints} x {args.groups} x {args.shape[0]} x {args.shape[1]} ramps", "run": run,
            "whole": root / "whole", "killed": root / "out", "what": "chunks", "total": total,
            "folder": lambda out: out / ".daskcal-resume-detector1", "kept": r": (\d+) of \d+ chunks were written"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--command", choices=("resample", "detector1"), default="resample")
    ap.add_argument("-n", type=int, default=16, help="resample: exposures")
    ap.add_argument("--shape", type=int, nargs=2, default=(2048, 2048))
    ap.add_argument("--groups", type=int, default=10, help="detector1: groups")
    ap.add_argument("--ints", type=int, default=1, help="detector1: integrations")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cluster", default="local", help="the commands' --cluster: local (2 worker processes) or threads")
    ap.add_argument("--tile-shape", type=int, nargs=2, default=None, help="resample")
    ap.add_argument("--chunks", type=int, nargs=2, default=None, help="detector1")
    ap.add_argument("--out", default=None, help="append the result to this file")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-resume-"))
    lines = [f"# command: python benchmarks/bench_resume.py {' '.join(sys.argv[1:])}",
             f"# load average (1, 5, 15 min) before: {load()}; {os.cpu_count()} cores"]
    try:
        case = (resample_case if args.command == "resample" else detector1_case)(root, args)
        what = case["what"]

        def cmd(out: Path, *extra) -> list:
            return [out if a is None else a for a in case["run"]] + list(extra)

        whole = Run(*cmd(case["whole"]), folder=case["folder"](case["whole"]))
        whole.wait()
        total = case["total"](case["whole"])
        lines.append(f"{case['title']}, {args.workers} workers")
        lines.append(f"uninterrupted: {whole.wall:.1f} s, computing and writing {whole.compute_wall:.1f} s, "
                     f"{whole.compute_cpu:.1f} CPU s ({whole.split}); {total} {what}")

        folder = case["folder"](case["killed"])
        killed = Run(*cmd(case["killed"]), folder=folder)
        while records(folder) < total // 2:
            if killed.proc.poll() is not None:
                raise RuntimeError(f"the run ended before half its {what} were recorded: {''.join(killed.errors)}")
            time.sleep(0.01)
        killed.kill()
        at_kill = records(folder)
        lines.append(f"killed after {killed.wall:.1f} s ({killed.compute_wall:.1f} s, {killed.compute_cpu:.1f} CPU s "
                     f"computing and writing: {killed.split}) with {at_kill} of {total} {what} recorded")

        resumed = Run(*cmd(case["killed"], "--resume"), folder=folder)
        resumed.wait()
        kept = int(re.search(case["kept"], resumed.text).group(1))
        lines.append(f"resumed in {resumed.wall:.1f} s ({resumed.compute_wall:.1f} s, {resumed.compute_cpu:.1f} CPU s "
                     f"verifying, computing and writing: {resumed.split}): {kept} {what} kept, {total - kept} computed")
        lines.append("work redone, CPU s of the process group while computing and writing: "
                     + share(killed.compute_cpu, resumed.compute_cpu, whole.compute_cpu))
        lines.append("work redone, wall s while computing and writing: "
                     + share(killed.compute_wall, resumed.compute_wall, whole.compute_wall))
        lines.append("wall time redone, a second start-up included (interpreter, cluster, kernels, graph): "
                     + share(killed.wall, resumed.wall, whole.wall))
        lines.append(f"recorded {what} that failed their check: {at_kill - kept}")
        same = files(case["killed"]) == files(case["whole"])
        lines.append(f"resumed product equals the uninterrupted one file for file: {same}")
        lines.append(f"# load average after: {load()}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    report(lines, args.out)


if __name__ == "__main__":
    main()
