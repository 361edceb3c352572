"""Likelihood ramp fit benchmark: stcal 1.20's ``LIKELY`` and daskcal's on the same cube.

Run by hand (not a test)::

    python benchmarks/bench_likely.py                       # (1, 10, 2048, 2048)
    python benchmarks/bench_likely.py --shape 1 10 1024 1024

The cube is simulated (``daskcal.simulate``, seed 0, cosmic rays at the default rate), its
superbias subtracted and its saturated groups flagged; no jump flags are given, so both
fitters find the cosmic rays with their own jump search. Both fit the same numpy arrays in
memory: stcal with ``ramp_fit_data(..., "LIKELY", ...)`` (one process; its LIKELY path has no
multiprocessing), daskcal with ``fit_ramps(..., algorithm="LIKELY")`` on dask's threaded
scheduler with 1 and 2 threads, chunks of (512, 1024) pixels, compiled kernels loaded first;
daskcal's times are medians of 3 runs computing ``rate`` and ``rateints``. CPU times
(``time.process_time``, summed over the process's threads) are printed too: on a shared
machine they say more about the work done than wall times. Throughput is
nints*ngroups*ny*nx / 1e6 / seconds (Mpix*groups/s). The load average (1 min) is printed
before and after each measurement: the machine is shared. Results are appended to
benchmarks/results/likely.txt.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "likely.txt"
REPEATS = 3
CHUNKS = (512, 1024)


def cube(shape):
    """Bias-subtracted ramps with saturation flagged (no jump flags), as an in-memory Dataset."""
    from daskcal import simulate
    from daskcal.dq import DQ

    ramps = simulate(shape, seed=0).ramps.compute()
    gdq = np.where(ramps["data"].values >= ramps["saturation"].values, np.uint8(DQ.SATURATED), np.uint8(0))
    gdq = np.maximum.accumulate(gdq, axis=1)
    data = (ramps["data"] - ramps["superbias"]).astype(np.float32)
    return ramps.assign(data=data, groupdq=(ramps["groupdq"].dims, gdq))


def load() -> str:
    return f"{os.getloadavg()[0]:.2f}"


def time_stcal(ramps):
    import warnings

    from daskcal.testing import stcal_fit_ramps

    warnings.simplefilter("ignore")
    before = load()
    t0, c0 = time.perf_counter(), time.process_time()
    rate, _ = stcal_fit_ramps(ramps, algorithm="LIKELY")
    return time.perf_counter() - t0, time.process_time() - c0, rate, (before, load())


def time_daskcal(ramps, threads: int):
    import dask

    from daskcal import fit_ramps

    chunked = ramps.chunk({"y": CHUNKS[0], "x": CHUNKS[1]})
    seconds, cpu, loads = [], [], []
    rate = None
    for _ in range(REPEATS):
        before = load()
        with dask.config.set(scheduler="threads", num_workers=threads):
            t0, c0 = time.perf_counter(), time.process_time()
            result = fit_ramps(chunked, algorithm="LIKELY")
            rate, _ = dask.compute(result.rate, result.rateints)
            seconds.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        loads.append((before, load()))
    return statistics.median(seconds), seconds, statistics.median(cpu), rate, loads


def parity_lines(ours, ref) -> list[str]:
    lines = []
    for name in ("data", "err", "var_poisson", "var_rnoise"):
        a, b = ours[name].values.astype(np.float64), np.asarray(ref[name], np.float64)
        same_nan = np.array_equal(np.isnan(a), np.isnan(b))
        with np.errstate(all="ignore"):
            rel = np.where((a == b) | np.isnan(b), 0.0, np.abs(a - b) / np.abs(b))
        rel[np.isnan(a) != np.isnan(b)] = np.inf
        lines.append(f"  {name}: max rel diff {np.max(rel):.2e}, pixels > 1e-4: {int((rel > 1e-4).sum())}, "
                     f"NaN pattern equal: {same_nan}")
    differ = int((ours["dq"].values != np.asarray(ref["dq"])).sum())
    lines.append(f"  dq: differing pixels {differ} of {ours['dq'].size}")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=4, default=(1, 10, 2048, 2048))
    args = parser.parse_args(argv)
    shape = tuple(args.shape)
    samples = np.prod(shape) / 1e6
    from daskcal import fit_ramps

    ramps = cube(shape)
    fit_ramps(cube((1, shape[1], 8, 8)), algorithm="LIKELY").rate.compute()  # compile / load the kernels
    t_stcal, cpu_stcal, ref, load_stcal = time_stcal(ramps)
    t1, runs1, cpu1, _, load1 = time_daskcal(ramps, 1)
    t2, runs2, cpu2, ours, load2 = time_daskcal(ramps, 2)
    stamp = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    lines = [
        (f"# likelihood ramp fit (LIKELY) benchmark, {stamp} UTC, cube {shape}, chunks {CHUNKS}, "
         f"{os.cpu_count()} cores"),
        f"# command: python benchmarks/bench_likely.py {' '.join(sys.argv[1:])}",
        (f"stcal 1.20 LIKELY, 1 process : {t_stcal:8.2f} s  {samples / t_stcal:7.2f} Mpix*groups/s"
         f"  CPU {cpu_stcal:.2f} s  (load avg before/after {load_stcal[0]}/{load_stcal[1]})"),
        f"daskcal LIKELY, 1 thread     : {t1:8.2f} s  {samples / t1:7.2f} Mpix*groups/s  CPU {cpu1:.2f} s  runs "
        + ", ".join(f"{s:.2f}" for s in runs1) + "  (load avg " + ", ".join("/".join(x) for x in load1) + ")",
        f"daskcal LIKELY, 2 threads    : {t2:8.2f} s  {samples / t2:7.2f} Mpix*groups/s  CPU {cpu2:.2f} s  runs "
        + ", ".join(f"{s:.2f}" for s in runs2) + "  (load avg " + ", ".join("/".join(x) for x in load2) + ")",
        f"wall time: daskcal 2 threads vs stcal {t_stcal / t2:.1f}x; 1 thread vs stcal {t_stcal / t1:.1f}x",
        (f"CPU time (less sensitive to the load): stcal / daskcal 1 thread {cpu_stcal / cpu1:.1f}x; "
         f"stcal / daskcal 2 threads (sum over threads) {cpu_stcal / cpu2:.1f}x"),
        "parity with stcal (2-thread run, rate):",
        *parity_lines(ours, ref),
    ]
    text = "\n".join(lines) + "\n"
    print(text, end="")
    RESULTS.parent.mkdir(exist_ok=True)
    with RESULTS.open("a") as fh:
        fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
