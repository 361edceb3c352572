"""Benchmark: peak memory of ``daskcal.save(daskcal.resample(...))`` against the mosaic's size.

Usage::

    python benchmarks/bench_memory.py [--n 8] [--size 1024] [--ratios 0.2 0.14] [--local-ratio 0.2]
        [--worker-memory 1GiB] [--timeout 420] [--workdir /tmp/daskcal-bench-memory] [--out PATH]
        [--code PATH --label before --cases threaded:0.2 local:0.2]

Inputs: ``n`` simulated dithered exposures of ``size``^2 px written once to Zarr. Two cases,
each in a fresh process:

- **threaded**: dask's threaded scheduler (no client), one mosaic per ratio in ``--ratios``;
  the peak is the process's VmHWM (its own high-water mark) and must not grow with the mosaic;
- **local**: an embedded LocalCluster of 2 workers x 1 thread with ``--worker-memory`` each
  (``daskcal.connect``, as the command line starts it); the peak is the summed RSS of the
  client and its workers sampled every 0.05 s, plus the largest worker's; worker restarts are
  counted from the workers' process ids before and after. A run that does not finish within
  ``--timeout`` s is reported as such.

Writes ``benchmarks/results/memory.txt`` (appends when ``--code`` runs another checkout's
daskcal for comparison, e.g. one before a change).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def make_inputs(workdir: Path, n: int, size: int) -> list[str]:
    import daskcal

    paths = [workdir / f"in{size}_{k}.zarr" for k in range(n)]
    if all(p.exists() for p in paths):
        return [str(p) for p in paths]
    sim = daskcal.simulate_images(n=n, shape=(size, size), seed=1)
    for p, ds in zip(paths, sim.images):
        if p.exists():
            shutil.rmtree(p)
        daskcal.save(ds, p)
    return [str(p) for p in paths]


def child_threaded(paths: list[str], ratio: float, out: str) -> dict:
    from _proc import peak_mb, rss_mb

    import daskcal

    images = daskcal.open_images(paths)
    base = rss_mb()
    t0 = time.perf_counter()
    mosaic = daskcal.resample(images, pixel_scale_ratio=ratio)
    graph = time.perf_counter() - t0
    daskcal.save(mosaic, out, overwrite=True)
    return dict(shape=list(mosaic.data.shape), tiles=mosaic.attrs["tile_shape"],
                planes_mib=sum(v.nbytes for v in mosaic.data_vars.values()) / 2**20,
                seconds=time.perf_counter() - t0, graph_seconds=graph, base_mib=base, peak_mib=peak_mb())


def child_local(paths: list[str], ratio: float, out: str, memory: str) -> dict:
    from _proc import TreeSampler

    import daskcal

    images = daskcal.open_images(paths)
    with TreeSampler() as sampler, daskcal.connect("local", n_workers=2, threads_per_worker=1,
                                                    memory_limit=memory) as client:
        pids = client.run(os.getpid)
        t0 = time.perf_counter()
        mosaic = daskcal.resample(images, pixel_scale_ratio=ratio)
        graph = time.perf_counter() - t0
        daskcal.save(mosaic, out, overwrite=True)
        seconds = time.perf_counter() - t0
        after = client.run(os.getpid)
    restarted = len(set(pids.values()) - set(after.values()))
    return dict(shape=list(mosaic.data.shape), tiles=mosaic.attrs["tile_shape"],
                planes_mib=sum(v.nbytes for v in mosaic.data_vars.values()) / 2**20, seconds=seconds,
                graph_seconds=graph, peak_total_mib=sampler.peak_total, peak_worker_mib=sampler.peak_single_child,
                restarted_workers=restarted)


def run_case(args, kind: str, ratio: float, paths: list[str]) -> dict:
    """One case in a fresh process group (killed whole on timeout); its JSON result or a failure."""
    from daskcal.cluster import WORKER_ENVIRON

    out = str(Path(args.workdir) / f"mosaic-{kind}-{ratio}.zarr")
    env = dict(os.environ, **{k: str(v) for k, v in WORKER_ENVIRON.items()})
    if args.code:
        env["PYTHONPATH"] = os.pathsep.join([str(Path(args.code).resolve()), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, __file__, "--child", kind, str(ratio), out, args.worker_memory, *paths]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, stderr = proc.communicate()
        restarts = stderr.count("Restarting worker")
        return dict(failed=f"did not finish in {args.timeout:.0f} s ({restarts} worker restarts logged)")
    finally:
        shutil.rmtree(out, ignore_errors=True)
    if proc.returncode != 0:
        return dict(failed=f"exit {proc.returncode}: {stderr.strip().splitlines()[-1][:200] if stderr else ''}",
                    seconds=time.perf_counter() - t0)
    res = json.loads(stdout.strip().splitlines()[-1])
    res["restarts_logged"] = stderr.count("Restarting worker")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.14], help="threaded case: pixel_scale_ratio")
    ap.add_argument("--local-ratio", type=float, default=0.2, help="LocalCluster case: pixel_scale_ratio")
    ap.add_argument("--worker-memory", default="1GiB", help="LocalCluster case: memory limit per worker")
    ap.add_argument("--timeout", type=float, default=420.0, help="seconds before a case counts as not finishing")
    ap.add_argument("--workdir", default="/tmp/daskcal-bench-memory")
    ap.add_argument("--out", default=str(HERE / "results" / "memory.txt"))
    ap.add_argument("--code", default=None, help="run the cases with the daskcal of this checkout (appends)")
    ap.add_argument("--label", default=None, help="label of the rows (default: this checkout, or --code)")
    ap.add_argument("--cases", nargs="+", default=None, help="KIND:RATIO, e.g. threaded:0.2 local:0.2")
    args = ap.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    paths = make_inputs(workdir, args.n, args.size)
    if args.cases:
        cases = [(c.split(":")[0], float(c.split(":")[1])) for c in args.cases]
    else:
        cases = [("threaded", r) for r in args.ratios] + [("local", args.local_ratio)]
    label = args.label or (f"daskcal of {args.code}" if args.code else "this checkout")
    rows = []
    for kind, ratio in cases:
        res = run_case(args, kind, ratio, paths)
        print(kind, ratio, json.dumps(res), flush=True)
        rows.append(_row(label, kind, ratio, args.worker_memory, res))
    load = os.getloadavg()[0]
    lines = []
    if not args.code:
        lines += [
            f"# bench_memory.py: {args.n} simulated {args.size}x{args.size} inputs (Zarr), "
            f"daskcal.save(daskcal.resample(images, pixel_scale_ratio=R), path); threaded = no client "
            f"(dask's threaded scheduler, 2 cores); local = daskcal.connect LocalCluster 2 workers x 1 thread, "
            f"memory_limit {args.worker_memory}",
            f"# command: python benchmarks/bench_memory.py {' '.join(sys.argv[1:])}",
            "| code | case | ratio | mosaic (y, x) | planes MiB | tiles | seconds | peak MiB | notes |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
    else:
        lines.append(f"# {label}: python benchmarks/bench_memory.py {' '.join(sys.argv[1:])}")
    lines += rows + [f"# 1-min load average at the end: {load:.1f} (the machine is shared; seconds are indicative)"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a" if args.code else "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def _row(label, kind, ratio, memory, res) -> str:
    if "failed" in res:
        return f"| {label} | {kind} | {ratio} | | | | {res.get('seconds', '')} | | {res['failed']} |"
    if kind == "threaded":
        peak = f"{res['peak_mib']:.0f} (process VmHWM; {res['base_mib']:.0f} after imports)"
        notes = f"graph {res['graph_seconds']:.1f} s"
    else:
        peak = f"{res['peak_total_mib']:.0f} (client + workers; largest worker {res['peak_worker_mib']:.0f})"
        notes = (f"workers {memory}; {res['restarted_workers']} workers restarted, {res['restarts_logged']} restarts "
                 f"logged; graph {res['graph_seconds']:.1f} s")
    return (f"| {label} | {kind} | {ratio} | ({res['shape'][0]}, {res['shape'][1]}) | {res['planes_mib']:.0f} | "
            f"{res['tiles']} | {res['seconds']:.1f} | {peak} | {notes} |")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, ratio, out, memory, *paths = sys.argv[2:]
        sys.path.insert(0, str(HERE))
        if kind == "threaded":
            result = child_threaded(paths, float(ratio), out)
        else:
            result = child_local(paths, float(ratio), out, memory)
        print(json.dumps(result))
    else:
        main()
