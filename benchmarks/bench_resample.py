"""Benchmark: daskcal.resample on 2 workers against stcal.resample.Resample (one process).

Usage::

    python benchmarks/bench_resample.py [--n 8] [--size 2048] [--workdir /tmp/daskcal-bench]
        [--large-ratio 0.1] [--large-n 8] [--skip-large]

Writes ``benchmarks/results/resample.txt``. Inputs are simulated once and written to
Zarr; stcal gets them as in-memory arrays (in a fresh process, whose peak RSS
includes them); daskcal reads the Zarr stores on an embedded LocalCluster of 2
worker processes x 1 thread, and its peak is the sum over the client and worker
processes sampled every 0.1 s. Both use square, pixfrac 1, ivm weights,
variances, context, err from variances, pixmap_stepsize=1.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _proc import TreeSampler

import numpy as np

HERE = Path(__file__).resolve().parent
SETTINGS = dict(kernel="square", pixfrac=1.0, weight_type="ivm", fillval="NaN", enable_ctx=True, enable_var=True,
                compute_err="from_var", good_bits="~DO_NOT_USE+NON_SCIENCE")
PLANES = ("data", "wht", "err", "var_rnoise", "var_poisson", "var_flat")


def make_inputs(workdir: Path, n: int, size: int, wcs: str = "tan") -> list[str]:
    """Simulated inputs (cached in ``workdir``): ``wcs`` "tan" gives distortion | TAN gwcs, "jwst" JWST-like
    detector -> v2v3 -> world gwcs (distortion, V2/V3 offsets, a RotationSequence3D attitude; no TAN)."""
    import daskcal

    paths = [workdir / f"in{k}{'' if wcs == 'tan' else '-' + wcs}.zarr" for k in range(n)]
    if all(p.exists() for p in paths):
        return [str(p) for p in paths]
    sim = daskcal.simulate_images(n=n, shape=(size, size), seed=0, distortion=4.0, dither=0.45 * size,
                                  n_stars=2000, v2v3=wcs == "jwst")
    for p, ds in zip(paths, sim.images):
        if p.exists():
            shutil.rmtree(p)
        daskcal.save(ds, p)
    return [str(p) for p in paths]


def run_stcal(paths, out_npz, psr):
    """In this (fresh) process: load inputs into memory, run stcal, save planes; return seconds, peak GB."""
    import warnings

    import xarray as xr
    from stcal.resample import Resample

    import daskcal
    from daskcal.dq import dq_dict
    from daskcal.image._dataset import get_wcs

    class _Resample(Resample):
        dq_flag_name_map = dq_dict()

    images = [xr.open_zarr(p, consolidated=False).load() for p in paths]
    wcs_out = daskcal.output_wcs(images)
    models = []
    for ds in images:
        m = {k: ds[k].values for k in ds.data_vars}
        a = ds.attrs
        m.update(filename=a["name"], group_id=a["group_id"], wcs=get_wcs(ds), exposure_time=a["exposure_time"],
                 start_time=a["start_time"], end_time=a["end_time"], duration=a["duration"],
                 measurement_time=a["measurement_time"], pixelarea_steradians=None, level=a["level"],
                 subtracted=a["subtracted"])
        models.append(m)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = _Resample({"wcs": wcs_out, "pixel_scale_ratio": psr, "pixel_scale": None}, pixmap_stepsize=1, **SETTINGS)
        for m in models:
            r.add_model(m)
        r.finalize()
    elapsed = time.perf_counter() - t0
    out = r.output_model
    np.savez(out_npz, con=out["con"], **{k: out[k] for k in PLANES})
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return elapsed, peak


def _warm_worker():
    """Import and run everything a resample task uses once (a tiny mosaic, in this process)."""
    import daskcal

    sim = daskcal.simulate_images(n=2, shape=(48, 64), seed=0, n_stars=4)
    daskcal.resample(sim.images, pixmap_stepsize=1, **SETTINGS).compute(scheduler="sync")


def _warm_cluster(client, workdir: Path):
    """Warm every worker (imports, first calls) and the client's save path with a tiny run."""
    import daskcal
    from daskcal.cluster import workers_in_process
    from daskcal.io._atomic import save_dataset

    if not workers_in_process(client):  # an in-process worker: the client's run below warms it
        client.run(_warm_worker)
    sim = daskcal.simulate_images(n=2, shape=(48, 64), seed=0, n_stars=4)
    warm = workdir / "warm.zarr"
    for k, ds in enumerate(sim.images):
        daskcal.save(ds, workdir / f"warm{k}.zarr")
    save_dataset(daskcal.resample(daskcal.open_images([workdir / f"warm{k}.zarr" for k in range(2)]), **SETTINGS),
                 warm)
    for path in [warm, *(workdir / f"warm{k}.zarr" for k in range(2))]:
        shutil.rmtree(path, ignore_errors=True)


IDLE_LOAD = [0.5]


def wait_for_idle(limit=None, timeout=600.0) -> float:
    """Wait until the 1-minute load average is below ``limit`` (at most ``timeout`` s); return it."""
    limit = IDLE_LOAD[0] if limit is None else limit
    t0 = time.monotonic()
    while (load := os.getloadavg()[0]) >= limit and time.monotonic() - t0 < timeout:
        time.sleep(10)
    return load


def _vm_hwm_sum(proc) -> int:
    """Sum of VmHWM (peak resident set, bytes) of a process and all its descendants still alive."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            with open(f"/proc/{p.pid}/status") as f:
                total += next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
        except (OSError, StopIteration):
            pass
    return total


def run_daskcal(paths, out_zarr, workers=2, memory_limit="8 GiB", config=None, cluster="local", again=None, **kw):
    """The mosaic of ``paths`` written to ``out_zarr`` on a fresh embedded cluster (after a tiny warm-up run); its
    seconds, graph seconds, peak summed RSS (GiB), the mosaic and the summed VmHWM (GiB). With ``again`` (a list),
    the same run is made once more on the same cluster and its (seconds, graph seconds) appended to it: a cluster
    that is reused (a notebook's) no longer pays its workers' first touch of their memory."""
    import dask
    import distributed  # noqa: F401  (its config defaults must exist before dask.config.set below)

    import daskcal
    from daskcal.cluster import connect
    from daskcal.io._atomic import save_dataset

    # worker memory thresholds are read when the workers start: set them before the cluster
    with TreeSampler(interval=0.1) as rss, dask.config.set({"distributed.worker.memory.target": False, **(config or {})}):
        # daskcal.connect: the embedded cluster the command line starts (WORKER_ENVIRON's allocator settings)
        with connect(cluster, n_workers=workers, threads_per_worker=1, memory_limit=memory_limit) as client:
            _warm_cluster(client, Path(out_zarr).parent)
            for run in range(1 if again is None else 2):
                if Path(out_zarr).exists():
                    shutil.rmtree(out_zarr)
                t0 = time.perf_counter()
                mosaic = daskcal.resample(daskcal.open_images(paths), pixmap_stepsize=1, **SETTINGS, **kw)
                t_graph = time.perf_counter() - t0
                save_dataset(mosaic, out_zarr)
                if run == 0:
                    elapsed, first_graph = time.perf_counter() - t0, t_graph
                    hwm = _vm_hwm_sum(rss.proc)
                else:
                    again.append((time.perf_counter() - t0, t_graph))
    return elapsed, first_graph, rss.peak_total / 2**10, mosaic, hwm / 2**30


def run_daskcal_threads(paths, out_zarr, threads: int, cores: int | None = None) -> dict:
    """daskcal without a client, on dask's threaded scheduler with ``threads`` threads (in this process),
    optionally pinned to ``cores`` CPUs; returns seconds, graph seconds and the process's peak RSS (GB)."""
    import dask

    import daskcal
    from daskcal.io._atomic import save_dataset

    if cores is not None:
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:cores]))
    if Path(out_zarr).exists():
        shutil.rmtree(out_zarr)
    _warm_worker()
    with dask.config.set(scheduler="threads", num_workers=threads):
        t0 = time.perf_counter()
        mosaic = daskcal.resample(daskcal.open_images(paths), pixmap_stepsize=1, **SETTINGS)
        t_graph = time.perf_counter() - t0
        save_dataset(mosaic, out_zarr)
        elapsed = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"seconds": elapsed, "graph": t_graph, "peak_gb": peak}


def compare(out_zarr, ref_npz, band=4):
    import xarray as xr

    got = xr.open_zarr(out_zarr, consolidated=False)
    ref = np.load(ref_npz)
    m = np.zeros(ref["data"].shape, bool)
    m[band:-band, band:-band] = True
    res = {}
    for name in PLANES:
        a, b = got[name].values[m].astype(np.float64), ref[name][m].astype(np.float64)
        nan_mismatch = int(np.sum(np.isnan(a) != np.isnan(b)))
        ok = ~np.isnan(a) & ~np.isnan(b)
        floor = 1e-2 * np.nanmax(np.abs(b)) if name == "data" else 0.0
        den = np.abs(b[ok]) + floor
        diff = np.abs(a[ok] - b[ok])
        rel = np.divide(diff, den, out=np.where(diff > 0, np.inf, 0.0), where=den > 0)
        res[name] = (float(rel.max()) if rel.size else 0.0, nan_mismatch)
        if name == "wht" and rel.size:
            res["wht_abs"] = float(diff.max() / np.median(np.abs(b[ok][b[ok] != 0])))
    res["con_equal"] = bool(np.array_equal(got.con.values[:, m], ref["con"][:, m]))
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--workdir", default="/tmp/daskcal-bench-resample")
    ap.add_argument("--stcal-child", nargs=2, metavar=("NPZ", "PSR"), help=argparse.SUPPRESS)
    ap.add_argument("--threads-child", nargs=3, metavar=("ZARR", "THREADS", "CORES"), help=argparse.SUPPRESS)
    ap.add_argument("--wcs", choices=("tan", "jwst"), default="tan",
                    help="inputs' gwcs: distortion | TAN (tan) or JWST-like detector -> v2v3 -> world (jwst)")
    ap.add_argument("--threaded", action="store_true",
                    help="also run daskcal without a client: threaded scheduler on 2 threads, and on 1 thread pinned "
                         "to one core")
    ap.add_argument("--large-ratio", type=float, default=0.1)
    ap.add_argument("--large-n", type=int, default=8)
    ap.add_argument("--skip-large", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results" / "resample.txt"), help="results file")
    ap.add_argument("--large-block-memory", default="128 MiB", help="daskcal.resample.block-memory for the large run")
    ap.add_argument("--large-worker-memory", default="1.5 GiB",
                    help="memory_limit of each worker in the large run (Dask spills to disk above 70%%)")
    ap.add_argument("--skip-small", action="store_true")
    ap.add_argument("--large-cluster", default="local", choices=("local", "threads"),
                    help="the large run's cluster: 2 worker processes (local) or one in-process worker of 2 threads")
    ap.add_argument("--reuse-stcal", action="store_true",
                    help="take stcal's time and planes from the last run (WORKDIR/stcal.json, stcal.npz)")
    ap.add_argument("--idle-load", type=float, default=0.5,
                    help="wait (at most 10 min) for the 1-minute load average to fall below this before each run")
    args = ap.parse_args(argv)
    IDLE_LOAD[0] = args.idle_load
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    paths = make_inputs(work, args.n, args.size, args.wcs)
    if args.threads_child:
        zarr_out, threads, cores = args.threads_child
        print(json.dumps(run_daskcal_threads(paths, zarr_out, int(threads), int(cores))))
        return 0
    if args.stcal_child:
        t, peak = run_stcal(paths, args.stcal_child[0], float(args.stcal_child[1]))
        print(json.dumps({"seconds": t, "peak_gb": peak}))
        return 0
    mpix = args.n * args.size**2 / 1e6
    lines = [f"# bench_resample.py: {args.n} dithered {args.size}x{args.size} inputs ({args.wcs} gwcs), cubic distortion 4 px, "
             f"0.03\"/px; square, pixfrac 1, ivm, variances, context, err from_var, pixmap_stepsize=1",
             f"# machine: {os.cpu_count()} cores; stcal {_version('stcal')}, drizzle {_version('drizzle')}; "
             f"daskcal on an embedded LocalCluster (daskcal.connect, with WORKER_ENVIRON): 2 worker processes x 1 thread; peak = client + workers RSS",
             f"# command: {' '.join([Path(sys.executable).name, *sys.argv])}"]
    if not args.skip_small:
        ref_npz = work / f"stcal-{args.wcs}.npz"
        loads = [wait_for_idle()]
        if args.reuse_stcal and (work / f"stcal-{args.wcs}.json").exists():
            st = json.loads((work / f"stcal-{args.wcs}.json").read_text())
        else:
            out = subprocess.run([sys.executable, __file__, "--n", str(args.n), "--size", str(args.size), "--wcs",
                                  args.wcs, "--workdir", str(work), "--stcal-child", str(ref_npz), "1.0"],
                                 capture_output=True, text=True, check=True)
            st = json.loads(out.stdout.strip().splitlines()[-1])
            (work / f"stcal-{args.wcs}.json").write_text(json.dumps(st))
        loads.append(wait_for_idle())
        again: list = []
        t, t_graph, peak, mosaic, _ = run_daskcal(paths, work / "daskcal.zarr", again=again)
        loads.append(os.getloadavg()[0])
        diffs = compare(work / "daskcal.zarr", ref_npz)
        lines += [
            f"output {tuple(mosaic.data.shape)}, tiles {mosaic.attrs['tile_shape']}",
            "| run | seconds | input Mpix/s | peak GB |",
            "|---|---|---|---|",
            f"| stcal.resample.Resample (1 process, inputs in memory) | {st['seconds']:.1f} | "
            f"{mpix / st['seconds']:.2f} | {st['peak_gb']:.2f} |",
            f"| daskcal.resample, 2 workers, Zarr in -> Zarr out (graph {t_graph:.1f} s incl.) | {t:.1f} | "
            f"{mpix / t:.2f} | {peak:.2f} |",
            f"throughput ratio daskcal/stcal: {st['seconds'] / t:.2f}x (1-min load average before stcal, before and "
            f"after daskcal: {', '.join(f'{v:.2f}' for v in loads)}; only runs started below 0.5 count)",
            (f"| the same again on the same 2 workers (graph {again[0][1]:.1f} s incl.; the peak is the first run's) | "
             f"{again[0][0]:.1f} | {mpix / again[0][0]:.2f} | | {st['seconds'] / again[0][0]:.2f}x stcal |"),
            "equality outside the 4 px edge band: max relative difference (NaN placement mismatches) per plane:",
            "  " + ", ".join(f"{k} {v[0]:.2g} ({v[1]})" for k, v in diffs.items() if k not in ("con_equal", "wht_abs"))
            + f"; con identical: {diffs['con_equal']}",
            f"  (largest wht difference relative to the median weight: {diffs['wht_abs']:.2g}; the largest relative ones "
            "are on slivers with weights ~1e-5 of the median, where pixel maps differing by ~1e-8 px move the overlap)",
        ]
        if args.threaded:
            for threads, cores, label in ((2, 2, "threaded scheduler, no client, 2 threads"),
                                          (1, 1, "threaded scheduler, 1 thread pinned to 1 core")):
                wait_for_idle()
                out = subprocess.run([sys.executable, __file__, "--n", str(args.n), "--size", str(args.size), "--wcs",
                                      args.wcs, "--workdir", str(work), "--threads-child", str(work / "threads.zarr"),
                                      str(threads), str(cores)], capture_output=True, text=True, check=True)
                th = json.loads(out.stdout.strip().splitlines()[-1])
                d = compare(work / "threads.zarr", ref_npz)
                lines.append(f"| daskcal.resample, {label} (graph {th['graph']:.1f} s incl.) | {th['seconds']:.1f} | "
                             f"{mpix / th['seconds']:.2f} | {th['peak_gb']:.2f} | {st['seconds'] / th['seconds']:.2f}x "
                             f"stcal; data {d['data'][0]:.2g}, wht {d['wht'][0]:.2g}, con equal {d['con_equal']} |")
        print("\n".join(lines), flush=True)
    if not args.skip_large:
        from dask.utils import parse_bytes

        lp = paths[: args.large_n]
        big = Path("/tmp/daskcal-bench-large.zarr")
        cfg = {"daskcal.resample.block-memory": args.large_block_memory,
               "distributed.worker.memory.spill": 0.6, "distributed.worker.memory.pause": 0.8,
               "distributed.worker.memory.terminate": False}
        # --large-cluster threads: one in-process worker of 2 threads, its memory limit the workers' together
        memory = args.large_worker_memory if args.large_cluster == "local" else \
            f"{2 * parse_bytes(args.large_worker_memory) / 2**30:g} GiB"
        t, t_graph, peak, mosaic, hwm = run_daskcal(lp, big, memory_limit=memory, config=cfg,
                                                    pixel_scale_ratio=args.large_ratio, cluster=args.large_cluster)
        ny, nx = mosaic.data.shape
        nplanes = (len(lp) - 1) // 32 + 1
        planes_gib = ny * nx * (4 * 6 + 4 * nplanes) / 2**30
        du = subprocess.run(["du", "-sh", str(big)], capture_output=True, text=True).stdout.split()[0]
        lines += [
            f"large mosaic: {len(lp)} inputs at pixel_scale_ratio={args.large_ratio} -> output ({ny}, {nx}) "
            f"= {ny * nx / 1e6:.0f} Mpix; stcal would hold data, wht, err, 3 variances (float32) and {nplanes} "
            f"context plane(s) (int32) = {4 * 6 + 4 * nplanes} B/px = {planes_gib:.1f} GiB (before its per-variance "
            f"sums and weights and per-input drizzle buffers)",
            f"block-memory {args.large_block_memory}, --large-cluster {args.large_cluster}, memory_limit {memory} "
            f"(spill 60%, pause 80%, no terminate), "
            f"tiles {mosaic.attrs['tile_shape']}",
            f"| daskcal.resample, {'2 workers' if args.large_cluster == 'local' else '2 threads in-process'}, Zarr out ({du} on disk) | {t:.1f} s (graph {t_graph:.1f} s) | "
            f"{len(lp) * args.size**2 / 1e6 / t:.3f} input Mpix/s | peak summed RSS {peak:.2f} GiB, "
            f"sum of VmHWM over all processes {hwm:.2f} GiB |",
        ]
        shutil.rmtree(big, ignore_errors=True)
        print("\n".join(lines[-3:]), flush=True)
    res = Path(args.out)
    res.parent.mkdir(exist_ok=True)
    res.write_text("\n".join(lines) + "\n")
    return 0


def _version(name):
    from importlib.metadata import version

    return version(name)


if __name__ == "__main__":
    sys.exit(main())
