"""detector1 with snowball and shower flagging on: stcal 1.20's chain in one process against daskcal.

Run by hand (not a test), from the repository root with this checkout first on the path::

    PYTHONPATH=. python benchmarks/bench_detector1_events.py                 # (1, 10, 2048, 2048)
    PYTHONPATH=. python benchmarks/bench_detector1_events.py --shape 1 10 1024 1024

The cube is ``daskcal.simulate`` (seed 0) with injected snowballs and showers (``--snowballs``,
``--showers``). Both sides run the whole chain on it: saturation (``n_pix_grow_sat`` 1), superbias,
jump with ``expand_large_events=True`` and ``find_showers=True`` (every other parameter jwst's
default), OLS_C ramp fit.

- stcal: ``flag_saturated_pixels``, the superbias subtraction, ``detect_jumps_data`` set up as the
  JWST jump step does (``tests/detector/_reference.stcal_jumps``) and ``ramp_fit_data``, on arrays in
  memory, in one process (a child; peak = its VmHWM).
- daskcal: ``daskcal.detector1(..., expand_large_events=True, find_showers=True)`` on the store,
  ``rate`` and ``rateints`` computed on dask's threaded scheduler (2 threads) and on a LocalCluster of
  2 workers (``daskcal.connect``), each warmed on a small cube first; peak = the process tree's RSS.

Printed: seconds, peak memory, the ratio, and the agreement of the rate (dq identical, planes within
1e-4 relative) with the 1-minute load average. ``--out`` appends to a results file.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ON = {"expand_large_events": True, "find_showers": True}


def _simulate(shape, snowballs, showers, path: Path, chunks) -> None:
    import daskcal
    from daskcal._simulate import simulate

    sim = simulate(tuple(shape), seed=0, snowballs=snowballs, showers=showers)
    daskcal.save(sim.ramps.chunk({"y": chunks[0], "x": chunks[1]}), path)


def child_stcal(path: str, save: str) -> dict:
    import warnings

    import xarray as xr

    sys.path.insert(0, str(HERE.parent / "tests" / "detector"))
    from _reference import stcal_jumps

    from daskcal.testing import (
        stcal_fit_ramps,
        stcal_flag_saturation,
        stcal_subtract_superbias,
    )

    ramps = xr.open_zarr(path, consolidated=False).load()
    t0 = time.perf_counter()
    r = stcal_flag_saturation(ramps, 1)
    r = stcal_subtract_superbias(r)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        gdq, pdq = stcal_jumps(r, **ON)
    r = r.assign(groupdq=(r["groupdq"].dims, gdq), pixeldq=(r["pixeldq"].dims, pdq))
    rate, _ = stcal_fit_ramps(r, True)
    seconds = time.perf_counter() - t0
    np.savez(save, **{k: np.asarray(v) for k, v in rate.items()})
    return {"seconds": seconds, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _warm(shape_small, tmp: Path) -> None:
    import daskcal
    from daskcal._simulate import simulate

    sim = simulate(shape_small, seed=1, snowballs=1, showers=1)
    daskcal.detector1(sim.ramps, **ON).rate.compute()


def child_daskcal(path: str, save: str, mode: str) -> dict:
    import dask

    import daskcal

    sys.path.insert(0, str(HERE))
    from _proc import TreeSampler

    with tempfile.TemporaryDirectory() as tmp:
        if mode == "threads":
            with dask.config.set(scheduler="threads", num_workers=2):
                _warm((1, 10, 64, 64), Path(tmp))
                with TreeSampler() as s:
                    t0 = time.perf_counter()
                    result = daskcal.detector1(daskcal.open_ramps(path), **ON)
                    rate, _ = dask.compute(result.rate, result.rateints)
                    seconds = time.perf_counter() - t0
        else:
            from daskcal.cluster import connect

            with connect("local", n_workers=2, threads_per_worker=1) as client:
                client.run(_warm, (1, 10, 64, 64), Path(tmp))
                with TreeSampler() as s:
                    t0 = time.perf_counter()
                    result = daskcal.detector1(daskcal.open_ramps(path), **ON)
                    rate, _ = dask.compute(result.rate, result.rateints)
                    seconds = time.perf_counter() - t0
    np.savez(save, **{k: rate[k].values for k in rate.data_vars})
    return {"seconds": seconds, "peak_mb": s.peak_total}  # MB


def _run(args: list[str]) -> dict:
    res = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


def _agreement(ref_npz: str, got_npz: str) -> str:
    a, b = np.load(ref_npz), np.load(got_npz)
    parts = [f"dq differing pixels {int((a['dq'] != b['dq']).sum())} of {a['dq'].size}"]
    for k in ("data", "err", "var_poisson", "var_rnoise"):
        x, y = a[k].astype(np.float64), b[k].astype(np.float64)
        both = np.isfinite(x) & np.isfinite(y)
        rel = np.abs(x[both] - y[both]) / np.maximum(np.abs(x[both]), 1e-30)
        parts.append(f"{k} max rel {rel.max() if rel.size else 0:.1e}, >1e-4: {int((rel > 1e-4).sum())}, "
                     f"NaN equal {bool(np.array_equal(np.isfinite(x), np.isfinite(y)))}")
    return "; ".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=4, default=(1, 10, 2048, 2048))
    ap.add_argument("--snowballs", type=int, default=20)
    ap.add_argument("--showers", type=int, default=5)
    ap.add_argument("--chunks", type=int, nargs=2, default=(512, 1024))
    ap.add_argument("--out", default=None, help="append the results to this file")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, path, save, *rest = args.child
        out = child_stcal(path, save) if kind == "stcal" else child_daskcal(path, save, rest[0])
        print(json.dumps(out))
        return
    lines = [(f"# detector1 with snowballs and showers on, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
              f"cube {tuple(args.shape)}, {args.snowballs} snowballs and {args.showers} showers injected, "
              f"chunks {tuple(args.chunks)}, {os.cpu_count()} cores"),
             f"# command: python benchmarks/bench_detector1_events.py {' '.join(sys.argv[1:])}"]
    with tempfile.TemporaryDirectory(prefix="bench-events-") as tmp:
        store = Path(tmp) / "ramps.zarr"
        _simulate(args.shape, args.snowballs, args.showers, store, args.chunks)
        mpg = np.prod(args.shape) / 1e6
        ref = f"{tmp}/stcal.npz"
        load = os.getloadavg()[0]
        st = _run(["--child", "stcal", str(store), ref])
        lines.append(f"stcal chain, 1 process        : {st['seconds']:7.2f} s  {mpg / st['seconds']:6.2f} Mpix*groups/s  "
                     f"peak {st['peak_mb']:6.0f} MB  (load {load:.2f})")
        for mode in ("threads", "cluster"):
            got = f"{tmp}/{mode}.npz"
            load = os.getloadavg()[0]
            dc = _run(["--child", "daskcal", str(store), got, mode])
            label = "daskcal, 2 threads" if mode == "threads" else "daskcal, LocalCluster 2 wkrs"
            lines.append(f"{label:30s}: {dc['seconds']:7.2f} s  {mpg / dc['seconds']:6.2f} Mpix*groups/s  "
                         f"peak {dc['peak_mb']:6.0f} MB  (load {load:.2f})  {st['seconds'] / dc['seconds']:.1f}x stcal")
            lines.append(f"  rate vs stcal: {_agreement(ref, got)}")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with (Path(args.out) if Path(args.out).is_absolute() else Path.cwd() / args.out).open("a") as f:
            f.write("\n" + text + "\n")


if __name__ == "__main__":
    main()
