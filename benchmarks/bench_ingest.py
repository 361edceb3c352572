"""ingest benchmark: a JWST-style ``_uncal.fits`` and its reference images into a Zarr ramp store.

Run by hand (not a test)::

    python benchmarks/bench_ingest.py            # (1, 10, 2048, 2048) and (1, 40, 1024, 1024)

Each ingest runs in a fresh process (dask's threaded scheduler, 2 threads, ingest's default
chunks, sized by the cube's samples) with daskcal.cluster.WORKER_ENVIRON's allocator settings. Memory is the
growth of the process's peak RSS (VmHWM) over its RSS just before ``ingest`` (imports
loaded). The (y, x) reference images (gain, read noise, saturation, superbias, pixel DQ:
20 B/pixel) are read whole; the cube is read one chunk per task. Results go to
benchmarks/results/ingest.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from _proc import peak_mb, rss_mb, run_child

HERE = Path(__file__).resolve().parent
OUT = HERE / "out" / "ingest"
RESULTS = HERE / "results" / "ingest.txt"
SHAPES = [(1, 10, 2048, 2048), (1, 40, 1024, 1024), (1, 10, 1024, 1024)]


def _stem(shape) -> Path:
    return OUT / ("e_" + "x".join(map(str, shape)))


def prepare(shape) -> None:
    from daskcal import simulate
    from daskcal.io._ramps import write_uncal

    stem = _stem(shape)
    if Path(f"{stem}_uncal.fits").exists():
        return
    write_uncal(simulate(shape, seed=0).ramps.compute(), Path(f"{stem}_uncal.fits"))


def run(shape) -> dict:
    import dask

    from daskcal import ingest

    stem = _stem(shape)
    out = Path(f"{stem}.zarr")
    shutil.rmtree(out, ignore_errors=True)
    refs = {k: Path(f"{stem}_{k}.fits") for k in ("gain", "readnoise", "saturation", "superbias")}
    base = rss_mb()
    t0 = time.perf_counter()
    with dask.config.set(scheduler="threads", num_workers=2):
        ingest(Path(f"{stem}_uncal.fits"), out=out, **refs)
    dt = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    return {"seconds": dt, "growth_mb": peak_mb() - base, "file_mb": os.path.getsize(f"{stem}_uncal.fits") / 2**20}


def _child(args: list[str]) -> dict:
    return run_child(__file__, args)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        kind, *shape = args.child
        shape = tuple(int(v) for v in shape)
        res = {} if kind == "prepare" else run(shape)
        if kind == "prepare":
            prepare(shape)
        print(json.dumps(res))
        return
    from daskcal.detector._common import default_chunk_yx

    OUT.mkdir(parents=True, exist_ok=True)
    lines = [f"# ingest benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, 2 threads, default chunks",
             "# command: python benchmarks/bench_ingest.py",
             "| cube | chunks | uncal file MB | seconds | growth of peak RSS, MB |", "|---|---|---|---|---|"]
    for shape in SHAPES:
        _child(["--child", "prepare", *map(str, shape)])
        r = _child(["--child", "run", *map(str, shape)])
        lines.append(f"| {shape} | {default_chunk_yx(shape)} | {r['file_mb']:.0f} | {r['seconds']:.2f} | {r['growth_mb']:.0f} |")
    text = "\n".join(lines) + "\n"
    RESULTS.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
