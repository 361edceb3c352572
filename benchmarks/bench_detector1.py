"""detector1 benchmark: stcal 1.20's chain and daskcal side by side on the same cube.

Run by hand (not a test)::

    python benchmarks/bench_detector1.py            # (1, 10, 2048, 2048), plus the 4x cube for memory
    python benchmarks/bench_detector1.py --quick     # (1, 10, 1024, 1024), no 4x cube

Each measurement runs in a fresh process. The threaded runs (one process, dask's threaded
scheduler) are followed by the command line's setting: an embedded LocalCluster of 1 and 2
worker processes (1 thread each, chunk products persisted on the workers or written to Zarr). Throughput is nints*ngroups*ny*nx / 1e6 / seconds
(Mpix*groups/s) for saturation + superbias + jump + ramp fit. daskcal's time includes
reading the ramps from Zarr (the products end in memory, chunk by chunk: ``dask.persist``); a
second timing adds writing rate and rateints to Zarr. Both are medians of 5 warm runs, the write runs first (on a cluster, each run starts once the previous run's results are released): the first, cold run
(rate and rateints written to Zarr while the allocator's heap grows) is where peak memory is taken. stcal's is the chain alone on arrays already in memory. Children run with
daskcal.cluster.WORKER_ENVIRON (glibc's mmap and trim thresholds, one malloc arena), the allocator
settings daskcal's embedded workers get. Peak memory is the
process's maximum RSS (VmHWM); for daskcal
we also report the growth over the RSS measured just before the run (imports and compiled
kernels loaded), which is what the chunking bounds. Results go to
benchmarks/results/detector1.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from _proc import peak_mb as _peak_mb, rss_mb as _rss_mb, run_child

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
RESULTS = HERE / "results" / "detector1.txt"
#: Warm daskcal runs per measurement (the median is reported; this VM's speed varies by tens of %).
REPEATS = 5
#: Fresh LocalClusters of 1 and of 2 workers, alternating, whose medians are compared.
CLUSTER_ROUNDS = 3


def prepare(shape, path: Path, chunks) -> None:
    from daskcal import save, simulate

    if path.exists():
        return
    sim = simulate(shape, seed=0, chunks=chunks)
    save(sim.ramps, path)


def run_stcal(path: str) -> dict:
    import warnings

    import numpy as np

    from daskcal import open_ramps
    from daskcal.testing import stcal_detector1

    warnings.simplefilter("ignore")
    ramps = open_ramps(path).compute()
    base = _rss_mb()
    t0 = time.perf_counter()
    rate, _ = stcal_detector1(ramps)
    dt = time.perf_counter() - t0
    np.savez(Path(path).with_suffix(".stcal.npz"), **rate)
    return {"seconds": dt, "peak_mb": _peak_mb(), "base_mb": base}


def run_daskcal(path: str, threads: int, chunks) -> dict:
    import dask

    from daskcal import detector1, open_ramps, simulate
    from daskcal.io._atomic import save_products

    # compile (numba cache) and import everything, Zarr reading included, before measuring
    from daskcal import save

    warm = simulate((1, 4, 32, 32), seed=1)
    with tempfile.TemporaryDirectory(dir=OUT) as tmp, dask.config.set(scheduler="synchronous"):
        save(warm.ramps, Path(tmp) / "warm.zarr")
        detector1(open_ramps(Path(tmp) / "warm.zarr")).rate.compute()
    ramps = open_ramps(path, chunks=chunks)
    result = detector1(ramps)
    base = _rss_mb()
    import numpy as np
    import xarray as xr

    with dask.config.set(scheduler="threads", num_workers=threads):
        # end to end: Zarr ramps in, rate and rateints written to Zarr. The first run is
        # cold (the allocator's heap grows for the first time); peak memory is taken there.
        with tempfile.TemporaryDirectory(dir=OUT) as tmp:
            t0 = time.perf_counter()
            paths = save_products({"rate": result.rate, "rateints": result.rateints}, Path(tmp) / "products")
            cold = time.perf_counter() - t0
            peak = _peak_mb()
            with xr.open_zarr(paths["rate"], consolidated=False) as rate:
                np.savez(Path(path).with_suffix(f".daskcal{threads}.npz"), **{k: rate[k].values for k in rate.data_vars})
        dt, compute = _warm_medians(result, lambda r: dask.persist(r.rate, r.rateints))
    return {"seconds": compute, "seconds_with_write": dt, "seconds_cold": cold, "peak_mb": peak, "base_mb": base}


def run_cluster(path: str, workers: int) -> dict:
    """The command line's way: an embedded LocalCluster (``daskcal.connect``) of ``workers``
    processes x 1 thread; medians of REPEATS warm runs after a cold one."""
    from distributed import wait

    from daskcal import detector1, open_ramps
    from daskcal.cluster import connect

    with connect("local", n_workers=workers, threads_per_worker=1, dashboard_address=None) as client:
        result = detector1(open_ramps(path))

        def persist(r):
            return wait(client.persist([r.rate, r.rateints]))

        def settle():
            while client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks)):
                time.sleep(0.02)

        _warm_medians(result, persist, repeats=1, settle=settle)  # cold: workers start, compile and grow their heaps
        dt, compute = _warm_medians(result, persist, settle=settle)
    return {"seconds": compute, "seconds_with_write": dt}


def _warm_medians(result, persist, repeats: int = REPEATS, settle=None) -> tuple[float, float]:
    """Medians (s) over ``repeats`` runs of writing rate and rateints to Zarr, and of the chain
    alone: Zarr ramps in, products kept in memory chunk by chunk by ``persist`` (no
    concatenation into whole planes; stcal's figure covers the chain only). ``settle()``, if
    given, runs untimed after each run (a cluster waits there until it has released the run's
    results, so that work does not overlap the next timing)."""
    import numpy as np

    from daskcal.io._atomic import save_products

    writes, chains = [], []
    # all the write runs, then all the chain runs: each series warms the heap for its own
    # kind of run (persisted products take ~170 MB that a following write run would
    # otherwise fault in again)
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(dir=OUT) as tmp:
            t0 = time.perf_counter()
            save_products({"rate": result.rate, "rateints": result.rateints}, Path(tmp) / "products")
            writes.append(time.perf_counter() - t0)
        if settle:
            settle()
    for _ in range(repeats):
        t0 = time.perf_counter()
        kept = persist(result)
        chains.append(time.perf_counter() - t0)
        del kept
        if settle:
            settle()
    return float(np.median(writes)), float(np.median(chains))


def _child(args: list[str]) -> dict:
    return run_child(__file__, args)


def compare(path: Path, threads: int) -> str:
    import numpy as np

    ref = np.load(path.with_suffix(".stcal.npz"))
    ours = np.load(path.with_suffix(f".daskcal{threads}.npz"))
    lines = []
    for name in ("data", "err", "var_poisson", "var_rnoise"):
        a, b = ours[name].astype(np.float64), ref[name].astype(np.float64)
        same_nan = np.array_equal(np.isnan(a), np.isnan(b))
        ok = np.isfinite(a) & np.isfinite(b)
        rel = np.abs(a[ok] - b[ok]) / np.maximum(np.abs(b[ok]), 1e-6)
        lines.append(f"  {name}: max rel diff {rel.max():.2e}, pixels > 1e-4: {(rel > 1e-4).sum()}, NaN pattern equal: {same_nan}")
    lines.append(f"  dq: differing pixels {(ours['dq'] != ref['dq']).sum()} of {ref['dq'].size}")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--chunks", type=int, nargs=2, default=None,
                   help="(y, x) chunk size (default: daskcal's own for the cube, 512 1024)")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    n = 1024 if args.quick else 2048
    shape = (1, 10, n, n)
    if args.chunks is None:
        from daskcal.detector._common import default_chunk_yx

        args.chunks = default_chunk_yx(shape)
    chunks = tuple(args.chunks)
    if args.child:
        kind, path, *rest = args.child
        if kind == "prepare":
            prepare(tuple(int(v) for v in rest), Path(path), chunks)
            print(json.dumps({}))
            return
        if kind == "cluster":
            res = run_cluster(path, int(rest[0]))
        else:
            res = run_stcal(path) if kind == "stcal" else run_daskcal(path, int(rest[0]), chunks)
        print(json.dumps(res))
        return

    import numpy as np

    OUT.mkdir(exist_ok=True)
    cube = OUT / f"ramps_{n}_c{chunks[0]}x{chunks[1]}.zarr"
    ch = ["--chunks", *map(str, chunks)]
    _child(["--child", "prepare", str(cube), *map(str, shape), *ch])
    mpg = shape[0] * shape[1] * n * n / 1e6
    lines = [f"# detector1 benchmark, {time.strftime('%Y-%m-%d %H:%M')}, cube {shape}, chunks {chunks}, "
             f"{os.cpu_count()} cores", f"# command: python benchmarks/bench_detector1.py {' '.join(sys.argv[1:])}"]
    st = _child(["--child", "stcal", str(cube), *ch])
    d1 = _child(["--child", "daskcal", str(cube), "1", *ch])
    d2 = _child(["--child", "daskcal", str(cube), "2", *ch])
    for name, r in (("stcal chain, 1 process", st), ("daskcal, 1 thread", d1), ("daskcal, 2 threads", d2)):
        write = (f" (with Zarr writes {r['seconds_with_write']:.2f} s; first, cold run {r['seconds_cold']:.2f} s)"
                 if "seconds_with_write" in r else "")
        lines.append(f"{name:24s}: {r['seconds']:7.2f} s  {mpg / r['seconds']:7.1f} Mpix*groups/s{write}  "
                     f"peak RSS {r['peak_mb']:7.0f} MB  (growth over pre-run RSS {r['peak_mb'] - r['base_mb']:6.0f} MB)")
    lines.append(f"daskcal 1 thread vs stcal per core: {st['seconds'] / d1['seconds']:.2f}x")
    lines.append(f"daskcal 2 threads vs 1 thread:      {d1['seconds'] / d2['seconds']:.2f}x "
                 f"(with writes {d1['seconds_with_write'] / d2['seconds_with_write']:.2f}x)")
    chunk_in = 10 * chunks[0] * chunks[1] * (4 + 1) + chunks[0] * chunks[1] * (4 * 4 + 4)
    lines.append(f"one chunk's inputs: {chunk_in / 2**20:.1f} MB; 3 x that x 2 threads = {6 * chunk_in / 2**20:.0f} MB")
    # One cluster child's timings move by +-15% from one process to the next on this VM (the
    # same run gave 1.04 s and 1.24 s in consecutive children), so 1 and 2 workers alternate
    # over CLUSTER_ROUNDS children each and the medians over the rounds are compared.
    rounds = [(_child(["--child", "cluster", str(cube), "1", *ch]), _child(["--child", "cluster", str(cube), "2", *ch]))
              for _ in range(CLUSTER_ROUNDS)]
    c1 = {k: float(np.median([r[0][k] for r in rounds])) for k in ("seconds", "seconds_with_write")}
    c2 = {k: float(np.median([r[1][k] for r in rounds])) for k in ("seconds", "seconds_with_write")}
    lines.append(f"LocalCluster (as the CLI runs), medians over {CLUSTER_ROUNDS} alternating rounds of fresh clusters, "
                 f"1 worker : {c1['seconds']:.2f} s (with Zarr writes "
                 f"{c1['seconds_with_write']:.2f} s); 2 workers: {c2['seconds']:.2f} s (with Zarr writes "
                 f"{c2['seconds_with_write']:.2f} s); 2 vs 1 workers: {c1['seconds'] / c2['seconds']:.2f}x "
                 f"(with writes {c1['seconds_with_write'] / c2['seconds_with_write']:.2f}x)")
    lines.append("  per round, 2 vs 1 workers: " + ", ".join(
        f"{a['seconds'] / b['seconds']:.2f}x (writes {a['seconds_with_write'] / b['seconds_with_write']:.2f}x)"
        for a, b in rounds))
    lines.append("parity with stcal (2-thread run):")
    lines.append(compare(cube, 2))
    if not args.quick:
        big = OUT / f"ramps_{2 * n}_c{chunks[0]}x{chunks[1]}.zarr"
        _child(["--child", "prepare", str(big), "1", "10", str(2 * n), str(2 * n), *ch])
        d4 = _child(["--child", "daskcal", str(big), "2", *ch])
        lines.append(f"daskcal, 2 threads, 4x pixels {(1, 10, 2 * n, 2 * n)}: {d4['seconds']:.2f} s "
                     f"{4 * mpg / d4['seconds']:.1f} Mpix*groups/s peak RSS {d4['peak_mb']:.0f} MB "
                     f"(growth {d4['peak_mb'] - d4['base_mb']:.0f} MB); peak ratio 4x/1x: "
                     f"{d4['peak_mb'] / d2['peak_mb']:.2f}, growth ratio "
                     f"{(d4['peak_mb'] - d4['base_mb']) / (d2['peak_mb'] - d2['base_mb']):.2f}")
    text = "\n".join(lines) + "\n"
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
