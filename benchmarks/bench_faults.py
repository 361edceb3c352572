"""Faults as a user meets them: a worker killed halfway, the command killed, a full disk, two writers.

Each case runs the real ``daskcal detector1`` (or the library on a LocalCluster) on a
simulated (1, 10, 2048, 2048) exposure and reports what was left behind:

1. a worker process SIGKILLed while chunks are being written: the run completes, its
   products equal an uninterrupted run's bit for bit; the time lost is reported;
2. SIGTERM and SIGKILL of the command while it writes: exit status, what is left, whether
   anything left opens with xarray, and whether the next run cleans up and completes;
3. a full disk (a tmpfs smaller than the products; needs root): exit status, the message,
   what is left;
4. two runs writing the same output at once: exit statuses, whose products stayed.

Usage: ``python benchmarks/bench_faults.py [--shape 1 10 2048 2048] [--out results/faults.txt]``.
The 1 GiB-per-worker mosaic case is ``benchmarks/bench_memory.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import xarray as xr

HERE = Path(__file__).resolve().parent
STAGE = ".daskcal-partial-"


def cli(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "daskcal.cli._main", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def chunk_files(out: Path) -> int:
    n = 0
    with contextlib.suppress(FileNotFoundError):
        for entry in out.iterdir():
            if entry.name.startswith(STAGE):
                n += sum(len(f) for root, _, f in os.walk(entry) if "/c/" in root + "/")
    return n


def wait_for_chunks(proc, out: Path, n: int = 4, timeout: float = 300) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout and proc.poll() is None:
        if chunk_files(out) >= n:
            return time.monotonic()
        time.sleep(0.01)
    raise RuntimeError(f"no chunk written in time: {proc.communicate()}")


def leftovers(out: Path) -> tuple[list[str], list[str]]:
    """(paths under out, the ones xarray opens as a dataset)."""
    if not out.exists():
        return [], []
    found, opens = [], []
    for p in sorted(out.rglob("*.zarr")):
        found.append(str(p.relative_to(out)))
        try:
            with xr.open_zarr(p, consolidated=False):
                opens.append(str(p.relative_to(out)))
        except Exception:  # noqa: BLE001 - any refusal counts as "does not open"
            pass
    return found, opens


def same_products(a: Path, b: Path) -> bool:
    for name in ("rate.zarr", "rateints.zarr"):
        with xr.open_zarr(a / name, consolidated=False) as x, xr.open_zarr(b / name, consolidated=False) as y:
            for v in x.data_vars:
                if not np.array_equal(x[v].values, y[v].values, equal_nan=True):
                    return False
    return True


def case_worker_killed(ramps: Path, work: Path, lines: list) -> None:
    """Library run on a 2-worker LocalCluster; one worker SIGKILLed once chunks are written."""
    import daskcal
    from daskcal.io._atomic import save_products

    def run(out, kill: bool) -> float:
        result = daskcal.detector1(daskcal.open_ramps(ramps))
        with daskcal.connect("local", n_workers=2) as client:
            pids = client.run(os.getpid)
            killer = None
            if kill:
                def kill_one():
                    while chunk_files(out) < 4:
                        time.sleep(0.005)
                    os.kill(next(iter(pids.values())), signal.SIGKILL)
                killer = threading.Thread(target=kill_one, daemon=True)
                killer.start()
            t0 = time.perf_counter()
            save_products({"rate": result.rate, "rateints": result.rateints}, out)
            return time.perf_counter() - t0

    clean = [run(work / f"clean{k}", False) for k in range(2)]
    killed = run(work / "killed", True)
    same = same_products(work / "clean0", work / "killed")
    lines.append(f"worker SIGKILLed halfway: completed in {killed:.1f} s against {min(clean):.1f}-{max(clean):.1f} s "
                 f"uninterrupted (lost {killed - np.mean(clean):.1f} s); products identical: {same}")


def case_cli_killed(ramps: Path, work: Path, lines: list) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        out = work / f"out-{sig.name}"
        proc = cli("detector1", ramps, out, "--no-progress")
        wait_for_chunks(proc, out)
        t_sig = time.monotonic()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
        t_exit = time.monotonic() - t_sig
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        time.sleep(0.5)
        found, opens = leftovers(out)
        last = (err.strip().splitlines() or [""])[-1]
        lines.append(f"CLI {sig.name} while writing: exit {proc.returncode} after {t_exit:.1f} s; message: {last!r}; "
                     f"left: {found or 'nothing'}; opens with xarray: {opens or 'none'}")
        rerun = subprocess.run([sys.executable, "-m", "daskcal.cli._main", "detector1", str(ramps), str(out),
                                "--no-progress"], capture_output=True, text=True)
        cleaned = "left by a daskcal run that was killed" in rerun.stderr
        stages = [p.name for p in out.iterdir() if p.name.startswith(STAGE)]
        lines.append(f"  rerun: exit {rerun.returncode}, removed the stale staging folder: {cleaned}, "
                     f"staging folders left: {stages or 'none'}")


def case_disk_full(ramps: Path, work: Path, lines: list) -> None:
    if os.geteuid() != 0:
        lines.append("disk full: skipped (mounting a tmpfs needs root)")
        return
    mnt = work / "full"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)]).returncode != 0:
        lines.append("disk full: skipped (cannot mount a tmpfs)")
        return
    try:
        done = subprocess.run([sys.executable, "-m", "daskcal.cli._main", "detector1", str(ramps), str(mnt / "out"),
                               "--no-progress"], capture_output=True, text=True)
        last = (done.stderr.strip().splitlines() or [""])[-1]
        left = sorted(str(p.relative_to(mnt)) for p in mnt.rglob("*"))
        lines.append(f"disk full (8 MiB tmpfs): exit {done.returncode}; message: {last!r}; left: {left or 'nothing'}")
    finally:
        subprocess.run(["umount", str(mnt)])


def case_two_writers(ramps: Path, other: Path, work: Path, lines: list) -> None:
    out = work / "shared-out"
    procs = [cli("detector1", r, out, "--no-progress") for r in (ramps, other)]
    results = [p.communicate() for p in procs]
    codes = [p.returncode for p in procs]
    msgs = [(r[1].strip().splitlines() or [""])[-1] for r in results]
    lines.append(f"two writers of one output: exit statuses {codes}; the loser said {msgs[codes.index(2)]!r}" if 2 in codes
                 else f"two writers of one output: exit statuses {codes} (expected one 0 and one 2); {msgs}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs=4, default=(1, 10, 2048, 2048))
    p.add_argument("--out", default=str(HERE / "results" / "faults.txt"))
    args = p.parse_args()
    import daskcal

    work = Path(tempfile.mkdtemp(prefix="daskcal-faults-"))
    try:
        ramps = daskcal.save(daskcal.simulate(tuple(args.shape), seed=1).ramps, work / "in" / "ramps.zarr")
        other = daskcal.save(daskcal.simulate(tuple(args.shape), seed=2).ramps, work / "in2" / "ramps.zarr")
        lines = [f"bench_faults {time.strftime('%Y-%m-%d %H:%M')} shape {tuple(args.shape)}, "
                 f"{os.cpu_count()} cores, default chunks, embedded LocalCluster"]
        for case in (lambda: case_worker_killed(ramps, work, lines), lambda: case_cli_killed(ramps, work, lines),
                     lambda: case_disk_full(ramps, work, lines), lambda: case_two_writers(ramps, other, work, lines)):
            case()
            print(lines[-1], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as fh:
        fh.write("\n".join(lines) + "\n\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
