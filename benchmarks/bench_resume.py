"""``daskcal resample`` killed halfway, then ``--resume``: the share of the work done twice.

Simulates N exposures of NY x NX px (default 16 of 2048^2), runs ``daskcal resample`` once
uninterrupted (timing it and keeping the mosaic), then again into another output, SIGKILLs its
process group (the command and its workers, as a batch system at the walltime) once half the
mosaic's tiles are recorded as written, and resumes it with ``--resume``. Reported:

- tiles recorded at the kill, tiles the resume kept (verified) and computed;
- the share of the work redone: (killed run's time + resume's time - uninterrupted time) /
  uninterrupted time, for the computing and writing (from the "dashboard:" line each run prints
  when it starts computing) and for the wall time (a second start-up included);
- whether the resumed mosaic equals the uninterrupted one, file for file.

Usage: ``python benchmarks/bench_resume.py [-n 16] [--shape 2048 2048] [--workers 2]
[--tile-shape 1024 1024] [--out results/resume.txt]``. Needs a quiet machine.
"""

from __future__ import annotations

import argparse
import json
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

HERE = Path(__file__).resolve().parent


def cli(*args, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "daskcal", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **kw)


def records(out: Path) -> int:
    folder = out.parent / f".daskcal-resume-{out.name}" / "chunks"
    try:
        return sum(1 for p in folder.iterdir() if p.suffix == ".json")
    except FileNotFoundError:
        return 0


def computing(out: str) -> float:
    """The seconds a run spent computing and writing (its "resample: ... in N s" line)."""
    return float(re.search(r"input Mpix in ([\d.]+) s", out).group(1))


def files(store: Path) -> dict:
    return {p.relative_to(store).as_posix(): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=16)
    ap.add_argument("--shape", type=int, nargs=2, default=(2048, 2048))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tile-shape", type=int, nargs=2, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-resume-"))
    title = (f"daskcal resample killed halfway then --resume: {args.n} exposures of {args.shape[0]}x{args.shape[1]}, "
             f"{args.workers} workers, {os.cpu_count()} cores")
    lines = [title]
    try:
        sim = root / "sim"
        subprocess.run([sys.executable, "-m", "daskcal", "simulate-images", "-n", str(args.n), "--shape",
                        *map(str, args.shape), str(sim)], check=True, capture_output=True)
        asn = sim / "asn.json"
        run = ["--workers", args.workers, "--no-progress"]
        if args.tile_shape:
            run += ["--tile-shape", *args.tile_shape]

        whole = root / "whole.zarr"
        t0 = time.monotonic()
        proc = cli("resample", asn, "-o", whole, *run)
        out, err = proc.communicate()
        t_whole = time.monotonic() - t0
        assert proc.returncode == 0, err
        total = len(json.loads((whole / "data" / "zarr.json").read_text())["attributes"]["daskcal:written"])
        lines.append(f"uninterrupted: {t_whole:.1f} s, {total} tiles ({out.splitlines()[0]})")

        c_whole = computing(out)

        killed = root / "m.zarr"
        t0 = time.monotonic()
        proc = cli("resample", asn, "-o", killed, *run)
        started = []  # when the killed run began computing and writing (it prints "dashboard:" then)
        reader = threading.Thread(target=lambda: [started.append(time.monotonic()) for line in proc.stdout
                                                  if line.startswith("dashboard:")], daemon=True)
        reader.start()
        while records(killed) < total // 2:
            if proc.poll() is not None:
                raise RuntimeError(f"the run ended before half its tiles were recorded: {proc.communicate()}")
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGKILL)
        t_kill = time.monotonic()
        proc.wait()
        t_killed = t_kill - t0
        c_killed = t_kill - started[0]
        at_kill = records(killed)
        lines.append(f"killed after {t_killed:.1f} s ({c_killed:.1f} s computing and writing) with {at_kill} of "
                     f"{total} tiles recorded")

        t0 = time.monotonic()
        proc = cli("resample", asn, "-o", killed, "--resume", *run)
        out, err = proc.communicate()
        t_resume = time.monotonic() - t0
        assert proc.returncode == 0, err
        c_resume = computing(out)
        kept = int(re.search(r"resample: (\d+) of \d+ tiles were written", out).group(1))
        lines.append(f"resumed in {t_resume:.1f} s ({c_resume:.1f} s verifying, computing and writing): {kept} tiles "
                     f"kept, {total - kept} computed")
        lines.append(f"work redone (computing and writing): {100 * (c_killed + c_resume - c_whole) / c_whole:.1f}% "
                     f"of an uninterrupted run's ({c_killed:.1f} s + {c_resume:.1f} s vs {c_whole:.1f} s)")
        lines.append(f"wall time redone, start-up included: {100 * (t_killed + t_resume - t_whole) / t_whole:.1f}% "
                     f"({t_killed:.1f} s + {t_resume:.1f} s vs {t_whole:.1f} s; a second start-up: interpreter, "
                     f"cluster, kernels, graph)")
        lines.append(f"recorded tiles that failed their check: {at_kill - kept}")
        lines.append(f"resumed mosaic equals the uninterrupted one file for file: {files(killed) == files(whole)}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out if os.path.isabs(args.out) else HERE / args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
