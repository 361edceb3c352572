"""Median benchmark: daskcal's MedianComputer against stcal 1.20's on the same frames.

Run by hand (not a test)::

    python benchmarks/bench_median.py            # 20 x 4096 x 4096 float32, 10% NaN
    python benchmarks/bench_median.py --quick    # 20 x 1024 x 1024

Every measurement runs in a fresh process that generates the frames one at a time
(seeded, in row blocks, so generation adds one frame to the peak), appends them,
evaluates the median and reports its wall time (append + evaluate, and evaluate
alone) and its own peak RSS. A "frames only" run measures the generation's own
peak so the computers' share can be read off. "daskcal-disk-1t" is daskcal on disk
with one thread. The machine's load average is recorded before and after.
Results go to benchmarks/results/median.txt.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _proc import peak_mb as _peak_mb
from _proc import rss_mb as _rss_mb

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "median.txt"
MB = 2**20


def _frame(k, shape, out):
    import numpy as np

    rng = np.random.default_rng(1000 + k)
    step = 256
    for r0 in range(0, shape[0], step):
        block = out[r0 : r0 + step]
        rng.standard_normal(block.shape, dtype=np.float32, out=block)
        block[rng.random(block.shape, dtype=np.float32) < 0.1] = np.nan
    return out


def child(impl: str, n: int, ny: int, nx: int, buffer_mb: float, tmp: str) -> dict:
    import numpy as np

    shape = (n, ny, nx)
    buf = np.empty((ny, nx), np.float32)
    if impl == "frames":
        base = _rss_mb()
        t0 = time.perf_counter()
        for k in range(n):
            _frame(k, (ny, nx), buf)
        out = np.empty((ny, nx), np.float32)
        elapsed = time.perf_counter() - t0
    else:
        if impl.startswith("stcal"):
            from stcal.outlier_detection.median import MedianComputer
        else:
            from daskcal.image._median import MedianComputer  # numpy only: no numba to load
        in_memory = impl.endswith("memory")
        kwargs = {"nthreads": 1} if impl.endswith("-1t") else {}
        base = _rss_mb()
        mc = MedianComputer(shape, in_memory=in_memory, buffer_size=int(buffer_mb * MB), tempdir=tmp, **kwargs)
        gen = 0.0
        t0 = time.perf_counter()
        for k in range(n):
            g0 = time.perf_counter()
            _frame(k, (ny, nx), buf)
            gen += time.perf_counter() - g0
            mc.append(buf, k)
        import warnings

        e0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out = mc.evaluate()
        evaluate = time.perf_counter() - e0
        elapsed = time.perf_counter() - t0 - gen
    return {
        "impl": impl,
        "seconds": elapsed,
        "evaluate": evaluate if impl != "frames" else 0.0,
        "peak_mb": _peak_mb(),
        "base_mb": base,
        "checksum": float(np.nansum(out[:: max(ny // 64, 1)], dtype=np.float64)),
    }


def _load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def run(impl, n, ny, nx, buffer_mb, tmp):
    cmd = [sys.executable, __file__, "--child", impl, "--n", str(n), "--shape", str(ny), str(nx),
           "--buffer-mb", str(buffer_mb), "--tmp", tmp]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--child", default=None)
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--shape", type=int, nargs=2, default=None)
    ap.add_argument("--buffer-mb", type=float, default=64.0)
    ap.add_argument("--tmp", default=None)
    args = ap.parse_args()
    shape = tuple(args.shape) if args.shape else ((1024, 1024) if args.quick else (4096, 4096))
    if args.child:
        print(json.dumps(child(args.child, args.n, *shape, args.buffer_mb, args.tmp)))
        return
    cases = [
        ("frames", 64.0),
        ("stcal-disk", 64.0),
        ("daskcal-disk", 64.0),
        ("daskcal-disk-1t", 64.0),
        ("stcal-disk", 100.0),
        ("daskcal-disk", 100.0),
        ("daskcal-disk", 16.0),
        ("stcal-memory", 0.0),
        ("daskcal-memory", 0.0),
    ]
    argv = " ".join(sys.argv[1:])
    lines = [
        f"# median of {args.n} frames of {shape[0]}x{shape[1]} float32, 10% NaN (seeded); fresh process per run",
        "# seconds: append + evaluate (frame generation excluded), best of the runs listed; evaluate: its share;",
        "# peak: process max RSS (MB); growth: peak minus the RSS just before the run (imports loaded)",
        f"# command: PYTHONPATH=. python benchmarks/bench_median.py{' ' + argv if argv else ''}",
        f"# {os.cpu_count()} cores shared with other jobs; load average (1, 5, 15 min) at start: {_load()}",
        (f"{'implementation':<16} {'buffer MB':>9} {'seconds':>8} {'evaluate':>8} {'Mpix/s':>8} {'peak MB':>8}"
         f" {'growth MB':>9}  notes"),
    ]
    checks, times = {}, {}
    with tempfile.TemporaryDirectory(prefix="bench-median-") as tmp:
        for impl, buf in cases:
            runs, note = [], ""
            for _ in range(1 if impl == "frames" else args.repeat):
                try:
                    runs.append(run(impl, args.n, *shape, buf, tmp))
                except subprocess.CalledProcessError as exc:
                    err = (exc.stderr or "").strip().splitlines()
                    note = f"FAILS: {err[-1] if err else exc}"
                    break
            if not runs:
                lines.append(f"{impl:<16} {buf:>9.0f} {'-':>8} {'-':>8} {'-':>8} {'-':>8} {'-':>9}  {note}")
                print(lines[-1], flush=True)
                continue
            best = min(runs, key=lambda r: r["seconds"])  # a shared machine's load only adds time
            secs, evaluate = best["seconds"], best["evaluate"]
            peak = max(r["peak_mb"] for r in runs)
            growth = max(r["peak_mb"] - r["base_mb"] for r in runs)
            mpix = args.n * shape[0] * shape[1] / 1e6 / secs if secs > 0 else float("nan")
            if impl != "frames":
                checks[(impl, buf)] = runs[0]["checksum"]
                times[(impl, buf)] = secs
                note = "runs: " + ", ".join(f"{r['seconds']:.2f}" for r in runs)
            else:
                note = "generation only (the floor every run shares)"
            if impl == "daskcal-disk" and ("stcal-disk", buf) in times:
                note += f"; {times[('stcal-disk', buf)] / secs:.1f}x faster than stcal-disk"
            lines.append(f"{impl:<16} {buf:>9.0f} {secs:>8.2f} {evaluate:>8.2f} {mpix:>8.1f} {peak:>8.0f} {growth:>9.0f}"
                         f"  {note}")
            print(lines[-1], flush=True)
    same = len({round(v, 3) for v in checks.values()}) == 1
    lines.append(f"# all medians equal (checksum over every 64th row): {same}")
    lines.append(f"# load average at end: {_load()}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
