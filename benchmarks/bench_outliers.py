"""Outlier-detection benchmark: daskcal.flag_outliers against the same steps run with stcal.

Run by hand (not a test)::

    python benchmarks/bench_outliers.py            # 8 dithered 2048x2048 exposures; 100 x 512x512 stack
    python benchmarks/bench_outliers.py --quick    # 8 x 512x512; 100 x 128x128

Cases, each in a fresh process:

1. reference: stcal 1.20's utilities + drizzle 2.2 (``reference_outliers`` in
   tests/image/test_outliers.py: single drizzle per group, maskpt, stcal's in-memory
   MedianComputer, gwcs_blot, flag_resampled_crs) on images in memory, one process.
2. daskcal: ``flag_outliers`` on a LocalCluster of 2 worker processes (1 thread each; ``--cluster threads``:
   ``daskcal.connect("threads")``, one in-process worker of 2 threads),
   inputs read lazily from Zarr; time to compute every new DQ array and the median.
   Peak memory is sampled (psutil, every 50 ms) over the client, nanny and worker
   processes together; the largest single worker is reported too.
3. stack: 100 exposures over one region with a median budget (``buffer_size``) much
   smaller than a tile's stack, synchronous scheduler in one process; growth of the
   process's peak RSS over its RSS before the run, against ``in_memory=True``.

Peaks of single processes are their own VmHWM (ru_maxrss would include the parent's
peak, which Linux carries across fork+exec).

The flagged masks and medians of (1) and (2) are compared pixel by pixel.
Results are appended to benchmarks/results/outliers.txt.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from _proc import TreeSampler, peak_mb as _peak_mb, rss_mb as _rss_mb

HERE = Path(__file__).resolve().parent
OUT = HERE / "out" / "outliers"
RESULTS = HERE / "results" / "outliers.txt"
MB = 2**20


def prepare(kind: str, n: int, shape, dither=None, cosmic_rays=0) -> list[Path]:
    from daskcal.image._simulate import simulate_images
    from daskcal.io._atomic import save_dataset

    d = OUT / f"{kind}-{n}x{shape[0]}x{shape[1]}"
    paths = [d / f"img{k:03d}.zarr" for k in range(n)]
    if all(p.exists() for p in paths):
        return paths
    sim = simulate_images(n, shape, seed=0, cosmic_rays=cosmic_rays, dither=dither)
    for ds, p in zip(sim.images, paths):
        save_dataset(ds, p, overwrite=True)
    return paths


def _open(paths, load):
    import xarray as xr

    out = []
    for p in paths:
        ds = xr.open_zarr(p, consolidated=False)
        out.append(ds.load() if load else ds)
    return out


def child_reference(paths, save):
    import importlib.util

    import numpy as np

    from daskcal.image._grid import output_wcs

    spec = importlib.util.spec_from_file_location("t_out", HERE.parent / "tests" / "image" / "test_outliers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    images = _open(paths, load=True)
    base = _rss_mb()
    t0 = time.perf_counter()
    out = output_wcs(images)
    median, dqs = mod.reference_outliers(images, out)
    elapsed = time.perf_counter() - t0
    np.savez(save, median=median, dq=np.stack(dqs))
    peak = _peak_mb()
    return {"seconds": elapsed, "peak_mb": peak, "base_mb": base, "shape": list(median.shape)}


def _warm_worker():
    """Import what the tasks use and load the compiled kernels (numba on-disk cache)."""
    import numpy as np
    from drizzle.resample import Drizzle, blot_image  # noqa: F401

    import daskcal.image._outlier_blocks  # noqa: F401
    from daskcal.image._median_kernels import nanmedian_stack
    from daskcal.image._outlier_kernels import flag_resampled_crs

    a = np.ones((4, 4), np.float32)
    flag_resampled_crs(a, a, a, 5.0, 4.0, 1.2, 0.7, 0.0)
    nanmedian_stack(np.ones((2, 4, 4), np.float32))


def child_daskcal(paths, save, workers, tmp, threads=1, cluster="local"):
    import numpy as np

    import daskcal
    from daskcal.cluster import connect
    from daskcal.image._outliers import flag_outliers

    # as a user's script or the command line opens them (lazy, each task reading its own window); xarray's
    # open_zarr gave read tasks that the input check and the drizzles each ran (13.4 s against ~8.2 s)
    images = daskcal.open_images(paths)
    with connect(cluster, n_workers=workers, threads_per_worker=threads) as client:
        client.run(_warm_worker)  # imports and numba caches loaded before timing, as in the reference process
        with TreeSampler() as s:
            t0 = time.perf_counter()
            res = flag_outliers(images, tempdir=tmp)
            futs = client.compute([res.median.data, *[im["dq"].data for im in res.images]])
            out = client.gather(futs)
            elapsed = time.perf_counter() - t0
        res.cleanup()
    np.savez(save, median=out[0], dq=np.stack(out[1:]))
    return {"seconds": elapsed, "peak_mb": s.peak_total, "worker_peak_mb": s.peak_single_child, "workers": workers,
            "cluster": cluster}


def child_stack(paths, budget_mb, in_memory, tile, tmp):
    import dask

    from daskcal.image._outliers import flag_outliers

    images = _open(paths, load=False)
    res = flag_outliers(images, buffer_size=int(budget_mb * MB), in_memory=in_memory, tile_shape=(tile, tile), tempdir=tmp)
    # compile kernels and load modules before measuring
    with dask.config.set(scheduler="synchronous"):
        base = _rss_mb()
        t0 = time.perf_counter()
        med = res.median.values
        elapsed = time.perf_counter() - t0
    peak = _peak_mb()
    res.cleanup()
    ngroups = len(images)
    return {"seconds": elapsed, "peak_mb": peak, "base_mb": base, "growth_mb": peak - base,
            "stack_mb": ngroups * min(tile, med.shape[0]) * min(tile, med.shape[1]) * 4 / MB, "shape": list(med.shape)}


def _run(args_list):
    cmd = [sys.executable, __file__, *args_list]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--child", default=None)
    ap.add_argument("--paths", nargs="*")
    ap.add_argument("--save", default=None)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cluster", default="local",
                    help="daskcal's cluster: local (worker processes) or threads (its workers' threads in the process)")
    ap.add_argument("--budget-mb", type=float, default=16.0)
    ap.add_argument("--in-memory", action="store_true")
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--tmp", default=None)
    args = ap.parse_args()
    if args.child == "reference":
        print(json.dumps(child_reference(args.paths, args.save)))
        return
    if args.child == "daskcal":
        print(json.dumps(child_daskcal(args.paths, args.save, args.workers, args.tmp, cluster=args.cluster)))
        return
    if args.child == "stack":
        print(json.dumps(child_stack(args.paths, args.budget_mb, args.in_memory, args.tile, args.tmp)))
        return

    import tempfile

    import numpy as np

    big = (512, 512) if args.quick else (2048, 2048)
    stack_shape = (128, 128) if args.quick else (512, 512)
    lines = [f"# command: python benchmarks/bench_outliers.py {' '.join(sys.argv[1:])}".rstrip()]
    print("preparing inputs ...", flush=True)
    paths = [str(p) for p in prepare("dither", 8, big, cosmic_rays=2000 if not args.quick else 200)]
    stack_paths = [str(p) for p in prepare("stack", 100, stack_shape, dither=4.0)]
    with tempfile.TemporaryDirectory(prefix="bench-outliers-") as tmp:
        ref_npz, dc_npz = f"{tmp}/ref.npz", f"{tmp}/dc.npz"
        ref = _run(["--child", "reference", "--save", ref_npz, "--paths", *paths])
        print("reference", ref, flush=True)
        dc = _run(["--child", "daskcal", "--save", dc_npz, "--workers", str(args.workers), "--tmp", tmp,
                   "--cluster", args.cluster, "--paths", *paths])
        print("daskcal", dc, flush=True)
        a, b = np.load(ref_npz), np.load(dc_npz)
        agree = float(np.mean(a["dq"] == b["dq"]))
        ma, mb = a["median"], b["median"]
        both = np.isfinite(ma) & np.isfinite(mb)
        nan_agree = float(np.mean(np.isfinite(ma) == np.isfinite(mb)))
        absdiff = float(np.max(np.abs(ma[both] - mb[both]))) if both.any() else 0.0
        scale = float(np.max(np.abs(ma[both]))) if both.any() else 1.0
        flagged_ref = int(((a["dq"] & 16) > 0).sum())
        flagged_dc = int(((b["dq"] & 16) > 0).sum())
        budget = args.budget_mb
        st_disk = _run(["--child", "stack", "--budget-mb", str(budget), "--tile", str(stack_shape[0]), "--tmp", tmp,
                        "--paths", *stack_paths])
        print("stack budget", st_disk, flush=True)
        st_mem = _run(["--child", "stack", "--in-memory", "--budget-mb", str(budget), "--tile", str(stack_shape[0]),
                       "--tmp", tmp, "--paths", *stack_paths])
        print("stack in memory", st_mem, flush=True)
    n_in = 8 * big[0] * big[1] / 1e6
    label = f"daskcal, {dc['workers']} " + ("threads in-process" if dc["cluster"] == "threads" else "workers x 1 thread")
    lines += [
        f"# 1-2: 8 dithered {big[0]}x{big[1]} exposures (2 px distortion, stars, cosmic rays) -> output {ref['shape']}",
        f"{'run':<34} {'seconds':>8} {'input Mpix/s':>12} {'peak MB':>8}  notes",
        f"{'reference (stcal utils + drizzle)':<34} {ref['seconds']:>8.1f} {n_in / ref['seconds']:>12.2f} {ref['peak_mb']:>8.0f}"
        f"  one process; inputs in memory ({ref['base_mb']:.0f} MB before the run)",
        f"{label:<34} {dc['seconds']:>8.1f} {n_in / dc['seconds']:>12.2f} "
        f"{dc['peak_mb']:>8.0f}  client+nanny+workers summed; largest worker {dc['worker_peak_mb']:.0f} MB; inputs lazy from Zarr",
        f"# speed-up {ref['seconds'] / dc['seconds']:.2f}x; DQ arrays agree on {agree * 100:.5f}% of pixels "
        f"({flagged_ref} outlier pixels in the reference, {flagged_dc} in daskcal)",
        f"# median mosaic (sky-subtracted, values near 0): finite/NaN agree on {nan_agree * 100:.5f}% of pixels; "
        f"max |difference| {absdiff:.2e} = {absdiff / scale:.1e} of the largest |median| ({scale:.1f})",
        f"# 3: 100 exposures of {stack_shape[0]}x{stack_shape[1]} over one region (dither 4 px); one tile's stack "
        f"{st_disk['stack_mb']:.0f} MB; synchronous scheduler, one process",
        f"{'run':<34} {'seconds':>8} {'growth MB':>12} {'peak MB':>8}",
        f"{f'budget buffer_size={budget:.0f} MB':<34} {st_disk['seconds']:>8.1f} {st_disk['growth_mb']:>12.0f} {st_disk['peak_mb']:>8.0f}",
        f"{'in_memory=True':<34} {st_mem['seconds']:>8.1f} {st_mem['growth_mb']:>12.0f} {st_mem['peak_mb']:>8.0f}",
        "# growth: peak RSS minus RSS before computing (imports loaded; inputs are read lazily from Zarr)",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:  # appended: the file keeps every run
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
