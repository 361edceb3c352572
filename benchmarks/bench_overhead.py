"""Time spent outside the computation by ``daskcal demo``, ``detector1`` and ``resample``, cold and warm.

From a fresh virtual environment (``pip install`` of this checkout, no caches): the first run of each
command is cold (numba compiles, Python writes no bytecode: pip compiled it), the next ``--rounds`` are
warm. Each run is ``daskcal -v ...``; its INFO ``timing:`` lines give the phases:

- ``start``: process creation to ``main()`` (interpreter, imports, parsing the arguments);
- ``cluster``: the embedded LocalCluster (2 workers) ready (started in the background while the inputs
  are opened: ``wait`` is how long the command then waited for it; nan for older versions);
- ``submit``: the graph optimised and sent to the scheduler (the first task can start after it);
- ``compute``: what the command prints as its computing time (includes the first task's latency);
- ``close``: client and cluster closed;
- ``outside``: wall clock minus ``compute``.

Then detector1 and resample again against a scheduler and 2 workers started once (``--cluster
scheduler.json``): what a warm run costs when the cluster outlives the command; and then handed to a
``daskcal serve`` of the environment started once (``serve``: the process and its cluster outlive the
command; the phases the server's log lines give are the server's, so only wall, compute and outside).

Inputs: a 1 x 10 x 2048 x 2048 ramp cube (detector1), two dithered 2048 x 2048 exposures (resample);
``demo`` simulates its own 2 x 10 x 1024^2 cube. Run by hand, from outside the checkout:
``python benchmarks/bench_overhead.py [--venv DIR] [--rounds 3]``; results in
``benchmarks/results/overhead.txt``.

``--small CHECKOUT [CHECKOUT ...] [--clusters local threads]`` instead compares checkouts (each put
first on ``PYTHONPATH``), each with each ``--cluster`` of ``--clusters``, in
this environment, warm, on small inputs where nearly all the time is overhead: a 1 x 5 x 256 x 256
detector1 and a resample of two 512 x 512 exposures, the checkouts' runs interleaved (round after
round, each command from each checkout in turn), ``--rounds`` of each (after one untimed run per
command and checkout that fills numba's cache). Each run's INFO lines get a time stamp, so the
phases are read as times since the process was created (``exec``): ``parsed`` (``main()`` has
parsed the arguments: interpreter, imports), ``ready`` (the embedded cluster is up), ``sent``
(the first graph is sent), ``done`` (computed, written and committed; the client starts closing),
``exit`` (the process has exited: wall). ``compute`` is the command's own ``in X s`` (0.1 s
resolution) and ``outside`` = ``exit`` - ``compute``. ``cpu`` is the command process's own CPU time
(its rusage), ``cpu_w`` that of the fork server and the workers (sampled every 50 ms, so a lower
bound). Medians and (min-max) over the rounds, with the 1-minute load average when each run began;
then, for each checkout (and cluster) after the first, the median (and range) of its runs' differences from the
first checkout's run of the same command in the same round (less sensitive to the load changing).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _proc import serving

ROOT = Path(__file__).resolve().parents[1]
PHASES = {
    "start": r"timing: started in ([\d.]+) s",
    "cluster": r"timing: (?:local|existing) cluster ready in ([\d.]+) s",
    "wait": r"timing: waited ([\d.]+) s for the cluster",
    "submit": r"timing: graph optimised and sent to the scheduler in ([\d.]+) s",
    "close": r"timing: client and cluster closed in ([\d.]+) s",
    "compute": r"(?:Mpix\*groups|input Mpix) in ([\d.]+) s",
}


def _venv(path: Path) -> tuple[Path, float]:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    py = path / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", str(ROOT)], check=True)
    return py, time.perf_counter() - t0


def _inputs(py: Path, work: Path, ramps=(1, 10, 2048, 2048), images=(2048, 2048)) -> None:
    """``work/ramps.zarr`` (a ramp cube of shape ``ramps``) and two exposures ``work/img0.zarr``, ``img1.zarr``
    of shape ``images``, made by the daskcal of interpreter ``py``."""
    script = f"""
import daskcal
if __name__ == "__main__":
    daskcal.save(daskcal.simulate({tuple(ramps)!r}, seed=1).ramps, r"{work / 'ramps.zarr'}")
    sim = daskcal.simulate_images(2, {tuple(images)!r}, seed=1)
    for k, ds in enumerate(sim.images):
        daskcal.save(ds, r"{work}/img%d.zarr" % k)
"""
    subprocess.run([str(py), "-c", script], check=True, cwd=work)


def _run(py: Path, argv: list[str], work: Path, env: dict) -> dict:
    for p in ("out", "mosaic.zarr", "daskcal-output"):
        shutil.rmtree(work / p, ignore_errors=True)
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    done = subprocess.run([str(py), "-m", "daskcal", "-v", *argv, "--no-progress"], cwd=work, env=env,
                          capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    text = done.stdout + done.stderr
    row = {"wall": wall, "load": load}
    for name, pattern in PHASES.items():
        m = re.search(pattern, text)
        row[name] = float(m.group(1)) if m else float("nan")
    row["outside"] = wall - row["compute"]
    row["compiled"] = "compiling numba kernels" in done.stderr
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=None, help="reuse this environment (default: a fresh one)")
    parser.add_argument("--rounds", type=int, default=3, help="warm runs per command (default 3)")
    parser.add_argument("--small", type=Path, nargs="+", default=None, metavar="CHECKOUT",
                        help="compare these checkouts on small inputs in this environment, interleaved")
    parser.add_argument("--clusters", nargs="+", default=["local"], metavar="CLUSTER",
                        help="--small: run each checkout with each of these --cluster values (local, threads; "
                        "server: the default cluster, the command handed to the checkout's 'daskcal serve')")
    args = parser.parse_args()
    if args.small is not None:
        _small(args.small, args.rounds, args.clusters)
        return
    work = Path(tempfile.mkdtemp(prefix="daskcal-overhead-"))
    if args.venv is None:
        py, install = _venv(work / "venv")
        print(f"# fresh venv: pip install of {ROOT} in {install:.0f} s")
    else:
        py = args.venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "DASKCAL_SERVER")}
    _inputs(py, work)
    commands = {
        "demo": ["demo", "--out", "daskcal-output"],
        "detector1": ["detector1", "ramps.zarr", "out"],
        "resample": ["resample", "img0.zarr", "img1.zarr", "-o", "mosaic.zarr"],
    }
    cols = ["wall", "start", "cluster", "wait", "submit", "compute", "close", "outside", "load"]
    print(f"{'command':10s} {'run':5s} " + " ".join(f"{c:>7s}" for c in cols) + "  compiled")
    for name, argv in commands.items():
        for k in range(1 + args.rounds):
            row = _run(py, argv, work, env)
            label = "cold" if k == 0 else "warm"
            print(f"{name:10s} {label:5s} " + " ".join(f"{row[c]:7.2f}" for c in cols) + f"  {row['compiled']}",
                  flush=True)
    # the same commands against a scheduler and 2 workers started once (dask scheduler --scheduler-file)
    procs = _persistent(py, work, env)
    try:
        for name in ("detector1", "resample"):
            for _ in range(args.rounds):
                row = _run(py, [*commands[name], "--cluster", str(work / "scheduler.json")], work, env)
                print(f"{name:10s} {'sched':5s} " + " ".join(f"{row[c]:7.2f}" for c in cols) + f"  {row['compiled']}",
                      flush=True)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
    # the same commands (default cluster) handed to a daskcal serve of the environment, started once
    server = serving(py, work, env)
    try:
        for name in ("detector1", "resample"):
            for _ in range(args.rounds):
                row = _run(py, commands[name], work, env)
                print(f"{name:10s} {'serve':5s} " + " ".join(f"{row[c]:7.2f}" for c in cols) + f"  {row['compiled']}",
                      flush=True)
    finally:
        server.terminate()
        server.wait(timeout=60)
    shutil.rmtree(work, ignore_errors=True)


def _persistent(py: Path, work: Path, env: dict) -> list:
    """A scheduler and two 1-thread workers with daskcal's allocator settings, started once."""
    sys.path.insert(0, str(ROOT))
    from daskcal.cluster import WORKER_ENVIRON

    bindir = py.parent
    sched = work / "scheduler.json"
    procs = [subprocess.Popen([str(bindir / "dask"), "scheduler", "--host", "127.0.0.1", "--scheduler-file",
                               str(sched), "--dashboard-address", "127.0.0.1:0"], cwd=work, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    deadline = time.monotonic() + 60
    while not sched.exists():
        if time.monotonic() > deadline:
            raise RuntimeError("the scheduler did not write its file")
        time.sleep(0.2)
    wenv = {**env, **{k: str(v) for k, v in WORKER_ENVIRON.items()}}
    for _ in range(2):
        procs.append(subprocess.Popen([str(bindir / "dask"), "worker", "--scheduler-file", str(sched), "--nthreads",
                                       "1", "--host", "127.0.0.1", "--dashboard-address", "127.0.0.1:0"],
                                      cwd=work, env=wenv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(8)  # the workers join
    return procs


# A -v run whose log lines carry their time (``python -m daskcal`` but for the logging format).
_WRAPPER = ("import logging, sys; logging.basicConfig(format='%(created).3f %(name)s: %(message)s'); "
            "sys.argv[0] = 'daskcal'; from daskcal.cli._main import console; console()")
# The ``daskcal`` command itself (``--clusters server``): handed to a running ``daskcal serve``.
_CLIENT = "import sys; sys.argv[0] = 'daskcal'; from daskcal.cli import console; console()"
_STAMPS = {
    "parsed": r"([\d.]+) daskcal.cli: timing: started",
    "ready": r"([\d.]+) daskcal.cluster: timing: (?:local|threads|existing) cluster ready",
    "sent": r"([\d.]+) daskcal.io._atomic: timing: graph optimised and sent",
}


def _timed_run(checkout: Path, argv: list[str], work: Path, *, server: bool = False) -> dict:
    """One ``daskcal -v ARGV --no-progress`` from ``checkout``: phases since exec, CPU times, load.
    ``server``: as the ``daskcal`` command runs it (handed to the checkout's ``daskcal serve``, see
    :func:`_proc.serving`; its log lines then carry no time stamps: only exit, compute, outside and cpu)."""
    import resource

    import psutil

    for p in ("out", "mosaic.zarr"):
        shutil.rmtree(work / p, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.time()
    if server:
        env = _server_env(checkout)
    proc = psutil.Popen([sys.executable, "-c", _CLIENT if server else _WRAPPER, "-v", *argv, "--no-progress"],
                        cwd=work, env=env,
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    others: dict[int, float] = {}  # the fork server's and the workers' CPU, last seen
    while proc.poll() is None:
        try:
            for child in proc.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    t = child.cpu_times()
                    others[child.pid] = t.user + t.system
        except psutil.Error:
            pass
        time.sleep(0.05)
    wall = time.time() - t0
    text = proc.stdout.read()
    if proc.returncode:
        raise RuntimeError(text[-3000:])
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    row = {"exit": wall, "load": load, "cpu": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
           "cpu_w": sum(others.values())}
    for name, pattern in _STAMPS.items():
        m = re.search(pattern, text)
        row[name] = float(m.group(1)) - t0 if m else float("nan")
    m = re.search(r"([\d.]+) daskcal.cluster: timing: client and cluster closed in ([\d.]+) s", text)
    row["done"] = float(m.group(1)) - float(m.group(2)) - t0 if m else float("nan")
    m = re.search(PHASES["compute"], text)
    row["compute"] = float(m.group(1)) if m else float("nan")
    row["outside"] = wall - row["compute"]
    return row


def _server_env(checkout: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    env.pop("DASKCAL_SERVER", None)
    return env


def _small(checkouts: list[Path], rounds: int, clusters=("local",)) -> None:
    """Interleaved warm runs of a small detector1 and resample from each checkout with each ``--cluster`` of
    ``clusters``; medians and ranges."""
    import statistics

    work = Path(tempfile.mkdtemp(prefix="daskcal-overhead-small-"))
    _inputs(Path(sys.executable), work, ramps=(1, 5, 256, 256), images=(512, 512))
    commands = {
        "detector1": ["detector1", "ramps.zarr", "out"],
        "resample": ["resample", "img0.zarr", "img1.zarr", "-o", "mosaic.zarr"],
    }
    # arms: (checkout, cluster); a checkout is named by its path, followed by its cluster when there are several
    arms = [(c.resolve(), k) for c in checkouts for k in clusters]
    label = {arm: str(arm[0]) + (f" {arm[1]}" if len(clusters) > 1 else "") for arm in arms}
    servers = [serving(Path(sys.executable), work, _server_env(checkout)) for checkout, cluster in arms
               if cluster == "server"]

    def run(checkout, cluster, argv):
        if cluster == "server":  # the default --cluster, on the checkout's daskcal serve
            return _timed_run(checkout, argv, work, server=True)
        return _timed_run(checkout, [*argv, "--cluster", cluster], work)

    try:
        for checkout, cluster in arms:  # numba's cache filled, files in the page cache
            for argv in commands.values():
                run(checkout, cluster, argv)
        rows: dict[tuple, list] = {(a, n): [] for a in arms for n in commands}
        for _ in range(rounds):
            for name, argv in commands.items():
                for checkout, cluster in arms:
                    rows[(checkout, cluster), name].append(run(checkout, cluster, argv))
    finally:
        for proc in servers:
            proc.terminate()
            proc.wait(timeout=60)
    cols = ["parsed", "ready", "sent", "done", "exit", "compute", "outside", "cpu", "cpu_w", "load"]
    print(f"# medians (min-max) of {rounds} interleaved warm runs; seconds since exec, cpu in CPU seconds")
    print(f"{'command':10s} {'checkout':24s} " + " ".join(f"{c:>16s}" for c in cols))
    for (arm, name), runs in rows.items():
        cells = []
        for c in cols:
            values = [r[c] for r in runs]
            cells.append(f"{statistics.median(values):5.2f} ({min(values):.2f}-{max(values):.2f})")
        print(f"{name:10s} {label[arm][-24:]:24s} " + " ".join(f"{cell:>16s}" for cell in cells), flush=True)
    # each run against the first arm's run of the same command in the same round (run just before it)
    print(f"# paired differences against {label[arms[0]]} (same round): medians (min-max)")
    for (arm, name), runs in rows.items():
        if arm == arms[0]:
            continue
        cells = []
        for c in ("ready", "exit", "outside", "cpu", "cpu_w"):
            diffs = [r[c] - b[c] for r, b in zip(runs, rows[arms[0], name], strict=True)]
            cells.append(f"{c} {statistics.median(diffs):+.2f} ({min(diffs):+.2f}..{max(diffs):+.2f})")
        print(f"{name:10s} {label[arm][-24:]:24s} " + "  ".join(cells), flush=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
