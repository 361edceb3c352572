"""``daskcal resample --add``: adding 2 exposures to a mosaic of 16, against rebuilding the mosaic of all 18.

Simulates N + 2 exposures of NY x NX px (default 16 + 2 of 2048^2) and the grid of all of them, builds the
mosaic of the first N (untimed), then times, each as its own ``daskcal`` command (embedded cluster):

- the rebuild: ``daskcal resample`` of all N + 2 onto the grid;
- the addition: ``daskcal resample --add`` of the last 2 to the mosaic of N.

Reported: wall time of each command (start-up included), the computing and writing time each prints,
tiles rewritten, the addition's share of the rebuild (goal: under 20%), whether the grown mosaic equals
the rebuilt one (data, wht, variances to float32 rounding; con exactly), and the load average.

Usage: ``python benchmarks/bench_add.py [-n 16] [--shape 2048 2048] [--workers 2] [--cluster local|threads]
[--tile-shape 1024 1024] [--server]
[--out results/add.txt]``. Needs a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _proc import report, serving


def run(*args) -> tuple[float, str]:
    """Run ``python -m daskcal *args``; its wall time and output (:data:`CPU` gets its CPU seconds, its workers'
    included: they are its child processes)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "daskcal", *map(str, args)], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"daskcal {' '.join(map(str, args))} failed:\n{proc.stderr}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return time.monotonic() - t0, proc.stdout


#: CPU seconds of each :func:`run`, in order (on a loaded machine steadier than wall times).
CPU: list = []


def compare(a: Path, b: Path) -> str:
    import numpy as np
    import xarray as xr

    x, y = xr.open_zarr(a, consolidated=False), xr.open_zarr(b, consolidated=False)
    worst = {}
    for name in x.data_vars:
        p, q = x[name].values, y[name].values
        if p.dtype.kind != "f":
            worst[name] = "equal" if np.array_equal(p, q) else "DIFFERENT"
            continue
        ok = ~np.isnan(q)
        if not np.array_equal(np.isnan(p), ~ok):
            worst[name] = "NaN differ"
            continue
        floor = np.median(np.abs(q[ok])) if ok.any() else 0.0
        worst[name] = f"{(np.abs(p[ok].astype(float) - q[ok]) / (np.abs(q[ok]) + floor)).max(initial=0):.1e}"
    return ", ".join(f"{k} {v}" for k, v in worst.items())


def in_process(paths, args, grid, base: Path, root: Path) -> str:
    """The same two in this process through the Python API (threaded scheduler, no start-up): ``daskcal.save`` of
    ``resample`` of all against ``daskcal.save`` of ``resample(new, into=base)`` (which writes every tile of the
    grown mosaic: the command line's --add rewrites only those the new exposures reach)."""
    import asdf
    import dask

    import daskcal

    images = daskcal.open_images(paths)
    with asdf.open(grid) as f:
        wcs = f["wcs"]
    tile = {"tile_shape": tuple(args.tile_shape)} if args.tile_shape else {}
    with dask.config.set(scheduler="threads", num_workers=args.workers):
        t0, c0 = time.monotonic(), time.process_time()
        daskcal.save(daskcal.resample(images, output_wcs=wcs, **tile), root / "api-whole.zarr")
        t_whole, c_whole = time.monotonic() - t0, time.process_time() - c0
        t0, c0 = time.monotonic(), time.process_time()
        daskcal.save(daskcal.resample(images[args.n:], into=base), root / "api-grown.zarr")
        t_add, c_add = time.monotonic() - t0, time.process_time() - c0
    return (f"in one process (Python API, threaded, {args.workers} threads): rebuild {t_whole:.1f} s ({c_whole:.1f} "
            f"CPU s), addition {t_add:.1f} s ({c_add:.1f} CPU s): {100 * t_add / t_whole:.1f}% of the time, "
            f"{100 * c_add / c_whole:.1f}% of the CPU")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=16)
    ap.add_argument("--shape", type=int, nargs=2, default=(2048, 2048))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cluster", default="local", help="the commands' --cluster: local (2 worker processes) or threads")
    ap.add_argument("--tile-shape", type=int, nargs=2, default=None)
    ap.add_argument("--server", action="store_true",
                    help="run the commands on a 'daskcal serve' started before them (after simulating the inputs)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import asdf

    import daskcal

    root = Path(tempfile.mkdtemp(prefix="bench-add-"))
    server = None
    lines = [(f"daskcal resample --add 2 to a mosaic of {args.n} vs rebuilding all {args.n + 2}: exposures of "
              f"{args.shape[0]}x{args.shape[1]}, {args.workers} workers, --cluster {args.cluster}, "
              f"{os.cpu_count()} cores" + (", the commands run on a 'daskcal serve'" if args.server else "")),
             f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}"]
    try:
        sim = root / "sim"
        subprocess.run([sys.executable, "-m", "daskcal", "simulate-images", "-n", str(args.n + 2), "--shape",
                        *map(str, args.shape), str(sim)], check=True, capture_output=True)
        paths = sorted(str(p) for p in sim.glob("*.zarr"))
        if args.server:  # the python -m daskcal commands then run there (run()'s CPU seconds: theirs only)
            os.environ.pop("DASKCAL_SERVER", None)
            server = serving(sys.executable, root, os.environ)
        grid = root / "grid.asdf"
        asdf.AsdfFile({"wcs": daskcal.output_wcs(daskcal.open_images(paths))}).write_to(grid)
        common = ["--output-wcs", grid, "--workers", args.workers, "--no-progress", "--cluster", args.cluster]
        if args.tile_shape:
            common += ["--tile-shape", *args.tile_shape]
        mosaic = root / "m.zarr"
        t_base, _ = run("resample", *paths[:args.n], "-o", mosaic, *common)
        lines.append(f"mosaic of {args.n} built (untimed): {t_base:.1f} s")

        whole = root / "whole.zarr"
        t_whole, out = run("resample", *paths, "-o", whole, *common)
        c_whole = float(re.search(r"input Mpix in ([\d.]+) s", out).group(1))
        lines.append(f"rebuild of {args.n + 2}: {t_whole:.1f} s wall, {c_whole:.1f} s computing and writing "
                     f"({out.splitlines()[0]})")

        base = root / "m16.zarr"  # the mosaic of N as it was, for the in-process measurement below
        shutil.copytree(mosaic, base)
        t_add, out = run("resample", "--add", *paths[args.n:], "-o", mosaic, "--workers", args.workers,
                         "--no-progress", "--cluster", args.cluster)
        m = re.search(r"(\d+) tiles rewritten, (\d+) chunk files of (\d+) tiles kept, in ([\d.]+) s", out)
        c_add = float(m.group(4))
        lines.append(f"--add of 2: {t_add:.1f} s wall, {c_add:.1f} s computing, writing and linking; "
                     f"{m.group(1)} tiles rewritten, {m.group(3)} kept ({m.group(2)} chunk files linked)")
        cpu = ("" if args.server else  # the commands' workers are the server's, not their children
               f", {100 * CPU[2] / CPU[1]:.1f}% of the CPU seconds of the command and its workers ({CPU[2]:.1f} vs "
               f"{CPU[1]:.1f}, start-up included)")
        lines.append(f"addition / rebuild: {100 * c_add / c_whole:.1f}% of the computing and writing, "
                     f"{100 * t_add / t_whole:.1f}% of the wall time (start-up included; goal: under 20%){cpu}")
        lines.append(f"grown vs rebuilt (max relative difference, floor the median): {compare(mosaic, whole)}")
        lines.append(in_process(paths, args, grid, base, root))
        lines.append(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=60)
        shutil.rmtree(root, ignore_errors=True)
    report(lines, args.out, header=f"# command: python benchmarks/bench_add.py {' '.join(sys.argv[1:])}\n")


if __name__ == "__main__":
    main()
