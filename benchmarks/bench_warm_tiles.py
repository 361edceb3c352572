"""Resample run again and again on one embedded cluster (a notebook's): the tile side's cost once the workers are warm.

On one ``daskcal.connect`` cluster of 2 single-threaded worker processes (after a tiny warm-up run), the mosaic
of bench_resample.py's 8 JWST-like inputs of 2048^2 is computed and saved once per side given, in that order,
each with ``tile_shape`` (side, side). Reported per run: wall time, graph building, and the workers' user and
system CPU seconds and minor page faults (``getrusage`` in each worker), which show when a run still pays
its workers' first touch of memory (slow on these VMs: see docs/performance.md).

Usage: ``python benchmarks/bench_warm_tiles.py [--sides 512 512 512 1024 1024 1024 512 1024 512 1024]
[--out results/warm-tiles.txt]``. Needs a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import bench_resample
from _proc import report

HERE = Path(__file__).resolve().parent


def _usage() -> tuple[float, float, int]:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime, r.ru_minflt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sides", type=int, nargs="+", default=[512, 512, 512, 1024, 1024, 1024, 512, 1024, 512, 1024])
    ap.add_argument("--workdir", default="/tmp/daskcal-bench-resample", help="bench_resample.py's inputs (made if missing)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import dask
    import daskcal
    from daskcal.cluster import connect
    from daskcal.io._atomic import save_dataset

    work = Path(args.workdir)
    paths = [work / f"in{k}-jwst.zarr" for k in range(8)]
    if not all(p.exists() for p in paths):
        work.mkdir(parents=True, exist_ok=True)
        bench_resample.make_inputs(work, 8, 2048, "jwst")
    lines = [(f"resample of 8 JWST-like inputs of 2048^2 again and again on one embedded cluster (2 workers x 1 "
              f"thread), tile sides {' '.join(map(str, args.sides))}; {os.cpu_count()} cores"),
             f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}"]
    scratch = Path(tempfile.mkdtemp(prefix="bench-warm-tiles-"))
    try:
        with dask.config.set({"distributed.worker.memory.target": False}), \
                connect("local", n_workers=2, threads_per_worker=1, memory_limit="8 GiB") as client:
            bench_resample._warm_cluster(client, scratch)
            for k, side in enumerate(args.sides):
                out = scratch / "mosaic.zarr"
                shutil.rmtree(out, ignore_errors=True)
                before = client.run(_usage)
                t0 = time.perf_counter()
                mosaic = daskcal.resample(daskcal.open_images(paths), pixmap_stepsize=1, tile_shape=(side, side),
                                          **bench_resample.SETTINGS)
                graph = time.perf_counter() - t0
                save_dataset(mosaic, out)
                elapsed = time.perf_counter() - t0
                after = client.run(_usage)
                user, system, faults = (sum(after[w][i] - before[w][i] for w in after) for i in range(3))
                tiles = len(mosaic.chunks["y"]) * len(mosaic.chunks["x"])
                lines.append(f"run {k + 1}: tiles {side}^2 ({tiles}): {elapsed:.2f} s (graph {graph:.2f} s), workers "
                             f"{user:.2f} s user + {system:.2f} s sys, {faults} minor faults")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    lines.append(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    report(lines, args.out, header=f"# command: python benchmarks/bench_warm_tiles.py {' '.join(sys.argv[1:])}\n")


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
