"""One-pass drizzle kernel (daskcal.image._dkernel) against drizzle 2.2's C ``add_image``.

Run by hand (not a test)::

    python benchmarks/bench_dkernel.py            # 2048 x 2048 input, square kernel, pixfrac 1
    python benchmarks/bench_dkernel.py --quick    # 512 x 512

Measures, single thread, after compilation, with a precomputed pixel map (a
10 degree rotation with 1% distortion): input Mpix/s of drizzle's one pass
(data, context), of drizzle's four passes (data with context, then the three
sqrt-variance planes, as ``_driz.drizzle_block`` does), and of ``drizzle_window``
doing data + three planes + context in one pass; then two threads
(ThreadPoolExecutor) on the two halves of the input against the same halves one
after the other, for both. The compile time of the first call is measured in a
fresh process with an empty numba cache, and again in a fresh process with the
cache it left. Results go to benchmarks/results/dkernel.txt.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "dkernel.txt"


def make_inputs(n: int):
    """Data, weight, 3 sqrt-variance planes, pixmap and the output shape holding the footprint."""
    rng = np.random.default_rng(0)
    data = (10 + rng.standard_normal((n, n), dtype=np.float32)).astype(np.float32)
    weight = rng.uniform(0.5, 2.0, (n, n)).astype(np.float32)
    planes = rng.uniform(0.1, 2.0, (3, n, n)).astype(np.float32)
    y, x = np.indices((n, n), dtype=np.float64)
    cx, cy = x - n / 2, y - n / 2
    t = np.radians(10.0)
    u = np.cos(t) * cx - np.sin(t) * cy + 0.01 * cx * cy / n
    v = np.sin(t) * cx + np.cos(t) * cy + 0.01 * cx * cx / n
    pad = 4
    u -= u.min() - pad
    v -= v.min() - pad
    out_shape = (int(np.ceil(v.max())) + pad, int(np.ceil(u.max())) + pad)
    return data, weight, planes, np.dstack([u, v]), out_shape


def drizzle_c(data, weight, pixmap, out_shape, bounds, *, ctx=True):
    from drizzle.resample import Drizzle

    img = np.zeros(out_shape, np.float32)
    wht = np.zeros(out_shape, np.float32)
    kw = {"out_ctx": np.zeros((1, *out_shape), np.int32)} if ctx else {"disable_ctx": True}
    d = Drizzle(kernel="square", fillval="0", out_img=img, out_wht=wht, out_shape=out_shape, **kw)
    xmin, xmax, ymin, ymax = bounds
    d.add_image(data, exptime=1.0, pixmap=pixmap, weight_map=weight, wht_scale=1.0, pixfrac=1.0,
                in_units="cps", iscale=1.0, pixel_scale_ratio=1.0, xmin=xmin, xmax=xmax, ymin=ymin, ymax=ymax)
    return d


def drizzle_c_four(data, weight, planes, pixmap, out_shape, bounds):
    main = drizzle_c(data, weight, pixmap, out_shape, bounds)
    return main, [drizzle_c(p, weight, pixmap, out_shape, bounds, ctx=False).out_img for p in planes]


def ours(data, weight, planes, pixmap, out_shape, bounds):
    from daskcal.image._dkernel import drizzle_window

    return drizzle_window(data, weight, pixmap, bounds, out_shape, sqrt_var=planes)


def control_speedup(repeat):
    """2-thread speed-up of a trivial compiled nogil loop: what the machine allows right now."""
    from numba import njit

    @njit(nogil=True)
    def spin(n):
        s = 0.0
        for i in range(n):
            s += np.sqrt(i * 1.0)
        return s

    spin(10)
    n = 50_000_000
    ts, _ = best(lambda: [spin(n), spin(n)], repeat)

    def threads():
        with ThreadPoolExecutor(2) as ex:
            list(ex.map(spin, [n, n]))

    tp, _ = best(threads, repeat)
    return ts / tp


def python_stall(fn, seconds=2.0):
    """Longest pause (s) of a pure-Python loop in this thread while ``fn`` runs repeatedly in another thread.

    A call that holds the GIL stops this loop for its whole length; one that
    releases it only shares the CPU (pauses of a scheduler slice or the GIL
    switch interval). Unlike a speed-up, this shows the GIL release even when
    the machine has no idle core.
    """
    import threading

    done = threading.Event()

    def spin():
        while not done.is_set():
            fn()

    th = threading.Thread(target=spin)
    th.start()
    t0 = last = time.perf_counter()
    longest = 0.0
    while last - t0 < seconds:
        now = time.perf_counter()
        longest = max(longest, now - last)
        last = now
    done.set()
    th.join()
    return longest


def half_window(data, weight, planes, pm, r0, r1):
    """Rows r0:r1 with their pixel map relative to the window holding their footprint."""
    sub = pm[r0:r1]
    x0, y0 = np.floor(sub[..., 0].min()) - 2, np.floor(sub[..., 1].min()) - 2
    shape = (int(np.ceil(sub[..., 1].max() - y0)) + 3, int(np.ceil(sub[..., 0].max() - x0)) + 3)
    rel = sub - np.array([x0, y0])
    return (data[r0:r1], weight[r0:r1], planes[:, r0:r1], rel, shape, (0, data.shape[1] - 1, 0, r1 - r0 - 1))


def drizzle_c_args(data, weight, planes, pixmap, out_shape, bounds):
    return drizzle_c(data, weight, pixmap, out_shape, bounds)


def timed(fn, *args):
    """Run fn(*args); the CPU seconds of this thread."""
    t = time.thread_time()
    fn(*args)
    return time.thread_time() - t


def best(fn, repeat):
    """Best and median wall seconds of ``repeat`` runs."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), float(np.median(times))


def best_cpu(fn, repeat):
    """Best thread-CPU seconds and best wall seconds of ``repeat`` runs (CPU time is robust to a busy machine)."""
    cpu, wall = [], []
    for _ in range(repeat):
        t, c = time.perf_counter(), time.thread_time()
        fn()
        cpu.append(time.thread_time() - c)
        wall.append(time.perf_counter() - t)
    return min(cpu), min(wall)


def compile_child():
    """Time the first call (compilation or cache load) of both kernels on a small input, in this process."""
    t0 = time.perf_counter()
    from daskcal.image._dkernel import drizzle_window

    t_import = time.perf_counter() - t0
    data, weight, planes, pm, out_shape = make_inputs(64)
    out = {}
    for kernel in ("square", "point"):
        t = time.perf_counter()
        drizzle_window(data, weight, pm, (0, 63, 0, 63), out_shape, kernel=kernel, sqrt_var=planes,
                       dq=np.zeros(data.shape, np.uint32))
        out[kernel] = time.perf_counter() - t
    print(f"{t_import:.2f} {out['square']:.2f} {out['point']:.2f}")


def compile_times():
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache, PYTHONPATH=str(ROOT))
        rows = []
        for label in ("cold (empty cache)", "warm (cache)"):
            out = subprocess.run([sys.executable, __file__, "--compile-child"], env=env, check=True,
                                 capture_output=True, text=True).stdout.split()
            rows.append((label, *map(float, out)))
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--compile-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.compile_child:
        compile_child()
        return
    n = 512 if args.quick else 2048
    lines = [f"# one-pass drizzle kernel vs drizzle 2.2 C add_image: {n}x{n} float32 input, square, pixfrac 1,",
             ("# precomputed pixel map (10 deg rotation, 1% distortion), ctx on; best of "
              f"{args.repeat} runs; load average at start {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"),
             f"# command: python benchmarks/bench_dkernel.py{' --quick' if args.quick else ''}"]

    for label, t_imp, t_sq, t_pt in compile_times():
        lines.append(f"first call, {label}: import {t_imp:.2f} s, square {t_sq:.2f} s, point {t_pt:.2f} s")

    data, weight, planes, pm, out_shape = make_inputs(n)
    full = (0, n - 1, 0, n - 1)
    mpix = n * n / 1e6
    ours(data, weight, planes, pm, out_shape, full)  # compile / load
    res = ours(data, weight, planes, pm, out_shape, full)
    main_d, var_imgs = drizzle_c_four(data, weight, planes, pm, out_shape, full)
    strong = main_d.out_wht > 1e-3 * main_d.out_wht.max()

    def rel(a, b):
        return float(np.max(np.abs(a[strong] - b[strong]) / np.abs(b[strong])))

    checks = [rel(res.wht, main_d.out_wht), rel(res.swd / np.where(strong, res.wht, 1), main_d.out_img)]
    checks += [rel(res.swv[k] / np.where(strong, res.wht, 1), var_imgs[k]) for k in range(3)]
    ctx_diff = int(np.count_nonzero(res.ctx != (main_d.out_ctx[0] != 0)))
    lines.append(f"equal output: max relative difference wht {checks[0]:.1e}, data {checks[1]:.1e}, "
                 f"sqrt-var planes {max(checks[2:]):.1e}; context pixels differing: {ctx_diff}")

    lines.append("single thread                                  CPU s   wall s   input Mpix/s (per CPU second)")
    cases = [
        ("drizzle C, 1 pass (data, ctx)", lambda: drizzle_c(data, weight, pm, out_shape, full)),
        ("drizzle C, 4 passes (data+ctx, 3 sqrt-var)",
         lambda: drizzle_c_four(data, weight, planes, pm, out_shape, full)),
        ("daskcal one pass (data only, ctx)",
         lambda: ours(data, weight, None, pm, out_shape, full)),
        ("daskcal one pass (data, 3 sqrt-var, ctx)",
         lambda: ours(data, weight, planes, pm, out_shape, full)),
    ]
    times = {}
    for name, fn in cases:
        t, wall = best_cpu(fn, args.repeat)
        times[name] = t
        lines.append(f"{name:46s} {t:6.3f}   {wall:6.3f}   {mpix / t:8.2f}")
    four, one = times[cases[1][0]], times[cases[3][0]]
    lines.append(f"one pass with 3 planes vs drizzle's 4 passes: {four / one:.2f}x faster")

    # two halves (row blocks), each drizzled into a window holding its own footprint, as the engine does
    halves = [half_window(data, weight, planes, pm, r0, r1) for r0, r1 in ((0, n // 2), (n // 2, n))]
    lines.append("two halves of the input (row blocks), each into the window of its footprint:")
    lines.append("                                            serial s  2 threads s  speed-up  CPU s / wall s (2 threads)")
    for name, fn in [("daskcal one pass (data, 3 sqrt-var, ctx)", lambda a: timed(ours, *a)),
                     ("drizzle C, 1 pass (data, ctx)", lambda a: timed(drizzle_c_args, *a))]:
        def serial(fn=fn):
            return [fn(a) for a in halves]

        def threads(fn=fn):
            with ThreadPoolExecutor(2) as ex:
                return list(ex.map(fn, halves))

        ts, _ = best(serial, args.repeat)
        tp, _ = best(threads, args.repeat)
        t = time.perf_counter()
        cpu = sum(threads())
        wall = time.perf_counter() - t
        lines.append(f"{name:42s} {ts:8.3f}   {tp:8.3f}   {ts / tp:6.2f}x   {cpu / wall:6.2f}")
    lines.append(f"{'control: trivial numba nogil loop':42s}                       {control_speedup(args.repeat):6.2f}x"
                 "   (the machine's parallel headroom at the time)")
    for name, fn in [("daskcal one pass", lambda: ours(*halves[0])),
                     ("drizzle C add_image", lambda: drizzle_c_args(*halves[0]))]:
        _, one = best(fn, 1)
        lines.append(f"{name:20s} in a loop in another thread (one call {one * 1e3:4.0f} ms): a pure-Python loop "
                     f"here pauses at most {python_stall(fn) * 1e3:4.0f} ms")
    lines.append(f"# load average at end {os.getloadavg()[0]:.2f}")

    text = "\n".join(lines) + "\n"
    print(text, end="")
    if not args.quick:
        RESULTS.write_text(text)


if __name__ == "__main__":
    main()
